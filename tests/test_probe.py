"""Probes against real sockets on loopback: verdicts, reasons and the one deadline."""

import ipaddress
import time

import pytest

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
