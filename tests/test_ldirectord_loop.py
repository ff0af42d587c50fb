"""ldirectord's loop (issue 13): the decision's `held` input (maintenancedir today, issue 15's
drain tomorrow), a pure function.  Each test failed on main: decide() knew no hold."""

import ipaddress

import pytest

import monitor_rs as m
OK = m.ProbeResult(True, "HTTP 200", 0.01)
BAD = m.ProbeResult(False, "refused", 0.0)
HOLD = m.Hold(m.MAINTENANCE, "maintenance: file 192.168.1.10 in /maint")


# The decision: a held server ######################################################

def service(n=2, **kw):
    rs = tuple(m.RealServer(ipaddress.ip_address(f"192.168.1.{10 + i}"), 8080, 3, i) for i in range(n))
    return m.VirtualService("web", "tcp", ipaddress.ip_address("10.0.0.1"), 80, 0, rs, "-m", **kw)


def table(vs, *weights):
    """The servers in IPVS with these weights (None: absent), in config order."""
    return {rs.endpoint: m.Destination(rs.endpoint, "Masq", w) for rs, w in zip(vs.servers, weights)
            if w is not None}


def kinds(decision):
    return [(a.kind.value, a.server) for a in decision.actions]


@pytest.mark.parametrize("quiescent, kind", [(False, "delete"), (True, "quiesce")])
def test_a_held_server_goes_out_though_healthy_and_says_so_once(quiescent, kind):
    vs = service(quiescent=quiescent)
    s0 = vs.servers[0].endpoint
    held = {s0: HOLD}
    d = m.decide(vs, {rs.endpoint: OK for rs in vs.servers}, table(vs, 3, 3), {}, 0.0, held)
    assert kinds(d) == [(kind, "192.168.1.10:8080")]
    assert [(e.state, e.reason) for e in d.events] == [(m.Seen.HELD, HOLD.reason)]
    h = d.health[s0]
    assert (h.up, h.held, h.good) == (False, m.MAINTENANCE, 0)
    assert m.server_state(h) == "maintenance"
    # Next pass, done: nothing more to do, nothing more said.
    again = m.decide(vs, {rs.endpoint: OK for rs in vs.servers}, table(vs, 0 if quiescent else None, 3),
                     d.health, 1.0, held)
    assert kinds(again) == [] and again.events == ()


def test_a_held_server_is_never_added_nor_restored():
    vs = service(quiescent=True)
    s0, s1 = (rs.endpoint for rs in vs.servers)
    held = {s0: HOLD, s1: HOLD}
    # s0 absent and healthy; s1 quiesced by us earlier and healthy now
    health = {s1: m.Health(up=False, quiesced=True, weight=3)}
    d = m.decide(vs, {s0: OK, s1: OK}, table(vs, None, 0), health, 0.0, held)
    assert kinds(d) == []


def test_a_hold_takes_a_server_out_whatever_the_depool_threshold():
    """An operator's act, not a failure: the threshold keeps failing servers in, never a held one."""
    vs = service(n=2, depool_threshold=1.0)
    s0, s1 = (rs.endpoint for rs in vs.servers)
    d = m.decide(vs, {s0: OK, s1: BAD}, table(vs, 3, 3), {}, 0.0, {s0: HOLD})
    assert kinds(d) == [("delete", "192.168.1.10:8080")]  # s1 fails, but is kept by the threshold
    assert d.health[s1].kept


def test_a_hold_counts_against_the_depool_threshold_first():
    """The held server leaves first: the failing one it leaves room for no more is kept."""
    vs = service(n=3, depool_threshold=0.5)  # floor 1.5 of 3: one may go
    s0, s1, s2 = (rs.endpoint for rs in vs.servers)
    d = m.decide(vs, {s0: BAD, s1: OK, s2: OK}, table(vs, 3, 3, 3), {}, 0.0, {s1: HOLD})
    assert kinds(d) == [("delete", "192.168.1.11:8080")]
    assert d.health[s0].kept


def test_the_last_server_held_leaves_only_once_the_fallback_is_in():
    vs = service(n=1, fallback=m.parse_endpoint("127.0.0.1:8000", None))
    s0 = vs.servers[0].endpoint
    d = m.decide(vs, {s0: OK}, table(vs, 3), {}, 0.0, {s0: HOLD})
    assert kinds(d) == [("fallback-add", "127.0.0.1:8000"), ("delete", "192.168.1.10:8080")]
    assert d.actions[1].needs == (0,)  # the delete is made only if the fallback's add held
    # The fallback's add fails: the held server stays, the pool is not emptied.
    health = m.carry_out(d, lambda action: action.kind != m.Change.FALLBACK_ADD)
    assert health[s0].held == m.MAINTENANCE


@pytest.mark.parametrize("quiescent", [False, True])
def test_when_the_hold_goes_the_server_comes_back_through_its_checks(quiescent):
    vs = service(n=1, rise=2, quiescent=quiescent)
    s0 = vs.servers[0].endpoint
    d = m.decide(vs, {s0: OK}, table(vs, 3), {}, 0.0, {s0: HOLD})
    out = table(vs, 0 if quiescent else None)
    health = m.carry_out(d, lambda action: True)
    first = m.decide(vs, {s0: OK}, out, health, 1.0, {})
    assert [e.state for e in first.events] == [m.Seen.RELEASED]
    assert kinds(first) == []  # rise = 2: one good check is not enough
    assert m.server_state(first.health[s0]) == "down"
    second = m.decide(vs, {s0: OK}, out, first.health, 2.0, {})
    assert kinds(second) == [("restore" if quiescent else "add", "192.168.1.10:8080")]
    assert second.actions[0].weight == 3


def test_a_held_server_is_in_place_for_status_when_it_is_out():
    row = {"state": "maintenance", "held": "maintenance", "ipvs_weight": None, "intended_weight": 3}
    snap = {"services": [{"problem": None, "servers": [row]}]}
    assert m.in_place(snap)
    assert m.in_place({"services": [{"problem": None, "servers": [dict(row, ipvs_weight=0)]}]})
    assert not m.in_place({"services": [{"problem": None, "servers": [dict(row, ipvs_weight=3)]}]})
    assert 'monitor_rs_server_held{service="a",name="b",server="c"} 1' in m.metrics_text(
        {"time": 0, "pass_seconds": 0, "services": [{"address": "a", "name": "b", "servers": [
            dict(row, server="c", latency_ms=0.0)]}]})
