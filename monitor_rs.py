#!/usr/bin/env python3
"""monitor_rs: real-server health monitor for an LVS (IPVS) director.

A port of the shell script ``monitorRS.sh``: every ``interval`` seconds it reads
each virtual service from the kernel with ``ipvsadm -Ln``, probes every real
server over HTTP (or TCP) under one total deadline, takes a failing real server
out of the IPVS table and puts it back when it recovers, and appends what it
did to ``/var/log/monitorRS.log``.

The module reads top to bottom:

    config  ->  IPVS table (read, change)  ->  probes  ->  decision (pure)
            ->  log and console  ->  the loop  ->  the CLI

Everything that touches the world (subprocess, sockets, clock, files, signals)
lives in the probes, the loop and the CLI; the decision is a pure function.
"""

from __future__ import annotations

import collections
import configparser
import dataclasses
import enum
import encodings.idna
import errno
import fcntl
import functools
import ipaddress
import json
import math
import os
import re
import resource
import select
import shlex
import signal
import socket
import stat
import struct
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AbstractSet, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:  # ssl is loaded by the first https probe (tls_context), not at start
    import queue
    import ssl
    import subprocess

# Start fast: what the first probe does not need is imported where it is used, at its first use
# (subprocess: an ipvsadm, a check program or a hook run; tempfile: the first state file; queue: the
# mail worker), and `which` stands for shutil.which (shutil loads bz2 and lzma). Under emulation
# (bench/peers) every module costs tens of milliseconds of start.

__version__ = "1.0.0"

DEFAULT_CONFIG = "/etc/monitorRS.conf"
CONFIG_ENV = "MONITOR_RS_CONFIG"
DEFAULT_LOG = "/var/log/monitorRS.log"

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


###############################################################################
# Config ######################################################################
###############################################################################
#
# monitorRS.conf is an INI file: a [monitor] section for the loop, and one
# [virtual NAME] section per virtual service.  Keys carry the names of the
# original script's variables (VIP, VPORT, RS, RW, RPORT, TYPE, LOG).  Keys of
# a virtual service set in [monitor] are defaults for every virtual service.


class ConfigError(Exception):
    """A config that must not be run; the message is one line for the operator."""


class Endpoint(NamedTuple):
    """An address and port, printed the way ipvsadm prints it."""

    ip: IPAddress
    port: int

    def __hash__(self) -> int:
        # The same as equality needs, without ipaddress's own hash (it formats the address as
        # hex each time): endpoints key every per-server dictionary, ~30 lookups a server a pass.
        return hash((self.ip._ip, self.port))

    def __str__(self) -> str:
        if self.ip.version == 6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"


FORWARD_FLAGS = {"g": "-g", "gate": "-g", "m": "-m", "masq": "-m", "i": "-i", "ipip": "-i"}
FORWARD_NAMES = {"-g": "Route", "-m": "Masq", "-i": "Tunnel"}
PROTOCOL_FLAGS = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service", "fwm": "-f"}
PROTOCOL_NAMES = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP", "fwm": "FWM"}


class CheckKind(str, enum.Enum):
    """How a real server is checked (the seed's three layers: ICMP, a port, the application)."""

    HTTP = "http"
    HTTPS = "https"
    TCP = "tcp"  # a connect; with request/receive, a line or banner protocol (SMTP, POP, IMAP, Redis)
    PING = "ping"  # ICMP echo
    DNS = "dns"  # a query over UDP
    EXTERNAL = "external"  # a program: checkcommand
    ON = "on"  # no check: always up (ldirectord's checktype=on)
    OFF = "off"  # no check: always down (ldirectord's checktype=off)


CHECKS = tuple(kind.value for kind in CheckKind)
UDP_CHECKS = (CheckKind.DNS, CheckKind.PING, CheckKind.EXTERNAL)  # what can check a UDP service
MAX_WEIGHT = 2147483647

MONITOR_KEYS = {"interval", "timeout", "log", "ipvsadm", "ipvsadm_timeout", "lock", "state_file",
                "prometheus_file", "autoreload", "callback", "cleanstop", "maintenancedir", "syslog", "smtp",
                "emailalertfrom"}
MONITOR_KEYS.add("table_source")  # /proc/net/ip_vs or ipvsadm -Ln (TableSource)
MONITOR_KEYS.add("listen")  # the status endpoint, host:port (issue 15)
SERVICE_KEYS = {
    "vip", "vport", "protocol", "fwmark", "rs", "rw", "rport", "type",
    "request", "receive", "expect", "checkport", "host", "check",
    "fall", "rise", "quiescent", "fallback", "depool_threshold", "on_change",
    "checkcommand", "dynamic_weight",
    "scheduler", "persistent", "netmask", "ops", "httpmethod", "receive_regex", "fallbackcommand",
    "emailalert", "emailalertfreq", "emailalertstatus",
    "slowstart", "fastinter", "downinter", "drain_timeout",  # issue 15: operator control
    "keepalive",  # check = http: one connection for several checks (issue 14)
}
# A [virtual]'s own timeout and interval: in [monitor] these two are the loop's (and so every service's
# unless it says its own), never merged into a service as a default of its own.
SERVICE_OWN_KEYS = {"timeout", "interval"}
PER_REAL = re.compile(r"(request|receive)@(\S+)")  # request@RIP:PORT = ...: one real server's own (as in rs)
SYSLOG_FACILITIES = ("auth", "authpriv", "cron", "daemon", "ftp", "kern", "local0", "local1", "local2", "local3",
                     "local4", "local5", "local6", "local7", "lpr", "mail", "news", "syslog", "user", "uucp")
EMAIL_STATUSES = ("all", "none", "starting", "running", "stopping", "reloading")  # ldirectord's emailalertstatus
MAX_PERSISTENT = 2678400  # ipvsadm -p: 31 days at most
KEEPALIVE_MAX = 1000  # keepalive = N: nginx's keepalive_requests; a server ends a connection after its own limit


def stored_endpoint(protocol: str, forward: str, vport: int, ep: Endpoint) -> Endpoint:
    """Where IPVS keeps a destination: ipvsadm -a/-e rewrite the port of -g and -i
    destinations to the virtual port (not for firewall-mark services)."""
    if forward == "-m" or protocol == "fwm":
        return ep
    return Endpoint(ep.ip, vport)


@dataclass(frozen=True)
class RealServer:
    """One entry of the original's RS array, with its RW weight (same index)."""

    ip: IPAddress
    port: int  # the real port: its own ``:port`` in rs, else rport
    weight: int
    index: int
    request: Optional[str] = None  # its own request and receive (ldirectord's real=... "request", "receive"):
    receive: Optional[str] = None  # None: the virtual service's

    @functools.cached_property  # frozen: built once, though asked for many times a pass
    def endpoint(self) -> Endpoint:
        return Endpoint(self.ip, self.port)

    @functools.cached_property
    def name(self) -> str:
        return str(self.endpoint)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class VirtualService:
    """A [virtual NAME] section, defaults from [monitor] already applied."""

    name: str
    protocol: str  # tcp | udp | sctp | fwm
    vip: Optional[IPAddress]
    vport: int  # 0 for a firewall-mark service
    fwmark: int
    servers: Tuple[RealServer, ...]
    forward: str  # -g | -m | -i
    check: str = "http"  # a CheckKind value
    request: str = "/"  # as sent: non-ASCII percent-encoded (encode_request), at load
    receive: str = ""
    expect: Tuple[Tuple[int, int], ...] = ((200, 399),)
    checkport: Optional[int] = None
    host: str = ""  # as sent (Host header, TLS server name): IDNA-encoded (encode_host), at load
    fall: int = 1
    rise: int = 1
    quiescent: bool = False
    fallback: Optional[Endpoint] = None
    depool_threshold: float = 0.0
    on_change: Tuple[str, ...] = ()
    checkcommand: Tuple[str, ...] = ()  # check = external: the program and its own words
    dynamic_weight: bool = False  # check = external: its exit code may set the weight
    receive_regex: bool = False  # receive is a regular expression (ldirectord.cf's), not plain text
    httpmethod: str = "GET"  # GET | HEAD (check = http|https)
    timeout: Optional[float] = None  # this service's probe deadline; None: the config's
    interval: Optional[float] = None  # seconds between its checks; None: the config's
    # The virtual service itself, created (and corrected) by the monitor when `scheduler` is set;
    # "" (monitorRS.conf without scheduler): it must exist, as in the original.
    scheduler: str = ""
    persistent: Optional[int] = None  # seconds (ipvsadm -p), None: not persistent
    netmask: str = ""  # persistence granularity (ipvsadm -M), "" for the kernel's default
    ops: bool = False  # one-packet scheduling (ipvsadm -o, UDP)
    fallbackcommand: Tuple[str, ...] = ()  # run with start|stop VIP:PORT when the pool empties / fills
    emailalert: Tuple[str, ...] = ()  # addresses mailed on each state change of a real server
    emailalertfreq: float = 0.0  # seconds between repeated mails while a server stays down; 0: never
    emailalertstatus: Tuple[str, ...] = ("all",)  # ldirectord's: all|none|starting|running|stopping|reloading
    # Operator control (issue 15, HAProxy's names)
    slowstart: float = 0.0  # seconds a server (re)entering the pool takes to ramp to its weight; 0: at once
    fastinter: Optional[float] = None  # seconds to the next check while a server's checks disagree with its state
    downinter: Optional[float] = None  # seconds between checks of a server that is down (None: the interval)
    drain_timeout: Optional[float] = None  # a drained server leaves after this at the latest (None: at 0 connections)
    keepalive: int = 0  # check = http: checks one connection serves before a new one is made; 0: one each

    @functools.cached_property
    def family(self) -> int:
        """4 or 6.  A firewall-mark service has no address: IPVS keys it by mark AND family
        (``-f N`` or ``-f N -6``); it is IPv6 when its real servers and fallback all are
        (a tunnel service mixing families is the IPv4 one, ``-f N``)."""
        if self.vip is not None:
            return self.vip.version
        ips = [rs.ip for rs in self.servers] + ([self.fallback.ip] if self.fallback else [])
        return 6 if ips and all(ip.version == 6 for ip in ips) else 4

    @functools.cached_property  # frozen: computed once, not per server per pass
    def address(self) -> str:
        """How ipvsadm names the service: ``10.10.10.10:80``, ``[::1]:80``, the mark, or ``1 IPv6``."""
        if self.protocol == "fwm":
            return f"{self.fwmark} IPv6" if self.family == 6 else str(self.fwmark)
        return str(Endpoint(self.vip, self.vport))

    @functools.cached_property
    def service_args(self) -> Tuple[str, ...]:
        if self.protocol == "fwm":
            return ("-f", str(self.fwmark), "-6") if self.family == 6 else ("-f", str(self.fwmark))
        return (PROTOCOL_FLAGS[self.protocol], self.address)

    @functools.cached_property
    def ipvs_key(self) -> Tuple[str, str]:
        """The (protocol, address) pair that heads this service in ``ipvsadm -Ln``."""
        return (PROTOCOL_NAMES[self.protocol], self.address)

    def stored_endpoint(self, ep: Endpoint) -> Endpoint:
        return stored_endpoint(self.protocol, self.forward, self.vport, ep)

    def label(self) -> str:
        return f"{self.address} ({self.name})"


class ConfigFormat(str, enum.Enum):
    """The two front ends of one Config, told apart by content (detect_format)."""

    MONITOR_RS = "monitorRS.conf"
    LDIRECTORD = "ldirectord.cf"


@dataclass(frozen=True)
class Config:
    path: str
    interval: float = 3.0
    timeout: float = 1.0
    log: str = DEFAULT_LOG
    ipvsadm: str = "ipvsadm"
    ipvsadm_timeout: float = 5.0
    lock: str = ""  # single-instance lock file
    state_file: str = ""  # rewritten every pass, read by --status
    prometheus_file: str = ""  # node_exporter textfile, "" for none
    services: Tuple[VirtualService, ...] = ()
    format: ConfigFormat = ConfigFormat.MONITOR_RS
    syslog: str = ""  # a syslog facility (local0, daemon, ...): log lines go to syslog too ("" none)
    autoreload: bool = False  # re-read the config when its content changes
    callback: Tuple[str, ...] = ()  # run with the config's path when autoreload finds it changed
    cleanstop: bool = False  # at stop, remove the virtual services the monitor manages (ldirectord's default)
    maintenancedir: str = ""  # a file named IP or IP:PORT here holds that real server out
    smtp: str = ""  # the mail relay, host[:port], for emailalert ("" : localhost:25)
    emailalertfrom: str = ""  # the From of alert mails ("": root@ this host's name)
    table_source: str = "auto"  # where a pass reads the IPVS table: auto | proc | ipvsadm (TableSource)
    listen: str = ""  # the status endpoint (GET /metrics, GET /status), host:port; "" off


class _Section:
    """Reads typed values out of one section and names file, section and key on error."""

    def __init__(self, path: str, name: str, values: Mapping[str, str],
                 own: Optional[Mapping[str, str]] = None, defaults: Optional[Mapping[str, str]] = None):
        self.path, self.name, self.values = path, name, dict(values)
        # a [virtual] section with [monitor]'s keys merged in: what it says itself, what [monitor] says
        self.own, self.defaults = own, dict(defaults or {})

    def fail(self, key: str, reason: str) -> ConfigError:
        value = self.values.get(key, "")
        return ConfigError(f"{self.path}: [{self.name}] {key} = {value!r}: {reason}")

    def has(self, key: str) -> bool:
        return self.values.get(key, "").strip() != ""

    def text(self, key: str, default: str = "") -> str:
        return self.values.get(key, default).strip() if self.has(key) else default

    def number(self, key: str, default: float, low: float, high: float) -> float:
        if not self.has(key):
            return default
        try:
            value = float(self.values[key])
        except ValueError:
            raise self.fail(key, "not a number") from None
        if not (low <= value <= high) or math.isnan(value):
            raise self.fail(key, f"must be between {low:g} and {high:g}")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        if not self.has(key):
            return default
        text = self.values[key].strip()
        if not re.fullmatch(r"[0-9]+", text):
            raise self.fail(key, "not a whole number")
        if len(text.lstrip("0")) > len(str(high)):  # before int(): Python refuses 4300+ digits
            raise self.fail(key, f"must be between {low} and {high}")
        value = int(text)
        if not (low <= value <= high):
            raise self.fail(key, f"must be between {low} and {high}")
        return value

    def port(self, key: str, default: Optional[int]) -> Optional[int]:
        if not self.has(key):
            return default
        return self.integer(key, 0, 1, 65535)

    def boolean(self, key: str, default: bool) -> bool:
        if not self.has(key):
            return default
        word = self.values[key].strip().lower()
        if word in ("yes", "true", "on", "1"):
            return True
        if word in ("no", "false", "off", "0"):
            return False
        raise self.fail(key, "must be yes or no")

    def choice(self, key: str, default: str, choices: Mapping[str, str]) -> str:
        if not self.has(key):
            return default
        word = self.values[key].strip().lower()
        if word not in choices:
            raise self.fail(key, "must be one of " + ", ".join(sorted(choices)))
        return choices[word]

    def address(self, key: str) -> IPAddress:
        try:
            return parse_ip(self.values[key].strip().strip("[]"))
        except ValueError:
            raise self.fail(key, "not an IPv4 or IPv6 address") from None


def parse_ip(text: str) -> IPAddress:
    """An IPv4 or IPv6 address as ipvsadm takes it: no IPv6 scope id (``%eth0``)."""
    if "%" in text:
        raise ValueError(f"{text!r}: ipvsadm takes no IPv6 scope id")
    return ipaddress.ip_address(text)


def _is_ip(text: str) -> bool:
    try:
        parse_ip(text)
    except ValueError:
        return False
    return True


def parse_endpoint(text: str, default_port: Optional[int], lowest_port: int = 1) -> Endpoint:
    """``1.2.3.4``, ``1.2.3.4:80``, ``[::1]``, ``[::1]:80`` or a bare ``::1`` (not ``::1:80``: ambiguous)."""
    text = text.strip()
    match = re.fullmatch(r"\[([^\]]+)\](?::([0-9]+))?", text)
    if match:
        host, port = match.group(1), match.group(2)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
        head, _, last = text.rpartition(":")
        if head and re.fullmatch(r"[0-9]{1,5}", last) and _is_ip(head):
            # ``::1:8080`` is an address (::1:8080) to ipaddress, but surely meant ::1 port 8080
            raise ValueError(f"{text!r} is ambiguous: write [{head}]:{last} for a port "
                             f"(or [{text}] for the address)")
    ip = parse_ip(host)  # ValueError names the bad address
    if port is None:
        if default_port is None:
            raise ValueError(f"{text!r} has no port")
        return Endpoint(ip, default_port)
    if not re.fullmatch(r"[0-9]{1,5}", port) or not lowest_port <= int(port) <= 65535:
        raise ValueError(f"port of {text!r} out of range {lowest_port}-65535")
    return Endpoint(ip, int(port))


def parse_expect(text: str) -> Tuple[Tuple[int, int], ...]:
    """``200-399``, ``200,301-302`` or ``200 204``: accepted HTTP status codes."""
    ranges = []
    for part in re.split(r"[,\s]+", text.strip()):
        match = re.fullmatch(r"([0-9]{3})(?:-([0-9]{3}))?", part)
        if not match:
            raise ValueError(part)
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if not 100 <= low <= high <= 599:
            raise ValueError(part)
        ranges.append((low, high))
    return tuple(ranges)


PRINTABLE_ASCII = "".join(map(chr, range(0x21, 0x7F)))


def encode_request(path: str) -> str:
    """The request path as it goes on the wire: non-ASCII percent-encoded as UTF-8; ASCII,
    ``%XX`` escapes and reserved characters kept exactly as written."""
    return urllib.parse.quote(path, safe=PRINTABLE_ASCII)


def encode_host(host: str) -> str:
    """The host as it goes on the wire (Host header, TLS server name): ASCII, non-ASCII labels
    IDNA-encoded (``bücher.example`` -> ``xn--bcher-kva.example``).  ValueError says which
    label cannot be (empty, or over the 63 characters of a DNS label once encoded)."""
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        pass
    labels = encodings.idna.dots.split(host)
    if len(labels) > 1 and not labels[-1]:
        labels.pop()  # one trailing dot: a fully qualified name
    for label in labels:
        if not label:
            raise ValueError("has an empty label (a dot first, or two in a row)")
        try:
            encodings.idna.ToASCII(label)
        except UnicodeError as exc:
            if "too long" not in str(exc):
                raise ValueError(f"label {label!r} cannot be IDNA-encoded: {exc}") from None
            shown = label if len(label) <= 20 else label[:16] + "..."
            raise ValueError(f"label {shown!r} is over 63 characters once encoded: "
                             "a DNS label has 63 at most") from None
    raise ValueError("cannot be IDNA-encoded")


def _family_clash(vip: Optional[IPAddress], forward: str, ip: IPAddress) -> str:
    """Why IPVS would refuse this server in this service, or "": only tunnel servers may mix families."""
    if vip is None or forward == "-i" or ip.version == vip.version:
        return ""
    return f"is IPv{ip.version} and vip IPv{vip.version}: only type = i (tunnel) mixes families"


# What each check kind reads from its section (request, receive, ...): one small
# function per kind, so that no kind needs to know about another.


def _http_keys(sec: _Section) -> dict:
    """check = http|https: request (a path), host, expect, receive."""
    try:
        expect = parse_expect(sec.text("expect", "200-399"))
    except ValueError as exc:
        raise sec.fail("expect", f"bad status or range {exc}; e.g. 200-399 or 200,301") from None
    request = sec.text("request", "/")
    if any(c in request for c in "\r\n ") or not request.isprintable():
        raise sec.fail("request", "must be a path without spaces or control characters")
    request = encode_request(request)
    host = sec.text("host")
    if any(c in host for c in "\r\n ") or not host.isprintable():
        raise sec.fail("host", "must be a host name without spaces or control characters")
    try:
        host = encode_host(host)
    except ValueError as exc:
        raise sec.fail("host", str(exc)) from None
    return dict(request=request if request.startswith("/") else "/" + request, receive=sec.text("receive"),
                expect=expect, host=host)


TCP_ESCAPE = re.compile(r"(\\(?:x[0-9A-Fa-f]{2}|[rnt\\]))")  # \r \n \t \\ \xNN, the escapes of a tcp request
TCP_ESCAPES = {"r": b"\r", "n": b"\n", "t": b"\t", "\\": b"\\"}


def decode_request(text: str) -> bytes:
    """A tcp `request` as sent: UTF-8, with the escapes \\r \\n \\t \\\\ and \\xNN (any byte).
    ValueError names the first bad escape or control character."""
    out = bytearray()
    for index, part in enumerate(TCP_ESCAPE.split(text)):
        if index % 2:
            out += bytes([int(part[2:], 16)]) if part[1] == "x" else TCP_ESCAPES[part[1]]
            continue
        if "\\" in part:
            at = part.index("\\")
            bad = part[at:at + (4 if part[at + 1:at + 2] == "x" else 2)]
            raise ValueError(f"bad escape {bad}: the escapes are \\r \\n \\t \\\\ and \\xNN")
        if CONTROL.search(part):
            raise ValueError("control character (a line break, ...) written as it is: "
                             "write it as an escape (\\r, \\n, \\t, \\xNN)")
        out += part.encode("utf-8")
    return bytes(out)


def escape_request(sent: str) -> str:
    """A tcp request as it could be written back (its bytes as latin-1 characters): printable
    ASCII as it is, the rest as escapes; so --check-config shows exactly what is sent."""
    named = {"\r": "\\r", "\n": "\\n", "\t": "\\t", "\\": "\\\\", "'": "\\x27"}
    return "".join(named.get(c) or (c if " " <= c <= "~" else f"\\x{ord(c):02x}") for c in sent)


def _check_text(sec: _Section, key: str, kind: CheckKind) -> Tuple[str, _Section]:
    """request or receive of a service whose check is not http, and the section it comes from:
    its own section, or [monitor] when [monitor] says that same check itself.  In a [monitor] of
    another check they are that check's (http's: a path, a body text): never sent to, nor
    expected from, this service.  The http default request "/" is never another kind's."""
    if sec.own is None or key in sec.own:
        return sec.text(key), sec
    monitor = _Section(sec.path, "monitor", sec.defaults)
    if monitor.text("check", CheckKind.HTTP.value).lower() != kind.value:
        return "", sec
    return monitor.text(key), monitor


def _tcp_keys(sec: _Section) -> dict:
    """check = tcp: a connect; with `request` (bytes sent, escapes allowed) and/or `receive` (text
    the answer must contain), a banner or line protocol (ldirectord's simpletcp).  `request` is
    kept as written (checked here: a bad escape is refused at start), and sent decoded."""
    request, where = _check_text(sec, "request", CheckKind.TCP)
    try:
        decode_request(request)
    except ValueError as exc:
        raise where.fail("request", str(exc)) from None
    receive, where = _check_text(sec, "receive", CheckKind.TCP)
    if CONTROL.search(receive):
        raise where.fail("receive", "control character (a line break, ...): receive is plain text")
    return dict(request=request, receive=receive)


DNS_TYPES = {"A": 1, "AAAA": 28}  # what check = dns asks for, by its record type number
DNS_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")  # host names, and _service labels


def dns_name(text: str) -> str:
    """A name to look up as it goes on the wire: non-ASCII labels IDNA-encoded, no trailing dot
    (it is asked as it is: no search domains).  ValueError says why it is not a name."""
    if not text.isprintable() or any(c.isspace() for c in text):
        raise ValueError("must be a name without spaces or control characters")
    if _is_ip(text.strip("[]")):
        raise ValueError("is an address: check = dns looks up a name (its A or AAAA records)")
    name = encode_host(text)  # ValueError names the label
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    for label in labels:
        if not DNS_LABEL.fullmatch(label):
            raise ValueError(f"label {label!r} is not a host name label (letters, digits, - and _)")
    if sum(len(label) + 1 for label in labels) + 1 > 255:
        raise ValueError("is over the 255 bytes of a DNS name")
    return ".".join(labels)


def _dns_keys(sec: _Section) -> dict:
    """check = dns: request = NAME [A|AAAA], receive = an address the answer must hold.

    The type is A unless the request names it or receive is an IPv6 address (then AAAA)."""
    request, where = _check_text(sec, "request", CheckKind.DNS)
    if not request:
        raise where.fail("request", "required with check = dns: the name to look up, "
                                    "e.g. www.example.org (A records) or www.example.org AAAA")
    words = request.split()
    if len(words) > 2 or (len(words) == 2 and words[1].upper() not in DNS_TYPES):
        raise where.fail("request", "must be a name, then A or AAAA if you like: e.g. www.example.org AAAA")
    try:
        name = dns_name(words[0])
    except ValueError as exc:
        raise where.fail("request", str(exc)) from None
    receive, where = _check_text(sec, "receive", CheckKind.DNS)
    want = None
    if receive:
        try:
            want = parse_ip(receive.strip("[]"))
        except ValueError:
            raise where.fail("receive", "must be an IPv4 or IPv6 address with check = dns "
                                        "(one the answer must hold)") from None
    qtype = words[1].upper() if len(words) == 2 else ("AAAA" if want is not None and want.version == 6 else "A")
    if want is not None and want.version != (6 if qtype == "AAAA" else 4):
        raise where.fail("receive", f"is an IPv{want.version} address: an {qtype} record never holds it")
    return dict(request=f"{name} {qtype}", receive=str(want) if want is not None else "")


def which(name: str, path: Optional[str] = None) -> Optional[str]:
    """shutil.which on POSIX: the first runnable file `name` in `path` (default $PATH), or
    `name` itself when it holds a slash and is runnable; None when none is."""
    def runnable(candidate: str) -> bool:
        return os.path.exists(candidate) and os.access(candidate, os.X_OK) and not os.path.isdir(candidate)

    if os.path.dirname(name):
        return name if runnable(name) else None
    if path is None:
        path = os.environ.get("PATH", None)
        if path is None:
            path = os.confstr("CS_PATH") or os.defpath
    for folder in dict.fromkeys(path.split(os.pathsep)) if path else ():
        candidate = os.path.join(folder, name)
        if runnable(candidate):
            return candidate
    return None


def _external_keys(sec: _Section) -> dict:
    """check = external: checkcommand (a program and its own fixed words, split as a shell
    would but run without one), dynamic_weight.  The program is found once, here: a bare
    name through PATH, a path as given (absolute: the folder the monitor runs in is not
    the operator's); as root it must be safe to run (unsafe_program), as on_change."""
    if not sec.has("checkcommand"):
        raise sec.fail("checkcommand", "required with check = external: the program to run")
    try:
        words = shlex.split(sec.text("checkcommand"))
    except ValueError as exc:
        raise sec.fail("checkcommand", f"cannot split into a command: {exc}") from None
    if not words or not words[0]:
        raise sec.fail("checkcommand", "no program named")
    if any(CONTROL.search(word) for word in words):
        raise sec.fail("checkcommand", "control character (NUL, escape, ...) in the command")
    program = words[0]
    if "/" in program and not program.startswith("/"):
        raise sec.fail("checkcommand", "a relative path: give an absolute path, or a program name found in PATH")
    found = which(program)
    if not found or not found.startswith("/"):
        missing = "not found in PATH" if "/" not in program else (
            "not an executable file" if os.path.exists(program) else "not found")
        raise sec.fail("checkcommand", f"{program}: {missing}")
    why = unsafe_program(found)
    if why:
        raise sec.fail("checkcommand", why)
    return dict(request="", receive="", checkcommand=(found, *words[1:]),
                dynamic_weight=sec.boolean("dynamic_weight", False))


def _ping_keys(sec: _Section) -> dict:
    """check = ping: an ICMP echo to the real server's address (no port, no request).  Refused here,
    at start, when this host opens no ICMP socket for a family of the real servers."""
    for version in sorted({parse_endpoint(addr, 0).ip.version for addr in sec.text("rs").split()}):
        why = icmp_unusable(version)
        if why:
            raise sec.fail("check", f"cannot send an ICMP echo over IPv{version} here: {why}")
    return dict(request="", receive="")


def _no_check_keys(sec: _Section) -> dict:
    """check = on | off (ldirectord's checktype=on/off): no traffic, so no request and no receive."""
    return dict(request="", receive="")


CHECK_KEYS = {CheckKind.HTTP: _http_keys, CheckKind.HTTPS: _http_keys, CheckKind.TCP: _tcp_keys,
              CheckKind.PING: _ping_keys, CheckKind.DNS: _dns_keys,
              CheckKind.EXTERNAL: _external_keys, CheckKind.ON: _no_check_keys, CheckKind.OFF: _no_check_keys}
PER_REAL_CHECKS = (CheckKind.HTTP, CheckKind.HTTPS, CheckKind.TCP, CheckKind.DNS)  # what sends a request


def _command(sec: _Section, key: str) -> Tuple[str, ...]:
    """A program and its words (on_change, fallbackcommand, callback), split as a shell would but
    run without one; as root the program must be safe to run (unsafe_program)."""
    try:
        words = tuple(shlex.split(sec.text(key)))
    except ValueError as exc:
        raise sec.fail(key, f"cannot split into a command: {exc}") from None
    if any(CONTROL.search(word) for word in words):
        raise sec.fail(key, "control character (NUL, escape, ...) in the command")
    if words:
        why = unsafe_program(words[0])
        if why:
            raise sec.fail(key, why)
    return words


def _regex(sec: _Section, key: str, text: str) -> None:
    """A receive read as a regular expression: compiled once here, so a bad one fails at start."""
    try:
        re.compile(text)
    except re.error as exc:
        raise sec.fail(key, f"not a regular expression Python reads: {exc}") from None


def parse_email_status(text: str) -> Tuple[str, ...]:
    """ldirectord's emailalertstatus: comma separated all|none|starting|running|stopping|reloading,
    none alone; as one canonical tuple (("all",), ("none",) or the words in EMAIL_STATUSES order).
    ValueError says which word is wrong."""
    words = [word for word in re.split(r"\s*,\s*|\s+", text.strip()) if word]
    for word in words:
        if word not in EMAIL_STATUSES:
            raise ValueError(f"{word!r} is not one of " + ", ".join(EMAIL_STATUSES))
    if "none" in words:
        if len(set(words)) > 1:
            raise ValueError("none goes alone")
        return ("none",)
    if "all" in words or set(words) >= set(EMAIL_STATUSES[2:]):
        return ("all",)
    return tuple(word for word in EMAIL_STATUSES if word in words)


def _service_extras(sec: _Section, protocol: str, family: int, check: CheckKind, settings: dict) -> dict:
    """The keys issue 13 added to a virtual service: the service itself (scheduler, persistence,
    one-packet scheduling), HEAD and regex receive, its own timeout and interval, fallbackcommand
    and mail alerts."""
    receive_regex = sec.boolean("receive_regex", False)
    if receive_regex and settings.get("receive"):
        _regex(sec, "receive", settings["receive"])
    httpmethod = sec.choice("httpmethod", "GET", {"get": "GET", "head": "HEAD"})
    if httpmethod == "HEAD" and check in (CheckKind.HTTP, CheckKind.HTTPS) and settings.get("receive"):
        raise sec.fail("httpmethod", "HEAD gets no body: receive could never match (use GET, or no receive)")
    scheduler = sec.text("scheduler")
    if scheduler and not re.fullmatch(r"[a-z]+", scheduler):
        raise sec.fail("scheduler", "an IPVS scheduler name is lowercase letters: rr, wrr, lc, wlc, sh, ...")
    persistent = sec.integer("persistent", 0, 1, MAX_PERSISTENT) if sec.has("persistent") else None
    netmask = sec.text("netmask")
    for key in ("persistent", "netmask", "ops"):
        if sec.has(key) and not scheduler:
            raise sec.fail(key, "goes with scheduler: the monitor sets it when it creates or corrects "
                                "the virtual service, which it does only when scheduler is set")
    if netmask:
        if persistent is None:
            raise sec.fail("netmask", "the granularity of persistence: it goes with persistent")
        if family == 6 and not (re.fullmatch(r"[0-9]{1,3}", netmask) and 1 <= int(netmask) <= 128):
            raise sec.fail("netmask", "an IPv6 service takes a prefix length, 1 to 128")
        if family == 4:
            try:
                # a netmask, not a hostmask (0.0.0.255): ipvsadm would take that one literally
                if not (re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+", netmask) and ipaddress.IPv4Network(
                        f"0.0.0.0/{netmask}").netmask == ipaddress.IPv4Address(netmask)):
                    raise ValueError(netmask)
            except ValueError:
                raise sec.fail("netmask", "an IPv4 service takes a netmask, e.g. 255.255.255.0") from None
    keepalive = sec.integer("keepalive", 0, 0, KEEPALIVE_MAX)
    keepalive = 0 if keepalive == 1 else keepalive  # one check a connection: as without
    if keepalive and check != CheckKind.HTTP:
        if sec.own is not None and sec.own.get("keepalive", "").strip():
            raise sec.fail("keepalive", "for check = http only (https and the other kinds make a connection a check)")
        keepalive = 0  # [monitor]'s default, for the http services among others
    ops = sec.boolean("ops", False)
    if ops and protocol != "udp":
        raise sec.fail("ops", "one-packet scheduling is for UDP services only")
    emailalert = tuple(word for word in re.split(r"[,\s]+", sec.text("emailalert")) if word)
    if any(CONTROL.search(word) for word in emailalert):
        raise sec.fail("emailalert", "control character in an address")
    try:
        status = parse_email_status(sec.text("emailalertstatus", "all"))
    except ValueError as exc:
        raise sec.fail("emailalertstatus", str(exc)) from None
    return dict(
        receive_regex=receive_regex,
        httpmethod=httpmethod,
        timeout=sec.number("timeout", 0.0, 0.01, 3600.0) if sec.has("timeout") else None,
        interval=sec.number("interval", 0.0, 0.1, 86400.0) if sec.has("interval") else None,
        scheduler=scheduler,
        persistent=persistent,
        netmask=netmask,
        ops=ops,
        fallbackcommand=_command(sec, "fallbackcommand"),
        emailalert=emailalert,
        emailalertfreq=sec.number("emailalertfreq", 0.0, 0.0, 31536000.0),
        emailalertstatus=status,
        slowstart=sec.number("slowstart", 0.0, 0.0, 86400.0),
        fastinter=sec.number("fastinter", 0.0, 0.1, 86400.0) if sec.has("fastinter") else None,
        downinter=sec.number("downinter", 0.0, 0.1, 86400.0) if sec.has("downinter") else None,
        drain_timeout=sec.number("drain_timeout", 0.0, 0.0, 31536000.0) if sec.has("drain_timeout") else None,
        keepalive=keepalive,
    )


def _per_real(sec: _Section, check: CheckKind, servers: list, written: list) -> list:
    """request@RIP:PORT / receive@RIP:PORT: one real server's own request and receive (the server as
    written in rs), checked as the service's own would be (CHECK_KEYS of its kind)."""
    keys = [key for key in sec.values if PER_REAL.fullmatch(key)]
    if not keys:
        return servers
    by_name = {text.lower(): i for i, text in enumerate(written)}
    own: Dict[int, dict] = {}
    for key in keys:
        what, name = PER_REAL.fullmatch(key).groups()
        if name.lower() not in by_name:
            raise sec.fail(key, "names no real server of this virtual service (write it as in rs)")
        if check not in PER_REAL_CHECKS:
            raise sec.fail(key, f"check = {check.value} sends no request and reads no answer")
        own.setdefault(by_name[name.lower()], {})[what] = key
    servers = list(servers)
    for index, keys_of in sorted(own.items()):
        values = dict(sec.values)
        for what, key in keys_of.items():
            values[what] = sec.values[key]
        mine = _copy_section(sec, values, {what: key for what, key in keys_of.items()})
        settings = CHECK_KEYS[check](mine)
        if sec.boolean("receive_regex", False) and "receive" in keys_of and settings["receive"]:
            _regex(mine, "receive", settings["receive"])
        servers[index] = dataclasses.replace(servers[index], **{what: settings[what] for what in keys_of})
    return servers


def _copy_section(sec: _Section, values: Mapping[str, str], renamed: Mapping[str, str]) -> _Section:
    """`sec` with other values, whose faults are named as the keys in `renamed` (request -> request@...)."""
    other = _Section.__new__(type(sec))
    other.__dict__.update(sec.__dict__)
    other.values = dict(values)
    other.own = dict(values)
    parent = sec.fail

    def fail(key: str, reason: str) -> ConfigError:
        if key in renamed:
            return parent(renamed[key], reason)
        return parent(key, reason)
    other.fail = fail
    return other


def _load_service(path: str, sec: _Section, name: str, own: _Section) -> VirtualService:
    protocol = sec.choice("protocol", "tcp", {p: p for p in PROTOCOL_FLAGS})
    if protocol == "fwm":
        if not sec.has("fwmark"):
            raise sec.fail("fwmark", "required with protocol = fwm")
        fwmark = sec.integer("fwmark", 0, 1, 4294967295)
        vip, vport = None, 0
        rport = sec.port("rport", None)
        if rport is None:
            raise sec.fail("rport", "required with protocol = fwm (the port to probe)")
    else:
        if not sec.has("vip"):
            raise sec.fail("vip", "required: the virtual IP")
        vip = sec.address("vip")
        if not sec.has("vport"):
            raise sec.fail("vport", "required: the virtual port")
        vport = sec.port("vport", None)
        fwmark = 0
        rport = sec.port("rport", vport)
    forward = sec.choice("type", "-g", FORWARD_FLAGS)

    addresses = sec.text("rs").split()
    if not addresses:
        raise sec.fail("rs", "no real server listed")
    weights = sec.text("rw").split() if sec.has("rw") else ["1"] * len(addresses)
    if len(weights) != len(addresses):
        raise sec.fail("rw", f"{len(weights)} weight(s) for {len(addresses)} real server(s) in rs")
    servers, seen = [], set()
    for index, (addr, weight) in enumerate(zip(addresses, weights)):
        try:
            ep = parse_endpoint(addr, rport)
        except ValueError as exc:
            raise sec.fail("rs", f"bad real server {addr!r}: {exc}") from None
        clash = _family_clash(vip, forward, ep.ip)
        if clash:
            raise sec.fail("rs", f"real server {addr} {clash}")
        if not re.fullmatch(r"0*[0-9]{1,10}", weight) or int(weight) > MAX_WEIGHT:
            raise sec.fail("rw", f"weight {weight!r} must be a whole number 0..{MAX_WEIGHT}")
        stored = stored_endpoint(protocol, forward, vport, ep)
        if stored in seen:
            raise sec.fail("rs", f"real server {addr} is listed twice (IPVS stores it as {stored})")
        seen.add(stored)
        servers.append(RealServer(ep.ip, ep.port, int(weight), index))

    fallback = None
    if sec.has("fallback"):
        try:
            fallback = parse_endpoint(sec.text("fallback"), rport)
        except ValueError as exc:
            raise sec.fail("fallback", str(exc)) from None
        if stored_endpoint(protocol, forward, vport, fallback) in seen:
            raise sec.fail("fallback", "is also a real server of this virtual service")
        clash = _family_clash(vip, forward, fallback.ip)
        if clash:
            raise sec.fail("fallback", clash)
    if protocol == "fwm" and forward != "-i":  # one family per mark service, as IPVS keeps it
        first = servers[0]
        for key, other in [("rs", rs.endpoint) for rs in servers] + [("fallback", fallback)]:
            if other is not None and other.ip.version != first.ip.version:
                raise sec.fail(key, f"{other} is IPv{other.ip.version} and real server {first} "
                                    f"IPv{first.ip.version}: a firewall-mark service has one family; "
                                    "only type = i (tunnel) mixes families")
    check = CheckKind(sec.choice("check", "http", {c: c for c in CHECKS}))
    if protocol == "udp" and not own.has("check"):
        raise sec.fail("check", "a UDP virtual service needs its own check (a TCP check would probe "
                                "another service): check = " + ", ".join(k.value for k in UDP_CHECKS))
    settings = CHECK_KEYS[check](sec)
    on_change = _command(sec, "on_change")
    family = vip.version if vip is not None else (
        6 if all(ip.version == 6 for ip in [rs.ip for rs in servers] + ([fallback.ip] if fallback else [])) else 4)
    extras = _service_extras(sec, protocol, family, check, settings)
    servers = _per_real(sec, check, servers, addresses)
    return VirtualService(
        name=name,
        protocol=protocol,
        vip=vip,
        vport=vport,
        fwmark=fwmark,
        servers=tuple(servers),
        forward=forward,
        check=check.value,
        checkport=sec.port("checkport", None),
        **settings,
        fall=sec.integer("fall", 1, 1, 1000),
        rise=sec.integer("rise", 1, 1, 1000),
        quiescent=sec.boolean("quiescent", False),
        fallback=fallback,
        depool_threshold=sec.number("depool_threshold", 0.0, 0.0, 1.0),
        on_change=on_change,
        **extras,
    )


CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # never in a program name or argument from the config


def unsafe_path(path: str) -> str:
    """Why root must not read or run `path`, or "": as sshd's StrictModes and cron.

    The file, and every folder on its way from /, must be owned by root (or by
    us) and writable by no one else, or another user could change what root
    reads or runs.  A folder with the sticky bit (/tmp) may be world-writable:
    there others cannot replace what they do not own.  Symlinks are followed
    one by one, and the folder each one lives in is checked too.  A name that
    does not exist is checked as the folder that would hold it: one others may
    write to (sticky or not) lets them create it later."""
    trusted = {0, os.geteuid()}
    current, hops = "/", 0
    try:
        full = path if path.startswith("/") else os.path.join(os.getcwd(), path)  # not abspath: "link/.."
        pending = [part for part in full.split("/") if part]
        why = _unsafe_entry("/", os.lstat("/"), trusted, last=not pending)
        while pending and not why:
            name = pending.pop(0)
            if name == ".":
                continue
            if name == "..":
                current = os.path.dirname(current)  # already checked on the way down
                continue
            entry = os.path.join(current, name)
            try:
                st = os.lstat(entry)
            except FileNotFoundError:
                return _unsafe_entry(current, os.lstat(current), trusted, last=True)
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > 40:
                    return f"{path}: too many levels of symbolic links"
                if st.st_uid not in trusted:  # in a sticky folder its owner may point it elsewhere
                    return f"symlink {entry} is owned by uid {st.st_uid}, not by root"
                target = os.readlink(entry)
                if target.startswith("/"):
                    current = "/"
                pending[:0] = [part for part in target.split("/") if part]
                continue
            why = _unsafe_entry(entry, st, trusted, last=not pending)
            current = entry
    except OSError as exc:  # what cannot be checked is not trusted
        return f"cannot check {path}: {exc.strerror or exc}"
    return why


def _unsafe_entry(entry: str, st: os.stat_result, trusted: set, last: bool) -> str:
    """Why this one file or folder on a path is not safe for root, or ""."""
    if st.st_uid not in trusted:
        return f"{entry} is owned by uid {st.st_uid}, not by root"
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o022:
        return ""
    if stat.S_ISDIR(st.st_mode) and not last and mode & stat.S_ISVTX:
        return ""  # sticky: others may add names here, not replace ours
    who = {0o020: "its group", 0o002: "others", 0o022: "its group and others"}[mode & 0o022]
    return f"{entry} is writable by {who} (mode {mode:04o})"


def unsafe_program(name: str) -> str:
    """Why root must not run the program `name` (a path, or a name found through PATH), or "".

    Only when we are root.  A name not found through PATH is left to the "not found" of
    its run; a path is checked even when nothing (runnable) is there yet."""
    if os.geteuid() != 0:
        return ""
    found = which(name) or (name if "/" in name else None)
    why = unsafe_path(found) if found else ""
    return f"{name}: not run as root, others can change it: {why}" if why else ""


RUN_DIR = "/run/monitor_rs"  # what the systemd unit's RuntimeDirectory=monitor_rs creates


def private_run_dir() -> str:
    """A non-root monitor's own folder for its default lock and state: never a shared name."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        return os.path.join(runtime, "monitor_rs")
    return f"/tmp/monitor_rs-{os.geteuid()}"


def run_dirs() -> List[str]:
    """The folders of default locks and state files, in the order --status looks: a root
    monitor's first, whoever asks, then our own."""
    return [RUN_DIR] if os.geteuid() == 0 else [RUN_DIR, private_run_dir()]


def config_digest(config_path: str) -> str:
    """What names a config's default lock and state file: its real path, hashed."""
    import hashlib
    return hashlib.sha1(os.path.realpath(config_path).encode()).hexdigest()[:10]


def default_run_path(config_path: str, suffix: str) -> str:
    """One lock and one state file per config, in RUN_DIR; a non-root monitor that
    cannot write there uses its own private folder."""
    digest = config_digest(config_path)
    folder = RUN_DIR
    if os.geteuid() != 0 and not os.access(RUN_DIR, os.W_OK):
        folder = private_run_dir()
    return os.path.join(folder, f"{digest}.{suffix}")


def make_run_dir(folder: str, private: Optional[bool] = None) -> str:
    """Create (when absent) and check a folder of default locks and state files; "" when fit,
    else why not, in one line.

    RUN_DIR: a real folder (no symlink), owned by root (or by us), that no one else may
    write; created 0755.  A private folder: a real folder of ours, mode 0700, created so;
    an existing one that is not is never trusted (in /tmp anyone may have made it).  `private`
    says which for another folder (the drains' default, DRAIN_DIR: as RUN_DIR)."""
    private = folder != RUN_DIR if private is None else private
    mode = 0o700 if private else 0o755
    try:
        os.mkdir(folder, mode)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, mode)  # the mode asked for, whatever the umask
        finally:
            os.close(fd)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot create {folder}: {exc.strerror or exc}"
    try:
        st = os.lstat(folder)
    except OSError as exc:
        return f"cannot use {folder}: {exc.strerror or exc}"
    euid, have = os.geteuid(), stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return f"{folder} is a symlink, not a folder: refusing it"
    if not stat.S_ISDIR(st.st_mode):
        return f"{folder} is not a folder: refusing it"
    if private and (st.st_uid != euid or have != 0o700):
        return (f"{folder} is not a private folder of uid {euid} (owner uid {st.st_uid}, mode {have:04o}): "
                "refusing it")
    if not private and st.st_uid not in (0, euid):
        return f"{folder} is owned by uid {st.st_uid}, not by root: refusing it"
    if not private and have & 0o022:
        return f"{folder} is writable by others (mode {have:04o}): refusing it"
    return ""


def _section_hint(name: str) -> str:
    """The known section a mistyped one most likely meant, or ""."""
    import difflib  # only for a config with a mistake in it
    if difflib.get_close_matches(name.lower(), ["monitor"], 1, 0.6):
        return "monitor"
    word, _, rest = name.partition(" ")
    if rest.strip() and difflib.get_close_matches(word.lower(), ["virtual"], 1, 0.6):
        return f"virtual {rest.strip()}"
    return ""


def _unknown_key(sec: _Section, key: str, known) -> ConfigError:
    import difflib  # only for a config with a mistake in it
    close = difflib.get_close_matches(key, sorted(known), 1, 0.75)
    if close:
        return sec.fail(key, f"unknown key (did you mean {close[0]}?)")
    if sec.name != "monitor" and key in MONITOR_KEYS:
        return sec.fail(key, "unknown key here: it belongs in [monitor]")
    return sec.fail(key, "unknown key")


def read_config_text(path: str) -> str:
    """The whole config file, read once.  As root, only a file no one else can change (unsafe_path),
    checked once open: what is checked is what is read."""
    try:
        with open(path, encoding="utf-8") as handle:
            if os.geteuid() == 0:
                why = unsafe_path(path)
                st, held = os.stat(path), os.fstat(handle.fileno())
                if not why and (st.st_dev, st.st_ino) != (held.st_dev, held.st_ino):
                    why = "it changed while it was opened"
                if why:
                    raise ConfigError(f"{path}: not read as root, others can change it: {why}")
            return handle.read()
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None


def detect_format(text: str) -> ConfigFormat:
    """Which front end reads this text: a section header ``[...]`` as the first meaningful line is
    monitorRS.conf; an ldirectord directive at column 0 (``key=value``, ``virtual=...``, a bare
    ``supervised``) is ldirectord.cf.  Anything else is left to monitorRS.conf's reader, whose error
    says what is wrong."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if re.match(r"[A-Za-z][A-Za-z0-9_]*\s*=", line) or re.fullmatch(r"supervised\s*", line):
            return ConfigFormat.LDIRECTORD
        return ConfigFormat.MONITOR_RS
    return ConfigFormat.MONITOR_RS


def load_config(path: str) -> Config:
    """Read and check a whole config, monitorRS.conf or ldirectord.cf (told apart by its content);
    raise ConfigError with one line on any fault."""
    text = read_config_text(path)
    if detect_format(text) == ConfigFormat.LDIRECTORD:
        return load_ldirectord(path, text)
    return load_ini(path, text)


class _IniParser(configparser.ConfigParser):
    """monitorRS.conf's parser: `=` or `:` between key and value, but a per-real key
    (``request@10.0.0.1:80 = ...``) keeps its colon: only `=` ends it."""

    OPTCRE = re.compile(r"(?P<option>re(?:quest|ceive)@[^\s=]+(?=\s*=)|.*?)\s*(?P<vi>=|:)\s*(?P<value>.*)$")
    # the whole bracketed line is the section's name, ``[virtual [2001:db8::5]:119]`` too (Python
    # before 3.11 stopped at the first ``]``)
    SECTCRE = re.compile(r"\[(?P<header>.+)\]\s*$")


def load_ini(path: str, text: str) -> Config:
    """monitorRS.conf: [monitor] and [virtual NAME] sections."""
    parser = _IniParser(
        interpolation=None,
        inline_comment_prefixes=(";", "#"),
        default_section="\0none",  # no magic [DEFAULT]: defaults live in [monitor]
        strict=True,
    )
    parser.optionxform = str.lower
    try:
        parser.read_string(text, source=path)
    except configparser.Error as exc:
        raise ConfigError(f"{path}: " + " ".join(str(exc).split())) from None

    for name in parser.sections():  # first: a typo'd [monitor] is named as the typo it is
        if name != "monitor" and not re.fullmatch(r"virtual\s+(\S.*)", name):
            hint = _section_hint(name)
            raise ConfigError(f"{path}: unknown section [{name}] " + (
                f"(did you mean [{hint}]?)" if hint else "(expected [monitor] or [virtual NAME])"))
    if not parser.has_section("monitor"):
        raise ConfigError(f"{path}: no [monitor] section")
    top = _Section(path, "monitor", parser["monitor"])
    for key in top.values:
        if key not in MONITOR_KEYS | SERVICE_KEYS:
            raise _unknown_key(top, key, MONITOR_KEYS | SERVICE_KEYS)
    if CONTROL.search(top.text("ipvsadm")):
        raise top.fail("ipvsadm", "control character (NUL, escape, ...) in the program name")
    settings = dict(
        interval=top.number("interval", 3.0, 0.1, 86400.0),
        timeout=top.number("timeout", 1.0, 0.01, 3600.0),
        log="" if top.text("log") in ('""', "''") else top.text("log", DEFAULT_LOG),  # "": no log file
        ipvsadm=top.text("ipvsadm", "ipvsadm"),
        ipvsadm_timeout=top.number("ipvsadm_timeout", 5.0, 0.1, 600.0),
        lock=top.text("lock") or default_run_path(path, "lock"),
        state_file=top.text("state_file") or default_run_path(path, "state.json"),
        prometheus_file=top.text("prometheus_file"),
        table_source=top.choice("table_source", "auto", TABLE_SOURCES),
        **_monitor_extras(top),
    )

    services, seen = [], {}
    for name in parser.sections():
        if name == "monitor":
            continue
        match = re.fullmatch(r"virtual\s+(\S.*)", name)
        own = dict(parser[name])
        for key in own:
            if key not in SERVICE_KEYS | SERVICE_OWN_KEYS and not PER_REAL.fullmatch(key):
                raise _unknown_key(_Section(path, name, own), key, SERVICE_KEYS | SERVICE_OWN_KEYS)
        merged = {k: v for k, v in top.values.items() if k in SERVICE_KEYS}
        merged.update(own)
        vs = _load_service(path, _Section(path, name, merged, own, top.values), match.group(1).strip(),
                           _Section(path, name, own))
        if vs.ipvs_key in seen:
            raise ConfigError(f"{path}: [{name}]: virtual service {vs.address} is already defined in [{seen[vs.ipvs_key]}]")
        seen[vs.ipvs_key] = name
        services.append(vs)
    if not services:
        raise ConfigError(f"{path}: no [virtual NAME] section: nothing to monitor")
    return Config(path=path, services=tuple(services), **settings)


def _monitor_extras(top: _Section) -> dict:
    """[monitor]'s keys of issue 13: syslog, autoreload (+ callback), cleanstop (no: leave the
    table as it is, monitorRS.conf's default), maintenancedir, and the mail relay and sender."""
    maintenancedir = top.text("maintenancedir")
    if maintenancedir and (not maintenancedir.startswith("/") or CONTROL.search(maintenancedir)):
        raise top.fail("maintenancedir", "must be an absolute path to a folder")
    smtp = top.text("smtp")
    if smtp and not re.fullmatch(r"(?:[0-9A-Za-z._+-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?", smtp):
        raise top.fail("smtp", "must be host or host:port (an IPv6 address in brackets)")
    if smtp and ":" in smtp.rsplit("]", 1)[-1] and not 1 <= int(smtp.rsplit(":", 1)[1]) <= 65535:
        raise top.fail("smtp", "port out of range 1-65535")
    sender = top.text("emailalertfrom")
    if CONTROL.search(sender):
        raise top.fail("emailalertfrom", "control character in the address")
    listen = top.text("listen")
    if listen:
        try:
            where = parse_endpoint(listen, None)
        except ValueError as exc:
            raise top.fail("listen", f"must be ADDRESS:PORT (an IPv6 address in brackets): {exc}") from None
        listen = str(where)
    return dict(
        syslog=top.choice("syslog", "", {name: name for name in SYSLOG_FACILITIES}),
        autoreload=top.boolean("autoreload", False),
        callback=_command(top, "callback"),
        cleanstop=top.boolean("cleanstop", False),
        maintenancedir=maintenancedir,
        smtp=smtp,
        emailalertfrom=sender,
        listen=listen,
    )


# ldirectord.cf, read as ldirectord 4.12's own parser reads it (read_config, add_real_server,
# parse_fallback, ld_setup; /usr/sbin/ldirectord): globals at column 0, the lines of a virtual=
# block indented (a tab or 4+ spaces), `#` ends a block line (even inside quotes), a line of
# comment only is skipped anywhere, the first other unindented line ends the block.  Defaults
# are its code's where its man page differs (said at each).  What monitor_rs cannot do as
# ldirectord does is refused at start in one line: file:line: directive: why, and what to write.

LD_SERVICES = ("dns", "ftp", "http", "https", "http_proxy", "imap", "imaps", "ldap", "ldaps", "mysql", "nntp",
               "none", "oracle", "pgsql", "pop", "pops", "radius", "simpletcp", "sip", "smtp", "submission")
LD_PORT_SERVICE = {21: "ftp", 25: "smtp", 53: "dns", 80: "http", 110: "pop", 119: "nntp", 143: "imap", 389: "ldap",
                   443: "https", 587: "submission", 636: "ldaps", 993: "imaps", 995: "pops", 1521: "oracle",
                   1812: "radius", 3128: "http_proxy", 3306: "mysql", 5060: "sip", 5432: "pgsql"}  # ld_port_to_service
LD_SERVICE_PORT = {name: port for port, name in LD_PORT_SERVICE.items()}  # ld_service_to_port
LD_CHECKTYPES = ("connect", "negotiate", "ping", "off", "on", "external", "external-perl")
LD_FORWARD = {"gate": "g", "masq": "m", "ipip": "i"}
LD_DEFAULT_LOG = "/var/log/ldirectord.log"

# service=... (checktype=negotiate) of a line or banner protocol: check = tcp, and the greeting
# ldirectord's check_* function (through its Perl module) wants, as a regular expression on what
# the server sends first.  monitor_rs reads that greeting and no more; ldirectord goes on:
LD_BANNERS = {
    "smtp": r"^2[0-9][0-9]",  # Net::SMTP: a 2xx greeting, then EHLO (or HELO) answered 2xx, then QUIT
    "submission": r"^2[0-9][0-9]",  # the same check_smtp
    "ftp": r"^2[0-9][0-9]",  # Net::FTP: a 2xx greeting; then login, get `request`, match `receive` on it
    "pop": r"(?i)^\+OK",  # Mail::POP3Client: +OK greeting (its object is made even when the connect
    # fails, so ldirectord's check passes then: monitor_rs is stricter); no login without login=
    "imap": r"(?i)^\*\s+(?:OK|PREAUTH)",  # Net::IMAP::Simple: an untagged OK or PREAUTH greeting
    "nntp": r"^2",  # check_nntp: the first 64 bytes read start with 2
}
# Services monitor_rs has no check for, and what to write instead.
LD_REFUSED_SERVICES = {
    "http_proxy": "ldirectord fetches `request` through the real server as an HTTP proxy",
    "imaps": "ldirectord reads the IMAP greeting over TLS",
    "pops": "ldirectord reads the POP3 greeting over TLS",
    "ldap": "ldirectord binds and searches `request` over LDAP",
    "ldaps": "ldirectord binds and searches `request` over LDAP",
    "mysql": "ldirectord logs in and runs the `request` query",
    "pgsql": "ldirectord logs in and runs the `request` query",
    "oracle": "ldirectord logs in and runs the `request` query",
    "radius": "ldirectord sends a RADIUS Access-Request with login, passwd and secret",
    "sip": "ldirectord sends a SIP OPTIONS request",
}


def _ld_error(path: str, line: int, said: str, reason: str) -> ConfigError:
    said = said.strip()
    if len(said) > 80:
        said = said[:77] + "..."
    return ConfigError(f"{path}:{line}: {said}: {reason}")


@dataclass
class _LdVirtual:
    """One virtual= block as read, before anything is resolved (ldirectord resolves at its end)."""

    line: int
    said: str
    family: int  # 4 (virtual=) or 6 (virtual6=)
    host: str = ""  # "" for a firewall mark
    port: str = ""
    fwmark: int = 0
    opts: Dict[str, Tuple[str, int, str]] = field(default_factory=dict)  # directive: (value, line, as written)
    reals: List[Tuple[str, int, str]] = field(default_factory=list)


def _ld_number(path: str, line: int, said: str, value: str, what: str, zero: bool = False) -> str:
    """ldirectord's `$1 =~ /(\\d+)/ && $1`: the first digits in the value, not 0."""
    match = re.search(r"[0-9]+", value)
    if not match or (int(match.group()) == 0 and not zero):
        raise _ld_error(path, line, said, f"invalid {what}")
    return match.group()


def _ld_yes_no(path: str, line: int, said: str, value: str, key: str) -> str:
    if value not in ("yes", "no"):
        raise _ld_error(path, line, said, f"{key} must be 'yes' or 'no'")
    return value


def _ld_timing(path: str, line: int, said: str, text: str, put, fail, names) -> bool:
    """The timing directives a global line and a virtual block's line share (ldirectord reads them
    in both places, naming them a little differently in its errors: `names`, key -> its words, with
    checkcount last); whether `text` was one of them."""
    for key, what in names[:-1]:
        m = re.match(key + r"\s*=\s*(.*)", text)
        if m:
            put(key, _ld_number(path, line, said, m.group(1), what))
            return True
    if re.match(r"connecttimeout\s*=", text):
        raise fail("connecttimeout directive deprecated in favour of negotiatetimeout (ldirectord refuses it too)")
    m = re.match(r"checkcount\s*=\s*(.*)", text)
    if m:
        if _ld_number(path, line, said, m.group(1), names[-1][1]) != "1":
            raise fail("checkcount (deprecated in ldirectord: ping attempts within one check) is not "
                       "supported: write failurecount=N instead")
        return True  # 1, ldirectord's default: nothing to do
    return False


def _ld_block_line(path: str, line: int, rcmd: str, v: _LdVirtual) -> None:
    """One line of a virtual= block, `rcmd` without its indent: ldirectord's chain of regexes."""
    said = rcmd

    def put(key: str, value: str) -> None:
        v.opts[key] = (value, line, said)

    def fail(reason: str) -> ConfigError:
        return _ld_error(path, line, said, reason)

    m = re.match(r"(real(6)?)\s*=\s*(.*)", rcmd)
    if m:
        if (v.family == 4) == bool(m.group(2)):
            raise fail(f"cannot specify \"{m.group(1)}\" here: please use \"real{'' if v.family == 4 else '6'}\" instead")
        v.reals.append((m.group(3), line, said))
        return
    for key in ("request", "receive", "login", "passwd", "database", "secret"):
        m = re.match(key + r'\s*=\s*"(.*)"', rcmd)
        if m:
            if not m.group(1):
                raise fail(f"no {key} string specified")
            value = m.group(1)
            put(key, value if key != "request" or value.startswith("/") else "/" + value)
            return
    m = re.match(r"checktype\s*=\s*(.*)", rcmd)
    if m:
        digits = re.search(r"[0-9]+", m.group(1))
        word = re.search(r"[\w-]+", m.group(1))
        if digits:
            put("checktype", "combined")
        elif word and word.group() in LD_CHECKTYPES:
            if word.group() == "external-perl":
                raise fail("monitor_rs does not evaluate Perl: write checktype=external (ldirectord's "
                           "external-perl scripts run as external ones: make the script executable)")
            put("checktype", word.group())
        else:
            raise fail("checktype must be connect, negotiate, on, off, ping, external, external-perl "
                       "or a positive number")
        return
    m = re.match(r'checkcommand\s*=\s*"(.*)"', rcmd) or re.match(r"checkcommand\s*=\s*(.*)", rcmd)
    if m:
        if not m.group(1):
            raise fail("invalid check command")
        put("checkcommand", m.group(1))
        return
    if _ld_timing(path, line, said, rcmd, put, fail, (("checktimeout", "check timeout"),
                  ("negotiatetimeout", "negotiate timeout"), ("failurecount", "failure count"),
                  ("checkinterval", "checkinterval"), ("checkcount", "check count"))):
        return
    m = re.match(r"checkport\s*=\s*(.*)", rcmd)
    if m:
        port = _ld_number(path, line, said, m.group(1), "port", zero=True)
        if not 0 < int(port) < 65536:
            raise fail("checkport must be in range 1..65535")
        put("checkport", port)
        return
    m = re.match(r'load\s*=\s*"(.*)"', rcmd)
    if m:
        if not re.search(r"\w", m.group(1)):
            raise fail("invalid string for load testing")
        return  # stored by ldirectord 4.12, never used
    m = re.match(r"scheduler\s*=\s*(.*)", rcmd)
    if m:
        word = re.search(r"[a-z]+", m.group(1))
        if not word:
            raise fail("invalid scheduler, should be only lowercase letters (a-z)")
        put("scheduler", word.group())
        return
    m = re.match(r"persistent\s*=\s*(.*)", rcmd)
    if m:
        put("persistent", _ld_number(path, line, said, m.group(1), "persistent timeout", zero=True))
        return
    if re.match(r"schedflags\s*=", rcmd):
        raise fail("monitor_rs does not set scheduler flags (ipvsadm -b): remove schedflags")
    m = re.match(r"netmask\s*=\s*(.*)", rcmd)
    if m:
        value = m.group(1)
        if v.family == 6 and not (re.fullmatch(r"[0-9]+", value) and 1 <= int(value) <= 128):
            raise fail("invalid netmask: a prefix length between 1 and 128 is required")
        if v.family == 4 and not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+", value):
            raise fail("invalid netmask: dotted quad notation is required")
        put("netmask", value)
        return
    m = re.match(r"protocol\s*=\s*(.*)", rcmd)
    if m:
        word = re.search(r"\w+", m.group(1))
        if not word:
            raise fail("invalid protocol")
        if not v.host and word.group() != "fwm":
            raise fail("protocol must be fwm if the virtual service is a fwmark (a number)")
        if v.host and word.group() not in ("tcp", "udp"):
            raise fail("protocol must be tcp or udp if the virtual service is an address and port")
        put("protocol", word.group())
        return
    m = re.match(r"ops\s*=\s*(.*)", rcmd)
    if m:
        put("ops", _ld_yes_no(path, line, said, m.group(1), "ops"))
        return
    m = re.match(r"service\s*=\s*(.*)", rcmd)
    if m:
        word = re.search(r"\w+", m.group(1))
        if not word or word.group() not in LD_SERVICES:
            raise fail("service must be " + ", ".join(LD_SERVICES))
        put("service", word.group())
        return
    m = re.match(r"httpmethod\s*=\s*(.*)", rcmd)
    if m:
        word = re.search(r"\w+", m.group(1))
        if not word or word.group().upper() not in ("GET", "HEAD"):
            raise fail("httpmethod must be GET or HEAD")
        put("httpmethod", word.group().upper())
        return
    m = re.match(r"virtualhost\s*=\s*(.*)", rcmd)
    if m:
        put("virtualhost", re.match(r'"?([^"]*)"?', m.group(1)).group(1).strip())
        return
    m = re.match(r"(fallback(6)?)\s*=\s*(.*)", rcmd)
    if m:
        if (v.family == 4) == bool(m.group(2)):
            raise fail(f"cannot specify \"{m.group(1)}\" here: please use \"fallback{'' if v.family == 4 else '6'}\" instead")
        _ld_parse_fallback(path, line, said, m.group(3))
        put("fallback", m.group(3))
        return
    m = re.match(r'fallbackcommand\s*=\s*"(.*)"', rcmd) or re.match(r"fallbackcommand\s*=\s*(.*)", rcmd)
    if m:
        if not m.group(1):
            raise fail("invalid fallback command")
        put("fallbackcommand", m.group(1))
        return
    m = re.match(r"quiescent\s*=\s*(.*)", rcmd)
    if m:
        put("quiescent", _ld_yes_no(path, line, said, m.group(1), "quiescent"))
        return
    if _ld_mail_line(path, line, said, rcmd, put):
        return
    if re.match(r"monitorfile\s*=", rcmd):
        raise fail("monitor_rs keeps no per-service check log: remove monitorfile (its log and --status "
                   "say what each check found)")
    m = re.match(r"cleanstop\s*=\s*(.*)", rcmd)
    if m:
        put("cleanstop", _ld_yes_no(path, line, said, m.group(1), "cleanstop"))
        return
    m = re.match(r"smtp\s*=\s*(.*)", rcmd)
    if m:
        put("smtp", _ld_smtp(path, line, said, m.group(1)))
        return
    m = re.match(r"servicename\s*=\s*(.*)", rcmd)
    if m:
        put("servicename", m.group(1).strip())
        return
    if re.match(r"comment\s*=", rcmd):
        return  # for ldirectord's mails only
    raise fail("unknown directive (ldirectord refuses it too)")


def _ld_mail_line(path: str, line: int, said: str, text: str, put) -> bool:
    """emailalert, emailalertfreq, emailalertstatus: in a block and at column 0 alike."""
    m = re.match(r"emailalert\s*=\s*(.*)", text)
    if m:
        address = re.sub(r'^"([^"]*)"$', r"\1", m.group(1))
        if not address:
            raise _ld_error(path, line, said, "no email address specified")
        put("emailalert", address)
        return True
    m = re.match(r"emailalertfreq\s*=\s*([0-9]*)", text)
    if m:
        if not m.group(1):
            raise _ld_error(path, line, said, "invalid email alert frequency")
        put("emailalertfreq", m.group(1))
        return True
    m = re.match(r"emailalertstatus\s*=\s*(.*)", text)
    if m:
        words = re.split(r"\s*,\s*", m.group(1))
        for word in words:
            if word not in EMAIL_STATUSES:
                raise _ld_error(path, line, said, f"invalid email alert status at: \"{word}\"")
        if "none" in words and len(set(words)) > 1:
            raise _ld_error(path, line, said, "invalid email alert status: none goes alone")
        put("emailalertstatus", ",".join(words))
        return True
    return False


def _ld_smtp(path: str, line: int, said: str, value: str) -> str:
    """ldirectord takes the leading host name characters of smtp= (a :port after them is dropped)."""
    host = re.match(r"[0-9A-Za-z._+-]+", value)
    if not host:
        raise _ld_error(path, line, said, "invalid SMTP server address")
    if value[host.end():].strip():
        raise _ld_error(path, line, said, f"ldirectord would use {host.group()!r} only (no port): write "
                                          f"smtp={host.group()}")
    return host.group()


def _ld_parse_fallback(path: str, line: int, said: str, text: str) -> Tuple[str, Optional[str], str]:
    """parse_fallback: ``host[:port|:service] [gate|masq|ipip]`` -> (host, port or None, forward)."""
    forward = None
    m = re.search(r"(\S+)(\s+(\S+))?\s*$", text)
    if m:
        forward, text = m.group(3), m.group(1)
    m = re.search(r"(:([0-9]+|[A-Za-z0-9-_]+))?$", text)
    port = m.group(2)
    host = text[:m.start()]
    if forward and forward not in LD_FORWARD:
        raise _ld_error(path, line, said, "forward method must be gate, masq or ipip")
    return host, port, forward or "gate"  # parse_fallback's default: gate


def _ld_global_line(path: str, line: int, data: str, g: Dict[str, Tuple[str, int, str]]) -> None:
    """One line at column 0 outside a block: ldirectord's chain of regexes for the globals."""
    said = data

    def put(key: str, value: str) -> None:
        g[key] = (value, line, said)

    def fail(reason: str) -> ConfigError:
        return _ld_error(path, line, said, reason)

    if _ld_timing(path, line, said, data, put, fail, (("checktimeout", "check timeout value"),
                  ("negotiatetimeout", "negotiate timeout value"), ("checkinterval", "check interval value"),
                  ("failurecount", "failure count value"), ("checkcount", "check count value"))):
        return
    m = re.match(r"fallback(6)?\s*=\s*(.*)", data)
    if m:
        _ld_parse_fallback(path, line, said, m.group(2))
        put("fallback6" if m.group(1) else "fallback", m.group(2))
        return
    m = re.match(r"fallbackcommand\s*=\s*(.*)", data)
    if m:
        if not m.group(1):
            raise fail("invalid fallback command")
        put("fallbackcommand", m.group(1))  # run by a shell in ldirectord: its quotes are the shell's
        return
    for key in ("autoreload", "fork", "quiescent", "readdquiescent", "cleanstop"):
        m = re.match(key + r"\s*=\s*(.*)", data)
        if m:
            put(key, _ld_yes_no(path, line, said, m.group(1), key))
            if key == "readdquiescent" and m.group(1) == "yes":
                raise fail("monitor_rs never puts back a failing server the operator removed, not even at "
                           "weight 0: remove readdquiescent=yes (readdquiescent=no is what it does)")
            return
    m = re.match(r'callback\s*=\s*"(.*)"', data)
    if m:
        put("callback", m.group(1))
        return
    m = re.match(r'logfile\s*=\s*"(.*)"', data)
    if m:
        value = m.group(1)
        if not value.startswith("/") and value not in SYSLOG_FACILITIES:
            raise fail("not a path (/...) nor a syslog facility: " + ", ".join(SYSLOG_FACILITIES))
        put("logfile", value)
        return
    if re.match(r"execute\s*=", data):
        raise fail("monitor_rs does not start other instances: run one monitor_rs per config file "
                   "(e.g. one systemd unit instance each) and remove execute")
    if re.match(r"supervised", data):
        m = re.match(r"supervised\s*=\s*(.*)", data)
        if m and m.group(1) in ("yes", "no"):
            put("supervised", m.group(1))
        elif re.fullmatch(r"supervised\s*", data):
            put("supervised", "yes")
        else:
            raise fail("supervised must be 'yes' or 'no'")
        return
    if _ld_mail_line(path, line, said, data, put):
        return
    m = re.match(r"emailalertfrom\s*=\s*(.*)", data)
    if m:
        if not m.group(1):
            raise fail("no email from address specified")
        put("emailalertfrom", m.group(1))
        return
    m = re.match(r"smtp\s*=\s*(.*)", data)
    if m:
        put("smtp", _ld_smtp(path, line, said, m.group(1)))
        return
    m = re.match(r"maintenancedir\s*=\s*(.*)", data)
    if m:
        if not m.group(1):
            raise fail("maintenance directory not specified")
        put("maintenancedir", m.group(1))
        return
    if re.match(r"timeout\s*=", data):
        raise fail("timeout directive deprecated in favour of checktimeout and negotiatetimeout "
                   "(ldirectord refuses it too)")
    raise fail("unknown directive (ldirectord refuses it too"
               + ("; an indented line belongs to a virtual= block" if data[:1].isspace() else "")
               + (", and takes logfile and callback quoted only" if re.match(r"(logfile|callback)\s*=", data) else "")
               + ")" + ("; a monitorRS.conf starts with [monitor]" if re.match(r"\w+", data) and re.match(
                   r"\w+", data).group().lower() in MONITOR_KEYS | SERVICE_KEYS else ""))


def _ld_host(name: str, family: int) -> Optional[IPAddress]:
    """ld_gethostbyname: an address, or a name resolved as ldirectord does (getaddrinfo, this family)."""
    m = re.search(r"\[(.*)\]", name)
    if m:
        name = m.group(1)
    if not name:
        return None
    try:
        infos = socket.getaddrinfo(name, 0, socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_STREAM)
        return ipaddress.ip_address(infos[0][4][0].split("%")[0])
    except (OSError, UnicodeError, ValueError, IndexError):
        return None


def _ld_port(text: str, protocol: str) -> Optional[int]:
    """ld_getservbyname: a number 0..65535, or a service name of /etc/services."""
    if re.fullmatch(r"[0-9]+", text):
        return int(text) if int(text) < 65536 else None
    try:
        return socket.getservbyname(text, protocol) if protocol in ("tcp", "udp") else socket.getservbyname(text)
    except (OSError, UnicodeError):
        return None


REAL_LINE = re.compile(r"(\d+\.\d+\.\d+\.\d+|[A-Za-z0-9.-]+|\[[0-9A-fa-f:]+\])"
                       r"(->(\d+\.\d+\.\d+\.\d+|[A-Za-z0-9.-]+|\[[0-9A-fa-f:]+\]))?"
                       r"(:(\d+|[A-Za-z0-9-_]+))?\s+(.*)")  # _ld_read_config_real_resolve's, unanchored as there
MAX_RANGE = 65536


@dataclass
class _LdReal:
    ip: IPAddress
    port: int  # 0: none written
    forward: str
    weight: str
    request: Optional[str]
    receive: Optional[str]
    line: int
    said: str


def _ld_reals(path: str, v: _LdVirtual) -> List[_LdReal]:
    """Every real= of a block, resolved and ranges expanded, as _ld_read_config_real_resolve and
    add_real_server read them."""
    out = []
    for text, line, said in v.reals:
        m = REAL_LINE.search(text)
        if not m:
            raise _ld_error(path, line, said, "invalid address for real server (wrong format)")
        first = _ld_host(m.group(1), v.family)
        if first is None:
            raise _ld_error(path, line, said, f"invalid address ({m.group(1)}) for real server (could not resolve host)")
        port = _ld_port(m.group(5) or "0", "")
        if port is None:
            raise _ld_error(path, line, said, f"invalid port ({m.group(5)}) for real server (could not resolve port)")
        flags = m.group(6)
        word = re.search(r"(\w+)(.*)", flags)
        if not word or word.group(1) not in LD_FORWARD:
            raise _ld_error(path, line, said, "forward method must be gate, masq or ipip")
        forward, flags = word.group(1), word.group(2)
        weight = re.search(r"\s+(\d+)(.*)", flags)
        if weight:
            weight, flags = weight.group(1), weight.group(2)
        else:
            weight = "1"
        request = receive = None
        pair = re.search(r'\s+"(.*)"[, ]\s*"(.*)"(.*)', flags)
        if pair:
            request, receive, flags = pair.group(1), pair.group(2), pair.group(3)
            request = request if request.startswith("/") else "/" + request
        if re.search(r"\s+[lu]:(\d+)", flags):
            raise _ld_error(path, line, said, "monitor_rs does not set connection thresholds (ipvsadm -x/-y): "
                                              "remove \"l:N\" and \"u:N\"")
        if re.search(r"\S", flags):
            raise _ld_error(path, line, said, f"Invalid real server line, around \"{flags}\"")
        ips = [first]
        if m.group(3):
            last = _ld_host(m.group(3), v.family)
            if last is None:
                raise _ld_error(path, line, said, f"invalid address ({m.group(3)}) for real server (could not resolve end host)")
            if v.family == 6:
                raise _ld_error(path, line, said, "Address range for IPv6 is not supported yet (nor by ldirectord)")
            if int(first) > int(last):
                raise _ld_error(path, line, said, f"Invalid Range: {first}-{last}: the first address must not be above the last")
            if int(last) - int(first) >= MAX_RANGE:
                raise _ld_error(path, line, said, f"a range of more than {MAX_RANGE} real servers")
            ips = [ipaddress.IPv4Address(n) for n in range(int(first), int(last) + 1)]
        out += [_LdReal(ip, port, forward, weight, request, receive, line, said) for ip in ips]
    return out


class _LdSection(_Section):
    """A virtual= block turned into monitorRS.conf's keys, so that one reader checks both formats;
    a fault is named by the ldirectord.cf line the key came from."""

    def __init__(self, path: str, values: Mapping[str, str], where: Mapping[str, Tuple[int, str]],
                 default: Tuple[int, str]):
        super().__init__(path, "", values, own=values)
        self.where, self.default = dict(where), default

    def fail(self, key: str, reason: str) -> ConfigError:
        line, said = self.where.get(key, self.default)
        return _ld_error(self.path, line, said, reason)


def _ld_tcp_request(text: str) -> str:
    """simpletcp's request as monitor_rs's tcp request: ldirectord sends it as written but for the
    two characters \\n, sent as a line feed (and without the / its parser put first)."""
    return "\\n".join(part.replace("\\", "\\\\") for part in text.split("\\n"))


def load_ldirectord(path: str, text: str) -> Config:
    """ldirectord.cf as a Config (format LDIRECTORD): see the section's comment."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    g: Dict[str, Tuple[str, int, str]] = {}
    virtuals: List[_LdVirtual] = []
    index, pending = 0, None
    while True:
        if pending is None:
            if index >= len(lines):
                break
            data, number = lines[index], index + 1
            index += 1
        else:
            (data, number), pending = pending, None
        m = re.match(r"virtual(6)?\s*=\s*(.*)", data)
        if m:
            v = _ld_virtual_head(path, number, data, 6 if m.group(1) else 4, m.group(2))
            while index < len(lines):
                raw = lines[index]
                index += 1
                if re.match(r"\s*#", raw):
                    continue
                body = re.match(r" {4,}(.+)", raw.split("#", 1)[0].replace("\t", "    "))
                if not body:
                    pending = (raw, index)
                    break
                _ld_block_line(path, index, body.group(1), v)
            virtuals.append(v)
            continue
        if re.fullmatch(r"\s*", data) or re.match(r"\s*#", data):
            continue
        _ld_global_line(path, number, data, g)

    def value(key: str, default: str = "") -> str:
        return g[key][0] if key in g else default

    logfile = value("logfile", LD_DEFAULT_LOG)
    syslog = "" if logfile.startswith("/") else logfile
    log = "" if syslog or value("supervised") == "yes" else logfile  # supervised: ldirectord logs to stdout only
    top = _LdSection(path, {}, {key: (line, said) for key, (_, line, said) in g.items()}, (1, "ldirectord.cf"))
    # the global timeouts, as ld_setup makes each the other's default
    checktimeout = value("checktimeout") or value("negotiatetimeout") or "5"
    callback = (value("callback"),) if "callback" in g else ()
    if callback:
        if CONTROL.search(callback[0]):
            raise top.fail("callback", "control character (NUL, escape, ...) in the command")
        why = unsafe_program(callback[0])
        if why:
            raise top.fail("callback", why)
    if "maintenancedir" in g and not value("maintenancedir").startswith("/"):
        raise top.fail("maintenancedir", "must be an absolute path to a folder (monitor_rs runs in /)")
    cleanstop = value("cleanstop", "yes") == "yes"  # ldirectord's default: yes
    services, seen, names = [], {}, set()
    for v in virtuals:
        vs = _ld_service(path, v, g, names)
        if vs.ipvs_key in seen:
            raise _ld_error(path, v.line, v.said, f"duplicate virtual server (also on line {seen[vs.ipvs_key]})")
        seen[vs.ipvs_key] = v.line
        for key, wanted in (("cleanstop", value("cleanstop", "yes")), ("smtp", value("smtp"))):
            if key in v.opts and v.opts[key][0] != wanted:
                own, line, said = v.opts[key]
                raise _ld_error(path, line, said, f"monitor_rs has one {key} for all virtual services: "
                                                  f"write {key}={own} at column 0 (globally) instead")
        services.append(vs)
    if not services:
        raise ConfigError(f"{path}: no virtual= block: nothing to monitor")
    timeout = float(checktimeout)
    if timeout > 3600:
        raise top.fail("checktimeout" if "checktimeout" in g else "negotiatetimeout", "must be 3600 at most")
    interval = float(value("checkinterval", "10"))  # ldirectord's default: 10
    if interval > 86400:  # as monitorRS.conf's interval (a sleep the system can make)
        raise top.fail("checkinterval", "must be 86400 at most")
    return Config(
        path=path,
        interval=interval,
        timeout=timeout,
        log=log,
        lock=default_run_path(path, "lock"),
        state_file=default_run_path(path, "state.json"),
        services=tuple(services),
        format=ConfigFormat.LDIRECTORD,
        syslog=syslog,
        autoreload=value("autoreload", "no") == "yes",
        callback=callback,
        cleanstop=cleanstop,
        maintenancedir=value("maintenancedir"),
        smtp=value("smtp"),
        emailalertfrom=value("emailalertfrom"),
    )


def _ld_virtual_head(path: str, line: int, said: str, family: int, text: str) -> _LdVirtual:
    """virtual=IP:PORT, host:service or a firewall mark; virtual6=[IPv6]:PORT."""
    v = _LdVirtual(line, said, family)
    patterns = ([r"(\d+\.\d+\.\d+\.\d+):([0-9A-Za-z-_]+)"] if family == 4 else []) + [
        r"([0-9A-Za-z._+-]+):([0-9A-Za-z-_]+)"]
    for pattern in patterns:
        m = re.match(pattern, text)
        if m:
            v.host, v.port = m.group(1), m.group(2)
            break
    else:
        m = re.match(r"(\d+)", text)
        if m:
            v.fwmark = int(m.group(1))
        else:
            m = re.match(r"\[([0-9A-Fa-f:]+)\]:([0-9A-Za-z-_]+)", text)
            if not m:
                raise _ld_error(path, line, said, "invalid address for virtual server")
            if family == 4:
                raise _ld_error(path, line, said, "cannot specify an IPv6 address here: please use \"virtual6\" instead")
            v.host, v.port = f"[{m.group(1)}]", m.group(2)
    rest = text[m.end():]
    if rest.strip() and not rest.strip().startswith("#"):
        what = f"firewall mark {v.fwmark}" if not v.host else f"{v.host}:{v.port}"
        raise _ld_error(path, line, said, f"ldirectord reads this as {what} and ignores {rest.strip()!r}: "
                                          f"write what you mean (IP:PORT, or a firewall mark alone)")
    if not v.host and not 1 <= v.fwmark <= 4294967295:
        raise _ld_error(path, line, said, "a firewall mark is 1 to 4294967295")
    return v


def _ld_service(path: str, v: _LdVirtual, g: Mapping[str, Tuple[str, int, str]], names: set) -> VirtualService:
    """One virtual= block as a VirtualService: its values, defaults as ldirectord's code has them
    (ld_setup, fallback_find), mapped onto monitorRS.conf's keys and checked by _load_service."""
    opts = v.opts
    where: Dict[str, Tuple[int, str]] = {}
    values: Dict[str, str] = {}
    head = (v.line, v.said)

    def opt(key: str, default: str = "") -> str:
        return opts[key][0] if key in opts else default

    def at(key: str) -> Tuple[int, str]:
        return (opts[key][1], opts[key][2]) if key in opts else (g[key][1], g[key][2]) if key in g else head

    def fail(key: str, reason: str) -> ConfigError:
        line, said = at(key)
        return _ld_error(path, line, said, reason)

    def put(key: str, value: str, source: Optional[str] = None) -> None:
        values[key] = value
        where[key] = at(source) if source else head

    def own_or_global(key: str, default: str = "") -> str:
        return opts[key][0] if key in opts else g[key][0] if key in g else default

    # the service: its protocol (port 53 or "domain": udp), address and port, as ldirectord resolves them
    if v.host:
        protocol = opt("protocol", "udp" if v.port in ("53", "domain") else "tcp")
        vip = _ld_host(v.host, v.family)
        vport = _ld_port(v.port, protocol)
        if vip is None or vport is None:
            raise _ld_error(path, v.line, v.said, "invalid address for virtual service (could not resolve "
                            + ("its host)" if vip is None else "its port)"))
        put("protocol", protocol, "protocol")
        put("vip", str(vip))
        put("vport", str(vport))
    else:
        protocol, vip, vport = "fwm", None, 0
        put("protocol", "fwm")
        put("fwmark", str(v.fwmark))
    service = opt("service") or ("none" if not v.host else LD_PORT_SERVICE.get(vport, "none"))
    checktype = opt("checktype", "negotiate")
    if checktype == "combined":  # N connects, then one negotiate: here every check negotiates (stricter)
        checktype = "negotiate"
    if checktype == "connect" and protocol == "udp":
        checktype = "ping"  # _check_real: a connect check of a UDP service is a ping

    # the check, first: a check monitor_rs cannot make is refused before any name is resolved
    kind, receive_regex, uses_request = _ld_check(path, v, g, service, checktype, protocol, fail, put, opt)
    if receive_regex:
        put("receive_regex", "yes", "receive")

    # the real servers: one forwarding method for all (monitor_rs keeps one per service)
    reals = _ld_reals(path, v)
    if not reals:
        raise _ld_error(path, v.line, v.said, "no real= line: monitor_rs needs at least one real server "
                                              "(ldirectord would run the fallback alone)")
    forward = reals[0].forward
    for rs in reals:
        if rs.forward != forward:
            raise _ld_error(path, rs.line, rs.said, f"monitor_rs gives all real servers of a virtual service one "
                            f"forwarding method: this one is {rs.forward}, the one of line {reals[0].line} {forward}")
    put("type", LD_FORWARD[forward])
    checkport = int(opt("checkport")) if "checkport" in opts else None
    service_port = LD_SERVICE_PORT.get(service)
    portless = [rs for rs in reals if rs.port == 0]
    if not v.host:  # a firewall mark: IPVS keeps its real servers without a port; the probe needs one
        port = checkport or service_port
        if portless and forward == "masq":
            raise _ld_error(path, portless[0].line, portless[0].said, "a masq real server of a firewall-mark "
                            "service needs its port here (real=RIP:PORT masq): monitor_rs adds it with one")
        if portless and port is None and checktype not in ("on", "off"):
            raise _ld_error(path, portless[0].line, portless[0].said, "the port to check: write real=RIP:PORT, "
                                                                      "or checkport=PORT in this block")
        for rs in portless:
            rs.port = port or 1  # on/off: no traffic, any port
    else:
        if portless and checkport is None and service_port and service_port != vport:
            # ld_checkport: a real server without port is checked on its service's port, not vport
            if len(portless) != len(reals):
                raise _ld_error(path, portless[0].line, portless[0].said, f"ldirectord checks this server on "
                                f"port {service_port} ({service}) and the others on their own: write "
                                f"checkport= or a port on every real=")
            checkport = service_port
        for rs in portless:
            rs.port = vport
    put("rs", " ".join(str(Endpoint(rs.ip, rs.port)) for rs in reals), None)
    where["rs"] = (reals[0].line, reals[0].said)
    put("rw", " ".join(rs.weight for rs in reals))
    where["rw"] = where["rs"]
    if not v.host:
        put("rport", str(reals[0].port))
    if checkport is not None:
        put("checkport", str(checkport), "checkport")

    for rs in reals:  # real=... "request", "receive": used by the checks that send the request
        if rs.request is None or not uses_request:
            continue
        name = str(Endpoint(rs.ip, rs.port))
        request, receive = _ld_convert(service, rs.request, rs.receive)
        if request != values.get("request", "/" if kind in ("http", "https") else ""):
            values[f"request@{name}"] = request
            where[f"request@{name}"] = (rs.line, rs.said)
        if receive != values.get("receive", ""):
            values[f"receive@{name}"] = receive
            where[f"receive@{name}"] = (rs.line, rs.said)
        if receive and service not in ("dns",):
            put("receive_regex", "yes", "receive")
    if kind not in ("on", "off"):  # ld_setup: connect, ping, external checks have checktimeout, the others negotiate's
        checktimeout = opt("checktimeout") or opt("negotiatetimeout") or own_or_global(
            "checktimeout") or own_or_global("negotiatetimeout") or "5"
        negotiatetimeout = opt("negotiatetimeout") or opt("checktimeout") or own_or_global(
            "negotiatetimeout") or own_or_global("checktimeout") or "30"
        if checktype == "negotiate":
            put("timeout", negotiatetimeout, "negotiatetimeout" if "negotiatetimeout" in opts or (
                "checktimeout" not in opts and "negotiatetimeout" in g) else "checktimeout")
        else:
            put("timeout", checktimeout, "checktimeout" if "checktimeout" in opts or (
                "negotiatetimeout" not in opts and "checktimeout" in g) else "negotiatetimeout")
    if "checkinterval" in opts:  # ldirectord honours it with fork=yes only; checks here are always concurrent
        put("interval", opt("checkinterval"), "checkinterval")
    put("fall", own_or_global("failurecount", "1"), "failurecount")
    put("quiescent", own_or_global("quiescent", "no"), "quiescent")  # the code's default: no (its man page: yes)

    # the fallback: its own, else the global of its family (with the service's port when it has none)
    key = "fallback" if "fallback" in opts else ("fallback6" if v.family == 6 else "fallback")
    # (a global fallback is none of a firewall-mark service's: ldirectord keeps it per tcp/udp only)
    text = opts["fallback"][0] if "fallback" in opts else g[key][0] if key in g and v.host else ""
    if text:
        line, said = at(key)
        host, port_text, fallforward = _ld_parse_fallback(path, line, said, text)
        ip = _ld_host(host, v.family)
        if ip is None:
            raise _ld_error(path, line, said, f"invalid IPv{v.family} address or could not resolve for fallback "
                                              f"server: {host}")
        port = _ld_port(port_text, protocol) if port_text else vport
        if port is None:
            raise _ld_error(path, line, said, "invalid port for fallback server")
        if fallforward != forward and not ip.is_loopback:  # on this host IPVS forwards locally whatever the method
            raise _ld_error(path, line, said, f"monitor_rs gives the fallback the real servers' forwarding method "
                                              f"({forward}), not {fallforward}")
        flag = FORWARD_FLAGS[LD_FORWARD[forward]]
        if any(stored_endpoint(protocol, flag, vport, Endpoint(ip, port or reals[0].port))
               == stored_endpoint(protocol, flag, vport, Endpoint(rs.ip, rs.port)) for rs in reals):
            raise _ld_error(path, line, said, "is also a real= of this block: monitor_rs never makes a real "
                                              "server its own fallback; remove one of the two")
        put("fallback", str(Endpoint(ip, port or reals[0].port)), key)
    command = own_or_global("fallbackcommand")
    if command:
        put("fallbackcommand", command, "fallbackcommand")
    for key in ("emailalert", "emailalertfreq", "emailalertstatus"):
        if own_or_global(key):
            put(key, own_or_global(key), key)

    # the virtual service itself: always set up by ldirectord (scheduler default wrr)
    put("scheduler", opt("scheduler", "wrr"), "scheduler")
    if "persistent" in opts:
        put("persistent", opt("persistent"), "persistent")
        if "netmask" in opts:  # ldirectord passes -M only with -p: without persistent it has no effect
            put("netmask", opt("netmask"), "netmask")
    if protocol == "udp" and opt("ops") == "yes":  # ldirectord passes -o for UDP only
        put("ops", "yes", "ops")

    name = opt("servicename") or (f"{v.host}:{v.port}" if v.host else f"fwmark {v.fwmark}")
    if name in names:
        name = f"{name} ({vs_address(protocol, vip, vport, v.fwmark)})"
    names.add(name)
    sec = _LdSection(path, values, where, head)
    return _load_service(path, sec, name, sec)


def vs_address(protocol: str, vip: Optional[IPAddress], vport: int, fwmark: int) -> str:
    return f"fwm {fwmark}" if vip is None else f"{protocol} {Endpoint(vip, vport)}"


def _ld_convert(service: str, request: str, receive: Optional[str]) -> Tuple[str, str]:
    """ldirectord's request and receive (request with the / its parser put first) as monitorRS.conf's."""
    receive = receive or ""
    if service == "simpletcp":
        return _ld_tcp_request(request[1:]), receive
    if service == "dns":
        return request.lstrip("/"), receive
    return request, receive


def _ld_check(path, v, g, service, checktype, protocol, fail, put, opt) -> Tuple[str, bool, bool]:
    """checktype and service as one of monitor_rs's checks: (kind, receive is a regex, per-real
    request/receive apply).  What monitor_rs cannot check as ldirectord does is refused."""
    if checktype in ("on", "off"):
        put("check", checktype, "checktype")
        return checktype, False, False
    if checktype == "ping":
        put("check", "ping", "checktype")
        return "ping", False, False
    if checktype == "external":
        put("check", "external", "checktype")
        # exec'd as one program path, with VIP VPORT RIP RPORT (check_external); ldirectord's default /bin/true
        put("checkcommand", shlex.quote(opt("checkcommand", "/bin/true")), "checkcommand")
        return "external", False, False
    if checktype == "connect":
        put("check", "tcp", "checktype")
        return "tcp", False, False
    # negotiate
    if service in LD_REFUSED_SERVICES:
        raise fail("service" if "service" in v.opts else "virtual",
                   f"monitor_rs has no {service} check ({LD_REFUSED_SERVICES[service]}): write checktype=connect "
                   f"for a TCP connect{' (a ping for UDP)' if protocol == 'udp' else ''}, or checktype=external "
                   f"with a checkcommand that speaks {service}")
    for key in ("login", "passwd", "database", "secret"):
        if key in v.opts and service in ("ftp", "pop", "imap"):
            raise fail(key, f"monitor_rs's {service} check reads the greeting and does not log in: remove "
                            f"{key}, or write checktype=external with a checkcommand that logs in")
    if service == "none":  # check_none: the server is up without any check
        put("check", "on", "service" if "service" in v.opts else None)
        return "on", False, False
    request, receive = _ld_convert(service, opt("request", "/"), opt("receive"))
    if service in ("http", "https"):
        put("check", service, "service" if "service" in v.opts else None)
        put("request", request, "request")
        if receive:
            put("receive", receive, "receive")
        if "virtualhost" in v.opts:
            put("host", opt("virtualhost"), "virtualhost")
        put("httpmethod", opt("httpmethod", "GET"), "httpmethod")
        return service, bool(receive), True
    if service == "dns":
        if protocol != "udp":
            raise fail("protocol" if "protocol" in v.opts else "virtual", "monitor_rs asks DNS over UDP and "
                       "ldirectord asks a TCP service over TCP: write checktype=connect for a TCP connect")
        if not receive:
            raise fail("service" if "service" in v.opts else "virtual", "receive=\"ADDRESS\" needed: ldirectord's "
                       "dns check never passes without it, monitor_rs's wants the address the answer holds")
        if not _is_ip(receive):
            raise fail("receive", "monitor_rs's dns check wants one address the answer holds, not a regular "
                                  "expression: write receive=\"192.0.2.1\"")
        put("check", "dns", "service" if "service" in v.opts else None)
        put("request", request, "request")
        put("receive", receive, "receive")
        return "dns", False, True
    if service == "ftp" and "receive" in v.opts:
        raise fail("receive", "monitor_rs does not fetch files over FTP (ldirectord gets `request` and matches "
                              "receive on it): remove request and receive to check the greeting, or write "
                              "checktype=external")
    put("check", "tcp", "service" if "service" in v.opts else None)
    if service == "simpletcp":
        if request:
            put("request", request, "request")
        if receive:
            put("receive", receive, "receive")
        return "tcp", bool(receive), True
    put("receive", LD_BANNERS[service], "service" if "service" in v.opts else None)
    return "tcp", True, False


###############################################################################
# IPVS table: read and change it through ipvsadm ##############################
###############################################################################
#
# ipvsadm is always run with an argv list, never a shell, and under its own
# timeout.  One ``ipvsadm -Ln -t VIP:VPORT`` per virtual service per pass: the
# listing is split on whitespace inside that service's block only.


@dataclass(frozen=True)
class Destination:
    """A ``  -> RemoteAddress:Port Forward Weight ActiveConn InActConn`` line."""

    endpoint: Endpoint
    forward: str
    weight: int
    active: int = 0
    inactive: int = 0


Table = Dict[Endpoint, Destination]


@dataclass(frozen=True)
class ServiceHead:
    """A service line of ``ipvsadm -Ln`` past its address: how IPVS schedules the service.
    ``SCHED [(FLAGS)] [persistent N [mask M] [pe X]] [ops]`` (1.31's print_service_entry)."""

    scheduler: str
    persistent: Optional[int] = None
    netmask: str = ""  # as listed: "" is the kernel's default (255.255.255.255, or 128 for IPv6)
    ops: bool = False
    flags: str = ""  # scheduler flags, as listed (sh-fallback,sh-port)
    pe: str = ""  # persistence engine

    def differences(self, wanted: "ServiceHead", family: int) -> List[str]:
        """What differs from `wanted` (scheduler, persistence, its mask, ops), as the operator reads it."""
        said = []
        if self.scheduler != wanted.scheduler:
            said.append(f"scheduler {self.scheduler} in IPVS, {wanted.scheduler} configured")
        if self.persistent is not None and wanted.persistent is not None and self.persistent != wanted.persistent:
            said.append(f"persistent {self.persistent} in IPVS, {wanted.persistent} configured")
        elif self.persistent != wanted.persistent:
            said.append(f"{_persistence(self.persistent)} in IPVS, {_persistence(wanted.persistent)} configured")
        elif self.persistent is not None and self.netmask != wanted.netmask:
            default = "128" if family == 6 else "255.255.255.255"
            said.append(f"mask {self.netmask or default} in IPVS, {wanted.netmask or default} configured")
        if self.ops != wanted.ops:
            said.append("ops in IPVS, not configured" if self.ops else "no ops in IPVS, ops configured")
        return said

    def __str__(self) -> str:
        persistence = f", persistent {self.persistent}" if self.persistent is not None else ""
        mask = f", mask {self.netmask}" if self.persistent is not None and self.netmask else ""
        return self.scheduler + persistence + mask + (", ops" if self.ops else "")


def _persistence(seconds: Optional[int]) -> str:
    return "not persistent" if seconds is None else f"persistent {seconds}"


class ServiceTable(Dict[Endpoint, Destination]):
    """A Table (the service's destinations) that also carries its service line, `head`."""

    def __init__(self, head: ServiceHead):
        super().__init__()
        self.head = head


def parse_head(words: Sequence[str]) -> ServiceHead:
    """The words of a service line after its address; ValueError if not understood."""
    if not words or not re.fullmatch(r"[a-z][a-z0-9_-]*", words[0]):
        raise ValueError(words)
    rest = list(words[1:])
    head = dict(scheduler=words[0])
    if rest and re.fullmatch(r"\([^()]*\)", rest[0]):
        head["flags"] = rest.pop(0)[1:-1]
    if rest[:1] == ["persistent"]:
        if len(rest) < 2 or not re.fullmatch(r"[0-9]{1,10}", rest[1]):
            raise ValueError(words)
        head["persistent"] = int(rest[1])
        del rest[:2]
        for word in ("mask", "pe"):
            if rest[:1] == [word]:
                if len(rest) < 2:
                    raise ValueError(words)
                head["netmask" if word == "mask" else word] = rest[1]
                del rest[:2]
    if rest[:1] == ["ops"]:
        head["ops"] = True
        rest.pop(0)
    if rest:
        raise ValueError(words)
    return ServiceHead(**head)


def wanted_head(vs: VirtualService) -> ServiceHead:
    """The service line `vs` asks for, as ipvsadm would list it."""
    netmask = vs.netmask if vs.persistent is not None else ""
    try:  # as ipvsadm prints it back: %i for IPv6, inet_ntoa for IPv4; the default not at all
        netmask = str(int(netmask)) if vs.family == 6 else str(ipaddress.IPv4Address(netmask))
    except ValueError:
        pass  # "" (none given), or a value the config let through as written: compared as it is
    return ServiceHead(vs.scheduler, vs.persistent, "" if netmask in ("128", "255.255.255.255") else netmask, vs.ops)


def service_spec(vs: VirtualService) -> Tuple[str, ...]:
    """The arguments of ``ipvsadm -A`` / ``-E`` for `vs`: the whole service (-E resets what is not given)."""
    args = [*vs.service_args, "-s", vs.scheduler]
    if vs.persistent is not None:
        args += ["-p", str(vs.persistent)] + (["-M", vs.netmask] if vs.netmask else [])
    return tuple(args + (["-o"] if vs.ops else []))


class IpvsError(Exception):
    """ipvsadm could not give a usable answer; nothing is decided on it."""

    def __init__(self, message: str, summary: str = ""):
        super().__init__(message)
        self.summary = summary or message  # stays the same while the problem lasts: logged once


class IpvsStopped(IpvsError):
    """A listing cut short because the monitor was asked to stop."""


class ServiceNotDefined(IpvsError):
    pass


class IpvsUnavailable(IpvsError):
    """ipvsadm missing or not runnable, or the kernel has no IPVS."""


@functools.lru_cache(maxsize=65536)  # the same addresses come back every pass (a cache smaller than the table: no hit)
def parse_address(text: str) -> Endpoint:
    """An address as ipvsadm prints it (firewall-mark destinations have port 0)."""
    return parse_endpoint(text, None, lowest_port=0)


def parse_listing(text: str) -> Dict[Tuple[str, str], ServiceTable]:
    """Parse ``ipvsadm -Ln`` (whole or one service) into {(PROT, address): table}; each
    table (a ServiceTable) carries its service line too, in `head`.

    Strict on purpose: a line that is not understood raises IpvsError, so that
    a garbled or truncated listing never looks like an empty service.
    """
    services: Dict[Tuple[str, str], Table] = {}
    current: Optional[Table] = None
    titles = 0
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if line.startswith("IP Virtual Server version"):
            continue
        if fields[:2] == ["Prot", "LocalAddress:Port"]:
            titles += 1
            continue
        if fields[:2] == ["->", "RemoteAddress:Port"]:
            titles += 1
            continue
        try:
            if fields[0] == "->":
                if current is None or len(fields) != 6:
                    raise ValueError
                ep = parse_address(fields[1])
                current[ep] = Destination(ep, fields[2], int(fields[3]), int(fields[4]), int(fields[5]))
            elif fields[0] == "FWM" and len(fields) >= 3:  # ``FWM  1 wrr`` or ``FWM  1 IPv6 wrr``
                ipv6 = fields[2] == "IPv6"
                mark = int(fields[1])  # ipvsadm prints it with %d: a mark from 2^31 up comes out negative
                if not -(1 << 31) <= mark < 1 << 32 or not re.fullmatch(r"-?[0-9]+", fields[1]):
                    raise ValueError(fields[1])
                address = str(mark & 0xFFFFFFFF) + (" IPv6" if ipv6 else "")
                current = services.setdefault((fields[0], address), ServiceTable(parse_head(fields[2 + ipv6:])))
            elif fields[0] in ("TCP", "UDP", "SCTP") and len(fields) >= 3:
                address = str(parse_address(fields[1]))
                current = services.setdefault((fields[0], address), ServiceTable(parse_head(fields[2:])))
            else:
                raise ValueError
        except ValueError:
            raise IpvsError(f"unreadable ipvsadm listing line {line.strip()!r}",
                            "unreadable ipvsadm listing") from None
    if titles < 2:
        raise IpvsError("unreadable ipvsadm listing: title lines missing")
    return services


@dataclass(frozen=True)
class CommandResult:
    argv: Tuple[str, ...]
    returncode: int  # -1 when it could not run or timed out
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def why(self) -> str:
        """The failure as one line: exit status and what ipvsadm said."""
        said = " / ".join(line.strip() for line in self.stderr.splitlines() if line.strip())
        if self.returncode < 0:
            return said or "could not run"
        return f"exit {self.returncode}" + (f": {said}" if said else "")


NO_IPVS = ("Can't initialize ipvs", "Protocol not available", "IP Virtual Server is built")
STOPPED = -2  # the returncode of a listing cut short by a stop request
TIMED_OUT = -3  # ... of a call killed at its timeout: a passing fault, not a missing ipvsadm
KERNEL_REFUSED = 255  # ipvsadm's exit status for a change the kernel refused (a lone run of that -R line)
KILL_GRACE = 1.0  # seconds a killed ipvsadm's pipes may take to close before they are given up


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a child started in a session of its own, and all it started: while the child
    is not reaped, its PID is still its group's number (no other process can have it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


SBIN_DIRS = ("/usr/sbin", "/sbin")  # where Debian puts ipvsadm; cron's PATH (/usr/bin:/bin) lacks them


def find_program(name: str) -> str:
    """A bare name not found on PATH is looked for in SBIN_DIRS too: the path found
    there, else the name as given (found on PATH at each run, or named in the error)."""
    if not name or os.sep in name or which(name):
        return name
    return which(name, path=os.pathsep.join(SBIN_DIRS)) or name


class Ipvsadm:
    """The one door to the kernel table."""

    def __init__(self, path: str = "ipvsadm", timeout: float = 5.0):
        self.path, self.timeout = find_program(path), timeout  # once, at start and at each reload

    def run(self, args: Sequence[str], stop=None, stdin: Optional[str] = None) -> CommandResult:
        """Run ipvsadm under its timeout; with `stop`, a stop request cuts it short
        (for listings only: a change, once started, is let finish); `stdin`, the
        text it reads (for -R), else it reads nothing.

        It runs in a session of its own, so that a timeout or a stop kills all it
        started (a wrapper script that does not exec, a modprobe), and no wait
        after that is without a bound."""
        import subprocess  # (at the first run, not at start: see the imports)
        argv = (self.path, *args)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, errors="replace", start_new_session=True)
        except FileNotFoundError:
            return CommandResult(argv, -1, stderr=f"{self.path}: not found (install ipvsadm, or give --ipvsadm PATH)")
        except PermissionError:
            return CommandResult(argv, -1, stderr=f"{self.path}: not executable")
        except OSError as exc:
            return CommandResult(argv, -1, stderr=f"{self.path}: cannot run: {exc.strerror or exc}")
        deadline = time.monotonic() + self.timeout
        pending = stdin  # given to the first communicate() only: it refuses input once started
        try:
            while True:
                try:
                    wait = deadline - time.monotonic()
                    out, err = proc.communicate(pending, timeout=max(0.0, min(wait, 0.1) if stop else wait))
                    return CommandResult(argv, proc.returncode, out, err)
                except subprocess.TimeoutExpired:
                    pending = None
                    late = time.monotonic() >= deadline
                    if late or (stop is not None and stop()):
                        why = self._kill(proc, " ".join(argv))
                        if not late:
                            return CommandResult(argv, STOPPED, stderr="stopped")
                        return CommandResult(argv, TIMED_OUT, stderr=why)
        finally:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

    def restore(self, commands: Sequence[Sequence[str]]) -> CommandResult:
        """Many changes in one process: ``ipvsadm -R``, a command a line on its stdin.

        Its exit status is only the last line's, and a line that fails validation ends
        the run: what each change did must be read back (Monitor._apply_batch)."""
        return self.run(("-R",), stdin="".join(" ".join(args) + "\n" for args in commands))

    def _kill(self, proc: subprocess.Popen, command: str) -> str:
        """Kill the whole process group of a call (the leader is not reaped yet, so its
        PID is still the group's), wait a bounded time; say why, in one line."""
        import subprocess
        try:  # did ipvsadm itself exit, and something it left behind holds its pipes?
            exited = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            exited = True
        kill_group(proc)
        why = f"{command}: " + (f"its output was still open after {self.timeout:g} s" if exited
                                 else f"no answer within {self.timeout:g} s")
        try:
            proc.communicate(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired:  # leave them: closed by run(), reaped by subprocess later
            why += (", and it did not die when killed: given up" if proc.poll() is None
                    else ", held by a process outside its process group: given up")
        return why

    def read_service(self, vs: VirtualService, stop=None) -> ServiceTable:
        """The destinations of one virtual service, as the kernel has them now."""
        result = self.run(("-Ln", *vs.service_args), stop)
        if result.returncode == STOPPED:
            raise IpvsStopped("stopped")
        if not result.ok:
            if result.returncode == -1 or any(s in result.stderr for s in NO_IPVS):
                raise IpvsUnavailable(result.why())
            if "No such service" in result.stderr:
                raise ServiceNotDefined(f"virtual service {vs.address} is not defined in IPVS")
            raise IpvsError(f"ipvsadm -Ln {' '.join(vs.service_args)} failed: {result.why()}")
        listing = parse_listing(result.stdout)
        if vs.ipvs_key not in listing:
            raise IpvsError(f"ipvsadm listing has no line for virtual service {vs.address}")
        return listing[vs.ipvs_key]


def restored_listing(vs: VirtualService, result: CommandResult) -> Optional[ServiceTable]:
    """The service as the last line of an ``ipvsadm -R`` (``-Ln`` of it) listed it, or None when
    the run did not end there well: its exit status is that line's, and a run ended early
    (validation: exit 2, a listing refused: 1) or killed is not 0.  The changes and their marks
    print nothing on stdout, so the listing is all of it."""
    if result.returncode != 0 or not result.stdout:
        return None
    try:
        listing = parse_listing(result.stdout)
    except IpvsError:
        return None
    return listing.get(vs.ipvs_key) if len(listing) == 1 else None



# The kernel's own door for changes: generic netlink, family "IPVS" (ip_vs_ctl.c, ip_vs_genl_*),
# the way ipvsadm's libipvs talks to it.  A change over netlink is one message and the kernel's
# answer (an errno), not a process (under emulation an ipvsadm run costs ~0.4 s, a message ~1 ms):
# used for the real servers' changes (-a, -e, -d) when the configured ipvsadm is the system's own
# (table_source auto), and the answer said in ipvsadm's own words (libipvs's ipvs_strerror), so
# that the log reads exactly as with a lone ipvsadm.  Anything else (the virtual service's own
# lines, a family not registered because ip_vs is not loaded yet) goes through ipvsadm.

NETLINK_GENERIC = 16
GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 0x10, 3, 1, 2
NLM_F_REQUEST, NLM_F_ACK, NLMSG_ERROR = 1, 4, 2
IPVS_GENL_VERSION = 1
IPVS_COMMANDS = {"-a": 5, "-e": 6, "-d": 7}  # IPVS_CMD_NEW_DEST, IPVS_CMD_SET_DEST, IPVS_CMD_DEL_DEST
IPVS_FORWARDS = {"-m": 0, "-i": 2, "-g": 3}  # IP_VS_CONN_F_MASQ, _TUNNEL, _DROUTE
IPVS_PROTOCOLS = {"-t": socket.IPPROTO_TCP, "-u": socket.IPPROTO_UDP, "--sctp-service": 132}
IPVS_ERRORS = {  # libipvs ipvs_strerror: the dest commands' own words, then those of any command
    ("-a", errno.ESRCH): "Service not defined", ("-a", errno.EEXIST): "Destination already exists",
    ("-e", errno.ESRCH): "Service not defined", ("-e", errno.ENOENT): "No such destination",
    ("-d", errno.ESRCH): "Service not defined", ("-d", errno.ENOENT): "No such destination",
    errno.EPERM: "Permission denied (you must be root)",
    errno.EINVAL: "Invalid operation.  Possibly wrong module version, address not unicast, ...",
    errno.ENOPROTOOPT: "Protocol not available", errno.ENOMEM: "Memory allocation problem",
    errno.EOPNOTSUPP: "Operation not supported with IPv6",
    errno.EAFNOSUPPORT: "Operation not supported with specified address family",
    errno.EMSGSIZE: "Module is wrong version"}


def _nla(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def _nl_address(ip: IPAddress) -> bytes:
    return ip.packed + b"\0" * (16 - len(ip.packed))  # union nf_inet_addr, as libipvs sends it


def ipvs_message(args: Sequence[str]) -> Optional[Tuple[int, bytes]]:
    """(IPVS command, attributes) for a real server's change as the monitor writes it for ipvsadm
    (_change_args: -a/-e SERVICE -r RIP:PORT -g|-m|-i -w W, -d SERVICE -r RIP:PORT), or None for
    anything else (left to ipvsadm).  Field by field what ipvsadm 1.31 sends: thresholds 0, and for
    -g and -i on a service with a port, the real server's port is the service's."""
    words = list(args)
    if len(words) < 5 or words[0] not in IPVS_COMMANDS:
        return None
    kind, rest = words[0], words[1:]
    try:
        if rest[0] == "-f":
            mark, family = int(rest[1]), 6 if rest[2:3] == ["-6"] else 4
            rest = rest[3:] if family == 6 else rest[2:]
            service = (_nla(1, struct.pack("=H", socket.AF_INET6 if family == 6 else socket.AF_INET))
                       + _nla(5, struct.pack("=I", mark)))
            vport = None
        elif rest[0] in IPVS_PROTOCOLS:
            vip = parse_address(rest[1])
            family, vport = vip.ip.version, vip.port
            service = (_nla(1, struct.pack("=H", socket.AF_INET6 if family == 6 else socket.AF_INET))
                       + _nla(2, struct.pack("=H", IPVS_PROTOCOLS[rest[0]])) + _nla(3, _nl_address(vip.ip))
                       + _nla(4, struct.pack(">H", vip.port)))
            rest = rest[2:]
        else:
            return None
        if rest[:1] != ["-r"]:
            return None
        real = parse_address(rest[1])
        rest = rest[2:]
        if kind == "-d":
            if rest:
                return None
            dest = _nla(1, _nl_address(real.ip)) + _nla(2, struct.pack(">H", real.port))
        else:
            if len(rest) != 3 or rest[0] not in IPVS_FORWARDS or rest[1] != "-w":
                return None
            forward, weight = IPVS_FORWARDS[rest[0]], int(rest[2])
            if not 0 <= weight <= 65535:
                return None
            port = vport if vport is not None and rest[0] in ("-g", "-i") else real.port
            dest = (_nla(1, _nl_address(real.ip)) + _nla(2, struct.pack(">H", port))
                    + _nla(3, struct.pack("=I", forward)) + _nla(4, struct.pack("=I", weight))
                    + _nla(5, struct.pack("=I", 0)) + _nla(6, struct.pack("=I", 0))
                    + _nla(11, struct.pack("=H", socket.AF_INET6 if real.ip.version == 6 else socket.AF_INET)))
    except (IndexError, ValueError, IpvsError):
        return None
    return IPVS_COMMANDS[kind], _nla(1 | 0x8000, service) + _nla(2 | 0x8000, dest)  # NLA_F_NESTED


class IpvsNetlink:
    """The real servers' changes as generic netlink messages (see above).  `open` returns None
    where netlink cannot be used (no IPVS family registered, no socket): ipvsadm is used then."""

    def __init__(self, sock: socket.socket, family: int, timeout: float):
        self.sock, self.family, self.timeout, self.seq = sock, family, timeout, 0

    @classmethod
    def open(cls, timeout: float) -> Optional["IpvsNetlink"]:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC)
        except (OSError, AttributeError):
            return None
        door = cls(sock, GENL_ID_CTRL, timeout)
        try:
            code, answer = door._ask(CTRL_CMD_GETFAMILY, _nla(CTRL_ATTR_FAMILY_NAME, b"IPVS\0"), ack=False)
            family = door._attribute(answer, CTRL_ATTR_FAMILY_ID) if code == 0 else None
        except OSError:
            family = None
        if family is None or len(family) < 2:
            sock.close()
            return None
        door.family = struct.unpack("=H", family[:2])[0]
        return door

    @staticmethod
    def _attribute(message: bytes, kind: int) -> Optional[bytes]:
        at = 16 + 4  # nlmsghdr, genlmsghdr
        while at + 4 <= len(message):
            length, found = struct.unpack_from("=HH", message, at)
            if length < 4:
                return None
            if found & 0x3FFF == kind:
                return message[at + 4:at + length]
            at += (length + 3) & ~3
        return None

    def _ask(self, command: int, attributes: bytes, ack: bool = True) -> Tuple[int, bytes]:
        """Send one request; (the kernel's errno, 0 for done; the answer when it is not an ack)."""
        self.seq += 1
        body = struct.pack("=BBH", command, IPVS_GENL_VERSION, 0) + attributes
        flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
        self.sock.send(struct.pack("=IHHII", 16 + len(body), self.family, flags, self.seq, 0) + body)  # (to the kernel)
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no answer from the kernel")
            self.sock.settimeout(left)
            message = self.sock.recv(65536)
            if len(message) < 16:
                continue
            _, kind, _, seq, _ = struct.unpack_from("=IHHII", message)
            if seq != self.seq:
                continue  # an answer to an earlier request given up
            if kind == NLMSG_ERROR:
                return -struct.unpack_from("=i", message, 16)[0], b""
            return 0, message

    def run(self, args: Sequence[str], path: str) -> Optional[CommandResult]:
        """The change `args` made over netlink, as a lone ``path args`` would report it (exit 0, or
        255 and ipvsadm's words); None when these args are not for netlink (ipvsadm then)."""
        message = ipvs_message(args)
        if message is None:
            return None
        argv = (path, *args)
        try:
            code, _ = self._ask(*message)
        except socket.timeout:
            return CommandResult(argv, TIMED_OUT, stderr=f"{' '.join(argv)}: no answer over netlink within "
                                                        f"{self.timeout:g} s")
        except OSError as exc:
            return CommandResult(argv, -1, stderr=f"netlink: {exc.strerror or exc}")
        if code == 0:
            return CommandResult(argv, 0)
        said = IPVS_ERRORS.get((args[0], code)) or IPVS_ERRORS.get(code) or os.strerror(code)
        return CommandResult(argv, KERNEL_REFUSED, stderr=said + "\n")

    def close(self) -> None:
        self.sock.close()

# The kernel's own listing, /proc/net/ip_vs (ip_vs_ctl.c, ip_vs_info_seq_show): the whole table in
# one read, no process.  Addresses and ports in hexadecimal (IPv6 as 8 groups of 4 hex digits in
# brackets), the firewall mark in hexadecimal (unsigned: ipvsadm 1.31 prints a mark over 2^31 as a
# negative number), and its service line is ``SCHED [ops] [persistent TICKS MASK]``.  What it does
# not print: the family of a firewall-mark service (only a destination not forwarded by Tunnel tells
# it: a tunnel alone may cross families), ops of an IPv6 address service, the persistence timeout in
# seconds (it is in the kernel's ticks, HZ), scheduler flags and persistence engines.  The monitor
# keeps changing the table through ipvsadm; this only replaces ``ipvsadm -Ln`` where the system's
# own ipvsadm would read the same kernel.

PROC_IP_VS = "/proc/net/ip_vs"
PROC_TITLES = ("Prot LocalAddress:Port Scheduler Flags",
               "-> RemoteAddress:Port Forward Weight ActiveConn InActConn")
PROC_FORWARDS = ("Masq", "Local", "Tunnel", "Route")  # ip_vs_fwd_name
SYSTEM_SBIN = ("/usr/sbin", "/sbin")  # where the system's own ipvsadm lives (not SBIN_DIRS: tests move that)
_PROC_V4 = re.compile(r"([0-9A-F]{8}):([0-9A-F]{4})")
_PROC_V6 = re.compile(r"\[((?:[0-9a-f]{4}:){7}[0-9a-f]{4})\]:([0-9A-F]{4})")  # %pI6: never compressed
_PROC_HEX8 = re.compile(r"[0-9A-F]{8}")
_PROC_SCHED = re.compile(r"[a-z][a-z0-9_-]{0,15}")


class TableSource(str, enum.Enum):
    """Where a pass reads the IPVS table (``[monitor] table_source``), and how it changes it."""

    AUTO = "auto"  # the system's own ipvsadm: /proc/net/ip_vs, changes over netlink; else ipvsadm alone
    PROC = "proc"  # /proc/net/ip_vs whatever ipvsadm is configured (falls back to ipvsadm -Ln when unreadable)
    IPVSADM = "ipvsadm"  # ipvsadm -Ln per virtual service, as before


TABLE_SOURCES = {source.value: source.value for source in TableSource}


class ProcTables(Dict[Tuple[str, str], Table]):
    """{(PROT, address): table}, as parse_listing gives it, read from /proc/net/ip_vs; and:
    `unsure`: marks (decimal) of firewall-mark services whose family the file does not show
    (no destination but tunnels): read those with ``ipvsadm -Ln -f N [-6]``;
    `heads`: each service line after its address as ``ipvsadm -Ln`` words it (scheduler, ``ops``),
    for the services whose line the file shows whole: not persistent ones (their timeout is in
    the kernel's ticks), nor IPv6 address services (ops not printed); flags and ``pe`` never."""

    def __init__(self):
        super().__init__()
        self.unsure: set = set()
        self.heads: Dict[Tuple[str, str], Tuple[str, ...]] = {}


@functools.lru_cache(maxsize=65536)  # the same destinations come back every pass
def _proc_endpoint(text: str) -> Endpoint:
    match = _PROC_V4.fullmatch(text)
    if match:
        return Endpoint(ipaddress.IPv4Address(int(match.group(1), 16)), int(match.group(2), 16))
    match = _PROC_V6.fullmatch(text)
    if not match:
        raise ValueError(text)
    return Endpoint(ipaddress.IPv6Address(match.group(1)), int(match.group(2), 16))


def _proc_head(words: Sequence[str]) -> Optional[Tuple[str, ...]]:
    """The words after a service's address, checked: as ipvsadm -Ln words them (scheduler, ops),
    or None for a persistent service (the file gives its timeout in the kernel's ticks, HZ unknown)."""
    if not words or not _PROC_SCHED.fullmatch(words[0]):
        raise ValueError(words)
    rest = list(words[1:])
    ops = rest[:1] == ["ops"]
    if ops:
        rest.pop(0)
    if rest[:1] == ["persistent"]:
        if len(rest) != 3 or not rest[1].isdigit() or not _PROC_HEX8.fullmatch(rest[2]):
            raise ValueError(words)
        return None
    if rest:
        raise ValueError(words)
    return (words[0], "ops") if ops else (words[0],)


def _proc_fwm(tables: ProcTables, entries: list) -> None:
    """Key the firewall-mark services by mark and family: a destination forwarded otherwise than
    by Tunnel has the service's family (the kernel refuses any other); one of a pair of the same
    mark then gives the other's; with neither, the mark is `unsure`."""
    by_mark: Dict[int, list] = {}
    for mark, head, table in entries:
        families = {ep.ip.version for ep, d in table.items() if d.forward != "Tunnel"}
        if len(families) > 1:
            raise ValueError(f"FWM {mark:08X} with destinations of both families")
        by_mark.setdefault(mark, []).append([families.pop() if families else None, head, table])
    for mark, services in by_mark.items():
        known = [s[0] for s in services if s[0] is not None]
        if len(services) > 2 or len(set(known)) != len(known):
            raise ValueError(f"FWM {mark:08X} listed {len(services)} times")
        if len(services) == 2 and len(known) == 1:
            for s in services:
                s[0] = s[0] or (4 if known[0] == 6 else 6)
        for family, head, table in services:
            if family is None:
                tables.unsure.add(str(mark))
                continue
            key = ("FWM", f"{mark} IPv6" if family == 6 else str(mark))
            tables[key] = table
            if head is not None:
                tables.heads[key] = head


def parse_proc(text: str) -> ProcTables:
    """Parse /proc/net/ip_vs into what parse_listing gives for ``ipvsadm -Ln`` (same keys, same
    destinations).  Strict as it is: a line not understood, a title missing, a service twice
    raise IpvsError, so that a garbled read never looks like an empty service."""
    tables = ProcTables()
    lines = text.split("\n")
    if lines[-1:] != [""] or len(lines) < 4 or not lines[0].startswith("IP Virtual Server version ") \
            or tuple(line.strip() for line in lines[1:3]) != PROC_TITLES:
        raise IpvsError(f"unreadable {PROC_IP_VS}: title lines missing or cut short", f"unreadable {PROC_IP_VS}")
    fwm: list = []
    current: Optional[Table] = None
    for line in lines[3:-1]:
        fields = line.split()
        try:
            if fields and fields[0] == "->":
                if current is None or len(fields) != 6 or fields[2] not in PROC_FORWARDS:
                    raise ValueError
                ep = _proc_endpoint(fields[1])
                size = len(current)
                active, inactive = int(fields[4]), int(fields[5])  # %d here, %u in ipvsadm
                current[ep] = Destination(ep, fields[2], int(fields[3]), active % 2 ** 32, inactive % 2 ** 32)
                if len(current) == size:  # a destination twice
                    raise ValueError
            elif fields[:1] == ["FWM"] and len(fields) >= 3 and _PROC_HEX8.fullmatch(fields[1]):
                current = {}
                fwm.append((int(fields[1], 16), _proc_head(fields[2:]), current))
            elif fields[:1] in (["TCP"], ["UDP"], ["SCTP"]) and len(fields) >= 3:
                ep = _proc_endpoint(fields[1])
                key = (fields[0], str(ep))
                if key in tables:
                    raise ValueError
                current = tables[key] = {}
                head = _proc_head(fields[2:])
                if head is not None and (ep.ip.version == 4 or "ops" in head):  # IPv6: ops not printed
                    tables.heads[key] = head
            else:
                raise ValueError
        except ValueError:
            raise IpvsError(f"unreadable {PROC_IP_VS} line {line.strip()!r}", f"unreadable {PROC_IP_VS}") from None
    try:
        _proc_fwm(tables, fwm)
    except ValueError as exc:
        raise IpvsError(f"unreadable {PROC_IP_VS}: {exc}", f"unreadable {PROC_IP_VS}") from None
    return tables


def read_proc(path: str = PROC_IP_VS) -> ProcTables:
    """The whole table in one go: the file read to its end (the kernel hands it out a page at a
    time), then parsed.  OSError when it cannot be read, IpvsError when it is not understood."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)  # the kernel hands out a page (or one service's whole record) a read
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    try:
        text = b"".join(chunks).decode("ascii")
    except UnicodeDecodeError:
        raise IpvsError(f"unreadable {PROC_IP_VS}: not ASCII", f"unreadable {PROC_IP_VS}") from None
    return parse_proc(text)


def system_ipvsadm(name: str) -> bool:
    """Whether `name` (the configured ipvsadm) is the system's own: found in /usr/sbin or /sbin,
    so that it reads the same kernel table /proc/net/ip_vs shows (not a wrapper, not a test's fake)."""
    path = name if os.sep in name else which(name) or which(name, path=os.pathsep.join(SYSTEM_SBIN))
    return bool(path) and os.path.basename(path) == "ipvsadm" and os.path.dirname(os.path.abspath(path)) in SYSTEM_SBIN


###############################################################################
# Probes ######################################################################
###############################################################################
#
# Every real server of every virtual service is probed at once (non-blocking
# sockets under one epoll, a bounded fan-out), each probe under ONE
# total deadline that covers connect, TLS handshake, request, status line,
# headers and the body bytes read.  A probe never raises: it returns a verdict
# with a short reason an operator can act on.  (asyncio did this too, at three
# times the CPU: a loop, tasks and streams cost more than the probes.)

BODY_CAP = 64 * 1024
LINE_CAP = 8 * 1024
HEADER_CAP = 100
INTERIM_CAP = 10  # interim answers (100 Continue, 103 Early Hints, ...) skipped before the final one


@dataclass(frozen=True)
class ProbeTarget:
    """What to probe; equal targets of two virtual services are probed once (targets that differ
    only by their deadline are not equal: each is probed under its own)."""

    check: str
    ip: IPAddress
    port: int
    request: str = ""  # request and host as sent: http's ASCII, encoded at config load (encode_request,
    # encode_host), "" for "/"; tcp's bytes as latin-1 characters, decoded from the escapes (_tcp_target)
    host: str = ""
    expect: Tuple[Tuple[int, int], ...] = ((200, 399),)
    receive: str = ""

    command: Tuple[str, ...] = ()  # check = external: the program and all its words, VIP VPORT RIP RPORT last
    dynamic_weight: bool = False
    service: str = ""  # check = external: the virtual service's name, in the command's environment
    method: str = "GET"  # check = http|https: GET, or HEAD (no body read: receive never applies)
    receive_regex: bool = False  # receive is a regular expression (ldirectord.cf's), searched: receive_pattern
    timeout: Optional[float] = None  # this target's deadline in seconds (its service's); None: the pass's
    keepalive: int = 0  # check = http: checks one connection serves (HTTP/1.1, kept between checks); 0: one each

    @classmethod
    def of(cls, vs: VirtualService, rs: Union[RealServer, IPAddress], port: Optional[int] = None,
           timeout: Optional[float] = None) -> "ProbeTarget":
        """How `rs` is probed for `vs`: with rs's own request and receive when it has them
        (ldirectord's ``real=IP:PORT gate 1 "request" "receive"``), else the service's; under
        the service's timeout, else `timeout` (the config's; None: the pass's).  The older form
        ``of(vs, ip, port)`` probes with the service's request and receive."""
        if isinstance(rs, RealServer):
            ip, port, request, receive = rs.ip, rs.port, rs.request, rs.receive
        else:
            ip, request, receive = rs, None, None
        target = TARGETS[CheckKind(vs.check)](cls, vs, ip, vs.checkport or port,
                                              vs.request if request is None else request,
                                              vs.receive if receive is None else receive)
        deadline = vs.timeout if vs.timeout is not None else timeout
        return target if deadline is None else dataclasses.replace(target, timeout=deadline)

    def __hash__(self) -> int:
        # A few fields (equal targets have them equal), the address as its integer: the dataclass's own
        # hashes all thirteen, ipaddress's as hex, at each of the ~5 lookups a server a pass.  Not
        # cached: one more key in each target's __dict__ costs ~800 bytes, 8 MB at 10,000.
        return hash((self.ip._ip, self.port, self.check, self.timeout))

    @functools.cached_property  # frozen: computed once per config, not per probe per pass
    def socket_address(self) -> Tuple[int, Tuple[str, int]]:
        return (socket.AF_INET6 if self.ip.version == 6 else socket.AF_INET), (str(self.ip), self.port)

    @functools.cached_property
    def http_request(self) -> bytes:
        host = self.host or (f"[{self.ip}]" if self.ip.version == 6 else str(self.ip))
        if self.keepalive:  # HTTP/1.1: the connection stays open after the answer unless the server says close
            return (f"{self.method} {self.request or '/'} HTTP/1.1\r\nHost: {host}\r\n"
                    f"User-Agent: monitor_rs/{__version__}\r\nAccept: */*\r\n\r\n").encode("latin-1")
        return (f"{self.method} {self.request or '/'} HTTP/1.0\r\nHost: {host}\r\n"
                f"User-Agent: monitor_rs/{__version__}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
                ).encode("latin-1")

    @functools.cached_property
    def receive_pattern(self) -> "re.Pattern[bytes]":
        r"""receive_regex: `receive` compiled once per target (a config's targets live until the next
        reload), over bytes as ldirectord's Perl matches them (its config is read as bytes, the
        pattern's UTF-8 is matched byte by byte).  Python's `re`, not Perl's: the same for the
        usual patterns (``.`` stops at a line break, ``$`` also matches before a final one, ``\d``
        is ASCII here); Perl's ``\z`` is Python's ``\Z`` (Perl's ``\Z`` is ``$``); ``[[:alpha:]]``
        (POSIX classes) and ``x{,3}`` mean something else here; ``\K``, ``\Q..\E``, ``\h``,
        ``\p{..}``, ``(?<name>..)`` and recursion do not compile, nor before Python 3.11 atomic groups
        and possessive quantifiers (re.error: the config reader refuses what does not compile; a
        probe that meets one is the monitor's fault, MonitorFault: the pass changes nothing)."""
        return re.compile(self.receive.encode("utf-8"))

    def url(self) -> str:
        """What --check-config says is probed."""
        if self.check == "external":
            return "external:" + shlex.join(self.command) + (" (dynamic_weight)" if self.dynamic_weight else "")
        if self.check == "tcp":
            return _tcp_url(self)
        if self.check == "dns":
            return f"dns://{Endpoint(self.ip, self.port)}/{self.request}"
        if self.check == "ping":  # an address, no port
            return f"ping://[{self.ip}]" if self.ip.version == 6 else f"ping://{self.ip}"
        if self.check in FIXED_VERDICTS:
            return f"none: {self.check} ({'always up' if FIXED_VERDICTS[self.check][0] else 'always down'})"
        method = f"{self.method} " if self.method != "GET" else ""
        url = f"{method}{self.check}://{Endpoint(self.ip, self.port)}{self.request or '/'}"
        kept = f" (a connection kept for {self.keepalive} checks)" if self.keepalive > 1 else ""
        return url + _receive_shown(self, "receive") + kept


def _receive_shown(t: "ProbeTarget", plain: str) -> str:
    """`` expect 'text'`` (`plain` names plain text to find in the answer: http's expect is its
    status) or `` match 're'`` (a regular expression), or ""."""
    if not t.receive:
        return ""
    return f" {'match' if t.receive_regex else plain} {t.receive!r}"


def _http_target(cls, vs: VirtualService, ip: IPAddress, port: int, request: str, receive: str) -> "ProbeTarget":
    """`request` as sent: a server's own (ldirectord.cf's real=...) is encoded as the service's is
    at load (encode_request does nothing more to a path it already encoded), "/" first."""
    request = encode_request(request)
    return cls(vs.check, ip, port, request if request.startswith("/") else "/" + request, vs.host, vs.expect,
               receive, method=vs.httpmethod, receive_regex=vs.receive_regex and bool(receive),
               keepalive=vs.keepalive if vs.check == CheckKind.HTTP.value else 0)


def _tcp_target(cls, vs: VirtualService, ip: IPAddress, port: int, request: str, receive: str) -> "ProbeTarget":
    """The request as its bytes (one latin-1 character each), the receive text as written."""
    return cls(vs.check, ip, port, decode_request(request).decode("latin-1"), receive=receive,
               receive_regex=vs.receive_regex and bool(receive))


def _tcp_url(t: "ProbeTarget") -> str:
    """``tcp://RIP:PORT``, then ``send 'QUIT\\r\\n'`` and ``expect '221'`` (``match '^221 '``) as they apply."""
    sent = f" send '{escape_request(t.request)}'" if t.request else ""
    return f"tcp://{Endpoint(t.ip, t.port)}{sent}" + _receive_shown(t, "expect")


def _dns_target(cls, vs: VirtualService, ip: IPAddress, port: int, request: str, receive: str) -> "ProbeTarget":
    return cls(vs.check, ip, port, request, receive=receive)  # request: "NAME A" or "NAME AAAA"


def _external_target(cls, vs: VirtualService, ip: IPAddress, port: int, request: str, receive: str
                     ) -> "ProbeTarget":
    """The command gets VIP VPORT RIP RPORT after its own words, in ldirectord's order.  A
    firewall-mark service has no VIP: its mark stands there and VPORT is 0, as ldirectord
    passes them.  RPORT is the port checked: checkport when set (ldirectord passes the real
    port even then)."""
    vip = str(vs.fwmark) if vs.vip is None else str(vs.vip)
    return cls(vs.check, ip, port, "", command=(*vs.checkcommand, vip, str(vs.vport), str(ip), str(port)),
               dynamic_weight=vs.dynamic_weight, service=vs.name)


def _ping_target(cls, vs: VirtualService, ip: IPAddress, port: int, request: str, receive: str) -> "ProbeTarget":
    return cls(vs.check, ip, 0, "")  # the address only: one echo per address, whatever its services and ports


def _fixed_target(cls, vs: VirtualService, ip: IPAddress, port: int, request: str, receive: str) -> "ProbeTarget":
    return cls(vs.check, ip, port)  # check = on|off: nothing is sent, nothing read


# What each check kind needs to know of its server: only what it uses, so that
# equal targets of two virtual services are probed once.  Each gets the server's
# request and receive: its own (ldirectord.cf's real=...) or its service's.
TARGETS = {CheckKind.HTTP: _http_target, CheckKind.HTTPS: _http_target, CheckKind.TCP: _tcp_target,
           CheckKind.DNS: _dns_target, CheckKind.EXTERNAL: _external_target, CheckKind.PING: _ping_target,
           CheckKind.ON: _fixed_target, CheckKind.OFF: _fixed_target}


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str
    latency: float  # seconds
    weight: Optional[int] = None  # a weight the check asks for (check = external, dynamic_weight)


def _status_ok(code: int, expect: Sequence[Tuple[int, int]]) -> bool:
    return any(low <= code <= high for low, high in expect)


STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)? ([0-9]{3})[ \r\n]")
CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(?:;[^\r\n]*)?\r?\n")  # size, extensions (ignored), end
STOP_POLL = 0.1  # how often a wave looks at the stop request
GRACE_STEPS = 3  # event turns at the deadline, for answers that arrived but were not read yet
CONNECT_ERRORS = {errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset", errno.EPIPE: "reset",
                  errno.EHOSTUNREACH: "host unreachable", errno.ENETUNREACH: "network unreachable",
                  errno.ETIMEDOUT: "timeout (connect)"}
_tls_context: Optional[ssl.SSLContext] = None


def tls_context() -> ssl.SSLContext:
    """One client context for every https probe: health, not identity, so no certificate check.
    (ssl is imported here, by the first https probe: a monitor without one never loads it.)"""
    global _tls_context
    if _tls_context is None:
        import ssl
        _tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _tls_context.check_hostname = False
        _tls_context.verify_mode = ssl.CERT_NONE
    return _tls_context


def _tls_error(exc: BaseException, name: str) -> bool:
    """Whether `exc` is ssl's `name` (ssl is loaded by then: only a TLS socket raises one)."""
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(exc, getattr(ssl, name))


class _Failed(Exception):
    """The answer is wrong in a way that ends the probe: the message is the reason."""


class MonitorFault(Exception):
    """The monitor cannot probe (out of descriptors, memory or processes; a check program
    gone; a bug of ours before any server spoke): not the real servers' fault.  It ends
    the wave, and the pass changes nothing and says why."""


OUR_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EAGAIN, errno.EADDRNOTAVAIL}


class WatchClock:
    """The time the monitor spent watching its probes: its waits in poll(), up
    to what was asked of them, less the time it was runnable but not running
    (the kernel's run_delay in schedstat), plus the CPU time it spent.

    So a monitor that was stopped (SIGSTOP), descheduled or starved by busy
    loops does not charge that time to the real servers; a monitor that runs
    fine sees this clock move with the wall clock, and a real outage is acted
    on in the usual time.  Its own work counts (a thousand connects cost
    milliseconds), so a server that keeps it busy (a flood) still meets its
    deadline."""

    SCHEDSTAT = "/proc/thread-self/schedstat"

    def __init__(self):
        self.waited = 0.0
        self._cpu = time.thread_time()
        try:
            self._fd: Optional[int] = os.open(self.SCHEDSTAT, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None  # no schedstat: stops and busy time are still not charged

    def _run_delay(self) -> float:
        if self._fd is None:
            return 0.0
        try:
            return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    def poll(self, poller: select.epoll, wait: float) -> list:
        """poller.poll(wait), counting what of it was spent watching."""
        delay, start = self._run_delay(), time.monotonic()
        events = poller.poll(wait)
        spent = time.monotonic() - start - (self._run_delay() - delay)
        self.waited += min(max(spent, 0.0), wait)
        return events

    @property
    def watched(self) -> float:
        return self.waited + time.thread_time() - self._cpu

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Check:
    """One probe in flight, of one kind: the engine (Wave) knows no protocol.

    The wave calls `start`, then `ready` for each readiness event of the
    descriptors the check asked it to watch (`wave.watch`), until the check
    sets `verdict` (healthy or not, and why); then `close`.  `stage` names
    where a timeout caught it.  Nothing a real server does may raise out of a
    check: the wave turns any exception into a failed verdict."""

    KIND = ""
    LIMIT = 0  # how many of this kind may be in flight at once (0: no limit but the wave's)
    __slots__ = ("target", "wave", "stage", "verdict", "began", "latency", "timeout")

    def __init__(self, target: "ProbeTarget", wave: Optional["Wave"]):
        self.target, self.wave = target, wave
        self.stage = "connect"
        self.verdict: Optional[Tuple[bool, str]] = None
        self.began = 0.0  # on the wave's watch clock
        self.latency = 0.0
        # its deadline, in watched seconds from `began`: its target's (its service's), else the wave's
        self.timeout = target.timeout if target.timeout is not None else (wave.timeout if wave else 0.0)

    def start(self) -> None:
        raise NotImplementedError

    def ready(self, fd: int, events: int) -> None:
        raise NotImplementedError

    def failed(self, exc: Exception) -> Tuple[bool, str]:
        """The verdict for an exception raised while it ran."""
        return False, f"probe error: {type(exc).__name__}"

    def close(self) -> None:
        """Release everything (descriptors, processes): on a verdict, a timeout or a stop."""


CHECKERS: Dict[str, type] = {}  # check kind -> its Check class


def checker(cls: type) -> type:
    CHECKERS[cls.KIND] = cls
    return cls


class Wave:
    """Probes started together: one epoll over their descriptors, one watch
    clock, and ONE deadline per probe (its target's timeout, else the wave's
    `timeout`, of watched time from its start), without a timer each: the
    probes in flight are kept in one lane per timeout, each lane in start order,
    so the first of each lane is the next of it to time out.  At a deadline,
    GRACE_STEPS event turns read what already arrived before anyone is blamed."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.poller = select.epoll()
        self.clock = WatchClock()
        self.by_descriptor: Dict[int, Check] = {}
        self.shared: Dict[object, object] = {}  # what the checks of a kind share in this wave (an ICMP socket), by key
        self.settled: List[Check] = []  # checks given a verdict through a shared descriptor: finished next

    def watch(self, check: Check, fd: int, events: int) -> None:
        self.poller.register(fd, events)
        self.by_descriptor[fd] = check

    def change(self, fd: int, events: int) -> None:
        self.poller.modify(fd, events)

    def forget(self, fd: int) -> None:
        """Before its descriptor is closed (closing also leaves the epoll set, but not our map)."""
        self.by_descriptor.pop(fd, None)

    def release(self, fd: int) -> None:
        """A descriptor its check keeps after the wave (a connection kept alive): out of the epoll
        set too, where a server closing it meanwhile would wake every turn."""
        self.by_descriptor.pop(fd, None)
        self.poller.unregister(fd)

    def _call(self, check: Check, method, *args) -> None:
        try:
            method(*args)
        except MonitorFault:
            raise
        except Exception as exc:
            starting = method == getattr(check, "start", None)
            if starting and (not isinstance(exc, OSError) or exc.errno in OUR_ERRNOS):
                # Before any server said anything: the monitor's own trouble, not a failed server.
                why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
                raise MonitorFault(f"{check.KIND} probe of {check.target.ip}: {why}")
            check.verdict = check.failed(exc)  # whatever a server manages to provoke, it is a failed probe

    def run(self, targets: Sequence["ProbeTarget"], stop,
            arrived: Optional[Callable[[List[Tuple[int, ProbeResult]]], None]] = None,
            more: Optional[Callable[[], Tuple[Sequence["ProbeTarget"], Optional[float]]]] = None
            ) -> Optional[List[ProbeResult]]:
        """A verdict for each target, or None when `stop()` turned true meanwhile.

        `arrived`, if given, is handed the verdicts as they come: once per event turn, with
        those finished in that turn (index in `targets`, result), never one call per result,
        so a refused server can be acted on while slow ones are still answering.
        `more`, if given, is asked at every turn for targets that fell due since, which join
        the wave (their indexes follow the others'), and when to ask again (monotonic; None:
        no more; LEAVE_IN_FLIGHT: no more, and the wave ends now, what is in flight closed and
        given None, no verdict): the wave runs until then even with nothing in flight."""
        started = time.monotonic()
        fresh: List[Check] = []  # finished since `arrived` was last called
        checks = [CHECKERS[t.check](t, self) for t in targets]
        waiting = collections.deque(checks)
        running: Dict[Check, None] = {}
        lanes: Dict[float, Dict[Check, None]] = {}  # by timeout, each in start order: its first times out first
        in_flight: Dict[type, int] = collections.Counter()
        clock = self.clock

        since: Dict[Check, float] = {}  # when each began (monotonic): a check that joined late is timed from then

        def finish(check: Check, latency: Optional[float] = None) -> None:
            began = since.pop(check, started)
            check.latency = time.monotonic() - began if latency is None else latency
            check.close()
            fresh.append(check)
            if running.pop(check, 0) is None:
                lane = lanes[check.timeout]
                del lane[check]
                if not lane:
                    del lanes[check.timeout]
            in_flight[type(check)] -= 1

        def settle() -> None:
            """Finish the checks a shared descriptor's reader gave a verdict (it watches for many)."""
            while self.settled:
                check = self.settled.pop()
                if check in running:
                    finish(check)

        def launch() -> None:
            held, now = [], clock.watched
            while waiting:
                check = waiting.popleft()
                kind = type(check)
                if kind.LIMIT and in_flight[kind] >= kind.LIMIT:
                    held.append(check)
                    continue
                in_flight[kind] += 1
                check.began = now
                since[check] = time.monotonic()
                running[check] = None
                lanes.setdefault(check.timeout, {})[check] = None
                self._call(check, check.start)
                if check.verdict is not None:
                    finish(check)
            waiting.extend(held)
            settle()

        order = {check: i for i, check in enumerate(checks)}
        asking: Optional[float] = None if more is None else 0.0
        abandoned: Optional[set] = None  # the checks left in flight (LEAVE_IN_FLIGHT)

        def admit() -> None:
            nonlocal asking, abandoned
            if asking is None:
                return
            joining, asking = more()
            if asking == LEAVE_IN_FLIGHT:
                asking, abandoned = None, set(running) | set(waiting)
                return
            for target in joining:
                check = CHECKERS[target.check](target, self)
                order[check] = len(checks)
                checks.append(check)
                waiting.append(check)
            if joining:
                launch()

        def hand_over() -> None:
            if fresh and arrived is not None and not stop():
                batch = [(order[c], _result_of(c)) for c in fresh]
                fresh.clear()
                arrived(batch)
            fresh.clear()

        try:
            launch()
            hand_over()
            grace = GRACE_STEPS
            admit()
            while (running or asking is not None) and abandoned is None:
                if stop():
                    return None
                left = min((next(iter(lane)).began + timeout for timeout, lane in lanes.items()),
                           default=math.inf) - clock.watched
                if left <= 0:
                    if not grace:  # answers that arrived were read: the rest is late
                        for timeout, lane in list(lanes.items()):
                            for check in list(lane):
                                if check.began + timeout - clock.watched > 0:
                                    break
                                finish(check, timeout)
                        grace = GRACE_STEPS
                        launch()
                        hand_over()
                        continue
                    grace -= 1
                wait = min(max(left, 0.0), STOP_POLL)
                if asking is not None:
                    wait = min(wait, max(asking - time.monotonic(), 0.0))
                for descriptor, events in clock.poll(self.poller, wait):
                    check = self.by_descriptor.get(descriptor)
                    if check is not None and check.verdict is None:
                        self._call(check, check.ready, descriptor, events)
                        if check.verdict is not None:
                            finish(check)
                settle()
                if len(running) < len(checks) and waiting:
                    launch()
                hand_over()
                admit()
                hand_over()
        finally:
            for check in running:
                check.close()
            self.clock.close()
            self.poller.close()
        return [None if abandoned and c in abandoned else _result_of(c) for c in checks]


LEAVE_IN_FLIGHT = -math.inf  # what `more` returns to end a wave now, leaving what is in flight (Wave.run)


def _result_of(c: Check) -> ProbeResult:
    return (ProbeResult(c.verdict[0], c.verdict[1], c.latency, *c.verdict[2:])  # (ok, reason[, weight])
            if c.verdict else ProbeResult(False, f"timeout ({c.stage})", c.timeout))


###############################################################################
# The check kinds: each a small state machine plugged into the wave ##########


class _StreamCheck(Check):
    """A TCP connection (TLS on it for https): connect, send `request_bytes`, read
    until `answer` has a verdict.  The kinds differ in what they send and judge."""

    TLS = False
    __slots__ = ("sock", "connected", "events", "out", "buf")

    def __init__(self, target: "ProbeTarget", wave: Optional["Wave"]):
        super().__init__(target, wave)
        self.sock: Optional[socket.socket] = None
        self.connected, self.events = False, 0
        self.out, self.buf = b"", bytearray()

    def start(self) -> None:
        family, address = self.target.socket_address
        self.sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        err = self.sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, os.strerror(err))
        self.wave.watch(self, self.sock.fileno(), select.EPOLLOUT)
        self.events = select.EPOLLOUT

    def _want(self, events: int) -> None:
        if events != self.events:
            self.wave.change(self.sock.fileno(), events)
            self.events = events

    def failed(self, exc: Exception) -> Tuple[bool, str]:
        if self.TLS and _tls_error(exc, "SSLError"):
            return False, f"TLS: {exc.reason or exc}"
        if isinstance(exc, OSError):
            return False, CONNECT_ERRORS.get(exc.errno, exc.strerror or str(exc))
        return super().failed(exc)

    def ready(self, fd: int, events: int) -> None:
        """The socket is ready: go as far as it lets us."""
        try:
            self.verdict = self._advance(events)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            if self.TLS and _tls_error(exc, "SSLWantReadError"):
                self._want(select.EPOLLIN)
            elif self.TLS and _tls_error(exc, "SSLWantWriteError"):
                self._want(select.EPOLLOUT)
            else:
                raise

    def connected_verdict(self) -> Optional[Tuple[bool, str]]:
        """What a bare connect tells (tcp without a request: healthy), or None to go on."""
        return None

    def request_bytes(self) -> bytes:
        return b""

    def answer(self, eof: bool) -> Optional[Tuple[bool, str]]:
        raise NotImplementedError

    def _advance(self, events: int) -> Optional[Tuple[bool, str]]:
        if self.stage == "connect":
            if not self.connected:
                # writable without an error or a hangup: connected (the kernel sets both when a connect
                # fails: refused, reset, timed out), so the error is asked for only then (a syscall less)
                err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if events & (
                    select.EPOLLERR | select.EPOLLHUP) or not events & select.EPOLLOUT else 0
                if err:
                    raise OSError(err, os.strerror(err))
                self.connected = True
                verdict = self.connected_verdict()
                if verdict is not None:
                    return verdict
                if self.TLS:  # the handshake is still the connect stage (same descriptor)
                    self.sock = tls_context().wrap_socket(self.sock, server_hostname=self.target.host or None,
                                                          do_handshake_on_connect=False)
            if self.TLS:  # wrapped above, on the first turn
                self.sock.do_handshake()
            self.out = self.request_bytes()
            self.stage = self.FIRST_READ
            if not self.out:
                self._want(select.EPOLLIN)
                return None
        if self.out:
            self.out = self.out[self.sock.send(self.out):]
            self._want(select.EPOLLOUT if self.out else select.EPOLLIN)
            return None
        data = self.sock.recv(65536)
        self.buf += data
        while data and self.TLS and self.sock.pending():
            self.buf += self.sock.recv(65536)  # decrypted bytes epoll cannot see
        return self.answer(eof=not data)

    FIRST_READ = "answer"

    def close(self) -> None:
        if self.sock is not None:
            if self.wave is not None:
                self.wave.forget(self.sock.fileno())
            self.sock.close()


@checker
class TcpCheck(_StreamCheck):
    """check = tcp: a connect (ldirectord's checktype=connect, keepalived's TCP_CHECK); with
    `request` and/or `receive`, a banner or line protocol (ldirectord's simpletcp, keepalived's
    SMTP_CHECK): send the request, then read until the answer holds `receive` (found), the server
    closes, BODY_CAP bytes came without it, or the deadline.  A request without receive is healthy
    on any answer, as simpletcp is (a server that takes it and says nothing fails: `closed without
    answering` or a timeout); to check only that the port takes connections, set neither.  The
    write side is not shut after the request (some servers drop their answer on a half-close).

    With receive_regex, `receive` is searched in each line of the answer as it comes whole (and
    in what ends it without a line break), as simpletcp matches line by line: ``^`` is a
    line's start, ``$`` its end (before its line break)."""

    KIND = "tcp"
    __slots__ = ("want", "searched", "scanned")

    def __init__(self, target: "ProbeTarget", wave: Optional["Wave"]):
        super().__init__(target, wave)
        self.want = target.receive.encode("utf-8")
        self.searched = 0  # what was read up to here holds no `receive` (it may straddle the edge)
        self.scanned = 0  # receive_regex: the line from `searched` has no line break up to here

    def start(self) -> None:
        if self.target.receive_regex:  # compiled here, once per target: one that does not is our fault
            self.target.receive_pattern
        super().start()

    def connected_verdict(self) -> Optional[Tuple[bool, str]]:
        if self.target.request or self.want:
            return None
        return True, "connected"

    def request_bytes(self) -> bytes:
        return self.target.request.encode("latin-1")

    def answer(self, eof: bool) -> Optional[Tuple[bool, str]]:
        buf, want = self.buf, self.want
        if not want:
            if buf:
                return True, "answered"
            return (False, "closed without answering") if eof else None
        if self.target.receive_regex:
            return self._match(eof)
        if buf.find(want, max(0, self.searched - len(want) + 1), BODY_CAP) >= 0:
            return True, f"received {_shown(self.target.receive)}"
        self.searched = len(buf)
        if len(buf) >= BODY_CAP:
            return False, "receive text not found"
        if eof:
            return False, f"closed before {_shown(self.target.receive)}" if buf else "closed without answering"
        return None

    def _match(self, eof: bool) -> Optional[Tuple[bool, str]]:
        """receive_regex: search each whole line not searched yet (`searched`: where the next starts;
        `scanned`: how far it is known to have no line break, so a line dribbled a byte at a time is
        not scanned again and again); at the end of the answer (closed, or BODY_CAP read) what is
        left too."""
        buf, pattern, at = self.buf, self.target.receive_pattern, self.searched
        limit = min(len(buf), BODY_CAP)
        done = eof or len(buf) >= BODY_CAP
        while at < limit:
            end = buf.find(b"\n", max(at, self.scanned), limit)
            if end < 0 and not done:
                self.scanned = limit
                break
            end = limit if end < 0 else end + 1
            if pattern.search(bytes(buf[at:end])):  # the line alone: ^ at its start, no look behind it
                return True, f"matched {_shown(self.target.receive)}"
            at = end
        self.searched = at
        if not done:
            return None
        if not buf:
            return False, "closed without answering"
        return False, "receive regex not matched" if len(buf) >= BODY_CAP else \
            f"closed without a match of {_shown(self.target.receive)}"


def _shown(text: str, limit: int = 40) -> str:
    """A text in a reason: quoted, cut short."""
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


KEEPALIVE_IDLE = 60.0  # s: a kept connection idle longer is closed, not used (nginx's keepalive_timeout is 75 s)
STALE_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}


class KeptConnections:
    """keepalive = N: each target's HTTP connection between its checks, with how many checks it
    served; in the order they were put back, so that the oldest are closed first.

    A kept connection saves the real server and the director a TCP handshake and teardown a
    check, and still proves the server answers; what it does not prove is that a NEW connection
    would be taken, which is why it serves N checks at most: a listener gone while its
    connections live (a firewall refusing new ones) is seen within N checks.  A server that
    dies or stops closes its connections: that is seen at the next check."""

    def __init__(self):
        self.idle: Dict["ProbeTarget", Tuple[socket.socket, int, float]] = {}

    def take(self, target: "ProbeTarget") -> Optional[Tuple[socket.socket, int]]:
        """The target's connection and the checks it served, if it is still open; else None."""
        entry = self.idle.pop(target, None)
        if entry is None:
            return None
        sock, used, parked = entry
        if time.monotonic() - parked <= KEEPALIVE_IDLE:
            try:  # b"": the server closed it meanwhile (its idle timeout, a restart); bytes: unasked for
                sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                return sock, used  # silent: open
            except OSError:
                pass
        sock.close()
        return None

    def put(self, target: "ProbeTarget", sock: socket.socket, used: int) -> None:
        now = time.monotonic()
        old = self.idle.pop(target, None)
        if old is not None:
            old[0].close()
        self.idle[target] = (sock, used, now)
        while self.idle:  # those idle too long go, oldest first
            first = next(iter(self.idle))
            if now - self.idle[first][2] <= KEEPALIVE_IDLE:
                break
            self.idle.pop(first)[0].close()

    def keep_only(self, targets: AbstractSet["ProbeTarget"]) -> None:
        """A new config: the connections of targets it no longer probes are closed now."""
        for target in [t for t in self.idle if t not in targets]:
            self.idle.pop(target)[0].close()


@checker
class HttpCheck(_StreamCheck):
    """check = http: GET `request`; healthy on a status in `expect` and, if set,
    `receive` in the body (ldirectord's negotiate http, keepalived's HTTP_GET).

    httpmethod = HEAD: a HEAD request, judged on its status alone: its answer has no body,
    none is read and `receive` never applies (the config refuses receive with HEAD).
    receive_regex: `receive` is searched (a regular expression) in the whole body once it
    has come (its end, or BODY_CAP of it), as ldirectord matches LWP's content: a pattern
    such as ``ok$`` must not match the body's first half."""

    KIND = "http"
    FIRST_READ = "status line"
    KEPT = KeptConnections()  # keepalive = N: the connections between checks
    __slots__ = ("code", "length", "headers", "interim", "coding", "chunk_left", "body", "used", "reusable")

    def __init__(self, target: "ProbeTarget", wave: Optional["Wave"]):
        super().__init__(target, wave)
        self.code, self.length, self.headers, self.interim = 0, None, 0, 0
        self.coding = ""  # Transfer-Encoding: "" none; "close" read to the end; else where a chunked body stands
        self.chunk_left = 0  # bytes of the current chunk not read yet
        self.body: Optional[bytearray] = None  # a chunked body, decoded
        self.used: Optional[int] = None  # keepalive: the checks the connection served before; None: a new one
        self.reusable = False  # keepalive: the server keeps the connection open (HTTP/1.1, no Connection: close)

    def start(self) -> None:
        if self.target.receive_regex:  # compiled here, once per target: one that does not is our fault
            self.target.receive_pattern
        kept = self.KEPT.take(self.target) if self.target.keepalive else None
        if kept is None:
            return super().start()
        self.sock, self.used = kept
        self.connected, self.stage, self.out = True, self.FIRST_READ, self.target.http_request
        try:  # at once: the connection is open and idle, its send buffer empty
            self.out = self.out[self.sock.send(self.out):]
        except OSError:
            return self._anew()
        self.events = select.EPOLLOUT if self.out else select.EPOLLIN
        self.wave.watch(self, self.sock.fileno(), self.events)

    def _anew(self) -> None:
        """The kept connection was closed under the check (the server's idle timeout, at this very
        moment): the check goes on over a new one, under the same deadline, and is judged on it."""
        _StreamCheck.close(self)
        self.sock, self.used, self.connected, self.stage, self.out = None, None, False, "connect", b""
        self.buf.clear()
        _StreamCheck.start(self)

    def ready(self, fd: int, events: int) -> None:
        try:
            super().ready(fd, events)
        except OSError as exc:
            if self.used is None or exc.errno not in STALE_ERRNOS or not self._unanswered():
                raise
            self._anew()

    def _unanswered(self) -> bool:
        return self.stage == self.FIRST_READ and not self.buf and not self.interim

    def close(self) -> None:
        """keepalive: a connection that served a healthy answer, whole, is kept for the next check,
        unless it has served `keepalive` checks (a new one then proves the server still takes them)."""
        used = (self.used or 0) + 1
        if self.reusable and used < self.target.keepalive and self.sock is not None and self.verdict and \
                self.verdict[0] and self.wave is not None:
            self.wave.release(self.sock.fileno())
            self.KEPT.put(self.target, self.sock, used)
            self.sock = None
            return
        super().close()

    def request_bytes(self) -> bytes:
        return self.target.http_request

    def answer(self, eof: bool) -> Optional[Tuple[bool, str]]:
        """Status line, headers (each line capped), then the body up to BODY_CAP if `receive` is set.

        Interim answers (1xx but 101) come before the final one and are skipped; a chunked body is
        decoded (up to BODY_CAP decoded bytes) before `receive` is looked for in it."""
        try:
            return self._answer(eof)
        except _Failed as failed:
            return False, str(failed)

    def _answer(self, eof: bool) -> Optional[Tuple[bool, str]]:
        t, buf = self.target, self.buf
        if eof and self.used is not None and self._unanswered():
            self._anew()  # the kept connection closed before it answered: a new one
            return None
        while self.stage != "body":
            if self.stage == "status line" and not b"HTTP/".startswith(bytes(buf[:5])):
                return False, "not an HTTP answer"  # known at once: no need to wait for a newline
            line = self._line()
            if line is None:
                if not eof:
                    return None
                if self.stage == "headers":
                    return False, "closed in the headers"
                if not buf:
                    return False, "closed without answering"
                line = bytes(buf)  # a last status line without its newline is judged as it is
                buf.clear()
            if self.stage == "status line":
                match = STATUS_LINE.match(line)
                if not match:
                    return False, "not an HTTP answer"
                self.code, self.stage = int(match.group(1)), "headers"
                # keepalive: an HTTP/1.1 server keeps the connection unless it says close (an HTTP/1.0 one: not kept)
                self.reusable = bool(t.keepalive) and line.startswith(b"HTTP/1.1")
            elif line in (b"\r\n", b"\n"):
                if 100 <= self.code <= 199 and self.code != 101:  # interim: the final answer follows
                    self.interim += 1
                    if self.interim > INTERIM_CAP:
                        return False, f"more than {INTERIM_CAP} interim (1xx) answers"
                    self.stage, self.length, self.headers, self.coding = "status line", None, 0, ""
                    continue
                if not _status_ok(self.code, t.expect):
                    return False, f"HTTP {self.code}"
                if not t.receive or t.method == "HEAD":  # an answer to HEAD has no body
                    if self.reusable:
                        self._whole(t.method == "HEAD" or self.code in (204, 304))
                    return True, f"HTTP {self.code}"
                self.stage = "body"
                if self.coding:  # Transfer-Encoding overrides Content-Length
                    self.length, self.reusable = None, False  # (a chunked answer's end: not kept)
                if self.coding == "size":
                    self.body = bytearray()
            else:
                self.headers += 1
                if self.headers > HEADER_CAP:
                    return False, f"more than {HEADER_CAP} header lines"
                name, _, value = line.partition(b":")
                name, value = name.strip().lower(), value.strip()
                if name == b"content-length" and value.isdigit():
                    self.length = int(value)
                elif name == b"connection" and b"close" in value.lower().replace(b" ", b"").split(b","):
                    self.reusable = False
                elif name == b"transfer-encoding":  # the last coding says how the body ends
                    self.coding = "size" if value.rpartition(b",")[2].strip().lower() == b"chunked" else "close"
        if t.receive_regex:
            return self._match(eof)
        receive = t.receive.encode("utf-8")
        if self.body is None:
            limit = BODY_CAP if self.length is None else min(self.length, BODY_CAP)
            if receive in buf[:limit]:
                if self.reusable:
                    self._whole(False)
                return True, f"HTTP {self.code}"
            if len(buf) >= limit or eof:
                return False, "receive text not found"
            return None
        ended = self._dechunk()
        if receive in self.body:
            return True, f"HTTP {self.code}"
        if ended or len(self.body) >= BODY_CAP or eof:
            return False, "receive text not found"
        return None

    def _match(self, eof: bool) -> Optional[Tuple[bool, str]]:
        """receive_regex: the body searched once, whole (up to BODY_CAP)."""
        if self.body is None:
            limit = BODY_CAP if self.length is None else min(self.length, BODY_CAP)
            if len(self.buf) < limit and not eof:
                return None
            found = self.target.receive_pattern.search(self.buf, 0, limit)  # endpos: as if the body ended there
            if found and self.reusable:
                self._whole(False)
        else:
            if not (self._dechunk() or len(self.body) >= BODY_CAP or eof):
                return None
            found = self.target.receive_pattern.search(self.body)
        return (True, f"HTTP {self.code}") if found else (False, "receive regex not matched")

    def _whole(self, bodiless: bool) -> None:
        """keepalive: the connection is kept only if exactly the whole answer was read (a body of
        Content-Length bytes, or none): what is left would be read as the next check's answer."""
        if bodiless:
            self.reusable = not self.buf
        else:
            self.reusable = not self.coding and self.length is not None and len(self.buf) == self.length

    def _line(self) -> Optional[bytes]:
        """The next whole line of what was read (None until it has come), at most LINE_CAP long."""
        end = self.buf.find(b"\n", 0, LINE_CAP)
        if end < 0:
            if len(self.buf) >= LINE_CAP:
                raise _Failed(f"line too long in the {self.stage}")
            return None
        line = bytes(self.buf[:end + 1])
        del self.buf[:end + 1]
        return line

    def _dechunk(self) -> bool:
        """Move a chunked body's data from what was read to `body`, up to BODY_CAP; True once the
        last chunk has come (its trailer is not needed)."""
        buf, body = self.buf, self.body
        while len(body) < BODY_CAP:
            if self.coding == "data":
                take = min(self.chunk_left, len(buf), BODY_CAP - len(body))
                body += buf[:take]
                del buf[:take]
                self.chunk_left -= take
                if self.chunk_left:
                    return False
                self.coding = "data end"
            line = self._line()
            if line is None:
                return False
            if self.coding == "data end":  # the line break after a chunk's data
                if line not in (b"\r\n", b"\n"):
                    raise _Failed("bad chunked encoding")
                self.coding = "size"
                continue
            match = CHUNK_SIZE.fullmatch(line)
            if not match:
                raise _Failed("bad chunked encoding")
            self.chunk_left = int(match.group(1), 16)
            if not self.chunk_left:
                return True
            self.coding = "data"
        return False



@checker
class HttpsCheck(HttpCheck):
    """check = https: the same over TLS, without certificate verification (health, not identity)."""

    KIND = "https"
    TLS = True
    __slots__ = ()


# DNS over UDP (RFC 1035), built and read here: a query of one question, and of
# its answer the header, the question and the answer section.  Whatever comes
# back is read within its bounds: a datagram that is not the answer to our
# query (ID, question) is ignored; one that is, but cannot be read, fails.

DNS_HEADER = struct.Struct("!HHHHHH")  # ID, flags, questions, answers, authority and additional records
DNS_RECORD = struct.Struct("!HHIH")  # type, class, TTL, data length (after the owner name)
DNS_CLASS_IN = 1
DNS_QR, DNS_TC, DNS_RD = 0x8000, 0x0200, 0x0100  # flags: a response; truncated; recursion desired
DNS_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
DNS_POINTERS = 127  # compression pointers followed in one name at most (a name has 127 labels at most)
DNS_READS = 64  # datagrams read per readiness event at most: a flood cannot hold the wave
DNS_STRAYS = 256  # datagrams not the answer read at most: the time spent reading them is not on the
                  # watch clock, so a flood would stretch the deadline without an end of its own


class DnsAnswer(NamedTuple):
    """What an answer to our query says."""

    rcode: int
    truncated: bool  # TC: the server left records out (we judge what is there)
    addresses: Tuple[IPAddress, ...]  # the records of the type asked for (class IN), in order
    broken: str = ""  # why the answer section could not be read to its end, "" when it could


def dns_query(qid: int, name: str, qtype: int) -> bytes:
    """A standard query (recursion desired) for `name` (ASCII, as dns_name gives it), class IN."""
    labels = b"".join(bytes([len(label)]) + label for label in name.encode("ascii").split(b".") if label)
    return DNS_HEADER.pack(qid, DNS_RD, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, DNS_CLASS_IN)


def _dns_name(packet: bytes, at: int) -> Tuple[bytes, int]:
    """The name at `at` in wire form (length-prefixed labels, lower case, pointers followed) and
    where what follows it starts.  A pointer must go back before every byte of the name read so
    far, so no pointer loop can be followed; anything else wrong raises _Failed."""
    name, end, lowest, hops = bytearray(), None, at, 0
    while True:
        if at >= len(packet):
            raise _Failed("a name runs past the end")
        size = packet[at]
        if size >= 0xC0:
            if at + 1 >= len(packet):
                raise _Failed("a name runs past the end")
            target = (size & 0x3F) << 8 | packet[at + 1]
            hops += 1
            if target >= lowest:
                raise _Failed("a compression pointer loops")
            if hops > DNS_POINTERS:
                raise _Failed("too many compression pointers")
            if end is None:
                end = at + 2
            at = lowest = target
            continue
        if size & 0xC0:
            raise _Failed(f"label type {size >> 6:#x}")
        name += packet[at:at + size + 1].lower()
        if len(name) > 255:
            raise _Failed("a name over 255 bytes")
        if at + size >= len(packet):
            raise _Failed("a name runs past the end")
        at += size + 1
        if not size:
            return bytes(name), at if end is None else end


def dns_answer(packet: bytes, query: bytes) -> Optional[DnsAnswer]:
    """What `packet` answers to `query`, or None when it is not the answer to it (another ID, not a
    response, another question, too short to tell): such a datagram is ignored, never a verdict."""
    if len(packet) < DNS_HEADER.size:
        return None
    qid, flags, questions, answers, _, _ = DNS_HEADER.unpack_from(packet)
    if qid != DNS_HEADER.unpack_from(query)[0] or not flags & DNS_QR or flags & 0x7800 or questions != 1:
        return None  # 0x7800: the opcode, a standard query's is 0
    try:
        name, at = _dns_name(packet, DNS_HEADER.size)
    except _Failed:
        return None
    asked = query[DNS_HEADER.size:]
    if name != asked[:-4].lower() or packet[at:at + 4] != asked[-4:]:
        return None
    qtype, truncated = struct.unpack_from("!H", asked, len(asked) - 4)[0], bool(flags & DNS_TC)
    size, addresses = (16 if qtype == DNS_TYPES["AAAA"] else 4), []
    at += 4
    try:
        for _ in range(answers):
            _, at = _dns_name(packet, at)
            if at + DNS_RECORD.size > len(packet):
                raise _Failed("a record runs past the end")
            rtype, rclass, _, length = DNS_RECORD.unpack_from(packet, at)
            at += DNS_RECORD.size
            if at + length > len(packet):
                raise _Failed("a record runs past the end")
            if rtype == qtype and rclass == DNS_CLASS_IN:
                if length != size:
                    raise _Failed(f"an address record of {length} bytes")
                addresses.append(ipaddress.ip_address(packet[at:at + length]))
            at += length
    except _Failed as exc:
        if not truncated:  # a truncated answer may end in the middle of a record: what came is judged
            return DnsAnswer(flags & 0xF, truncated, tuple(addresses), str(exc))
    return DnsAnswer(flags & 0xF, truncated, tuple(addresses))


def dns_verdict(answer: DnsAnswer, qtype: str, want: Optional[IPAddress]) -> Tuple[bool, str]:
    """Healthy on NOERROR with a record of the type asked for (and `want` among them, when set)."""
    cut = " (truncated)" if answer.truncated else ""
    if answer.broken:
        return False, f"malformed answer: {answer.broken}"
    if answer.rcode:
        return False, DNS_RCODES.get(answer.rcode, f"rcode {answer.rcode}")
    if not answer.addresses:
        return False, f"no {qtype} record{cut}"
    if want is not None and want not in answer.addresses:
        return False, f"address {want} not in the answer{cut}"
    count = len(answer.addresses)
    return True, f"NOERROR, {count} answer{'' if count == 1 else 's'}"


@checker
class DnsCheck(Check):
    """check = dns: ask `request` ("NAME A" or "NAME AAAA") over UDP; healthy on NOERROR with a record
    of that type and, if `receive` is set, that address among them (ldirectord's service=dns,
    keepalived's DNS_CHECK).  The socket is connected: the kernel drops datagrams from any other
    address or port, and an ICMP port unreachable reads as "refused"."""

    KIND = "dns"
    __slots__ = ("sock", "query", "qtype", "want", "strays")

    def __init__(self, target: "ProbeTarget", wave: Optional["Wave"]):
        super().__init__(target, wave)
        self.sock: Optional[socket.socket] = None
        self.query, self.qtype, self.want, self.strays = b"", "", None, 0

    def start(self) -> None:
        name, self.qtype = self.target.request.split(" ")
        self.query = dns_query(int.from_bytes(os.urandom(2), "big"), name, DNS_TYPES[self.qtype])  # a new ID each
        self.want = ipaddress.ip_address(self.target.receive) if self.target.receive else None
        family, address = self.target.socket_address
        self.sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self.sock.connect(address)  # UDP: no packet, only the address the kernel filters on
        self.wave.watch(self, self.sock.fileno(), select.EPOLLIN)
        self._send()

    def _send(self) -> None:
        try:
            self.sock.send(self.query)
        except (BlockingIOError, InterruptedError):  # a full send buffer: again when it has room
            self.stage = "send"
            self.wave.change(self.sock.fileno(), select.EPOLLOUT)
            return
        if self.stage == "send":
            self.wave.change(self.sock.fileno(), select.EPOLLIN)
        self.stage = "answer"

    def ready(self, fd: int, events: int) -> None:
        if self.stage == "send":
            self._send()
            return
        for _ in range(DNS_READS):
            try:
                packet = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            answer = dns_answer(packet, self.query)
            if answer is not None:
                self.verdict = dns_verdict(answer, self.qtype, self.want)
                return
            self.strays += 1
            if self.strays > DNS_STRAYS:
                self.verdict = False, f"more than {DNS_STRAYS} datagrams not the answer"
                return

    def failed(self, exc: Exception) -> Tuple[bool, str]:
        if isinstance(exc, OSError):
            return False, CONNECT_ERRORS.get(exc.errno, exc.strerror or str(exc))
        return super().failed(exc)

    def close(self) -> None:
        if self.sock is not None:
            if self.wave is not None:
                self.wave.forget(self.sock.fileno())
            self.sock.close()


REASON_CAP = 200  # characters of a command's output line kept in its reason


def _first_line(output: bytes) -> str:
    """The first non-blank line of a command's output, fit for one log line: decoded as UTF-8,
    tabs made spaces, control and other unprintable characters removed, REASON_CAP at most."""
    for raw in output.splitlines():
        text = raw[:4 * REASON_CAP].decode("utf-8", "replace").replace("\t", " ")
        text = "".join(c for c in text if c.isprintable()).strip()
        if text:
            return text if len(text) <= REASON_CAP else text[:REASON_CAP - 3] + "..."
    return ""


def _exit_verdict(code: int, output: bytes, dynamic_weight: bool) -> tuple:
    """(ok, reason) of a command that ended with `code` (Popen's: -N for signal N), or
    (True, reason, weight) when its exit code sets the weight: keepalived's misc_dynamic,
    0 healthy at the configured weight, 1 failed, 2..255 healthy at weight code - 2."""
    line = _first_line(output)
    said = f": {line}" if line else ""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return False, f"killed by {name}{said}"
    if code == 0:
        return True, f"exit 0{said}"
    if dynamic_weight and code >= 2:
        return True, f"exit {code}, weight {code - 2}{said}", code - 2
    return False, f"exit {code}{said}"


@checker
class ExternalCheck(Check):
    """check = external: run `checkcommand` VIP VPORT RIP RPORT (ldirectord's checktype =
    external, keepalived's MISC_CHECK), no shell, stdin /dev/null, in a session of its own;
    healthy on exit 0, else the first line of its output is the reason.

    Its end is a pidfd in the wave's epoll (Linux 5.3+), its output one pipe (stdout and
    stderr) read there too, kept up to OUTPUT_CAP and read on and dropped past it, so a
    command printing megabytes neither blocks on a full pipe nor fills our memory; past
    FLOOD it has failed (an endless flood would keep us reading, and the wave's clock counts
    only its waits, so no deadline would come).  When it ends, what it left in its process
    group is killed; at the deadline or a stop, the whole group is, our end of the pipe is
    closed (a child gone to another group may hold it forever) and the command is reaped
    later, never waited for.  Without pidfd_open, its end is seen when its output closes
    (its exit looked for EXIT_GRACE at most then): a command that leaves a child holding its
    output, or closes its output and runs on, is then judged at its deadline."""

    KIND = "external"
    LIMIT = 32  # commands running at once: a thousand servers must not fork a thousand processes
    OUTPUT_CAP = 64 * 1024  # output kept: its first line is the reason
    FLOOD = 16 * 1024 * 1024  # output read before the command is stopped as failed
    READS = 16  # pipe reads per event: a command that prints without end does not hold the wave
    EXIT_GRACE = 0.05  # without a pidfd: seconds its exit may follow the end of its output
    PIDFD = hasattr(os, "pidfd_open")  # turned off at the first ENOSYS (a kernel before 5.3)
    dying: List[subprocess.Popen] = []  # killed, not reaped yet: reaped when they are dead, never waited for
    __slots__ = ("proc", "pipe", "pidfd", "out", "flood")

    def __init__(self, target: "ProbeTarget", wave: Optional["Wave"]):
        super().__init__(target, wave)
        self.stage = "command"
        self.proc: Optional[subprocess.Popen] = None
        self.pipe = self.pidfd = -1
        self.out = bytearray()
        self.flood = 0  # bytes of output read

    def start(self) -> None:
        import subprocess  # (at the first check program, not at start: see the imports)
        self.reap()
        t = self.target
        vip, vport, rip, rport = t.command[-4:]
        env = dict(os.environ, MONITOR_RS_VIP=vip, MONITOR_RS_VPORT=vport, MONITOR_RS_RIP=rip,
                   MONITOR_RS_RPORT=rport, MONITOR_RS_SERVICE_NAME=t.service)
        self.pipe, write = os.pipe()
        try:
            self.proc = subprocess.Popen(t.command, stdin=subprocess.DEVNULL, stdout=write, stderr=write, env=env,
                                         start_new_session=True)
        except OSError as exc:  # gone, not runnable, no process left: the same for every server
            raise MonitorFault(f"cannot run {t.command[0]}: {exc.strerror or exc}") from None
        finally:
            os.close(write)
        os.set_blocking(self.pipe, False)
        self.wave.watch(self, self.pipe, select.EPOLLIN)
        if ExternalCheck.PIDFD:
            try:
                self.pidfd = os.pidfd_open(self.proc.pid)
            except OSError as exc:
                if exc.errno != errno.ENOSYS:
                    raise
                ExternalCheck.PIDFD = False
            else:
                self.wave.watch(self, self.pidfd, select.EPOLLIN)

    def failed(self, exc: Exception) -> Tuple[bool, str]:
        if isinstance(exc, OSError) and self.proc is None:
            return False, f"cannot run {self.target.command[0]}: {exc.strerror or exc}"
        return super().failed(exc)

    def ready(self, fd: int, events: int) -> None:
        open_ = self._read()
        if self.flood > self.FLOOD:  # the wave's clock counts its waits only: reading on would stop it
            line = _first_line(self.out)
            self.verdict = False, f"more than {self.FLOOD >> 20} MiB of output" + (f": {line}" if line else "")
        elif fd == self.pidfd:
            self.verdict = self._ended()
        elif not open_ and self.pidfd < 0:  # the pipe closes a moment before the exit is seen
            self.verdict = self._ended(self.EXIT_GRACE)

    def _read(self) -> bool:
        """Take what the pipe holds (READS reads at most); False once it is closed at the other end."""
        for _ in range(self.READS):
            if self.pipe < 0:
                return False
            try:
                data = os.read(self.pipe, 65536)
            except BlockingIOError:
                return True
            if not data:
                self._close_pipe()
                return False
            self.flood += len(data)
            room = self.OUTPUT_CAP - len(self.out)
            if room > 0:
                self.out += data[:room]
        return True

    def _ended(self, grace: float = 0.0) -> Optional[tuple]:
        """The verdict once the command has exited (looked for during `grace` seconds), None
        while it runs.  What it left in its process group is killed first, while the command,
        not reaped yet, still holds the group's number (no other process can have it)."""
        give_up, pause = time.monotonic() + grace, 0.0001
        while os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if time.monotonic() >= give_up:
                return None
            time.sleep(pause)
            pause = min(pause * 2, 0.005)
        kill_group(self.proc)
        code = self.proc.wait()  # a zombie: no wait
        return _exit_verdict(code, self.out, self.target.dynamic_weight)

    def _close_pipe(self) -> None:
        if self.pipe >= 0:
            if self.wave is not None:
                self.wave.forget(self.pipe)
            os.close(self.pipe)
            self.pipe = -1

    def close(self) -> None:
        self._close_pipe()
        if self.pidfd >= 0:
            if self.wave is not None:
                self.wave.forget(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
        proc = self.proc
        if proc is not None and proc.returncode is None:  # a timeout or a stop: it and all it started
            kill_group(proc)
            if proc.poll() is None:
                ExternalCheck.dying.append(proc)
        self.reap()

    @classmethod
    def reap(cls) -> int:
        """Reap the killed commands that have died since, without waiting; how many are still dying."""
        cls.dying[:] = [proc for proc in cls.dying if proc.poll() is None]
        return len(cls.dying)


# check = ping.  An ICMP echo request to the real server's address; healthy on
# the echo reply that is OURS: our identifier, our sequence number, our random
# token in the data, from that address (another process's echoes, stray and
# late replies are ignored).  A Destination Unreachable quoting our echo ends
# the probe at once.  The socket: a raw one when the monitor may (root,
# CAP_NET_RAW), else the kernel's ICMP datagram ("ping") socket where
# net.ipv4.ping_group_range lets the monitor's group have one (it sets the
# identifier to the socket's port and gives it only its own replies); which one
# is tried once, at config load, and a config with check = ping fails there,
# in one line, where neither opens.
#
# ONE socket per family per wave, shared by its ping checks: the kernel gives
# every raw ICMP socket a copy of every ICMP packet, so a socket per probe
# meant N copies of each reply (N^2 at N probes, each to read and throw away)
# and a probe's own reply dropped once its receive buffer was full of the
# others' (N = 1000: 12 ms of CPU a wave shared, 80-150 ms a socket each; with
# the replies 50 ms late, a socket each lost two thirds of its own).  The first
# ping check of a wave opens it (kept in `wave.shared`), the last one closes it;
# the checks its replies answer go to `wave.settled`, for the wave to finish.

ICMP_SOCKETS = ("raw", "dgram")  # the ICMP sockets tried, in this order (decided once: icmp_socket)
ICMP_TYPES = {4: (8, 0, 3), 6: (128, 129, 1)}  # IP version -> echo request, echo reply, destination unreachable
UNREACHABLE = {  # (IP version, code of a Destination Unreachable) -> the reason
    (4, 0): "network unreachable", (4, 1): "host unreachable", (4, 2): "protocol unreachable",
    (4, 3): "port unreachable", (4, 9): "administratively prohibited", (4, 10): "administratively prohibited",
    (4, 13): "administratively prohibited", (6, 0): "network unreachable", (6, 1): "administratively prohibited",
    (6, 3): "host unreachable", (6, 4): "port unreachable", (6, 5): "administratively prohibited",
    (6, 6): "administratively prohibited"}
ECHO_MARK = b"monitor_rs "  # then the probe's token, in the echo's data: a reply echoes it back
ICMP_RCVBUF = 1 << 20  # replies wait here while the wave is busy starting probes
ICMP_DRAIN = 32  # read the replies already in, every this many echoes sent
ICMP_READS = 1024  # packets read in one turn at most: a flood of others' ICMP must not hold the wave
SOL_RAW, ICMP_FILTER, ICMP6_FILTER = 255, 1, 1  # <linux/icmp.h>, <linux/icmpv6.h>: not in Python's socket
IP_RECVERR, IPV6_RECVERR, SO_RCVBUFFORCE = 11, 25, 33
EE_ORIGIN_ICMP = {4: 2, 6: 3}  # sock_extended_err.ee_origin of an ICMP error, by version
_icmp_kinds: Dict[int, Tuple[str, str]] = {}


def icmp_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071), for an ICMP (IPv4) message sent on a raw socket."""
    if len(data) % 2:
        data += b"\0"
    total = sum(data[i] << 8 | data[i + 1] for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(version: int, ident: int, seq: int, data: bytes) -> bytes:
    """An echo request; its checksum computed for IPv4 (the kernel computes ICMPv6's, and any of a ping socket)."""
    head = bytes((ICMP_TYPES[version][0], 0))
    tail = ident.to_bytes(2, "big") + seq.to_bytes(2, "big") + data
    checksum = icmp_checksum(head + b"\0\0" + tail) if version == 4 else 0
    return head + checksum.to_bytes(2, "big") + tail


class IcmpMessage(NamedTuple):
    """What an ICMP message says of an echo request: its reply, or that it could not be delivered."""

    ident: int
    seq: int
    data: bytes = b""  # a reply's data
    unreachable: str = ""  # the reason, for a Destination Unreachable
    to: bytes = b""  # ... and the packed address the echo it quotes was sent to


def parse_icmp(version: int, packet: bytes, with_ip: bool = False) -> Optional[IcmpMessage]:
    """An echo reply, or a Destination Unreachable quoting an echo request; None for anything else.

    `packet` starts at the ICMP header, or `with_ip` at its IPv4 header (a raw IPv4 socket's)."""
    _, reply, unreach = ICMP_TYPES[version]
    if with_ip:
        if not packet or packet[0] >> 4 != 4:
            return None
        packet = packet[(packet[0] & 0x0F) * 4:]
    if len(packet) < 8:
        return None
    if packet[0] == reply and packet[1] == 0:
        return IcmpMessage(int.from_bytes(packet[4:6], "big"), int.from_bytes(packet[6:8], "big"), packet[8:])
    if packet[0] != unreach:
        return None
    quoted = packet[8:]  # the IP header of our echo request, then its first 8 bytes at least
    if version == 4:
        if len(quoted) < 20 or quoted[0] >> 4 != 4 or quoted[9] != 1:
            return None
        to, echo = quoted[16:20], quoted[(quoted[0] & 0x0F) * 4:]
    else:
        if len(quoted) < 40 or quoted[0] >> 4 != 6 or quoted[6] != 58:
            return None
        to, echo = quoted[24:40], quoted[40:]
    if len(echo) < 8 or echo[0] != ICMP_TYPES[version][0]:
        return None
    return IcmpMessage(int.from_bytes(echo[4:6], "big"), int.from_bytes(echo[6:8], "big"),
                       unreachable=_unreachable(version, packet[1]), to=to)


def _unreachable(version: int, code: int) -> str:
    return UNREACHABLE.get((version, code), f"destination unreachable (code {code})")


def _icmp_open(version: int, kind: str) -> socket.socket:
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if version == 6 else socket.IPPROTO_ICMP
    flavour = socket.SOCK_RAW if kind == "raw" else socket.SOCK_DGRAM
    return socket.socket(family, flavour | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, proto)


def icmp_socket(version: int) -> Tuple[str, str]:
    """("raw" or "dgram", "") for the ICMP socket this process can open for IP `version`, or ("", why
    neither): tried once (at config load), the answer kept for every wave after."""
    if version not in _icmp_kinds:
        why = []
        for kind in ICMP_SOCKETS:
            try:
                _icmp_open(version, kind).close()
            except OSError as exc:
                why.append(_icmp_refusal(kind, exc))
                continue
            _icmp_kinds[version] = (kind, "")
            break
        else:
            _icmp_kinds[version] = ("", ", ".join(dict.fromkeys(why)))
    return _icmp_kinds[version]


def icmp_unusable(version: int) -> str:
    """Why no ICMP echo can be sent over IP `version` here, or ""."""
    return icmp_socket(version)[1]


def _icmp_refusal(kind: str, exc: OSError) -> str:
    if exc.errno == errno.EAFNOSUPPORT:
        return "IPv6 is disabled"
    if kind == "raw":
        why = "needs root or CAP_NET_RAW" if exc.errno == errno.EPERM else exc.strerror
        return f"no raw socket ({why})"
    if exc.errno == errno.EACCES:
        try:
            with open("/proc/sys/net/ipv4/ping_group_range") as handle:
                allowed = " ".join(handle.read().split())
        except OSError:
            allowed = "?"
        return (f"no ICMP datagram socket (group {os.getegid()} is not in "
                f"net.ipv4.ping_group_range = {allowed})")
    return f"no ICMP datagram socket ({exc.strerror})"


class _IcmpSocket:
    """One ICMP socket of one family, shared by the ping checks of a wave: each echo goes
    out with its own sequence number, and what comes back is handed to the check it is
    for, or dropped.  The wave watches it as it watches a check's socket (it has `ready`,
    and never a verdict of its own); the checks it answers go to `wave.settled`."""

    verdict = None

    def __init__(self, wave: "Wave", version: int):
        kind, why = icmp_socket(version)
        if not kind:
            raise _Failed(f"cannot send an ICMP echo: {why}")
        self.wave, self.version, self.kind = wave, version, kind
        self.with_ip = kind == "raw" and version == 4  # what a raw IPv4 socket reads starts at the IP header
        self.sock = _icmp_open(version, kind)
        try:
            self._tune()
        except BaseException:
            self.sock.close()
            raise
        self.by_seq: Dict[int, "PingCheck"] = {}
        self.users, self.sent = 0, 0
        self.seq = int.from_bytes(os.urandom(2), "big")
        wave.watch(self, self.sock.fileno(), select.EPOLLIN)

    def _tune(self) -> None:
        sock, v6 = self.sock, self.version == 6
        for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:  # force: past net.core.rmem_max (root); else as far as rmem_max lets it
                sock.setsockopt(socket.SOL_SOCKET, option, ICMP_RCVBUF)
                break
            except OSError:
                pass
        if self.kind == "raw":  # ours alone: the identifier is ours to choose
            self.ident = int.from_bytes(os.urandom(2), "big")
            passed = ICMP_TYPES[self.version][1:]  # the kernel hands us only replies and unreachables
            if v6:
                words = [0xFFFFFFFF] * 8  # a set bit blocks that type
                for icmp_type in passed:
                    words[icmp_type >> 5] &= ~(1 << (icmp_type & 31))
                sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER,
                                b"".join(w.to_bytes(4, sys.byteorder) for w in words))
            else:
                mask = 0xFFFFFFFF & ~sum(1 << icmp_type for icmp_type in passed)
                sock.setsockopt(SOL_RAW, ICMP_FILTER, mask.to_bytes(4, sys.byteorder))
        else:  # a ping socket: the kernel's identifier is its port; its ICMP errors on the error queue
            sock.bind(("::" if v6 else "0.0.0.0", 0))
            self.ident = sock.getsockname()[1]
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            else:
                sock.setsockopt(socket.SOL_IP, IP_RECVERR, 1)

    @classmethod
    def of(cls, wave: "Wave", version: int) -> "_IcmpSocket":
        """The wave's socket for this family: the first ping check to need it opens it."""
        key = (cls, version)
        if key not in wave.shared:
            wave.shared[key] = cls(wave, version)
        return wave.shared[key]

    def send(self, check: "PingCheck") -> None:
        """Send `check`'s echo request under a sequence number no other check of this socket holds."""
        seq = self.seq
        while seq in self.by_seq:
            seq = (seq + 1) & 0xFFFF
        self.seq = (seq + 1) & 0xFFFF
        self.by_seq[seq] = check
        self.users += 1
        check.seq = seq
        self.sock.sendto(echo_request(self.version, self.ident, seq, check.data), (str(check.target.ip), 0))
        self.sent += 1
        if self.sent % ICMP_DRAIN == 0:  # the wave reads nothing while it starts probes
            self.ready(self.sock.fileno(), select.EPOLLIN)

    def leave(self, check: "PingCheck") -> None:
        """`check` is done: its late reply is a stray from now on; the last one closes the socket."""
        if self.by_seq.get(check.seq) is check:
            del self.by_seq[check.seq]
        self.users -= 1
        if self.users <= 0:
            self.wave.shared.pop((type(self), self.version), None)
            self.wave.forget(self.sock.fileno())
            self.sock.close()

    def ready(self, fd: int, events: int) -> None:
        """Read what came (the rest next turn).  Whatever arrives, nothing raises: the socket serves
        every ping check of the wave."""
        for _ in range(ICMP_READS):
            try:
                packet, source = self.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # a ping socket's pending ICMP error: the error queue says whose
                self._errors()
                continue
            message = parse_icmp(self.version, packet, self.with_ip)
            if message is not None:
                self._answer(message, source)
        if events & select.EPOLLERR:
            self._errors()

    def failed(self, exc: Exception) -> Tuple[bool, str]:
        """A fault of ours, not of a server (`ready` catches what the network does): it fails the
        pass, which then changes nothing, rather than timing out every ping check of the wave."""
        raise MonitorFault(f"the shared ICMP socket: {type(exc).__name__}: {exc}") from exc

    def _errors(self) -> None:
        """A ping socket's ICMP errors: each quotes the echo it is about, and names its destination."""
        origin = EE_ORIGIN_ICMP[self.version]
        for _ in range(ICMP_READS):
            try:
                echo, ancillary, _, destination = self.sock.recvmsg(512, 512, socket.MSG_ERRQUEUE)
            except OSError:  # empty (EAGAIN), or nothing of the kind
                return
            for _, _, info in ancillary:  # struct sock_extended_err: errno, origin, type, code, ...
                if len(info) >= 8 and info[4] == origin and info[5] == ICMP_TYPES[self.version][2] \
                        and len(echo) >= 8:
                    message = IcmpMessage(int.from_bytes(echo[4:6], "big"), int.from_bytes(echo[6:8], "big"),
                                          unreachable=_unreachable(self.version, info[6]))
                    self._answer(message, destination)

    def _answer(self, message: IcmpMessage, source) -> None:
        """Settle the check this message is for, if it is one of ours."""
        check = self.by_seq.get(message.seq)
        if check is None or message.ident != self.ident or check.verdict is not None:
            return
        try:
            where = socket.inet_pton(self.sock.family, source[0].partition("%")[0])
        except (OSError, ValueError, TypeError, IndexError):
            return
        if message.unreachable:
            # a reply comes from the server; an unreachable from anyone on the way, about our echo TO it
            if (message.to or where) != check.target.ip.packed:
                return
            check.verdict = (False, message.unreachable)
        elif where != check.target.ip.packed or message.data != check.data:
            return
        else:
            check.verdict = (True, "echo reply")
        del self.by_seq[message.seq]
        self.wave.settled.append(check)


@checker
class PingCheck(Check):
    """check = ping: one ICMP echo, healthy on its reply (ldirectord's checktype=ping,
    keepalived's PING_CHECK).  The wave's shared ICMP socket sends it and hands it its answer."""

    KIND = "ping"
    LIMIT = 0x10000  # the sequence numbers of one socket: a check holds one while in flight
    __slots__ = ("icmp", "seq", "data")

    def __init__(self, target: "ProbeTarget", wave: Optional["Wave"]):
        super().__init__(target, wave)
        self.stage = "echo"
        self.icmp: Optional[_IcmpSocket] = None
        self.seq = -1
        self.data = ECHO_MARK + os.urandom(16)  # this probe's token: a reply must carry it back

    def start(self) -> None:
        icmp = _IcmpSocket.of(self.wave, self.target.ip.version)
        self.icmp = icmp  # before send: a send that fails still leaves the socket
        icmp.send(self)

    def ready(self, fd: int, events: int) -> None:
        """Never called: the check watches no descriptor of its own (its socket is the wave's)."""

    def failed(self, exc: Exception) -> Tuple[bool, str]:
        if isinstance(exc, _Failed):
            return False, str(exc)
        if isinstance(exc, OSError):
            return False, CONNECT_ERRORS.get(exc.errno, exc.strerror or str(exc))
        return super().failed(exc)

    def close(self) -> None:
        if self.icmp is not None:
            self.icmp.leave(self)
            self.icmp = None


FIXED_VERDICTS = {CheckKind.ON.value: (True, "check = on: always up, not checked"),
                  CheckKind.OFF.value: (False, "check = off: always down, not checked")}


class _FixedCheck(Check):
    """No check: a verdict at once, fixed by the kind; nothing sent, no socket (ldirectord's
    checktype=on / off: the server is held in / out whatever it does)."""

    __slots__ = ()

    def start(self) -> None:
        self.stage = "none"
        self.verdict = FIXED_VERDICTS[self.KIND]

    def ready(self, fd: int, events: int) -> None:
        """Never called: it watches no descriptor."""


@checker
class OnCheck(_FixedCheck):
    """check = on: always up (ldirectord's checktype=on)."""

    KIND = CheckKind.ON.value
    __slots__ = ()


@checker
class OffCheck(_FixedCheck):
    """check = off: always down (ldirectord's checktype=off)."""

    KIND = CheckKind.OFF.value
    __slots__ = ()


def _probe_wave(targets: Sequence[ProbeTarget], timeout: float, stop, arrived=None, more=None
                ) -> Optional[List[ProbeResult]]:
    """Probes started together: see Wave.  None when `stop()` turned true meanwhile."""
    return Wave(timeout).run(targets, stop, arrived, more)


def probe_all(targets: Sequence[ProbeTarget], timeout: float, fanout: int = 1000,
              stop=lambda: False,
              arrived: Optional[Callable[[Dict[ProbeTarget, ProbeResult]], None]] = None,
              more: Optional[Callable[[], Tuple[Sequence[ProbeTarget], Optional[float]]]] = None
              ) -> Optional[Dict[ProbeTarget, ProbeResult]]:
    """Probe each distinct target once, `fanout` at a time (all at once, usually).

    `arrived`, if given, gets the results as they come, a batch per event turn (see Wave.run).
    `more`: targets that fall due meanwhile join the last wave (see Wave.run); a target probed
    again that way is given its last result (None: left in flight).  None when asked to stop meanwhile."""
    unique = list(dict.fromkeys(targets))
    fanout = max(1, fanout)
    results: List[ProbeResult] = []
    for first in range(0, max(len(unique), 1 if more else 0), fanout):
        part = unique[first:first + fanout]
        hand = None if arrived is None else (
            lambda batch, part=part: arrived({part[i]: result for i, result in batch}))
        join = None
        if more is not None and first + fanout >= len(unique):
            def join(part=part):
                joining, at = more()
                part.extend(joining)
                unique.extend(joining)
                return joining, at
        wave = _probe_wave(part, timeout, stop, hand, join)
        if wave is None:
            return None
        results += wave
    return dict(zip(unique, results))


def raise_open_file_limit(wanted: int) -> int:
    """Each concurrent probe holds a socket: lift the soft limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


###############################################################################
# Decision: probe results + health + table -> actions (pure) ##################
###############################################################################
#
# The health of a real server is a rise/fall counter (HAProxy's model): it goes
# down after `fall` failed probes in a row and up after `rise` good ones; an
# opposite result resets the streak.  Its first state is what the table says:
# a server already in IPVS is up until probes say otherwise, an absent one is
# down until probes say otherwise (so nothing is added before a probe passed).
#
# Then the table is reconciled with the health, every pass, so a hand-deleted
# healthy server is restored and a change that failed is made again.  The
# monitor only undoes what it did itself: it remembers the weight it last set,
# so a weight an operator set by hand (a drain to 0 included) is told apart and
# kept, even across a delete and a re-add; and a weight it set that the config
# no longer gives (a reload, a restart) is brought to the configured one.
#
# Each change carries the server's health for the case it fails: the loop keeps
# that one, so what did not happen is tried again next pass.  A change may need
# an earlier one: the last real servers leave only once the fallback is in,
# the fallback leaves only once a real server is back.


class Change(str, enum.Enum):
    """The monitor's changes to the IPVS table."""

    ADD = "add"
    RESTORE = "restore"  # the weight back after a quiesce of ours
    REWEIGHT = "reweight"  # the weight we set is no longer the configured one
    RAMP = "ramp"  # a step of a slow start (logged with --verbose only; its start and end always are)
    QUIESCE = "quiesce"
    DRAIN = "drain"  # weight 0 for a drained server: its connections finish, then it is deleted
    DELETE = "delete"
    FALLBACK_ADD = "fallback-add"
    FALLBACK_DELETE = "fallback-delete"


class Seen(str, enum.Enum):
    """What a pass saw happen to a real server: worth a log line (and, but for HAND, the on_change hook)."""

    UP = "up"
    DOWN = "down"
    KEPT = "kept"  # down, but kept in by the depool threshold
    HAND = "hand"  # an operator set its weight by hand
    HELD = "held"  # held out by an operator (maintenancedir; issue 15's drain)
    RELEASED = "released"  # no longer held: back through its checks (rise)


class HoldState(str, enum.Enum):
    """How an operator holds a real server out: what --status shows for it."""

    MAINTENANCE = "maintenance"  # a file named after it in maintenancedir (ldirectord): out at once
    DRAINED = "drained"  # monitor-rs --drain: weight 0 at once, out once its connections end (drain_timeout)


class Hold(NamedTuple):
    """Why an operator holds a real server out of its pool (a decision input, like a probe result):
    never added or restored, taken out whatever the depool threshold, until the hold goes."""

    state: str  # a HoldState: what --status shows, "maintenance" or "drained"
    reason: str  # for the log and the status's reason, e.g. "file 10.0.0.1:80 in /etc/ha.d/maint"
    since: float = 0.0  # when the hold began (wall clock; a drain's entry's mtime): drain_timeout counts from it


MAINTENANCE = HoldState.MAINTENANCE.value  # the state of a server held out by a file in maintenancedir
DRAINED = HoldState.DRAINED.value  # the state of a server drained (monitor-rs --drain)


@dataclass(frozen=True)
class Health:
    """What the monitor remembers of a real server between passes (and, in part, across restarts)."""

    up: Optional[bool] = None  # None until the first decision
    good: int = 0  # consecutive good probes
    bad: int = 0  # consecutive failed probes
    quiesced: bool = False  # weight 0 set by us (quiescent = yes): ours to undo
    kept: bool = False
    weight: Optional[int] = None  # the weight the monitor last set, or found as configured
    operator: Optional[int] = None  # a weight an operator set by hand: kept until they change it
    tried: Tuple[int, ...] = ()  # weights of changes made but not confirmed (failed, timed out, a crash): ours if seen
    asked: Optional[int] = None  # the weight its last good check asked for (external, dynamic_weight)
    reason: str = ""
    since: float = 0.0  # when `up` last changed (wall clock, for display)
    held: str = ""  # the state of the operator's hold on it (Hold.state), "" when not held
    ramp: Optional[float] = None  # when its slow start began (wall clock, remembered): below its weight till done


def configured_weight(rs: "RealServer", h: Health) -> int:
    """The weight the config gives, or that the server's own check asked for."""
    return rs.weight if h.asked is None else h.asked


def intended_weight(rs: "RealServer", h: Health) -> int:
    """The weight a healthy server should have: the operator's, else the configured (or asked) one."""
    return configured_weight(rs, h) if h.operator is None else h.operator


def slow_start(vs: "VirtualService", h: Health, target: int, entering: bool, others: bool,
               now: float) -> Tuple[int, Optional[float]]:
    """The weight an up server is given now (its `target` at last), and when its slow start
    began (None: not ramping, or done).

    HAProxy's slowstart: a server the monitor puts (back) into the pool (an add, a restore after
    its quiesce: `entering`) while another server already serves there (`others`) would get
    every new connection of a wlc/lc scheduler at once; it starts at weight 1 and climbs, at each
    of its checks, to ceil(target x elapsed / slowstart).  Into an empty pool (a first start, all
    servers back together, only the fallback serving) it comes at its weight at once: there is
    nobody to spare, the newcomers take every connection anyway, and a ramp would only hold
    capacity back (nor does HAProxy ramp at its own start).  The weight never goes down during a
    ramp (a clock stepped back holds it, and the ramp goes on from then), never above its target
    (the configured weight, or the one its check asks for), never to 0 (that would be a quiesce).
    An operator's weight is theirs: never ramped over.  A server kept in by the depool threshold
    goes on with its ramp when it is up again; one that leaves the pool ends it."""
    if vs.slowstart <= 0 or h.operator is not None or target <= 1:
        return target, None
    if entering:
        if not others:
            return target, None
        start, floor = now, 1
    elif h.ramp is not None:
        start, floor = min(h.ramp, now), h.weight or 1
    else:
        return target, None
    weight = min(target, max(1, floor, math.ceil(target * (now - start) / vs.slowstart - 1e-9)))
    return (target, None) if weight >= target else (weight, start)


@dataclass(frozen=True)
class Action:
    """One ipvsadm change; `args` is the argv after the program name."""

    kind: Change
    server: str
    args: Tuple[str, ...]
    reason: str = ""
    weight: Optional[int] = None
    endpoint: Optional[Endpoint] = None  # the real server's configured endpoint; None for the fallback
    unchanged: Optional[Health] = None  # the server's health should the change fail or not be made
    needs: Tuple[int, ...] = ()  # made only if one of these earlier actions succeeded
    note: str = ""  # said after the change's own line (the start of a slow start)


@dataclass(frozen=True)
class Event:
    """A change of health worth a log line and the on_change hook."""

    server: str
    state: Seen
    reason: str


@dataclass(frozen=True)
class Decision:
    health: Dict[Endpoint, Health]  # as it stands when every action succeeds
    actions: Tuple[Action, ...]
    events: Tuple[Event, ...]


_ABSENT = Destination(Endpoint(ipaddress.ip_address("0.0.0.0"), 0), "", 0)


def _change_args(vs: VirtualService, kind: str, ep: Endpoint, weight: int = 0) -> Tuple[str, ...]:
    """-a / -e name the real port (IPVS rewrites it for -g/-i); -d names the stored one."""
    if kind == "-d":
        return ("-d", *vs.service_args, "-r", str(vs.stored_endpoint(ep)))
    return (kind, *vs.service_args, "-r", str(ep), vs.forward, "-w", str(weight))


_HEALTH_FIELDS = frozenset(field.name for field in dataclasses.fields(Health))


def _evolve(h: Health, **changes) -> Health:
    """dataclasses.replace(h, **changes), a third of its cost: decide makes two or three a server
    a pass (8 % of a 10,000-server pass's CPU).  Health is a frozen dataclass without slots or
    __post_init__, so a copy of its __dict__ is the whole of it."""
    assert changes.keys() <= _HEALTH_FIELDS, changes
    new = object.__new__(Health)
    fields = new.__dict__
    fields.update(h.__dict__)
    fields.update(changes)
    return new


def _observe(rs: "RealServer", h: Health, stored: Optional[Destination], quiescent: bool) -> Health:
    """Tell an operator's weight from ours, before anything is decided."""
    tried, h = h.tried, _evolve(h, tried=()) if h.tried else h
    if stored is None:
        return h
    w = stored.weight
    if w in tried:  # a change of ours took effect after all
        if w == 0 and h.up is not True:
            return _evolve(h, quiesced=True)
        return _evolve(h, quiesced=False, weight=w)
    if h.quiesced and w == 0:
        return h
    if quiescent and w == 0 and h.up is None and h.weight is None and h.operator is None:
        # No memory of it (a first start, a lost state file): in a quiescent service a 0 is
        # what the monitor itself sets, and a healthy server must not stay out for want of memory.
        return _evolve(h, quiesced=True)
    if h.quiesced or h.weight is None or w != h.weight:
        # Not what we set: put back by hand while we held it at 0, found at first sight
        # (no memory), or changed since.  The configured weight is never "the operator's".
        ours = w in (rs.weight, configured_weight(rs, h))
        return _evolve(h, quiesced=False, weight=w, operator=None if ours else w)
    return h


def drain_step(vs: VirtualService, hold: Hold, stored: Optional[Destination], now: float
               ) -> Tuple[Optional[Change], str]:
    """A drained server's next change, from the table and the time alone (pure), and what it waits for:
    weight 0 while it has more (its connections finish: IPVS sends it no new one); deleted once the
    table shows it at 0 with no active connection, or `drain_timeout` after the drain began; else none."""
    if stored is None:
        return None, "out of IPVS"
    if stored.weight > 0:
        return Change.DRAIN, f"weight 0, its {stored.active} active connection(s) finish"
    if stored.active == 0:
        return Change.DELETE, "no active connection left"
    if vs.drain_timeout is not None and now - hold.since >= vs.drain_timeout:
        return Change.DELETE, f"drain_timeout {vs.drain_timeout:g} s passed, {stored.active} active connection(s) cut"
    limit = "" if vs.drain_timeout is None else f", out {vs.drain_timeout:g} s after the drain began at the latest"
    return None, f"weight 0, waiting for {stored.active} active connection(s){limit}"


def decide(vs: VirtualService, results: Mapping[Endpoint, ProbeResult], table: Table,
           health: Mapping[Endpoint, Health], now: float = 0.0,
           held: Optional[Mapping[Endpoint, Hold]] = None, postponed: AbstractSet[Endpoint] = frozenset(),
           start: Optional[Table] = None) -> Decision:
    """What to change in one virtual service, from this pass's probes and table.

    `results`, `health` and `held` are keyed by each real server's configured endpoint;
    a server without a result this pass keeps its health and is not touched, but for a
    held one (an operator's act: `held`), which goes out (weight 0 in a quiescent service,
    else deleted) whatever its result and the depool threshold, and is down with no
    streak once the hold goes, so that it comes back through `rise` good checks.  A drained
    server (HoldState.DRAINED) goes to weight 0 first, in any service, and is deleted at a later
    decision, on a table read anew (drain_step).  A held
    server whose leaving waits for a later decision of the pass (`postponed`, see
    holds_go_first) is left as it is: neither held anew nor released.

    A server (re)entering the pool ramps up to its weight over `slowstart` seconds (see
    slow_start) when another server (not the fallback) served in `start`, the table as read at
    the pass's start (default: `table`): a pass decided in parts as results arrive decides it as
    the whole pass would, whatever the order of arrival.  `now` is wall-clock time (the ramp
    outlives a restart of the monitor, in its memory).
    """
    new: Dict[Endpoint, Health] = {}
    events: List[Event] = []
    gains: List[Action] = []
    removals: List[Tuple[RealServer, Action, Health, bool]] = []  # (..., shrinks the pool)
    serving: Dict[Endpoint, int] = {}  # weight of each server up after this pass
    forced: set = set()  # removals of held servers: not the depool threshold's to keep
    held = held or {}
    before = table if start is None else start
    # who served at the pass's start (any destination but the fallback, monitored or not): a newcomer ramps beside them
    served = {stored for stored, d in before.items() if d.weight > 0} if vs.slowstart > 0 else set()
    if vs.fallback is not None:
        served.discard(vs.stored_endpoint(vs.fallback))
    for rs in vs.servers:
        ep = rs.endpoint
        old = health.get(ep, Health())
        result = results.get(ep)
        stored = table.get(vs.stored_endpoint(ep))
        if ep in postponed:
            new[ep] = old
            if stored is not None:  # in the pool until it leaves
                serving[ep] = stored.weight
            continue
        hold = held.get(ep)
        if hold is not None:
            state = HoldState(hold.state).value
            seen = _observe(rs, old, stored, vs.quiescent)
            if old.held != state:
                events.append(Event(str(rs), Seen.HELD, hold.reason))
            h = dataclasses.replace(seen, up=False, good=0, bad=0, kept=False, reason=hold.reason,
                                    held=state, since=old.since if old.up is False else now)
            new[ep] = h
            if state == DRAINED:
                # drain_timeout counts from when its weight went to 0: the drain's start, or later when the
                # monitor set that 0 only then (drained while no monitor ran, or not yet acted on): its
                # connections had no time to finish before
                began = max(hold.since, old.since) if old.up is False else hold.since
                step, detail = drain_step(vs, hold._replace(since=began), stored, now)
                if stored is not None and stored.weight == 0:  # the drain's 0 (whoever set it): undone when it ends
                    h = dataclasses.replace(h, quiesced=True, operator=None if h.operator == 0 else h.operator)
                new[ep] = h = dataclasses.replace(h, reason=f"{hold.reason}: {detail}")
                if step is not None:
                    forced.add(ep)
                if step == Change.DRAIN:  # weight 0 first, in any service: its connections finish
                    removals.append((rs, Action(Change.DRAIN, str(rs), _change_args(vs, "-e", ep, 0), detail,
                                                0, ep, dataclasses.replace(h, tried=(0,))),
                                     dataclasses.replace(h, quiesced=True), True))
                elif step == Change.DELETE:  # at weight 0 since an earlier pass, its connections ended (or timed out)
                    removals.append((rs, Action(Change.DELETE, str(rs), _change_args(vs, "-d", ep), detail,
                                                None, ep, h), dataclasses.replace(h, quiesced=False), False))
                continue
            if stored is not None and vs.quiescent and stored.weight > 0:
                forced.add(ep)
                removals.append((rs, Action(Change.QUIESCE, str(rs), _change_args(vs, "-e", ep, 0), hold.reason,
                                            0, ep, dataclasses.replace(h, tried=(0,))),
                                 dataclasses.replace(h, quiesced=True), True))
            elif stored is not None and not vs.quiescent:
                forced.add(ep)
                removals.append((rs, Action(Change.DELETE, str(rs), _change_args(vs, "-d", ep), hold.reason,
                                            None, ep, h), h, stored.weight > 0))
            continue
        if old.held:  # the hold is gone: down, and back only through its checks
            events.append(Event(str(rs), Seen.RELEASED, f"{old.held} ended"))
            old = dataclasses.replace(old, held="", up=False, good=0, bad=0)
        if result is None:
            new[ep] = old
            if old.up is not False and stored is not None:  # no memory yet: up if listed, as its result would find
                serving[ep] = stored.weight
            continue
        # A good check of `dynamic_weight` may ask for a weight (exit 2..255 of an external check);
        # a good one that asks for none gives the configured weight back; a failed one changes nothing.
        asked = result.weight if result.ok else old.asked
        seen = _observe(rs, old if asked == old.asked else _evolve(old, asked=asked), stored, vs.quiescent)
        if seen.operator is not None and seen.operator != old.operator:
            events.append(Event(str(rs), Seen.HAND, f"weight {seen.operator} in IPVS, "
                                                    f"{configured_weight(rs, seen)} configured"))
        good, bad = (old.good + 1, 0) if result.ok else (0, old.bad + 1)
        was_up = old.up if old.up is not None else stored is not None
        up = was_up
        if was_up and bad >= vs.fall:
            up = False
        elif not was_up and good >= vs.rise:
            up = True
        h = _evolve(seen, up=up, good=good, bad=bad, reason=result.reason,
                    since=old.since if up == old.up else now,
                    kept=old.kept and not up and stored is not None)
        if up != was_up or (old.up is None and not up and not result.ok):
            events.append(Event(str(rs), Seen.UP if up else Seen.DOWN, result.reason))
        if not up and (stored is None or stored.weight == 0):
            h = _evolve(h, ramp=None) if h.ramp is not None else h  # out of the pool: a slow start is over
        new[ep] = h
        if not up and result.ok and h.quiesced and not vs.quiescent and stored is not None and stored.weight == 0:
            continue  # at our weight 0 (undrained while its connections last), on its way up through rise: not cut
        if up:
            target = intended_weight(rs, h)
            others = len(served) > 1 or (bool(served) and vs.stored_endpoint(ep) not in served)  # (no set copy)
            weight, ramp = slow_start(vs, h, target, stored is None or h.quiesced, others, now)
            ramped = h.ramp
            if ramp != ramped:
                h = new[ep] = _evolve(h, ramp=ramp)
            done = _evolve(h, quiesced=False, weight=weight)
            kind = None
            if stored is None:
                kind, flag = Change.ADD, "-a"
            elif h.quiesced:
                kind, flag = Change.RESTORE, "-e"
            elif h.operator is None and stored.weight != weight:
                kind, flag = (Change.REWEIGHT if ramp is None else Change.RAMP), "-e"
            serving[ep] = stored.weight if kind is None else weight
            if kind is not None:
                why, note = result.reason, ""
                if kind == Change.REWEIGHT:
                    why = "the configured weight" if h.asked is None else f"asked by its check ({result.reason})"
                    if ramped is not None:
                        why = f"slow start done ({vs.slowstart:g} s)" if vs.slowstart > 0 else "slow start off"
                elif kind == Change.RAMP:
                    why = f"slow start, {now - ramp:.0f} s of {vs.slowstart:g} s"
                elif ramp is not None:
                    note = f"slow start to weight {target} over {vs.slowstart:g} s"
                # should it fail: a ramp begins once in the pool; a step (or the last) is made again
                undone = dataclasses.replace(h, tried=(weight,), ramp=None if flag == "-a" or h.quiesced else ramped)
                gains.append(Action(kind, str(rs), _change_args(vs, flag, ep, weight), why, weight,
                                    ep, undone, note=note))
                new[ep] = done
        elif stored is not None:
            if vs.quiescent and stored.weight > 0:
                action = Action(Change.QUIESCE, str(rs), _change_args(vs, "-e", ep, 0), result.reason, 0, ep,
                                dataclasses.replace(h, tried=(0,)))
                removals.append((rs, action, dataclasses.replace(h, quiesced=True, ramp=None), True))
            elif not vs.quiescent:
                action = Action(Change.DELETE, str(rs), _change_args(vs, "-d", ep), result.reason, None, ep, h)
                removals.append((rs, action, dataclasses.replace(h, ramp=None), stored.weight > 0))

    # Depool threshold: never shrink the pool (real servers in IPVS with a
    # weight above 0) below threshold x configured servers by our own decision.
    # Who goes out first is fixed by the longest failing streak, then config
    # order: never by the order in which failures arrived.
    removals.sort(key=lambda item: (item[0].endpoint not in forced, not item[3], -item[2].bad, item[0].index))
    spare = len(removals)
    if vs.depool_threshold > 0:
        pool = sum(1 for rs in vs.servers if table.get(vs.stored_endpoint(rs.endpoint), _ABSENT).weight > 0)
        pool += sum(1 for a in gains if a.weight and not table.get(vs.stored_endpoint(a.endpoint), _ABSENT).weight)
        spare = max(0, math.floor(pool - vs.depool_threshold * len(vs.servers) + 1e-9))
    losses: List[Tuple[Action, bool]] = []
    for rs, action, h, shrinks in removals:
        if not shrinks or spare > 0 or rs.endpoint in forced:
            spare -= shrinks
            losses.append((dataclasses.replace(action, unchanged=dataclasses.replace(action.unchanged, kept=False)),
                           shrinks))
            new[rs.endpoint] = dataclasses.replace(h, kept=False)
        else:
            if not h.kept:
                events.append(Event(str(rs), Seen.KEPT, h.reason))
            new[rs.endpoint] = dataclasses.replace(action.unchanged, kept=True, tried=())

    # Fallback (sorry server): present exactly while no real server is up and
    # serving (weight above 0).  Added before the last real servers go;
    # removed after one is back, and only if one is.
    first: List[Action] = []
    trailing: List[Action] = []
    have = vs.fallback is not None and vs.stored_endpoint(vs.fallback) in table
    want = vs.fallback is not None and not any(weight > 0 for weight in serving.values())
    if want and not have:
        first.append(Action(Change.FALLBACK_ADD, str(vs.fallback),
                            _change_args(vs, "-a", vs.fallback, 1), "no real server is up", 1))
    # What keeps the pool from emptying: servers that stay in it as they are,
    # else the changes that bring one in; the last ones leave only once one of
    # these holds (a failed add must not end in an empty pool).
    stays = (want and have) or any(
        table.get(vs.stored_endpoint(rs.endpoint), _ABSENT).weight > 0
        and (serving.get(rs.endpoint, 0) > 0 or new[rs.endpoint].kept) for rs in vs.servers)
    # A server going to weight 0 while up (its check asked for it) leaves the pool like a loss.
    zeroed = [a for a in gains if not a.weight and table.get(vs.stored_endpoint(a.endpoint), _ABSENT).weight]
    gains = [a for a in gains if a not in zeroed]
    losses = [(a, True) for a in zeroed] + losses
    providers = tuple(i for i, a in enumerate(first + gains) if a.weight)
    if not stays and providers:
        losses = [(dataclasses.replace(a, needs=providers) if shrinks else a, shrinks) for a, shrinks in losses]
    if have and not want:
        already = any(weight > 0 and table.get(vs.stored_endpoint(ep), _ABSENT).weight > 0
                      for ep, weight in serving.items())
        trailing.append(Action(Change.FALLBACK_DELETE, str(vs.fallback), _change_args(vs, "-d", vs.fallback),
                               "a real server is up", needs=() if already else providers))
    return Decision(new, tuple(first + gains + [a for a, _ in losses] + trailing), tuple(events))


def stages(actions: Sequence[Action]) -> List[List[int]]:
    """The actions cut into runs in which none needs another of its own run: each run
    can be made at once (one ``ipvsadm -R``), once what the earlier runs did is known."""
    runs: List[List[int]] = []
    for i, action in enumerate(actions):
        if not runs or any(j >= runs[-1][0] for j in action.needs):
            runs.append([])
        runs[-1].append(i)
    return runs


def carry_out(decision: Decision, make: Callable[[Action], bool],
              hold: Callable[[Action], None] = lambda action: None,
              batch: Optional[Callable[[Sequence[Action]], Sequence[Callable[[], bool]]]] = None
              ) -> Dict[Endpoint, Health]:
    """Make a decision's changes in order (`make` says whether one holds) and
    return the health that results: a change that failed, or that was held
    because the change it needed failed, leaves its server's health as if it
    had not been decided, so the next pass decides it again.

    With `batch`, each of the `stages` is made at once: `batch` makes the changes
    given and returns, for each, what says (in order, with the holds between)
    whether it held; an action that needs another is still made only if that one held."""
    run = batch or (lambda actions: [functools.partial(make, a) for a in actions])
    health = dict(decision.health)
    holds: List[bool] = []
    for stage in stages(decision.actions):
        wanted = [not decision.actions[i].needs or any(holds[j] for j in decision.actions[i].needs)
                  for i in stage]
        chosen = [decision.actions[i] for i, made in zip(stage, wanted) if made]
        outcomes = iter(run(chosen) if chosen else ())
        for i, made in zip(stage, wanted):
            action = decision.actions[i]
            if made:
                ok = next(outcomes)()
            else:
                hold(action)
                ok = False
            holds.append(ok)
            if not ok and action.endpoint is not None:
                health[action.endpoint] = action.unchanged if made else dataclasses.replace(action.unchanged, tried=())
    return health


def _restorable(args: Sequence[str]) -> bool:
    """Whether -R reads these words back as they are: it splits on blanks and drops "ipvsadm"."""
    return all(a and a != "ipvsadm" and not re.search(r"[\s\x00]", a) for a in args)


def _mark(i: int) -> str:
    """The option that follows the i-th change of a -R (Monitor._read_back): unknown to ipvsadm."""
    return f"--monitor-rs-after-{i}"


def _in_effect(vs: VirtualService, action: Action, table: Table) -> bool:
    """Whether the table read back shows `action` done: added or set at its weight, or deleted."""
    stored = table.get(vs.stored_endpoint(action.endpoint if action.endpoint is not None else vs.fallback))
    if action.kind in (Change.DELETE, Change.FALLBACK_DELETE):
        return stored is None
    return stored is not None and stored.weight == action.weight
def shrinks(vs: VirtualService, rs: "RealServer", result: ProbeResult, h: Health, listed: bool) -> bool:
    """Whether a result may leave its server out of the pool: failed, good but not yet `rise`
    good ones (down), released from a hold, or up at weight 0."""
    if not result.ok or h.held:
        return True
    was_up = h.up if h.up is not None else listed
    if not was_up and h.good + 1 < vs.rise:
        return True
    asked = result.weight
    return (h.operator if h.operator is not None else rs.weight if asked is None else asked) == 0


def unremarkable(vs: VirtualService, rs: "RealServer", result: ProbeResult, h: Health, table: Table) -> bool:
    """A good result that changes nothing (up, in the table at the weight the monitor set, nothing
    asked, nobody's hand on it): decided with the rest at the wave's end, so that a steady pass costs
    one decision per service, not one per batch of results."""
    stored = table.get(vs.stored_endpoint(rs.endpoint))
    return (result.ok and result.weight is None and h.up is True and not h.held and not h.quiesced and not h.tried
            and h.asked is None and h.operator is None and not h.kept and stored is not None
            and stored.weight == h.weight == rs.weight)


def split_arrivals(vs: VirtualService, results: Mapping[Endpoint, ProbeResult], table: Table,
                   health: Mapping[Endpoint, Health], pending: Sequence[Endpoint]
                   ) -> Tuple[Dict[Endpoint, ProbeResult], Dict[Endpoint, ProbeResult]]:
    """Of the results at hand (those arrived and those kept back), (decide now, keep for the wave's end).

    The depool threshold picks who stays by the longest failing streak, then config order, never by
    arrival: so a result that may shrink the pool is acted on at once only while the threshold cannot
    bind this pass (the spare capacity covers every such result at hand and every server in the pool
    still without one, `pending`); else it waits for the end of the wave, decided there with all of them.
    Without a fallback, the last servers of the pool wait too while a server out of it has no result
    yet: it may be back this pass, and the whole pass would then never empty the pool.  With one, an
    empty pool's failures wait likewise: the fallback comes in only if no server comes up this pass."""
    servers = {rs.endpoint: rs for rs in vs.servers}

    def in_pool(ep: Endpoint) -> bool:
        return table.get(vs.stored_endpoint(ep), _ABSENT).weight > 0

    risky = {ep for ep, r in results.items()
             if shrinks(vs, servers[ep], r, health.get(ep, Health()), vs.stored_endpoint(ep) in table)}
    pool = sum(1 for ep in servers if in_pool(ep))
    losing = sum(1 for ep in risky if in_pool(ep))
    keep_back = ({ep: r for ep, r in results.items() if ep not in risky},
                 {ep: r for ep, r in results.items() if ep in risky})
    if vs.fallback is None and losing and pool - losing <= 0 and any(not in_pool(ep) for ep in pending):
        return keep_back
    if (vs.fallback is not None and not pool and vs.stored_endpoint(vs.fallback) not in table
            and any(not in_pool(ep) for ep in pending)):
        # Nothing serves yet (a first start, a service just created): a failure would only bring the
        # fallback in, while a server still without a result may be up this pass; it waits for the
        # wave's end (a good result goes at once), so the fallback does not come and go in one pass.
        return keep_back
    if vs.depool_threshold <= 0:
        return dict(results), {}
    spare = math.floor(pool - vs.depool_threshold * len(vs.servers) + 1e-9)
    if spare >= losing + sum(1 for ep in pending if in_pool(ep)):
        return dict(results), {}
    return keep_back


def holds_go_first(vs: VirtualService, table: Table, held: Mapping[Endpoint, "Hold"],
                   pending: Sequence[Endpoint]) -> bool:
    """Whether the held servers may leave before any result of the pass: yes, unless no other server
    serves while one out of the pool may be back this pass: then leaving first would empty the pool
    (or bring the fallback in and out again), so they go with the results, as the whole pass orders them."""
    def in_pool(ep: Endpoint) -> bool:
        return table.get(vs.stored_endpoint(ep), _ABSENT).weight > 0

    if any(in_pool(rs.endpoint) for rs in vs.servers if rs.endpoint not in held):
        return True
    return not any(not in_pool(ep) for ep in pending)


def changed_table(vs: VirtualService, table: Table, made: Sequence[Action]) -> Table:
    """The table as the changes that held left it: added at their weight, weight set, deleted."""
    table = dict(table)
    for action in made:
        ep = action.endpoint if action.endpoint is not None else vs.fallback
        stored = vs.stored_endpoint(ep)
        if action.kind in (Change.DELETE, Change.FALLBACK_DELETE):
            table.pop(stored, None)
        elif action.kind in (Change.ADD, Change.FALLBACK_ADD):
            table[stored] = Destination(stored, FORWARD_NAMES.get(vs.forward, vs.forward), action.weight or 0)
        else:
            table[stored] = dataclasses.replace(table.get(stored, Destination(stored, FORWARD_NAMES.get(vs.forward, vs.forward), 0)),
                                                weight=action.weight or 0)
    return table


# Another manager of the same virtual service (keepalived's virtual_server blocks, ldirectord, a
# second monitor) undoes the monitor's changes as fast as it makes them: each pass would make
# them again, for ever.  A change of ours is undone when a later read of the table no longer
# shows it (a server we added or set a weight on: absent or at another weight; one we deleted:
# back), counted once per change.  The same server's changes undone TUG_UNDONE times within the
# window is a tug of war: the monitor stops changing that service (until a reload or a restart).
# Counted per server, so that one act, however broad (`ipvsadm -C`, a keepalived reload), counts
# once; over a window of time, not of passes, as the other manager acts on its own clock
# (ldirectord's checkinterval, keepalived's delay_loop), not on ours.

TUG_UNDONE = 3  # changes of ours to one real server undone by someone else ...
TUG_INTERVALS = 10  # ... within this many of the service's intervals,
TUG_WINDOW_MIN = 60.0  # and within a minute at least (another manager slower than the monitor is still caught)
SERVICE_SETTINGS = "the scheduler and persistence"  # what an -E of ours set (a service the monitor manages)


def tug_window(interval: float) -> float:
    """Seconds within which TUG_UNDONE undone changes of one server are a tug of war."""
    return max(TUG_INTERVALS * interval, TUG_WINDOW_MIN)


def undone_changes(vs: VirtualService, expected: Mapping[str, Action], table: Table) -> List[str]:
    """The servers whose last change of ours (`expected`: the change that held, by server)
    the table read now no longer shows: someone else undid it."""
    return [server for server, action in expected.items() if not _in_effect(vs, action, table)]


def tug_of_war(undone: Sequence[Tuple[float, str]], now: float, window: float,
               limit: int = TUG_UNDONE) -> Dict[str, Tuple[int, float]]:
    """Of the changes of ours someone else undid (when, server), the servers fought over: those
    undone `limit` times or more within the `window` seconds up to `now`, each with (how many
    times, over how many seconds).  Empty: no tug of war (one act undoes a change once)."""
    times: Dict[str, List[float]] = {}
    for when, server in undone:
        if now - window < when <= now:
            times.setdefault(server, []).append(when)
    return {server: (len(seen), now - min(seen)) for server, seen in times.items() if len(seen) >= limit}


def untouched(decision: Decision) -> Decision:
    """The decision with no change made (a contested service): the health as if each change
    had not been decided (never tried), so the probes' verdicts go on and nothing is changed."""
    health = dict(decision.health)
    for action in decision.actions:
        if action.endpoint is not None:
            health[action.endpoint] = dataclasses.replace(action.unchanged, tried=())
    return Decision(health, (), decision.events)


###############################################################################
# Memory: what the monitor did, across its restarts ###########################
###############################################################################
#
# The IPVS table says what is; only the monitor knows which of it is its own
# doing: a weight 0 it set (quiescent = yes), the weight it last set, a weight
# an operator set by hand.  That goes out with every pass's state file (under
# /run: it lasts as long as the kernel's table does) and is read back at start,
# so a restart (systemd, an upgrade, a crash) neither strands a quiesced server
# at weight 0 nor forgets an operator's drain or the weight the config had.

Memory = Dict[Tuple[str, str, str], Health]  # (protocol, service address, real server) -> remembered


def remembered(h: Health) -> Health:
    """What of a server's health survives a restart of the monitor: what it did
    and what it saw an operator do (the streaks start again from the table)."""
    return Health(up=False if h.quiesced else None, quiesced=h.quiesced, weight=h.weight, operator=h.operator,
                  tried=h.tried, ramp=h.ramp)


def memory_of(h: Health) -> dict:
    return {"quiesced": h.quiesced, "weight": h.weight, "operator": h.operator, "tried": list(h.tried),
            "ramp": h.ramp}


INTENT = ".intent"  # beside the state file: the weights a pass is about to set, written before it sets them


def open_regular(path: str, flags: int, mode: int) -> int:
    """os.open of a file root writes or trusts: never through a symlink (someone else's link
    would have root write, or believe, where it points), and only a regular file (a FIFO would
    hang us)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "is a symlink, not followed", path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    return fd


def _trusted_json(path: str):
    """The JSON in `path` if it is a regular file (no symlink followed) of root or ours that
    nobody else may write (it decides weights in the kernel's table), else None."""
    try:
        fd = open_regular(path, os.O_RDONLY, 0)
    except (OSError, ValueError):
        return None
    with os.fdopen(fd, encoding="utf-8") as handle:
        st = os.fstat(fd)
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            return None
        try:
            return json.load(handle)
        except (ValueError, OSError):
            return None


def _weight_or_none(value) -> Optional[int]:
    return value if type(value) is int and 0 <= value <= MAX_WEIGHT else None


def _time_or_none(value) -> Optional[float]:
    """A wall-clock time as remembered (a slow start's beginning), or None."""
    ok = type(value) in (int, float) and math.isfinite(value) and value >= 0
    return float(value) if ok else None


def _weights(value) -> Tuple[int, ...]:
    """A list of weights as remembered (one bare weight, as written before, too)."""
    values = value if isinstance(value, list) else [value]
    return tuple(w for w in map(_weight_or_none, values) if w is not None)


def read_memory(path: str) -> Memory:
    """The memory in a state file an earlier run left (running or not), or nothing;
    with the weights of a pass cut short (a crash) between its changes and its
    state file, from the intent file beside it, added to what the state file says.
    A state file of version 1.0.0 (no memory yet) gives what it had: a server
    quiesced by the monitor.  What cannot be read is skipped, entry by entry."""
    memory: Memory = {}
    snap = _trusted_json(path)
    services = snap.get("services") if isinstance(snap, dict) else None
    for s in services if isinstance(services, list) else ():
        for r in s.get("servers", ()) if isinstance(s, dict) else ():
            if not isinstance(r, dict):
                continue
            kept = r.get("memory")
            if not isinstance(kept, dict):  # 1.0.0: only "quiesced"
                kept = {"quiesced": r.get("quiesced") is True}
            key = (str(s.get("protocol")), str(s.get("address")), str(r.get("server")))
            memory[key] = remembered(Health(
                quiesced=kept.get("quiesced") is True, weight=_weight_or_none(kept.get("weight")),
                operator=_weight_or_none(kept.get("operator")), tried=_weights(kept.get("tried")),
                ramp=_time_or_none(kept.get("ramp"))))
    intent = _trusted_json(path + INTENT)
    entries = intent.get("tried") if isinstance(intent, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, list) and len(entry) == 4 and _weight_or_none(entry[3]) is not None:
            key = (str(entry[0]), str(entry[1]), str(entry[2]))
            h = memory.get(key, Health())
            memory[key] = dataclasses.replace(h, tried=tuple(dict.fromkeys(h.tried + (entry[3],))))
    return memory


def legacy_state_path(config_path: str) -> str:
    """Where version 1.0.0 kept the state file of this config by default."""
    return os.path.join("/run", f"monitor_rs-{config_digest(config_path)}.state.json")


def write_intent(path: str, tried: Dict[Tuple[str, str, str], int]) -> None:
    """Before a pass sets weights: should it die before its state file, the next start knows them for its own."""
    write_atomically(path + INTENT, json.dumps({"tried": [[*key, weight] for key, weight in tried.items()]}))


def forget_intent(path: str) -> None:
    """Once the pass's state file holds what it did."""
    try:
        os.unlink(path + INTENT)
    except OSError:
        pass


###############################################################################
# Log file and console #########################################################
###############################################################################
#
# The log file gets plain ``YYYY-MM-DD HH:MM:SS, RIP:PORT message`` lines (the
# original's timestamp), one write per line, reopened when logrotate moved it.
# A log that cannot be written is said once on stderr and monitoring goes on;
# so is a console that cannot be written (a full disk under `> file`, a pipe
# nobody reads, a terminal gone): the console is given up, the log goes on.
# With `syslog` (a facility, ldirectord's logfile = local0) every log line goes
# to the local syslog too (only there when `log` is ""), never waiting for it.


def timestamp(when: Optional[float] = None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def _to_devnull(fd: int) -> None:
    """Point a standard descriptor at /dev/null: what is still buffered for it, and
    Python's flush at exit (which would turn exit 0 into 120), then go nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    if devnull != fd:
        os.dup2(devnull, fd)
        os.close(devnull)


def to_stderr(text: str) -> None:
    """One line on stderr.  Under the live view stderr goes through the console: if that
    fails, straight to stderr; a stderr that cannot be written either is dropped."""
    for stream in (sys.stderr, getattr(sys.stderr, "rich_proxied_file", None)):
        if stream is None:
            continue
        try:
            print(text, file=stream, flush=True)
            return
        except (OSError, ValueError):
            pass
    _to_devnull(2)


SYSLOG_SOCKET = "/dev/log"
SYSLOG_CODES = {  # syslog(3)'s facility codes by name (those of Sys::Syslog, ldirectord's logfile)
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7, "uucp": 8,
    "cron": 9, "authpriv": 10, "ftp": 11, **{f"local{n}": 16 + n for n in range(8)}}
SYSLOG_ERR, SYSLOG_WARNING, SYSLOG_INFO = 3, 4, 6
SYSLOG_SEVERITY = {"failed": SYSLOG_ERR, "problem": SYSLOG_ERR, "down": SYSLOG_WARNING, "kept": SYSLOG_WARNING}
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class Syslog:
    """Lines to the local syslog as glibc's syslog(3) sends them (``<PRI>Mmm dd hh:mm:ss
    monitor_rs[PID]: line`` on the datagram socket /dev/log), but never waiting on it: syslog(3)
    blocks while the daemon reads nothing (a journald stuck or restarting), and that would stop
    the passes.  A syslog that is not there, or takes no more, is said once (and again when it
    comes back) and its lines are dropped; the log file, if any, goes on."""

    WAIT = 0.1  # once per jam: how long a line may wait for room before lines are dropped

    def __init__(self, warn):
        self.warn = warn
        self.sock: Optional[socket.socket] = None
        self.problem = ""
        self.jammed = False

    def send(self, facility: str, kind: str, message: str, when: Optional[float] = None) -> None:
        t = time.localtime(when)
        stamp = f"{MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        number = SYSLOG_CODES.get(facility.lower())
        code = (number or 0) * 8 + SYSLOG_SEVERITY.get(kind, SYSLOG_INFO)
        data = f"<{code}>{stamp} monitor_rs[{os.getpid()}]: {message}".encode("utf-8", "replace")
        problem = "" if number is not None else f"{facility!r} is not a syslog facility"
        for attempt in range(2 if number is not None else 0):  # a syslog restarted: the old socket refuses
            try:
                if self.sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                                         | socket.SOCK_CLOEXEC)
                    try:
                        sock.connect(SYSLOG_SOCKET)
                    except OSError:
                        sock.close()
                        raise
                    self.sock = sock
                try:
                    self.sock.send(data)
                except BlockingIOError:
                    if self.jammed or not select.select([], [self.sock], [], self.WAIT)[1]:
                        raise
                    self.sock.send(data)
                problem = ""
                break
            except BlockingIOError:
                self.jammed = True
                problem = "it takes no more lines (nothing reads them)"
                break
            except OSError as exc:
                self.close()
                problem = exc.strerror or str(exc)
                if exc.errno not in (errno.ECONNREFUSED, errno.ENOTCONN, errno.ECONNRESET):
                    break
        if problem and problem != self.problem:
            self.warn(f"monitor_rs: cannot send to syslog ({SYSLOG_SOCKET}): {problem}; its lines are dropped, "
                      "monitoring goes on")
        elif not problem and self.problem:
            self.warn(f"monitor_rs: syslog ({SYSLOG_SOCKET}) takes lines again")
        self.problem = problem
        self.jammed = self.jammed and bool(problem)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class LogFile:
    """Append-only log that survives rotation, deletion and a full disk; with `facility`
    set, its lines go to syslog too (LogFile(None or "") with a facility: syslog only)."""

    def __init__(self, path: Optional[str], warn=None, facility: str = ""):
        self.path = path
        self.warn = warn or to_stderr
        self.fd: Optional[int] = None
        self.problem: Optional[str] = None
        self.facility = facility  # a SYSLOG_CODES name, "" for none
        self.syslog = Syslog(lambda text: self.warn(text))

    def _open(self) -> int:
        if self.fd is not None:
            try:
                st = os.lstat(self.path)
                fst = os.fstat(self.fd)
                if (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino):
                    return self.fd
            except OSError:
                pass
            self.close()  # moved or deleted: reopen under the name
        self.fd = open_regular(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        return self.fd

    def write(self, message: str, when: Optional[float] = None, kind: str = "info") -> None:
        """One line; `kind` (an event's, as Output.say's) gives its syslog priority."""
        if self.facility:
            self.syslog.send(self.facility, kind, message, when)
        if not self.path:
            return
        line = f"{timestamp(when)}, {message}\n".encode("utf-8", "replace")
        try:
            os.write(self._open(), line)
        except OSError as exc:
            self.close()
            problem = f"monitor_rs: cannot write log {self.path}: {exc.strerror or exc}; monitoring goes on"
            if problem != self.problem:
                self.warn(problem)
            self.problem = problem
            return
        if self.problem:
            self.warn(f"monitor_rs: log {self.path} is writable again")
            self.problem = None

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


STYLES = {"up": "green", "add": "green", "restore": "green", "reweight": "green", "fallback-delete": "green",
          "ramp": "green",
          "hand": "yellow",
          "down": "red", "delete": "red", "quiesce": "yellow", "kept": "yellow",
          "fallback-add": "magenta", "failed": "bold red", "problem": "bold red", "info": "cyan"}


class Output:
    """Where events go: the log file (plain), and the console (rich on a terminal)."""

    def __init__(self, log: LogFile, console=None, to_log: bool = True, echo: bool = True):
        self.log, self.console, self.to_log, self.echo = log, console, to_log, echo
        self.live = None  # the live table (rich.live.Live) while it is shown
        if console is not None:
            console.on_broken_pipe = self._broken_pipe  # rich's own exits 1

    @staticmethod
    def _broken_pipe() -> None:
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    def say(self, message: str, kind: str = "info", log: bool = True) -> None:
        now = time.time()
        if log and self.to_log:
            self.log.write(message, now, kind)
        if not self.echo:
            return
        if self.console is not None:
            from rich.text import Text
            line = Text(f"{timestamp(now)} ", style="dim") + Text(message, style=STYLES.get(kind, ""))
            self.show(lambda: self.console.print(line))
        else:
            self.show(lambda: print(f"{timestamp(now)}, {message}"))

    def show(self, write) -> None:
        """Run one console write (an event, the live table, --once's table).  The first
        that fails is said once on stderr and ends console output: monitoring goes on."""
        if not self.echo:
            return
        try:
            write()
            if sys.stdout is not None:
                sys.stdout.flush()
        except OSError as exc:
            self._console_failed(exc)

    def _console_failed(self, exc: OSError) -> None:
        self.echo = False
        _to_devnull(1)
        if self.console is not None:
            if self.live is not None:
                try:
                    self.live.stop()  # gives stderr back: the live view sends it through the console
                except OSError:
                    pass
            self.console.quiet = True
        targets = [self.log.path] * bool(self.log.path) + [f"syslog ({self.log.facility})"] * bool(self.log.facility)
        where = f" (events go on to {' and '.join(targets)})" if self.to_log and targets else ""
        to_stderr(f"monitor_rs: cannot write to stdout: {exc.strerror or exc}; console output stops here, "
                  f"monitoring goes on{where}")


###############################################################################
# The loop ####################################################################
###############################################################################


@dataclass(frozen=True)
class ServerRow:
    """What one pass saw and did for one real server."""

    server: str
    weight: int
    ipvs_weight: Optional[int]  # as it stands after this pass's changes; None: absent or unreadable
    health: Health
    result: ProbeResult
    action: str  # what this pass did (or would do), "" for nothing
    last_change: Tuple[float, str] = (0.0, "")  # when and what the monitor last did or saw change


@dataclass
class ServiceReport:
    name: str
    address: str
    protocol: str
    problem: str = ""  # why the table could not be read; nothing was changed then
    contested: str = ""  # why the monitor no longer changes this service (another manager: Monitor._tug)
    rows: List[ServerRow] = field(default_factory=list)


@dataclass
class PassReport:
    services: List[ServiceReport] = field(default_factory=list)
    failed: int = 0  # ipvsadm changes that failed
    unavailable: int = 0  # listings that failed for want of ipvsadm or of IPVS
    stopped: bool = False  # cut short by a stop request
    started: float = 0.0
    duration: float = 0.0

    @property
    def problems(self) -> List[str]:
        return [s.problem for s in self.services if s.problem]

    @property
    def ok(self) -> bool:
        return not self.problems and not self.failed


class Hooks:
    """on_change commands (and fallbackcommand), run without a shell and never waited for."""

    TIMEOUT = 30.0

    def __init__(self, output: Output):
        self.output = output
        self.running: List[Tuple[subprocess.Popen, float, str]] = []
        self.what: Dict[subprocess.Popen, str] = {}  # a running command that is not an on_change hook

    def start(self, argv: Sequence[str], vs: VirtualService, event: Event) -> None:
        env = dict(os.environ, MONITOR_RS_SERVICE=vs.address, MONITOR_RS_SERVICE_NAME=vs.name,
                   MONITOR_RS_SERVER=event.server, MONITOR_RS_STATE=event.state, MONITOR_RS_REASON=event.reason)
        self.launch([*argv, vs.address, event.server, event.state, event.reason], env, event.server)

    def launch(self, full: Sequence[str], env: Mapping[str, str], server: str,
               what: str = "on_change") -> Optional[subprocess.Popen]:
        """Start one command in its own session; killed (with its group) after TIMEOUT by reap."""
        import subprocess  # (at the first hook, not at start: see the imports)
        try:
            proc = subprocess.Popen(full, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
        except Exception as exc:  # OSError, or ValueError (a NUL byte): a hook never stops the pass
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            name = full[0] if full[0].isprintable() else repr(full[0])
            self.output.say(f"{server} {what} {name} could not start: {why}", "failed")
            return None
        self.running.append((proc, time.monotonic() + self.TIMEOUT, server))
        if what != "on_change":
            self.what[proc] = what
        return proc

    def reap(self) -> None:
        still = []
        for proc, deadline, server in self.running:
            code = proc.poll()
            what = self.what.get(proc, "on_change")
            if code is None and time.monotonic() > deadline:
                import subprocess  # (imported by then: it started proc)
                kill_group(proc)  # its own session: whatever it started goes too
                try:
                    proc.wait(timeout=KILL_GRACE)
                except subprocess.TimeoutExpired:
                    pass  # stuck in the kernel: subprocess reaps it later; the loop must not wait
                self.output.say(f"{server} {what} {proc.args[0]} killed after {self.TIMEOUT:g} s", "failed")
            elif code is None:
                still.append((proc, deadline, server))
                continue
            elif code != 0:
                self.output.say(f"{server} {what} {proc.args[0]} exited {code}", "failed")
            self.what.pop(proc, None)
        self.running = still


class Phase(str, enum.Enum):
    """The monitor's phases, in ldirectord's words: emailalertstatus names those in which mail goes out."""

    STARTING = "starting"  # the first pass
    RUNNING = "running"
    STOPPING = "stopping"
    RELOADING = "reloading"  # the first pass after a reload


def relay_of(text: str) -> Tuple[str, int]:
    """The mail relay of `smtp` (host, [v6]:port, host:port; "" is localhost:25); ValueError says why not."""
    text = text.strip() or "localhost"
    match = (re.fullmatch(r"\[([^\]]+)\](?::([0-9]{1,5}))?", text)
             or re.fullmatch(r"([^:\s\[\]]+)(?::([0-9]{1,5}))?", text))
    if not match or CONTROL.search(text):
        raise ValueError(f"{text!r} is not a host, host:port or [IPv6]:port")
    port = int(match.group(2) or 25)
    if not 1 <= port <= 65535:
        raise ValueError(f"port of {text!r} out of range 1-65535")
    return match.group(1), port


class Mailer:
    """Alert mail, sent by one background thread so that a slow or dead relay never holds a pass.

    The loop hands a mail over (send) and goes on; the queue is bounded (a full one drops
    the mail, said once until there is room again); every SMTP step has a timeout.  What
    the worker has to say (a relay that fails, once while it does; back again) waits in
    `news` for the loop to say it: the log and the console are the loop's alone."""

    QUEUE = 64
    TIMEOUT = 10.0  # seconds, each SMTP step (connect, each answer)

    def __init__(self):
        self.queue: Optional["queue.Queue"] = None  # with the worker, at the first mail
        self.news: "collections.deque[Tuple[str, str]]" = collections.deque()
        self.thread: Optional[threading.Thread] = None
        self.dropped = 0  # mails dropped since the queue was last found full
        self.failing = ""  # the worker's: what the relay last did wrong, "" when it works

    def send(self, relay: str, sender: str, recipients: Sequence[str], message) -> None:
        import queue  # (at the first mail, not at start: see the imports)
        if self.thread is None:
            self.queue = queue.Queue(self.QUEUE)
            self.thread = threading.Thread(target=self._work, name="monitor_rs mail", daemon=True)
            self.thread.start()
        try:
            self.queue.put_nowait((relay, sender, tuple(recipients), message))
        except queue.Full:
            if not self.dropped:
                self.news.append((f"emailalert: {self.QUEUE} mails wait for the relay {relay}: this one and "
                                  "the next are dropped until there is room, monitoring goes on", "failed"))
            self.dropped += 1
            return
        if self.dropped:
            self.news.append((f"emailalert: the mail queue has room again ({self.dropped} alert(s) dropped)",
                              "info"))
            self.dropped = 0

    def _work(self) -> None:
        while True:
            relay, sender, recipients, message = self.queue.get()
            try:
                self._deliver(relay, sender, recipients, message)
            except Exception as exc:  # whatever the relay or a mail does, the worker goes on
                why = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__)
                why = " ".join(why.split())
                if why != self.failing:
                    self.news.append((f"emailalert: cannot send through {relay}: {why}; alerts are dropped "
                                      "until it takes them, monitoring goes on", "failed"))
                self.failing = why
            else:
                if self.failing:
                    self.news.append((f"emailalert: the relay {relay} takes mail again", "info"))
                self.failing = ""
            finally:
                self.queue.task_done()

    def _deliver(self, relay: str, sender: str, recipients: Sequence[str], message) -> None:
        import smtplib
        host, port = relay_of(relay)
        # local_hostname: EHLO with this host's name, not getfqdn()'s DNS lookup
        with smtplib.SMTP(host, port, timeout=self.TIMEOUT, local_hostname=socket.gethostname()) as smtp:
            refused = smtp.send_message(message, from_addr=sender, to_addrs=list(recipients))
        if refused:
            raise smtplib.SMTPRecipientsRefused(refused)

    def flush(self, grace: float) -> int:
        """At stop: give queued mail up to `grace` seconds to go; how many are left unsent."""
        if self.thread is None:
            return 0
        deadline = time.monotonic() + grace
        with self.queue.all_tasks_done:
            while self.queue.unfinished_tasks and time.monotonic() < deadline:
                self.queue.all_tasks_done.wait(max(0.0, deadline - time.monotonic()))
            return self.queue.unfinished_tasks


# ldirectord's subjects (_remove_service, _restore_service, ld_emailalert_resend), by what the pass did
MAIL_SUBJECTS = {
    "add": "Added real server: {server} ({vs}) (Weight set to {weight})",
    "restore": "Restored real server: {server} ({vs}) (Weight set to {weight})",
    "reweight": "Restored real server: {server} ({vs}) (Weight set to {weight})",
    "quiesce": "Quiescent real server: {server} ({vs}) (Weight set to 0)",
    "delete": "Deleted real server: {server} ({vs})",
    "up": "Accessible real server: {server} ({vs})",  # up, with no change of ours to the table
    "down": "Inaccessible real server: {server} ({vs})",  # down, with none (and every repeat)
    "fallback-add": "Added fallback server: {server} ({vs}) (Weight set to 1)",
    "fallback-delete": "Deleted fallback server: {server} ({vs})",
}


def alert_mail(vs: VirtualService, config: Config, subject: str, server: str, state: str, reason: str,
               phase: Phase, when: float):
    """One alert: ldirectord's headers and first lines (host, Log-Message, Daemon-Status), then
    when, which service and server, its state and why."""
    from email.message import EmailMessage
    import email.policy
    import email.utils
    host = socket.gethostname()
    message = EmailMessage(email.policy.SMTP.clone(max_line_length=998))  # a subject is one line, as ldirectord's
    message["From"] = config.emailalertfrom or default_sender()
    message["To"] = ", ".join(vs.emailalert)
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(when, localtime=True)
    message.set_content(f"monitor_rs host: {host}\nLog-Message: {subject}\nDaemon-Status: {phase.value}\n"
                        f"Time: {timestamp(when)}\nVirtual service: {vs.label()}\nReal server: {server}\n"
                        f"State: {state}\nReason: {reason}\n")
    return message


def default_sender() -> str:
    """ldirectord's: this user's name @ this host's name."""
    import pwd
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = str(os.geteuid())
    return f"{user}@{socket.gethostname()}"


def ld_virtual(vs: VirtualService) -> str:
    """How ldirectord names a virtual service in its mail: VIP:PORT, or the firewall mark."""
    return str(vs.fwmark) if vs.protocol == "fwm" else str(Endpoint(vs.vip, vs.vport))


def fallback_words(vs: VirtualService, status: str) -> List[str]:
    """ldirectord's do_fallback_command: `fallbackcommand start|stop VIP:PORT PROTOCOL`; for a
    firewall-mark service its (unset) server and port 0 make that `:0 fwm`, kept as it is for
    its scripts (the mark is in MONITOR_RS_SERVICE)."""
    where = ":0" if vs.protocol == "fwm" else str(Endpoint(vs.vip, vs.vport))
    return [*vs.fallbackcommand, status, where, vs.protocol]


def _maintenance_keys(name: str) -> List[Tuple[str, Optional[int]]]:
    """What a file name in maintenancedir names, as (address or host name, port or None):
    ldirectord's ``IP``, ``IP:PORT``, ``HOST``, ``HOST:PORT`` (FQDN or short), and ``[v6]``,
    ``[v6]:PORT``; an address in any of its spellings, a host name in any case."""
    text, port = name.strip(), None
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or not _is_ip(inside):
            return []  # brackets are an address's
        if rest.startswith(":") and rest[1:].isdigit():
            text, port = inside, int(rest[1:])
        elif not rest:
            text = inside
        else:
            return []
    elif not _is_ip(text):
        host, colon, digits = text.rpartition(":")
        if colon and digits.isdigit() and ":" not in host:
            text, port = host, int(digits)
    if _is_ip(text):
        return [(str(ipaddress.ip_address(text)), port)]
    if text and "[" not in text and ":" not in text and "/" not in text:
        return [(text.lower().rstrip("."), port)]
    return []


DRAIN_DIR = "/var/lib/monitor_rs"  # where drains are kept when the config has no maintenancedir (root)
DRAIN_PREFIX = "drain@"  # drain@RIP[:PORT][@SERVICE]: a drain, never a maintenance name (ldirectord ignores it)


class DrainKey(NamedTuple):
    """What a drain entry's name says: the real server's address (as str(ip_address)), its port
    (None: every port of that address) and the virtual service's name (None: every service)."""

    ip: str
    port: Optional[int]
    service: Optional[str]

    def covers(self, ip: str, port: int, service: str) -> bool:
        return self.ip == ip and self.port in (None, port) and self.service in (None, service)


def drain_name(key: DrainKey) -> str:
    """The entry's name: ``drain@10.0.0.1:80``, ``drain@[2001:db8::1]``, ``drain@10.0.0.1:80@web``;
    the service's name percent-encoded (a name may hold ``/`` or ``@``)."""
    ip = ipaddress.ip_address(key.ip)
    where = str(Endpoint(ip, key.port)) if key.port else f"[{ip}]" if ip.version == 6 else str(ip)
    service = "" if key.service is None else "@" + urllib.parse.quote(key.service, safe="")
    return f"{DRAIN_PREFIX}{where}{service}"


def drain_key(name: str) -> Optional[DrainKey]:
    """The drain a name in the folder stands for, or None (not a drain's name)."""
    if not name.startswith(DRAIN_PREFIX):
        return None
    where, at, service = name[len(DRAIN_PREFIX):].partition("@")
    keys = _maintenance_keys(where) if where.strip() == where else []
    if not keys or not _is_ip(keys[0][0]) or (at and not service):
        return None
    return DrainKey(keys[0][0], keys[0][1], urllib.parse.unquote(service) if at else None)


class MaintenanceDir:
    """maintenancedir: a file named after a real server holds it out (ldirectord's
    check_for_maintenance).  Only the folder's names are read, each pass: never a file's
    content, never through a symlink in it.  A host name is matched as ldirectord does,
    against the reverse DNS name of the server's address (FQDN and first label), looked up
    in a thread (never on the loop) and only while a name in the folder is not an address.

    The same folder holds the drains (monitor-rs --drain, one source of truth): names
    ``drain@RIP[:PORT][@SERVICE]`` (drain_key), each lstat'ed for its mtime, when the drain began.
    Without a maintenancedir the drains have a folder of their own (DRAIN_DIR, `drains_only`)."""

    RESOLVE_EVERY = 300.0  # seconds a reverse name is kept before it is looked up again

    def __init__(self, output: Output, resolve=None):
        self.output = output
        self.resolve = resolve or (lambda ip: socket.getnameinfo((ip, 0), socket.NI_NAMEREQD)[0])
        self.problem = ""  # said once while it lasts
        self.names: Dict[Tuple[str, Optional[int]], str] = {}  # what the folder names -> the file's name
        self.drains: Dict[str, List[Tuple[float, str, DrainKey]]] = {}  # address -> its drains (since, name, key)
        self.drains_only = False  # the folder is the drains' own (no maintenancedir): its absence is no news
        self.reverse: Dict[str, Tuple[float, str]] = {}  # address -> (when looked up, its name or "")
        self.pending: set = set()
        self.lock = threading.Lock()

    def _say_once(self, problem: str) -> None:
        if problem != self.problem:
            self.output.say(problem, "problem")
        self.problem = problem

    def scan(self, folder: str) -> None:
        """Read the folder's names.  Absent: nothing held (said once).  Unreadable, or (as root) one
        others may write: the names last read stand, said once."""
        what = "drain folder" if self.drains_only else "maintenancedir"
        why = unsafe_path(folder) if os.geteuid() == 0 else ""
        if why:
            self._say_once(f"{what} {folder}: not read as root, others can change it: {why}")
            return
        try:
            listed = os.listdir(folder)  # names only: nothing in it is opened or followed
        except FileNotFoundError:
            if not self.drains_only:  # (the drains' own folder is made by the first drain)
                self._say_once(f"maintenancedir {folder} does not exist: no real server held out by it")
            self.names, self.drains = {}, {}
            return
        except OSError as exc:
            self._say_once(f"{what} {folder}: cannot list it: {exc.strerror or exc}; "
                           "the real servers it held stay held")
            return
        if self.problem:
            self.output.say(f"{what} {folder} is read again")
            self.problem = ""
        drains: Dict[str, List[Tuple[float, str, DrainKey]]] = {}
        for name in listed:
            key = drain_key(name)
            if key is None:
                continue
            try:  # lstat: the entry itself, never what a symlink points to; its content is never read
                drains.setdefault(key.ip, []).append((os.lstat(os.path.join(folder, name)).st_mtime, name, key))
            except OSError:
                pass  # undrained as we looked
        self.drains = drains
        self.names = {} if self.drains_only else {
            key: name for name in sorted(listed) if drain_key(name) is None for key in _maintenance_keys(name)}

    def _host_names(self, ip: str) -> List[str]:
        """The reverse name of `ip` and its first label, as far as known now; a lookup is started
        in the background when none is known or it is old."""
        with self.lock:
            when, name = self.reverse.get(ip, (None, ""))
            if (when is None or time.monotonic() - when > self.RESOLVE_EVERY) and ip not in self.pending:
                self.pending.add(ip)
                try:
                    threading.Thread(target=self._look_up, args=(ip,), daemon=True).start()
                except RuntimeError:  # no thread to be had now (a limit): looked up at a later pass
                    self.pending.discard(ip)
        if not name:
            return []
        short = re.match(r"([a-z][a-z0-9-]+)\.", name)
        return [name] + ([short.group(1)] if short else [])

    def _look_up(self, ip: str) -> None:
        try:
            name = self.resolve(ip).lower().rstrip(".")
        except Exception:  # no name, no resolver: not a host name match
            name = ""
        with self.lock:
            self.reverse[ip] = (time.monotonic(), name)
            self.pending.discard(ip)

    def hold(self, folder: str, rs: RealServer, service: str = "") -> Optional[Hold]:
        """Whether the folder, as last scanned, holds this real server (of the virtual service named
        `service`) out, and by which name: a maintenance file first (out at once), then a drain."""
        return self._maintained(folder, rs) or self._drained(folder, rs, service)

    def _drained(self, folder: str, rs: RealServer, service: str) -> Optional[Hold]:
        """The earliest drain of this real server in the folder, or None."""
        ip = str(rs.ip)
        found = [(since, name) for since, name, key in self.drains.get(ip, ()) if key.covers(ip, rs.port, service)]
        if not found:
            return None
        since, name = min(found)
        return Hold(DRAINED, f"drained: {name} in {folder} since {timestamp(since)}", since)

    def _maintained(self, folder: str, rs: RealServer) -> Optional[Hold]:
        if not self.names:
            return None
        ip = str(rs.ip)
        texts = [ip]
        if any(not _is_ip(text) for text, _ in self.names):
            texts += self._host_names(ip)
        for text in texts:
            for port in (rs.port, None):
                name = self.names.get((text, port))
                if name is not None:
                    return Hold(MAINTENANCE, f"maintenance: file {name} in {folder}")
        return None


class ConfigWatch:
    """autoreload and callback: the config's content, a hash of its bytes, looked at every pass
    (not its mtime: a rewrite within the same second counts, a touch does not)."""

    LIMIT = 64 << 20  # bytes read at most: no config is this big

    def __init__(self, path: str):
        self.path = path
        self.digest = self.look()  # the content the running config was read from
        self.refused = ""  # a new content that did not load: said once, not every pass

    def look(self) -> str:
        """The hash of the file's content now; "" when it cannot be read (being replaced, say)."""
        try:  # non-blocking: a FIFO put in its place must not stall the loop
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return ""
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return ""
            import hashlib
            digest, left = hashlib.sha256(), self.LIMIT
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
            return digest.hexdigest()
        except OSError:
            return ""
        finally:
            os.close(fd)


MESSAGES = {
    "add": "{server} has been added to work in {vs} (weight {weight})",
    "restore": "{server} weight restored to {weight} in {vs}",
    "reweight": "{server} weight set to {weight} in {vs}: {reason}",
    "ramp": "{server} weight set to {weight} in {vs}: {reason}",
    "quiesce": "{server} is out of work, weight set to 0 in {vs} (quiescent)",
    "drain": "{server} is draining in {vs}: {reason}",
    "delete": "{server} is out of work, deleted from {vs}",
    "fallback-add": "{server} fallback added to {vs}: no real server is up",
    "fallback-delete": "{server} fallback removed from {vs}: a real server is up",
}
CHANGES = {  # the short form, for the "last change" of the status table
    "add": "added (weight {weight})", "restore": "weight restored to {weight}", "quiesce": "weight set to 0",
    "reweight": "weight set to {weight}", "ramp": "weight set to {weight} (slow start)",
    "hand": "{reason}: set by hand",
    "delete": "deleted", "fallback-add": "fallback added", "fallback-delete": "fallback removed",
    "up": "up: {reason}", "down": "down: {reason}", "kept": "down, kept: {reason}",
    "held": "held out: {reason}", "released": "{reason}",
    "drain": "draining: weight set to 0",
}
EVENT_MESSAGES = {
    "up": "{server} is up in {vs}: {reason}",
    "down": "{server} is down in {vs}: {reason}",
    "kept": "{server} is down in {vs} but kept (depool threshold {threshold:g}): {reason}",
    "hand": "{server} in {vs}: {reason}: taken as set by hand, and kept",
    "held": "{server} is held out of {vs}: {reason}",
    "released": "{server} in {vs}: {reason}; back when its checks pass",
}
HELD = {  # a change not made because the one it needed failed
    "delete": "{server} left in {vs} although down: the fallback could not be added (the pool would be empty)",
    "quiesce": "{server} left at its weight in {vs} although down: the fallback could not be added",
    "fallback-delete": "{server} fallback left in {vs}: no real server could be put back",
    "drain": "{server} left at its weight in {vs} although drained: the fallback could not be added",
}


SCHEDULE_SLACK = 0.005  # seconds early a service may be probed, rather than wake again for it


def longest_timeout(timeout: float, services: Sequence[VirtualService]) -> float:
    """The longest probe deadline among `services`: the config's `timeout`, or a service's own."""
    return max([timeout] + [vs.timeout for vs in services if vs.timeout is not None])


def next_due(at: float, started: float, interval: float) -> float:
    """When something due at `at` (monotonic; 0: never taken) and taken at `started` is due next:
    an interval after its turn (a steady pace), or after `started` when it was taken early (its
    holds changed).  A pass that ends later than that is followed at once, and the pace starts
    again from its end (caught_up): no burst of catch-up passes."""
    return (at if 0 < at <= started + SCHEDULE_SLACK else started) + interval


def caught_up(due: float, ended: float) -> float:
    """A turn that passed while the pass ran is now, not a debt of passes to catch up."""
    return max(due, ended)


SCHEDULE_GRID = 0.1  # seconds: checks due within one tick of this grid start together (one pass's turn)
SCHEDULE_SLOTS = 10  # a service's checks are spread over its interval in at most this many groups


def on_grid(at: float) -> float:
    """`at` (monotonic) to the nearest tick of the schedule's grid: checks due close together start
    together, so the monitor wakes at most once a tick however many servers and phases there are."""
    return round(at / SCHEDULE_GRID) * SCHEDULE_GRID


def spread_offset(position: int, count: int, interval: float) -> float:
    """How long after its first check (all at once, at start or a new config) the real server at
    `position` of a service's `count` is checked again: its phase.  The servers are spread evenly
    over the interval in groups no closer than SCHEDULE_GRID, at most SCHEDULE_SLOTS of them (each
    group one turn of the loop); the last group a whole interval after, none later than that."""
    slots = max(1, min(count, SCHEDULE_SLOTS, int(interval / SCHEDULE_GRID + 1e-9)))
    return interval * (position * slots // max(1, count) + 1) / slots


def next_turn(anchor: float, after: float, interval: float) -> float:
    """The first turn of a server's phase (anchor + k x interval, k an integer) later than `after`."""
    return anchor + (math.floor((after - anchor) / interval + 1e-9) + 1) * interval


def check_pace(vs: "VirtualService", h: "Health") -> Optional[float]:
    """The wait before a server's next check when it is not the interval (HAProxy's names):
    `fastinter` while its last checks disagree with its state (up with a failure, down with a
    success: a streak toward fall or rise), `downinter` while it is down and staying down."""
    if vs.fastinter is not None and ((h.up is True and h.bad > 0) or (h.up is False and h.good > 0)):
        return vs.fastinter
    if vs.downinter is not None and h.up is False and not h.held:
        return vs.downinter
    return None


def next_check(anchor: float, began: float, interval: float, pace: Optional[float]) -> float:
    """When a server whose check began at `began` is checked next (on the grid): its next turn
    (steady, on its phase `anchor`); after `pace` instead when that is shorter (fastinter); at its
    first turn at least `pace` after when that is longer (downinter), so its phase is kept."""
    tolerance = min(SCHEDULE_GRID, interval) / 2  # a turn at about `began` is the one taken
    regular = next_turn(anchor, began + tolerance, interval)
    if pace is None:
        return on_grid(regular)
    if pace < interval:
        return on_grid(min(began + pace, regular))
    return on_grid(next_turn(anchor, began + pace - tolerance, interval))


def spread_late(due: Dict[object, float], ended: float) -> None:
    """Checks that fell due (by more than half a tick) while a pass could take no more (the first
    pass, at start: everyone at once, slow ones to their timeout; a pass that ran into its limit)
    start from `ended` on, kept as far apart as they were (shifted by the delay), not all at once:
    a wave after every long pass is what spreading the checks avoids.  Their phase is kept: the
    turn after is on time."""
    late = [key for key, at in due.items() if at < ended - SCHEDULE_GRID / 2]  # later than its tick
    if not late:
        return
    first = min(due[key] for key in late)
    start = on_grid(ended)
    for key in late:
        due[key] = on_grid(start + (due[key] - first))


OPERATORS_ACTS = (Seen.HAND, Seen.HELD, Seen.RELEASED)  # logged, not given to on_change (not health)


@dataclass
class _PassView:
    """One service in a pass as results arrive: the table and health as the changes made so far
    left them, the results so far, those kept back for the wave's end, and what the pass did."""

    vs: VirtualService
    held: Dict[Endpoint, Hold]
    start: Optional[Table]  # as read at the pass's start (None: unreadable)
    table: Optional[Table] = None
    health: Dict[Endpoint, Health] = field(default_factory=dict)
    pending: Dict[Endpoint, None] = field(default_factory=dict)  # no result yet
    results: Dict[Endpoint, ProbeResult] = field(default_factory=dict)
    quiet: Dict[Endpoint, ProbeResult] = field(default_factory=dict)  # unremarkable: decided at the wave's end
    kept_back: Dict[Endpoint, ProbeResult] = field(default_factory=dict)
    events: List[Event] = field(default_factory=list)
    done: Dict[str, str] = field(default_factory=dict)
    after: Dict[Endpoint, Optional[int]] = field(default_factory=dict)
    failed: set = field(default_factory=set)  # the args of changes that failed this pass: not made again in it
    decided: bool = False
    launched: Dict[Endpoint, float] = field(default_factory=dict)  # when each check of the pass began

    def __post_init__(self):
        self.table = None if self.start is None else dict(self.start)


class Monitor:
    """One pass: read tables, probe, decide, apply, say what happened."""

    def __init__(self, config: Config, ipvsadm: Ipvsadm, output: Output,
                 dry_run: bool = False, verbose: bool = False):
        self.config, self.ipvsadm, self.output = config, ipvsadm, output
        self.dry_run, self.verbose = dry_run, verbose
        self.health: Dict[Tuple[Tuple[str, str], Endpoint], Health] = {}
        self.problems: Dict[Tuple[str, str], str] = {}
        self.failing: Dict[Tuple[str, ...], str] = {}
        self.hooks = Hooks(output)
        self.changes: Dict[Tuple[Tuple[str, str], str], Tuple[float, str]] = {}
        self.said_no_ipvs = False
        # --dry-run without IPVS previews on an empty table (and says so once); --status turns this
        # off: there an unreadable table is a problem on the service, with no action claimed
        self.assume_empty = dry_run
        self.write_ahead = False  # write the weights a pass sets beside the state file first (the daemon)
        self.intent: Dict[Tuple[str, str, str], int] = {}  # this pass's, as written
        self.stop_requested = lambda: False
        self.listed: Optional[ProcTables] = None  # this pass's one read of /proc/net/ip_vs (None: ipvsadm -Ln)
        self.proc_path = PROC_IP_VS
        self.proc_fault = ""  # why /proc/net/ip_vs could not be read, said once while it lasts
        self._system: Tuple[str, bool] = ("", False)  # (ipvsadm path, whether it is the system's own)
        self.netlink: Optional[IpvsNetlink] = None  # the changes' door when it is (_netlink)
        self.phase = Phase.STARTING  # the next pass's, for emailalertstatus
        self.mailer = Mailer()
        self.alerted: Dict[Tuple[Tuple[str, str], str], float] = {}  # a server down: last mailed (emailalertfreq)
        # the fallbackcommand's last status (start|stop) per service and command, and its run
        self.fallback_ran: Dict[Tuple[Tuple[str, str], Tuple[str, ...]], Tuple[str, Optional[subprocess.Popen]]] = {}
        self.output.log.facility = config.syslog
        self.maintenance = MaintenanceDir(output)
        self.drain_dir = ""  # the drains' folder when the config has no maintenancedir (drain_folder); "": none
        # when each real server, by (service, endpoint), is next checked (monotonic, on the grid); absent: now
        self.due: Dict[Tuple[Tuple[str, str], Endpoint], float] = {}
        self.anchor: Dict[Tuple[Tuple[str, str], Endpoint], float] = {}  # each server's phase: one of its turns
        self.seen: Dict[Tuple[Tuple[str, str], Endpoint], ProbeResult] = {}  # each server's last result
        # checks fall due while a pass runs and join it (run_forever): the checks of a service are spread
        # over its interval (spread_offset); off, a pass probes what is due at its start (the first, --once)
        self.spread = False
        self.soonest = math.inf  # the nearest next check set by a decision since `more` last looked
        self.cut_short = lambda: False  # true: the pass takes no more checks (a reload waits for its end)
        self.next_tick = 0.0  # the next pass at the latest (the config's interval): status, autoreload, holds
        self.last: Dict[Tuple[str, str], ServiceReport] = {}  # each service's rows of its last probing
        self.held_seen: Dict[Tuple[str, str], frozenset] = {}  # the holds each service was last decided with
        # a tug of war with another manager (tug_of_war): each service's last change that held, by server;
        # the changes of ours undone since (when, server); the services no longer repaired, and why
        self.expected: Dict[Tuple[str, str], Dict[str, Action]] = {}
        self.undone: Dict[Tuple[str, str], List[Tuple[float, str]]] = {}
        self.contested: Dict[Tuple[str, str], str] = {}
        self.corrected: set = set()  # services whose settings (scheduler, persistence) our last -E set
        self._plan(config)

    def _plan(self, config: Config) -> None:
        """What to probe, worked out once per config rather than every pass."""
        self.config = config
        self.due, self.next_tick = {}, 0.0  # a new config: every real server is checked at once
        self.anchor = {}  # and spread anew after that
        self.position = {(vs.ipvs_key, rs.endpoint): i for vs in config.services for i, rs in enumerate(vs.servers)}
        self.seen = {k: v for k, v in self.seen.items() if k in self.position}
        self.targets = {(vs.ipvs_key, rs.endpoint): ProbeTarget.of(vs, rs, timeout=config.timeout)
                        for vs in config.services for rs in vs.servers}
        HttpCheck.KEPT.keep_only(set(self.targets.values()))  # (kept connections of what it no longer probes)
        self.fanout = max(1, min(len(self.targets), raise_open_file_limit(len(self.targets) + 256) - 128))
        # a spread pass's length: the shortest interval, the config's or a service's own (each pass reads the
        # table, looks at the holds and is published: a short service's as often as before the schedule)
        self.pass_interval = min([config.interval] + [vs.interval for vs in config.services if vs.interval])

    def reload(self, config: Config) -> None:
        """Keep the health of servers still configured; start new ones fresh."""
        keep = {(vs.ipvs_key, rs.endpoint) for vs in config.services for rs in vs.servers}
        for vs in self.config.services:
            for rs in vs.servers:
                if (vs.ipvs_key, rs.endpoint) not in keep:
                    self.output.say(f"{rs} is no longer in the config of {vs.label()}: "
                                    "left in IPVS as it is, no longer monitored")
        self.health = {k: v for k, v in self.health.items() if k in keep}
        self._plan(config)
        self.ipvsadm = Ipvsadm(config.ipvsadm, config.ipvsadm_timeout)
        self.output.log.path = config.log
        self.output.log.facility = config.syslog
        self.phase = Phase.RELOADING
        alerting = {(vs.ipvs_key, str(rs)) for vs in config.services if vs.emailalertfreq > 0 for rs in vs.servers}
        self.alerted = {k: v for k, v in self.alerted.items() if k in alerting}
        commands = {(vs.ipvs_key, vs.fallbackcommand) for vs in config.services}
        self.fallback_ran = {k: v for k, v in self.fallback_ran.items() if k in commands}
        self.output.say(f"config reloaded from {config.path}: {len(config.services)} virtual service(s), "
                        f"{len(keep)} real server(s), every {config.interval:g} s")
        self._resume()

    def recall(self, memory: Memory) -> None:
        """Take back what an earlier run did (read_memory), for the servers still configured."""
        quiesced = by_hand = 0
        for vs in self.config.services:
            for rs in vs.servers:
                h = memory.get((vs.protocol, vs.address, str(rs)))
                if h is not None and (vs.ipvs_key, rs.endpoint) not in self.health:
                    self.health[(vs.ipvs_key, rs.endpoint)] = h
                    quiesced += h.quiesced
                    by_hand += h.operator is not None
        if quiesced or by_hand:
            self.output.say(f"remembered from the last run: {quiesced} real server(s) quiesced by the monitor, "
                            f"{by_hand} weight(s) set by hand")

    def _read(self, vs: VirtualService, report: PassReport, service: ServiceReport) -> Optional[Table]:
        try:
            try:
                table = self._listed(vs)
            except ServiceNotDefined:
                if not vs.scheduler or vs.ipvs_key in self.contested:  # not the monitor's to create (or not now)
                    raise
                table = self._create(vs)
            else:
                if vs.scheduler and vs.ipvs_key not in self.contested:
                    self._correct(vs, table, report)
        except IpvsStopped:
            return None
        except IpvsUnavailable as exc:
            report.unavailable += 1
            if self.assume_empty:
                if not self.said_no_ipvs:
                    self.output.say(f"IPVS is not available here ({exc}): assuming an empty table", "info", log=False)
                    self.said_no_ipvs = True
                return {}
            self._problem(vs, exc, service)
            return None
        except IpvsError as exc:
            self._problem(vs, exc, service)
            return None
        if self.problems.pop(vs.ipvs_key, None):
            self.output.say(f"virtual service {vs.label()} can be read again")
        self._tug(vs, table, service)
        return table

    def _tug(self, vs: VirtualService, table: Table, service: ServiceReport) -> None:
        """At each read of a service's table: count the changes of ours someone else undid since
        (undone_changes); when they are a tug of war (tug_of_war), stop changing the service, and
        say so once.  It stays so until a reload or a restart (_resume), never by itself after a
        quiet spell: the table is then quiet because the other manager has it its way, and taking
        it back would only start the fight again, slowly."""
        key = vs.ipvs_key
        if key not in self.contested:
            now, window = time.monotonic(), tug_window(self.interval(vs))
            expected = self.expected.get(key, {})
            undone = [(now, server) for server in undone_changes(vs, expected, table)]
            for _, server in undone:
                del expected[server]  # each change is undone once
            history = [u for u in self.undone.get(key, []) if u[0] > now - window] + undone
            self.undone[key] = history
            fought = tug_of_war(history, now, window)
            if not fought:
                return
            counts = "; ".join(f"{server}: {times} times in {round(span, 1):g} s"
                               for server, (times, span) in fought.items())
            self.contested[key] = (f"another manager keeps undoing the monitor's changes ({counts}): not "
                                   "repairing it; reload (SIGHUP) or restart once the other manager is gone")
            self.expected.pop(key, None)
            self.undone.pop(key, None)
            self.output.say(f"{vs.label()}: {self.contested[key]}", "problem")
        service.contested = self.contested[key]

    def _resume(self) -> None:
        """A reload (or a restart, which remembers none of it) ends every contest: the operator
        says the other manager is gone.  Should it still be there, it is caught again."""
        for vs in self.config.services:
            if vs.ipvs_key in self.contested:
                self.output.say(f"{vs.label()}: repaired again (it was left to another manager until this reload)")
        self.expected, self.undone, self.contested, self.corrected = {}, {}, {}, set()

    def _command(self, args: Sequence[str]) -> str:
        return " ".join(shlex.quote(a) for a in (self.ipvsadm.path, *args))

    def _create(self, vs: VirtualService) -> Table:
        """ipvsadm -A the virtual service `vs` names (it has a scheduler), then read it: it
        starts with no real server, each is added after a good check.  A failure is an
        IpvsError: the service stays unread this pass, a problem said once while it lasts."""
        if self.stop_requested():
            raise IpvsStopped("stopped")
        command = self._command(("-A", *service_spec(vs)))
        if self.dry_run:
            if not self.assume_empty:  # --status: say it is missing, claim nothing
                raise ServiceNotDefined(f"virtual service {vs.address} is not defined in IPVS (the monitor "
                                        "creates it)")
            self.output.say(f"would run: {command}", "add", log=False)
            return {}
        result = self.ipvsadm.run(("-A", *service_spec(vs)))
        if not result.ok:
            if result.returncode == -1 or any(s in result.stderr for s in NO_IPVS):
                raise IpvsUnavailable(result.why())
            raise IpvsError(f"virtual service {vs.address} is not defined in IPVS and could not be created: "
                            f"{result.why()} ({command})", f"create failed: {result.why()}")
        self.output.say(f"virtual service {vs.label()} created: {wanted_head(vs)}", "add")
        return self.ipvsadm.read_service(vs, self.stop_requested)

    def _correct(self, vs: VirtualService, table: Table, report: PassReport) -> None:
        """ipvsadm -E the service when its scheduler, persistence, mask or ops differ from the
        config's; a failure is said once while it lasts (the real servers are still managed)."""
        head = getattr(table, "head", None)
        said = head.differences(wanted_head(vs), vs.family) if head is not None else []
        key = (vs.address, "", "correct")
        if not said:
            self.failing.pop(key, None)
            return
        if vs.ipvs_key in self.corrected:  # our last correction held, and is undone: counted (Monitor._tug)
            self.corrected.discard(vs.ipvs_key)
            now, undone = time.monotonic(), self.undone.setdefault(vs.ipvs_key, [])
            undone.append((now, SERVICE_SETTINGS))
            if tug_of_war(undone, now, tug_window(self.interval(vs))):
                return  # not corrected again: said by _tug at the end of this read
        args = ("-E", *service_spec(vs))
        if self.dry_run:
            self.output.say(f"would run: {self._command(args)}", "reweight", log=False)
            return
        result = self.ipvsadm.run(args)
        if result.ok:
            self.failing.pop(key, None)
            self.corrected.add(vs.ipvs_key)
            self.output.say(f"virtual service {vs.label()}: {'; '.join(said)}: corrected", "reweight")
            return
        report.failed += 1
        why = result.why()
        if self.failing.get(key) != why:
            self.output.say(f"virtual service {vs.label()}: {'; '.join(said)}: correction FAILED: {why} "
                            f"({self._command(args)})", "failed")
        self.failing[key] = why

    def clean_stop(self) -> List[str]:
        """cleanstop: remove the virtual services the monitor manages (scheduler set), with all
        their real servers, as ldirectord's ld_stop does (its purge_virtual: ipvsadm -D).  Each
        call has ipvsadm's timeout; after one that hangs, the rest are left (a stop must end).
        Returns the labels of those removed."""
        removed: List[str] = []
        managed = [vs for vs in self.config.services if vs.scheduler]
        for i, vs in enumerate(managed):
            result = self.ipvsadm.run(("-D", *vs.service_args))
            if result.ok:
                removed.append(vs.label())
                self.output.say(f"virtual service {vs.label()} removed from IPVS (cleanstop)", "delete")
            elif "No such service" in result.stderr:
                self.output.say(f"virtual service {vs.label()} was not in IPVS (cleanstop)")
            else:
                self.output.say(f"virtual service {vs.label()} could not be removed (cleanstop): {result.why()}",
                                "failed")
                if result.returncode == TIMED_OUT or result.returncode == -1:
                    left = ", ".join(v.label() for v in managed[i + 1:])
                    if left:
                        self.output.say(f"cleanstop given up, left in IPVS: {left}", "failed")
                    break
        return removed

    def _system_ipvsadm(self) -> bool:
        """Whether the configured ipvsadm is the system's own (looked up again after a reload)."""
        if self._system[0] != self.ipvsadm.path:
            self._system = (self.ipvsadm.path, system_ipvsadm(self.ipvsadm.path))
        return self._system[1]

    def _netlink(self) -> Optional[IpvsNetlink]:
        """The netlink door for the real servers' changes (table_source auto, the system's ipvsadm:
        the table /proc shows is the one changed), opened at the first change; None: ipvsadm.
        Not open yet (no IPVS family before ip_vs is loaded, which ipvsadm's first run does): tried
        again at the next change."""
        if self.config.table_source != TableSource.AUTO or not self._system_ipvsadm():
            return None
        if self.netlink is None:
            self.netlink = IpvsNetlink.open(self.ipvsadm.timeout)
        return self.netlink

    def _whole_table(self) -> Optional[ProcTables]:
        """The pass's one read of the whole table from /proc/net/ip_vs when table_source selects it
        (auto: when the ipvsadm run is the system's own); None: each service through ipvsadm -Ln.
        A read that fails falls back to ipvsadm -Ln for the pass, said once while it lasts."""
        source = self.config.table_source
        if source == TableSource.IPVSADM:
            return None
        if source == TableSource.AUTO and not self._system_ipvsadm():
            return None
        try:
            tables = read_proc(self.proc_path)
        except FileNotFoundError as exc:
            if source == TableSource.AUTO:  # no ip_vs module loaded (yet): ipvsadm -Ln loads it, or says why
                return None
            why = exc.strerror or str(exc)
        except OSError as exc:
            why = exc.strerror or str(exc)
        except IpvsError as exc:
            why = str(exc)
        else:
            if self.proc_fault:
                self.output.say(f"IPVS table read from {self.proc_path} again")
                self.proc_fault = ""
            return tables
        if self.proc_fault != why:
            self.output.say(f"IPVS table: {self.proc_path} could not be read ({why}): read through ipvsadm -Ln "
                            "until it can", "problem")
        self.proc_fault = why
        return None

    def _listed(self, vs: VirtualService) -> Table:
        """The destinations of `vs`: from the pass's read of /proc when there is one and it has the
        service; else ``ipvsadm -Ln`` for it, whose word on a service missing is final (a firewall
        mark /proc cannot place, a service created or removed while the file was read).  A service
        the monitor manages (scheduler) is corrected on its service line: from /proc when the file
        shows it whole (`heads`: scheduler and ops, not persistent; the scheduler flags it never
        shows are not corrected on), else through ipvsadm (persistence in the kernel's ticks, IPv6 ops)."""
        tables = self.listed
        if tables is None or vs.ipvs_key not in tables or (vs.scheduler and vs.ipvs_key not in tables.heads):
            return self.ipvsadm.read_service(vs, self.stop_requested)
        if vs.scheduler:
            table = ServiceTable(parse_head(tables.heads[vs.ipvs_key]))
            table.update(tables[vs.ipvs_key])
            return table
        return tables[vs.ipvs_key]

    def _problem(self, vs: VirtualService, exc: IpvsError, service: ServiceReport) -> None:
        """Say a problem once while it lasts (and again when it changes)."""
        service.problem = str(exc)
        if self.problems.get(vs.ipvs_key) != exc.summary:
            self.output.say(f"{vs.label()}: {exc}; no change made to it", "problem")
        self.problems[vs.ipvs_key] = exc.summary

    def _apply(self, vs: VirtualService, action: Action, report: PassReport) -> Tuple[bool, str]:
        """Make one change; (whether it holds, what to show for it).  A failure is said once while it lasts."""
        if self.dry_run:
            command = " ".join(shlex.quote(a) for a in (self.ipvsadm.path, *action.args))
            self.output.say(f"would run: {command}", action.kind.value, log=False)
            return True, "would " + action.kind.value
        door = self._netlink()
        result = door.run(action.args, self.ipvsadm.path) if door is not None else None
        if result is not None and result.returncode == -1:  # the socket failed: ipvsadm, a new one next time
            door.close()
            self.netlink, result = None, None
        if result is None:
            result = self.ipvsadm.run(action.args)
        return self._outcome(vs, action, None if result.ok else result.why(), report)

    def _apply_batch(self, vs: VirtualService, actions: Sequence[Action],
                     report: PassReport) -> Optional[List[Callable[[], Tuple[bool, str]]]]:
        """Make several changes of one service in one ``ipvsadm -R``, then read the service
        back to know which held (never from -R's exit status: it is only the last line's).

        Returns, per action, what logs its outcome as _apply would (called in order by
        carry_out); None when they are better made one process each (_apply): one change
        alone (its own exit status says it all, no read-back), --dry-run, words -R would split,
        changes made over netlink (each a message and the kernel's own answer: _apply)."""
        if self.dry_run or len(actions) < 2 or not all(_restorable(a.args) for a in actions):
            return None
        if self._netlink() is not None and all(ipvs_message(a.args) is not None for a in actions):
            return None  # a message each, no process: their outcomes are the kernel's own answers
        lines: List[Sequence[str]] = []
        for i, a in enumerate(actions):  # each change followed by its mark (see _read_back)
            lines += [a.args, ("-L", _mark(i))]
        lines.append(("-Ln", *vs.service_args))  # and the service listed at the end: read back in the same process
        result = self.ipvsadm.restore(lines)
        whys = self._read_back(vs, actions, result)
        return [functools.partial(self._outcome, vs, a, why, report) for a, why in zip(actions, whys)]

    def _read_back(self, vs: VirtualService, actions: Sequence[Action], result: CommandResult) -> List[Optional[str]]:
        """Per action, None if it held, else why not: from what ipvsadm said of its line, and
        from the service read back after the -R (never from -R's exit status: the last line's).

        After each change comes a line ``-L --monitor-rs-after-N`` that ipvsadm refuses with
        ``--monitor-rs-after-N: unknown option`` and goes on (a popt error after the command):
        what stderr says between two marks is that change's own, word for word.  A change
        whose mark is missing ended the run (a line that fails validation: -R's status is
        its own), or came after it (never run); when -R was killed at its timeout (what it
        said is lost), the table alone says.  The table is the -R's own last line's listing
        when the run got there (restored_listing), else read with ipvsadm -Ln.  When the service cannot be read back (or the
        monitor is asked to stop), a change whose mark came with no word of ipvsadm held,
        as a lone ipvsadm's exit status 0 said; the others, unknown, are taken as failed
        (the next pass reads the table, and its memory of the weights tried, again)."""
        if result.returncode == -1:  # it never ran: nothing was changed
            return [result.why()] * len(actions)
        table: Optional[Table] = restored_listing(vs, result)
        unread = result.why()
        if table is None and not self.stop_requested():  # no new process once asked to stop
            try:
                table = self.ipvsadm.read_service(vs, self.stop_requested)
            except IpvsStopped:
                pass
            except IpvsError as exc:
                unread = f"{result.why()}; its outcome could not be read back: {exc}"
        said = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        whys: List[Optional[str]] = []
        ended = ""  # why the changes after the one that ended the run were not made
        for i, action in enumerate(actions):
            argv, mark = (self.ipvsadm.path, *action.args), f"{_mark(i)}: unknown option"
            if ended:
                why: Optional[str] = ended
            elif mark in said:
                own, said = said[:said.index(mark)], said[said.index(mark) + 1:]
                if own:  # refused, and the next line ran: as a lone ipvsadm said it
                    why = CommandResult(argv, KERNEL_REFUSED, stderr="\n".join(own)).why()
                else:
                    why = None if table is None or _in_effect(vs, action, table) else (
                        "not in effect when read back after ipvsadm -R")
                    if why is not None:  # made, said nothing, and undone since: someone else's doing (_tug)
                        self.undone.setdefault(vs.ipvs_key, []).append((time.monotonic(), action.server))
            elif result.returncode < 0:  # -R killed (its stderr is lost): the table says
                why = None if table is not None and _in_effect(vs, action, table) else unread
            else:  # this line ended the run: its words and -R's status are its own
                why = CommandResult(argv, result.returncode, stderr="\n".join(said)).why()
                ended = f"not run: ipvsadm -R ended at an earlier line ({why})"
            whys.append(why)
        return whys

    def _outcome(self, vs: VirtualService, action: Action, why: Optional[str],
                 report: PassReport) -> Tuple[bool, str]:
        """Say how a change went (`why` it failed, None if it holds); (whether it holds, what to show)."""
        command = " ".join(shlex.quote(a) for a in (self.ipvsadm.path, *action.args))
        kind = action.kind.value
        key = (vs.address, action.server, kind)
        if why is None:
            self.failing.pop(key, None)
            message = MESSAGES[kind].format(server=action.server, vs=vs.label(), weight=action.weight,
                                            reason=action.reason)
            if action.note:
                message += f"; {action.note}"
            if action.kind != Change.RAMP or self.verbose:  # a slow start's steps: its start and end suffice
                self.output.say(message, kind)
            self.changes[(vs.ipvs_key, action.server)] = (time.time(), CHANGES[kind].format(weight=action.weight))
            return True, kind
        report.failed += 1
        if self.failing.get(key) != why:
            self.output.say(f"{action.server} {kind} FAILED in {vs.label()}: {why} ({command})", "failed")
        self.failing[key] = why
        return False, kind + " FAILED"

    def _hold(self, vs: VirtualService, action: Action) -> str:
        """A change not made because the change it needed failed: said once while it lasts."""
        kind = action.kind.value
        key = (vs.address, action.server, kind)
        if self.failing.get(key) != "held":
            self.output.say(HELD[kind].format(server=action.server, vs=vs.label()), "failed")
        self.failing[key] = "held"
        return kind + " held"

    def interval(self, vs: VirtualService) -> float:
        return self.config.interval if vs.interval is None else vs.interval

    def until_due(self) -> float:
        """Seconds until the next pass: the first real server due, or the config's interval at the latest."""
        first = 0.0 if len(self.due) < len(self.targets) else min(self.due.values(), default=math.inf)
        return min(first, self.next_tick) - time.monotonic()

    def _holds(self) -> Dict[Tuple[Tuple[str, str], Endpoint], Hold]:
        """The real servers an operator holds out this pass (maintenancedir, drains), by service."""
        folder = self.config.maintenancedir or self.drain_dir
        if not folder:
            return {}
        self.maintenance.drains_only = not self.config.maintenancedir
        self.maintenance.scan(folder)
        holds = {}
        for vs in self.config.services:
            for rs in vs.servers:
                hold = self.maintenance.hold(folder, rs, vs.name)
                if hold is not None:
                    holds[(vs.ipvs_key, rs.endpoint)] = hold
        return holds

    def _schedule(self, started: float, holds: Mapping, until: float) -> List[VirtualService]:
        """The services in this pass: those with a real server due by `until` (each server on its
        own schedule: its service's interval, ldirectord's per-virtual checkinterval, on its own
        phase; fastinter, downinter), at once those whose holds changed (a server whose hold
        came or went is due now), and every pass those with a hold.  A held server is not
        checked: it is due when its hold goes."""
        due = []
        self.next_tick = next_due(self.next_tick, started, self.config.interval)
        for vs in self.config.services:
            key = vs.ipvs_key
            held = frozenset((ep, h) for (k, ep), h in holds.items() if k == key)
            was = self.held_seen.get(key, frozenset())
            for ep, _ in held ^ was:
                self.due.pop((key, ep), None)
            for ep, _ in held:
                self.due[(key, ep)] = math.inf
            # a service with a hold is decided every pass (a hold's steps: a drain waits for connections to end)
            if held or held != was or any(self.due.get((key, rs.endpoint), 0.0) <= until for rs in vs.servers):
                due.append(vs)
        return due

    def _launch(self, view: "_PassView", rs: RealServer, began: float) -> None:
        """A server's check starts: until its result is decided, its next turn is the regular one
        (a pass that fails does not make it due again at once)."""
        key, ep = (view.vs.ipvs_key, rs.endpoint), rs.endpoint
        view.pending[ep] = None
        view.launched[ep] = began
        anchor = self.anchor.get(key)
        interval = self.interval(view.vs)
        self.due[key] = next_check(began + interval if anchor is None else anchor, began, interval, None)

    def _next_checks(self, view: "_PassView", decided: Mapping[Endpoint, ProbeResult]) -> None:
        """The next check of each server whose result was just decided: on its phase (spread over
        the interval from its first check: spread_offset), sooner while it changes state
        (fastinter), later while it is down (downinter)."""
        vs = view.vs
        interval = self.interval(vs)
        for ep in decided:
            began = view.launched.get(ep)
            if began is None:
                continue
            key = (vs.ipvs_key, ep)
            anchor = self.anchor.get(key)
            if anchor is None:
                offset = spread_offset(self.position.get(key, 0), len(vs.servers), interval)
                anchor = self.anchor[key] = on_grid(began + offset)
            self.due[key] = next_check(anchor, began, interval, check_pace(vs, view.health[ep]))
            self.soonest = min(self.soonest, self.due[key])  # a check brought nearer (fastinter): `more` looks

    def _decide_some(self, view: "_PassView", results: Mapping[Endpoint, ProbeResult], now: float,
                     report: PassReport) -> None:
        """Decide one service on the results at hand and the table as it now stands, carry the
        changes out at once, then bring the pass's view (table, health) up to what they did."""
        vs = view.vs
        # held servers go with these results, unless that would empty the pool before a server still
        # without a result may be back (holds_go_first): then with the wave's last decision
        now_held = holds_go_first(vs, view.table, view.held, list(view.pending))
        decision = decide(vs, results, view.table, view.health, now, view.held if now_held else {},
                          postponed=frozenset() if now_held else frozenset(view.held), start=view.start)
        view.decided = True
        view.events.extend(decision.events)
        for event in decision.events:
            state = event.state.value
            message = EVENT_MESSAGES[state].format(
                server=event.server, vs=vs.label(), reason=event.reason, threshold=vs.depool_threshold)
            self.output.say(message, state)
            self.changes[(vs.ipvs_key, event.server)] = (now, CHANGES[state].format(reason=event.reason))
            if vs.on_change and not self.dry_run and event.state not in OPERATORS_ACTS:
                self.hooks.start(vs.on_change, vs, event)
        made: List[Action] = []
        view.health = self.carry_out(vs, decision, report, view.done, view.after, made, view.failed)
        view.table = changed_table(vs, view.table, made)
        for rs in vs.servers:
            self.health[(vs.ipvs_key, rs.endpoint)] = view.health[rs.endpoint]
        self._next_checks(view, results)

    def carry_out(self, vs: VirtualService, decision: Decision, report: PassReport, done: Dict[str, str],
                  after: Dict[Endpoint, Optional[int]], made: List[Action],
                  failed: Optional[set] = None) -> Dict[Endpoint, Health]:
        """Make one decision's changes (the one place a set of them is carried out): what each showed
        goes to `done`, the weights set to `after`, the changes that held to `made`; returns the health.
        A change that failed earlier in the pass (`failed`) is not made again in it: the next pass
        retries it (a hung ipvsadm costs its timeout once a pass, not once a decision)."""
        failed = set() if failed is None else failed
        if vs.ipvs_key in self.contested:
            decision = untouched(decision)  # another manager has it (Monitor._tug): no change at all

        def make(action: Action) -> bool:
            if self.stop_requested() or action.args in failed:
                return False  # asked to stop: no new change is started; or failed already (said then)
            return tell(action, functools.partial(self._apply, vs, action, report))

        def tell(action: Action, outcome: Callable[[], Tuple[bool, str]]) -> bool:
            ok, done[action.server] = outcome()
            if ok:
                made.append(action)
                if action.endpoint is not None and not self.dry_run:
                    after[action.endpoint] = None if action.kind == Change.DELETE else action.weight
            else:
                failed.add(action.args)
            return ok

        def hold(action: Action) -> None:
            if not self.stop_requested():
                done[action.server] = self._hold(vs, action)

        def batch(actions: Sequence[Action]) -> List[Callable[[], bool]]:
            if any(a.args in failed for a in actions):  # (rare) each on its own, the failed ones skipped
                return [functools.partial(make, a) for a in actions]
            outcomes = None if self.stop_requested() else self._apply_batch(vs, actions, report)
            if outcomes is None:  # one process per change (or none: asked to stop)
                return [functools.partial(make, a) for a in actions]
            return [functools.partial(tell, a, outcome) for a, outcome in zip(actions, outcomes)]

        tried = {(vs.protocol, vs.address, a.server): a.weight for a in decision.actions
                 if a.endpoint is not None and a.weight is not None}
        if tried and self.write_ahead and not self.dry_run:
            self.intent.update(tried)
            try:
                write_intent(self.config.state_file, self.intent)
            except OSError:
                pass  # the state file's own trouble is said when it is written
        health = carry_out(decision, make, hold, batch)
        if not self.dry_run:  # what held, to tell at the next read whether someone else undid it (_tug)
            self.expected.setdefault(vs.ipvs_key, {}).update((a.server, a) for a in made)
        return health

    def run_pass(self) -> PassReport:
        now = time.time()
        started = time.monotonic()
        phase, self.phase = self.phase, Phase.RUNNING
        holds = self._holds()
        window = started
        if self.spread:  # checks due by the next pass's turn join this one: passes on the config's interval,
            # on their own phase (one that ends late does not move the next, a missed turn is not made up)
            window = (next_turn(self.next_tick, started + SCHEDULE_GRID / 2, self.pass_interval)
                      if self.next_tick > 0 else started + self.pass_interval)
        services = self._schedule(started, holds, window + SCHEDULE_SLACK)
        if self.spread:
            self.next_tick = window
        report = PassReport(started=now)
        self.intent = {}
        reports = {vs.ipvs_key: ServiceReport(vs.name, vs.address, vs.protocol) for vs in services}
        self.listed = self._whole_table()  # one read of the whole table, or None: one ipvsadm -Ln per service
        tables = {vs.ipvs_key: self._read(vs, report, reports[vs.ipvs_key]) for vs in services}
        self.listed = None
        ready = time.monotonic()  # the tables read: the checks due by now start
        views = {vs.ipvs_key: _PassView(vs, {ep: h for (k, ep), h in holds.items() if k == vs.ipvs_key},
                                        tables[vs.ipvs_key]) for vs in services}
        serves: Dict[ProbeTarget, List[Tuple[_PassView, Endpoint, RealServer]]] = {}
        for vs in services:
            view = views[vs.ipvs_key]
            view.health = {rs.endpoint: self.health.get((vs.ipvs_key, rs.endpoint), Health()) for rs in vs.servers}
            for rs in vs.servers:
                due = self.due.get((vs.ipvs_key, rs.endpoint), 0.0)
                if rs.endpoint not in view.held and due <= ready + SCHEDULE_SLACK:
                    self._launch(view, rs, due if ready - due < SCHEDULE_GRID else ready)
                    serves.setdefault(self.targets[(vs.ipvs_key, rs.endpoint)], []).append((view, rs.endpoint, rs))
        asking = [ready]  # when a check of the pass falls due next (more)
        closing: List[Optional[float]] = [None]  # when the checks still in flight are left (more)
        self.soonest = math.inf

        longest = longest_timeout(self.config.timeout, services)

        def wall() -> float:
            """The time of a decision: a spread pass lasts about an interval."""
            return time.time() if self.spread else now

        def idle_past(first: float) -> Optional[float]:
            """None (the pass ends: published, the loop sleeps) when nothing is in flight and nothing
            falls due before the next pass's turn (a long interval, a first check of everyone)."""
            busy = any(v.pending for v in views.values())
            return None if not busy and first >= window - SCHEDULE_GRID / 2 else first

        def more() -> Tuple[List[ProbeTarget], Optional[float]]:
            """The checks that fell due since, joining the pass's wave: until its window ends, and after
            that while a check is still in flight (up to a timeout more), so that the pass ends when none
            is (a slow answer does not hold back the checks due meanwhile into a wave after it).  When
            checks are in flight all along (slow servers: one always is), the pass ends a timeout after
            its window, once every check in flight began less than half a timeout ago (two timeouts
            after at the latest), and leaves them, started again at once in the next pass: waiting for
            them, no check would start for up to a timeout (a server due then checked a turn late)."""
            at = time.monotonic()
            if closing[0] is None and at > window + longest and (at > window + 2 * longest or all(
                    at - v.launched[ep] < longest / 2 for v in views.values() for ep in v.pending)):
                # checks in flight all along (slow servers): the pass ends once those in flight are all
                # young, and they start again in the next (waiting for them, no check would start
                # meanwhile); first a short grace with none starting, for those about to answer
                closing[0] = at + SCHEDULE_GRID / 2
            if closing[0] is not None:
                busy = any(v.pending for v in views.values())
                return ([], None) if not busy else ([], LEAVE_IN_FLIGHT) if at >= closing[0] else ([], closing[0])
            if at > window - SCHEDULE_GRID / 2 and not any(v.pending for v in views.values()):
                return [], None  # (what is due at the next pass's turn is the next pass's)
            if self.stop_requested() or self.cut_short():
                return [], None
            soonest = min(asking[0], self.soonest)
            if at + SCHEDULE_SLACK < soonest:
                return [], idle_past(soonest)
            self.soonest = math.inf
            joining, first = [], math.inf
            for view in views.values():
                if view.table is None:
                    continue
                key = view.vs.ipvs_key
                if any(self.due.get((key, ep), 0.0) <= at + SCHEDULE_SLACK for ep in view.quiet):
                    self._decide_some(view, view.quiet, wall(), report)  # decided before it is checked again
                    view.quiet = {}
                for rs in view.vs.servers:
                    ep = rs.endpoint
                    due = self.due.get((key, ep), 0.0)  # (first: most are not due, and one lookup says so)
                    if due > at + SCHEDULE_SLACK:
                        first = min(first, due)  # (a check in flight's next turn: asked then, harmless)
                        continue
                    if ep in view.pending or ep in view.held or ep in view.kept_back:
                        continue  # in flight, held, or its result not decided yet
                    self._launch(view, rs, due if at - due < SCHEDULE_GRID else at)
                    target = self.targets[(key, ep)]
                    if not any(v is view and e == ep for v, e, _ in serves.get(target, ())):
                        # (two servers of a service may be one target: checkport, ping's address)
                        serves.setdefault(target, []).append((view, ep, rs))
                    joining.append(target)
                    first = min(first, self.due[(key, ep)])
            asking[0] = first
            return list(dict.fromkeys(joining)), first if joining else idle_past(first)

        def arrived(batch: Mapping[ProbeTarget, ProbeResult]) -> None:
            """Each service with new results decides on them at once (see split_arrivals)."""
            touched: Dict[Tuple[str, str], _PassView] = {}
            for target, result in batch.items():
                for view, ep, rs in serves.get(target, ()):
                    if ep not in view.pending:
                        continue  # (a target shared with a service that did not check it now)
                    view.pending.pop(ep, None)
                    view.results[ep] = result
                    self.seen[(view.vs.ipvs_key, ep)] = result
                    touched[view.vs.ipvs_key] = view  # (fewer pending: what was kept back may go now)
                    if view.table is not None and unremarkable(view.vs, rs, result, view.health[ep], view.table):
                        view.quiet[ep] = result
                    else:
                        view.kept_back[ep] = result
            for view in touched.values():
                if view.kept_back and view.table is not None and not self.stop_requested():
                    now_results, view.kept_back = split_arrivals(view.vs, view.kept_back, view.table, view.health,
                                                                 list(view.pending))
                    if now_results:
                        self._decide_some(view, now_results, wall(), report)
                    if view.kept_back and not view.pending and self.spread:
                        # the service's wave has ended (more may join the pass): as at the pass's end
                        self._decide_some(view, view.kept_back, wall(), report)
                        view.kept_back = {}

        try:
            for view in views.values():  # a held server goes out first, whatever the others' results
                if (view.held and view.table is not None and not self.stop_requested()
                        and holds_go_first(view.vs, view.table, view.held, list(view.pending))):
                    self._decide_some(view, {}, now, report)
            targets = list(serves)  # a held server is not checked (ldirectord)
            joins = more if self.spread and views and len(self.targets) <= self.fanout else None
            results = None if self.stop_requested() else probe_all(
                targets, self.config.timeout, self.fanout, self.stop_requested, arrived, joins)
            fault = ""
        except MonitorFault as exc:  # the monitor could not probe: nothing more is decided on that
            results, fault = {}, f"probes could not run: {exc}"
            if self.problems.get(("probes",)) != fault:
                self.output.say(f"{fault}; no change made this pass", "problem")
            self.problems[("probes",)] = fault
        else:
            if self.problems.pop(("probes",), None):
                self.output.say("probes run again")
        if results is None or self.stop_requested():
            report.stopped = True
            return report  # asked to stop: no new change, the table left as it is
        not_probed = ProbeResult(False, "not probed: the monitor's fault", 0.0)
        for vs in services:
            view = views[vs.ipvs_key]
            held = view.held
            table = view.table if not fault else None
            if fault:
                reports[vs.ipvs_key].problem = fault
            elif table is not None and (view.kept_back or view.quiet or not view.decided):
                # what waited for the whole wave (the depool threshold could bind, or nothing to change),
                # or a service with nothing probed
                self._decide_some(view, {**view.quiet, **view.kept_back}, wall(), report)
                view.kept_back, view.quiet = {}, {}
            table = view.start if table is not None else None  # the rows compare with the table as read
            health = view.health
            by_server = {rs.endpoint: view.results.get(rs.endpoint) or (results.get(
                self.targets[(vs.ipvs_key, rs.endpoint)], not_probed) if rs.endpoint in view.launched
                and rs.endpoint not in view.pending else None) or self.seen.get((vs.ipvs_key, rs.endpoint),
                                                                                not_probed)
                # (not due, or left in flight: its last result)
                if rs.endpoint not in held else ProbeResult(False, health[rs.endpoint].reason if health[
                    rs.endpoint].held else held[rs.endpoint].reason, 0.0)  # a drain's says what it waits for
                for rs in vs.servers}
            done, after = view.done, view.after
            if view.decided:
                self.held_seen[vs.ipvs_key] = frozenset(held.items())
            for rs in vs.servers:
                stored = (table or {}).get(vs.stored_endpoint(rs.endpoint))
                result = by_server[rs.endpoint]
                if self.verbose and table is not None and str(rs) not in done and rs.endpoint in view.launched:
                    if result.ok and stored is not None:
                        self.output.say(f"{rs} is work nice now in {vs.label()} "
                                        f"({result.reason}, {result.latency * 1000:.0f} ms)")
                    elif not result.ok and stored is None:
                        self.output.say(f"{rs} is still out of work in {vs.label()}: {result.reason}")
                weight = after[rs.endpoint] if rs.endpoint in after else None if stored is None else stored.weight
                reports[vs.ipvs_key].rows.append(ServerRow(
                    str(rs), rs.weight, weight, health[rs.endpoint], result,
                    done.get(str(rs), ""), self.changes.get((vs.ipvs_key, str(rs)), (0.0, ""))))
            if view.decided and not self.dry_run:
                serving = any(row.health.up and row.ipvs_weight for row in reports[vs.ipvs_key].rows)
                self._notify(vs, view.events, health, done, serving, phase, now)
            self.last[vs.ipvs_key] = reports[vs.ipvs_key]
        if not self.dry_run:
            self._resend(phase, now)
        self._say_news()
        self.hooks.reap()
        ended = time.monotonic()
        if not self.spread:
            self.next_tick = caught_up(self.next_tick, ended)
        spread_late(self.due, ended)
        for view in views.values():  # checks left in flight at the pass's end (LEAVE_IN_FLIGHT): again at once
            for ep in view.pending:
                self.due[(view.vs.ipvs_key, ep)] = on_grid(ended)
        # Every service in every pass: one not due shows its rows of its last probing (no action now).
        report.services = [reports[vs.ipvs_key] if vs.ipvs_key in reports else dataclasses.replace(
            self.last[vs.ipvs_key], rows=[dataclasses.replace(r, action="") for r in self.last[vs.ipvs_key].rows])
            for vs in self.config.services if vs.ipvs_key in reports or vs.ipvs_key in self.last]
        report.duration = time.monotonic() - started
        return report


    def _notify(self, vs: VirtualService, events: Sequence[Event], health: Mapping[Endpoint, Health],
                done: Mapping[str, str], serving: bool, phase: Phase, now: float) -> None:
        """Beyond the log, what one service's pass tells: a mail for each real server that went up or
        down (emailalert), and the fallbackcommand when its pool empties (start) or fills (stop)."""
        servers = {str(rs): rs for rs in vs.servers}
        for event in events:
            if event.state not in (Seen.UP, Seen.DOWN) or event.server not in servers:
                continue
            key = (vs.ipvs_key, event.server)
            if event.state == Seen.DOWN and vs.emailalertfreq > 0:
                self.alerted[key] = now  # repeated while it stays down
            else:
                self.alerted.pop(key, None)
            kind = done.get(event.server, "")
            subject = MAIL_SUBJECTS[kind if kind in MAIL_SUBJECTS else event.state.value].format(
                server=event.server, vs=ld_virtual(vs), weight=health[servers[event.server].endpoint].weight)
            self._mail(vs, subject, event.server, event.state.value, event.reason, phase, now)
        kind = done.get(str(vs.fallback), "") if vs.fallback is not None else ""
        if kind in ("fallback-add", "fallback-delete"):
            why = "no real server is up" if kind == "fallback-add" else "a real server is up"
            subject = MAIL_SUBJECTS[kind].format(server=vs.fallback, vs=ld_virtual(vs))
            self._mail(vs, subject, f"{vs.fallback} (fallback)", "added" if kind == "fallback-add" else "removed",
                       why, phase, now)
        if not vs.fallbackcommand:
            return
        # ldirectord's do_fallback_command: once per change of status, and once at start (or for a
        # new command) with the status found, so a script a restart left wrong is put right
        status = "stop" if serving else "start"
        key = (vs.ipvs_key, vs.fallbackcommand)
        last, proc = self.fallback_ran.get(key, ("", None))
        if status == last or (proc is not None and proc.poll() is None):
            return  # nothing new, or the last run still runs: this one waits for it (killed at Hooks.TIMEOUT)
        words = fallback_words(vs, status)
        why = "a real server is up" if serving else "no real server is up"
        self.output.say(f"{vs.label()}: {why}: fallbackcommand {shlex.join(words)}",
                        "fallback-delete" if serving else "fallback-add")
        env = dict(os.environ, MONITOR_RS_SERVICE=vs.address, MONITOR_RS_SERVICE_NAME=vs.name,
                   MONITOR_RS_STATE=status)
        proc = self.hooks.launch(words, env, vs.label(), "fallbackcommand")
        # one that could not start (said by launch) is not taken as run: tried again next pass
        self.fallback_ran[key] = (status if proc is not None else last, proc)

    def _mail(self, vs: VirtualService, subject: str, server: str, state: str, reason: str, phase: Phase,
              now: float) -> None:
        """One alert to the service's addresses if its emailalertstatus lets this phase's out
        (ldirectord's ld_emailalert_send): said in the log, then handed to the mail worker."""
        words = vs.emailalertstatus
        if not vs.emailalert or "none" in words or ("all" not in words and phase.value not in words):
            return
        import email.utils
        self.output.say(f"emailalert: {subject}")
        try:
            message = alert_mail(vs, self.config, subject, server, state, reason, phase, now)
            sender = email.utils.parseaddr(message["From"])[1] or default_sender()
        except Exception as exc:  # a header the email package refuses (a config's): never the pass's end
            key = ("emailalert", vs.address)
            if self.failing.get(key) != str(exc):
                self.output.say(f"emailalert: cannot make the mail of {vs.label()}: {exc}", "failed")
            self.failing[key] = str(exc)
            return
        self.mailer.send(self.config.smtp, sender, vs.emailalert, message)

    def _resend(self, phase: Phase, now: float) -> None:
        """emailalertfreq: while a real server stays down, its alert again every so many seconds
        (ldirectord's ld_emailalert_resend: "Inaccessible real server")."""
        for vs in self.config.services:
            for rs in vs.servers:
                key = (vs.ipvs_key, str(rs))
                if key not in self.alerted:
                    continue
                h = self.health.get((vs.ipvs_key, rs.endpoint))
                if h is None or h.up is not False or vs.emailalertfreq <= 0:
                    del self.alerted[key]
                elif now - self.alerted[key] >= vs.emailalertfreq:
                    self.alerted[key] = now
                    subject = MAIL_SUBJECTS["down"].format(server=rs, vs=ld_virtual(vs))
                    self._mail(vs, subject, str(rs), "down", h.reason, phase, now)

    def _say_news(self) -> None:
        """What the mail worker has to say, said by the loop."""
        while self.mailer.news:
            self.output.say(*self.mailer.news.popleft())

    def close(self, grace: float = 5.0) -> None:
        """The stop path: the stopping phase; queued alerts get `grace` seconds to go out."""
        self.phase = Phase.STOPPING
        left = self.mailer.flush(grace)
        self._say_news()
        if left:
            self.output.say(f"emailalert: {left} alert(s) not sent: the relay did not take them within "
                            f"{grace:g} s of the stop", "failed")


class Signals:
    """SIGTERM/SIGINT ask to stop, SIGHUP to reload; both wake the sleep at once."""

    def __init__(self):
        self.stop = False
        self.reload = False
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _poke(self) -> None:
        try:
            os.write(self._write_fd, b"x")
        except OSError:
            pass  # pipe full: a wake-up is already pending

    def _on_stop(self, signum, frame) -> None:
        self.stop = True
        self._poke()

    def _on_reload(self, signum, frame) -> None:
        self.reload = True
        self._poke()

    def ignore(self) -> None:
        """Once stopping: a second SIGTERM must not turn a clean exit into a kill
        (Python restores the default handlers while it shuts down)."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)

    def sleep(self, seconds: float) -> None:
        """Sleep, unless a signal has come or comes meanwhile."""
        if self.stop or self.reload or seconds <= 0:
            return
        select.select([self._read_fd], [], [], seconds)
        try:
            while os.read(self._read_fd, 512):
                pass
        except BlockingIOError:
            pass


class AlreadyRunning(Exception):
    pass


def take_lock(path: str) -> int:
    """flock a PID file; the kernel drops the lock when we die, however we die.
    Never through a symlink: we truncate it."""
    fd = open_regular(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def run_forever(monitor: Monitor, signals: Signals, load, after_pass=lambda report: None,
                watch: Optional[ConfigWatch] = None) -> None:
    """Pass after pass on a monotonic schedule (each service's own interval), until SIGTERM/SIGINT.

    `load` re-reads the config (with the command line's overrides) on SIGHUP, and with
    autoreload when `watch` sees its content change; `after_pass` publishes each pass
    (state file, metrics, live view).
    """
    monitor.stop_requested = lambda: signals.stop
    monitor.spread = True  # the checks that fall due while a pass runs join it
    monitor.cut_short = lambda: signals.reload  # but for a SIGHUP: the pass ends with what is in flight
    while not signals.stop:
        if signals.reload:
            signals.reload = False
            digest = watch.look() if watch else ""
            try:
                monitor.reload(load())
                if watch and digest:
                    watch.digest, watch.refused = digest, ""  # what SIGHUP loaded is no change for autoreload
            except ConfigError as exc:
                monitor.output.say(f"reload refused, keeping the running config: {exc}", "problem")
                if watch and digest and digest != watch.digest:
                    watch.refused = digest  # said once: not again by autoreload
        if watch is not None:
            autoreload(monitor, watch, load)
        wait = None
        try:
            after_pass(monitor.run_pass())
        except Exception as exc:  # one bad pass must not end monitoring
            wait = monitor.until_due()
            if wait <= 0:  # it failed before its services' next turns were set: not again at once
                wait = monitor.config.interval
            monitor.output.say(f"pass failed: {type(exc).__name__}: {exc}; next pass in {wait:g} s", "problem")
        signals.sleep(monitor.until_due() if wait is None else wait)


def autoreload(monitor: Monitor, watch: ConfigWatch, load) -> None:
    """autoreload and callback (ldirectord's check_cfgfile), at every pass: when the config's
    content changed, re-read it (autoreload = yes; a broken one is refused as on SIGHUP, said
    once per content), then start `callback` with the config's path, never waited for."""
    config = monitor.config
    if not (config.autoreload or config.callback):
        return
    digest = watch.look()
    if not digest or digest == watch.digest or digest == watch.refused:
        return
    if config.autoreload:
        monitor.output.say(f"config {config.path} changed on disk: reloading it (autoreload)")
        try:
            monitor.reload(load())
        except ConfigError as exc:
            monitor.output.say(f"reload refused, keeping the running config: {exc}", "problem")
            watch.refused = digest
        else:
            watch.digest, watch.refused = digest, ""
    else:
        monitor.output.say(f"config {config.path} changed on disk: not reloaded (autoreload = no)")
        watch.digest = digest
    callback = monitor.config.callback
    if callback and not monitor.dry_run:
        if monitor.hooks.launch([*callback, config.path], dict(os.environ), config.path, "callback") is not None:
            monitor.output.say(f"callback started: {shlex.join([*callback, config.path])}")


###############################################################################
# Status: the state file, the metrics, the table ##############################
###############################################################################
#
# Every pass becomes a snapshot (plain JSON-able data).  The running monitor
# rewrites it atomically as its state file, and optionally as a node_exporter
# textfile; `--status` shows the snapshot of a running monitor, or of one pass
# of probes that changes nothing; `--once` and the live view show it too.


def server_state(h: Health) -> str:
    if h.held:
        return h.held  # an operator's hold, whatever its health
    if h.up is None:
        return "unknown"
    if h.kept:
        return "down, kept"
    return "up" if h.up else "down"


def snapshot(report: PassReport, config: Config, source: str) -> dict:
    return {
        "monitor_rs": __version__, "source": source, "pid": os.getpid(), "config": config.path,
        "time": round(report.started, 3), "interval": config.interval, "pass_seconds": round(report.duration, 3),
        "timeout": longest_timeout(config.timeout, config.services),
        "services": [{
            "name": s.name, "address": s.address, "protocol": s.protocol, "problem": s.problem or s.contested or None,
            "contested": bool(s.contested and not s.problem),  # the problem is another manager's (the table was read)
            "servers": [{
                "server": r.server, "weight": r.weight, "ipvs_weight": r.ipvs_weight,
                "state": server_state(r.health), "probe": "ok" if r.result.ok else "failed",
                "reason": r.result.reason, "latency_ms": round(r.result.latency * 1000, 1),
                "intended_weight": (r.health.operator if r.health.operator is not None
                                    else r.weight if r.health.asked is None else r.health.asked),
                "good_streak": r.health.good, "bad_streak": r.health.bad, "quiesced": r.health.quiesced,
                "held": r.health.held or None,
                "memory": memory_of(r.health),
                "action": r.action or None,
                "last_change": ({"time": round(r.last_change[0], 3), "what": r.last_change[1]}
                                if r.last_change[1] else None),
            } for r in s.rows],
        } for s in report.services],
    }


def _ramping(r: dict) -> bool:
    """A server's entry in a snapshot: in its slow start, in IPVS at a weight on the way to its own."""
    memory = r.get("memory") if isinstance(r.get("memory"), dict) else {}
    weight = r["ipvs_weight"]
    return memory.get("ramp") is not None and weight is not None and 0 < weight < r.get("intended_weight", 0)


def in_place(snap: dict) -> bool:
    """Every server up and in IPVS at the weight it should have, every table readable: what --status exits 0 on.
    A server an operator holds out (maintenance) is in place when it is out (absent, or at weight 0);
    one in its slow start, at the weight the ramp has reached."""
    return all(not s["problem"] and all((r["state"] == "up" and r["ipvs_weight"] is not None
                                         and (r["ipvs_weight"] == r.get("intended_weight", r["ipvs_weight"])
                                              or _ramping(r)))
                                        or (r.get("held") and not r["ipvs_weight"])
                                        for r in s["servers"])
               for s in snap["services"])


def write_atomically(path: str, text: str) -> None:
    """Readers see the old file or the new one, never half of one (even after a kill).

    The folder may belong to someone else: its names are only created (O_EXCL), renamed
    and removed, never followed.  No fsync: these files describe the running process;
    after a power cut they are stale anyway."""
    import tempfile  # (at the first state file, not at start: see the imports)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".monitor_rs-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o644)  # through the descriptor: the name may have been swapped
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def stale(snap: dict, now: float) -> bool:
    """Whether a snapshot's pass is too old to be a running monitor's last (that monitor is stuck).
    A pass lasts about an interval, and up to a probe timeout more while a check is in flight."""
    return now - float(snap.get("time", 0)) > 3 * float(snap.get("interval", 3)) + float(snap.get("timeout", 0)) + 10


def read_state(path: str, now: float) -> Optional[dict]:
    """The state file of a monitor that is running now, or None."""
    try:
        with open(path, encoding="utf-8") as handle:
            snap = json.load(handle)
        pid = int(snap["pid"])
        if stale(snap, now):
            return None  # stale: that monitor is stuck or the file is not its
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError):
        return None
    if pid <= 0:
        return None  # kill(0) and kill(-1) would ask about groups, not a monitor
    try:
        os.kill(pid, 0)
    except PermissionError:
        pass  # alive, and not ours: a root monitor, asked by an operator
    except (OSError, OverflowError):
        return None
    return snap


def state_files(config: Config) -> List[str]:
    """Where --status looks: the configured state file; or, when that is the default, a
    root monitor's (RUN_DIR) first, then our own folder's -- one place, whoever asks."""
    name = os.path.basename(default_run_path(config.path, "state.json"))
    defaults = [os.path.join(folder, name) for folder in run_dirs()]
    return defaults if config.state_file in defaults else [config.state_file]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


METRICS = (  # (name, help, value of a server's entry in the snapshot)
    ("monitor_rs_server_up", "1 when the monitor holds the real server healthy.",
     lambda r: int(r["state"] == "up")),
    ("monitor_rs_server_held", "1 when an operator holds the real server out (maintenancedir, drain).",
     lambda r: int(bool(r.get("held")))),
    ("monitor_rs_server_drained", "1 when the real server is drained (monitor-rs --drain).",
     lambda r: int(r.get("held") == DRAINED)),
    ("monitor_rs_server_weight", "Weight of the real server in IPVS (-1 when absent).",
     lambda r: -1 if r["ipvs_weight"] is None else r["ipvs_weight"]),
    ("monitor_rs_probe_latency_seconds", "Duration of the last probe.",
     lambda r: f"{r['latency_ms'] / 1000:.4f}"),
)


def metrics_text(snap: dict) -> str:
    """A node_exporter textfile: per-server gauges, plus the pass itself.

    Each family's HELP, TYPE and samples stand together: parsers (prometheus_client's
    among them) read a family's samples after another family's as a new, untyped one."""
    servers = [(f'service="{_label(s["address"])}",name="{_label(s["name"])}",server="{_label(r["server"])}"', r)
               for s in snap["services"] for r in s["servers"]]
    lines = []
    for name, help_text, value in METRICS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines += [f"{name}{{{labels}}} {value(r)}" for labels, r in servers]
    lines += ["# HELP monitor_rs_service_contested 1 when another manager keeps undoing the monitor's changes to "
              "the virtual service: not repaired until a reload or restart.",
              "# TYPE monitor_rs_service_contested gauge"]
    lines += [f'monitor_rs_service_contested{{service="{_label(s["address"])}",name="{_label(s["name"])}"}} '
              f'{int(bool(s.get("contested")))}' for s in snap["services"]]
    lines += [
        "# HELP monitor_rs_last_pass_timestamp_seconds When the last pass started.",
        "# TYPE monitor_rs_last_pass_timestamp_seconds gauge",
        f"monitor_rs_last_pass_timestamp_seconds {snap['time']}",
        "# HELP monitor_rs_pass_duration_seconds Duration of the last pass.",
        "# TYPE monitor_rs_pass_duration_seconds gauge",
        f"monitor_rs_pass_duration_seconds {snap['pass_seconds']}",
    ]
    return "\n".join(lines) + "\n"


class Publisher:
    """Writes the state file and the metrics after each pass; a failure is said once."""

    def __init__(self, warn):
        self.warn = warn
        self.problem = ""
        self.state_written = False  # by the last publish: the state file holds that pass
        self.rendered: Dict[str, str] = {}  # by the last publish: "state" (JSON), "metrics" (text), as written

    def publish(self, snap: dict, state_path: str, metrics_path: str) -> None:
        path = state_path  # named in the warning: not exc.filename, which is the temporary file's
        self.state_written = False
        self.rendered = {}
        try:
            if state_path:
                folder = os.path.dirname(state_path)
                why = make_run_dir(folder) if folder in run_dirs() else ""  # a default one: its folder made, checked
                if why:
                    raise OSError(errno.EACCES, why, state_path)
                text = self.rendered["state"] = json.dumps(snap, separators=(",", ":")) + "\n"  # C encoder: compact
                write_atomically(state_path, text)
                self.state_written = True
            path = metrics_path
            if metrics_path:
                text = self.rendered["metrics"] = metrics_text(snap)
                write_atomically(metrics_path, text)
        except OSError as exc:
            problem = f"monitor_rs: cannot write {path}: {exc.strerror or exc}; monitoring goes on"
            if problem != self.problem:
                self.warn(problem)
            self.problem = problem
            return
        self.problem = ""


# The status endpoint (listen = ADDR:PORT): GET /metrics and GET /status, served by one daemon
# thread of the monitor's own process that does nothing but I/O.  The loop renders both answers
# as bytes once per pass (StatusServer.publish) and swaps them in whole; the thread only sends
# them.  What a client may cost is bounded, whatever it does: at most LISTEN_MAX_CONNECTIONS at
# once (one more is told 503 and closed at once), its request head within LISTEN_HEAD_SECONDS and
# LISTEN_MAX_HEAD bytes, its whole answer within LISTEN_CONNECTION_SECONDS, and the thread handles
# at most LISTEN_EVENTS_PER_TICK socket events per LISTEN_TICK (a flood waits in the kernel's
# backlog, not in the monitor): probes and changes never wait for a client.

import selectors  # noqa: E402  (kept beside the code that uses it: the status endpoint)

STARTED = time.time()  # when the monitor started (this module was loaded): monitor_rs_start_time_seconds
LISTEN_MAX_CONNECTIONS = 64
LISTEN_MAX_HEAD = 8192  # bytes of request line and headers
LISTEN_HEAD_SECONDS = 2.0  # from accept to the end of the request head
LISTEN_CONNECTION_SECONDS = 10.0  # from accept to the last byte of the answer
LISTEN_TICK = 0.1  # seconds
LISTEN_EVENTS_PER_TICK = 200  # accepts, reads and writes: the thread's share of the CPU stays small
LISTEN_BACKLOG = 64
LISTEN_METHODS = ("GET", "HEAD")
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text exposition format
JSON_TYPE = "application/json"


def _http_answer(code: int, reason: str, body: bytes, content_type: str = "text/plain; charset=utf-8",
                 extra: str = "") -> Tuple[bytes, bytes]:
    """(answer to GET, answer to HEAD): whole HTTP/1.1 answers, the connection closed after each."""
    head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n{extra}Connection: close\r\n\r\n"
            ).encode("ascii")
    return head + body, head


LISTEN_NO_PASS = _http_answer(503, "Service Unavailable", b"no pass yet\n", extra="Retry-After: 1\r\n")
LISTEN_NOT_FOUND = _http_answer(404, "Not Found", b"not found: try /metrics or /status\n")
LISTEN_NOT_ALLOWED = _http_answer(405, "Method Not Allowed", b"only GET and HEAD\n", extra="Allow: GET, HEAD\r\n")
LISTEN_BAD = _http_answer(400, "Bad Request", b"bad request\n")
LISTEN_TOO_LARGE = _http_answer(431, "Request Header Fields Too Large", b"request head too large\n")
LISTEN_BUSY = _http_answer(503, "Service Unavailable", b"busy\n", extra="Retry-After: 1\r\n")[0]
LISTEN_REQUEST = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/1\.[01]\r?\n")


class ListenOutcome(str, enum.Enum):
    """How a connection to the status endpoint ended (monitor_rs_status_connections_total)."""

    ANSWERED = "answered"  # the whole answer sent (any status code)
    BUSY = "busy"  # over LISTEN_MAX_CONNECTIONS: 503 and closed at once
    TIMED_OUT = "timed_out"  # head or answer not done within its deadline
    CLOSED = "closed"  # the client closed or reset before the whole answer


def scrape_metrics(snap: dict, served: Mapping[str, int], started: float, textfile: Optional[str] = None) -> str:
    """/metrics: the textfile's metrics (`textfile`, when already rendered), and what only a scrape
    needs: the version, when the monitor started, what the endpoint did with its connections (as
    of this pass)."""
    lines = [
        "# HELP monitor_rs_build_info The monitor's version (always 1).",
        "# TYPE monitor_rs_build_info gauge",
        f'monitor_rs_build_info{{version="{_label(__version__)}"}} 1',
        "# HELP monitor_rs_start_time_seconds When the monitor started (Unix time).",
        "# TYPE monitor_rs_start_time_seconds gauge",
        f"monitor_rs_start_time_seconds {started:.3f}",
        "# HELP monitor_rs_status_connections_total Connections to the status endpoint since it was opened, "
        "by how they ended.",
        "# TYPE monitor_rs_status_connections_total counter",
    ]
    lines += [f'monitor_rs_status_connections_total{{outcome="{o.value}"}} {served.get(o.value, 0)}'
              for o in ListenOutcome]
    return (metrics_text(snap) if textfile is None else textfile) + "\n".join(lines) + "\n"


class _Client:
    """One connection: its request head as it comes, then the answer as it goes."""

    __slots__ = ("sock", "head", "answer", "sent", "head_by", "done_by")

    def __init__(self, sock: socket.socket, now: float):
        self.sock = sock
        self.head = bytearray()
        self.answer: Optional[memoryview] = None  # set once the head is read
        self.sent = 0
        self.head_by = now + LISTEN_HEAD_SECONDS
        self.done_by = now + LISTEN_CONNECTION_SECONDS

    def deadline(self) -> float:
        return self.done_by if self.answer is not None else min(self.head_by, self.done_by)


def listen_address(text: str) -> Tuple[int, Tuple[str, int]]:
    """(family, sockaddr) of a `listen` value (str(Endpoint): IPv6 in brackets)."""
    ep = parse_endpoint(text, None)
    return (socket.AF_INET6 if ep.ip.version == 6 else socket.AF_INET), (str(ep.ip), ep.port)


class StatusServer:
    """The status endpoint: the listening socket, bound at start, and the thread that serves it.

    The loop calls publish() after each pass and says what is in `news` (the thread never
    writes to the log or the console); close() ends it.  A failure of the thread ends the
    endpoint, said once; monitoring goes on."""

    def __init__(self, address: str):
        self.address = address
        family, where = listen_address(address)
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind(where)
            self.listener.listen(LISTEN_BACKLOG)
            self.listener.setblocking(False)
        except BaseException:
            self.listener.close()
            raise
        self.pages: Dict[str, Tuple[bytes, bytes]] = {}  # path -> (GET, HEAD) answers; replaced whole
        self.served: Dict[str, int] = {o.value: 0 for o in ListenOutcome}
        self.news: "collections.deque[Tuple[str, str]]" = collections.deque()
        self.failed = False  # the thread ended on a failure (said in news): the endpoint is closed
        self.faulted = False  # a connection met a failure (said in news once)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = False
        self._clients: Dict[int, _Client] = {}
        self.thread = threading.Thread(target=self._run, name="monitor_rs status", daemon=True)
        self.thread.start()

    def publish(self, snap: dict, rendered: Optional[Mapping[str, str]] = None) -> None:
        """Render this pass's answers (in the loop: the thread only sends bytes) and swap them in;
        what the Publisher `rendered` of the same snapshot is not rendered again."""
        rendered = rendered or {}
        metrics = scrape_metrics(snap, dict(self.served), STARTED, rendered.get("metrics")).encode("utf-8")
        status = (rendered.get("state") or json.dumps(snap, separators=(",", ":")) + "\n").encode("utf-8")
        self.pages = {"/metrics": _http_answer(200, "OK", metrics, METRICS_TYPE),
                      "/status": _http_answer(200, "OK", status, JSON_TYPE)}

    def close(self) -> None:
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(1.0)
        for sock in (self.listener, self._wake_w):
            sock.close()

    # The thread ###################################################################

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            self._serve(sel)
        except Exception as exc:  # never the monitor's trouble: said once by the loop, the endpoint ends
            self.news.append((f"status endpoint on {self.address} failed: {type(exc).__name__}: {exc}; it is "
                              "closed, monitoring goes on", "problem"))
            self.failed = True  # after the news: whoever sees it failed finds the reason said
        finally:
            for client in list(self._clients.values()):
                client.sock.close()
            self._clients.clear()
            sel.close()
            self._wake_r.close()
            if self.failed:
                self.listener.close()

    def _serve(self, sel: selectors.BaseSelector) -> None:
        sel.register(self._wake_r, selectors.EVENT_READ)
        listening = False
        budget, tick = LISTEN_EVENTS_PER_TICK, time.monotonic() + LISTEN_TICK
        rest_until = 0.0  # the listener is not watched before then (no descriptor left to accept with)
        while not self._stop:
            now = time.monotonic()
            if now >= tick:
                budget, tick = LISTEN_EVENTS_PER_TICK, now + LISTEN_TICK
            if budget <= 0:  # this tick's share is spent: the clients wait (in the kernel) for the next
                select.select([self._wake_r], [], [], tick - now)
                continue
            if not listening and now >= rest_until:
                sel.register(self.listener, selectors.EVENT_READ)
                listening = True
            wait = min([c.deadline() for c in self._clients.values()] + [now + 1.0]
                       + [rest_until] * (not listening)) - now
            for key, events in sel.select(max(wait, 0.0)):
                if key.fileobj is self._wake_r:
                    try:
                        self._wake_r.recv(64)
                    except OSError:
                        pass
                    continue
                if budget <= 0:
                    break  # what is left is ready again at the next select
                if key.fileobj is self.listener:
                    taken, paused = self._accept(sel, budget)
                    budget -= max(taken, 1)
                    if paused:
                        rest_until = time.monotonic() + LISTEN_TICK
                    if paused or budget <= 0:
                        sel.unregister(self.listener)
                        listening = False
                    continue
                budget -= 1
                client = key.data
                try:
                    if events & selectors.EVENT_READ and client.answer is None:
                        self._read(sel, client)
                    elif events & selectors.EVENT_WRITE:
                        self._write(sel, client)
                except Exception as exc:  # a bug one request meets: that connection ends, serving goes on
                    if client.sock.fileno() >= 0:
                        self._end(sel, client, ListenOutcome.CLOSED)
                    if not self.faulted:
                        self.news.append((f"status endpoint on {self.address}: a connection failed: "
                                          f"{type(exc).__name__}: {exc}; it was closed, serving goes on "
                                          "(said once)", "problem"))
                    self.faulted = True
            now = time.monotonic()
            for client in [c for c in self._clients.values() if c.deadline() <= now]:
                self._end(sel, client, ListenOutcome.TIMED_OUT)

    def _accept(self, sel: selectors.BaseSelector, budget: int) -> Tuple[int, bool]:
        """Accept what waits, up to `budget`: (how many were taken, whether the listener must rest)."""
        taken = 0
        while taken < budget:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # never spin on a listener that stays readable
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return taken, True
                taken += 1
                continue  # ECONNABORTED and the like: that one is gone, the next may wait
            taken += 1
            if len(self._clients) >= LISTEN_MAX_CONNECTIONS:
                self._busy(sock)
                continue
            sock.setblocking(False)
            client = _Client(sock, time.monotonic())
            self._clients[sock.fileno()] = client
            sel.register(sock, selectors.EVENT_READ, client)
        return taken, False

    def _busy(self, sock: socket.socket) -> None:
        """Over the limit: what fits of a 503 at once, never waited for, and closed."""
        try:
            sock.setblocking(False)
            sock.send(LISTEN_BUSY)
        except OSError:
            pass
        sock.close()
        self.served[ListenOutcome.BUSY.value] += 1

    def _read(self, sel: selectors.BaseSelector, client: _Client) -> None:
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._end(sel, client, ListenOutcome.CLOSED)
            return
        client.head += data
        ends = [at for at in (client.head.find(b"\n\r\n"), client.head.find(b"\n\n")) if at >= 0]
        if not ends:
            if len(client.head) >= LISTEN_MAX_HEAD:
                self._answer(sel, client, LISTEN_TOO_LARGE[0])
            return
        self._answer(sel, client, self._route(bytes(client.head[:min(ends) + 1])))

    def _route(self, head: bytes) -> bytes:
        """The answer to a request head (its request line; headers are not read)."""
        match = LISTEN_REQUEST.match(head)
        if match is None:
            return LISTEN_BAD[0]
        method, target = match.group(1).decode("ascii"), match.group(2)
        head_only = method == "HEAD"
        if method not in LISTEN_METHODS:
            return LISTEN_NOT_ALLOWED[0]
        path = target.split(b"?", 1)[0].decode("ascii", "replace")
        pages = self.pages  # one read: the loop may swap in a new pass meanwhile
        if path in ("/metrics", "/status"):
            page = pages.get(path, LISTEN_NO_PASS)
        else:
            page = LISTEN_NOT_FOUND
        return page[1] if head_only else page[0]

    def _answer(self, sel: selectors.BaseSelector, client: _Client, answer: bytes) -> None:
        client.answer = memoryview(answer)
        client.head = bytearray()
        sel.modify(client.sock, selectors.EVENT_WRITE, client)
        self._write(sel, client)

    def _write(self, sel: selectors.BaseSelector, client: _Client) -> None:
        assert client.answer is not None
        try:
            client.sent += client.sock.send(client.answer[client.sent:])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._end(sel, client, ListenOutcome.CLOSED)
            return
        if client.sent >= len(client.answer):
            try:
                client.sock.shutdown(socket.SHUT_WR)  # the answer ends here; the rest of the request is unread
            except OSError:
                pass
            self._end(sel, client, ListenOutcome.ANSWERED)

    def _end(self, sel: selectors.BaseSelector, client: _Client, outcome: ListenOutcome) -> None:
        self._clients.pop(client.sock.fileno(), None)
        try:
            sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()
        self.served[outcome.value] += 1


def listen_error(address: str, exc: OSError) -> str:
    return f"cannot listen on {address} (listen): {exc.strerror or exc}"


class Listening:
    """The status endpoint across reloads, for the loop: bound at start (a failure there is the
    caller's, exit 2); a reload that moves it to an address that cannot be bound keeps the old
    one, said once; `listen` emptied closes it.  What the thread has to say is said here."""

    def __init__(self, say):
        self.say = say
        self.server: Optional[StatusServer] = None
        self.refused = ""  # the address last refused: not tried again until the config changes it

    def start(self, address: str) -> None:
        """Bind `address` (OSError when it cannot be: the caller says so and exits)."""
        self.server = StatusServer(address)

    def follow(self, wanted: str) -> None:
        """After a pass: the config's `listen` (a reload may have changed it)."""
        old = self.server
        current = old.address if old is not None else ""
        if wanted == current or (wanted and wanted == self.refused):
            return
        self.refused = ""
        if not wanted:
            old.close()
            self.server = None
            self.say(f"status endpoint on {current} closed (listen is off)", "info")
            return
        try:
            self.server = StatusServer(wanted)
        except OSError as exc:
            same_port = old is not None and listen_address(wanted)[1][1] == listen_address(current)[1][1]
            if not same_port or exc.errno != errno.EADDRINUSE:
                self._refuse(wanted, exc, current)
                return
            old.close()  # the same port on another address of this host: the old one must go first
            try:
                self.server = StatusServer(wanted)
            except OSError as exc:
                self._refuse(wanted, exc, "")
                try:
                    self.server = StatusServer(current)
                except OSError:
                    self.server = None
                    return
                self.say(f"status endpoint back on {current}", "info")
                return
        else:
            if old is not None:
                old.close()
        self.say(f"status endpoint on http://{wanted}/ (GET /metrics, GET /status)", "info")

    def _refuse(self, wanted: str, exc: OSError, current: str) -> None:
        self.refused = wanted
        kept = f"still serving on {current}" if current else "not serving"
        self.say(f"status endpoint: {listen_error(wanted, exc)}; {kept}; monitoring goes on", "problem")

    def publish(self, snap: dict, rendered: Optional[Mapping[str, str]] = None) -> None:
        server = self.server
        if server is None:
            return
        while server.news:
            self.say(*server.news.popleft())
        if not server.failed:
            server.publish(snap, rendered)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def lock_holder(path: str, locks: str = "/proc/locks") -> Optional[int]:
    """The PID that holds the flock of the lock file `path` (the kernel's /proc/locks), or None.

    Matched on the device and the inode both: an inode number alone is any user's to match with
    a file of their own on another file system (and a lock on it)."""
    try:
        st = os.lstat(path)
        with open(locks, encoding="ascii", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:  # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF" ("1: -> FLOCK ..." waits: skipped)
        words = line.split()  # the device's major and minor in hex, the inode in decimal
        if len(words) >= 6 and words[1:4] == ["FLOCK", "ADVISORY", "WRITE"] and words[4].isdigit():
            where = words[5].split(":")
            try:
                major, minor, inode = int(where[0], 16), int(where[1], 16), int(where[2])
            except (ValueError, IndexError):
                continue
            if (major, minor, inode) == (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino):
                return int(words[4])
    return None


def endpoint_status(config: Config, timeout: float = 2.0) -> Optional[dict]:
    """--status from the running monitor's endpoint (listen), or None (then the state file).

    Taken only from the monitor that holds this config's lock: any user may listen on a free
    port while the monitor is down, and --status (root's, or a check's) must not show what
    such a process says."""
    if not config.listen:
        return None
    family, (host, port) = listen_address(config.listen)
    if ipaddress.ip_address(host).is_unspecified:  # listening on every address: ask loopback
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    deadline = time.monotonic() + timeout
    body = bytearray()
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect((host, port))
            sock.sendall(b"GET /status HTTP/1.1\r\nHost: monitor_rs\r\nConnection: close\r\n\r\n")
            while len(body) < STATUS_MAX_BYTES:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
        head, _, data = bytes(body).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200 "):
            return None
        snap = json.loads(data)
        pid = int(snap["pid"]) if isinstance(snap, dict) and isinstance(snap.get("services"), list) else 0
        if pid > 0 and stale(snap, time.time()):
            return None  # its thread still serves the last pass of a loop that is stuck: as a stale state file
    except (OSError, ValueError, KeyError, TypeError, OverflowError):
        return None
    if pid <= 0 or lock_holder(config.lock) != pid:
        return None
    return snap if listened_by(pid, family, host, port) else None


def _proc_net_address(family: int, ip: str) -> str:
    """An address as /proc/net/tcp{,6} writes it: each 32-bit word in hex, in the host's byte order."""
    packed = socket.inet_pton(family, ip)
    return "".join(f"{word:08X}" for word in struct.unpack(f"={len(packed) // 4}I", packed))


def listened_by(pid: int, family: int, host: str, port: int, net: str = "/proc/net") -> bool:
    """Whether every socket listening where a connection to (host, port) lands is the process
    `pid`'s (its descriptors, when we may read them; else its user's): the lock's holder may
    not be listening there (a reload to a port another user held is refused and the old one
    kept; a config edited and not yet reloaded), and whoever is could claim its PID."""
    accepting = {("tcp6" if family == socket.AF_INET6 else "tcp", _proc_net_address(family, host)),
                 ("tcp6", _proc_net_address(socket.AF_INET6, "::"))}
    if family == socket.AF_INET:
        accepting |= {("tcp", _proc_net_address(family, "0.0.0.0")),
                      ("tcp6", _proc_net_address(socket.AF_INET6, f"::ffff:{host}"))}
    found = []  # (uid, inode) of each listening socket there
    try:
        for name in ("tcp", "tcp6"):
            try:
                with open(os.path.join(net, name), encoding="ascii", errors="replace") as handle:
                    rows = handle.read().splitlines()[1:]
            except FileNotFoundError:  # no IPv6 here
                continue
            for row in rows:  # "sl local_address rem_address st ... uid timeout inode"
                words = row.split()
                if len(words) < 10 or words[3] != "0A":  # 0A: LISTEN
                    continue
                address, _, hex_port = words[1].partition(":")
                if int(hex_port, 16) == port and (name, address) in accepting:
                    found.append((int(words[7]), words[9]))
        owner = os.stat(f"/proc/{pid}").st_uid
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except PermissionError:  # another user's process: its user must own every listener there
            return bool(found) and all(uid == owner for uid, _ in found)
    except (OSError, ValueError):
        return False
    held = set()
    for fd in fds:
        try:
            held.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile (a probe's socket)
            pass
    return bool(found) and all(f"socket:[{inode}]" in held for _, inode in found)


STATUS_MAX_BYTES = 256 * 1024 * 1024  # what --status reads of /status at most


STATE_COLOURS = {"up": "green", "down": "red", "down, kept": "yellow", MAINTENANCE: "blue", DRAINED: "magenta"}


def _ipvs(weight: Optional[int], readable: bool = True) -> str:
    """The weight in IPVS; "unknown" when the table could not be read (the problem says why)."""
    if not readable:
        return "unknown"
    return "absent" if weight is None else str(weight)


STATUS_COLUMNS = ("Real server", "Weight", "In IPVS", "State", "Reason", "Latency", "Action", "Last change")
NARROW_DROPS = ("Last change", "Action", "Latency")  # what a narrow terminal loses first, in this order
NUMERIC_COLUMNS = ("Weight", "In IPVS", "Latency")
FOLDED_COLUMNS = {"Reason": 12, "Action": 9, "Last change": 19}  # wrapped, but not narrower than this


class _ServiceTable:
    """One virtual service's table, laid out for the width it is drawn in (the live view's
    terminal may be resized): the least needed columns go first, a server's address is never
    cut (rows that all read `127.0.0…` tell nothing), and data is text, never rich markup."""

    def __init__(self, service: dict):
        self.service = service
        self.siblings = [self]  # the tables drawn together, which show the same columns
        s = service
        self.rows = [{
            "Real server": r["server"], "Weight": str(r["weight"]),
            "In IPVS": _ipvs(r["ipvs_weight"], not s["problem"] or s.get("contested")), "State": r["state"],
            "Reason": r["reason"],
            "Latency": f"{r['latency_ms']:.0f} ms", "Action": r["action"] or "",
            "Last change": f"{timestamp(r['last_change']['time'])} {r['last_change']['what']}"
                           if r["last_change"] else "",
        } for r in s["servers"]]

    def width(self, columns: Sequence[str]) -> int:
        """The least width these tables are readable at: whole values, folded columns not too narrow."""
        rows = [row for table in self.siblings for row in table.rows]
        width = 3 * len(columns) + 1  # borders and padding
        for column in columns:
            longest = max([len(column)] + [len(row[column]) for row in rows])
            width += min(longest, FOLDED_COLUMNS.get(column, longest))
        return width

    def table(self, columns: Sequence[str], squeezed: bool = False):
        """`squeezed`: narrower than readable; every column but the server is folded as far as it must."""
        from rich.table import Table as RichTable
        from rich.text import Text
        s = self.service
        title = Text(f"{s['address']} ({s['name']})")
        if s["problem"]:
            title.append(f"  {s['problem']}", style="bold red")
        table = RichTable(title=title, title_justify="left", header_style="bold")
        for column in columns:
            whole = column == "Real server" or not (squeezed or column in FOLDED_COLUMNS)
            table.add_column(column, justify="right" if column in NUMERIC_COLUMNS else "left", no_wrap=whole,
                             overflow="fold", min_width=max([len(column)] + [len(row[column]) for row in self.rows])
                             if whole else None)
        for row in self.rows:
            table.add_row(*(Text.assemble((row[column], STATE_COLOURS.get(row["State"], "") if column == "State"
                                           else "")) for column in columns))
        return table

    def __rich_console__(self, console, options):
        columns = list(STATUS_COLUMNS)
        for column in NARROW_DROPS:
            if self.width(columns) <= options.max_width:
                break
            columns.remove(column)
        yield self.table(columns, squeezed=self.width(columns) > options.max_width)


def status_tables(snap: dict) -> list:
    """One rich table per virtual service (laid out when drawn)."""
    tables = [_ServiceTable(s) for s in snap["services"]]
    for table in tables:
        table.siblings = tables
    return tables


def show_status(snap: dict, console) -> None:
    """The table: rich on a terminal, one plain line per server otherwise."""
    if console is not None:
        for table in status_tables(snap):
            console.print(table)
        return
    for s in snap["services"]:
        if s["problem"]:
            print(f"{s['address']} ({s['name']}) problem={s['problem']!r}")
        for r in s["servers"]:
            print(f"{s['address']} ({s['name']}) {r['server']} weight={r['weight']} "
                  f"ipvs={_ipvs(r['ipvs_weight'], not s['problem'] or s.get('contested'))} state={r['state']} "
                  f"reason={r['reason']!r} latency_ms={r['latency_ms']:.0f} action={r['action'] or '-'}", flush=True)


###############################################################################
# The CLI #####################################################################
###############################################################################

import click  # noqa: E402  (kept beside the code that uses it)

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_RUNNING, EXIT_NO_IPVS, EXIT_NO_LOCK = 0, 1, 2, 3, 4, 5
# Settings that name a file, and the option that overrides each: a directory there is a config error.
PATH_OPTIONS = {"log": "--log-file", "lock": "--lock-file", "state_file": "--state-file",
                "prometheus_file": "", "ipvsadm": "--ipvsadm"}


def check_paths(config: Config, from_cli: Mapping[str, str]) -> None:
    """A directory given as a file fails at start (or reload) in one line, not at the first write."""
    for key, option in PATH_OPTIONS.items():
        value = getattr(config, key)
        if key == "ipvsadm" and "/" not in value:
            continue  # a bare name is looked up in PATH
        if value and os.path.isdir(value):
            where = f"{option} {value}" if key in from_cli else f"{config.path}: [monitor] {key} = {value!r}"
            raise ConfigError(f"{where}: is a directory, not a file")


def check_maintenancedir(config: Config) -> None:
    """maintenancedir takes servers out: as root, a folder others may write (or could create) is a
    config error, as the config itself is; one that is not there yet is said at the first pass."""
    folder = config.maintenancedir
    if not folder:
        return
    where = f"{config.path}: maintenancedir {folder}"
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"{where}: not a folder")
    why = unsafe_path(folder) if os.geteuid() == 0 else ""
    if why:
        raise ConfigError(f"{where}: not read as root, others can change it: {why}")


def default_drain_dir() -> str:
    """Where drains are kept when neither the config (maintenancedir) nor --drain-dir says: DRAIN_DIR
    for root (it survives reboots: a drain lasts until undrained); a non-root monitor's own folder."""
    if os.geteuid() == 0:
        return DRAIN_DIR
    state = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):
        home = os.path.expanduser("~")
        state = os.path.join(home, ".local", "state") if os.path.isabs(home) else ""
    return os.path.join(state, "monitor_rs") if state else os.path.join(private_run_dir(), "drained")


def drain_dir_of(config: Config, option: Optional[str]) -> str:
    """The one folder the drains of this config are in: its maintenancedir (one truth with ldirectord's
    files), else --drain-dir, else the default.  Both maintenancedir and --drain-dir: a usage error."""
    if config.maintenancedir and option:
        raise ConfigError(f"--drain-dir {option}: {config.path} has maintenancedir {config.maintenancedir}, "
                          "which keeps the drains: give one place, not two")
    return config.maintenancedir or (os.path.abspath(option) if option else default_drain_dir())


def check_drain_dir(folder: str) -> None:
    """--drain-dir decides what is taken out: as root, one others may write (or could create) is refused."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"--drain-dir {folder}: not a folder")
    why = unsafe_path(folder) if os.geteuid() == 0 else ""
    if why:
        raise ConfigError(f"--drain-dir {folder}: not read as root, others can change it: {why}")


def _drain_folder_ready(folder: str) -> str:
    """Make the drains' folder when absent (0755; a non-root default: 0700, as make_run_dir) and check it
    as the monitor will read it; "" when fit, else why not."""
    if folder == default_drain_dir():
        if os.geteuid() != 0:
            try:
                os.makedirs(os.path.dirname(folder), 0o700, exist_ok=True)
            except OSError as exc:
                return f"cannot create {os.path.dirname(folder)}: {exc.strerror or exc}"
        return make_run_dir(folder, private=os.geteuid() != 0)
    try:
        os.mkdir(folder, 0o755)  # a final symlink is not followed: it exists, and is checked below
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot create {folder}: {exc.strerror or exc}"
    if not os.path.isdir(folder):
        return f"{folder} is not a folder"
    why = unsafe_path(folder) if os.geteuid() == 0 else ""
    return f"{folder}: not read as root, others can change it: {why}" if why else ""


def _drains_in(folder: str) -> Dict[str, DrainKey]:
    """The drain entries in the folder, by name ({} when it does not exist)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return {}
    return {name: key for name, key in ((name, drain_key(name)) for name in sorted(names)) if key is not None}


def _who_acts(config: Config) -> str:
    """Who will act on a drain: the monitor running for this config (its state file is fresh), or the next one."""
    now = time.time()
    if any(read_state(path, now) is not None for path in state_files(config)):
        return "the running monitor"
    return "no monitor runs for this config now: once started, the monitor"


def _contested(config: Config, services: Sequence[VirtualService]) -> str:
    """What to add when the running monitor leaves one of `services` to another manager (Monitor._tug):
    it changes nothing there, a drain included, until a reload; else ""."""
    now, names = time.time(), {vs.name for vs in services}
    for path in state_files(config):
        snap = read_state(path, now)
        try:
            left = sorted({s["name"] for s in snap["services"] if s.get("contested") and s["name"] in names})
        except (TypeError, KeyError):
            continue
        if left:
            return (f"; but it leaves {', '.join(left)} to another manager (contested): nothing changes there "
                    "until a reload (SIGHUP)")
    return ""


def _others_monitor(config: Config) -> str:
    """The monitor running for this config as another user (root's, seen by a user who forgot sudo), or ""."""
    now = time.time()
    for path in state_files(config):
        snap = read_state(path, now)
        try:
            owner = os.stat(path).st_uid if snap is not None else os.geteuid()
        except OSError:
            continue
        if owner != os.geteuid():
            return f"the monitor running for this config (PID {snap['pid']}) is uid {owner}'s"
    return ""


def _undrain_left_behind(config: Config, folder: str, target: str, asked: DrainKey) -> int:
    """--undrain of what the config no longer names (a server or service removed since it was drained):
    its entries are removed all the same, or they would hold it out again, unseen, once it is
    configured anew; none there: the usage error it is."""
    gone = [n for n, k in _drains_in(folder).items() if k.ip == asked.ip and asked.port in (None, k.port)
            and asked.service in (None, k.service)]
    if folder == default_drain_dir() and _others_monitor(config):
        gone = []  # another user's monitor: this user's own folder is not the one it reads
    try:
        for n in gone:
            try:
                os.unlink(os.path.join(folder, n))  # the name itself: unlink never follows a symlink
            except FileNotFoundError:
                pass
    except OSError as exc:
        click.echo(f"monitor_rs: --undrain {target}: {folder}: {exc.strerror or exc}", err=True)
        return EXIT_FAILED
    where = f"virtual service {asked.service}" if asked.service is not None else "any virtual service"
    if not gone and asked.service is not None and all(vs.name != asked.service for vs in config.services):
        names = ", ".join(vs.name for vs in config.services)
        click.echo(f"monitor_rs: --service {asked.service}: no [virtual {asked.service}] in {config.path} "
                   f"(there: {names})", err=True)
        return EXIT_CONFIG
    if not gone:
        click.echo(f"monitor_rs: --undrain {target}: not a real server of {where} in {config.path}", err=True)
        return EXIT_CONFIG
    click.echo(f"monitor_rs: removed {', '.join(gone)} from {folder}: {target} is not a real server of {where} "
               f"in {config.path} now; configured again, it will not be held out by them")
    return EXIT_OK


def run_drain(config: Config, folder: str, target: str, service: Optional[str], undo: bool) -> int:
    """--drain / --undrain: write (or remove) the drain's name in the folder the monitor reads each
    pass, after checking it names a configured real server; one line says what was done."""
    option = "--undrain" if undo else "--drain"
    try:
        ep = parse_endpoint(target, 0)
    except ValueError as exc:
        click.echo(f"monitor_rs: {option} {target}: {exc} (expected RIP or RIP:PORT)", err=True)
        return EXIT_CONFIG
    port = ep.port or None
    services = [vs for vs in config.services if service is None or vs.name == service]
    if undo and not any(rs.ip == ep.ip and port in (None, rs.port) for vs in services for rs in vs.servers):
        return _undrain_left_behind(config, folder, target, DrainKey(str(ep.ip), port, service))
    if not services:
        names = ", ".join(vs.name for vs in config.services)
        click.echo(f"monitor_rs: --service {service}: no [virtual {service}] in {config.path} (there: {names})",
                   err=True)
        return EXIT_CONFIG
    matched = [(vs, rs) for vs in services for rs in vs.servers if rs.ip == ep.ip and port in (None, rs.port)]
    if not matched:
        where = f"virtual service {service}" if service is not None else "any virtual service"
        click.echo(f"monitor_rs: {option} {target}: not a real server of {where} in {config.path}", err=True)
        return EXIT_CONFIG
    other = _others_monitor(config) if folder == default_drain_dir() else ""  # each user's default is its own
    if other:
        click.echo(f"monitor_rs: {option} {target}: {other}, which does not read this user's drains ({folder}): "
                   f"run {option} as that user", err=True)
        return EXIT_CONFIG
    key = DrainKey(str(ep.ip), port, service)
    name = drain_name(key)
    servers = ", ".join(f"{rs} in {vs.label()}" for vs, rs in matched)
    try:
        if not undo:
            why = _drain_folder_ready(folder)
            if why:
                click.echo(f"monitor_rs: {option} {target}: {why}", err=True)
                return EXIT_CONFIG
            path = os.path.join(folder, name)
            try:  # an empty entry, never through a symlink; its mtime is when the drain began
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
            except FileExistsError:
                click.echo(f"monitor_rs: {servers}: already drained since "
                           f"{timestamp(os.lstat(path).st_mtime)} ({name} in {folder}), left as it is")
                return EXIT_OK
            limits = sorted({vs.drain_timeout for vs, _ in matched if vs.drain_timeout is not None})
            limit = (f"or after drain_timeout {', '.join(f'{t:g}' for t in limits)} s"
                     if limits else "however long that takes (no drain_timeout)")
            click.echo(f"monitor_rs: drained {servers} ({name} in {folder}): {_who_acts(config)} sets its weight "
                       f"to 0 at its next pass and deletes it once its active connections end, {limit}; "
                       f"it stays out until --undrain{_contested(config, [vs for vs, _ in matched])}")
            return EXIT_OK
        asked = key
        gone = [n for n, k in _drains_in(folder).items() if k.ip == asked.ip and asked.port in (None, k.port)
                and asked.service in (None, k.service)]
        for n in gone:
            try:
                os.unlink(os.path.join(folder, n))  # the name itself: unlink never follows a symlink
            except FileNotFoundError:
                pass
        left = sorted({n for n, k in _drains_in(folder).items() for vs, rs in matched
                       if k.covers(str(rs.ip), rs.port, vs.name)})
        if left:
            click.echo(f"monitor_rs: {servers}: still drained by {', '.join(left)} in {folder}: undrain what "
                       "that names (or remove it)", err=True)
            return EXIT_FAILED
        if not gone:
            click.echo(f"monitor_rs: {servers}: not drained (no drain of it in {folder}), nothing to do")
            return EXIT_OK
        click.echo(f"monitor_rs: undrained {servers} (removed {', '.join(gone)} from {folder}): "
                   f"{_who_acts(config)} checks it again at its next pass and puts it back after rise good checks"
                   f"{_contested(config, [vs for vs, _ in matched])}")
        return EXIT_OK
    except OSError as exc:
        click.echo(f"monitor_rs: {option} {target}: {folder}: {exc.strerror or exc}", err=True)
        return EXIT_FAILED


def _check_settings(vs: VirtualService) -> str:
    """The settings of the service's own kind of check, as --check-config shows them (none of another kind's)."""
    kind = CheckKind(vs.check)
    regex = "receive_regex=yes " if vs.receive_regex else ""
    if kind in (CheckKind.HTTP, CheckKind.HTTPS):
        expect = ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in vs.expect)
        return (f"request={vs.request} expect={expect} receive={vs.receive!r} {regex}host={vs.host or '-'} "
                f"httpmethod={vs.httpmethod} ")
    if kind in (CheckKind.TCP, CheckKind.DNS):
        return f"request={vs.request or '-'} receive={vs.receive!r} {regex}"
    if kind == CheckKind.EXTERNAL:
        return f"checkcommand={shlex.join(vs.checkcommand)} dynamic_weight={'yes' if vs.dynamic_weight else 'no'} "
    return ""


def _ini_number(value: float) -> str:
    """A number as monitorRS.conf reads it back exactly: 3, not 3.0; 0.25 as it is."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _ini_line(key: str, value: str) -> str:
    """``key = value``, refused when monitorRS.conf could not read the value back as it is."""
    if value != value.strip() or "\n" in value or "\r" in value or re.search(r"(^|\s)[#;]", value):
        raise ConfigError(f"{key} = {value!r} cannot be written in monitorRS.conf as it is (spaces at its ends, "
                          "a line break, or a # or ; after a space would be read otherwise)")
    return f"{key} = {value}\n"


def _ini_service(vs: VirtualService) -> str:
    """One [virtual NAME] section, every setting written out."""
    out = [f"[virtual {vs.name}]\n", _ini_line("protocol", vs.protocol)]
    if vs.protocol == "fwm":
        out += [_ini_line("fwmark", str(vs.fwmark)), _ini_line("rport", str(vs.servers[0].port))]
    else:
        out += [_ini_line("vip", str(vs.vip)), _ini_line("vport", str(vs.vport))]
    out += [_ini_line("rs", " ".join(rs.name for rs in vs.servers)),
            _ini_line("rw", " ".join(str(rs.weight) for rs in vs.servers)),
            _ini_line("type", {"-g": "g", "-m": "m", "-i": "i"}[vs.forward]),
            _ini_line("check", vs.check)]
    kind = CheckKind(vs.check)
    keys: List[Tuple[str, str]] = []
    if kind in (CheckKind.HTTP, CheckKind.HTTPS):
        expect = ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in vs.expect)
        keys += [("request", vs.request), ("expect", expect), ("receive", vs.receive), ("host", vs.host),
                 ("httpmethod", vs.httpmethod), ("keepalive", str(vs.keepalive) if vs.keepalive else "")]
    elif kind in (CheckKind.TCP, CheckKind.DNS):
        keys += [("request", vs.request), ("receive", vs.receive)]
    elif kind == CheckKind.EXTERNAL:
        keys += [("checkcommand", shlex.join(vs.checkcommand)), ("dynamic_weight", "yes" if vs.dynamic_weight else "")]
    keys += [
        ("receive_regex", "yes" if vs.receive_regex else ""),
        ("checkport", str(vs.checkport or "")),
        ("fall", str(vs.fall)), ("rise", str(vs.rise)), ("quiescent", "yes" if vs.quiescent else "no"),
        ("fallback", str(vs.fallback or "")),
        ("depool_threshold", _ini_number(vs.depool_threshold) if vs.depool_threshold else ""),
        ("on_change", shlex.join(vs.on_change)),
        ("timeout", "" if vs.timeout is None else _ini_number(vs.timeout)),
        ("interval", "" if vs.interval is None else _ini_number(vs.interval)),
        ("scheduler", vs.scheduler),
        ("persistent", "" if vs.persistent is None else str(vs.persistent)),
        ("netmask", vs.netmask), ("ops", "yes" if vs.ops else ""),
        ("fallbackcommand", shlex.join(vs.fallbackcommand)),
        ("emailalert", ", ".join(vs.emailalert)),
        ("emailalertfreq", _ini_number(vs.emailalertfreq) if vs.emailalertfreq else ""),
        ("emailalertstatus", "" if vs.emailalertstatus == ("all",) else ",".join(vs.emailalertstatus)),
        ("slowstart", _ini_number(vs.slowstart) if vs.slowstart else ""),
        ("fastinter", "" if vs.fastinter is None else _ini_number(vs.fastinter)),
        ("downinter", "" if vs.downinter is None else _ini_number(vs.downinter)),
        ("drain_timeout", "" if vs.drain_timeout is None else _ini_number(vs.drain_timeout)),
    ]
    for rs in vs.servers:
        keys += [(f"request@{rs.name}", rs.request or ""), (f"receive@{rs.name}", rs.receive or "")]
    out += [_ini_line(key, value) for key, value in keys if value]
    return "".join(out)


def render_ini(config: Config) -> str:
    """The monitorRS.conf that loads as this same Config (its path and format aside): what
    --check-config prints for an ldirectord.cf, to review a migration or to keep."""
    servers = sum(len(vs.servers) for vs in config.services)
    out = [f"# monitor_rs: {config.path}: ok, {len(config.services)} virtual service(s), {servers} real server(s)\n",
           f"# the same settings as a monitorRS.conf (monitor_rs {__version__} --check-config)\n",
           "[monitor]\n"]
    keys = [("interval", _ini_number(config.interval)), ("timeout", _ini_number(config.timeout)),
            ("log", config.log or '""'), ("ipvsadm", config.ipvsadm),
            ("ipvsadm_timeout", _ini_number(config.ipvsadm_timeout)), ("lock", config.lock),
            ("state_file", config.state_file), ("prometheus_file", config.prometheus_file),
            ("syslog", config.syslog), ("autoreload", "yes" if config.autoreload else "no"),
            ("callback", shlex.join(config.callback)), ("cleanstop", "yes" if config.cleanstop else "no"),
            ("maintenancedir", config.maintenancedir), ("smtp", config.smtp),
            ("emailalertfrom", config.emailalertfrom),
            ("table_source", "" if config.table_source == "auto" else config.table_source),
            ("listen", config.listen)]
    out += [_ini_line(key, value) for key, value in keys if value]
    for vs in config.services:
        out += ["\n", _ini_service(vs)]
    return "".join(out)


def show_config(config: Config) -> None:
    """--check-config: the settings as resolved, per virtual service (like nginx -t); for an
    ldirectord.cf, the equivalent monitorRS.conf."""
    if config.format == ConfigFormat.LDIRECTORD:
        print(render_ini(config), end="")
        return
    servers = sum(len(vs.servers) for vs in config.services)
    print(f"monitor_rs: {config.path}: ok, {len(config.services)} virtual service(s), {servers} real server(s)")
    print(f"[monitor] interval={config.interval:g} timeout={config.timeout:g} log={config.log or '-'} "
          f"ipvsadm={config.ipvsadm} ipvsadm_timeout={config.ipvsadm_timeout:g} lock={config.lock} "
          f"state_file={config.state_file} prometheus_file={config.prometheus_file or '-'} "
          f"syslog={config.syslog or '-'} autoreload={'yes' if config.autoreload else 'no'} "
          f"callback={shlex.join(config.callback) if config.callback else '-'} "
          f"cleanstop={'yes' if config.cleanstop else 'no'} maintenancedir={config.maintenancedir or '-'} "
          f"smtp={config.smtp or '-'} emailalertfrom={config.emailalertfrom or '-'} "
          f"table_source={config.table_source} listen={config.listen or '-'}")
    forwards = {"-g": "g", "-m": "m", "-i": "i"}
    for vs in config.services:
        print(f"[virtual {vs.name}] {vs.protocol} {vs.address} type={forwards[vs.forward]} check={vs.check} "
              f"{_check_settings(vs)}checkport={vs.checkport or '-'} "
              f"fall={vs.fall} rise={vs.rise} quiescent={'yes' if vs.quiescent else 'no'} "
              f"fallback={vs.fallback or '-'} depool_threshold={vs.depool_threshold:g} "
              f"on_change={shlex.join(vs.on_change) if vs.on_change else '-'} "
              f"timeout={'-' if vs.timeout is None else f'{vs.timeout:g}'} "
              f"interval={'-' if vs.interval is None else f'{vs.interval:g}'} scheduler={vs.scheduler or '-'} "
              f"persistent={vs.persistent or '-'} netmask={vs.netmask or '-'} ops={'yes' if vs.ops else 'no'} "
              f"fallbackcommand={shlex.join(vs.fallbackcommand) if vs.fallbackcommand else '-'} "
              f"emailalert={','.join(vs.emailalert) or '-'} emailalertfreq={vs.emailalertfreq:g} "
              f"emailalertstatus={','.join(vs.emailalertstatus)} slowstart={vs.slowstart:g} "
              f"fastinter={'-' if vs.fastinter is None else f'{vs.fastinter:g}'} "
              f"downinter={'-' if vs.downinter is None else f'{vs.downinter:g}'} "
              f"drain_timeout={'-' if vs.drain_timeout is None else f'{vs.drain_timeout:g}'} "
              f"keepalive={vs.keepalive or '-'}")
        for rs in vs.servers:
            print(f"  {rs} weight {rs.weight}: IPVS entry {vs.stored_endpoint(rs.endpoint)}, "
                  f"probe {ProbeTarget.of(vs, rs).url()}")


def run_status(config: Config, console, as_json: bool, ipvsadm: Ipvsadm, drain_dir: str = "") -> int:
    """--status: a running monitor's state, else one pass of probes that changes nothing."""
    now = time.time()
    snap = endpoint_status(config)  # the running monitor's own answer, when it has an endpoint
    if snap is None:
        snap = next((s for s in (read_state(path, now) for path in state_files(config)) if s is not None), None)
    if snap is None:
        quiet = Output(LogFile(None), None, to_log=False, echo=False)
        monitor = Monitor(config, ipvsadm, quiet, dry_run=True)
        monitor.drain_dir = drain_dir  # drained servers show as such
        monitor.assume_empty = False  # no IPVS here: say so, claim no action
        for path in state_files(config):  # a stopped monitor's memory: what it quiesced, what was set by hand
            monitor.recall(read_memory(path))
        snap = snapshot(monitor.run_pass(), config, "probe")
    if as_json:
        print(json.dumps(snap, indent=2))
    else:
        if snap["source"] == "monitor":
            print(f"state of the running monitor (PID {snap['pid']}), pass of {timestamp(snap['time'])}")
        else:
            print("no running monitor for this config: one pass of probes, nothing changed")
        show_status(snap, console)
    return EXIT_OK if in_place(snap) else EXIT_FAILED


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-c", "--config", "config_path", envvar=CONFIG_ENV, default=DEFAULT_CONFIG, show_default=True,
              metavar="PATH",  # no click.Path checks: load_config says what is wrong, in one line
              help=f"Config file. Found as: this option, else ${CONFIG_ENV}, else {DEFAULT_CONFIG}.")
@click.option("--once", is_flag=True, help="One pass, then exit: 0 when every change it needed succeeded.")
@click.option("--dry-run", is_flag=True,
              help="Probe and decide, print the ipvsadm commands it would run, change nothing.")
@click.option("--status", is_flag=True, help="Show each server: weight, in IPVS, state, reason, latency, what "
              "the monitor would do; from the running monitor, else from one pass that changes nothing. "
              "Exit 0 when all are up and in IPVS.")
@click.option("--json", "as_json", is_flag=True, help="With --status: print JSON, for scripts.")
@click.option("--check-config", is_flag=True, help="Check the config, print the settings as resolved, exit "
              "(2 on error).")
@click.option("--interval", type=click.FloatRange(0.1, 86400), metavar="SECONDS",
              help="Seconds between passes (config: interval; default 3).")
@click.option("--timeout", type=click.FloatRange(0.01, 3600), metavar="SECONDS",
              help="Total deadline of one probe (config: timeout; default 1).")
@click.option("--log-file", metavar="PATH",
              help=f"Log file (config: log; default {DEFAULT_LOG}); '' for none.")
@click.option("--ipvsadm", "ipvsadm_path", metavar="PATH",
              help="The ipvsadm program (config: ipvsadm).")
@click.option("--lock-file", metavar="PATH",
              help="Single-instance lock (config: lock; default one per config file, in /run/monitor_rs).")
@click.option("--state-file", metavar="PATH",
              help="State file rewritten every pass (config: state_file; default one per config file, in "
              "/run/monitor_rs).")
@click.option("-v", "--verbose", is_flag=True, help="Also log servers that stay as they are, every pass.")
@click.option("--drain", metavar="RIP[:PORT]", help="Drain a real server and exit: the running monitor sets its "
              "weight to 0 at its next pass, deletes it once its active connections end (or after "
              "drain_timeout), and keeps it out, across restarts, until --undrain. Shown as drained.")
@click.option("--undrain", metavar="RIP[:PORT]", help="End a drain and exit: the server is checked again and comes "
              "back after rise good checks.")
@click.option("--service", "drain_service", metavar="NAME",
              help="With --drain/--undrain: only in the virtual service NAME ([virtual NAME]); default: in all.")
@click.option("--drain-dir", metavar="PATH", help=f"Where drains are kept when the config has no maintenancedir "
              f"(then they are kept there); default {DRAIN_DIR} (a non-root monitor: its own folder).")
@click.version_option(__version__, "--version", prog_name="monitor_rs")
def main(config_path, once, dry_run, status, as_json, check_config, interval, timeout, log_file, ipvsadm_path,
         lock_file, state_file, verbose, drain, undrain, drain_service, drain_dir):
    """Health-check the real servers of IPVS virtual services; take out the
    failing ones and put them back when they recover.

    Runs until SIGTERM or SIGINT (the IPVS table is left as it is, unless
    cleanstop removes the virtual services it manages), re-reads
    its config on SIGHUP. Exit status: 0 ok; 1 a change or a listing failed
    (--once), or not all in place (--status); 2 bad config or usage; 3 another
    monitor holds the lock of this config; 4 ipvsadm or IPVS not usable here;
    5 the lock file cannot be opened or locked (lock, --lock-file).
    --drain/--undrain: 0 done (or nothing to do); 1 still drained by a wider
    drain, or the entry could not be written; 2 not a configured real server,
    bad usage, or a drain folder refused.
    """
    if as_json and not status:
        click.echo("monitor_rs: --json goes with --status (it prints the status as JSON)", err=True)
        sys.exit(EXIT_CONFIG)
    clash = [name for name, given in (("--undrain", drain is not None and undrain is not None), ("--once", once),
                                      ("--dry-run", dry_run), ("--status", status), ("--check-config", check_config))
             if given]
    if (drain is not None or undrain is not None) and clash:
        click.echo(f"monitor_rs: {'--drain' if drain is not None else '--undrain'} goes alone, not with {clash[0]}",
                   err=True)
        sys.exit(EXIT_CONFIG)
    if drain_service is not None and drain is None and undrain is None:
        click.echo("monitor_rs: --service goes with --drain or --undrain", err=True)
        sys.exit(EXIT_CONFIG)

    def load() -> Config:
        config = load_config(config_path)
        overrides = {"interval": interval, "timeout": timeout, "log": log_file, "ipvsadm": ipvsadm_path,
                     "lock": lock_file, "state_file": state_file}
        given = {k: v for k, v in overrides.items() if v is not None}
        config = dataclasses.replace(config, **given)
        check_paths(config, given)
        why = unsafe_program(config.ipvsadm)  # run every pass as root: the config's, or --ipvsadm
        if why:
            raise ConfigError(f"ipvsadm {why}")
        check_maintenancedir(config)
        if drain_dir:
            drain_dir_of(config, drain_dir)  # not beside a maintenancedir: one place for the drains
            check_drain_dir(os.path.abspath(drain_dir))
        return config

    watch = ConfigWatch(config_path)  # before the first read: a change meanwhile is seen at the first pass
    try:
        config = load()
    except ConfigError as exc:
        click.echo(f"monitor_rs: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    if check_config:
        show_config(config)
        sys.exit(EXIT_OK)
    if drain is not None or undrain is not None:
        sys.exit(run_drain(config, drain_dir_of(config, drain_dir), drain if drain is not None else undrain,
                           drain_service, undo=drain is None))

    console = None
    if sys.stdout is not None and sys.stdout.isatty() and not as_json:  # None: started with stdout closed
        from rich.console import Console
        console = Console(highlight=False)
    ipvsadm = Ipvsadm(config.ipvsadm, config.ipvsadm_timeout)
    own_drains = os.path.abspath(drain_dir) if drain_dir else default_drain_dir()  # without a maintenancedir
    if status:
        sys.exit(run_status(config, console, as_json, ipvsadm, own_drains))

    output = Output(LogFile(config.log), console, to_log=not dry_run)
    if not dry_run:
        folder = os.path.dirname(config.lock)
        why = make_run_dir(folder) if folder in run_dirs() else ""  # a default lock: its folder made and checked
        if why:
            click.echo(f"monitor_rs: {why}", err=True)
            sys.exit(EXIT_NO_LOCK)
        try:  # the lock's descriptor stays open, and the lock held, for the life of the process
            take_lock(config.lock)
        except AlreadyRunning as exc:
            click.echo(f"monitor_rs: another monitor (PID {exc}) already runs with {config_path}", err=True)
            sys.exit(EXIT_RUNNING)
        except OSError as exc:
            click.echo(f"monitor_rs: cannot take the lock {config.lock}: {exc.strerror or exc}", err=True)
            sys.exit(EXIT_NO_LOCK)
    monitor = Monitor(config, ipvsadm, output, dry_run, verbose)
    monitor.drain_dir = own_drains
    memory = read_memory(config.state_file)  # what an earlier run did: a quiesce to undo, an operator's weight
    if not memory and config.state_file == default_run_path(config.path, "state.json"):
        memory = read_memory(legacy_state_path(config.path))  # the first start after an upgrade from 1.0.0
    monitor.recall(memory)
    monitor.write_ahead = not dry_run
    signals = Signals()
    monitor.stop_requested = lambda: signals.stop
    publisher = Publisher(output.log.warn)
    listening = Listening(output.say)
    if config.listen and not (once or dry_run):  # bound before the first pass: a port taken is said at once
        try:
            listening.start(config.listen)
        except OSError as exc:
            click.echo(f"monitor_rs: {listen_error(config.listen, exc)}", err=True)
            sys.exit(EXIT_CONFIG)
    live = None

    def after_pass(report: PassReport) -> Optional[dict]:
        if report.stopped:  # a pass cut short: keep the last full state
            return None
        snap = snapshot(report, monitor.config, "monitor")
        if not dry_run:
            publisher.publish(snap, monitor.config.state_file, monitor.config.prometheus_file)
            if monitor.intent and publisher.state_written:
                forget_intent(monitor.config.state_file)  # the state file now holds what the pass did
            if not once:
                listening.follow(monitor.config.listen)  # a reload may have moved it
                listening.publish(snap, publisher.rendered)
        if live is not None:
            from rich.console import Group
            output.show(lambda: live.update(Group(*status_tables(snap)), refresh=True))
        return snap

    if not once:
        output.say(f"monitor_rs {__version__} started (PID {os.getpid()}): {len(config.services)} virtual "
                   f"service(s), {sum(len(vs.servers) for vs in config.services)} real server(s), every "
                   f"{config.interval:g} s")
    if listening.server is not None:
        output.say(f"status endpoint on http://{listening.server.address}/ (GET /metrics, GET /status)")
    try:
        report = monitor.run_pass()  # the first pass also tells whether ipvsadm and IPVS work here
    except Exception as exc:  # as any later pass: said, and monitoring goes on (no crash loop)
        output.say(f"pass failed: {type(exc).__name__}: {exc}; next pass in {config.interval:g} s", "problem")
        report = PassReport(stopped=True, failed=1)
    if report.unavailable == len(config.services) and not dry_run and not report.stopped:
        click.echo(f"monitor_rs: {report.problems[0]}", err=True)
        sys.exit(EXIT_NO_IPVS)
    snap = after_pass(report)
    if once:
        if snap is not None:
            output.show(lambda: show_status(snap, console))
        monitor.close()
        sys.exit(EXIT_OK if report.ok else EXIT_FAILED)
    # After the first pass (every server at once), each server's next check on its own phase.
    first_wait = monitor.until_due()
    if console is not None and snap is not None and output.echo:
        # A terminal: the table, refreshed every pass, under the events.
        from rich.console import Group
        from rich.live import Live
        live = output.live = Live(Group(*status_tables(snap)), console=console, auto_refresh=False)
        output.show(lambda: live.start(refresh=True))
        try:
            signals.sleep(first_wait)
            run_forever(monitor, signals, load, after_pass, watch)
        finally:
            output.show(live.stop)
            output.live = None
    else:
        signals.sleep(first_wait)
        run_forever(monitor, signals, load, after_pass, watch)
    signals.ignore()
    stopped = "the IPVS table is left as it is"
    if monitor.config.cleanstop and not dry_run:
        removed = monitor.clean_stop()
        stopped = "cleanstop: " + (f"removed from IPVS: {', '.join(removed)}" if removed
                                   else "no virtual service removed from IPVS")
    listening.close()
    monitor.close()  # the stopping phase: queued mail gets its few seconds
    output.say(f"monitor_rs stopped (PID {os.getpid()}); {stopped}")
    sys.exit(EXIT_OK)


if __name__ == "__main__":
    main()
