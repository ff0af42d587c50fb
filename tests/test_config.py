"""The config loader: the example loads, and every bad input is one clear line."""

import ipaddress
import os
import subprocess
import sys

import pytest

import monitor_rs as m

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GOOD = """
[monitor]
interval = 2
timeout = 0.5
log = /tmp/x.log
fall = 2

[virtual web]
vip = 10.10.10.10
vport = 80
rs = 192.168.32.63 192.168.32.73:8080 192.168.32.83
rw = 3 1 7
rport = 8000
type = m
"""


def write(tmp_path, text, name="monitorRS.conf"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_repo_example_loads_with_the_originals_values():
    config = m.load_config(os.path.join(ROOT, "monitorRS.conf"))
    (vs,) = config.services
    assert (config.interval, config.timeout, config.log) == (3.0, 1.0, "/var/log/monitorRS.log")
    assert (str(vs.vip), vs.vport, vs.forward) == ("10.10.10.10", 80, "-g")
    assert [(str(rs), rs.weight) for rs in vs.servers] == [("192.168.32.63:80", 3), ("192.168.32.73:80", 1)]


def test_defaults_from_monitor_and_per_server_ports(tmp_path):
    config = m.load_config(write(tmp_path, GOOD))
    (vs,) = config.services
    assert vs.fall == 2 and vs.rise == 1
    assert [str(rs) for rs in vs.servers] == ["192.168.32.63:8000", "192.168.32.73:8080", "192.168.32.83:8000"]
    assert [rs.weight for rs in vs.servers] == [3, 1, 7]


def test_ipv6_service_and_tunnel_mixing_families(tmp_path):
    v6 = GOOD.replace("vip = 10.10.10.10", "vip = 2001:db8::10").replace(
        "rs = 192.168.32.63 192.168.32.73:8080 192.168.32.83", "rs = [2001:db8::5] [2001:db8::6]:8080 2001:db8::7")
    (vs,) = m.load_config(write(tmp_path, v6)).services
    assert [str(rs) for rs in vs.servers] == ["[2001:db8::5]:8000", "[2001:db8::6]:8080", "[2001:db8::7]:8000"]
    assert vs.servers[0].ip == ipaddress.ip_address("2001:db8::5")
    mixed = GOOD.replace("192.168.32.83", "[2001:db8::5]").replace("type = m", "type = i")
    (vs,) = m.load_config(write(tmp_path, mixed)).services  # IPVS lets only tunnel servers mix families
    assert [rs.ip.version for rs in vs.servers] == [4, 4, 6]


def test_gate_stores_under_the_virtual_port(tmp_path):
    config = m.load_config(write(tmp_path, GOOD.replace("type = m", "type = gate")))
    vs = config.services[0]
    assert vs.forward == "-g"
    assert str(vs.stored_endpoint(vs.servers[1].endpoint)) == "192.168.32.73:80"


def test_firewall_mark_service(tmp_path):
    text = "[monitor]\n[virtual mark]\nprotocol = fwm\nfwmark = 100\nrport = 80\nrs = 10.1.1.1\n"
    vs = m.load_config(write(tmp_path, text)).services[0]
    assert vs.service_args == ("-f", "100") and vs.ipvs_key == ("FWM", "100")
    assert str(vs.stored_endpoint(vs.servers[0].endpoint)) == "10.1.1.1:80"  # no rewrite under a mark


BAD = [
    ("rw = 3 1 7", "rw = 3 1", "[virtual web] rw = '3 1': 2 weight(s) for 3 real server(s) in rs"),
    ("rw = 3 1 7", "rw = 3 x 7", "[virtual web] rw = '3 x 7': weight 'x' must be a whole number"),
    ("rw = 3 1 7", "rw = 3 1 2147483648", "weight '2147483648' must be a whole number"),
    ("vip = 10.10.10.10", "vip = 10.10.10.300", "[virtual web] vip = '10.10.10.300': not an IPv4 or IPv6 address"),
    ("vport = 80", "vport = 65536", "[virtual web] vport = '65536': must be between 1 and 65535"),
    ("vport = 80", "vport = 0", "[virtual web] vport = '0': must be between 1 and 65535"),
    ("rport = 8000", "rport = http", "[virtual web] rport = 'http': not a whole number"),
    ("rs = 192.168.32.63 192.168.32.73:8080 192.168.32.83", "rs =", "[virtual web] rs = '': no real server listed"),
    ("rs = 192.168.32.63 192.168.32.73:8080 192.168.32.83", "rs = 192.168.32.63 bogus 1.2.3.4",
     "[virtual web] rs = '192.168.32.63 bogus 1.2.3.4': bad real server 'bogus'"),
    ("rs = 192.168.32.63 192.168.32.73:8080 192.168.32.83", "rs = 1.1.1.1 1.1.1.1:8000 2.2.2.2",
     "is listed twice"),
    ("rs = 192.168.32.63 192.168.32.73:8080 192.168.32.83", "rs = 1.1.1.1:70000 1.1.1.2 1.1.1.3",
     "out of range"),
    ("type = m", "type = dr", "[virtual web] type = 'dr': must be one of"),
    ("192.168.32.83", "[2001:db8::5]", "real server [2001:db8::5] is IPv6 and vip IPv4: only type = i"),
    ("type = m", "type = gate\nfallback = [::1]:80", "[virtual web] fallback = '[::1]:80': is IPv6 and vip IPv4"),
    ("fall = 2", "fall = 0", "[virtual web] fall = '0': must be between 1 and 1000"),
    ("interval = 2", "interval = soon", "[monitor] interval = 'soon': not a number"),
    ("interval = 2", "interval = 0", "[monitor] interval = '0': must be between"),
    ("timeout = 0.5", "timeout = nan", "[monitor] timeout = 'nan'"),
    ("interval = 2", "intervall = 2", "[monitor] intervall = '2': unknown key"),
    ("type = m", "type = m\nweight = 3", "[virtual web] weight = '3': unknown key"),
    ("type = m", "type = m\nlock = /tmp/x.lock", "[virtual web] lock = '/tmp/x.lock': unknown key here: it belongs in [monitor]"),
    ("type = m", "type = m\nexpect = 200-99x", "[virtual web] expect = '200-99x': bad status or range"),
    ("type = m", "type = m\nquiescent = maybe", "[virtual web] quiescent = 'maybe': must be yes or no"),
    ("type = m", "type = m\ndepool_threshold = 1.5", "depool_threshold = '1.5': must be between 0 and 1"),
    ("type = m", "type = m\nrequest = /a b", "[virtual web] request = '/a b'"),
    ("type = m", "type = m\non_change = 'unclosed", "[virtual web] on_change"),
    ("type = m", "type = m\nfallback = 192.168.32.63:8000", "is also a real server"),
    ("type = m", "type = m\ncheck = icmp", "[virtual web] check = 'icmp': must be one of"),
    ("vip = 10.10.10.10\n", "", "[virtual web] vip = '': required"),
    ("[virtual web]", "[web2]", "unknown section [web2] (expected [monitor] or [virtual NAME])"),
    ("[virtual web]", "[monitor]", "section 'monitor' already exists"),
    ("type = m", "type = m\ntype = g", "option 'type' in section 'virtual web' already exists"),
    ("[monitor]\ninterval = 2\ntimeout = 0.5\nlog = /tmp/x.log\nfall = 2\n", "", "no [monitor] section"),
    ("vip = 10.10.10.10\nvport = 80\nrs = 192.168.32.63 192.168.32.73:8080 192.168.32.83\nrw = 3 1 7\n"
     "rport = 8000\ntype = m\n", "", "[virtual web] vip = '': required"),
]


@pytest.mark.parametrize("old, new, message", BAD)
def test_bad_config_is_one_clear_line(tmp_path, old, new, message):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(m.ConfigError) as caught:
        m.load_config(path)
    text = str(caught.value)
    assert message in text
    assert text.startswith(path + ": ") and "\n" not in text


def test_no_virtual_service(tmp_path):
    with pytest.raises(m.ConfigError, match="nothing to monitor"):
        m.load_config(write(tmp_path, "[monitor]\ninterval = 3\n"))


def test_same_virtual_service_twice(tmp_path):
    text = GOOD + "\n[virtual again]\nvip = 10.10.10.10\nvport = 80\nrs = 1.2.3.4\n"
    with pytest.raises(m.ConfigError, match=r"\[virtual again\]: virtual service 10.10.10.10:80 is already"):
        m.load_config(write(tmp_path, text))


@pytest.mark.parametrize("content", [b"\xff\xfe garbage", b"no section header\n", b"[monitor\n"])
def test_unreadable_files(tmp_path, content):
    path = tmp_path / "c.conf"
    path.write_bytes(content)
    with pytest.raises(m.ConfigError) as caught:
        m.load_config(str(path))
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_missing_file(tmp_path):
    with pytest.raises(m.ConfigError, match="cannot read config: No such file"):
        m.load_config(str(tmp_path / "absent.conf"))


def test_cli_refuses_bad_config_with_exit_2_and_no_traceback(tmp_path):
    path = write(tmp_path, GOOD.replace("rw = 3 1 7", "rw = 3 1"))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "monitor_rs.py"), "--config", path, "--once"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == f"monitor_rs: {path}: [virtual web] rw = '3 1': 2 weight(s) for 3 real server(s) in rs\n"
    assert proc.stdout == ""


UDP = """
[monitor]
{monitor}
[virtual dns]
vip = 10.10.10.10
vport = 53
protocol = udp
rs = 192.168.32.63
{own}
"""


@pytest.mark.parametrize("monitor_keys", ["", "check = http\n"])
def test_a_udp_service_never_gets_a_tcp_check_by_accident(tmp_path, monitor_keys):
    """Without a check of its own (a default from [monitor] is not its own), a UDP service is refused."""
    path = write(tmp_path, UDP.format(monitor=monitor_keys, own=""))
    with pytest.raises(m.ConfigError) as caught:
        m.load_config(path)
    assert str(caught.value).startswith(f"{path}: [virtual dns] check = ")
    assert "a UDP virtual service needs its own check" in str(caught.value)
    assert "dns, ping, external" in str(caught.value) and "\n" not in str(caught.value)


def test_a_udp_service_may_ask_for_a_tcp_check_on_purpose(tmp_path):
    (vs,) = m.load_config(write(tmp_path, UDP.format(monitor="", own="check = tcp\ncheckport = 53"))).services
    assert (vs.protocol, vs.check, vs.checkport) == ("udp", "tcp", 53)
