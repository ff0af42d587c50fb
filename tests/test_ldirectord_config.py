"""ldirectord.cf read as ldirectord 4.12 reads it (issue 13), monitorRS.conf's new keys, and
--check-config's equivalent monitorRS.conf.  Addresses here are never contacted: loading a config
probes nothing (literal addresses and `localhost` only, so no name is looked up elsewhere)."""

import dataclasses
import glob
import ipaddress
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

import monitor_rs as m

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "ldirectord")
MONITOR = os.path.join(os.path.dirname(HERE), "monitor_rs.py")

WEB = """\
checktimeout=3
checkinterval=1
quiescent=no

virtual=192.0.2.10:80
	real=192.0.2.2:80 gate
	real=192.0.2.3:80 gate 5
	service=http
	request="index.html"
	receive="Test Page"
"""


def write(tmp_path, text, name="ldirectord.cf"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def load(tmp_path, text):
    return m.load_config(write(tmp_path, text))


def service(tmp_path, text):
    (vs,) = load(tmp_path, text).services
    return vs


def refused(tmp_path, text, line, said):
    """The one line an ldirectord.cf is refused with: file:line: directive as written: why."""
    path = write(tmp_path, text)
    with pytest.raises(m.ConfigError) as caught:
        m.load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}: {said}: "), message
    return message[len(f"{path}:{line}: {said}: "):]


def block(*lines, head="virtual=192.0.2.10:80", globals_=""):
    return globals_ + head + "\n" + "".join(f"\t{line}\n" for line in lines)


def same_as_ini(tmp_path, config):
    """render_ini's monitorRS.conf loads as the same Config (its path and format aside)."""
    text = m.render_ini(config)
    assert m.detect_format(text) == m.ConfigFormat.MONITOR_RS
    again = m.load_config(write(tmp_path, text, "monitorRS.conf"))
    assert dataclasses.replace(again, path=config.path, format=config.format) == config
    return again


###############################################################################
# Format detection ############################################################
###############################################################################


@pytest.mark.parametrize("text, fmt", [
    ("[monitor]\ninterval = 1\n", m.ConfigFormat.MONITOR_RS),
    ("# a comment\n\n; another\n[monitor]\n", m.ConfigFormat.MONITOR_RS),
    ("checktimeout=3\n", m.ConfigFormat.LDIRECTORD),
    ("# Global Directives\n\nvirtual=1.2.3.4:80\n", m.ConfigFormat.LDIRECTORD),
    ("virtual6 = [::1]:80\n", m.ConfigFormat.LDIRECTORD),
    ("supervised\n", m.ConfigFormat.LDIRECTORD),
    ("", m.ConfigFormat.MONITOR_RS),
    ("  indented = 1\n", m.ConfigFormat.MONITOR_RS),
])
def test_the_format_is_told_by_the_first_meaningful_line(text, fmt):
    assert m.detect_format(text) == fmt


def test_an_ldirectord_cf_needs_no_option_and_keeps_the_root_checks(tmp_path):
    config = load(tmp_path, WEB)
    assert config.format == m.ConfigFormat.LDIRECTORD
    with pytest.raises(m.ConfigError, match="is a directory"):
        m.load_config(str(tmp_path))
    bad = tmp_path / "latin1.cf"
    bad.write_bytes(b"checktimeout=3\nvirtual=1.2.3.4:80\n\treal=1.2.3.5 gate \"\xe9\", \"x\"\n")
    with pytest.raises(m.ConfigError, match="not a UTF-8 text file"):
        m.load_config(str(bad))


###############################################################################
# Globals #####################################################################
###############################################################################


def test_defaults_are_ldirectords_code(tmp_path):
    config = load(tmp_path, "virtual=192.0.2.10:80\n\treal=192.0.2.2 gate\n")
    (vs,) = config.services
    assert config.interval == 10.0  # checkinterval
    assert config.timeout == 5.0  # checktimeout
    assert config.cleanstop is True  # cleanstop=yes
    assert config.log == "/var/log/ldirectord.log" and config.syslog == ""
    assert config.autoreload is False and config.callback == () and config.maintenancedir == ""
    assert vs.quiescent is False  # the code's "no" (its man page says yes)
    assert vs.scheduler == "wrr" and vs.fall == 1 and vs.rise == 1
    assert vs.servers[0].weight == 1 and vs.forward == "-g"
    assert vs.check == "http" and vs.request == "/" and vs.receive == ""  # port 80: service http, negotiate
    assert vs.timeout == 30.0  # a negotiate check: negotiatetimeout's default
    assert vs.emailalertstatus == ("all",) and vs.persistent is None


def test_every_global(tmp_path, monkeypatch):
    text = ("checktimeout=4\nnegotiatetimeout=20\ncheckinterval=2\nfailurecount=3\nautoreload=yes\n"
            'callback="/bin/true"\nlogfile="local0"\nquiescent=yes\nreaddquiescent=no\n'
            "fallback=127.0.0.1:8080\nfallbackcommand=/bin/echo fell\ncleanstop=no\nmaintenancedir=/var/maint\n"
            'emailalert="ops@example.org, dev@example.org"\nemailalertfreq=600\nemailalertstatus=starting, running\n'
            "emailalertfrom=lvs@example.org\nsmtp=mail.example.org\nsupervised=no\nfork=yes\n"
            + block("real=192.0.2.2 gate", "checktype=connect"))
    config = load(tmp_path, text)
    (vs,) = config.services
    assert (config.interval, config.timeout) == (2.0, 4.0)
    assert config.autoreload and config.callback == ("/bin/true",)
    assert config.syslog == "local0" and config.log == ""  # a facility: syslog only, as ldirectord
    assert config.cleanstop is False and config.maintenancedir == "/var/maint"
    assert (config.smtp, config.emailalertfrom) == ("mail.example.org", "lvs@example.org")
    assert vs.fall == 3 and vs.quiescent is True
    assert vs.fallback == m.Endpoint(ipaddress.ip_address("127.0.0.1"), 8080)
    assert vs.fallbackcommand == ("/bin/echo", "fell")
    assert vs.emailalert == ("ops@example.org", "dev@example.org") and vs.emailalertfreq == 600.0
    assert vs.emailalertstatus == ("starting", "running")
    assert vs.check == "tcp" and vs.timeout == 4.0  # a connect check: checktimeout
    same_as_ini(tmp_path, config)


def test_a_log_file_path_and_supervised(tmp_path):
    assert load(tmp_path, 'logfile="/tmp/ld.log"\n' + block("real=192.0.2.2 gate")).log == "/tmp/ld.log"
    config = load(tmp_path, "supervised\n" + block("real=192.0.2.2 gate"))  # bare: ldirectord warns, takes yes
    assert config.log == ""  # supervised: ldirectord logs to stdout, no file


def test_timeouts_are_each_others_defaults_as_ld_setup_makes_them(tmp_path):
    def timeout(globals_, *lines):
        return service(tmp_path, block("real=192.0.2.2 gate", *lines, globals_=globals_)).timeout
    assert timeout("negotiatetimeout=7\n") == 7.0
    assert timeout("checktimeout=4\n") == 4.0  # negotiate check, no negotiatetimeout: checktimeout
    assert timeout("checktimeout=4\nnegotiatetimeout=9\n") == 9.0
    assert timeout("negotiatetimeout=9\n", "checktype=connect") == 9.0  # connect: checktimeout, else negotiate's
    assert timeout("checktimeout=4\n", "negotiatetimeout=6") == 6.0
    assert timeout("", "checktimeout=2", "checktype=ping") == 2.0
    assert timeout("", "checktype=connect") == 5.0
    assert timeout("", "checktype=on") is None


@pytest.mark.parametrize("line, said, why", [
    ("execute=other.cf", "execute=other.cf", "run one monitor_rs per config file"),
    ("readdquiescent=yes", "readdquiescent=yes", "never puts back a failing server"),
    ("checkcount=3", "checkcount=3", "write failurecount=N"),
    ("connecttimeout=3", "connecttimeout=3", "negotiatetimeout"),
    ("timeout=3", "timeout=3", "checktimeout and negotiatetimeout"),
    ("logfile=/var/log/ld.log", "logfile=/var/log/ld.log", "takes logfile and callback quoted only"),
    ('logfile="nosuchfacility"', 'logfile="nosuchfacility"', "nor a syslog facility"),
    ("checktimeout=0", "checktimeout=0", "invalid check timeout value"),
    ("checkinterval=abc", "checkinterval=abc", "invalid check interval value"),
    ("autoreload=maybe", "autoreload=maybe", "autoreload must be 'yes' or 'no'"),
    ("quiescent=yes ", "quiescent=yes", "quiescent must be 'yes' or 'no'"),  # ldirectord's exact match
    ("emailalertstatus=all,never", "emailalertstatus=all,never", 'invalid email alert status at: "never"'),
    ("emailalertstatus=none,all", "emailalertstatus=none,all", "none goes alone"),
    ("smtp=mail.example.org:2525", "smtp=mail.example.org:2525", "write smtp=mail.example.org"),
    ("fallback=127.0.0.1:80 bridge", "fallback=127.0.0.1:80 bridge", "forward method must be gate, masq or ipip"),
    ("maintenancedir=maint", "maintenancedir=maint", "absolute path"),
    ("checktimout=3", "checktimout=3", "unknown directive (ldirectord refuses it too)"),
    ("  checktimeout=3", "checktimeout=3", "an indented line belongs to a virtual= block"),
    ("supervised=maybe", "supervised=maybe", "supervised must be 'yes' or 'no'"),
    ("checktimeout=5000", "checktimeout=5000", "must be between 0.01 and 3600"),
    ("checkinterval=99999999999", "checkinterval=99999999999", "must be 86400 at most"),  # select() would overflow
])
def test_a_bad_or_refused_global_is_one_line_naming_its_line(tmp_path, line, said, why):
    text = "checkinterval=1\n" + line + "\n" + block("real=192.0.2.2 gate")
    assert why in refused(tmp_path, text, 2, said)


def test_a_monitor_rs_conf_without_its_header_is_told_so(tmp_path):
    assert "a monitorRS.conf starts with [monitor]" in refused(tmp_path, "interval = 3\n", 1, "interval = 3")


def test_a_global_comment_is_not_stripped_as_ldirectord_does_not_strip_it(tmp_path):
    assert "autoreload must be" in refused(tmp_path, "autoreload=yes # on\n" + block("real=192.0.2.2 gate"),
                                          1, "autoreload=yes # on")
    # a number's value is its first digits, as ldirectord's /(\d+)/
    assert load(tmp_path, "checkinterval=2 # two\n" + block("real=192.0.2.2 gate")).interval == 2.0


###############################################################################
# Blocks: the parser's quirks #################################################
###############################################################################


def test_column_0_versus_indented_and_comments_and_the_block_end(tmp_path):
    text = ("virtual=192.0.2.10:80\n"
            "        real=192.0.2.2:80 gate   # 8 spaces\n"
            "# a comment at column 0 does not end the block\n"
            "\t  # an indented comment\n"
            "\treal=192.0.2.3:80 gate\n"
            "checkinterval=7\n"  # unindented: the block ends, this is a global
            "virtual=192.0.2.11:80\n"
            "    real=192.0.2.4:80 masq 3\n")
    config = load(tmp_path, text)
    a, b = config.services
    assert [str(rs) for rs in a.servers] == ["192.0.2.2:80", "192.0.2.3:80"]
    assert config.interval == 7.0
    assert [(str(rs), rs.weight) for rs in b.servers] == [("192.0.2.4:80", 3)] and b.forward == "-m"
    same_as_ini(tmp_path, config)


def test_a_blank_line_ends_the_block(tmp_path):
    text = "virtual=192.0.2.10:80\n\treal=192.0.2.2 gate\n\n\tscheduler=rr\n"
    # the indented line after the blank one is not in a block: ldirectord refuses it as a global
    assert "unknown directive" in refused(tmp_path, text, 4, "scheduler=rr")


def test_three_spaces_are_no_indent(tmp_path):
    assert "unknown directive" in refused(tmp_path, "virtual=192.0.2.10:80\n   real=192.0.2.2 gate\n", 2,
                                          "real=192.0.2.2 gate")


def test_quotes_and_a_hash_inside_quotes_in_a_block(tmp_path):
    vs = service(tmp_path, block("real=192.0.2.2 gate", 'request="/a.html"', 'receive="up"#"and running"'))
    assert vs.receive == "up" and vs.request == "/a.html"  # `#` ends a block line even inside quotes
    # ... so a receive with a # in it loses its closing quote: ldirectord refuses the line, and so here
    assert "unknown directive" in refused(tmp_path, block("real=192.0.2.2 gate", 'receive="up#down"'), 3,
                                          'receive="up')
    # unquoted request: no directive of ldirectord's matches it
    assert "unknown directive" in refused(tmp_path, block("real=192.0.2.2 gate", "request=/a.html"), 3,
                                          "request=/a.html")


def test_ranges_and_service_names_as_ports(tmp_path):
    vs = service(tmp_path, block("real=192.0.2.2->192.0.2.5:http gate 2", "real=localhost:www gate",
                                 head="virtual=localhost:http"))
    assert str(vs.vip) == "127.0.0.1" and vs.vport == 80
    assert [str(rs) for rs in vs.servers] == ["192.0.2.2:80", "192.0.2.3:80", "192.0.2.4:80", "192.0.2.5:80",
                                             "127.0.0.1:80"]
    assert [rs.weight for rs in vs.servers] == [2, 2, 2, 2, 1]
    assert "Invalid Range" in refused(tmp_path, block("real=192.0.2.5->192.0.2.2 gate"), 2,
                                      "real=192.0.2.5->192.0.2.2 gate")


def test_fwmark_virtual6_real6_and_port_53_is_udp(tmp_path):
    vs = service(tmp_path, block("real=192.0.2.2 gate", "real=192.0.2.3 gate", "checkport=8080",
                                 "checktype=connect", head="virtual=7"))
    assert (vs.protocol, vs.fwmark, vs.vip) == ("fwm", 7, None)
    assert [rs.port for rs in vs.servers] == [8080, 8080] and vs.check == "tcp"
    vs = service(tmp_path, block("real6=[2001:db8::2]:80 gate", "fallback6=[::1]:80 gate",
                                 head="virtual6=[2001:db8::10]:80"))
    assert str(vs.vip) == "2001:db8::10" and str(vs.servers[0]) == "[2001:db8::2]:80"
    assert str(vs.fallback) == "[::1]:80"
    vs = service(tmp_path, block("real=192.0.2.2 gate", "checktype=ping", head="virtual=192.0.2.10:53"))
    assert vs.protocol == "udp"
    vs = service(tmp_path, block("real=192.0.2.2 gate", "checktype=connect", head="virtual=192.0.2.10:domain"))
    assert vs.protocol == "udp" and vs.check == "ping"  # a connect check of a UDP service is a ping
    assert "real6" in refused(tmp_path, block("real6=[2001:db8::2]:80 gate"), 2, "real6=[2001:db8::2]:80 gate")
    assert "virtual6" in refused(tmp_path, block("real=192.0.2.2 gate", head="virtual=[2001:db8::10]:80"), 1,
                                 "virtual=[2001:db8::10]:80")
    assert "IPv6 is not supported" in refused(
        tmp_path, block("real6=[2001:db8::2]->[2001:db8::4] gate", head="virtual6=[2001:db8::10]:80"), 2,
        "real6=[2001:db8::2]->[2001:db8::4] gate")


def test_an_address_without_port_is_not_silently_a_firewall_mark(tmp_path):
    assert "firewall mark 10" in refused(tmp_path, block("real=192.0.2.2 gate", head="virtual=10.0.0.1"), 1,
                                         "virtual=10.0.0.1")


def test_a_real_server_line_as_add_real_server_reads_it(tmp_path):
    vs = service(tmp_path, block('real=192.0.2.2:80 gate 4 "check.html", "ok"', "real=192.0.2.3:80 gate",
                                 'receive="fine"'))
    a, b = vs.servers
    assert (a.weight, a.request, a.receive) == (4, "/check.html", "ok") and vs.receive_regex
    assert (b.request, b.receive) == (None, None)
    assert "forward method" in refused(tmp_path, block("real=192.0.2.2 bridge"), 2, "real=192.0.2.2 bridge")
    assert "Invalid real server line" in refused(tmp_path, block("real=192.0.2.2 gate 3 junk"), 2,
                                                 "real=192.0.2.2 gate 3 junk")
    assert "connection thresholds" in refused(tmp_path, block('real=192.0.2.2 gate 3 l:10'), 2,
                                              "real=192.0.2.2 gate 3 l:10")
    assert "one forwarding method" in refused(tmp_path, block("real=192.0.2.2 gate", "real=192.0.2.3 masq"), 3,
                                              "real=192.0.2.3 masq")
    assert "wrong format" in refused(tmp_path, block("real=[zz] gate"), 2, "real=[zz] gate")


def test_a_name_that_does_not_resolve_is_refused_on_its_line(tmp_path, monkeypatch):
    def no_such_name(*args, **kwargs):  # no lookup leaves this host in a test
        raise m.socket.gaierror(m.socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(m.socket, "getaddrinfo", no_such_name)
    assert "could not resolve host" in refused(tmp_path, block("real=realserver1 gate", head="virtual=7"), 2,
                                               "real=realserver1 gate")
    assert "invalid address for virtual service" in refused(tmp_path, block("real=192.0.2.2 gate",
                                                                            head="virtual=www.example.org:80"),
                                                            1, "virtual=www.example.org:80")


def test_a_real_without_port_is_checked_on_its_services_port(tmp_path):
    vs = service(tmp_path, block("real=192.0.2.2 gate", "service=http", head="virtual=192.0.2.10:8080"))
    assert vs.servers[0].port == 8080 and vs.checkport == 80  # ld_checkport: the service's port
    assert "write checkport=" in refused(
        tmp_path, block("real=192.0.2.2 gate", "real=192.0.2.3:8081 gate", "service=http",
                        head="virtual=192.0.2.10:8080"), 2, "real=192.0.2.2 gate")


###############################################################################
# Every per-virtual directive #################################################
###############################################################################


def test_every_directive_of_a_virtual_block(tmp_path):
    vs = service(tmp_path, block(
        "real=192.0.2.2:8080 masq 3", "service=https", "checktype=negotiate", "checkport=8443",
        'request="health"', 'receive="^OK [0-9]+"', "httpmethod=get", 'virtualhost="www.example.org"',
        "scheduler=lc", "persistent=600", "netmask=255.255.255.0", "protocol=tcp", "fallback=127.0.0.1:80",
        'fallbackcommand="/bin/echo sorry"', "quiescent=yes", "failurecount=2", "checktimeout=2",
        "negotiatetimeout=4", "checkinterval=5", 'emailalert="a@example.org"', "emailalertfreq=60",
        "emailalertstatus=all", "servicename=shop", "comment=the shop", 'load="x"', "cleanstop=yes",
        "ops=no", head="virtual=192.0.2.10:443"))
    assert (vs.name, vs.check, vs.checkport, vs.request, vs.receive, vs.receive_regex) == (
        "shop", "https", 8443, "/health", "^OK [0-9]+", True)
    assert (vs.httpmethod, vs.host, vs.scheduler, vs.persistent, vs.netmask) == (
        "GET", "www.example.org", "lc", 600, "255.255.255.0")
    assert (vs.forward, vs.servers[0].weight, vs.quiescent, vs.fall, vs.timeout, vs.interval) == (
        "-m", 3, True, 2, 4.0, 5.0)
    assert vs.fallbackcommand == ("/bin/echo", "sorry") and vs.emailalert == ("a@example.org",)
    assert str(vs.fallback) == "127.0.0.1:80" and vs.emailalertfreq == 60.0


def test_udp_ops_and_ignored_netmask_and_ops_as_ldirectord_ignores_them(tmp_path):
    vs = service(tmp_path, block("real=192.0.2.2 gate", "checktype=ping", "ops=yes", head="virtual=192.0.2.10:53"))
    assert vs.ops is True
    vs = service(tmp_path, block("real=192.0.2.2 gate", "ops=yes", "netmask=255.255.255.0"))
    assert vs.ops is False and vs.netmask == ""  # ldirectord: -o for UDP only, -M only with -p


@pytest.mark.parametrize("lines, check, extra", [
    (("service=http", "httpmethod=HEAD"), "http", {"httpmethod": "HEAD"}),
    (("service=none",), "on", {}),  # check_none: up without a check
    (("checktype=on",), "on", {}),
    (("checktype=off",), "off", {}),
    (("checktype=3", "service=http"), "http", {}),  # combined: every check negotiates here
    (("checktype=connect",), "tcp", {"request": "", "receive": ""}),
    (("checktype=ping",), "ping", {}),
    (("checktype=external", "checkcommand=/bin/true"), "external", {"checkcommand": ("/bin/true",)}),
    (("checktype=external",), "external", {"checkcommand": ("/bin/true",)}),  # ldirectord's default
    (("service=smtp",), "tcp", {"receive": r"^2[0-9][0-9]", "receive_regex": True, "request": ""}),
    (("service=submission",), "tcp", {"receive": r"^2[0-9][0-9]"}),
    (("service=pop",), "tcp", {"receive": r"(?i)^\+OK"}),
    (("service=imap",), "tcp", {"receive": r"(?i)^\*\s+(?:OK|PREAUTH)"}),
    (("service=nntp",), "tcp", {"receive": "^2"}),
    (("service=ftp",), "tcp", {"receive": r"^2[0-9][0-9]"}),
    (("service=simpletcp", r'request="PING\nx\ty"', 'receive="^\\+PONG"'), "tcp",
     {"request": "PING\\nx\\\\ty", "receive": "^\\+PONG", "receive_regex": True}),
])
def test_service_and_checktype_map_onto_monitor_rs_checks(tmp_path, lines, check, extra):
    vs = service(tmp_path, block("real=192.0.2.2:80 gate", *lines, head="virtual=192.0.2.10:8000"))
    assert vs.check == check
    for key, value in extra.items():
        assert getattr(vs, key) == value, key


def test_simpletcp_sends_what_ldirectord_sends(tmp_path):
    vs = service(tmp_path, block("real=192.0.2.2:80 gate", "service=simpletcp", r'request="GET\n\r"',
                                 'receive="x"'))
    # ldirectord replaces \n only: the backslash-r goes out as it is written
    assert m.decode_request(vs.request) == b"GET\n\\r"


def test_dns_request_is_the_name_and_receive_the_address(tmp_path):
    vs = service(tmp_path, block("real=192.0.2.2 gate", 'request="www.example.org"', 'receive="192.0.2.80"',
                                 head="virtual=192.0.2.10:53"))
    assert (vs.check, vs.protocol, vs.request, vs.receive) == ("dns", "udp", "www.example.org A", "192.0.2.80")
    assert "not a regular" in refused(tmp_path, block("real=192.0.2.2 gate", 'request="www.example.org"',
                                                      'receive="192\\.0\\.2\\..*"', head="virtual=192.0.2.10:53"),
                                      4, 'receive="192\\.0\\.2\\..*"')
    assert "never passes without it" in refused(
        tmp_path, block("real=192.0.2.2 gate", 'request="www.example.org"', head="virtual=192.0.2.10:53"), 1,
        "virtual=192.0.2.10:53")
    assert "over UDP" in refused(tmp_path, block("real=192.0.2.2 gate", "protocol=tcp", 'request="a.example"',
                                                 'receive="192.0.2.1"', head="virtual=192.0.2.10:53"),
                                 3, "protocol=tcp")


def test_a_receive_that_python_cannot_read_is_refused_at_load(tmp_path):
    assert "regular expression" in refused(tmp_path, block("real=192.0.2.2 gate", 'receive="(unclosed"'), 3,
                                           'receive="(unclosed"')


@pytest.mark.parametrize("lines, line, said, why", [
    (("checktype=external-perl",), 3, "checktype=external-perl", "write checktype=external"),
    (("monitorfile=/tmp/x",), 3, "monitorfile=/tmp/x", "remove monitorfile"),
    (("schedflags=sh-port",), 3, "schedflags=sh-port", "remove schedflags"),
    (("checkcount=2",), 3, "checkcount=2", "failurecount"),
    (("connecttimeout=2",), 3, "connecttimeout=2", "negotiatetimeout"),
    (("service=mysql",), 3, "service=mysql", "checktype=connect"),
    (("service=pgsql",), 3, "service=pgsql", "checktype=external"),
    (("service=oracle",), 3, "service=oracle", "no oracle check"),
    (("service=ldap",), 3, "service=ldap", "no ldap check"),
    (("service=ldaps",), 3, "service=ldaps", "no ldaps check"),
    (("service=imaps",), 3, "service=imaps", "over TLS"),
    (("service=pops",), 3, "service=pops", "over TLS"),
    (("service=http_proxy",), 3, "service=http_proxy", "proxy"),
    (("service=radius",), 3, "service=radius", "no radius check"),
    (("service=sip",), 3, "service=sip", "no sip check"),
    (("service=ftp", 'login="bob"'), 4, 'login="bob"', "does not log in"),
    (("service=pop", 'passwd="x"'), 4, 'passwd="x"', "does not log in"),
    (("service=imap", 'login="bob"'), 4, 'login="bob"', "does not log in"),
    (("service=ftp", 'request="a.txt"', 'receive="x"'), 5, 'receive="x"', "does not fetch files"),
    (("service=http", "httpmethod=HEAD", 'receive="x"'), 4, "httpmethod=HEAD", "HEAD gets no body"),
    (("checktype=sometimes",), 3, "checktype=sometimes", "checktype must be"),
    (("service=gopher",), 3, "service=gopher", "service must be"),
    (("protocol=sctp",), 3, "protocol=sctp", "protocol must be tcp or udp"),
    (("ops=on",), 3, "ops=on", "ops must be 'yes' or 'no'"),
    (("netmask=24",), 3, "netmask=24", "dotted quad"),
    (("persistent=0",), 3, "persistent=0", "between 1 and 2678400"),
    (("scheduler=WRR",), 3, "scheduler=WRR", "lowercase"),
    (("checkport=70000",), 3, "checkport=70000", "1..65535"),
    (("cleanstop=no",), 3, "cleanstop=no", "write cleanstop=no at column 0"),
    (("smtp=relay.example.org",), 3, "smtp=relay.example.org", "one smtp for all"),
    (("fallback6=[::1]:80",), 3, "fallback6=[::1]:80", 'please use "fallback"'),
    (("fallback=192.0.2.9:80 masq",), 3, "fallback=192.0.2.9:80 masq", "forwarding method"),
    (("fallback=192.0.2.2:80",), 3, "fallback=192.0.2.2:80", "its own fallback"),
    (("checkcommand=/no/such/program", "checktype=external"), 3, "checkcommand=/no/such/program", "not found"),
    (("virtualhost=bad host",), 3, "virtualhost=bad host", "without spaces"),
    (("frobnicate=yes",), 3, "frobnicate=yes", "unknown directive (ldirectord refuses it too)"),
])
def test_what_cannot_be_honoured_is_refused_in_one_line(tmp_path, lines, line, said, why):
    assert why in refused(tmp_path, block("real=192.0.2.2:80 gate", *lines), line, said)


def test_a_refused_service_resolves_no_name_first(tmp_path):
    # sql01 would be looked up by DNS: the service is refused before any real= is resolved
    text = block("real=sql01->sql03:3306 gate 10", "service=mysql", head="virtual=192.0.2.10:3306")
    assert "no mysql check" in refused(tmp_path, text, 3, "service=mysql")


def test_a_port_derived_service_is_refused_on_the_virtual_line(tmp_path):
    assert "no mysql check" in refused(tmp_path, block("real=192.0.2.2 gate", head="virtual=192.0.2.10:3306"), 1,
                                       "virtual=192.0.2.10:3306")


def test_duplicate_virtuals_and_empty_blocks(tmp_path):
    text = block("real=192.0.2.2 gate") + block("real=192.0.2.3 gate")
    assert "duplicate virtual server" in refused(tmp_path, text, 3, "virtual=192.0.2.10:80")
    assert "no real= line" in refused(tmp_path, "virtual=192.0.2.10:80\n", 1, "virtual=192.0.2.10:80")
    path = write(tmp_path, "checktimeout=3\n")
    with pytest.raises(m.ConfigError, match="no virtual= block"):
        m.load_config(path)


def test_two_services_of_one_servicename_get_two_names(tmp_path):
    config = load(tmp_path, block("real=192.0.2.2 gate", "servicename=web")
                  + block("real=192.0.2.3 gate", "servicename=web", head="virtual=192.0.2.11:80"))
    assert [vs.name for vs in config.services] == ["web", "web (tcp 192.0.2.11:80)"]
    same_as_ini(tmp_path, config)


###############################################################################
# monitorRS.conf: the new keys ################################################
###############################################################################

INI = """\
[monitor]
interval = 2
{top}
[virtual web]
vip = 10.0.0.10
vport = 80
rs = 10.0.0.2 10.0.0.3:8080
{own}
"""


def ini(tmp_path, top="", own=""):
    return m.load_config(write(tmp_path, INI.format(top=top, own=own), "monitorRS.conf"))


def ini_error(tmp_path, top="", own=""):
    path = write(tmp_path, INI.format(top=top, own=own), "monitorRS.conf")
    with pytest.raises(m.ConfigError) as caught:
        m.load_config(path)
    message = str(caught.value)
    assert message.startswith(path + ": ") and "\n" not in message
    return message[len(path) + 2:]


def test_every_new_ini_key(tmp_path):
    config = ini(tmp_path, top="autoreload = yes\ncallback = /bin/true --x\ncleanstop = yes\nmaintenancedir = /m\n"
                               "syslog = daemon\nsmtp = [::1]:25\nemailalertfrom = lvs@example.org\n"
                               "scheduler = wrr\nemailalertstatus = starting,stopping\n",
                 own="persistent = 300\nnetmask = 255.255.0.0\nhttpmethod = head\ntimeout = 0.5\ninterval = 7\n"
                     "fallbackcommand = /bin/echo fb\nemailalert = a@x.org b@x.org\nemailalertfreq = 30\n"
                     "receive_regex = yes\nrequest@10.0.0.3:8080 = /deep\nreceive@10.0.0.2 = ^ok$\n")
    (vs,) = config.services
    assert config.autoreload and config.callback == ("/bin/true", "--x") and config.cleanstop
    assert (config.maintenancedir, config.syslog, config.smtp, config.emailalertfrom) == (
        "/m", "daemon", "[::1]:25", "lvs@example.org")
    assert (vs.scheduler, vs.persistent, vs.netmask, vs.httpmethod, vs.timeout, vs.interval) == (
        "wrr", 300, "255.255.0.0", "HEAD", 0.5, 7.0)
    assert vs.fallbackcommand == ("/bin/echo", "fb") and vs.emailalert == ("a@x.org", "b@x.org")
    assert vs.emailalertfreq == 30.0 and vs.emailalertstatus == ("starting", "stopping") and vs.receive_regex
    a, b = vs.servers
    assert (a.request, a.receive, b.request, b.receive) == (None, "^ok$", "/deep", None)
    assert config.interval == 2.0  # [monitor]'s interval stays the loop's
    same_as_ini(tmp_path, config)


def test_ini_defaults_are_monitor_rs_ones(tmp_path):
    config = ini(tmp_path)
    (vs,) = config.services
    assert config.cleanstop is False and config.syslog == "" and not config.autoreload
    assert vs.scheduler == "" and vs.timeout is None and vs.interval is None and vs.httpmethod == "GET"


def test_check_on_and_off_take_no_request(tmp_path):
    for word in ("on", "off"):
        (vs,) = ini(tmp_path, own=f"check = {word}\n").services
        assert (vs.check, vs.request, vs.receive) == (word, "", "")


def test_log_empty_means_no_log_file(tmp_path):
    assert ini(tmp_path, top='log = ""\n').log == ""


@pytest.mark.parametrize("top, own, message", [
    ("syslog = local9\n", "", "[monitor] syslog = 'local9': must be one of"),
    ("autoreload = often\n", "", "[monitor] autoreload = 'often': must be yes or no"),
    ("cleanstop = sure\n", "", "[monitor] cleanstop = 'sure': must be yes or no"),
    ("maintenancedir = rel/dir\n", "", "[monitor] maintenancedir = 'rel/dir': must be an absolute path"),
    ("smtp = mail host\n", "", "[monitor] smtp = 'mail host': must be host or host:port"),
    ("smtp = mail:99999\n", "", "[monitor] smtp = 'mail:99999': port out of range"),
    ("callback = 'unclosed\n", "", "[monitor] callback = \"'unclosed\": cannot split into a command"),
    ("", "scheduler = Round\n", "[virtual web] scheduler = 'Round': an IPVS scheduler name"),
    ("", "persistent = 300\n", "[virtual web] persistent = '300': goes with scheduler"),
    ("", "scheduler = rr\npersistent = 0\n", "[virtual web] persistent = '0': must be between 1 and 2678400"),
    ("", "scheduler = rr\nnetmask = 255.0.0.0\n", "[virtual web] netmask = '255.0.0.0': the granularity"),
    ("", "scheduler = rr\npersistent = 9\nnetmask = 255.0.255.0\n", "[virtual web] netmask = '255.0.255.0': an IPv4"),
    ("", "scheduler = rr\npersistent = 9\nnetmask = 0.0.0.255\n", "[virtual web] netmask = '0.0.0.255': an IPv4"),
    ("", "scheduler = rr\nops = yes\n", "[virtual web] ops = 'yes': one-packet scheduling is for UDP"),
    ("", "httpmethod = PUT\n", "[virtual web] httpmethod = 'PUT': must be one of get, head"),
    ("", "httpmethod = HEAD\nreceive = x\n", "[virtual web] httpmethod = 'HEAD': HEAD gets no body"),
    ("", "receive_regex = yes\nreceive = (x\n", "[virtual web] receive = '(x': not a regular expression"),
    ("", "timeout = 0\n", "[virtual web] timeout = '0': must be between 0.01 and 3600"),
    ("", "interval = x\n", "[virtual web] interval = 'x': not a number"),
    ("", "emailalertstatus = all,sometimes\n", "[virtual web] emailalertstatus = 'all,sometimes': 'sometimes' is"),
    ("", "emailalertstatus = none,running\n", "[virtual web] emailalertstatus = 'none,running': none goes alone"),
    ("", "emailalertfreq = -1\n", "[virtual web] emailalertfreq = '-1': must be between"),
    ("", "fallbackcommand = \"x\n", "[virtual web] fallbackcommand = '\"x': cannot split"),
    ("", "request@10.0.0.9 = /x\n", "[virtual web] request@10.0.0.9 = '/x': names no real server"),
    ("", "check = tcp\nrequest@10.0.0.2 = \\q\n", "[virtual web] request@10.0.0.2 = '\\\\q': bad escape"),
    ("", "check = ping\nrequest@10.0.0.2 = x\n", "[virtual web] request@10.0.0.2 = 'x': check = ping sends no"),
    ("", "receive_regex = yes\nreceive@10.0.0.2 = [x\n", "[virtual web] receive@10.0.0.2 = '[x': not a regular"),
    ("", "check = sometimes\n", "[virtual web] check = 'sometimes': must be one of"),
    ("request@10.0.0.2 = /x\n", "", "[monitor] request@10.0.0.2 = '/x': unknown key"),
])
def test_new_ini_keys_are_refused_in_the_same_one_line_style(tmp_path, top, own, message):
    assert ini_error(tmp_path, top, own).startswith(message)


###############################################################################
# The proof fixtures and the round trip #######################################
###############################################################################

LOADS = ["seed-keys.cf", "seed-worked-example.cf", "debian-sample.cf", "debian-block-http-fwmark.cf",
         "debian-block-http-range.cf", "debian-block-https.cf", "debian-block-smtp.cf",
         "debian-block-submission.cf", "debian-block-pop.cf", "debian-block-nntp.cf", "debian-block-dns.cf",
         "debian-block-none.cf", "debian-block-ping.cf", "debian-block-nntp-ipv6.cf"]
REFUSED = {  # fixture: (line, directive as written, why): what monitor_rs cannot honour
    "debian-block-ftp.cf": (41, 'login="anonymous"', "does not log in"),
    "debian-block-imap.cf": (33, "fallback=127.0.0.1:143", "its own fallback"),
    "debian-block-ldap.cf": (33, "service=ldap", "no ldap check"),
    "debian-block-mysql.cf": (31, "service=mysql", "no mysql check"),
    "debian-block-pgsql.cf": (31, "service=pgsql", "no pgsql check"),
    "debian-block-oracle.cf": (31, "service=oracle", "no oracle check"),
    "debian-block-radius.cf": (40, "service=radius", "no radius check"),
    "debian-block-sip.cf": (40, "service=sip", "no sip check"),
}


def test_every_fixture_is_listed():
    assert sorted(LOADS + list(REFUSED)) == sorted(os.path.basename(p) for p in glob.glob(f"{DATA}/*.cf"))


@pytest.mark.parametrize("name", LOADS)
def test_a_fixture_loads_and_its_monitor_rs_conf_loads_the_same(tmp_path, name):
    if name == "debian-block-ping.cf" and m.icmp_unusable(4):
        pytest.skip("no ICMP socket here: " + m.icmp_unusable(4))
    config = m.load_config(os.path.join(DATA, name))
    assert config.format == m.ConfigFormat.LDIRECTORD and config.services
    same_as_ini(tmp_path, config)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_fixture_monitor_rs_cannot_honour_is_refused_in_one_line(name):
    line, said, why = REFUSED[name]
    path = os.path.join(DATA, name)
    with pytest.raises(m.ConfigError) as caught:
        m.load_config(path)
    assert str(caught.value).startswith(f"{path}:{line}: {said}: ") and why in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_seeds_worked_example(tmp_path):
    (vs,) = m.load_config(os.path.join(DATA, "seed-worked-example.cf")).services
    assert (str(vs.vip), vs.vport, vs.protocol, vs.scheduler, vs.check) == ("192.168.32.66", 80, "tcp", "wrr", "http")
    assert [str(rs) for rs in vs.servers] == ["192.168.32.63:80", "192.168.32.73:80"] and vs.forward == "-g"
    assert (vs.request, vs.receive, vs.receive_regex, vs.checkport) == ("/index.html", "centos", True, 80)
    assert str(vs.fallback) == "127.0.0.1:80"


def test_check_config_prints_the_equivalent_monitor_rs_conf_and_refusals_exit_2(tmp_path):
    path = os.path.join(DATA, "debian-sample.cf")
    proc = subprocess.run([sys.executable, MONITOR, "--config", path, "--check-config"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"# monitor_rs: {path}: ok, 1 virtual service(s), 3 real server(s)\n")
    assert "[virtual Web Site]\n" in proc.stdout and "scheduler = rr\n" in proc.stdout
    again = m.load_config(write(tmp_path, proc.stdout, "monitorRS.conf"))
    assert dataclasses.replace(again, path=path, format=m.ConfigFormat.LDIRECTORD) == m.load_config(path)
    bad = os.path.join(DATA, "debian-block-mysql.cf")
    proc = subprocess.run([sys.executable, MONITOR, "--config", bad, "--check-config"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"monitor_rs: {bad}:31: service=mysql: monitor_rs has no mysql check (ldirectord logs " \
                          "in and runs the `request` query): write checktype=connect for a TCP connect, or " \
                          "checktype=external with a checkcommand that speaks mysql\n"


def test_check_config_of_a_monitor_rs_conf_shows_the_new_fields(tmp_path):
    path = write(tmp_path, INI.format(top="syslog = local3\nscheduler = sh\n",
                                      own="check = on\nreceive_regex = no\n"), "monitorRS.conf")
    proc = subprocess.run([sys.executable, MONITOR, "--config", path, "--check-config"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "syslog=local3" in lines[1] and "cleanstop=no" in lines[1]
    assert "check=on" in lines[2] and "scheduler=sh" in lines[2] and "emailalertstatus=all" in lines[2]
    assert lines[3] == "  10.0.0.2:80 weight 1: IPVS entry 10.0.0.2:80, probe none: on (always up)"


def test_render_ini_refuses_what_it_could_not_write_back(tmp_path):
    vs = service(tmp_path, block("real=192.0.2.2 gate", 'receive="a ;b"'))
    config = m.Config(path="x", services=(vs,))
    with pytest.raises(m.ConfigError, match="cannot be written in monitorRS.conf"):
        m.render_ini(config)


ADDRESSES = st.sampled_from(["192.0.2.2", "192.0.2.3", "198.51.100.7", "localhost"])
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12)
LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)
HOSTS = st.lists(LABEL, min_size=1, max_size=3).map(".".join)  # a host name: no empty label


@st.composite
def ldirectord_cf(draw):
    """An ldirectord.cf of random globals and blocks that monitor_rs can honour."""
    lines = []
    for key, values in (("checktimeout", st.integers(1, 60)), ("negotiatetimeout", st.integers(1, 60)),
                        ("checkinterval", st.integers(1, 120)), ("failurecount", st.integers(1, 9)),
                        ("quiescent", st.sampled_from(["yes", "no"])), ("autoreload", st.sampled_from(["yes", "no"])),
                        ("cleanstop", st.sampled_from(["yes", "no"])),
                        ("emailalertfreq", st.integers(0, 9999)),
                        ("emailalertstatus", st.sampled_from(["all", "none", "starting,running", "reloading"])),
                        ("logfile", st.sampled_from(['"/var/log/ld.log"', '"local5"', '"daemon"']))):
        if draw(st.booleans()):
            lines.append(f"{key}={draw(values)}")
    for number in range(draw(st.integers(1, 3))):
        port = 8000 + number
        lines.append(f"virtual=192.0.2.{100 + number}:{port}")
        forward = draw(st.sampled_from(["gate", "masq", "ipip"]))
        service = draw(st.sampled_from(["http", "https", "smtp", "pop", "imap", "nntp", "simpletcp", "none"]))
        checktype = draw(st.sampled_from(["negotiate", "connect", "on", "off", "ping", "7"]))
        hosts = draw(st.lists(ADDRESSES, min_size=1, max_size=3, unique=True))
        for index, host in enumerate(hosts):
            pair = ""
            if draw(st.booleans()):
                pair = f' "{draw(WORDS)}", "{draw(WORDS)}"'
            lines.append(f"\treal={host}:{9000 + index} {forward} {draw(st.integers(0, 100))}{pair}")
        lines += [f"\tservice={service}", f"\tchecktype={checktype}"]
        for key, values in (("request", WORDS), ("receive", WORDS), ("scheduler", st.sampled_from(["rr", "wlc", "sh"])),
                            ("persistent", st.integers(1, 9999)), ("checkport", st.integers(1, 65535)),
                            ("checkinterval", st.integers(1, 60)), ("failurecount", st.integers(1, 5)),
                            ("servicename", WORDS), ("httpmethod", st.just("GET")),
                            ("virtualhost", HOSTS), ("emailalert", st.just('"a@example.org"'))):
            if draw(st.booleans()):
                value = draw(values)
                lines.append(f'\t{key}="{value}"' if key in ("request", "receive") else f"\t{key}={value}")
        if draw(st.booleans()):
            lines.append(f"\tfallback=127.0.0.1:{port}")
        lines.append("")
    return "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None)
@given(text=ldirectord_cf())
def test_round_trip_property(tmp_path_factory, text):
    tmp_path = tmp_path_factory.mktemp("rt")
    path = write(tmp_path, text)
    try:
        config = m.load_config(path)
    except m.ConfigError as exc:  # only what monitor_rs may refuse in these: ICMP not usable here, a
        # fallback that IPVS would store as one of the real servers
        assert "ICMP" in str(exc) or "its own fallback" in str(exc), str(exc)
        return
    assert config.format == m.ConfigFormat.LDIRECTORD
    same_as_ini(tmp_path, config)
