#!/usr/bin/env python3
"""Scale bench: a mass failure at 1000 real servers, and 10,000 real servers on one director.

    python3 bench/scale.py                          # everything (about 6 minutes)
    python3 bench/scale.py --only mass --samples 1  # one part: mass, steady, stress, profile, proc
    python3 bench/scale.py --services 100 --per 100 # 10,000 as 100 services of 100

Needs root (its own network namespace: all traffic on that namespace's loopback),
util-linux (unshare, taskset), iproute2 (ip); --only profile needs py-spy. Python 3.9+
standard library only. See bench/scale.md for what it measures and the last results.

Parts:
  mass     1000 servers (10 services x 100), interval 1 s, timeout 1 s; 500 of them (50 per
           service) die at once, refusing, then (another sample) hanging: the time from the
           switch (the servers' process says when it is done) until the fake ipvsadm's state
           file holds exactly the 500 alive, polled every 10 ms.  Then they come back: the
           time until all 1000 are in again.
  steady   --services x --per servers (default 10 x 1000), all healthy, interval 1 s,
           timeout 1 s: pass time, CPU per pass, VmRSS/VmHWM, open descriptors (peak, sampled
           every 50 ms), ipvsadm calls, healthy servers failed (probe results in monitor_rs's
           state file, destinations in the fake's).
  stress   steady, with monitor_rs pinned to CPU 0 beside a busy loop (bench/run.py --stress).
  profile  steady, sampled by py-spy (wall clock, idle included): where a pass's time goes.
  proc     read_proc of a synthetic /proc/net/ip_vs of as many destinations (what a pass
           reads instead of the fake's ipvsadm -Ln per service when ipvsadm is the system's).
  massproc mass, with the table read as from /proc/net/ip_vs (the fake's table printed as the
           kernel prints it, at each read): the changes still through the fake's -R.

The servers are bench/servers.py (one asyncio process, port 80 of 127.1.x.y); the fake
ipvsadm is tests/fake_ipvsadm.py behind bench/run.py's logging wrapper; monitor_rs.py runs
unchanged through bench/monwrap.py (a line per pass: start, end of run_pass, end of cycle, CPU).
"""

import argparse
import collections
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import run as rb  # noqa: E402  (bench/run.py: spawn, stop, the ipvsadm wrapper, Tail, machine)

PY = sys.executable
INTERVAL, TIMEOUT = 1.0, 1.0
VIP, RPORT, VPORT0 = "127.0.0.1", 80, 8000
REAL_CALL = 0.002  # seconds: one call of ipvsadm 1.31 (bench/README.md: about 1-2 ms), for the estimate
PER_PROCESS = 2000  # servers per servers.py process: its listeners and as many connections at once,
                   # under an open-file limit of 20,000 that this container's root cannot raise
say = rb.say


def addr(i):
    return f"127.1.{i // 250}.{i % 250 + 1}"


def med(xs):
    return statistics.median(xs) if xs else None


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None


def loadavg():
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def table_of(path):
    """{(vport, ip): weight} of the fake's state file (None while it is being replaced)."""
    try:
        with open(path) as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        return None
    return {(s["port"], d["addr"]): d["weight"] for s in state["services"] for d in s["dests"]}


class World:
    """Servers, the fake's table, the config and one monitor_rs run, for one layout."""

    def __init__(self, workdir, label, services, per, args, check="http"):
        self.dir = os.path.join(workdir, label)
        os.makedirs(os.path.join(self.dir, "bin"))
        self.args, self.services, self.per = args, services, per
        self.n = services * per
        self.addrs = [addr(i) for i in range(self.n)]
        self.vport = {ip: VPORT0 + i // per for i, ip in enumerate(self.addrs)}
        self.state = os.path.join(self.dir, "ipvs-state.json")
        self.wlog = os.path.join(self.dir, "ipvsadm-calls.jsonl")
        self.ipvsadm = os.path.join(self.dir, "bin", "ipvsadm")
        with open(self.ipvsadm, "w") as handle:
            handle.write(rb.WRAPPER.format(python=PY, state=self.state, calls=os.path.join(self.dir, "fake.jsonl"),
                                           fake=args.fake, wlog=self.wlog))
        os.chmod(self.ipvsadm, 0o755)
        # -g (Route): ipvsadm stores a destination with the service's port, whatever rport says
        state = {"services": [{
            "fwmark": 0, "af": 4, "protocol": "TCP", "addr": VIP, "port": VPORT0 + s, "scheduler": "wrr",
            "sched_flags": [], "timeout": 0, "netmask": 4294967295, "ops": False,
            "dests": [{"af": 4, "addr": ip, "port": VPORT0 + s, "forward": "Route", "weight": 1, "activeconns": 0,
                       "inactconns": 0} for ip in self.addrs[s * per:(s + 1) * per]]} for s in range(services)]}
        with open(self.state, "w") as handle:
            json.dump(state, handle, indent=1)
        listed = subprocess.run([self.ipvsadm, "-Ln", "-t", f"{VIP}:{VPORT0}"], capture_output=True, text=True)
        if listed.returncode != 0 or addr(0) not in listed.stdout:
            raise RuntimeError(f"the fake does not read the table made for it: {listed.stderr.strip()}")
        os.unlink(self.wlog)
        self.conf = os.path.join(self.dir, "monitor_rs.conf")
        with open(self.conf, "w") as handle:
            handle.write(f"[monitor]\ninterval = {INTERVAL:g}\ntimeout = {TIMEOUT:g}\nipvsadm = {self.ipvsadm}\n")
            for s in range(services):
                ips = self.addrs[s * per:(s + 1) * per]
                handle.write(f"\n[virtual s{s}]\nvip = {VIP}\nvport = {VPORT0 + s}\nrport = {RPORT}\ncheck = {check}\n"
                             f"rs = {' '.join(ips)}\nrw = {' '.join('1' for _ in ips)}\n")
        t = time.time()
        self.herds, self.herd_of = [], {}
        for k in range(0, self.n, PER_PROCESS):
            modes = os.path.join(self.dir, f"modes-{k}.json")
            with open(modes, "w") as handle:
                json.dump({ip: "ok" for ip in self.addrs[k:k + PER_PROCESS]}, handle)
            self.herds.append(rb.spawn([PY, os.path.join(HERE, "servers.py"), modes],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            self.herd_of.update({ip: self.herds[-1] for ip in self.addrs[k:k + PER_PROCESS]})
        for herd in self.herds:
            if not json.loads(herd.stdout.readline() or "{}").get("ready"):
                raise RuntimeError("servers did not start")
        say(f"{label}: {self.n} servers listening ({time.time() - t:.1f} s)")
        self.modes = {ip: "ok" for ip in self.addrs}
        self.monitor = self.hog = None

    def set_modes(self, changes):
        """Switch servers (each process its own, all asked first); the time the last switch was done."""
        asked = []
        for herd in self.herds:
            mine = {ip: m for ip, m in changes.items() if self.herd_of[ip] is herd}
            if mine:
                herd.stdin.write(json.dumps({"set": mine}) + "\n")
                herd.stdin.flush()
                asked.append(herd)
        done = max(json.loads(herd.stdout.readline())["t"] for herd in asked)
        self.modes.update(changes)
        return done

    def proc_file(self):
        """/proc/net/ip_vs as the kernel would print the fake's table now (ip_vs_info_seq_show)."""
        hexa = lambda ip, port: "%08X:%04X" % (int.from_bytes(bytes(int(x) for x in ip.split(".")), "big"), port)
        with open(self.state) as handle:
            state = json.load(handle)
        lines = ["IP Virtual Server version 1.2.1 (size=4096)", "Prot LocalAddress:Port Scheduler Flags",
                 "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn"]
        for svc in state["services"]:
            lines.append(f"TCP  {hexa(svc['addr'], svc['port'])} {svc['scheduler']} ")
            lines += [f"  -> {hexa(d['addr'], d['port'])}      {d['forward']:<7} {d['weight']:<6} 0          0         "
                      for d in svc["dests"]]
        path = os.path.join(self.dir, "ip_vs")
        with open(path, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        return path

    def start_monitor(self, pinned=False, proc=False, live=False):
        self.pass_log = os.path.join(self.dir, "passes.log")
        self.mstate = os.path.join(self.dir, "monitor_rs-state.json")
        argv = [PY, os.path.join(HERE, "monwrap.py"), "--config", self.conf, "--ipvsadm", self.ipvsadm,
                "--log-file", os.path.join(self.dir, "monitor_rs.log"),
                "--lock-file", os.path.join(self.dir, "monitor_rs.lock"), "--state-file", self.mstate]
        if pinned:  # half a core: CPU 0 shared with a busy loop (as bench/run.py --stress)
            argv = ["taskset", "-c", "0", *argv]
            self.hog = rb.spawn(["taskset", "-c", "0", PY, "-c", "while True: pass"])
        env = {"PATH": os.path.join(self.dir, "bin") + ":" + rb.CLEAN_PATH, "HOME": self.dir, "LANG": "C.UTF-8",
               "BENCH_MONITOR": self.args.monitor, "BENCH_PASS_LOG": self.pass_log}
        env["BENCH_GC"] = os.path.join(self.dir, "gc.log")  # the collector's time per cycle (monwrap)
        if os.environ.get("BENCH_GC_FREEZE"):
            env["BENCH_GC_FREEZE"] = "1"
        if self.args.cprofile:  # cProfile of the cycles after the warm-up (bench/monwrap.py)
            os.makedirs(self.args.cprofile, exist_ok=True)
            env["BENCH_CPROFILE"] = os.path.join(self.args.cprofile, os.path.basename(self.dir) + ".prof")
        if proc:  # the table read as with the system's ipvsadm: one read of (a synthetic) /proc/net/ip_vs a pass
            env["BENCH_PROC_IP_VS"] = self.proc_file()
            if live:  # the table changes (mass): the file printed from the fake's table at each read
                env["BENCH_PROC_FROM_STATE"] = self.state
            with open(self.conf) as handle:
                text = handle.read()
            text = text.replace("[monitor]\n", "[monitor]\ntable_source = proc\n", 1)
            with open(self.conf, "w") as handle:
                handle.write(text)
        self.out = open(os.path.join(self.dir, "monitor_rs.out"), "w")
        self.monitor = rb.spawn(argv, stdout=self.out, stderr=subprocess.STDOUT, env=env)
        self.passes = rb.Tail(self.pass_log, rb.parse_pass)
        self.calls = rb.Tail(self.wlog, json.loads)

    def wait_passes(self, count, timeout):
        want = len(self.passes.items) + count
        if not rb.wait_until(lambda: len(self.passes.items) >= want, timeout, 0.05, (self.passes.poll,)):
            raise RuntimeError(f"monitor_rs did not finish {count} pass(es) in {timeout:g} s; see {self.dir}")

    def close(self):
        for proc in (self.hog, self.monitor):
            if proc is not None:
                rb.stop(proc)
        self.hog = self.monitor = None
        for herd in self.herds:
            try:
                herd.stdin.write(json.dumps({"quit": True}) + "\n")
                herd.stdin.flush()
            except OSError:
                pass
            rb.stop(herd, grace=5)


# ------------------------------------------------------------------- mass failure

def settle(world, right, t0, bound):
    """Seconds from t0 until the fake's table equals `right` ({(vport, ip)}, weight > 0), or None."""
    deadline = t0 + bound
    while time.time() < deadline:
        table = table_of(world.state)
        if table is not None and {k for k, w in table.items() if w > 0} == right:
            return time.time() - t0
        time.sleep(0.01)
    return None


def mass(workdir, args, rng, label="mass", proc=False):
    world = World(workdir, label, 10, 100, args)
    result = {"services": 10, "per": 100, "n": 1000, "samples": [], "table": "/proc (from the fake's table)"
              if proc else "fake ipvsadm -Ln", "load_start": loadavg()}
    try:
        world.start_monitor(proc=proc, live=proc)
        world.wait_passes(3, 60)
        everyone = {(world.vport[ip], ip) for ip in world.addrs}
        dying = [ip for s in range(10) for ip in rng.sample(world.addrs[s * 100:(s + 1) * 100], 50)]
        for kind in ("refuse", "hang"):
            for _ in range(args.samples):
                time.sleep(rng.uniform(0, INTERVAL))  # at a random moment of the pass cycle
                world.calls.poll()
                before = len(world.calls.items)
                t0 = world.set_modes({ip: kind for ip in dying})
                out = settle(world, everyone - {(world.vport[ip], ip) for ip in dying}, t0, 30)
                world.calls.poll()
                calls = world.calls.items[before:]
                changes = [c for c in calls if c["argv"][:1] != ["-Ln"]]
                end = t0 + (out or 30)  # the monitor waits for each fake call in turn: time spent inside them
                inside = sum(max(0.0, min(c["t1"], end) - max(c["tstart"], t0)) for c in calls)
                world.passes.poll()
                back = settle(world, everyone, world.set_modes({ip: "ok" for ip in dying}), 30)
                world.calls.poll()
                first = min((c["t0"] for c in changes), default=None)
                last = max((c["t1"] for c in changes), default=None)
                sample = {"kind": kind, "out_s": out, "back_s": back,
                          "inside_fake_s": inside, "calls_in_path": len(calls),
                          "first_change_start_s": None if first is None else first - t0,
                          "last_change_end_s": None if last is None else last - t0,
                          "change_calls": len(changes), "change_kinds": sorted({c["argv"][0] for c in changes}),
                          "change_cpu_s": sum(c["cpu"] for c in changes),
                          "change_wall_s": sum(c["t1"] - c["t0"] for c in changes)}
                result["samples"].append(sample)
                say(f"{label} {kind}: 500 of 1000 out in {out if out is None else round(out, 2)} s "
                    f"({len(changes)} ipvsadm change call(s)), all back in {back if back is None else round(back, 2)} s")
                world.wait_passes(2, 60)
        passes = world.passes.items[2:]
        result["pass_s_median"] = med([p["end"] - p["start"] for p in passes])
        lists = [c for c in world.calls.items if c["argv"][:1] == ["-Ln"]]
        result["fake_list_wall_median_s"] = med([c["t1"] - c["t0"] for c in lists])
        result["fake_list_cpu_median_s"] = med([c["cpu"] for c in lists])
        result["load_end"] = loadavg()
    finally:
        world.close()
    return result


# ---------------------------------------------------------------- 10,000 servers

def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def schedstat(pid):
    """(ns on a CPU, ns waiting in a run queue) of the process's main thread."""
    with open(f"/proc/{pid}/schedstat") as handle:
        run, wait = handle.read().split()[:2]
    return int(run), int(wait)


def steady(workdir, args, label, check, pinned=False, profile=False, proc=False):
    world = World(workdir, label, args.services, args.per, args, check)
    result = {"services": args.services, "per": args.per, "n": world.n, "pinned": pinned, "check": check,
              "table": "/proc (synthetic)" if proc else "fake ipvsadm -Ln", "load_start": loadavg()}
    try:
        world.start_monitor(pinned, proc)
        pid = world.monitor.pid
        world.wait_passes(2, 120)  # warm-up: the first passes start every check fresh
        world.calls.poll()
        calls_before = len(world.calls.items)
        first = len(world.passes.items)
        spy = None
        if profile:
            raw = os.path.join(world.dir, "profile.txt")
            spy = rb.spawn([args.py_spy, "record", "--pid", str(pid), "--idle", "--rate", "50", "--format", "raw",
                            "--output", raw, "--duration", f"{args.window:g}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu0, t0, sched0 = rb.cpu_of(pid), time.time(), schedstat(pid)
        fds, failed, seen_time, smallest = [], [], None, world.n
        while time.time() < t0 + args.window:
            n = fd_count(pid)
            if n is not None:
                fds.append(n)
            snap = rb_read(world.mstate)
            if snap and snap.get("time") != seen_time:
                seen_time = snap["time"]
                rows = [r for s in snap["services"] for r in s["servers"]]
                failed.append({"time": seen_time, "pass_s": snap["pass_seconds"], "rows": len(rows),
                               "failed": sum(r["probe"] != "ok" for r in rows),
                               "reasons": dict(collections.Counter(r["reason"] for r in rows if r["probe"] != "ok")
                                               .most_common(3))})
            table = table_of(world.state)
            if table is not None:
                smallest = min(smallest, sum(1 for w in table.values() if w > 0))
            time.sleep(0.05)
        cpu1, t1, sched1 = rb.cpu_of(pid), time.time(), schedstat(pid)
        world.passes.poll()
        world.calls.poll()
        passes = [p for p in world.passes.items[first:] if t0 <= p["start"] and p["end"] <= t1]
        calls = [c for c in world.calls.items[calls_before:] if t0 <= c["t0"] < t1]
        lists = [c for c in calls if c["argv"][:1] == ["-Ln"]]
        changes = [c for c in calls if c["argv"][:1] != ["-Ln"]]
        result.update({
            "window_s": t1 - t0, "passes": len(passes),
            "cycle_s": [round(p["end"] - p["start"], 3) for p in passes],
            "run_pass_s": [round(p["end_run_pass"] - p["start"], 3) for p in passes],
            "pass_cpu_s": [round(p["cpu"], 3) for p in passes],
            "own_cpu_per_s": (cpu1[0] - cpu0[0]) / (t1 - t0),
            "children_cpu_per_s": (cpu1[1] - cpu0[1]) / (t1 - t0),
            "vmrss_kb": rb.status_kb(pid, "VmRSS"), "vmhwm_kb": rb.status_kb(pid, "VmHWM"),
            "fds_max": max(fds) if fds else None, "fds_min": min(fds) if fds else None,
            "snapshots": failed, "failed_probes_total": sum(s["failed"] for s in failed),
            "fewest_in_table": smallest, "change_calls": len(changes),
            "listings": len(lists),
            "listings_per_pass": sum(p["start"] <= c["t0"] < p["end"] for p in passes for c in lists) / max(1, len(passes)),
            "fake_list_wall_median_s": med([c["t1"] - c["t0"] for c in lists]),
            "fake_list_cpu_median_s": med([c["cpu"] for c in lists]),
            "fake_list_wall_per_pass_s": sum(c["t1"] - c["tstart"] for p in passes for c in lists
                                             if p["start"] <= c["t0"] < p["end"]) / max(1, len(passes)),
            "load_end": loadavg(),
            "oncpu_share": (sched1[0] - sched0[0]) / 1e9 / (t1 - t0),
            "runqueue_wait_share": (sched1[1] - sched0[1]) / 1e9 / (t1 - t0),
        })
        with open(os.path.join(world.dir, "monitor_rs.log")) as handle:
            log = handle.read().splitlines()
        result["log_removals"] = sum(" removed " in line or "FAILED" in line or " down" in line for line in log)
        result["log_tail"] = log[-5:]
        if spy is not None:
            spy.wait(args.window + 30)
            result["profile"] = summarize_profile(raw)
            shutil.copy(raw, os.path.join(HERE, f"scale-profile-n{world.n}.txt"))
        say(f"{label}: {len(passes)} passes, cycle median {med(result['cycle_s'])} s, max "
            f"{max(result['cycle_s'], default=None)} s; VmHWM {result['vmhwm_kb'] / 1024:.0f} MB; fds max "
            f"{result['fds_max']}; failed probes {result['failed_probes_total']}; fewest in table "
            f"{smallest}; change calls {len(changes)}")
    finally:
        world.close()
    return result


def rb_read(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


# Where a sample is: the first of these met from the top of the stack (outermost first).
BUCKETS = (
    ("listing (ipvsadm -Ln per service)", ("_read ", "read_service", "_listed", "_whole_table", "read_proc")),
    ("probes (probe_all / Wave)", ("probe_all", "_probe_wave", "Wave")),
    ("decision (decide)", ("decide ",)),
    ("changes (carry_out, ipvsadm -R)", ("carry_out", "_apply", "_read_back")),
    ("rest of run_pass (reports, rows)", ("run_pass",)),
    ("state file / snapshot (after the pass)", ("snapshot", "write_atomically", "Publisher", "metrics_text",
                                                "after_pass", "publish")),
    ("idle (sleeping between passes)", ("sleep", "timed_sleep")),
)


# Leaf frames where the monitor waits (a selector, a child process, its sleep) rather than computes.
WAITS = ("Selector.select", "Popen._wait", "Popen._try_wait", "Popen.communicate", "Popen._communicate",
         "Signals.sleep", "timed_sleep", "Event.wait", "Condition.wait")


def summarize_profile(path):
    """Share of py-spy's samples per part of the cycle (from its raw, collapsed stacks): of all
    samples (wall clock), and of those not waiting in a selector, a child or the sleep (computing:
    on a CPU or waiting for one in a run queue)."""
    counts, total = collections.Counter(), 0
    busy, busy_total = collections.Counter(), 0
    funcs = collections.Counter()
    with open(path) as handle:
        for line in handle:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not n.isdigit():
                continue
            n = int(n)
            total += n
            frames = stack.split(";")
            where = "other"
            for name, keys in BUCKETS:
                if any(any(k in f for k in keys) for f in frames):
                    where = name
                    break
            counts[where] += n
            if frames and not any(w in frames[-1] for w in WAITS):
                busy[where] += n
                busy_total += n
                funcs[frames[-1]] += n
    return {"samples": total, "share": {k: round(v / max(1, total), 3) for k, v in counts.most_common()},
            "busy_samples": busy_total,
            "busy_share": {k: round(v / max(1, busy_total), 3) for k, v in busy.most_common()},
            "top_leaves": [(f, round(v / max(1, busy_total), 3)) for f, v in funcs.most_common(12)]}


# ------------------------------------------------------------------- /proc read

def proc(n):
    import procread
    sys.path.insert(0, REPO)
    import monitor_rs as m
    text, _ = procread.tables(n)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "ip_vs")
        with open(path, "w") as handle:
            handle.write(text)
        tables = m.read_proc(path)
        dests = sum(len(t) for t in tables.values())
        t = procread.median(lambda: m.read_proc(path), 1.0)
    return {"destinations": dests, "services": len(tables), "read_proc_median_s": t}


# ------------------------------------------------------------------------ main

def enter_netns():
    """Re-run this script inside a new network namespace with its own loopback (as bench/run.py)."""
    if os.environ.get("BENCH_NETNS") == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    if os.geteuid() != 0 or not shutil.which("unshare"):
        sys.exit("bench: needs root and unshare (util-linux): it runs in its own network namespace")
    os.environ["BENCH_NETNS"] = "1"
    os.execvp("unshare", ["unshare", "--net", "--", PY, os.path.abspath(__file__), *sys.argv[1:]])


def estimate(sample):
    """The mass failure's figure with each ipvsadm call at REAL_CALL instead of the fake's time, plus
    one interval: with the fake the passes run back to back; shorter ones sleep before the next."""
    return sample["out_s"] - sample["inside_fake_s"] + sample["calls_in_path"] * REAL_CALL + INTERVAL


ANALYSIS = "<!-- analysis: by hand, kept by later runs -->"


def render(results, info, args, elapsed):
    r = results
    L = ["# Scale bench: mass failure at 1000, 10,000 servers on one director", "",
         f"Machine: {info['nproc']} CPUs ({info['cpu']}), kernel {info['kernel']}, Python {info['python']}. "
         f"Load average at start {info['load']}, at end {info['load_end']} (a shared machine: other "
         "developers' VMs ran at the same time; read the ratios and counts before the seconds).", "",
         f"Command: `{' '.join(args.command)}` ({elapsed / 60:.1f} min). Interval {INTERVAL:g} s, timeout "
         f"{TIMEOUT:g} s; the mass failure with check = http (a hung server answers the connect), the 10,000 with "
         f"check = {args.check} unless the row says http; real servers on port 80 of 127.1.x.y (bench/servers.py, "
         f"{PER_PROCESS} per process, other processes), fake ipvsadm (tests/fake_ipvsadm.py, a Python process per call) behind bench/run.py's "
         "wrapper; monitor_rs.py through bench/monwrap.py, unchanged.", ""]
    L += ["| figure | measured | target | met |", "|---|---|---|---|"]
    target_mass = INTERVAL + TIMEOUT + 0.5
    masses = [(s, "") for s in r.get("mass", {}).get("samples", [])]
    masses += [(s, ", table from /proc") for s in r.get("massproc", {}).get("samples", [])]
    for s, where in masses:
        v = s["out_s"]
        if v is None:
            L.append(f"| 500 of 1000 {s['kind']}{where}: table right after | never (30 s) | ≤ {target_mass:g} s | NO |")
            continue
        L.append(f"| 500 of 1000 {('refusing' if s['kind'] == 'refuse' else 'hung')}{where}: table right after | "
                 f"{v:.2f} s: first change started after "
                 f"{s['first_change_start_s']:.2f} s; of the whole, {s['inside_fake_s']:.2f} s inside "
                 f"{s['calls_in_path']} fake ipvsadm calls ({s['change_calls']} of them -R), so "
                 f"{v - s['inside_fake_s'] + s['calls_in_path'] * REAL_CALL:.2f} s with calls of "
                 f"{REAL_CALL * 1000:g} ms, at most {estimate(s):.2f} s adding the sleep (up to one interval) "
                 f"that passes shorter than the fake's would have before the next; "
                 f"all back in {s['back_s'] if s['back_s'] is None else round(s['back_s'], 2)} s | "
                 f"≤ {target_mass:g} s | {'yes' if v <= target_mass else 'NO'} (without the fake's time: "
                 f"{'yes' if estimate(s) <= target_mass else 'NO'}) |")
    for key, name in (("steady", "steady"), ("stress", "CPU contended (pinned to CPU 0 with a busy loop)"),
                      ("profile", "under py-spy"), ("steadyproc", "steady, table from /proc"),
                      ("stressproc", "CPU contended, table from /proc"), ("http", "steady")):
        s = r.get(key)
        if not s:
            continue
        name = f"check = {s['check']}, {name}"
        cyc = s["cycle_s"] or [float("nan")]
        s["run_pass_s"] = s["run_pass_s"] or [float("nan")]
        s["pass_cpu_s"] = s["pass_cpu_s"] or [float("nan")]
        lim = TIMEOUT + 0.5
        if not s["passes"]:
            L.append(f"| {s['n']} servers ({s['services']} x {s['per']}), {name}: pass | no pass ended within the "
                     f"{s['window_s']:.0f} s window | ≤ {TIMEOUT + 0.5:g} s | NO |")
        L.append(f"| {s['n']} servers ({s['services']} x {s['per']}), {name}: pass (run_pass to sleep) | "
                 f"median {med(cyc):.2f} s, max {max(cyc):.2f} s over {s['passes']} passes; run_pass alone median "
                 f"{med(s['run_pass_s']):.2f} s | ≤ {lim:g} s | {'yes' if max(cyc) <= lim else 'NO'} |")
        L.append(f"| {name}: RSS | VmRSS {s['vmrss_kb'] / 1024:.0f} MB, VmHWM {s['vmhwm_kb'] / 1024:.0f} MB | "
                 f"< 100 MB | {'yes' if s['vmhwm_kb'] < 100 * 1024 else 'NO'} |")
        L.append(f"| {name}: open descriptors | max {s['fds_max']} (min {s['fds_min']}), sampled every 50 ms | — | |")
        L.append(f"| {name}: CPU | {med(s['pass_cpu_s']):.2f} s per pass (own, median); own {s['own_cpu_per_s']:.2f} "
                 f"CPU-s/s, ipvsadm children {s['children_cpu_per_s']:.2f} CPU-s/s; main thread on a CPU "
                 f"{s.get('oncpu_share', 0) * 100:.0f}% of the time, waiting in a run queue "
                 f"{s.get('runqueue_wait_share', 0) * 100:.0f}% | — | |")
        L.append(f"| {name}: healthy servers failed | {s['failed_probes_total']} failed probe(s) in "
                 f"the state files written in the window; {s['log_removals']} down/removal/FAILED line(s) "
                 f"in the whole log; "
                 f"{len(s['snapshots'])} snapshots; fewest in the table {s['fewest_in_table']} of "
                 f"{s['n']}; {s['change_calls']} ipvsadm change call(s) | 0 | "
                 f"{'yes' if s['failed_probes_total'] == 0 and s['fewest_in_table'] == s['n'] and not s['log_removals'] else 'NO'} |")
    L.append("")
    s = r.get("steady") or r.get("stress")
    p = r.get("proc")
    if s:
        L.append(f"Listing with the fake: {s['listings_per_pass']:.1f} `ipvsadm -Ln -t` per pass, median "
                 f"{s['fake_list_wall_median_s'] * 1000:.0f} ms wall and {s['fake_list_cpu_median_s'] * 1000:.0f} ms "
                 f"CPU each, {s['fake_list_wall_per_pass_s']:.2f} s of wall per pass in all (serial, before the "
                 "probes).")
    if p:
        L.append(f"With the system ipvsadm the pass reads /proc/net/ip_vs once instead: `read_proc` of a synthetic "
                 f"file of {p['destinations']} destinations ({p['services']} services) takes "
                 f"{p['read_proc_median_s'] * 1000:.1f} ms (median).")
    prof = (r.get("profile") or {}).get("profile")
    if prof:
        L += ["", f"Profile (py-spy, {r['profile']['n']} servers, check = {r['profile']['check']}, table through the "
                  f"fake ipvsadm; {prof['samples']} samples, {prof['busy_samples']} of them computing):", "",
              "| part of the cycle | share of all samples (wall) | share of the computing samples |", "|---|---:|---:|"]
        L += [f"| {k} | {v * 100:.0f}% | {prof['busy_share'].get(k, 0) * 100:.0f}% |" for k, v in prof["share"].items()]
        L += ["", "Top leaf frames of the computing samples: "
              + "; ".join(f"`{f}` {v * 100:.0f}%" for f, v in prof["top_leaves"][:10])]
    L.append("")
    return "\n".join(L)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="mass,massproc,steady,stress,profile,proc,http",
                        help="parts to run (http: steady again with check = http; massproc: mass with the table "
                             "read from /proc as the fake's table would print there)")
    parser.add_argument("--check", default="tcp", help="the check of steady, stress and profile (default tcp: "
                                                       "a connect, the servers' side in the kernel alone)")
    parser.add_argument("--samples", type=int, default=2, help="mass failures per kind (refuse, hang)")
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--per", type=int, default=1000)
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured at 10,000")
    parser.add_argument("--monitor", default=os.path.join(REPO, "monitor_rs.py"))
    parser.add_argument("--fake", default=os.path.join(REPO, "tests", "fake_ipvsadm.py"))
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or os.path.join(os.path.dirname(PY), "py-spy"))
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--out", default=os.path.join(HERE, "scale.md"))
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--cprofile", metavar="DIR", help="run monitor_rs under cProfile (after its warm-up), "
                        "writing DIR/<part>.prof; its pass times are then not figures")
    parser.add_argument("--render", action="store_true", help="only write the .md again from the .json")
    args = parser.parse_args()
    if args.render:
        with open(os.path.splitext(args.out)[0] + ".json") as handle:
            raw = json.load(handle)
        args.command, args.check = raw["command"], raw.get("check", args.check)
        write_md(args, render(raw["results"], raw["machine"], args, raw.get("elapsed", 0)))
        return
    args.command = ["python3", "bench/scale.py", *sys.argv[1:]]
    parts = args.only.split(",")
    if "profile" in parts and not os.access(args.py_spy, os.X_OK):
        sys.exit("bench: py-spy not found (pip install py-spy, or --py-spy PATH, or leave out profile)")
    enter_netns()
    info = rb.machine()
    workdir = tempfile.mkdtemp(prefix="monitor_rs-scale-")
    rng = random.Random(args.seed)
    results = {}
    try:
        if "proc" in parts:
            results["proc"] = proc(args.services * args.per)
            say(f"read_proc of {results['proc']['destinations']}: {results['proc']['read_proc_median_s'] * 1000:.1f} ms")
        if "mass" in parts:
            results["mass"] = mass(workdir, args, rng)
        if "massproc" in parts:  # the table read as with the system's ipvsadm: no -Ln process per service
            results["massproc"] = mass(workdir, args, rng, "massproc", proc=True)
        if "steady" in parts:
            results["steady"] = steady(workdir, args, "steady", args.check)
        if "stress" in parts:
            results["stress"] = steady(workdir, args, "stress", args.check, pinned=True)
        if "profile" in parts:
            results["profile"] = steady(workdir, args, "profile", args.check, profile=True)
        if "proc" in parts:
            results["steadyproc"] = steady(workdir, args, "steadyproc", args.check, proc=True)
            results["stressproc"] = steady(workdir, args, "stressproc", args.check, pinned=True, proc=True)
        if "http" in parts:
            results["http"] = steady(workdir, args, "http", "http")
    finally:
        rb.stop_everything()
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    info["load_end"] = loadavg()
    elapsed = time.time() - rb.T_START
    text = render(results, info, args, elapsed)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as handle:
        json.dump({"machine": info, "command": args.command, "check": args.check, "elapsed": elapsed,
                   "results": results}, handle, indent=1, default=str)
    write_md(args, text)
    print(text)


def write_md(args, text):
    try:  # the analysis written by hand below the marker stays (re-read it against the new figures)
        with open(args.out) as handle:
            kept = handle.read().partition(ANALYSIS)
    except OSError:
        kept = ("", "", "")
    with open(args.out, "w") as handle:
        handle.write(text + ("\n" + ANALYSIS + kept[2] if kept[1] else ""))


if __name__ == "__main__":
    try:
        main()
    finally:
        rb.stop_everything()
