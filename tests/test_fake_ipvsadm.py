"""Tests for tests/fake_ipvsadm.py against the facts in IPVSADM.md."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from golden import REFERENCE_LISTING

FAKE = Path(__file__).with_name("fake_ipvsadm.py")

VERSION = "IP Virtual Server version 1.2.1 (size=4096)\n"
TITLES = ("Prot LocalAddress:Port Scheduler Flags\n"
          "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n")

REFERENCE_SAVE = (
    "-A -t 10.0.0.1:80 -s wrr\n"
    "-a -t 10.0.0.1:80 -r 192.168.1.10:80 -g -w 1\n"
    "-a -t 10.0.0.1:80 -r 192.168.1.12:8080 -m -w 0\n"
)

NOT_IPVS = "Are you sure that IP Virtual Server is built in the kernel or as module?\n"


class Fake:
    """Runs the fake ipvsadm on a private state file."""

    def __init__(self, tmp_path):
        self.state = tmp_path / "state.json"
        self.calls = tmp_path / "calls.jsonl"

    def env(self, fault=None, calls=False):
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_IPVSADM_")}
        env["FAKE_IPVSADM_STATE"] = str(self.state)
        if fault:
            env["FAKE_IPVSADM_FAULT"] = fault
        if calls:
            env["FAKE_IPVSADM_CALLS"] = str(self.calls)
        return env

    def __call__(self, *args, fault=None, calls=False, timeout=10):
        return subprocess.run([sys.executable, str(FAKE), *args], env=self.env(fault, calls),
                              capture_output=True, text=True, timeout=timeout, check=False)

    def ok(self, *args):
        """Run a command that must succeed silently."""
        result = self(*args)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), args
        return result

    def table(self):
        return json.loads(self.state.read_text())


@pytest.fixture
def ipvsadm(tmp_path):
    return Fake(tmp_path)


@pytest.fixture(scope="session")
def reference_table(tmp_path_factory):
    """State of the IPVSADM.md table, built once with commands in an order that must be sorted."""
    ipvsadm = Fake(tmp_path_factory.mktemp("reference"))
    ipvsadm.ok("-A", "-f", "100", "-s", "sh", "-b", "sh-fallback,sh-port")
    ipvsadm.ok("-a", "-f", "100", "-r", "192.168.1.30", "-w", "7")
    ipvsadm.ok("--add-service", "--sctp-service", "10.0.0.1:9999", "-s", "rr")
    ipvsadm.ok("-A", "-u", "10.0.0.1:53", "-p", "600", "-M", "255.255.255.0")
    ipvsadm.ok("-A", "-t", "10.0.0.1:8080", "-s", "rr", "-p", "360")
    ipvsadm.ok("-A", "-t", "10.0.0.1:80", "-s", "wrr")
    ipvsadm.ok("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.12:8080", "-m", "-w", "0")
    ipvsadm.ok("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.10:80", "-g", "-w", "1")
    return ipvsadm.state.read_text()


@pytest.fixture(scope="session")
def small_table(tmp_path_factory):
    """State of TCP 10.0.0.1:80 with one destination, 192.168.1.10:80."""
    ipvsadm = Fake(tmp_path_factory.mktemp("small"))
    ipvsadm.ok("-A", "-t", "10.0.0.1:80")
    ipvsadm.ok("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.10:80")
    return ipvsadm.state.read_text()


def set_connections(ipvsadm, addr, active, inactive):
    """Give a destination connection counters, as the kernel would."""
    table = ipvsadm.table()
    for svc in table["services"]:
        for dest in svc["dests"]:
            if dest["addr"] == addr:
                dest.update(activeconns=active, inactconns=inactive)
    ipvsadm.state.write_text(json.dumps(table))


def assert_fails(result, stderr, code):
    assert (result.returncode, result.stdout, result.stderr) == (code, "", stderr)


# ------------------------------------------------------------- listings

def test_empty_table_when_state_file_missing_or_empty(ipvsadm):
    assert ipvsadm("-Ln").stdout == VERSION + TITLES
    ipvsadm.state.write_text("")
    assert ipvsadm("-Ln").stdout == VERSION + TITLES


def test_full_listing_matches_reference(ipvsadm, reference_table):
    ipvsadm.state.write_text(reference_table)
    set_connections(ipvsadm, "192.168.1.10", 12, 345)
    result = ipvsadm("-Ln")
    assert (result.returncode, result.stdout, result.stderr) == (0, REFERENCE_LISTING, "")


@pytest.mark.parametrize("args", [["-L", "-n"], ["-ln"], ["--list", "--numeric"], ["-L"], []])
def test_listing_spellings(ipvsadm, args, reference_table):
    ipvsadm.state.write_text(reference_table)
    set_connections(ipvsadm, "192.168.1.10", 12, 345)
    assert ipvsadm(*args).stdout == REFERENCE_LISTING


def test_single_service_listing_has_no_version_line(ipvsadm, reference_table):
    ipvsadm.state.write_text(reference_table)
    expected = TITLES + (
        "TCP  10.0.0.1:80 wrr\n"
        "  -> 192.168.1.10:80              Route   1      0          0         \n"
        "  -> 192.168.1.12:8080            Masq    0      0          0         \n")
    assert ipvsadm("-Ln", "-t", "10.0.0.1:80").stdout == expected
    assert ipvsadm("-L", "-t", "10.0.0.1:80", "-n").stdout == expected
    assert ipvsadm("-Lnt10.0.0.1:80").stdout == expected
    assert ipvsadm("-Ln", "--tcp-service=10.0.0.1:80").stdout == expected


def test_single_service_listing_udp_and_fwm(ipvsadm, reference_table):
    ipvsadm.state.write_text(reference_table)
    assert ipvsadm("-Ln", "-u", "10.0.0.1:53").stdout == (
        TITLES + "UDP  10.0.0.1:53 wlc persistent 600 mask 255.255.255.0\n")
    assert ipvsadm("-Ln", "-f", "100").stdout == TITLES + (
        "FWM  100 sh (sh-fallback,sh-port)\n"
        "  -> 192.168.1.30:0               Route   7      0          0         \n")


def test_save_matches_reference(ipvsadm):
    ipvsadm.ok("-A", "-t", "10.0.0.1:80", "-s", "wrr")
    ipvsadm.ok("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.12:8080", "-m", "-w", "0")
    ipvsadm.ok("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.10:80")
    assert ipvsadm("-Sn").stdout == REFERENCE_SAVE
    assert ipvsadm("-S", "-n").stdout == REFERENCE_SAVE


def test_save_other_services(ipvsadm, reference_table):
    ipvsadm.state.write_text(reference_table)
    ipvsadm.ok("-a", "-t", "10.0.0.1:8080", "-r", "192.168.1.40", "-i")
    assert ipvsadm("-Sn").stdout == REFERENCE_SAVE + (
        "-A -t 10.0.0.1:8080 -s rr -p 360\n"
        "-a -t 10.0.0.1:8080 -r 192.168.1.40:8080 -i -w 1 --tun-type ipip\n"
        "-A -u 10.0.0.1:53 -s wlc -p 600 -M 255.255.255.0\n"
        "-A --sctp-service 10.0.0.1:9999 -s rr\n"
        "-A -f 100 -s sh -b sh-fallback,sh-port\n"
        "-a -f 100 -r 192.168.1.30:0 -g -w 7\n")


def test_sorting_is_numeric(ipvsadm):
    for vip in ("10.0.0.10:80", "10.0.0.9:80", "10.0.0.9:443"):
        ipvsadm.ok("-A", "-t", vip)
    ipvsadm.ok("-A", "-u", "10.0.0.9:80")
    ipvsadm.ok("-A", "-t", "[2001:db8::1]:80")
    for rip in ("192.168.1.10", "192.168.1.9", "10.1.1.1"):
        ipvsadm.ok("-a", "-t", "10.0.0.9:80", "-r", rip)
    lines = [line.split()[:2] for line in ipvsadm("-Ln").stdout.splitlines()[3:]]
    assert lines == [
        ["TCP", "10.0.0.9:80"],
        ["->", "10.1.1.1:80"], ["->", "192.168.1.9:80"], ["->", "192.168.1.10:80"],
        ["TCP", "10.0.0.9:443"], ["TCP", "10.0.0.10:80"], ["UDP", "10.0.0.9:80"],
        ["TCP", "[2001:db8::1]:80"]]


def test_ipv6_addresses_are_compressed(ipvsadm):
    ipvsadm.ok("-A", "-t", "[2001:0db8:0:0::1]:80", "-s", "rr")
    ipvsadm.ok("-a", "-t", "[2001:db8::1]:80", "-r", "[2001:db8:0:0:0:0:0:10]:8080", "-m")
    ipvsadm.ok("-a", "-t", "[2001:db8::1]:80", "-r", "2001:db8::11")
    assert ipvsadm("-Ln", "-t", "[2001:db8::1]:80").stdout == TITLES + (
        "TCP  [2001:db8::1]:80 rr\n"
        "  -> [2001:db8::10]:8080          Masq    1      0          0         \n"
        "  -> [2001:db8::11]:80            Route   1      0          0         \n")
    assert ipvsadm("-Sn").stdout == (
        "-A -t [2001:db8::1]:80 -s rr\n"
        "-a -t [2001:db8::1]:80 -r [2001:db8::10]:8080 -m -w 1\n"
        "-a -t [2001:db8::1]:80 -r [2001:db8::11]:80 -g -w 1\n")


def test_wide_weight_pushes_columns(ipvsadm):
    ipvsadm.ok("-A", "-t", "10.0.0.1:80")
    ipvsadm.ok("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.10", "-w", "2147483647")
    set_connections(ipvsadm, "192.168.1.10", 4294967295, 7)
    assert ipvsadm("-Ln").stdout.splitlines(keepends=True)[-1] == (
        "  -> 192.168.1.10:80              Route   2147483647 4294967295 7         \n")


def test_fwm_destinations_have_port_zero(ipvsadm):
    ipvsadm.ok("-A", "-f", "100")
    ipvsadm.ok("-a", "-f", "100", "-r", "192.168.1.30")
    ipvsadm.ok("-A", "-f", "7", "-6")
    ipvsadm.ok("-a", "-f", "7", "-6", "-r", "2001:db8::30")
    assert ipvsadm("-Ln").stdout == VERSION + TITLES + (
        "FWM  7 IPv6 wlc\n"
        "  -> [2001:db8::30]:0             Route   1      0          0         \n"
        "FWM  100 wlc\n"
        "  -> 192.168.1.30:0               Route   1      0          0         \n")
    assert_fails(ipvsadm("-a", "-f", "7", "-r", "2001:db8::31"),
                 "Different address family is allowed only for tunneling servers\n", 2)


def test_fwm_keeps_an_explicit_real_port(ipvsadm):
    # ipvsadm skips the port rewrite for firewall-mark services.
    ipvsadm.ok("-A", "-f", "100")
    ipvsadm.ok("-a", "-f", "100", "-r", "192.168.1.30:80", "-g")
    assert "  -> 192.168.1.30:80 " in ipvsadm("-Ln").stdout
    ipvsadm.ok("-d", "-f", "100", "-r", "192.168.1.30:80")


# ------------------------------------------------------- port rewrite

@pytest.mark.parametrize("method,name", [("-g", "Route"), ("-i", "Tunnel"), (None, "Route")])
def test_route_and_tunnel_store_the_virtual_port(ipvsadm, method, name):
    ipvsadm.ok("-A", "-t", "10.0.0.1:80")
    ipvsadm.ok("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.10:8080", *([method] if method else []))
    assert ipvsadm("-Ln").stdout.endswith(
        "  -> 192.168.1.10:80              %-7s 1      0          0         \n" % name)
    # -d does not rewrite: the real port named is not the stored one.
    assert_fails(ipvsadm("-d", "-t", "10.0.0.1:80", "-r", "192.168.1.10:8080"),
                 "No such destination\n", 255)
    ipvsadm.ok("-d", "-t", "10.0.0.1:80", "-r", "192.168.1.10:80")
    assert ipvsadm.table()["services"][0]["dests"] == []


def test_masquerading_keeps_the_real_port(ipvsadm):
    ipvsadm.ok("-A", "-t", "10.0.0.1:80")
    ipvsadm.ok("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.10:8080", "-m")
    ipvsadm.ok("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.11", "-m")
    out = ipvsadm("-Ln").stdout
    assert "  -> 192.168.1.10:8080            Masq " in out
    assert "  -> 192.168.1.11:80              Masq " in out
    ipvsadm.ok("-d", "-t", "10.0.0.1:80", "-r", "192.168.1.10:8080")
    ipvsadm.ok("-d", "-t", "10.0.0.1:80", "-r", "192.168.1.11")


def test_edit_resets_what_is_not_given(ipvsadm):
    ipvsadm.ok("-A", "-t", "10.0.0.1:80")
    ipvsadm.ok("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.10:80", "-m", "-w", "5")
    ipvsadm.ok("-e", "-t", "10.0.0.1:80", "-r", "192.168.1.10:80")
    assert ipvsadm("-Ln").stdout.endswith(
        "  -> 192.168.1.10:80              Route   1      0          0         \n")
    ipvsadm.ok("-e", "-w", "0", "-r", "192.168.1.10:80", "-t", "10.0.0.1:80", "-i")
    assert ipvsadm("-Ln").stdout.endswith(
        "  -> 192.168.1.10:80              Tunnel  0      0          0         \n")


def test_edit_of_a_masq_port_with_default_method_misses(ipvsadm):
    ipvsadm.ok("-A", "-t", "10.0.0.1:80")
    ipvsadm.ok("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.10:8080", "-m")
    assert_fails(ipvsadm("-e", "-t", "10.0.0.1:80", "-r", "192.168.1.10:8080", "-w", "3"),
                 "No such destination\n", 255)
    ipvsadm.ok("-e", "-t", "10.0.0.1:80", "-r", "192.168.1.10:8080", "-m", "-w", "3")


# ------------------------------------------------------------- services

def test_add_and_delete_service(ipvsadm):
    ipvsadm.ok("-A", "-t", "10.0.0.1:80", "-p")
    assert ipvsadm("-Ln").stdout.endswith("TCP  10.0.0.1:80 wlc persistent 300\n")
    ipvsadm.ok("-E", "-t", "10.0.0.1:80", "-s", "rr")
    assert ipvsadm("-Ln").stdout.endswith("TCP  10.0.0.1:80 rr\n")
    ipvsadm.ok("-D", "-t", "10.0.0.1:80")
    assert ipvsadm("-Ln").stdout == VERSION + TITLES


def test_ops_listed_after_persistence_and_saved_as_dash_o(ipvsadm):
    """1.31 (Debian's binary): -L prints `ops` last, persistent or not; -S prints ` -o` after -p/-M."""
    ipvsadm.ok("-A", "-u", "10.0.0.1:53", "-s", "rr", "-o")
    ipvsadm.ok("-A", "-u", "10.0.0.1:54", "-s", "wrr", "-p", "60", "-M", "255.255.255.0", "--ops")
    ipvsadm.ok("-A", "-f", "5", "-6", "-s", "wrr", "-p", "600", "-M", "64", "-o")
    assert ipvsadm("-Ln").stdout == VERSION + TITLES + (
        "UDP  10.0.0.1:53 rr ops\n"
        "UDP  10.0.0.1:54 wrr persistent 60 mask 255.255.255.0 ops\n"
        "FWM  5 IPv6 wrr persistent 600 mask 64 ops\n")
    assert ipvsadm("-Sn").stdout == (
        "-A -u 10.0.0.1:53 -s rr -o\n"
        "-A -u 10.0.0.1:54 -s wrr -p 60 -M 255.255.255.0 -o\n"
        "-A -f 5 -6 -s wrr -p 600 -M 64 -o\n")


def test_edit_service_sets_everything_again(ipvsadm):
    """-E sends a whole service: persistence and ops not given are turned off."""
    ipvsadm.ok("-A", "-u", "10.0.0.1:53", "-s", "rr", "-p", "60", "-M", "255.255.255.0", "-o")
    ipvsadm.ok("-E", "-u", "10.0.0.1:53", "-s", "wrr")
    assert ipvsadm("-Ln", "-u", "10.0.0.1:53").stdout == TITLES + "UDP  10.0.0.1:53 wrr\n"
    ipvsadm.ok("-E", "-u", "10.0.0.1:53", "-s", "wrr", "-p", "600", "-M", "255.255.0.0")
    assert ipvsadm("-Ln", "-u", "10.0.0.1:53").stdout == (
        TITLES + "UDP  10.0.0.1:53 wrr persistent 600 mask 255.255.0.0\n")


def test_save_puts_sched_flags_last(ipvsadm):
    """1.31's -S: -A NAME -s SCHED -p N -M MASK -o -b FLAGS (read from Debian's binary)."""
    ipvsadm.ok("-A", "-f", "100", "-s", "sh", "-b", "sh-port", "-p", "60", "-M", "255.255.255.0")
    assert ipvsadm("-Sn").stdout == "-A -f 100 -s sh -p 60 -M 255.255.255.0 -b sh-port\n"
    assert ipvsadm("-Ln").stdout.endswith("FWM  100 sh (sh-port) persistent 60 mask 255.255.255.0\n")


def test_clear(ipvsadm, reference_table):
    ipvsadm.state.write_text(reference_table)
    ipvsadm.ok("-C")
    assert ipvsadm("-Ln").stdout == VERSION + TITLES


# --------------------------------------------------------------- errors

ERRORS = [
    # IPVSADM.md error table
    (["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.10:80"], "Destination already exists", 255),
    (["-d", "-t", "10.0.0.1:80", "-r", "192.168.1.99:80"], "No such destination", 255),
    (["-e", "-t", "10.0.0.1:80", "-r", "192.168.1.99:80"], "No such destination", 255),
    (["-a", "-t", "10.0.0.2:80", "-r", "192.168.1.10:80"], "Service not defined", 255),
    (["-e", "-t", "10.0.0.1:81", "-r", "192.168.1.10:81"], "Service not defined", 255),
    (["-d", "-u", "10.0.0.1:80", "-r", "192.168.1.10:80"], "Service not defined", 255),
    (["-Ln", "-t", "10.0.0.1:81"], "No such service", 1),
    (["-Ln", "-f", "5"], "No such service", 1),
    (["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.256"], "illegal real server address[:port] specified", 2),
    (["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.10:99999"], "illegal real server address[:port] specified", 2),
    (["-a", "-t", "10.0.0.1:80", "-r", "[2001:db8::1]"], "illegal real server address[:port] specified", 2),
    (["-a", "-t", "10.0.0.1:80", "-r", "8080"], "illegal real server address[:port] specified", 2),
    (["-A", "-t", "10.0.0.300:80"], "illegal virtual server address[:port] specified", 2),
    (["-Ln", "-t", "nonsense"], "illegal virtual server address[:port] specified", 2),
    (["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.11", "-w", "-1"], "illegal weight specified", 2),
    (["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.11", "-w", "2147483648"], "illegal weight specified", 2),
    (["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.11", "-w", "3x"], "illegal weight specified", 2),
    (["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.11", "-w", "1", "-w", "2"],
     "multiple 'weight' options specified", 2),
    # other messages of ipvsadm and the kernel
    (["-A", "-t", "10.0.0.1:80"], "Service already exists", 255),
    (["-A", "-t", "10.0.0.2:80", "-s", "bogus"], "Scheduler or persistence engine not found", 255),
    (["-A", "-t", "10.0.0.2"], "Zero port specified for non-persistent service", 2),
    (["-D", "-t", "10.0.0.2:80"], "No such service", 255),
    (["-E", "-t", "10.0.0.2:80"], "No such service", 255),
    (["-d", "-t", "10.0.0.1:80", "-r", "192.168.1.10:80", "-w", "3"],
     "Illegal 'weight' option with the 'delete-server' command", 2),
    (["-d", "-t", "10.0.0.1:80", "-r", "192.168.1.10:80", "-g"],
     "Illegal 'forwarding-method' option with the 'delete-server' command", 2),
    (["-a", "-t", "10.0.0.1:80"], "You need to supply the 'real-server' option for the 'add-server' command", 2),
    (["-a", "-r", "192.168.1.11"], "You need to supply the 'service-address' option for the 'add-server' command", 2),
    (["-a", "-t", "10.0.0.1:80", "-r", "192.168.1.11", "-g", "-m"],
     "multiple 'forwarding-method' options specified", 2),
    (["-a", "-t", "10.0.0.1:80", "-r", "224.0.0.1"],
     "Invalid operation.  Possibly wrong module version, address not unicast, ...", 255),
    (["-a", "-t", "10.0.0.1:80", "-r", "2001:db8::1"],
     "Different address family is allowed only for tunneling servers", 2),
    (["-A", "-f", "0"], "invalid fwmark value `0' specified", 2),
    (["-A", "-t", "10.0.0.2:80", "-p", "0"], "invalid timeout value `0' specified", 2),
    (["-A", "-t", "10.0.0.2:80", "-b", "sh-port"], "incompatible scheduler flag `sh-port'", 2),
    (["-A", "-t", "10.0.0.2:80", "-6"], "-6 used before -f\n", 2),
    (["-A", "-t", "10.0.0.2:80", "-o"], "One-Packet Scheduling is only for UDP virtual services", 2),
    (["-E", "-t", "10.0.0.1:80", "--ops"], "One-Packet Scheduling is only for UDP virtual services", 2),
    (["-A", "-u", "10.0.0.2:53", "-o", "-o"], "multiple 'ops' options specified", 2),
    (["-Ln", "-o"], "Illegal 'ops' option with the 'list' command", 2),
    (["-D", "-u", "10.0.0.1:53", "-o"], "Illegal 'ops' option with the 'delete-service' command", 2),
    (["-A", "-u", "10.0.0.2:53", "-p", "60", "-M", "255.0.255.300"],
     "illegal virtual server persistent mask specified", 2),
    (["-A", "-f", "7", "-6", "-p", "60", "-M", "129"], "illegal ipv6 netmask specified", 2),
    (["-Ln", "foo"], "unexpected argument foo", 2),
    (["-L", "-L"], "invalid option `-L'", 2),
    (["-L", "-q"], "-q: unknown option", 255),
    (["-L", "-t"], "-t: missing argument", 255),
    (["-L", "--numeric=yes"], "--numeric=yes: option does not take an argument", 255),
    (["-L", "-c"], "fake_ipvsadm: option `-c' is not supported by this fake", 2),
]


@pytest.mark.parametrize("args,stderr,code", ERRORS, ids=[" ".join(e[0]) for e in ERRORS])
def test_errors(ipvsadm, small_table, args, stderr, code):
    ipvsadm.state.write_text(small_table)
    assert_fails(ipvsadm(*args), stderr + "\n", code)
    assert ipvsadm.state.read_text() == small_table


@pytest.mark.parametrize("args", [["-n", "-L"], ["-t", "10.0.0.1:80", "-L"], ["foo"], ["-q"]])
def test_command_must_come_first(ipvsadm, args):
    program = str(FAKE)
    assert_fails(ipvsadm(*args),
                 f"Try `{program} -h' or '{program} --help' for more information.\n", 255)


def test_missing_state_variable(ipvsadm):
    env = ipvsadm.env()
    del env["FAKE_IPVSADM_STATE"]
    result = subprocess.run([sys.executable, str(FAKE), "-Ln"], env=env,
                            capture_output=True, text=True, timeout=10, check=False)
    assert_fails(result, "fake_ipvsadm: FAKE_IPVSADM_STATE is not set\n", 2)


# --------------------------------------------------------------- faults

@pytest.mark.parametrize("args", [["-Ln"], ["-A", "-t", "10.0.0.1:80"], ["-h"]])
def test_fault_noipvs(ipvsadm, args):
    assert_fails(ipvsadm(*args, fault="noipvs"),
                 "Can't initialize ipvs: Protocol not available\n" + NOT_IPVS, 2)


def test_fault_noroot(ipvsadm):
    assert_fails(ipvsadm("-Ln", fault="noroot"),
                 "Can't initialize ipvs: Permission denied (you must be root)\n" + NOT_IPVS, 2)


@pytest.mark.parametrize("args", [["-Ln"], ["-C"]])
def test_fault_exit1(ipvsadm, args):
    assert_fails(ipvsadm(*args, fault="exit1"), "ipvsadm: something went wrong\n", 1)


@pytest.mark.parametrize("args", [["-Ln"], ["-A", "-t", "10.0.0.1:80"]])
def test_fault_hang(ipvsadm, args):
    with pytest.raises(subprocess.TimeoutExpired):
        ipvsadm(*args, fault="hang", timeout=1)


def test_fault_hang_list_only_hangs_listings(ipvsadm):
    assert ipvsadm("-A", "-t", "10.0.0.1:80", fault="hang-list").returncode == 0
    for args in (["-Ln"], ["-Sn"], ["-Ln", "-t", "10.0.0.1:80"]):
        with pytest.raises(subprocess.TimeoutExpired):
            ipvsadm(*args, fault="hang-list", timeout=1)


def test_fault_garbage(ipvsadm, reference_table):
    ipvsadm.state.write_text(reference_table)
    result = ipvsadm("-Ln", fault="garbage")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.endswith("\n") and result.stdout.count("\n") >= 3
    assert "IP Virtual Server" not in result.stdout
    assert ipvsadm("-a", "-t", "10.0.0.1:80", "-r", "1.2.3.4", fault="garbage").returncode == 0


def test_fault_truncated(ipvsadm, reference_table):
    ipvsadm.state.write_text(reference_table)
    title = "Prot LocalAddress:Port Scheduler Flags\n"
    for args, out in ((["-Ln"], VERSION + title), (["-Ln", "-t", "10.0.0.1:80"], title), (["-Sn"], "")):
        result = ipvsadm(*args, fault="truncated")
        assert (result.returncode, result.stdout, result.stderr) == (0, out, "")


def test_fault_fail_add(ipvsadm):
    ipvsadm("-A", "-t", "10.0.0.1:80", fault="fail-add")
    assert_fails(ipvsadm("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.10", fault="fail-add"),
                 "Service not defined\n", 255)
    assert ipvsadm("-Ln", fault="fail-add").stdout == VERSION + TITLES + "TCP  10.0.0.1:80 wlc\n"


def test_unknown_fault_is_refused(ipvsadm):
    assert_fails(ipvsadm("-Ln", fault="nope"),
                 "fake_ipvsadm: unknown FAKE_IPVSADM_FAULT value 'nope'\n", 2)


# ------------------------------------------------------ log and locking

def test_call_log(ipvsadm):
    ipvsadm("-A", "-t", "10.0.0.1:80", calls=True)
    ipvsadm("-Ln", fault="noipvs", calls=True)
    entries = [json.loads(line) for line in ipvsadm.calls.read_text().splitlines()]
    assert [e["argv"] for e in entries] == [["-A", "-t", "10.0.0.1:80"], ["-Ln"]]
    assert all(isinstance(e["t"], float) for e in entries)
    assert entries[0]["t"] <= entries[1]["t"]


def test_concurrent_changes_are_not_lost(ipvsadm):
    ipvsadm.ok("-A", "-t", "10.0.0.1:80")
    rips = [f"192.168.2.{n}" for n in range(1, 25)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda rip: ipvsadm("-a", "-t", "10.0.0.1:80", "-r", rip), rips))
    assert [r.returncode for r in results] == [0] * len(rips)
    stored = {d["addr"] for d in ipvsadm.table()["services"][0]["dests"]}
    assert stored == set(rips)


def test_a_firewall_mark_from_2_31_up_is_listed_signed_as_ipvsadm_does(ipvsadm):
    """ipvsadm 1.31 prints marks with %d: 4294967295 is listed as ``FWM  -1`` (seen on the real one)."""
    assert ipvsadm("-A", "-f", "4294967295", "-s", "rr").returncode == 0
    listed = ipvsadm("-Ln").stdout
    assert "FWM  -1 rr\n" in listed
    assert ipvsadm("-Ln", "-f", "4294967295").stdout.splitlines()[-1] == "FWM  -1 rr"
