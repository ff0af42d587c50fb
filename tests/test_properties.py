"""Properties of the decision over any sequence of probe results (hypothesis).

The table is simulated by applying each pass's actions, as ipvsadm would.
"""

import dataclasses
import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

import monitor_rs as m

OK = m.ProbeResult(True, "HTTP 200", 0.0)
BAD = m.ProbeResult(False, "refused", 0.0)


def make_service(n, fall, rise, quiescent, fallback, threshold, forward, slowstart=0.0):
    servers = tuple(m.RealServer(ipaddress.ip_address(f"10.1.0.{i + 1}"), 8080, i % 3 + 1, i) for i in range(n))
    return m.VirtualService(
        "prop", "tcp", ipaddress.ip_address("10.0.0.1"), 80, 0, servers, forward, fall=fall, rise=rise,
        quiescent=quiescent, depool_threshold=threshold,
        fallback=m.parse_endpoint("127.0.0.1:8000", None) if fallback else None, slowstart=slowstart)


def apply(vs, table, actions):
    """What the kernel does with the actions (-a/-e rewrite the port for -g/-i)."""
    table = dict(table)
    for action in actions:
        named = m.parse_address(action.args[4])
        stored = vs.stored_endpoint(named) if action.args[0] in ("-a", "-e") else named
        if action.args[0] == "-a":
            assert stored not in table, "added a destination that exists"
            table[stored] = m.Destination(stored, m.FORWARD_NAMES[vs.forward], action.weight)
        elif action.args[0] == "-e":
            assert stored in table, "edited a destination that is not there"
            table[stored] = m.Destination(stored, m.FORWARD_NAMES[vs.forward], action.weight)
        else:
            assert stored in table, "deleted a destination that is not there"
            del table[stored]
    return table


def in_pool(vs, table, rs):
    d = table.get(vs.stored_endpoint(rs.endpoint))
    return d is not None and d.weight > 0


services = st.builds(
    make_service, n=st.integers(1, 4), fall=st.integers(1, 3), rise=st.integers(1, 3),
    quiescent=st.booleans(), fallback=st.booleans(), threshold=st.just(0.0),
    forward=st.sampled_from(["-g", "-m", "-i"]))


@settings(max_examples=300, deadline=None)
@given(vs=services, data=st.data())
def test_fall_and_rise_are_honoured_and_the_pool_is_never_empty_with_a_fallback(vs, data):
    passes = data.draw(st.lists(st.lists(st.booleans(), min_size=len(vs.servers), max_size=len(vs.servers)),
                                min_size=1, max_size=12))
    start_present = data.draw(st.lists(st.booleans(), min_size=len(vs.servers), max_size=len(vs.servers)))
    table = {vs.stored_endpoint(rs.endpoint): m.Destination(vs.stored_endpoint(rs.endpoint), "Route", rs.weight)
             for rs, present in zip(vs.servers, start_present) if present}
    health = {}
    streaks = {rs.endpoint: [0, 0] for rs in vs.servers}  # good, bad
    for verdicts in passes:
        results = {rs.endpoint: OK if ok else BAD for rs, ok in zip(vs.servers, verdicts)}
        for rs, ok in zip(vs.servers, verdicts):
            good, bad = streaks[rs.endpoint]
            streaks[rs.endpoint] = [good + 1, 0] if ok else [0, bad + 1]
        decision = m.decide(vs, results, table, health)
        table, health = apply(vs, table, decision.actions), decision.health
        for rs in vs.servers:
            good, bad = streaks[rs.endpoint]
            if bad >= vs.fall:  # failed `fall` times in a row: not serving
                assert not in_pool(vs, table, rs)
            if good >= vs.rise:  # passed `rise` times in a row: serving
                assert in_pool(vs, table, rs)
        if vs.fallback is not None:
            assert table, "pool empty although a fallback is configured"
            fallback_in = vs.stored_endpoint(vs.fallback) in table
            assert fallback_in == (not any(health[rs.endpoint].up for rs in vs.servers))


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 6), threshold=st.sampled_from([0.25, 0.5, 0.75, 1.0]), data=st.data())
def test_depool_threshold_never_shrinks_the_pool_below_the_floor_by_its_own_decision(n, threshold, data):
    vs = make_service(n, 1, 1, data.draw(st.booleans()), False, threshold, "-m")
    table = apply(vs, {}, m.decide(vs, {rs.endpoint: OK for rs in vs.servers}, {}, {}).actions)
    health = {}
    for verdicts in data.draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n), max_size=10)):
        before = sum(in_pool(vs, table, rs) for rs in vs.servers)
        results = {rs.endpoint: OK if ok else BAD for rs, ok in zip(vs.servers, verdicts)}
        decision = m.decide(vs, results, table, health)
        table, health = apply(vs, table, decision.actions), decision.health
        after = sum(in_pool(vs, table, rs) for rs in vs.servers)
        if after < before:
            assert after >= threshold * n - 1e-9
        # A healthy server is always serving, whatever the threshold.
        for rs, ok in zip(vs.servers, verdicts):
            if ok:
                assert in_pool(vs, table, rs)


# Issue 11: the same, with the world in it: changes that fail, restarts of the
# monitor between passes (only its memory survives), and an operator who sets
# weights by hand.  The pass is carried out by the monitor's own carry_out.

def run_pass(vs, table, health, verdicts, failures):
    """One pass: decide, then make each change unless `failures` says it fails."""
    results = {rs.endpoint: OK if ok else BAD for rs, ok in zip(vs.servers, verdicts)}
    decision = m.decide(vs, results, table, health)
    health, table, _ = carry(vs, table, decision, failures)
    return table, health, decision


def carry(vs, table, decision, failures):
    """carry_out with the changes failing as `failures` says (in order): the health, the table the
    kernel then has, and the changes made."""
    outcome, made = iter(failures), []

    def make(action):
        ok = not next(outcome, False)
        if ok:
            made.append(action)
        return ok

    health = m.carry_out(decision, make)
    return health, apply(vs, table, made), made


def pool(table):
    return sum(1 for d in table.values() if d.weight > 0)


world = st.fixed_dictionaries({
    "verdicts": st.lists(st.booleans(), min_size=4, max_size=4),
    "failures": st.lists(st.booleans(), max_size=8),  # per change made, in order: True = it fails
    "restart": st.booleans(),
    "hand": st.one_of(st.none(), st.tuples(st.integers(0, 3), st.integers(0, 3))),  # (server, weight)
})


@settings(max_examples=400, deadline=None)
@given(vs=st.builds(make_service, n=st.integers(1, 4), fall=st.integers(1, 2), rise=st.integers(1, 2),
                    quiescent=st.booleans(), fallback=st.booleans(), threshold=st.just(0.0),
                    forward=st.sampled_from(["-g", "-m"])),
       start_present=st.lists(st.booleans(), min_size=4, max_size=4),
       passes=st.lists(world, min_size=1, max_size=10))
def test_what_the_monitor_did_holds_through_failed_changes_restarts_and_operators(vs, start_present, passes):
    table = {vs.stored_endpoint(rs.endpoint): m.Destination(vs.stored_endpoint(rs.endpoint), "Masq", rs.weight)
             for rs, present in zip(vs.servers, start_present) if present}
    health = {}
    intent = {}  # the weight an operator set by hand, per server
    for step in passes:
        if step["restart"]:
            health = {ep: m.remembered(h) for ep, h in health.items()}
        if step["hand"] is not None:
            index, weight = step["hand"]
            rs = vs.servers[index % len(vs.servers)]
            stored = vs.stored_endpoint(rs.endpoint)
            if stored in table and table[stored].weight != weight:  # the same weight again is no change
                table[stored] = m.Destination(stored, "Masq", weight)
                # The weight of a change the monitor made but could not confirm (ipvsadm failed or
                # timed out, or it died first), set by hand before it looks again, cannot be told
                # from that change having held: it is taken as the monitor's.
                # And in a quiescent service, a 0 the monitor finds with no memory of the server
                # (before its first look) is taken as its own quiesce.
                h = health.get(rs.endpoint, m.Health())
                first_sight = h.up is None and h.weight is None and h.operator is None
                if weight in h.tried or (vs.quiescent and weight == 0 and first_sight):
                    pass  # the operator's earlier weight, if any, still stands
                else:
                    intent[rs.endpoint] = weight
        before = pool(table)
        verdicts = step["verdicts"][:len(vs.servers)]
        table, health, decision = run_pass(vs, table, health, verdicts, step["failures"])
        # A fallback keeps the pool from emptying, whatever fails.
        if vs.fallback is not None and before:
            assert pool(table), "the pool was emptied although a fallback is configured"
        if any(step["failures"][:len(decision.actions)]):
            continue
        # Every change held: the table is what the monitor intends, operators' weights included.
        for rs in vs.servers:
            h = health[rs.endpoint]
            d = table.get(vs.stored_endpoint(rs.endpoint))
            want = intent.get(rs.endpoint, rs.weight)
            if h.up:
                assert d is not None and d.weight == want, (rs, h, d, want)
            elif vs.quiescent:
                assert d is None or d.weight == 0, (rs, h, d)
            else:
                assert d is None, (rs, h, d)
        if vs.fallback is not None:
            serving = any(health[rs.endpoint].up and intent.get(rs.endpoint, rs.weight) > 0 for rs in vs.servers)
            assert (vs.stored_endpoint(vs.fallback) in table) == (not serving)


# Issue 12: a check may ask for a weight (check = external with dynamic_weight:
# exit 2..255 is healthy at weight exit - 2), with changes that fail and restarts.

asking = st.fixed_dictionaries({
    "verdicts": st.lists(st.sampled_from(["bad", "ok", "ask 0", "ask 2", "ask 5"]), min_size=4, max_size=4),
    "failures": st.lists(st.booleans(), max_size=8),
    "restart": st.booleans(),
})


def asked_result(verdict):
    if verdict == "bad":
        return BAD
    if verdict == "ok":
        return OK
    return m.ProbeResult(True, f"exit {int(verdict[4:]) + 2}", 0.0, weight=int(verdict[4:]))


@settings(max_examples=400, deadline=None)
@given(vs=st.builds(make_service, n=st.integers(1, 4), fall=st.integers(1, 2), rise=st.integers(1, 2),
                    quiescent=st.booleans(), fallback=st.booleans(), threshold=st.just(0.0),
                    forward=st.sampled_from(["-g", "-m"])),
       passes=st.lists(asking, min_size=1, max_size=10))
def test_a_weight_a_check_asks_for_is_the_servers_and_the_pool_never_empties(vs, passes):
    table, health = {}, {}
    asked = {}  # what the last good check of each server asked for (None: the configured weight)
    for step in passes:
        if step["restart"]:
            health = {ep: m.remembered(h) for ep, h in health.items()}
        verdicts = step["verdicts"][:len(vs.servers)]
        results = {rs.endpoint: asked_result(v) for rs, v in zip(vs.servers, verdicts)}
        for rs in vs.servers:
            if results[rs.endpoint].ok:
                asked[rs.endpoint] = results[rs.endpoint].weight
        before = pool(table)
        decision = m.decide(vs, results, table, health)
        health, table, made = carry(vs, table, decision, step["failures"])
        if vs.fallback is not None and before:
            assert pool(table), "the pool was emptied although a fallback is configured"
        if any(step["failures"][:len(decision.actions)]):
            continue
        for rs in vs.servers:
            h, d = health[rs.endpoint], table.get(vs.stored_endpoint(rs.endpoint))
            assert h.operator is None, (rs, h)  # no operator here: a weight asked for is never "by hand"
            if h.up and results[rs.endpoint].ok:
                want = rs.weight if asked[rs.endpoint] is None else asked[rs.endpoint]
                assert d is not None and d.weight == want, (rs, h, d, want)
        if vs.fallback is not None:
            serving = any(d.weight > 0 for ep, d in table.items() if ep != vs.stored_endpoint(vs.fallback))
            assert (vs.stored_endpoint(vs.fallback) in table) == (not serving)


# Issue 13 (maintenancedir) and issue 15 (drain): servers an operator holds out, a pure input
# of the decision, with changes that fail, restarts, and any depool threshold.

HOLD = m.Hold("maintenance", "maintenance: file in /maint")

holding = st.fixed_dictionaries({
    "verdicts": st.lists(st.booleans(), min_size=4, max_size=4),
    "held": st.lists(st.booleans(), min_size=4, max_size=4),
    "failures": st.lists(st.booleans(), max_size=8),
    "restart": st.booleans(),
})


@settings(max_examples=400, deadline=None)
@given(vs=st.builds(make_service, n=st.integers(1, 4), fall=st.integers(1, 2), rise=st.integers(1, 2),
                    quiescent=st.booleans(), fallback=st.booleans(),
                    threshold=st.sampled_from([0.0, 0.5, 1.0]), forward=st.sampled_from(["-g", "-m"])),
       start_present=st.lists(st.booleans(), min_size=4, max_size=4),
       passes=st.lists(holding, min_size=1, max_size=10))
def test_a_held_server_is_never_added_goes_out_and_the_pool_never_empties_with_a_fallback(vs, start_present,
                                                                                           passes):
    table = {vs.stored_endpoint(rs.endpoint): m.Destination(vs.stored_endpoint(rs.endpoint), "Masq", rs.weight)
             for rs, present in zip(vs.servers, start_present) if present}
    health = {}
    for step in passes:
        if step["restart"]:
            health = {ep: m.remembered(h) for ep, h in health.items()}
        held = {rs.endpoint: HOLD for rs, h in zip(vs.servers, step["held"]) if h}
        results = {rs.endpoint: OK if ok else BAD for rs, ok in zip(vs.servers, step["verdicts"])}
        before = pool(table)
        decision = m.decide(vs, results, table, health, 0.0, held)
        for action in decision.actions:  # never put in, nor given a weight
            if action.endpoint in held:
                assert action.kind in (m.Change.DELETE, m.Change.QUIESCE), action
        health, table, made = carry(vs, table, decision, step["failures"])
        if vs.fallback is not None and before:
            assert pool(table), "the pool was emptied although a fallback is configured"
        for ep in held:
            assert health[ep].held == "maintenance" and not health[ep].up
        if any(step["failures"][:len(decision.actions)]):
            continue
        for rs in vs.servers:  # every change held: a held server is out, whatever the threshold
            d = table.get(vs.stored_endpoint(rs.endpoint))
            if rs.endpoint in held:
                assert d is None or (vs.quiescent and d.weight == 0), (rs, d)
        if vs.fallback is not None and not vs.depool_threshold:  # (a threshold keeps failing ones in, beside it)
            serving = any(d.weight > 0 for ep, d in table.items() if ep != vs.stored_endpoint(vs.fallback))
            assert (vs.stored_endpoint(vs.fallback) in table) == (not serving)


# Issue 15 (drain): drained servers beside maintenance holds, with any active connections, any
# drain_timeout, time going on, changes that fail, restarts, and any depool threshold.

draining = st.fixed_dictionaries({
    "verdicts": st.lists(st.booleans(), min_size=4, max_size=4),
    "holds": st.lists(st.sampled_from([None, None, "maintenance", "drained", "drained"]), min_size=4, max_size=4),
    "active": st.lists(st.integers(0, 2), min_size=4, max_size=4),
    "elapsed": st.sampled_from([0.0, 1.0, 4.0, 10.0]),
    "failures": st.lists(st.booleans(), max_size=8),
    "restart": st.booleans(),
})


@settings(max_examples=400, deadline=None)
@given(vs=st.builds(make_service, n=st.integers(1, 4), fall=st.integers(1, 2), rise=st.integers(1, 2),
                    quiescent=st.booleans(), fallback=st.booleans(),
                    threshold=st.sampled_from([0.0, 0.5, 1.0]), forward=st.sampled_from(["-g", "-m"])),
       drain_timeout=st.sampled_from([None, 0.0, 5.0]),
       start_present=st.lists(st.booleans(), min_size=4, max_size=4),
       passes=st.lists(draining, min_size=1, max_size=10))
def test_a_drained_server_is_never_added_nor_given_weight_and_leaves_only_at_0_connections_or_its_timeout(
        vs, drain_timeout, start_present, passes):
    vs = dataclasses.replace(vs, drain_timeout=drain_timeout)
    fallback = vs.stored_endpoint(vs.fallback) if vs.fallback is not None else None
    floor = vs.depool_threshold * len(vs.servers)
    table = {vs.stored_endpoint(rs.endpoint): m.Destination(vs.stored_endpoint(rs.endpoint), "Masq", rs.weight)
             for rs, present in zip(vs.servers, start_present) if present}
    health, began, now = {}, {}, 1000.0
    for step in passes:
        now += step["elapsed"]
        if step["restart"]:
            health = {ep: m.remembered(h) for ep, h in health.items()}
        table = {ep: dataclasses.replace(d, active=a if ep != fallback else 0)
                 for (ep, d), a in zip(table.items(), step["active"] * 2)}
        states = {rs.endpoint: s for rs, s in zip(vs.servers, step["holds"]) if s}
        began = {ep: began.get(ep, now) for ep, s in states.items() if s == m.DRAINED}  # a drain's start
        held = {ep: m.Hold(s, f"{s}: by the test", began.get(ep, 0.0)) for ep, s in states.items()}
        results = {rs.endpoint: OK if ok else BAD for rs, ok in zip(vs.servers, step["verdicts"])}
        before = dict(table)
        decision = m.decide(vs, results, table, health, now, held)
        for action in decision.actions:
            if action.endpoint not in held:
                continue
            listed = before.get(vs.stored_endpoint(action.endpoint))
            if held[action.endpoint].state == m.MAINTENANCE:
                assert action.kind in (m.Change.DELETE, m.Change.QUIESCE), action
            elif action.kind == m.Change.DRAIN:  # never added, never given a weight: 0 first
                assert action.weight == 0 and listed is not None and listed.weight > 0, (action, listed)
            else:  # deleted only from 0, once its connections ended or its timeout passed
                assert action.kind == m.Change.DELETE, action
                assert listed is not None and listed.weight == 0, (action, listed)
                assert listed.active == 0 or (
                    drain_timeout is not None and now - began[action.endpoint] >= drain_timeout), (action, listed)
        health, table, made = carry(vs, table, decision, step["failures"])
        if vs.fallback is not None and pool(before):
            assert pool(table), "the pool was emptied although a fallback is configured"
        for ep, state in states.items():
            assert health[ep].held == state and not health[ep].up
        if made != list(decision.actions):
            continue
        gone = {ep for ep, d in before.items() if d.weight > 0 and ep != fallback} - {
            ep for ep, d in table.items() if d.weight > 0}
        if gone - {vs.stored_endpoint(ep) for ep in held}:  # the depool floor: none of ours below it
            assert sum(1 for ep, d in table.items() if d.weight > 0 and ep != fallback) >= floor - 1e-9
        for ep, state in states.items():  # every change held: a drained server is at 0 or out
            was, d = before.get(vs.stored_endpoint(ep)), table.get(vs.stored_endpoint(ep))
            if state == m.DRAINED:
                assert d is None or d.weight == 0, (ep, d)
            if state == m.DRAINED and was is not None and was.weight == 0 and (
                    was.active == 0 or (drain_timeout is not None and now - began[ep] >= drain_timeout)):
                assert d is None, (ep, was, d)
        if vs.fallback is not None and not vs.depool_threshold:
            serving = any(d.weight > 0 for ep, d in table.items() if ep != fallback)
            assert (fallback in table) == (not serving)


# Issue 14: act on each result as it arrives.  The monitor decides a service on each batch of
# results as the wave hands them over, on the table as its changes so far left it; a removal the
# depool threshold could refuse waits for the wave's end (split_arrivals).  Driven here in random
# batches, in any arrival order, beside the whole-pass decision: the same table and health at the
# end of every pass, and the invariants after every single change.

def weights(table):
    return {ep: d.weight for ep, d in table.items()}


def arrival_pass(vs, table, health, results, order, cuts, held, after_each=lambda before, table: None, now=0.0):
    """One pass as Monitor.run_pass drives it: held servers first, then each batch of `order`
    (cut at `cuts`) as it arrives, then what was kept back; every change holds."""
    state = {"table": table, "health": health, "decided": False}
    start = table  # as read at the pass's start

    def step(now_results, pending=()):
        now_held = m.holds_go_first(vs, state["table"], held, list(pending))
        decision = m.decide(vs, now_results, state["table"], state["health"], now, held if now_held else {},
                            postponed=frozenset() if now_held else frozenset(held), start=start)
        released = {e.server for e in decision.events if e.state == m.Seen.RELEASED}
        assert not released & {str(ep) for ep in held}, "a server still held was said released"
        for action in decision.actions:
            before = state["table"]
            state["table"] = apply(vs, before, [action])
            assert weights(m.changed_table(vs, before, [action])) == weights(state["table"])  # the monitor's view
            after_each(before, state["table"])
        state["health"], state["decided"] = decision.health, True
        return decision

    pending = [ep for ep in order if ep not in held]
    if held and m.holds_go_first(vs, state["table"], held, pending):
        step({}, pending)
    servers = {rs.endpoint: rs for rs in vs.servers}
    kept, quiet = {}, {}
    bounds = sorted(set(c % (len(pending) + 1) for c in cuts)) + [len(pending)]
    first = 0
    for last in bounds:
        batch, pending = pending[:last - first], pending[last - first:]
        first = last
        for ep in batch:
            h = state["health"].get(ep, m.Health())
            if m.unremarkable(vs, servers[ep], results[ep], h, state["table"]):
                quiet[ep] = results[ep]  # changes nothing: decided at the end
            else:
                kept[ep] = results[ep]
        if not kept:
            continue
        now_results, kept = m.split_arrivals(vs, kept, state["table"], state["health"], pending)
        if now_results:
            step(now_results, pending)
    if kept or quiet or not state["decided"]:
        step({**quiet, **kept})
    return state["table"], state["health"]


arrivals = st.fixed_dictionaries({
    "verdicts": st.lists(st.sampled_from(["bad", "ok", "ok", "ask 0"]), min_size=5, max_size=5),
    "held": st.lists(st.sampled_from([False, False, False, True]), min_size=5, max_size=5),
    "order": st.permutations(range(5)),
    "cuts": st.lists(st.integers(0, 5), max_size=4),
})


@settings(max_examples=600, deadline=None)
@given(vs=st.builds(make_service, n=st.integers(1, 5), fall=st.integers(1, 2), rise=st.integers(1, 2),
                    quiescent=st.booleans(), fallback=st.booleans(),
                    threshold=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), forward=st.sampled_from(["-g", "-m"]),
                    slowstart=st.sampled_from([0.0, 0.0, 4.0])),  # a ramp spans several passes, 1 s apart
       start_present=st.lists(st.booleans(), min_size=5, max_size=5),
       passes=st.lists(arrivals, min_size=1, max_size=8))
def test_deciding_as_results_arrive_ends_as_the_whole_pass_decision_in_any_order(vs, start_present, passes):
    table = {vs.stored_endpoint(rs.endpoint): m.Destination(vs.stored_endpoint(rs.endpoint), "Masq", rs.weight)
             for rs, present in zip(vs.servers, start_present) if present}
    whole_table, whole_health = table, {}
    health = {}
    floor = vs.depool_threshold * len(vs.servers)
    fallback = vs.stored_endpoint(vs.fallback) if vs.fallback is not None else None
    for clock, step in enumerate(passes):
        n = len(vs.servers)
        results = {rs.endpoint: asked_result(v) for rs, v in zip(vs.servers, step["verdicts"])}
        held = {rs.endpoint: HOLD for rs, h in zip(vs.servers, step["held"]) if h}
        order = [vs.servers[i].endpoint for i in step["order"] if i < n]
        forced = {vs.stored_endpoint(ep) for ep in held} | {  # held, or asked weight 0 by its own check
            vs.stored_endpoint(ep) for ep, r in results.items() if r.ok and r.weight == 0}

        def after_each(before, now):
            # the fallback: the pool never empties, across batches
            if vs.fallback is not None and pool(before):
                assert pool(now), "the pool was emptied although a fallback is configured"
            # without one: emptied in the middle of a pass only when the whole pass empties it too
            if vs.fallback is None and pool(before) and not pool(now):
                assert not pool(whole_table), ("the pool was emptied before a server that is back this "
                                               "pass had its result", before, now)
            # the depool threshold: no removal of ours (but a held server's) below the floor
            gone = {ep for ep, d in before.items() if d.weight > 0 and ep != fallback} - {
                ep for ep, d in now.items() if d.weight > 0}
            if gone - forced:
                # (a server whose own check asked for weight 0 counts as in, as decide counts it)
                real = sum(1 for ep, d in now.items() if (d.weight > 0 or ep in forced) and ep != fallback)
                assert real >= floor - 1e-9, (before, now)

        whole = m.decide(vs, results, whole_table, whole_health, float(clock), held)
        whole_table, whole_health = apply(vs, whole_table, whole.actions), whole.health
        serving_at_start = any(d.weight > 0 for ep, d in table.items() if ep != fallback)
        fallback_at_start = fallback is not None and fallback in table
        seen_fallback = []
        table, health = arrival_pass(vs, table, health, results, order, step["cuts"], held,
                                     lambda before, now: (after_each(before, now),
                                                          seen_fallback.append(fallback in now)), float(clock))
        if fallback is not None and not serving_at_start and not fallback_at_start and fallback not in whole_table:
            # an empty pool: the fallback does not come and go within the pass when the whole pass keeps it out
            assert not any(seen_fallback), "the fallback came and went within one pass"
        assert weights(table) == weights(whole_table), (step, table, whole_table)
        assert {ep: (h.up, h.good, h.bad, h.kept, h.quiesced, h.ramp) for ep, h in health.items()} == {
            ep: (h.up, h.good, h.bad, h.kept, h.quiesced, h.ramp) for ep, h in whole_health.items()}


@settings(max_examples=300, deadline=None)
@given(n=st.integers(2, 6), threshold=st.sampled_from([0.25, 0.5, 0.75, 1.0]), quiescent=st.booleans(),
       streaks=st.lists(st.integers(0, 3), min_size=6, max_size=6), data=st.data())
def test_when_the_threshold_binds_who_stays_is_never_decided_by_arrival_order(n, threshold, quiescent, streaks,
                                                                               data):
    """Every server in the pool fails at once, with different streaks behind them: the ones that go
    are those of the longest streaks, then config order, whatever order the failures arrive in."""
    vs = make_service(n, 1, 1, quiescent, False, threshold, "-m")
    table = apply(vs, {}, m.decide(vs, {rs.endpoint: OK for rs in vs.servers}, {}, {}).actions)
    health = {rs.endpoint: m.Health(up=True, good=0, bad=0, weight=rs.weight) for rs in vs.servers}
    # streaks of failures kept in by the threshold before this pass
    health = {ep: dataclasses_replace(h, bad=b, kept=bool(b), up=not b) for (ep, h), b in zip(health.items(), streaks)}
    results = {rs.endpoint: BAD for rs in vs.servers}
    whole = apply(vs, table, m.decide(vs, results, table, health).actions)
    order = data.draw(st.permutations([rs.endpoint for rs in vs.servers]))
    cuts = data.draw(st.lists(st.integers(0, n), max_size=n))
    arrived, _ = arrival_pass(vs, table, health, results, order, cuts, {})
    assert weights(arrived) == weights(whole)
    assert sum(in_pool(vs, arrived, rs) for rs in vs.servers) >= threshold * n - 1e-9


def dataclasses_replace(h, **kw):
    import dataclasses
    return dataclasses.replace(h, **kw)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5), data=st.data())
def test_with_no_threshold_a_failure_is_acted_on_in_its_own_batch(n, data):
    """depool_threshold = 0: nothing is kept back, the first batch's failure goes at once."""
    vs = make_service(n, 1, 1, False, True, 0.0, "-m")
    table = apply(vs, {}, m.decide(vs, {rs.endpoint: OK for rs in vs.servers}, {}, {}).actions)
    first = data.draw(st.sampled_from([rs.endpoint for rs in vs.servers]))
    pending = [rs.endpoint for rs in vs.servers if rs.endpoint != first]
    now, kept = m.split_arrivals(vs, {first: BAD}, table, {}, pending)
    assert now == {first: BAD} and not kept
    decision = m.decide(vs, now, table, {})
    after = apply(vs, table, decision.actions)
    assert vs.stored_endpoint(first) not in after and pool(after)


# Issue 15 (slow start): a server (re)entering a pool where another serves ramps to its weight
# over `slowstart` seconds; with changes that fail, restarts of the monitor (its memory only),
# asked weights, any depool threshold, and a clock that moves on by any amount between passes.

ramping = st.fixed_dictionaries({
    "verdicts": st.lists(st.sampled_from(["bad", "ok", "ask 2", "ask 9", "ask 9"]), min_size=4, max_size=4),
    "failures": st.lists(st.booleans(), max_size=8),
    "restart": st.booleans(),
    "later": st.sampled_from([0.0, 0.5, 1.0, 2.5, 7.0]),  # seconds since the last pass
})


@settings(max_examples=500, deadline=None)
@given(vs=st.builds(make_service, n=st.integers(1, 4), fall=st.integers(1, 2), rise=st.integers(1, 2),
                    quiescent=st.booleans(), fallback=st.booleans(),
                    threshold=st.sampled_from([0.0, 0.5, 1.0]), forward=st.sampled_from(["-g", "-m"]),
                    slowstart=st.sampled_from([3.0, 10.0])),
       start_present=st.lists(st.booleans(), min_size=4, max_size=4),
       passes=st.lists(ramping, min_size=1, max_size=14))
def test_a_ramping_server_is_never_above_its_weight_never_at_0_and_only_climbs(vs, start_present, passes):
    table = {vs.stored_endpoint(rs.endpoint): m.Destination(vs.stored_endpoint(rs.endpoint), "Masq", rs.weight)
             for rs, present in zip(vs.servers, start_present) if present}
    health, now = {}, 1000.0
    asked = {}
    for step in passes:
        now += step["later"]
        if step["restart"]:
            health = {ep: m.remembered(h) for ep, h in health.items()}
        results = {rs.endpoint: asked_result(v) for rs, v in zip(vs.servers, step["verdicts"])}
        for rs in vs.servers:
            if results[rs.endpoint].ok:
                asked[rs.endpoint] = results[rs.endpoint].weight
        before, old = dict(table), dict(health)
        decision = m.decide(vs, results, table, health, now)
        health, table, made = carry(vs, table, decision, step["failures"])
        if vs.fallback is not None and pool(before):
            assert pool(table), "the pool was emptied although a fallback is configured"
        for rs in vs.servers:
            h, d = health[rs.endpoint], table.get(vs.stored_endpoint(rs.endpoint))
            target = rs.weight if asked.get(rs.endpoint) is None else asked[rs.endpoint]
            if h.ramp is not None:  # ramping: in the pool (up, kept in, or its removal failed)
                assert d is not None and d.weight > 0 and (h.up or h.kept or step["failures"]), (rs, h, d)
            was = old.get(rs.endpoint)
            d0 = before.get(vs.stored_endpoint(rs.endpoint))
            if (was is not None and was.ramp is not None and was.ramp == h.ramp and was.up and h.up
                    and d0 is not None and d is not None and d0.weight <= target):
                assert d.weight >= d0.weight, ("a ramp went down", rs, was, h, d0, d)  # only climbs
        if any(step["failures"][:len(decision.actions)]):
            continue
        for rs in vs.servers:  # every change held
            h, d = health[rs.endpoint], table.get(vs.stored_endpoint(rs.endpoint))
            target = rs.weight if asked.get(rs.endpoint) is None else asked[rs.endpoint]
            if h.up and results[rs.endpoint].ok:
                assert d is not None and 1 <= d.weight <= target, (rs, h, d, target)  # never 0, never above
                if h.ramp is None:
                    assert d.weight == target, (rs, h, d, target)  # done, or never ramped
                else:
                    assert now - vs.slowstart < h.ramp <= now and d.weight < target, (rs, h, d, now)
        real = [sum(in_pool(vs, t, rs) for rs in vs.servers) for t in (before, table)]
        if vs.depool_threshold and real[1] < real[0]:  # the pool floor: a ramping server counts as in
            assert real[1] >= vs.depool_threshold * len(vs.servers) - 1e-9, (before, table)
        if vs.fallback is not None and not vs.depool_threshold:
            serving = any(d.weight > 0 for ep, d in table.items() if ep != vs.stored_endpoint(vs.fallback))
            assert (vs.stored_endpoint(vs.fallback) in table) == (not serving)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(2, 4), slowstart=st.sampled_from([3.0, 10.0, 60.0]), data=st.data())
def test_a_server_back_beside_others_starts_at_1_and_reaches_its_weight_when_slowstart_is_over(n, slowstart, data):
    vs = make_service(n, 1, 1, data.draw(st.booleans()), data.draw(st.booleans()), 0.0, "-m", slowstart)
    table = apply(vs, {}, m.decide(vs, {rs.endpoint: OK for rs in vs.servers}, {}, {}).actions)
    back = data.draw(st.sampled_from(vs.servers))
    health = m.decide(vs, {back.endpoint: BAD}, table, {}, 0.0).health
    table = apply(vs, table, m.decide(vs, {back.endpoint: BAD}, table, {}, 0.0).actions)
    now, weights_seen = 100.0, []
    for later in data.draw(st.lists(st.floats(0.0, slowstart / 2), min_size=1, max_size=20)) + [slowstart]:
        d = m.decide(vs, {rs.endpoint: OK for rs in vs.servers}, table, health, now)
        table, health = apply(vs, table, d.actions), d.health
        weights_seen.append(table[vs.stored_endpoint(back.endpoint)].weight)
        now += later
    if back.weight > 1:
        assert weights_seen[0] == 1  # back into a pool that serves: from 1
    assert weights_seen == sorted(weights_seen) and weights_seen[-1] <= back.weight
    d = m.decide(vs, {rs.endpoint: OK for rs in vs.servers}, table, health, now)
    table = apply(vs, table, d.actions)
    assert table[vs.stored_endpoint(back.endpoint)].weight == back.weight  # slowstart over: at its weight
    assert d.health[back.endpoint].ramp is None
