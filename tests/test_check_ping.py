"""check = ping (issue 12): ICMP echo, IPv4 and IPv6, raw and datagram ("ping") sockets.

1. The packets: echo requests built, replies and Destination Unreachables parsed;
   what is not about an echo of ours is None (hypothesis: never an exception).
2. Matching: only OUR reply settles a probe (identifier, sequence, the probe's
   random token, the address), never a stray, another process's echo or a late
   reply; a Destination Unreachable quoting our echo ends it.
3. On loopback (127.0.0.x, ::1): healthy; one ICMP socket per family per wave,
   however many probes; each probe finished as its reply comes, not at the deadline.
4. A real address that stops answering, in a network namespace the test makes
   (veth pair, 198.18.0.0/15 and a ULA fd00::/64; nothing else): healthy, then
   the address goes and the probe fails; an address nobody has: host unreachable.
   Foreign echo replies, crafted on the wire inside the namespace, are ignored.
5. The datagram socket path, in a namespace of its own whose
   net.ipv4.ping_group_range the test sets (the host's is left alone), with
   CAP_NET_RAW dropped; and neither socket: one line at start, exit 2.
6. End to end: the monitor adds a ping-checked server, deletes it when its
   address goes, adds it back when it returns (the fake ipvsadm here, the real
   kernel in the VM tier).

The namespace tests need root and `ip netns`: skipped with the reason without
them, failed in CI (CI=true).
"""

import ipaddress
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import monitor_rs as m
from harness import MONITOR, ROOT, config, wait_until

IN_CI = os.environ.get("CI") == "true"
ICMP_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence


def unavailable(reason):
    """Skip for a reason the machine gives; in CI that is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this must run here)")
    pytest.skip(reason)


def needs_icmp(version=4):
    why = m.icmp_unusable(version)
    if why:
        unavailable(f"no ICMP socket for IPv{version} here: {why}")


def ping(*addresses, timeout=1.0):
    targets = [m.ProbeTarget("ping", ipaddress.ip_address(a), 0, "") for a in addresses]
    results = m.probe_all(targets, timeout)
    return [results[t] for t in targets]


def checksum(data):
    """RFC 1071, written independently of the module's."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp(kind, code, ident, seq, data=b"", version=4):
    head = ICMP_HEADER.pack(kind, code, 0, ident, seq) + data
    if version == 4:
        head = head[:2] + struct.pack("!H", checksum(head)) + head[4:]
    return head


def ipv4_header(src, dst, payload_len, proto=1):
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, 0, 0, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:]


def ipv6_header(src, dst, payload_len, next_header=58):
    return (struct.pack("!IHBB", 6 << 28, payload_len, next_header, 64)
            + socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst))


###############################################################################
# 1. The packets ###############################################################
###############################################################################


def test_an_ipv4_echo_request_carries_a_valid_checksum():
    packet = m.echo_request(4, 0x1234, 0xBEEF, b"monitor_rs token")
    assert ICMP_HEADER.unpack(packet[:8])[0:2] == (8, 0)
    assert ICMP_HEADER.unpack(packet[:8])[3:] == (0x1234, 0xBEEF)
    assert packet[8:] == b"monitor_rs token"
    assert checksum(packet) == 0  # a packet with its checksum in sums to zero
    assert packet == icmp(8, 0, 0x1234, 0xBEEF, b"monitor_rs token")


def test_an_odd_length_is_padded_for_the_checksum_only():
    packet = m.echo_request(4, 1, 2, b"odd")
    assert len(packet) == 11 and checksum(packet) == 0


def test_an_ipv6_echo_request_leaves_the_checksum_to_the_kernel():
    packet = m.echo_request(6, 7, 9, b"x")
    assert ICMP_HEADER.unpack(packet[:8]) == (128, 0, 0, 7, 9) and packet[8:] == b"x"


@pytest.mark.parametrize("version, with_ip", [(4, True), (4, False), (6, False)])
def test_an_echo_reply_is_parsed(version, with_ip):
    reply = icmp(0 if version == 4 else 129, 0, 0xABCD, 42, b"payload", version)
    if with_ip:
        reply = ipv4_header("127.0.0.9", "127.0.0.1", len(reply)) + reply
    assert m.parse_icmp(version, reply, with_ip) == m.IcmpMessage(0xABCD, 42, b"payload")


def test_an_ipv4_header_with_options_is_skipped_by_its_length():
    reply = icmp(0, 0, 5, 6, b"data")
    header = bytearray(ipv4_header("127.0.0.9", "127.0.0.1", len(reply) + 4))
    header[0] = 0x46  # 24 bytes: one word of options
    assert m.parse_icmp(4, bytes(header) + b"\x01\x01\x01\x00" + reply, True) == m.IcmpMessage(5, 6, b"data")


@pytest.mark.parametrize("version, packet", [
    (4, icmp(8, 0, 1, 2, b"our own request, looped back")),
    (4, icmp(11, 0, 1, 2)),  # time exceeded
    (4, icmp(5, 1, 1, 2)),  # redirect
    (4, icmp(0, 1, 1, 2)),  # an echo reply with a code no reply has
    (4, icmp(0, 0, 1, 2)[:7]),  # truncated
    (4, b""),
    (6, icmp(128, 0, 1, 2, version=6)),
    (6, icmp(0, 0, 1, 2, version=6)),  # an IPv4 reply's type, on IPv6: not a reply
    (6, icmp(135, 0, 1, 2, version=6)),  # neighbour solicitation
    (6, icmp(3, 0, 1, 2, version=6)),  # time exceeded
])
def test_what_is_not_a_reply_nor_an_unreachable_is_none(version, packet):
    assert m.parse_icmp(version, packet) is None


def unreachable_v4(code, quoted_dst="198.18.0.9", ident=77, seq=88, proto=1, quoted_type=8):
    echo = icmp(quoted_type, 0, ident, seq, b"monitor_rs tok")[:8]  # routers quote 8 bytes at least
    quoted = ipv4_header("198.18.0.1", quoted_dst, len(echo), proto) + echo
    return icmp(3, code, 0, 0, quoted)  # identifier and sequence are "unused" (zero) in an unreachable


def unreachable_v6(code, quoted_dst="fd00::9", ident=77, seq=88, next_header=58, quoted_type=128):
    echo = icmp(quoted_type, 0, ident, seq, b"monitor_rs tok", 6)
    quoted = ipv6_header("fd00::1", quoted_dst, len(echo), next_header) + echo
    return icmp(1, code, 0, 0, quoted, 6)


@pytest.mark.parametrize("version, packet, reason", [
    (4, unreachable_v4(1), "host unreachable"),
    (4, unreachable_v4(0), "network unreachable"),
    (4, unreachable_v4(13), "administratively prohibited"),
    (4, unreachable_v4(7), "destination unreachable (code 7)"),
    (6, unreachable_v6(3), "host unreachable"),
    (6, unreachable_v6(0), "network unreachable"),
    (6, unreachable_v6(1), "administratively prohibited"),
])
def test_an_unreachable_quoting_an_echo_is_parsed(version, packet, reason):
    to = ipaddress.ip_address("198.18.0.9" if version == 4 else "fd00::9").packed
    assert m.parse_icmp(version, packet) == m.IcmpMessage(77, 88, b"", reason, to)


def test_an_unreachable_read_on_a_raw_ipv4_socket_has_the_ip_header_first():
    packet = unreachable_v4(1)
    packet = ipv4_header("198.18.0.1", "198.18.0.1", len(packet)) + packet
    assert m.parse_icmp(4, packet, True).unreachable == "host unreachable"


@pytest.mark.parametrize("version, packet", [
    (4, unreachable_v4(1, proto=17)),  # about a UDP datagram
    (4, unreachable_v4(1, quoted_type=0)),  # about an echo reply (someone else's answer)
    (4, unreachable_v4(1)[:8 + 20 + 7]),  # the quoted echo cut short
    (6, unreachable_v6(3, next_header=17)),
    (6, unreachable_v6(3, quoted_type=129)),
    (6, unreachable_v6(3)[:8 + 39]),
])
def test_an_unreachable_about_something_else_is_none(version, packet):
    assert m.parse_icmp(version, packet) is None


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([(4, True), (4, False), (6, False)]), st.binary(max_size=120))
def test_parsing_never_raises(kind, packet):
    version, with_ip = kind
    message = m.parse_icmp(version, packet, with_ip)
    assert message is None or isinstance(message, m.IcmpMessage)


###############################################################################
# 2. Only our reply settles a probe ############################################
###############################################################################


@pytest.fixture
def one_probe():
    """A wave with one ping check started (its real echo sent to 127.0.0.9, its reply left unread)."""
    needs_icmp(4)
    wave = m.Wave(5.0)
    check = m.PingCheck(m.ProbeTarget("ping", ipaddress.ip_address("127.0.0.9"), 0, ""), wave)
    check.start()
    yield check
    check.close()
    wave.clock.close()
    wave.poller.close()


def test_a_reply_settles_its_probe_only_with_our_identifier_sequence_token_and_address(one_probe):
    check, icmp_socket = one_probe, one_probe.icmp
    ours = m.IcmpMessage(icmp_socket.ident, check.seq, check.data)
    strays = [
        (ours._replace(ident=(icmp_socket.ident + 1) & 0xFFFF), "127.0.0.9"),  # another process's echo
        (ours._replace(seq=(check.seq + 1) & 0xFFFF), "127.0.0.9"),  # another sequence
        (ours._replace(data=check.data[:-1] + bytes([check.data[-1] ^ 1])), "127.0.0.9"),  # another token
        (ours._replace(data=b""), "127.0.0.9"),
        (ours, "127.0.0.8"),  # our numbers, from another address
    ]
    for message, source in strays:
        icmp_socket._answer(message, (source, 0))
        assert check.verdict is None, (message, source)
    assert icmp_socket.wave.settled == []
    icmp_socket._answer(ours, ("127.0.0.9", 0))
    assert check.verdict == (True, "echo reply")
    assert icmp_socket.wave.settled == [check]
    icmp_socket._answer(ours._replace(unreachable="host unreachable"), ("127.0.0.9", 0))
    assert check.verdict == (True, "echo reply")  # settled once: a second answer changes nothing


def test_an_unreachable_settles_only_the_probe_of_the_echo_it_quotes(one_probe):
    check, icmp_socket = one_probe, one_probe.icmp
    mine = ipaddress.ip_address("127.0.0.9").packed
    other = ipaddress.ip_address("127.0.0.10").packed
    about = m.IcmpMessage(icmp_socket.ident, check.seq, unreachable="host unreachable", to=other)
    icmp_socket._answer(about, ("127.0.0.1", 0))  # about an echo to another address
    assert check.verdict is None
    icmp_socket._answer(about._replace(to=mine), ("192.0.2.1", 0))  # from a router on the way: fine
    assert check.verdict == (False, "host unreachable")


def test_a_late_reply_is_a_stray_once_its_probe_is_done(one_probe):
    check, icmp_socket = one_probe, one_probe.icmp
    message = m.IcmpMessage(icmp_socket.ident, check.seq, check.data)
    icmp_socket.users += 1  # keep the socket open past this check, as another check of the wave would
    check.close()
    icmp_socket._answer(message, ("127.0.0.9", 0))
    assert check.verdict is None and icmp_socket.wave.settled == []
    icmp_socket.leave(check)


def test_a_fault_of_ours_in_the_shared_socket_fails_the_wave_loudly(monkeypatch):
    """Not a timeout for every ping check (servers deleted for our bug): the pass fails, nothing changes."""
    needs_icmp(4)

    def broken(*args):
        raise RuntimeError("a bug in the reader")

    monkeypatch.setattr(m, "parse_icmp", broken)
    with pytest.raises(m.MonitorFault, match="a bug in the reader"):
        ping("127.0.0.1", "127.0.0.2")


def test_each_probe_has_its_own_token():
    wave = m.Wave(1.0)
    target = m.ProbeTarget("ping", ipaddress.ip_address("127.0.0.9"), 0, "")
    a, b = m.PingCheck(target, wave), m.PingCheck(target, wave)
    assert a.data.startswith(m.ECHO_MARK) and len(a.data) >= len(m.ECHO_MARK) + 16 and a.data != b.data
    wave.clock.close()
    wave.poller.close()


###############################################################################
# 3. Loopback ##################################################################
###############################################################################


def test_loopback_addresses_answer():
    needs_icmp(4)
    for result in ping("127.0.0.1", "127.0.0.2", "127.1.2.3"):
        assert result.ok and result.reason == "echo reply"


def test_ipv6_loopback_answers():
    needs_icmp(6)
    (result,) = ping("::1")
    assert result.ok and result.reason == "echo reply"


def test_one_icmp_socket_per_family_per_wave_and_each_probe_done_at_its_reply(monkeypatch):
    """Each raw ICMP socket gets a copy of every ICMP packet: a socket per probe would read N^2."""
    needs_icmp(4)
    needs_icmp(6)
    opened = []
    real_open = m._icmp_open
    monkeypatch.setattr(m, "_icmp_open", lambda version, kind: opened.append(version) or real_open(version, kind))
    addresses = [f"127.0.{1 + i // 200}.{1 + i % 200}" for i in range(500)] + ["::1"]
    started = time.monotonic()
    results = ping(*addresses, timeout=10.0)
    elapsed = time.monotonic() - started
    assert all(r.ok and r.reason == "echo reply" for r in results)
    assert sorted(opened) == [4, 6]
    # settled through the shared socket, each probe is finished at once, not at its deadline
    assert elapsed < 5.0 and max(r.latency for r in results) < 5.0


def test_a_second_wave_opens_its_own_socket_and_the_first_is_closed(monkeypatch):
    needs_icmp(4)
    sockets = []
    real_open = m._icmp_open
    monkeypatch.setattr(m, "_icmp_open", lambda version, kind: sockets.append(real_open(version, kind)) or sockets[-1])
    assert ping("127.0.0.1")[0].ok and ping("127.0.0.2")[0].ok
    assert len(sockets) == 2 and all(s.fileno() == -1 for s in sockets)


def test_the_socket_is_decided_once_and_kept(monkeypatch):
    needs_icmp(4)
    kind = m.icmp_socket(4)
    monkeypatch.setattr(m, "_icmp_open", lambda version, kind: pytest.fail("tried again"))
    assert m.icmp_socket(4) == kind and kind[0] in ("raw", "dgram")


###############################################################################
# 4. A real address that stops answering: network namespaces ##################
###############################################################################


def sh(*argv, check=True):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


class Lab:
    """Network namespaces and veth pairs made by a test, all gone at its end.

    Addresses only from 198.18.0.0/15 (benchmark) and a ULA fd00::/64, a random
    subnet each (other tests may run at the same time).  While a link has its end in
    the host, an `unreachable` route under it (metric 4000) keeps probes to its subnet
    on this machine even when the link is gone."""

    def __init__(self):
        self.tag = f"{os.getpid() % 100000}{random.randrange(1000)}"
        self.namespaces, self.guards, self.links = [], [], 0

    def namespace(self, *sysctls):
        name = f"mrsping-{self.tag}-{len(self.namespaces)}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        for setting in sysctls:
            sh("ip", "netns", "exec", name, "sysctl", "-qw", setting)
        return name

    def link(self, near, far):
        """A veth pair from `near` (None: the host) to `far` (its end: eth1): returns the device
        at the near end and the addresses {4: (near, far, nobody's), 6: (...)}.  The near end
        gives up on a neighbour that does not answer in 0.1 s (its own settings, not the host's)."""
        self.links += 1
        dev = f"mp{self.tag}{self.links}"[:15]
        a, b = random.randrange(1, 255), random.randrange(0, 256, 8)
        net4 = f"198.18.{a}."
        net6 = f"fd00:{random.randrange(1, 0xFFFF):x}:{random.randrange(1, 0xFFFF):x}::"
        addresses = {4: tuple(f"{net4}{b + i}" for i in (1, 2, 3)), 6: tuple(f"{net6}{i}" for i in (1, 2, 3))}
        near_ip = ["ip"] if near is None else ["ip", "-n", near]
        if near is None:
            for route in (f"{net4}{b}/29", f"{net6}/64"):
                sh("ip", "route", "add", "unreachable", route, "metric", "4000")
                self.guards.append(route)
        sh(*near_ip, "link", "add", dev, "type", "veth", "peer", "name", "eth1", "netns", far)
        sh(*near_ip, "addr", "add", f"{addresses[4][0]}/29", "dev", dev)
        sh(*near_ip, "-6", "addr", "add", f"{addresses[6][0]}/64", "dev", dev, "nodad")
        sh("ip", "-n", far, "addr", "add", f"{addresses[4][1]}/29", "dev", "eth1")
        sh("ip", "-n", far, "-6", "addr", "add", f"{addresses[6][1]}/64", "dev", "eth1", "nodad")
        sh(*near_ip, "link", "set", dev, "up")
        sh("ip", "-n", far, "link", "set", "eth1", "up")
        run_near = [] if near is None else ["ip", "netns", "exec", near]
        for family in ("ipv4", "ipv6"):
            sh(*run_near, "sysctl", "-qw", f"net.{family}.neigh.{dev}.mcast_solicit=1",
               f"net.{family}.neigh.{dev}.ucast_solicit=1", f"net.{family}.neigh.{dev}.retrans_time_ms=100")
        return dev, addresses

    def close(self):
        for name in self.namespaces:  # their veth pairs go with them
            sh("ip", "netns", "del", name, check=False)
        for route in self.guards:
            sh("ip", "route", "del", "unreachable", route, "metric", "4000", check=False)


@pytest.fixture
def lab():
    """Namespaces for the test.  List it BEFORE `run` in a test's arguments: a monitor is
    then stopped before the namespaces go."""
    if os.geteuid() != 0:
        unavailable("network namespaces need root")
    if shutil.which("ip") is None:
        unavailable("no ip command (iproute2)")
    made = Lab()
    try:
        sh("ip", "netns", "exec", made.namespace(), "true")
    except AssertionError as exc:
        made.close()
        unavailable(f"ip netns does not work here: {exc}")
    yield made
    made.close()


def answers(address, timeout=1.0):
    """Poll until `address` answers our ping (a fresh link may lose its first neighbour solicitation)."""
    return wait_until(lambda: ping(address, timeout=timeout)[0].ok, 20, f"{address} to answer")


FAILED = ("timeout (echo)", "host unreachable")


@pytest.mark.parametrize("version", [4, 6])
def test_a_real_address_answers_then_stops_answering(lab, version):
    needs_icmp(version)
    target = lab.namespace()
    _, there, _ = lab.link(None, target)[1][version]
    answers(there)
    prefix = 29 if version == 4 else 64
    sh("ip", "-n", target, "addr", "del", f"{there}/{prefix}", "dev", "eth1")
    (result,) = ping(there, timeout=0.5)
    assert not result.ok and result.reason in FAILED


@pytest.mark.parametrize("version", [4, 6])
def test_an_address_nobody_has_is_host_unreachable(lab, version):
    """The neighbour (ARP, ND) fails, the kernel sends us a Destination Unreachable for OUR echo."""
    needs_icmp(version)
    target = lab.namespace()
    _, there, nobody = lab.link(None, target)[1][version]
    answers(there)
    started = time.monotonic()
    (result,) = ping(nobody, timeout=30.0)
    assert (result.ok, result.reason) == (False, "host unreachable")
    assert time.monotonic() - started < 15.0  # the unreachable ended it (ND gives up after ~3 s), not the deadline


def test_a_deleted_namespace_fails_the_probe(lab):
    needs_icmp(4)
    target = lab.namespace()
    dev, addresses = lab.link(None, target)
    there = addresses[4][1]
    answers(there)
    sh("ip", "netns", "del", target)
    lab.namespaces.remove(target)
    # the kernel dismantles a namespace in the background: its veth pair goes a moment later
    wait_until(lambda: not os.path.exists(f"/sys/class/net/{dev}"), what="the veth pair gone")
    (result,) = ping(there, timeout=0.5)  # the guard route keeps the echo on this machine
    assert not result.ok and result.reason in FAILED + ("network unreachable",)


# A responder in the namespace, in place of the kernel's echo replies: it takes each
# echo request and answers with a series of FOREIGN replies (another identifier,
# another sequence, another token, another source address), then, if asked, ours.
RESPONDER = r'''
import socket, struct, sys
def csum(b):
    b += b"\0" * (len(b) % 2)
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF
def reply(src, dst, ident, seq, data):
    body = struct.pack("!BBHHH", 0, 0, 0, ident, seq) + data
    body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, 1, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))
    return head + body
listen = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
print("ready", flush=True)
while True:
    packet = listen.recv(2048)
    ihl = (packet[0] & 15) * 4
    kind, code, _, ident, seq = struct.unpack("!BBHHH", packet[ihl:ihl + 8])
    if kind != 8:
        continue
    data = packet[ihl + 8:]
    to, me = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
    other = me.rsplit(".", 1)[0] + "." + str(int(me.rsplit(".", 1)[1]) + 1)
    flipped = data[:-1] + bytes([data[-1] ^ 1])
    for src, i, s, d in [(me, ident ^ 1, seq, data), (me, ident, seq ^ 1, data), (me, ident, seq, flipped),
                         (me, ident, seq, b""), (other, ident, seq, data)]:
        send.sendto(reply(src, to, i, s, d), (to, 0))
    if sys.argv[1] == "then-ours":
        send.sendto(reply(me, to, ident, seq, data), (to, 0))
    print("answered", flush=True)
'''


@pytest.mark.parametrize("then_ours", [False, True])
def test_foreign_echo_replies_on_the_wire_are_ignored(lab, then_ours):
    """Replies crafted in the namespace, with one number of ours wrong each: the probe waits for
    its own (healthy at once when it follows them, a timeout when it never comes)."""
    needs_icmp(4)
    target = lab.namespace("net.ipv4.icmp_echo_ignore_all=1")  # the kernel there answers nothing
    dev, addresses = lab.link(None, target)
    there = addresses[4][1]
    mac = json.loads(sh("ip", "-j", "-n", target, "link", "show", "eth1").stdout)[0]["address"]
    sh("ip", "neigh", "replace", there, "lladdr", mac, "dev", dev, "nud", "permanent")  # no ARP to lose
    responder = subprocess.Popen(["ip", "netns", "exec", target, sys.executable, "-c", RESPONDER,
                                  "then-ours" if then_ours else "only-foreign"],
                                 stdout=subprocess.PIPE, text=True)
    try:
        assert responder.stdout.readline() == "ready\n"
        (result,) = ping(there, timeout=2.0)
        assert responder.stdout.readline() == "answered\n"  # the strays were sent: the probe saw them
    finally:
        responder.kill()
        responder.wait()
    if then_ours:
        assert (result.ok, result.reason) == (True, "echo reply")
    else:
        assert (result.ok, result.reason) == (False, "timeout (echo)")


###############################################################################
# 5. The datagram socket, and neither ##########################################
###############################################################################

PROBE_IN_NAMESPACE = r'''
import ipaddress, json, sys
sys.path.insert(0, sys.argv[1])
import monitor_rs as m
targets = [m.ProbeTarget("ping", ipaddress.ip_address(a), 0, "") for a in sys.argv[3:]]
results = m.probe_all(targets, float(sys.argv[2]))
print(json.dumps({"kinds": {str(v): m.icmp_socket(v)[0] for v in (4, 6)},
                  "results": [[results[t].ok, results[t].reason] for t in targets]}))
'''


def without_raw(namespace, *argv):
    """Run as root in `namespace`, but without CAP_NET_RAW (no raw socket): as an unprivileged monitor."""
    if shutil.which("setpriv") is None:
        unavailable("no setpriv (util-linux): cannot drop CAP_NET_RAW")
    return sh("ip", "netns", "exec", namespace, "setpriv", "--bounding-set", "-net_raw", *argv, check=False)


@pytest.fixture
def prober(lab):
    """A namespace whose ping_group_range lets root's group have ICMP datagram sockets, linked to a target one."""
    near = lab.namespace(f"net.ipv4.ping_group_range={os.getegid()} {os.getegid()}")
    far = lab.namespace()
    return near, far, lab.link(near, far)[1]


def probe_in(namespace, *addresses, timeout=1.0):
    proc = without_raw(namespace, sys.executable, "-c", PROBE_IN_NAMESPACE, ROOT, str(timeout), *addresses)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_datagram_socket_where_no_raw_socket_may_be_opened(prober):
    near, far, addresses = prober
    there4, there6 = addresses[4][1], addresses[6][1]
    wait_until(lambda: probe_in(near, there4, there6)["results"] == [[True, "echo reply"]] * 2, 20,
               "the far end to answer over the datagram socket")
    seen = probe_in(near, "127.0.0.1", "::1", there4, there6, addresses[4][2], addresses[6][2], timeout=5.0)
    assert seen["kinds"] == {"4": "dgram", "6": "dgram"}
    assert seen["results"] == [[True, "echo reply"]] * 4 + [[False, "host unreachable"]] * 2  # its error queue
    sh("ip", "-n", far, "addr", "del", f"{there4}/29", "dev", "eth1")
    sh("ip", "-n", far, "-6", "addr", "del", f"{there6}/64", "dev", "eth1")
    after = probe_in(near, there4, there6, timeout=0.5)["results"]
    assert all(not ok and reason in FAILED for ok, reason in after), after


PING_CONFIG = """
[monitor]
timeout = 0.5

[virtual web]
vip = 127.0.0.1
vport = 80
rs = 127.0.0.2 127.0.0.3:8080
type = m
check = ping

[virtual six]
vip = ::1
vport = 53
protocol = udp
rs = [::1]:53
type = m
check = ping
"""


def test_neither_socket_is_one_line_at_start_exit_2(lab, tmp_path):
    """Without CAP_NET_RAW, and a ping_group_range (the new namespace's default, 1 0) without our group."""
    namespace = lab.namespace()
    path = tmp_path / "monitorRS.conf"
    path.write_text(PING_CONFIG)
    for mode in (["--check-config"], ["--once", "--ipvsadm", "/bin/true", "--log-file", ""]):
        proc = without_raw(namespace, sys.executable, MONITOR, "--config", str(path), *mode)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == (
            f"monitor_rs: {path}: [virtual web] check = 'ping': cannot send an ICMP echo over IPv4 here: "
            f"no raw socket (needs root or CAP_NET_RAW), no ICMP datagram socket (group {os.getegid()} "
            f"is not in net.ipv4.ping_group_range = 1 0)\n")
        assert proc.stdout == ""


def test_the_datagram_socket_is_enough_to_start(prober, tmp_path):
    near, _, _ = prober
    path = tmp_path / "monitorRS.conf"
    path.write_text(PING_CONFIG)
    proc = without_raw(near, sys.executable, MONITOR, "--config", str(path), "--check-config")
    assert proc.returncode == 0, proc.stderr
    assert "probe ping://127.0.0.2" in proc.stdout


###############################################################################
# Config #######################################################################
###############################################################################


def test_check_config_shows_the_address_pinged(tmp_path):
    needs_icmp(4)
    needs_icmp(6)
    path = tmp_path / "monitorRS.conf"
    path.write_text(PING_CONFIG)
    proc = subprocess.run([sys.executable, MONITOR, "--config", str(path), "--check-config"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.endswith("127.0.0.2:80 weight 1: IPVS entry 127.0.0.2:80, probe ping://127.0.0.2")
               for line in lines), lines
    assert any(line.endswith("127.0.0.3:8080 weight 1: IPVS entry 127.0.0.3:8080, probe ping://127.0.0.3")
               for line in lines), lines
    assert any(line.endswith("probe ping://[::1]") for line in lines), lines


def test_a_ping_config_loads_and_one_address_is_one_probe(tmp_path):
    needs_icmp(4)
    needs_icmp(6)
    path = tmp_path / "monitorRS.conf"
    path.write_text(PING_CONFIG.replace("rs = 127.0.0.2 127.0.0.3:8080", "rs = 127.0.0.2:80 127.0.0.2:81"))
    web, six = m.load_config(str(path)).services
    assert (web.check, six.check, six.protocol) == ("ping", "ping", "udp")
    targets = {m.ProbeTarget.of(web, rs.ip, rs.port) for rs in web.servers}
    assert targets == {m.ProbeTarget("ping", ipaddress.ip_address("127.0.0.2"), 0, "")}


###############################################################################
# 6. End to end ################################################################
###############################################################################


@pytest.mark.parametrize("version", [4, 6])
def test_a_ping_checked_server_leaves_when_its_address_goes_and_comes_back(lab, any_ipvs, run, version):
    """The fake ipvsadm here; the real kernel's IPVS in the VM tier (any_ipvs)."""
    needs_icmp(version)
    target = lab.namespace()
    _, there, _ = lab.link(None, target)[1][version]
    answers(there)
    if version == 4:
        vip, gone, stays, prefix = "127.0.0.1:80", f"{there}:80", "127.0.0.2:80", 29
    else:
        vip, gone, stays, prefix = "[::1]:80", f"[{there}]:80", "[::1]:8080", 64
    any_ipvs.service(vip)
    monitor = run(any_ipvs, config(vip, [gone, stays], [3, 1], extra="check = ping")).start()
    wait_until(lambda: any_ipvs.dests(vip) == {gone: ("Masq", 3), stays: ("Masq", 1)}, what="both servers in")
    sh("ip", "-n", target, "addr", "del", f"{there}/{prefix}", "dev", "eth1")
    wait_until(lambda: gone not in any_ipvs.dests(vip), what="the server whose address went, deleted")
    assert any_ipvs.dests(vip) == {stays: ("Masq", 1)}
    sh("ip", "-n", target, "addr", "add", f"{there}/{prefix}", "dev", "eth1", *(["nodad"] if version == 6 else []))
    wait_until(lambda: any_ipvs.dests(vip).get(gone) == ("Masq", 3), timeout=30, what="the server back")
    assert monitor.stop()[0] == 0
    down = [line for line in monitor.lines() if f"{gone} is down in {vip} (web): " in line]
    assert len(down) == 1 and down[0].rpartition(": ")[2] in FAILED, down
