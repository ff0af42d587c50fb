"""check = tcp with request and receive (issue 12): banner and line protocols, against real
servers in other processes (an SMTP server, Redis, and tests/talkers.py's misbehaving ones),
the config's escapes and defaults, and a Redis-checked server end to end."""

import importlib.util
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import monitor_rs as m
from harness import SLOW, config, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
IN_CI = os.environ.get("CI") == "true"
VIP = "127.0.0.1:80"


def target(ip, port, request="", receive=""):
    """As _tcp_target builds it: the request as its bytes, one latin-1 character each."""
    return m.ProbeTarget("tcp", ipaddress.ip_address(ip), port, request, receive=receive)


def probe(tgt, timeout=3.0):
    return m.probe_all([tgt], timeout)[tgt]


def free_port(ip):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def listening(ip, port, proc, what):
    def up():
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}")
        with socket.socket() as s:
            return s.connect_ex((ip, port)) == 0
    wait_until(up, what=f"{what} listening on {ip}:{port}")


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def needed(present, what, install):
    if not present:
        if IN_CI:
            pytest.fail(f"{what} is not installed (.ci/run installs it)")
        pytest.skip(f"{what} is not installed here ({install})")


###############################################################################
# Real servers: an SMTP server (aiosmtpd), Redis ##############################
###############################################################################


@pytest.fixture
def smtp():
    """aiosmtpd's SMTP server, in its own process: (ip, port)."""
    needed(importlib.util.find_spec("aiosmtpd"), "aiosmtpd", "pip install -e '.[test]'")
    ip = "127.0.0.71"
    port = free_port(ip)
    proc = subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-l", f"{ip}:{port}"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        listening(ip, port, proc, "aiosmtpd")
        yield ip, port
    finally:
        stop(proc)


class Redis:
    """redis-server in its own process, nothing written to disk; `stop()` ends it."""

    BINARY = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/local/bin")

    def __init__(self, ip, tmp_path):
        self.ip, self.port = ip, free_port(ip)
        self.proc = subprocess.Popen([self.BINARY, "--port", str(self.port), "--bind", ip, "--save", "",
                                      "--appendonly", "no", "--dir", str(tmp_path)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        listening(ip, self.port, self.proc, "redis-server")

    @property
    def address(self):
        return f"{self.ip}:{self.port}"

    def stop(self):
        stop(self.proc)


@pytest.fixture
def redis(tmp_path):
    needed(Redis.BINARY, "redis-server", "apt-get install redis-server")
    server = Redis("127.0.0.72", tmp_path)
    yield server
    server.stop()


def test_smtp_banner_220_is_healthy(smtp):
    r = probe(target(*smtp, receive="220"))
    assert (r.ok, r.reason) == (True, "received '220'")
    r = probe(target(*smtp, receive="554"), timeout=1.0)  # only the banner comes: nothing else is sent
    assert not r.ok and r.reason == "timeout (answer)"


def test_smtp_quit_answered_221_is_healthy(smtp):
    r = probe(target(*smtp, request="QUIT\r\n", receive="221"))
    assert (r.ok, r.reason) == (True, "received '221'")
    r = probe(target(*smtp, request="QUIT\r\n", receive="250 OK"))  # 221 Bye, then the server closes
    assert (r.ok, r.reason) == (False, "closed before '250 OK'")


def test_redis_ping_answered_pong(redis):
    r = probe(target(redis.ip, redis.port, request="PING\r\n", receive="+PONG"))
    assert (r.ok, r.reason) == (True, "received '+PONG'")
    r = probe(target(redis.ip, redis.port, request="PING\r\n"))  # a request alone: any answer will do
    assert (r.ok, r.reason) == (True, "answered")
    r = probe(target(redis.ip, redis.port, receive="+PONG"), timeout=1.0)  # no banner: Redis waits for a command
    assert (r.ok, r.reason) == (False, "timeout (answer)")
    redis.stop()
    assert probe(target(redis.ip, redis.port, request="PING\r\n", receive="+PONG")).reason == "refused"


###############################################################################
# Servers that misbehave (tests/talkers.py, another process) #################
###############################################################################

MODES = ("closes", "silent", "dribble", "flood")


@pytest.fixture(scope="module")
def talkers():
    """{mode: (ip, port)} of tests/talkers.py's servers."""
    ip = "127.0.0.73"
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "talkers.py"), ip, *MODES],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ports = json.loads(proc.stdout.readline())
        yield {mode: (ip, port) for mode, port in zip(MODES, ports)}
    finally:
        proc.stdin.close()
        stop(proc)


@pytest.mark.parametrize("mode, request_, receive, ok, reason", [
    ("closes", "", "+PONG", False, "closed before '+PONG'"),
    ("closes", "PING\r\n", "+PONG", False, "closed before '+PONG'"),
    ("closes", "", "220-not", True, "received '220-not'"),
    ("closes", "PING\r\n", "", True, "answered"),
    ("silent", "PING\r\n", "+PONG", False, "timeout (answer)"),
    ("silent", "", "220", False, "timeout (answer)"),
    ("silent", "PING\r\n", "", False, "timeout (answer)"),
    ("silent", "", "", True, "connected"),  # neither: a connect, as before
    ("dribble", "PING\r\n", "+PONG", True, "received '+PONG'"),
    ("dribble", "", "PONG", True, "received 'PONG'"),
    ("flood", "PING\r\n", "+PONG", False, "receive text not found"),
])
def test_misbehaving_servers(talkers, mode, request_, receive, ok, reason):
    timeout = 1.0 if mode == "silent" else 3.0
    began = time.monotonic()
    r = probe(target(*talkers[mode], request=request_, receive=receive), timeout=timeout)
    assert (r.ok, r.reason) == (ok, reason)
    assert time.monotonic() - began < timeout + 2 * SLOW  # by its deadline, whatever the server does


def test_text_split_across_many_segments_is_found_not_searched_again_and_again(talkers):
    """The dribbling server sends "+PONG" a byte per segment: found across the reads."""
    tgt = target(*talkers["dribble"], receive="+PONG")
    check = m.TcpCheck(tgt, None)
    check.buf += b"x" * 1500 + b"+P"
    assert check.answer(eof=False) is None and check.searched == 1502
    check.buf += b"ON"
    assert check.answer(eof=False) is None
    check.buf += b"G"
    assert check.answer(eof=False) == (True, "received '+PONG'")
    assert probe(tgt).reason == "received '+PONG'"


def test_the_text_must_come_within_the_first_64_kib():
    check = m.TcpCheck(target("127.0.0.1", 1, receive="+PONG"), None)
    check.buf += b"y" * (m.BODY_CAP - 2) + b"+PONG"
    assert check.answer(eof=False) == (False, "receive text not found")


def test_a_bare_target_is_a_connect_the_http_default_path_is_not_sent(talkers):
    """ProbeTarget's request default is no one's: http sends "/" for it, tcp nothing."""
    bare = m.ProbeTarget("tcp", ipaddress.ip_address(talkers["silent"][0]), talkers["silent"][1])
    assert bare.request == "" and probe(bare, timeout=1.0).reason == "connected"
    assert m.ProbeTarget("http", bare.ip, 80).http_request.startswith(b"GET / HTTP/1.0\r\n")


###############################################################################
# The config: escapes, defaults from [monitor], --check-config ##############
###############################################################################

SERVICE = "[virtual redis]\nvip = 10.0.0.1\nvport = 6379\nrs = 10.0.0.2\n"


def load(tmp_path, monitor="", own=""):
    path = tmp_path / "monitorRS.conf"
    path.write_text(f"[monitor]\n{monitor}\n{SERVICE}{own}\n", encoding="utf-8")
    (vs,) = m.load_config(str(path)).services
    return vs, m.ProbeTarget.of(vs, vs.servers[0].ip, vs.servers[0].port)


def test_request_escapes_are_decoded_at_load(tmp_path):
    vs, t = load(tmp_path, own="check = tcp\nrequest = PING\\r\\n\\t\\\\ \\x00\\xffé\nreceive = +PONG")
    assert vs.request == "PING\\r\\n\\t\\\\ \\x00\\xffé"  # as written: --check-config shows it so
    assert t.request.encode("latin-1") == b"PING\r\n\t\\ \x00\xff\xc3\xa9"  # é as UTF-8
    assert t.receive == "+PONG"
    assert t.url() == "tcp://10.0.0.2:6379 send 'PING\\r\\n\\t\\\\ \\x00\\xff\\xc3\\xa9' expect '+PONG'"


@given(st.binary(max_size=64))
def test_a_request_shown_by_check_config_reads_back_as_the_same_bytes(sent):
    shown = m.escape_request(sent.decode("latin-1"))
    assert shown.isprintable() and "'" not in shown
    assert m.decode_request(shown) == sent


@pytest.mark.parametrize("request_, why", [
    ("PING\\r\\q", "bad escape \\q: the escapes are \\r \\n \\t \\\\ and \\xNN"),
    ("PING\\x4", "bad escape \\x4: "),
    ("PING\\xg0", "bad escape \\xg0: "),
    ("PING\\", "bad escape \\: "),
    ("PING\\N", "bad escape \\N: "),
    ("PING\n  more", "control character (a line break, ...) written as it is"),  # a continuation line
])
def test_a_bad_request_is_one_line_naming_file_section_and_key(tmp_path, request_, why):
    path = tmp_path / "monitorRS.conf"
    path.write_text(f"[monitor]\n{SERVICE}check = tcp\nrequest = {request_}\n")
    proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(HERE), "monitor_rs.py"),
                           "--config", str(path), "--check-config"], capture_output=True, text=True,
                          timeout=60 * SLOW)
    assert proc.returncode == 2, proc.stdout
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"monitor_rs: {path}: [virtual redis] request = ") and why in line, line


def test_a_receive_with_a_line_break_is_refused(tmp_path):
    with pytest.raises(m.ConfigError, match=r"\[virtual redis\] receive = .*receive is plain text"):
        load(tmp_path, own="check = tcp\nreceive = +PONG\n  more")


def test_tcp_without_request_or_receive_is_a_connect(tmp_path):
    vs, t = load(tmp_path, own="check = tcp")
    assert (vs.request, vs.receive, t.request, t.receive) == ("", "", "", "")
    assert t.url() == "tcp://10.0.0.2:6379"


@pytest.mark.parametrize("monitor", ["request = /\nreceive = OK", "check = http\nrequest = /health\nreceive = OK",
                                     "check = https\nrequest = /"])
def test_an_http_request_or_receive_in_monitor_never_reaches_a_tcp_service(tmp_path, monitor):
    """In [monitor] they are the http services' (a path, a body text): a tcp service was a connect
    with them before it could send, and stays one."""
    vs, t = load(tmp_path, monitor=monitor, own="check = tcp")
    assert (t.request, t.receive) == ("", "")
    assert t.url() == "tcp://10.0.0.2:6379"


def test_monitor_with_check_tcp_gives_its_request_and_receive_as_defaults(tmp_path):
    monitor = "check = tcp\nrequest = PING\\r\\n\nreceive = +PONG"
    vs, t = load(tmp_path, monitor=monitor)
    assert (t.request, t.receive) == ("PING\r\n", "+PONG")
    vs, t = load(tmp_path, monitor=monitor, own="check = tcp\nreceive = +OK")  # own keys win, the rest inherited
    assert (t.request, t.receive) == ("PING\r\n", "+OK")
    vs, t = load(tmp_path, monitor=monitor, own="request =\nreceive = 220")  # an empty own request sends nothing
    assert (t.request, t.receive) == ("", "220")
    with pytest.raises(m.ConfigError, match=r": \[monitor\] request = 'x\\\\q': bad escape \\q"):
        load(tmp_path, monitor="check = tcp\nrequest = x\\q")  # named where it was written


def test_check_config_shows_what_is_sent_and_expected(tmp_path):
    path = tmp_path / "monitorRS.conf"
    path.write_text(f"[monitor]\n{SERVICE}check = tcp\nrequest = QUIT\\r\\n\nreceive = 221\n")
    proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(HERE), "monitor_rs.py"),
                           "--config", str(path), "--check-config"], capture_output=True, text=True,
                          timeout=60 * SLOW)
    assert proc.returncode == 0, proc.stderr
    assert "check=tcp request=QUIT\\r\\n " in proc.stdout and "receive='221'" in proc.stdout
    assert ("  10.0.0.2:6379 weight 1: IPVS entry 10.0.0.2:6379, probe tcp://10.0.0.2:6379 "
            "send 'QUIT\\r\\n' expect '221'\n") in proc.stdout


###############################################################################
# End to end: the monitor, the fake ipvsadm, a real Redis #####################
###############################################################################


def test_a_redis_checked_server_is_added_and_removed_when_redis_stops(ipvs, run, redis, talkers):
    """Only Redis answers +PONG: a server that takes the connection and closes stays out."""
    other = "%s:%d" % talkers["closes"]
    extra = "check = tcp\nrequest = PING\\r\\n\nreceive = +PONG\n"
    monitor = run(ipvs, config(VIP, [redis.address, other], [2, 3], extra=extra)).start()
    wait_until(lambda: ipvs.dests(VIP) == {redis.address: ("Masq", 2)}, what="redis server added")
    monitor.wait_log(f"{redis.address} has been added to work in {VIP} (web) (weight 2)")
    wait_until(lambda: (monitor.server_state(other) or {}).get("reason") == "closed before '+PONG'",
               what="the other server's reason in the state file")
    assert ipvs.dests(VIP) == {redis.address: ("Masq", 2)}
    redis.stop()
    wait_until(lambda: redis.address not in ipvs.dests(VIP), what="redis server removed")
    monitor.wait_log(f"{redis.address} is down in {VIP} (web): refused")
    assert monitor.stop()[0] == 0
