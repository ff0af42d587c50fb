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

    monkeypatch.setattr(m.tempfile, "mkstemp", mkstemp_then_swap)
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
    assert proc.returncode == 1, (proc.returncode, proc.stderr)  # as for a lock that cannot be taken
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
