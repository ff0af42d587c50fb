#!/usr/bin/env python3
"""What one operation costs under the VM's emulation, against this machine: where bench/peers' CPU
and start rows go (issue 14).

    python3 bench/vmcosts.py             # boots the VM once (about 4 minutes), then runs natively
    python3 bench/vmcosts.py --native    # natively only

The same measurements on both sides, in one process each: the CPU time (process_time) of one call
of the clocks, a read of /proc/thread-self/schedstat (the watch clock's), an epoll wait, a
loopback TCP connect + accept + close (what every HTTP check costs the kernel, in the monitor's
process: the handshake runs in its connect), a few Python dictionary operations; then the time
from exec to the end of: an empty Python, `import hashlib`, `import click`, `import monitor_rs`,
`monitor-rs --check-config` (from a virtual environment of its own with the module compiled, as
bench/peers runs it). Writes bench/vmcosts.md and .json. Standard library only on the host; the
guest needs click and rich (the Python given to the VM is this one).
"""

import json
import os
import platform
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from peers import install_monitor_rs  # noqa: E402  (the same install as the side-by-side run)


def per_call(f, n):
    """CPU microseconds of one call of f (process_time over n calls)."""
    start = time.process_time()
    for _ in range(n):
        f()
    return (time.process_time() - start) / n * 1e6


def operations():
    fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    poller = select.epoll()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.setblocking(False)
    address = listener.getsockname()

    def connect_accept_close():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        sock.connect_ex(address)
        sock.close()
        try:
            while True:
                peer, _ = listener.accept()
                peer.close()
        except BlockingIOError:
            pass

    def dictionaries():
        table = {}
        for i in range(100):
            table[(i, "a")] = i
        return sum(table.values())

    try:
        return {
            "time.monotonic()": per_call(time.monotonic, 5000),
            "time.thread_time()": per_call(time.thread_time, 5000),
            "pread of schedstat": per_call(lambda: os.pread(fd, 128, 0), 5000),
            "epoll wait, nothing ready (0 s)": per_call(lambda: poller.poll(0), 5000),
            "epoll wait of 1 ms (a sleep and a wake-up)": per_call(lambda: poller.poll(0.001), 300),
            "loopback TCP connect + accept + close": per_call(connect_accept_close, 300),
            "Python: 100 dictionary stores and a sum": per_call(dictionaries, 3000),
        }
    finally:
        os.close(fd)
        poller.close()
        listener.close()


def starts(folder):
    """Median seconds from exec to exit, 5 runs each, in a virtual environment of its own."""
    python, entry = install_monitor_rs(folder, os.path.join(REPO, "monitor_rs.py"))
    conf = os.path.join(folder, "monitorRS.conf")
    with open(conf, "w") as handle:
        handle.write("[monitor]\ninterval = 1\n\n[virtual web]\nvip = 127.0.0.1\nvport = 80\n"
                     "rs = 127.0.0.2 127.0.0.3\nrw = 1 1\ntype = g\n")
    runs = {
        "python -S -c pass (no site)": [python, "-S", "-c", "pass"],
        "python -c pass": [python, "-c", "pass"],
        "import hashlib": [python, "-c", "import hashlib"],
        "import click": [python, "-c", "import click"],
        "import monitor_rs": [python, "-c", "import monitor_rs"],
        "monitor-rs --check-config": [python, "-c", entry, "--check-config", "--config", conf],
    }
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    result = {}
    for name, argv in runs.items():
        times = []
        for _ in range(5):
            began = time.perf_counter()
            subprocess.run(argv, env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - began)
        result[name] = statistics.median(times)
    return result


def measure():
    with tempfile.TemporaryDirectory() as folder:
        return {"operations_us": operations(), "starts_s": starts(folder), "machine": platform.machine(),
                "kernel": platform.release()}


def test_vmcosts_in_the_vm():  # collected only when named: tests/vm/run ... bench/vmcosts.py
    import pytest
    out = os.environ.get("MONITOR_RS_VM_OUT", "")
    if os.environ.get("MONITOR_RS_IPVS") != "1" or not out:
        pytest.skip("runs only in the VM, started by python3 bench/vmcosts.py")
    result = measure()
    with open(os.path.join(out, "vmcosts.json"), "w") as handle:
        json.dump(result, handle)
    assert result["operations_us"] and result["starts_s"]


try:  # the marker that `-m vmcosts` selects (pytest is only there when pytest collects this file)
    import pytest as _pytest
    test_vmcosts_in_the_vm = _pytest.mark.vmcosts(test_vmcosts_in_the_vm)
except ImportError:
    pass


def render(vm, native):
    lines = ["# bench/vmcosts: one operation under the VM's emulation, against this machine", "",
             f"`python3 bench/vmcosts.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; natively "
             f"kernel {native['kernel']}" + (f", in the VM {vm['kernel']} (QEMU TCG)" if vm else "") + ".", "",
             "| CPU µs of one call | natively | in the VM | ratio |", "|---|---:|---:|---:|"]
    for name, value in native["operations_us"].items():
        other = vm["operations_us"].get(name) if vm else None
        lines.append(f"| {name} | {value:.2f} | " + (f"{other:.2f} | {other / value:.0f}× |" if other else "— | — |"))
    lines += ["", "| seconds from exec to exit (median of 5) | natively | in the VM | ratio |", "|---|---:|---:|---:|"]
    for name, value in native["starts_s"].items():
        other = vm["starts_s"].get(name) if vm else None
        lines.append(f"| {name} | {value:.3f} | " + (f"{other:.2f} | {other / value:.0f}× |" if other else "— | — |"))
    return "\n".join(lines) + "\n"


def main(argv):
    vm = None
    if "--native" not in argv:
        out_dir = tempfile.mkdtemp(prefix="vmcosts-vm.")
        env = dict(os.environ, VM_OUT_DIR=out_dir, VM_PYTHON=sys.executable)
        print(f"bench/vmcosts: booting the VM (output in {out_dir}) ...", flush=True)
        subprocess.run([os.path.join(REPO, "tests", "vm", "run"), "-s", "-q", "-m", "vmcosts",
                        os.path.abspath(__file__)], env=env)
        path = os.path.join(out_dir, "vmcosts.json")
        if not os.path.exists(path):
            print("bench/vmcosts: no result from the VM", file=sys.stderr)
            return 3
        with open(path) as handle:
            vm = json.load(handle)
        shutil.rmtree(out_dir, ignore_errors=True)
    native = measure()
    with open(os.path.join(HERE, "vmcosts.json"), "w") as handle:
        json.dump({"vm": vm, "native": native}, handle, indent=1)
        handle.write("\n")
    text = render(vm, native)
    with open(os.path.join(HERE, "vmcosts.md"), "w") as handle:
        handle.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
