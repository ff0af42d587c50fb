"""check = dns: the config, the wire format read within its bounds (our own
responder for the protocol cases, another process for timing), a real dnsmasq
from Debian, and a UDP virtual service end to end (the fake ipvsadm here, the
kernel's IPVS in the VM tier)."""

import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import monitor_rs as m
from harness import SLOW, config, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPBACK = ipaddress.ip_address("127.0.0.1")


def target(port, request="good.test A", receive="", ip=LOOPBACK):
    return m.ProbeTarget("dns", ip, port, request, receive=receive)


def probe(tgt, timeout=1.0):
    return m.probe_all([tgt], timeout)[tgt]


###############################################################################
# Config ######################################################################
###############################################################################

SERVICE = """
[monitor]
timeout = 0.5

[virtual resolver]
vip = 10.0.0.1
vport = 53
protocol = udp
check = dns
rs = 10.0.0.5 10.0.0.6:5353
type = m
{keys}
"""


def load(tmp_path, keys):
    path = tmp_path / "monitorRS.conf"
    path.write_text(SERVICE.format(keys=keys))
    (vs,) = m.load_config(str(path)).services
    return vs


@pytest.mark.parametrize("keys, asked, receive", [
    ("request = www.example.org", "www.example.org A", ""),
    ("request = www.example.org.", "www.example.org A", ""),  # fully qualified: the same name
    ("request = www.example.org aaaa", "www.example.org AAAA", ""),
    ("request = www.example.org A\nreceive = 198.18.0.10", "www.example.org A", "198.18.0.10"),
    ("request = www.example.org\nreceive = 2001:DB8::0:1", "www.example.org AAAA", "2001:db8::1"),  # by receive
    ("request = www.example.org\nreceive = [2001:db8::1]", "www.example.org AAAA", "2001:db8::1"),
    ("request = bücher.example", "xn--bcher-kva.example A", ""),
    ("request = _dns._udp.example.org", "_dns._udp.example.org A", ""),
])
def test_request_is_a_name_and_a_type_receive_an_address(tmp_path, keys, asked, receive):
    vs = load(tmp_path, keys)
    assert (vs.check, vs.request, vs.receive) == ("dns", asked, receive)


@pytest.mark.parametrize("keys, key, why", [
    ("", "request", "required with check = dns"),
    ("request = ", "request", "required with check = dns"),
    ("request = www.example.org MX", "request", "must be a name, then A or AAAA"),
    ("request = www.example.org A extra", "request", "must be a name, then A or AAAA"),
    ("request = /index.html", "request", "is not a host name label"),
    ("request = a..example", "request", "empty label"),
    ("request = 198.18.0.10", "request", "is an address"),
    ("request = " + "x" * 64 + ".example", "request", "63 characters"),
    ("request = " + ".".join(["abcdefgh"] * 29), "request", "over the 255 bytes"),
    ("request = www.example.org\nreceive = up", "receive", "must be an IPv4 or IPv6 address"),
    ("request = www.example.org AAAA\nreceive = 198.18.0.10", "receive", "is an IPv4 address"),
    ("request = www.example.org A\nreceive = 2001:db8::1", "receive", "is an IPv6 address"),
])
def test_bad_request_or_receive_is_one_line_naming_file_section_and_key(tmp_path, keys, key, why):
    with pytest.raises(m.ConfigError) as caught:
        load(tmp_path, keys)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'monitorRS.conf'}: [virtual resolver] {key} = ")
    assert why in message and "\n" not in message


def test_check_config_shows_what_is_asked_of_whom(tmp_path):
    path = tmp_path / "monitorRS.conf"
    path.write_text(SERVICE.format(keys="request = bücher.example\nreceive = 2001:db8::1\ncheckport = 5300"))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "monitor_rs.py"), "--config", str(path),
                           "--check-config"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "10.0.0.5:53 weight 1: IPVS entry 10.0.0.5:53, probe dns://10.0.0.5:5300/xn--bcher-kva.example AAAA" \
        in proc.stdout
    assert "probe dns://10.0.0.6:5300/xn--bcher-kva.example AAAA" in proc.stdout
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("[virtual resolver]")]
    assert "check=dns request=xn--bcher-kva.example AAAA receive='2001:db8::1' checkport=5300" in line
    assert "expect=" not in line and "host=" not in line  # http's settings mean nothing here


###############################################################################
# The wire format #############################################################
###############################################################################

QUERY = m.dns_query(0x1234, "good.test", 1)


def header(qid=0x1234, flags=0x8180, questions=1, answers=0):
    return struct.pack("!HHHHHH", qid, flags, questions, answers, 0, 0)


def record(address, owner=b"\xc0\x0c", rtype=None, rclass=1, data=None):
    data = ipaddress.ip_address(address).packed if data is None else data
    rtype = (1 if len(data) == 4 else 28) if rtype is None else rtype
    return owner + struct.pack("!HHIH", rtype, rclass, 60, len(data)) + data


def reply(query, *records, flags=0x8180, qid=None, question=None, answers=None):
    """An answer to `query` (built here, not by the code under test)."""
    qid = struct.unpack("!H", query[:2])[0] if qid is None else qid
    question = query[12:] if question is None else question
    return header(qid, flags, 1, len(records) if answers is None else answers) + question + b"".join(records)


def test_the_query_on_the_wire():
    assert QUERY == bytes.fromhex("1234 0100 0001 0000 0000 0000") + b"\x04good\x04test\x00" + b"\x00\x01\x00\x01"
    assert m.dns_query(7, "six.test", 28).endswith(b"\x03six\x04test\x00\x00\x1c\x00\x01")


def test_an_answer_with_compressed_names():
    # good.test CNAME www.good.test (its data compressed: "www" + pointer to the question's name),
    # then the A records of www.good.test (their owner a pointer into the CNAME's data)
    cname_data = b"\x03www\xc0\x0c"
    cname = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 60, len(cname_data)) + cname_data
    packet = reply(QUERY, cname, record("198.18.0.10", owner=b"\xc0\x27"), record("198.18.0.11", owner=b"\xc0\x27"))
    assert packet[0x27:0x2b] == b"\x03www"  # where the pointer points
    answer = m.dns_answer(packet, QUERY)
    assert answer == m.DnsAnswer(0, False, (ipaddress.ip_address("198.18.0.10"), ipaddress.ip_address("198.18.0.11")))
    assert m.dns_verdict(answer, "A", ipaddress.ip_address("198.18.0.11")) == (True, "NOERROR, 2 answers")
    assert m.dns_verdict(answer, "A", ipaddress.ip_address("198.18.0.12")) == (
        False, "address 198.18.0.12 not in the answer")


def test_the_question_is_compared_without_regard_to_case():
    assert m.dns_answer(reply(QUERY, record("198.18.0.10"), question=b"\x04GOOD\x04Test\x00\x00\x01\x00\x01"),
                        QUERY).addresses == (ipaddress.ip_address("198.18.0.10"),)


FIRST_RECORD = 12 + len(QUERY[12:])  # 0x1b: where the answer section starts


@pytest.mark.parametrize("owner", [
    b"\xc0\x1b",  # to itself
    b"\x01x\xc0\x1b",  # a label, then back to that label: a loop
    b"\xc0\x1d",  # forward, past itself
])
def test_compression_pointers_that_loop_or_go_forward_are_malformed(owner):
    assert FIRST_RECORD == 0x1b
    answer = m.dns_answer(reply(QUERY, record("198.18.0.10", owner=owner)), QUERY)
    assert answer.broken == "a compression pointer loops"
    assert m.dns_verdict(answer, "A", None) == (False, "malformed answer: a compression pointer loops")


def test_a_pointer_into_the_middle_of_a_name_is_followed():
    answer = m.dns_answer(reply(QUERY, record("198.18.0.10", owner=b"\x01x\xc0\x11")), QUERY)  # x + "test"
    assert answer == m.DnsAnswer(0, False, (ipaddress.ip_address("198.18.0.10"),))


def test_a_chain_of_pointers_is_cut_short():
    # a TXT record whose data is a root name and 200 pointers, each to the one before it (each step
    # goes back: no loop), then an A record whose owner is the last of them: no name has that many
    data = b"\x00" + b"".join(struct.pack("!H", 0xC000 | (FIRST_RECORD + 12 + max(0, 2 * i - 1)))
                               for i in range(200))
    txt = b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 60, len(data)) + data
    last = FIRST_RECORD + len(txt) - 2
    answer = m.dns_answer(reply(QUERY, txt, record("198.18.0.10", owner=struct.pack("!H", 0xC000 | last))), QUERY)
    assert answer.broken == "too many compression pointers"
    short = m.dns_answer(reply(QUERY, txt, record("198.18.0.10", owner=struct.pack("!H", 0xC000 | (last - 250)))),
                         QUERY)  # 75 pointers: a long way round, but a name
    assert short == m.DnsAnswer(0, False, (ipaddress.ip_address("198.18.0.10"),))


def test_a_pointer_loop_in_the_question_is_not_our_answer():
    assert m.dns_answer(reply(QUERY, question=b"\xc0\x0c\x00\x01\x00\x01"), QUERY) is None


@pytest.mark.parametrize("packet", [
    reply(QUERY, record("198.18.0.10"), qid=0x4321),  # another ID
    reply(QUERY, record("198.18.0.10"), flags=0x0100),  # a query, not a response (an echo)
    reply(QUERY, record("198.18.0.10"), flags=0xA980),  # opcode 5 (UPDATE)
    reply(QUERY, question=b"\x03bad\x04test\x00\x00\x01\x00\x01"),  # another name
    reply(QUERY, question=b"\x04good\x04test\x00\x00\x1c\x00\x01"),  # another type
    reply(QUERY, question=b"\x04good\x04test\x00\x00\x01\x00\x03"),  # another class
    header(answers=0) + b"",  # no question... and questions = 1
    header(questions=0, flags=0x8183),  # an error without the question
    QUERY[:11],  # shorter than a header
], ids=["id", "query", "opcode", "name", "type", "class", "no question", "error without question", "short"])
def test_what_is_not_the_answer_to_our_query_is_ignored(packet):
    assert m.dns_answer(packet, QUERY) is None


def test_every_cut_of_an_answer_is_read_within_bounds():
    whole = reply(QUERY, record("198.18.0.10"), record("198.18.0.11"))
    for end in range(len(whole)):
        answer = m.dns_answer(whole[:end], QUERY)
        if end < FIRST_RECORD:  # the question cut: not known to be our answer
            assert answer is None
        else:
            assert answer.broken in ("a name runs past the end", "a record runs past the end")
    assert m.dns_answer(whole, QUERY).broken == ""


def test_a_truncated_answer_is_judged_on_what_came():
    flags = 0x8380  # TC
    whole = reply(QUERY, record("198.18.0.10"), record("198.18.0.11"), flags=flags)
    cut = m.dns_answer(whole[:-3], QUERY)  # the second record cut in its data
    assert cut == m.DnsAnswer(0, True, (ipaddress.ip_address("198.18.0.10"),))
    assert m.dns_verdict(cut, "A", None) == (True, "NOERROR, 1 answer")
    assert m.dns_verdict(cut, "A", ipaddress.ip_address("198.18.0.11")) == (
        False, "address 198.18.0.11 not in the answer (truncated)")
    empty = m.dns_answer(reply(QUERY, flags=flags, answers=3), QUERY)
    assert m.dns_verdict(empty, "A", None) == (False, "no A record (truncated)")


@pytest.mark.parametrize("packet, reason", [
    (reply(QUERY, flags=0x8183), "NXDOMAIN"),
    (reply(QUERY, flags=0x8182), "SERVFAIL"),
    (reply(QUERY, flags=0x8185), "REFUSED"),
    (reply(QUERY, flags=0x818B), "rcode 11"),
    (reply(QUERY), "no A record"),  # NOERROR, no data
    (reply(QUERY, record("2001:db8::1")), "no A record"),  # an AAAA record does not count for A
    (reply(QUERY, record("198.18.0.10", rclass=3)), "no A record"),  # nor an A record of another class
    (reply(QUERY, record("198.18.0.10", rtype=1, data=b"\x01\x02\x03")),
     "malformed answer: an address record of 3 bytes"),
    (reply(QUERY, record("198.18.0.10", owner=b"\x41" + b"x" * 65)), "malformed answer: label type 0x1"),
    (reply(QUERY, record("198.18.0.10", owner=(b"\x3f" + b"x" * 63) * 5 + b"\x00")),
     "malformed answer: a name over 255 bytes"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_verdicts(packet, reason):
    assert m.dns_verdict(m.dns_answer(packet, QUERY), "A", None) == (False, reason)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_datagram_is_read_without_an_exception(tail):
    m.dns_answer(tail, QUERY)  # a stray datagram
    answer = m.dns_answer(header(answers=tail[0] if tail else 0) + QUERY[12:] + tail, QUERY)  # ours, with garbage
    assert answer is not None
    m.dns_verdict(answer, "A", ipaddress.ip_address("198.18.0.10"))


###############################################################################
# Against our own responder (a thread: protocol cases, not timing) ###########
###############################################################################


class Responder:
    """A UDP server on 127.0.0.1 that answers each query with what `answer(query)` returns
    (a list of datagrams, sent in order), and keeps the queries it got."""

    def __init__(self, answer, ip="127.0.0.1"):
        self.answer, self.queries = answer, []
        self.sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.done.is_set():
            try:
                query, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            self.queries.append(query)
            for datagram in self.answer(query, peer):
                if isinstance(datagram, tuple):  # (socket, datagram): from another address or port
                    datagram[0].sendto(datagram[1], peer)
                else:
                    self.sock.sendto(datagram, peer)

    def stop(self):
        self.done.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def responder():
    started = []

    def make(answer, **kw):
        started.append(Responder(answer, **kw))
        return started[-1]

    yield make
    for one in started:
        one.stop()


def good(query, *addresses):
    return reply(query, *(record(a) for a in addresses or ("198.18.0.10",)))


def test_a_good_answer_is_healthy(responder):
    server = responder(lambda q, peer: [good(q, "198.18.0.10", "198.18.0.11")])
    r = probe(target(server.port, receive="198.18.0.11"))
    assert (r.ok, r.reason) == (True, "NOERROR, 2 answers")
    (query, *_) = server.queries
    assert query[2:] == QUERY[2:]  # the same query, but its ID


def test_the_id_is_new_for_each_probe(responder):
    server = responder(lambda q, peer: [good(q)])
    for _ in range(8):
        assert probe(target(server.port)).ok
    assert len({q[:2] for q in server.queries}) > 1  # 8 probes with one ID: 1 in 2**49 by chance


def test_an_ipv6_server_and_an_aaaa_question(responder):
    try:
        server = responder(lambda q, peer: [reply(q, record("2001:db8::6"))], ip="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    r = probe(target(server.port, "six.test AAAA", "2001:db8::6", ip=ipaddress.ip_address("::1")))
    assert (r.ok, r.reason) == (True, "NOERROR, 1 answer")
    assert server.queries[0][12:] == b"\x03six\x04test\x00\x00\x1c\x00\x01"


@pytest.mark.parametrize("strays", [
    lambda q: [reply(q, record("198.18.0.66"), qid=struct.unpack("!H", q[:2])[0] ^ 1)],  # another ID
    lambda q: [reply(q, record("198.18.0.66"), question=b"\x04evil\x04test\x00\x00\x01\x00\x01")],
    lambda q: [q],  # our own query echoed: not a response
    lambda q: [b"\xff" * 7, b"", os.urandom(512)],
    lambda q: [reply(q, record("198.18.0.66"), qid=struct.unpack("!H", q[:2])[0] ^ 1)] * 100,  # > DNS_READS
])
def test_stray_datagrams_are_ignored_and_the_answer_read_after_them(responder, strays):
    server = responder(lambda q, peer: strays(q) + [good(q)])
    r = probe(target(server.port, receive="198.18.0.10"))
    assert (r.ok, r.reason) == (True, "NOERROR, 1 answer")


def test_only_strays_is_a_timeout(responder):
    server = responder(lambda q, peer: [reply(q, record("198.18.0.10"), qid=struct.unpack("!H", q[:2])[0] ^ 1)])
    r = probe(target(server.port), timeout=0.5)
    assert (r.ok, r.reason) == (False, "timeout (answer)")


def test_an_answer_from_another_port_is_not_taken(responder):
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    try:
        server = responder(lambda q, peer: [(other, good(q))])  # the right answer, from the wrong port
        r = probe(target(server.port), timeout=0.5)
    finally:
        other.close()
    assert (r.ok, r.reason) == (False, "timeout (answer)")


def test_a_silent_server_is_a_timeout_at_the_deadline():
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        started = time.monotonic()
        r = probe(target(silent.getsockname()[1]), timeout=0.5)
        took = time.monotonic() - started
    finally:
        silent.close()
    assert (r.ok, r.reason) == (False, "timeout (answer)")
    assert 0.4 < took < 5 * SLOW


def test_a_closed_port_is_refused():
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    r = probe(target(port), timeout=2)
    assert (r.ok, r.reason) == (False, "refused")


@pytest.mark.parametrize("answer, reason", [
    (lambda q: reply(q, flags=0x8182), "SERVFAIL"),
    (lambda q: reply(q, record("198.18.0.10", owner=b"\xc0\x1f")), "malformed answer: a compression pointer loops"),
    (lambda q: reply(q, record("198.18.0.10"), flags=0x8380)[:-2], "no A record (truncated)"),
])
def test_failed_answers(responder, answer, reason):
    server = responder(lambda q, peer: [answer(q)])
    r = probe(target(server.port))
    assert (r.ok, r.reason) == (False, reason)


def test_one_readiness_event_reads_a_bounded_number_of_datagrams():
    """A socket that never runs dry (a flood) must not hold the wave: the other probes and the
    deadlines are looked at between turns."""
    class Endless:
        reads = 0

        def recv(self, size):
            self.reads += 1
            assert self.reads <= m.DNS_STRAYS + m.DNS_READS, "ready() does not give the wave back"
            return stray

    check = m.DnsCheck(target(53), None)
    check.query, check.qtype, check.stage, check.sock = QUERY, "A", "answer", Endless()
    stray = reply(QUERY, record("198.18.0.10"), qid=0x4321)
    check.ready(0, 0)
    assert check.sock.reads == m.DNS_READS and check.verdict is None
    while check.verdict is None:  # and the strays are not read for ever
        check.ready(0, 0)
    assert check.verdict == (False, f"more than {m.DNS_STRAYS} datagrams not the answer")
    assert check.sock.reads == m.DNS_STRAYS + 1
    check.sock = None  # nothing to close


FLOOD = r"""
import socket, struct, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
query, peer = sock.recvfrom(512)
stray = bytearray(query)
stray[0] ^= 0xFF  # another ID
stray[2] |= 0x80  # a response
try:
    while True:  # as fast as it can, until the probe's socket is gone
        sock.sendto(stray, peer)
except OSError:
    pass
"""


def test_a_flood_of_strays_ends_soon():
    """In another process, so that the flood does not share our GIL.  Reading the strays is our
    own work, not on the watch clock: it is their number that ends it (or the deadline)."""
    flood = subprocess.Popen([sys.executable, "-c", FLOOD], stdout=subprocess.PIPE, text=True)
    try:
        port = int(flood.stdout.readline())
        started = time.monotonic()
        r = probe(target(port), timeout=0.5)
        took = time.monotonic() - started
    finally:
        flood.kill()
        flood.communicate()
    assert not r.ok and r.reason in (f"more than {m.DNS_STRAYS} datagrams not the answer", "timeout (answer)")
    assert took < 5 * SLOW


###############################################################################
# Against a real dnsmasq (Debian's dnsmasq-base) ##############################
###############################################################################

DNSMASQ_IP = "127.0.0.153"


class Dnsmasq:
    """dnsmasq in the foreground, with its own records and nothing of the system's."""

    RECORDS = ("--local=/test/",  # answered from here only: an unknown name is NXDOMAIN
               "--host-record=good.test,198.18.0.10",
               "--address=/multi.test/198.18.0.11", "--address=/multi.test/198.18.0.12",
               "--host-record=six.test,2001:db8::6",
               "--cname=alias.test,good.test")

    def __init__(self, binary, ip=DNSMASQ_IP):
        self.binary, self.ip, self.proc, self.port = binary, ip, None, 0

    def argv(self):
        return [self.binary, "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--log-facility=-", f"--port={self.port}", f"--listen-address={self.ip}", "--bind-interfaces",
                *self.RECORDS]

    def start(self):
        for _ in range(5):  # a free port, and another if someone took it meanwhile
            if not self.port:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind((self.ip, 0))
                    self.port = s.getsockname()[1]
            self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                wait_until(self.answering, what="dnsmasq answering")
                return self
            except OSError:
                self.port = 0
        raise AssertionError("dnsmasq did not start on a free port")

    def answering(self):
        if self.proc.poll() is not None:
            error = self.proc.communicate()[1]
            if "Address already in use" in error:
                raise OSError(error)
            raise AssertionError(f"dnsmasq exited {self.proc.returncode}: {error}")
        return probe(target(self.port, ip=ipaddress.ip_address(self.ip)), timeout=1).ok

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.communicate(timeout=30)

    @property
    def address(self):
        return f"{self.ip}:{self.port}"


@pytest.fixture
def dnsmasq():
    binary = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin:/usr/local/sbin")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dnsmasq is not installed (.ci/run installs dnsmasq-base)")
        pytest.skip("dnsmasq is not installed here (apt-get install dnsmasq-base)")
    server = Dnsmasq(binary).start()
    yield server
    server.stop()


def ask(server, request, receive=""):
    r = probe(target(server.port, request, receive, ip=ipaddress.ip_address(server.ip)), timeout=2)
    return r.ok, r.reason


def test_real_dnsmasq_answers(dnsmasq):
    assert ask(dnsmasq, "good.test A") == (True, "NOERROR, 1 answer")
    assert ask(dnsmasq, "GOOD.Test A", "198.18.0.10") == (True, "NOERROR, 1 answer")  # it echoes our case
    assert ask(dnsmasq, "multi.test A", "198.18.0.12") == (True, "NOERROR, 2 answers")
    assert ask(dnsmasq, "alias.test A", "198.18.0.10") == (True, "NOERROR, 1 answer")  # CNAME, then A (compressed)
    assert ask(dnsmasq, "six.test AAAA", "2001:db8::6") == (True, "NOERROR, 1 answer")


def test_real_dnsmasq_failures(dnsmasq):
    assert ask(dnsmasq, "unknown.test A") == (False, "NXDOMAIN")
    assert ask(dnsmasq, "www.example.org A") == (False, "REFUSED")  # nothing of it here, and no upstream
    assert ask(dnsmasq, "six.test A") == (False, "no A record")  # the name is there, without an A record
    assert ask(dnsmasq, "multi.test A", "198.18.0.13") == (False, "address 198.18.0.13 not in the answer")
    assert ask(dnsmasq, "six.test AAAA", "2001:db8::7") == (False, "address 2001:db8::7 not in the answer")


def test_real_dnsmasq_stopped(dnsmasq):
    dnsmasq.stop()
    assert ask(dnsmasq, "good.test A") == (False, "refused")  # ICMP port unreachable, on a connected socket


###############################################################################
# End to end: a UDP virtual service ###########################################
###############################################################################

VIP = "127.0.0.1:53"


def test_udp_service_checked_by_dns_end_to_end(any_ipvs, run, dnsmasq):
    """The fake ipvsadm here; the kernel's IPVS in the VM tier (dnsmasq runs there too)."""
    ipvs = any_ipvs
    ipvs.service(VIP, proto="-u")
    extra = "protocol = udp\ncheck = dns\nrequest = good.test\nreceive = 198.18.0.10\n"
    monitor = run(ipvs, config(VIP, [dnsmasq.address], [4], forward="m", extra=extra, name="resolver")).start()
    wait_until(lambda: ipvs.dests(VIP, "-u") == {dnsmasq.address: ("Masq", 4)}, what="the DNS server added")
    dnsmasq.stop()
    wait_until(lambda: ipvs.dests(VIP, "-u") == {}, what="the stopped DNS server removed")
    dnsmasq.start()  # on the same port
    wait_until(lambda: ipvs.dests(VIP, "-u") == {dnsmasq.address: ("Masq", 4)}, what="the DNS server back")
    code, _, err = monitor.stop()
    assert code == 0, err
    down = [line for line in monitor.lines() if f"{dnsmasq.address} is down in {VIP} (resolver)" in line]
    assert len(down) == 1 and down[0].endswith(("refused", "timeout (answer)")), down
    assert monitor.count(f"{dnsmasq.address} has been added to work in {VIP} (resolver) (weight 4)") == 2


def test_an_http_request_or_receive_in_monitor_never_reaches_a_dns_service(tmp_path):
    """[monitor]'s request/receive are another check's unless [monitor] says check = dns."""
    path = tmp_path / "monitorRS.conf"
    path.write_text("[monitor]\nrequest = /health\nreceive = OK\n\n[virtual dns]\nvip = 10.10.10.10\nvport = 53\n"
                    "protocol = udp\nrs = 192.168.32.63\ncheck = dns\nrequest = good.test\n")
    (vs,) = m.load_config(str(path)).services
    assert (vs.request, vs.receive) == ("good.test A", "")
    path.write_text("[monitor]\ncheck = dns\nrequest = good.test AAAA\n\n[virtual dns]\nvip = 10.10.10.10\n"
                    "vport = 53\nprotocol = udp\nrs = 192.168.32.63\ncheck = dns\n")
    (vs,) = m.load_config(str(path)).services
    assert vs.request == "good.test AAAA"
