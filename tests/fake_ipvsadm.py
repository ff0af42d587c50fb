#!/usr/bin/env python3
"""A fake ``ipvsadm`` (1.31, Debian) for tests on machines without IPVS.

Messages, exit codes and listings were checked against the real ipvsadm on
Debian's 6.1 kernel in the VM (tests/vm/run).

It parses argv the way ipvsadm does (popt rules: the command must be the
first option, short options bundle as in ``-Ln``, ``--long=value``), keeps the
table in a JSON file, and prints listings, errors and exit codes byte for byte
as described in IPVSADM.md.

Environment:
  FAKE_IPVSADM_STATE  path of the JSON table (required for commands that touch
                      the table); a missing or empty file is an empty table.
                      ``<state>.lock`` is the flock(2) lock file.
  FAKE_IPVSADM_CALLS  optional path; one ``{"argv": [...], "t": <time>}`` JSON
                      line is appended per invocation, before anything else
                      (for -R, also "stdin": the words of each line read).
  FAKE_IPVSADM_FAULT  optional fault: noipvs, noroot, exit1, hang (every
                      command), hang-list, garbage, truncated (listings: -L/-l
                      and -S), fail-add (-a only), fail-edit (-e only), hang-restore
                      (-R runs its lines, then never ends).

State format: {"services": [{"fwmark", "af", "protocol", "addr", "port",
"scheduler", "sched_flags", "timeout", "netmask", "ops", "dests": [{"af", "addr",
"port", "forward", "weight", "activeconns", "inactconns"}]}]}.  Tests may
edit "activeconns"/"inactconns" directly; everything else is set by commands.

Not modelled: host and service names in output (listings are always
numeric), thresholds, persistence engines, daemons,
connection listings, -Z, -h, -v; such options are refused with exit 2.

-R (--restore) reads commands on stdin as ipvsadm 1.31's restore_table() and
config_stream_read() do: words split on space, tab, CR (a line ends at LF;
no quoting, and ``#`` is an ordinary word); every word ``ipvsadm`` dropped;
lines with no word skipped; a line whose tokens are followed by two or more
blanks and then the end of input (no LF) is not run.  A kernel error or a
popt error after the first option is printed and the next line runs; any
other failure (validation: fail(2, ...), a first word that is no command:
exit 255, ``-L`` of a missing service: exit 1) ends the run at once.  The
exit status is the last line's (0, or 255 for a printed error).  The run holds
the table's lock and saves the table once, when it ends (or before it hangs).
"""

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import sys
import time

STATE_ENV = "FAKE_IPVSADM_STATE"
CALLS_ENV = "FAKE_IPVSADM_CALLS"
FAULT_ENV = "FAKE_IPVSADM_FAULT"

VERSION_LINE = "IP Virtual Server version 1.2.1 (size=4096)\n"
TITLE_LINE = "Prot LocalAddress:Port Scheduler Flags\n"
TITLE = TITLE_LINE + "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
NOT_IPVS = "\nAre you sure that IP Virtual Server is built in the kernel or as module?"
INIT_ERRORS = {
    "noipvs": "Can't initialize ipvs: Protocol not available" + NOT_IPVS,
    "noroot": "Can't initialize ipvs: Permission denied (you must be root)" + NOT_IPVS,
}
RESTORE_WORD = 4096  # config_stream_read()'s MAX_LINE_LENGTH: a longer word is split
FAULTS = {"", "noipvs", "noroot", "exit1", "hang", "hang-list", "garbage", "truncated", "fail-add", "fail-edit",
          "hang-restore"}
EINVAL = "Invalid operation.  Possibly wrong module version, address not unicast, ..."

DEFAULT_SCHEDULER = "wlc"
SCHEDULERS = {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh"}
DEFAULT_PERSISTENCE = 300
MAX_TIMEOUT = 86400 * 31
INT_MAX = 2147483647  # Debian's weight limit (upstream: 65535)
ALL_ONES = 0xFFFFFFFF  # default IPv4 persistence mask

# Option keys are the short letter, or the long name for long-only options.
COMMANDS = {"A": "add-service", "E": "edit-service", "D": "delete-service", "C": "flush",
            "L": "list", "l": "list", "a": "add-server", "e": "edit-server",
            "d": "delete-server", "S": "save", "R": "restore"}
LONG_OPTIONS = {
    "add-service": "A", "edit-service": "E", "delete-service": "D", "clear": "C",
    "list": "L", "add-server": "a", "edit-server": "e", "delete-server": "d", "save": "S",
    "restore": "R",
    "tcp-service": "t", "udp-service": "u", "sctp-service": "sctp-service",
    "fwmark-service": "f", "scheduler": "s", "persistent": "p", "netmask": "M",
    "real-server": "r", "gatewaying": "g", "ipip": "i", "masquerading": "m",
    "weight": "w", "numeric": "n", "ipv6": "6", "sched-flags": "b", "ops": "o",
}
SHORT_OPTIONS = set("AEDCLlaedSRtufspMrgimwn6bo")
REQUIRED, OPTIONAL = "required", "optional"
ARITY = {"t": REQUIRED, "u": REQUIRED, "sctp-service": REQUIRED, "f": REQUIRED,
         "s": REQUIRED, "M": REQUIRED, "r": REQUIRED, "w": REQUIRED, "b": REQUIRED,
         "p": OPTIONAL}
UNSUPPORTED = set("ZhvcxyX") | {
    "zero", "help", "version", "set", "start-daemon", "stop-daemon",
    "connection", "u-threshold", "l-threshold", "pe", "exact", "stats", "rate",
    "thresholds", "persistent-conn", "nosort", "sort", "timeout", "daemon",
    "mcast-interface", "mcast-group", "mcast-port", "mcast-ttl", "sync-maxlen", "syncid",
    "tun-info", "tun-type", "tun-port", "tun-nocsum", "tun-csum", "tun-remcsum"}

PROTOCOLS = {"t": "TCP", "u": "UDP", "sctp-service": "SCTP"}
PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}
RULE_PROTOCOLS = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}
FORWARDS = {"g": "Route", "i": "Tunnel", "m": "Masq"}
FORWARD_SWITCHES = {"Route": "-g", "Local": "-g", "Tunnel": "-i", "Masq": "-m"}

# ipvsadm's commands_v_options table, for the options modelled here.
# '+' compulsory, 'x' illegal, ' ' optional ('1' = exclusive among list
# options that are not modelled, so it behaves as optional).
CHECKED_OPTIONS = ("numeric", "service-address", "scheduler", "persistent", "netmask",
                   "real-server", "forwarding-method", "weight", "sched-flags", "ops")
LEGAL = {  #        -n svc -s -p -M -r fwd -w -b -o
    "add-service":    "x+   xxx  ",
    "edit-service":   "x+   xxx  ",
    "delete-service": "x+xxxxxxxx",
    "flush":          "xxxxxxxxxx",
    "list":           " 1xxxxxxxx",
    "add-server":     "x+xxx+  xx",
    "delete-server":  "x+xxx+xxxx",
    "edit-server":    "x+xxx+  xx",
    "save":           " xxxxxxxxx",
    "restore":        "xxxxxxxxxx",
}

# (prefix, flag bit, scheduler it belongs to) as in parse_sched_flags().
SCHED_FLAGS = [("flag-1", 1, None), ("flag-2", 2, None), ("flag-3", 3, None),
               ("sh-fallback", 1, "sh"), ("sh-port", 2, "sh"),
               ("mh-fallback", 1, "mh"), ("mh-port", 2, "mh")]
SCHED_FLAG_NAMES = {"sh": ("sh-fallback", "sh-port", "flag-3"),
                    "mh": ("mh-fallback", "mh-port", "flag-3")}
GENERIC_FLAG_NAMES = ("flag-1", "flag-2", "flag-3")


class Fail(Exception):
    """Stop with `message` on stderr and exit status `code`."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class KernelError(Fail):
    """The kernel refused a change: printed, exit 255; under -R the next line still runs."""

    def __init__(self, message):
        super().__init__(255, message)


class PoptError(Fail):
    """A popt parse error: "<option>: <reason>", exit 255 (under -R, after the first
    option, printed and the next line runs: parse_options() returns -1)."""

    def __init__(self, token, reason):
        super().__init__(255, f"{token}: {reason}")


# ---------------------------------------------------------------- parsing

def to_number(text, low, high):
    """C string_to_number(): the whole string is a base-10 long in [low, high]."""
    if text is None or not re.fullmatch(r"[ \t\n\v\f\r]*[+-]?[0-9]+", text):
        return None
    value = int(text)
    return value if low <= value <= high else None


def c_atoi(text):
    """C atoi(): leading integer, 0 when there is none."""
    match = re.match(r"[ \t\n\v\f\r]*([+-]?[0-9]+)", text)
    return int(match.group(1)) if match else 0


def parse_service(text, protocol):
    """ipvsadm's parse_service(): (address, port or None), or None if illegal."""
    if re.fullmatch(r"[0-9]*", text):
        return None
    host, port_text = text, None
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or not after.startswith(":"):
            return None
        port_text = after[1:]
    try:
        if "%" in host:  # inet_pton() takes no scope id
            raise ValueError(host)
        addr = ipaddress.IPv6Address(host)
    except ValueError:
        # ipvsadm looks for the port again here, so "[1.2.3.4]:80" loses it.
        host, colon, port_text = host.rpartition(":")
        if not colon:
            host, port_text = port_text, None
        try:
            addr = ipaddress.IPv4Address(host)
        except ValueError:
            return None
    if port_text is None:
        return addr, None
    port = to_number(port_text, 0, 65535)
    if port is None:
        port = service_port(port_text, protocol)
    return None if port is None else (addr, port)


def service_port(name, protocol):
    """Port of a service name from /etc/services, or None."""
    if protocol is None:
        return None
    import socket  # here: each call is a process, and most never need it
    try:
        return socket.getservbyname(name, protocol.lower())
    except OSError:
        return None


def scan(argv, leftovers):
    """Yield (key, value, token) per option as popt does; collect non-options."""
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            leftovers.extend(argv[i:])
            return
        if token.startswith("--"):
            name, eq, inline = token[2:].partition("=")
            key = option_key(name, LONG_OPTIONS.get(name), token)
            if eq and key not in ARITY:
                raise PoptError(token, "option does not take an argument")
            value, i = option_value(key, inline if eq else None, argv, i, token)
            yield key, value, token
        elif token.startswith("-") and token != "-":
            rest = token[1:]
            while rest:
                char, rest = rest[0], rest[1:]
                key = option_key(char, char if char in SHORT_OPTIONS else None, token)
                inline = None
                if key in ARITY and rest:
                    inline, rest = rest.removeprefix("="), ""
                value, i = option_value(key, inline, argv, i, token)
                yield key, value, token
        else:
            leftovers.append(token)


def option_key(name, key, token):
    """Return key, or refuse an option this fake (or ipvsadm) does not know."""
    if key is not None:
        return key
    if name in UNSUPPORTED:
        raise Fail(2, f"fake_ipvsadm: option `{token}' is not supported by this fake")
    raise PoptError(token, "unknown option")


def option_value(key, inline, argv, i, token):
    """Return (argument, next argv index); popt takes the next word if needed."""
    arity = ARITY.get(key)
    if arity is None or inline is not None:
        return inline, i
    if i == len(argv):
        if arity == REQUIRED:
            raise PoptError(token, "missing argument")
        return None, i
    if arity == OPTIONAL and argv[i].startswith("-"):
        return None, i
    return argv[i], i + 1


class Request:
    """What ipvsadm builds from argv: one command, a service, a destination."""

    def __init__(self, command):
        self.command = command
        self.options = set()
        self.protocol = None
        self.af = 0
        self.addr = None
        self.port = 0
        self.fwmark = 0
        self.scheduler = ""
        self.sched_flags_text = None
        self.sched_flags = set()
        self.timeout = None  # None: not persistent
        self.netmask = ALL_ONES
        self.ops = False  # one-packet scheduling (IP_VS_SVC_F_ONEPACKET)
        self.dest_addr = None
        self.dest_port = 0
        self.forward = "Route"
        self.weight = 1

    def set_option(self, name):
        """Record option `name`; ipvsadm refuses it twice."""
        if name in self.options:
            raise Fail(2, f"multiple '{name}' options specified")
        self.options.add(name)

    def apply(self, key, value):
        """Apply one option, in argv order, like parse_options()."""
        if key in PROTOCOLS:
            self.set_option("service-address")
            self.protocol = PROTOCOLS[key]
            parsed = parse_service(value, self.protocol)
            if parsed is None:
                raise Fail(2, "illegal virtual server address[:port] specified")
            self.addr, port = parsed
            self.af = self.addr.version
            if port is not None:
                self.port = port
            if self.af == 6:
                self.netmask = 128
        elif key == "f":
            self.set_option("service-address")
            self.af, self.protocol = 4, "TCP"
            self.fwmark = to_number(value, 1, 0xFFFFFFFF)
            if self.fwmark is None:
                raise Fail(2, f"invalid fwmark value `{value}' specified")
        elif key == "6":
            if not self.fwmark:
                raise Fail(2, "-6 used before -f\n")
            self.af, self.netmask = 6, 128
        elif key == "s":
            self.set_option("scheduler")
            self.scheduler = value
        elif key == "b":
            self.set_option("sched-flags")
            self.sched_flags_text = value
        elif key == "p":
            self.set_option("persistent")
            self.timeout = DEFAULT_PERSISTENCE if value is None else to_number(value, 1, MAX_TIMEOUT)
            if self.timeout is None:
                raise Fail(2, f"invalid timeout value `{value}' specified")
        elif key == "M":
            self.set_option("netmask")
            self.netmask = parse_netmask(value, self.af)
        elif key == "r":
            self.set_option("real-server")
            parsed = parse_service(value, self.protocol)
            if parsed is None:
                raise Fail(2, "illegal real server address[:port] specified")
            self.dest_addr, port = parsed
            self.dest_port = self.port if port is None else port
        elif key in FORWARDS:
            self.set_option("forwarding-method")
            self.forward = FORWARDS[key]
        elif key == "w":
            self.set_option("weight")
            self.weight = to_number(value, 0, INT_MAX)
            if self.weight is None:
                raise Fail(2, "illegal weight specified")
        elif key == "n":
            self.set_option("numeric")
        elif key == "o":
            self.set_option("ops")
            self.ops = True

    def check(self):
        """generic_opt_check() plus the checks process_options() makes."""
        for name, rule in zip(CHECKED_OPTIONS, LEGAL[self.command]):
            if rule == "+" and name not in self.options:
                raise Fail(2, f"You need to supply the '{name}' option for the '{self.command}' command")
            if rule == "x" and name in self.options:
                raise Fail(2, f"Illegal '{name}' option with the '{self.command}' command")
        if self.command in ("add-service", "edit-service"):
            if not self.fwmark and not self.port and self.timeout is None:
                raise Fail(2, "Zero port specified for non-persistent service")
            if self.ops and not self.fwmark and self.protocol != "UDP":
                raise Fail(2, "One-Packet Scheduling is only for UDP virtual services")
            self.scheduler = self.scheduler or DEFAULT_SCHEDULER
        if self.command in ("add-server", "edit-server"):
            # Only -a and -e rewrite the port: -d uses it exactly as given.
            if not self.fwmark and self.forward in ("Route", "Tunnel"):
                self.dest_port = self.port
            if self.dest_addr.version != self.af and self.forward != "Tunnel":
                raise Fail(2, "Different address family is allowed only for tunneling servers")


def parse_netmask(text, af):
    """The -M value: an IPv4 mask (as an integer) or an IPv6 prefix length."""
    if af != 6:
        try:
            return int(ipaddress.IPv4Address(text))
        except ValueError:
            raise Fail(2, "illegal virtual server persistent mask specified") from None
    prefix = c_atoi(text)
    if not 1 <= prefix <= 128:
        raise Fail(2, "illegal ipv6 netmask specified")
    return prefix


def parse_sched_flags(scheduler, text):
    """ipvsadm's parse_sched_flags(): the set of flag bits named in `text`."""
    flags = set()
    for flag in (f for f in text.split(",") if f):
        for prefix, bit, owner in SCHED_FLAGS:
            if flag.startswith(prefix):
                if owner is not None and owner != scheduler:
                    raise Fail(2, f"incompatible scheduler flag `{flag}'")
                flags.add(bit)
                break
        else:
            raise Fail(2, f"invalid scheduler flag `{flag}'")
    return flags


def parse(argv):
    """Turn ipvsadm's argv into a checked Request."""
    leftovers = []
    options = scan(argv, leftovers)
    try:
        key = next(options)[0]
    except (StopIteration, PoptError):
        key = None
    if key not in COMMANDS:
        program = sys.argv[0]
        raise Fail(255, f"Try `{program} -h' or '{program} --help' for more information.")
    request = Request(COMMANDS[key])
    for key, value, token in options:
        if key in COMMANDS:
            raise Fail(2, f"invalid option `{token}'")
        request.apply(key, value)
    if request.sched_flags_text is not None:
        request.sched_flags = parse_sched_flags(request.scheduler or DEFAULT_SCHEDULER,
                                                request.sched_flags_text)
    if leftovers:
        raise Fail(2, f"unexpected argument {leftovers[0]}")
    request.check()
    return request


# ------------------------------------------------------------------ state

def state_path():
    """The state file named by FAKE_IPVSADM_STATE."""
    path = os.environ.get(STATE_ENV)
    if not path:
        raise Fail(2, f"fake_ipvsadm: {STATE_ENV} is not set")
    return path


@contextlib.contextmanager
def locked(path, exclusive):
    """Hold flock() on `<path>.lock` for the block."""
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


def load(path):
    """Read the table; a missing or empty file is an empty table."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    try:
        return json.loads(text) if text.strip() else {"services": []}
    except ValueError as err:
        raise Fail(2, f"fake_ipvsadm: bad state file {path}: {err}") from None


def save(path, state):
    """Write the table atomically (temporary file, then rename)."""
    import tempfile
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                               prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# ----------------------------------------------------------------- kernel

def find_service(state, req):
    """The service `req` names, or None (the kernel's lookup)."""
    for svc in state["services"]:
        if req.fwmark or svc["fwmark"]:
            if (svc["fwmark"], svc["af"]) == (req.fwmark, req.af):
                return svc
        elif (svc["af"], svc["protocol"], svc["addr"], svc["port"]) == (
                req.af, req.protocol, str(req.addr), req.port):
            return svc
    return None


def find_dest(svc, req):
    """The destination of `svc` that `req` names, or None."""
    af, addr, port = req.dest_addr.version, str(req.dest_addr), req.dest_port
    for dest in svc["dests"]:
        if dest["addr"] == addr and dest["port"] == port and dest["af"] == af:
            return dest
    return None


def service_settings(req):
    """The fields -A and -E set on a service."""
    return {"scheduler": req.scheduler, "sched_flags": sorted(req.sched_flags),
            "timeout": req.timeout, "netmask": req.netmask, "ops": req.ops}


def is_unicast(addr):
    """Whether the kernel accepts `addr` as a destination."""
    if addr.version == 4:
        return not (addr.is_multicast or addr in ipaddress.IPv4Network("0.0.0.0/8")
                    or addr == ipaddress.IPv4Address("255.255.255.255"))
    return not (addr.is_multicast or addr.is_unspecified or addr.is_link_local
                or addr.ipv4_mapped is not None)


def add_service(state, req):
    """-A"""
    if find_service(state, req):
        raise KernelError("Service already exists")
    if req.scheduler not in SCHEDULERS:
        raise KernelError("Scheduler or persistence engine not found")
    state["services"].append({
        "fwmark": req.fwmark, "af": req.af, "protocol": req.protocol,
        "addr": None if req.fwmark else str(req.addr), "port": req.port,
        **service_settings(req), "dests": []})


def edit_service(state, req):
    """-E"""
    svc = find_service(state, req)
    if svc is None:
        raise KernelError("No such service")
    if req.scheduler not in SCHEDULERS:
        raise KernelError("Scheduler or persistence engine not found")
    svc.update(service_settings(req))


def delete_service(state, req):
    """-D"""
    svc = find_service(state, req)
    if svc is None:
        raise KernelError("No such service")
    state["services"].remove(svc)


def flush(state, req):
    """-C"""
    state["services"] = []


def server_service(state, req):
    """The service for -a/-e/-d."""
    svc = find_service(state, req)
    if svc is None:
        raise KernelError("Service not defined")
    return svc


def add_server(state, req):
    """-a"""
    svc = server_service(state, req)
    if find_dest(svc, req):
        raise KernelError("Destination already exists")
    if not is_unicast(req.dest_addr):
        raise KernelError(EINVAL)
    svc["dests"].append({
        "af": req.dest_addr.version, "addr": str(req.dest_addr), "port": req.dest_port,
        "forward": req.forward, "weight": req.weight, "activeconns": 0, "inactconns": 0})


def edit_server(state, req):
    """-e: every field not given returns to its default."""
    dest = find_dest(server_service(state, req), req)
    if dest is None:
        raise KernelError("No such destination")
    dest.update(forward=req.forward, weight=req.weight)


def delete_server(state, req):
    """-d"""
    svc = server_service(state, req)
    dest = find_dest(svc, req)
    if dest is None:
        raise KernelError("No such destination")
    svc["dests"].remove(dest)


CHANGES = {"add-service": add_service, "edit-service": edit_service,
           "delete-service": delete_service, "flush": flush, "add-server": add_server,
           "edit-server": edit_server, "delete-server": delete_server}


# ---------------------------------------------------------------- listing

def ntop(addr):
    """An address as glibc's inet_ntop() writes it."""
    if addr.version == 6:
        words = [int.from_bytes(addr.packed[i:i + 2], "big") for i in range(0, 16, 2)]
        if words[:5] == [0] * 5 and (words[5] == 0xFFFF or (words[5] == 0 and words[6])):
            prefix = "::ffff:" if words[5] else "::"
            return prefix + str(ipaddress.IPv4Address(addr.packed[12:]))
        return addr.compressed
    return str(addr)


def addr_port(addr_text, port):
    """`a.b.c.d:port` or `[v6]:port`."""
    addr = ipaddress.ip_address(addr_text)
    return f"[{ntop(addr)}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def service_order(svc):
    """ipvs_cmp_services(): fwmark, family, protocol, address, port."""
    addr = int(ipaddress.ip_address(svc["addr"])) if svc["addr"] else 0
    return svc["fwmark"], svc["af"], PROTOCOL_NUMBERS[svc["protocol"]], addr, svc["port"]


def dest_order(dest):
    """ipvs_cmp_dests(): address, port."""
    return dest["af"], int(ipaddress.ip_address(dest["addr"])), dest["port"]


def service_name(svc, rule):
    """`TCP  a:p` / `FWM  100` for -L, `-t a:p` / `-f 100` for -S."""
    if svc["fwmark"]:
        ipv6 = svc["af"] == 6
        if rule:
            return f"-f {svc['fwmark']}" + (" -6" if ipv6 else "")
        mark = svc["fwmark"] - (1 << 32) if svc["fwmark"] >= 1 << 31 else svc["fwmark"]  # printed with %d
        return f"FWM  {mark}" + (" IPv6" if ipv6 else "")
    vname = addr_port(svc["addr"], svc["port"])
    if rule:
        return f"{RULE_PROTOCOLS[svc['protocol']]} {vname}"
    name = "%-4s %s" % (svc["protocol"], vname)
    return name[:33] if svc["af"] == 4 else name


def render_service(svc, rule):
    """One service and its destinations, as -Ln (rule=False) or -Sn prints them."""
    name = service_name(svc, rule)
    names = SCHED_FLAG_NAMES.get(svc["scheduler"], GENERIC_FLAG_NAMES)
    flags = ",".join(names[bit - 1] for bit in svc["sched_flags"])
    if svc["af"] == 4:
        mask = None if svc["netmask"] == ALL_ONES else str(ipaddress.IPv4Address(svc["netmask"]))
    else:
        mask = None if svc["netmask"] == 128 else str(svc["netmask"])
    ops = svc.get("ops", False)  # state files written before ops was modelled lack it
    if rule:  # -A NAME -s SCHED [-p N [-M M]] [-o] [-b FLAGS]
        line = f"-A {name} -s {svc['scheduler']}"
        if svc["timeout"] is not None:
            line += f" -p {svc['timeout']}" + (f" -M {mask}" if mask else "")
        line += (" -o" if ops else "") + (f" -b {flags}" if flags else "")
    else:  # NAME SCHED [(FLAGS)] [persistent N [mask M]] [ops]
        line = f"{name} {svc['scheduler']}" + (f" ({flags})" if flags else "")
        if svc["timeout"] is not None:
            line += f" persistent {svc['timeout']}" + (f" mask {mask}" if mask else "")
        line += " ops" if ops else ""
    lines = [line + "\n"]
    for dest in sorted(svc["dests"], key=dest_order):
        dname = addr_port(dest["addr"], dest["port"])
        if rule:
            tunnel = " --tun-type ipip" if dest["forward"] == "Tunnel" else ""
            lines.append(f"-a {name} -r {dname} {FORWARD_SWITCHES[dest['forward']]} "
                         f"-w {dest['weight']}{tunnel}\n")
        else:
            if svc["af"] == 4:
                dname = dname[:28]
            lines.append("  -> %-28s %-7s %-6d %-10u %-10u\n" % (
                dname, dest["forward"], dest["weight"],
                dest["activeconns"], dest["inactconns"]))
    return "".join(lines)


def listing(state, req):
    """Output of -L (whole table or one service) or -S."""
    services = sorted(state["services"], key=service_order)
    if req.command == "save":
        return "".join(render_service(svc, rule=True) for svc in services)
    if "service-address" in req.options:
        svc = find_service(state, req)
        if svc is None:
            raise Fail(1, "No such service")
        return TITLE + render_service(svc, rule=False)
    return VERSION_LINE + TITLE + "".join(render_service(svc, rule=False) for svc in services)


class Batch:
    """The table of one -R run: loaded (under the exclusive lock) by its first line that needs
    it, changed in memory line after line, saved once when the run ends or before it hangs;
    rewriting the whole file per line made a run of 100 changes cost ~0.3 CPU-s.  Others
    wait on the lock meanwhile: a run is milliseconds, and a -R killed mid-run leaves the
    table as it was (only a fault makes one last that long, and those hang after the lines)."""

    def __init__(self):
        self.path = None
        self.state = None
        self.lock = None
        self.changed = False

    def table(self):
        """The table, loaded at the first call (Fail for a bad state file, as for a lone call)."""
        if self.state is None:
            path = state_path()
            if self.lock is None:
                self.lock = open(path + ".lock", "a")
                fcntl.flock(self.lock, fcntl.LOCK_EX)
            self.path, self.state = path, load(path)
        return self.state

    def close(self):
        """Save the changes made, let go of the lock: the table as the kernel has it now."""
        try:
            if self.changed:
                save(self.path, self.state)
        finally:
            self.changed, self.state = False, None
            if self.lock is not None:
                self.lock.close()
                self.lock = None


def execute(req, batch=None):
    """Run `req` against the state file (or `batch`'s table, under -R); return what goes to stdout."""
    if batch is not None:
        state = batch.table()
        if req.command in ("list", "save"):
            return listing(state, req)
        CHANGES[req.command](state, req)  # each raises before it changes anything
        batch.changed = True
        return ""
    path = state_path()
    if req.command in ("list", "save"):
        with locked(path, exclusive=False):
            return listing(load(path), req)
    with locked(path, exclusive=True):
        state = load(path)
        CHANGES[req.command](state, req)
        save(path, state)
    return ""


# ----------------------------------------------------------------- faults

def hang(batch=None):
    """Never return (until killed); under -R, once the lines run so far are saved."""
    if batch is not None:
        batch.close()
    while True:
        time.sleep(3600)


def garbage():
    """A few lines of random printable characters."""
    import random
    import string
    rng = random.Random()
    chars = string.ascii_letters + string.digits + string.punctuation + " "
    lines = ("".join(rng.choice(chars) for _ in range(rng.randint(1, 79)))
             for _ in range(rng.randint(3, 12)))
    return "\n".join(lines) + "\n"


def truncate(out):
    """The listing cut after its first title line (nothing for -S)."""
    end = out.find(TITLE_LINE)
    return out[:end + len(TITLE_LINE)] if end >= 0 else ""


def log_call(argv, stdin=None):
    """Append this invocation to FAKE_IPVSADM_CALLS, if set."""
    path = os.environ.get(CALLS_ENV)
    if not path:
        return
    call = {"argv": argv, "t": time.time()}
    if stdin is not None:
        call["stdin"] = [words for words in restore_lines(stdin) if words]
    line = json.dumps(call) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Exit(Exception):
    """End with exit status `code`, everything already written (-R)."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


def restore_lines(text):
    """The argv of each line, as config_stream_read() splits standard input.

    fscanf("%4096[^ \\t\\n\\r]%1[ \\t\\n\\r]") takes a word and the one blank after it;
    blanks before a word are skipped one by one, and the end of input met
    there drops the line being read (words included); an LF ends a line.
    """
    pos, end = 0, len(text)
    while True:
        words, line_ended = [], False
        while not line_ended:
            if pos >= end:  # fscanf() == EOF: a line with words is still run
                if words:
                    yield words
                return
            if text[pos] in " \t\n\r":  # fscanf() == 0: skip blanks up to a word or LF
                while pos < end and text[pos] in " \t\r":
                    pos += 1
                if pos >= end:
                    return
                if text[pos] == "\n":
                    pos += 1
                    line_ended = True
                continue
            stop = pos
            while stop < end and stop - pos < RESTORE_WORD and text[stop] not in " \t\n\r":
                stop += 1
            word, pos = text[pos:stop].partition("\0")[0], stop  # C strings end at a NUL
            if word != "ipvsadm":
                words.append(word)
            if pos < end and text[pos] in " \t\n\r":
                line_ended = text[pos] == "\n"
                pos += 1
        yield words


def read_stdin(argv):
    """What -R reads (all of it, before anything runs), or None for other commands."""
    if argv[:1] not in (["-R"], ["--restore"]):
        return None
    return sys.stdin.buffer.read().decode("latin-1")


def restore(fault, text):
    """-R: each line of `text` a command; see the module docstring for what stops the run."""
    program = sys.argv[0]
    result = 0
    batch = Batch()
    try:
        for words in restore_lines(text or ""):
            if not words:  # only "ipvsadm", or nothing: not run, the status stays
                continue
            try:
                req = parse(words)
                if req.command == "restore":  # restore_table(): "avoid infinite loop"
                    raise Fail(255, f"Try `{program} -h' or '{program} --help' for more information.")
                sys.stdout.write(perform(req, fault, batch))
                result = 0
            except (KernelError, PoptError) as err:
                sys.stderr.write(err.message + "\n")
                result = 255
            except Fail as err:
                sys.stdout.flush()
                sys.stderr.write(err.message + "\n")
                raise Exit(err.code) from None
    finally:
        batch.close()  # saved once: the changes of the lines run, also when one ended the run
    if fault == "hang-restore":
        sys.stdout.flush()
        hang()
    raise Exit(result)


def run(argv, fault, stdin=None):
    """Everything but logging; return stdout text or raise Fail."""
    if fault not in FAULTS:
        raise Fail(2, f"fake_ipvsadm: unknown {FAULT_ENV} value {fault!r}")
    if fault in INIT_ERRORS:
        raise Fail(2, INIT_ERRORS[fault])
    if fault == "exit1":
        raise Fail(1, "ipvsadm: something went wrong")
    if fault == "hang":
        hang()
    req = parse(argv) if argv else Request("list")
    if req.command == "restore":
        restore(fault, stdin)
    return perform(req, fault)


def perform(req, fault, batch=None):
    """One parsed command against the table (`batch`'s under -R); return stdout text or raise Fail."""
    is_listing = req.command in ("list", "save")
    if is_listing and fault == "hang-list":
        hang(batch)
    if is_listing and fault == "garbage":
        return garbage()
    if req.command == "add-server" and fault == "fail-add":
        raise KernelError("Service not defined")
    if req.command == "edit-server" and fault == "fail-edit":
        raise KernelError("No such destination")
    out = execute(req, batch)
    return truncate(out) if is_listing and fault == "truncated" else out


def main(argv):
    """Entry point: log, run, report."""
    stdin = read_stdin(argv)
    log_call(argv, stdin)
    try:
        sys.stdout.write(run(argv, os.environ.get(FAULT_ENV, ""), stdin))
    except Exit as done:
        return done.code
    except Fail as err:
        sys.stderr.write(err.message + "\n")
        return err.code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
