"""Slow start (issue 15, HAProxy's `slowstart`): a server that (re)enters a pool where another
one serves starts at weight 1 and ramps to its weight over `slowstart` seconds.

First the pure decision (plain values, as in test_decide), then the loop: monitor_rs.py as a
subprocess on the fake ipvsadm, the ramp seen in the table, and a restart in the middle of it.
"""

import ipaddress
import json

import monitor_rs as m
from harness import config, wait_until, weights

OK = m.ProbeResult(True, "HTTP 200", 0.01)
BAD = m.ProbeResult(False, "refused", 0.0)
T = 1_800_000_000.0  # a wall-clock time


def ep(text):
    return m.parse_address(text)


def service(weights=(10, 2), slowstart=10.0, **kw):
    servers = ("192.168.1.10:8080", "192.168.1.11:8080", "192.168.1.12:8080")[:len(weights)]
    rs = tuple(m.RealServer(ep(s).ip, ep(s).port, w, i) for i, (s, w) in enumerate(zip(servers, weights)))
    return m.VirtualService("web", "tcp", ipaddress.ip_address("10.0.0.1"), 80, 0, rs, "-m",
                            slowstart=slowstart, **kw)


def table(vs, **weights):
    """table(vs, s0=3) -> server 0 in IPVS with weight 3."""
    out = {}
    for key, weight in weights.items():
        stored = vs.stored_endpoint(vs.servers[int(key[1:])].endpoint)
        out[stored] = m.Destination(stored, "Masq", weight)
    return out


def apply(vs, tbl, actions):
    tbl = dict(tbl)
    for a in actions:
        stored = vs.stored_endpoint(a.endpoint)
        if a.kind == m.Change.DELETE:
            del tbl[stored]
        else:
            tbl[stored] = m.Destination(stored, "Masq", a.weight)
    return tbl


def back(vs, **kw):
    """Server 0 down and absent, server 1 serving: the table and health before s0 is back."""
    tbl = table(vs, s1=vs.servers[1].weight)
    health = {vs.servers[0].endpoint: m.Health(up=False, bad=1), vs.servers[1].endpoint: m.Health(up=True)}
    return tbl, health


def step(vs, tbl, health, now, verdicts=(OK, OK), **kw):
    d = m.decide(vs, {rs.endpoint: v for rs, v in zip(vs.servers, verdicts)}, tbl, health, now, **kw)
    return d, apply(vs, tbl, d.actions), d.health


def s0(vs, tbl):
    return tbl[vs.stored_endpoint(vs.servers[0].endpoint)].weight


def test_a_server_back_beside_a_serving_one_ramps_from_1_to_its_weight():
    vs = service()
    tbl, health = back(vs)
    d, tbl, health = step(vs, tbl, health, T)
    (add,) = d.actions
    assert (add.kind, add.weight) == (m.Change.ADD, 1)
    assert add.note == "slow start to weight 10 over 10 s"
    assert health[vs.servers[0].endpoint].ramp == T
    seen = []
    for elapsed in (1.0, 2.5, 2.6, 5.0, 9.0):
        d, tbl, health = step(vs, tbl, health, T + elapsed)
        assert all(a.kind == m.Change.RAMP for a in d.actions)
        seen.append(s0(vs, tbl))
    assert seen == [1, 3, 3, 5, 9]  # ceil(10 x elapsed / 10), at least 1; no change, no action
    d, tbl, health = step(vs, tbl, health, T + 9.5)
    (done,) = d.actions
    assert (done.kind, done.weight, done.reason) == (m.Change.REWEIGHT, 10, "slow start done (10 s)")
    assert health[vs.servers[0].endpoint].ramp is None
    d, tbl, health = step(vs, tbl, health, T + 20)
    assert d.actions == () and s0(vs, tbl) == 10


def test_a_quiesced_server_restored_ramps_too():
    vs = service(quiescent=True)
    tbl = table(vs, s0=0, s1=2)
    health = {vs.servers[0].endpoint: m.Health(up=False, quiesced=True, weight=10)}
    d, tbl, health = step(vs, tbl, health, T)
    assert [(a.kind, a.weight) for a in d.actions] == [(m.Change.RESTORE, 1)]
    d, tbl, health = step(vs, tbl, health, T + 4.2)
    assert [(a.kind, a.weight) for a in d.actions] == [(m.Change.RAMP, 5)]


def test_no_ramp_into_an_empty_pool_nor_beside_only_the_fallback():
    """A first start (nothing serves), or every server back together: at their weights at once."""
    vs = service()
    d, _, health = step(vs, {}, {}, T)
    assert [(a.kind, a.weight) for a in d.actions] == [(m.Change.ADD, 10), (m.Change.ADD, 2)]
    assert all(h.ramp is None for h in health.values())
    sorry = m.parse_endpoint("127.0.0.1:8000", None)
    vs = service(fallback=sorry)
    tbl = {vs.stored_endpoint(sorry): m.Destination(vs.stored_endpoint(sorry), "Masq", 1)}
    d, _, _ = step(vs, tbl, {}, T)
    assert [(a.kind, a.weight) for a in d.actions] == [(m.Change.ADD, 10), (m.Change.ADD, 2),
                                                       (m.Change.FALLBACK_DELETE, None)]


def test_a_server_not_monitored_that_serves_is_another_server():
    """A destination of the service the config no longer names (left as it is at a reload) serves:
    a newcomer beside it ramps; the fallback is no such server."""
    vs = service(weights=(10,))
    other = ep("192.168.1.99:8080")
    d, _, _ = step(vs, {other: m.Destination(other, "Masq", 5)}, {}, T, (OK,))
    assert [(a.kind, a.weight) for a in d.actions] == [(m.Change.ADD, 1)]


def test_servers_found_in_the_table_at_start_are_not_ramped():
    vs = service()
    d, _, health = step(vs, table(vs, s0=10, s1=2), {}, T)
    assert d.actions == () and all(h.ramp is None for h in health.values())


def test_a_pass_decided_in_parts_ramps_as_the_whole_pass_would():
    """Two servers back together into an empty pool: the second one's result, decided after the first
    was added, does not ramp beside it (the pool is judged as it was at the pass's start)."""
    vs = service()
    first = m.decide(vs, {vs.servers[0].endpoint: OK}, {}, {}, T, start={})
    tbl = apply(vs, {}, first.actions)
    second = m.decide(vs, {vs.servers[1].endpoint: OK}, tbl, first.health, T, start={})
    assert [(a.kind, a.weight) for a in first.actions + second.actions] == [(m.Change.ADD, 10), (m.Change.ADD, 2)]


def test_a_failure_during_the_ramp_takes_it_out_and_ends_the_ramp():
    vs = service()
    tbl, health = back(vs)
    _, tbl, health = step(vs, tbl, health, T)
    d, tbl, health = step(vs, tbl, health, T + 3, (BAD, OK))
    assert [a.kind for a in d.actions] == [m.Change.DELETE]
    assert health[vs.servers[0].endpoint].ramp is None
    d, tbl, health = step(vs, tbl, health, T + 4)  # back: a new ramp, from 1
    assert [(a.kind, a.weight) for a in d.actions] == [(m.Change.ADD, 1)]
    assert health[vs.servers[0].endpoint].ramp == T + 4


def test_the_depool_threshold_counts_a_ramping_server_as_in():
    """Two servers, threshold 0.5: with s0 ramping at weight 1, s1 may go (one of two stays in)."""
    vs = service(depool_threshold=0.5)
    tbl, health = back(vs)
    _, tbl, health = step(vs, tbl, health, T)
    assert s0(vs, tbl) == 1
    d, tbl, health = step(vs, tbl, health, T + 1, (OK, BAD))
    assert m.Change.DELETE in [a.kind for a in d.actions]
    assert list(tbl.values())[0].weight >= 1 and len(tbl) == 1


def test_an_operators_weight_is_theirs_not_ramped_over():
    vs = service()
    tbl, health = back(vs)
    _, tbl, health = step(vs, tbl, health, T)
    tbl = table(vs, s0=7, s1=2)  # set by hand in the middle of the ramp
    d, tbl, health = step(vs, tbl, health, T + 3)
    assert d.actions == () and [e.state for e in d.events] == [m.Seen.HAND]
    assert health[vs.servers[0].endpoint].ramp is None and s0(vs, tbl) == 7
    d, tbl, health = step(vs, tbl, health, T + 30)
    assert d.actions == () and s0(vs, tbl) == 7


def test_a_weight_its_check_asks_for_is_the_ramps_end():
    """dynamic_weight: the ramp climbs to the weight asked, not to the configured one."""
    vs = service()
    tbl, health = back(vs)
    asks = m.ProbeResult(True, "exit 6", 0.0, weight=4)
    d, tbl, health = step(vs, tbl, health, T, (asks, OK))
    assert [(a.kind, a.weight) for a in d.actions] == [(m.Change.ADD, 1)]
    assert d.actions[0].note == "slow start to weight 4 over 10 s"
    d, tbl, health = step(vs, tbl, health, T + 5, (asks, OK))
    assert [(a.kind, a.weight) for a in d.actions] == [(m.Change.RAMP, 2)]
    d, tbl, health = step(vs, tbl, health, T + 8, (asks, OK))
    assert [(a.kind, a.weight) for a in d.actions] == [(m.Change.REWEIGHT, 4)]


def test_a_restart_in_the_middle_goes_on_with_the_ramp_not_an_operators_weight():
    vs = service()
    tbl, health = back(vs)
    _, tbl, health = step(vs, tbl, health, T)
    _, tbl, health = step(vs, tbl, health, T + 3)
    assert s0(vs, tbl) == 3
    health = {e: m.remembered(h) for e, h in health.items()}  # what a restart keeps
    d, tbl, health = step(vs, tbl, health, T + 6)
    assert not d.events  # no "set by hand", no up/down
    assert [(a.kind, a.weight) for a in d.actions] == [(m.Change.RAMP, 6)]
    assert health[vs.servers[0].endpoint].ramp == T


def test_slowstart_turned_off_by_a_reload_ends_a_ramp_at_once():
    import dataclasses
    vs = service()
    tbl, health = back(vs)
    _, tbl, health = step(vs, tbl, health, T)
    d, tbl, health = step(dataclasses.replace(vs, slowstart=0.0), tbl, health, T + 1)
    assert [(a.kind, a.weight, a.reason) for a in d.actions] == [(m.Change.REWEIGHT, 10, "slow start off")]
    assert health[vs.servers[0].endpoint].ramp is None


def test_the_ramp_is_remembered_in_the_state_file(tmp_path):
    h = m.Health(up=True, weight=3, ramp=T)
    snap = {"services": [{"protocol": "tcp", "address": "10.0.0.1:80",
                          "servers": [{"server": "192.168.1.10:8080", "memory": m.memory_of(h)},
                                      {"server": "192.168.1.11:8080", "memory": {"weight": 2, "ramp": "soon"}}]}]}
    path = tmp_path / "state.json"
    path.write_text(json.dumps(snap))
    path.chmod(0o644)
    memory = m.read_memory(str(path))
    assert memory[("tcp", "10.0.0.1:80", "192.168.1.10:8080")].ramp == T
    assert memory[("tcp", "10.0.0.1:80", "192.168.1.11:8080")].ramp is None  # not a time: no ramp


def test_a_clock_stepped_back_holds_the_weight_and_the_ramp_goes_on():
    vs = service()
    tbl, health = back(vs)
    _, tbl, health = step(vs, tbl, health, T)
    _, tbl, health = step(vs, tbl, health, T + 5)
    assert s0(vs, tbl) == 5
    d, tbl, health = step(vs, tbl, health, T - 3600)  # NTP stepped the clock back an hour
    assert d.actions == () and s0(vs, tbl) == 5
    assert health[vs.servers[0].endpoint].ramp == T - 3600
    d, tbl, health = step(vs, tbl, health, T - 3600 + 7)
    assert [(a.kind, a.weight) for a in d.actions] == [(m.Change.RAMP, 7)]


def test_status_takes_a_ramping_server_as_in_place():
    row = {"state": "up", "ipvs_weight": 3, "intended_weight": 10, "held": None, "memory": {"ramp": T}}
    snap = {"services": [{"problem": None, "servers": [row]}]}
    assert m.in_place(snap)
    assert not m.in_place({"services": [{"problem": None, "servers": [dict(row, memory={"ramp": None})]}]})


# The loop: the ramp seen in the fake's table, pass after pass, and across a restart.

VIP = "127.0.0.1:80"


def test_a_server_coming_back_ramps_over_the_passes_to_its_weight(ipvs, run, backends):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    monitor = run(ipvs, config(VIP, [a.address, b.address], [20, 5], interval=0.2,
                               extra="slowstart = 3")).start()
    wait_until(lambda: weights(ipvs) == {a.address: 20, b.address: 5}, what="both in, no ramp at first start")
    a.stop()
    wait_until(lambda: a.address not in weights(ipvs), what="a out")
    a.start()
    seen = []

    def watch():
        w = weights(ipvs).get(a.address)
        if w is not None and (not seen or seen[-1] != w):
            seen.append(w)
        return w == 20

    wait_until(watch, what="a back at 20")
    # some steps up to 20, never down (its first weight, 1, lasts one interval: a poll of this test late by
    # that much on a loaded machine misses it; the log below says it was added at 1)
    assert seen[0] < 20 and seen == sorted(seen) and len(seen) >= 3, seen
    monitor.wait_log(f"{a.address} weight set to 20 in {VIP} (web): slow start done (3 s)")
    assert monitor.stop()[0] == 0
    assert monitor.count(f"{a.address} has been added to work in {VIP} (web) (weight 1); "
                         "slow start to weight 20 over 3 s") == 1
    assert monitor.count("slow start,") == 0  # the steps: with --verbose only
    assert monitor.count("taken as set by hand") == 0


def test_a_restart_of_the_monitor_in_the_middle_of_a_ramp_goes_on_with_it(ipvs, run, backends):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    text = config(VIP, [a.address, b.address], [40, 5], interval=0.2, extra="slowstart = 12")
    ipvs.run("-a", "-t", VIP, "-r", b.address, "-m", "-w", "5")  # b serves; a is absent at the first start
    monitor = run(ipvs, text, "--verbose").start()
    wait_until(lambda: 2 <= weights(ipvs).get(a.address, 0) <= 12, what="a ramping")
    assert monitor.stop()[0] == 0
    stopped = weights(ipvs)[a.address]
    ramp = monitor.server_state(a.address)["memory"]["ramp"]
    assert ramp is not None
    monitor.start()
    after = wait_until(lambda: (weights(ipvs)[a.address] != stopped and weights(ipvs)[a.address])
                       or None, what="a's weight moving again")
    assert stopped < after < 40  # the ramp goes on: neither kept as "by hand" nor jumped to 40
    wait_until(lambda: (monitor.server_state(a.address, monitor.proc.pid) or {}).get("ipvs_weight") == after,
               what="the new monitor's state file")
    assert monitor.server_state(a.address)["memory"]["ramp"] == ramp
    assert monitor.status()[0] == 0  # in place while ramping
    wait_until(lambda: weights(ipvs)[a.address] == 40, what="a at 40")
    monitor.wait_log(f"{a.address} weight set to 40 in {VIP} (web): slow start done (12 s)")
    assert monitor.stop()[0] == 0
    assert monitor.count("taken as set by hand") == 0
    assert monitor.count(f"{a.address} weight set to ") >= 3  # the steps, with --verbose
