#!/usr/bin/env python3
"""Issue 15, fastinter: how long a server that starts to fail stays in the table with fall = 3.

    python3 bench/fastinter.py [--trials N] [--out bench/fastinter.md]

Per setting (interval 2 s, timeout 1 s, fall 3; without fastinter, then fastinter = 0.2 s), N
trials: 4 healthy servers in their own process (tests/herd.py) on loopback, the victim in another,
the fake ipvsadm (tests/fake_ipvsadm.py) with all of them in its table; the monitor runs as a daemon;
after a random wait (a random phase of its checks) the victim's process is killed (its port refuses
from then on), or stopped (SIGSTOP: hung, the kernel still accepts its connections) and the time until the fake logs its -d is taken from the fake's calls log (wall clock
of the same machine).  Writes a markdown table (min / median / max, and the expected
interval + (fall - 1) x fastinter, plus up to an interval for the phase) to --out and prints it.
Standard library only.
"""

import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from arrival import deleted, fake, herd  # noqa: E402  (the same servers, fake and calls log)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MONITOR = os.path.join(ROOT, "monitor_rs.py")
VIP = "127.0.0.1:80"
INTERVAL, TIMEOUT, FALL = 2.0, 1.0, 3


def trial(folder, fastinter, kind):
    healthy, addresses = herd(4, "ok")
    victim, (target,) = herd(1, "ok")
    ipvsadm, state, calls = fake(folder)
    everyone = [target] + addresses
    subprocess.run([ipvsadm, "-A", "-t", VIP, "-s", "wrr"], check=True)
    for address in everyone:
        subprocess.run([ipvsadm, "-a", "-t", VIP, "-r", address, "-m", "-w", "1"], check=True)
    conf = os.path.join(folder, "monitorRS.conf")
    extra = "" if fastinter is None else f"fastinter = {fastinter}\n"
    with open(conf, "w") as handle:
        handle.write(f"[monitor]\ninterval = {INTERVAL}\ntimeout = {TIMEOUT}\n\n[virtual web]\nvip = 127.0.0.1\n"
                     f"vport = 80\nrs = {' '.join(everyone)}\nrw = {' '.join('1' for _ in everyone)}\ntype = m\n"
                     f"fall = {FALL}\n{extra}")
    os.unlink(calls)
    mon = subprocess.Popen([sys.executable, MONITOR, "--config", conf, "--ipvsadm", ipvsadm,
                            "--log-file", os.path.join(folder, "log"), "--lock-file", os.path.join(folder, "lock"),
                            "--state-file", os.path.join(folder, "state")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3 + random.random() * INTERVAL)  # a random phase of the victim's checks
        if kind == "hung":  # stopped: the kernel still accepts its connections, nobody answers
            os.kill(victim.pid, signal.SIGSTOP)
        else:
            victim.kill()
            victim.wait()
        killed = time.time()
        deadline = killed + 30
        while time.time() < deadline:
            gone = deleted(calls, target)
            if gone:
                return gone - killed
            time.sleep(0.02)
        return float("nan")
    finally:
        mon.terminate()
        mon.wait()
        for proc in (healthy, victim):
            if proc.poll() is None:
                proc.kill()
                proc.send_signal(signal.SIGCONT)
                proc.wait()


def main():
    args = sys.argv[1:]
    trials, out = 5, os.path.join(ROOT, "bench", "fastinter.md")
    if "--trials" in args:
        trials = int(args[args.index("--trials") + 1])
    if "--out" in args:
        out = args[args.index("--out") + 1]
    rows = []
    for kind in ("refusing", "hung"):
        for fastinter in (None, 0.2):
            times = []
            for _ in range(trials):
                with tempfile.TemporaryDirectory() as folder:
                    times.append(trial(folder, fastinter, kind))
            # the first failed check up to an interval after the fault; then fall - 1 more, each after the
            # re-check wait from the start of the one before, and not before it failed (hung: its timeout)
            took = TIMEOUT if kind == "hung" else 0.0
            wait = INTERVAL if fastinter is None else max(fastinter, took)
            low = (FALL - 1) * wait + took
            rows.append(f"| {kind} | {'-' if fastinter is None else f'{fastinter:g} s'} | {min(times):.2f} | "
                        f"{statistics.median(times):.2f} | {max(times):.2f} | {low:.1f} to {low + INTERVAL:.1f} | "
                        + ", ".join(f"{t:.2f}" for t in times) + " |")
            print(rows[-1], flush=True)
    text = (f"# fastinter: a failing server out, fall = {FALL}, interval = {INTERVAL:g} s, timeout = {TIMEOUT:g} s\n\n"
            f"`python3 bench/fastinter.py --trials {trials}` ({platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, the fake ipvsadm; {time.strftime('%Y-%m-%d', time.gmtime())}).\n"
            "Seconds from the victim's fault (refusing: its process killed; hung: its process stopped, the "
            "kernel still accepts) to its `-d` in the fake's log; expected: the first failed check comes up "
            "to an interval after the fault (the phase), then fall - 1 more, each the re-check wait after the "
            "one before began, and not before that one failed (hung: its timeout).\n\n"
            "| fault | fastinter | min | median | max | expected | trials |\n|---|---|---:|---:|---:|---:|---|\n"
            + "\n".join(rows) + "\n")
    with open(out, "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
