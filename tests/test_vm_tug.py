"""A tug of war with a real other manager on the real kernel's IPVS (issue 16, VM tier).

monitor_rs and another manager keep the same virtual service, 127.0.0.100:80, on the
real kernel's table (the real ipvsadm), two real servers in one nginx on loopback:
GOOD (127.0.0.11) answers 200, BAD (127.0.0.12) answers 500 to everything.  monitor_rs
checks http (BAD fails); the other managers' checks pass both.  In order, with ONE
monitor_rs (M1) throughout:

 1. Debian's ldirectord (4.12, -d, checktype=connect, checkinterval=1, cleanstop=no,
    maintenancedir): it creates the service and puts both servers in; M1 deletes BAD.
    ldirectord does NOT put BAD back: it acts only on its own transitions (_service_up
    returns at once while the server is up in its memory: `_status_up`), so it never
    fights a delete, nor an add of a server it thinks down.  The one path where it
    acts on every check is a server in its maintenancedir: `_check_real` calls
    service_set(down, force) each round, and _remove_service deletes the server
    whenever the table has it.  So GOOD is put in ldirectord's maintenancedir: each
    round ldirectord deletes it, M1 adds it back -- the fight.  M1 must notice, stop
    changing the service, say so in one log line, and `--status` exits 1 with that
    problem; ldirectord is stopped (cleanstop=no: the table stays), SIGHUP takes the
    service back (GOOD in again, BAD still out).
 2. A second monitor_rs (M2), `check = off` (every server down) against M1 (GOOD up):
    M2 deletes GOOD, M1 adds it.  Each counts the other's undoing; the first to see its
    change undone three times stops, and then the other's change holds, so the second
    never reaches three: exactly one of them stops, and the table stays as the other
    wants it.  (Which one: the one whose change was undone first.  Here M1, whose last add,
    made before M2 started, is the first change M2 undoes: M1 stops after two more adds,
    M2 keeps GOOD out.)  M2 stopped (its cleanstop is no), M1 takes the service back on
    SIGHUP.
 3. keepalived (2.2.7, --check, a virtual_server block with HTTP_GET checks that pass
    both: GOOD status_code 200, BAD status_code 500): at its start it adds its servers
    (the service and GOOD: "already exists", logged; BAD, which M1 had deleted, back in),
    M1 deletes BAD, and keepalived does not put it back over its next checks: like
    ldirectord it acts on its checkers' transitions only.  No tug of war, the table
    follows M1.

Figures (printed; pytest -rA shows them): for each fight, how many of M1's changes
were undone before it stopped, and how long from the first provocation to the one log
line.  What is left is kept in $MONITOR_RS_VM_OUT/test_vm_tug/.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from harness import SLOW, Ipvs, Monitor, config, wait_until

KERNEL = os.environ.get("MONITOR_RS_IPVS") == "1"
pytestmark = [pytest.mark.ipvs, pytest.mark.skipif(
    not KERNEL, reason="needs the real kernel IPVS: runs inside the VM (tests/vm/run)")]

LDIRECTORD = "/usr/sbin/ldirectord"
VIP_IP, VIP_PORT = "127.0.0.100", 80
VIP = f"{VIP_IP}:{VIP_PORT}"
GOOD_IP, BAD_IP = "127.0.0.11", "127.0.0.12"
CHECK_TIMEOUT = max(2, round(2 * SLOW))  # every tool's (see test_ldirectord_diff): no false failure under load
INTERVAL, TIMEOUT = 1, CHECK_TIMEOUT  # monitor_rs's
CONTEST = f"{VIP} (web): another manager keeps undoing the monitor's changes ("
UNDOING = "another manager keeps undoing"
RESUMED = f"{VIP} (web): repaired again"
MONITOR_AGENT, KEEPALIVED_AGENT = "monitor_rs/", "KeepAliveClient"


def need(binary):
    path = shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        pytest.fail(f"{binary} is not installed (tests/vm/run and .ci/run install it)")
    return path


def free_port(ip):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


class Sites:
    """GOOD and BAD: one nginx (one process), a server block each; the access log keeps
    every request: when, which server, status, user agent (whose check it was)."""

    def __init__(self, binary, folder):
        folder.mkdir()
        self.folder = folder
        self.good = f"{GOOD_IP}:{free_port(GOOD_IP)}"
        self.bad = f"{BAD_IP}:{free_port(BAD_IP)}"
        self.access = folder / "access.log"
        temp = "".join(f"    {kind}_temp_path {folder}/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = folder / "nginx.conf"
        conf.write_text(f"""daemon off;
master_process off;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 64; }}
http {{
    log_format checks '$msec $server_addr $status "$http_user_agent"';
    access_log {self.access} checks;
{temp}    server {{ listen {self.good}; location / {{ return 200 "good\\n"; }} }}
    server {{ listen {self.bad}; location / {{ return 500; }} }}
}}
""")
        self.proc = subprocess.Popen([binary, "-p", str(folder), "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited {self.proc.returncode}: "
                                     + (folder / "error.log").read_text()[-2000:])
            with socket.socket() as s:
                return s.connect_ex((BAD_IP, int(self.bad.rsplit(":", 1)[1]))) == 0
        wait_until(listening, what="nginx listening")

    def asked(self, ip, agent):
        """How many requests `ip` has had from checks whose user agent starts with `agent`."""
        if not self.access.exists():
            return 0
        return sum(1 for line in self.access.read_text().split("\n")[:-1]
                   if line.split(" ", 3)[1:2] == [ip] and line.split(" ", 3)[3].startswith(f'"{agent}'))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30 * SLOW)


SAVE_SERVICE = re.compile(r"-A -t (\S+) -s (\S+)")
SAVE_DEST = re.compile(r"-a -t (\S+) -r (\S+) -[gim] -w (\d+)")


def table(ipvsadm):
    """The virtual service's real servers in the kernel, {RIP:PORT: weight}; None: no such service."""
    out = subprocess.run([ipvsadm, "-Sn"], capture_output=True, text=True, timeout=30 * SLOW, check=True).stdout
    if not any(m.group(1) == VIP for m in map(SAVE_SERVICE.match, out.splitlines()) if m):
        return None
    return {m.group(2): int(m.group(3)) for m in map(SAVE_DEST.match, out.splitlines()) if m and m.group(1) == VIP}


class Ldirectord:
    """Debian's ldirectord in the foreground (-d: log and debug lines on stderr, kept in a file;
    run from a folder without ./ipvsadm, so it uses the system's)."""

    def __init__(self, folder, sites):
        folder.mkdir()
        self.maintenance = folder / "maintenance"
        self.maintenance.mkdir()
        self.cf = folder / "ldirectord.cf"
        self.cf.write_text(f"""# tests/test_vm_tug.py
checktimeout={CHECK_TIMEOUT}
checkinterval=1
quiescent=no
autoreload=no
cleanstop=no
maintenancedir={self.maintenance}

virtual={VIP}
\treal={sites.good} masq 1
\treal={sites.bad} masq 1
\tchecktype=connect
\tscheduler=wrr
\tprotocol=tcp
""")
        self.out = folder / "ldirectord.out"
        env = dict(os.environ, PERLIO="perlio")  # else it execs itself once more to set it
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen([LDIRECTORD, "-d", str(self.cf), "start"], cwd=str(folder),
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)

    def lines(self):
        return self.out.read_text(errors="replace").splitlines()

    def said(self, start):
        """Its log lines (not the debug ones) that start with `start`."""
        return sum(line.startswith(start) for line in self.lines())

    def checked(self, ip):
        """Its check rounds of `ip` so far: a connect check, or a maintenance file found."""
        return sum(("Checking connect: real server=" in line or "Server maintenance: Found file" in line)
                   and ip in line for line in self.lines())

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60 * SLOW) == 0, "\n".join(self.lines()[-40:])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Keepalived:
    """keepalived, health checkers only (--check), in the foreground, its own process group."""

    def __init__(self, folder, sites):
        folder.mkdir()
        checks = "".join(f"""    real_server {ip} {port} {{
        weight 1
        HTTP_GET {{
            url {{
                path /
                status_code {status}
            }}
            connect_timeout {CHECK_TIMEOUT}
            retry 0
        }}
    }}
""" for (ip, port), status in ((sites.good.split(":"), 200), (sites.bad.split(":"), 500)))
        self.conf = folder / "keepalived.conf"
        self.conf.write_text(f"""# tests/test_vm_tug.py
virtual_server {VIP_IP} {VIP_PORT} {{
    delay_loop 1
    lb_algo wrr
    lb_kind NAT
    protocol TCP
{checks}}}
""")
        self.out = folder / "keepalived.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                ["keepalived", "--check", "--dont-fork", "--log-console", "--log-detail", "--no-syslog",
                 "--use-file", str(self.conf), "--pid", str(folder / "keepalived.pid"),
                 "--checkers_pid", str(folder / "checkers.pid")],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30 * SLOW)


def contest_line(monitor):
    return next(line for line in monitor.lines() if CONTEST in line)


def no_problem(monitor):
    """The service has no problem in `--status` (its exit status is 1 all the same: BAD is down)."""
    code, snap = monitor.status()
    (svc,) = snap["services"]
    return code == 1 and svc["problem"] is None and not svc["contested"]


def undone_in(line, server):
    """(times, seconds) from the contest line's '(SERVER: N times in S s)'."""
    found = re.search(rf"{re.escape(server)}: (\d+) times in ([0-9.]+) s", line)
    assert found, line
    return int(found.group(1)), float(found.group(2))


def test_monitor_rs_against_ldirectord_a_second_monitor_and_keepalived(tmp_path):
    need(LDIRECTORD)
    need("keepalived")
    nginx = need("nginx")
    ipvsadm = need("ipvsadm")
    ipvs = Ipvs("kernel", tmp_path)  # (flushes the table)
    sites = Sites(nginx, tmp_path / "sites")
    good, bad = sites.good, sites.bad
    text = config(VIP, [good, bad], [1, 1], interval=INTERVAL, timeout=TIMEOUT)
    figures = []
    (tmp_path / "m1").mkdir()
    (tmp_path / "m2").mkdir()
    m1 = Monitor(tmp_path / "m1", ipvs, text)
    m2 = Monitor(tmp_path / "m2", ipvs, text.replace("type = m\n", "type = m\ncheck = off\n"))
    ld = keepalived = None

    def probes(n, what):
        """n more passes of M1 (its probes of GOOD, each pass asks it once)."""
        mark = sites.asked(GOOD_IP, MONITOR_AGENT)
        wait_until(lambda: sites.asked(GOOD_IP, MONITOR_AGENT) >= mark + n, timeout=60, what=what)

    def added(monitor, server):
        return monitor.count(f"{server} has been added to work")

    try:
        # 1. ldirectord ------------------------------------------------------------------------
        ld = Ldirectord(tmp_path / "ldirectord", sites)
        wait_until(lambda: table(ipvsadm) == {good: 1, bad: 1}, timeout=60, what="ldirectord's table")
        m1.start()
        m1.wait_log(f"{bad} is out of work, deleted from {VIP} (web)", timeout=60)
        assert table(ipvsadm) == {good: 1}
        # ldirectord still thinks BAD up (its connect checks pass) and does not put it back
        mark, readded = ld.checked(BAD_IP), ld.said(f"Added real server: {bad} ")
        wait_until(lambda: ld.checked(BAD_IP) >= mark + 3, timeout=60, what="three more ldirectord rounds")
        assert table(ipvsadm) == {good: 1} and ld.said(f"Added real server: {bad} ") == readded
        assert m1.count(UNDOING) == 0
        figures.append("ldirectord, a server it thinks up deleted by monitor_rs: not put back over 3 of its "
                       "rounds (no tug of war)")

        # GOOD in ldirectord's maintenancedir: ldirectord deletes it each round, M1 adds it back.
        adds, deletes = added(m1, good), ld.said(f"Deleted real server: {good} ")
        started = time.monotonic()
        (ld.maintenance / good).touch()
        m1.wait_log(CONTEST, timeout=90)
        took = time.monotonic() - started
        line = contest_line(m1)
        times, span = undone_in(line, good)
        assert times == 3 and "not repairing it; reload (SIGHUP) or restart once the other manager is gone" in line
        fought = added(m1, good) - adds
        assert fought == 3, fought  # its third add undone, it added no more
        mark = ld.checked(GOOD_IP)
        probes(3, "three more passes of monitor_rs")
        wait_until(lambda: ld.checked(GOOD_IP) >= mark + 2, timeout=60, what="two more ldirectord rounds")
        assert added(m1, good) - adds == 3 and m1.count(UNDOING) == 1
        assert table(ipvsadm) == {}  # ldirectord's way: GOOD held out, BAD deleted by M1 before the fight
        deletes = ld.said(f"Deleted real server: {good} ") - deletes
        assert deletes == 4, deletes  # the first (not an undoing: monitor_rs had not changed GOOD), then 3
        code, snap = m1.status()
        (svc,) = snap["services"]
        assert code == 1 and svc["contested"] is True and UNDOING in svc["problem"], (code, svc)
        figures.append(f"ldirectord (maintenancedir, checkinterval=1): {times} of monitor_rs's adds undone in "
                       f"{span:g} s, stopped {took:.1f} s after the maintenance file; ldirectord deleted GOOD "
                       f"{deletes} times (the first not an undoing)")

        ld.stop()  # cleanstop=no: the table stays as it is
        assert table(ipvsadm) == {}
        m1.signal(signal.SIGHUP)
        m1.wait_log(RESUMED)
        wait_until(lambda: table(ipvsadm) == {good: 1}, timeout=60, what="monitor_rs's table again")
        probes(2, "two more passes")
        assert table(ipvsadm) == {good: 1} and no_problem(m1)

        # 2. a second monitor_rs, check = off ----------------------------------------------------
        adds = added(m1, good)
        started = time.monotonic()
        m2.start()
        wait_until(lambda: m1.count(UNDOING) >= 2 or m2.count(UNDOING) >= 1, timeout=90,
                   what="one of the two monitors to stop")
        took = time.monotonic() - started
        probes(4, "four more passes")
        settled = table(ipvsadm)
        changes = (added(m1, good), m2.count(f"{good} is out of work"))
        probes(4, "four more passes")
        assert table(ipvsadm) == settled and (added(m1, good), m2.count(f"{good} is out of work")) == changes
        stopped = [name for name, monitor, before in (("M1", m1, 1), ("M2", m2, 0))
                   if monitor.count(UNDOING) > before]
        assert len(stopped) == 1, stopped  # the first to stop lets the other's change hold
        assert m1.count(UNDOING) + m2.count(UNDOING) == 2  # the fight with ldirectord's, and this one, once
        loser = m1 if stopped == ["M1"] else m2
        times, span = undone_in([line for line in loser.lines() if CONTEST in line][-1], good)
        assert times == 3
        assert settled == ({} if loser is m1 else {good: 1})
        code, snap = loser.status()
        assert code == 1 and snap["services"][0]["contested"] is True
        figures.append(f"a second monitor_rs (check = off) against the first: {stopped[0]} stopped "
                       f"({times} undone in {span:g} s, {took:.1f} s after M2 started; M1 added GOOD "
                       f"{added(m1, good) - adds} times); the other kept the table its way")
        assert m2.stop()[0] == 0  # cleanstop is no: the table stays
        if loser is m1:
            m1.signal(signal.SIGHUP)
            m1.wait_log(RESUMED, count=2)
        wait_until(lambda: table(ipvsadm) == {good: 1}, timeout=60, what="monitor_rs's table again")

        # 3. keepalived, a virtual_server block ----------------------------------------------------
        contests = m1.count(UNDOING)
        keepalived = Keepalived(tmp_path / "keepalived", sites)
        deleted = m1.count(f"{bad} is out of work, deleted from")
        wait_until(lambda: m1.count(f"{bad} is out of work, deleted from") > deleted, timeout=60,
                   what="keepalived to put BAD in, and monitor_rs to delete it")
        mark = sites.asked(BAD_IP, KEEPALIVED_AGENT)
        wait_until(lambda: sites.asked(BAD_IP, KEEPALIVED_AGENT) >= mark + 3, timeout=60,
                   what="three more keepalived checks of BAD (they pass: status_code 500)")
        assert table(ipvsadm) == {good: 1}
        assert m1.count(f"{bad} is out of work, deleted from") == deleted + 1 and m1.count(UNDOING) == contests
        figures.append("keepalived (HTTP_GET passing BAD, delay_loop 1): put BAD in at its start; deleted by "
                       "monitor_rs, not put back over 3 of its checks (no tug of war)")
        print("\n" + "\n".join(figures))
    except BaseException:
        for name, lines in (("M1", m1.lines()), ("M2", m2.lines()),
                            ("ldirectord", ld.lines() if ld else [])):
            print(f"--- {name}, its last lines:\n" + "\n".join(lines[-40:]))
        if keepalived is not None:
            print("--- keepalived:\n" + keepalived.out.read_text(errors="replace")[-3000:])
        raise
    finally:
        for monitor in (m1, m2):
            monitor.kill()
        for other in (ld, keepalived):
            if other is not None:
                other.kill()
        sites.stop()
        ipvs.close()
        if os.environ.get("MONITOR_RS_VM_OUT"):  # tests/vm/run keeps what is left there
            (tmp_path / "figures.txt").write_text("\n".join(figures) + "\n")
            shutil.copytree(str(tmp_path), os.path.join(os.environ["MONITOR_RS_VM_OUT"], "test_vm_tug"),
                            ignore=shutil.ignore_patterns("bin", "*_temp", "client_body", "proxy", "fastcgi",
                                                          "uwsgi", "scgi"), dirs_exist_ok=True)
