"""ldirectord's loop (issue 13): autoreload (+ callback), maintenancedir, per-service interval.

The decision's `held` input (maintenancedir today, issue 15's drain tomorrow) is tested as
a pure function; the rest end to end: the monitor as a subprocess, the fake ipvsadm,
real servers on loopback.  Each test failed on main (no such behaviour there): main read
the config once per SIGHUP only, knew no maintenancedir, and probed every service every
pass at [monitor]'s interval.
"""

import ipaddress
import json
import os
import time

import pytest

import monitor_rs as m
from harness import config, wait_until

VIP = "127.0.0.1:80"
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


# The names maintenancedir accepts ###################################################

@pytest.mark.parametrize("name, keys", [
    ("10.0.0.1", [("10.0.0.1", None)]),
    ("10.0.0.1:8080", [("10.0.0.1", 8080)]),
    ("[2001:db8::1]:80", [("2001:db8::1", 80)]),
    ("[2001:db8:0::1]", [("2001:db8::1", None)]),
    ("2001:db8::1", [("2001:db8::1", None)]),
    ("RealServer2.Example.com:4444", [("realserver2.example.com", 4444)]),
    ("realserver2", [("realserver2", None)]),
    ("[oops", []),
    ("a:b:c", []),
])
def test_maintenance_names(name, keys):
    assert m._maintenance_keys(name) == keys


def test_maintenance_by_host_name_uses_the_reverse_name_without_blocking(tmp_path):
    """ldirectord's FQDN and short names, from the reverse name of the server's address; looked up
    in a thread (the fake resolver here: no DNS traffic)."""
    folder = tmp_path / "maint"
    folder.mkdir()
    (folder / "realserver2:8080").touch()
    quiet = m.Output(m.LogFile(None), None, to_log=False, echo=False)
    maint = m.MaintenanceDir(quiet, resolve=lambda ip: {"192.168.1.11": "RealServer2.example.com."}[ip])
    vs = service(n=2)
    maint.scan(str(folder))
    wait_until(lambda: [maint.hold(str(folder), rs) for rs in vs.servers][1] is not None, 10, "the reverse name")
    assert maint.hold(str(folder), vs.servers[0]) is None  # 192.168.1.10 has no name
    assert maint.hold(str(folder), vs.servers[1]) == m.Hold(
        "maintenance", f"maintenance: file realserver2:8080 in {folder}")


# End to end ##########################################################################

def script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def passes(monitor):
    """The time of the last pass in the state file (it changes every pass)."""
    try:
        return json.loads(monitor.state.read_text())["time"]
    except (FileNotFoundError, ValueError):
        return None


def wait_passes(monitor, n=3):
    """Let `n` more passes of the running monitor go by (seen in its state file)."""
    seen = set()
    wait_until(lambda: seen.add(passes(monitor)) or len(seen - {None}) > n, 20, f"{n} passes")


def test_autoreload_reads_a_changed_config_and_runs_the_callback(ipvs, run, backends, tmp_path):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    out = tmp_path / "callback.out"
    cb = script(tmp_path, "cb", f'echo "$@" >> {out}\n')
    top = f"autoreload = yes\ncallback = {cb} --from-monitor\n"
    monitor = run(ipvs, config(VIP, [a.address], [3]).replace("[virtual", top + "\n[virtual", 1)).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3)}, what="a added")
    monitor.config.write_text(config(VIP, [a.address, b.address], [3, 5]).replace("[virtual", top + "\n[virtual", 1))
    wait_until(lambda: ipvs.dests(VIP).get(b.address) == ("Masq", 5), what="b added after the autoreload")
    monitor.wait_log(f"config {monitor.config} changed on disk: reloading it (autoreload)")
    wait_until(lambda: out.exists() and out.read_text() == f"--from-monitor {monitor.config}\n", 10,
               "the callback run with the config's path last")
    monitor.wait_log(f"callback started: {cb} --from-monitor {monitor.config}")
    wait_passes(monitor)
    assert monitor.count("changed on disk") == 1 and out.read_text().count("\n") == 1  # once per change
    assert monitor.stop()[0] == 0


def test_autoreload_sees_a_rewrite_with_the_same_mtime_and_not_a_touch(ipvs, run, backends):
    a = backends(ip="127.0.0.11")
    top = "autoreload = yes\n"
    monitor = run(ipvs, config(VIP, [a.address], [3]).replace("[virtual", top + "\n[virtual", 1)).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3)}, what="a added")
    os.utime(monitor.config)  # a touch: new mtime, same content
    wait_passes(monitor)
    assert monitor.count("changed on disk") == 0
    st = os.stat(monitor.config)
    monitor.config.write_text(config(VIP, [a.address], [7]).replace("[virtual", top + "\n[virtual", 1))
    os.utime(monitor.config, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime (and size) as before
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 7)}, what="the new weight after the autoreload")
    assert monitor.count("changed on disk") == 1
    assert monitor.stop()[0] == 0


def test_autoreload_refuses_a_broken_version_once_and_keeps_the_running_config(ipvs, run, backends):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    top = "autoreload = yes\n"
    monitor = run(ipvs, config(VIP, [a.address, b.address]).replace("[virtual", top + "\n[virtual", 1)).start()
    wait_until(lambda: set(ipvs.dests(VIP)) == {a.address, b.address}, what="a and b added")
    monitor.config.write_text("[monitor]\nautoreload = yes\ninterval = never\n")
    monitor.wait_log("reload refused, keeping the running config")
    b.stop()
    wait_until(lambda: b.address not in ipvs.dests(VIP), what="still monitoring with the old config")
    wait_passes(monitor)
    assert monitor.count("interval = 'never': not a number") == 1  # once per broken content
    monitor.config.write_text(config(VIP, [a.address], [9]).replace("[virtual", top + "\n[virtual", 1))
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 9)}, what="the fixed config loaded")
    assert monitor.stop()[0] == 0


def test_without_autoreload_a_change_runs_the_callback_but_is_not_loaded(ipvs, run, backends, tmp_path):
    """ldirectord's check_cfgfile: the callback runs on a change whether or not autoreload is on."""
    a = backends(ip="127.0.0.11")
    out = tmp_path / "callback.out"
    cb = script(tmp_path, "cb", f'echo "$@" >> {out}\n')
    top = f"callback = {cb}\n"
    monitor = run(ipvs, config(VIP, [a.address], [3]).replace("[virtual", top + "\n[virtual", 1)).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3)}, what="a added")
    monitor.config.write_text(config(VIP, [a.address], [8]).replace("[virtual", top + "\n[virtual", 1))
    monitor.wait_log("changed on disk: not reloaded (autoreload = no)")
    wait_until(lambda: out.exists() and out.read_text() == f"{monitor.config}\n", 10, "the callback")
    wait_passes(monitor)
    assert ipvs.dests(VIP) == {a.address: ("Masq", 3)}
    assert monitor.stop()[0] == 0


@pytest.mark.parametrize("quiescent, by_port", [(False, False), (True, True)])
def test_maintenancedir_holds_a_server_out_until_its_file_goes(ipvs, run, backends, tmp_path, quiescent, by_port):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    maint = tmp_path / "maint"
    maint.mkdir()
    extra = f"quiescent = {'yes' if quiescent else 'no'}\n"
    text = config(VIP, [a.address, b.address], [3, 4], extra=extra).replace(
        "[virtual", f"maintenancedir = {maint}\n\n[virtual", 1)
    monitor = run(ipvs, text).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3), b.address: ("Masq", 4)}, what="both in")
    name = a.address if by_port else a.ip
    (maint / name).touch()
    out = {a.address: ("Masq", 0), b.address: ("Masq", 4)} if quiescent else {b.address: ("Masq", 4)}
    wait_until(lambda: ipvs.dests(VIP) == out, what="a held out")
    wait_until(lambda: (monitor.server_state(a.address) or {}).get("state") == "maintenance", what="shown")
    code, snap = monitor.status()
    assert code == 0  # a held server is no fault
    row = next(r for s in snap["services"] for r in s["servers"] if r["server"] == a.address)
    assert (row["state"], row["held"]) == ("maintenance", "maintenance")
    assert f"maintenance: file {name} in {maint}" in row["reason"]
    before = a.hits
    wait_passes(monitor)
    assert a.hits == before  # a held server is not checked, as in ldirectord
    assert monitor.count(f"{a.address} is held out of 127.0.0.1:80 (web): maintenance: file {name}") == 1
    (maint / name).unlink()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3), b.address: ("Masq", 4)}, what="a back")
    assert monitor.count(f"{a.address} in 127.0.0.1:80 (web): maintenance ended; back when its checks pass") == 1
    assert monitor.stop()[0] == 0


def test_a_maintenancedir_that_does_not_exist_is_said_once(ipvs, run, backends, tmp_path):
    a = backends(ip="127.0.0.11")
    maint = tmp_path / "later"
    text = config(VIP, [a.address]).replace("[virtual", f"maintenancedir = {maint}\n\n[virtual", 1)
    monitor = run(ipvs, text).start()
    wait_until(lambda: a.address in ipvs.dests(VIP), what="a in")
    wait_passes(monitor)
    assert monitor.count(f"maintenancedir {maint} does not exist") == 1
    maint.mkdir()
    (maint / a.ip).touch()
    wait_until(lambda: a.address not in ipvs.dests(VIP), what="a held out once the folder is there")
    assert monitor.stop()[0] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is root's")
def test_as_root_a_maintenancedir_others_may_write_is_refused_at_start(ipvs, run, tmp_path):
    maint = tmp_path / "maint"
    maint.mkdir()
    maint.chmod(0o777)
    text = config(VIP, ["127.0.0.11"]).replace("[virtual", f"maintenancedir = {maint}\n\n[virtual", 1)
    proc = run(ipvs, text).once()
    assert proc.returncode == 2
    assert proc.stderr == (f"monitor_rs: {tmp_path}/monitorRS.conf: maintenancedir {maint}: not read as root, "
                           f"others can change it: {maint} is writable by its group and others (mode 0777)\n")


def test_each_service_is_probed_on_its_own_interval(ipvs, run, backends):
    """ldirectord's per-virtual checkinterval: a 0.3 s service and a 2 s one, counted by their servers."""
    fast, slow = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    ipvs.service("127.0.0.1:81")
    text = config(VIP, [fast.address], interval=1, extra="interval = 0.3\n", name="fast") + (
        f"[virtual slow]\nvip = 127.0.0.1\nvport = 81\nrs = {slow.address}\ntype = m\ninterval = 2\n")
    monitor = run(ipvs, text).start()
    wait_until(lambda: slow.hits >= 1 and fast.hits >= 1, what="both probed once")
    f0, s0, began = fast.hits, slow.hits, time.monotonic()
    wait_until(lambda: slow.hits >= s0 + 3, 30, "three more probes of the slow service")
    took = time.monotonic() - began
    fast_probes, slow_probes = fast.hits - f0, slow.hits - s0
    # 3 slow intervals (6 s) hold about 20 fast ones (fewer on a busy machine); at one pace for
    # both ([monitor] interval = 1, as on main) they would be equal, and the 3 slow ones take 3 s.
    assert fast_probes >= 8 and fast_probes >= 2 * slow_probes + 2, (fast_probes, slow_probes)
    assert took >= 2 * 2 * 0.9, f"the slow service was probed more often than every 2 s: {took:.1f} s"
    # Every pass's state still covers both services.
    snap = json.loads(monitor.state.read_text())
    assert [s["name"] for s in snap["services"]] == ["fast", "slow"]
    assert all(s["servers"] for s in snap["services"])
    # And a stop is still prompt while the loop waits for the next due service.
    assert monitor.stop(timeout=5)[0] == 0


def test_the_callback_is_never_waited_for(ipvs, run, backends, tmp_path):
    a = backends(ip="127.0.0.11")
    pid_file = tmp_path / "callback.pid"
    cb = script(tmp_path, "cb", f"echo $$ > {pid_file}\nexec sleep 60\n")
    top = f"autoreload = yes\ncallback = {cb}\n"
    monitor = run(ipvs, config(VIP, [a.address], [3]).replace("[virtual", top + "\n[virtual", 1)).start()
    wait_until(lambda: a.address in ipvs.dests(VIP), what="a added")
    monitor.config.write_text(config(VIP, [a.address], [4]).replace("[virtual", top + "\n[virtual", 1))
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the callback running")
    try:
        wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 4)}, what="the reload applied")
        wait_passes(monitor)  # passes go on while the callback sleeps
        assert monitor.stop()[0] == 0
    finally:
        try:
            os.kill(int(pid_file.read_text()), 9)
        except (ProcessLookupError, ValueError):
            pass


def test_a_fifo_in_place_of_the_config_does_not_stall_the_watch(tmp_path):
    path = tmp_path / "monitorRS.conf"
    path.write_text("[monitor]\n")
    watch = m.ConfigWatch(str(path))
    assert watch.digest
    path.unlink()
    os.mkfifo(path)
    began = time.monotonic()
    assert watch.look() == ""  # nothing read: no change seen, and no wait for a writer
    assert time.monotonic() - began < 1
