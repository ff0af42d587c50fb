"""Issue 15: drain a real server on purpose (monitor-rs --drain / --undrain).

A drain is a Hold (HoldState.DRAINED), the same decision input as maintenancedir's files:
weight 0 first, in any service (its connections finish), deleted once the table shows it
at 0 with no active connection or drain_timeout after the drain began, kept out until
undrained, then back through its checks (rise).  The decision is tested as a pure
function; the rest end to end (the monitor as a subprocess, the fake ipvsadm whose
ActiveConn the test sets, real servers on loopback).  Each test failed on main: main had
no --drain option, no DRAINED hold, and a hold there deleted a server at once.
"""

import dataclasses
import ipaddress
import json
import os
import subprocess
import time

import pytest

import monitor_rs as m
from harness import SLOW, config, set_active, wait_until

VIP = "127.0.0.1:80"
OK = m.ProbeResult(True, "HTTP 200", 0.01)
BAD = m.ProbeResult(False, "refused", 0.0)


def drained(since=0.0):
    return m.Hold(m.DRAINED, "drained: drain@192.168.1.10:8080 in /var/lib/monitor_rs", since)


# The decision ##########################################################################

def service(n=2, **kw):
    rs = tuple(m.RealServer(ipaddress.ip_address(f"192.168.1.{10 + i}"), 8080, 3, i) for i in range(n))
    return m.VirtualService("web", "tcp", ipaddress.ip_address("10.0.0.1"), 80, 0, rs, "-m", **kw)


def table(vs, *entries):
    """The servers in IPVS as (weight, active connections) or None (absent), in config order."""
    return {rs.endpoint: m.Destination(rs.endpoint, "Masq", e[0], e[1]) for rs, e in zip(vs.servers, entries)
            if e is not None}


def kinds(decision):
    return [(a.kind.value, a.server, a.weight) for a in decision.actions]


@pytest.mark.parametrize("quiescent", [False, True])
def test_a_drained_server_goes_to_weight_0_first_in_any_service(quiescent):
    vs = service(quiescent=quiescent)
    s0 = vs.servers[0].endpoint
    d = m.decide(vs, {rs.endpoint: OK for rs in vs.servers}, table(vs, (3, 5), (3, 0)), {}, 10.0,
                 {s0: drained()})
    assert kinds(d) == [("drain", "192.168.1.10:8080", 0)]  # not deleted: its 5 connections finish
    assert [(e.state, e.server) for e in d.events] == [(m.Seen.HELD, "192.168.1.10:8080")]
    h = d.health[s0]
    assert (h.up, h.held, m.server_state(h)) == (False, "drained", "drained")
    assert "its 5 active connection(s) finish" in h.reason


@pytest.mark.parametrize("quiescent", [False, True])
def test_at_weight_0_a_drained_server_is_deleted_once_its_connections_end(quiescent):
    vs = service(quiescent=quiescent)
    s0 = vs.servers[0].endpoint
    first = m.carry_out(m.decide(vs, {}, table(vs, (3, 2), (3, 0)), {}, 10.0, {s0: drained()}), lambda a: True)
    waiting = m.decide(vs, {}, table(vs, (0, 2), (3, 0)), first, 11.0, {s0: drained()})
    assert kinds(waiting) == [] and waiting.events == ()
    assert "waiting for 2 active connection(s)" in waiting.health[s0].reason
    done = m.decide(vs, {}, table(vs, (0, 0), (3, 0)), waiting.health, 12.0, {s0: drained()})
    assert kinds(done) == [("delete", "192.168.1.10:8080", None)]  # deleted even in a quiescent service
    after = m.decide(vs, {}, table(vs, None, (3, 0)), done.health, 13.0, {s0: drained()})
    assert kinds(after) == [] and m.server_state(after.health[s0]) == "drained"


@pytest.mark.parametrize("timeout, now, deleted", [(30.0, 129.9, False), (30.0, 130.0, True), (0.0, 100.0, True),
                                                   (None, 1e9, False)])
def test_drain_timeout_counts_from_the_drains_start(timeout, now, deleted):
    vs = service(drain_timeout=timeout)
    s0 = vs.servers[0].endpoint
    d = m.decide(vs, {}, table(vs, (0, 7), (3, 0)), {}, now, {s0: drained(since=100.0)})
    assert kinds(d) == ([("delete", "192.168.1.10:8080", None)] if deleted else [])
    if deleted and timeout:
        assert "drain_timeout 30 s passed, 7 active connection(s) cut" in d.actions[0].reason


def test_drain_timeout_gives_the_connections_their_time_when_the_drain_is_acted_on_late():
    """Drained while no monitor ran (or while it could not act): the entry is an hour old when the
    monitor first sets the weight to 0.  Its connections get drain_timeout from then, not one pass:
    the timeout counts from when the weight went to 0, never from before."""
    vs = service(drain_timeout=30.0)
    s0 = vs.servers[0].endpoint
    hold = {s0: drained(since=100.0)}
    first = m.decide(vs, {}, table(vs, (3, 7), (3, 0)), {s0: m.Health(up=True, weight=3)}, 3700.0, hold)
    assert kinds(first) == [("drain", "192.168.1.10:8080", 0)]
    health = m.carry_out(first, lambda action: True)
    waiting = m.decide(vs, {}, table(vs, (0, 7), (3, 0)), health, 3701.0, hold)
    assert kinds(waiting) == []  # not cut one pass after its weight went to 0
    later = m.decide(vs, {}, table(vs, (0, 7), (3, 0)), waiting.health, 3729.0, hold)
    assert kinds(later) == []
    done = m.decide(vs, {}, table(vs, (0, 7), (3, 0)), later.health, 3730.0, hold)
    assert kinds(done) == [("delete", "192.168.1.10:8080", None)]


def test_a_drained_server_is_never_added_restored_nor_reweighted():
    vs = service(quiescent=True)
    s0, s1 = (rs.endpoint for rs in vs.servers)
    health = {s1: m.Health(up=False, quiesced=True, weight=3)}  # quiesced by us, healthy now
    d = m.decide(vs, {s0: OK, s1: OK}, table(vs, None, (0, 4)), health, 0.0, {s0: drained(), s1: drained()})
    assert kinds(d) == []
    # a weight an operator had set by hand (here 0) does not survive the drain as "theirs": undrained, it
    # comes back at its configured weight, not at 0
    hand = m.decide(vs, {s1: OK}, table(vs, None, (0, 4)), {s1: m.Health(up=True, weight=3)}, 0.0,
                    {s1: drained()})
    assert hand.health[s1].operator is None and hand.health[s1].quiesced


def test_a_drain_takes_a_server_to_0_whatever_the_depool_threshold_and_the_fallback_comes_first():
    vs = service(n=1, depool_threshold=1.0, fallback=m.parse_endpoint("127.0.0.1:8000", None))
    s0 = vs.servers[0].endpoint
    d = m.decide(vs, {}, table(vs, (3, 1)), {}, 0.0, {s0: drained()})
    assert kinds(d) == [("fallback-add", "127.0.0.1:8000", 1), ("drain", "192.168.1.10:8080", 0)]
    assert d.actions[1].needs == (0,)  # no empty pool: the drain waits for the fallback
    health = m.carry_out(d, lambda action: action.kind != m.Change.FALLBACK_ADD)
    assert health[s0].held == "drained"


@pytest.mark.parametrize("quiescent, listed, back", [(False, None, "add"), (True, (0, 0), "restore")])
def test_undrained_the_server_comes_back_through_rise_good_checks(quiescent, listed, back):
    vs = service(n=1, rise=2, quiescent=quiescent)
    s0 = vs.servers[0].endpoint
    d = m.decide(vs, {}, table(vs, (3, 3)), {}, 0.0, {s0: drained()})
    health = m.carry_out(d, lambda action: True)
    out = table(vs, listed)
    first = m.decide(vs, {s0: OK}, out, health, 1.0, {})
    assert [(e.state, e.reason) for e in first.events] == [(m.Seen.RELEASED, "drained ended")]
    assert kinds(first) == []  # rise = 2: one good check is not enough
    assert m.server_state(first.health[s0]) == "down"
    second = m.decide(vs, {s0: OK}, out, first.health, 2.0, {})
    assert kinds(second) == [(back, "192.168.1.10:8080", 3)]


@pytest.mark.parametrize("second, back", [(OK, [("restore", "192.168.1.10:8080", 3)]),
                                          (BAD, [("delete", "192.168.1.10:8080", None)])])
def test_undrained_before_its_connections_ended_it_stays_at_0_until_its_checks_decide(second, back):
    """quiescent = no, rise = 2: a good first check after the undrain must not delete it (its connections
    would be cut, then it would be added again one check later); a failed one does, as for any server."""
    vs = service(n=1, rise=2)
    s0 = vs.servers[0].endpoint
    health = m.carry_out(m.decide(vs, {}, table(vs, (3, 3)), {}, 0.0, {s0: drained()}), lambda action: True)
    first = m.decide(vs, {s0: OK}, table(vs, (0, 3)), health, 1.0, {})
    assert kinds(first) == []
    then = m.decide(vs, {s0: second}, table(vs, (0, 3)), first.health, 2.0, {})
    assert kinds(then) == back


def test_a_maintenance_file_and_a_drain_in_one_folder(tmp_path):
    """One folder, one truth: a drain's name is never read as a maintenance file (nor a host name to look up)."""
    looked_up = []
    folder = m.MaintenanceDir(m.Output(m.LogFile(None), None, to_log=False, echo=False),
                              resolve=lambda ip: looked_up.append(ip) or "x")
    (tmp_path / "drain@192.168.1.10:8080").touch()
    os.utime(tmp_path / "drain@192.168.1.10:8080", (1000.0, 1000.0))
    os.symlink("/nonexistent", tmp_path / "drain@192.168.1.11@web")  # lstat'ed: the link's own mtime
    folder.scan(str(tmp_path))
    assert folder.names == {}
    rs = service(n=3).servers
    hold = folder.hold(str(tmp_path), rs[0], "web")
    assert (hold.state, hold.since) == ("drained", 1000.0)
    assert hold.reason.startswith(f"drained: drain@192.168.1.10:8080 in {tmp_path} since ")
    assert folder.hold(str(tmp_path), rs[1], "web").state == "drained"
    assert folder.hold(str(tmp_path), rs[1], "other") is None  # that drain names the service web
    assert folder.hold(str(tmp_path), rs[2], "web") is None
    (tmp_path / "192.168.1.10").touch()  # ldirectord's maintenance file wins: out at once
    folder.scan(str(tmp_path))
    assert folder.hold(str(tmp_path), rs[0], "web").state == "maintenance"
    assert looked_up == []


@pytest.mark.parametrize("key, name", [
    (("10.0.0.1", 80, None), "drain@10.0.0.1:80"),
    (("10.0.0.1", None, None), "drain@10.0.0.1"),
    (("2001:db8::1", 8080, "web"), "drain@[2001:db8::1]:8080@web"),
    (("2001:db8::1", None, None), "drain@[2001:db8::1]"),
    (("10.0.0.1", 80, "a/b@c d"), "drain@10.0.0.1:80@a%2Fb%40c%20d"),
])
def test_drain_names(key, name):
    key = m.DrainKey(*key)
    assert m.drain_name(key) == name
    assert m.drain_key(name) == key


@pytest.mark.parametrize("name", ["10.0.0.1", "drain@", "drain@host:80", "drain@10.0.0.1:80@", "drain@ 10.0.0.1",
                                  "drain@10.0.0.1:x", "xdrain@10.0.0.1"])
def test_what_is_not_a_drains_name(name):
    assert m.drain_key(name) is None


# End to end: the CLI writes, the running monitor acts ####################################

def passes(monitor):
    """The time of the last pass in the state file (it changes every pass)."""
    try:
        return json.loads(monitor.state.read_text())["time"]
    except (FileNotFoundError, ValueError):
        return None


def wait_passes(monitor, n=3):
    """Let `n` more passes of the running monitor go by (seen in its state file)."""
    seen = {passes(monitor)}
    wait_until(lambda: seen.add(passes(monitor)) or len(seen - {None}) > n, 20, f"{n} passes")


def cli(monitor, *args):
    """monitor-rs with the running monitor's options (--config, --drain-dir, ...), as an operator runs it."""
    proc = subprocess.run(monitor.argv + list(args), capture_output=True, text=True, timeout=60 * SLOW)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def state_of(monitor, server):
    return (monitor.server_state(server) or {}).get("state")


@pytest.fixture
def drains(tmp_path):
    folder = tmp_path / "drains"
    return folder  # made by the first --drain


@pytest.mark.parametrize("quiescent", [False, True])
def test_drain_weight_0_then_deleted_once_its_connections_end(ipvs, run, backends, drains, quiescent):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    text = config(VIP, [a.address, b.address], [3, 4], extra=f"quiescent = {'yes' if quiescent else 'no'}\n")
    monitor = run(ipvs, text, "--drain-dir", str(drains)).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3), b.address: ("Masq", 4)}, what="both in")
    set_active(ipvs, a.address, 2)
    proc = cli(monitor, "--drain", a.address)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        f"monitor_rs: drained {a.address} in 127.0.0.1:80 (web) (drain@{a.address} in {drains}): the running "
        "monitor sets its weight to 0 at its next pass and deletes it once its active connections end, however "
        "long that takes (no drain_timeout); it stays out until --undrain\n")
    assert os.listdir(drains) == [f"drain@{a.address}"]
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 0), b.address: ("Masq", 4)}, what="a at weight 0")
    wait_until(lambda: state_of(monitor, a.address) == "drained", what="a shown drained")
    wait_passes(monitor)
    assert ipvs.dests(VIP) == {a.address: ("Masq", 0), b.address: ("Masq", 4)}  # its 2 connections: kept
    row = monitor.server_state(a.address)
    assert "weight 0, waiting for 2 active connection(s)" in row["reason"]
    before = a.hits
    set_active(ipvs, a.address, 0)
    wait_until(lambda: ipvs.dests(VIP) == {b.address: ("Masq", 4)}, what="a deleted")
    wait_passes(monitor)
    assert ipvs.dests(VIP) == {b.address: ("Masq", 4)}  # stays out: never re-added
    assert a.hits == before  # a drained server is not checked
    assert monitor.count(f"{a.address} is held out of 127.0.0.1:80 (web): drained: drain@{a.address}") == 1
    assert monitor.count(f"{a.address} is draining in 127.0.0.1:80 (web): weight 0, its 2 active connection(s) "
                         "finish") == 1
    assert monitor.count(f"{a.address} is out of work, deleted from 127.0.0.1:80 (web)") == 1
    assert monitor.stop()[0] == 0


def test_drain_timeout_deletes_a_server_whose_connections_do_not_end(ipvs, run, backends, drains):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    monitor = run(ipvs, config(VIP, [a.address, b.address], [3, 4], extra="drain_timeout = 1.5\n"),
                  "--drain-dir", str(drains)).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3), b.address: ("Masq", 4)}, what="both in")
    set_active(ipvs, a.address, 9)
    proc = cli(monitor, "--drain", a.ip)  # the address alone: every port of it
    assert proc.returncode == 0 and "or after drain_timeout 1.5 s" in proc.stdout, proc
    began = os.lstat(drains / f"drain@{a.ip}").st_mtime
    wait_until(lambda: ipvs.dests(VIP).get(a.address) == ("Masq", 0), what="a at weight 0")
    wait_until(lambda: a.address not in ipvs.dests(VIP), what="a deleted after drain_timeout")
    assert time.time() - began >= 1.5
    assert ipvs.dests(VIP) == {b.address: ("Masq", 4)}
    assert monitor.stop()[0] == 0


def test_a_drain_survives_restarts_of_the_monitor(ipvs, run, backends, drains):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    text = config(VIP, [a.address, b.address], [3, 4])
    monitor = run(ipvs, text, "--drain-dir", str(drains)).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3), b.address: ("Masq", 4)}, what="both in")
    set_active(ipvs, a.address, 1)
    assert cli(monitor, "--drain", a.address, "--service", "web").returncode == 0
    assert os.listdir(drains) == [f"drain@{a.address}@web"]
    wait_until(lambda: ipvs.dests(VIP).get(a.address) == ("Masq", 0), what="a at weight 0")
    assert monitor.stop()[0] == 0
    monitor.state.unlink()  # no memory of what it did: the drain alone must keep it at 0
    monitor = run(ipvs, text, "--drain-dir", str(drains)).start()
    wait_until(lambda: state_of(monitor, a.address) == "drained", what="drained after a restart")
    wait_passes(monitor)
    assert ipvs.dests(VIP) == {a.address: ("Masq", 0), b.address: ("Masq", 4)}  # not restored, not deleted
    set_active(ipvs, a.address, 0)
    wait_until(lambda: a.address not in ipvs.dests(VIP), what="a deleted")
    assert monitor.stop()[0] == 0
    monitor = run(ipvs, text, "--drain-dir", str(drains)).start()
    wait_until(lambda: state_of(monitor, a.address) == "drained", what="drained after a second restart")
    wait_passes(monitor)
    assert ipvs.dests(VIP) == {b.address: ("Masq", 4)}  # never re-added
    monitor.signal(__import__("signal").SIGHUP)  # a reload: still drained
    monitor.wait_log("config reloaded")
    wait_passes(monitor)
    assert ipvs.dests(VIP) == {b.address: ("Masq", 4)}
    assert monitor.stop()[0] == 0


def test_undrained_it_comes_back_after_rise_good_checks(ipvs, run, backends, tmp_path):
    """Kept in the config's maintenancedir, beside ldirectord's files: one folder, one truth."""
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    maint = tmp_path / "maint"
    maint.mkdir()
    text = config(VIP, [a.address, b.address], [3, 4], extra="rise = 3\n").replace(
        "[virtual", f"maintenancedir = {maint}\n\n[virtual", 1)
    monitor = run(ipvs, text).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3), b.address: ("Masq", 4)}, what="both in")
    assert cli(monitor, "--drain", a.address).returncode == 0
    assert os.listdir(maint) == [f"drain@{a.address}"]
    wait_until(lambda: ipvs.dests(VIP) == {b.address: ("Masq", 4)}, what="a drained out (no connection)")
    proc = cli(monitor, "--undrain", a.address)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (f"monitor_rs: undrained {a.address} in 127.0.0.1:80 (web) (removed drain@{a.address} "
                           f"from {maint}): the running monitor checks it again at its next pass and puts it back "
                           "after rise good checks\n")
    assert os.listdir(maint) == []
    hits = a.hits
    wait_until(lambda: a.address in ipvs.dests(VIP), what="a back")
    assert a.hits - hits >= 3  # rise = 3 good checks first
    assert ipvs.dests(VIP) == {a.address: ("Masq", 3), b.address: ("Masq", 4)}
    assert monitor.count(f"{a.address} in 127.0.0.1:80 (web): drained ended; back when its checks pass") == 1
    proc = cli(monitor, "--undrain", a.address)
    assert (proc.returncode, proc.stdout) == (0, f"monitor_rs: {a.address} in 127.0.0.1:80 (web): not drained "
                                                 f"(no drain of it in {maint}), nothing to do\n")
    assert monitor.stop()[0] == 0


def test_status_shows_drained_in_every_view(ipvs, run, backends, drains, tmp_path):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    metrics = tmp_path / "monitor_rs.prom"
    text = config(VIP, [a.address, b.address], [3, 4]).replace(
        "[virtual", f"prometheus_file = {metrics}\n\n[virtual", 1)
    monitor = run(ipvs, text, "--drain-dir", str(drains))
    # no running monitor: --status's own pass shows it too
    proc = cli(monitor, "--drain", a.address)
    assert proc.returncode == 0
    assert "no monitor runs for this config now: once started, the monitor sets its weight to 0" in proc.stdout
    code, snap = monitor.status()
    row = next(r for s in snap["services"] for r in s["servers"] if r["server"] == a.address)
    assert (snap["source"], row["state"], row["held"]) == ("probe", "drained", "drained")
    monitor.start()
    wait_until(lambda: ipvs.dests(VIP) == {b.address: ("Masq", 4)}, what="only b in")
    wait_until(lambda: state_of(monitor, a.address) == "drained", what="a shown drained")
    code, snap = monitor.status()
    assert code == 0  # a drained server out of IPVS is in place
    row = next(r for s in snap["services"] for r in s["servers"] if r["server"] == a.address)
    assert (snap["source"], row["state"], row["held"], row["ipvs_weight"]) == ("monitor", "drained", "drained", None)
    assert f"drained: drain@{a.address} in {drains} since " in row["reason"]
    plain = cli(monitor, "--status")
    assert f"{a.address} weight=3 ipvs=absent state=drained reason='drained: drain@{a.address}" in plain.stdout
    wait_until(lambda: metrics.exists() and f'monitor_rs_server_drained{{service="127.0.0.1:80",name="web",'
                                            f'server="{a.address}"}} 1' in metrics.read_text(), what="metrics")
    assert f'monitor_rs_server_drained{{service="127.0.0.1:80",name="web",server="{b.address}"}} 0' in (
        metrics.read_text())
    assert monitor.stop()[0] == 0


# The CLI's refusals: one line, exit 2 ####################################################

@pytest.mark.parametrize("args, message", [
    (["--drain", "127.0.0.99:80"], "monitor_rs: --drain 127.0.0.99:80: not a real server of any virtual service in "
                                   "{config}\n"),
    (["--drain", "127.0.0.11:81"], "monitor_rs: --drain 127.0.0.11:81: not a real server of any virtual service in "
                                   "{config}\n"),
    (["--undrain", "127.0.0.99"], "monitor_rs: --undrain 127.0.0.99: not a real server of any virtual service in "
                                  "{config}\n"),
    (["--drain", "127.0.0.11:80", "--service", "nope"], "monitor_rs: --service nope: no [virtual nope] in {config} "
                                                        "(there: web)\n"),
    (["--undrain", "127.0.0.11:80", "--service", "nope"], "monitor_rs: --service nope: no [virtual nope] in "
                                                          "{config} (there: web)\n"),
    (["--drain", "web01"], "monitor_rs: --drain web01: 'web01' does not appear to be an IPv4 or IPv6 address "
                           "(expected RIP or RIP:PORT)\n"),
    (["--drain", "127.0.0.11:80", "--undrain", "127.0.0.11:80"], "monitor_rs: --drain goes alone, not with "
                                                                 "--undrain\n"),
    (["--drain", "127.0.0.11:80", "--status"], "monitor_rs: --drain goes alone, not with --status\n"),
    (["--undrain", "127.0.0.11:80", "--once"], "monitor_rs: --undrain goes alone, not with --once\n"),
    (["--service", "web"], "monitor_rs: --service goes with --drain or --undrain\n"),
])
def test_the_cli_refuses_in_one_line(ipvs, run, drains, args, message):
    monitor = run(ipvs, config(VIP, ["127.0.0.11:80", "127.0.0.12:80"]), "--drain-dir", str(drains))
    proc = cli(monitor, *args)
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, message.format(config=monitor.config), "")
    assert not drains.exists()  # nothing written


def test_undrain_of_a_port_when_the_whole_address_is_drained_says_what_holds_it(ipvs, run, drains):
    monitor = run(ipvs, config(VIP, ["127.0.0.11:80", "127.0.0.12:80"]), "--drain-dir", str(drains))
    assert cli(monitor, "--drain", "127.0.0.11").returncode == 0
    again = cli(monitor, "--drain", "127.0.0.11")
    assert again.returncode == 0 and "already drained since" in again.stdout
    proc = cli(monitor, "--undrain", "127.0.0.11:80")
    assert (proc.returncode, proc.stderr) == (1, f"monitor_rs: 127.0.0.11:80 in 127.0.0.1:80 (web): still drained by "
                                                 f"drain@127.0.0.11 in {drains}: undrain what that names (or "
                                                 "remove it)\n")
    assert cli(monitor, "--undrain", "127.0.0.11").returncode == 0
    assert os.listdir(drains) == []


def test_drain_dir_beside_a_maintenancedir_is_refused(ipvs, run, drains, tmp_path):
    text = config(VIP, ["127.0.0.11:80"]).replace("[virtual", f"maintenancedir = {tmp_path}\n\n[virtual", 1)
    monitor = run(ipvs, text, "--drain-dir", str(drains))
    proc = cli(monitor, "--drain", "127.0.0.11:80")
    assert (proc.returncode, proc.stderr) == (2, f"monitor_rs: --drain-dir {drains}: {monitor.config} has "
                                                 f"maintenancedir {tmp_path}, which keeps the drains: give one "
                                                 "place, not two\n")
    assert monitor.once().returncode == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is root's")
def test_as_root_a_drain_folder_others_may_write_is_refused(ipvs, run, drains):
    drains.mkdir()
    drains.chmod(0o777)
    monitor = run(ipvs, config(VIP, ["127.0.0.11:80"]), "--drain-dir", str(drains))
    proc = cli(monitor, "--drain", "127.0.0.11:80")
    assert proc.returncode == 2
    assert proc.stderr == (f"monitor_rs: --drain-dir {drains}: not read as root, others can change it: {drains} is "
                           "writable by its group and others (mode 0777)\n")
    assert os.listdir(drains) == []
    assert monitor.once().returncode == 2  # the monitor refuses it at start too



def test_a_drain_whose_weight_change_fails_is_retried_never_deleted_instead(ipvs, run, backends, drains):
    """ipvsadm -e fails (fault): the server keeps its weight and its connections, the drain is said FAILED
    once and made at a later pass; it is never deleted while it still has connections."""
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    monitor = run(ipvs, config(VIP, [a.address, b.address], [3, 4]), "--drain-dir", str(drains)).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3), b.address: ("Masq", 4)}, what="both in")
    set_active(ipvs, a.address, 4)
    ipvs.fault("fail-edit")
    assert cli(monitor, "--drain", a.address).returncode == 0
    monitor.wait_log(f"{a.address} drain FAILED in 127.0.0.1:80 (web)")
    wait_passes(monitor)
    assert ipvs.dests(VIP) == {a.address: ("Masq", 3), b.address: ("Masq", 4)}
    assert monitor.count(f"{a.address} drain FAILED") == 1
    ipvs.fault("")
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 0), b.address: ("Masq", 4)}, what="a at weight 0")
    wait_passes(monitor)
    assert ipvs.dests(VIP) == {a.address: ("Masq", 0), b.address: ("Masq", 4)}
    assert monitor.stop()[0] == 0


def test_removing_the_drains_folder_ends_its_drains(ipvs, run, backends, drains):
    a = backends(ip="127.0.0.11")
    monitor = run(ipvs, config(VIP, [a.address], [3]), "--drain-dir", str(drains)).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3)}, what="a in")
    assert cli(monitor, "--drain", a.address).returncode == 0
    wait_until(lambda: ipvs.dests(VIP) == {}, what="a drained out")
    for name in os.listdir(drains):
        os.unlink(drains / name)
    drains.rmdir()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3)}, what="a back")
    assert monitor.count("drain folder") == 0  # the drains' own folder absent: no news
    assert monitor.stop()[0] == 0


def test_undrained_while_its_connections_last_it_is_restored_not_cut(ipvs, run, backends, drains):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    monitor = run(ipvs, config(VIP, [a.address, b.address], [3, 4], extra="rise = 3\n"),
                  "--drain-dir", str(drains)).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3), b.address: ("Masq", 4)}, what="both in")
    set_active(ipvs, a.address, 5)
    assert cli(monitor, "--drain", a.address).returncode == 0
    wait_until(lambda: ipvs.dests(VIP).get(a.address) == ("Masq", 0), what="a at weight 0")
    assert cli(monitor, "--undrain", a.address).returncode == 0
    seen = []
    wait_until(lambda: seen.append(ipvs.dests(VIP).get(a.address)) or seen[-1] == ("Masq", 3), what="a restored")
    assert None not in seen, seen  # never deleted on its way back: its 5 connections were never cut
    monitor.wait_log(f"{a.address} weight restored to 3")  # written once ipvsadm has answered
    assert monitor.stop()[0] == 0
    assert monitor.count(f"{a.address} weight restored to 3") == 1


def test_where_drains_are_kept_by_default(monkeypatch, tmp_path):
    """root: DRAIN_DIR (survives reboots); another user: its own state folder; a maintenancedir wins."""
    assert m.DRAIN_DIR == "/var/lib/monitor_rs"
    monkeypatch.setattr(m.os, "geteuid", lambda: 0)
    assert m.default_drain_dir() == "/var/lib/monitor_rs"
    monkeypatch.setattr(m.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert m.default_drain_dir() == f"{tmp_path}/monitor_rs"
    monkeypatch.setenv("XDG_STATE_HOME", "relative")
    monkeypatch.setenv("HOME", "/home/op")
    assert m.default_drain_dir() == "/home/op/.local/state/monitor_rs"
    plain = m.Config(path="/etc/monitorRS.conf")
    assert m.drain_dir_of(plain, None) == "/home/op/.local/state/monitor_rs"
    assert m.drain_dir_of(plain, "/srv/drains") == "/srv/drains"
    assert m.drain_dir_of(m.Config(path="/etc/x.cf", maintenancedir="/etc/ha.d/maint"), None) == "/etc/ha.d/maint"


def test_a_user_who_forgot_sudo_is_told_the_running_monitor_is_roots(monkeypatch, tmp_path, capsys):
    """Not root, no maintenancedir: the drain would go to the user's own folder, which root's monitor never
    reads; refused in one line, exit 2, nothing written."""
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"pid": os.getpid(), "time": time.time(), "interval": 3}))  # a live monitor's, root's
    rs = m.RealServer(ipaddress.ip_address("127.0.0.11"), 80, 1, 0)
    vs = m.VirtualService("web", "tcp", ipaddress.ip_address("127.0.0.1"), 80, 0, (rs,), "-m")
    conf = m.Config(path=str(tmp_path / "monitorRS.conf"), state_file=str(state), services=(vs,))
    monkeypatch.setattr(m.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "mine"))
    assert m.run_drain(conf, m.default_drain_dir(), "127.0.0.11", None, undo=False) == 2
    assert capsys.readouterr().err == (
        f"monitor_rs: --drain 127.0.0.11: the monitor running for this config (PID {os.getpid()}) is uid 0's, "
        f"which does not read this user's drains ({tmp_path}/mine/monitor_rs): run --drain as that user\n")
    assert not (tmp_path / "mine").exists()


def test_root_is_told_the_running_monitor_is_another_users(monkeypatch, tmp_path, capsys):
    """A monitor run as a user of its own (User=lvs with CAP_NET_ADMIN) reads that user's drains; root's
    --drain (sudo) would go to DRAIN_DIR, which it never reads, and say "the running monitor sets its
    weight to 0": the server would be taken down undrained.  Refused in one line, exit 2, nothing written."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to give the state file to another user)")
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"pid": os.getpid(), "time": time.time(), "interval": 3}))  # a live monitor's
    os.chown(state, 999, 999)  # ... run as uid 999
    rs = m.RealServer(ipaddress.ip_address("127.0.0.11"), 80, 1, 0)
    vs = m.VirtualService("web", "tcp", ipaddress.ip_address("127.0.0.1"), 80, 0, (rs,), "-m")
    conf = m.Config(path=str(tmp_path / "monitorRS.conf"), state_file=str(state), services=(vs,))
    monkeypatch.setattr(m, "DRAIN_DIR", str(tmp_path / "drains"))  # root's default, here
    assert m.run_drain(conf, m.default_drain_dir(), "127.0.0.11", None, undo=False) == 2
    assert capsys.readouterr().err == (
        f"monitor_rs: --drain 127.0.0.11: the monitor running for this config (PID {os.getpid()}) is uid 999's, "
        f"which does not read this user's drains ({tmp_path}/drains): run --drain as that user\n")
    assert not (tmp_path / "drains").exists()


def test_a_drain_in_a_service_left_to_another_manager_says_so(tmp_path, capsys):
    """The running monitor changes nothing in a contested service (a tug of war), a drain included:
    --drain must not say "sets its weight to 0 at its next pass" alone, or the server is taken
    down undrained.  The drain is written (it acts after a reload) and the line says why not now."""
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"pid": os.getpid(), "time": time.time(), "interval": 3,
                                 "services": [{"name": "web", "contested": True}]}))
    rs = m.RealServer(ipaddress.ip_address("127.0.0.11"), 80, 1, 0)
    vs = m.VirtualService("web", "tcp", ipaddress.ip_address("127.0.0.1"), 80, 0, (rs,), "-m")
    conf = m.Config(path=str(tmp_path / "monitorRS.conf"), state_file=str(state), services=(vs,))
    folder = str(tmp_path / "drains")
    assert m.run_drain(conf, folder, "127.0.0.11", None, undo=False) == 0
    out = capsys.readouterr().out
    assert out.startswith("monitor_rs: drained 127.0.0.11:80 in 127.0.0.1:80 (web)") and "\n" not in out[:-1]
    assert out.endswith("it stays out until --undrain; but it leaves web to another manager (contested): "
                        "nothing changes there until a reload (SIGHUP)\n"), out
    assert os.listdir(folder) == ["drain@127.0.0.11"]
    assert m.run_drain(conf, folder, "127.0.0.11", None, undo=True) == 0
    assert capsys.readouterr().out.endswith("(contested): nothing changes there until a reload (SIGHUP)\n")


def test_a_drain_left_behind_by_a_server_removed_from_the_config_can_be_undrained(tmp_path, capsys):
    """Drained, then taken out of the config (decommissioned): --undrain refused it ("not a real server")
    and left the entry, which held the server out again, unseen, once it came back into the config.
    Its entries are removed; with none, it is the usage error it was."""
    rs = m.RealServer(ipaddress.ip_address("127.0.0.11"), 80, 1, 0)
    vs = m.VirtualService("web", "tcp", ipaddress.ip_address("127.0.0.1"), 80, 0, (rs,), "-m")
    conf = m.Config(path=str(tmp_path / "monitorRS.conf"), state_file=str(tmp_path / "state.json"), services=(vs,))
    folder = str(tmp_path / "drains")
    assert m.run_drain(conf, folder, "127.0.0.11:80", "web", undo=False) == 0
    capsys.readouterr()
    gone = dataclasses.replace(conf, services=(dataclasses.replace(vs, servers=()),))
    assert m.run_drain(gone, folder, "127.0.0.11:80", "web", undo=True) == 0
    assert capsys.readouterr().out == (
        f"monitor_rs: removed drain@127.0.0.11:80@web from {folder}: 127.0.0.11:80 is not a real server of virtual "
        f"service web in {conf.path} now; configured again, it will not be held out by them\n")
    assert os.listdir(folder) == []
    assert m.run_drain(gone, folder, "127.0.0.11:80", "web", undo=True) == 2
    assert capsys.readouterr().err == (f"monitor_rs: --undrain 127.0.0.11:80: not a real server of virtual service "
                                       f"web in {conf.path}\n")
