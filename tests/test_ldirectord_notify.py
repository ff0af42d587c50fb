"""Issue 13, what ldirectord tells beyond its table: syslog, emailalert, fallbackcommand.

End to end: the monitor as a subprocess (tests/harness.py) on the fake ipvsadm, real HTTP
servers on loopback; the mail relay is a real SMTP server (aiosmtpd) or a silent one in
another process (tests/smtp_sink.py); syslog is a datagram socket of the test's, put on
/dev/log in a private mount namespace of the monitor's (root and unshare(1) needed).
"""

import dataclasses
import email
import email.message
import email.policy
import signal
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

import monitor_rs as m
from harness import config, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
SINK = os.path.join(HERE, "smtp_sink.py")
VIP = "127.0.0.1:80"  # the ipvs fixture's service
INTERVAL = 0.2


def conf(servers, weights=None, monitor="", service="", interval=INTERVAL, timeout=2.0, **kw):
    """harness.config with `monitor` lines in [monitor] and `service` lines in [virtual web]; a
    timeout that a loaded machine keeps (the servers here answer or refuse at once)."""
    text = config(VIP, servers, weights or [1] * len(servers), interval=interval, timeout=timeout, extra=service,
                  **kw)
    return text.replace("[monitor]\n", "[monitor]\n" + monitor, 1)


def in_table(ipvs, *backends, weight=1):
    for backend in backends:
        ipvs.run("-a", "-t", VIP, "-r", backend.address, "-m", "-w", str(weight))


def pass_time(monitor):
    try:
        return json.loads(monitor.state.read_text())["time"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def wait_passes(monitor, count=3):
    """Until `count` more passes have been written to the state file (each rewrites it)."""
    seen = {pass_time(monitor)}
    wait_until(lambda: seen.add(pass_time(monitor)) or len(seen - {None}) > count, what=f"{count} more passes")


def wait_state(monitor, server, state):
    wait_until(lambda: (monitor.server_state(server) or {}).get("state") == state, what=f"{server} {state}")


class Relay:
    """A mail relay in its own process: `sink` keeps what it takes, `silent` never answers."""

    def __init__(self, tmp_path, mode="sink", port=0):
        self.out = tmp_path / f"mail-{mode}-{time.monotonic_ns()}.jsonl"
        self.proc = subprocess.Popen([sys.executable, SINK, mode, str(self.out), str(port)],
                                     stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def mails(self):
        """Each mail taken: its envelope and its parsed message."""
        try:
            lines = self.out.read_text().splitlines()
        except FileNotFoundError:
            return []
        mails = []
        for line in lines:
            record = json.loads(line)
            record["message"] = email.message_from_string(record["data"], policy=email.policy.default)
            mails.append(record)
        return mails

    def subjects(self):
        return [mail["message"]["Subject"] for mail in self.mails()]

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def relay(tmp_path):
    started = []

    def make(mode="sink", port=0):
        started.append(Relay(tmp_path, mode, port))
        return started[-1]

    yield make
    for one in started:
        one.stop()


def mail_conf(relay, servers, service="", monitor="", **kw):
    return conf(servers, monitor=f"smtp = {relay.address}\nemailalertfrom = LVS alerts <lvs@example.org>\n"
                + monitor, service="emailalert = ops@example.org, oncall@example.org\n" + service, **kw)


###############################################################################
# emailalert ###################################################################
###############################################################################


def test_a_server_down_and_back_is_two_mails_with_ldirectords_subjects(ipvs, run, backends, relay):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    in_table(ipvs, a, b)
    sink = relay()
    monitor = run(ipvs, mail_conf(sink, [a.address, b.address])).start()
    wait_passes(monitor, 2)
    b.stop()
    wait_until(lambda: len(sink.mails()) >= 1, what="the mail of b down")
    b.start()
    wait_until(lambda: len(sink.mails()) >= 2, what="the mail of b back")
    wait_state(monitor, b.address, "up")
    wait_passes(monitor, 3)
    mails = sink.mails()
    assert [mail["message"]["Subject"] for mail in mails] == [
        f"Deleted real server: {b.address} ({VIP})",
        f"Added real server: {b.address} ({VIP}) (Weight set to 1)"]
    for mail, state in zip(mails, ("down", "up")):
        message = mail["message"]
        assert mail["from"] == "lvs@example.org"
        assert mail["to"] == ["ops@example.org", "oncall@example.org"]
        assert message["From"] == "LVS alerts <lvs@example.org>"
        assert message["To"] == "ops@example.org, oncall@example.org"
        body = message.get_content()
        for line in ("Daemon-Status: running", f"Virtual service: {VIP} (web)", f"Real server: {b.address}",
                     f"State: {state}", f"Log-Message: {message['Subject']}", "Reason: ", "Time: "):
            assert line in body, body
    assert monitor.count("emailalert: Deleted real server") == 1
    assert monitor.count("emailalert: Added real server") == 1


def test_the_fallback_server_coming_and_going_is_mailed_too(ipvs, run, backends, relay):
    """ldirectord's "Added fallback server" / "Deleted fallback server" (its _restore_service and
    _remove_service mail the fallback as they do a real server)."""
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    in_table(ipvs, a, b)
    sink = relay()
    monitor = run(ipvs, mail_conf(sink, [a.address, b.address], service="fallback = 127.0.0.9:8080\n")).start()
    wait_passes(monitor, 2)
    a.stop()
    b.stop()
    added = f"Added fallback server: 127.0.0.9:8080 ({VIP}) (Weight set to 1)"
    wait_until(lambda: added in sink.subjects(), what="the fallback's mail")
    a.start()
    deleted = f"Deleted fallback server: 127.0.0.9:8080 ({VIP})"
    wait_until(lambda: deleted in sink.subjects(), what="the fallback's leaving mail")
    wait_passes(monitor, 3)
    subjects = sink.subjects()
    assert sorted(subjects[:3]) == sorted([f"Deleted real server: {a.address} ({VIP})",
                                           f"Deleted real server: {b.address} ({VIP})", added]), subjects
    assert subjects[3:] == [f"Added real server: {a.address} ({VIP}) (Weight set to 1)", deleted], subjects
    body = sink.mails()[subjects.index(added)]["message"].get_content()
    assert "Real server: 127.0.0.9:8080 (fallback)" in body and "Reason: no real server is up" in body, body


@pytest.mark.parametrize("status", ["starting", "running", "reloading", "none", "starting, reloading"])
def test_emailalertstatus_names_the_phases_whose_alerts_go_out(status, ipvs, run, backends, relay):
    """starting: the first pass (a is added); reloading: the first pass after a SIGHUP (b, new in the
    config, is added); running: the others (a goes down)."""
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    sink = relay()
    monitor = run(ipvs, mail_conf(sink, [a.address], service=f"emailalertstatus = {status}\n")).start()
    wait_state(monitor, a.address, "up")
    monitor.config.write_text(mail_conf(sink, [a.address, b.address], service=f"emailalertstatus = {status}\n"))
    monitor.signal(signal.SIGHUP)
    wait_state(monitor, b.address, "up")
    a.stop()
    monitor.wait_log(f"{a.address} is down")
    wait_passes(monitor, 3)
    expected = {
        "starting": [f"Added real server: {a.address} ({VIP}) (Weight set to 1)"],
        "reloading": [f"Added real server: {b.address} ({VIP}) (Weight set to 1)"],
        "running": [f"Deleted real server: {a.address} ({VIP})"],
        "none": [],
    }
    want = [subject for word in status.split(", ") for subject in expected[word]]
    if want:
        wait_until(lambda: len(sink.mails()) >= len(want), what=f"{len(want)} mail(s)")
    assert sink.subjects() == want
    assert monitor.count("emailalert: ") == len(want)
    for mail in sink.mails():
        phase = next(word for word in status.split(", ") if mail["message"]["Subject"] in expected[word])
        assert f"Daemon-Status: {phase}" in mail["message"].get_content()


def test_emailalertfreq_repeats_the_alert_while_the_server_stays_down(ipvs, run, backends, relay):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    in_table(ipvs, a, b)
    sink = relay()
    monitor = run(ipvs, mail_conf(sink, [a.address, b.address], service="emailalertfreq = 2\n")).start()
    wait_passes(monitor, 2)
    b.stop()
    inaccessible = f"Inaccessible real server: {b.address} ({VIP})"
    wait_until(lambda: sink.subjects().count(inaccessible) >= 3, what="three repeats")
    b.start()
    wait_until(lambda: sink.subjects()[-1].startswith("Added real server"), what="the mail of b back")
    wait_passes(monitor, int(4 / INTERVAL))  # 4 s: two repeats, were b still taken for down
    subjects = sink.subjects()
    assert subjects[0] == f"Deleted real server: {b.address} ({VIP})"
    assert subjects[-1] == f"Added real server: {b.address} ({VIP}) (Weight set to 1)"
    assert set(subjects[1:-1]) == {inaccessible} and len(subjects) >= 5, subjects
    times = [mail["at"] for mail in sink.mails()[:-1]]  # when the relay took them: the worker's pace too
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    average = (times[-1] - times[0]) / len(gaps)
    assert all(0.8 <= gap <= 6.0 for gap in gaps) and 1.7 <= average <= 4.0, gaps  # every 2 s, to a pass or so
    assert "State: down" in sink.mails()[1]["message"].get_content()


def test_a_relay_that_never_answers_does_not_slow_the_passes(ipvs, run, backends, relay):
    """The worker waits on the relay (10 s a step); the passes go on every 0.2 s, each change
    said and made as it comes; at stop, the mail left gets 5 s, then is said unsent."""
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    in_table(ipvs, a, b)
    silent = relay("silent")
    monitor = run(ipvs, mail_conf(silent, [a.address, b.address])).start()
    wait_passes(monitor, 2)
    passes = {}

    def watch():
        try:
            snap = json.loads(monitor.state.read_text())
            passes[snap["time"]] = snap["pass_seconds"]
        except (FileNotFoundError, ValueError):
            pass

    for round_ in range(1, 4):
        b.stop()
        wait_until(lambda: watch() or monitor.count("emailalert: Deleted real server") >= round_,
                   what=f"b down, round {round_}")
        b.start()
        wait_until(lambda: watch() or monitor.count("emailalert: Added real server") >= round_,
                   what=f"b back, round {round_}")
    wait_until(lambda: watch() or ipvs.dests(VIP).get(b.address) == ("Masq", 1), what="b in the table")
    wait_until(lambda: watch() or len(passes) >= 15, what="15 passes seen")  # the worker is still stuck
    started = sorted(passes)
    gaps = [later - earlier for earlier, later in zip(started, started[1:])]
    # a pass that waited on the relay would take its 10 s (m.Mailer.TIMEOUT), a mail at a time
    assert max(passes.values()) < m.Mailer.TIMEOUT / 2 and max(gaps) < m.Mailer.TIMEOUT / 2, (passes, gaps)
    before = time.monotonic()
    code, _, _ = monitor.stop()
    assert code == 0 and time.monotonic() - before < 10
    assert monitor.count("alert(s) not sent: the relay did not take them within 5 s of the stop") == 1


def test_a_relay_that_refuses_is_said_once_and_its_return_too(ipvs, run, backends, relay, tmp_path):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    in_table(ipvs, a, b)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: the connect is refused

    class Closed:
        address = f"127.0.0.1:{port}"

    monitor = run(ipvs, mail_conf(Closed, [a.address, b.address])).start()
    wait_passes(monitor, 2)
    for round_ in (1, 2):
        b.stop()
        monitor.wait_log("emailalert: Deleted real server", count=round_)
        b.start()
        monitor.wait_log("emailalert: Added real server", count=round_)
    refused = f"emailalert: cannot send through 127.0.0.1:{port}: Connection refused"
    monitor.wait_log(refused)
    wait_passes(monitor, 3)
    assert monitor.count(refused) == 1
    sink = relay(port=port)
    b.stop()
    wait_until(lambda: sink.subjects() == [f"Deleted real server: {b.address} ({VIP})"], what="the mail")
    monitor.wait_log(f"emailalert: the relay 127.0.0.1:{port} takes mail again")
    assert monitor.count("cannot send through") == 1


def test_a_full_mail_queue_drops_at_once_and_says_so_once(relay):
    """The loop's side of the worker: a relay stuck on the first mail, a queue of 2: the next
    two wait, the rest are dropped at once, said once; room again is said too."""
    silent = relay("silent")

    class Small(m.Mailer):
        QUEUE = 2
        TIMEOUT = 1.0

    mailer = Small()
    message = email.message.EmailMessage()
    message["Subject"] = "test"
    took = []
    for _ in range(6):
        before = time.monotonic()
        mailer.send(silent.address, "lvs@example.org", ["ops@example.org"], message)
        took.append(time.monotonic() - before)
        time.sleep(0.05)  # the worker takes the first off the queue
    assert max(took) < 0.1, took
    said = [text for text, kind in mailer.news]
    assert len([text for text in said if "dropped until there is room" in text]) == 1, said
    assert mailer.flush(10.0) == 0  # each waits its 1 s timeout and fails: the queue empties
    mailer.send(silent.address, "lvs@example.org", ["ops@example.org"], message)
    said = [text for text, kind in mailer.news]
    assert said[-1] == "emailalert: the mail queue has room again (3 alert(s) dropped)", said
    assert len([text for text in said if "cannot send through" in text and "timed out" in text]) == 1, said


###############################################################################
# fallbackcommand ##############################################################
###############################################################################


def recorder(tmp_path, name="fallback.sh", sleep=0):
    """A fallbackcommand that appends its arguments and MONITOR_RS_SERVICE to a file, one line a run."""
    out = tmp_path / f"{name}.out"
    script = tmp_path / name
    script.write_text(f"#!/bin/sh\necho \"$* [$MONITOR_RS_SERVICE]\" >> '{out}'\n"
                      + (f"sleep {sleep}\necho \"$1 done\" >> '{out}'\n" if sleep else ""))
    os.chmod(script, 0o755)
    return script, out


def runs(out):
    try:
        return out.read_text().splitlines()
    except FileNotFoundError:
        return []


def test_fallbackcommand_runs_once_when_the_pool_empties_and_once_when_it_fills(ipvs, run, backends, tmp_path):
    """As ldirectord: `start VIP:PORT PROTOCOL` when no real server is up, `stop` when one is back,
    once each (and once at start with the status found); the fallback server comes and goes too."""
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    in_table(ipvs, a, b)
    script, out = recorder(tmp_path)
    monitor = run(ipvs, conf([a.address, b.address],
                             service=f"fallbackcommand = {script}\nfallback = 127.0.0.9:8080\n")).start()
    wait_until(lambda: runs(out) == [f"stop {VIP} tcp [{VIP}]"], what="the status found at start")
    a.stop()
    b.stop()
    wait_until(lambda: len(runs(out)) == 2, what="start")
    wait_passes(monitor, 4)
    assert runs(out) == [f"stop {VIP} tcp [{VIP}]", f"start {VIP} tcp [{VIP}]"]
    assert set(ipvs.dests(VIP)) == {"127.0.0.9:8080"}
    assert monitor.count(f"{VIP} (web): no real server is up: fallbackcommand {script} start {VIP} tcp") == 1
    a.start()
    wait_until(lambda: len(runs(out)) == 3, what="stop")
    wait_until(lambda: set(ipvs.dests(VIP)) == {a.address}, what="a back, the fallback gone")
    wait_passes(monitor, 4)
    assert runs(out)[2] == f"stop {VIP} tcp [{VIP}]" and len(runs(out)) == 3


def test_fallbackcommand_of_a_firewall_mark_service_gets_what_ldirectord_gives(ipvs, run, backends, tmp_path):
    """ldirectord passes its server (unset for a mark) and port (0): `start :0 fwm`; the mark is in
    MONITOR_RS_SERVICE."""
    a = backends(ip="127.0.0.11")
    ipvs.run("-A", "-f", "7", "-s", "wrr")
    script, out = recorder(tmp_path)
    text = (f"[monitor]\ninterval = {INTERVAL}\ntimeout = 2\n\n[virtual marked]\nprotocol = fwm\nfwmark = 7\n"
            f"rport = {a.port}\nrs = {a.ip}\ntype = m\nfallbackcommand = {script}\n")
    monitor = run(ipvs, text).start()
    wait_until(lambda: runs(out)[-1:] == ["stop :0 fwm [7]"], what="stop: a is added")
    a.stop()
    wait_until(lambda: runs(out)[-1:] == ["start :0 fwm [7]"], what="start: a is down")
    monitor.stop()
    lines = runs(out)
    assert set(lines) == {"stop :0 fwm [7]", "start :0 fwm [7]"}, lines
    assert all(one != two for one, two in zip(lines, lines[1:])), lines  # once per change


def test_a_slow_fallbackcommand_holds_neither_the_pass_nor_the_order(ipvs, run, backends, tmp_path):
    """`start` still runs (3 s) when the pool fills again: `stop` waits for it, never runs beside it;
    the passes go on meanwhile."""
    a = backends(ip="127.0.0.11")
    in_table(ipvs, a)
    script, out = recorder(tmp_path, sleep=3)
    monitor = run(ipvs, conf([a.address], service=f"fallbackcommand = {script}\n")).start()
    wait_until(lambda: runs(out)[-1:] == ["stop done"], what="the status found at start")
    a.stop()
    wait_until(lambda: runs(out)[-1:] == [f"start {VIP} tcp [{VIP}]"], what="start running")
    a.start()
    meanwhile = set()
    wait_until(lambda: meanwhile.add(pass_time(monitor)) or "start done" in runs(out), what="start done")
    assert len(meanwhile - {None}) >= 3, meanwhile  # passes went on while it ran (a waited run: one)
    wait_until(lambda: runs(out)[-3:] == ["start done", f"stop {VIP} tcp [{VIP}]", "stop done"], what="stop after")
    wait_state(monitor, a.address, "up")


def test_fallbackcommand_is_not_run_by_dry_run_nor_status(ipvs, run, backends, tmp_path):
    a = backends(ip="127.0.0.11")
    a.stop()  # the pool is empty: a real pass would run `start`
    script, out = recorder(tmp_path)
    monitor = run(ipvs, conf([a.address], service=f"fallbackcommand = {script}\n"))
    proc = subprocess.run(monitor.argv + ["--dry-run", "--once"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "fallbackcommand" not in proc.stdout + proc.stderr, proc.stdout
    code, snap = monitor.status()
    assert code == 1 and snap["source"] == "probe"
    assert runs(out) == []
    proc = monitor.once()  # the control: a real pass runs it
    assert "fallbackcommand" in monitor.log.read_text()
    wait_until(lambda: runs(out) == [f"start {VIP} tcp [{VIP}]"], what="the real pass's run")


###############################################################################
# syslog #######################################################################
###############################################################################


def _unshare_works():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


needs_unshare = pytest.mark.skipif(not _unshare_works(), reason="needs root and unshare -m (a private /dev/log)")

# In the monitor's own mount namespace: /dev a fresh tmpfs holding links to the real entries,
# and /dev/log the test's socket (bind-mounted) or nothing at all.
NAMESPACE = """set -e
mount --make-rprivate /
mkdir -p "$OLD"
mount --rbind /dev "$OLD"
mount -t tmpfs tmpfs /dev
for entry in "$OLD"/*; do ln -s "$entry" "/dev/${entry##*/}"; done
if [ -n "$LOG" ]; then : > /dev/log; mount --bind "$LOG" /dev/log; fi
exec "$@"
"""


def namespaced(monitor, tmp_path, log_socket):
    """Run `monitor` with the test's socket (a path, or None for none) as its /dev/log."""
    monitor.argv = ["unshare", "-m", "env", f"OLD={tmp_path / 'olddev'}", f"LOG={log_socket or ''}",
                    "sh", "-c", NAMESPACE, "sh", *monitor.argv]
    return monitor


class Syslogd:
    """The test's /dev/log: a datagram socket whose datagrams are read on demand."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.got = []

    def read(self):
        while True:
            try:
                self.got.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return self.got

    def lines(self):
        """(PRI, ident, message) of each datagram."""
        out = []
        for datagram in self.read():
            head, _, message = datagram.partition(": ")
            pri, _, rest = head[1:].partition(">")
            out.append((int(pri), rest[16:], message))  # rest: "Mmm dd hh:mm:ss ident[pid]"
        return out


LOCAL0 = 16


@needs_unshare
def test_every_log_line_goes_to_syslog_with_its_facility_and_priority(ipvs, run, backends, tmp_path):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    in_table(ipvs, a, b)
    syslogd = Syslogd(tmp_path / "log.sock")
    monitor = namespaced(run(ipvs, conf([a.address, b.address], monitor="syslog = local0\n")), tmp_path,
                         syslogd.path).start()
    wait_passes(monitor, 2)
    b.stop()
    monitor.wait_log(f"{b.address} is out of work, deleted")
    ipvs.fault("fail-add")
    b.start()
    monitor.wait_log(f"{b.address} add FAILED")
    ipvs.fault("")
    monitor.wait_log(f"{b.address} has been added")
    code, _, err = monitor.stop()
    assert code == 0 and "syslog" not in err, err
    lines = syslogd.lines()
    assert {ident for _, ident, _ in lines} == {f"monitor_rs[{monitor.proc.pid}]"}
    logged = [line.split(", ", 1)[1] for line in monitor.lines()]
    assert [message for _, _, message in lines] == logged
    pri = {message: code for code, _, message in lines}
    by_start = lambda text: next(code for message, code in pri.items() if message.startswith(text))  # noqa: E731
    assert by_start("monitor_rs ") == LOCAL0 * 8 + 6  # info
    assert by_start(f"{b.address} is down") == LOCAL0 * 8 + 4  # warning
    assert by_start(f"{b.address} add FAILED") == LOCAL0 * 8 + 3  # err
    assert by_start(f"{b.address} has been added") == LOCAL0 * 8 + 6


@needs_unshare
def test_syslog_without_a_log_file_is_the_only_log(ipvs, run, backends, tmp_path):
    """ldirectord's logfile = "daemon": syslog instead of a file."""
    a = backends(ip="127.0.0.11")
    syslogd = Syslogd(tmp_path / "log.sock")
    monitor = namespaced(run(ipvs, conf([a.address], monitor="syslog = daemon\n"), "--log-file", ""), tmp_path,
                         syslogd.path).start()
    wait_until(lambda: any(f"{a.address} has been added" in text for _, _, text in syslogd.lines()),
               what="the add in syslog")
    monitor.stop()
    assert not monitor.log.exists()
    assert {code for code, _, _ in syslogd.lines()} == {3 * 8 + 6}  # daemon.info


@needs_unshare
def test_no_syslog_is_said_once_and_monitoring_goes_on(ipvs, run, backends, tmp_path):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    monitor = namespaced(run(ipvs, conf([a.address, b.address], monitor="syslog = local3\n")), tmp_path,
                         None).start()
    monitor.wait_log(f"{b.address} has been added")
    b.stop()
    monitor.wait_log(f"{b.address} is out of work")
    code, _, err = monitor.stop()
    assert code == 0
    assert err.count("cannot send to syslog (/dev/log): No such file or directory") == 1, err


@needs_unshare
def test_a_syslog_that_reads_nothing_never_holds_the_loop(ipvs, run, backends, tmp_path):
    """syslog(3) would wait for room once the reader's queue is full (a journald stuck): the passes
    would stop.  Here lines are dropped, said once, and said again when syslog takes them."""
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    in_table(ipvs, a, b)
    syslogd = Syslogd(tmp_path / "log.sock")  # never read until the end
    monitor = namespaced(run(ipvs, conf([a.address, b.address], monitor="syslog = local0\n"), "-v"), tmp_path,
                         syslogd.path).start()
    for round_ in range(1, 4):  # -v: two lines a pass, far past the queue's room (net.unix.max_dgram_qlen)
        b.stop()
        monitor.wait_log(f"{b.address} is out of work", count=round_)
        b.start()
        monitor.wait_log(f"{b.address} has been added", count=round_)
    wait_passes(monitor, 3)  # and on: syslog(3) would have held the loop from the 11th line
    syslogd.read()  # room again
    wait_passes(monitor, 2)
    code, _, err = monitor.stop()
    assert code == 0
    assert err.count("cannot send to syslog (/dev/log): it takes no more lines") == 1, err
    assert err.count("syslog (/dev/log) takes lines again") == 1, err


###############################################################################
# The readers (minimal, ldparse writes the real ones) ##########################
###############################################################################


def test_the_notify_keys_are_read_and_checked(tmp_path):
    path = tmp_path / "c.conf"
    path.write_text(conf(["127.0.0.11:8080"], monitor="syslog = LOCAL5\nsmtp = [::1]:2525\n",
                         service="emailalert = a@x, b@y\nemailalertfreq = 60\nemailalertstatus = starting,running\n"
                                 "fallbackcommand = /bin/true --flag\n"))
    cfg = m.load_config(str(path))
    vs = cfg.services[0]
    assert (cfg.syslog, cfg.smtp) == ("local5", "[::1]:2525")
    assert (vs.emailalert, vs.emailalertfreq, vs.emailalertstatus, vs.fallbackcommand) == (
        ("a@x", "b@y"), 60.0, ("starting", "running"), ("/bin/true", "--flag"))
    for monitor, service, key in [("syslog = local9\n", "", "syslog"), ("smtp = a:b:c\n", "", "smtp"),
                                  ("", "emailalertstatus = none, running\n", "emailalertstatus"),
                                  ("", "emailalertstatus = sometimes\n", "emailalertstatus"),
                                  ("", "fallbackcommand = 'unclosed\n", "fallbackcommand")]:
        path.write_text(conf(["127.0.0.11:8080"], monitor=monitor, service=service))
        with pytest.raises(m.ConfigError, match=f"] {key} = "):
            m.load_config(str(path))


###############################################################################
# Whatever the config says, the pass goes on ####################################
###############################################################################


class Said(m.Output):
    def __init__(self):
        super().__init__(m.LogFile(None), None, to_log=False, echo=False)
        self.lines = []

    def say(self, message, kind="info", log=True):
        self.lines.append((kind, message))


def test_a_mail_the_email_package_refuses_is_said_once_and_the_pass_goes_on(tmp_path):
    """A reader that let a line break into an address (ldparse's, not this one): said, never raised."""
    path = tmp_path / "c.conf"
    path.write_text(conf(["127.0.0.11:8080"], service="emailalert = ops@example.org\n"))
    cfg = m.load_config(str(path))
    vs = dataclasses.replace(cfg.services[0], emailalert=("ops@example.org\nBcc: x@example.org",))
    said = Said()
    monitor = m.Monitor(dataclasses.replace(cfg, services=(vs,)), m.Ipvsadm("/bin/false"), said)
    for _ in range(2):
        monitor._mail(vs, "Deleted real server: x", "x", "down", "refused", m.Phase.RUNNING, time.time())
    failed = [text for kind, text in said.lines if kind == "failed"]
    assert len(failed) == 1 and "cannot make the mail of 127.0.0.1:80 (web)" in failed[0], said.lines
    assert monitor.mailer.thread is None  # nothing handed to the worker


def test_an_unknown_syslog_facility_is_said_once_and_never_raises():
    warned = []
    log = m.LogFile(None, warn=warned.append, facility="local9")
    log.write("one")
    log.write("two", kind="failed")
    assert warned == ["monitor_rs: cannot send to syslog (/dev/log): 'local9' is not a syslog facility; "
                      "its lines are dropped, monitoring goes on"]
