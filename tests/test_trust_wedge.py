"""Trust (issue 11): a wedged helper must not wedge the monitor; a console that
cannot be written must not stop monitoring; the contrib files work as shipped.

1. ipvsadm behind a wrapper that does not `exec` (or that starts a child such
   as modprobe): at its timeout or a stop request the whole process group is
   killed, every wait after that is bounded, and monitoring goes on.  (The
   harness's own wrapper execs, which hides this.)
2. stdout on a full disk (/dev/full), a pipe nobody reads, a terminal gone:
   said once on stderr, console output stops, monitoring goes on, exit 0.
3. cron's PATH lacks /usr/sbin and /sbin, where Debian puts ipvsadm.
4. contrib/monitor-rs.service and contrib/crontab.
"""

import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

import monitor_rs as m
from harness import ROOT, SLOW, config, processes_with_env, wait_until
from test_hardening import monitor_keys, table

VIP = "127.0.0.1:80"


###############################################################################
# 1. A wedged ipvsadm ##########################################################
###############################################################################


class Wrapper:
    """An ipvsadm that is a sh script running the harness's ipvsadm WITHOUT exec.

    While `on()` is in force, every call first leaves a background `sleep 300`
    that inherits its stdout and stderr: in the call's process group, or
    (escaped=True) in a session of its own, out of reach of a group kill.
    The wrapper and every process it starts carry `marker` in their environment."""

    def __init__(self, tmp_path, ipvs):
        self.ipvs = ipvs
        self.marker = f"WEDGE_TEST_{uuid.uuid4().hex}"
        self.switch = tmp_path / "wedge-on"
        self.path = str(tmp_path / "wedge-ipvsadm")
        with open(self.path, "w") as handle:
            handle.write(
                "#!/bin/sh\n"  # first into its own environment (which /proc shows), by re-running itself
                f"[ -z \"$WEDGE_TEST\" ] && WEDGE_TEST='{self.marker}' exec \"$0\" \"$@\"\n"
                f"if [ -e '{self.switch}' ]; then $(cat '{self.switch}') sleep 300 & fi\n"
                f"'{ipvs.path}' \"$@\"\n")  # no exec: the fake is a child of this shell
        os.chmod(self.path, 0o755)

    def on(self, hang=True, escaped=False):
        self.switch.write_text("setsid env WEDGE_ESCAPED=1" if escaped else "")
        self.ipvs.fault("hang" if hang else "")

    def off(self):
        self.ipvs.fault("")
        self.switch.unlink()

    def processes(self, escaped=False):
        """PIDs of the processes the wrapper started (those that escaped its group, or the others)."""
        found = []
        for pid in processes_with_env(self.marker):
            try:
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    if (b"WEDGE_ESCAPED=1" in handle.read()) == escaped:
                        found.append(pid)
            except OSError:
                pass
        return found

    def cleanup(self):
        for pid in processes_with_env(self.marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def wrapper(tmp_path, ipvs):
    made = Wrapper(tmp_path, ipvs)
    yield made
    made.cleanup()


def start_two(ipvs, run, backends, wrapper, ipvsadm_timeout=1):
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    text = monitor_keys(config(VIP, [a.address, b.address], interval=0.1, timeout=0.3),
                        ipvsadm_timeout=ipvsadm_timeout)
    monitor = run(ipvs, text, "--ipvsadm", wrapper.path).start()
    wait_until(lambda: table(ipvs) == {a.address: 1, b.address: 2}, what="a and b added")
    return monitor, a, b


def stop_promptly(monitor, within=3.0):
    """SIGTERM; the monitor must exit 0 within `within` seconds (times SLOW)."""
    sent = time.monotonic()
    monitor.signal(signal.SIGTERM)
    try:
        code = monitor.proc.wait(timeout=within * SLOW)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"SIGTERM ignored: still running {within * SLOW:g} s later") from None
    _, err = monitor.proc.communicate(timeout=5)
    assert code == 0, err
    assert "Traceback" not in err
    return time.monotonic() - sent


def test_a_hung_ipvsadm_behind_a_wrapper_that_does_not_exec_is_killed_with_its_group(ipvs, run, backends, wrapper):
    """The wrapper hangs in the fake, and a child of it holds the pipes too: killing the
    wrapper alone left the monitor waiting for the pipes forever (no passes, SIGTERM ignored)."""
    monitor, a, b = start_two(ipvs, run, backends, wrapper)
    logged = len(monitor.lines())
    wrapper.on(hang=True)
    b.stop()  # dies while ipvsadm hangs
    hits = a.hits
    wait_until(lambda: a.hits >= hits + 3, what="3 passes while ipvsadm hangs")  # old: none after the 1st hang
    assert b.address in table(ipvs), "b deleted on the strength of an unanswered listing"
    problems = [line for line in monitor.lines()[logged:] if "no change made to it" in line]
    assert len(problems) == 1 and "no answer within 1 s" in problems[0], problems
    # Each call's whole group was killed at its timeout: at most the call under way is alive.
    assert len(wrapper.processes()) <= 4, "wrapper processes pile up"  # sh, fake, sleep (, cat) of one call

    wrapper.off()
    wait_until(lambda: table(ipvs) == {a.address: 1}, what="b taken out once ipvsadm answers again")
    assert stop_promptly(monitor) < 3 * SLOW
    wait_until(lambda: wrapper.processes() == [], timeout=5, what="no process of the wrapper's group left")


def test_sigterm_during_a_hung_ipvsadm_behind_a_wrapper_that_does_not_exec(ipvs, run, backends, wrapper):
    """A stop request kills the whole group of the listing under way, and exits 0 at once
    (ipvsadm_timeout = 20 s is not waited for)."""
    monitor, a, b = start_two(ipvs, run, backends, wrapper, ipvsadm_timeout=20)
    wrapper.on(hang=True)
    wait_until(lambda: len(wrapper.processes()) >= 3, what="a hung listing with its child")  # sh, fake, sleep
    stop_promptly(monitor)
    wait_until(lambda: wrapper.processes() == [], timeout=5, what="no process of the wrapper's group left")
    assert table(ipvs) == {a.address: 1, b.address: 2}


def test_pipes_held_by_a_process_outside_the_group_are_given_up(ipvs, run, backends, wrapper):
    """ipvsadm answers and exits, but a child that left its process group keeps stdout open:
    after the timeout and a short grace our ends are closed and the pass goes on, with a
    one-line reason; the next passes do the same, SIGTERM still stops at once."""
    monitor, a, b = start_two(ipvs, run, backends, wrapper)
    logged = len(monitor.lines())
    wrapper.on(hang=False, escaped=True)
    # a pass lasts about an interval: the one that read the table before the wrapper turned may act
    # on it until it ends; b fails once a pass has met the held pipes
    wait_until(lambda: any("no change made to it" in line for line in monitor.lines()[logged:]),
               what="a pass meeting the held pipes")
    b.stop()
    hits = a.hits
    wait_until(lambda: a.hits >= hits + 3, what="3 passes while the pipes are held")  # old: blocked 300 s
    problems = [line for line in monitor.lines()[logged:] if "no change made to it" in line]
    assert len(problems) == 1, problems
    assert "its output was still open after 1 s" in problems[0], problems
    assert "held by a process outside its process group: given up" in problems[0], problems
    assert b.address in table(ipvs)
    assert wrapper.processes(escaped=True), "the test's escaped holder is gone: nothing was tested"

    wrapper.off()
    wait_until(lambda: table(ipvs) == {a.address: 1}, what="b taken out once ipvsadm answers cleanly")
    stop_promptly(monitor)
    wait_until(lambda: wrapper.processes() == [], timeout=5, what="no process of the wrapper's group left")


def test_ipvsadm_run_kills_the_group_and_bounds_the_wait(tmp_path):
    """Ipvsadm.run directly: a non-exec wrapper whose child holds the pipes returns at
    timeout + grace with TIMED_OUT, and leaves no process of its group."""
    marker = f"WEDGE_TEST_{uuid.uuid4().hex}"
    script = tmp_path / "ipvsadm"
    script.write_text(f"#!/bin/sh\n[ -z \"$WEDGE_TEST\" ] && WEDGE_TEST='{marker}' exec \"$0\" \"$@\"\n"
                      "sleep 300 &\nsleep 300\n")
    os.chmod(script, 0o755)
    try:
        began = time.monotonic()
        result = m.Ipvsadm(str(script), 0.5).run(["-Ln"])
        took = time.monotonic() - began
        assert result.returncode == m.TIMED_OUT
        assert result.why() == f"{script} -Ln: no answer within 0.5 s"
        assert took < 0.5 + m.KILL_GRACE + 1 * SLOW
        wait_until(lambda: processes_with_env(marker) == [], timeout=5, what="the group killed")
        began = time.monotonic()
        stopped = m.Ipvsadm(str(script), 60).run(["-Ln"], stop=lambda: time.monotonic() > began + 0.3)
        assert stopped.returncode == m.STOPPED
        assert time.monotonic() - began < 0.3 + m.KILL_GRACE + 1 * SLOW
        wait_until(lambda: processes_with_env(marker) == [], timeout=5, what="the group killed")
    finally:
        for pid in processes_with_env(marker):
            os.kill(pid, signal.SIGKILL)


class _StubbornHook:
    """A hook process that SIGKILL does not end at once (uninterruptible sleep)."""

    args = ["/bin/hook"]
    pid = 999999999  # no such process group

    def poll(self):
        return None

    def wait(self, timeout=None):
        if timeout is None:
            raise AssertionError("waited without a bound for a killed on_change command")
        raise subprocess.TimeoutExpired(self.args, timeout)


def test_a_killed_on_change_command_is_waited_for_a_bounded_time():
    said = []
    output = m.Output(m.LogFile(None), echo=False)
    output.say = lambda message, kind="info", log=True: said.append(message)
    hooks = m.Hooks(output)
    hooks.running.append((_StubbornHook(), time.monotonic() - 1, "127.0.0.11:80"))
    hooks.reap()
    assert hooks.running == []
    assert said == [f"127.0.0.11:80 on_change /bin/hook killed after {m.Hooks.TIMEOUT:g} s"]


###############################################################################
# 2. A console that cannot be written ###########################################
###############################################################################


def start_with_stdout(monitor, stdout, **kw):
    monitor.proc = subprocess.Popen(monitor.argv, stdout=stdout, stderr=subprocess.PIPE, text=True, **kw)
    return monitor


def take_out_and_put_back(monitor, ipvs, a, b):
    """b dies and comes back: the monitor follows, as its log says."""
    b.stop()
    wait_until(lambda: table(ipvs) == {a.address: 1}, what="b taken out")
    b.start()
    wait_until(lambda: table(ipvs) == {a.address: 1, b.address: 2}, what="b put back")
    monitor.wait_log(f"{b.address} has been added", count=2)
    assert monitor.count(f"{b.address} is out of work") == 1


def stopped_cleanly(monitor):
    monitor.signal(signal.SIGTERM)
    code = monitor.proc.wait(timeout=10 * SLOW)
    err = monitor.proc.stderr.read()
    assert code == 0, err
    assert "Traceback" not in err
    monitor.wait_log("monitor_rs stopped")
    return err


def two_backends(backends):
    return backends(ip="127.0.0.11"), backends(ip="127.0.0.12")


def test_stdout_on_a_full_disk_does_not_stop_monitoring(ipvs, run, backends):
    """nohup monitor-rs > /root/RSout.file on a full disk: exit 1 at the first message."""
    a, b = two_backends(backends)
    monitor = run(ipvs, config(VIP, [a.address, b.address], interval=0.1, timeout=0.3))
    with open("/dev/full", "w") as full:
        start_with_stdout(monitor, full)
    wait_until(lambda: table(ipvs) == {a.address: 1, b.address: 2}, what="a and b added")
    take_out_and_put_back(monitor, ipvs, a, b)
    err = stopped_cleanly(monitor)
    assert err.count("cannot write to stdout") == 1, err
    assert "No space left on device" in err and "monitoring goes on" in err, err


def test_stdout_and_stderr_on_a_full_disk_do_not_stop_monitoring(ipvs, run, backends):
    """The README's `> /root/RSout.file 2>&1`: stderr is full too, nothing can be said."""
    a, b = two_backends(backends)
    monitor = run(ipvs, config(VIP, [a.address, b.address], interval=0.1, timeout=0.3))
    with open("/dev/full", "w") as full:
        monitor.proc = subprocess.Popen(monitor.argv, stdout=full, stderr=full)
    wait_until(lambda: table(ipvs) == {a.address: 1, b.address: 2}, what="a and b added")
    take_out_and_put_back(monitor, ipvs, a, b)
    monitor.signal(signal.SIGTERM)
    assert monitor.proc.wait(timeout=10 * SLOW) == 0  # not 1 (the first message), not 120 (the exit flush)
    monitor.wait_log("monitor_rs stopped")


def test_stdout_a_pipe_nobody_reads_does_not_stop_monitoring(ipvs, run, backends):
    """`monitor-rs | head -1`, or a logger that died: BrokenPipeError (Python ignores SIGPIPE)."""
    a, b = two_backends(backends)
    monitor = run(ipvs, config(VIP, [a.address, b.address], interval=0.1, timeout=0.3))
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        start_with_stdout(monitor, write_end)
    finally:
        os.close(write_end)
    wait_until(lambda: table(ipvs) == {a.address: 1, b.address: 2}, what="a and b added")
    take_out_and_put_back(monitor, ipvs, a, b)
    err = stopped_cleanly(monitor)
    assert err.count("cannot write to stdout") == 1 and "Broken pipe" in err, err


def test_a_terminal_that_goes_away_does_not_stop_monitoring(ipvs, run, backends):
    """The rich console and the live table on a terminal; the terminal is closed (EIO)."""
    a, b = two_backends(backends)
    monitor = run(ipvs, config(VIP, [a.address, b.address], interval=0.1, timeout=0.3))
    master, slave = pty.openpty()
    seen, closing = [], threading.Event()

    def drain():  # read the terminal until it is closed, so that the monitor never blocks on it
        while not closing.is_set():
            if select.select([master], [], [], 0.05)[0]:
                try:
                    seen.append(os.read(master, 65536))
                except OSError:
                    return

    reader = threading.Thread(target=drain, daemon=True)
    try:
        # A session of its own: the terminal is not its controlling terminal (no SIGHUP).
        start_with_stdout(monitor, slave, start_new_session=True)
    finally:
        os.close(slave)
    reader.start()
    wait_until(lambda: table(ipvs) == {a.address: 1, b.address: 2}, what="a and b added")
    wait_until(lambda: b"Weight" in b"".join(seen), what="the live table on the terminal")
    closing.set()
    reader.join(timeout=5)
    os.close(master)  # the terminal goes away: writes to it fail with EIO
    take_out_and_put_back(monitor, ipvs, a, b)
    err = stopped_cleanly(monitor)
    assert err.count("cannot write to stdout") == 1, err


@pytest.mark.parametrize("failure", ["full", "pipe", "closed"])
def test_once_exits_with_its_normal_code_when_stdout_fails(failure, ipvs, run, backends):
    """--once prints its table at the end: 0 when every change succeeded (not 1, not 120), 1 when one
    failed.  Started with stdout closed (`>&-`), it has no stdout at all (was: a traceback, exit 1)."""
    a, c = backends(ip="127.0.0.11"), backends(ip="127.0.0.13")

    def once(monitor):
        argv = monitor.argv + ["--once"]
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            with open("/dev/full", "w") as full:
                stdout = {"full": full, "pipe": write_end, "closed": None}[failure]
                if failure == "closed":
                    argv = ["sh", "-c", 'exec "$@" >&-', "sh", *argv]
                proc = subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60 * SLOW)
        finally:
            os.close(write_end)
        assert "Traceback" not in proc.stderr
        assert proc.stderr.count("cannot write to stdout") == (failure != "closed"), proc.stderr
        return proc

    proc = once(run(ipvs, config(VIP, [a.address])))
    assert proc.returncode == 0, proc.stderr
    assert table(ipvs) == {a.address: 1}
    ipvs.fault("fail-add")
    proc = once(run(ipvs, config(VIP, [a.address, c.address]), name="two.conf"))
    assert proc.returncode == 1, proc.stderr
    assert table(ipvs) == {a.address: 1}


###############################################################################
# 3. cron's PATH ###############################################################
###############################################################################


def test_the_sbin_folders_are_searched_by_default():
    assert "/usr/sbin" in m.SBIN_DIRS and "/sbin" in m.SBIN_DIRS


def test_a_bare_ipvsadm_not_on_path_is_found_in_the_sbin_folders(tmp_path, monkeypatch):
    sbin, elsewhere = tmp_path / "sbin", tmp_path / "bin"
    sbin.mkdir()
    elsewhere.mkdir()
    program = sbin / "ipvsadm"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setattr(m, "SBIN_DIRS", (str(tmp_path / "none"), str(sbin)))
    monkeypatch.setenv("PATH", f"{elsewhere}:/usr/bin:/bin")  # cron's
    assert m.find_program("ipvsadm") == str(program)
    assert m.Ipvsadm("ipvsadm").path == str(program)  # what the monitor runs, at start and at reload
    assert m.find_program("./ipvsadm") == "./ipvsadm"  # a path is taken as given
    assert m.find_program("ipvsadm-none") == "ipvsadm-none"  # nowhere: its error names it as configured
    on_path = elsewhere / "ipvsadm"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    assert m.find_program("ipvsadm") == "ipvsadm"  # PATH first, as before
    program.chmod(0o644)
    on_path.unlink()
    assert m.find_program("ipvsadm") == "ipvsadm"  # not executable: not taken


def test_cron_path_starts_the_monitor_with_ipvsadm_in_an_sbin_folder(ipvs, run, backends, tmp_path):
    """contrib/crontab's @reboot line under cron's PATH=/usr/bin:/bin, with the default
    `ipvsadm` setting: was exit 4, 'ipvsadm: not found'."""
    a = backends(ip="127.0.0.11")
    monitor = run(ipvs, config(VIP, [a.address]))
    sbin = os.path.dirname(ipvs.path)  # holds the fake as `ipvsadm`
    argv = [arg for arg in monitor.argv[2:] if arg not in ("--ipvsadm", ipvs.path)]
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); import monitor_rs as m; "
            f"m.SBIN_DIRS = ({sbin!r},); m.main()")
    proc = subprocess.run([sys.executable, "-c", code, *argv, "--once"], capture_output=True, text=True,
                          env=dict(os.environ, PATH="/usr/bin:/bin"), timeout=60 * SLOW)
    assert proc.returncode == 0, proc.stderr
    assert table(ipvs) == {a.address: 1}


###############################################################################
# 4. contrib ###################################################################
###############################################################################


def unit_settings(text):
    """{key: [values]} of a systemd unit's [Service] section (keys may repeat)."""
    settings, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_does_not_restart_what_a_restart_cannot_heal():
    """Exit 2 (config), 3 (another monitor), 4 (no ipvsadm or IPVS): without IPVS systemd
    restarted it every 2 s."""
    with open(os.path.join(ROOT, "contrib", "monitor-rs.service")) as handle:
        service = unit_settings(handle.read())
    prevented = " ".join(service["RestartPreventExitStatus"]).split()
    assert {"2", "3", "4"} <= set(prevented), prevented
    assert service["RuntimeDirectory"] == ["monitor_rs"]  # the lock and the state file live there
    assert service["RuntimeDirectoryPreserve"] == ["yes"]


def test_crontab_sets_a_path_with_the_sbin_folders():
    with open(os.path.join(ROOT, "contrib", "crontab")) as handle:
        lines = [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]
    (path,) = [line for line in lines if line.startswith("PATH=")]
    reboot = [i for i, line in enumerate(lines) if line.startswith("@reboot")]
    assert reboot and lines.index(path) < reboot[0], "PATH must come before the @reboot line"
    folders = path.split("=", 1)[1].split(":")
    assert "/usr/sbin" in folders and "/sbin" in folders, folders
