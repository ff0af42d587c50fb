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


def free_port(ip="127.0.0.1"):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
