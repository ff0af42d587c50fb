#!/usr/bin/env python3
"""Issue 14, "act on each result as it arrives": how long a server that starts to refuse stays
in the table while slow servers are present.

    python3 bench/arrival.py [MONITOR_RS.PY ...] [--trials N]

For each monitor_rs.py given (default: this tree's), N trials: 8 servers answering after 1.5 s
and 1 healthy server, all in their own process (tests/herd.py) on loopback, the fake ipvsadm
(tests/fake_ipvsadm.py) with all 9 in its table; the monitor runs as a daemon (interval 1 s,
timeout 2 s, fall 1); after a random wait the healthy server's process is killed (its port refuses
from then on), and the time until the fake logs its -d is taken from the fake's calls log (wall
clock of the same machine).  Prints min / median / max per monitor.  Standard library only.
"""

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
VIP = "127.0.0.1:80"


def herd(n, mode):
    proc = subprocess.Popen([sys.executable, os.path.join(TESTS, "herd.py"), str(n), mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, json.loads(proc.stdout.readline())


def fake(folder):
    state, calls = os.path.join(folder, "state.json"), os.path.join(folder, "calls.jsonl")
    path = os.path.join(folder, "ipvsadm")
    with open(path, "w") as handle:
        handle.write(f"#!/bin/sh\nFAKE_IPVSADM_STATE='{state}' FAKE_IPVSADM_CALLS='{calls}' "
                     f"exec '{sys.executable}' '{os.path.join(TESTS, 'fake_ipvsadm.py')}' \"$@\"\n")
    os.chmod(path, 0o755)
    return path, state, calls


def trial(monitor, folder):
    slow, slow_addresses = herd(8, "delay:1.5")
    victim, (target,) = herd(1, "ok")
    ipvsadm, state, calls = fake(folder)
    everyone = [target] + slow_addresses
    subprocess.run([ipvsadm, "-A", "-t", VIP, "-s", "wrr"], check=True)
    for address in everyone:
        subprocess.run([ipvsadm, "-a", "-t", VIP, "-r", address, "-m", "-w", "1"], check=True)
    conf = os.path.join(folder, "monitorRS.conf")
    with open(conf, "w") as handle:
        handle.write(f"[monitor]\ninterval = 1\ntimeout = 2\n\n[virtual web]\nvip = 127.0.0.1\nvport = 80\n"
                     f"rs = {' '.join(everyone)}\nrw = {' '.join('1' for _ in everyone)}\ntype = m\nfall = 1\n")
    os.unlink(calls)
    mon = subprocess.Popen([sys.executable, monitor, "--config", conf, "--ipvsadm", ipvsadm,
                            "--log-file", os.path.join(folder, "log"), "--lock-file", os.path.join(folder, "lock"),
                            "--state-file", os.path.join(folder, "state")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3 + random.random() * 2)  # a random phase of the monitor's passes
        victim.kill()
        victim.wait()
        killed = time.time()
        deadline = killed + 15
        while time.time() < deadline:
            gone = deleted(calls, target)
            if gone:
                return gone - killed
            time.sleep(0.02)
        return float("nan")
    finally:
        mon.send_signal(signal.SIGTERM)
        mon.wait()
        for proc in (slow, victim):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def deleted(calls, target):
    try:
        with open(calls) as handle:
            for line in handle:
                c = json.loads(line)
                lines = c.get("stdin", []) if c["argv"] == ["-R"] else [c["argv"]]
                if any(argv[:1] == ["-d"] and target in argv for argv in lines):
                    return c["t"]
    except FileNotFoundError:
        pass
    return None


def main():
    args = sys.argv[1:]
    trials = 5
    if "--trials" in args:
        at = args.index("--trials")
        trials = int(args[at + 1])
        del args[at:at + 2]
    for monitor in args or [os.path.join(ROOT, "monitor_rs.py")]:
        times = []
        for _ in range(trials):
            with tempfile.TemporaryDirectory() as folder:
                times.append(trial(os.path.abspath(monitor), folder))
        print(f"{monitor}: refusing server out after min {min(times):.3f} s, median {statistics.median(times):.3f} s, "
              f"max {max(times):.3f} s ({trials} trials: " + ", ".join(f"{t:.3f}" for t in times) + ")", flush=True)


if __name__ == "__main__":
    main()
