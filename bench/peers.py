#!/usr/bin/env python3
"""Side by side on the real kernel: monitor_rs, keepalived, ldirectord and monitorRS.sh.

    python3 bench/peers.py            # boots the VM once, every tool in turn: 15-20 minutes
    python3 bench/peers.py --quick    # 2 fault samples, a 20 s CPU window: about 10 minutes
    python3 bench/peers.py --tools monitor_rs,keepalived --samples 3

On the host it boots the throwaway IPVS VM once through tests/vm/run, which runs
pytest inside on this very file (`test_peers_in_the_vm`, marker `peers`; the
default test run never collects bench/). The guest writes its figures to the
VM's output folder; the host writes bench/peers.json and bench/peers.md.
Use a Python that has pytest, click and rich (e.g. the project's .venv): the
guest runs the bench and monitor_rs with it.

Inside the VM: 40 real servers on port 80 of 127.1.0.1-40 (bench/servers.py, in
a process of its own; 8 of them answer 0.6 s after the request), one virtual
service 127.0.0.1:80 (no traffic is ever sent to it). Each tool in turn starts
on a flushed table in a cgroup of its own, is measured, stopped, and its
cgroup is empty before the next starts. The bench reads /proc/net/ip_vs every
POLL seconds (no process per read), the same for every tool; its own CPU is
outside the tool's cgroup and not counted. See bench/README.md.
"""

import argparse
import datetime
import glob
import importlib.util
import json
import os
import platform
import py_compile
import random
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
VIP, VPORT = "127.0.0.1", 80
N, N_SLOW = 40, 8
ADDRS = [f"127.1.0.{i}" for i in range(1, N + 1)]
SLOW = set(ADDRS[4::5])  # every 5th: 8 servers answering 0.6 s after the request
FAST = [a for a in ADDRS if a not in SLOW]
INTERVAL, TIMEOUT = 1, 1
POLL = 0.05  # the bench's table reads: 20 a second, for every tool
FAULTS = ("refuse", "hang", "500")
TOOLS = ("monitor_rs", "monitor_rs-keepalive", "keepalived", "ldirectord", "monitorRS.sh")
MONITORS = ("monitor_rs", "monitor_rs-keepalive")  # each in a ratio column against keepalived
KEEPALIVE = 10  # monitor_rs-keepalive: `keepalive = 10`, a connection for ten checks
ROWS = (  # (key, label, unit)
    ("start", "start → all 40 in the table", "s"),
    ("cpu", "CPU seconds per minute, steady", ""),
    ("refuse", "refusing server out", "s"),
    ("hang", "hung server out", "s"),
    ("500", "HTTP 500 server out", "s"),
    ("back", "all three back in", "s"),
)


# ------------------------------------------------------------------ guest side

def sh(*argv, check=True):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=check, timeout=30).stdout


def table():
    """{real server address: weight} of VIP:VPORT (TCP), read from /proc/net/ip_vs."""
    want = "%08X:%04X" % (int.from_bytes(bytes(map(int, VIP.split("."))), "big"), VPORT)
    found, inside = {}, False
    with open("/proc/net/ip_vs") as handle:
        for line in handle:
            parts = line.split()
            if line.startswith("  -> ") and inside and len(parts) >= 4 and ":" in parts[1]:
                addr, _ = parts[1].split(":")
                if len(addr) == 8:
                    found[".".join(str(b) for b in bytes.fromhex(addr))] = int(parts[3])
            elif parts and parts[0] in ("TCP", "UDP", "SCTP", "FWM"):
                inside = parts[0] == "TCP" and parts[1] == want
    return found


def live(tab):
    return {a for a, w in tab.items() if w > 0}


def poll_until(predicate, limit, proc=None):
    """Poll the table every POLL s until predicate(live set) holds: the time.time() then, or None
    (also at once if proc, the tool, has exited)."""
    deadline = time.time() + limit
    while True:
        now = time.time()
        if predicate(live(table())):
            return now
        if now > deadline or (proc is not None and proc.poll() is not None):
            return None
        time.sleep(POLL)


class Servers:
    """bench/servers.py in a process of its own; modes switched through its stdin."""

    def __init__(self, work):
        path = os.path.join(work, "modes.json")
        with open(path, "w") as handle:
            json.dump({a: ("slow" if a in SLOW else "ok") for a in ADDRS}, handle)
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "servers.py"), path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if not json.loads(self.proc.stdout.readline()).get("ready"):
            raise RuntimeError("servers.py did not start")

    def set(self, modes):
        self.proc.stdin.write(json.dumps({"set": modes}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["t"]

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(10)


class Group:
    """A cgroup v2 of the tool's own (CPU of the whole tree, and kill-all); else its session."""

    root = None

    @classmethod
    def find_root(cls, work):
        if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            cls.root = "/sys/fs/cgroup"
        else:
            mnt = os.path.join(work, "cgroup2")
            os.makedirs(mnt, exist_ok=True)
            if subprocess.run(["mount", "-t", "cgroup2", "none", mnt]).returncode == 0:
                cls.root = mnt
        return cls.root

    def __init__(self, name):
        self.path = None
        if Group.root:
            self.path = os.path.join(Group.root, "peers-" + name.replace(".", "_"))
            os.makedirs(self.path, exist_ok=True)
        self.sid = None

    def preexec(self):
        os.setsid()
        if self.path:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as handle:
                handle.write(str(os.getpid()))

    def pids(self):
        if self.path:
            with open(os.path.join(self.path, "cgroup.procs")) as handle:
                return [int(p) for p in handle.read().split()]
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as handle:
                        fields = handle.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[3]) == self.sid and fields[0] != "Z":
                    out.append(int(entry))
        return out

    def cpu(self):
        """CPU seconds used so far by the tool's processes, reaped children included."""
        return sum(self.cpu_split())

    def cpu_split(self):
        """(user, system) CPU seconds so far: in the tool's own code, in the kernel for it."""
        if self.path:
            with open(os.path.join(self.path, "cpu.stat")) as handle:
                stat = dict(line.split() for line in handle)
            return int(stat["user_usec"]) / 1e6, int(stat["system_usec"]) / 1e6
        user = system = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                user += int(fields[11]) + int(fields[13])
                system += int(fields[12]) + int(fields[14])
            except OSError:
                pass
        tick = os.sysconf("SC_CLK_TCK")
        return user / tick, system / tick

    def kill(self):
        if self.path and os.path.exists(os.path.join(self.path, "cgroup.kill")):
            with open(os.path.join(self.path, "cgroup.kill"), "w") as handle:
                handle.write("1")
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self):
        if self.path:
            for _ in range(100):
                try:
                    os.rmdir(self.path)
                    return
                except OSError:
                    time.sleep(0.1)


def own_cpu():
    """The bench process's own CPU seconds (its table reads): not counted for any tool."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write(path, text, mode=0o644):
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)
    return path


def install_monitor_rs(folder, monitor):
    """monitor_rs as `pip install` leaves it, in FOLDER/venv: (its Python, the console script's two
    lines for `python -c`). The module in the environment's site-packages with its bytecode compiled
    once (run as a script, the 8k-line file would be compiled at every start: ~1 s under TCG). click
    and rich are found through a plain path line (deps.pth) to this Python's site-packages: that
    folder's own .pth files are not run (the development checkout's editable-install finder, which
    imports pathlib and more at every start of this Python: ~0.7 s under TCG, which no installed
    monitor_rs pays). Also used by bench/vmcosts.py."""
    venv = os.path.join(folder, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    (site,) = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))
    shutil.copy(monitor, os.path.join(site, "monitor_rs.py"))
    py_compile.compile(os.path.join(site, "monitor_rs.py"), doraise=True)
    deps = {os.path.dirname(os.path.dirname(importlib.util.find_spec(name).origin)) for name in ("click", "rich")}
    write(os.path.join(site, "deps.pth"), "".join(f"{d}\n" for d in sorted(deps)))
    return (os.path.join(venv, "bin", "python"),
            "import sys; from monitor_rs import main; sys.argv[0] = 'monitor-rs'; sys.exit(main())")


def tool_monitor_rs(work, opts, keepalive=0):
    conf = write(os.path.join(work, "monitorRS.conf"),
                 f"[monitor]\ninterval = {INTERVAL}\ntimeout = {TIMEOUT}\n"
                 f"log = {work}/monitor_rs.log\n\n"
                 f"[virtual bench]\nvip = {VIP}\nvport = {VPORT}\nrport = {VPORT}\ntype = g\n"
                 f"check = http\nfall = 1\nrise = 1\nquiescent = no\n"
                 + (f"keepalive = {keepalive}\n" if keepalive else "") +
                 f"rs = {' '.join(ADDRS)}\nrw = {' '.join('1' for _ in ADDRS)}\n")
    python, entry = install_monitor_rs(work, opts["monitor"])
    return [python, "-c", entry, "--config", conf, "--lock-file", f"{work}/monitor_rs.lock",
            "--state-file", f"{work}/monitor_rs.state.json"], True


def tool_keepalived(work, opts):
    reals = "".join(
        f"    real_server {a} {VPORT} {{\n        weight 1\n        HTTP_GET {{\n"
        f"            url {{\n                path /\n                status_code 200\n            }}\n"
        f"            connect_timeout {TIMEOUT}\n            retry 0\n            delay_before_retry 0\n"
        f"        }}\n    }}\n" for a in ADDRS)
    conf = write(os.path.join(work, "keepalived.conf"),
                 "global_defs {\n    router_id peers_bench\n}\n"
                 f"virtual_server {VIP} {VPORT} {{\n    delay_loop {INTERVAL}\n    lb_algo wrr\n"
                 f"    lb_kind DR\n    protocol TCP\n    alpha\n{reals}}}\n")
    return ["/usr/sbin/keepalived", "--dont-fork", "--log-console", "--log-detail", "--no-syslog",
            "--check", "-f", conf, "-p", f"{work}/keepalived.pid", "-c", f"{work}/checkers.pid",
            "-r", f"{work}/vrrp.pid", "-b", f"{work}/bfd.pid"], False


def tool_ldirectord(work, opts):
    reals = "".join(f"\treal={a}:{VPORT} gate 1\n" for a in ADDRS)
    conf = write(os.path.join(work, "ldirectord.cf"),
                 f"checktimeout={TIMEOUT}\nnegotiatetimeout={TIMEOUT}\n"
                 f"checkinterval={INTERVAL}\nfailurecount=1\nautoreload=no\nquiescent=no\n"
                 f"supervised=yes\nfork=no\nlogfile=\"{work}/ldirectord.log\"\n"
                 f"virtual={VIP}:{VPORT}\n{reals}\tservice=http\n\tchecktype=negotiate\n"
                 f"\trequest=\"/\"\n\treceive=\"ok\"\n\tscheduler=wrr\n\tprotocol=tcp\n")
    return ["/usr/sbin/ldirectord", conf, "start"], False


def tool_original(work, opts):
    """monitorRS.sh with VIP, RS, RW, LOG (and its touch of the log) set, and `sleep 3` -> `sleep 1`."""
    with open(opts["original"]) as handle:
        lines = handle.read().split("\n")
    new = {"VIP=": f"VIP={VIP}", "RS=(": "RS=(" + " ".join(f'"{a}"' for a in ADDRS) + ")",
           "RW=(": "RW=(" + " ".join('"1"' for _ in ADDRS) + ")", "LOG=": f"LOG={work}/monitorRS.log",
           "[ -e /var/log/monitorRS.log ]": "[ -e $LOG ] || touch $LOG", "sleep 3": f"sleep {INTERVAL}"}
    done = []
    for i, line in enumerate(lines):
        for prefix, text in new.items():
            if line.startswith(prefix):
                lines[i] = text
                done.append(prefix)
    if sorted(done) != sorted(new):
        raise RuntimeError(f"{opts['original']}: expected one line each for {sorted(new)}, found {done}")
    return ["/bin/bash", write(os.path.join(work, "monitorRS.sh"), "\n".join(lines), 0o755)], True


MAKERS = {"monitor_rs": tool_monitor_rs, "monitor_rs-keepalive": lambda w, o: tool_monitor_rs(w, o, KEEPALIVE),
          "keepalived": tool_keepalived,
          "ldirectord": tool_ldirectord, "monitorRS.sh": tool_original}


def say(opts, text):
    line = f"{time.strftime('%H:%M:%S')} {text}"
    print(line, flush=True)
    with open(os.path.join(opts["out"], "peers-progress.log"), "a") as handle:
        handle.write(line + "\n")


def run_tool(name, servers, opts, rng):
    work = os.path.join(opts["work"], name.replace(".", "_"))
    os.makedirs(work)
    argv, needs_service = MAKERS[name](work, opts)
    sh("ipvsadm", "-C")
    if needs_service:  # monitor_rs and the original fill a service; the peers make their own
        sh("ipvsadm", "-A", "-t", f"{VIP}:{VPORT}", "-s", "wrr")
    res = {"argv": argv, "samples": []}
    group = Group(name)
    out = open(os.path.join(opts["out"], f"{name}.out"), "w")
    t0 = time.time()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            cwd=work, preexec_fn=group.preexec)
    group.sid = proc.pid
    everyone = set(ADDRS)
    try:
        t = poll_until(lambda s: s >= everyone, opts["start_limit"], proc)
        res["start"] = None if t is None else t - t0
        say(opts, f"{name}: start -> all 40 in {res['start']}")
        if t is None:
            res["error"] = (f"exited {proc.returncode} before all 40 were in the table"
                            if proc.poll() is not None else
                            f"not all 40 in the table after {opts['start_limit']} s")
            return res
        time.sleep(opts["settle"])
        # steady state: the tool's CPU over the window; the bench keeps polling at the same rate
        c0, w0, low, b0 = group.cpu_split(), time.time(), N, own_cpu()
        before, flaps = live(table()), 0
        while time.time() - w0 < opts["window"]:
            now = live(table())
            low, flaps, before = min(low, len(now & everyone)), flaps + len(before - now), now
            time.sleep(POLL)
        span = time.time() - w0
        c1 = group.cpu_split()
        res["cpu"] = (sum(c1) - sum(c0)) / span * 60
        res["cpu_user"], res["cpu_system"] = ((c1[i] - c0[i]) / span * 60 for i in (0, 1))
        res["bench_cpu"] = (own_cpu() - b0) / span * 60
        res["steady_min_in_table"] = low
        res["steady_taken_out"] = flaps  # healthy servers removed during the window (all are healthy)
        say(opts, f"{name}: CPU {res['cpu']:.2f} s/min (user {res['cpu_user']:.2f}, system "
                  f"{res['cpu_system']:.2f}), the bench's own {res['bench_cpu']:.2f} "
                  f"(fewest in table during the window: {low})")
        for k in range(opts["samples"]):
            # a tool that takes healthy servers out under load gets 30 s to put them back;
            # then the sample goes on with victims among the fast servers in the table
            full = poll_until(lambda s: s >= everyone, 30) is not None
            time.sleep(1.5 + rng.uniform(0, INTERVAL))
            s = live(table())
            pool = [a for a in FAST if a in s] if not full else FAST
            if len(pool) < 3:
                res["error"] = f"sample {k}: fewer than 3 fast servers in the table"
                break
            victims = dict(zip(FAULTS, (pool[(3 * k + j * 11) % len(pool)] for j in range(3))))
            in_table = len(s & everyone)
            t_sw = servers.set({addr: fault for fault, addr in victims.items()})
            out_at, deadline = {}, t_sw + opts["detect_limit"]
            while len(out_at) < 3 and time.time() < deadline:
                now, s = time.time(), live(table())
                for fault, addr in victims.items():
                    if fault not in out_at and addr not in s:
                        out_at[fault] = now - t_sw
                time.sleep(POLL)
            sample = {"victims": victims, **{f: out_at.get(f) for f in FAULTS}, "back": None,
                      "in_table_at_switch": in_table}
            t_back = servers.set({addr: ("slow" if addr in SLOW else "ok") for addr in victims.values()})
            if len(out_at) == 3:
                t = poll_until(lambda s: s >= set(victims.values()), opts["detect_limit"])
                sample["back"] = None if t is None else t - t_back
            res["samples"].append(sample)
            say(opts, f"{name}: sample {k}: {sample}")
            if not out_at:
                res["note"] = "no faulty server left the table; later samples skipped"
                break
    finally:
        res["stop"] = stop(proc, group)
        say(opts, f"{name}: stopped ({res['stop']})")
        out.close()
        sh("ipvsadm", "-C")
    return res


def stop(proc, group):
    """SIGTERM, 10 s, then SIGKILL to the whole group; returns how, once no process is left."""
    how = "SIGTERM"
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        how = "SIGKILL (SIGTERM not obeyed in 10 s)"
    if group.pids():
        group.kill()
        how += "; leftover processes killed"
    for _ in range(200):
        if not group.pids():
            break
        group.kill()
        time.sleep(0.05)
    else:
        raise RuntimeError(f"processes left behind: {group.pids()}")
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
    group.remove()
    return how


def versions():
    out = {"guest_kernel": platform.release(), "guest_cpus": os.cpu_count(),
           "python": platform.python_version()}
    for key, argv in (("keepalived", ["/usr/sbin/keepalived", "--version"]),
                      ("ipvsadm", ["ipvsadm", "--version"])):
        try:
            out[key] = sh(*argv, check=False).splitlines()[0].strip()
        except (OSError, IndexError, subprocess.SubprocessError):
            out[key] = None
    with open("/proc/meminfo") as handle:
        out["guest_mem_mb"] = int(handle.readline().split()[1]) // 1024
    return out


def guest_main(opts):
    rng = random.Random(opts["seed"])
    opts["work"] = tempfile.mkdtemp(prefix="peers.")
    result = {"settings": {k: opts[k] for k in ("samples", "window", "settle", "detect_limit", "seed")},
              "guest": versions(), "cgroup": Group.find_root(opts["work"]), "tools": {}}
    say(opts, f"cgroup root: {result['cgroup']}; versions: {result['guest']}")
    servers = Servers(opts["work"])
    try:
        for name in opts["tools"]:
            try:
                result["tools"][name] = run_tool(name, servers, opts, rng)
            except Exception as exc:  # one tool's failure is reported; the others still run
                result["tools"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                say(opts, f"{name}: {exc!r}")
            with open(os.path.join(opts["out"], "peers.json"), "w") as handle:
                json.dump(result, handle, indent=1)
    finally:
        servers.close()
        if Group.root and Group.root.startswith(opts["work"]):
            subprocess.run(["umount", Group.root])
        shutil.rmtree(opts["work"], ignore_errors=True)
    return result


def test_peers_in_the_vm():  # collected only when named: tests/vm/run ... bench/peers.py
    import pytest
    out = os.environ.get("MONITOR_RS_VM_OUT", "")
    args = os.path.join(out, "peers-args.json")
    if os.environ.get("MONITOR_RS_IPVS") != "1" or not os.path.exists(args):
        pytest.skip("runs only in the VM, started by python3 bench/peers.py")
    with open(args) as handle:
        opts = json.load(handle)
    opts["out"] = out
    result = guest_main(opts)
    assert all("start" in result["tools"].get(t, {}) for t in opts["tools"]), result


try:
    import pytest as _pytest
    test_peers_in_the_vm = _pytest.mark.peers(test_peers_in_the_vm)
except ImportError:
    pass


# ------------------------------------------------------------------- host side

def summary(res, key):
    """(median or None, never count, samples) of one row for one tool."""
    if key in ("start", "cpu"):
        value = res.get(key)
        return value, 0 if value is not None else 1, 1
    values = [s[key] for s in res.get("samples", [])]
    got = [v for v in values if v is not None]
    return (statistics.median(got) if got else None), len(values) - len(got), len(values)


def cell(res, key, unit):
    if res is None:
        return "—"
    value, never, total = summary(res, key)
    if total == 0:  # no fault sample ran (an error, see the notes)
        return "—"
    if value is None:
        if key in ("start", "cpu"):
            return "error" if res.get("error") else "—"
        return "never" if key != "back" else "—"
    text = f"{value:.2f} s" if unit == "s" else f"{value:.1f}"
    if never:
        text += f" ({never} of {total} never)"
    return text


def render(result, host):
    tools = [t for t in TOOLS if t in result["tools"]]
    ratios = [t for t in MONITORS if t in result["tools"]] if "keepalived" in result["tools"] else []
    lines = [
        "# bench/peers: monitor_rs against keepalived, ldirectord and the original, on the real kernel",
        "",
        f"{host['date']} · {host['machine']}",
        "",
        *([f"monitor_rs measured: {result['monitor']}", ""] if result.get("monitor") else []),
        f"40 real servers on 127.1.0.1-40:80 inside the VM (8 answer 0.6 s after the request), "
        f"one virtual service {VIP}:{VPORT}, every tool told: check every {INTERVAL} s, timeout "
        f"{TIMEOUT} s, one failure = down, remove on failure. Faults: three servers at once "
        "(refusing, hung, HTTP 500), at a random moment; medians over "
        f"{result['settings']['samples']} samples; CPU over a {result['settings']['window']} s window "
        "(the tool's cgroup: every process it started). Software-emulated VM: compare ratios, "
        "not seconds.",
        "",
        "| figure | " + " | ".join(tools) + "".join(f" | {t} / keepalived" for t in ratios) + " |",
        "|---|" + "---:|" * (len(tools) + len(ratios)),
    ]
    for key, label, unit in ROWS:
        cells = [cell(result["tools"][t], key, unit) for t in tools]
        for t in ratios:
            ratio = "—"
            a, b = summary(result["tools"][t], key)[0], summary(result["tools"]["keepalived"], key)[0]
            if a is not None and b:
                ratio = f"{a / b:.2f}"
            cells.append(ratio)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Per tool:", ""]
    for t in tools:
        res = result["tools"][t]
        bits = [f"stopped by {res.get('stop')}"]
        if "steady_min_in_table" in res:
            bits.append(f"fewest servers in the table during the CPU window: {res['steady_min_in_table']} of 40"
                        + (f", healthy servers taken out in it: {res['steady_taken_out']}"
                           if "steady_taken_out" in res else ""))
        if "cpu_user" in res:
            bits.append(f"its CPU in the window: {res['cpu_user']:.2f} s/min in its own code (user), "
                        f"{res['cpu_system']:.2f} in the kernel for it (system)")
        if "bench_cpu" in res:
            bits.append(f"the bench's own table reads meanwhile: {res['bench_cpu']:.2f} CPU s/min (not counted)")
        short = [s["in_table_at_switch"] for s in res.get("samples", []) if s.get("in_table_at_switch", N) < N]
        if short:
            bits.append(f"{len(short)} sample(s) began with healthy servers out of the table ({min(short)} of 40 in)")
        for extra in ("note", "error"):
            if res.get(extra):
                bits.append(res[extra])
        lines.append(f"- **{t}**: " + "; ".join(bits) + ".")
    lines += ["", "How each tool was told (generated by bench/peers.py):", "",
              f"- monitor_rs: `interval = {INTERVAL}`, `timeout = {TIMEOUT}`, `check = http`, `fall = 1`, "
              "`quiescent = no`, `type = g`; the bench makes the virtual service first; run as `pip install` "
              "leaves it (a virtual environment of its own, the module's bytecode compiled, imported by the "
              "console script's two lines; click and rich through a path line, without the development "
              "checkout's editable-install hook).",
              f"- monitor_rs-keepalive: the same, and `keepalive = {KEEPALIVE}` (HTTP/1.1, a connection kept "
              f"for {KEEPALIVE} checks; the servers keep HTTP/1.1 connections as nginx does, and close them "
              "when they stop).",
              f"- keepalived: `-n -C`, `delay_loop {INTERVAL}`, `alpha`, `HTTP_GET` (`status_code 200`, "
              f"`connect_timeout {TIMEOUT}`, `retry 0`), `lb_kind DR`.",
              f"- ldirectord: `checktype=negotiate`, `service=http`, `request=\"/\"`, `receive=\"ok\"`, "
              f"`checkinterval={INTERVAL}`, `checktimeout`/`negotiatetimeout={TIMEOUT}`, `failurecount=1`, "
              "`quiescent=no`, `supervised=yes`, `fork=no`.",
              f"- monitorRS.sh: `VIP`, `RS`, `RW`, `LOG` set, `sleep 3` → `sleep {INTERVAL}` "
              "(`curl --connect-timeout 1` as it is); the bench makes the virtual service first.",
              ""]
    return "\n".join(lines)


def monitor_version(path):
    """The monitor_rs measured: its path, and its commit when it is a clean file of a git tree."""
    where = os.path.dirname(path)
    git = ["git", "-C", where]
    try:
        head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--", path], capture_output=True, text=True).stdout
    except OSError:
        head, dirty = "", ""
    return f"{path} (git {head}{', modified' if dirty.strip() else ''})" if head else path


def host_machine(opts):
    model = "?"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/loadavg") as handle:
        load = " ".join(handle.read().split()[:3])
    pkgs = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}, ",
                           "keepalived", "ldirectord", "ipvsadm", "linux-image-amd64"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip(" ,")
    return (f"host: {os.cpu_count()} CPUs, {model}, kernel {platform.release()}, load {load} at start · "
            f"VM: QEMU TCG (no KVM), {os.environ.get('VM_CPUS', '2')} vCPUs, "
            f"{os.environ.get('VM_MEMORY', '1G')} · {pkgs}")


def host_main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 samples, 20 s CPU window")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated, in this order")
    ap.add_argument("--samples", type=int, help="fault samples per tool (default 5; --quick 2)")
    ap.add_argument("--window", type=float, help="steady-state CPU window, s (default 60; --quick 20)")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--monitor", default=os.path.join(REPO, "monitor_rs.py"))
    ap.add_argument("--original", default=None, help="monitorRS.sh (default: the reference copy)")
    ap.add_argument("--keep", metavar="DIR", help="keep the VM's output (logs of every tool) here")
    ap.add_argument("--out", default=os.path.join(HERE, "peers"), help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    tools = [t for t in args.tools.split(",") if t]
    bad = [t for t in tools if t not in TOOLS]
    if bad:
        ap.error(f"unknown tool(s) {bad}; known: {', '.join(TOOLS)}")
    original = args.original or next((p for p in (os.path.join(REPO, "monitorRS.sh"),
                                                  "/work/shared/reference/monitorRS.sh")
                                      if os.path.exists(p)), None)
    if "monitorRS.sh" in tools and not original:
        ap.error("monitorRS.sh not found: pass --original PATH")
    opts = {"tools": tools, "samples": args.samples or (2 if args.quick else 5),
            "window": args.window or (20.0 if args.quick else 60.0), "settle": 5.0,
            "detect_limit": 20.0, "start_limit": 400.0, "seed": args.seed,
            "monitor": os.path.abspath(args.monitor), "original": original and os.path.abspath(original)}
    out_dir = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="peers-vm.")
    os.makedirs(out_dir, exist_ok=True)
    for name in ("peers.json", "peers-progress.log"):
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    with open(os.path.join(out_dir, "peers-args.json"), "w") as handle:
        json.dump(opts, handle)
    host = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": host_machine(opts)}
    env = dict(os.environ, VM_OUT_DIR=out_dir, VM_PYTHON=sys.executable,
               VM_TIMEOUT=os.environ.get("VM_TIMEOUT", "2400"))
    print(f"bench/peers: booting the VM (output in {out_dir}) ...", flush=True)
    rc = subprocess.run([os.path.join(REPO, "tests", "vm", "run"), "-s", "-q", "-m", "peers",
                         os.path.join(HERE, "peers.py")], env=env).returncode
    path = os.path.join(out_dir, "peers.json")
    if not os.path.exists(path):
        print(f"bench/peers: no result from the VM (tests/vm/run exit {rc})", file=sys.stderr)
        return 3
    with open(path) as handle:
        result = json.load(handle)
    result["host"] = host
    result["vm_run_exit"] = rc
    result["monitor"] = monitor_version(opts["monitor"])
    with open(args.out + ".json", "w") as handle:
        json.dump(result, handle, indent=1)
        handle.write("\n")
    text = render(result, host)
    with open(args.out + ".md", "w") as handle:
        handle.write(text)
    print(text)
    if not args.keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(host_main())
