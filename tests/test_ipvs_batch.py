"""All of a pass's changes of a virtual service in one `ipvsadm -R`.

- The fake's -R (ipvsadm 1.31's restore_table): natively against what the
  source says, and in the VM tier against the real ipvsadm on the kernel's
  table (same input, same stdout, stderr, exit status and table).
- The monitor end to end: one -R per pass for many changes, the same log
  lines as one process per change, a failing change in the middle of a batch
  logged FAILED and retried while the others held, and the fallback ordering.
"""

import errno
import fcntl
import json
import os
import re
import subprocess
import types

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
    ("the monitor's marks: -L and an unknown option, printed, the next line runs",
     f"-a {T} -r {rs(11)} -m -w 2\n-L --monitor-rs-after-0\n-a {T} -r {rs(11)} -m -w 2\n-L --monitor-rs-after-1\n",
     "--monitor-rs-after-0: unknown option\nDestination already exists\n--monitor-rs-after-1: unknown option\n",
     255, [(11, 2)]),
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


# What Monitor._apply_batch sends: each change and its mark, then the service listed (read back).
MONITORS_BATCH = (f"-a {T} -r {rs(11)} -m -w 2\n-L --monitor-rs-after-0\n-a {T} -r {rs(11)} -m -w 3\n"
                  f"-L --monitor-rs-after-1\n-d {T} -r {rs(99)}\n-L --monitor-rs-after-2\n-Ln {T}\n")


def test_fake_restore_of_the_monitors_batch_lists_the_service_last(tmp_path):
    """The listing that ends a batch is the service after every line ran; stderr has the marks and
    the kernel's words between them; the status is the listing's (0)."""
    ipvs = Ipvs("fake", tmp_path)
    ipvs.service(SVC)
    out, err, status = restore(ipvs, MONITORS_BATCH)
    assert (out, status) == (ipvs.run("-Ln", "-t", SVC).stdout, 0)
    assert err == ("--monitor-rs-after-0: unknown option\nDestination already exists\n--monitor-rs-after-1: unknown "
                   "option\nNo such destination\n--monitor-rs-after-2: unknown option\n")
    assert "127.0.0.11:80" in out


def test_fake_restore_is_one_logged_call(tmp_path):
    ipvs = Ipvs("fake", tmp_path)
    ipvs.service(SVC)
    restore(ipvs, "".join(f"-a {T} -r {rs(n)} -m -w 1\n" for n in range(11, 51)))
    assert ipvs.listing_calls()[1:] == [["-R"]]
    assert len(ipvs.dests(SVC)) == 40


def test_fake_restore_writes_its_table_once_per_run(tmp_path, monkeypatch):
    """The fake's -R saves its table once, not once per line (that made a 100-line -R cost
    0.3 CPU-s, which the native mass failure measured instead of the monitor); what it says
    and the table it leaves are those of the scenarios above."""
    import fake_ipvsadm
    ipvs = Ipvs("fake", tmp_path)
    ipvs.service(SVC)
    monkeypatch.setenv(fake_ipvsadm.STATE_ENV, ipvs.state)
    monkeypatch.delenv(fake_ipvsadm.CALLS_ENV, raising=False)
    monkeypatch.delenv(fake_ipvsadm.FAULT_ENV, raising=False)
    saves = []
    real_save = fake_ipvsadm.save
    monkeypatch.setattr(fake_ipvsadm, "save", lambda path, state: (saves.append(path), real_save(path, state)))
    for n, text in enumerate([
            "".join(f"-a {T} -r {rs(n)} -m -w 1\n-L --monitor-rs-after-{n}\n" for n in range(11, 61)),
            f"-d {T} -r {rs(11)}\n-d {T} -r {rs(99)}\n-e {T} -r {rs(12)} -m -w 7\n-a {T} -r {rs(13)} -m -w x\n"
            f"-d {T} -r {rs(14)}\n"]):
        monkeypatch.setattr(fake_ipvsadm.sys, "stdin", types.SimpleNamespace(
            buffer=types.SimpleNamespace(read=lambda text=text: text.encode())))
        fake_ipvsadm.main(["-R"])
        assert len(saves) == n + 1
    assert saved(ipvs) == expected_save([(12, 7)] + [(n, 1) for n in range(13, 61)])


def test_fake_restore_saves_the_lines_run_before_a_listing_that_hangs(tmp_path):
    """hang-list: a -L line of a -R never ends; the changes before it are in the table meanwhile."""
    ipvs = Ipvs("fake", tmp_path)
    ipvs.service(SVC)
    ipvs.fault("hang-list")
    proc = subprocess.Popen([ipvs.path, "-R"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.stdin.write(f"-a {T} -r {rs(11)} -m -w 2\n-Ln {T}\n-a {T} -r {rs(12)} -m -w 3\n".encode())
        proc.stdin.close()

        def table():
            with open(ipvs.state) as handle:
                return [(d["addr"], d["weight"]) for s in json.load(handle)["services"] for d in s["dests"]]
        wait_until(lambda: table() == [("127.0.0.11", 2)], what="the first add saved while -R hangs")
        assert proc.poll() is None
        with open(ipvs.state + ".lock") as lock:  # and its lock let go: others read and change the table
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


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
        for name, text, _, _, _ in SCENARIOS + [("listing", f"-a {T} -r {rs(11)} -m -w 2\n-Ln {T}\n", "", 0, []),
                                                ("the monitor's batch", MONITORS_BATCH, "", 0, [])]:
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


# ------------------------------------------------------------- changes over netlink

V6 = "[2001:db8::100]:80"
# Each change the monitor writes for ipvsadm (Monitor._apply), on services -t SVC, -u SVC, -f 7, -t V6,
# -f 8 -6: made, refused by the kernel for each reason ipvsadm words, DR/TUN ports, IPv6, marks.
NETLINK_STEPS = [
    ("-a", "-t", SVC, "-r", rs(11), "-m", "-w", "2"),
    ("-a", "-t", SVC, "-r", rs(11), "-m", "-w", "4"),  # Destination already exists
    ("-e", "-t", SVC, "-r", rs(11), "-m", "-w", "5"),
    ("-e", "-t", SVC, "-r", rs(99), "-m", "-w", "1"),  # No such destination
    ("-d", "-t", SVC, "-r", rs(99)),  # No such destination
    ("-a", "-t", "127.0.0.101:80", "-r", rs(11), "-m", "-w", "1"),  # Service not defined
    ("-d", "-t", "127.0.0.101:80", "-r", rs(11)),  # Service not defined
    ("-a", "-t", SVC, "-r", "127.0.0.12:8080", "-g", "-w", "1"),  # DR: the service's port
    ("-a", "-t", SVC, "-r", "127.0.0.13:8080", "-i", "-w", "0"),  # tunnel, weight 0
    ("-e", "-t", SVC, "-r", "127.0.0.12:8080", "-g", "-w", "65535"),
    ("-d", "-t", SVC, "-r", rs(11)),
    ("-a", "-u", SVC, "-r", "127.0.0.15:53", "-m", "-w", "1"),
    ("-a", "-f", "7", "-r", "127.0.0.14:80", "-g", "-w", "3"),
    ("-e", "-f", "7", "-r", "127.0.0.14:80", "-g", "-w", "0"),
    ("-a", "-t", V6, "-r", "[2001:db8::11]:80", "-m", "-w", "1"),
    ("-a", "-f", "8", "-6", "-r", "[2001:db8::12]:80", "-g", "-w", "2"),
    ("-d", "-f", "8", "-6", "-r", "[2001:db8::12]:80"),
    ("-d", "-f", "7", "-r", "127.0.0.14:80"),
]


def test_netlink_messages_only_for_the_changes_the_monitor_writes():
    """What ipvs_message takes (a real server's -a/-e/-d as _change_args writes it) and leaves to
    ipvsadm (anything else): the service's fields and the real server's, as libipvs sends them."""
    import struct

    import monitor_rs as m

    def attributes(blob):
        found, at = {}, 0
        while at < len(blob):
            length, kind = struct.unpack_from("=HH", blob, at)
            found[kind & 0x3FFF] = blob[at + 4:at + length]
            at += (length + 3) & ~3
        return found

    command, blob = m.ipvs_message(("-a", "-t", SVC, "-r", "127.0.0.12:8080", "-g", "-w", "7"))
    top = attributes(blob)
    service, dest = attributes(top[1]), attributes(top[2])
    assert command == 5 and struct.unpack("=H", service[1])[0] == 2 and struct.unpack("=H", service[2])[0] == 6
    assert service[3][:4] == bytes([127, 0, 0, 100]) and len(service[3]) == 16 and service[4] == b"\x00P"
    assert dest[1][:4] == bytes([127, 0, 0, 12]) and dest[2] == b"\x00P"  # DR: port 80, not 8080
    assert [struct.unpack("=I", dest[k])[0] for k in (3, 4, 5, 6)] == [3, 7, 0, 0]
    command, blob = m.ipvs_message(("-d", "-f", "8", "-6", "-r", "[2001:db8::12]:80"))
    service, dest = (attributes(v) for v in attributes(blob).values())
    assert command == 7 and struct.unpack("=I", service[5])[0] == 8 and dest[1] == bytes.fromhex("20010db8" + "0" * 22 + "12")
    for args in [("-A", "-t", SVC, "-s", "wrr"), ("-E", "-t", SVC, "-s", "wlc"), ("-D", "-t", SVC),
                 ("-a", "-t", SVC, "-r", rs(11), "-m", "-w", "x"), ("-a", "-t", SVC, "-r", rs(11), "-m", "-w", "70000"),
                 ("-a", "-t", SVC, "-r", rs(11), "-m"), ("-d", "-t", SVC, "-r", rs(11), "-g"), ("-a", "-t", SVC),
                 ("-Ln",), ("-C",)]:
        assert m.ipvs_message(args) is None, args


def test_netlink_answers_are_said_in_ipvsadms_words():
    """The door's side of the exchange, against a stand-in kernel (a datagram socket pair): the
    answer to its own request (an older one's skipped), errno in ipvsadm's words and exit status,
    and no answer within the timeout a timed-out change, as an ipvsadm killed at its timeout."""
    import socket
    import struct

    import monitor_rs as m

    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    door = m.IpvsNetlink(ours, 99, 0.3)

    def answer(seq, code):
        kernel.send(struct.pack("=IHHII", 36, m.NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", -code) + b"\0" * 16)

    def asked():
        length, family, flags, seq, _ = struct.unpack_from("=IHHII", kernel.recv(4096))
        return family, flags, seq

    add = ("-a", "-t", SVC, "-r", rs(11), "-m", "-w", "2")
    answer(0, 0)  # a late answer to an earlier request: not this one's
    answer(1, errno.EEXIST)
    result = door.run(add, "/usr/sbin/ipvsadm")
    assert asked() == (99, m.NLM_F_REQUEST | m.NLM_F_ACK, 1)
    assert (result.returncode, result.why()) == (255, "exit 255: Destination already exists")
    assert result.argv == ("/usr/sbin/ipvsadm", *add)
    answer(2, errno.ENOENT)
    assert door.run(("-d", "-t", SVC, "-r", rs(11)), "ipvsadm").why() == "exit 255: No such destination"
    answer(3, 0)
    assert door.run(("-e", "-t", SVC, "-r", rs(11), "-m", "-w", "0"), "ipvsadm").ok
    answer(4, errno.EPERM)
    assert door.run(add, "ipvsadm").why() == "exit 255: Permission denied (you must be root)"
    answer(5, errno.EIO)  # not in ipvsadm's table: the system's words, as ipvs_strerror falls back
    assert door.run(add, "ipvsadm").why() == f"exit 255: {os.strerror(errno.EIO)}"
    timed_out = door.run(add, "ipvsadm")  # no answer
    assert timed_out.returncode == m.TIMED_OUT and "no answer over netlink within 0.3 s" in timed_out.why()
    assert door.run(("-A", "-t", SVC, "-s", "wrr"), "ipvsadm") is None  # the service's own lines: ipvsadm
    door.close()
    kernel.close()


@pytest.mark.ipvs
@pytest.mark.skipif(not KERNEL, reason="needs the real kernel IPVS: runs inside the VM (tests/vm/run)")
def test_netlink_changes_are_the_real_ipvsadms(tmp_path):
    """Each change made by the real ipvsadm, then on a fresh table over netlink: the same exit status
    and words (as the monitor logs them) after each, and the same table at the end."""
    import shutil

    import monitor_rs as m

    path = shutil.which("ipvsadm") or "/usr/sbin/ipvsadm"
    ipvsadm, got = m.Ipvsadm(path), {}
    for way in ("ipvsadm", "netlink"):
        for args in (("-C",), ("-A", "-t", SVC, "-s", "wrr"), ("-A", "-u", SVC, "-s", "wrr"),
                     ("-A", "-f", "7", "-s", "wrr"), ("-A", "-t", V6, "-s", "wrr"), ("-A", "-f", "8", "-6", "-s", "wrr")):
            assert ipvsadm.run(args).ok, args
        door = m.IpvsNetlink.open(5.0) if way == "netlink" else None
        assert way == "ipvsadm" or door is not None  # the IPVS family is registered on this kernel
        said = [(r.returncode, r.why()) for r in (door.run(a, path) if door else ipvsadm.run(a) for a in NETLINK_STEPS)]
        got[way] = said, ipvsadm.run(("-Sn",)).stdout
        if door:
            door.close()
    ipvsadm.run(("-C",))
    assert got["netlink"] == got["ipvsadm"]
    words = {why for _, why in got["ipvsadm"][0]}
    assert {"exit 255: Destination already exists", "exit 255: No such destination",
            "exit 255: Service not defined"} <= words, words  # each refusal met, in ipvsadm's words


# ------------------------------------------------------------- carry_out in stages

def test_a_change_that_needs_another_waits_for_its_stage_and_is_held_if_it_failed():
    """carry_out with a batch: the fallback add (and a gain) in one batch, the last servers'
    deletes (which need one of them) in a second batch only once one held; held if none did."""
    import monitor_rs as m
    ep = [m.parse_endpoint(rs(n), 80) for n in (11, 12, 13)]
    h = m.Health()
    actions = (m.Action(m.Change.FALLBACK_ADD, "f", ("-a",), weight=1),
               m.Action(m.Change.ADD, rs(13), ("-a",), weight=2, endpoint=ep[2], unchanged=h),
               m.Action(m.Change.DELETE, rs(11), ("-d",), endpoint=ep[0], unchanged=h, needs=(0, 1)),
               m.Action(m.Change.DELETE, rs(12), ("-d",), endpoint=ep[1], unchanged=h, needs=(0, 1)))
    decision = m.Decision({e: h for e in ep}, actions, ())
    assert m.stages(actions) == [[0, 1], [2, 3]]
    for outcome, batches, held in (([True, False], [[0, 1], [2, 3]], []), ([False, False], [[0, 1]], [2, 3])):
        batches_seen, held_seen = [], []

        def batch(given):
            batches_seen.append([actions.index(a) for a in given])
            return [lambda a=a: outcome[actions.index(a)] if actions.index(a) < 2 else True for a in given]

        m.carry_out(decision, None, lambda a: held_seen.append(actions.index(a)), batch)
        assert (batches_seen, held_seen) == (batches, held)


# ------------------------------------------------------------- the monitor end to end

def changes(ipvs):
    """The ipvsadm calls that change the table (not the test's own -A), in order."""
    return [c for c in ipvs.listing_calls() if c[:1] in (["-a"], ["-e"], ["-d"], ["-R"])]


def change_lines(ipvs, start=0):
    """The changes made from change call number `start` on, one argv each: a -R's lines in its place."""
    with open(ipvs.calls) as handle:
        calls = [json.loads(line) for line in handle if line.strip()]
    calls = [c for c in calls if c["argv"][:1] in (["-a"], ["-e"], ["-d"], ["-R"])][start:]
    lines = [w for c in calls for w in (c.get("stdin", []) if c["argv"] == ["-R"] else [c["argv"]])]
    return [argv for argv in lines if argv[:1] in (["-a"], ["-e"], ["-d"])]  # not a -R's mark lines


def test_forty_adds_are_a_few_ipvsadm_processes_not_forty(ipvs, run, backends):
    """Results are acted on as they arrive, one decision per event turn: the adds of a turn are
    one `ipvsadm -R` (a turn with one add, one `ipvsadm -a`), each followed by one listing read
    back; before: 40 `ipvsadm -a`."""
    servers = [backends(ip=f"127.0.0.{11 + i}") for i in range(40)]
    monitor = run(ipvs, config("127.0.0.1:80", [b.address for b in servers], [1 + i % 5 for i in range(40)]))
    proc = monitor.once()
    assert proc.returncode == 0, proc.stderr
    made = changes(ipvs)
    assert ["-R"] in made and len(made) <= 8, made
    with open(ipvs.calls) as handle:
        calls = [json.loads(line) for line in handle if line.strip()]
    lines = [w for c in calls for w in (c.get("stdin", []) if c["argv"] == ["-R"] else [c["argv"]])]
    assert sorted(argv[argv.index("-r") + 1] for argv in lines if argv[:1] == ["-a"]) == sorted(
        b.address for b in servers)  # each server added once
    assert ipvs.dests("127.0.0.1:80") == {b.address: ("Masq", 1 + i % 5) for i, b in enumerate(servers)}
    for i, b in enumerate(servers):
        assert monitor.count(f"{b.address} has been added to work in 127.0.0.1:80 (web) (weight {1 + i % 5})") == 1
    assert monitor.count("FAILED") == 0


@pytest.mark.parametrize("quiescent", [False, True])
def test_the_log_lines_of_batched_changes_are_those_of_lone_ones(ipvs, run, backends, quiescent):
    servers = [backends(ip=f"127.0.0.{11 + i}") for i in range(3)]
    names = [b.address for b in servers]
    extra = "quiescent = yes" if quiescent else ""
    monitor = run(ipvs, config("127.0.0.1:80", names, [3, 1, 7], extra=extra)).start()
    wait_until(lambda: len(ipvs.dests("127.0.0.1:80")) == 3, what="three servers in")
    servers[0].stop()
    servers[2].stop()
    if quiescent:
        wait_until(lambda: [w for _, w in ipvs.dests("127.0.0.1:80").values()] == [0, 1, 0], what="two quiesced")
    else:
        wait_until(lambda: set(ipvs.dests("127.0.0.1:80")) == {names[1]}, what="two deleted")
    servers[0].start()
    servers[2].start()
    wait_until(lambda: ipvs.dests("127.0.0.1:80") == {names[0]: ("Masq", 3), names[1]: ("Masq", 1),
                                                       names[2]: ("Masq", 7)}, what="both back")
    monitor.stop()
    vs = "127.0.0.1:80 (web)"
    for name, weight in ((names[0], 3), (names[1], 1), (names[2], 7)):
        assert monitor.count(f"{name} has been added to work in {vs} (weight {weight})") == 1 + (
            not quiescent and name != names[1])
    for name, weight in ((names[0], 3), (names[2], 7)):
        if quiescent:
            assert monitor.count(f"{name} is out of work, weight set to 0 in {vs} (quiescent)") == 1
            assert monitor.count(f"{name} weight restored to {weight} in {vs}") == 1
        else:
            assert monitor.count(f"{name} is out of work, deleted from {vs}") == 1
    assert monitor.count("FAILED") == 0
    assert len(changes(ipvs)) <= 7  # 7 changes: never more processes than changes (a -R, or one alone)


def hold_passes(monitor, ipvs):
    """Make every pass's first listing hang (each pass then changes nothing) and wait until
    one did: what the test changes meanwhile is all seen by the first pass after."""
    ipvs.fault("hang-list")
    monitor.wait_log("no change made to it")


def monitor_text(names, weights, extra="", ipvsadm_timeout=3.0, interval=0.3):
    return config("127.0.0.1:80", names, weights, extra=extra, interval=interval).replace(
        "[monitor]\n", f"[monitor]\nipvsadm_timeout = {ipvsadm_timeout}\n", 1)


def test_a_failing_change_in_the_middle_of_a_batch_is_failed_and_retried_the_others_hold(ipvs, run, backends):
    """quiescent: s1 and s4 come back (-e), s2 comes up for the first time (-a, refused by the
    kernel), in one -R; s3 goes down (-e 0) after, once a server back held (it was the last one
    serving).  The add alone is logged FAILED with the kernel's words, once, and retried every
    pass until it holds; the others held."""
    s1, s2, s3, s4 = (backends(ip=f"127.0.0.{11 + i}") for i in range(4))
    s2.stop()
    names = [s1.address, s2.address, s3.address, s4.address]
    # an interval of one grid step: the four servers' checks are one group (spread_offset), so the
    # changes of servers coming back together go in one -R
    monitor = run(ipvs, monitor_text(names, [3, 1, 7, 2], extra="quiescent = yes", interval=0.1)).start()
    wait_until(lambda: ipvs.dests("127.0.0.1:80") == {names[0]: ("Masq", 3), names[2]: ("Masq", 7),
                                                       names[3]: ("Masq", 2)}, what="s1, s3 and s4 in")
    s1.stop()
    s4.stop()
    wait_until(lambda: ipvs.dests("127.0.0.1:80") == {names[0]: ("Masq", 0), names[2]: ("Masq", 7),
                                                       names[3]: ("Masq", 0)}, what="s1 and s4 quiesced")
    hold_passes(monitor, ipvs)
    s1.start()
    s2.start()
    s4.start()
    s3.stop()
    before = len(changes(ipvs))
    ipvs.fault("fail-add")
    vs = "127.0.0.1:80 (web)"
    failed = (f"{names[1]} add FAILED in {vs}: exit 255: Service not defined "
              f"({ipvs.path} -a -t 127.0.0.1:80 -r {names[1]} -m -w 1)")
    quiesced = f"{names[2]} is out of work, weight set to 0 in {vs} (quiescent)"
    monitor.wait_log(quiesced)
    assert ipvs.dests("127.0.0.1:80") == {names[0]: ("Masq", 3), names[2]: ("Masq", 0), names[3]: ("Masq", 2)}
    made = change_lines(ipvs, before)
    quiesce = made.index(["-e", "-t", "127.0.0.1:80", "-r", names[2], "-m", "-w", "0"])
    assert any(argv[:1] == ["-e"] and argv[-1] != "0" for argv in made[:quiesce])  # once a server was back
    assert any(c == ["-R"] for c in changes(ipvs)[before:])  # several changes at once: one -R
    lines = monitor.lines()
    at = {text: next(i for i, line in enumerate(lines) if text in line) for text in (
        f"{names[0]} weight restored to 3 in {vs}", failed, f"{names[3]} weight restored to 2 in {vs}", quiesced)}
    assert at[quiesced] > min(at[f"{names[0]} weight restored to 3 in {vs}"], at[f"{names[3]} weight restored to 2 in {vs}"])
    adds = lambda: sum(argv[:1] == ["-a"] for argv in change_lines(ipvs, before))  # noqa: E731
    wait_until(lambda: adds() >= 3, what="the add retried twice")
    add = ["-a", "-t", "127.0.0.1:80", "-r", names[1], "-m", "-w", "1"]
    assert set(map(tuple, change_lines(ipvs, before)[quiesce + 1:])) == {tuple(add)}  # then the add alone: the others held
    ipvs.fault("")
    wait_until(lambda: ipvs.dests("127.0.0.1:80").get(names[1]) == ("Masq", 1), what="s2 added at last")
    monitor.stop()
    assert monitor.count(failed) == 1  # said once while it lasted
    assert monitor.count(f"{names[1]} has been added to work in {vs} (weight 1)") == 1
    assert monitor.count("FAILED") == 1


def test_the_last_servers_leave_only_once_a_failing_fallback_add_holds(ipvs, run, backends):
    a, b, sorry = (backends(ip=f"127.0.0.{11 + i}") for i in range(3))
    names = [a.address, b.address]
    # one group of the schedule (an interval of one grid step): both fail in the same pass
    monitor = run(ipvs, monitor_text(names, [3, 1], extra=f"fallback = {sorry.address}", interval=0.1)).start()
    wait_until(lambda: ipvs.dests("127.0.0.1:80") == {names[0]: ("Masq", 3), names[1]: ("Masq", 1)},
               what="both in")
    hold_passes(monitor, ipvs)
    a.stop()
    b.stop()
    ipvs.fault("fail-add")
    vs = "127.0.0.1:80 (web)"
    monitor.wait_log(f"{sorry.address} fallback-add FAILED in {vs}: exit 255: Service not defined")
    for name in names:
        monitor.wait_log(f"{name} left in {vs} although down: the fallback could not be added")
    monitor.wait_log("no change made to it", count=1)
    assert set(ipvs.dests("127.0.0.1:80")) == set(names)  # never an empty pool
    ipvs.fault("")
    wait_until(lambda: ipvs.dests("127.0.0.1:80") == {sorry.address: ("Masq", 1)}, what="fallback in, both out")
    monitor.stop()
    lines = monitor.lines()
    added = next(i for i, line in enumerate(lines) if f"{sorry.address} fallback added" in line)
    for name in names:
        assert added < next(i for i, line in enumerate(lines) if f"{name} is out of work, deleted" in line)
    assert changes(ipvs)[-1] == ["-R"]  # the two deletes: one -R, after the fallback's add alone


# ------------------------------------------------------------- what a -R did, read back

class Said:
    """Stands for the monitor's Output: keeps what was said, as (kind, message)."""

    def __init__(self):
        self.lines = []
        self.log = types.SimpleNamespace(path=None, facility="")  # where the Monitor sets the log's syslog facility

    def say(self, message, kind="info", log=True):
        self.lines.append((kind, message))


def batch_of(ipvs, tmp_path, present, timeout=5.0):
    """A Monitor on the fake with 127.0.0.11..13:80 configured (-m) and `present` in the table."""
    import monitor_rs as m
    ipvs.service("127.0.0.1:80")
    for n in present:
        ipvs.run("-a", "-t", "127.0.0.1:80", "-r", rs(n), "-m", "-w", "1")
    (tmp_path / "c.conf").write_text(config("127.0.0.1:80", [rs(n) for n in (11, 12, 13)], [1, 1, 1]))
    cfg = m.load_config(str(tmp_path / "c.conf"))
    said = Said()
    return m, m.Monitor(cfg, m.Ipvsadm(ipvs.path, timeout), said), cfg.services[0], said


def made(m, monitor, vs, actions):
    """Apply `actions` as one batch; (holds, report) once each outcome is told, in order."""
    report = m.PassReport()
    outcomes = monitor._apply_batch(vs, actions, report)
    return [outcome()[0] for outcome in outcomes], report


def action(m, vs, kind, n, weight=1, args=None):
    ep = m.parse_endpoint(rs(n), 80)
    flag = {m.Change.ADD: "-a", m.Change.DELETE: "-d", m.Change.QUIESCE: "-e"}[kind]
    return m.Action(kind, rs(n), args or m._change_args(vs, flag, ep, weight), "", weight, ep, m.Health())


def test_a_delete_refused_in_a_batch_because_the_server_was_already_gone_is_failed_as_alone(tmp_path):
    """b was deleted behind the monitor's back: the table read back shows it gone, but ipvsadm
    refused that line, and a lone `ipvsadm -d` said FAILED: so does the batch, with its words."""
    ipvs = Ipvs("fake", tmp_path)
    m, monitor, vs, said = batch_of(ipvs, tmp_path, [11, 12, 13])
    ipvs.run("-d", "-t", "127.0.0.1:80", "-r", rs(12))
    holds, report = made(m, monitor, vs, [action(m, vs, m.Change.DELETE, n) for n in (11, 12, 13)])
    assert holds == [True, False, True] and report.failed == 1
    assert said.lines == [
        ("delete", f"{rs(11)} is out of work, deleted from 127.0.0.1:80 (web)"),
        ("failed", f"{rs(12)} delete FAILED in 127.0.0.1:80 (web): exit 255: No such destination "
                   f"({ipvs.path} -d -t 127.0.0.1:80 -r {rs(12)})"),
        ("delete", f"{rs(13)} is out of work, deleted from 127.0.0.1:80 (web)")]
    assert ipvs.listing_calls()[-2:] == [["-d", "-t", "127.0.0.1:80", "-r", rs(12)], ["-R"]]  # read back by the -R
    with open(ipvs.calls) as handle:
        last = json.loads(handle.read().splitlines()[-1])
    assert last["stdin"][-1] == ["-Ln", "-t", "127.0.0.1:80"]  # its own last line: before, a second process


def test_changes_over_netlink_are_logged_as_lone_ipvsadms_and_a_failing_socket_hands_them_to_ipvsadm(tmp_path):
    """With the netlink door (the system's ipvsadm, table_source auto): no -R, each change its own
    message, its answer logged as a lone ipvsadm's (FAILED with its words); when the socket fails,
    that change is made by ipvsadm and the door is opened anew at the next change."""
    import socket
    import struct

    ipvs = Ipvs("fake", tmp_path)
    m, monitor, vs, said = batch_of(ipvs, tmp_path, [12])
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    monitor._system = (monitor.ipvsadm.path, True)  # as if the configured ipvsadm were the system's own
    monitor.netlink = m.IpvsNetlink(ours, 99, 1.0)
    for seq, code in ((1, 0), (2, errno.EEXIST)):  # the kernel's answers, queued: 11 added, 12 already there
        kernel.send(struct.pack("=IHHII", 36, m.NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", -code) + b"\0" * 16)
    adds = [action(m, vs, m.Change.ADD, n) for n in (11, 12)]
    report, before = m.PassReport(), len(ipvs.listing_calls())
    assert monitor._apply_batch(vs, adds, report) is None  # a message each: no -R
    assert [monitor._apply(vs, a, report)[0] for a in adds] == [True, False]
    assert said.lines == [
        ("add", f"{rs(11)} has been added to work in 127.0.0.1:80 (web) (weight 1)"),
        ("failed", f"{rs(12)} add FAILED in 127.0.0.1:80 (web): exit 255: Destination already exists "
                   f"({ipvs.path} -a -t 127.0.0.1:80 -r {rs(12)} -m -w 1)")]
    assert len(ipvs.listing_calls()) == before  # the fake ipvsadm never ran for them
    kernel.close()  # the socket fails now: ipvsadm makes the change
    delete = action(m, vs, m.Change.DELETE, 12)
    assert monitor._apply(vs, delete, report)[0] is True
    assert ipvs.listing_calls()[before:] == [["-d", "-t", "127.0.0.1:80", "-r", rs(12)]]
    assert monitor.netlink is None  # opened anew at the next change (none here: not the system's kernel)


def test_a_batch_stopped_by_a_line_that_fails_validation_is_read_back_not_assumed(tmp_path):
    """exit 2 at the second line: the first held, the later ones never ran; each is told so."""
    ipvs = Ipvs("fake", tmp_path)
    m, monitor, vs, said = batch_of(ipvs, tmp_path, [])
    bad = action(m, vs, m.Change.ADD, 12)
    bad = m.Action(bad.kind, bad.server, bad.args[:-1] + ("x",), "", 1, bad.endpoint, bad.unchanged)
    holds, report = made(m, monitor, vs, [action(m, vs, m.Change.ADD, 11), bad, action(m, vs, m.Change.ADD, 13)])
    assert holds == [True, False, False] and report.failed == 2
    assert said.lines[0] == ("add", f"{rs(11)} has been added to work in 127.0.0.1:80 (web) (weight 1)")
    assert [line for kind, line in said.lines[1:]] == [
        f"{rs(12)} add FAILED in 127.0.0.1:80 (web): exit 2: illegal weight specified "
        f"({ipvs.path} -a -t 127.0.0.1:80 -r {rs(12)} -m -w x)",
        f"{rs(13)} add FAILED in 127.0.0.1:80 (web): not run: ipvsadm -R ended at an earlier line "
        f"(exit 2: illegal weight specified) ({ipvs.path} -a -t 127.0.0.1:80 -r {rs(13)} -m -w 1)"]
    assert set(ipvs.dests("127.0.0.1:80")) == {rs(11)}


def test_a_batch_that_times_out_is_failed_when_it_cannot_be_read_back(tmp_path):
    ipvs = Ipvs("fake", tmp_path)
    m, monitor, vs, said = batch_of(ipvs, tmp_path, [], timeout=0.5)
    ipvs.fault("hang")
    holds, report = made(m, monitor, vs, [action(m, vs, m.Change.ADD, n) for n in (11, 12)])
    assert holds == [False, False] and report.failed == 2
    for (kind, line), n in zip(said.lines, (11, 12)):
        assert kind == "failed" and line.startswith(f"{rs(n)} add FAILED in 127.0.0.1:80 (web): ")
        assert "ipvsadm -R: no answer within 0.5 s; its outcome could not be read back" in line


def test_a_batch_that_times_out_is_read_back(tmp_path):
    """-R killed at its timeout after the kernel took its lines: read back, not assumed from its
    status: the add of a server there at weight 5 failed, the other held."""
    ipvs = Ipvs("fake", tmp_path)
    m, monitor, vs, said = batch_of(ipvs, tmp_path, [], timeout=3.0)
    ipvs.run("-a", "-t", "127.0.0.1:80", "-r", rs(11), "-m", "-w", "5")
    ipvs.fault("hang-restore")  # -R makes its changes, then never ends
    holds, report = made(m, monitor, vs, [action(m, vs, m.Change.ADD, 11), action(m, vs, m.Change.ADD, 12)])
    assert holds == [False, True] and report.failed == 1
    assert said.lines[0][1].startswith(f"{rs(11)} add FAILED in 127.0.0.1:80 (web): ")
    assert "ipvsadm -R: no answer within 3 s" in said.lines[0][1]  # what it said died with it
    assert said.lines[1] == ("add", f"{rs(12)} has been added to work in 127.0.0.1:80 (web) (weight 1)")


def test_dry_run_still_says_one_would_run_line_per_change(ipvs, run, backends):
    servers = [backends(ip=f"127.0.0.{11 + i}") for i in range(3)]
    monitor = run(ipvs, config("127.0.0.1:80", [b.address for b in servers], [1, 2, 3]))
    proc = monitor.once("--dry-run")
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stdout.splitlines() if "would run:" in line]
    assert len(said) == 3 and all(any(line.endswith(f"-a -t 127.0.0.1:80 -r {b.address} -m -w {w}") for line in said)
                                  for b, w in zip(servers, (1, 2, 3))), proc.stdout  # in the order results came
    assert changes(ipvs) == [] and ipvs.dests("127.0.0.1:80") == {}


def test_a_change_that_failed_is_not_made_again_in_the_same_pass(ipvs, run, backends):
    """Results are decided as they arrive, so one pass may decide a service several times: a
    change that failed in it (the fallback's add, refused) is made again next pass, not at each
    later decision of the same pass (with a hung ipvsadm, each try would cost its timeout)."""
    a, sorry = backends(ip="127.0.0.11"), backends(ip="127.0.0.13")
    late = backends(ip="127.0.0.12", mode="hang")  # never up: its result comes at the deadline, after a's
    names = [a.address, late.address]
    text = monitor_text(names, [3, 1], extra=f"fallback = {sorry.address}").replace(
        "timeout = 0.5", "timeout = 0.6")
    monitor = run(ipvs, text).start()
    wait_until(lambda: ipvs.dests("127.0.0.1:80") == {names[0]: ("Masq", 3)}, what="a in")
    ipvs.fault("fail-add")
    a.stop()  # refused at once; the hung server's timeout comes later in the same pass
    vs = "127.0.0.1:80 (web)"
    monitor.wait_log(f"{sorry.address} fallback-add FAILED in {vs}")
    start = len(ipvs.listing_calls())
    wait_until(lambda: sum(c[:1] == ["-Ln"] for c in ipvs.listing_calls()[start:]) >= 4, what="four more passes")
    monitor.stop()
    window = ipvs.listing_calls()[start:]
    passes = sum(c[:1] == ["-Ln"] for c in window)
    tries = sum(c[:1] == ["-a"] and sorry.address in c for c in window)
    assert 1 <= tries <= passes + 1, (tries, passes)  # before: two a pass (a's decision, then the late one's)
    assert set(ipvs.dests("127.0.0.1:80")) == {names[0]}  # never an empty pool
