"""The probe side of issue 13 (ldirectord.cf): httpmethod = HEAD, receive as a regular
expression (receive_regex), a real server's own request and receive, each virtual service's
own timeout, and check = on | off.  Against real servers: nginx, aiosmtpd, Redis, and
servers in other processes (tests/herd.py, tests/talkers.py, SPLIT below) where timing counts."""

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

import monitor_rs as m
from harness import SLOW, wait_until
from test_check_tcp import free_port, stop
from test_check_tcp import redis, smtp, talkers  # noqa: F401  (fixtures: servers in other processes)
from test_trust_stall import herd  # noqa: F401  (fixture: tests/herd.py)

IP = ipaddress.ip_address("127.0.0.1")
IN_CI = os.environ.get("CI") == "true"


def real(address, index=0, **kw):
    """A RealServer at "ip:port", with its own request/receive if given."""
    ep = m.parse_endpoint(address, None)
    return m.RealServer(ep.ip, ep.port, 1, index, **kw)


def service(servers, check="http", name="web", vport=80, **kw):
    """A VirtualService as a config reader builds it (request, receive as sent/as written)."""
    return m.VirtualService(name=name, protocol="tcp", vip=ipaddress.ip_address("10.0.0.1"), vport=vport, fwmark=0,
                            servers=tuple(servers), forward="-m", check=check, **kw)


def probe(targets, timeout=3.0):
    targets = list(targets)
    results = m.probe_all(targets, timeout)
    return [(results[t].ok, results[t].reason) for t in targets]


###############################################################################
# httpmethod = HEAD, against a real nginx ####################################
###############################################################################


@pytest.fixture
def nginx(tmp_path):
    """nginx (one process, in the foreground) on 127.0.0.1:<free port>, serving tmp_path/www;
    /head-only answers 405 to anything but HEAD."""
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        if IN_CI:
            pytest.fail("nginx is not installed (.ci/run installs it)")
        pytest.skip("nginx is not installed here (apt-get install nginx)")
    www = tmp_path / "www"
    www.mkdir()
    port = free_port("127.0.0.1")
    conf = tmp_path / "nginx.conf"
    temp = "".join(f"{kind}_temp_path {tmp_path}/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf.write_text(f"""daemon off;
master_process off;
pid {tmp_path}/nginx.pid;
error_log stderr;
events {{ worker_connections 64; }}
http {{
    access_log off;
    {temp}
    server {{
        listen 127.0.0.1:{port};
        root {www};
        location = /head-only {{
            if ($request_method != HEAD) {{ return 405; }}
            return 200 "headers only, no body\\n";
        }}
    }}
}}
""")
    proc = subprocess.Popen([binary, "-p", str(tmp_path), "-c", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        def listening():
            if proc.poll() is not None:
                raise AssertionError(f"nginx exited {proc.returncode}: {proc.communicate()[1]}")
            return probe([m.ProbeTarget("http", IP, port, "/nothing-here")], 2)[0] == (False, "HTTP 404")
        wait_until(listening, what="nginx listening")
        yield www, port
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_head_is_sent_and_judged_on_its_status(nginx):
    www, port = nginx
    rs = real(f"127.0.0.1:{port}")
    head = m.ProbeTarget.of(service([rs], httpmethod="HEAD", request="/head-only"), rs)
    get = m.ProbeTarget.of(service([rs], request="/head-only"), rs)
    assert head.http_request.startswith(b"HEAD /head-only HTTP/1.0\r\n")
    assert head.url() == f"HEAD http://127.0.0.1:{port}/head-only"
    assert get.url() == f"http://127.0.0.1:{port}/head-only"
    assert head != get  # two services checking one server, one with HEAD: two probes
    assert probe([head, get], 2) == [(True, "HTTP 200"), (False, "HTTP 405")]
    missing = m.ProbeTarget.of(service([rs], httpmethod="HEAD", request="/missing"), rs)
    assert probe([missing], 2) == [(False, "HTTP 404")]


def test_head_never_reads_a_body(nginx):
    """nginx answers HEAD with the Content-Length of the file and no body: the verdict is the
    status.  A receive never applies to HEAD (the config refuses it; were one there, no body
    would be waited for: GET's "receive text not found" would have been the verdict)."""
    www, port = nginx
    (www / "index.html").write_bytes(b"<html>" + b"x" * 30000 + b"centos welcomes you</html>\n")
    head = m.ProbeTarget("http", IP, port, "/index.html", receive="ubuntu", method="HEAD")
    get = m.ProbeTarget("http", IP, port, "/index.html", receive="ubuntu")
    assert probe([head, get], 2) == [(True, "HTTP 200"), (False, "receive text not found")]


###############################################################################
# receive_regex: http (the whole body) ########################################
###############################################################################


def test_regex_receive_in_an_http_body(backends):
    b = backends(body="status: ok\nload: 0.3\n")

    def regex(receive):
        return m.ProbeTarget("http", IP, b.port, receive=receive, receive_regex=True)

    assert probe([regex(r"load: 0\.[0-9]")]) == [(True, "HTTP 200")]
    assert probe([m.ProbeTarget("http", IP, b.port, receive=r"load: 0\.[0-9]")]) == [
        (False, "receive text not found")]  # the same text, plain: not in the body as it is
    # as Perl without /m: $ is the end of the body (or before its last line break), not of a line
    assert probe([regex("ok$"), regex(r"0\.3$"), regex("(?m)^status: ok$"), regex("^load")]) == [
        (False, "receive regex not matched"), (True, "HTTP 200"), (True, "HTTP 200"),
        (False, "receive regex not matched")]


def test_regex_receive_of_a_service_is_compiled_once_per_target(backends):
    b = backends(body="version 1.24.0")
    rs = real(b.address)
    t = m.ProbeTarget.of(service([rs], receive=r"version 1\.2[0-9]\.", receive_regex=True), rs)
    assert t.receive_regex and t.url() == f"http://{b.address}/ match 'version 1\\\\.2[0-9]\\\\.'"
    assert t.receive_pattern is t.receive_pattern  # compiled once, kept with the target
    assert probe([t]) == [(True, "HTTP 200")]
    assert probe([t]) == [(True, "HTTP 200")]


def test_regex_receive_in_a_large_body_from_nginx(nginx):
    www, port = nginx
    (www / "index.html").write_bytes(b"<html>" + b"x" * 30000 + b"centos welcomes you</html>\n")

    def regex(receive):
        return m.ProbeTarget("http", IP, port, "/index.html", receive=receive, receive_regex=True)

    assert probe([regex(r"^<html>x{30000}cent(os|OS) welcomes you</html>$"), regex("ubuntu|debian")], 2) == [
        (True, "HTTP 200"), (False, "receive regex not matched")]


# An HTTP server in another process that sends its body in two parts, 0.3 s apart:
# "status ok" and then " - not really\n".  By path: /close (the end of the body is
# the close), /length (Content-Length), /chunked (Transfer-Encoding: chunked).
SPLIT = r"""
import socket, sys, threading, time
HEADS = {b"/close": b"HTTP/1.0 200 OK\r\n\r\n", b"/length": b"HTTP/1.0 200 OK\r\nContent-Length: 23\r\n\r\n",
         b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"}
def serve(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return conn.close()
        data += chunk
    path = data.split(b" ")[1]
    chunked = path == b"/chunked"
    conn.sendall(HEADS[path] + (b"9\r\nstatus ok\r\n" if chunked else b"status ok"))
    time.sleep(0.3)
    conn.sendall(b"e\r\n - not really\n\r\n0\r\n\r\n" if chunked else b" - not really\n")
    conn.close()
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(16)
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@pytest.fixture
def split_server():
    proc = subprocess.Popen([sys.executable, "-c", SPLIT], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            text=True)
    try:
        yield int(proc.stdout.readline())
    finally:
        stop(proc)


@pytest.mark.parametrize("path", ["/close", "/length", "/chunked"])
def test_regex_receive_is_searched_in_the_whole_body_not_in_its_first_part(split_server, path):
    """"ok$" would match "status ok", the first part, alone: the body is "status ok - not really"."""
    def regex(receive):
        return m.ProbeTarget("http", IP, split_server, path, receive=receive, receive_regex=True)

    assert probe([regex("ok$"), regex("^status ok - not really$")], 5) == [
        (False, "receive regex not matched"), (True, "HTTP 200")]


def test_a_regex_that_does_not_compile_is_the_monitors_fault_not_the_servers(backends):
    """The config reader refuses it; should one get through, no server is failed for it."""
    b = backends()
    with pytest.raises(m.MonitorFault, match=r"http probe of 127\.0\.0\.1: .*"):
        m.probe_all([m.ProbeTarget("http", IP, b.port, receive=r"\Qx\E", receive_regex=True)], 2)


###############################################################################
# receive_regex: tcp (line by line, as ldirectord's simpletcp) ###############
###############################################################################


def tcp(ip, port, request="", receive="", regex=True):
    return m.ProbeTarget("tcp", ipaddress.ip_address(ip), port, request, receive=receive, receive_regex=regex)


def test_regex_receive_in_a_banner(smtp):
    assert probe([tcp(*smtp, receive=r"^220 \S+ .*SMTP"), tcp(*smtp, receive="^220 .*SMTP", regex=False)], 3) == [
        (True, "matched '^220 \\\\S+ .*SMTP'"), (False, "timeout (answer)")]  # plain: never in the banner as is


def test_regex_receive_of_a_line_protocol(redis):
    assert probe([tcp(redis.ip, redis.port, "PING\r\n", r"^\+PONG\r$")]) == [(True, "matched '^\\\\+PONG\\\\r$'")]
    assert probe([tcp(redis.ip, redis.port, "PING\r\n", r"^-ERR")], 1.0) == [(False, "timeout (answer)")]


@pytest.mark.parametrize("mode, receive, ok, reason", [
    ("closes", "^220-not", True, "matched '^220-not'"),
    ("closes", "^not", False, "closed without a match of '^not'"),  # ^ is a line's start
    ("closes", r"want\r$", True, "matched 'want\\\\r$'"),  # $ is before the line's line break
    ("dribble", r"^x+\+PONG\r$", True, "matched '^x+\\\\+PONG\\\\r$'"),  # a line that came in pieces
    ("dribble", r"^\+PONG", False, "timeout (answer)"),  # +PONG ends a line of x: it does not start one
    ("silent", "220", False, "timeout (answer)"),
    ("flood", "PONG", False, "receive regex not matched"),  # BODY_CAP without a line break: searched, then failed
])
def test_regex_receive_line_by_line(talkers, mode, receive, ok, reason):
    assert probe([tcp(*talkers[mode], receive=receive)], 1.0 if not ok else 3.0) == [(ok, reason)]


def test_a_line_that_comes_in_pieces_is_searched_once_whole():
    """Searched when its line break has come, and not scanned again from its start at each piece."""
    check = m.TcpCheck(tcp("127.0.0.1", 1, receive=r"^x+\+PONG\r$"), None)
    check.buf += b"x" * 1500 + b"+P"
    assert check.answer(eof=False) is None and (check.searched, check.scanned) == (0, 1502)
    check.buf += b"ONG\r"
    assert check.answer(eof=False) is None and check.scanned == 1506
    check.buf += b"\nnext"
    assert check.answer(eof=False) == (True, "matched '^x+\\\\+PONG\\\\r$'")
    check = m.TcpCheck(tcp("127.0.0.1", 1, receive="^two$"), None)
    check.buf += b"one\ntw"
    assert check.answer(eof=False) is None and (check.searched, check.scanned) == (4, 6)
    check.buf += b"o"
    assert check.answer(eof=True) == (True, "matched '^two$'")  # the last line, without its line break


###############################################################################
# A real server's own request and receive ####################################
###############################################################################


def test_each_real_server_is_probed_with_its_own_request_and_receive(backends):
    """ldirectord's real=IP:PORT masq 1 "request" "receive": the service's apply to the others."""
    one, two, plain, half = (backends(body="alpha here") for _ in range(4))
    servers = [real(one.address, 0, request="/one", receive="alpha"),
               real(two.address, 1, request="two.html", receive="beta"),  # no "/" first: as ldirectord, added
               real(plain.address, 2),
               real(half.address, 3, request="/half")]  # its own request, the service's receive
    vs = service(servers, request="/health", receive="here")
    targets = [m.ProbeTarget.of(vs, rs) for rs in servers]
    assert [t.url() for t in targets] == [
        f"http://{one.address}/one receive 'alpha'", f"http://{two.address}/two.html receive 'beta'",
        f"http://{plain.address}/health receive 'here'", f"http://{half.address}/half receive 'here'"]
    assert probe(targets) == [(True, "HTTP 200"), (False, "receive text not found"), (True, "HTTP 200"),
                              (True, "HTTP 200")]
    assert [b.requests[0].split(b"\r\n")[0] for b in (one, two, plain, half)] == [
        b"GET /one HTTP/1.0", b"GET /two.html HTTP/1.0", b"GET /health HTTP/1.0", b"GET /half HTTP/1.0"]


def test_a_real_servers_own_receive_is_a_regex_in_a_regex_service(backends):
    b = backends(body="build 42 ok")
    rs = real(b.address, receive=r"build \d+ ok$")
    t = m.ProbeTarget.of(service([rs], receive="nothing like it", receive_regex=True), rs)
    assert (t.receive, t.receive_regex) == (r"build \d+ ok$", True)
    assert probe([t]) == [(True, "HTTP 200")]


def test_a_real_servers_own_tcp_request_is_sent_as_its_escapes_say(smtp, redis):
    """A tcp request is kept as written (escapes) and decoded into bytes for the probe, the
    server's own as the service's."""
    servers = [real(f"{smtp[0]}:{smtp[1]}", 0, request="QUIT\\r\\n", receive="221"),
               real(redis.address, 1)]
    vs = service(servers, check="tcp", request="PING\\r\\n", receive="+PONG")
    targets = [m.ProbeTarget.of(vs, rs) for rs in servers]
    assert [(t.request, t.receive) for t in targets] == [("QUIT\r\n", "221"), ("PING\r\n", "+PONG")]
    assert probe(targets) == [(True, "received '221'"), (True, "received '+PONG'")]


def monitor_of(config):
    """A Monitor that is only planned (its targets), never run."""
    output = m.Output(m.LogFile(None), None, to_log=False, echo=False)
    return m.Monitor(config, m.Ipvsadm(sys.executable), output, dry_run=True)


def test_the_monitor_and_check_config_use_a_real_servers_own_request_and_receive(capsys):
    servers = [real("127.0.0.2:8080", 0, request="/mine", receive="ours"), real("127.0.0.3:8080", 1)]
    vs = service(servers, request="/", receive="theirs")
    config = m.Config(path="ld.cf", services=(vs,))
    targets = monitor_of(config).targets
    assert [targets[(vs.ipvs_key, rs.endpoint)].url() for rs in servers] == [
        "http://127.0.0.2:8080/mine receive 'ours'", "http://127.0.0.3:8080/ receive 'theirs'"]
    m.show_config(config)
    out = capsys.readouterr().out
    assert "127.0.0.2:8080 weight 1: IPVS entry 127.0.0.2:8080, probe http://127.0.0.2:8080/mine receive 'ours'\n" in out
    assert "127.0.0.3:8080 weight 1: IPVS entry 127.0.0.3:8080, probe http://127.0.0.3:8080/ receive 'theirs'\n" in out


###############################################################################
# Each virtual service's own timeout ##########################################
###############################################################################


def test_each_service_probes_under_its_own_timeout(herd):
    """One server answering 0.4 s after the request (tests/herd.py, another process), checked by
    two services: it fails the one with timeout 0.2 and passes the one with timeout 1."""
    (address,) = herd(1, "delay:0.4").addresses
    rs = real(address)
    quick = service([rs], name="quick", timeout=0.2)
    patient = service([rs], name="patient", timeout=1.0)
    tq, tp = m.ProbeTarget.of(quick, rs, timeout=30.0), m.ProbeTarget.of(patient, rs, timeout=30.0)
    assert (tq.timeout, tp.timeout) == (0.2, 1.0) and tq != tp  # differing only by timeout: two probes
    started = time.monotonic()
    results = m.probe_all([tp, tq], 30.0)  # 30: the config's, which neither service uses
    elapsed = time.monotonic() - started
    assert (results[tq].ok, results[tq].reason, results[tq].latency) == (False, "timeout (status line)", 0.2)
    assert results[tp].ok and results[tp].reason == "HTTP 200" and results[tp].latency >= 0.4
    assert elapsed < 10 * SLOW  # not the 30 s of the config's timeout


def test_a_pass_ends_when_its_longest_deadline_has_passed(herd):
    h = herd(3, "hang")
    servers = [real(address, i) for i, address in enumerate(h.addresses)]
    targets = [m.ProbeTarget.of(service([rs], name=f"s{i}", timeout=timeout), rs)
               for i, (rs, timeout) in enumerate(zip(servers, (1.2, 0.2, 0.6)))]
    started = time.monotonic()
    results = m.probe_all(targets, 30.0)
    elapsed = time.monotonic() - started
    assert [(results[t].reason, results[t].latency) for t in targets] == [
        ("timeout (status line)", 1.2), ("timeout (status line)", 0.2), ("timeout (status line)", 0.6)]
    assert 1.2 <= elapsed < 10 * SLOW


def test_the_monitor_gives_each_target_its_services_timeout_else_the_configs():
    rs = real("127.0.0.2:80")
    quick, patient, plain = (service([rs], name=name, vport=vport, timeout=timeout)
                             for name, vport, timeout in (("quick", 81, 0.2), ("patient", 82, 1.0), ("plain", 83, None)))
    config = m.Config(path="ld.cf", timeout=0.7, services=(quick, patient, plain))
    targets = monitor_of(config).targets
    assert [targets[(vs.ipvs_key, rs.endpoint)].timeout for vs in (quick, patient, plain)] == [0.2, 1.0, 0.7]
    assert len(set(targets.values())) == 3


###############################################################################
# check = on | off: no check, a fixed verdict ################################
###############################################################################


def test_on_is_up_and_off_is_down_without_a_socket(monkeypatch):
    rs = real("127.0.0.1:1")  # nothing listens there: no traffic is sent anyway
    on, off = (m.ProbeTarget.of(service([rs], check=kind), rs) for kind in ("on", "off"))
    assert (on.url(), off.url()) == ("none: on (always up)", "none: off (always down)")

    def no_socket(*args, **kwargs):
        raise AssertionError("check = on|off opened a socket")

    monkeypatch.setattr(socket, "socket", no_socket)
    results = m.probe_all([on, off], 5.0)
    assert [(results[t].ok, results[t].reason) for t in (on, off)] == [
        (True, "check = on: always up, not checked"), (False, "check = off: always down, not checked")]
    assert results[on].latency < 0.5 and results[off].latency < 0.5


def test_on_and_off_answer_at_once_beside_a_hung_server(herd):
    (address,) = herd(1, "hang").addresses
    hung = m.ProbeTarget.of(service([real(address)], timeout=1.0), real(address))
    on, off = (m.ProbeTarget.of(service([real(address)], check=kind), real(address)) for kind in ("on", "off"))
    results = m.probe_all([hung, on, off], 5.0)
    assert [(results[t].ok, results[t].reason) for t in (hung, on, off)] == [
        (False, "timeout (status line)"), (True, "check = on: always up, not checked"),
        (False, "check = off: always down, not checked")]
    assert results[on].latency < 0.5 and results[off].latency < 0.5


def test_a_config_with_check_on_and_off_is_planned_and_shown(tmp_path, monkeypatch, capsys):
    """Their config readers are another branch's (CHECK_KEYS): stood in for here."""
    for kind in (m.CheckKind.ON, m.CheckKind.OFF):
        monkeypatch.setitem(m.CHECK_KEYS, kind, lambda sec: dict(request="", receive=""))
    path = tmp_path / "monitorRS.conf"
    path.write_text("[monitor]\nlock = {0}/lock\nstate_file = {0}/state.json\n"
                    "[virtual up]\nvip = 10.0.0.1\nvport = 80\nrs = 10.0.0.2\ncheck = on\n"
                    "[virtual down]\nvip = 10.0.0.1\nvport = 81\nrs = 10.0.0.2\ncheck = off\n".format(tmp_path))
    config = m.load_config(str(path))
    targets = monitor_of(config).targets
    results = m.probe_all(list(targets.values()), 1.0)
    assert sorted((t.check, results[t].ok) for t in targets.values()) == [("off", False), ("on", True)]
    m.show_config(config)
    out = capsys.readouterr().out
    assert "10.0.0.2:80 weight 1: IPVS entry 10.0.0.2:80, probe none: on (always up)\n" in out
    assert "10.0.0.2:81 weight 1: IPVS entry 10.0.0.2:81, probe none: off (always down)\n" in out
