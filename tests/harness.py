"""End-to-end harness: the monitor as a subprocess, an IPVS table to check.

The same scenarios run against two tables:
- `fake`: tests/fake_ipvsadm.py, state in a file (everywhere);
- `kernel`: the real ipvsadm and the kernel's IPVS (inside the VM, where
  MONITOR_RS_IPVS=1; see tests/vm/run).
"""

import json
import os
import signal
import subprocess
import sys
import time

import monitor_rs as m

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MONITOR = os.path.join(ROOT, "monitor_rs.py")
FAKE = os.path.join(HERE, "fake_ipvsadm.py")
# Deadlines are stretched in the software-emulated VM, which is several times slower.
SLOW = float(os.environ.get("MONITOR_RS_TEST_SLOWNESS", "4" if os.environ.get("MONITOR_RS_IPVS") == "1" else "1"))


def wait_until(predicate, timeout=20.0, what="condition"):
    """Poll a condition under a generous deadline; fail with what was awaited."""
    deadline = time.monotonic() + timeout * SLOW
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Ipvs:
    """An IPVS table the tests read and change through an ipvsadm program."""

    def __init__(self, kind, tmp_path):
        self.kind = kind
        self.calls = str(tmp_path / "ipvsadm-calls.jsonl")
        if kind == "kernel":
            self.path = "ipvsadm"
            self.run("-C")
            return
        bindir = tmp_path / "bin"
        bindir.mkdir()
        self.state = str(tmp_path / "ipvs-state.json")
        self.fault_file = str(tmp_path / "ipvs-fault")
        self.path = str(bindir / "ipvsadm")
        with open(self.path, "w") as handle:
            handle.write(
                "#!/bin/sh\n"
                f"FAKE_IPVSADM_STATE='{self.state}' FAKE_IPVSADM_CALLS='{self.calls}' "
                f"FAKE_IPVSADM_FAULT=\"$(cat '{self.fault_file}' 2>/dev/null)\" "
                f"exec '{sys.executable}' '{FAKE}' \"$@\"\n")
        os.chmod(self.path, 0o755)

    def fault(self, mode):
        """Make the fake misbehave from now on ('' for normal)."""
        assert self.kind == "fake"
        with open(self.fault_file, "w") as handle:
            handle.write(mode)

    def run(self, *args, check=True):
        proc = subprocess.run([self.path, *args], capture_output=True, text=True, timeout=30)
        if check and proc.returncode != 0:
            raise AssertionError(f"ipvsadm {' '.join(args)} failed: {proc.returncode} {proc.stderr}")
        return proc

    def service(self, address, proto="-t", scheduler="wrr"):
        self.run("-A", proto, address, "-s", scheduler)

    def dests(self, address, proto="-t"):
        """{'RIP:PORT': (forward, weight)} of one service, as the kernel lists it."""
        proc = self.run("-Ln", proto, address)
        listing = m.parse_listing(proc.stdout)
        (table,) = listing.values()
        return {str(ep): (d.forward, d.weight) for ep, d in table.items()}

    def listing_calls(self):
        """How many times ipvsadm was asked for a listing (fake only)."""
        import json
        if not os.path.exists(self.calls):
            return []
        with open(self.calls) as handle:
            return [json.loads(line)["argv"] for line in handle if line.strip()]

    def close(self):
        if self.kind == "kernel":
            self.run("-C", check=False)


class Monitor:
    """monitor_rs.py running as a subprocess, as an operator would run it."""

    def __init__(self, tmp_path, ipvs, config_text, *extra, name="monitorRS.conf"):
        self.config = tmp_path / name
        self.config.write_text(config_text)
        self.log = tmp_path / "monitorRS.log"
        self.lock = tmp_path / "monitor.lock"
        self.state = tmp_path / "monitor.state.json"
        self.ipvs = ipvs
        self.argv = [sys.executable, MONITOR, "--config", str(self.config), "--ipvsadm", ipvs.path,
                     "--log-file", str(self.log), "--lock-file", str(self.lock),
                     "--state-file", str(self.state), *extra]
        self.proc = None

    def once(self, *extra, timeout=60):
        return subprocess.run(self.argv + list(extra) + ["--once"], capture_output=True, text=True,
                              timeout=timeout * SLOW)

    def start(self, *extra):
        self.proc = subprocess.Popen(self.argv + list(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        return self

    def signal(self, signum=signal.SIGTERM):
        self.proc.send_signal(signum)

    def stop(self, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=timeout * SLOW)
        return self.proc.returncode, out, err

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def lines(self):
        try:
            return self.log.read_text().splitlines()
        except FileNotFoundError:
            return []

    def count(self, text):
        return sum(text in line for line in self.lines())

    def wait_log(self, text, timeout=20.0, count=1):
        return wait_until(lambda: self.count(text) >= count, timeout, f"{text!r} x{count} in the log")

    def server_state(self, server, pid=None):
        """A server's entry in the state file (written by process `pid`, if given), or None."""
        try:
            snap = json.loads(self.state.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if pid is not None and snap["pid"] != pid:
            return None
        return next((r for s in snap["services"] for r in s["servers"] if r["server"] == server), None)

    def status(self, *extra, timeout=60):
        """`--status --json` as an operator runs it: (exit status, the snapshot)."""
        proc = subprocess.run(self.argv + list(extra) + ["--status", "--json"], capture_output=True, text=True,
                              timeout=timeout * SLOW)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, json.loads(proc.stdout)


def config(vip, servers, weights=None, forward="m", interval=0.3, timeout=0.5, extra="", name="web",
           services=()):
    """A config text: one [virtual NAME] for `servers`, plus more `services` sections verbatim."""
    weights = weights or [str(i + 1) for i in range(len(servers))]
    host, _, port = vip.rpartition(":")
    text = (f"[monitor]\ninterval = {interval}\ntimeout = {timeout}\n\n"
            f"[virtual {name}]\nvip = {host}\nvport = {port}\nrs = {' '.join(servers)}\n"
            f"rw = {' '.join(map(str, weights))}\ntype = {forward}\n{extra}\n")
    return text + "".join(services)


def processes_with_env(text):
    """PIDs of processes whose environment mentions `text` (e.g. a fake's state file)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if text.encode() in handle.read():
                    found.append(int(entry))
        except OSError:
            pass
    return found


def fill_table(ipvs, addresses):
    """Every server in the fake's table at weight 1 (one file write, not N ipvsadm runs)."""
    with open(ipvs.state) as handle:
        state = json.load(handle)
    (svc,) = state["services"]
    for address in addresses:
        ip, port = address.rsplit(":", 1)
        svc["dests"].append({"af": 4, "addr": ip, "port": int(port), "forward": "Masq", "weight": 1,
                             "activeconns": 0, "inactconns": 0})
    with open(ipvs.state, "w") as handle:
        json.dump(state, handle)


def weights(ipvs):
    """{RIP:PORT: weight} of the fake's one service, read from its state file."""
    with open(ipvs.state) as handle:
        (svc,) = json.load(handle)["services"]
    return {f"{d['addr']}:{d['port']}": d["weight"] for d in svc["dests"]}


def set_active(ipvs, address, active):
    """Set a destination's ActiveConn in the fake's table, under the fake's own lock (fake only)."""
    import fcntl
    assert ipvs.kind == "fake"
    with open(ipvs.state + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(ipvs.state) as handle:
            state = json.load(handle)
        found = [d for svc in state["services"] for d in svc["dests"] if f"{d['addr']}:{d['port']}" == address]
        assert found, f"{address} is not in the fake's table"
        for d in found:
            d["activeconns"] = active
        tmp = ipvs.state + ".tmp-test"
        with open(tmp, "w") as handle:
            json.dump(state, handle)
        os.replace(tmp, ipvs.state)
