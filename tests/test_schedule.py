"""Each real server on its own schedule (issues 14 and 15): the checks of a service spread over
its interval in a bounded number of groups, a server not due keeping its health and its row,
fastinter while a server changes state, downinter while it is down.

The pure parts (spread_offset, next_check, check_pace, spread_late) with numbers; the loop with
the monitor as a subprocess (or one pass in this process) against the fake ipvsadm and HTTP
servers of this process, whose requests are timed here (monotonic: the same clock as the monitor's).
"""

import time

import pytest

import monitor_rs as m
from backends import Backend
from conftest import VIP
from harness import config, wait_until


class Timed(Backend):
    """A Backend that notes when each check arrives (monotonic) and in which mode it was answered."""

    def __init__(self, *args, **kwargs):
        self.arrivals = []
        super().__init__(*args, **kwargs)

    def _serve(self, conn):
        self.arrivals.append((time.monotonic(), self.mode))
        super()._serve(conn)


# ---- the pure schedule ------------------------------------------------------


def test_spread_offset_spreads_a_services_servers_evenly_in_bounded_groups():
    offsets = [m.spread_offset(i, 40, 1.0) for i in range(40)]
    groups = sorted(set(round(o, 6) for o in offsets))
    assert len(groups) == m.SCHEDULE_SLOTS == 10  # ten groups of four, not one wave of forty
    assert all(offsets.count(o) == 4 for o in offsets)
    assert groups[0] == pytest.approx(0.1) and groups[-1] == pytest.approx(1.0)  # none later than an interval
    assert all(b - a >= m.SCHEDULE_GRID - 1e-9 for a, b in zip(groups, groups[1:]))
    # few servers: one group each; a short interval: groups no closer than the grid
    assert [m.spread_offset(i, 3, 1.5) for i in range(3)] == pytest.approx([0.5, 1.0, 1.5])
    assert sorted({round(m.spread_offset(i, 40, 0.3), 6) for i in range(40)}) == pytest.approx([0.1, 0.2, 0.3])
    assert {m.spread_offset(i, 5, 0.1) for i in range(5)} == {0.1}
    # a long interval: still at most SCHEDULE_SLOTS turns of the loop for the service
    assert len({m.spread_offset(i, 1000, 60.0) for i in range(1000)}) == 10


def test_next_check_keeps_each_servers_phase():
    anchor = m.on_grid(100.3)
    # steady: the next turn of its phase, from a check that began on time or a little late
    assert m.next_check(anchor, anchor, 1.0, None) == pytest.approx(101.3)
    assert m.next_check(anchor, anchor + 0.04, 1.0, None) == pytest.approx(101.3)
    assert m.next_check(anchor, anchor + 5.0, 1.0, None) == pytest.approx(106.3)  # no debt of checks
    # fastinter: sooner, never later than the regular turn; on the grid
    assert m.next_check(anchor, 102.3, 2.0, 0.2) == pytest.approx(102.5)
    assert m.next_check(anchor, 102.2, 1.0, 3.0) == pytest.approx(105.3)  # downinter: 3 s on, on its phase
    assert m.next_check(anchor, 102.3, 1.0, 1.0) == pytest.approx(103.3)
    assert m.on_grid(102.5004) == pytest.approx(102.5)


def test_check_pace_fastinter_while_a_streak_is_in_progress_downinter_while_down():
    vs = m.VirtualService("web", "tcp", None, 80, 0, (), "-m", fall=3, rise=2, fastinter=0.2, downinter=5.0)
    assert m.check_pace(vs, m.Health(up=True)) is None
    assert m.check_pace(vs, m.Health(up=True, bad=1)) == 0.2  # failing toward fall
    assert m.check_pace(vs, m.Health(up=False, good=1)) == 0.2  # passing toward rise
    assert m.check_pace(vs, m.Health(up=False, bad=4)) == 5.0  # down and staying down
    assert m.check_pace(vs, m.Health()) is None  # no decision yet
    plain = m.VirtualService("web", "tcp", None, 80, 0, (), "-m")
    assert m.check_pace(plain, m.Health(up=True, bad=1)) is None
    assert m.check_pace(plain, m.Health(up=False)) is None


def test_spread_late_keeps_late_checks_apart():
    due = {"a": 10.0, "b": 10.1, "c": 10.2, "d": 12.0, "held": float("inf")}
    m.spread_late(due, 10.57)
    assert [due[k] for k in "abcd"] == pytest.approx([10.6, 10.7, 10.8, 12.0])
    assert due["held"] == float("inf")


# ---- one pass in this process: a server not due ------------------------------


class Said(m.Output):
    def __init__(self):
        super().__init__(m.LogFile(None), None, to_log=False, echo=False)
        self.lines = []

    def say(self, message, kind="info", log=True):
        self.lines.append((kind, message))


def test_a_server_not_due_is_not_checked_and_keeps_its_health_and_row(ipvs, backends, tmp_path):
    """Before: every server of a due service was probed every pass (one wave)."""
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    path = tmp_path / "c.conf"
    path.write_text(config(VIP, [a.address, b.address], interval=1, extra="fall = 2\n"))
    monitor = m.Monitor(m.load_config(str(path)), m.Ipvsadm(ipvs.path), Said())
    first = monitor.run_pass()  # at start: everyone at once
    assert [row.result.ok for row in first.services[0].rows] == [True, True]
    key = monitor.config.services[0].ipvs_key
    ep_a, ep_b = (monitor.config.services[0].servers[i].endpoint for i in (0, 1))
    b.mode = "http500"  # b fails from now on: were it probed, its streak would start
    health_b, hits_b, hits_a = monitor.health[(key, ep_b)], b.hits, a.hits
    monitor.due[(key, ep_a)] = 0.0  # a due now, b later
    monitor.due[(key, ep_b)] = time.monotonic() + 60
    report = monitor.run_pass()
    assert a.hits == hits_a + 1 and b.hits == hits_b  # only the server due was checked
    assert monitor.health[(key, ep_b)] == health_b  # b keeps its health (no failure counted)
    row_a, row_b = report.services[0].rows
    assert row_b.result == first.services[0].rows[1].result and row_b.result.ok  # its last result, shown
    assert row_b.health.up and row_a.result.ok
    assert ipvs.dests(VIP) == {a.address: ("Masq", 1), b.address: ("Masq", 2)}


# ---- the daemon ----------------------------------------------------------------


def bunches(times, span):
    """The check arrivals that came together: each bunch from its first to `span` after it (sizes)."""
    times, sizes, i = sorted(times), [], 0
    while i < len(times):
        j = i
        while j < len(times) and times[j] - times[i] < span:
            j += 1
        sizes.append(j - i)
        i = j
    return sizes


def test_the_checks_of_a_service_are_spread_over_its_interval(ipvs, backends, run):
    """Before: the 20 checks started together every interval (one wave)."""
    servers = [backends(ip=f"127.0.0.{11 + i}") for i in range(20)]
    for s in servers:
        s.__class__ = Timed
        s.arrivals = []
    monitor = run(ipvs, config(VIP, [s.address for s in servers], interval=1, timeout=0.5)).start()
    wait_until(lambda: len(ipvs.dests(VIP)) == 20, 20, "all 20 in the table")  # start: all at once
    begin = time.monotonic() + 1.5
    wait_until(lambda: all(sum(t > begin for t, _ in s.arrivals) >= 3 for s in servers), 30, "3 checks each")
    steady = [t for s in servers for t, _ in s.arrivals if t > begin]
    sizes = bunches(steady, 0.05)  # ten groups of two an interval, not twenty at once
    assert sorted(sizes)[len(sizes) // 2] <= 4, sizes
    assert sum(n for n in sizes if n > 8) <= len(steady) // 4, sizes  # (a pass's end may join a few groups)
    for s in servers:  # each server still checked about once an interval
        mine = sorted(t for t, _ in s.arrivals if t > begin)
        assert all(0.7 < b - a < 1.5 for a, b in zip(mine, mine[1:])), mine
    code, _, err = monitor.stop()
    assert code == 0 and "Traceback" not in err


def test_checks_in_flight_all_along_do_not_hold_back_the_others(ipvs, backends, run):
    """Four hung servers on four phases, timeout 0.9 s: one check is always in flight.  Before, a pass
    kept admitting checks a timeout past its window, then waited for those in flight with none
    starting: the healthy servers due then were checked a turn late (gaps of 2 s).  Now the pass
    leaves them and the next starts them again: every server about each interval."""
    healthy = [backends(ip=f"127.0.0.{11 + i}") for i in range(8)]
    hung = [backends(ip=f"127.0.0.{21 + i}", mode="hang") for i in range(4)]
    for s in healthy:
        s.__class__ = Timed
        s.arrivals = []
    everyone = [s.address for s in healthy + hung]
    monitor = run(ipvs, config(VIP, everyone, interval=1, timeout=0.9, extra="fall = 1\n")).start()
    wait_until(lambda: len(ipvs.dests(VIP)) == 8, 20, "the healthy in the table, the hung out")
    begin = time.monotonic() + 1.0
    wait_until(lambda: all(sum(t > begin for t, _ in s.arrivals) >= 6 for s in healthy), 30, "6 checks each")
    gaps = [[round(b - a, 2) for a, b in zip(mine, mine[1:])]
            for mine in (sorted(t for t, _ in s.arrivals if t > begin) for s in healthy)]
    every = sorted(gap for mine in gaps for gap in mine)  # before: 2.0 and 2.1 s gaps, a median of 1.8
    assert max(every) < 1.75 and 0.9 < every[len(every) // 2] < 1.1, gaps
    assert len(ipvs.dests(VIP)) == 8  # and the hung still out: their checks, started again, time out
    code, _, err = monitor.stop()
    assert code == 0 and "Traceback" not in err


def test_fastinter_rechecks_a_server_whose_checks_disagree_with_its_state(ipvs, backends, run):
    """fall = 3, interval = 2: three failures take 4 s at least before; with fastinter = 0.2 about 0.4 s."""
    victim, other = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    victim.__class__ = Timed
    victim.arrivals = []
    monitor = run(ipvs, config(VIP, [victim.address, other.address], interval=2, timeout=0.5,
                               extra="fall = 3\nfastinter = 0.2\n")).start()
    wait_until(lambda: len(ipvs.dests(VIP)) == 2, 20, "both in the table")
    wait_until(lambda: len(victim.arrivals) >= 2, 20, "a steady check")
    victim.mode = "http500"
    wait_until(lambda: victim.address not in ipvs.dests(VIP), 20, "the failing server out")
    failures = [t for t, mode in victim.arrivals if mode == "http500"]
    assert len(failures) >= 3
    assert failures[2] - failures[0] < 1.2, failures  # the 2nd and 3rd after fastinter, not an interval each
    code, _, err = monitor.stop()
    assert code == 0 and "Traceback" not in err


def test_downinter_spaces_the_checks_of_a_down_server(ipvs, backends, run):
    """Before: a down server was checked every interval like the others."""
    down, up = backends(ip="127.0.0.11", mode="http500"), backends(ip="127.0.0.12")
    for s in (down, up):
        s.__class__ = Timed
        s.arrivals = []
    monitor = run(ipvs, config(VIP, [down.address, up.address], interval=0.3, timeout=0.5,
                               extra="downinter = 1.5\n")).start()
    wait_until(lambda: ipvs.dests(VIP) == {up.address: ("Masq", 2)}, 20, "the healthy one in")
    wait_until(lambda: len(down.arrivals) >= 4, 30, "four checks of the down server")
    checks = [t for t, _ in down.arrivals]
    assert all(b - a > 1.2 for a, b in zip(checks, checks[1:])), checks  # every downinter, not every 0.3 s
    ups = [t for t, _ in up.arrivals if t > checks[1]]
    assert len(ups) >= 6 and all(b - a < 0.6 for a, b in zip(ups, ups[1:])), ups  # the others every interval
    code, _, err = monitor.stop()
    assert code == 0 and "Traceback" not in err


# ---- review: what an operator reads of a check that joined a spread pass ----------------------

def test_a_check_that_joins_the_wave_later_reports_its_own_latency_not_the_time_since_the_pass_began():
    """A spread pass lasts about an interval and checks join it as they fall due: each one's latency
    (the status table, --status, monitor_rs_probe_latency_seconds) is its own, from its start, not
    the seconds since the wave began (an instant `check = on` joined 0.5 s in reported 500 ms)."""
    import ipaddress
    first = m.ProbeTarget("on", ipaddress.ip_address("127.0.0.1"), 80)
    later = m.ProbeTarget("on", ipaddress.ip_address("127.0.0.2"), 80)
    begun = time.monotonic()
    asked = []

    def more():
        asked.append(time.monotonic())
        if later in asked:
            return [], None
        if time.monotonic() - begun < 0.5:
            return [], begun + 0.5
        asked.append(later)
        return [later], time.monotonic() + 0.05

    got = {}
    results = m.probe_all([first], 5.0, arrived=got.update, more=more)
    assert results is not None and later in got, results
    assert time.monotonic() - begun >= 0.5  # it did join half a second in
    assert got[later].ok and got[later].latency < 0.2, got[later]


def test_two_servers_of_a_service_checked_as_one_target_each_take_their_own_check(ipvs, backends, tmp_path):
    """Two real servers of one service on the same address, checked at one port (checkport; check = ping
    alike: the address only) are one target.  On their own phases, the second to fall due joined the
    pass after the first had, and its check's result was never given to it (it stayed in flight all
    pass, its health never moved): a server that went down stayed in the pool, one back stayed out."""
    backend = backends(ip="127.0.0.11")
    other = "127.0.0.11:1"  # nothing listens there: only the checkport answers for it
    path = tmp_path / "c.conf"
    path.write_text(config(VIP, [other, backend.address], interval=1, timeout=0.5,
                           extra=f"checkport = {backend.port}\nfall = 1\n"))
    monitor = m.Monitor(m.load_config(str(path)), m.Ipvsadm(ipvs.path), Said())
    monitor.run_pass()  # at start: everyone at once
    assert len(ipvs.dests(VIP)) == 2
    key = monitor.config.services[0].ipvs_key
    ep_a, ep_b = (monitor.config.services[0].servers[i].endpoint for i in (0, 1))
    backend.mode = "http500"  # from now on the one check says both fail
    monitor.spread = True  # as run_forever: checks join the pass as they fall due
    monitor.due[(key, ep_b)] = 0.0  # b due at the pass's start, a a little later in it
    monitor.due[(key, ep_a)] = time.monotonic() + 0.3
    began = time.monotonic()
    monitor.run_pass()
    assert not monitor.health[(key, ep_a)].up and not monitor.health[(key, ep_b)].up, monitor.health
    assert ipvs.dests(VIP) == {}
    assert time.monotonic() - began < 2.0  # (nothing left in flight to wait for)


def test_a_service_whose_interval_is_shorter_than_the_configs_has_its_table_read_every_interval_of_its(
        ipvs, backends, tmp_path):
    """A spread pass lasted the config's interval whatever its services' own: with [monitor] interval = 3
    and a service's interval = 0.3, its table was read, its holds (maintenancedir, drains) looked at and
    the state published every 3 s, not 0.3 s as before the schedule (a server deleted by hand was back
    only then, a maintenance file acted on only then)."""
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    path = tmp_path / "c.conf"
    path.write_text(config(VIP, [a.address, b.address], interval=3, timeout=0.5, extra="interval = 0.3\n"))
    monitor = m.Monitor(m.load_config(str(path)), m.Ipvsadm(ipvs.path), Said())
    monitor.run_pass()  # at start: everyone at once
    monitor.spread = True  # as run_forever
    for _ in range(2):
        report = monitor.run_pass()
        assert not report.stopped and report.duration < 1.5, report.duration  # about 0.3 s, not 3
    assert len(ipvs.dests(VIP)) == 2
