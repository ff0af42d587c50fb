"""A tug of war with another manager of the same virtual service (issue 16).

keepalived's virtual_server blocks, ldirectord or a second monitor undoing the
monitor's changes (the same server added and removed by someone else again and
again, a weight set back again and again): the monitor notices, stops changing
that service, says so once, and takes it back on a reload (SIGHUP) or a restart.

The counting is pure (no mocks: tables, decisions and times are plain values);
the loop runs monitor_rs.py against the fake ipvsadm, with another process as
the other manager.  (The real-kernel scenario with keepalived is in the VM tier.)
"""

import io
import ipaddress
import json
import os
import signal
import subprocess
import sys
import types

import pytest
import rich.console

import monitor_rs as m
from harness import config, wait_until

OK = m.ProbeResult(True, "HTTP 200", 0.01)
BAD = m.ProbeResult(False, "refused", 0.0)
VIP = "127.0.0.1:80"


def service(servers=("192.168.1.10:8080", "192.168.1.11:8080", "192.168.1.12:8080"), weights=(3, 1, 2), **kw):
    rs = tuple(m.RealServer(m.parse_address(s).ip, m.parse_address(s).port, w, i)
               for i, (s, w) in enumerate(zip(servers, weights)))
    return m.VirtualService("web", "tcp", ipaddress.ip_address("10.0.0.1"), 80, 0, rs, "-m", **kw)


def results(vs, *verdicts):
    return {rs.endpoint: v for rs, v in zip(vs.servers, verdicts)}


###############################################################################
# The counter (pure) ###########################################################
###############################################################################


def test_three_undone_changes_of_one_server_within_the_window_are_a_tug_of_war():
    undone = [(100.0, "10.0.0.2:80"), (104.0, "10.0.0.2:80"), (109.5, "10.0.0.2:80")]
    assert m.tug_of_war(undone, 110.0, 60.0) == {"10.0.0.2:80": (3, 10.0)}
    assert m.tug_of_war(undone[:2], 110.0, 60.0) == {}  # two are not enough
    assert m.tug_of_war(undone, 110.0, 60.0, limit=4) == {}


def test_a_single_act_is_not_a_tug_of_war_however_broad():
    # one hand delete; and one act that undid a change of every server at once (ipvsadm -C, a reload
    # of keepalived): each server's change undone once
    assert m.tug_of_war([(50.0, "10.0.0.2:80")], 50.0, 60.0) == {}
    broad = [(50.0, f"10.0.0.{i}:80") for i in range(2, 12)]
    assert m.tug_of_war(broad, 50.0, 60.0) == {}
    # ... nor two hand deletes of the same server a minute apart, and a third later still
    spread = [(0.0, "10.0.0.2:80"), (61.0, "10.0.0.2:80"), (122.0, "10.0.0.2:80")]
    assert m.tug_of_war(spread, 122.0, 60.0) == {}


def test_the_window_slides():
    undone = [(0.0, "a"), (30.0, "a"), (59.0, "a")]
    assert m.tug_of_war(undone, 59.0, 60.0) == {"a": (3, 59.0)}
    assert m.tug_of_war(undone, 60.0, 60.0) == {}  # the first has left the window
    assert m.tug_of_war(undone + [(70.0, "a")], 70.0, 60.0) == {"a": (3, 40.0)}
    assert m.tug_of_war(undone, 20.0, 60.0) == {}  # nothing from the future counts


def test_the_window_is_ten_intervals_and_a_minute_at_least():
    assert m.tug_window(1.0) == 60.0  # ldirectord checking every 10 s against our 1 s is still caught
    assert m.tug_window(6.0) == 60.0
    assert m.tug_window(30.0) == 300.0


def test_undone_changes_are_those_the_table_no_longer_shows():
    vs = service()
    a, b, c = (rs.endpoint for rs in vs.servers)
    add = m.Action(m.Change.ADD, "192.168.1.10:8080", (), weight=3, endpoint=a)
    delete = m.Action(m.Change.DELETE, "192.168.1.11:8080", (), endpoint=b)
    quiesce = m.Action(m.Change.QUIESCE, "192.168.1.12:8080", (), weight=0, endpoint=c)
    expected = {"192.168.1.10:8080": add, "192.168.1.11:8080": delete, "192.168.1.12:8080": quiesce}

    def table(**weights):
        return {ep: m.Destination(ep, "Masq", w) for ep, w in zip((a, b, c), (weights.get(k) for k in "abc"))
                if w is not None}

    assert m.undone_changes(vs, expected, table(a=3, c=0)) == []  # all as we left them
    assert m.undone_changes(vs, expected, table(c=0)) == ["192.168.1.10:8080"]  # our add deleted
    assert m.undone_changes(vs, expected, table(a=5, c=0)) == ["192.168.1.10:8080"]  # our weight set back
    assert m.undone_changes(vs, expected, table(a=3, b=1, c=0)) == ["192.168.1.11:8080"]  # our delete re-added
    assert m.undone_changes(vs, expected, table(a=3, c=2)) == ["192.168.1.12:8080"]  # our quiesce restored


def test_untouched_decision_changes_nothing_and_keeps_the_probes_verdicts():
    vs = service()
    d = m.decide(vs, results(vs, OK, BAD, OK), {}, {})
    assert [a.kind for a in d.actions] == [m.Change.ADD, m.Change.ADD]
    quiet = m.untouched(d)
    assert quiet.actions == () and quiet.events == d.events
    h = quiet.health[vs.servers[0].endpoint]
    assert h.up is True and h.tried == () and h.weight is None  # never tried: nothing to take as ours later
    assert quiet.health[vs.servers[1].endpoint].up is False


def fight(vs, verdicts, other, rounds, table=None):
    """Passes of decide against another manager: after each pass's changes, `other` changes the table
    (its way); returns the undone changes seen, as the loop counts them (one pass a second)."""
    table, health, expected, undone = dict(table or {}), {}, {}, []
    for now in range(rounds):
        for server in m.undone_changes(vs, expected, table):
            undone.append((float(now), server))
            del expected[server]
        d = m.decide(vs, results(vs, *verdicts), table, health)
        health = m.carry_out(d, lambda action: True)
        table = m.changed_table(vs, table, d.actions)
        expected.update((a.server, a) for a in d.actions)
        table = other(now, table)
    return undone


def test_a_server_re_added_by_another_manager_each_time_we_delete_it_is_a_tug_of_war():
    vs = service()
    b = vs.stored_endpoint(vs.servers[1].endpoint)

    def ldirectord(now, table):  # thinks b is healthy: puts it back whenever it is gone
        return {**table, b: m.Destination(b, "Masq", 1)}

    undone = fight(vs, (OK, BAD, OK), ldirectord, 5)
    assert m.tug_of_war(undone, 4.0, m.tug_window(1.0)) == {"192.168.1.11:8080": (3, 2.0)}
    assert m.tug_of_war(fight(vs, (OK, BAD, OK), ldirectord, 4), 3.0, 60.0) == {}  # two undone: not yet


def test_a_weight_set_back_again_and_again_is_a_tug_of_war():
    vs = service(quiescent=True)
    b = vs.stored_endpoint(vs.servers[1].endpoint)

    def other(now, table):  # sets b's weight back to 5 whenever it is not
        return {**table, b: m.Destination(b, "Masq", 5)}

    undone = fight(vs, (OK, BAD, OK), other, 6)
    assert "192.168.1.11:8080" in m.tug_of_war(undone, 5.0, 60.0)


def test_an_operators_single_act_is_repaired_and_is_no_tug_of_war():
    vs = service()
    a = vs.stored_endpoint(vs.servers[0].endpoint)

    def operator(now, table):  # deletes a by hand, once
        return {k: v for k, v in table.items() if k != a} if now == 2 else table

    undone = fight(vs, (OK, OK, OK), operator, 8)
    assert undone == [(3.0, "192.168.1.10:8080")]
    assert m.tug_of_war(undone, 7.0, 60.0) == {}


def test_status_of_a_contested_service_shows_the_table_as_read_and_is_not_in_place(capsys):
    why = "another manager keeps undoing the monitor's changes (10.0.0.2:80: 3 times in 2 s): not repairing it"
    row = m.ServerRow("10.0.0.2:80", 2, 1, m.Health(up=False, operator=1, reason="refused"), BAD, "")
    report = m.PassReport(services=[m.ServiceReport("web", "127.0.0.1:80", "tcp", contested=why, rows=[row])])
    snap = m.snapshot(report, m.Config(path="monitorRS.conf", interval=1.0), "monitor")
    (svc,) = snap["services"]
    assert svc["problem"] == why and svc["contested"] is True and not m.in_place(snap)
    m.show_status(snap, None)  # not a terminal: plain lines
    out = capsys.readouterr().out
    assert f"127.0.0.1:80 (web) problem={why!r}" in out and "10.0.0.2:80 weight=2 ipvs=1 state=down" in out
    console = rich.console.Console(width=200, file=io.StringIO(), color_system=None)
    for table in m.status_tables(snap):
        console.print(table)
    drawn = console.file.getvalue()
    assert why[:60] in drawn and "unknown" not in drawn  # the weights in IPVS are known: the other manager's
    assert 'monitor_rs_service_contested{service="127.0.0.1:80",name="web"} 1' in m.metrics_text(snap)


###############################################################################
# The loop: another process as the other manager ###############################
###############################################################################

OTHER_MANAGER = r"""
import json, subprocess, sys, time
state, ipvsadm, vip, server, want, acts = sys.argv[1:]
while True:
    try:
        with open(state) as handle:
            (svc,) = json.load(handle)["services"]
        present = any(f"{d['addr']}:{d['port']}" == server for d in svc["dests"])
    except (OSError, ValueError):
        present = None
    if want.startswith("scheduler ") and present is not None and svc["scheduler"] != want.split()[1]:
        args = ["-E", "-t", vip, "-s", want.split()[1]]
    elif present is not None and not want.startswith("scheduler ") and present != (want == "in"):
        args = ["-a", "-t", vip, "-r", server, "-m", "-w", "1"] if want == "in" else ["-d", "-t", vip, "-r", server]
    else:
        args = None
    if args:
        subprocess.run([ipvsadm, *args], capture_output=True)
        with open(acts, "a") as handle:
            handle.write(" ".join(args) + "\n")
    time.sleep(0.05)
"""


@pytest.fixture
def other_manager(tmp_path):
    """Start another manager of VIP (a process) that wants `server` in (`want` = "in") or out of
    its table (or the service's scheduler to be S: "scheduler S"), and puts it so whenever it is not; it reads the fake's state file, changes it with
    the fake ipvsadm.  Returns (process, file of its acts); killed at the end of the test."""
    started = []

    def start(ipvs, server, want):
        acts = tmp_path / f"other-manager-{len(started)}.acts"
        proc = subprocess.Popen([sys.executable, "-c", OTHER_MANAGER, ipvs.state, ipvs.path, VIP, server, want,
                                 str(acts)])
        started.append(proc)
        return proc, acts

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def calls(ipvs):
    if not os.path.exists(ipvs.calls):
        return []
    with open(ipvs.calls) as handle:
        return [json.loads(line)["argv"] for line in handle if line.strip()]


def listings(ipvs):
    """The monitor's passes so far: its listings of VIP (the other manager lists nothing)."""
    return sum(argv[:1] == ["-Ln"] for argv in calls(ipvs))


def changes(ipvs, start=0):
    """The changes made to the table (by anyone) from call number `start` on, -R's lines in their place."""
    lines = [argv for argv in calls(ipvs)[start:]]
    return [argv for argv in lines if argv[:1] in (["-a"], ["-d"], ["-e"], ["-R"])]


def dests(ipvs):
    with open(ipvs.state) as handle:
        (svc,) = json.load(handle)["services"]
    return {f"{d['addr']}:{d['port']}": d["weight"] for d in svc["dests"]}


CONTEST = "127.0.0.1:80 (web): another manager keeps undoing the monitor's changes (127.0.0.12:"
RESUMED = "127.0.0.1:80 (web): repaired again"


@pytest.mark.parametrize("scenario", ["re-adds what the monitor deletes", "deletes what the monitor adds"])
def test_the_monitor_stops_fighting_another_manager_says_it_once_and_resumes_on_sighup(
        scenario, ipvs, run, backends, other_manager, tmp_path):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    fights_a_delete = scenario == "re-adds what the monitor deletes"
    if fights_a_delete:
        b.stop()  # the monitor wants b out; the other manager (its own checks) wants it in
    metrics = tmp_path / "metrics.prom"
    text = config(VIP, [a.address, b.address], [3, 2]).replace(
        "[monitor]\n", f"[monitor]\nprometheus_file = {metrics}\n", 1)
    monitor = run(ipvs, text).start()
    wait_until(lambda: dests(ipvs) == ({a.address: 3} if fights_a_delete else {a.address: 3, b.address: 2}),
               what="the monitor's table")
    for server in [a] if fights_a_delete else [a, b]:  # the adds read back (a hand delete before is another test)
        monitor.wait_log(f"{server.address} has been added to work")

    # An operator's hand delete, twice: repaired each time, and no tug of war.
    for times in (1, 2):
        ipvs.run("-d", "-t", VIP, "-r", a.address)
        monitor.wait_log(f"{a.address} has been added to work in 127.0.0.1:80 (web) (weight 3)", count=1 + times)
    assert monitor.count("another manager keeps undoing") == 0

    proc, acts = other_manager(ipvs, b.address, "in" if fights_a_delete else "out")
    monitor.wait_log(CONTEST)
    line = next(line for line in monitor.lines() if CONTEST in line)
    assert f"({b.address}: 3 times in " in line and "not repairing it; reload (SIGHUP) or restart once the other manager is gone" \
        in line, line
    fought = monitor.count(f"{b.address} is out of work, deleted" if fights_a_delete
                           else f"{b.address} has been added to work")
    assert fought == 3, fought  # its third change undone, it changed no more

    # From now on the other manager's table stays: the monitor changes nothing, probes go on.
    mark, passes = len(calls(ipvs)), listings(ipvs)
    wait_until(lambda: listings(ipvs) >= passes + 6, what="six more passes")
    assert changes(ipvs, mark) == []
    assert dests(ipvs) == ({a.address: 3, b.address: 1} if fights_a_delete else {a.address: 3})
    assert monitor.count("another manager keeps undoing") == 1
    code, snap = monitor.status()
    (svc,) = snap["services"]
    assert code == 1 and svc["contested"] is True and "another manager keeps undoing" in svc["problem"]
    row = next(r for r in svc["servers"] if r["server"] == b.address)
    assert row["state"] == ("down" if fights_a_delete else "up")  # still probed
    assert row["ipvs_weight"] == (1 if fights_a_delete else None) and row["action"] is None
    wait_until(lambda: 'monitor_rs_service_contested{service="127.0.0.1:80",name="web"} 1'
               in metrics.read_text(), what="the contest in the metrics")

    # The other manager gone, a reload takes the service back.
    proc.kill()
    proc.wait()
    monitor.signal(signal.SIGHUP)
    monitor.wait_log(RESUMED)
    wait_until(lambda: dests(ipvs) == ({a.address: 3} if fights_a_delete else {a.address: 3, b.address: 2}),
               what="the monitor's table again")
    wait_until(lambda: monitor.status()[1]["services"][0]["problem"] is None, what="the problem gone")
    assert 'monitor_rs_service_contested{service="127.0.0.1:80",name="web"} 0' in metrics.read_text()
    assert monitor.stop()[0] == 0
    assert monitor.count("another manager keeps undoing") == 1 and monitor.count(RESUMED) == 1


def test_a_reload_with_the_other_manager_still_there_is_caught_again(ipvs, run, backends, other_manager):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    monitor = run(ipvs, config(VIP, [a.address, b.address], [3, 2])).start()
    wait_until(lambda: dests(ipvs) == {a.address: 3, b.address: 2}, what="both in")
    monitor.wait_log(f"{b.address} has been added to work")
    other_manager(ipvs, b.address, "out")
    monitor.wait_log(CONTEST)
    monitor.signal(signal.SIGHUP)
    monitor.wait_log(RESUMED)
    monitor.wait_log(CONTEST, count=2)  # it fights three times more, then stops again
    mark, passes = len(calls(ipvs)), listings(ipvs)
    wait_until(lambda: listings(ipvs) >= passes + 4, what="four more passes")
    assert changes(ipvs, mark) == [] and dests(ipvs) == {a.address: 3}
    assert monitor.stop()[0] == 0
    assert monitor.count("another manager keeps undoing") == 2


def test_a_scheduler_set_back_again_and_again_is_a_tug_of_war_too(ipvs, run, backends, other_manager):
    a = backends(ip="127.0.0.11")
    monitor = run(ipvs, config(VIP, [a.address], [3], extra="scheduler = wrr")).start()
    monitor.wait_log(f"{a.address} has been added to work")
    other_manager(ipvs, a.address, "scheduler rr")  # keepalived's lb_algo rr, say
    contest = ("127.0.0.1:80 (web): another manager keeps undoing the monitor's changes (the scheduler and "
               "persistence: 3 times in ")
    monitor.wait_log(contest)
    assert monitor.count("scheduler rr in IPVS, wrr configured: corrected") == 3
    mark, passes = len(calls(ipvs)), listings(ipvs)
    wait_until(lambda: listings(ipvs) >= passes + 4, what="four more passes")
    assert [argv for argv in calls(ipvs)[mark:] if argv[:1] == ["-E"]] == []
    assert monitor.stop()[0] == 0
    assert monitor.count("another manager keeps undoing") == 1


class Said:
    """Stands for the monitor's Output: keeps what was said, as (kind, message)."""

    def __init__(self):
        self.lines = []
        self.log = types.SimpleNamespace(path=None, facility="")

    def say(self, message, kind="info", log=True):
        self.lines.append((kind, message))


def test_a_change_undone_between_its_ipvsadm_r_and_the_read_back_counts_too(tmp_path):
    """Another manager quick enough to undo a line of a batch before the monitor reads the service
    back: that change is FAILED as before (made again next pass), and counted as undone."""
    from harness import Ipvs
    ipvs = Ipvs("fake", tmp_path)
    ipvs.service(VIP)
    servers = ["127.0.0.11:80", "127.0.0.12:80"]
    # after each -R, the other manager deletes .12; the batch's own closing listing (-Ln) is dropped,
    # so the monitor reads the service back with a separate ipvsadm -Ln, after the other manager
    quick = tmp_path / "ipvsadm-and-another-manager"
    quick.write_text(f"#!/bin/sh\nif [ \"$1\" = -R ]; then grep -v '^-Ln ' | '{ipvs.path}' \"$@\"; s=$?; "
                     f"'{ipvs.path}' -d -t {VIP} -r {servers[1]} 2>/dev/null; exit $s; fi\n"
                     f"exec '{ipvs.path}' \"$@\"\n")
    os.chmod(quick, 0o755)
    (tmp_path / "c.conf").write_text(config(VIP, servers, [1, 1]))
    cfg = m.load_config(str(tmp_path / "c.conf"))
    said = Said()
    monitor = m.Monitor(cfg, m.Ipvsadm(str(quick), 5.0), said)
    (vs,) = cfg.services
    adds = [m.Action(m.Change.ADD, s, m._change_args(vs, "-a", rs.endpoint, 1), "", 1, rs.endpoint, m.Health())
            for s, rs in zip(servers, vs.servers)]
    for _ in range(3):
        outcomes = monitor._apply_batch(vs, adds, m.PassReport())
        assert [outcome()[0] for outcome in outcomes] == [True, False]
        ipvs.run("-d", "-t", VIP, "-r", servers[0])  # (so that it can be added again)
    service = m.ServiceReport(vs.name, vs.address, vs.protocol)
    assert monitor._read(vs, m.PassReport(), service) == {}
    assert service.contested.startswith("another manager keeps undoing the monitor's changes (127.0.0.12:80: 3 "
                                        "times in ")
    assert [line for kind, line in said.lines if "another manager" in line] == [
        f"127.0.0.1:80 (web): {service.contested}"]
