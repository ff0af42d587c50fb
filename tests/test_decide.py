"""The decision, a pure function: probe results + health + table -> actions.

No mocks: tables and probe results are plain values.
"""

import ipaddress

import pytest

import monitor_rs as m

OK = m.ProbeResult(True, "HTTP 200", 0.01)
BAD = m.ProbeResult(False, "refused", 0.0)


def ep(text):
    return m.parse_address(text)


def service(servers=("192.168.1.10:8080", "192.168.1.11:8080"), weights=(3, 1), forward="-m", **kw):
    rs = tuple(m.RealServer(ep(s).ip, ep(s).port, w, i) for i, (s, w) in enumerate(zip(servers, weights)))
    return m.VirtualService("web", "tcp", ipaddress.ip_address("10.0.0.1"), 80, 0, rs, forward, **kw)


def table(vs, **weights):
    """table(vs, s0=3) -> server 0 in IPVS with weight 3, as IPVS stores it."""
    out = {}
    for key, weight in weights.items():
        stored = vs.stored_endpoint(vs.servers[int(key[1:])].endpoint)
        out[stored] = m.Destination(stored, m.FORWARD_NAMES[vs.forward], weight)
    return out


def results(vs, *verdicts):
    return {rs.endpoint: v for rs, v in zip(vs.servers, verdicts)}


def args(decision):
    return [a.args for a in decision.actions]


# Every combination of present/absent x healthy/failing, with the original's rise = fall = 1.
@pytest.mark.parametrize("forward", ["-g", "-m", "-i"])
@pytest.mark.parametrize("present, verdict, expected", [
    (False, OK, "add"),
    (True, OK, None),
    (True, BAD, "delete"),
    (False, BAD, None),
])
def test_present_absent_x_healthy_failing(forward, present, verdict, expected):
    vs = service(servers=("192.168.1.10:8080",), weights=(3,), forward=forward)
    tbl = table(vs, s0=3) if present else {}
    d = m.decide(vs, results(vs, verdict), tbl, {})
    port = "8080" if forward == "-m" else "80"  # -g / -i: stored under the virtual port
    want = {
        "add": [("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.10:8080", forward, "-w", "3")],
        "delete": [("-d", "-t", "10.0.0.1:80", "-r", f"192.168.1.10:{port}")],
        None: [],
    }[expected]
    assert args(d) == want
    assert d.health[vs.servers[0].endpoint].up is (verdict.ok)


def test_gate_with_other_real_port_is_found_under_the_virtual_port():
    """RPORT != VPORT with -g: the original never found it and re-added it every pass."""
    vs = service(forward="-g")
    tbl = table(vs, s0=3, s1=1)
    assert ep("192.168.1.10:80") in tbl
    assert args(m.decide(vs, results(vs, OK, OK), tbl, {})) == []


def test_server_in_another_service_is_not_present_here():
    vs = service()
    other_service_table = {}  # the same RIP:PORT elsewhere never reaches this table
    d = m.decide(vs, results(vs, OK, OK), other_service_table, {})
    assert [a.kind for a in d.actions] == ["add", "add"]


def test_hand_deleted_healthy_server_is_restored():
    vs = service()
    health = {rs.endpoint: m.Health(up=True, good=5) for rs in vs.servers}
    d = m.decide(vs, results(vs, OK, OK), table(vs, s1=1), health)
    assert args(d) == [("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.10:8080", "-m", "-w", "3")]


def test_weights_by_index():
    vs = service(weights=(5, 9))
    d = m.decide(vs, results(vs, OK, OK), {}, {})
    assert [a.args[-1] for a in d.actions] == ["5", "9"]


def test_no_result_no_change():
    vs = service()
    d = m.decide(vs, {}, table(vs, s0=3), {})
    assert args(d) == [] and d.events == ()


# Rise and fall (HAProxy's counters).
def run_sequence(vs, verdicts, tbl=None, apply=True):
    """Feed one verdict per pass for server 0; apply the actions to a table copy."""
    tbl = dict(tbl or {})
    health = {}
    seen = []
    for verdict in verdicts:
        d = m.decide(vs, results(vs, verdict, *[OK] * (len(vs.servers) - 1)), tbl, health)
        health = d.health
        for a in d.actions:
            stored = vs.stored_endpoint(m.parse_address(a.args[4]))
            if a.kind in ("add", "fallback-add"):
                tbl[stored] = m.Destination(stored, "Masq", a.weight)
            elif a.kind in ("delete", "fallback-delete"):
                del tbl[stored]
            else:
                tbl[stored] = m.Destination(stored, "Masq", a.weight)
        seen.append([a.kind for a in d.actions if a.server == str(vs.servers[0])])
    return seen, tbl, health


def test_fall_needs_consecutive_failures():
    vs = service(servers=("192.168.1.10:8080",), weights=(3,), fall=3)
    seen, tbl, _ = run_sequence(vs, [BAD, BAD, OK, BAD, BAD, BAD], table(vs, s0=3))
    assert seen == [[], [], [], [], [], ["delete"]]


def test_rise_needs_consecutive_successes():
    vs = service(servers=("192.168.1.10:8080",), weights=(3,), rise=2)
    seen, _, _ = run_sequence(vs, [OK, BAD, OK, OK])
    assert seen == [[], [], [], ["add"]]


def test_start_up_a_present_server_stays_until_probes_fail():
    vs = service(servers=("192.168.1.10:8080",), weights=(3,), fall=2)
    seen, _, health = run_sequence(vs, [BAD], table(vs, s0=3))
    assert seen == [[]] and health[vs.servers[0].endpoint].up is True


def test_start_up_nothing_added_without_a_passed_probe():
    vs = service(servers=("192.168.1.10:8080",), weights=(3,))
    d = m.decide(vs, results(vs, BAD), {}, {})
    assert args(d) == []
    assert [e.state for e in d.events] == ["down"]  # said once at start


# Quiescent.
def test_quiescent_sets_weight_zero_then_restores():
    vs = service(servers=("192.168.1.10:8080",), weights=(3,), quiescent=True)
    seen, tbl, health = run_sequence(vs, [BAD], table(vs, s0=3))
    assert seen == [["quiesce"]] and tbl[vs.servers[0].endpoint].weight == 0
    d = m.decide(vs, results(vs, OK), tbl, health)
    assert args(d) == [("-e", "-t", "10.0.0.1:80", "-r", "192.168.1.10:8080", "-m", "-w", "3")]


def test_quiescent_leaves_an_operators_weight_alone():
    vs = service(servers=("192.168.1.10:8080",), weights=(3,), quiescent=True)
    healthy = {vs.servers[0].endpoint: m.Health(up=True, good=9)}
    assert args(m.decide(vs, results(vs, OK), table(vs, s0=0), healthy)) == []  # drained by hand
    assert args(m.decide(vs, results(vs, OK), table(vs, s0=7), healthy)) == []  # changed by hand


def test_quiesced_server_whose_weight_an_operator_changed_is_theirs():
    vs = service(servers=("192.168.1.10:8080",), weights=(3,), quiescent=True)
    quiesced = {vs.servers[0].endpoint: m.Health(up=False, bad=4, quiesced=True)}
    d = m.decide(vs, results(vs, OK), table(vs, s0=5), quiesced)
    assert args(d) == [] and d.health[vs.servers[0].endpoint].quiesced is False


# Fallback.
def test_fallback_added_before_the_last_server_goes_and_removed_after_one_is_back():
    vs = service(servers=("192.168.1.10:8080",), weights=(3,), fallback=ep("127.0.0.1:80"))
    d = m.decide(vs, results(vs, BAD), table(vs, s0=3), {})
    assert [a.kind for a in d.actions] == ["fallback-add", "delete"]
    assert d.actions[0].args == ("-a", "-t", "10.0.0.1:80", "-r", "127.0.0.1:80", "-m", "-w", "1")
    tbl = {ep("127.0.0.1:80"): m.Destination(ep("127.0.0.1:80"), "Masq", 1)}
    d = m.decide(vs, results(vs, OK), tbl, d.health)
    assert [a.kind for a in d.actions] == ["add", "fallback-delete"]


# Depool threshold.
def test_depool_threshold_half_of_three_takes_exactly_one_out():
    vs = service(servers=("10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:80"), weights=(1, 1, 1), depool_threshold=0.5)
    tbl = table(vs, s0=1, s1=1, s2=1)
    d = m.decide(vs, results(vs, BAD, BAD, BAD), tbl, {})
    assert [a.kind for a in d.actions] == ["delete"]
    assert sorted(e.state for e in d.events) == ["down", "down", "down", "kept", "kept"]


def test_depool_threshold_outcome_does_not_depend_on_arrival_order():
    vs = service(servers=("10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:80"), weights=(1, 1, 1), depool_threshold=0.5)
    tbl = table(vs, s0=1, s1=1, s2=1)
    a = m.decide(vs, dict(reversed(list(results(vs, BAD, BAD, BAD).items()))), tbl, {})
    b = m.decide(vs, results(vs, BAD, BAD, BAD), tbl, {})
    assert args(a) == args(b)


def test_depool_threshold_longest_failure_goes_first_and_kept_are_logged_once():
    vs = service(servers=("10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:80"), weights=(1, 1, 1), depool_threshold=0.5)
    tbl = table(vs, s0=1, s1=1, s2=1)
    health = {vs.servers[2].endpoint: m.Health(up=True, bad=0)}
    d1 = m.decide(vs, results(vs, OK, OK, BAD), tbl, health)
    assert [a.server for a in d1.actions] == ["10.1.0.3:80"]
    del tbl[vs.servers[2].endpoint]
    d2 = m.decide(vs, results(vs, BAD, BAD, BAD), tbl, d1.health)
    assert args(d2) == [] and [e.state for e in d2.events] == ["down", "down", "kept", "kept"]
    d3 = m.decide(vs, results(vs, BAD, BAD, BAD), tbl, d2.health)
    assert args(d3) == [] and d3.events == ()
    d4 = m.decide(vs, results(vs, BAD, BAD, OK), tbl, d3.health)  # one back: one may go
    assert [a.kind for a in d4.actions] == ["add", "delete"]
    assert d4.actions[1].server == "10.1.0.1:80"


def test_depool_threshold_zero_is_the_originals_behaviour():
    vs = service(servers=("10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:80"), weights=(1, 1, 1))
    d = m.decide(vs, results(vs, BAD, BAD, BAD), table(vs, s0=1, s1=1, s2=1), {})
    assert [a.kind for a in d.actions] == ["delete"] * 3


def test_a_check_may_ask_for_a_weight_and_an_operator_still_wins():
    """dynamic_weight: a good check's weight is the server's, until a good check asks for none;
    a weight set by hand is the operator's and stays."""
    vs = m.VirtualService("dyn", "tcp", ipaddress.ip_address("10.0.0.1"), 80, 0,
                          (m.RealServer(ipaddress.ip_address("10.1.0.1"), 80, 3, 0),), "-m")
    ep = vs.servers[0].endpoint
    table = {ep: m.Destination(ep, "Masq", 3)}
    asked = m.decide(vs, {ep: m.ProbeResult(True, "exit 7", 0.0, weight=5)}, table, {})
    (action,) = asked.actions
    assert (action.kind, action.weight, action.reason) == (m.Change.REWEIGHT, 5, "asked by its check (exit 7)")
    table = {ep: m.Destination(ep, "Masq", 5)}
    same = m.decide(vs, {ep: m.ProbeResult(True, "exit 7", 0.0, weight=5)}, table, asked.health)
    assert same.actions == () and same.health[ep].operator is None
    back = m.decide(vs, {ep: m.ProbeResult(True, "exit 0", 0.0)}, table, same.health)
    assert [(a.kind, a.weight) for a in back.actions] == [(m.Change.REWEIGHT, 3)]
    failed = m.decide(vs, {ep: m.ProbeResult(False, "exit 1", 0.0)}, table, same.health)
    assert [a.kind for a in failed.actions] == [m.Change.DELETE]
    by_hand = {ep: m.Destination(ep, "Masq", 0)}  # drained by an operator
    kept = m.decide(vs, {ep: m.ProbeResult(True, "exit 9", 0.0, weight=7)}, by_hand, same.health)
    assert kept.actions == () and kept.health[ep].operator == 0
