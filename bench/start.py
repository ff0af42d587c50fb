#!/usr/bin/env python3
"""Issue 14, "start fast": time from exec of the monitor to its first probe reaching a server.

    python3 bench/start.py [MONITOR_RS.PY ...] [--runs N]

For each monitor_rs.py given (default: this tree's), N runs of `--once` against one healthy server
in its own process (tests/herd.py, which writes the time of each answer: the first probe's arrival,
within a millisecond) and the fake ipvsadm with the server in its table.  Two ways to start:
`script` (python monitor_rs.py: Python compiles the whole file at every start) and `module`
(python -c 'import monitor_rs; monitor_rs.main()' with its bytecode cached, as the installed
`monitor-rs` command starts).  Prints the median and min per way.  Standard library only.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


def one(monitor, way, folder, cache):
    answered = os.path.join(folder, "answered")
    env = dict(os.environ, HERD_ANSWERED=answered)
    herd = subprocess.Popen([sys.executable, os.path.join(TESTS, "herd.py"), "1", "ok"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        (server,) = json.loads(herd.stdout.readline())
        state = os.path.join(folder, "state.json")
        ipvsadm = os.path.join(folder, "ipvsadm")
        with open(ipvsadm, "w") as handle:
            handle.write(f"#!/bin/sh\nFAKE_IPVSADM_STATE='{state}' "
                         f"exec '{sys.executable}' '{os.path.join(TESTS, 'fake_ipvsadm.py')}' \"$@\"\n")
        os.chmod(ipvsadm, 0o755)
        if os.path.exists(state):
            os.unlink(state)
        subprocess.run([ipvsadm, "-A", "-t", "127.0.0.1:80", "-s", "wrr"], check=True)
        subprocess.run([ipvsadm, "-a", "-t", "127.0.0.1:80", "-r", server, "-m", "-w", "1"], check=True)
        conf = os.path.join(folder, "monitorRS.conf")
        with open(conf, "w") as handle:
            handle.write("[monitor]\ninterval = 1\ntimeout = 2\n\n[virtual web]\nvip = 127.0.0.1\nvport = 80\n"
                         f"rs = {server}\nrw = 1\ntype = m\n")
        args = ["--config", conf, "--ipvsadm", ipvsadm, "--log-file", os.path.join(folder, "log"),
                "--lock-file", os.path.join(folder, "lock"), "--state-file", os.path.join(folder, "st"), "--once"]
        run_env = dict(os.environ)
        if way == "script":
            argv = [sys.executable, monitor, *args]
        else:
            run_env.pop("PYTHONDONTWRITEBYTECODE", None)
            run_env["PYTHONPYCACHEPREFIX"] = cache
            run_env["PYTHONPATH"] = os.path.dirname(monitor)
            argv = [sys.executable, "-c", "import sys, monitor_rs; sys.argv[0] = 'monitor-rs'; monitor_rs.main()",
                    *args]
        started = time.time()
        subprocess.run(argv, env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        with open(answered) as handle:
            return float(handle.readline()) - started
    finally:
        herd.stdin.close()
        herd.kill()
        herd.wait()
        if os.path.exists(answered):
            os.unlink(answered)


def main():
    args = sys.argv[1:]
    runs = 9
    if "--runs" in args:
        at = args.index("--runs")
        runs = int(args[at + 1])
        del args[at:at + 2]
    for monitor in args or [os.path.join(ROOT, "monitor_rs.py")]:
        monitor = os.path.abspath(monitor)
        with tempfile.TemporaryDirectory() as folder:
            cache = os.path.join(folder, "pycache")
            for way in ("script", "module"):
                one(monitor, way, folder, cache)  # warm: the page cache, and the bytecode cache of `module`
                times = [one(monitor, way, folder, cache) for _ in range(runs)]
                print(f"{monitor} ({way}): exec to first probe median {statistics.median(times) * 1000:.0f} ms, "
                      f"min {min(times) * 1000:.0f} ms ({runs} runs)", flush=True)
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
