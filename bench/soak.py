#!/usr/bin/env python3
"""Soak test: monitor_rs against many real servers flapping at random, for a long time.

    python3 bench/soak.py                       # 1000 servers, 30 minutes
    python3 bench/soak.py --minutes 3 --servers 200 --up-mean 60 --down-mean 20

Not run in CI.  What it does:

- starts `--servers` HTTP servers on loopback (127.1.x.y:8080, one address each),
  split over `--services` virtual services; each server alternates between up
  (HTTP 200) and down (refused, HTTP 503 or hung: drawn at random per outage)
  for random durations (exponential, means `--up-mean` and `--down-mean` s);
- runs monitor_rs.py as a daemon against tests/fake_ipvsadm.py (the table in a
  JSON file, every ipvsadm run logged with its argv and time);
- samples the monitor's RSS (VmRSS, VmHWM) and open descriptors every
  `--sample` s;
- every `--checkpoint` minutes, and at the end, freezes the servers, lets the
  monitor settle, and checks that the table holds exactly the servers that are
  up: every state change was applied;
- checks that no healthy server was ever removed: for each `ipvsadm -d`, the
  server must not have been up during the whole time from the start of that
  pass's listing to the removal (the probe that condemned it lies in between);
- prints a summary table; exit status 0 when every check held, 1 otherwise.

Traffic stays on 127.0.0.0/8.  Needs Python 3.9+ (standard library only) and
enough descriptors (the limit is raised to the hard limit).
"""

import argparse
import asyncio
import bisect
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MONITOR = os.path.join(ROOT, "monitor_rs.py")
FAKE = os.path.join(ROOT, "tests", "fake_ipvsadm.py")
PORT = 8080
DOWN_KINDS = ("refused", "http503", "hang")


def address(index):
    return f"127.1.{index // 250}.{index % 250 + 1}"


class Farm:
    """The real servers, all served by one asyncio loop in a thread; their timeline is kept."""

    def __init__(self, count, up_mean, down_mean, seed):
        self.count, self.up_mean, self.down_mean = count, up_mean, down_mean
        self.rng = random.Random(seed)
        self.up = [self.rng.random() < up_mean / (up_mean + down_mean) for _ in range(count)]
        self.kind = ["refused"] * count  # how a down server fails
        self.timeline = [[] for _ in range(count)]  # [(wall time, up)]
        self.listeners = [None] * count
        self.flips = 0
        self.probes = 0
        self.frozen = None  # asyncio.Event, set while flapping is allowed
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda loop, context: None)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self):
        self.thread.start()
        self.call(self._start())

    def call(self, coro, timeout=120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self):
        self.frozen = asyncio.Event()
        self.frozen.set()
        now = time.time()
        for i in range(self.count):
            self.timeline[i].append((now, self.up[i]))
            if self.up[i]:
                await self._listen(i)
        self.tasks = [asyncio.ensure_future(self._flap(i)) for i in range(self.count)]

    async def _listen(self, i):
        if self.listeners[i] is None:
            self.listeners[i] = await asyncio.start_server(lambda r, w, i=i: self._serve(i, r, w),
                                                           address(i), PORT, backlog=64)

    async def _unlisten(self, i):
        server, self.listeners[i] = self.listeners[i], None
        if server is not None:
            server.close()

    async def _serve(self, i, reader, writer):
        self.probes += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            if self.up[i]:
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            elif self.kind[i] == "http503":
                writer.write(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            else:  # hang (or refused, caught between two states): say nothing until the prober goes
                while await reader.read(4096):
                    pass
            await writer.drain()
        except Exception:
            pass
        finally:
            writer.close()

    async def _flap(self, i):
        while True:
            mean = self.up_mean if self.up[i] else self.down_mean
            await asyncio.sleep(self.rng.expovariate(1.0 / mean))
            await self.frozen.wait()
            await self._set(i, not self.up[i])

    async def _set(self, i, up):
        if up:
            await self._listen(i)
        else:
            self.kind[i] = self.rng.choice(DOWN_KINDS)
            if self.kind[i] == "refused":
                await self._unlisten(i)
            else:
                await self._listen(i)
        self.up[i] = up
        self.timeline[i].append((time.time(), up))
        self.flips += 1

    def freeze(self):
        self.loop.call_soon_threadsafe(self.frozen.clear)

    def thaw(self):
        self.loop.call_soon_threadsafe(self.frozen.set)

    def up_now(self):
        return list(self.up)

    def up_throughout(self, i, begin, end):
        """Whether server i was up during the whole [begin, end]."""
        times = [t for t, _ in self.timeline[i]]
        at = bisect.bisect_right(times, begin) - 1
        if at < 0:
            return False
        if not self.timeline[i][at][1]:
            return False
        return all(up for t, up in self.timeline[i][at + 1:] if t <= end)

    def stop(self):
        async def shut():
            for task in self.tasks:
                task.cancel()
            for i in range(self.count):
                await self._unlisten(i)
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        try:
            self.call(shut(), 30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def proc_sample(pid):
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                values[key] = int(rest.split()[0])
    values["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return values


class Soak:
    def __init__(self, args):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="monitor_rs-soak-")
        self.state = os.path.join(self.dir, "ipvs-state.json")
        self.calls = os.path.join(self.dir, "ipvsadm-calls.jsonl")
        self.log = os.path.join(self.dir, "monitorRS.log")
        self.services = [f"127.0.0.1:{8000 + s}" for s in range(args.services)]
        self.service_of = [i % args.services for i in range(args.servers)]
        self.farm = Farm(args.servers, args.up_mean, args.down_mean, args.seed)
        self.samples = []  # (elapsed s, {VmRSS, VmHWM, Threads, fds})
        self.checkpoints = []  # (elapsed s, settled in s or None, mismatches)
        self.proc = None

    # ---------------------------------------------------------------- setup

    def write_files(self):
        wrapper = os.path.join(self.dir, "ipvsadm")
        with open(wrapper, "w") as handle:
            handle.write(f"#!/bin/sh\nFAKE_IPVSADM_STATE='{self.state}' FAKE_IPVSADM_CALLS='{self.calls}' "
                         f"exec '{sys.executable}' -S '{FAKE}' \"$@\"\n")
        os.chmod(wrapper, 0o755)
        self.wrapper = wrapper
        # The table as it would be after a first pass: the servers that are up, in.
        up = self.farm.up_now()
        state = {"services": []}
        for s, vip in enumerate(self.services):
            dests = [{"af": 4, "addr": address(i), "port": PORT, "forward": "Masq", "weight": 1,
                      "activeconns": 0, "inactconns": 0}
                     for i in range(self.args.servers) if self.service_of[i] == s and up[i]]
            state["services"].append({"fwmark": 0, "af": 4, "protocol": "TCP", "addr": "127.0.0.1",
                                      "port": 8000 + s, "scheduler": "wrr", "sched_flags": [], "timeout": None,
                                      "netmask": 4294967295, "dests": dests})
        with open(self.state, "w") as handle:
            json.dump(state, handle)
        lines = [f"[monitor]\ninterval = {self.args.interval}\ntimeout = {self.args.timeout}\n"
                 f"ipvsadm_timeout = 30\n"]
        for s, vip in enumerate(self.services):
            servers = [f"{address(i)}:{PORT}" for i in range(self.args.servers) if self.service_of[i] == s]
            lines.append(f"\n[virtual soak{s}]\nvip = 127.0.0.1\nvport = {8000 + s}\ntype = m\n"
                         f"rs = {' '.join(servers)}\nrw = {' '.join('1' for _ in servers)}\n")
        self.config = os.path.join(self.dir, "monitorRS.conf")
        with open(self.config, "w") as handle:
            handle.write("".join(lines))

    def start_monitor(self):
        argv = [sys.executable, MONITOR, "--config", self.config, "--ipvsadm", self.wrapper, "--log-file", self.log,
                "--lock-file", os.path.join(self.dir, "monitor.lock")]
        help_text = subprocess.run([sys.executable, MONITOR, "--help"], capture_output=True, text=True).stdout
        if "--state-file" in help_text:
            argv += ["--state-file", os.path.join(self.dir, "monitor.state.json")]
        self.out = open(os.path.join(self.dir, "monitor.out"), "w")
        self.err = open(os.path.join(self.dir, "monitor.err"), "w")
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=self.err)

    # ------------------------------------------------------------- checking

    def table(self):
        with open(self.state) as handle:
            state = json.load(handle)
        present = set()
        for svc in state["services"]:
            for d in svc["dests"]:
                present.add(f"{d['addr']}:{d['port']}")
        return present

    def expected(self):
        up = self.farm.up_now()
        return {f"{address(i)}:{PORT}" for i in range(self.args.servers) if up[i]}

    def checkpoint(self, started):
        """Freeze the servers, wait until the table matches, thaw; record how long it took."""
        self.farm.freeze()
        time.sleep(0.2)  # a flip under way lands
        want = self.expected()
        frozen_at = time.monotonic()
        settled, diff = None, set()
        while time.monotonic() - frozen_at < self.args.settle:
            have = self.table()
            diff = have ^ want
            if not diff:
                settled = time.monotonic() - frozen_at
                break
            time.sleep(0.2)
        self.checkpoints.append((time.monotonic() - started, settled, sorted(diff)[:5], len(diff)))
        self.farm.thaw()
        return settled is not None

    def read_calls(self):
        calls = []
        with open(self.calls) as handle:
            for line in handle:
                if line.strip():
                    try:
                        calls.append(json.loads(line))
                    except ValueError:
                        pass
        return calls

    def analyse(self):
        calls = self.read_calls()
        index = {f"{address(i)}:{PORT}": i for i in range(self.args.servers)}
        last_listing = {}
        wrongful, removals, additions = [], 0, 0
        listings = {vip: [] for vip in self.services}
        removal_times, addition_times = {}, {}
        for call in calls:
            argv, t = call["argv"], call["t"]
            if argv[:1] == ["-Ln"] and len(argv) >= 3:
                last_listing[argv[2]] = t
                listings.setdefault(argv[2], []).append(t)
            elif argv[:1] == ["-d"]:
                removals += 1
                server, vip = argv[4], argv[2]
                removal_times.setdefault(server, []).append(t)
                begin = last_listing.get(vip)
                i = index.get(server)
                if begin is not None and i is not None and self.farm.up_throughout(i, begin, t):
                    wrongful.append((server, t - begin))
            elif argv[:1] == ["-a"]:
                additions += 1
                addition_times.setdefault(argv[4], []).append(t)
        # Reaction: from a flip to the change that follows it (before the next flip).
        reaction = {"down": [], "up": []}
        missed = 0
        for i in range(self.args.servers):
            server = f"{address(i)}:{PORT}"
            line = self.farm.timeline[i]
            for n, (t, up) in enumerate(line[1:], 1):
                until = line[n + 1][0] if n + 1 < len(line) else float("inf")
                times = addition_times.get(server, []) if up else removal_times.get(server, [])
                after = [x for x in times if t <= x < until]
                if after:
                    reaction["up" if up else "down"].append(after[0] - t)
                else:
                    missed += 1
        vip = self.services[0]
        gaps = [b - a for a, b in zip(listings[vip], listings[vip][1:])]
        return {"calls": len(calls), "removals": removals, "additions": additions, "wrongful": wrongful,
                "reaction": reaction, "missed": missed, "passes": len(listings[vip]), "pass_gaps": gaps}

    # ------------------------------------------------------------------ run

    def run(self):
        args = self.args
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.farm.start()
        self.write_files()
        self.start_monitor()
        started = time.monotonic()
        end = started + args.minutes * 60
        next_sample = next_report = next_checkpoint = started
        next_checkpoint += args.checkpoint * 60
        print(f"soak: {args.servers} servers in {args.services} services, {args.minutes:g} min, up/down mean "
              f"{args.up_mean:g}/{args.down_mean:g} s, interval {args.interval:g} s, timeout {args.timeout:g} s; "
              f"files in {self.dir}", flush=True)
        try:
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    print(f"soak: the monitor died (exit {self.proc.returncode})", flush=True)
                    break
                now = time.monotonic()
                if now >= next_sample:
                    if now - started >= 2 * args.interval + 3:  # from after the first passes on
                        self.samples.append((now - started, proc_sample(self.proc.pid)))
                    next_sample += args.sample
                if now >= next_report:
                    s = self.samples[-1][1] if self.samples else None
                    memory = f"RSS {s['VmRSS'] / 1024:6.1f} MiB  fds {s['fds']:5}" if s else "RSS      - MiB  fds     -"
                    print(f"  {now - started:7.0f} s  flips {self.farm.flips:6}  probes {self.farm.probes:8}  "
                          f"{memory}", flush=True)
                    next_report += 60
                if now >= next_checkpoint and now < end - args.checkpoint * 30:
                    ok = self.checkpoint(started)
                    print(f"  checkpoint at {now - started:.0f} s: {'table matches' if ok else 'MISMATCH'}",
                          flush=True)
                    next_checkpoint += args.checkpoint * 60
                time.sleep(0.2)
            alive = self.proc.poll() is None
            if alive:
                self.samples.append((time.monotonic() - started, proc_sample(self.proc.pid)))
                self.checkpoint(started)
        finally:
            code = None
            if self.proc and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    code = self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    code = "killed"
            elif self.proc:
                code = self.proc.returncode
            self.farm.stop()
        return self.summary(code, time.monotonic() - started)

    def summary(self, code, elapsed):
        a = self.analyse()
        with open(self.err.name) as handle:
            err = handle.read()
        with open(self.log) as handle:
            log = handle.read()
        rss = [s["VmRSS"] / 1024 for _, s in self.samples]
        hwm = max((s["VmHWM"] for _, s in self.samples), default=0) / 1024
        fds = [s["fds"] for _, s in self.samples]
        warm = [v for (t, _), v in zip(self.samples, rss) if t >= elapsed * 0.1] or rss
        growth = (warm[-1] - warm[0]) if warm else 0.0
        matched = sum(1 for c in self.checkpoints if c[1] is not None)
        problems = log.count("pass failed") + err.count("Traceback")

        def stats(values):
            if not values:
                return "-"
            values = sorted(values)
            p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
            return f"median {statistics.median(values):.2f} s, p95 {p95:.2f} s, max {values[-1]:.2f} s"

        gaps = a["pass_gaps"]
        rows = [
            ("duration", f"{elapsed / 60:.1f} min"),
            ("servers / services", f"{self.args.servers} / {self.args.services}"),
            ("state changes of the servers (flips)", f"{self.farm.flips}"),
            ("probes answered by the servers", f"{self.farm.probes}"),
            ("passes (service 0) / pass period", f"{a['passes']} / " + (
                f"median {statistics.median(gaps):.2f} s, max {max(gaps):.2f} s" if gaps else "-")),
            ("ipvsadm runs / adds / removals", f"{a['calls']} / {a['additions']} / {a['removals']}"),
            ("reaction to a server going down", stats(a["reaction"]["down"])),
            ("reaction to a server coming up", stats(a["reaction"]["up"])),
            ("flips with no change (flapped back before a pass saw it)", f"{a['missed']}"),
            ("healthy servers removed", f"{len(a['wrongful'])}" + (f": {a['wrongful'][:3]}" if a["wrongful"] else "")),
            ("checkpoints: table == servers up", f"{matched} / {len(self.checkpoints)}" + "".join(
                f"; at {t:.0f} s settled in {s:.1f} s" if s is not None else f"; at {t:.0f} s {n} differ: {d}"
                for t, s, d, n in self.checkpoints)),
            ("RSS (VmRSS) min / max / last", f"{min(rss, default=0):.1f} / {max(rss, default=0):.1f} / "
                                             f"{(rss or [0])[-1]:.1f} MiB; VmHWM {hwm:.1f} MiB"),
            ("RSS growth after warm-up (10%)", f"{growth:+.1f} MiB"),
            ("open descriptors min / max / last", f"{min(fds, default=0)} / {max(fds, default=0)} / "
                                                  f"{(fds or [0])[-1]}"),
            ("FAILED changes logged / pass failures + tracebacks", f"{log.count(' FAILED ')} / {problems}"),
            ("monitor exit on SIGTERM", f"{code}"),
        ]
        width = max(len(k) for k, _ in rows)
        print("\nsoak summary")
        print("-" * (width + 60))
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
        print("-" * (width + 60))
        ok = (code == 0 and matched == len(self.checkpoints) and self.checkpoints and not a["wrongful"]
              and problems == 0 and growth < self.args.max_growth and max(fds, default=0) < self.args.servers + 300)
        print("verdict:", "PASS" if ok else "FAIL", flush=True)
        if self.args.json:
            with open(self.args.json, "w") as handle:
                json.dump({"rows": rows, "ok": bool(ok), "samples": self.samples,
                           "checkpoints": self.checkpoints}, handle, indent=1)
        return 0 if ok else 1

    def cleanup(self):
        for handle in (getattr(self, "out", None), getattr(self, "err", None)):
            if handle:
                handle.close()
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    parser.add_argument("--servers", type=int, default=1000, help="real servers (default 1000)")
    parser.add_argument("--services", type=int, default=10, help="virtual services (default 10)")
    parser.add_argument("--up-mean", type=float, default=600.0, help="mean seconds a server stays up (default 600)")
    parser.add_argument("--down-mean", type=float, default=120.0, help="mean seconds a server stays down (120)")
    parser.add_argument("--interval", type=float, default=1.0, help="monitor interval (default 1)")
    parser.add_argument("--timeout", type=float, default=1.0, help="monitor probe timeout (default 1)")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS/fd samples (default 5)")
    parser.add_argument("--checkpoint", type=float, default=10.0,
                        help="minutes between freeze-and-compare checkpoints (default 10); one more at the end")
    parser.add_argument("--settle", type=float, default=120.0, help="seconds allowed to settle at a checkpoint")
    parser.add_argument("--max-growth", type=float, default=20.0, help="RSS growth (MiB) that fails the soak")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--json", metavar="PATH", help="also write the summary and samples as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (log, call log, table)")
    args = parser.parse_args()
    if args.servers > 250 * 250:
        parser.error("at most 62500 servers")
    soak = Soak(args)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return soak.run()
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        soak.cleanup()
        if args.keep:
            print(f"soak: files kept in {soak.dir}")


if __name__ == "__main__":
    sys.exit(main())
