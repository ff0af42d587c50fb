"""Issue 13, the IPVS table: the virtual service created when absent and corrected when its
scheduler or persistence differ (only when `scheduler` is set), and removed at stop with
`cleanstop` -- as ldirectord does (ld_start's -A/-E, ld_stop's purge_virtual).

The end-to-end scenarios run on the fake ipvsadm here and on the kernel's IPVS in the VM
tier (any_ipvs); the table is always read back with ipvsadm, never from the monitor's words.
"""

import json
import select

import pytest

import monitor_rs as m
from harness import SLOW, Ipvs, config, wait_until

VIP = "127.0.0.1:80"
TITLES = ("Prot LocalAddress:Port Scheduler Flags\n"
          "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n")


@pytest.fixture
def ipvs(any_ipvs):
    """Every scenario here on the fake, and on the real kernel inside the VM."""
    return any_ipvs


def head(ipvs, *service):
    """The service line of one virtual service, as ipvsadm -Ln lists it."""
    listing = ipvs.run("-Ln", *service).stdout.splitlines()
    assert len(listing) >= 3, listing
    return listing[2]


def services(ipvs):
    """The set of (PROT, address) in the whole table."""
    return set(m.parse_listing(ipvs.run("-Ln").stdout))


def passes(monitor, count):
    """Wait until the running monitor has published `count` passes (its state file's times)."""
    seen = set()

    def more():
        try:
            seen.add(json.loads(monitor.state.read_text())["time"])
        except (FileNotFoundError, ValueError, KeyError):
            pass
        return len(seen) >= count
    wait_until(more, what=f"{count} passes")


# ------------------------------------------------------------------ reading the service line

@pytest.mark.parametrize("line, want", [
    ("TCP  10.0.0.1:80 wrr", m.ServiceHead("wrr")),
    ("TCP  10.0.0.1:8080 rr persistent 360", m.ServiceHead("rr", 360)),
    ("UDP  10.0.0.1:53 wlc persistent 600 mask 255.255.255.0", m.ServiceHead("wlc", 600, "255.255.255.0")),
    ("FWM  100 sh (sh-fallback,sh-port)", m.ServiceHead("sh", flags="sh-fallback,sh-port")),
    ("FWM  5 IPv6 wrr persistent 600 mask 64 ops", m.ServiceHead("wrr", 600, "64", ops=True)),
    ("UDP  10.0.0.1:53 rr ops", m.ServiceHead("rr", ops=True)),
    ("TCP  10.0.0.1:80 sh (sh-port) persistent 60 pe sip", m.ServiceHead("sh", 60, flags="sh-port", pe="sip")),
])
def test_the_service_line_is_read(line, want):
    text = TITLES + line + "\n"
    (table,) = m.parse_listing(text).values()
    assert table.head == want and table == {}


@pytest.mark.parametrize("line", [
    "TCP  10.0.0.1:80 wrr bogus", "TCP  10.0.0.1:80 wrr persistent", "TCP  10.0.0.1:80 wrr persistent x",
    "TCP  10.0.0.1:80 wrr persistent 60 mask", "TCP  10.0.0.1:80 wrr ops persistent 60", "FWM  5 IPv6",
    "TCP  10.0.0.1:80 WRR",
])
def test_a_service_line_not_understood_is_refused(line):
    """As strict as before for destinations: a garbled line never reads as a service."""
    text = TITLES + line + "\n"
    with pytest.raises(m.IpvsError):
        m.parse_listing(text)


def test_the_differences_are_said_as_the_operator_reads_them():
    have, want = m.ServiceHead("rr", 300), m.ServiceHead("wrr", 600, "255.255.255.0", ops=True)
    assert have.differences(want, 4) == ["scheduler rr in IPVS, wrr configured",
                                         "persistent 300 in IPVS, 600 configured", "no ops in IPVS, ops configured"]
    assert m.ServiceHead("wrr", 600).differences(m.ServiceHead("wrr", 600, "255.255.255.0"), 4) == [
        "mask 255.255.255.255 in IPVS, 255.255.255.0 configured"]
    assert m.ServiceHead("wrr").differences(m.ServiceHead("wrr", 60), 6) == [
        "not persistent in IPVS, persistent 60 configured"]
    assert m.ServiceHead("wrr", 60, "64").differences(m.ServiceHead("wrr", 60, "64"), 6) == []
    assert str(want) == "wrr, persistent 600, mask 255.255.255.0, ops"


# ------------------------------------------------------------------ the config's keys

@pytest.mark.parametrize("extra, key", [
    ("persistent = 600", "persistent"),  # without scheduler: the service is not the monitor's
    ("scheduler = wrr\nnetmask = 255.255.255.0", "netmask"),  # without persistent
    ("scheduler = wrr\npersistent = 0", "persistent"),
    ("scheduler = wrr\npersistent = 60\nnetmask = 64", "netmask"),  # a prefix length on an IPv4 service
    ("scheduler = wrr\npersistent = 60\nnetmask = 255.0.255.0", "netmask"),
    ("scheduler = wrr\nops = yes", "ops"),  # ipvsadm: One-Packet Scheduling is only for UDP
    ("scheduler = Round Robin", "scheduler"),
])
def test_config_refusals(tmp_path, extra, key):
    """Refused at start in one line naming the key (what it says is the config reader's)."""
    path = tmp_path / "monitorRS.conf"
    path.write_text(config(VIP, ["127.0.0.11:80"], extra=extra))
    with pytest.raises(m.ConfigError, match=rf"\[virtual web\] {key} = "):
        m.load_config(str(path))


# ------------------------------------------------------------------ created when absent

CREATED = [  # (protocol keys, -Ln arguments, the service line ipvsadm lists)
    ("scheduler = wrr", ("-t", VIP), "TCP  127.0.0.1:80 wrr"),
    ("protocol = udp\ncheck = external\ncheckcommand = /bin/false\nscheduler = rr\nops = yes",
     ("-u", "127.0.0.1:53"), "UDP  127.0.0.1:53 rr ops"),
    ("protocol = fwm\nfwmark = 9\nrport = 80\nscheduler = lc", ("-f", "9"), "FWM  9 lc"),
    ("scheduler = wrr\npersistent = 600\nnetmask = 255.255.255.0", ("-t", VIP),
     "TCP  127.0.0.1:80 wrr persistent 600 mask 255.255.255.0"),
]


def section(extra):
    """A config text for one service named web on VIP (or its mark), real server 127.0.0.11:80, down."""
    if "protocol = fwm" in extra:
        return (f"[monitor]\ninterval = 0.3\ntimeout = 0.5\n\n[virtual web]\nrs = 127.0.0.11\ntype = m\n"
                f"{extra}\n")
    vip = "127.0.0.1:53" if "protocol = udp" in extra else VIP
    return config(vip, ["127.0.0.11:80"], extra=extra)


@pytest.mark.parametrize("extra, service, line", CREATED, ids=["tcp", "udp-ops", "fwm", "persistent-netmask"])
def test_created_when_absent(ipvs, run, extra, service, line):
    """Was: "virtual service ... is not defined in IPVS", nothing done, exit 1."""
    monitor = run(ipvs, section(extra))
    proc = monitor.once()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert head(ipvs, *service) == line
    address = service[1]
    created = [x for x in monitor.lines() if "created:" in x]
    assert len(created) == 1 and f"virtual service {address} (web) created: " in created[0], monitor.lines()
    (table,) = m.parse_listing(ipvs.run("-Ln", *service).stdout).values()
    assert table == {}  # its real server is down: never added
    assert monitor.count("not defined in IPVS") == 0


def test_ipv6_fwm_created_with_its_prefix_length(ipvs, run):
    text = ("[monitor]\ninterval = 0.3\ntimeout = 0.5\n\n[virtual mark6]\nprotocol = fwm\nfwmark = 7\n"
            "rport = 80\nrs = ::1\ntype = m\nscheduler = rr\npersistent = 600\nnetmask = 64\n")
    monitor = run(ipvs, text)
    proc = monitor.once()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert head(ipvs, "-f", "7", "-6") == "FWM  7 IPv6 rr persistent 600 mask 64"
    assert monitor.count("virtual service 7 IPv6 (mark6) created: rr, persistent 600, mask 64") == 1


def test_created_service_gets_its_servers_after_a_good_check(ipvs, run, backends):
    """The service is created empty; a server is added only once it passed its check."""
    up, down = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    down.stop()
    monitor = run(ipvs, config(VIP, [up.address, down.address], [3, 2], extra="scheduler = wrr")).start()
    wait_until(lambda: ("TCP", VIP) in services(ipvs) and ipvs.dests(VIP) == {up.address: ("Masq", 3)},
               what="the created service with the server that is up")
    down.start()
    wait_until(lambda: ipvs.dests(VIP) == {up.address: ("Masq", 3), down.address: ("Masq", 2)},
               what="the second server added once up")
    code, _, err = monitor.stop()
    assert code == 0 and "Traceback" not in err
    assert monitor.count("virtual service 127.0.0.1:80 (web) created: wrr") == 1


def test_not_created_without_scheduler(ipvs, run):
    """As before issue 13: without scheduler the service must exist; the monitor says so."""
    monitor = run(ipvs, config(VIP, ["127.0.0.11:80"]))
    proc = monitor.once()
    assert proc.returncode == 1
    assert services(ipvs) == set()
    assert monitor.count("virtual service 127.0.0.1:80 is not defined in IPVS; no change made to it") == 1
    assert monitor.count("created") == 0


# ------------------------------------------------------------------ corrected when it differs

def test_corrected_when_the_scheduler_and_persistence_differ(ipvs, run):
    ipvs.run("-A", "-t", VIP, "-s", "rr", "-p", "300")
    ipvs.run("-a", "-t", VIP, "-r", "127.0.0.11:80", "-m", "-w", "0")  # a server there already: kept
    monitor = run(ipvs, config(VIP, ["127.0.0.11:80"], extra="quiescent = yes\nscheduler = wrr\n"
                                                            "persistent = 600\nnetmask = 255.255.255.0"))
    assert monitor.once().returncode == 0
    assert head(ipvs, "-t", VIP) == "TCP  127.0.0.1:80 wrr persistent 600 mask 255.255.255.0"
    assert ipvs.dests(VIP) == {"127.0.0.11:80": ("Masq", 0)}
    assert monitor.count("virtual service 127.0.0.1:80 (web): scheduler rr in IPVS, wrr configured; "
                         "persistent 300 in IPVS, 600 configured: corrected") == 1
    assert monitor.once().returncode == 0  # now in place: nothing more to correct
    assert monitor.count("corrected") == 1


def test_corrected_when_persistence_is_there_and_not_configured(ipvs, run):
    ipvs.run("-A", "-u", "127.0.0.1:53", "-s", "wrr", "-p", "60", "-M", "255.255.0.0", "-o")
    monitor = run(ipvs, section("protocol = udp\ncheck = external\ncheckcommand = /bin/false\nscheduler = wrr"))
    assert monitor.once().returncode == 0
    assert head(ipvs, "-u", "127.0.0.1:53") == "UDP  127.0.0.1:53 wrr"
    assert monitor.count("virtual service 127.0.0.1:53 (web): persistent 60 in IPVS, not persistent configured; "
                         "ops in IPVS, not configured: corrected") == 1


def test_a_mask_alone_is_corrected(ipvs, run):
    ipvs.run("-A", "-t", VIP, "-s", "wrr", "-p", "600")
    monitor = run(ipvs, config(VIP, ["127.0.0.11:80"], extra="scheduler = wrr\npersistent = 600\n"
                                                            "netmask = 255.255.255.0"))
    assert monitor.once().returncode == 0
    assert head(ipvs, "-t", VIP) == "TCP  127.0.0.1:80 wrr persistent 600 mask 255.255.255.0"
    assert monitor.count("mask 255.255.255.255 in IPVS, 255.255.255.0 configured: corrected") == 1


def test_without_scheduler_the_service_is_never_corrected(ipvs, run):
    ipvs.run("-A", "-t", VIP, "-s", "rr", "-p", "300")
    monitor = run(ipvs, config(VIP, ["127.0.0.11:80"]))
    assert monitor.once().returncode == 0
    assert head(ipvs, "-t", VIP) == "TCP  127.0.0.1:80 rr persistent 300"
    assert monitor.count("corrected") == 0


# ------------------------------------------------------------------ a creation that fails

def test_a_failing_create_is_said_once_while_it_lasts(ipvs, run):
    """The kernel has no scheduler `nosuch`: -A fails every pass, said once, shown in --status."""
    monitor = run(ipvs, config(VIP, ["127.0.0.11:80"], extra="scheduler = nosuch")).start()
    passes(monitor, 4)
    code, snap = monitor.status()
    code_stop, _, err = monitor.stop()
    assert code_stop == 0 and "Traceback" not in err
    assert services(ipvs) == set()
    failed = [x for x in monitor.lines() if "could not be created" in x]
    assert len(failed) == 1, monitor.lines()
    assert ("127.0.0.1:80 (web): virtual service 127.0.0.1:80 is not defined in IPVS and could not be created: "
            "exit 255: Scheduler or persistence engine not found") in failed[0]
    assert code == 1 and "could not be created" in snap["services"][0]["problem"]


def test_dry_run_and_status_create_nothing(ipvs, run):
    monitor = run(ipvs, config(VIP, ["127.0.0.11:80"], extra="scheduler = wrr\npersistent = 60"))
    proc = monitor.once("--dry-run")
    assert proc.returncode == 0
    assert "would run: " in proc.stdout and "-A -t 127.0.0.1:80 -s wrr -p 60" in proc.stdout
    code, snap = monitor.status()
    assert code == 1 and "not defined in IPVS (the monitor creates it)" in snap["services"][0]["problem"]
    assert services(ipvs) == set()


# ------------------------------------------------------------------ cleanstop

def three_services(ipvs, cleanstop):
    """web is the monitor's (scheduler set, created by it); legacy is configured without
    scheduler (made by hand); other is in the table only."""
    ipvs.run("-A", "-t", "127.0.0.3:80", "-s", "rr")
    ipvs.run("-A", "-t", "127.0.0.4:80", "-s", "rr")
    ipvs.run("-a", "-t", "127.0.0.4:80", "-r", "127.0.0.12:80", "-m", "-w", "1")
    legacy = "[virtual legacy]\nvip = 127.0.0.3\nvport = 80\nrs = 127.0.0.13:80\ntype = m\n"
    text = config(VIP, ["127.0.0.11:80"], extra="scheduler = wrr", services=[legacy])
    return text.replace("[monitor]\n", "[monitor]\ncleanstop = yes\n") if cleanstop else text


def test_cleanstop_removes_the_managed_services_only(ipvs, run, backends):
    up = backends(ip="127.0.0.11")
    monitor = run(ipvs, three_services(ipvs, cleanstop=True).replace("127.0.0.11:80", up.address)).start()
    wait_until(lambda: ("TCP", VIP) in services(ipvs) and up.address in ipvs.dests(VIP),
               what="web created, its server in")
    code, _, err = monitor.stop()
    assert code == 0 and "Traceback" not in err
    assert services(ipvs) == {("TCP", "127.0.0.3:80"), ("TCP", "127.0.0.4:80")}
    assert ipvs.dests("127.0.0.4:80") == {"127.0.0.12:80": ("Masq", 1)}
    assert monitor.count("virtual service 127.0.0.1:80 (web) removed from IPVS (cleanstop)") == 1
    assert monitor.count("cleanstop: removed from IPVS: 127.0.0.1:80 (web)") == 1
    assert monitor.count("the IPVS table is left as it is") == 0


def test_without_cleanstop_the_table_is_left_as_it_is(ipvs, run):
    monitor = run(ipvs, three_services(ipvs, cleanstop=False)).start()
    wait_until(lambda: ("TCP", VIP) in services(ipvs), what="web created")
    code, _, err = monitor.stop()
    assert code == 0 and "Traceback" not in err
    assert services(ipvs) == {("TCP", VIP), ("TCP", "127.0.0.3:80"), ("TCP", "127.0.0.4:80")}
    assert monitor.count("the IPVS table is left as it is") == 1
    assert monitor.count("cleanstop") == 0


def test_cleanstop_is_not_done_by_a_dry_run(ipvs, run):
    ipvs.run("-A", "-t", VIP, "-s", "wrr")
    text = config(VIP, ["127.0.0.11:80"], extra="scheduler = wrr").replace(
        "[monitor]\n", "[monitor]\ncleanstop = yes\n")
    monitor = run(ipvs, text)
    monitor.start("--dry-run")
    ready, _, _ = select.select([monitor.proc.stdout], [], [], 20 * SLOW)
    assert ready and " started (PID " in monitor.proc.stdout.readline()  # its signal handlers are set
    code, _, err = monitor.stop()
    assert code == 0 and "Traceback" not in err
    assert services(ipvs) == {("TCP", VIP)}


def test_a_hung_ipvsadm_does_not_hang_the_cleanstop(run, tmp_path):
    """The fake's hang: each -D has ipvsadm's timeout, and after one that hangs the rest are left."""
    ipvs = Ipvs("fake", tmp_path)
    second = "[virtual api]\nvip = 127.0.0.2\nvport = 80\nrs = 127.0.0.12:80\ntype = m\nscheduler = rr\n"
    text = config(VIP, ["127.0.0.11:80"], extra="scheduler = wrr", services=[second]).replace(
        "[monitor]\n", "[monitor]\ncleanstop = yes\nipvsadm_timeout = 1\n")
    monitor = run(ipvs, text).start()
    wait_until(lambda: len(services(ipvs)) == 2, what="both created")
    passes(monitor, 2)
    ipvs.fault("hang")
    code, _, err = monitor.stop(timeout=10)
    ipvs.fault("")
    assert code == 0 and "Traceback" not in err
    assert services(ipvs) == {("TCP", VIP), ("TCP", "127.0.0.2:80")}
    assert monitor.count("virtual service 127.0.0.1:80 (web) could not be removed (cleanstop): ") == 1
    assert monitor.count("no answer within 1 s") >= 1
    assert monitor.count("cleanstop given up, left in IPVS: 127.0.0.2:80 (api)") == 1
    assert monitor.count("cleanstop: no virtual service removed from IPVS") == 1
