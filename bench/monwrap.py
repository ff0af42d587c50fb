#!/usr/bin/env python3
"""Run monitor_rs.py unchanged, timing each pass.

Loads monitor_rs.py (path in $BENCH_MONITOR) as the module ``monitor_rs``,
wraps ``Monitor.run_pass`` and ``Signals.sleep`` so that every pass appends
one line ``<start> <end of run_pass> <end of the cycle> <CPU s>`` to
$BENCH_PASS_LOG (epoch seconds; the cycle ends when the loop goes to sleep, so
it includes what the loop does after run_pass, e.g. writing a state file; CPU
is this process's, over the cycle), then calls its CLI with this process's arguments. With
$BENCH_CPROFILE set, the cycles from the third on run under cProfile, its stats written to that
path after each (the passes are then slower: their times are not figures). With
$BENCH_PROC_IP_VS set, the table is read from that file instead of /proc/net/ip_vs; with
$BENCH_PROC_FROM_STATE (the fake's state file), from that table printed as the kernel's file
at each read (the rendering is charged to the monitor: a few ms for 1000 destinations). Nothing
else is changed: same process, same code path as ``python3 monitor_rs.py``.
"""

import importlib.util
import os
import sys
import time

path = os.environ["BENCH_MONITOR"]
spec = importlib.util.spec_from_file_location("monitor_rs", path)
module = importlib.util.module_from_spec(spec)
sys.modules["monitor_rs"] = module
spec.loader.exec_module(module)

log_fd = os.open(os.environ["BENCH_PASS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
original_run_pass = module.Monitor.run_pass


pending = []  # the pass that ran, until the loop goes to sleep
profiler, cycles = None, [0]
if os.environ.get("BENCH_CPROFILE"):  # cProfile of each cycle from the third on, dumped there after each
    import cProfile
    profiler = cProfile.Profile()


gc_time = [0.0, 0.0, 0, None]  # seconds in the collector this cycle, when the current collection began, collections
if os.environ.get("BENCH_GC"):  # the collector's time per cycle: a line "<start> <seconds> <full collections>" there
    import gc

    def gc_timer(phase, info):
        if phase == "start":
            gc_time[1] = time.thread_time()
        else:
            gc_time[0] += time.thread_time() - gc_time[1]
            gc_time[2] += info["generation"] == 2
    gc.callbacks.append(gc_timer)


def timed_run_pass(self):
    if profiler is not None and cycles[0] >= 2:
        profiler.enable()
    start, cpu = time.time(), time.process_time()
    try:
        return original_run_pass(self)
    finally:
        pending[:] = [start, time.time(), cpu]
        if not hasattr(module, "Signals"):
            timed_sleep(None, 0)


def timed_sleep(self, seconds):
    """The loop sleeps: the pass, and whatever it does after (publishing), is over."""
    if pending:
        start, end, cpu = pending
        del pending[:]
        now = time.time()
        os.write(log_fd, f"{start:.6f} {end:.6f} {now:.6f} {time.process_time() - cpu:.6f}\n".encode())
        if os.environ.get("BENCH_GC_FREEZE") and not gc_time[3]:  # an experiment: gc.freeze() after the first cycle
            import gc
            gc_time[3] = gc.get_count()
            gc.freeze()
        if os.environ.get("BENCH_GC"):
            with open(os.environ["BENCH_GC"], "a") as handle:
                handle.write(f"{start:.6f} {gc_time[0]:.6f} {gc_time[2]}\n")
            gc_time[0] = gc_time[2] = 0
        if profiler is not None:
            profiler.disable()
            cycles[0] += 1
            if cycles[0] > 2:
                profiler.dump_stats(os.environ["BENCH_CPROFILE"])
    if self is not None:
        return original_sleep(self, seconds)


if hasattr(module, "Signals"):
    original_sleep = module.Signals.sleep
    module.Signals.sleep = timed_sleep
module.Monitor.run_pass = timed_run_pass
if os.environ.get("BENCH_PROC_IP_VS"):  # a synthetic /proc/net/ip_vs (bench/scale.py): read instead of the kernel's
    module.PROC_IP_VS = os.environ["BENCH_PROC_IP_VS"]
if os.environ.get("BENCH_PROC_FROM_STATE"):  # /proc/net/ip_vs as the kernel would show the fake's table at each read
    import json

    def proc_of_state(path=None):
        """The fake's JSON table (IPv4 address services) printed as ip_vs_info_seq_show prints it, parsed."""
        hexa = lambda ip, port: "%08X:%04X" % (int.from_bytes(bytes(int(x) for x in ip.split(".")), "big"), port)
        with open(os.environ["BENCH_PROC_FROM_STATE"]) as handle:
            state = json.load(handle)
        lines = ["IP Virtual Server version 1.2.1 (size=4096)", "Prot LocalAddress:Port Scheduler Flags",
                 "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn"]
        for svc in state["services"]:
            lines.append(f"{svc['protocol']:<4} {hexa(svc['addr'], svc['port'])} {svc['scheduler']} ")
            lines += [f"  -> {hexa(d['addr'], d['port'])}      {d['forward']:<7} {d['weight']:<6} 0          0         "
                      for d in svc["dests"]]
        return module.parse_proc("\n".join(lines) + "\n")
    module.read_proc = proc_of_state
sys.argv[0] = path
module.main()
