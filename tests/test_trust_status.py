"""Trust (issue 11): what --status, the status table and the metrics say is true.

1. --status where ipvsadm cannot read IPVS (ipvsadm missing, not root, no IPVS)
   shows that problem on the service, claims no action, exits 1.
2. The rich table never cuts a real server's address, even on 80 columns: the
   least needed columns go first.
3. Data in the table (IPv6 addresses in brackets, names and reasons with
   `[bold]`) is shown as it is, never read as rich markup.
4. The metrics file holds each family together (HELP, TYPE, samples) and
   passes `promtool check metrics` (and prometheus_client's parser).
"""

import io
import json
import os
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from rich.console import Console

import monitor_rs as m
from test_hardening import IPVSADM_FAULTS, inject
from harness import config

VIP = "127.0.0.1:80"
IN_CI = os.environ.get("CI") == "true"


def invoke(monitor, *args):
    """The CLI in-process (click's CliRunner), with the harness's paths."""
    result = CliRunner().invoke(m.main, monitor.argv[2:] + list(args), catch_exceptions=False)
    return result.exit_code, result.output


###############################################################################
# 1. --status without a usable IPVS ###########################################
###############################################################################

UNAVAILABLE = {mode: IPVSADM_FAULTS[mode] for mode in ("noipvs", "noroot", "missing")}
make_unavailable = inject  # the hardening tests' own fault injection


@pytest.mark.parametrize("mode", list(UNAVAILABLE))
def test_status_json_shows_why_ipvs_cannot_be_read_and_claims_no_action(mode, ipvs, run, backends):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    b.stop()
    monitor = run(ipvs, config(VIP, [a.address, b.address], [3, 1]))
    make_unavailable(ipvs, mode)
    code, out = invoke(monitor, "--status", "--json")
    assert code == 1
    (service,) = json.loads(out)["services"]
    assert service["problem"] and UNAVAILABLE[mode] in service["problem"]
    assert [r["action"] for r in service["servers"]] == [None, None]
    assert [r["ipvs_weight"] for r in service["servers"]] == [None, None]  # unknown: the problem says why
    assert [r["probe"] for r in service["servers"]] == ["ok", "failed"]  # the probes still ran
    assert not monitor.log.exists()


def test_status_plain_lines_show_the_problem_not_would_add(ipvs, run, backends):
    a = backends(ip="127.0.0.11")
    monitor = run(ipvs, config(VIP, [a.address], [3]))
    ipvs.fault("noipvs")
    code, out = invoke(monitor, "--status")
    assert code == 1
    assert f"{VIP} (web) problem=" in out and "Can't initialize ipvs" in out
    assert f"{a.address} weight=3 ipvs=unknown " in out  # not "absent": the table could not be read
    assert "would" not in out.split("nothing changed", 1)[1]
    assert "action=-" in out


def test_status_table_shows_the_problem_in_the_title(ipvs, run, backends):
    a = backends(ip="127.0.0.11")
    monitor = run(ipvs, config(VIP, [a.address], [3]))
    ipvs.fault("noroot")
    code, out = invoke(monitor, "--status", "--json")
    console = Console(width=160, file=io.StringIO(), record=True)
    m.show_status(json.loads(out), console)
    text = console.export_text()
    assert "Can't initialize ipvs: Permission denied (you must be root)" in text
    assert "would add" not in text and "absent" not in text


def test_dry_run_without_ipvs_still_previews_on_an_empty_table(ipvs, run, backends):
    """The choice made for --dry-run: it says once that it assumes an empty table, then
    shows what it would run on one (the README's first command relies on that)."""
    a = backends(ip="127.0.0.11")
    ipvs.fault("noipvs")
    proc = run(ipvs, config(VIP, [a.address], [4])).once("--dry-run")
    assert proc.returncode == 0
    assert proc.stdout.count("IPVS is not available here") == 1 and "assuming an empty table" in proc.stdout
    assert f"would run: {ipvs.path} -a -t {VIP} -r {a.address} -m -w 4" in proc.stdout


###############################################################################
# 2. and 3. The rich table: whole servers, data never markup ##################
###############################################################################


def row(server, **kw):
    values = {"server": server, "weight": 3, "ipvs_weight": 3, "state": "up", "probe": "ok", "reason": "HTTP 200",
              "latency_ms": 1.2, "good_streak": 5, "bad_streak": 0, "quiesced": False, "action": None,
              "last_change": None}
    values.update(kw)
    return values


def snap(*services):
    return {"monitor_rs": m.__version__, "source": "probe", "pid": 1, "config": "/etc/monitorRS.conf",
            "time": 1796125043.629, "interval": 3, "pass_seconds": 0.032, "services": list(services)}


def service(name, address, servers, problem=None):
    return {"name": name, "address": address, "protocol": "tcp", "problem": problem, "servers": servers}


CHANGE = {"time": 1796125043.6, "what": "down: timeout (status line)"}
SERVERS = ["[fd00:1234:5678::10]:8080", "[fd00:1234:5678::11]:8080", "127.0.0.10:8080", "127.0.0.11:8080",
           "127.0.0.12:8080"]


def rendered(s, width):
    console = Console(width=width, file=io.StringIO(), record=True, color_system="truecolor")
    m.show_status(s, console)
    return console.export_text()


def busy_snapshot():
    return snap(
        service("web", "[fd00:1234:5678::1]:80", [
            row(SERVERS[0], action="would add", ipvs_weight=None, last_change={"time": 1796125043.6,
                                                                              "what": "up: HTTP 200"}),
            row(SERVERS[1], state="down, kept", probe="failed", reason="timeout (status line)", last_change=CHANGE),
        ]),
        service("app", "127.0.0.1:80", [
            row(SERVERS[2], state="down", probe="failed", reason="refused", action="would delete",
                last_change=CHANGE),
            row(SERVERS[3]),
            row(SERVERS[4], action="fallback-delete FAILED", reason="receive text not found"),
        ]))


@pytest.mark.parametrize("width", [80, 100, 200])
def test_the_table_never_cuts_a_server(width):
    text = rendered(busy_snapshot(), width)
    for server in SERVERS:
        assert server in text, f"{server} cut at {width} columns:\n{text}"
    assert "127.0.0…" not in text and "[fd00:1234:5678::…" not in text
    assert all(len(line) <= width for line in text.splitlines())


def columns(text):
    """The column count of each table drawn (from its top border)."""
    return [line.count("┳") + 1 for line in text.splitlines() if line.startswith("┏")]


def test_a_narrow_terminal_loses_the_last_change_and_action_columns_first():
    wide, narrow = rendered(busy_snapshot(), 200), rendered(busy_snapshot(), 80)
    assert columns(wide) == [8, 8] and "Last change" in wide and "would delete" in wide
    assert columns(narrow) in ([6, 6], [5, 5])  # the same columns in every table
    assert "Last" not in narrow and "would delete" not in narrow and "Reason" in narrow


def test_data_is_never_read_as_markup():
    s = snap(service("web [bold]x[/bold]", "[fd00::1]:80", [
        row("[fd00::10]:80", reason="HTTP 500 [bold]oops[/]", state="down"),
        row("[::1]:8080", state="down, kept"),
    ], problem="exit 2: ipvsadm said [red]no[/red]"))
    text = rendered(s, 160)
    assert "[fd00::1]:80 (web [bold]x[/bold])" in text
    assert "exit 2: ipvsadm said [red]no[/red]" in text
    assert "[fd00::10]:80" in text and "[::1]:8080" in text
    assert "HTTP 500 [bold]oops[/]" in text


def test_state_colours_still_show():
    console = Console(width=160, file=io.StringIO(), record=True, color_system="truecolor", force_terminal=True)
    m.show_status(snap(service("web", VIP, [row("127.0.0.10:8080", state="down")])), console)
    html = console.export_html(inline_styles=True)
    assert re.search(r'<span style="color: #800000[^"]*">down</span>', html), html


def test_a_server_of_unknown_state_is_drawn():
    """"unknown" has no colour: it was drawn as the markup `[]unknown[/]`, which rich refused
    (MarkupError), so a terminal's --status died whenever a table could not be read."""
    text = rendered(snap(service("web", VIP, [row("127.0.0.10:8080", state="unknown", ipvs_weight=None)],
                                 problem="ipvsadm -Ln -t 127.0.0.1:80 failed: exit 1")), 160)
    assert "127.0.0.10:8080" in text and "unknown" in text


###############################################################################
# 4. The metrics file #########################################################
###############################################################################


def realistic_snapshot():
    return snap(
        service('we"b\\1', "127.0.0.1:80", [row("127.0.0.10:8080"), row("127.0.0.11:8080", ipvs_weight=None,
                                                                         state="down")]),
        service("v6 \\ \"quoted\"\nname", "[fd00::1]:443", [row("[fd00::10]:443"), row("[fd00::11]:443",
                                                                                       state="down, kept")]))


FAMILIES = ["monitor_rs_server_up", "monitor_rs_server_held", "monitor_rs_server_drained", "monitor_rs_server_weight",
            "monitor_rs_probe_latency_seconds", "monitor_rs_service_contested",
            "monitor_rs_last_pass_timestamp_seconds", "monitor_rs_pass_duration_seconds"]


def family_of(line):
    if line.startswith("# "):
        return line.split()[2]
    return re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)


def test_metrics_group_each_family_together():
    lines = m.metrics_text(realistic_snapshot()).splitlines()
    order = [family_of(line) for line in lines]
    runs = [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name]
    assert runs == FAMILIES  # each family once, in one run
    for name in FAMILIES:
        block = [line for line in lines if family_of(line) == name]
        assert block[0].startswith(f"# HELP {name} ") and block[1] == f"# TYPE {name} gauge"
    assert sum(order.count(name) for name in FAMILIES[:5]) == 5 * (2 + 4)


def test_metrics_pass_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        if IN_CI:
            pytest.fail("promtool is not installed (.ci/run installs Debian's prometheus package)")
        pytest.skip("promtool is not installed here (apt-get install prometheus)")
    path = tmp_path / "monitor_rs.prom"
    path.write_text(m.metrics_text(realistic_snapshot()))
    with open(path) as handle:
        proc = subprocess.run([promtool, "check", "metrics"], stdin=handle, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_metrics_parse_with_prometheus_client():
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        if IN_CI:
            pytest.fail("prometheus_client is not installed (it is in setup.cfg's test extra)")
        pytest.skip("prometheus_client is not installed here (pip install -e '.[test]')")
    families = {f.name: f for f in text_string_to_metric_families(m.metrics_text(realistic_snapshot()))}
    assert sorted(families) == sorted(FAMILIES)  # no family split into untyped pieces
    assert {f.type for f in families.values()} == {"gauge"}
    up = {(s.labels["name"], s.labels["server"]): s.value for s in families["monitor_rs_server_up"].samples}
    assert up == {('we"b\\1', "127.0.0.10:8080"): 1, ('we"b\\1', "127.0.0.11:8080"): 0,
                  ("v6 \\ \"quoted\"\nname", "[fd00::10]:443"): 1, ("v6 \\ \"quoted\"\nname", "[fd00::11]:443"): 0}
    weights = [s.value for s in families["monitor_rs_server_weight"].samples]
    assert weights == [3, -1, 3, 3]
