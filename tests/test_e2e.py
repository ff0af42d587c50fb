"""The whole loop, end to end: monitor_rs.py as a subprocess, real HTTP servers
on 127.0.0.x, and an IPVS table read back with `ipvsadm -Ln -t` (never the
monitor's own words).  Each scenario runs against the fake ipvsadm here, and
against the real kernel inside the VM (tests/vm/run), so a difference between
the fake and the kernel shows up as a failing test.
"""

import json
import signal

import pytest

from harness import config, wait_until



@pytest.fixture
def ipvs(any_ipvs):
    """Every scenario here on the fake, and on the real kernel inside the VM."""
    return any_ipvs


VIP = "127.0.0.1:80"


def three(backends, **kw):
    return [backends(ip=f"127.0.0.{11 + i}", **kw) for i in range(3)]


def test_start_adds_every_server_with_its_weight_by_index(ipvs, run, backends):
    ipvs.service(VIP)
    servers = three(backends)
    monitor = run(ipvs, config(VIP, [b.address for b in servers], [3, 1, 7], forward="m")).start()
    want = {servers[0].address: ("Masq", 3), servers[1].address: ("Masq", 1), servers[2].address: ("Masq", 7)}
    wait_until(lambda: ipvs.dests(VIP) == want, what="all three servers in IPVS")
    assert monitor.stop()[0] == 0


def test_stop_listening_removed_then_back_readded_with_its_weight(ipvs, run, backends):
    ipvs.service(VIP)
    a, b, c = three(backends)
    monitor = run(ipvs, config(VIP, [a.address, b.address, c.address], [3, 1, 7])).start()
    wait_until(lambda: len(ipvs.dests(VIP)) == 3, what="three servers")
    b.stop()
    wait_until(lambda: b.address not in ipvs.dests(VIP), what="stopped server removed")
    assert set(ipvs.dests(VIP)) == {a.address, c.address}
    b.start()
    wait_until(lambda: ipvs.dests(VIP).get(b.address) == ("Masq", 1), what="server back with weight 1")
    monitor.stop()
    assert monitor.count(f"{b.address} is down in 127.0.0.1:80 (web): refused") == 1
    assert monitor.count(f"{b.address} is out of work, deleted from 127.0.0.1:80 (web)") == 1
    assert monitor.count(f"{b.address} has been added to work in 127.0.0.1:80 (web) (weight 1)") == 2


@pytest.mark.parametrize("mode, reason", [("http500", "HTTP 500"), ("hang", "timeout (status line)")])
def test_failing_server_removed_while_the_others_stay(ipvs, run, backends, mode, reason):
    ipvs.service(VIP)
    a, b, c = three(backends)
    monitor = run(ipvs, config(VIP, [a.address, b.address, c.address])).start()
    wait_until(lambda: len(ipvs.dests(VIP)) == 3, what="three servers")
    b.mode = mode
    wait_until(lambda: b.address not in ipvs.dests(VIP), what=f"{mode} server removed")
    c.stop()  # the hung one must not stall the loop: c is still noticed
    wait_until(lambda: set(ipvs.dests(VIP)) == {a.address}, what="refusing server removed too")
    monitor.stop()
    assert monitor.count(f"{b.address} is down in 127.0.0.1:80 (web): {reason}") == 1


def test_receive_text_missing_removes(ipvs, run, backends):
    ipvs.service(VIP)
    a, b, _ = three(backends, body="<h1>centos</h1>")
    monitor = run(ipvs, config(VIP, [a.address, b.address], extra="receive = centos")).start()
    wait_until(lambda: len(ipvs.dests(VIP)) == 2, what="two servers")
    b.body = "<h1>maintenance</h1>"
    wait_until(lambda: set(ipvs.dests(VIP)) == {a.address}, what="server without the text removed")
    monitor.stop()
    assert monitor.count(f"{b.address} is down in 127.0.0.1:80 (web): receive text not found") == 1


def test_hand_deleted_healthy_server_is_restored(ipvs, run, backends):
    ipvs.service(VIP)
    a, b, _ = three(backends)
    monitor = run(ipvs, config(VIP, [a.address, b.address], [5, 6])).start()
    wait_until(lambda: len(ipvs.dests(VIP)) == 2, what="two servers")
    ipvs.run("-d", "-t", VIP, "-r", a.address)
    wait_until(lambda: ipvs.dests(VIP).get(a.address) == ("Masq", 5), what="hand-deleted server restored")
    monitor.stop()


def test_server_in_another_service_is_added_here_and_the_other_left_alone(ipvs, run, backends):
    ipvs.service(VIP)
    ipvs.service("127.0.0.1:8080")
    a, b, _ = three(backends)
    ipvs.run("-a", "-t", "127.0.0.1:8080", "-r", a.address, "-m", "-w", "9")
    other_before = ipvs.dests("127.0.0.1:8080")
    monitor = run(ipvs, config(VIP, [a.address, b.address])).start()
    wait_until(lambda: set(ipvs.dests(VIP)) == {a.address, b.address}, what="both added here")
    a.stop()
    wait_until(lambda: set(ipvs.dests(VIP)) == {b.address}, what="a removed here")
    assert ipvs.dests("127.0.0.1:8080") == other_before
    monitor.stop()


def test_gate_with_real_port_other_than_virtual_port_is_not_readded_every_pass(ipvs, run, backends):
    """-g stores RIP:VPORT; the original looked for RIP:RPORT and re-added it every pass."""
    ipvs.service(VIP)
    a, b, _ = three(backends)  # their ports are not 80
    monitor = run(ipvs, config(VIP, [a.address, b.address], [2, 4], forward="g"), "--verbose").start()
    wait_until(lambda: len(ipvs.dests(VIP)) == 2, what="two servers")
    assert {name: weight for name, (_, weight) in ipvs.dests(VIP).items()} == {"127.0.0.11:80": 2,
                                                                                "127.0.0.12:80": 4}
    monitor.wait_log(f"{a.address} is work nice now", count=3)  # three more passes, found in place
    assert monitor.count("has been added to work") == 2
    a.stop()  # a removal must name the stored port
    wait_until(lambda: set(ipvs.dests(VIP)) == {"127.0.0.12:80"}, what="gate server removed")
    monitor.stop()
    assert monitor.count("FAILED") == 0
    if ipvs.kind == "fake":  # each server added once: alone, or a line of an ipvsadm -R
        with open(ipvs.calls) as handle:
            calls = [json.loads(line) for line in handle if line.strip()]
        lines = [w for c in calls for w in (c.get("stdin", []) if c["argv"] == ["-R"] else [c["argv"]])]
        assert sorted(argv[argv.index("-r") + 1] for argv in lines if argv[:1] == ["-a"]) == [a.address, b.address]


def test_masq_with_a_different_real_port(ipvs, run, backends):
    ipvs.service(VIP)
    a = backends(ip="127.0.0.11")
    monitor = run(ipvs, config(VIP, [a.address], [3], forward="m")).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3)}, what="masq server under its real port")
    a.stop()
    wait_until(lambda: ipvs.dests(VIP) == {}, what="masq server removed")
    monitor.stop()


def test_sigterm_leaves_the_table_as_it_is(ipvs, run, backends):
    ipvs.service(VIP)
    a, b, _ = three(backends)
    monitor = run(ipvs, config(VIP, [a.address, b.address])).start()
    wait_until(lambda: len(ipvs.dests(VIP)) == 2, what="two servers")
    before = ipvs.dests(VIP)
    monitor.signal(signal.SIGTERM)
    code, out, err = monitor.stop()
    assert code == 0, err
    assert ipvs.dests(VIP) == before
    assert monitor.count("monitor_rs stopped") == 1


def test_dry_run_changes_nothing(ipvs, run, backends):
    ipvs.service(VIP)
    a, b, _ = three(backends)
    b.stop()
    ipvs.run("-a", "-t", VIP, "-r", b.address, "-m", "-w", "1")
    before = ipvs.dests(VIP)
    monitor = run(ipvs, config(VIP, [a.address, b.address]))
    proc = monitor.once("--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"would run: {ipvs.path} -a -t {VIP} -r {a.address} -m -w 1" in proc.stdout
    assert f"would run: {ipvs.path} -d -t {VIP} -r {b.address}" in proc.stdout
    assert ipvs.dests(VIP) == before
    assert not monitor.log.exists()


def test_missing_virtual_service_is_reported_and_the_others_go_on(ipvs, run, backends):
    ipvs.service(VIP)
    a, b, _ = three(backends)
    other = f"[virtual ghost]\nvip = 127.0.0.1\nvport = 81\nrs = {b.address}\ntype = m\n"
    monitor = run(ipvs, config(VIP, [a.address], services=[other]))
    proc = monitor.once()
    assert proc.returncode == 1
    assert ipvs.dests(VIP) == {a.address: ("Masq", 1)}
    assert monitor.count("127.0.0.1:81 (ghost): virtual service 127.0.0.1:81 is not defined in IPVS") == 1
    assert "Traceback" not in proc.stderr + proc.stdout


def test_once_exit_status(ipvs, run, backends):
    ipvs.service(VIP)
    a, b, _ = three(backends)
    b.stop()
    monitor = run(ipvs, config(VIP, [a.address, b.address]))
    proc = monitor.once()
    assert proc.returncode == 0, proc.stderr  # every change it needed succeeded
    assert ipvs.dests(VIP) == {a.address: ("Masq", 1)}
    assert f"{b.address} weight=2 ipvs=absent state=down reason='refused'" in proc.stdout


# Beyond the original: quiescent, fallback, rise/fall, depool threshold, hooks, tcp.

def test_quiescent_sets_weight_zero_and_restores_it(ipvs, run, backends):
    ipvs.service(VIP)
    a, b, _ = three(backends)
    monitor = run(ipvs, config(VIP, [a.address, b.address], [4, 2], extra="quiescent = yes")).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 4), b.address: ("Masq", 2)}, what="both in")
    a.stop()
    wait_until(lambda: ipvs.dests(VIP).get(a.address) == ("Masq", 0), what="a quiesced to weight 0")
    a.start()
    wait_until(lambda: ipvs.dests(VIP).get(a.address) == ("Masq", 4), what="a restored to weight 4")
    monitor.stop()


def test_quiescent_leaves_a_weight_an_operator_set_alone(ipvs, run, backends):
    ipvs.service(VIP)
    a, b, _ = three(backends)
    monitor = run(ipvs, config(VIP, [a.address, b.address], [4, 2], extra="quiescent = yes"),
                  "--verbose").start()
    wait_until(lambda: len(ipvs.dests(VIP)) == 2, what="both in")
    ipvs.run("-e", "-t", VIP, "-r", a.address, "-m", "-w", "0")  # draining by hand
    monitor.wait_log(f"{a.address} is work nice now", count=3)
    assert ipvs.dests(VIP)[a.address] == ("Masq", 0)
    monitor.stop()


def one_server_and_a_fallback(ipvs, run, backends, weight):
    """The service VIP with one real server a (rw `weight`) and a sorry server: (monitor, a, sorry)."""
    ipvs.service(VIP)
    a = backends(ip="127.0.0.11")
    sorry = backends(ip="127.0.0.99")
    monitor = run(ipvs, config(VIP, [a.address], [weight], extra=f"fallback = {sorry.address}")).start()
    return monitor, a, sorry


def test_fallback_present_exactly_while_no_real_server_is_up(ipvs, run, backends):
    monitor, a, sorry = one_server_and_a_fallback(ipvs, run, backends, 3)
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3)}, what="a in, no fallback")
    a.stop()
    wait_until(lambda: ipvs.dests(VIP) == {sorry.address: ("Masq", 1)}, what="fallback in, a out")
    a.start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3)}, what="a back, fallback out")
    monitor.stop()
    lines = monitor.lines()
    added = next(i for i, line in enumerate(lines) if "fallback added" in line)
    deleted = next(i for i, line in enumerate(lines) if f"{a.address} is out of work, deleted" in line)
    assert added < deleted  # the pool was never empty


def test_fall_and_rise(ipvs, run, backends):
    ipvs.service(VIP)
    a = backends(ip="127.0.0.11")
    monitor = run(ipvs, config(VIP, [a.address], extra="fall = 3\nrise = 2")).start()
    hits_when_added = wait_until(lambda: a.address in ipvs.dests(VIP) and a.hits, what="a added")
    assert hits_when_added >= 2  # rise = 2: two good probes before the add
    hits_before = a.hits
    a.mode = "http500"
    hits_when_removed = wait_until(lambda: a.address not in ipvs.dests(VIP) and a.hits, what="a removed")
    assert hits_when_removed - hits_before >= 3  # fall = 3: three failed probes before the delete
    monitor.stop()
    assert monitor.count(f"{a.address} is down in {VIP} (web): HTTP 500") == 1


def test_depool_threshold_keeps_the_pool_when_everything_fails(ipvs, run, backends):
    ipvs.service(VIP)
    servers = three(backends)
    monitor = run(ipvs, config(VIP, [b.address for b in servers], [1, 1, 1],
                               extra="depool_threshold = 0.5")).start()
    wait_until(lambda: len(ipvs.dests(VIP)) == 3, what="three in")
    for b in servers:
        b.stop()
    monitor.wait_log("but kept (depool threshold 0.5)", count=2)
    wait_until(lambda: len(ipvs.dests(VIP)) == 2, what="exactly one out")
    monitor.wait_log("is down", count=3)
    assert len(ipvs.dests(VIP)) == 2
    monitor.stop()


def test_on_change_runs_the_hook_with_arguments_and_environment(ipvs, run, backends, tmp_path):
    ipvs.service(VIP)
    a = backends(ip="127.0.0.11")
    out = tmp_path / "hook.out"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$@|$MONITOR_RS_STATE|$MONITOR_RS_SERVER" >> {out}\n')
    hook.chmod(0o755)
    monitor = run(ipvs, config(VIP, [a.address], extra=f"on_change = {hook} --from-monitor")).start()
    wait_until(lambda: a.address in ipvs.dests(VIP), what="a added")
    a.stop()
    wait_until(lambda: out.exists() and "down" in out.read_text(), what="hook ran for down")
    monitor.stop()
    lines = out.read_text().splitlines()
    assert lines == [f"--from-monitor {VIP} {a.address} up HTTP 200|up|{a.address}",
                     f"--from-monitor {VIP} {a.address} down refused|down|{a.address}"]


def test_tcp_check(ipvs, run, backends):
    ipvs.service(VIP)
    a = backends(ip="127.0.0.11", mode="hang")  # accepts, never answers HTTP: fine for a connect check
    monitor = run(ipvs, config(VIP, [a.address], extra="check = tcp")).start()
    wait_until(lambda: a.address in ipvs.dests(VIP), what="tcp-checked server added")
    a.stop()
    wait_until(lambda: a.address not in ipvs.dests(VIP), what="refusing server removed")
    monitor.stop()


# Trust (issue 11): what the monitor did survives a restart and is re-done until it
# holds; an operator's weight is told from the monitor's; a changed rw reaches the table.

def quiesced_then_stopped(ipvs, run, backends):
    """a (4) and b (2) in a quiescent service; a fails and is quiesced; the monitor stopped: (monitor, a, b)."""
    ipvs.service(VIP)
    a, b, _ = three(backends)
    monitor = run(ipvs, config(VIP, [a.address, b.address], [4, 2], extra="quiescent = yes")).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 4), b.address: ("Masq", 2)}, what="both in")
    a.stop()
    wait_until(lambda: (monitor.server_state(a.address) or {}).get("quiesced"), what="a quiesced in the state file")
    assert ipvs.dests(VIP)[a.address] == ("Masq", 0)
    assert monitor.stop()[0] == 0
    return monitor, a, b


def test_quiesced_server_restored_after_a_restart_of_the_monitor(ipvs, run, backends):
    """Before: a restarted monitor took the 0 it had set for an operator's, and never restored it."""
    monitor, a, b = quiesced_then_stopped(ipvs, run, backends)
    a.start()
    monitor.start()  # the same config, lock and state file
    wait_until(lambda: ipvs.dests(VIP).get(a.address) == ("Masq", 4), what="a restored to weight 4")
    monitor.wait_log("remembered from the last run: 1 real server(s) quiesced by the monitor")
    monitor.wait_log(f"{a.address} weight restored to 4 in {VIP} (web)")
    assert monitor.stop()[0] == 0
    assert ipvs.dests(VIP) == {a.address: ("Masq", 4), b.address: ("Masq", 2)}


def test_status_is_not_in_place_while_a_quiesced_server_is_up_at_weight_0(ipvs, run, backends):
    """Before: --status said "up" and exit 0 for a server up but still at the 0 the monitor set."""
    monitor, a, b = quiesced_then_stopped(ipvs, run, backends)
    a.start()  # up again, but nobody runs to restore it
    code, snap = monitor.status()
    assert snap["source"] == "probe"
    server = next(r for r in snap["services"][0]["servers"] if r["server"] == a.address)
    assert (server["state"], server["ipvs_weight"]) == ("up", 0)
    assert code == 1  # not in place: up, but not at the weight it should have
    assert server["intended_weight"] == 4
    assert ipvs.dests(VIP)[a.address] == ("Masq", 0)  # --status changes nothing
    monitor.start()
    wait_until(lambda: ipvs.dests(VIP).get(a.address) == ("Masq", 4), what="a restored to weight 4")
    wait_until(lambda: (monitor.server_state(a.address, monitor.proc.pid) or {}).get("ipvs_weight") == 4,
               what="the running monitor's state file with a at 4")
    code, snap = monitor.status()
    assert (code, snap["source"]) == (0, "monitor")
    monitor.stop()


def test_fallback_in_while_the_only_server_up_has_weight_0(ipvs, run, backends):
    """rw = 0: nobody serves; before, the fallback stayed out because the server was "up"."""
    monitor, a, sorry = one_server_and_a_fallback(ipvs, run, backends, 0)
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 0), sorry.address: ("Masq", 1)},
               what="a at weight 0 and the fallback in")
    monitor.wait_log(f"{sorry.address} fallback added to {VIP} (web): no real server is up")
    assert monitor.stop()[0] == 0
    assert monitor.count("FAILED") == 0


def test_fallback_in_while_an_operator_drains_the_only_server(ipvs, run, backends):
    monitor, a, sorry = one_server_and_a_fallback(ipvs, run, backends, 3)
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3)}, what="a in, no fallback")
    ipvs.run("-e", "-t", VIP, "-r", a.address, "-m", "-w", "0")  # a drain by hand
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 0), sorry.address: ("Masq", 1)},
               what="the fallback in while a is drained")
    ipvs.run("-e", "-t", VIP, "-r", a.address, "-m", "-w", "3")  # the drain is over
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3)}, what="the fallback out again")
    assert monitor.stop()[0] == 0


def drained_then_deleted(ipvs, monitor, a, b):
    """a and b in; an operator drains a to 0; a fails and is deleted."""
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3), b.address: ("Masq", 2)}, what="both in")
    ipvs.run("-e", "-t", VIP, "-r", a.address, "-m", "-w", "0")
    wait_until(lambda: (monitor.server_state(a.address) or {}).get("ipvs_weight") == 0, what="the drain seen")
    a.stop()
    wait_until(lambda: a.address not in ipvs.dests(VIP), what="a deleted")


def test_an_operators_drain_survives_a_failure(ipvs, run, backends):
    """Before: a drained server that failed and came back was re-added at its configured weight."""
    ipvs.service(VIP)
    a, b, _ = three(backends)
    monitor = run(ipvs, config(VIP, [a.address, b.address], [3, 2])).start()
    drained_then_deleted(ipvs, monitor, a, b)
    a.start()
    wait_until(lambda: a.address in ipvs.dests(VIP), what="a re-added")
    assert ipvs.dests(VIP)[a.address] == ("Masq", 0)
    monitor.wait_log(f"{a.address} has been added to work in {VIP} (web) (weight 0)")
    assert monitor.stop()[0] == 0
    assert monitor.count(f"{a.address} in {VIP} (web): weight 0 in IPVS, 3 configured: taken as set by hand") == 1


def test_an_operators_drain_survives_a_failure_and_a_restart(ipvs, run, backends):
    ipvs.service(VIP)
    a, b, _ = three(backends)
    monitor = run(ipvs, config(VIP, [a.address, b.address], [3, 2])).start()
    drained_then_deleted(ipvs, monitor, a, b)
    assert monitor.stop()[0] == 0
    monitor.start()
    wait_until(lambda: (monitor.server_state(a.address, monitor.proc.pid) or {}).get("probe") == "failed",
               what="a pass of the new monitor with a still down")
    a.start()
    wait_until(lambda: a.address in ipvs.dests(VIP), what="a re-added")
    assert ipvs.dests(VIP)[a.address] == ("Masq", 0)
    assert monitor.stop()[0] == 0
    assert monitor.count("remembered from the last run: 0 real server(s) quiesced by the monitor, "
                         "1 weight(s) set by hand") == 1


def test_a_changed_rw_reaches_a_server_already_in_the_table_on_sighup(ipvs, run, backends):
    """Before: the new weight went only to servers added after the reload."""
    ipvs.service(VIP)
    a, b, _ = three(backends)
    monitor = run(ipvs, config(VIP, [a.address, b.address], [3, 2])).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3), b.address: ("Masq", 2)}, what="both in")
    monitor.config.write_text(config(VIP, [a.address, b.address], [5, 2]))
    monitor.signal(signal.SIGHUP)
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 5), b.address: ("Masq", 2)}, what="a at 5")
    assert monitor.stop()[0] == 0
    assert monitor.count(f"config reloaded from {monitor.config}: 1 virtual service(s), 2 real server(s)") == 1
    assert monitor.count(f"{a.address} weight set to 5 in {VIP} (web): the configured weight") == 1


def test_a_changed_rw_reaches_a_server_already_in_the_table_on_a_restart(ipvs, run, backends):
    ipvs.service(VIP)
    a, b, _ = three(backends)
    monitor = run(ipvs, config(VIP, [a.address, b.address], [3, 2])).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3), b.address: ("Masq", 2)}, what="both in")
    wait_until(lambda: (monitor.server_state(a.address) or {}).get("ipvs_weight") == 3, what="a in the state file")
    assert monitor.stop()[0] == 0
    monitor.config.write_text(config(VIP, [a.address, b.address], [5, 2]))
    monitor.start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 5), b.address: ("Masq", 2)}, what="a at 5")
    assert monitor.stop()[0] == 0
    assert monitor.count("taken as set by hand") == 0


def test_a_reload_changing_rw_leaves_a_weight_set_by_hand(ipvs, run, backends):
    ipvs.service(VIP)
    a, b, _ = three(backends)
    monitor = run(ipvs, config(VIP, [a.address, b.address], [3, 2])).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3), b.address: ("Masq", 2)}, what="both in")
    ipvs.run("-e", "-t", VIP, "-r", a.address, "-m", "-w", "7")
    wait_until(lambda: (monitor.server_state(a.address) or {}).get("ipvs_weight") == 7, what="7 seen")
    monitor.config.write_text(config(VIP, [a.address, b.address], [5, 4]))
    monitor.signal(signal.SIGHUP)
    wait_until(lambda: ipvs.dests(VIP).get(b.address) == ("Masq", 4), what="b at its new weight 4")
    streak = monitor.server_state(a.address)["good_streak"]
    wait_until(lambda: (monitor.server_state(a.address) or {}).get("good_streak", 0) >= streak + 3,
               what="three more passes")
    assert ipvs.dests(VIP) == {a.address: ("Masq", 7), b.address: ("Masq", 4)}
    assert monitor.stop()[0] == 0
