"""Trust (issue 11): the files root writes, the programs root runs, where the state lives.

Run as root (as on a director, and as these tests run here): every attack is
made for real -- symlinks to a victim file, a config or a program others can
write, a swap of a temporary name -- and the victim is checked byte for byte.
What a non-root operator sees is checked in a child process that has really
become uid 65534 (nobody): `as_nobody` forks, drops to that user, and sends
back what the function returned.

1. write_atomically sets the mode through the descriptor: a swapped temp name
   never makes root chmod another file.
2. The lock and the log are never opened through a symlink.
3. The default lock and state live in RUN_DIR (/run/monitor_rs), else in a
   private folder of a non-root monitor's own; --status finds a root
   monitor's state whoever asks.
4. read_state: a PID that exists but is not ours is alive.
5. As root: a config, an on_change program or an ipvsadm that others can
   write is refused (exit 2, one line), and nothing is run or changed.
6. Control characters in on_change / ipvsadm are refused at load; a hook that
   cannot start never stops the pass.
"""

import dataclasses
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import monitor_rs as m
from harness import ROOT, SLOW, config, wait_until

VIP = "127.0.0.1:80"
NOBODY = 65534
VICTIM = b"precious: root's own file\n"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are on what root does")


###############################################################################
# Helpers ######################################################################
###############################################################################


def as_nobody(function, env=None):
    """Run `function` in a forked child that is uid/gid 65534 (with `env` changes to its
    environment: a value None removes the variable); return what it returned (JSON-able)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            for key, value in (env or {}).items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            try:
                answer = {"ok": function()}
            except BaseException as exc:  # noqa: B902 -- reported to the parent
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            with os.fdopen(write_end, "w") as handle:
                handle.write(json.dumps(answer))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as handle:
        data = handle.read()
    os.waitpid(pid, 0)
    answer = json.loads(data)
    if "error" in answer:
        raise AssertionError(f"in the child as nobody: {answer['error']}")
    return answer["ok"]


def fake_table(ipvs):
    """{'RIP:PORT': weight} of VIP, read from the fake's state file."""
    try:
        with open(ipvs.state) as handle:
            state = json.load(handle)
    except FileNotFoundError:
        return {}
    for svc in state["services"]:
        if f"{svc['addr']}:{svc['port']}" == VIP:
            return {f"{d['addr']}:{d['port']}": d["weight"] for d in svc["dests"]}
    return {}


def changes(ipvs):
    if not os.path.exists(ipvs.calls):
        return []
    with open(ipvs.calls) as handle:
        calls = [json.loads(line)["argv"] for line in handle if line.strip()]
    return [argv for argv in calls if argv[:1] in (["-a"], ["-d"], ["-e"])]


def victim(folder, mode=0o600):
    path = folder / "victim"
    path.write_bytes(VICTIM)
    os.chmod(path, mode)
    return path


def one_line_refusal(proc, *words):
    """Exit 2, exactly one line on stderr, `monitor_rs: ...`, naming `words`."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("monitor_rs: ") and proc.stderr.count("\n") == 1, proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


def with_run_dir(run_dir, *args):
    """argv of monitor_rs.py (this worktree's) with RUN_DIR moved to `run_dir`."""
    prelude = (f"import sys; sys.path.insert(0, {ROOT!r}); import monitor_rs as m; m.RUN_DIR = {run_dir!r}; "
               "m.main()")
    return [sys.executable, "-c", prelude, *args]


class Said(m.Output):
    """An Output that keeps what was said, as (kind, message)."""

    def __init__(self):
        super().__init__(m.LogFile(None), None, to_log=False, echo=False)
        self.lines = []

    def say(self, message, kind="info", log=True):
        self.lines.append((kind, message))


@pytest.fixture
def shared():
    """A folder in /tmp that nobody may read (0755, root's): for what a non-root operator reads."""
    folder = tempfile.mkdtemp(prefix="monitor_rs-trust-")
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


###############################################################################
# 1. write_atomically: the mode through the descriptor ########################
###############################################################################


def test_write_atomically_never_chmods_through_a_swapped_temp_name(tmp_path, monkeypatch):
    """The folder of state_file / prometheus_file may be someone else's: that user can swap the
    temp name for a symlink the moment it exists.  Here the swap is made before anything else is
    done with the name (the worst case, no race to win): the victim keeps its mode and bytes."""
    other = tmp_path / "root-only"
    other.mkdir()
    target = victim(other, 0o600)
    theirs = tmp_path / "their-folder"
    theirs.mkdir()
    real_mkstemp = tempfile.mkstemp

    def mkstemp_then_swap(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        os.unlink(name)
        os.symlink(target, name)  # the other user's move
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_then_swap)
    m.write_atomically(str(theirs / "state.json"), "{}\n")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600, "root made the victim 0644"
    assert target.read_bytes() == VICTIM


def test_write_atomically_gives_0644_whatever_the_umask(tmp_path):
    """The mode is still set (readers such as --status of another user and node_exporter need it)."""
    old = os.umask(0o077)
    try:
        m.write_atomically(str(tmp_path / "state.json"), "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "state.json").st_mode) == 0o644
    assert (tmp_path / "state.json").read_text() == "{}\n"
    assert os.listdir(tmp_path) == ["state.json"]  # no temp file left behind


###############################################################################
# 2. The lock and the log: never through a symlink ############################
###############################################################################


def test_a_symlinked_lock_is_refused_and_its_target_untouched(ipvs, run, backends, tmp_path):
    a = backends(ip="127.0.0.11")
    target = victim(tmp_path)
    monitor = run(ipvs, config(VIP, [a.address]))
    os.symlink(target, monitor.lock)
    proc = monitor.once()
    assert proc.returncode == m.EXIT_NO_LOCK, (proc.returncode, proc.stderr)  # as for a lock that cannot be taken
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("monitor_rs: cannot take the lock ")
    assert "symlink" in proc.stderr, proc.stderr
    assert target.read_bytes() == VICTIM, "root truncated the file the lock pointed to"
    assert changes(ipvs) == []


def test_take_lock_refuses_a_symlink_and_what_is_no_regular_file(tmp_path):
    target = victim(tmp_path)
    os.symlink(target, tmp_path / "lock")
    with pytest.raises(OSError, match="symlink"):
        m.take_lock(str(tmp_path / "lock"))
    assert target.read_bytes() == VICTIM
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="not a regular file"):
        m.take_lock(str(tmp_path / "fifo"))


def test_a_symlinked_log_is_not_followed_and_monitoring_goes_on(ipvs, run, backends, tmp_path):
    a = backends(ip="127.0.0.11")
    target = victim(tmp_path)
    monitor = run(ipvs, config(VIP, [a.address]))
    os.symlink(target, monitor.log)
    proc = monitor.once()
    assert proc.returncode == 0, proc.stderr
    assert fake_table(ipvs) == {a.address: 1}, "the pass still did its work"
    problems = [line for line in proc.stderr.splitlines() if "cannot write log" in line]
    assert len(problems) == 1 and "symlink" in problems[0] and "monitoring goes on" in problems[0], proc.stderr
    assert target.read_bytes() == VICTIM, "root appended to the file the log pointed to"


def test_log_file_never_opens_a_fifo(tmp_path):
    """A FIFO at the log's name would block the monitor on open: refused, said once."""
    os.mkfifo(tmp_path / "log")
    said = []
    log = m.LogFile(str(tmp_path / "log"), warn=said.append)
    writer = threading.Thread(target=lambda: (log.write("one"), log.write("two")), daemon=True)
    writer.start()
    writer.join(10 * SLOW)
    try:
        assert not writer.is_alive(), "the monitor hung opening the log"
    finally:
        os.close(os.open(tmp_path / "log", os.O_RDONLY | os.O_NONBLOCK))  # sets a hung writer free
    assert len(said) == 1 and "cannot write log" in said[0] and "monitoring goes on" in said[0], said


###############################################################################
# 3. One place for the default lock and state, whoever asks ###################
###############################################################################


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """RUN_DIR moved to a folder of the test (never the machine's /run/monitor_rs)."""
    base = tmp_path / "run"
    base.mkdir()
    os.chmod(tmp_path, 0o755)  # nobody may look, as in /run
    folder = str(base / "monitor_rs")
    monkeypatch.setattr(m, "RUN_DIR", folder)
    return folder


def test_default_lock_and_state_of_root_are_in_run_dir_named_by_the_config(run_dir, tmp_path):
    conf = tmp_path / "monitorRS.conf"
    digest = m.default_run_path(str(conf), "lock")[len(run_dir) + 1:-len(".lock")]
    assert m.default_run_path(str(conf), "lock") == os.path.join(run_dir, f"{digest}.lock")
    assert m.default_run_path(str(conf), "state.json") == os.path.join(run_dir, f"{digest}.state.json")
    assert len(digest) == 10 and digest != os.path.basename(m.default_run_path(str(tmp_path / "other.conf"),
                                                                                 "lock"))[:10]


def test_root_creates_run_dir_0755_and_refuses_one_it_cannot_trust(run_dir, tmp_path):
    old = os.umask(0o077)
    try:
        assert m.make_run_dir(run_dir) == ""
    finally:
        os.umask(old)
    st = os.lstat(run_dir)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755
    assert m.make_run_dir(run_dir) == ""  # there already: fine
    os.chown(run_dir, NOBODY, NOBODY)
    assert "owned by uid 65534" in m.make_run_dir(run_dir)
    os.chown(run_dir, 0, 0)
    os.chmod(run_dir, 0o777)
    assert "writable by others" in m.make_run_dir(run_dir)
    os.rmdir(run_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, run_dir)
    assert "is a symlink" in m.make_run_dir(run_dir)


def test_a_root_monitor_with_a_symlinked_run_dir_exits_with_one_line(run_dir, ipvs, backends, tmp_path):
    """The same refusal end to end, with the default lock and state (no --lock-file / --state-file)."""
    a = backends(ip="127.0.0.11")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, run_dir)
    conf = tmp_path / "monitorRS.conf"
    conf.write_text(config(VIP, [a.address]))
    proc = subprocess.run(with_run_dir(run_dir, "--config", str(conf), "--ipvsadm", ipvs.path, "--log-file", "",
                                       "--once"), capture_output=True, text=True, timeout=60 * SLOW)
    assert proc.returncode == m.EXIT_NO_LOCK and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"monitor_rs: {run_dir} is a symlink"), proc.stderr
    assert os.listdir(elsewhere) == [] and changes(ipvs) == []


def test_a_default_state_file_in_a_symlinked_run_dir_is_not_written_and_said_once(run_dir, tmp_path):
    """The state file's folder is made and checked when it is first written (a monitor that stops at
    its first pass, e.g. without ipvsadm, makes none): refused, said once, monitoring goes on."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, run_dir)
    said = []
    publisher = m.Publisher(said.append)
    snap = {"services": [], "time": 0, "pass_seconds": 0}
    for _ in range(3):
        publisher.publish(snap, os.path.join(run_dir, "0123456789.state.json"), "")
    assert len(said) == 1 and "is a symlink" in said[0] and "monitoring goes on" in said[0], said
    assert os.listdir(elsewhere) == []


def test_a_non_root_monitor_uses_a_private_folder_of_its_own(run_dir, shared):
    """Not /tmp/monitor_rs-<hash>.lock, a name anyone could have made first: $XDG_RUNTIME_DIR/monitor_rs,
    else /tmp/monitor_rs-<uid>, created 0700 and checked."""
    xdg = Path(shared) / "xdg"
    xdg.mkdir(mode=0o700)
    os.chown(xdg, NOBODY, NOBODY)
    conf = os.path.join(shared, "monitorRS.conf")

    def child():
        lock = m.default_run_path(conf, "lock")
        made = m.make_run_dir(os.path.dirname(lock))
        st = os.lstat(os.path.dirname(lock))
        return [lock, made, st.st_uid, stat.S_IMODE(st.st_mode), m.run_dirs()]

    lock, made, uid, mode, dirs = as_nobody(child, {"XDG_RUNTIME_DIR": str(xdg)})
    assert os.path.dirname(lock) == str(xdg / "monitor_rs") and made == "" and (uid, mode) == (NOBODY, 0o700)
    assert dirs == [run_dir, str(xdg / "monitor_rs")]  # --status looks at a root monitor's first
    assert as_nobody(m.private_run_dir, {"XDG_RUNTIME_DIR": None}) == f"/tmp/monitor_rs-{NOBODY}"


@pytest.mark.parametrize("plant", ["root's", "0755", "symlink"])
def test_a_non_root_monitor_never_trusts_a_private_folder_it_did_not_make_right(plant, run_dir, shared):
    xdg = Path(shared) / "xdg"
    xdg.mkdir()
    os.chmod(xdg, 0o777)  # say anyone could plant things there
    folder = xdg / "monitor_rs"
    if plant == "root's":
        folder.mkdir(mode=0o700)
    elif plant == "0755":
        folder.mkdir(mode=0o755)
        os.chown(folder, NOBODY, NOBODY)
    else:
        target = Path(shared) / "target"
        target.mkdir(mode=0o700)
        os.chown(target, NOBODY, NOBODY)
        os.symlink(target, folder)
    why = as_nobody(lambda: m.make_run_dir(str(folder)), {"XDG_RUNTIME_DIR": str(xdg)})
    assert why.endswith("refusing it") and str(folder) in why, why


def test_status_by_a_non_root_operator_shows_the_root_monitor(shared, ipvs, backends, monkeypatch):
    """The monitor runs as root with the default state file; an operator (here: nobody) asks
    --status: the answer is that monitor's state, not 'no running monitor' and probes of its own."""
    run_dir = os.path.join(shared, "run", "monitor_rs")
    os.mkdir(os.path.dirname(run_dir), 0o755)
    monkeypatch.setattr(m, "RUN_DIR", run_dir)
    xdg = os.path.join(shared, "xdg")
    os.mkdir(xdg, 0o700)
    os.chown(xdg, NOBODY, NOBODY)
    a = backends(ip="127.0.0.11")
    conf = os.path.join(shared, "monitorRS.conf")
    with open(conf, "w") as handle:
        handle.write(config(VIP, [a.address], interval=0.3))
    os.chmod(conf, 0o644)
    log = os.path.join(shared, "monitor.log")
    proc = subprocess.Popen(with_run_dir(run_dir, "--config", conf, "--ipvsadm", ipvs.path, "--log-file", log),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        state = m.default_run_path(conf, "state.json")
        assert os.path.dirname(state) == run_dir
        wait_until(lambda: os.path.exists(state), what="the root monitor's state file in RUN_DIR")

        def status():
            out = io.StringIO()
            sys.stdout = out
            try:
                m.main(["--config", conf, "--status", "--json"])
            except SystemExit:
                pass
            finally:
                sys.stdout = sys.__stdout__
            return json.loads(out.getvalue())

        snap = as_nobody(status, {"XDG_RUNTIME_DIR": xdg})
        assert snap["source"] == "monitor" and snap["pid"] == proc.pid, snap
        assert os.listdir(xdg) == []  # asking made nothing
    finally:
        proc.terminate()
        proc.communicate(timeout=30 * SLOW)


def test_explicit_lock_and_state_file_still_win(run_dir, tmp_path):
    conf = tmp_path / "monitorRS.conf"
    conf.write_text(config(VIP, ["127.0.0.11:8080"]).replace(
        "[monitor]\n", f"[monitor]\nlock = {tmp_path}/my.lock\nstate_file = {tmp_path}/my.state\n"))
    cfg = m.load_config(str(conf))
    assert (cfg.lock, cfg.state_file) == (f"{tmp_path}/my.lock", f"{tmp_path}/my.state")
    assert m.state_files(cfg) == [f"{tmp_path}/my.state"]
    conf.write_text(config(VIP, ["127.0.0.11:8080"]))
    cfg = m.load_config(str(conf))
    assert os.path.dirname(cfg.lock) == run_dir and m.state_files(cfg) == [cfg.state_file]
    assert not os.path.exists(run_dir)  # loading a config (--check-config, the fuzzers) creates nothing


###############################################################################
# 4. read_state: a PID that is not ours is alive ##############################
###############################################################################


def state_of(path, pid):
    path.write_text(json.dumps({"pid": pid, "time": time.time(), "interval": 3, "services": []}))
    os.chmod(path, 0o644)
    return str(path)


def test_read_state_of_a_root_monitor_asked_by_another_user(shared):
    """kill(pid, 0) says EPERM for a root process asked by nobody: alive, not dead."""
    path = state_of(Path(shared) / "state.json", os.getpid())  # this (root) process: alive
    snap = as_nobody(lambda: m.read_state(path, time.time()))
    assert snap is not None and snap["pid"] == os.getpid()


@pytest.mark.parametrize("pid", [0, -1])
def test_read_state_with_a_pid_that_names_a_group_is_no_monitor(pid, tmp_path):
    """kill(0, 0) and kill(-1, 0) succeed (they ask about groups): not a sign of a running monitor."""
    assert m.read_state(state_of(tmp_path / "state.json", pid), time.time()) is None


###############################################################################
# 5. As root: no config, hook or ipvsadm that others can write ################
###############################################################################


def hook_script(folder, marker):
    path = folder / "hook.sh"
    path.write_text(f"#!/bin/sh\necho ran >> '{marker}'\n")
    os.chmod(path, 0o755)
    return path


@pytest.mark.parametrize("how", ["mode 666", "owned by nobody", "through a symlink to a 666 file"])
def test_a_config_others_can_write_is_refused(how, ipvs, run, backends, tmp_path):
    a = backends(ip="127.0.0.11")
    marker = tmp_path / "hook-ran"
    hook = hook_script(tmp_path, marker)
    monitor = run(ipvs, config(VIP, [a.address], extra=f"on_change = {hook}"))
    if how == "mode 666":
        os.chmod(monitor.config, 0o666)
    elif how == "owned by nobody":
        os.chown(monitor.config, NOBODY, NOBODY)
    else:
        real = tmp_path / "real.conf"
        os.rename(monitor.config, real)
        os.chmod(real, 0o666)
        os.symlink(real, monitor.config)
    proc = monitor.once()
    one_line_refusal(proc, "not read as root", "others can change it")
    assert changes(ipvs) == [] and not marker.exists()
    one_line_refusal(subprocess.run(monitor.argv + ["--check-config"], capture_output=True, text=True,
                                    timeout=60 * SLOW), "not read as root")


def test_an_on_change_program_others_can_write_is_refused(ipvs, run, backends, tmp_path):
    a = backends(ip="127.0.0.11")
    marker = tmp_path / "hook-ran"
    hook = hook_script(tmp_path, marker)
    os.chmod(hook, 0o757)  # o+w
    monitor = run(ipvs, config(VIP, [a.address], extra=f"on_change = {hook} --arg"))
    one_line_refusal(monitor.once(), "on_change", f"{hook} is writable by others (mode 0757)")
    assert changes(ipvs) == [] and not marker.exists()
    one_line_refusal(subprocess.run(monitor.argv + ["--check-config"], capture_output=True, text=True,
                                    timeout=60 * SLOW), "on_change")


def test_an_on_change_program_found_through_path_in_an_open_folder_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "bin"
    folder.mkdir()
    os.chmod(folder, 0o777)  # no sticky bit
    hook_script(folder, tmp_path / "marker").rename(folder / "my-hook")
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    conf = tmp_path / "c.conf"
    conf.write_text(config(VIP, ["127.0.0.11:8080"], extra="on_change = my-hook"))
    with pytest.raises(m.ConfigError, match=r"on_change = 'my-hook': my-hook: .* writable by"):
        m.load_config(str(conf))


@pytest.mark.parametrize("where", ["--ipvsadm", "config key"])
def test_an_ipvsadm_in_a_folder_others_can_write_is_refused(where, ipvs, run, backends, tmp_path):
    a = backends(ip="127.0.0.11")
    folder = tmp_path / "open"
    folder.mkdir()
    os.chmod(folder, 0o777)  # o+w, no sticky bit: anyone may put another ipvsadm there
    wrapper = folder / "ipvsadm"
    wrapper.write_text(f"#!/bin/sh\nexec '{ipvs.path}' \"$@\"\n")
    os.chmod(wrapper, 0o755)
    text = config(VIP, [a.address])
    if where == "config key":
        text = text.replace("[monitor]\n", f"[monitor]\nipvsadm = {wrapper}\n")
    monitor = run(ipvs, text)
    at = monitor.argv.index("--ipvsadm")
    if where == "config key":
        del monitor.argv[at:at + 2]
    else:
        monitor.argv[at + 1] = str(wrapper)
    one_line_refusal(monitor.once(), "ipvsadm", f"{folder} is writable by")
    assert ipvs.listing_calls() == [["-A", "-t", VIP, "-s", "wrr"]]  # the test's own: not even a listing
    one_line_refusal(subprocess.run(monitor.argv + ["--check-config"], capture_output=True, text=True,
                                    timeout=60 * SLOW), "ipvsadm")


def test_a_clean_config_hook_and_ipvsadm_are_accepted_even_in_a_sticky_folder(ipvs, run, backends, tmp_path):
    """The same as above, owned by root, written by no one else: runs.  A sticky world-writable
    folder (as /tmp) is fine: others cannot replace what root owns there."""
    a = backends(ip="127.0.0.11")
    folder = tmp_path / "sticky"
    folder.mkdir()
    os.chmod(folder, 0o1777)
    wrapper = folder / "ipvsadm"
    wrapper.write_text(f"#!/bin/sh\nexec '{ipvs.path}' \"$@\"\n")
    os.chmod(wrapper, 0o755)
    marker = tmp_path / "hook-ran"
    hook = hook_script(folder, marker)
    monitor = run(ipvs, config(VIP, [a.address], extra=f"on_change = {hook}"))
    monitor.argv[monitor.argv.index("--ipvsadm") + 1] = str(wrapper)
    proc = monitor.once()
    assert proc.returncode == 0, proc.stderr
    assert fake_table(ipvs) == {a.address: 1}
    wait_until(lambda: marker.exists(), what="the hook ran")


def test_unsafe_path_walks_every_folder_and_symlink(tmp_path):
    base = tmp_path / "t"
    base.mkdir()
    (base / "f").write_text("x")
    assert m.unsafe_path(str(base / "f")) == ""
    os.chmod(base / "f", 0o620)
    assert "writable by its group (mode 0620)" in m.unsafe_path(str(base / "f"))
    os.chmod(base / "f", 0o644)
    sticky = base / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    os.symlink(base / "f", sticky / "link")
    assert m.unsafe_path(str(sticky / "link")) == ""  # root's link to root's file
    os.lchown(sticky / "link", NOBODY, NOBODY)  # someone else's link in a sticky folder: they may repoint it
    assert "symlink" in m.unsafe_path(str(sticky / "link")) and "uid 65534" in m.unsafe_path(str(sticky / "link"))
    open_dir = base / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    os.symlink(base / "f", base / "via")
    os.symlink("../f", open_dir / "rel")  # the target is safe, the folder of the link is not
    assert f"{open_dir} is writable by" in m.unsafe_path(str(base / "open" / "rel"))
    assert m.unsafe_path(str(base / "via")) == ""
    (open_dir / "sub").mkdir()
    (open_dir / "f").write_text("x")
    os.symlink(open_dir / "sub", base / "lnk")  # lnk/.. is the open folder, not base
    assert f"{open_dir} is writable by" in m.unsafe_path(str(base / "lnk" / ".." / "f"))
    assert m.unsafe_path(str(base / "missing")) == ""  # no one else can put it there: left to its open
    assert f"{sticky} is writable by" in m.unsafe_path(str(sticky / "missing"))  # anyone may create it later
    assert f"{sticky} is writable by" in m.unsafe_path(str(sticky / "no" / "such"))


def test_a_program_not_there_yet_in_a_folder_anyone_may_write_is_refused(ipvs, run, backends, tmp_path):
    """A hook or ipvsadm path that does not exist yet in /tmp (sticky) is not "not found" for ever:
    anyone may create it, and root would run it.  A name not found through PATH is left as it was."""
    a = backends(ip="127.0.0.11")
    folder = tmp_path / "sticky"
    folder.mkdir()
    os.chmod(folder, 0o1777)
    monitor = run(ipvs, config(VIP, [a.address], extra=f"on_change = {folder}/later-hook"))
    one_line_refusal(monitor.once(), "on_change", f"{folder} is writable by")
    monitor = run(ipvs, config(VIP, [a.address]), name="second.conf")
    monitor.argv[monitor.argv.index("--ipvsadm") + 1] = str(folder / "later-ipvsadm")
    one_line_refusal(monitor.once(), "ipvsadm", f"{folder} is writable by")
    assert m.unsafe_program("no-such-program-anywhere") == ""
    assert changes(ipvs) == []


def test_not_root_checks_nothing(tmp_path, monkeypatch):
    """The checks guard what root runs; an ordinary user may run their own files."""
    conf = tmp_path / "c.conf"
    conf.write_text(config(VIP, ["127.0.0.11:8080"]))
    os.chmod(conf, 0o666)
    monkeypatch.setattr(m.os, "geteuid", lambda: 1000)
    assert m.load_config(str(conf)).services


###############################################################################
# 6. Control characters; a hook that cannot start ############################
###############################################################################


@pytest.mark.parametrize("key, value", [("on_change", "/bin/true\x00x"), ("on_change", "/bin/true 'a\x1bb'"),
                                        ("on_change", "'/bin/tr\n  ue'"), ("ipvsadm", "/sbin/ipvs\x00adm"),
                                        ("ipvsadm", "ipvsadm\x1b[31m")])
def test_control_characters_in_programs_are_refused_naming_the_key(key, value, tmp_path):
    conf = tmp_path / "c.conf"
    text = config(VIP, ["127.0.0.11:8080"])
    if key == "ipvsadm":
        text = text.replace("[monitor]\n", f"[monitor]\nipvsadm = {value}\n")
    else:
        text += f"on_change = {value}\n"
    conf.write_text(text)
    with pytest.raises(m.ConfigError) as info:
        m.load_config(str(conf))
    message = str(info.value)
    assert f"] {key} = " in message and "control character" in message and "\n" not in message, message


def test_a_hook_that_cannot_start_is_said_and_never_raises(tmp_path):
    said = Said()
    hooks = m.Hooks(said)
    (tmp_path / "c.conf").write_text(config(VIP, ["127.0.0.11:8080"]))
    vs = m.load_config(str(tmp_path / "c.conf")).services[0]
    event = m.Event("127.0.0.11:8080", "down", "refused")
    hooks.start(("/bin/true\x00x",), vs, event)  # NUL: ValueError from exec
    hooks.start((str(tmp_path / "missing"),), vs, event)  # OSError
    assert [kind for kind, _ in said.lines] == ["failed", "failed"], said.lines
    assert "could not start" in said.lines[0][1] and "\x00" not in said.lines[0][1]
    assert hooks.running == []


def test_a_pass_makes_its_changes_when_a_hook_cannot_start(ipvs, backends, tmp_path):
    """Before: the hook's ValueError ended the pass before its changes, and every pass after."""
    a = backends(ip="127.0.0.11")
    (tmp_path / "c.conf").write_text(config(VIP, [a.address]))
    cfg = m.load_config(str(tmp_path / "c.conf"))
    vs = dataclasses.replace(cfg.services[0], on_change=("/bin/true\x00x",))  # past the config's check
    said = Said()
    monitor = m.Monitor(dataclasses.replace(cfg, services=(vs,)), m.Ipvsadm(ipvs.path), said)
    report = monitor.run_pass()
    assert report.ok and fake_table(ipvs) == {a.address: 1}
    assert sum("could not start" in message for _, message in said.lines) == 1, said.lines
