"""Operator experience: --status (table and JSON), the state file, the metrics,
--check-config, the live view on a terminal, completion, the contrib files."""

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import time

import pytest
from click.testing import CliRunner

import monitor_rs as m
from harness import MONITOR, ROOT, Monitor, config, wait_until

VIP = "127.0.0.1:80"


def invoke(monitor, *args):
    """The CLI in-process (click's CliRunner), with the harness's paths."""
    result = CliRunner().invoke(m.main, monitor.argv[2:] + list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_status_without_a_running_monitor_probes_and_changes_nothing(ipvs, run, backends):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    b.stop()
    monitor = run(ipvs, config(VIP, [a.address, b.address], [3, 1]))
    code, out = invoke(monitor, "--status")
    assert code == 1  # not everything is up and in place
    assert "no running monitor for this config: one pass of probes, nothing changed" in out
    assert f"{a.address} weight=3 ipvs=absent state=up reason='HTTP 200'" in out and "action=would add" in out
    assert f"{b.address} weight=1 ipvs=absent state=down reason='refused'" in out
    assert ipvs.dests(VIP) == {}
    assert not monitor.log.exists()


def test_status_json_and_exit_0_when_all_in_place(ipvs, run, backends):
    a = backends(ip="127.0.0.11")
    ipvs.run("-a", "-t", VIP, "-r", a.address, "-m", "-w", "3")
    monitor = run(ipvs, config(VIP, [a.address], [3]))
    code, out = invoke(monitor, "--status", "--json")
    assert code == 0
    snap = json.loads(out)
    assert snap["source"] == "probe"
    (service,) = snap["services"]
    assert (service["name"], service["address"], service["problem"]) == ("web", VIP, None)
    (server,) = service["servers"]
    assert {k: server[k] for k in ("server", "weight", "ipvs_weight", "state", "probe", "reason", "action")} == {
        "server": a.address, "weight": 3, "ipvs_weight": 3, "state": "up", "probe": "ok", "reason": "HTTP 200",
        "action": None}
    assert server["latency_ms"] >= 0


def test_status_of_a_running_monitor_comes_from_its_state_file(ipvs, run, backends):
    a = backends(ip="127.0.0.11")
    monitor = run(ipvs, config(VIP, [a.address], [3])).start()
    wait_until(lambda: monitor.state.exists() and json.loads(monitor.state.read_text())["services"][0]
               ["servers"][0]["good_streak"] >= 3, what="three good passes in the state file")
    hits = a.hits
    code, out = invoke(monitor, "--status", "--json")
    snap = json.loads(out)
    assert code == 0 and snap["source"] == "monitor" and snap["pid"] == monitor.proc.pid
    server = snap["services"][0]["servers"][0]
    assert server["good_streak"] >= 3
    assert server["last_change"]["what"] == "added (weight 3)"
    assert a.hits - hits <= 2  # no probe of its own (the monitor's passes go on meanwhile)
    monitor.stop()
    code, out = invoke(monitor, "--status", "--json")
    assert json.loads(out)["source"] == "probe"  # that monitor is gone: probe again


def test_state_file_is_valid_json_after_a_kill_in_mid_write(ipvs, run, backends, tmp_path):
    servers = [f"127.0.1.{i}:9" for i in range(1, 201)]  # nothing listens: fast refusals, a big state file
    text = config(VIP, servers, interval=0.1, timeout=0.2)
    for attempt in range(8):
        monitor = run(ipvs, text).start()
        wait_until(lambda: monitor.state.exists(), what="a state file")
        time.sleep(0.05 * (attempt % 4))  # kill at different points of the write cycle
        monitor.proc.send_signal(signal.SIGKILL)
        monitor.proc.wait()
        snap = json.loads(monitor.state.read_text())
        assert len(snap["services"][0]["servers"]) == 200


def test_prometheus_textfile(ipvs, run, backends, tmp_path):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    b.stop()
    prom = tmp_path / "monitor_rs.prom"
    monitor = run(ipvs, config(VIP, [a.address, b.address], [3, 1]).replace(
        "[monitor]\n", f"[monitor]\nprometheus_file = {prom}\n"))
    assert monitor.once().returncode == 0
    text = prom.read_text()
    labels = f'service="{VIP}",name="web",server="{a.address}"'
    assert f"monitor_rs_server_up{{{labels}}} 1" in text
    assert f"monitor_rs_server_weight{{{labels}}} 3" in text  # as it stands after this pass added it
    assert f'monitor_rs_server_up{{service="{VIP}",name="web",server="{b.address}"}} 0' in text
    assert re.search(r"^monitor_rs_pass_duration_seconds [0-9.]+$", text, re.M)


def test_check_config_prints_the_resolved_settings(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text("[monitor]\nfall = 2\n[virtual web]\nvip = 10.10.10.10\nvport = 80\n"
                    "rs = 192.168.32.63 192.168.32.73:8080\nrw = 3 1\nrport = 8000\ntype = g\n")
    result = CliRunner().invoke(m.main, ["--config", str(conf), "--check-config"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == f"monitor_rs: {conf}: ok, 1 virtual service(s), 2 real server(s)"
    assert "[virtual web] tcp 10.10.10.10:80 type=g check=http request=/ expect=200-399" in lines[2]
    assert "fall=2 rise=1" in lines[2]
    assert lines[3] == "  192.168.32.63:8000 weight 3: IPVS entry 192.168.32.63:80, probe http://192.168.32.63:8000/"
    assert lines[4] == "  192.168.32.73:8080 weight 1: IPVS entry 192.168.32.73:80, probe http://192.168.32.73:8080/"


def test_check_config_refuses_a_bad_config_with_2(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text("[monitor]\n[virtual web]\nvip = 10.10.10.10\nvport = 80\nrs = 192.168.32.63\nrw = 3 1\n")
    result = CliRunner().invoke(m.main, ["--config", str(conf), "--check-config"])
    assert result.exit_code == 2
    assert result.output == f"monitor_rs: {conf}: [virtual web] rw = '3 1': 2 weight(s) for 1 real server(s) in rs\n"


def test_the_live_view_on_a_terminal(ipvs, tmp_path, backends):
    """On a terminal the loop shows the table (rich Live) under coloured events."""
    a = backends(ip="127.0.0.11")
    monitor = Monitor(tmp_path, ipvs, config(VIP, [a.address], [3]))
    master, slave = pty.openpty()  # a terminal, without forking this threaded process
    proc = subprocess.Popen(monitor.argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            env=dict(os.environ, COLUMNS="160", LINES="40", TERM="xterm-256color"))
    os.close(slave)
    screen = b""
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (b"Real server" in screen and b"has been added" in screen):
            if select.select([master], [], [], 0.2)[0]:
                try:
                    screen += os.read(master, 65536)
                except OSError:
                    break
    finally:
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:  # keep reading: a full pty blocks it
            if select.select([master], [], [], 0.2)[0]:
                try:
                    os.read(master, 65536)
                except OSError:
                    break
        code = proc.wait(timeout=15)
        os.close(master)
    text = screen.decode(errors="replace")
    assert "Real server" in text and "In IPVS" in text and a.address in text
    assert "has been added to work" in text
    assert "\x1b[" in text  # colour: it is rich, not the plain lines
    assert code == 0


def test_plain_lines_when_not_a_terminal(ipvs, run, backends):
    a = backends(ip="127.0.0.11")
    monitor = run(ipvs, config(VIP, [a.address], [3])).start()
    wait_until(lambda: a.address in ipvs.dests(VIP), what="a added")
    code, out, err = monitor.stop()
    assert "\x1b[" not in out
    assert re.search(rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d, {re.escape(a.address)} has been added to work", out, re.M)


def test_shell_completion_script():
    result = CliRunner().invoke(m.main, [], prog_name="monitor-rs", env={"_MONITOR_RS_COMPLETE": "bash_source"})
    assert result.exit_code == 0
    assert "_monitor_rs_completion" in result.output and "complete " in result.output


def test_systemd_unit_verifies(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    unit = tmp_path / "monitor-rs.service"
    text = open(os.path.join(ROOT, "contrib", "monitor-rs.service")).read()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text and "Restart=on-failure" in text
    unit.write_text(text.replace("/usr/local/bin/monitor-rs", MONITOR))  # an executable that exists here
    # --man=no: Documentation=man:ipvsadm(8) is checked against this host's man pages (ipvsadm's, absent here).
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "monitor-rs.service" not in proc.stderr, proc.stderr


def test_logrotate_snippet_needs_no_copytruncate():
    text = open(os.path.join(ROOT, "contrib", "monitor-rs.logrotate")).read()
    assert re.search(r"^/var/log/monitorRS\.log \{$", text, re.M)
    assert "copytruncate" not in text.split("{", 1)[1]


def test_a_pass_waiting_for_a_long_probe_timeout_is_not_taken_for_a_stuck_monitor():
    """A pass lasts about an interval, and up to a probe timeout more while a check is in flight
    (ldirectord.cf's negotiatetimeout defaults to 30 s): a snapshot that old is a running monitor's."""
    now = 1_000_000.0
    snap = {"time": now - 45, "interval": 3, "timeout": 30, "pass_seconds": 0.0, "services": []}
    assert not m.stale(snap, now)  # 3 x 3 + 30 + 10 = 49 s
    assert m.stale(dict(snap, time=now - 50), now)
    assert m.stale({k: v for k, v in snap.items() if k != "timeout"}, now)  # an older monitor's file: as before
