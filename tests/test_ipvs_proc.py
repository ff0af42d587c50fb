"""The kernel's own listing, /proc/net/ip_vs, read without a process per pass (issue 14).

Native tests parse what the VM's kernel (Debian 6.1) printed, captured into tests/data/ip_vs/
by test_proc_reads_the_same_table_as_ipvsadm (the `ipvs` test below, run by tests/vm/run):
every key and destination must be those parse_listing reads from `ipvsadm -Ln` of the same
table, a line not understood refuses the whole read, and the monitor reads the table once a
pass from there only when the configured ipvsadm is the system's own (table_source)."""

import dataclasses
import ipaddress
import os
import re
import subprocess
import time

import pytest

import monitor_rs as m
from conftest import KERNEL
from harness import config

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "ip_vs")
VIP = "127.0.0.1:80"


def data(name):
    with open(os.path.join(DATA, name)) as handle:
        return handle.read()


def unsigned(key):
    """ipvsadm 1.31 prints a mark over 2^31 signed (`FWM  -1`); the config and /proc have it unsigned."""
    if key[0] == "FWM" and key[1].startswith("-"):
        mark, _, rest = key[1].partition(" ")
        return ("FWM", " ".join([str(int(mark) % 2 ** 32)] + ([rest] if rest else [])))
    return key


def ipvsadm_words(listing):
    """{key: the words after the address of its service line}, flags and pe left out (not in /proc)."""
    heads, key = {}, None
    for line in listing.splitlines():
        fields = line.split()
        if fields[:1] == ["FWM"]:
            ipv6 = fields[2] == "IPv6"
            key, words = ("FWM", fields[1] + (" IPv6" if ipv6 else "")), fields[2 + ipv6:]
        elif fields[:1] in (["TCP"], ["UDP"], ["SCTP"]):
            key, words = (fields[0], str(m.parse_address(fields[1]))), fields[2:]
        else:
            continue
        words = [w for w in words if not re.fullmatch(r"\(.*\)", w)]
        if "pe" in words:
            del words[words.index("pe"):words.index("pe") + 2]
        heads[unsigned(key)] = tuple(words)
    return heads


def assert_same_table(proc, listing):
    """What /proc gave is what ipvsadm -Ln gave: every service, every destination, the service
    lines it shows whole; and the marks it could not place are those ipvsadm shows without a
    destination of the service's own family."""
    services = {unsigned(key): table for key, table in m.parse_listing(listing).items()}
    heads = ipvsadm_words(listing)
    unplaced = {key for key in services if key not in proc}
    assert set(proc) <= set(services)
    assert {key[1].split()[0] for key in unplaced} == proc.unsure
    assert all(key[0] == "FWM" for key in unplaced)
    for key, table in proc.items():
        assert table == services[key], key
        ipv6_address = key[0] != "FWM" and key[1].startswith("[")
        if "persistent" in heads[key] or (ipv6_address and "ops" not in proc.heads.get(key, ())):
            assert key not in proc.heads, key  # the timeout in ticks; IPv6: ops not printed
        else:
            assert proc.heads[key] == heads[key], key
    for key in unplaced:
        assert all(d.forward == "Tunnel" for d in services[key].values()), key
    return services


###############################################################################
# the real kernel (tests/vm/run) ##############################################
###############################################################################

def build(ipvsadm, optional):
    """A varied table: every protocol, both families, marks (one in both families, one unplaced),
    persistence with and without a mask, ops, every forward method, weights 0 and the largest."""
    ipvsadm("-A", "-t", "10.0.0.1:80", "-s", "wrr")
    optional("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.10:80", "-g", "-w", "1")
    optional("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.12:8080", "-m", "-w", "0")
    optional("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.13", "-i", "-w", "65535")
    optional("-a", "-t", "10.0.0.1:80", "-r", "127.0.0.1:8081", "-m", "-w", "7")  # Local
    optional("-a", "-t", "10.0.0.1:80", "-r", "192.168.1.14", "-g", "-w", "2147483647")
    optional("-A", "-t", "10.0.0.1:8080", "-s", "rr", "-p", "360")
    optional("-A", "-u", "10.0.0.1:53", "-s", "wlc", "-p", "600", "-M", "255.255.255.0")
    optional("-a", "-u", "10.0.0.1:53", "-r", "192.168.1.20:53", "-m", "-w", "3")
    optional("-A", "-u", "10.0.0.2:53", "-s", "rr", "-o")
    optional("-A", "-u", "10.0.0.3:5060", "-s", "rr", "-o", "-p", "60", "-M", "255.255.0.0")
    optional("-A", "--sctp-service", "10.0.0.1:9999", "-s", "rr")
    optional("-a", "--sctp-service", "10.0.0.1:9999", "-r", "192.168.1.40:9999", "-m")
    optional("-A", "-t", "10.0.0.5:443", "-s", "sh", "-b", "sh-port")
    optional("-A", "-t", "[2001:db8::10]:443", "-s", "wlc")
    optional("-a", "-t", "[2001:db8::10]:443", "-r", "[2001:db8::1]:8443", "-m", "-w", "5")
    optional("-a", "-t", "[2001:db8::10]:443", "-r", "[2001:db8::2]:443", "-g", "-w", "0")
    optional("-a", "-t", "[2001:db8::10]:443", "-r", "[::1]:8443", "-m", "-w", "1")
    optional("-A", "-u", "[2001:db8::10]:53", "-s", "rr", "-o", "-p", "100", "-M", "96")
    optional("-A", "-t", "[2001:db8::11]:80", "-s", "rr", "-p", "30")
    optional("-A", "-t", "10.0.0.4:80", "-s", "rr")
    optional("-a", "-t", "10.0.0.4:80", "-r", "[2001:db8::40]:80", "-i")  # a tunnel across families
    optional("-A", "-f", "100", "-s", "sh")
    optional("-a", "-f", "100", "-r", "192.168.1.30", "-g", "-w", "7")
    optional("-A", "-f", "100", "-6", "-s", "rr", "-p", "300", "-M", "64")
    optional("-a", "-f", "100", "-6", "-r", "[2001:db8::30]:80", "-g", "-w", "2")
    optional("-A", "-f", "101", "-s", "rr")  # no destination: its family is not shown
    optional("-A", "-f", "102", "-6", "-s", "lc", "-p", "120")
    optional("-a", "-f", "102", "-6", "-r", "[2001:db8::31]:80", "-i", "-w", "4")  # a tunnel only: not shown
    optional("-A", "-f", "103", "-s", "rr", "-o")
    optional("-a", "-f", "103", "-r", "192.168.1.33", "-m", "-w", "1")
    optional("-A", "-f", "104", "-6", "-s", "wrr")  # alone, and only tunnelled across families
    optional("-a", "-f", "104", "-6", "-r", "192.168.1.34", "-i")
    optional("-A", "-f", "4294967295", "-s", "rr", "-p", "10", "-M", "255.255.255.128")
    optional("-a", "-f", "4294967295", "-r", "192.168.1.35", "-m", "-w", "1")
    optional("-A", "-f", "105", "-6", "-s", "rr", "-p", "50")  # IPv6 persistence, the default prefix
    optional("-a", "-f", "105", "-6", "-r", "[2001:db8::35]:80", "-g", "-w", "1")


def save(name, text):
    out = os.environ.get("MONITOR_RS_VM_OUT")
    if out:
        with open(os.path.join(out, name), "w") as handle:
            handle.write(text)


@pytest.mark.ipvs
@pytest.mark.skipif(not KERNEL, reason="needs the real kernel IPVS: runs inside the VM (tests/vm/run)")
def test_proc_reads_the_same_table_as_ipvsadm(any_ipvs):
    if any_ipvs.kind != "kernel":
        pytest.skip("the fake has no /proc")
    skipped = []

    def optional(*args):
        proc = any_ipvs.run(*args, check=False)
        if proc.returncode:
            skipped.append(f"{' '.join(args)}: {proc.stderr.strip()}")

    build(any_ipvs.run, optional)
    print("not built:", skipped)
    with open(m.PROC_IP_VS) as handle:
        raw = handle.read()
    listing = any_ipvs.run("-Ln").stdout
    save("proc-net-ip_vs.txt", raw)
    save("ipvsadm-Ln.txt", listing)
    save("skipped.txt", "\n".join(skipped) + "\n")
    print(raw, listing, skipped, sep="\n")
    proc = m.read_proc()
    services = assert_same_table(proc, listing)
    assert len(services) >= 12 and proc.unsure >= {"101", "102"}
    assert ("FWM", "100") in proc and ("FWM", "100 IPv6") in proc and ("FWM", "105 IPv6") in proc


@pytest.mark.ipvs
@pytest.mark.skipif(not KERNEL, reason="needs the real kernel IPVS: runs inside the VM (tests/vm/run)")
def test_a_pass_reads_the_kernel_table_once_from_proc(any_ipvs, backends, tmp_path):
    """The loop on the real kernel: the system's ipvsadm, table_source auto: one /proc read a
    pass, no ipvsadm -Ln; the server added through ipvsadm is found there the next pass."""
    if any_ipvs.kind != "kernel":
        pytest.skip("the fake has no /proc")
    a = backends(ip="127.0.0.11")
    any_ipvs.service(VIP)
    any_ipvs.run("-A", "-t", "127.0.0.1:81", "-s", "rr")
    (tmp_path / "c.conf").write_text(config(VIP, [a.address], services=[
        f"[virtual two]\nvip = 127.0.0.1\nvport = 81\nrs = {a.address}\ntype = m\n"]))
    cfg = m.load_config(str(tmp_path / "c.conf"))
    assert cfg.table_source == "auto" and m.system_ipvsadm(cfg.ipvsadm)
    ipvsadm = Counting(cfg.ipvsadm)
    monitor = m.Monitor(cfg, ipvsadm, Said())
    assert monitor.run_pass().ok and ipvsadm.listings == 0
    assert monitor.run_pass().ok and ipvsadm.listings == 0
    assert any_ipvs.dests(VIP) == {a.address: ("Masq", 1)}
    assert any_ipvs.dests("127.0.0.1:81") == {a.address: ("Masq", 1)}


class Counting(m.Ipvsadm):
    listings = 0

    def run(self, args, stop=None):
        self.listings += args[:1] == ("-Ln",)
        return super().run(args, stop)


class Said(m.Output):
    """An Output that keeps what was said, as (kind, message)."""

    def __init__(self):
        super().__init__(m.LogFile(None), None, to_log=False, echo=False)
        self.lines = []

    def say(self, message, kind="info", log=True):
        self.lines.append((kind, message))


def rows(n, family=4):
    """n destinations over n // 10 services (10 each), as /proc prints them, and the -R lines."""
    proc = ["IP Virtual Server version 1.2.1 (size=4096)", "Prot LocalAddress:Port Scheduler Flags",
            "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn"]
    restore = []
    for s in range(max(1, n // 10)):
        vip = ipaddress.IPv4Address(0x0A000000 + s + 1)
        proc.append(f"TCP  {int(vip):08X}:0050 wrr ")
        restore.append(f"-A -t {vip}:80 -s wrr")
        for d in range(min(10, n)):
            rip = ipaddress.IPv4Address(0xC0A80000 + s * 16 + d + 1)
            proc.append(f"  -> {int(rip):08X}:0050      Route   {d + 1:<6} 0          0         ")
            restore.append(f"-a -t {vip}:80 -r {rip}:80 -g -w {d + 1}")
    return "\n".join(proc) + "\n", "\n".join(restore) + "\n"


def per_read(fn, budget=1.0):
    fn()
    times, spent = [], 0.0
    while spent < budget or len(times) < 3:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return sorted(times)[len(times) // 2]


@pytest.mark.ipvs
@pytest.mark.skipif(not KERNEL, reason="needs the real kernel IPVS: runs inside the VM (tests/vm/run)")
def test_cost_of_a_read_proc_and_ipvsadm(any_ipvs):
    """Figures for the README: one read of the whole table, /proc against ipvsadm -Ln (median)."""
    if any_ipvs.kind != "kernel":
        pytest.skip("the fake has no /proc")
    figures = []
    ipvsadm = m.Ipvsadm("ipvsadm", 60)
    for n in (40, 1000, 10000):
        any_ipvs.run("-C")
        _, restore = rows(n)
        subprocess.run(["ipvsadm", "-R"], input=restore, text=True, check=True, timeout=600)
        proc = m.read_proc()
        assert sum(len(t) for t in proc.values()) == n
        listing = ipvsadm.run(("-Ln",)).stdout
        assert_same_table(proc, listing)
        t_proc = per_read(m.read_proc)
        t_ipvsadm = per_read(lambda: m.parse_listing(ipvsadm.run(("-Ln",)).stdout))
        one = next(iter(proc))
        vs = m.VirtualService("x", "tcp", ipaddress.ip_address(one[1].split(":")[0]), 80, 0, (), "-g")
        t_one = per_read(lambda: ipvsadm.read_service(vs))
        figures.append(f"{n} destinations: /proc {t_proc * 1000:.2f} ms, ipvsadm -Ln (whole) "
                       f"{t_ipvsadm * 1000:.2f} ms, ipvsadm -Ln -t (one service of 10) {t_one * 1000:.2f} ms")
    save("cost.txt", "\n".join(figures) + "\n")
    print("\n".join(figures))


###############################################################################
# what the kernel printed, read here ##########################################
###############################################################################

def test_the_captured_kernel_table_reads_as_ipvsadm_listed_it():
    """The VM's /proc/net/ip_vs and ipvsadm -Ln of the same table (Debian's 6.1 kernel, ipvsadm 1.31)."""
    proc = m.parse_proc(data("proc-net-ip_vs.txt"))
    services = assert_same_table(proc, data("ipvsadm-Ln.txt"))
    assert len(proc) + 3 <= len(services)  # and it is varied: every kind of line below is in it
    assert ("FWM", "100") in proc and ("FWM", "100 IPv6") in proc
    assert proc.unsure == {"101", "102", "104"}
    assert proc.heads[("UDP", "10.0.0.2:53")] == ("rr", "ops") and proc.heads[("FWM", "103")] == ("rr", "ops")
    assert proc.heads[("FWM", "100")] == ("sh",) and ("FWM", "100 IPv6") not in proc.heads  # persistent
    assert ("TCP", "[2001:db8::10]:443") in proc and ("TCP", "[2001:db8::10]:443") not in proc.heads
    assert proc[("FWM", "4294967295")] and ("SCTP", "10.0.0.1:9999") in proc
    forwards = {d.forward for table in proc.values() for d in table.values()}
    assert forwards == {"Route", "Masq", "Tunnel"}  # 6.1 lists a local -m destination as Masq
    weights = {d.weight for table in proc.values() for d in table.values()}
    assert {0, 65535} <= weights


HEAD = ("IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n")


def test_a_table_of_its_own_format():
    text = HEAD + ("TCP  7F000064:0050 wrr  \n"
                   "  -> 7F00000B:0050      Route   3      0          0         \n"
                   "  -> 7F00000C:1F90      Masq    0      12         4294967295\n"
                   "TCP  [0000:0000:0000:0000:0000:0000:0000:0001]:01BB wlc persistent 300 80000000\n"
                   "  -> [2001:0db8:0000:0000:0000:0000:0000:0001]:01BB      Masq    2147483647 0          -1        \n"
                   "SCTP 0A000001:270F rr  \n"
                   "UDP  0A000001:0035 wlc ops persistent 600 FFFFFF00\n")
    proc = m.parse_proc(text)
    ep = m.parse_address
    assert dict(proc) == {
        ("TCP", "127.0.0.100:80"): {
            ep("127.0.0.11:80"): m.Destination(ep("127.0.0.11:80"), "Route", 3, 0, 0),
            ep("127.0.0.12:8080"): m.Destination(ep("127.0.0.12:8080"), "Masq", 0, 12, 4294967295)},
        ("TCP", "[::1]:443"): {
            ep("[2001:db8::1]:443"): m.Destination(ep("[2001:db8::1]:443"), "Masq", 2147483647, 0, 4294967295)},
        ("SCTP", "10.0.0.1:9999"): {},
        ("UDP", "10.0.0.1:53"): {}}
    assert proc.heads == {("TCP", "127.0.0.100:80"): ("wrr",), ("SCTP", "10.0.0.1:9999"): ("rr",)}
    assert proc.unsure == set()


@pytest.mark.parametrize("lines, keys, unsure", [
    (["FWM  00000064 rr ", "  -> 0A000002:0000      Route   1      0          0"], {("FWM", "100")}, set()),
    (["FWM  00000064 rr ", "  -> [2001:0db8:0000:0000:0000:0000:0000:0002]:0000      Masq    1      0          0"],
     {("FWM", "100 IPv6")}, set()),
    (["FWM  00000064 rr "], set(), {"100"}),  # no destination: either family
    (["FWM  00000064 rr ", "  -> 0A000002:0000      Tunnel  1      0          0"], set(), {"100"}),  # may cross
    (["FWM  00000064 rr ", "FWM  00000064 sh ", "  -> 0A000002:0000      Route   1      0          0"],
     {("FWM", "100"), ("FWM", "100 IPv6")}, set()),  # the other of the pair is the other family
    (["FWM  00000064 rr ", "FWM  00000064 sh "], set(), {"100"}),
    (["FWM  FFFFFFFF rr ", "  -> 0A000002:0000      Local   1      0          0"], {("FWM", "4294967295")}, set()),
])
def test_a_firewall_mark_service_is_keyed_by_its_family_only_when_the_file_shows_it(lines, keys, unsure):
    proc = m.parse_proc(HEAD + "\n".join(lines) + "\n")
    assert set(proc) == keys and proc.unsure == unsure


@pytest.mark.parametrize("text", [
    "",
    HEAD[:-1],
    HEAD.replace("Prot", "Proto"),
    "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n",
    HEAD + "TCP  7F000064:0050 wrr  ",  # cut short: no final newline
    HEAD + "  -> 7F00000B:0050      Route   3      0          0\n",  # before any service
    HEAD + "TCP  7f000064:0050 wrr  \n",  # lower-case IPv4 hex
    HEAD + "TCP  127.0.0.100:80 wrr  \n",  # ipvsadm's form, not the kernel's
    HEAD + "TCP  7F000064:50 wrr  \n",
    HEAD + "TCP  [::1]:0050 wrr\n",  # %pI6 prints all 8 groups, never compressed
    HEAD + "AH   7F000064:0050 wrr  \n",
    HEAD + "TCP  7F000064:0050\n",
    HEAD + "TCP  7F000064:0050 wrr persistent 300\n",
    HEAD + "TCP  7F000064:0050 wrr persistent x FFFFFFFF\n",
    HEAD + "TCP  7F000064:0050 wrr persistent 300 FFFFFFFF extra\n",
    HEAD + "TCP  7F000064:0050 wrr flag\n",
    HEAD + "TCP  7F000064:0050 wrr  \n  -> 7F00000B:0050      Route   3      0\n",
    HEAD + "TCP  7F000064:0050 wrr  \n  -> 7F00000B:0050      Bypass  3      0          0\n",
    HEAD + "TCP  7F000064:0050 wrr  \n  -> 7F00000B:0050      Route   x      0          0\n",
    HEAD + "TCP  7F000064:0050 wrr  \n  -> 7F00000B:0050      Route   3      0          0\n"
           "  -> 7F00000B:0050      Route   3      0          0\n",  # a destination twice
    HEAD + "TCP  7F000064:0050 wrr  \nTCP  7F000064:0050 rr  \n",  # a service twice
    HEAD + "FWM  00000064 rr \nFWM  00000064 rr \nFWM  00000064 rr \n",
    HEAD + "FWM  00000064 rr \n  -> 0A000002:0000      Route   1      0          0\n"
           "FWM  00000064 rr \n  -> 0A000003:0000      Route   1      0          0\n",  # one family twice
    HEAD + "FWM  64 rr \n",
    HEAD + "TCP  7F000064:0050 wrr  \n\n",
    HEAD + "TCP  7F000064:0050 wrr\u00e9\n",
])
def test_anything_not_understood_refuses_the_whole_read(text):
    with pytest.raises(m.IpvsError):
        m.parse_proc(text)


def test_a_file_that_is_not_ascii_is_refused(tmp_path):
    path = tmp_path / "ip_vs"
    path.write_bytes((HEAD + "TCP  7F000064:0050 wrr\xff\n").encode("latin-1"))
    with pytest.raises(m.IpvsError):
        m.read_proc(str(path))


def test_a_big_table_is_read_whole(tmp_path):
    text, _ = rows(10000)
    path = tmp_path / "ip_vs"
    path.write_text(text)
    proc = m.read_proc(str(path))
    assert len(proc) == 1000 and sum(len(t) for t in proc.values()) == 10000


###############################################################################
# which source a pass reads ###################################################
###############################################################################

def test_only_the_systems_own_ipvsadm_selects_proc(tmp_path, monkeypatch):
    fake = tmp_path / "ipvsadm"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert m.system_ipvsadm("/usr/sbin/ipvsadm") and m.system_ipvsadm("/sbin/ipvsadm")
    assert not m.system_ipvsadm(str(fake))  # a test's fake, a wrapper elsewhere
    assert not m.system_ipvsadm("/usr/sbin/ipvsadm-wrapper")
    assert not m.system_ipvsadm("/usr/local/sbin/ipvsadm")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert not m.system_ipvsadm("ipvsadm")  # a bare name found first in another folder
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert m.system_ipvsadm("ipvsadm") == any(os.path.exists(f"{d}/ipvsadm") for d in ("/usr/sbin", "/sbin"))
    monkeypatch.setattr(m, "SBIN_DIRS", (str(tmp_path),))  # where the tests put a fake as `ipvsadm`
    assert not m.system_ipvsadm(str(tmp_path / "ipvsadm"))


def test_table_source_is_a_monitor_key_shown_by_check_config(tmp_path):
    assert "table_source" in m.MONITOR_KEYS
    path = tmp_path / "c.conf"
    path.write_text(config(VIP, ["127.0.0.11:80"], extra="") + "")
    assert m.load_config(str(path)).table_source == "auto"
    path.write_text(config(VIP, ["127.0.0.11:80"]).replace("[monitor]\n", "[monitor]\ntable_source = proc\n"))
    cfg = m.load_config(str(path))
    assert cfg.table_source == "proc"
    assert "table_source = proc" in m.render_ini(cfg)
    path.write_text(config(VIP, ["127.0.0.11:80"]).replace("[monitor]\n", "[monitor]\ntable_source = netlink\n"))
    with pytest.raises(m.ConfigError, match="table_source = 'netlink': must be one of auto, ipvsadm, proc"):
        m.load_config(str(path))
    path.write_text(config(VIP, ["127.0.0.11:80"]).replace("[monitor]\n", "[monitor]\ntable_source = ipvsadm\n"))
    proc = subprocess.run([m.sys.executable, m.__file__, "--config", str(path), "--check-config"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "table_source=ipvsadm" in proc.stdout


def proc_of(listing):
    """/proc/net/ip_vs as the kernel would print the table ipvsadm -Ln listed (IPv4 address services,
    as the fake lists them)."""
    out = [HEAD]
    for line in listing.splitlines():
        fields = line.split()
        if fields[:1] in (["TCP"], ["UDP"], ["SCTP"]):
            ep = m.parse_address(fields[1])
            out.append(f"{fields[0]:<4} {int(ep.ip):08X}:{ep.port:04X} {fields[2]}  \n")
        elif fields[:1] == ["->"] and fields[1] != "RemoteAddress:Port":
            ep = m.parse_address(fields[1])
            out.append(f"  -> {int(ep.ip):08X}:{ep.port:04X}      {fields[2]:<7} {fields[3]:<6} {fields[4]:<10} "
                       f"{fields[5]:<10}\n")
    return "".join(out)


@pytest.fixture
def fake_pass(ipvs, tmp_path):
    """A monitor in this process on the fake's table, its source set; /proc is a file of ours."""
    ipvs.run("-a", "-t", VIP, "-r", "127.0.0.11:80", "-m", "-w", "1")
    ipvs.run("-A", "-t", "127.0.0.1:81", "-s", "rr")

    def make(source, servers=("127.0.0.11:80",)):
        path = tmp_path / f"{source}.conf"
        path.write_text(config(VIP, list(servers), extra="check = on\n", services=[
            "[virtual two]\nvip = 127.0.0.1\nvport = 81\nrs = 127.0.0.12:80\ntype = m\ncheck = on\n"]).replace(
            "[monitor]\n", f"[monitor]\ntable_source = {source}\n"))
        said = Said()
        monitor = m.Monitor(m.load_config(str(path)), m.Ipvsadm(ipvs.path), said)
        monitor.proc_path = str(tmp_path / "ip_vs")
        passes = monitor.run_pass

        def run_pass():
            monitor.due.clear()  # every service due: each pass here probes and lists them all
            return passes()
        monitor.run_pass = run_pass
        return monitor, said
    return make


def listings(ipvs):
    return sum(argv[:1] == ["-Ln"] for argv in ipvs.listing_calls())


def test_proc_forced_reads_the_whole_table_once_a_pass_and_changes_through_ipvsadm(fake_pass, ipvs, tmp_path):
    """Before: one ipvsadm -Ln per virtual service every pass."""
    monitor, said = fake_pass("proc")
    (tmp_path / "ip_vs").write_text(proc_of(ipvs.run("-Ln").stdout))
    before = listings(ipvs)
    report = monitor.run_pass()
    assert report.ok and listings(ipvs) == before  # no -Ln at all: both services from the one read
    assert ipvs.dests("127.0.0.1:81") == {"127.0.0.12:80": ("Masq", 1)}  # the add, through ipvsadm
    assert not [line for line in said.lines if line[0] == "problem"]


def test_auto_with_a_fake_ipvsadm_lists_each_service_through_it(fake_pass, ipvs, tmp_path):
    monitor, said = fake_pass("auto")
    (tmp_path / "ip_vs").write_text(HEAD)  # an empty table there: must not be read
    before = listings(ipvs)
    assert monitor.run_pass().ok
    assert listings(ipvs) == before + 2
    assert ipvs.dests("127.0.0.1:81") == {"127.0.0.12:80": ("Masq", 1)}


def test_auto_with_the_systems_ipvsadm_reads_proc(fake_pass, ipvs, tmp_path, monkeypatch):
    monitor, said = fake_pass("auto")
    (tmp_path / "ip_vs").write_text(proc_of(ipvs.run("-Ln").stdout))
    monkeypatch.setattr(m, "system_ipvsadm", lambda path: path == ipvs.path)  # the fake stands for /usr/sbin's
    before = listings(ipvs)
    assert monitor.run_pass().ok and listings(ipvs) == before
    os.unlink(tmp_path / "ip_vs")  # no ip_vs module loaded: ipvsadm -Ln, nothing said
    assert monitor.run_pass().ok and listings(ipvs) == before + 2
    assert not [line for line in said.lines if line[0] == "problem"]


def test_ipvsadm_forced_never_reads_proc(fake_pass, ipvs, tmp_path, monkeypatch):
    monitor, said = fake_pass("ipvsadm")
    (tmp_path / "ip_vs").write_text(HEAD)
    monkeypatch.setattr(m, "system_ipvsadm", lambda path: True)
    before = listings(ipvs)
    assert monitor.run_pass().ok and listings(ipvs) == before + 2


def test_a_failed_proc_read_falls_back_to_ipvsadm_for_the_pass_said_once(fake_pass, ipvs, tmp_path):
    monitor, said = fake_pass("proc")
    (tmp_path / "ip_vs").write_text(HEAD + "TCP  7F000001:0050 wrr  \n  -> garbled\n")
    for _ in range(3):
        before = listings(ipvs)
        assert monitor.run_pass().ok and listings(ipvs) == before + 2
    problems = [text for kind, text in said.lines if kind == "problem"]
    assert len(problems) == 1 and "could not be read" in problems[0] and "garbled" in problems[0]
    (tmp_path / "ip_vs").write_text(proc_of(ipvs.run("-Ln").stdout))
    before = listings(ipvs)
    assert monitor.run_pass().ok and listings(ipvs) == before
    assert any("read from" in text and "again" in text for _, text in said.lines)
    os.unlink(tmp_path / "ip_vs")  # forced: a missing file is said too
    assert monitor.run_pass().ok
    assert len([text for kind, text in said.lines if kind == "problem"]) == 2


def test_a_service_missing_from_proc_is_asked_of_ipvsadm_whose_word_is_final(fake_pass, ipvs, tmp_path):
    """A read that raced a change, or a mark /proc cannot place: ipvsadm -Ln for that one service."""
    monitor, said = fake_pass("proc")
    listing = ipvs.run("-Ln").stdout
    (tmp_path / "ip_vs").write_text(proc_of(listing.replace("TCP  127.0.0.1:81 rr", "")))
    before = len(ipvs.listing_calls())
    assert monitor.run_pass().ok  # the fake has it: read there, its server added
    assert [argv for argv in ipvs.listing_calls()[before:] if argv[0] == "-Ln"] == [["-Ln", "-t", "127.0.0.1:81"]]
    assert ipvs.dests("127.0.0.1:81") == {"127.0.0.12:80": ("Masq", 1)}
    ipvs.run("-D", "-t", "127.0.0.1:81")
    report = monitor.run_pass()  # gone from both: not defined, as before, nothing changed
    assert not report.ok
    two = next(s for s in report.services if s.address == "127.0.0.1:81")
    assert "is not defined in IPVS" in two.problem


def test_a_firewall_mark_service_proc_cannot_place_is_listed_through_ipvsadm(ipvs, tmp_path):
    ipvs.run("-A", "-f", "7", "-s", "rr")
    path = tmp_path / "c.conf"
    path.write_text("[monitor]\ntable_source = proc\ninterval = 1\n\n[virtual mark]\nprotocol = fwm\nfwmark = 7\n"
                    "rs = 127.0.0.12\nrport = 80\ncheck = on\ntype = g\n")
    said = Said()
    monitor = m.Monitor(m.load_config(str(path)), m.Ipvsadm(ipvs.path), said)
    monitor.proc_path = str(tmp_path / "ip_vs")
    (tmp_path / "ip_vs").write_text(HEAD + "FWM  00000007 rr \n")  # no destination: v4 or v6?
    before = len(ipvs.listing_calls())
    assert monitor.run_pass().ok
    assert [argv for argv in ipvs.listing_calls()[before:] if argv[0] == "-Ln"] == [["-Ln", "-f", "7"]]
    assert list(ipvs.dests("7", "-f")) == ["127.0.0.12:80"]  # added through ipvsadm


def test_a_service_the_monitor_manages_is_read_from_proc_when_the_file_shows_its_whole_service_line(
        fake_pass, ipvs, tmp_path):
    """scheduler set: the monitor corrects its scheduler, persistence, mask and ops.  /proc shows the
    scheduler and ops of a service that is not persistent: read there, corrected on it, no process;
    a persistent one (its timeout in the kernel's ticks) is listed through ipvsadm -Ln.
    Before: every managed service through ipvsadm -Ln, every pass."""
    monitor, said = fake_pass("proc")
    vs = dataclasses.replace(monitor.config.services[1], scheduler="rr")
    monitor.reload(dataclasses.replace(monitor.config, services=(monitor.config.services[0], vs)))
    monitor.ipvsadm = m.Ipvsadm(ipvs.path)
    listed = proc_of(ipvs.run("-Ln").stdout)
    assert "TCP  7F000001:0051 rr  \n" in listed
    (tmp_path / "ip_vs").write_text(listed)
    before = len(ipvs.listing_calls())
    assert monitor.run_pass().ok
    made = ipvs.listing_calls()[before:]
    assert not [argv for argv in made if argv[0] in ("-Ln", "-E")], made  # from /proc, nothing to correct
    assert ipvs.dests("127.0.0.1:81") == {"127.0.0.12:80": ("Masq", 1)}

    listed = proc_of(ipvs.run("-Ln").stdout)  # the kernel's file shows the add
    (tmp_path / "ip_vs").write_text(listed.replace("TCP  7F000001:0051 rr  ", "TCP  7F000001:0051 wlc  "))
    before = len(ipvs.listing_calls())
    assert monitor.run_pass().ok
    made = ipvs.listing_calls()[before:]
    assert [argv for argv in made if argv[0] in ("-Ln", "-E")] == [["-E", "-t", "127.0.0.1:81", "-s", "rr"]]
    assert any("scheduler wlc in IPVS, rr configured: corrected" in text for _, text in said.lines)

    (tmp_path / "ip_vs").write_text(listed.replace("TCP  7F000001:0051 rr  ",
                                                   "TCP  7F000001:0051 rr persistent 30000 FFFFFFFF"))
    before = len(ipvs.listing_calls())
    assert monitor.run_pass().ok
    assert [argv for argv in ipvs.listing_calls()[before:] if argv[0] in ("-Ln", "-E")] == [
        ["-Ln", "-t", "127.0.0.1:81"]]  # the fake's: not persistent, as configured: nothing to correct
