#!/usr/bin/env python3
"""Issue 14, "spread the checks": checks started together, CPU, healthy servers lost, by the number of
groups a service's checks are spread in (SCHEDULE_SLOTS) and against a monitor_rs.py without the
per-server schedule.

    python3 bench/spread.py [--seconds S] [--slots 1,4,10] [--old PATH] [--out bench/spread.md]

The setting of bench/peers.py natively: 40 servers (--servers N) on loopback (32 answering at once,
8 after 0.6 s; a fifth slow for other N; each group in its own process, tests/herd.py), interval 1 s,
timeout 1 s, fall 1, the fake ipvsadm (tests/fake_ipvsadm.py) with all of them in its table.  The monitor runs as a daemon for S seconds after a
3 s start; then: the checks answered together (bunches within 50 ms) (the herd's HERD_ANSWERED times; the slow
ones' answers are not counted, they are 0.6 s late on purpose), the monitor's CPU seconds per minute
(getrusage of it and its reaped children, the ipvsadm runs included), and the -d the fake logged
(a healthy server taken out).  Standard library only.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from arrival import fake  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
VIP = "127.0.0.1:80"
WRAP = ("import runpy, sys\nsys.argv = [sys.argv[0]] + sys.argv[3:]\nslots = int(__import__('os').environ['SLOTS'])\n"
        "path = __import__('os').environ['MONITOR_RS']\n"
        "if slots:\n    sys.path.insert(0, __import__('os').path.dirname(path))\n    import monitor_rs\n"
        "    monitor_rs.SCHEDULE_SLOTS = slots\n    monitor_rs.main()\nelse:\n"
        "    runpy.run_path(path, run_name='__main__')\n")


def herd(n, mode, answered):
    env = dict(os.environ, HERD_ANSWERED=answered)
    proc = subprocess.Popen([sys.executable, os.path.join(TESTS, "herd.py"), str(n), mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    return proc, json.loads(proc.stdout.readline())


def bunches(times, span):
    """The checks answered together: each bunch from its first to `span` after it (sizes)."""
    times, sizes, i = sorted(times), [], 0
    while i < len(times):
        j = i
        while j < len(times) and times[j] - times[i] < span:
            j += 1
        sizes.append(j - i)
        i = j
    return sizes


def run(folder, monitor, slots, seconds, servers=40):
    answered = os.path.join(folder, "answered")
    fast, fast_addresses = herd(servers - servers // 5, "ok", answered)
    slow, slow_addresses = herd(servers // 5, "delay:0.6", os.path.join(folder, "slow-answered"))
    ipvsadm, state, calls = fake(folder)
    everyone = fast_addresses + slow_addresses
    subprocess.run([ipvsadm, "-A", "-t", VIP, "-s", "wrr"], check=True)
    with open(state) as handle:  # every server in the table: one write, not N ipvsadm runs
        table = json.load(handle)
    for address in everyone:
        ip, port = address.rsplit(":", 1)
        table["services"][0]["dests"].append({"af": 4, "addr": ip, "port": int(port), "forward": "Masq",
                                              "weight": 1, "activeconns": 0, "inactconns": 0})
    with open(state, "w") as handle:
        json.dump(table, handle)
    conf = os.path.join(folder, "monitorRS.conf")
    with open(conf, "w") as handle:
        handle.write(f"[monitor]\ninterval = 1\ntimeout = 1\n\n[virtual web]\nvip = 127.0.0.1\nvport = 80\n"
                     f"rs = {' '.join(everyone)}\nrw = {' '.join('1' for _ in everyone)}\ntype = m\nfall = 1\n")
    os.unlink(calls)
    env = dict(os.environ, SLOTS=str(slots), MONITOR_RS=monitor)
    mon = subprocess.Popen([sys.executable, "-c", WRAP, "-", "-", "--config", conf, "--ipvsadm", ipvsadm,
                            "--log-file", os.path.join(folder, "log"), "--lock-file", os.path.join(folder, "lock"),
                            "--state-file", os.path.join(folder, "state")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        time.sleep(3)
        begin = time.time()
        time.sleep(seconds)
        end = time.time()
    finally:
        mon.terminate()
        _, _, usage = os.wait4(mon.pid, 0)
        for proc in (fast, slow):
            proc.kill()
            proc.wait()
    with open(answered) as handle:
        times = [float(line) for line in handle if begin <= float(line) <= end]
    removed = 0
    with open(calls) as handle:
        for line in handle:
            c = json.loads(line)
            lines = c.get("stdin", []) if c["argv"] == ["-R"] else [c["argv"]]
            removed += sum(argv[:1] == ["-d"] and begin <= c["t"] <= end for argv in lines)
    cpu = usage.ru_utime + usage.ru_stime  # the whole run, start included: per minute of the whole
    return bunches(times, 0.05), cpu / (end - begin + 3) * 60, removed, len(times) / (end - begin)


def main():
    args = sys.argv[1:]
    seconds, slots, old, servers = 30.0, [1, 4, 10], None, 40
    out = os.path.join(ROOT, "bench", "spread.md")
    if "--seconds" in args:
        seconds = float(args[args.index("--seconds") + 1])
    if "--slots" in args:
        slots = [int(s) for s in args[args.index("--slots") + 1].split(",")]
    if "--old" in args:
        old = os.path.abspath(args[args.index("--old") + 1])
    if "--servers" in args:
        servers = int(args[args.index("--servers") + 1])
    if "--out" in args:
        out = args[args.index("--out") + 1]
    runs = ([("without the per-server schedule", old, 0)] if old else []) + [
        (f"SCHEDULE_SLOTS = {n}", os.path.join(ROOT, "monitor_rs.py"), n) for n in slots]
    rows = []
    for name, monitor, n in runs:
        with tempfile.TemporaryDirectory() as folder:
            sizes, cpu, removed, rate = run(folder, monitor, n, seconds, servers)
        checks = sum(sizes)
        rows.append(f"| {servers} | {name} | {statistics.median(sizes):g} | {max(sizes)} | "
                    f"{sum(s for s in sizes if s > servers // 4) / checks * 100:.0f} % | {rate:.1f} | {cpu:.2f} | "
                    f"{removed} |")
        print(rows[-1], flush=True)
    text = ("# Spreading the checks: N servers (a fifth answering after 0.6 s), interval 1 s, timeout 1 s, fall 1\n\n"
            f"`python3 bench/spread.py --seconds {seconds:g} --servers {servers}` ({platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, the fake ipvsadm: one `ipvsadm -Ln` process a pass; "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}).\n\n"
            "Checks started together: the fast servers' answers in bunches (from the first to 50 ms after it).\n\n"
            "| N | monitor | checks together, median | most | checks in a bunch of more than N / 4 | "
            "checks of the fast ones / s | CPU s / min (monitor + ipvsadm runs) | healthy servers taken out |\n"
            "|---:|---|---:|---:|---:|---:|---:|---:|\n"
            + "\n".join(rows) + "\n")
    with open(out, "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
