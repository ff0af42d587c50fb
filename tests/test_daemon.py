"""Running as a daemon, with the fake ipvsadm: lock, reload, log, faults of ipvsadm."""

import re
import signal
import subprocess
import sys
import time

from harness import MONITOR, config, wait_until

VIP = "127.0.0.1:80"


def test_failed_add_is_reported_as_failed(ipvs, run, backends):
    """The original tested $? of an assignment and always logged success."""
    a = backends(ip="127.0.0.11")
    ipvs.fault("fail-add")
    monitor = run(ipvs, config(VIP, [a.address]))
    proc = monitor.once()
    assert proc.returncode == 1
    assert ipvs.dests(VIP) == {}
    (line,) = [line for line in monitor.lines() if "FAILED" in line]
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d, 127\.0\.0\.11:\d+ add FAILED in 127\.0\.0\.1:80 \(web\): "
        r"exit 255: Service not defined \(.*ipvsadm -a -t 127\.0\.0\.1:80 -r 127\.0\.0\.11:\d+ -m -w 1\)", line)
    assert monitor.count("has been added") == 0


def test_repeated_failure_is_logged_once_then_success_is_logged(ipvs, run, backends):
    a = backends(ip="127.0.0.11")
    ipvs.fault("fail-add")
    monitor = run(ipvs, config(VIP, [a.address]), "--verbose").start()
    monitor.wait_log("add FAILED")
    wait_until(lambda: len([c for c in ipvs.listing_calls() if c[:1] == ["-a"]]) >= 3, what="3 tries")
    assert monitor.count("add FAILED") == 1
    ipvs.fault("")
    wait_until(lambda: a.address in ipvs.dests(VIP), what="added once ipvsadm works")
    monitor.stop()
    assert monitor.count("has been added to work") == 1


def test_log_lines_have_the_originals_timestamp(ipvs, run, backends):
    a = backends(ip="127.0.0.11")
    monitor = run(ipvs, config(VIP, [a.address]))
    assert monitor.once().returncode == 0
    lines = monitor.lines()
    assert lines and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d, 127\.0\.0\.11:\d+ ", line) for line in lines)


def test_a_second_instance_names_the_pid_holding_the_lock(ipvs, run, backends):
    a = backends(ip="127.0.0.11")
    first = run(ipvs, config(VIP, [a.address])).start()
    wait_until(lambda: a.address in ipvs.dests(VIP), what="first monitor working")
    second = subprocess.run(first.argv, capture_output=True, text=True, timeout=30)
    assert second.returncode == 3
    assert second.stderr == (f"monitor_rs: another monitor (PID {first.proc.pid}) already runs with "
                             f"{first.config}\n")
    assert first.stop()[0] == 0
    third = run(ipvs, config(VIP, [a.address]), name="again.conf")
    third.lock = first.lock  # same lock, now free
    assert third.once().returncode == 0


def test_sighup_reloads_and_a_broken_config_keeps_the_old_one(ipvs, run, backends):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    monitor = run(ipvs, config(VIP, [a.address], [3])).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3)}, what="a added")
    monitor.config.write_text(config(VIP, [a.address, b.address], [3, 5]))
    monitor.signal(signal.SIGHUP)
    wait_until(lambda: ipvs.dests(VIP).get(b.address) == ("Masq", 5), what="b added after reload")
    monitor.config.write_text("[monitor]\ninterval = never\n")
    monitor.signal(signal.SIGHUP)
    monitor.wait_log("reload refused, keeping the running config")
    b.stop()
    wait_until(lambda: b.address not in ipvs.dests(VIP), what="still monitoring with the old config")
    assert monitor.stop()[0] == 0
    assert monitor.count("interval = 'never': not a number") == 1


def test_server_dropped_from_the_config_is_left_in_ipvs(ipvs, run, backends):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    monitor = run(ipvs, config(VIP, [a.address, b.address])).start()
    wait_until(lambda: len(ipvs.dests(VIP)) == 2, what="both added")
    monitor.config.write_text(config(VIP, [a.address]))
    monitor.signal(signal.SIGHUP)
    monitor.wait_log(f"{b.address} is no longer in the config of 127.0.0.1:80 (web)")
    b.stop()
    a.stop()
    wait_until(lambda: a.address not in ipvs.dests(VIP), what="a still monitored")
    assert b.address in ipvs.dests(VIP)
    monitor.stop()


def test_ipvs_missing_from_the_kernel_is_one_clear_line(ipvs, run, backends):
    a = backends(ip="127.0.0.11")
    ipvs.fault("noipvs")
    proc = run(ipvs, config(VIP, [a.address])).once()
    assert proc.returncode == 4
    assert proc.stderr.count("\n") == 1 and "Can't initialize ipvs: Protocol not available" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_ipvsadm_not_found_is_one_clear_line(tmp_path, backends):
    a = backends(ip="127.0.0.11")
    conf = tmp_path / "m.conf"
    conf.write_text(config(VIP, [a.address]))
    proc = subprocess.run([sys.executable, MONITOR, "-c", str(conf), "--ipvsadm", str(tmp_path / "nope"),
                           "--log-file", "", "--lock-file", str(tmp_path / "l")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 4
    assert proc.stderr == f"monitor_rs: {tmp_path / 'nope'}: not found (install ipvsadm, or give --ipvsadm PATH)\n"


def test_dry_run_without_ipvs_says_so_and_assumes_an_empty_table(ipvs, run, backends):
    a = backends(ip="127.0.0.11")
    ipvs.fault("noipvs")
    proc = run(ipvs, config(VIP, [a.address], [4])).once("--dry-run")
    assert proc.returncode == 0
    assert "IPVS is not available here" in proc.stdout and "assuming an empty table" in proc.stdout
    assert f"would run: {ipvs.path} -a -t {VIP} -r {a.address} -m -w 4" in proc.stdout


def test_unwritable_log_is_reported_and_monitoring_goes_on(ipvs, run, backends, tmp_path):
    a = backends(ip="127.0.0.11")
    monitor = run(ipvs, config(VIP, [a.address]), "--log-file", str(tmp_path / "no" / "such" / "dir.log"))
    proc = monitor.once()
    assert proc.returncode == 0
    assert ipvs.dests(VIP) == {a.address: ("Masq", 1)}
    assert proc.stderr.count("cannot write log") == 1


def test_log_reopened_after_rotation(ipvs, run, backends, tmp_path):
    a = backends(ip="127.0.0.11")
    monitor = run(ipvs, config(VIP, [a.address])).start()
    monitor.wait_log("has been added to work")
    monitor.log.rename(tmp_path / "monitorRS.log.1")
    a.stop()
    wait_until(lambda: monitor.log.exists() and "deleted from" in monitor.log.read_text(), what="new log file")
    monitor.stop()
    assert "deleted from" not in (tmp_path / "monitorRS.log.1").read_text()


def test_a_second_sigterm_while_stopping_still_exits_0(ipvs, run, backends):
    """Python restores default handlers while it shuts down: a late SIGTERM killed it (exit -15)."""
    a = backends(ip="127.0.0.11")
    for delay in (0.0, 0.02, 0.05, 0.1):
        monitor = run(ipvs, config(VIP, [a.address]))
        if monitor.log.exists():
            monitor.log.unlink()  # each round reads its own monitor's lines
        monitor.start()
        wait_until(lambda: monitor.count("started") == 1, what="monitor started")
        monitor.signal(signal.SIGTERM)
        wait_until(lambda: monitor.count("monitor_rs stopped") == 1 or monitor.proc.poll() is not None,
                   what="stopping")
        time.sleep(delay)  # the second SIGTERM at several points of the shutdown
        if monitor.proc.poll() is None:
            monitor.signal(signal.SIGTERM)
        assert monitor.proc.wait(timeout=15) == 0


def test_a_hung_listing_at_start_is_a_passing_fault_not_a_missing_ipvs(ipvs, run, backends):
    """Exit 4 is for a missing ipvsadm or IPVS; a listing that times out at boot is retried."""
    a = backends(ip="127.0.0.11")
    ipvs.fault("hang-list")
    monitor = run(ipvs, config(VIP, [a.address]).replace("[monitor]\n", "[monitor]\nipvsadm_timeout = 0.3\n"))
    monitor.start()
    monitor.wait_log("no answer within 0.3 s")
    assert monitor.proc.poll() is None
    ipvs.fault("")
    wait_until(lambda: a.address in ipvs.dests(VIP), what="added once the listing answers")
    assert monitor.stop()[0] == 0
