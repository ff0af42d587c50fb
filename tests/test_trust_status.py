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

UNAVAILABLE = {
    "noipvs": "Can't initialize ipvs: Protocol not available",
    "noroot": "Can't initialize ipvs: Permission denied (you must be root)",
    "missing": "not found (install ipvsadm, or give --ipvsadm PATH)",
}


def make_unavailable(ipvs, mode):
    if mode == "missing":
        os.rename(ipvs.path, ipvs.path + ".away")
    else:
        ipvs.fault(mode)


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


def test_dry_run_without_ipvs_still_previews_on_an_empty_table(ipvs, run, backends):
    """The choice made for --dry-run: it says once that it assumes an empty table, then
    shows what it would run on one (the README's first command relies on that)."""
    a = backends(ip="127.0.0.11")
    ipvs.fault("noipvs")
    proc = run(ipvs, config(VIP, [a.address], [4])).once("--dry-run")
    assert proc.returncode == 0
    assert proc.stdout.count("IPVS is not available here") == 1 and "assuming an empty table" in proc.stdout
    assert f"would run: {ipvs.path} -a -t {VIP} -r {a.address} -m -w 4" in proc.stdout
