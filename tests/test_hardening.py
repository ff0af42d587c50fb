"""Hardening (issue 7): faults around the monitor, hostile input, long runs -- and nothing lost.

Every fault is injected for real, end to end: monitor_rs.py runs as a subprocess
against tests/fake_ipvsadm.py (its call log holds the argv of every ipvsadm
run) and real sockets on 127.0.0.x / ::1.  Conditions are polled with
`wait_until` under generous deadlines; nothing sleeps and hopes.

1. ipvsadm missing, not executable, hanging, failing, printing garbage or a
   truncated table: nothing is added or removed, each problem is logged once,
   and normal operation resumes when the fault goes.
2. The log file unwritable, its folder deleted, the disk full: monitoring goes
   on, stderr says so once.
3. Signals: SIGTERM in a pass (probes, an ipvsadm call), SIGHUP storms.
4. The clock: the schedule is monotonic; a wall-clock jump does not disturb it.
5. Hostile real servers: every probe ends at its deadline, memory and
   descriptors stay bounded, the verdict is "failed" with a reason.
6. Bad input: config fuzzing (hypothesis), shell-crafted values, IPv4/IPv6 in
   one service, duplicates, weight and port limits.

Six defects found by these tests were fixed in monitor_rs.py: a garbage
listing logged every pass, giant integers and IPv6 scope ids in the config,
and SIGTERM waiting for the probe deadline, for a hung listing, or for the
pass's remaining changes.
"""

import asyncio
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import monitor_rs as m
from harness import MONITOR, SLOW, config, processes_with_env, wait_until

VIP = "127.0.0.1:80"


###############################################################################
# Helpers ######################################################################
###############################################################################


def monitor_keys(text, **keys):
    """Add [monitor] keys to a config() text."""
    lines = "".join(f"{key} = {value}\n" for key, value in keys.items())
    return text.replace("[monitor]\n", "[monitor]\n" + lines, 1)


def table(ipvs, vip=VIP):
    """{'RIP:PORT': weight} of one service, read from the fake's state file
    (not through ipvsadm, which may be the thing that is broken)."""
    try:
        with open(ipvs.state) as handle:
            state = json.load(handle)
    except FileNotFoundError:
        state = {"services": []}
    for svc in state["services"]:
        if str(m.Endpoint(ipaddress.ip_address(svc["addr"]), svc["port"])) == vip:
            return {str(m.Endpoint(ipaddress.ip_address(d["addr"]), d["port"])): d["weight"] for d in svc["dests"]}
    raise AssertionError(f"no service {vip} in the fake's table")


def calls(ipvs):
    """Every ipvsadm run, in order: {"argv": [...], "t": wall-clock time}."""
    if not os.path.exists(ipvs.calls):
        return []
    with open(ipvs.calls) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def changes(ipvs, start=0):
    """The argv of the ipvsadm runs that change the table, from call number `start` on
    (the lines of an `ipvsadm -R` in their place: several changes of a pass are one -R)."""
    lines = [w for c in calls(ipvs)[start:] for w in (c.get("stdin", []) if c["argv"] == ["-R"] else [c["argv"]])]
    return [argv for argv in lines if argv[:1] in (["-a"], ["-d"], ["-e"])]


def proc_status(pid):
    """VmRSS and VmHWM of a process, in kB."""
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def slow_ipvsadm(tmp_path, ipvs, seconds=1.0, slow=True):
    """A wrapper that notes each call, sleeps (while the file `slow` exists), then runs the fake:
    ipvsadm calls that take time.  Returns (path, file of started calls, the `slow` switch)."""
    started, switch = tmp_path / "slow-ipvsadm-started", tmp_path / "slow-ipvsadm-on"
    path = tmp_path / "slow-ipvsadm"
    path.write_text(f"#!/bin/sh\necho \"$*\" >> '{started}'\n[ -e '{switch}' ] && sleep {seconds}\n"
                    f"exec '{ipvs.path}' \"$@\"\n")
    os.chmod(path, 0o755)
    if slow:
        switch.write_text("")
    return str(path), started, switch


def started_calls(started):
    try:
        return started.read_text().splitlines()
    except FileNotFoundError:
        return []


###############################################################################
# 1. Faults of ipvsadm #########################################################
###############################################################################
#
# The world changes while the listing cannot be read: b dies, c recovers.  On
# the strength of an unreadable listing the monitor must neither delete b nor
# add c; once ipvsadm works again, it must do both.

IPVSADM_FAULTS = {
    "missing": "not found (install ipvsadm, or give --ipvsadm PATH)",
    "not-executable": "not executable",
    "hang": "no answer within 1 s",
    "exit1": "failed: exit 1: ipvsadm: something went wrong",
    "garbage": "unreadable ipvsadm listing line",
    "truncated": "unreadable ipvsadm listing: title lines missing",
    "noipvs": "Can't initialize ipvs: Protocol not available",
    "noroot": "Can't initialize ipvs: Permission denied (you must be root)",
}


def inject(ipvs, mode):
    if mode == "missing":
        os.rename(ipvs.path, ipvs.path + ".away")
    elif mode == "not-executable":
        os.chmod(ipvs.path, 0o644)  # no x bit at all: even root cannot exec it
    else:
        ipvs.fault(mode)


def repair(ipvs, mode):
    if mode == "missing":
        os.rename(ipvs.path + ".away", ipvs.path)
    elif mode == "not-executable":
        os.chmod(ipvs.path, 0o755)
    else:
        ipvs.fault("")


def start_three(ipvs, run, backends, **keys):
    """a and b up and in IPVS, c failing and absent; passes every ~0.1 s."""
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    c = backends(ip="127.0.0.13", mode="http500")
    text = monitor_keys(config(VIP, [a.address, b.address, c.address], [1, 2, 3], interval=0.1, timeout=0.3), **keys)
    monitor = run(ipvs, text).start()
    wait_until(lambda: table(ipvs) == {a.address: 1, b.address: 2}, what="a and b added")
    return monitor, a, b, c


@pytest.mark.parametrize("mode", list(IPVSADM_FAULTS))
def test_unreadable_listing_changes_nothing_is_logged_once_and_work_resumes(mode, ipvs, run, backends):
    monitor, a, b, c = start_three(ipvs, run, backends, ipvsadm_timeout=1)
    start, logged = len(calls(ipvs)), len(monitor.lines())
    inject(ipvs, mode)
    # the servers change once a pass has met the fault: a pass that read the table before it may act
    # on what it read until it ends (its checks spread over an interval)
    wait_until(lambda: any("no change made to it" in line for line in monitor.lines()[logged:]),
               what="a pass under the fault")
    b.stop()
    c.mode = "ok"
    hits, began = a.hits, time.monotonic()
    wait_until(lambda: a.hits >= hits + 4, what="4 passes under the fault")  # a is probed once a pass
    elapsed = time.monotonic() - began

    assert changes(ipvs, start) == [], "a server was added or removed on an unreadable listing"
    assert table(ipvs) == {a.address: 1, b.address: 2}
    problems = [line for line in monitor.lines()[logged:] if "no change made to it" in line]
    if mode == "missing" and problems and ": cannot open " in problems[0] and "No such file" in problems[0]:
        # a run that began as the wrapper was renamed: its shell could not open it, and said so (exit 2)
        problems = problems[1:]
    assert problems and all(IPVSADM_FAULTS[mode] in line for line in problems), problems
    if mode != "garbage":  # garbage: see test_garbage_listing_is_logged_once
        assert len(problems) == 1, problems
    if mode == "hang":  # each call is bounded by ipvsadm_timeout = 1, and the passes go on
        assert elapsed < 4 * (1 + 0.3 + 0.1) + 4 * SLOW

    repair(ipvs, mode)
    wait_until(lambda: table(ipvs) == {a.address: 1, c.address: 3}, what="b removed and c added once readable")
    code, _, err = monitor.stop()
    assert sum("can be read again" in line for line in monitor.lines()[logged:]) == 1
    assert code == 0 and "Traceback" not in err
    assert processes_with_env(ipvs.state) == [], "an ipvsadm run outlived the monitor"


def test_garbage_listing_is_logged_once(ipvs, run, backends):
    monitor, a, _, _ = start_three(ipvs, run, backends)
    logged = len(monitor.lines())
    ipvs.fault("garbage")
    hits = a.hits
    wait_until(lambda: a.hits >= hits + 4, what="4 passes under the fault")
    problems = [line for line in monitor.lines()[logged:] if "no change made to it" in line]
    assert len(problems) == 1, f"{len(problems)} lines for one ongoing problem"


def test_hung_ipvsadm_call_is_killed_at_ipvsadm_timeout(ipvs, run, backends):
    """A listing that never answers costs one ipvsadm_timeout a pass, and is killed: no ipvsadm piles up."""
    monitor, a, _, _ = start_three(ipvs, run, backends, ipvsadm_timeout=1)
    logged = len(monitor.lines())
    ipvs.fault("hang-list")  # listings hang, changes would work
    hits = a.hits
    wait_until(lambda: a.hits >= hits + 3, what="3 passes with a hanging ipvsadm")
    # At most the call of the pass under way is alive: the others were killed at their timeout.
    hung = processes_with_env(ipvs.state)
    assert len(hung) <= 1, f"{len(hung)} ipvsadm processes alive"
    assert sum("no answer within 1 s" in line for line in monitor.lines()[logged:]) == 1
    assert monitor.stop()[0] == 0
    wait_until(lambda: processes_with_env(ipvs.state) == [], timeout=5, what="no ipvsadm left")


###############################################################################
# 2. The log file ##############################################################
###############################################################################
#
# While the log cannot be written, a server dies and comes back: the table
# still follows (monitoring goes on), stderr says so once for the 4+ lines that
# were lost, and once more when the log can be written again.


def mount_tmpfs(path, request, size="64k"):
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(path)], capture_output=True))


def fill(folder):
    """Write a ballast file until the file system is full."""
    with open(folder / "ballast", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC


def log_unwritable(tmp_path, request):
    """The log exists but cannot be opened for writing (immutable; else a directory in its place)."""
    log = tmp_path / "monitorRS.log"
    state = {}

    def brk():
        log.rename(tmp_path / "monitorRS.log.1")  # rotated away: the monitor reopens the name...
        log.write_text("")  # ...which is now a file that cannot be written
        if subprocess.run(["chattr", "+i", str(log)], capture_output=True).returncode == 0:
            state["how"] = "immutable"
            request.addfinalizer(lambda: subprocess.run(["chattr", "-i", str(log)], capture_output=True))
        else:
            state["how"] = "directory"
            log.unlink()
            log.mkdir()

    def fix():
        if state["how"] == "immutable":
            subprocess.run(["chattr", "-i", str(log)], check=True)
        else:
            log.rmdir()

    return log, brk, fix


def log_folder_deleted(tmp_path, request):
    folder = tmp_path / "logs"
    folder.mkdir()
    return folder / "monitorRS.log", lambda: shutil.rmtree(folder), folder.mkdir


def log_disk_full(tmp_path, request):
    """logrotate moved the log away on a full disk: the new log gets no block."""
    folder = tmp_path / "small"
    mount_tmpfs(folder, request)
    log = folder / "monitorRS.log"

    def brk():
        fill(folder)
        log.rename(folder / "monitorRS.log.1")

    return log, brk, lambda: (folder / "ballast").unlink()


@pytest.mark.parametrize("trouble", [log_unwritable, log_folder_deleted, log_disk_full],
                         ids=["unwritable", "folder-deleted", "disk-full"])
def test_log_trouble_is_said_once_on_stderr_and_monitoring_goes_on(trouble, ipvs, run, backends, tmp_path, request):
    log, brk, fix = trouble(tmp_path, request)
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    monitor = run(ipvs, config(VIP, [a.address, b.address], interval=0.1, timeout=0.3), "--log-file", str(log))
    monitor.start()
    wait_until(lambda: len(table(ipvs)) == 2, what="both added")
    wait_until(lambda: log.exists() and log.read_text().count("has been added") == 2,
               what="both adds logged (nothing more to write until b stops)")
    brk()
    b.stop()  # 2 lines that cannot be written: down, deleted
    wait_until(lambda: b.address not in table(ipvs), what="b removed while the log is broken")
    b.start()  # 2 more: up, added
    wait_until(lambda: b.address in table(ipvs), what="b back while the log is broken")
    hits = a.hits  # the "added" line is written just after the table changed: let that pass end
    wait_until(lambda: a.hits >= hits + 2, what="the next pass")
    fix()
    b.stop()
    wait_until(lambda: b.address not in table(ipvs), what="b removed again")
    wait_until(lambda: log.exists() and "deleted from" in log.read_text(), what="the log written again")
    code, _, err = monitor.stop()
    assert code == 0
    assert err.count("cannot write log") == 1, err
    assert err.count("is writable again") == 1, err
    assert "Traceback" not in err
    assert "has been added" not in log.read_text().split("deleted from")[0], "a lost line reappeared"


###############################################################################
# 3. Signals ###################################################################
###############################################################################
#
# SIGTERM leaves the table exactly as it was when the signal came, and the
# monitor exits 0 promptly.  (SIGHUP with a broken config and a second instance
# are covered by test_daemon.py.)


def sigterm(monitor):
    """Send SIGTERM; return (wall time, monotonic time) of the sending."""
    at = time.time(), time.monotonic()
    monitor.signal(signal.SIGTERM)
    return at


def test_sigterm_while_probes_wait_on_hung_servers(ipvs, run, backends):
    a, b, hung = backends(ip="127.0.0.11"), backends(ip="127.0.0.12"), backends(ip="127.0.0.13", mode="hang")
    monitor = run(ipvs, config(VIP, [a.address, b.address, hung.address], interval=0.1, timeout=1)).start()
    wait_until(lambda: len(table(ipvs)) == 2, what="a and b added")
    b.mode = "hang"  # the next pass would delete b at its deadline (a refusal would go at once)...
    waiting = len(hung.open_conns)
    wait_until(lambda: len(hung.open_conns) > waiting, what="a pass waiting on the hung server")
    before = table(ipvs)
    sent, sent_mono = sigterm(monitor)  # ...but it is stopped while its probes wait
    code = monitor.proc.wait(timeout=10 * SLOW)
    took = time.monotonic() - sent_mono
    assert code == 0
    assert took < 3 * SLOW, f"took {took:.1f} s to stop"
    assert table(ipvs) == before, "the table changed after SIGTERM"
    assert [c for c in calls(ipvs) if c["t"] > sent and c["argv"][0] in ("-a", "-d", "-e")] == []


def test_sigterm_during_a_slow_ipvsadm_listing(ipvs, run, backends, tmp_path):
    slow, started, switch = slow_ipvsadm(tmp_path, ipvs, 1.0, slow=False)
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    monitor = run(ipvs, config(VIP, [a.address, b.address], interval=0.1, timeout=0.5), "--ipvsadm", slow).start()
    wait_until(lambda: len(table(ipvs)) == 2, what="a and b added")
    switch.write_text("")  # from now on every ipvsadm call takes 1 s
    b.stop()
    listed = sum(line.startswith("-Ln") for line in started_calls(started))
    wait_until(lambda: sum(line.startswith("-Ln") for line in started_calls(started)) > listed,
               what="a listing under way")
    before = table(ipvs)
    done = len(started_calls(started))
    _, sent_mono = sigterm(monitor)  # the wrapper is sleeping: the listing is in the middle
    code = monitor.proc.wait(timeout=20 * SLOW)
    took = time.monotonic() - sent_mono
    assert code == 0
    assert took < 3.5 * SLOW, f"took {took:.1f} s to stop"
    assert table(ipvs) == before
    assert started_calls(started)[done:] == [], "an ipvsadm call was started after SIGTERM"


def test_sigterm_stops_promptly_even_with_a_long_probe_deadline(ipvs, run, backends):
    a, hung = backends(ip="127.0.0.11"), backends(ip="127.0.0.13", mode="hang")
    monitor = run(ipvs, config(VIP, [a.address, hung.address], interval=0.1, timeout=8)).start()
    wait_until(lambda: hung.open_conns, what="the first pass waiting on the hung server")
    sigterm(monitor)
    assert monitor.proc.wait(timeout=3 * SLOW) == 0  # TimeoutExpired: still waiting for the deadline


def test_sigterm_stops_promptly_during_a_hung_ipvsadm_listing(ipvs, run, backends):
    a = backends(ip="127.0.0.11")
    monitor = run(ipvs, monitor_keys(config(VIP, [a.address], interval=0.1, timeout=0.3), ipvsadm_timeout=20))
    monitor.start()
    wait_until(lambda: a.address in table(ipvs), what="a added")
    ipvs.fault("hang")
    listed = len(calls(ipvs))
    wait_until(lambda: len(calls(ipvs)) > listed, what="a hung listing")
    sigterm(monitor)
    assert monitor.proc.wait(timeout=3 * SLOW) == 0  # TimeoutExpired: ~20 s


def test_sigterm_between_changes_starts_no_new_change(ipvs, run, backends, tmp_path):
    slow, started, _ = slow_ipvsadm(tmp_path, ipvs, 1.0)
    servers = [backends(ip=f"127.0.0.{11 + i}") for i in range(4)]
    monitor = run(ipvs, config(VIP, [s.address for s in servers], interval=0.1, timeout=0.5), "--ipvsadm", slow)
    monitor.start()
    # The four adds are one change: one `ipvsadm -R` (before: four `ipvsadm -a`, 1 s each).
    wait_until(lambda: any(line.startswith("-R") for line in started_calls(started)), what="the adds under way")
    done = len(started_calls(started))
    sigterm(monitor)
    assert monitor.proc.wait(timeout=2.5 * SLOW) == 0  # TimeoutExpired: more runs, 1 s each
    # The -R under way completes (the adds of the results at hand; results are acted on as they
    # arrive, so there may have been an earlier change, and others not started); no other run starts.
    assert started_calls(started)[done:] == []  # not even the listing that reads the -R back
    assert len(table(ipvs)) >= 1 and monitor.count("has been added to work") == len(table(ipvs))  # each logged


def test_sighup_storm_leaves_the_monitor_running_and_monitoring(ipvs, run, backends):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    hung = backends(ip="127.0.0.13", mode="hang")  # so that some signals land while probes wait
    monitor = run(ipvs, config(VIP, [a.address, b.address, hung.address], interval=0.1, timeout=0.3)).start()
    wait_until(lambda: len(table(ipvs)) == 2, what="a and b added")
    pid = monitor.proc.pid
    for _ in range(50):  # back to back
        os.kill(pid, signal.SIGHUP)
    for i in range(50):  # and spread over every phase of a few passes
        os.kill(pid, signal.SIGHUP)
        time.sleep(0.002 * (i % 10))
    assert monitor.proc.poll() is None, "died of a SIGHUP storm"
    b.stop()
    wait_until(lambda: b.address not in table(ipvs), what="still monitoring: b removed")
    b.start()
    wait_until(lambda: b.address in table(ipvs), what="still monitoring: b back")
    code, _, err = monitor.stop()
    assert code == 0
    assert "Traceback" not in err
    assert monitor.count("pass failed") == 0 and monitor.count("reload refused") == 0
    assert monitor.count(f"{b.address} has been added") == 2


###############################################################################
# 4. The clock #################################################################
###############################################################################
#
# The schedule must follow time.monotonic: a wall clock set back a day (NTP
# step, a hand-set date) must not make the monitor sleep a day, nor a jump
# forward make it race.  End to end, a tiny LD_PRELOAD library shifts the wall
# clock (CLOCK_REALTIME, gettimeofday, time) of the monitor by the number of
# seconds in a file, and leaves CLOCK_MONOTONIC and every sleep alone.
# (libfaketime cannot be used for this: with DONT_FAKE_MONOTONIC=1, version
# 0.9.10 makes Python's time.sleep fail with EINVAL, which subprocess uses.)

SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long long shift(void) {
    const char *path = getenv("WALLCLOCK_SHIFT_FILE");
    char buf[32] = {0};
    int fd;
    if (!path || (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n > 0 ? atoll(buf) : 0;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(clock, ts);
    if (rc == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) ts->tv_sec += shift();
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    static int (*real)(struct timeval *, void *);
    if (!real) real = (int (*)(struct timeval *, void *))dlsym(RTLD_NEXT, "gettimeofday");
    int rc = real(tv, tz);
    if (rc == 0 && tv) tv->tv_sec += shift();
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
"""


@pytest.fixture(scope="module")
def wallclock_shim(tmp_path_factory):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        pytest.skip("no C compiler here: cannot build the wall-clock shim")
    folder = tmp_path_factory.mktemp("shim")
    (folder / "shim.c").write_text(SHIM_C)
    library = folder / "wallclock_shim.so"
    proc = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(folder / "shim.c"), "-ldl"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot build the wall-clock shim: {proc.stderr.strip()[:200]}")
    shift = folder / "probe-shift"
    shift.write_text("-86400")
    check = subprocess.run([sys.executable, "-c", "import time; print(time.time())"], capture_output=True, text=True,
                           env=dict(os.environ, LD_PRELOAD=str(library), WALLCLOCK_SHIFT_FILE=str(shift)))
    if check.returncode != 0 or abs(float(check.stdout) - (time.time() - 86400)) > 60:
        pytest.skip("the wall-clock shim does not take effect on this Python")
    return str(library)


def day(offset):
    return time.strftime("%Y-%m-%d", time.localtime(time.time() + offset))


def test_wall_clock_jumps_do_not_disturb_the_running_monitor(ipvs, run, backends, tmp_path, wallclock_shim):
    shift = tmp_path / "wallclock-shift"
    shift.write_text("0")
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    interval = 0.2
    monitor = run(ipvs, config(VIP, [a.address, b.address], interval=interval, timeout=0.3))
    env = dict(os.environ, LD_PRELOAD=wallclock_shim, WALLCLOCK_SHIFT_FILE=str(shift))
    monitor.proc = subprocess.Popen(monitor.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_until(lambda: len(table(ipvs)) == 2, what="both added")
    hits = a.hits  # the loop (run_forever) is under way: its schedule began before the jump
    wait_until(lambda: a.hits >= hits + 3, what="3 passes")

    shift.write_text(str(-86400))  # the wall clock is set back one day
    yesterday = {day(-86400)}
    hits = a.hits
    wait_until(lambda: a.hits >= hits + 3, timeout=5, what="passes going on after a jump back")
    b.stop()
    wait_until(lambda: b.address not in table(ipvs), timeout=5, what="b removed after a jump back")
    monitor.wait_log("deleted from")
    yesterday.add(day(-86400))
    (line,) = [line for line in monitor.lines() if "deleted from" in line]
    assert line[:10] in yesterday, f"the monitor did not see the jump: {line}"

    shift.write_text(str(3 * 86400))  # and forward three days
    later = {day(3 * 86400)}
    hits, began = a.hits, time.monotonic()
    wait_until(lambda: a.hits >= hits + 5, timeout=5, what="passes going on after a jump forward")
    assert time.monotonic() - began > 4 * interval * 0.9, "a burst of catch-up passes"
    b.start()
    wait_until(lambda: b.address in table(ipvs), timeout=5, what="b added after a jump forward")
    monitor.wait_log(f"{b.address} has been added to work", count=2)
    later.add(day(3 * 86400))
    (line,) = [line for line in monitor.lines() if "has been added to work" in line and b.address in line][-1:]
    assert line[:10] in later, f"the monitor did not see the jump: {line}"
    code, _, err = monitor.stop()
    assert code == 0 and "Traceback" not in err


class FakeMonitor:
    """What run_forever needs of a Monitor: config.interval, output.say, reload, run_pass, and
    until_due (one service on the config's interval, on the monitor's own rule, next_due)."""

    def __init__(self, interval, script=None):
        self.config = m.Config(path="fake", interval=interval)
        self.output = self
        self.said, self.starts, self.reloads = [], [], 0
        self.script = script or {}  # pass number -> callable run during that pass
        self.stop_requested = lambda: False
        self.due = 0.0

    def until_due(self):
        return self.due - time.monotonic()

    def say(self, message, kind="info", log=True):
        self.said.append(message)

    def reload(self, config):
        self.reloads += 1

    def run_pass(self):
        self.starts.append(time.monotonic())
        self.due = m.next_due(self.due, self.starts[-1], self.config.interval)
        action = self.script.get(len(self.starts))
        if action:
            action()
        self.due = m.caught_up(self.due, time.monotonic())
        return m.PassReport()


@pytest.fixture
def signals():
    """monitor_rs.Signals in this process; the handlers it replaces are put back.  A watchdog sends
    SIGTERM after 15 s, so that a loop that sleeps on the wall clock fails the test instead of hanging."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    sig = m.Signals()
    watchdog = threading.Timer(15, os.kill, (os.getpid(), signal.SIGTERM))
    watchdog.start()
    yield sig
    watchdog.cancel()
    for s, handler in saved.items():
        signal.signal(s, handler)
    os.close(sig._read_fd)
    os.close(sig._write_fd)


def test_run_forever_schedule_is_monotonic_and_ignores_wall_clock_jumps(signals, monkeypatch):
    """A hostile wall clock (back a day, forward three) changes nothing in the schedule."""
    real = time.time
    interval = 0.05

    def wall(offset):
        return lambda: monkeypatch.setattr(time, "time", lambda: real() + offset)

    def stop():
        signals.stop = True

    def overrun():  # a pass longer than the interval
        time.sleep(4 * interval)

    monitor = FakeMonitor(interval, {3: wall(-86400), 6: wall(3 * 86400), 8: overrun, 9: wall(-7 * 86400), 14: stop})
    began = time.monotonic()
    m.run_forever(monitor, signals, lambda: None)
    took = time.monotonic() - began
    gaps = [b - a for a, b in zip(monitor.starts, monitor.starts[1:])]
    assert len(monitor.starts) == 14
    assert took < 14 * interval + 4 * interval + 2.0, f"stalled: {took:.2f} s"
    assert max(gaps) < 4 * interval + interval + 0.5, gaps  # never waits on the wall clock
    early = [g for g in gaps if g < interval * 0.5]
    assert len(early) <= 1, f"catch-up burst after the overrun: {gaps}"  # only the pass right after it
    assert monitor.said == []


def test_signals_wake_the_sleep_at_once(signals):
    """SIGHUP starts the next pass (with a reload) and SIGTERM ends the loop, without waiting the interval."""
    pid = os.getpid()
    monitor = FakeMonitor(30.0)
    loads = []

    def later(signum, delay):
        threading.Timer(delay, os.kill, (pid, signum)).start()

    monitor.script = {1: lambda: later(signal.SIGHUP, 0.2), 2: lambda: later(signal.SIGTERM, 0.2)}
    began = time.monotonic()
    m.run_forever(monitor, signals, lambda: loads.append(1))
    assert time.monotonic() - began < 3, "a signal did not wake the sleep"
    assert len(monitor.starts) == 2 and monitor.reloads == 1 and loads == [1]


###############################################################################
# 5. Hostile real servers ######################################################
###############################################################################
#
# One asyncio loop in a thread serves every hostile behaviour on its own port.
# Each must end in a failed verdict with a reason, at the deadline at the
# latest; none may make the monitor's memory or descriptors grow.

NEEDLE = "needle-that-is-never-sent"
TLS_MODES = {"tls-ok", "tls-drip"}  # real TLS servers (the other modes only send bytes)
HOLDING = {"hold", "gigantic-length", "ssh-banner", "hello-bytes"}  # never close: only the prober ends these
STATUS = b"HTTP/1.1 200 OK\r\n"


class Farm:
    """Hostile servers on 127.0.0.1; `accepted` and `closed_by_peer` count connections per port."""

    def __init__(self, tls=None):
        self.tls = tls  # (cert, key) for the TLS modes
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda loop, context: None)  # hostile by design: no noise
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers, self.modes = [], {}
        self.accepted, self.closed_by_peer = {}, {}
        self.held = []

    def add(self, mode):
        return asyncio.run_coroutine_threadsafe(self._add(mode), self.loop).result(10)

    async def _add(self, mode):
        if mode == "backlog-full":  # a listener that never accepts, its queue already full
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(0)
            port = sock.getsockname()[1]
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                try:
                    filler.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                self.held += [filler]
            self.held.append(sock)
            self.modes[port] = mode
            return port
        context = None
        if mode in TLS_MODES:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
        holder = {}
        server = await asyncio.start_server(lambda r, w: self._serve(holder["port"], mode, r, w),
                                            "127.0.0.1", 0, ssl=context, backlog=512)
        holder["port"] = port = server.sockets[0].getsockname()[1]
        self.servers.append(server)
        self.modes[port] = mode
        self.accepted[port] = self.closed_by_peer[port] = 0
        return port

    def ports(self, mode):
        return [p for p, m_ in self.modes.items() if m_ == mode]

    async def _serve(self, port, mode, reader, writer):
        self.accepted[port] += 1
        try:
            await self._behave(mode, reader, writer)
        except asyncio.CancelledError:  # the farm shuts down: not the prober's doing
            raise
        except Exception:
            pass
        if mode in HOLDING:  # these never close by themselves: the prober closed (FIN or RST)
            self.closed_by_peer[port] += 1
        writer.transport.abort()

    async def _until_eof(self, port, reader):
        """Hold the connection, answering nothing, until the prober goes."""
        while await reader.read(65536):
            pass

    @staticmethod
    def _reset(writer):
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _flood(self, writer, chunk):
        while True:
            writer.write(chunk)
            await writer.drain()

    async def _behave(self, mode, reader, writer):
        port = writer.get_extra_info("sockname")[1]
        if mode == "hold":  # accepts, reads, never answers, never closes
            return await self._until_eof(port, reader)
        if mode == "close-at-once":
            return
        if mode == "reset-at-once":
            return self._reset(writer)
        if mode == "alert-bytes":  # what a TLS server says to a plain-text request: an alert, then closes
            writer.write(b"\x15\x03\x01\x00\x02\x02\x46")
            return await writer.drain()
        if mode == "hello-bytes":  # a TLS ServerHello on the HTTP port (no newline in it), then silence
            writer.write(b"\x16\x03\x03\x00\x4a\x02\x00\x00\x46\x03\x03" + bytes(range(11, 81)))
            await writer.drain()
            return await self._until_eof(port, reader)
        if mode == "http-400":  # a plain HTTP server that gets a TLS ClientHello
            await reader.read(1024)
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        if mode in ("ok", "tls-ok"):
            writer.write(STATUS + b"Content-Length: 2\r\n\r\nok")
            await writer.drain()
        elif mode in ("drip", "tls-drip"):  # one byte a second
            for byte in STATUS + b"Content-Length: 2\r\n\r\nok":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1.0)
        elif mode == "endless-headers":
            writer.write(STATUS)
            for i in range(10 ** 9):
                writer.write(b"X-Filler-%d: yes\r\n" % i)
                await writer.drain()
        elif mode == "giant-header":
            writer.write(STATUS + b"X-Giant: ")
            await self._flood(writer, b"a" * 65536)
        elif mode == "giant-status":
            writer.write(b"HTTP/1.1 200 ")
            await self._flood(writer, b"O" * 65536)
        elif mode == "nul-flood":
            await self._flood(writer, b"\0" * 65536)
        elif mode == "endless-body":
            writer.write(STATUS + b"Content-Type: text/plain\r\n\r\n")
            await self._flood(writer, b"x" * 65536)
        elif mode == "gigantic-length":  # promises a terabyte, sends a little, holds
            writer.write(STATUS + b"Content-Length: 1099511627776\r\n\r\n" + b"x" * 1000)
            await writer.drain()
            await self._until_eof(port, reader)
        elif mode == "garbage":
            writer.write(b"\x00\xff\xfe" + os.urandom(4000))
            await writer.drain()
        elif mode == "ssh-banner":
            writer.write(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
            await writer.drain()
            await self._until_eof(port, reader)
        elif mode == "bad-code":
            writer.write(b"HTTP/1.1 2000 OK\r\n\r\n")
            await writer.drain()
        elif mode == "continue-forever":  # interim answers only
            await self._flood(writer, b"HTTP/1.1 100 Continue\r\n\r\n" * 100)
        elif mode == "reset-in-headers":
            writer.write(STATUS + b"Server: hostile\r\nX-A: ")
            await writer.drain()
            self._reset(writer)
        elif mode == "reset-in-body":
            writer.write(STATUS + b"Content-Length: 100000\r\n\r\n" + b"x" * 5000)
            await writer.drain()
            self._reset(writer)
        elif mode == "close-in-headers":
            writer.write(STATUS + b"Server: hostile\r\n")
            await writer.drain()

    def close(self):
        async def shut():
            for server in self.servers:
                server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        for sock in self.held:
            sock.close()


# mode -> (check, receive, the reasons allowed: a failed verdict naming what went wrong)
HOSTILE = {
    "hold": ("http", "", {"timeout (status line)"}),
    "backlog-full": ("http", "", {"timeout (connect)"}),
    "close-at-once": ("http", "", {"closed without answering", "reset"}),
    "reset-at-once": ("http", "", {"reset", "closed without answering"}),
    "drip": ("http", "", {"timeout (status line)"}),
    "endless-headers": ("http", "", {f"more than {m.HEADER_CAP} header lines"}),
    "giant-header": ("http", "", {"line too long in the headers"}),
    "giant-status": ("http", "", {"line too long in the status line"}),
    "nul-flood": ("http", "", {"not an HTTP answer"}),  # its first byte is not "H"
    "endless-body": ("http", NEEDLE, {"receive text not found"}),
    "gigantic-length": ("http", NEEDLE, {"timeout (body)"}),
    "garbage": ("http", "", {"not an HTTP answer"}),
    "ssh-banner": ("http", "", {"not an HTTP answer"}),
    "alert-bytes": ("http", "", {"not an HTTP answer", "closed without answering"}),
    "hello-bytes": ("http", "", {"not an HTTP answer"}),  # judged on its first bytes, not at the deadline
    "bad-code": ("http", "", {"not an HTTP answer"}),
    "continue-forever": ("http", "", {f"more than {m.INTERIM_CAP} interim (1xx) answers"}),
    "reset-in-headers": ("http", "", {"reset", "closed in the headers"}),
    "reset-in-body": ("http", NEEDLE, {"reset", "receive text not found"}),
    "close-in-headers": ("http", "", {"closed in the headers"}),
    "http-400": ("https", "", None),  # an HTTP answer to check = https: "TLS: ..."
    "hold ": ("https", "", {"timeout (connect)"}),  # TLS handshake never answered
}
TLS_HOSTILE = {
    "tls-ok": ("http", "", {"closed without answering", "not an HTTP answer", "reset"}),  # http to a TLS port
    "tls-drip": ("https", "", {"timeout (status line)"}),
}


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    if not shutil.which("openssl"):
        return None
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    proc = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                           "-days", "2", "-keyout", str(key), "-out", str(cert)], capture_output=True)
    return (str(cert), str(key)) if proc.returncode == 0 else None


@pytest.fixture
def farm(tls_files):
    f = Farm(tls_files)
    yield f
    f.close()


def test_every_hostile_server_fails_with_a_reason_by_its_deadline(farm, tls_files):
    """All at once, in one probe_all: each verdict by the deadline, each one failed and explained."""
    cases = dict(HOSTILE)
    if tls_files:
        cases.update(TLS_HOSTILE)
    ip = ipaddress.ip_address("127.0.0.1")
    targets = {}
    for name, (check, receive, _) in cases.items():
        port = farm.add(name.strip())
        targets[name] = m.ProbeTarget(check, ip, port, receive=receive)
    if tls_files:  # the controls: the same TLS server, answering, passes, so the failures are the servers'
        targets["tls-ok control"] = m.ProbeTarget("https", ip, farm.add("tls-ok"))
        targets["tls-ok body control"] = m.ProbeTarget("https", ip, farm.add("tls-ok"), receive="ok")
    timeout = 1.0
    began = time.monotonic()
    results = m.probe_all(list(targets.values()), timeout)
    took = time.monotonic() - began
    assert took < timeout + 2 * SLOW, f"the pass took {took:.2f} s"
    if tls_files:
        assert results[targets.pop("tls-ok control")].ok
        assert results[targets.pop("tls-ok body control")].ok  # the body read through TLS
    report = []
    for name, target in targets.items():
        r = results[target]
        report.append((name, r.reason, round(r.latency, 2)))
        allowed = cases[name][2]
        assert not r.ok, (name, r)
        assert r.reason and "\n" not in r.reason
        assert r.latency <= timeout + 0.5 * SLOW, (name, r)
        if allowed is None:
            assert r.reason.startswith("TLS: "), (name, r)
        else:
            assert r.reason in allowed, (name, r)
        if r.reason.startswith("timeout"):
            assert r.latency >= timeout * 0.95, (name, r)
    print("\n".join(f"{name:18} {reason:36} {latency:.2f} s" for name, reason, latency in report))


def test_two_hundred_hostile_servers_memory_and_descriptors_stay_bounded(ipvs, run, farm):
    """The monitor as a daemon probing 200 hostile servers: every one judged failed, with a reason, each
    pass ends at the deadline, RSS (VmHWM) and open descriptors stay bounded, nothing is left open."""
    kinds = [k for k, (check, receive, _) in HOSTILE.items() if check == "http"]
    servers = [(kind, farm.add(kind)) for kind in (kinds * 20)[:200]]
    addresses = [f"127.0.0.1:{port}" for _, port in servers]
    timeout, interval = 0.6, 0.2
    text = config(VIP, addresses, ["1"] * len(addresses), interval=interval, timeout=timeout,
                  extra=f"receive = {NEEDLE}\n")
    monitor = run(ipvs, text).start()
    pid = monitor.proc.pid
    hold = farm.ports("hold")[0]
    wait_until(lambda: farm.accepted[hold] >= 1, what="the first pass")
    began, first = time.monotonic(), farm.accepted[hold]
    fds = []

    def sampled():
        fds.append(fd_count(pid))
        return farm.accepted[hold] >= first + 5

    wait_until(sampled, timeout=30, what="5 more passes")
    per_pass = (time.monotonic() - began) / 5
    status = proc_status(pid)
    # While it runs, the monitor has closed every connection of its finished passes, though these
    # servers never close: at most the one of the pass under way is open.
    for port in [p for mode in HOLDING for p in farm.ports(mode)]:
        wait_until(lambda port=port: farm.closed_by_peer[port] >= farm.accepted[port] - 1, timeout=5,
                   what=f"the monitor's connections to {farm.modes[port]} server {port} closed")
    held = sum(farm.accepted[p] for mode in HOLDING for p in farm.ports(mode))
    accepted = sum(farm.accepted.values())
    code, _, err = monitor.stop()
    assert code == 0 and "Traceback" not in err

    assert per_pass < timeout + interval + 1.0 * SLOW, f"{per_pass:.2f} s a pass"
    assert status["VmHWM"] < 150 * 1024, status
    assert max(fds) < len(servers) + 100, f"up to {max(fds)} descriptors open"
    down = {}
    for line in monitor.lines():
        if " is down in " in line:
            server, _, reason = line.split(", ", 1)[1].partition(" is down in ")
            down[server] = reason.split(": ", 1)[1]
    assert sorted(down) == sorted(addresses), "every hostile server is judged failed, once"
    assert all(down.values()), "each with a reason"
    assert monitor.count(" is up in ") == 0
    assert changes(ipvs) == [] and table(ipvs) == {}
    print(f"\n200 hostile servers: {per_pass:.2f} s a pass (timeout {timeout:g} s), VmHWM {status['VmHWM'] / 1024:.1f} "
          f"MiB, VmRSS {status['VmRSS'] / 1024:.1f} MiB, descriptors max {max(fds)}, connections accepted "
          f"{accepted}, of them to servers that never close {held}")
    reasons = {}
    for reason in down.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    print("\n".join(f"  {n:3} x {reason}" for reason, n in sorted(reasons.items())))


###############################################################################
# 6. Bad input #################################################################
###############################################################################

BASE = {  # a valid config; the fuzzer overrides some keys with hostile values
    "monitor": {"interval": "3", "timeout": "1", "log": "/var/log/monitorRS.log", "ipvsadm": "ipvsadm"},
    "virtual web": {"vip": "10.10.10.10", "vport": "80", "rs": "192.168.32.63 192.168.32.73", "rw": "3 1",
                    "type": "g"},
}
SHELL = ["; rm -rf /", "$(touch /tmp/pwned)", "`touch /tmp/pwned`", "a && reboot", "| id", "> /etc/passwd",
         "$IFS", "${IFS}", "'", '"', "\\", "%(here)s", "%", "#x", ";x", "--", "-C", "-w", "*", "~root", "!!",
         "127.0.0.11;id", "80$(id)", "1`id`", "[::1]:80;id", "\x1b[31mred", "\x00", "\u202e", "\ufeff"]
NUMBERS = ["nan", "inf", "-inf", "1e309", "-1", "-0", "0", "0.0", "1_000", "0x10", "1e3", " 3 ", "\u0663", "\u00b2",
           "65535", "65536", "2147483647", "2147483648", "4294967295", "4294967296", "99999999999999999999",
           "1" * 300, "3.14159", "1/2"]
VALID_WORDS = ["yes", "no", "on", "1", "tcp", "udp", "sctp", "fwm", "g", "gate", "m", "masq", "i", "ipip", "http",
               "https", "200-399", "200,301-302", "200 204", "599-100", "/health", "/", "www.example.org"]
SCOPED = ["fe80::1%eth0", "::1%;id", "[fe80::1%lo]:80"]


def _no_surrogates(text):
    return not any("\ud800" <= c <= "\udfff" for c in text)


addresses = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.tuples(st.ip_addresses(v=4), st.integers(-1, 70000)).map(lambda t: f"{t[0]}:{t[1]}"),
    st.tuples(st.ip_addresses(v=6), st.integers(-1, 70000)).map(lambda t: f"[{t[0]}]:{t[1]}"),
    st.sampled_from(SCOPED),
)
hostile_values = st.one_of(
    st.text(max_size=40).filter(_no_surrogates),
    st.text(alphabet="0123456789.:-[], \t\n", max_size=30),
    st.integers(-10 ** 12, 10 ** 12).map(str),
    st.floats().map(repr),
    st.sampled_from(NUMBERS + SHELL + VALID_WORDS),
    addresses,
    st.lists(addresses, min_size=1, max_size=5).map(" ".join),
    st.lists(st.integers(-3, 2 ** 32).map(str), min_size=1, max_size=5).map(" ".join),
    st.lists(st.sampled_from(SHELL + ["/bin/true", "x"]), min_size=1, max_size=4).map(" ".join),
    st.tuples(st.sampled_from(VALID_WORDS + ["127.0.0.1", "80"]), st.sampled_from(SHELL + ["\n", "\n  ", "\r\n x"]))
    .map("".join),
)
KEYS = sorted(m.MONITOR_KEYS | m.SERVICE_KEYS) + ["no_such_key"]
SECTIONS = st.one_of(st.sampled_from(["monitor", "virtual web", "virtual other"]),
                     st.text(min_size=1, max_size=12).filter(lambda s: _no_surrogates(s) and "]" not in s
                                                             and "\n" not in s and "\r" not in s)
                     .map(lambda s: "virtual " + s))


def render(sections):
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{key} = {value}" for key, value in values.items())
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def fuzz_dir():
    folder = tempfile.mkdtemp(prefix="monitor_rs-fuzz-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def check_loaded(path):
    """load_config returns a Config or raises ConfigError with one line; nothing else.
    What it accepts can reach ipvsadm only as plain argv words."""
    try:
        cfg = m.load_config(path)
    except m.ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        return None
    assert isinstance(cfg, m.Config)
    for vs in cfg.services:
        ok = m.ProbeResult(True, "HTTP 200", 0.0)
        decision = m.decide(vs, {rs.endpoint: ok for rs in vs.servers}, {}, {})
        for action in decision.actions:
            for arg in action.args:
                assert arg and not any(c in arg for c in " \t\n\r;&|$`'\"<>*?!~#(){}\\%"), (arg, action.args)
        assert all(0 <= rs.weight <= m.MAX_WEIGHT and 1 <= rs.port <= 65535 for rs in vs.servers)
        assert vs.request.startswith("/") and vs.request.isprintable() and " " not in vs.request
        assert vs.host.isprintable() and " " not in vs.host
    return cfg


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_config_fuzz_every_key_gives_a_config_or_one_line_config_error(data, fuzz_dir):
    sections = {name: dict(values) for name, values in BASE.items()}
    for _ in range(data.draw(st.integers(1, 4))):
        section = data.draw(SECTIONS)
        key = data.draw(st.sampled_from(KEYS))
        values = sections.setdefault(section, {})
        values[key] = data.draw(hostile_values)
        if key == "rs" and data.draw(st.booleans()):  # get past the weight count, to the addresses
            values["rw"] = " ".join("1" for _ in values["rs"].split())
        if key == "fwmark" and data.draw(st.booleans()):
            values.update(protocol="fwm", rport="80")
    path = os.path.join(fuzz_dir, "fuzz.conf")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(render(sections))
    check_loaded(path)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.one_of(st.text(max_size=300).filter(_no_surrogates),
                      st.lists(st.sampled_from(["[monitor]", "[virtual x]", "vip = 127.0.0.1", "vport = 80",
                                                "rs = 127.0.0.11", "rw = 1", "[", "]", "=", "  continued",
                                                "key", "[virtual x]\n[virtual x]", "rs = a\nrs = b", "%(x)s",
                                                "\t-C"]), max_size=12).map("\n".join)),
       raw=st.binary(max_size=64))
def test_config_fuzz_whole_files(text, raw, fuzz_dir):
    path = os.path.join(fuzz_dir, "whole.conf")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    check_loaded(path)
    with open(path, "wb") as handle:
        handle.write(raw)
    check_loaded(path)


def test_load_config_of_a_path_that_is_no_file(tmp_path):
    for path in (tmp_path, tmp_path / "missing.conf", "/dev/null", "/proc/self/mem"):
        with pytest.raises(m.ConfigError) as info:
            m.load_config(str(path))
        assert "\n" not in str(info.value)


GIANT = "1" * 5000  # more digits than Python's int() takes from a string (4300)


@pytest.mark.parametrize("key", ["vport", "rport", "checkport", "fall", "rise", "rw", "fwmark"])
def test_giant_numbers_are_refused_with_a_config_error(key, tmp_path):
    sections = {name: dict(values) for name, values in BASE.items()}
    if key == "fwmark":
        sections["virtual web"].update(protocol="fwm", rport="80")
    sections["virtual web"][key] = GIANT if key != "rw" else f"{GIANT} 1"
    path = tmp_path / "giant.conf"
    path.write_text(render(sections))
    with pytest.raises(m.ConfigError):
        m.load_config(str(path))


@pytest.mark.parametrize("key, value", [("rs", "[::1%;id]:8080"), ("rs", "fe80::1%eth0"), ("vip", "::1%lo"),
                                        ("fallback", "[fe80::1%eth0]:80")])
def test_ipv6_scope_ids_are_refused(key, value, tmp_path):
    sections = {name: dict(values) for name, values in BASE.items()}
    sections["virtual web"].update({key: value, "type": "i"})  # tunnels may mix address families
    if key == "rs":
        sections["virtual web"]["rw"] = "1"
    path = tmp_path / "scoped.conf"
    path.write_text(render(sections))
    with pytest.raises(m.ConfigError):
        m.load_config(str(path))


BROKEN = {
    "shell in rs": "[monitor]\n[virtual w]\nvip = 127.0.0.1\nvport = 80\nrs = 127.0.0.11;touch${IFS}/tmp/pwned\n",
    "newline injection": "[monitor]\n[virtual w]\nvip = 127.0.0.1\nvport = 80\nrs = 127.0.0.11\n  -C\n",
    "unicode": "[monitor]\ninterval = \u0663\u0660\n[virtual \u2603]\nvip = \u2603\nvport = 80\nrs = 127.0.0.11\n",
    "not utf-8": b"[monitor]\n\xff\xfe\n",
    "no sections": "vip = 127.0.0.1\n",
    "empty": "",
    "duplicate key": "[monitor]\ninterval = 1\ninterval = 2\n",
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_config_exits_2_with_one_line_and_no_traceback(name, tmp_path):
    conf = tmp_path / "broken.conf"
    content = BROKEN[name]
    conf.write_bytes(content if isinstance(content, bytes) else content.encode())
    proc = subprocess.run([sys.executable, MONITOR, "-c", str(conf), "--once", "--log-file", "",
                           "--ipvsadm", "/bin/false", "--lock-file", str(tmp_path / "lock")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("monitor_rs: ") and proc.stderr.count("\n") == 1, proc.stderr


def test_giant_number_config_exits_2_without_traceback(tmp_path):
    conf = tmp_path / "giant.conf"
    conf.write_text(f"[monitor]\n[virtual w]\nvip = 127.0.0.1\nvport = {GIANT}\nrs = 127.0.0.11\n")
    proc = subprocess.run([sys.executable, MONITOR, "-c", str(conf), "--once", "--log-file", "",
                           "--lock-file", str(tmp_path / "lock")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-300:]


@pytest.mark.parametrize("key, value", [
    ("vip", "127.0.0.1;id"), ("vip", "$(touch /tmp/pwned)"), ("vport", "80;id"), ("vport", "80 81"),
    ("rs", "127.0.0.11;touch${IFS}/tmp/pwned"), ("rs", "$(touch${IFS}/tmp/pwned)"), ("rs", "`id`"),
    ("rs", "127.0.0.11:80$(id)"), ("rs", "127.0.0.11\n  -C"), ("rs", "127.0.0.11 -w"), ("rw", "1;reboot"),
    ("rw", "-1"), ("rw", "1e3"), ("rport", "$(id)"), ("type", "m;id"), ("type", "-C"), ("protocol", "tcp|id"),
    ("fwmark", "1;id"), ("checkport", "`id`"), ("fall", "1;id"), ("expect", "200;id"), ("check", "http;id"),
    ("fallback", "127.0.0.1:80;id"), ("request", "/a b"), ("request", "/a\n  X-Injected: 1"),
    ("host", "a\n  X-Injected: 1"), ("host", "a b"), ("on_change", "echo 'unclosed"), ("quiescent", "yes;id"),
])
def test_shell_crafted_values_are_refused(key, value, tmp_path):
    sections = {name: dict(values) for name, values in BASE.items()}
    sections["virtual web"][key] = value
    if key == "rs":  # as many weights as words: refused for the address, not for the count
        sections["virtual web"]["rw"] = " ".join("1" for _ in value.split())
    if key == "fwmark":
        sections["virtual web"].update(protocol="fwm", rport="80")
    path = tmp_path / "shell.conf"
    path.write_text(render(sections))
    with pytest.raises(m.ConfigError) as info:
        m.load_config(str(path))
    assert "\n" not in str(info.value)
    assert f"] {key} = " in str(info.value), str(info.value)  # refused for that value


RECORDER = """#!{python}
import json, os, sys
with open({out!r}, "a") as handle:
    handle.write(json.dumps({{"argv": sys.argv, "env": {{k: v for k, v in os.environ.items()
                                                      if k.startswith("MONITOR_RS_")}}}}) + "\\n")
"""


def test_shell_crafted_values_reach_ipvsadm_and_on_change_only_as_argv_words(ipvs, run, backends, tmp_path):
    """Where the config lets text through (a path, a service name, the request, the host, the on_change
    command), it is never seen by a shell: ipvsadm and the hook get it as argv words, byte for byte."""
    pwned = f"/tmp/monitor_rs-pwned-{uuid.uuid4().hex[:12]}"  # short: in the host, a DNS label (63 at most)
    inject_ = f"$(touch {pwned}) `touch {pwned}`; touch {pwned} && touch {pwned}"
    folder = tmp_path / f"bin dir; touch {pwned.replace('/', '_')} $(touch {pwned.replace('/', '_')})"
    folder.mkdir()
    weird = folder / "ipvsadm `touch x` $(id);&|"  # (" ;" would start an INI comment)
    shutil.copy(ipvs.path, weird)
    hook, hook_out = tmp_path / "hook $(id);", tmp_path / "hook.jsonl"
    hook.write_text(RECORDER.format(python=sys.executable, out=str(hook_out)))
    os.chmod(hook, 0o755)
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    name = "web $(touch /tmp/pwned) `id`;rm -rf /&"  # (" ;" and " #" would start an INI comment)
    text = config(VIP, [a.address, b.address], [3, 5], interval=0.1, timeout=0.3, name=name,
                  extra=(f"request = /$(touch${{IFS}}{pwned})?a=`id`&b=;\n"
                         f"host = `touch${{IFS}}{pwned}`$(id)\n"
                         f"on_change = {shlex.quote(str(hook))} {shlex.quote(inject_)} '; rm -rf /'\n"))
    text = monitor_keys(text, ipvsadm=str(weird))
    monitor = run(ipvs, text)
    monitor.argv[monitor.argv.index("--ipvsadm"):monitor.argv.index("--ipvsadm") + 2] = []  # the config's
    dry = monitor.once("--dry-run")
    assert dry.returncode == 0, dry.stderr
    planned = [line.split("would run: ", 1)[1] for line in dry.stdout.splitlines() if "would run: " in line]
    assert sorted(shlex.split(cmd) for cmd in planned) == [  # (in the order the results came)
        [str(weird), "-a", "-t", VIP, "-r", a.address, "-m", "-w", "3"],
        [str(weird), "-a", "-t", VIP, "-r", b.address, "-m", "-w", "5"]], "the printed commands paste back exactly"

    monitor.start()
    wait_until(lambda: len(table(ipvs)) == 2, what="both added through the weird path")
    b.stop()
    wait_until(lambda: b.address not in table(ipvs), what="b removed")
    wait_until(lambda: hook_out.exists() and len(hook_out.read_text().splitlines()) >= 3, what="3 hook runs")
    assert monitor.stop()[0] == 0
    made = changes(ipvs)
    assert sorted(made[:2]) == [["-a", "-t", VIP, "-r", a.address, "-m", "-w", "3"],  # (as their results came)
                                ["-a", "-t", VIP, "-r", b.address, "-m", "-w", "5"]]
    assert made[2:] == [["-d", "-t", VIP, "-r", b.address]]
    runs = [json.loads(line) for line in hook_out.read_text().splitlines()]
    for entry in runs:
        assert entry["argv"][:3] == [str(hook), inject_, "; rm -rf /"]
        assert entry["argv"][3] == VIP and entry["env"]["MONITOR_RS_SERVICE_NAME"] == name
    assert sorted((r["argv"][4], r["argv"][5]) for r in runs) == [(a.address, "up"), (b.address, "down"),
                                                                  (b.address, "up")]  # hooks run concurrently
    assert a.hits and b.hits  # the crafted request and host went to the servers, not to a shell
    token = pwned.replace("/", "_")  # what `touch` in the folder name would create, relative to a shell's cwd
    for where in (os.getcwd(), str(tmp_path), str(folder), "/"):
        assert not os.path.exists(os.path.join(where, token)) and not os.path.exists(os.path.join(where, "x"))
    assert not os.path.exists(pwned)


def test_ipv4_and_ipv6_servers_in_one_tunnel_service(ipvs, run, backends):
    """type = i may mix families: ::1 and 127.0.0.x in one service, probed, added and removed alike."""
    v6, v4 = backends(ip="::1"), backends(ip="127.0.0.21")
    monitor = run(ipvs, config(VIP, [f"[::1]:{v6.port}", v4.address], [2, 3], forward="i", interval=0.1,
                               timeout=0.3)).start()
    want = {"[::1]:80": 2, "127.0.0.21:80": 3}  # -i: IPVS keeps the virtual port
    wait_until(lambda: table(ipvs) == want, what="both families added")
    v6.stop()
    wait_until(lambda: table(ipvs) == {"127.0.0.21:80": 3}, what="the IPv6 server removed")
    v6.start()
    wait_until(lambda: table(ipvs) == want, what="the IPv6 server back")
    assert monitor.stop()[0] == 0
    assert sorted(map(tuple, changes(ipvs))) == sorted([
        ("-a", "-t", VIP, "-r", f"[::1]:{v6.port}", "-i", "-w", "2"),
        ("-a", "-t", VIP, "-r", v4.address, "-i", "-w", "3"),
        ("-d", "-t", VIP, "-r", "[::1]:80"),
        ("-a", "-t", VIP, "-r", f"[::1]:{v6.port}", "-i", "-w", "2")])


def test_mixed_families_with_masquerading_are_refused_at_start(ipvs, run, backends):
    """ipvsadm refuses an IPv6 real server in an IPv4 -m service (the kernel: "Different address family
    is allowed only for tunneling servers"), so the config says so at start: exit 2, one line, the
    table untouched.  (Found here when it was still a FAILED add logged at run time.)"""
    v6, v4 = backends(ip="::1"), backends(ip="127.0.0.21")
    monitor = run(ipvs, config(VIP, [f"[::1]:{v6.port}", v4.address], [2, 3], forward="m", interval=0.1,
                               timeout=0.3)).start()
    _, err = monitor.proc.communicate(timeout=30 * SLOW)  # it exits by itself
    assert monitor.proc.returncode == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and f"real server [::1]:{v6.port} is IPv6 and vip IPv4: only type = i" in err
    assert changes(ipvs) == [] and table(ipvs) == {}


@pytest.mark.parametrize("rs", [
    "127.0.0.11:8080 127.0.0.11:8080", "127.0.0.11 127.0.0.11:80", "[::1]:80 ::1",
    "[::1]:80 [0:0:0:0:0:0:0:1]:80", "127.0.0.11:8080 127.0.0.11:8081",  # -g: both are 127.0.0.11:80 in IPVS
])
def test_duplicate_servers_are_refused(rs, tmp_path):
    path = tmp_path / "dup.conf"
    vip = "2001:db8::10" if "::" in rs else "127.0.0.1"  # config only: never probed
    path.write_text(f"[monitor]\n[virtual w]\nvip = {vip}\nvport = 80\ntype = g\nrs = {rs}\n")
    with pytest.raises(m.ConfigError, match="listed twice"):
        m.load_config(str(path))


@pytest.mark.parametrize("key, value", [
    ("vport", "0"), ("rport", "0"), ("checkport", "0"), ("rs", "127.0.0.11:0"), ("fallback", "127.0.0.1:0"),
    ("vport", "65536"), ("rs", "127.0.0.11:65536"), ("rw", "2147483648"), ("rw", "-1"),
])
def test_port_0_and_out_of_range_values_are_refused(key, value, tmp_path):
    values = {"vip": "127.0.0.1", "vport": "80", "type": "m", "rs": "127.0.0.11:8080", key: value}
    path = tmp_path / "range.conf"
    path.write_text("[monitor]\n[virtual w]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    with pytest.raises(m.ConfigError, match=f"\\] {key} = "):
        m.load_config(str(path))


def test_weights_0_and_max_and_port_65535_are_accepted_and_carried(ipvs, run, backends):
    vip = "127.0.0.1:65535"
    ipvs.service(vip)
    try:
        top = backends(ip="127.0.0.31", port=65535)
    except OSError as exc:
        pytest.skip(f"127.0.0.31:65535 is taken here: {exc}")
    zero = backends(ip="127.0.0.32")
    monitor = run(ipvs, config(vip, [top.address, zero.address], [m.MAX_WEIGHT, 0], interval=0.1, timeout=0.3,
                               extra="rport = 65535\n")).start()
    wait_until(lambda: table(ipvs, vip) == {"127.0.0.31:65535": 2147483647, zero.address: 0}, what="both added")
    hits = zero.hits
    wait_until(lambda: zero.hits >= hits + 3, what="3 more passes")
    assert monitor.stop()[0] == 0
    assert sorted(changes(ipvs)) == sorted([["-a", "-t", vip, "-r", "127.0.0.31:65535", "-m", "-w", "2147483647"],
                                            ["-a", "-t", vip, "-r", zero.address, "-m", "-w", "0"]]), \
        "added once each, as set (in the order their results came)"
