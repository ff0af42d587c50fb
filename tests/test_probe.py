"""Probes against real sockets on loopback: verdicts, reasons and the one deadline."""

import ipaddress
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import monitor_rs as m

IP = ipaddress.ip_address("127.0.0.1")


def target(port, **kw):
    return m.ProbeTarget(kw.pop("check", "http"), IP, port, **kw)


def run(tgt, timeout=0.6):
    return m.probe_all([tgt], timeout)[tgt]


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_healthy_200(backends):
    b = backends()
    r = run(target(b.port))
    assert r.ok and r.reason == "HTTP 200"
    assert b.hits == 1


def test_refused():
    r = run(target(free_port()))
    assert not r.ok and r.reason == "refused"


@pytest.mark.parametrize("mode, reason", [
    ("http500", "HTTP 500"),
    ("hang", "timeout (status line)"),
    ("drip", "timeout (status line)"),  # one byte every 0.3 s
    ("garbage", "not an HTTP answer"),
    ("endless-headers", f"more than {m.HEADER_CAP} header lines"),
    ("reset", "reset"),
])
def test_failing_servers_fail_with_a_reason(backends, mode, reason):
    b = backends(mode=mode)
    started = time.monotonic()
    r = run(target(b.port), timeout=0.6)
    assert not r.ok
    assert r.reason == reason
    assert time.monotonic() - started < 5  # generous: the deadline is 0.6 s


def test_receive_text_found_and_missing(backends):
    b = backends(body="<html>centos welcomes you</html>")
    assert run(target(b.port, receive="centos")).ok
    r = run(target(b.port, receive="ubuntu"))
    assert not r.ok and r.reason == "receive text not found"


def test_receive_in_an_endless_body_stops_at_the_cap(backends):
    b = backends(mode="huge-body")
    r = run(target(b.port, receive="never there"), timeout=3)
    assert not r.ok and r.reason == "receive text not found"


def test_expect_ranges(backends):
    b = backends(mode="http500")
    assert run(target(b.port, expect=((500, 500),))).ok
    b.mode = "ok"
    assert not run(target(b.port, expect=((500, 599),))).ok


def test_tcp_check(backends):
    b = backends(mode="hang")
    assert run(m.ProbeTarget("tcp", IP, b.port)).ok
    assert run(m.ProbeTarget("tcp", IP, free_port())).reason == "refused"


def test_request_path_and_host_header_are_sent(backends):
    import socket
    import threading
    seen = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        seen.append(conn.recv(4096))
        conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    r = run(target(srv.getsockname()[1], request="/health?x=1", host="www.example.org"))
    srv.close()
    assert r.ok and r.reason == "HTTP 204"
    assert seen[0].startswith(b"GET /health?x=1 HTTP/1.0\r\n")
    assert b"\r\nHost: www.example.org\r\n" in seen[0]


def test_many_hung_servers_share_one_deadline(backends):
    """A pass waits for the slowest server no longer than the deadline."""
    hung = [backends(mode="hang") for _ in range(20)]
    good = [backends() for _ in range(20)]
    targets = [target(b.port) for b in hung + good]
    started = time.monotonic()
    results = m.probe_all(targets, 0.5)
    elapsed = time.monotonic() - started
    assert [results[t].ok for t in targets] == [False] * 20 + [True] * 20
    assert elapsed < 3  # generous; the benchmark measures the real figure


def test_equal_targets_are_probed_once(backends):
    b = backends()
    t1, t2 = target(b.port), target(b.port)
    results = m.probe_all([t1, t2], 1)
    assert results[t1].ok and b.hits == 1


###############################################################################
# HTTP details (issue 11): interim answers, chunked bodies, the header cap #####
###############################################################################


class Answering:
    """A loopback server that reads each request, then sends `answer` as it is; then closes the
    connection, or with keep_open=True holds it open (an HTTP/1.1 server that keeps it alive)."""

    def __init__(self, answer, keep_open=False):
        import socket
        import threading
        self.answer, self.keep_open, self.held = answer, keep_open, []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                conn.settimeout(30)
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(4096)
                    if not data:
                        break
                    request += data
                conn.sendall(self.answer)
            except OSError:
                pass
            if self.keep_open:
                self.held.append(conn)
            else:
                conn.close()

    def close(self):
        self.listener.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def answering():
    servers = []

    def make(answer, keep_open=False):
        server = Answering(answer, keep_open)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def chunked(*pieces, last=b"0\r\n\r\n"):
    """A chunked body of these pieces."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + last


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
BODY = b"<html>centos welcomes you</html>"


@pytest.mark.parametrize("interim", [
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\nLink: </a.js>; rel=preload\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n",
], ids=["100", "103", "100-102-103"])
def test_interim_answers_are_skipped_for_the_final_one(answering, interim):
    final = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
    server = answering(interim + final)
    r = run(target(server.port))
    assert r.ok and r.reason == "HTTP 200"
    assert run(target(server.port, receive="centos")).ok
    failing = answering(interim + b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    assert run(target(failing.port)).reason == "HTTP 503"  # the final answer is judged, not the interim one


def test_an_interim_answer_then_nothing_fails(answering):
    server = answering(b"HTTP/1.1 100 Continue\r\n\r\n")
    r = run(target(server.port))
    assert not r.ok and r.reason == "closed without answering"


def test_101_is_a_final_answer_not_skipped(answering):
    """101 Switching Protocols ends HTTP on the connection: it is judged (and not in 200-399)."""
    server = answering(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")
    r = run(target(server.port))
    assert not r.ok and r.reason == "HTTP 101"


def test_endless_interim_answers_fail(answering):
    server = answering(b"HTTP/1.1 100 Continue\r\n\r\n" * (m.INTERIM_CAP + 1) + b"HTTP/1.1 200 OK\r\n\r\n")
    r = run(target(server.port))
    assert not r.ok and r.reason == f"more than {m.INTERIM_CAP} interim (1xx) answers"
    within = answering(b"HTTP/1.1 100 Continue\r\n\r\n" * m.INTERIM_CAP + b"HTTP/1.1 200 OK\r\n\r\n")
    assert run(target(within.port)).ok


def test_receive_text_split_across_chunks_is_found(answering):
    server = answering(CHUNKED_HEAD + chunked(b"<html>cen", b"tos wel", b"comes you</html>"))
    r = run(target(server.port, receive="centos welcomes"))
    assert r.ok and r.reason == "HTTP 200"


def test_chunk_extensions_and_hex_sizes(answering):
    body = b"x" * 300 + b"centos"
    server = answering(CHUNKED_HEAD + b"%X ;name=value\r\n%s\r\n0;last\r\nX-Trailer: yes\r\n\r\n" % (len(body), body))
    assert run(target(server.port, receive="centos")).ok


def test_a_chunked_body_ends_at_its_last_chunk_not_at_the_deadline(answering):
    """An HTTP/1.1 server keeps the connection open: the last chunk ends the body."""
    server = answering(CHUNKED_HEAD + chunked(b"<html>hello</html>"), keep_open=True)
    r = run(target(server.port, receive="centos"), timeout=5)
    assert not r.ok and r.reason == "receive text not found"  # was: "timeout (body)", at the deadline
    found = answering(CHUNKED_HEAD + chunked(b"<html>centos</html>"), keep_open=True)
    assert run(target(found.port, receive="centos"), timeout=5).ok


def test_transfer_encoding_overrides_content_length(answering):
    server = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                       + chunked(b"<html>", b"centos</html>"))
    assert run(target(server.port, receive="centos")).ok


def test_the_body_cap_counts_decoded_bytes(answering):
    """One-byte chunks: six bytes on the wire for each byte of body."""
    body = b"x" * 20000 + b"centos"
    server = answering(CHUNKED_HEAD + chunked(*(body[i:i + 1] for i in range(len(body)))))
    assert len(server.answer) > m.BODY_CAP
    assert run(target(server.port, receive="centos"), timeout=5).ok
    beyond = answering(CHUNKED_HEAD + chunked(b"x" * m.BODY_CAP, b"centos"))
    r = run(target(beyond.port, receive="centos"), timeout=5)
    assert not r.ok and r.reason == "receive text not found"


@pytest.mark.parametrize("body", [
    b"zz\r\nhello\r\n0\r\n\r\n",  # not a hex size
    b"\r\nhello\r\n0\r\n\r\n",  # no size at all
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello world\r\n0\r\n\r\n",  # more data than the size said
    b"5 5\r\nhello\r\n0\r\n\r\n",
], ids=["not-hex", "empty", "negative", "too-long", "two-numbers"])
def test_a_malformed_chunked_body_fails(answering, body):
    server = answering(CHUNKED_HEAD + body)
    r = run(target(server.port, receive="centos"))
    assert not r.ok and r.reason == "bad chunked encoding"


def test_a_chunk_size_line_is_capped_like_other_lines(answering):
    server = answering(CHUNKED_HEAD + b"5;" + b"x" * m.LINE_CAP + b"\r\nhello\r\n0\r\n\r\n")
    r = run(target(server.port, receive="centos"))
    assert not r.ok and r.reason == "line too long in the body"


@pytest.mark.parametrize("count, ok", [(m.HEADER_CAP - 1, True), (m.HEADER_CAP, True), (m.HEADER_CAP + 1, False)])
def test_the_header_cap_is_exact(answering, count, ok):
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(count - 1)) + b"Content-Length: 2\r\n"
    server = answering(b"HTTP/1.1 200 OK\r\n" + headers + b"\r\nok")
    r = run(target(server.port))
    assert r.ok is ok
    assert r.reason == ("HTTP 200" if ok else f"more than {m.HEADER_CAP} header lines")


ANSWERS = {  # an answer, and its verdict with receive="centos"
    "interim": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncentos", (True, "HTTP 200")),
    "chunked": (CHUNKED_HEAD + chunked(b"<p>ce", b"n", b"tos</p>"), (True, "HTTP 200")),
    "chunked-missing": (CHUNKED_HEAD + chunked(b"<p>ubuntu</p>"), (False, "receive text not found")),
    "chunked-bad": (CHUNKED_HEAD + b"6\r\n<p>cenXXtos\r\n0\r\n\r\n", (False, "bad chunked encoding")),
}


@given(st.sampled_from(sorted(ANSWERS)), st.data())
@settings(max_examples=200, deadline=None)
def test_the_verdict_does_not_depend_on_how_the_bytes_arrive(name, data):
    """However TCP cuts the answer, `answer` reaches the same verdict (read on until it can)."""
    answer, verdict = ANSWERS[name]
    cuts = sorted(data.draw(st.sets(st.integers(1, len(answer) - 1), max_size=12)))
    probe = m.HttpCheck(target(80, receive="centos"), None)
    probe.stage = "status line"  # as after the request was sent
    got = None
    for start, end in zip([0] + cuts, cuts + [len(answer)]):
        probe.buf += answer[start:end]
        got = probe.answer(eof=False)
        if got is not None:
            break
    assert got == verdict


###############################################################################
# Against a real nginx ########################################################
###############################################################################


@pytest.fixture
def nginx(tmp_path):
    """nginx (one process, in the foreground) serving tmp_path/www on 127.0.0.1:<free port>."""
    import os
    import shutil
    import subprocess
    from harness import wait_until
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed (.ci/run installs it)")
        pytest.skip("nginx is not installed here (apt-get install nginx)")
    www = tmp_path / "www"
    www.mkdir()
    port = free_port()
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
    chunked_transfer_encoding on;
    server {{
        listen 127.0.0.1:{port};
        root {www};
        location = /fail {{ return 503 "down for maintenance"; }}
    }}
}}
""")
    proc = subprocess.Popen([binary, "-p", str(tmp_path), "-c", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        def listening():
            if proc.poll() is not None:
                raise AssertionError(f"nginx exited {proc.returncode}: {proc.communicate()[1]}")
            return run(target(port, request="/nothing-here"), timeout=2).reason == "HTTP 404"
        wait_until(listening, what="nginx listening")
        yield www, port
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_real_nginx(nginx):
    www, port = nginx
    (www / "index.html").write_bytes(b"<html>" + b"x" * 30000 + b"centos welcomes you</html>\n")
    r = run(target(port), timeout=2)
    assert r.ok and r.reason == "HTTP 200"
    assert run(target(port, receive="centos welcomes you"), timeout=2).ok
    assert run(target(port, receive="ubuntu"), timeout=2).reason == "receive text not found"
    assert run(target(port, request="/fail"), timeout=2).reason == "HTTP 503"
    assert run(target(port, request="/fail", expect=((503, 503),), receive="maintenance"), timeout=2).ok


@pytest.mark.parametrize("error", [__import__("errno").EMFILE, __import__("errno").ENOBUFS])
def test_the_monitor_out_of_descriptors_is_its_own_fault_not_the_servers(monkeypatch, error):
    """A socket the monitor cannot open fails no server: the wave ends with a MonitorFault
    (the pass then changes nothing), where it used to fail every probe alike."""
    import socket

    def no_socket(*args, **kwargs):
        raise OSError(error, "no socket for you")

    targets = [target(free_port()), target(free_port())]
    monkeypatch.setattr(socket, "socket", no_socket)
    with pytest.raises(m.MonitorFault, match="http probe of 127.0.0.1: no socket for you"):
        m.probe_all(targets, 0.5)

