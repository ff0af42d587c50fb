"""check = external (issue 12): a program judges a real server, as ldirectord's
checktype = external and keepalived's MISC_CHECK do.

The programs are real shell scripts written into the test's own folder (mode
0755, in a folder only root can write), run by the wave engine itself.  What
they did is read back from files they write and from /proc, never inferred
from time: a hung command is killed at its deadline with its whole process
group (a `sleep 300 &` child included), a child that holds the output pipe
does not wedge the wave, megabytes of output neither block nor fill memory,
and at most ExternalCheck.LIMIT commands run at once.  Each behaviour runs
with the pidfd (Linux 5.3+) and with the pipe-only fallback where they differ.
End to end: the monitor adds a server whose command says 0 and removes it when
it says 1, on the fake ipvsadm here and on the real kernel in the VM tier.
"""

import ipaddress
import os
import signal
import subprocess
import sys
import time

import pytest

import monitor_rs as m
from harness import MONITOR, SLOW, config, wait_until

IP = ipaddress.ip_address("127.0.0.1")
VIP = "127.0.0.1:80"


###############################################################################
# Helpers ######################################################################
###############################################################################


def script(folder, name, body):
    """A /bin/sh script in `folder` (the test's own: only root may write there), mode 0755."""
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return str(path)


def target(command, rip="127.0.0.1", dynamic_weight=False):
    """What _external_target builds for a service 10.0.0.1:80 (name web) and real server rip:80."""
    words = (command,) if isinstance(command, str) else tuple(command)
    return m.ProbeTarget("external", ipaddress.ip_address(rip), 80, "",
                         command=(*words, "10.0.0.1", "80", rip, "80"), dynamic_weight=dynamic_weight,
                         service="web")


def probe(tgt, timeout=5.0):
    """(result, seconds it took) of one probe."""
    started = time.monotonic()
    result = m.probe_all([tgt], timeout)[tgt]
    return result, time.monotonic() - started


def proc_state(pid):
    """The state letter of a process in /proc (Z: a zombie), None when there is none."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def alive(pid):
    return proc_state(pid) not in (None, "Z", "X")


def read_pid(path):
    """The pid a script wrote (it writes it first thing)."""
    return int(wait_until(lambda: path.exists() and path.read_text().strip(), what=f"pid in {path}"))


def all_gone(*pids):
    """True once none of `pids` runs (our own children reaped: no zombie of ours either)."""
    m.ExternalCheck.reap()
    return not any(alive(pid) for pid in pids) and all(proc_state(pid) is None for pid in pids
                                                        if _parent(pid) == os.getpid())


def _parent(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rpartition(")")[2].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


@pytest.fixture
def pidfiles():
    """Pid files the scripts write: whatever still runs at the end is killed (the finalizer)."""
    files = []
    yield files
    for path in files:
        try:
            pid = int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            continue
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    m.ExternalCheck.reap()


@pytest.fixture(params=["pidfd", "pipe"])
def mode(request, monkeypatch):
    """The command's end seen through a pidfd in the epoll, or (kernels before 5.3) through its pipe only."""
    if request.param == "pidfd":
        if not hasattr(os, "pidfd_open"):
            pytest.skip("no os.pidfd_open here")
        monkeypatch.setattr(m.ExternalCheck, "PIDFD", True)
    else:
        monkeypatch.setattr(m.ExternalCheck, "PIDFD", False)
    return request.param


@pytest.fixture
def kept(monkeypatch):
    """The most output bytes any external check held, seen as each one closes."""
    most = []
    close = m.ExternalCheck.close

    def recording(self):
        most.append(len(self.out))
        close(self)

    monkeypatch.setattr(m.ExternalCheck, "close", recording)
    return most


###############################################################################
# Verdicts and reasons #########################################################
###############################################################################


def test_exit_0_is_healthy(tmp_path, mode):
    result, _ = probe(target(script(tmp_path, "ok", "echo all good\nexit 0\n")))
    assert result.ok and result.reason == "exit 0: all good" and result.weight is None


@pytest.mark.parametrize("body, reason", [
    ("printf '\\n  \\n\\tdisk \\033[1mfull\\007 on /var  \\nsecond line\\n'\nexit 1\n",
     "exit 1: disk [1mfull on /var"),  # the first non-blank line, trimmed, control characters gone
    ("echo on stderr >&2\nexit 3\n", "exit 3: on stderr"),
    ("exit 4\n", "exit 4"),
    ("printf 'x%.0s' $(seq 1000)\nexit 1\n", "exit 1: " + "x" * (m.REASON_CAP - 3) + "..."),
    ("printf 'caf\\303\\251 \\342\\200\\256evil\\n'\nexit 1\n", "exit 1: café evil"),  # no bidi override
])
def test_failure_says_its_exit_code_and_first_line(tmp_path, mode, body, reason):
    result, _ = probe(target(script(tmp_path, "fail", body)))
    assert not result.ok and result.reason == reason


def test_killed_by_a_signal(tmp_path, mode):
    result, _ = probe(target(script(tmp_path, "segv", "echo about to crash\nkill -SEGV $$\n")))
    assert not result.ok and result.reason == "killed by SIGSEGV: about to crash"


def test_a_program_that_cannot_run_is_the_monitors_fault_not_the_servers(tmp_path):
    """Every server would fail alike: the wave ends with a MonitorFault, and the pass changes nothing."""
    not_executable = tmp_path / "plain"
    not_executable.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(not_executable, 0o644)
    with pytest.raises(m.MonitorFault, match=f"cannot run {not_executable}: Permission denied"):
        probe(target(str(not_executable)))
    no_interpreter = script(tmp_path, "nointerp", "")
    (tmp_path / "nointerp").write_text("#!/nonexistent/sh\nexit 0\n")
    with pytest.raises(m.MonitorFault, match=f"cannot run {no_interpreter}: No such file or directory"):
        probe(target(no_interpreter))


def test_a_check_program_gone_removes_nobody(ipvs, run, tmp_path):
    """The check program deleted (an upgrade replacing it) while every server is in: nobody is removed,
    the problem is said once, and checking resumes when the program is back."""
    says = script(tmp_path, "says", "exit 0\n")
    monitor = run(ipvs, config("127.0.0.1:80", ["127.0.0.11:80", "127.0.0.12:80"], [1, 1],
                               extra=f"check = external\ncheckcommand = {says}")).start()
    wait_until(lambda: len(ipvs.dests("127.0.0.1:80")) == 2, what="both servers in")
    os.rename(says, says + ".away")
    monitor.wait_log("probes could not run: cannot run")
    os.rename(says + ".away", says)
    monitor.wait_log("probes run again")
    assert len(ipvs.dests("127.0.0.1:80")) == 2
    assert monitor.stop()[0] == 0
    assert monitor.count("probes could not run") == 1 and monitor.count("deleted") == 0


@pytest.mark.parametrize("code, ok, weight, reason", [
    (0, True, None, "exit 0"),  # healthy at the configured weight
    (1, False, None, "exit 1"),
    (2, True, 0, "exit 2, weight 0"),
    (12, True, 10, "exit 12, weight 10"),
    (255, True, 253, "exit 255, weight 253"),
])
def test_dynamic_weight_is_the_exit_code_less_two(tmp_path, code, ok, weight, reason):
    result, _ = probe(target(script(tmp_path, "dyn", f"exit {code}\n"), dynamic_weight=True))
    assert (result.ok, result.weight, result.reason) == (ok, weight, reason)


def test_without_dynamic_weight_any_exit_but_0_fails(tmp_path):
    result, _ = probe(target(script(tmp_path, "twelve", "exit 12\n")))
    assert (result.ok, result.weight, result.reason) == (False, None, "exit 12")


###############################################################################
# Arguments, environment, stdin, session #######################################
###############################################################################


CONFIG = """
[monitor]
check = external
checkcommand = {script} --fixed "two words"

[virtual web]
vip = 127.0.0.1
vport = 80
rs = 127.0.0.2:8080

[virtual marked]
protocol = fwm
fwmark = 7
rs = 127.0.0.3
rport = 9000

[virtual six]
vip = ::1
vport = 443
rs = [::1]:8443

[virtual other port]
vip = 127.0.0.1
vport = 81
rs = 127.0.0.4:8080
checkport = 9999
"""

SPY = r"""out="{folder}/seen-$5-$6"
printf '%s\n' "$@" > "$out.args"
for name in VIP VPORT RIP RPORT SERVICE_NAME; do
    eval "printf '%s=%s\n' MONITOR_RS_$name \"\$MONITOR_RS_$name\""
done > "$out.env"
fds=$(readlink /proc/$$/fd/0 /proc/$$/fd/1 /proc/$$/fd/2)  # the shell's own, not this line's
echo "$fds" > "$out.fds"
echo $$ > "$out.pid"
cut -d' ' -f5,6 /proc/$$/stat > "$out.group"
"""


def test_arguments_environment_stdin_and_session_exactly_as_documented(tmp_path, mode):
    spy = script(tmp_path, "spy", SPY.format(folder=tmp_path))
    path = tmp_path / "monitorRS.conf"
    path.write_text(CONFIG.format(script=spy))
    conf = m.load_config(str(path))
    targets = [m.ProbeTarget.of(vs, rs.ip, rs.port) for vs in conf.services for rs in vs.servers]
    results = m.probe_all(targets, 5.0)
    assert all(r.ok for r in results.values()), results
    expected = {  # RIP RPORT: (VIP, VPORT, service name)
        ("127.0.0.2", "8080"): ("127.0.0.1", "80", "web"),
        ("127.0.0.3", "9000"): ("7", "0", "marked"),  # a firewall-mark service: the mark, port 0 (ldirectord's)
        ("::1", "8443"): ("::1", "443", "six"),  # addresses bare, no brackets
        ("127.0.0.4", "9999"): ("127.0.0.1", "81", "other port"),  # RPORT is the port checked: checkport
    }
    for (rip, rport), (vip, vport, name) in expected.items():
        def seen(what):
            return (tmp_path / f"seen-{rip}-{rport}.{what}").read_text()

        assert seen("args").splitlines() == [
            "--fixed", "two words", vip, vport, rip, rport]
        assert seen("env").splitlines() == [
            f"MONITOR_RS_VIP={vip}", f"MONITOR_RS_VPORT={vport}", f"MONITOR_RS_RIP={rip}",
            f"MONITOR_RS_RPORT={rport}", f"MONITOR_RS_SERVICE_NAME={name}"]
        stdin, stdout, stderr = seen("fds").split()
        assert stdin == "/dev/null" and stdout.startswith("pipe:") and stdout == stderr
        pid = seen("pid").strip()
        assert seen("group").split() == [pid, pid]  # its own group and session


def test_check_config_shows_the_command_run(tmp_path):
    spy = script(tmp_path, "spy", SPY.format(folder=tmp_path))
    path = tmp_path / "monitorRS.conf"
    path.write_text(CONFIG.format(script=spy))
    proc = subprocess.run([sys.executable, MONITOR, "--config", str(path), "--check-config"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"probe external:{spy} --fixed 'two words' 127.0.0.1 80 127.0.0.2 8080\n" in proc.stdout
    assert f"probe external:{spy} --fixed 'two words' 7 0 127.0.0.3 9000\n" in proc.stdout


###############################################################################
# Hangs, children, floods: every wave ends at its deadline #####################
###############################################################################


def test_a_hung_command_is_killed_at_its_deadline_with_its_whole_group(tmp_path, mode, pidfiles):
    leader, child = tmp_path / "leader", tmp_path / "child"
    pidfiles += [leader, child]
    hang = script(tmp_path, "hang", f"echo $$ > {leader}\nsleep 300 &\necho $! > {child}\nsleep 300\n")
    result, took = probe(target(hang), timeout=2.0)
    assert not result.ok and result.reason == "timeout (command)"
    assert took < 2.0 + 3 * SLOW
    pids = read_pid(leader), read_pid(child)
    wait_until(lambda: all_gone(*pids), what="the command and its sleep 300 & child gone")


def test_a_stop_request_kills_the_command_and_its_group(tmp_path, mode, pidfiles):
    leader, child = tmp_path / "leader", tmp_path / "child"
    pidfiles += [leader, child]
    hang = script(tmp_path, "hang", f"sleep 300 &\necho $! > {child}\necho $$ > {leader}\nsleep 300\n")
    started = time.monotonic()
    assert m.Wave(60.0).run([target(hang)], stop=leader.exists) is None
    assert time.monotonic() - started < 30 * SLOW  # not the 60 s deadline
    pids = read_pid(leader), read_pid(child)
    wait_until(lambda: all_gone(*pids), what="the command and its child gone after the stop")


def test_a_child_left_behind_holding_the_output_does_not_hold_the_verdict(tmp_path, mode, pidfiles):
    """The command exits, its `sleep 300 &` keeps the pipe open: with a pidfd the exit is
    the verdict at once; with the pipe only, the deadline is.  The child is killed either way."""
    child = tmp_path / "child"
    pidfiles.append(child)
    quick = script(tmp_path, "quick", f"sleep 300 &\necho $! > {child}\necho done, child left\nexit 1\n")
    result, took = probe(target(quick), timeout=3.0)
    if mode == "pidfd":
        assert result.reason == "exit 1: done, child left"
        assert took < 3.0  # its own exit, not the deadline
    else:
        assert result.reason == "timeout (command)"
    wait_until(lambda: all_gone(read_pid(child)), what="the child left behind killed")


@pytest.mark.parametrize("leader_hangs", [True, False])
def test_a_child_gone_to_its_own_session_holding_the_output_does_not_wedge_the_wave(
        tmp_path, mode, pidfiles, leader_hangs):
    """A child out of the group cannot be killed with it; our end of its pipe is closed and the wave ends."""
    child, leader = tmp_path / "child", tmp_path / "leader"
    pidfiles += [child, leader]
    body = (f"echo $$ > {leader}\nsetsid sh -c 'echo $$ > {child}; exec sleep 300' &\n"
            f"while [ ! -s {child} ]; do sleep 0.01; done\necho escaped\n"  # once it has left the group
            + ("sleep 300\n" if leader_hangs else "exit 0\n"))
    result, took = probe(target(script(tmp_path, "escape", body)), timeout=2.0)
    assert took < 2.0 + 3 * SLOW
    if leader_hangs or mode == "pipe":
        assert result.reason == "timeout (command)"
    else:
        assert result.reason == "exit 0: escaped" and took < 2.0
    escaped = read_pid(child)
    assert proc_state(escaped) is not None and os.getsid(escaped) == escaped  # it really left the group
    wait_until(lambda: all_gone(read_pid(leader)), what="the command gone")


@pytest.mark.parametrize("code", [0, 1])
def test_megabytes_of_output_neither_block_nor_fill_memory(tmp_path, mode, kept, code):
    flood = script(tmp_path, "flood", f"yes 'the first line' | head -c 12000000\nexit {code}\n")
    result, took = probe(target(flood), timeout=30.0)
    assert (result.ok, result.reason) == (code == 0, f"exit {code}: the first line")  # read to its end, in time
    assert max(kept) <= m.ExternalCheck.OUTPUT_CAP


def test_endless_output_fails_the_command_in_time(tmp_path, mode, kept, pidfiles):
    """Reading on would hold the wave (its clock counts its waits only): 14 s for a 1.5 s deadline, once."""
    leader = tmp_path / "leader"
    pidfiles.append(leader)
    result, took = probe(target(script(tmp_path, "endless", f"echo $$ > {leader}\nexec yes\n")), timeout=1.5)
    assert result.reason == "more than 16 MiB of output: y" and took < 1.5 + 3 * SLOW
    assert max(kept) <= m.ExternalCheck.OUTPUT_CAP
    wait_until(lambda: all_gone(read_pid(leader)), what="yes killed")


def test_without_a_pidfd_from_the_kernel_the_pipe_serves(tmp_path, monkeypatch):
    """ENOSYS from pidfd_open (a kernel before 5.3): the check goes on through the pipe, and so do the next."""
    monkeypatch.setattr(m.ExternalCheck, "PIDFD", True)

    def no_pidfd(pid, flags=0):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd, raising=False)
    result, _ = probe(target(script(tmp_path, "ok", "echo fine\n")))
    assert result.reason == "exit 0: fine" and m.ExternalCheck.PIDFD is False


###############################################################################
# Bounded concurrency ##########################################################
###############################################################################


COUNTER = """flock {folder}/lock sh -c 'n=$(( $(cat {folder}/count) + 1 )); echo $n > {folder}/count; echo $n >> {folder}/seen'
sleep 0.3
flock {folder}/lock sh -c 'echo $(( $(cat {folder}/count) - 1 )) > {folder}/count'
"""


def test_a_hundred_commands_run_at_most_limit_at_once(tmp_path):
    """Each command counts itself in and out under a lock: the most ever counted in is what ran at once."""
    (tmp_path / "count").write_text("0\n")
    counter = script(tmp_path, "counter", COUNTER.format(folder=tmp_path))
    targets = [target(counter, rip=f"127.0.1.{i}") for i in range(1, 101)]
    results = m.probe_all(targets, 20.0)  # each one's deadline starts when it starts, not with the wave
    assert all(r.ok for r in results.values()), {r.reason for r in results.values()}
    seen = [int(n) for n in (tmp_path / "seen").read_text().split()]
    assert len(seen) == 100 and (tmp_path / "count").read_text().strip() == "0"
    assert 1 < max(seen) <= m.ExternalCheck.LIMIT == 32


###############################################################################
# Config ########################################################################
###############################################################################


def load(tmp_path, extra, check="external"):
    path = tmp_path / "monitorRS.conf"
    path.write_text(f"[monitor]\n\n[virtual web]\nvip = 127.0.0.1\nvport = 80\nrs = 127.0.0.2\n"
                    f"check = {check}\n{extra}\n")
    return m.load_config(str(path))


@pytest.mark.parametrize("extra, why", [
    ("", "checkcommand = '': required with check = external"),
    ("checkcommand = bin/check", "a relative path: give an absolute path, or a program name found in PATH"),
    ("checkcommand = /nonexistent/check", "/nonexistent/check: not found"),
    ("checkcommand = no-such-program-anywhere", "no-such-program-anywhere: not found in PATH"),
    ("checkcommand = /bin/true 'unclosed", "cannot split into a command: No closing quotation"),
    ("checkcommand = /bin/true a\x1bb", "control character (NUL, escape, ...) in the command"),
    ("checkcommand = ''", "no program named"),
    ("checkcommand = /bin/true\ndynamic_weight = maybe", "must be yes or no"),
])
def test_a_bad_checkcommand_is_one_clear_line(tmp_path, extra, why):
    with pytest.raises(m.ConfigError) as caught:
        load(tmp_path, extra)
    assert why in str(caught.value) and "\n" not in str(caught.value)


def test_a_program_not_executable_is_refused(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    os.chmod(plain, 0o644)
    with pytest.raises(m.ConfigError, match="plain: not an executable file"):
        load(tmp_path, f"checkcommand = {plain}")


def test_a_bare_name_is_found_once_in_path_and_the_words_kept(tmp_path):
    (vs,) = load(tmp_path, "checkcommand = true --a 'b c'\ndynamic_weight = yes").services
    assert vs.checkcommand[1:] == ("--a", "b c") and os.path.isabs(vs.checkcommand[0])
    assert os.path.basename(vs.checkcommand[0]) == "true" and vs.dynamic_weight is True


def test_a_udp_service_may_be_checked_by_a_command(tmp_path):
    path = tmp_path / "monitorRS.conf"
    path.write_text("[monitor]\n[virtual dns]\nprotocol = udp\nvip = 127.0.0.1\nvport = 53\nrs = 127.0.0.2\n"
                    "check = external\ncheckcommand = /bin/true\n")
    (vs,) = m.load_config(str(path)).services
    assert vs.check == "external" and vs.protocol == "udp"


@pytest.mark.skipif(os.geteuid() != 0, reason="root refuses what others can change")
def test_as_root_a_command_others_can_change_is_refused_with_exit_2(tmp_path):
    folder = tmp_path / "open"
    folder.mkdir()
    os.chmod(folder, 0o777)
    check = script(folder, "check", "exit 0\n")
    path = tmp_path / "monitorRS.conf"
    path.write_text(f"[monitor]\n[virtual web]\nvip = 127.0.0.1\nvport = 80\nrs = 127.0.0.2\n"
                    f"check = external\ncheckcommand = {check}\n")
    proc = subprocess.run([sys.executable, MONITOR, "--config", str(path), "--check-config"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert f"{check}: not run as root, others can change it: {folder} is writable by its group and others (mode 0777)" in proc.stderr


###############################################################################
# End to end ####################################################################
###############################################################################


SAYS = """state=$(cat {folder}/state-$3 2>/dev/null || echo 1)
echo "state file says $state"
exit $state
"""


def test_end_to_end_added_when_the_command_says_0_removed_when_it_says_1(any_ipvs, run, tmp_path):
    """On the fake ipvsadm here, on the kernel's IPVS in the VM tier."""
    ipvs = any_ipvs
    ipvs.service(VIP)
    a, b = "127.0.0.11:80", "127.0.0.12:80"
    for server in ("127.0.0.11", "127.0.0.12"):
        (tmp_path / f"state-{server}").write_text("0\n")
    says = script(tmp_path, "says", SAYS.format(folder=tmp_path))
    monitor = run(ipvs, config(VIP, [a, b], [3, 1], extra=f"check = external\ncheckcommand = {says}")).start()
    wait_until(lambda: ipvs.dests(VIP) == {a: ("Masq", 3), b: ("Masq", 1)}, what="both servers added")
    (tmp_path / "state-127.0.0.12").write_text("1\n")
    wait_until(lambda: set(ipvs.dests(VIP)) == {a}, what="the server whose command says 1 removed")
    (tmp_path / "state-127.0.0.12").write_text("0\n")
    wait_until(lambda: ipvs.dests(VIP).get(b) == ("Masq", 1), what="back when it says 0 again")
    assert monitor.stop()[0] == 0
    assert monitor.count(f"{b} is down in 127.0.0.1:80 (web): exit 1: state file says 1") == 1


def test_end_to_end_dynamic_weight_sets_the_weight_in_ipvs(ipvs, run, tmp_path):
    """Exit 12 = healthy at weight 10; exit 0 = back to the configured weight; exit 1 = removed."""
    a = "127.0.0.11:80"
    (tmp_path / "state-127.0.0.11").write_text("12\n")
    says = script(tmp_path, "says", SAYS.format(folder=tmp_path))
    monitor = run(ipvs, config(VIP, [a], [3], extra=f"check = external\ncheckcommand = {says}\n"
                                                    "dynamic_weight = yes")).start()
    wait_until(lambda: a in ipvs.dests(VIP), what="the server added")
    wait_until(lambda: ipvs.dests(VIP)[a] == ("Masq", 10), timeout=5, what="weight 10 (exit 12)")
    (tmp_path / "state-127.0.0.11").write_text("0\n")
    wait_until(lambda: ipvs.dests(VIP)[a] == ("Masq", 3), timeout=5, what="the configured weight (exit 0)")
    (tmp_path / "state-127.0.0.11").write_text("1\n")
    wait_until(lambda: a not in ipvs.dests(VIP), timeout=5, what="removed (exit 1)")
    assert monitor.stop()[0] == 0
