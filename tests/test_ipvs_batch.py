"""All of a pass's changes of a virtual service in one `ipvsadm -R`.

- The fake's -R (ipvsadm 1.31's restore_table): natively against what the
  source says, and in the VM tier against the real ipvsadm on the kernel's
  table (same input, same stdout, stderr, exit status and table).
- The monitor end to end: one -R per pass for many changes, the same log
  lines as one process per change, a failing change in the middle of a batch
  logged FAILED and retried while the others held, and the fallback ordering.
"""

import json
import os
import re
import subprocess

import pytest

from conftest import KERNEL
from harness import Ipvs, config, wait_until

SVC = "127.0.0.100:80"
T = f"-t {SVC}"


def rs(n):
    return f"127.0.0.{n}:80"


TRY = "Try `ipvsadm -h' or 'ipvsadm --help' for more information.\n"

# (name, stdin, expected stderr, exit status, the table's destinations afterwards as -Sn lines)
# The table starts with the service alone (-s wrr).  The expectations are what ipvsadm.c says
# (restore_table, config_stream_read, parse_options); the VM test checks them on the real one.
SCENARIOS = [
    ("all good", f"-a {T} -r {rs(11)} -m -w 2\n-a {T} -r {rs(12)} -m -w 3\n-e {T} -r {rs(11)} -m -w 5\n",
     "", 0, [(11, 5), (12, 3)]),
    ("kernel errors in the middle",
     f"-a {T} -r {rs(11)} -m -w 2\n-a {T} -r {rs(11)} -m -w 4\n-d {T} -r {rs(99)}\n-a {T} -r {rs(12)} -m -w 3\n",
     "Destination already exists\nNo such destination\n", 0, [(11, 2), (12, 3)]),
    ("a validation error in the middle ends the run",
     f"-a {T} -r {rs(11)} -m -w 2\n-a {T} -r {rs(12)} -m -w x\n-a {T} -r {rs(13)} -m -w 1\n",
     "illegal weight specified\n", 2, [(11, 2)]),
    ("an error on the last line is the exit status",
     f"-a {T} -r {rs(11)} -m -w 2\n-d {T} -r {rs(99)}\n", "No such destination\n", 255, [(11, 2)]),
    ("an earlier error is hidden by a good last line",
     f"-d {T} -r {rs(99)}\n-a {T} -r {rs(11)} -m -w 2\n", "No such destination\n", 0, [(11, 2)]),
    ("empty input", "", "", 0, []),
    ("blank lines, a leading ipvsadm, tabs and CRLF",
     f"\n \t\nipvsadm -a {T}\t-r {rs(11)} -m -w 2\r\n\n  -a {T} -r {rs(12)} -m  -w 3 \n", "", 0, [(11, 2), (12, 3)]),
    ("a line of ipvsadm alone is skipped", f"-d {T} -r {rs(99)}\nipvsadm\n", "No such destination\n", 255, []),
    ("a # line is no comment: no command, the run ends",
     f"# a comment\n-a {T} -r {rs(11)} -m -w 2\n", TRY, 255, []),
    ("a # after a command is an unexpected argument",
     f"-a {T} -r {rs(11)} -m -w 2 # note\n-a {T} -r {rs(12)} -m -w 3\n", "unexpected argument #\n", 2, []),
    ("quotes are part of the word",
     f"-a -t '{SVC}' -r {rs(11)} -m\n-a {T} -r {rs(12)} -m -w 3\n",
     "illegal virtual server address[:port] specified\n", 2, []),
    ("a popt error after the command is printed and the next line runs",
     f"-a {T} -r {rs(11)} -m --bogus\n-a {T} -r {rs(12)} -m -w 3\n", "--bogus: unknown option\n", 0, [(12, 3)]),
    ("a first word that is no command ends the run",
     f"-t {SVC}\n-a {T} -r {rs(11)} -m -w 2\n", TRY, 255, []),
    ("a last line without LF runs", f"-a {T} -r {rs(11)} -m -w 2\n-a {T} -r {rs(12)} -m -w 3", "", 0,
     [(11, 2), (12, 3)]),
    ("a last line without LF after two blanks is dropped",
     f"-a {T} -r {rs(11)} -m -w 2\n-a {T} -r {rs(12)} -m -w 3 \t", "", 0, [(11, 2)]),
    ("no nested -R", f"-R\n-a {T} -r {rs(11)} -m -w 2\n", TRY, 255, []),
    ("a listing of a missing service ends the run with exit 1",
     f"-a {T} -r {rs(11)} -m -w 2\n-Ln -t 127.0.0.200:80\n-a {T} -r {rs(12)} -m -w 3\n",
     "No such service\n", 1, [(11, 2)]),
]
IDS = [s[0] for s in SCENARIOS]


def restore(ipvs, text):
    """`ipvsadm -R` with `text` on stdin: (stdout, stderr with the program named ipvsadm, status)."""
    proc = subprocess.run([ipvs.path, "-R"], input=text.encode("latin-1"), capture_output=True, timeout=60)
    err = re.sub(r"Try `\S+ -h' or '\S+ --help'", "Try `ipvsadm -h' or 'ipvsadm --help'", proc.stderr.decode())
    return proc.stdout.decode(), err, proc.returncode


def saved(ipvs):
    return ipvs.run("-Sn").stdout


def expected_save(dests):
    lines = [f"-A {T} -s wrr\n"] + [f"-a {T} -r {rs(n)} -m -w {w}\n" for n, w in dests]
    return "".join(lines)


@pytest.mark.parametrize("name, text, stderr, code, dests", SCENARIOS, ids=IDS)
def test_fake_restore_follows_ipvsadm_c(tmp_path, name, text, stderr, code, dests):
    ipvs = Ipvs("fake", tmp_path)
    ipvs.service(SVC)
    out, err, status = restore(ipvs, text)
    assert (out, err, status) == ("", stderr, code)
    assert saved(ipvs) == expected_save(dests)


def test_fake_restore_listing_goes_to_stdout(tmp_path):
    ipvs = Ipvs("fake", tmp_path)
    ipvs.service(SVC)
    out, err, status = restore(ipvs, f"-a {T} -r {rs(11)} -m -w 2\n-Ln {T}\n")
    assert (out, err, status) == (ipvs.run("-Ln", "-t", SVC).stdout, "", 0)


def test_fake_restore_is_one_logged_call(tmp_path):
    ipvs = Ipvs("fake", tmp_path)
    ipvs.service(SVC)
    restore(ipvs, "".join(f"-a {T} -r {rs(n)} -m -w 1\n" for n in range(11, 51)))
    assert ipvs.listing_calls()[1:] == [["-R"]]
    assert len(ipvs.dests(SVC)) == 40


def test_fake_restore_fault_modes_refuse_each_line(tmp_path):
    """fail-add: every -a line refused as by the kernel, the others run."""
    ipvs = Ipvs("fake", tmp_path)
    ipvs.service(SVC)
    ipvs.run("-a", "-t", SVC, "-r", rs(11), "-m", "-w", "1")
    ipvs.fault("fail-add")
    assert restore(ipvs, f"-a {T} -r {rs(12)} -m -w 1\n-e {T} -r {rs(11)} -m -w 4\n") == (
        "", "Service not defined\n", 0)
    ipvs.fault("")
    assert saved(ipvs) == expected_save([(11, 4)])


@pytest.mark.ipvs
@pytest.mark.skipif(not KERNEL, reason="needs the real kernel IPVS: runs inside the VM (tests/vm/run)")
def test_fake_restore_matches_the_real_one(tmp_path):
    """The same -R inputs on the real ipvsadm (kernel table) and on the fake: same stdout,
    stderr, exit status and resulting table.  Also writes what each gave to MONITOR_RS_VM_OUT."""
    kernel, fake = Ipvs("kernel", tmp_path / "k"), None
    (tmp_path / "f").mkdir()
    fake = Ipvs("fake", tmp_path / "f")
    seen, differences = [], []
    try:
        for name, text, _, _, _ in SCENARIOS + [("listing", f"-a {T} -r {rs(11)} -m -w 2\n-Ln {T}\n", "", 0, [])]:
            got = {}
            for ipvs in (kernel, fake):
                ipvs.run("-C")
                ipvs.service(SVC)
                got[ipvs.kind] = (*restore(ipvs, text), saved(ipvs))
            seen.append({"scenario": name, **{k: list(v) for k, v in got.items()}})
            if got["kernel"] != got["fake"]:
                differences.append((name, got))
    finally:
        kernel.close()
        out = os.environ.get("MONITOR_RS_VM_OUT")
        if out:
            with open(os.path.join(out, "restore-compare.json"), "w") as handle:
                json.dump(seen, handle, indent=1)
    assert differences == []
