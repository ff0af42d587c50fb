#!/usr/bin/env python3
"""Benchmark: the original monitorRS.sh against monitor_rs.py, on the same servers.

    python3 bench/run.py              # N = 10, 100, 1000   (about 15 minutes)
    python3 bench/run.py --quick      # N = 10, 100, short windows (about 3 minutes)
    python3 bench/run.py --n 10,50 --freeze-bound 30

Needs root (network and PID namespaces), curl, util-linux (unshare, nsenter),
iproute2 (ip). Python 3.9+ standard library only. See bench/README.md.

Everything runs in a private network namespace made for the run (traffic
only on its own loopback); every server, monitor and script it starts is
stopped at the end, also when interrupted.
"""

import argparse
import ctypes
import json
import linecache
import os
import platform
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PY = sys.executable
CLK = os.sysconf("SC_CLK_TCK")
VIP, VPORT = "127.0.0.1", 80
INTERVAL, TIMEOUT = 3.0, 1.0  # monitor_rs config (the original: sleep 3, curl --connect-timeout 1)
ORIGINAL_SLEEP = 3.0
KINDS = ("refuse", "syndrop", "hang")
KIND_NAMES = {"refuse": "refusing", "syndrop": "SYN-dropping", "hang": "hung"}
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
T_START = time.time()


def say(message):
    print(f"[{time.time() - T_START:6.1f}s] {message}", file=sys.stderr, flush=True)


def addr(i):
    return f"127.1.{i // 250}.{i % 250 + 1}"


# --------------------------------------------------------------- processes

LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
STARTED = []  # (Popen, how to stop it)


def _die_with_parent():
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setsid()


def spawn(argv, **kw):
    proc = subprocess.Popen(argv, preexec_fn=_die_with_parent, **kw)
    STARTED.append(proc)
    return proc


def stop(proc, sig=signal.SIGTERM, grace=10.0):
    """Stop a process we started: `sig`, then SIGKILL after `grace` s."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in STARTED:
        STARTED.remove(proc)


def stop_everything(*_):
    for proc in list(STARTED):
        try:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        except Exception:
            pass
    STARTED.clear()


def ns_init(unshare_pid, timeout=10.0):
    """Host PID of the child that `unshare --fork` started (PID 1 of its namespace)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(f"/proc/{unshare_pid}/task/{unshare_pid}/children") as handle:
                kids = handle.read().split()
            if kids:
                return int(kids[0])
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError("unshare started no child")


def cpu_of(pid):
    """(own CPU s, CPU s of reaped children) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / CLK, (cutime + cstime) / CLK


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def last_pid(pid):
    """ns_last_pid of the PID namespace of `pid` (read by a `cat` that takes one PID there)."""
    out = subprocess.run(["nsenter", "-t", str(pid), "-p", "--", "cat", "/proc/sys/kernel/ns_last_pid"],
                         capture_output=True, text=True, timeout=10)
    return int(out.stdout)


def sample(pid):
    own, children = cpu_of(pid)
    with open(f"/proc/{pid}/stat") as handle:
        utime, stime = (int(x) / CLK for x in handle.read().rsplit(")", 1)[1].split()[11:13])
    return {"t": time.time(), "cpu": own + children, "cpu_own": own, "user": utime, "sys": stime,
            "pids": last_pid(pid)}


# ------------------------------------------------------------------ files

class Tail:
    """New complete lines of a growing file, parsed."""

    def __init__(self, path, parse):
        self.path, self.parse, self.pos, self.buf, self.items = path, parse, 0, b"", []

    def poll(self):
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.pos)
                data = handle.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        new = [self.parse(line) for line in lines if line.strip()]
        self.items.extend(new)
        return new


def parse_pass(line):
    start, end_run_pass, end, cpu = (float(x) for x in line.split())
    return {"start": start, "end_run_pass": end_run_pass, "end": end, "cpu": cpu}


WRAPPER = '''#!{python} -S
# ipvsadm for the bench: runs tests/fake_ipvsadm.py in this same process (as
# `exec python3 fake_ipvsadm.py "$@"` would), then logs its own rusage.
import json, os, resource, sys, time
t0 = time.time()
os.environ["FAKE_IPVSADM_STATE"] = {state!r}
os.environ["FAKE_IPVSADM_CALLS"] = {calls!r}
fake = {fake!r}
sys.argv = [fake] + sys.argv[1:]
code = 0
try:
    with open(fake) as f:
        source = f.read()
    exec(compile(source, fake, "exec"), {{"__name__": "__main__", "__file__": fake}})
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
except Exception:
    import traceback
    traceback.print_exc()
    code = 1
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except Exception:
        pass
with open("/proc/self/stat") as f:
    start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
ru = resource.getrusage(resource.RUSAGE_SELF)
line = json.dumps({{"argv": sys.argv[1:], "tstart": boot + start_ticks / os.sysconf("SC_CLK_TCK"),
                    "t0": t0, "t1": time.time(), "rc": code, "cpu": ru.ru_utime + ru.ru_stime,
                    "maxrss_kb": ru.ru_maxrss}}) + "\\n"
fd = os.open({wlog!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, line.encode())
os.close(fd)
os._exit(code)
'''


def changed_ip(call):
    argv = call["argv"]
    return argv[argv.index("-r") + 1].rsplit(":", 1)[0]


class IpvsLog:
    """The calls of the fake ipvsadm (our wrapper's log): listings, changes, presence."""

    def __init__(self, path, present):
        self.tail = Tail(path, json.loads)
        self.present = set(present)
        self.removed = {}  # ip -> [t1 of each successful -d]
        self.added = {}

    def poll(self):
        for call in self.tail.poll():
            argv = call["argv"]
            if call["rc"] != 0 or not argv or argv[0] not in ("-a", "-d"):
                continue
            ip = changed_ip(call)
            if argv[0] == "-a":
                self.present.add(ip)
                self.added.setdefault(ip, []).append(call["t1"])
            else:
                self.present.discard(ip)
                self.removed.setdefault(ip, []).append(call["t1"])

    @property
    def calls(self):
        return self.tail.items

    def listings(self):
        return [c for c in self.calls if c["argv"][:1] == ["-Ln"]]

    def between(self, t0, t1):
        return [c for c in self.calls if t0 <= c["t0"] < t1]

    def removed_after(self, ip, t):
        return next((x for x in self.removed.get(ip, []) if x > t), None)


# ------------------------------------------------------------------ stats

def med(xs):
    return statistics.median(xs) if xs else None


def fmt_s(x, digits=2):
    return "n/a" if x is None else f"{x:.{digits}f} s"


# ------------------------------------------------------------------- bench

class Bench:
    """The servers, the fake ipvsadm and the temp files for one N."""

    def __init__(self, n, workdir, args):
        self.n, self.args = n, args
        self.dir = os.path.join(workdir, f"n{n}")
        os.makedirs(os.path.join(self.dir, "bin"))
        self.addrs = [addr(i) for i in range(n)]
        self.weights = [i % 3 + 1 for i in range(n)]
        self.weight = dict(zip(self.addrs, self.weights))
        self.pos = {ip: i for i, ip in enumerate(self.addrs)}
        rng = random.Random(args.seed * 1000003 + n)
        refused, slow = max(1, round(0.05 * n)), max(2, round(0.10 * n))
        hung = slow // 2
        order = list(range(n))
        rng.shuffle(order)
        roles = {}
        for i in order[:refused]:
            roles[i] = "refuse"
        for i in order[refused:refused + hung]:
            roles[i] = "hang"
        for i in order[refused + hung:refused + slow]:
            roles[i] = "syndrop"
        # mix A: 5% refusing, 5% hung, 5% SYN-dropping; mix B: the hung ones drop SYNs instead.
        self.mix_a = {addr(i): roles.get(i, "ok") for i in range(n)}
        self.mix_b = {ip: ("syndrop" if m == "hang" else m) for ip, m in self.mix_a.items()}
        self.counts = {"refused": refused, "hung": hung, "syndrop": slow - hung}
        self.modes = dict(self.mix_b)

        self.state = os.path.join(self.dir, "ipvs-state.json")
        self.calls = os.path.join(self.dir, "fake-calls.jsonl")
        self.wlog = os.path.join(self.dir, "ipvsadm-calls.jsonl")
        self.ipvsadm = os.path.join(self.dir, "bin", "ipvsadm")
        with open(self.ipvsadm, "w") as handle:
            handle.write(WRAPPER.format(python=PY, state=self.state, calls=self.calls,
                                        fake=args.fake, wlog=self.wlog))
        os.chmod(self.ipvsadm, 0o755)

        modes_path = os.path.join(self.dir, "modes.json")
        with open(modes_path, "w") as handle:
            json.dump(self.modes, handle)
        self.servers = spawn([PY, os.path.join(HERE, "servers.py"), modes_path],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(self.servers.stdout.readline() or "{}")
        if not ready.get("ready"):
            raise RuntimeError("servers did not start")

    def set_modes(self, modes):
        """Switch servers; returns the time the switch was done."""
        changes = {ip: m for ip, m in modes.items() if self.modes.get(ip) != m}
        self.servers.stdin.write(json.dumps({"set": changes}) + "\n")
        self.servers.stdin.flush()
        reply = json.loads(self.servers.stdout.readline())
        self.modes.update(changes)
        return reply["t"]

    def env(self, **extra):
        env = {"PATH": os.path.join(self.dir, "bin") + ":" + CLEAN_PATH, "HOME": self.dir,
               "CURL_HOME": self.dir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        env.update(extra)
        return env

    def reset_table(self, present):
        """A fresh table: the virtual service (ipvsadm -A), the given servers in it."""
        for path in (self.state, self.calls, self.wlog):
            if os.path.exists(path):
                os.unlink(path)
        subprocess.run([self.ipvsadm, "-A", "-t", f"{VIP}:{VPORT}", "-s", "wrr"], check=True,
                       env=self.env())
        with open(self.state) as handle:
            state = json.load(handle)
        state["services"][0]["dests"] = [
            {"af": 4, "addr": ip, "port": VPORT, "forward": "Route", "weight": self.weight[ip],
             "activeconns": 0, "inactconns": 0} for ip in present]
        with open(self.state + ".new", "w") as handle:
            json.dump(state, handle, indent=1)
        os.replace(self.state + ".new", self.state)
        for path in (self.calls, self.wlog):
            os.unlink(path)
        return IpvsLog(self.wlog, present)

    def close(self):
        try:
            self.servers.stdin.write(json.dumps({"quit": True}) + "\n")
            self.servers.stdin.flush()
        except OSError:
            pass
        stop(self.servers, grace=5)


def wait_until(predicate, timeout, step=0.05, poll=()):
    deadline = time.time() + timeout
    while True:
        for fn in poll:
            fn()
        if predicate():
            return True
        if time.time() >= deadline:
            return False
        time.sleep(step)


def healthy_present(bench, log, exclude=()):
    """Healthy servers in the table, in loop (config) order."""
    return [ip for ip in bench.addrs if bench.modes[ip] == "ok" and ip in log.present and ip not in exclude]


# ------------------------------------------------------------- monitor_rs

def run_monitor(bench, mix, label, window, samples, rng, args):
    """monitor_rs on `mix`: pass durations, CPU, processes, RSS, detection latency."""
    n = bench.n
    bench.set_modes(mix)
    log = bench.reset_table([ip for ip in bench.addrs if mix[ip] == "ok"])
    conf = os.path.join(bench.dir, "monitorRS.conf")
    with open(conf, "w") as handle:
        handle.write(f"[monitor]\ninterval = {INTERVAL:g}\ntimeout = {TIMEOUT:g}\n"
                     f"log = {bench.dir}/monitor_rs-{label}.log\nipvsadm = {bench.ipvsadm}\n"
                     f"lock = {bench.dir}/monitor_rs.lock\n\n"
                     f"[virtual bench]\nvip = {VIP}\nvport = {VPORT}\nrport = {VPORT}\ntype = g\n"
                     f"rs = {' '.join(bench.addrs)}\nrw = {' '.join(map(str, bench.weights))}\n")
    pass_log = os.path.join(bench.dir, f"passes-{label}.log")
    out = open(os.path.join(bench.dir, f"monitor_rs-{label}.out"), "w")
    argv = ["unshare", "--pid", "--fork", "--kill-child", "--", PY, os.path.join(HERE, "monwrap.py"),
            "--config", conf, "--ipvsadm", bench.ipvsadm, "--interval", f"{INTERVAL:g}",
            "--timeout", f"{TIMEOUT:g}", "--log-file", f"{bench.dir}/monitor_rs-{label}.log",
            "--lock-file", f"{bench.dir}/monitor_rs.lock"]
    if "--state-file" in args.monitor_help:  # else it writes one under /run
        argv += ["--state-file", f"{bench.dir}/monitor_rs-state.json"]
    hog = None
    if args.stress:  # monitor_rs shares CPU 0 with a busy loop: half a core for it
        argv = ["taskset", "-c", "0", *argv]
        hog = spawn(["taskset", "-c", "0", PY, "-c", "while True: pass"])
    proc = spawn(argv, stdout=out, stderr=subprocess.STDOUT,
                 env=bench.env(BENCH_MONITOR=args.monitor, BENCH_PASS_LOG=pass_log))
    pid = ns_init(proc.pid)
    passes = Tail(pass_log, parse_pass)
    result = {"label": label}
    try:
        if not wait_until(lambda: len(passes.items) >= 2 or proc.poll() is not None, 60, poll=[passes.poll]):
            raise RuntimeError(f"monitor_rs ({label}, N={n}) did not complete 2 passes in 60 s")
        if proc.poll() is not None:
            raise RuntimeError(f"monitor_rs exited {proc.returncode}; see {out.name}")
        s0 = sample(pid)
        if args.profile:  # py-spy samples the running monitor from outside, for the window
            raw = os.path.join(bench.dir, "py-spy.raw")
            subprocess.run(["py-spy", "record", "--pid", str(pid), "--duration", str(int(window)),
                            "--rate", "250", "--format", "raw", "--output", raw, "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            summarize_profile(raw, os.path.join(HERE, f"profile-n{n}.txt"), n)
        else:
            time.sleep(window)
        s1 = sample(pid)
        passes.poll()
        log.poll()
        detection = {}
        if samples:
            detection = detect_monitor(bench, log, samples, rng)
        s2 = sample(pid)
        result["vmhwm_kb"] = status_kb(pid, "VmHWM")
        os.kill(pid, signal.SIGTERM)  # to monitor_rs itself (PID 1 of its namespace), not to unshare
        try:
            result["exit"] = proc.wait(15)
            result["stop_s"] = time.time() - s2["t"]
        except subprocess.TimeoutExpired:
            result["exit"] = "did not stop within 15 s of SIGTERM"
    finally:
        stop(proc, signal.SIGKILL)
        if hog is not None:
            stop(hog, signal.SIGKILL)
        out.close()
    passes.poll()
    log.poll()

    victims = set(detection.get("victims", ()))
    false_removals = [c for c in log.calls if c["argv"][:1] == ["-d"] and c["rc"] == 0
                      and changed_ip(c) not in victims and mix[changed_ip(c)] == "ok"]
    in_window = [p for p in passes.items if s0["t"] <= p["start"] < s1["t"]]
    durations = [p["end"] - p["start"] for p in in_window]
    calls_w = log.between(s0["t"], s1["t"])
    listings_w = [c for c in calls_w if c["argv"][:1] == ["-Ln"]]
    changes_w = [c for c in calls_w if c["argv"][:1] in (["-a"], ["-d"], ["-e"])]
    fake_cpu_w = sum(c["cpu"] for c in log.calls if s0["t"] <= c["t1"] < s1["t"])
    span = s1["t"] - s0["t"]
    npass = max(len(listings_w), 1)
    after = [c for c in log.calls if s0["t"] <= c["tstart"] < s2["t"]]
    result.update(
        passes=len(in_window), durations=durations,
        pass_med=med(durations), pass_max=max(durations) if durations else None,
        pass_cpu_med=med([p["cpu"] for p in in_window]),
        listings_per_pass=len(listings_w) / max(len(in_window), 1),
        changes_in_window=len(changes_w),
        pids_per_pass=(s1["pids"] - s0["pids"] - 1 - len(changes_w)) / npass,
        # whole run after warm-up: every PID must be an ipvsadm call (or one of our `cat` samples)
        pids_total=s2["pids"] - s0["pids"] - 2,  # minus our two `cat` samples s1, s2
        ipvsadm_total=len(after),
        cpu_h=(s1["cpu"] - s0["cpu"] - fake_cpu_w) / span * 3600,
        cpu_h_with_fake=(s1["cpu"] - s0["cpu"]) / span * 3600,
        cpu_own_h=(s1["cpu_own"] - s0["cpu_own"]) / span * 3600,
        user_share=(s1["user"] - s0["user"]) / max(s1["cpu_own"] - s0["cpu_own"], 1e-9),
        cpu_per_check_ms=(s1["cpu"] - s0["cpu"] - fake_cpu_w) / max(len(listings_w) * n, 1) * 1000,
        run_pass_med=med([p["end_run_pass"] - p["start"] for p in in_window]),
        run_pass_max=max((p["end_run_pass"] - p["start"] for p in in_window), default=None),
        window=span, detection=detection, false_removals=len(false_removals),
        d_wall=med([c["t1"] - c["tstart"] for c in log.calls if c["argv"][:1] == ["-d"]]),
        fake_list_wall=med([c["t1"] - c["tstart"] for c in listings_w]),
        fake_list_cpu=med([c["cpu"] for c in listings_w]),
    )
    return result


IDLE_FRAMES = {"Signals.sleep", "EpollSelector.select", "_PollLikeSelector.select", "PollSelector.select",
               "DefaultSelector.select", "sleep"}


def waiting(frame):
    """Is this top frame a wait?  A known sleeper, or a source line that calls poll()/select() (py-spy
    without --native shows a wait in epoll.poll as the Python line that called it)."""
    if frame.split(" ")[0] in IDLE_FRAMES:
        return True
    match = re.search(r" \((.+):(\d+)\)$", frame)
    source = linecache.getline(match.group(1), int(match.group(2))) if match else ""
    return ".poll(" in source or ".select(" in source


def summarize_profile(raw, out, n):
    """py-spy raw (collapsed stacks) -> the functions with most samples, own and inclusive."""
    own, total, samples, idle, samples_busy = {}, {}, 0, 0, 0
    with open(raw) as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count)
            samples += count
            raw_frames = stack.split(";")
            frames = [re.sub(r" \((.*/)?([^/]+):\d+\)$", r" (\2)", f) for f in raw_frames]
            if waiting(raw_frames[-1]):
                idle += count  # waiting in select/epoll/poll: py-spy here cannot tell idle from busy
                continue
            samples_busy += count
            own[frames[-1]] = own.get(frames[-1], 0) + count
            for frame in set(frames):
                total[frame] = total.get(frame, 0) + count
    lines = [f"py-spy record --rate 250 --nonblocking, monitor_rs at N={n}, steady state (mix B): {samples} "
             f"samples, {idle} of them waiting in select/epoll/poll (left out); percentages of the "
             f"{samples_busy} others (on CPU)", "", "inclusive (function and what it calls):"]
    samples = max(samples_busy, 1)
    lines += [f"  {c / samples * 100:5.1f}%  {f}" for f, c in sorted(total.items(), key=lambda x: -x[1])[:40]]
    lines += ["", "own (the function's own code):"]
    lines += [f"  {c / samples * 100:5.1f}%  {f}" for f, c in sorted(own.items(), key=lambda x: -x[1])[:30]]
    with open(out, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def detect_monitor(bench, log, samples, rng):
    """Kill one healthy server at a random moment, wait for its -d, restore it; `samples` per kind."""
    found = {k: [] for k in KINDS}
    extra = {k: [] for k in KINDS}  # time of the fake ipvsadm in the path: listing + -d
    order = [k for _ in range(samples) for k in KINDS]
    recent, victims = [], []
    for kind in order:
        time.sleep(rng.uniform(0, INTERVAL))
        log.poll()
        pool = healthy_present(bench, log, exclude=recent)
        if not pool:
            wait_until(lambda: healthy_present(bench, log, exclude=recent), 10, poll=[log.poll])
            pool = healthy_present(bench, log, exclude=recent)
        victim = rng.choice(pool)
        victims.append(victim)
        t_kill = bench.set_modes({victim: kind})
        bound = INTERVAL + TIMEOUT + 10
        ok = wait_until(lambda: log.removed_after(victim, t_kill) is not None, bound, poll=[log.poll])
        t_gone = log.removed_after(victim, t_kill)
        found[kind].append(None if not ok else t_gone - t_kill)
        if ok:
            d_call = next(c for c in log.calls if c["argv"][:1] == ["-d"] and c["t1"] == t_gone)
            listing = max((c for c in log.listings() if c["t0"] < d_call["t0"]), key=lambda c: c["t0"])
            extra[kind].append((d_call["t1"] - d_call["tstart"]) + (listing["t1"] - listing["tstart"]))
        bench.set_modes({victim: "ok"})
        recent = (recent + [victim])[-3:]
    # let restored servers come back before the phase ends
    wait_until(lambda: all(ip in log.present for ip in recent), INTERVAL + TIMEOUT + 5, poll=[log.poll])
    result = {k: {"lat": v, "fake": extra[k]} for k, v in found.items()}
    result["victims"] = victims
    return result


# --------------------------------------------------------------- original

def make_original(bench, src, log_path):
    """A copy of monitorRS.sh with only VIP, RS, RW and LOG replaced (as sed would)."""
    with open(src) as handle:
        lines = handle.read().split("\n")
    new = {
        "VIP": f"VIP={VIP}",
        "RS": "RS=(" + " ".join(f'"{ip}"' for ip in bench.addrs) + ")",
        "RW": "RW=(" + " ".join(f'"{w}"' for w in bench.weights) + ")",
        "LOG": f"LOG={log_path}",
    }
    changed = []
    for i, line in enumerate(lines):
        match = re.match(r"^(VIP|RS|RW|LOG)=", line)
        if match:
            lines[i] = new[match.group(1)]
            changed.append(match.group(1))
    if sorted(changed) != sorted(new):
        raise RuntimeError(f"{src}: expected one line each for VIP, RS, RW, LOG; found {changed}")
    dst = os.path.join(bench.dir, "monitorRS.sh")
    with open(dst, "w") as handle:
        handle.write("\n".join(lines))
    os.chmod(dst, 0o755)
    return dst


def child_peak_kb(argv, env, runs=3):
    """Peak RSS of a command, from wait4 (the way the original runs it)."""
    peak = 0
    for _ in range(runs):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        peak = max(peak, usage.ru_maxrss)
    return peak


def run_original(bench, window, victims_per_kind, rng, args):
    """monitorRS.sh on mix B: passes, CPU, processes, RSS, detection; then a hung server."""
    n = bench.n
    bench.set_modes(bench.mix_b)
    log = bench.reset_table([ip for ip in bench.addrs if bench.mix_b[ip] == "ok"])
    script = make_original(bench, args.original, os.path.join(bench.dir, "monitorRS.log"))
    out = open(os.path.join(bench.dir, "original.out"), "w")
    # own PID namespace (to count every process it spawns), own mount namespace with a
    # tmpfs on /var/log: the script touches /var/log/monitorRS.log whatever LOG says.
    argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private", "--",
            "sh", "-c", 'mount -t tmpfs bench /var/log && exec bash "$0"', script]
    proc = spawn(argv, stdout=out, stderr=subprocess.STDOUT, env=bench.env())
    pid = ns_init(proc.pid)
    result = {"frozen": None}
    partial = None

    def listings():
        log.poll()
        return log.listings()

    def pass_starts():
        ls = listings()
        return [ls[i]["t0"] for i in range(0, len(ls), n)]

    try:
        if not wait_until(lambda: len(listings()) >= 1, 30):
            raise RuntimeError("the original made no ipvsadm call in 30 s")
        s0 = sample(pid)
        # detection: a random moment early in pass 1; victims among the servers the loop has
        # not reached yet in this pass, so each is found in this same pass.
        time.sleep(rng.uniform(0, ORIGINAL_SLEEP))
        position = len(listings()) % n
        reach = n if n <= 100 else max(50, n // 5)  # at large N: within what the budget lets it reach
        ahead = [ip for ip in healthy_present(bench, log) if position + 1 < bench.pos[ip] <= position + reach]
        rng.shuffle(ahead)
        victims = {}
        for kind in ("refuse", "syndrop"):
            for _ in range(min(victims_per_kind, len(ahead) // 2)):
                victims[ahead.pop()] = kind
        t_kill = bench.set_modes(victims)
        # a pass ends when the next begins: at least one full pass, then whole passes up to `window`
        est = None
        while True:
            starts = pass_starts()
            if len(starts) >= 2:
                span = starts[-1] - starts[0]
                est = span / (len(starts) - 1)
                if span >= window or span + est > args.orig_budget:
                    break
            elif time.time() - s0["t"] > args.orig_budget:
                # no whole pass within the budget: measure the part done, extrapolate to N servers
                done = len(listings())
                partial = {"done": done, "elapsed": time.time() - starts[0]}
                est = partial["elapsed"] * n / done
                if all(log.removed_after(ip, t_kill) for ip in victims) or \
                        time.time() - s0["t"] > 1.5 * args.orig_budget:
                    break
            last = max((c["t1"] for c in log.calls), default=s0["t"])
            if time.time() - last > args.freeze_bound:
                raise RuntimeError("the original stopped making progress before the hung test")
            time.sleep(0.05)
        s1 = sample(pid)
        starts = pass_starts()
        lat = {"refuse": [], "syndrop": []}
        for ip, kind in victims.items():
            gone = log.removed_after(ip, t_kill)
            lat[kind].append(None if gone is None else gone - t_kill)
        result["detection"] = {k: {"lat": v} for k, v in lat.items()}

        # a hung server: one just ahead of the loop, so that the loop reaches it soon
        position = len(listings()) % n
        ahead = [ip for ip in healthy_present(bench, log) if bench.pos[ip] > position + 1]
        if not ahead:
            ahead = healthy_present(bench, log)
        victim = ahead[0]
        t_hang = bench.set_modes({victim: "hang"})
        frozen = False
        while True:
            log.poll()
            if log.removed_after(victim, t_hang) is not None:
                break  # found and removed: not frozen
            last = max(c["t1"] for c in log.calls)
            if time.time() - max(last, t_hang) > args.freeze_bound:
                frozen = True  # no ipvsadm call (one per server checked) for freeze_bound s
                break
            if len([t for t in pass_starts() if t > t_hang]) >= 2:
                break  # a whole pass went by: not frozen
            time.sleep(0.1)
        result["frozen"] = frozen
        result["frozen_after"] = time.time() - t_hang
        result["frozen_at"] = victim
        result["bash_vmhwm_kb"] = status_kb(pid, "VmHWM")
        out.flush()
    finally:
        stop(proc, signal.SIGKILL)  # PID 1 of its namespace: all its children go with it
        out.close()
    log.poll()

    durations = [b - a - ORIGINAL_SLEEP for a, b in zip(starts, starts[1:])]
    estimated = None
    if not durations and partial:
        estimated = partial["elapsed"] * n / partial["done"]
    span = s1["t"] - s0["t"]
    calls_w = [c for c in log.calls if s0["t"] <= c["t0"] < s1["t"]]
    listings_w = [c for c in calls_w if c["argv"][:1] == ["-Ln"]]
    changes_w = [c for c in calls_w if c["argv"][:1] in (["-a"], ["-d"], ["-e"])]
    fake_cpu_w = sum(c["cpu"] for c in log.calls if s0["t"] <= c["t1"] < s1["t"])
    passes_w = len(listings_w) / n
    healthy = next(ip for ip in bench.addrs if bench.modes[ip] == "ok")
    curl_kb = child_peak_kb(["curl", "--connect-timeout", "1", f"http://{healthy}"], bench.env())
    result.update(
        passes=len(durations), durations=durations,
        pass_med=med(durations) if durations else estimated,
        pass_max=max(durations) if durations else estimated,
        partial=partial,
        fake_wall_share=sum(c["t1"] - c["tstart"] for c in calls_w) / span,
        listings_per_pass=len(listings_w) / passes_w if passes_w else None,
        pids_per_pass=(s1["pids"] - s0["pids"] - 1 - len(changes_w)) / passes_w if passes_w else None,
        changes_in_window=len(changes_w),
        ipvsadm_per_pass=(len(calls_w) - len(changes_w)) / passes_w if passes_w else None,
        cpu_h=(s1["cpu"] - s0["cpu"] - fake_cpu_w) / span * 3600,
        cpu_h_with_fake=(s1["cpu"] - s0["cpu"]) / span * 3600,
        window=span, curl_kb=curl_kb,
        cpu_per_check_ms=(s1["cpu"] - s0["cpu"] - fake_cpu_w) / max(len(listings_w), 1) * 1000,
        fake_list_wall=med([c["t1"] - c["tstart"] for c in listings_w]),
        fake_list_cpu=med([c["cpu"] for c in listings_w]),
        per_server=(med(durations) if durations else estimated) / n,
    )
    return result


# ----------------------------------------------------------------- report

def stat_pair(values):
    """(median, max) of detection latencies; None entries (never detected) make max None."""
    got = [v for v in values if v is not None]
    missing = len(values) - len(got)
    return (med(got), None if missing else (max(got) if got else None), missing)


def ratio(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return f"{a / b:.1f}x"
    return "-"


def build_rows(results, args):
    rows = []  # (N, metric, original, monitor_rs, ratio, target, verdict)
    limit_pass = TIMEOUT + 0.5
    limit_detect = INTERVAL + TIMEOUT + 0.2
    frozen_text = f"frozen (no pass completed in {args.freeze_bound:g} s)"
    for n, r in results.items():
        o, mb, ma = r.get("original"), r.get("monitor_b"), r.get("monitor_a")

        def row(metric, ov, mv, shown_o, shown_m, target="", verdict=""):
            rows.append((n, metric, shown_o, shown_m, ratio(ov, mv), target, verdict))

        if mb:
            target = f"< {limit_pass:g} s" if n >= 1000 else ""
            ok = "" if not target else ("met" if mb["pass_max"] < limit_pass else "MISSED")
            ov = o["pass_med"] if o else None
            shown = fmt_s(ov, 1)
            if o and o["partial"]:
                p = o["partial"]
                shown = f"~{ov:.0f} s (extrapolated: {p['done']} of {n} servers in {p['elapsed']:.0f} s)"
            row("pass duration, median (mix B: 10% SYN-drop)", ov, mb["pass_med"], shown, fmt_s(mb["pass_med"]))
            ov = o["pass_max"] if o else None
            if not (o and o["partial"]):
                shown = fmt_s(ov, 1)
            row("pass duration, max (mix B)", ov, mb["pass_max"], shown, fmt_s(mb["pass_max"]), target,
                ok)
        if ma:
            target = f"< {limit_pass:g} s" if n >= 1000 else ""
            ok = "" if not target else ("met" if ma["pass_max"] < limit_pass else "MISSED")
            shown_o = frozen_text if o and o.get("frozen") else "-"
            row("pass duration, median (mix A: 5% hung + 5% SYN-drop)", None, ma["pass_med"], shown_o,
                fmt_s(ma["pass_med"]))
            row("pass duration, max (mix A)", None, ma["pass_max"], shown_o, fmt_s(ma["pass_max"]), target, ok)
        if mb:
            for kind in KINDS:
                m_med, m_max, m_missing = stat_pair(mb["detection"][kind]["lat"])
                if o and kind in o["detection"]:
                    o_med, o_max, o_missing = stat_pair(o["detection"][kind]["lat"])
                    so_med, so_max = fmt_s(o_med), fmt_s(o_max) if not o_missing else f"{o_missing} never removed"
                elif o:
                    o_med = o_max = None
                    so_med = so_max = ("never: " + frozen_text) if o.get("frozen") else "not removed"
                else:
                    o_med = o_max = None
                    so_med = so_max = "-"
                ok = "met" if (m_max is not None and m_max < limit_detect) else "MISSED"
                sm_max = fmt_s(m_max) if not m_missing else f"{m_missing} never removed"
                row(f"detection latency, {KIND_NAMES[kind]}, median", o_med, m_med, so_med, fmt_s(m_med))
                row(f"detection latency, {KIND_NAMES[kind]}, max", o_max, m_max, so_max, sm_max,
                    f"< {limit_detect:g} s", ok)
            if ma:
                # dies just after a good probe: the next pass starts `interval` later, its probe fails
                # after `timeout`, then the rest of run_pass and the -d; the listing, at the start of
                # both passes, cancels out
                m_worst = INTERVAL + ma["run_pass_max"] - ma["fake_list_wall"] + (mb["d_wall"] or 0)
                o_worst = (o["pass_max"] + ORIGINAL_SLEEP + TIMEOUT) if o and o["pass_max"] else None
                row("detection latency, worst case (computed, see notes)", o_worst, m_worst,
                    "-" if o_worst is None else f"{o_worst:.1f} s", f"{m_worst:.2f} s", f"< {limit_detect:g} s",
                    "met" if m_worst < limit_detect else "MISSED")
            ok = "met" if mb["pids_per_pass"] <= 1.0 + 1e-9 and mb["pids_total"] <= mb["ipvsadm_total"] else "MISSED"
            ov = o["pids_per_pass"] if o else None
            row("processes spawned per pass (no change)", ov, mb["pids_per_pass"],
                "-" if ov is None else f"{ov:.1f}", f"{mb['pids_per_pass']:.2f}", "<= 1 + 1 per change", ok)
            ov = o["listings_per_pass"] if o else None
            row("ipvsadm listings per pass", ov, mb["listings_per_pass"],
                "-" if ov is None else f"{ov:.0f}", f"{mb['listings_per_pass']:.0f}", "1 per service",
                "met" if mb["listings_per_pass"] <= 1.0 + 1e-9 else "MISSED")
            ov = o["cpu_h"] if o else None
            target = "< 36 s/h (1% of a core)" if n == 100 else ""
            ok = "" if not target else ("met" if mb["cpu_h"] < 36 else "MISSED")
            row("CPU s per hour (tool, without ipvsadm)", ov, mb["cpu_h"],
                "-" if ov is None else f"{ov:.0f}", f"{mb['cpu_h']:.1f}", target, ok)
            ov = o["cpu_per_check_ms"] if o else None
            row("CPU per server check (tool, without ipvsadm)", ov, mb["cpu_per_check_ms"],
                "-" if ov is None else f"{ov:.1f} ms", f"{mb['cpu_per_check_ms']:.2f} ms")
            ov = o["cpu_h_with_fake"] if o else None
            row("CPU s per hour (with the fake ipvsadm)", ov, mb["cpu_h_with_fake"],
                "-" if ov is None else f"{ov:.0f}", f"{mb['cpu_h_with_fake']:.1f}")
            peak_m = max(x["vmhwm_kb"] for x in (ma, mb) if x) / 1024
            ov = (o["bash_vmhwm_kb"] + o["curl_kb"]) / 1024 if o else None
            target = "< 60 MB" if n >= 1000 else ""
            ok = "" if not target else ("met" if peak_m < 60 else "MISSED")
            row("peak RSS (without ipvsadm)", ov, peak_m,
                "-" if ov is None else f"{ov:.1f} MB (bash {o['bash_vmhwm_kb'] / 1024:.1f} + curl "
                f"{o['curl_kb'] / 1024:.1f})", f"{peak_m:.1f} MB", target, ok)
    return rows


def machine():
    model = "?"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    bash = subprocess.run(["bash", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(), "bash": bash, "curl": " ".join(curl.split()[:2]),
            "load": " ".join(load)}


def render(results, rows, info, args, elapsed):
    lines = ["# monitor_rs benchmark: the original monitorRS.sh against monitor_rs.py", ""]
    lines.append(f"Machine: {info['nproc']} CPUs ({info['cpu']}), kernel {info['kernel']}, "
                 f"Python {info['python']}, {info['bash']}, {info['curl']}. Load average at start "
                 f"{info['load']}, at end {info['load_end']}.")
    lines.append("")
    lines.append(f"monitor_rs.py: sha256 {args.monitor_sha}… (last commit touching it: {args.monitor_commit or '?'}).")
    lines.append("")
    lines.append(f"Command: `{' '.join(args.command)}` ({elapsed / 60:.1f} min). Interval {INTERVAL:g} s, "
                 f"timeout {TIMEOUT:g} s (the original: `sleep 3`, `curl --connect-timeout 1`). "
                 f"One virtual service {VIP}:{VPORT}, type g, real servers on port 80 of 127.1.x.y.")
    lines.append("")
    for n, r in results.items():
        c = r["counts"]
        lines.append(f"- N={n}: {c['refused']} refusing; mix A: {c['hung']} hung + {c['syndrop']} SYN-dropping; "
                     f"mix B: {c['hung'] + c['syndrop']} SYN-dropping; the rest healthy.")
    lines.append("")
    lines.append("| N | figure | original | monitor_rs | original / monitor_rs | target (monitor_rs) | |")
    lines.append("|---:|---|---|---|---:|---|---|")
    for n, metric, o, m, rt, target, verdict in rows:
        lines.append(f"| {n} | {metric} | {o} | {m} | {rt} | {target} | {verdict} |")
    lines.append("")
    lines.append("Details per N (raw figures):")
    lines.append("")
    for n, r in results.items():
        mb, ma, o = r.get("monitor_b"), r.get("monitor_a"), r.get("original")
        if mb:
            det = "; ".join(
                f"{KIND_NAMES[k]}: " + ", ".join("-" if x is None else f"{x:.2f}" for x in mb["detection"][k]["lat"])
                + " (fake ipvsadm in the path: " + ", ".join(f"{x:.2f}" for x in mb["detection"][k]["fake"]) + ")"
                for k in KINDS)
            lines.append(f"- N={n} monitor_rs mix B: {mb['passes']} passes in {mb['window']:.0f} s; pass CPU "
                         f"(own, median) {mb['pass_cpu_med'] * 1000:.0f} ms ({mb['user_share'] * 100:.0f}% user, "
                         f"the rest kernel); run_pass alone {mb['run_pass_med']:.2f} s (median), the rest of "
                         f"the cycle is after_pass (state file); fake `ipvsadm -Ln -t` median "
                         f"{mb['fake_list_wall'] * 1000:.0f} ms wall, {mb['fake_list_cpu'] * 1000:.0f} ms CPU; "
                         f"after warm-up {mb['pids_total']} PIDs for {mb['ipvsadm_total']} ipvsadm calls; "
                         f"own CPU only {mb['cpu_own_h']:.1f} s/h; healthy servers wrongly removed: "
                         f"{mb['false_removals']}; exit status after SIGTERM: {mb.get('exit')}; "
                         f"detection latencies (s) {det}.")
        if ma:
            lines.append(f"- N={n} monitor_rs mix A: passes (s) " + ", ".join(f"{d:.2f}" for d in ma["durations"])
                         + f" (run_pass alone: max {ma['run_pass_max']:.2f} s); pass CPU (own, median) "
                         f"{ma['pass_cpu_med'] * 1000:.0f} ms; healthy servers "
                         f"wrongly removed: {ma['false_removals']}.")
        if o:
            det = "; ".join(f"{KIND_NAMES[k]}: " + ", ".join("-" if x is None else f"{x:.1f}" for x in v["lat"])
                            for k, v in o["detection"].items())
            lines.append(f"- N={n} original mix B: passes (s) " + ", ".join(f"{d:.1f}" for d in o["durations"])
                         + f" ({o['per_server'] * 1000:.0f} ms per server, {o['fake_wall_share'] * 100:.0f}% of "
                         "the time inside the fake ipvsadm); fake `ipvsadm -Ln` median "
                         f"{o['fake_list_wall'] * 1000:.0f} ms wall, {o['fake_list_cpu'] * 1000:.0f} ms CPU; "
                         f"{o['ipvsadm_per_pass']:.0f} ipvsadm calls per pass; detection latencies (s) {det}; "
                         f"worst case for a server that dies just after its check: max pass + sleep 3 s + "
                         f"curl timeout 1 s = {o['pass_max'] + ORIGINAL_SLEEP + TIMEOUT:.1f} s; a server switched to hung at "
                         f"{o['frozen_at']}: " + ("loop frozen, no ipvsadm call for "
                                                  f"{args.freeze_bound:g} s" if o["frozen"] else "not frozen") + ".")
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------- main

def enter_netns():
    """Re-run this script inside a new network namespace with its own loopback."""
    if os.environ.get("BENCH_NETNS") == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    if os.geteuid() != 0 or not shutil.which("unshare"):
        sys.exit("bench: needs root and unshare (util-linux): it runs in its own network and PID namespaces")
    os.environ["BENCH_NETNS"] = "1"
    os.execvp("unshare", ["unshare", "--net", "--", PY, os.path.abspath(__file__), *sys.argv[1:]])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default=None, help="comma-separated numbers of real servers (default 10,100,1000; "
                                                  "--quick: 10,100)")
    parser.add_argument("--quick", action="store_true", help="short windows, fewer samples (about 3 minutes)")
    parser.add_argument("--monitor", default=os.path.join(REPO, "monitor_rs.py"))
    parser.add_argument("--original", default="/work/shared/reference/monitorRS.sh")
    parser.add_argument("--fake", default=os.path.join(REPO, "tests", "fake_ipvsadm.py"))
    parser.add_argument("--freeze-bound", type=float, default=None,
                        help="seconds without progress that count as frozen (default 60; --quick 20)")
    parser.add_argument("--window", type=float, default=None, help="seconds of steady state measured (default 24)")
    parser.add_argument("--samples", type=int, default=None, help="detections per failure kind (default 3)")
    parser.add_argument("--orig-budget", type=float, default=240,
                        help="measure the original's passes for at most this many seconds; a pass that does "
                             "not end by then is extrapolated from the servers done (default 240)")
    parser.add_argument("--skip-original", action="store_true")
    parser.add_argument("--stress", action="store_true",
                        help="only monitor_rs, mix A, pinned to CPU 0 with a busy loop beside it: do healthy "
                             "servers get removed when it has half a core? (prints, no results.md)")
    parser.add_argument("--profile", action="store_true",
                        help="only monitor_rs, mix B, sampled by py-spy (pip install py-spy) for the window: "
                             "writes bench/profile-nN.txt, no results.md")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--out", default=os.path.join(HERE, "results.md"))
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, call logs)")
    args = parser.parse_args()
    args.command = ["python3", "bench/run.py", *sys.argv[1:]]
    ns = [int(x) for x in (args.n or ("10,100" if args.quick else "10,100,1000")).split(",")]
    args.freeze_bound = args.freeze_bound or (20.0 if args.quick else 60.0)
    window = args.window or (10.0 if args.quick else 24.0)
    samples = args.samples or (1 if args.quick else 3)
    window_a = 9.0 if args.quick else 15.0
    for path in (args.monitor, args.original, args.fake):
        if not os.path.exists(path):
            sys.exit(f"bench: {path} not found")
    for tool in ("curl", "nsenter", "ip"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found (apt-get install curl util-linux iproute2)")

    args.monitor_help = subprocess.run([PY, args.monitor, "--help"], capture_output=True, text=True).stdout
    with open(args.monitor, "rb") as handle:
        args.monitor_sha = __import__("hashlib").sha256(handle.read()).hexdigest()[:12]
    git = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(args.monitor)), "log", "-1",
                          "--format=%h %s", "--", os.path.basename(args.monitor)], capture_output=True, text=True)
    args.monitor_commit = git.stdout.strip()
    enter_netns()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    info = machine()
    workdir = tempfile.mkdtemp(prefix="monitor_rs-bench-")
    rng = random.Random(args.seed)
    results = {}
    try:
        for n in ns:
            say(f"N={n}: starting {n} servers")
            bench = Bench(n, workdir, args)
            results[n] = {"counts": bench.counts}
            try:
                if args.stress:
                    say(f"N={n}: monitor_rs, mix A, on CPU 0 beside a busy loop (window {window:g} s)")
                    r = run_monitor(bench, bench.mix_a, "stress", window, 0, rng, args)
                    say(f"N={n} stress: passes " + ", ".join(f"{d:.2f}" for d in r["durations"])
                        + f" s; healthy servers wrongly removed: {r['false_removals']} "
                        f"(of {sum(m == 'ok' for m in bench.mix_a.values())}); ipvsadm calls after warm-up: "
                        f"{r['ipvsadm_total']}")
                    continue
                say(f"N={n}: monitor_rs, mix B (window {window:g} s, {samples} detections per kind)")
                results[n]["monitor_b"] = run_monitor(bench, bench.mix_b, "mixB", window, samples, rng, args)
                if args.profile:
                    continue
                say(f"N={n}: monitor_rs, mix A (window {window_a:g} s)")
                results[n]["monitor_a"] = run_monitor(bench, bench.mix_a, "mixA", window_a, 0, rng, args)
                if not args.skip_original:
                    say(f"N={n}: the original, mix B, then a hung server")
                    results[n]["original"] = run_original(bench, window, 3 if n >= 100 else 2, rng, args)
            finally:
                bench.close()
            say(f"N={n}: done")
    finally:
        stop_everything()
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.stress:
        return
    if args.profile:
        for n, r in results.items():
            say(f"N={n}: profile in bench/profile-n{n}.txt; pass CPU (own, median) "
                f"{r['monitor_b']['pass_cpu_med'] * 1000:.0f} ms")
        return
    with open("/proc/loadavg") as handle:
        info["load_end"] = " ".join(handle.read().split()[:3])
    rows = build_rows(results, args)
    text = render(results, rows, info, args, time.time() - T_START)
    with open(args.out, "w") as handle:
        handle.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as handle:
        json.dump({"machine": info, "results": results}, handle, indent=1, default=str)
    print(text)


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_everything()
