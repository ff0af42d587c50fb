"""keepalive = N (issue 14): an http check's connection serves N checks, HTTP/1.1, then a new one.

Against a real nginx (its access log names each request's connection and its number on it),
and a scripted server for what nginx does not do on demand: close a kept connection as a
request arrives (its idle timeout at that very moment), or keep serving its connections once
its listener is gone.  Never a healthy server failed for a connection the monitor kept."""

import shutil
import socket
import subprocess
import threading

import pytest

import monitor_rs as m
from conftest import VIP
from harness import config, wait_until
from test_check_ldirectord import IN_CI, IP, monitor_of, probe, real, service
from test_check_tcp import free_port

OK = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n")


@pytest.fixture
def nginx(tmp_path):
    """Start nginx (one process, foreground) on 127.0.0.1:<free port>; keepalive_timeout given.
    Returns (port, requests(count), stop()): requests reads the access log as
    (connection serial, request number on it, protocol) triples."""
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        if IN_CI:
            pytest.fail("nginx is not installed (.ci/run installs it)")
        pytest.skip("nginx is not installed here (apt-get install nginx)")
    procs = []

    def start(keepalive_timeout="75s"):
        port = free_port("127.0.0.1")
        (tmp_path / "www").mkdir(exist_ok=True)
        (tmp_path / "www" / "index.html").write_text("ok\n")
        log = tmp_path / "access.log"
        temp = "".join(f"{kind}_temp_path {tmp_path}/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = tmp_path / "nginx.conf"
        conf.write_text(f"""daemon off;
master_process off;
pid {tmp_path}/nginx.pid;
error_log stderr;
events {{ worker_connections 64; }}
http {{
    log_format conn '$connection $connection_requests $server_protocol $status';
    access_log {log} conn;
    keepalive_timeout {keepalive_timeout};
    {temp}
    server {{
        listen 127.0.0.1:{port};
        root {tmp_path}/www;
    }}
}}
""")
        proc = subprocess.Popen([binary, "-p", str(tmp_path), "-c", str(conf)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)

        def up():
            if proc.poll() is not None:
                raise AssertionError(f"nginx exited {proc.returncode}: {proc.communicate()[1]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_until(up, what="nginx listening")

        def requests(count):
            """The first `count` requests logged (nginx logs each once it has answered it)."""
            def logged():
                lines = log.read_text().splitlines() if log.exists() else []
                return len(lines) >= count and [tuple(line.split()[:3]) for line in lines[:count]]
            return wait_until(logged, what=f"{count} requests in nginx's access log")

        def stop():
            proc.terminate()
            proc.communicate(timeout=30)
        return port, requests, stop

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def target(port, keepalive, **kw):
    rs = real(f"127.0.0.1:{port}")
    return m.ProbeTarget.of(service([rs], keepalive=keepalive, **kw), rs)


def test_a_connection_serves_keepalive_checks_then_a_new_one_is_made(nginx):
    port, requests, _ = nginx()
    t = target(port, 3)
    assert t.http_request.startswith(b"GET / HTTP/1.1\r\n") and b"Connection: close" not in t.http_request
    assert t.url() == f"http://127.0.0.1:{port}/ (a connection kept for 3 checks)"
    for _ in range(7):
        assert probe([t]) == [(True, "HTTP 200")]
    log = requests(7)
    assert [(n, proto) for _, n, proto in log] == [(str(k), "HTTP/1.1") for k in (1, 2, 3, 1, 2, 3, 1)]
    serials = [c for c, _, _ in log]
    assert serials[0] == serials[1] == serials[2] != serials[3] == serials[4] == serials[5] != serials[6]


def test_with_receive_the_body_is_read_whole_and_the_connection_kept(nginx):
    port, requests, _ = nginx()
    t = target(port, 10, receive="ok")
    for _ in range(3):
        assert probe([t]) == [(True, "HTTP 200")]
    assert len({c for c, _, _ in requests(3)}) == 1
    missing = target(port, 10, request="/missing")  # a failed check never keeps its connection
    assert probe([missing]) == [(False, "HTTP 404")]
    assert probe([missing]) == [(False, "HTTP 404")]
    assert [n for _, n, _ in requests(5)[3:]] == ["1", "1"]


def test_without_keepalive_a_connection_a_check_http_1_0(nginx):
    port, requests, _ = nginx()
    t = target(port, 0)
    for _ in range(3):
        assert probe([t]) == [(True, "HTTP 200")]
    log = requests(3)
    assert [(n, proto) for _, n, proto in log] == [("1", "HTTP/1.0")] * 3
    assert len({c for c, _, _ in log}) == 3


def test_a_stopped_server_fails_the_next_check(nginx):
    """nginx closes its kept connections when it stops: the next check sees it closed, makes a new
    connection, and that one is refused."""
    port, _, stop = nginx()
    t = target(port, 100)
    assert probe([t]) == [(True, "HTTP 200")]
    assert t in m.HttpCheck.KEPT.idle
    stop()
    assert probe([t]) == [(False, "refused")]


def test_a_connection_the_server_closed_while_idle_is_not_a_failure(nginx):
    port, requests, _ = nginx(keepalive_timeout="1s")
    t = target(port, 100)
    assert probe([t]) == [(True, "HTTP 200")]
    sock = m.HttpCheck.KEPT.idle[t][0]

    def closed_by_nginx():
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
    wait_until(closed_by_nginx, what="nginx closing the idle connection (keepalive_timeout 1s)")
    assert probe([t]) == [(True, "HTTP 200")]
    assert [n for _, n, _ in requests(2)] == ["1", "1"]  # a new connection, the check healthy


class Scripted:
    """An HTTP/1.1 server in a thread (behaviour, not timing): answers each request on a
    connection with 200 and keeps it, except as told: `drop` closes a connection when its
    request number `drop` arrives, unanswered (an idle timeout striking just then);
    `unlisten()` closes the listener while the connections it made go on being served."""

    def __init__(self, drop=0):
        self.drop, self.accepted = drop, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            served, buf = 0, b""
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    served += 1
                    if served == self.drop:
                        return
                    conn.sendall(OK)

    def unlisten(self):
        self.listener.shutdown(socket.SHUT_RDWR)  # (close alone leaves it listening under the blocked accept)
        self.listener.close()


def test_a_kept_connection_closed_as_the_request_arrives_is_made_anew_not_failed():
    server = Scripted(drop=2)
    t = target(server.port, 100)
    assert probe([t]) == [(True, "HTTP 200")]
    assert probe([t]) == [(True, "HTTP 200")]  # the kept one closed unanswered: the check went on over a new one
    assert server.accepted == 2
    server.unlisten()


def test_a_listener_gone_while_its_connections_live_is_seen_within_keepalive_checks():
    server = Scripted()
    t = target(server.port, 3)
    assert probe([t]) == [(True, "HTTP 200")]
    server.unlisten()
    assert probe([t]) == [(True, "HTTP 200")]  # checks 2 and 3 over the kept connection
    assert probe([t]) == [(True, "HTTP 200")]
    assert probe([t]) == [(False, "refused")]  # the 4th: a new connection, refused


def test_keepalive_in_monitorrs_conf(tmp_path):
    def load(monitor, own, check="http"):
        path = tmp_path / "monitorRS.conf"
        path.write_text(f"[monitor]\n{monitor}\n[virtual web]\nvip = 10.0.0.1\nvport = 80\nrs = 127.0.0.1:8080\n"
                        f"rw = 1\ntype = m\ncheck = {check}\n{own}\n")
        return m.load_config(str(path))

    assert load("", "keepalive = 10").services[0].keepalive == 10
    assert load("keepalive = 10", "").services[0].keepalive == 10  # [monitor]'s, as a default
    assert load("", "keepalive = 1").services[0].keepalive == 0  # a connection a check: as without
    assert load("keepalive = 10", "", check="tcp").services[0].keepalive == 0  # a default: http only
    with pytest.raises(m.ConfigError, match=r"\[virtual web\] keepalive = '10': for check = http only"):
        load("", "keepalive = 10", check="https")
    with pytest.raises(m.ConfigError, match="keepalive = '1001': must be between 0 and 1000"):
        load("", "keepalive = 1001")
    config = load("", "keepalive = 10")
    assert "keepalive = 10\n" in m.render_ini(config)
    again = m.load_ini(str(tmp_path / "again.conf"), m.render_ini(config))
    assert again.services == config.services


def test_a_new_config_closes_the_kept_connections_of_what_it_no_longer_probes(tmp_path):
    server = Scripted()
    rs = real(f"127.0.0.1:{server.port}")
    config = m.Config(path=str(tmp_path / "monitorRS.conf"), services=(service([rs], keepalive=10),))
    kept = m.ProbeTarget.of(config.services[0], rs, timeout=config.timeout)  # as the monitor probes it
    gone = m.ProbeTarget.of(service([rs], keepalive=10, request="/old"), rs, timeout=config.timeout)
    assert probe([kept, gone]) == [(True, "HTTP 200"), (True, "HTTP 200")]
    old = m.HttpCheck.KEPT.idle[gone][0]
    monitor_of(config)
    assert kept in m.HttpCheck.KEPT.idle and gone not in m.HttpCheck.KEPT.idle
    assert old.fileno() == -1  # closed
    server.unlisten()


def test_the_monitor_keeps_its_connections_and_takes_a_stopped_nginx_out(ipvs, run, nginx):
    """The loop end to end, against the fake ipvsadm: nginx's log shows checks 1-4 on one connection,
    the 5th on a new one; nginx stopped, its server leaves the table at its next check."""
    port, requests, stop = nginx()
    monitor = run(ipvs, config(VIP, [f"127.0.0.1:{port}"], interval=0.3, timeout=0.5,
                               extra="keepalive = 4\nfall = 1\nquiescent = no\n")).start()
    log = requests(6)
    assert [n for _, n, _ in log] == ["1", "2", "3", "4", "1", "2"]
    assert len({c for c, _, _ in log[:4]}) == 1 and log[4][0] != log[0][0]
    wait_until(lambda: len(ipvs.dests(VIP)) == 1, what="the server in the table")
    stop()
    wait_until(lambda: not ipvs.dests(VIP), what="the stopped server out of the table")
    code, _, err = monitor.stop()
    assert code == 0 and "Traceback" not in err
