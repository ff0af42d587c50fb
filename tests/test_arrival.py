"""Issue 14: act on each result as it arrives.

A refusing or 500-answering server leaves the table within milliseconds, while
slow servers are still answering, not at the end of the wave; the depool
threshold, the fallback and a stop request hold exactly as in a whole pass.

The real servers live in another process (tests/herd.py, which writes the time
of each answer it sends to HERD_ANSWERED); the monitor runs as a subprocess
against the fake ipvsadm, whose calls log gives the time of each change (the
log file's timestamps have a one-second resolution).  No sleep-and-hope: the
order of events is read from those two clocks of the same machine.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from harness import MONITOR, SLOW, config, fill_table, wait_until, weights

VIP = "127.0.0.1:80"


class Herd:
    """tests/herd.py: N servers in their own process, the time of each answer in `answered`."""

    def __init__(self, tmp_path, n, mode):
        self.answered = str(tmp_path / f"answered-{mode.replace(':', '-')}-{os.urandom(3).hex()}")
        env = dict(os.environ, HERD_ANSWERED=self.answered)
        argv = [sys.executable, os.path.join(os.path.dirname(__file__), "herd.py"), str(n), mode]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.addresses = json.loads(self.proc.stdout.readline())

    def times(self):
        try:
            with open(self.answered) as handle:
                return [float(line) for line in handle if line.strip()]
        except FileNotFoundError:
            return []

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def herd(tmp_path):
    made = []

    def make(n, mode):
        made.append(Herd(tmp_path, n, mode))
        return made[-1]

    yield make
    for h in made:
        h.close()


@pytest.fixture
def refusing():
    """Addresses that refuse connections: bound, never listening (nobody else can take the port)."""
    held = []

    def make():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
        return f"127.0.0.1:{sock.getsockname()[1]}"

    yield make
    for sock in held:
        sock.close()


def changes(ipvs):
    """[(time, argv)] of the fake's calls that change the table, in order (the lines of an
    `ipvsadm -R` in its place, at its time: several changes may be one -R)."""
    if not os.path.exists(ipvs.calls):
        return []
    with open(ipvs.calls) as handle:
        calls = [json.loads(line) for line in handle if line.strip()]
    lines = [(c["t"], argv) for c in calls for argv in (c.get("stdin", []) if c["argv"] == ["-R"] else [c["argv"]])]
    return [(t, argv) for t, argv in lines if argv[:1] and argv[0] in ("-a", "-e", "-d")]


def deleted_at(ipvs, address):
    return next((t for t, argv in changes(ipvs) if argv[0] == "-d" and address in argv), None)


def monitor_argv(tmp_path, ipvs, addresses, timeout, extra="fall = 1\n"):
    text = config(VIP, addresses, weights=[1] * len(addresses), timeout=timeout, extra=extra)
    path = tmp_path / "monitorRS.conf"
    path.write_text(text)
    return [sys.executable, MONITOR, "--config", str(path), "--ipvsadm", ipvs.path, "--log-file",
            str(tmp_path / "monitorRS.log"), "--lock-file", str(tmp_path / "lock"),
            "--state-file", str(tmp_path / "state.json"), "--once"]


def run_once(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60 * SLOW)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.mark.parametrize("fault", ["refuse", "status:500"])
def test_a_failing_server_leaves_while_the_slow_ones_are_still_answering(tmp_path, ipvs, herd, refusing, fault):
    """1 failing server, 8 answering after 1.5 s (timeout 2 s): the failing one's -d comes before
    any slow server has answered.  Before issue 14 it came after the last of them (end of wave)."""
    slow = herd(8, "delay:1.5")
    bad = refusing() if fault == "refuse" else herd(1, fault).addresses[0]
    everyone = [bad] + slow.addresses
    fill_table(ipvs, everyone)
    proc = run_once(monitor_argv(tmp_path, ipvs, everyone, 2.0))
    assert weights(ipvs) == {a: 1 for a in slow.addresses}, proc.stdout
    answered = slow.times()
    assert len(answered) == 8, "the slow servers did not all answer"
    gone = deleted_at(ipvs, bad)
    assert gone is not None
    assert gone < min(answered), f"-d {gone - min(answered):+.3f} s after the first slow answer"


def test_when_the_threshold_binds_who_goes_is_decided_as_the_whole_pass_would(tmp_path, ipvs, herd, refusing):
    """depool_threshold 0.75 of 4: only one of the two failing servers may go.  The first in config
    order fails last (it hangs until the timeout), the second is refused at once: the first goes,
    the second is kept, whatever the order the failures arrived in (README's promise)."""
    hung = herd(1, "hang").addresses[0]
    refused = refusing()
    good = herd(2, "ok").addresses
    everyone = [hung, refused] + good
    fill_table(ipvs, everyone)
    proc = run_once(monitor_argv(tmp_path, ipvs, everyone, 1.0, extra="fall = 1\ndepool_threshold = 0.75\n"))
    assert weights(ipvs) == {refused: 1, good[0]: 1, good[1]: 1}, proc.stdout
    assert [argv for _, argv in changes(ipvs)] == [["-d", "-t", VIP, "-r", hung]]
    assert "kept" in proc.stdout


def test_the_fallback_comes_in_before_the_last_server_leaves_across_batches(tmp_path, ipvs, herd, refusing):
    """One server refused at once, the other hung until the timeout: the first leaves at once (the
    other may still be up), the fallback comes in before the second leaves; never an empty pool."""
    refused = refusing()
    hung = herd(1, "hang").addresses[0]
    everyone = [refused, hung]
    fill_table(ipvs, everyone)
    fallback = herd(1, "ok").addresses[0]
    started = __import__("time").time()
    proc = run_once(monitor_argv(tmp_path, ipvs, everyone, 1.0, extra=f"fall = 1\nfallback = {fallback}\n"))
    assert weights(ipvs) == {fallback: 1}, proc.stdout
    made = changes(ipvs)
    assert [argv for _, argv in made] == [
        ["-d", "-t", VIP, "-r", refused],
        ["-a", "-t", VIP, "-r", fallback, "-m", "-w", "1"],
        ["-d", "-t", VIP, "-r", hung]]
    assert made[0][0] - started < 1.0, "the refused server waited for the hung one's timeout"
    table = set(everyone)
    for _, argv in made:  # replayed: the pool is never empty
        (table.discard if argv[0] == "-d" else table.add)(argv[4])
        assert table


def test_a_stop_during_the_wave_starts_no_new_change(tmp_path, ipvs, herd, refusing):
    """The refused server is out at once; SIGTERM then, while the hung one's probe runs: it is
    never deleted, and the monitor ends without another change."""
    refused = refusing()
    hung = herd(1, "hang").addresses[0]
    good = herd(2, "ok").addresses
    everyone = [refused, hung] + good
    fill_table(ipvs, everyone)
    proc = subprocess.Popen(monitor_argv(tmp_path, ipvs, everyone, 3.0), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: deleted_at(ipvs, refused), timeout=10, what="the refused server's -d")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30 * SLOW)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in err, err
    assert weights(ipvs) == {hung: 1, good[0]: 1, good[1]: 1}, out
    assert [argv[0] for _, argv in changes(ipvs)] == ["-d"]
