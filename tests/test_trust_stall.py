"""Issue 11: the monitor's own stall is never charged to the real servers.

The real servers live in another process (tests/herd.py): a server thread in
this process would share the test's GIL and hide the stalls under test.  The
monitor runs as a subprocess with `--once` against the fake ipvsadm, every
server already in the table, `fall = 1`: a server wrongly judged failed is
deleted at once, so the table tells.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from harness import MONITOR, SLOW, config, fill_table, weights

N = 400
HOGS = 16


class Herd:
    """tests/herd.py: N servers in their own process."""

    def __init__(self, n, mode, cpu=None):
        argv = [sys.executable, os.path.join(os.path.dirname(__file__), "herd.py"), str(n), mode]
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addresses = json.loads(self.proc.stdout.readline())

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self):
        try:
            self.send("quit")
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def herd():
    made = []

    def make(n, mode, cpu=None):
        made.append(Herd(n, mode, cpu))
        return made[-1]

    yield make
    for h in made:
        h.close()


def monitor_argv(tmp_path, ipvs, addresses, timeout):
    text = config("127.0.0.1:80", addresses, weights=[1] * len(addresses), timeout=timeout, extra="fall = 1\n")
    path = tmp_path / "monitorRS.conf"
    path.write_text(text)
    return [sys.executable, MONITOR, "--config", str(path), "--ipvsadm", ipvs.path, "--log-file",
            str(tmp_path / "monitorRS.log"), "--lock-file", str(tmp_path / "lock"),
            "--state-file", str(tmp_path / "state.json"), "--once"]


def test_a_stopped_monitor_charges_its_stop_to_no_server(tmp_path, ipvs, herd):
    """SIGSTOP for 1.2 s (timeout 1 s) at its first connect: nobody is removed.

    The servers answer 0.3 s after a request: healthy, but too slow for the
    grace turns alone to save them once the stall has eaten the deadline."""
    servers = herd(N, "delay:0.3")
    fill_table(ipvs, servers.addresses)
    proc = subprocess.Popen(monitor_argv(tmp_path, ipvs, servers.addresses, 1.0),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    servers.send(f"stop {proc.pid} 1.2")  # at its first connect, long before it reaches the last one
    out, err = proc.communicate(timeout=120 * SLOW)
    assert servers.proc.stdout.readline().strip() == f"stopped {proc.pid}", "the stall did not happen"
    assert proc.returncode == 0, err
    assert weights(ipvs) == {a: 1 for a in servers.addresses}, out
    assert "timeout" not in out


def test_a_starved_monitor_charges_the_starving_to_no_server(tmp_path, ipvs, herd):
    """The monitor shares one CPU with sixteen busy loops: nobody is removed.

    The servers answer 0.2 s after a request, within the 0.3 s timeout."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs: one for the monitor and its hogs, one for the servers")
    cpus = sorted(os.sched_getaffinity(0))
    servers = herd(N, "delay:0.2", cpu=cpus[1])
    fill_table(ipvs, servers.addresses)
    hogs = [subprocess.Popen(["taskset", "-c", str(cpus[0]), sys.executable, "-c", "while True: pass"])
            for _ in range(HOGS)]
    try:
        proc = subprocess.run(["taskset", "-c", str(cpus[0]),
                               *monitor_argv(tmp_path, ipvs, servers.addresses, 0.3)],
                              capture_output=True, text=True, timeout=120 * SLOW)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert proc.returncode == 0, proc.stderr
    assert weights(ipvs) == {a: 1 for a in servers.addresses}, proc.stdout[-3000:]


def test_a_real_outage_is_still_acted_on_in_one_timeout(tmp_path, ipvs, herd):
    """Every server hung, the monitor running fine: all go at the first pass, after ~ one timeout."""
    servers = herd(N, "hang")
    fill_table(ipvs, servers.addresses)
    proc = subprocess.run(monitor_argv(tmp_path, ipvs, servers.addresses, 0.5), capture_output=True,
                          text=True, timeout=120 * SLOW)
    assert proc.returncode == 0, proc.stderr
    assert weights(ipvs) == {}
    snap = json.loads((tmp_path / "state.json").read_text())
    reasons = {r["reason"] for s in snap["services"] for r in s["servers"]}
    assert reasons == {"timeout (status line)"}
    # Not more lenient than asked: a dry run (no 400 deletes) ends about one
    # timeout after its start-up.
    started = time.monotonic()
    dry = subprocess.run(monitor_argv(tmp_path, ipvs, servers.addresses, 1.0) + ["--dry-run"],
                         capture_output=True, text=True, timeout=120 * SLOW)
    assert dry.returncode == 0 and "timeout (status line)" in dry.stdout
    assert time.monotonic() - started < 1.0 + 2.0 * SLOW
