"""Two directors, one VIP (issue 16): monitor_rs on each director, keepalived VRRP
moving the VIP between them, the kernel's IPVS sync daemon carrying connections
(real-kernel VM tier).

Inside the VM the test builds a LAN of network namespaces on a bridge (192.0.2.0/24,
TEST-NET-1: the VM has no other network, nothing leaves it):

    mrs-dir1 .11   director, keepalived-master.conf (contrib/, as shipped), monitor_rs
    mrs-dir2 .12   director, keepalived-backup.conf (contrib/, as shipped), monitor_rs
    mrs-rs1  .21   real server: nginx on :80, the VIP on its loopback (direct routing)
    mrs-rs2  .22   real server, likewise
    mrs-cli  .31   the client: a request to the VIP every 0.1 s, each on a new connection
    mrs-lan        the bridge between them;  VIP 192.0.2.100:80

Forwarding is direct routing (type = g): the real servers answer the client directly,
so either director can forward to them without being their gateway (with NAT both
directors would have to be the real servers' route back, which a failover would have
to move too).  Each director's IPVS table is its own (IPVS is per network namespace):
its monitor_rs creates the virtual service (scheduler = rr) and keeps its real servers,
with the real ipvsadm.  keepalived runs VRRP only (-P, no virtual_server blocks).  The
sync daemon runs as master and as backup on both directors (ipvsadm --start-daemon).

The scenario, while the client keeps asking:
 1. rs1 dies (nginx stops) and comes back: both directors' tables follow.
 2. the master director fails: its keepalived is killed (SIGKILL, every process: no
    goodbye advert) and its LAN link goes down, as when the machine dies.  The VIP
    moves to dir2, whose table is already right; a keep-alive connection opened
    through dir1 before the failure answers again through dir2 (the sync daemon).
 3. the old master returns: link up (without the VIP, as after a reboot), its
    monitor_rs refills its table, keepalived starts again and takes the VIP back
    (higher priority); a connection opened through dir2 survives that move too.
It prints the failover times and the requests lost (pytest -rA shows them) and keeps
a report in $MONITOR_RS_VM_OUT/test_vm_ha/ (figures.txt, each director's logs, the LAN script).

Outside the VM, the fast tier checks the contrib files with keepalived's own parser.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import pytest

from harness import SLOW, Monitor, wait_until

KERNEL = os.environ.get("MONITOR_RS_IPVS") == "1"

HERE = os.path.dirname(os.path.abspath(__file__))
CONTRIB = os.path.join(os.path.dirname(HERE), "contrib")
NET = "192.0.2"
VIP = f"{NET}.100"
HOSTS = {"dir1": 11, "dir2": 12, "rs1": 21, "rs2": 22, "cli": 31}
DIRECTORS = ("dir1", "dir2")
SERVERS = ("rs1", "rs2")
LAN = "mrs-lan"
TEMPLATE_VIP = "10.10.10.10"  # the example VIP in contrib/keepalived-*.conf (and monitorRS.conf)
SYNCID = "51"


def ns(name):
    return f"mrs-{name}"


def ip_of(name):
    return f"{NET}.{HOSTS[name]}"


def sh(*argv, check=True):
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60 * SLOW)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def inside(name, *argv, check=True):
    return sh("ip", "netns", "exec", ns(name), *argv, check=check)


def need(binary):
    path = shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        pytest.fail(f"{binary} is not installed (tests/vm/run and .ci/run install it)")
    return path


###############################################################################
# The LAN #####################################################################
###############################################################################


def lan_script():
    """The LAN as one bash script (kept with the run's output): namespaces, the bridge, a
    veth each (eth0 inside), addresses; the real servers get the VIP on lo and do not
    answer ARP for it (direct routing).  One `ip -batch` per namespace: each process
    start costs a lot under emulation."""
    lines = ["set -euo pipefail", f"ip netns add {LAN}"]
    lines += [f"ip netns add {ns(name)}" for name in HOSTS]
    # before any link is up; arp_ignore and arp_announce use the larger of all and the device's
    lines += [f"ip netns exec {ns(name)} sysctl -q -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2"
              for name in SERVERS]
    lan = ["link add br0 type bridge mcast_snooping 0", "link set br0 up"]
    for name in HOSTS:
        lan += [f"link add {name} type veth peer name eth0 netns {ns(name)}", f"link set {name} master br0 up"]
    lines += [f"ip -n {LAN} -batch - <<'END'", *lan, "END"]
    for name in HOSTS:
        lines += [f"ip -n {ns(name)} -batch - <<'END'", "link set lo up", f"addr add {ip_of(name)}/24 dev eth0",
                  "link set eth0 up"]
        if name in SERVERS:
            lines += [f"addr add {VIP}/32 dev lo"]
        lines += ["END"]
    return "\n".join(lines) + "\n"


def build_lan(folder):
    script = folder / "lan.sh"
    script.write_text(lan_script())
    sh("bash", str(script))


def tear_down_lan():
    for name in list(HOSTS) + ["lan"]:
        sh("ip", "netns", "del", ns(name), check=False)


def holds_vip(director):
    return f" {VIP}/32 " in sh("ip", "-n", ns(director), "-o", "-4", "addr", "show", "dev", "eth0")


def reachable(frm, ip, port=80):
    """A TCP connect from namespace `frm` (bash's /dev/tcp: no Python start under emulation)."""
    proc = subprocess.run(["ip", "netns", "exec", ns(frm), "timeout", "5", "bash", "-c",
                           f"exec 3<>/dev/tcp/{ip}/{port}"], capture_output=True, timeout=60 * SLOW)
    return proc.returncode == 0


###############################################################################
# The real servers: nginx, one per namespace ##################################
###############################################################################


class Nginx:
    """nginx in the foreground on *:80 of its namespace (its address and the VIP),
    keep-alive connections held 10 minutes; the page names the server."""

    def __init__(self, binary, root, name):
        self.binary, self.name = binary, name
        self.dir = root / name
        (self.dir / "www").mkdir(parents=True)
        (self.dir / "www" / "index.html").write_text(f"{name}\n")
        temp = "".join(f"    {kind}_temp_path {self.dir}/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(f"""daemon off;
master_process off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 100000;
{temp}    server {{
        listen 80;
        root {self.dir}/www;
    }}
}}
""")
        self.proc = None

    def start(self, wait=True):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns(self.name), self.binary, "-p", str(self.dir),
                                      "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait:
            self.wait()

    def wait(self):
        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx {self.name} exited {self.proc.returncode}: "
                                     + (self.dir / "error.log").read_text()[-2000:])
            return reachable(self.name, ip_of(self.name))
        wait_until(listening, what=f"nginx {self.name} listening")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30 * SLOW)
        self.proc = None


###############################################################################
# The client ##################################################################
###############################################################################

# A request a 0.1 s, each on a new connection (1 s to connect, 1 s to answer); one line
# per request: when it began, when it ended, ok|fail, the server that answered or why not.
LOOP = r"""
import os, socket, sys, time
vip, log, stop = sys.argv[1], sys.argv[2], sys.argv[3]
with open(log, "a", buffering=1) as out:
    while not os.path.exists(stop):
        began = time.time()
        try:
            with socket.create_connection((vip, 80), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            ok = head.startswith(b"HTTP/1.1 200")
            what = body.strip() if ok else (head.split(b"\r\n")[0] or b"empty")
            what = what.decode(errors="replace")
        except OSError as e:
            ok, what = False, type(e).__name__
        out.write("%.3f %.3f %s %s\n" % (began, time.time(), "ok" if ok else "fail", what.replace(" ", "_")))
        time.sleep(0.1)
"""

# One keep-alive connection to the VIP: prints its local port, then a request on that same
# connection for each line read: "ok SERVER" or "fail WHY".
HOLD = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=20)
print(s.getsockname()[1], flush=True)
f = s.makefile("rb")
for _ in sys.stdin:
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")
        status, length = f.readline(), 0
        while True:
            line = f.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = f.read(length).decode(errors="replace").strip()
        print("ok " + body if status.startswith(b"HTTP/1.1 200") else "fail " + (status.decode().strip() or "closed"),
              flush=True)
    except OSError as e:
        print("fail " + type(e).__name__, flush=True)
"""


class Requests:
    """The client's request loop, in its namespace."""

    def __init__(self, folder):
        self.script = folder / "loop.py"
        self.script.write_text(LOOP)
        self.log = folder / "requests.log"
        self.stop_file = folder / "requests.stop"
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns("cli"), sys.executable, str(self.script), VIP,
                                      str(self.log), str(self.stop_file)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def all(self):
        """[(began, ended, ok, what)] of every request so far."""
        if not self.log.exists():
            return []
        found = []
        for line in self.log.read_text().split("\n")[:-1]:
            began, ended, outcome, what = line.split(" ", 3)
            found.append((float(began), float(ended), outcome == "ok", what))
        return found

    def since(self, t):
        return [r for r in self.all() if r[0] >= t]

    def ok_since(self, t, count):
        """At least `count` requests begun after `t` answered, and the last one too."""
        done = self.since(t)
        if self.proc.poll() is not None:
            raise AssertionError(f"the client exited {self.proc.returncode}: {self.proc.stderr.read()}")
        return sum(r[2] for r in done) >= count and done[-1][2]

    def go_on(self, what):
        """Wait until ten requests begun from now on have been answered (and the last one)."""
        now = time.time()
        wait_until(lambda: self.ok_since(now, 10), timeout=60, what=what)

    def stop(self):
        self.stop_file.touch()
        try:
            self.proc.wait(timeout=30 * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Held:
    """A keep-alive connection the client holds open to the VIP."""

    def __init__(self, folder, name):
        script = folder / "hold.py"
        script.write_text(HOLD)
        self.name = name
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns("cli"), sys.executable, str(script), VIP],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.proc.wait(timeout=30 * SLOW)
            raise AssertionError(f"the client could not connect to the VIP: {self.proc.stderr.read()[-2000:]}")
        self.port = int(line)

    def ask(self):
        """A request on the same connection: 'ok SERVER' or 'fail WHY'."""
        self.proc.stdin.write("again\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip() or f"fail the holder exited: {self.proc.stderr.read()}"

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


###############################################################################
# The directors ###############################################################
###############################################################################


def monitor_conf():
    servers = " ".join(ip_of(name) for name in SERVERS)
    return ("[monitor]\ninterval = 1\ntimeout = 1\n\n"
            f"[virtual web]\nvip = {VIP}\nvport = 80\nrs = {servers}\nrw = 1 1\ntype = g\n"
            "scheduler = rr\nrequest = /\n")


def keepalived_conf(director):
    """contrib/keepalived-{master,backup}.conf as shipped, with this LAN's VIP."""
    kind = "master" if director == "dir1" else "backup"
    with open(os.path.join(CONTRIB, f"keepalived-{kind}.conf")) as handle:
        text = handle.read()
    assert text.count(TEMPLATE_VIP) == 1 and "virtual_server" not in text.replace("# ", "").split(
        "global_defs", 1)[1], f"contrib/keepalived-{kind}.conf is not the template this test expects"
    return text.replace(TEMPLATE_VIP, VIP)


class Director:
    """A director: its namespace's own IPVS table (the real ipvsadm), its monitor_rs (as an
    operator runs it, in the namespace), its keepalived, its sync daemons."""

    def __init__(self, root, name, ipvsadm):
        self.name = name
        self.dir = root / name
        self.dir.mkdir()
        self.ipvsadm = ipvsadm
        self.monitor = Monitor(self.dir, types.SimpleNamespace(path=ipvsadm), monitor_conf())
        self.monitor.argv = ["ip", "netns", "exec", ns(name)] + self.monitor.argv
        self.conf = self.dir / "keepalived.conf"
        self.conf.write_text(keepalived_conf(name))
        self.keepalived = None
        self.kept = self.dir / "keepalived.log"

    def ipvs(self, *args):
        return inside(self.name, self.ipvsadm, *args)

    def start_sync(self):
        for role in ("master", "backup"):
            self.ipvs("--start-daemon", role, "--mcast-interface", "eth0", "--syncid", SYNCID)

    def table(self):
        """The real servers of the VIP's service: {RIP: (forward flag, weight)}; None: no service."""
        save = self.ipvs("-Sn")
        if f"-A -t {VIP}:80 " not in save:
            return None
        return {m.group(1): (m.group(2), int(m.group(3)))
                for m in re.finditer(rf"-a -t {re.escape(VIP)}:80 -r (\S+):80 -(\w) -w (\d+)", save)}

    def connections(self):
        return self.ipvs("-Lnc")

    def start_keepalived(self):
        out = open(self.kept, "ab")
        self.keepalived = subprocess.Popen(
            ["ip", "netns", "exec", ns(self.name), "keepalived", "--vrrp", "--dont-fork", "--log-console",
             "--log-detail", "--no-syslog", "--use-file", str(self.conf), "--pid", str(self.dir / "keepalived.pid"),
             "--vrrp_pid", str(self.dir / "vrrp.pid")],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    def kill_keepalived(self, signum):
        """Every keepalived process of this director at once (its own process group)."""
        if self.keepalived is not None and self.keepalived.poll() is None:
            os.killpg(self.keepalived.pid, signum)
            self.keepalived.wait(timeout=30 * SLOW)
        self.keepalived = None

    def diagnosis(self):
        """What to look at when the scenario failed: the table, daemons, connections, logs."""
        def ask(*args):
            try:
                return self.ipvs(*args).strip()
            except AssertionError as e:
                return str(e)
        return (f"--- {self.name}: its table\n{ask('-Ln')}\n--- its sync daemons: {ask('-L', '--daemon')}"
                f"\n--- its connections:\n{ask('-Lnc')}\n--- keepalived:\n{self.log()[-3000:]}"
                f"\n--- monitor_rs:\n{self.log('monitor')[-3000:]}")

    def log(self, what="keepalived"):
        path = self.kept if what == "keepalived" else self.monitor.log
        return path.read_text(errors="replace") if path.exists() else ""


def follow(directors, want, since, what):
    """Wait until every director's table is as wanted: {director: seconds since `since`}
    (all watched at once, so each figure is that director's own)."""
    seen = {}

    def done():
        for d in directors:
            if d.name not in seen and want(d.table()):
                seen[d.name] = time.time() - since
        return len(seen) == len(directors)
    wait_until(done, timeout=60, what=f"{what} on {', '.join(d.name for d in directors)}")
    return seen


def right(table):
    return table == {ip_of(name): ("g", 1) for name in SERVERS}


def show(table):
    if table is None:
        return "(no virtual service)"
    return "{" + ", ".join(f"{rip} -{fwd} w{w}" for rip, (fwd, w) in sorted(table.items())) + "}"


###############################################################################
# The test ####################################################################
###############################################################################


@pytest.mark.skipif(shutil.which("keepalived", path=os.environ.get("PATH", "") + ":/usr/sbin") is None
                    and os.environ.get("CI") != "true", reason="keepalived is not installed (.ci/run installs it)")
@pytest.mark.parametrize("kind", ["master", "backup"])
def test_contrib_keepalived_conf_passes_keepalived_config_test(kind, tmp_path):
    """The fast tier's check of the shipped files (the VM test runs them): keepalived's
    own parser accepts each as shipped, and the two differ only where a pair must."""
    path = os.path.join(CONTRIB, f"keepalived-{kind}.conf")
    # keepalived refuses an interface this machine lacks: the template's eth0 becomes one it has
    here = sorted(name for name in os.listdir("/sys/class/net") if name != "lo"
                  and os.path.exists(f"/sys/class/net/{name}/address"))
    if not here:
        pytest.skip("no network interface but lo here: keepalived cannot check a vrrp_instance")
    with open(path) as handle:
        text = handle.read()
    assert text.count("eth0") >= 2, f"{path}: the template names its interface eth0"
    (tmp_path / "keepalived.conf").write_text(text.replace("eth0", here[0]))
    proc = subprocess.run([need("keepalived"), "--config-test", "--vrrp", "--use-file", "keepalived.conf"],
                          capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 0, f"keepalived --config-test {path} (eth0: {here[0]}): {proc.returncode} {proc.stderr}"
    with open(os.path.join(CONTRIB, "keepalived-master.conf")) as a, open(path) as b:
        master, this = a.read().splitlines(), b.read().splitlines()
    differ = {(x.strip(), y.strip()) for x, y in zip(master, this) if x != y}
    assert len(master) == len(this) and differ <= {
        ("# keepalived-master.conf: the VRRP half of a pair of LVS directors that run monitor_rs.",
         "# keepalived-backup.conf: the VRRP half of a pair of LVS directors that run monitor_rs."),
        ("router_id director1", "router_id director2"), ("state MASTER", "state BACKUP"),
        ("priority 150", "priority 100")}, differ


@pytest.mark.ipvs
@pytest.mark.skipif(not KERNEL, reason="needs the real kernel IPVS: runs inside the VM (tests/vm/run)")
def test_two_directors_keepalived_vrrp_and_sync_daemon(tmp_path):
    nginx = need("nginx")
    ipvsadm = need("ipvsadm")
    need("keepalived")
    started = time.time()
    tear_down_lan()  # a previous run's, if any
    servers, directors, client, first, second = {}, {}, None, None, None
    figures = []

    progress = os.path.join(os.environ.get("MONITOR_RS_VM_OUT", str(tmp_path)), "test_vm_ha.progress")
    open(progress, "w").close()

    def say(line):
        figures.append(line)
        print(line)
        with open(progress, "a") as handle:  # followed from the host while the VM runs
            handle.write(line + "\n")

    try:
        build_lan(tmp_path)
        client = Requests(tmp_path)  # its Python starts while the rest is set up; counted from `steady` on
        for name in SERVERS:
            servers[name] = Nginx(nginx, tmp_path, name)
            servers[name].start(wait=False)
        for name in DIRECTORS:
            directors[name] = Director(tmp_path, name, ipvsadm)
        dir1, dir2 = directors["dir1"], directors["dir2"]
        for d in (dir1, dir2):
            d.start_sync()
            d.monitor.start()
        for server in servers.values():
            server.wait()
        for d in (dir1, dir2):
            daemons = d.ipvs("-L", "--daemon")
            assert "master sync daemon" in daemons and "backup sync daemon" in daemons, daemons
        say(f"setup: LAN, nginx, sync daemons: {time.time() - started:.1f} s")
        dir1.start_keepalived()
        dir2.start_keepalived()
        follow((dir1, dir2), right, started, "monitor_rs fills its table")
        wait_until(lambda: holds_vip("dir1") and not holds_vip("dir2") and "Entering BACKUP STATE" in dir2.log(),
                   timeout=60, what="keepalived: dir1 master (the VIP), dir2 backup")
        client.go_on("the client's requests answered")
        steady = time.time()
        say(f"setup: monitor_rs's tables, keepalived master on dir1, backup on dir2, the client: "
            f"{steady - started:.1f} s")

        # (1) rs1 dies and comes back: both directors' tables follow.
        t1 = time.time()
        assert not [r for r in client.since(steady) if not r[2]], "requests failed before any fault"
        servers["rs1"].stop()
        took = follow((dir1, dir2), lambda t: t == {ip_of("rs2"): ("g", 1)}, t1, "rs1 out of the table")
        say("(1) rs1 stopped: out of the table after " + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()))
        t1b = time.time()
        servers["rs1"].start()
        took = follow((dir1, dir2), right, t1b, "rs1 back in the table")
        say("(1) rs1 started again: back in the table after " + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()))
        client.go_on("requests answered after (1)")
        lost1 = [r for r in client.since(t1) if not r[2]]
        say(f"(1) requests failed while rs1 was down and coming back: {len(lost1)} of {len(client.since(t1))}"
            f" (sent to rs1 before a director took it out)")

        # (2) the master director fails.
        first = Held(tmp_path, "first")
        before = first.ask()
        assert before.startswith("ok "), f"the held connection, through dir1: {before}"
        conn = f"{ip_of('cli')}:{first.port}"
        wait_until(lambda: conn in dir2.connections(), timeout=60,
                   what=f"dir2 lists the connection {conn} (the sync daemon, from dir1)")
        synced = next(line for line in dir2.connections().splitlines() if conn in line)
        assert right(dir2.table()), f"dir2's table before the failover: {show(dir2.table())}"
        assert right(dir1.table())
        t2 = time.time()
        dir1.kill_keepalived(signal.SIGKILL)
        sh("ip", "-n", ns("dir1"), "link", "set", "eth0", "down")
        wait_until(lambda: holds_vip("dir2"), timeout=60, what="the VIP on dir2")
        vip_moved = time.time() - t2
        client.go_on("requests answered through dir2")
        answer = first.ask()
        during = client.since(t2 - 1.1)  # a request begun up to its 1 s timeout before the kill can fail too
        lost2 = [r for r in during if not r[2]]
        back = next((r[1] for r in during if r[2] and r[0] >= t2 and (not lost2 or r[0] > lost2[-1][0])), None)
        say(f"(2) dir1 killed (keepalived SIGKILL + link down): VIP on dir2 after {vip_moved:.1f} s;"
            f" requests failed: {len(lost2)} ({', '.join(sorted({r[3] for r in lost2})) or 'none'}),"
            f" answered again {back - t2 if back else float('nan'):.1f} s after the kill")
        say(f"(2) dir2 listed the held connection before the failover: {synced.strip()}")
        say(f"(2) the connection opened through dir1, asked again through dir2: {answer}")
        dir1_cut = dir1.table()
        say(f"(2) dir1's table while cut off (its monitor_rs sees no server): {show(dir1_cut)}")

        # (3) the old master returns.
        sh("ip", "-n", ns("dir1"), "addr", "del", f"{VIP}/32", "dev", "eth0")  # rebooted: no stale VIP
        t3 = time.time()
        sh("ip", "-n", ns("dir1"), "link", "set", "eth0", "up")
        wait_until(lambda: right(dir1.table()), timeout=60, what="dir1: monitor_rs refills its table")
        say(f"(3) dir1 back on the LAN: its table right again after {time.time() - t3:.1f} s")
        second = Held(tmp_path, "second")
        before2 = second.ask()
        assert before2.startswith("ok "), f"the second held connection, through dir2: {before2}"
        conn2 = f"{ip_of('cli')}:{second.port}"
        wait_until(lambda: conn2 in dir1.connections(), timeout=60,
                   what=f"dir1 lists the connection {conn2} (the sync daemon, from dir2)")
        t3b = time.time()
        dir1.start_keepalived()
        wait_until(lambda: holds_vip("dir1") and not holds_vip("dir2"), timeout=60, what="the VIP back on dir1")
        vip_back = time.time() - t3b
        client.go_on("requests answered through dir1")
        answer2 = second.ask()
        answer1 = first.ask()
        lost3 = [r for r in client.since(t3b - 1.1) if not r[2]]
        say(f"(3) keepalived started again on dir1: VIP back on dir1 after {vip_back:.1f} s;"
            f" requests failed: {len(lost3)}")
        say(f"(3) the connection opened through dir2, asked again through dir1: {answer2}")
        say(f"(3) the first connection, asked again: {answer1}")
        total = client.since(steady)
        say(f"requests from the end of the setup on: {len(total)}, failed {sum(not r[2] for r in total)}; "
            f"the test took {time.time() - started:.1f} s")
        for d in (dir1, dir2):
            assert d.monitor.proc.poll() is None, f"{d.name}'s monitor_rs exited: {d.log('monitor')[-3000:]}"
    except BaseException:
        for d in directors.values():
            print(d.diagnosis())
        raise
    finally:
        if client is not None:
            client.stop()
        for h in (first, second):
            if h is not None:
                h.close()
        for d in directors.values():
            d.kill_keepalived(signal.SIGTERM)
            d.monitor.kill()
        for s in servers.values():
            s.stop()
        tear_down_lan()
        with open(progress, "a") as handle:
            handle.write(f"teardown done: {time.time() - started:.1f} s\n")
        if os.environ.get("MONITOR_RS_VM_OUT"):  # tests/vm/run keeps what is left there
            out = os.path.join(os.environ["MONITOR_RS_VM_OUT"], "test_vm_ha")
            shutil.copytree(str(tmp_path), out, ignore=shutil.ignore_patterns(
                "www", "*_temp", "client_body", "proxy", "fastcgi", "uwsgi", "scgi"), dirs_exist_ok=True)
            with open(os.path.join(out, "figures.txt"), "w") as handle:
                handle.write("\n".join(figures) + "\n")

    # (1) both tables followed (checked above, each with a deadline).
    # (2) the backup's table was right before the failover (asserted above); the VIP moved
    # and requests went on; the connection established through dir1 answered through dir2.
    assert vip_moved < 30, f"the VIP took {vip_moved:.1f} s to move to dir2"
    assert back is not None and back - t2 < 30, "requests did not go on within 30 s of the failure"
    assert len(lost2) <= 30, f"{len(lost2)} requests failed at the failover"
    assert answer == before, f"the connection established before the failover (then {before}): {answer}"
    # (3) the VIP came back; requests went on; the connection opened through dir2 survived the failback.
    assert vip_back < 30
    assert len(lost3) <= 30, f"{len(lost3)} requests failed at the failback"
    assert answer2 == before2, (f"the connection established through dir2 (then {before2}), after the "
                                f"failback: {answer2}")
