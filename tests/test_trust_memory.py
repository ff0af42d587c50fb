"""Trust (issue 11), with the fake's faults: a change that fails is made again
until it holds, a failed fallback add never empties the pool, and the memory
of an earlier run is not taken from a state file others can write.

End to end: monitor_rs.py as a subprocess, real servers on 127.0.0.x, the
table read back through ipvsadm.  The scenarios that need no fault run on the
real kernel too, in tests/test_e2e.py.
"""

import json
import os
import signal
import uuid

import pytest

import monitor_rs as m
from harness import config, processes_with_env, wait_until

VIP = "127.0.0.1:80"


def calls(ipvs, *head):
    """The ipvsadm calls made so far that begin with `head` (the first argv words)."""
    return [c for c in ipvs.listing_calls() if tuple(c[:len(head)]) == head]


def test_a_weight_restore_that_fails_is_made_again(ipvs, run, backends):
    """Before: a failed restore was forgotten; the server stayed at weight 0 while up."""
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    monitor = run(ipvs, config(VIP, [a.address, b.address], [4, 2], extra="quiescent = yes")).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 4), b.address: ("Masq", 2)}, what="both in")
    a.stop()
    wait_until(lambda: ipvs.dests(VIP)[a.address] == ("Masq", 0), what="a quiesced")
    ipvs.fault("fail-edit")
    a.start()
    monitor.wait_log(f"{a.address} restore FAILED in {VIP} (web): exit 255: No such destination")
    ipvs.fault("")
    wait_until(lambda: ipvs.dests(VIP)[a.address] == ("Masq", 4), what="a restored to 4 without a restart")
    monitor.wait_log(f"{a.address} weight restored to 4 in {VIP} (web)")
    assert monitor.stop()[0] == 0


def test_a_reweight_that_fails_is_made_again(ipvs, run, backends):
    """A changed rw that fails to reach the table (SIGHUP) is tried again next pass."""
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    monitor = run(ipvs, config(VIP, [a.address, b.address], [3, 2])).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3), b.address: ("Masq", 2)}, what="both in")
    ipvs.fault("fail-edit")
    monitor.config.write_text(config(VIP, [a.address, b.address], [5, 2]))
    monitor.signal(signal.SIGHUP)
    monitor.wait_log(f"{a.address} reweight FAILED in {VIP} (web): exit 255: No such destination")
    tried = len(calls(ipvs, "-e"))
    wait_until(lambda: len(calls(ipvs, "-e")) >= tried + 2, what="two more tries")
    ipvs.fault("")
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 5), b.address: ("Masq", 2)}, what="a at 5")
    assert monitor.stop()[0] == 0
    assert monitor.count("taken as set by hand") == 0


def test_a_failed_fallback_add_does_not_empty_the_pool(ipvs, run, backends):
    """Before: the last server was deleted although the fallback could not be added."""
    a, sorry = backends(ip="127.0.0.11"), backends(ip="127.0.0.99")
    monitor = run(ipvs, config(VIP, [a.address], [3], extra=f"fallback = {sorry.address}")).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3)}, what="a in, no fallback")
    ipvs.fault("fail-add")
    a.stop()
    monitor.wait_log(f"{sorry.address} fallback-add FAILED in {VIP} (web)")
    tried = len(calls(ipvs, "-a"))
    wait_until(lambda: len(calls(ipvs, "-a")) >= tried + 3, what="three more passes trying the fallback")
    assert ipvs.dests(VIP) == {a.address: ("Masq", 3)}  # down, but the pool is not emptied
    held = f"{a.address} left in {VIP} (web) although down: the fallback could not be added (the pool would be empty)"
    assert monitor.count(held) == 1  # said once while it lasts
    assert monitor.count("is out of work") == 0
    ipvs.fault("")
    wait_until(lambda: ipvs.dests(VIP) == {sorry.address: ("Masq", 1)}, what="the fallback in, then a out")
    assert monitor.stop()[0] == 0
    lines = monitor.lines()
    added = next(i for i, line in enumerate(lines) if "fallback added" in line)
    deleted = next(i for i, line in enumerate(lines) if f"{a.address} is out of work, deleted" in line)
    assert added < deleted


@pytest.mark.parametrize("mode, trusted", [(0o644, True), (0o664, False), (0o666, False)])
def test_the_memory_is_taken_only_from_a_state_file_nobody_else_may_write(ipvs, run, backends, mode, trusted):
    """A state file others may write could make the monitor raise any weight at 0: it is not read.
    (0o644, as the monitor writes it, is read: before, nothing was, and the server stayed at 0.)
    Unread, the monitor has no memory: in a quiescent service it takes a 0 for its own quiesce."""
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    monitor = run(ipvs, config(VIP, [a.address, b.address], [4, 2], extra="quiescent = yes")).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 4), b.address: ("Masq", 2)}, what="both in")
    a.stop()
    wait_until(lambda: (monitor.server_state(a.address) or {}).get("quiesced"), what="a quiesced in the state file")
    assert monitor.stop()[0] == 0
    os.chmod(monitor.state, mode)
    a.start()
    monitor.start()
    if trusted:
        wait_until(lambda: ipvs.dests(VIP)[a.address] == ("Masq", 4), what="a restored to 4")
    else:
        wait_until(lambda: (monitor.server_state(a.address, monitor.proc.pid) or {}).get("good_streak", 0) >= 3,
                   what="three passes of the new monitor with a up")
        wait_until(lambda: ipvs.dests(VIP)[a.address] == ("Masq", 4), what="a restored to 4, without memory")
        assert monitor.count("remembered from the last run") == 0
    assert monitor.stop()[0] == 0


def test_the_fallback_stays_while_the_server_coming_back_cannot_be_added(ipvs, run, backends):
    """Before: the fallback left as soon as a server was up, although its add failed: an empty pool."""
    a, sorry = backends(ip="127.0.0.11"), backends(ip="127.0.0.99")
    monitor = run(ipvs, config(VIP, [a.address], [3], extra=f"fallback = {sorry.address}")).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3)}, what="a in, no fallback")
    a.stop()
    wait_until(lambda: ipvs.dests(VIP) == {sorry.address: ("Masq", 1)}, what="the fallback in, a out")
    ipvs.fault("fail-add")
    a.start()
    monitor.wait_log(f"{a.address} add FAILED in {VIP} (web)")
    tried = len(calls(ipvs, "-a"))
    wait_until(lambda: len(calls(ipvs, "-a")) >= tried + 3, what="three more passes trying a")
    assert ipvs.dests(VIP) == {sorry.address: ("Masq", 1)}  # not an empty pool
    assert monitor.count(f"{sorry.address} fallback left in {VIP} (web): no real server could be put back") == 1
    ipvs.fault("")
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 3)}, what="a in, then the fallback out")
    assert monitor.stop()[0] == 0


# A quiesce that took effect while the monitor could not know it (ipvsadm timed
# out after the kernel took it; the monitor killed before the pass's state file
# went out) is still the monitor's: the change's weight is kept as "tried" (and
# written beside the state file before the change is made), so the 0 it finds
# next is not taken for an operator's drain.


@pytest.fixture
def slow_quiesce(tmp_path, ipvs):
    """An ipvsadm that, while `on` exists, makes a `-e ... -w 0` and then hangs 30 s."""
    marker = f"SLOW_QUIESCE_{uuid.uuid4().hex}"
    on = tmp_path / "slow-on"
    path = tmp_path / "slow-ipvsadm"
    path.write_text("#!/bin/sh\n"
                    f"SLOW_QUIESCE='{marker}'; export SLOW_QUIESCE\n"
                    f"'{ipvs.path}' \"$@\"; rc=$?\n"
                    f"if [ -e '{on}' ]; then case \" $* \" in *' -e '*' -w 0 '*) sleep 30;; esac; fi\n"
                    "exit $rc\n")
    path.chmod(0o755)
    yield str(path), on
    for pid in processes_with_env(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def quiesce_that_hangs(ipvs, run, backends, slow_quiesce, monitor_section=""):
    path, on = slow_quiesce
    a, b = backends(ip="127.0.0.11"), backends(ip="127.0.0.12")
    text = config(VIP, [a.address, b.address], [4, 2], extra="quiescent = yes").replace(
        "[monitor]\n", "[monitor]\n" + monitor_section)
    monitor = run(ipvs, text, "--ipvsadm", path).start()
    wait_until(lambda: ipvs.dests(VIP) == {a.address: ("Masq", 4), b.address: ("Masq", 2)}, what="both in")
    on.write_text("")
    a.stop()
    wait_until(lambda: ipvs.dests(VIP)[a.address] == ("Masq", 0), what="a at 0 in the table")
    return monitor, a, on


def restored_once_up(ipvs, monitor, a):
    a.start()
    wait_until(lambda: (monitor.server_state(a.address, monitor.proc.pid) or {}).get("good_streak", 0) >= 3,
               what="three passes with a up")
    weight = ipvs.dests(VIP)[a.address]
    monitor.stop()
    assert weight == ("Masq", 4), "\n".join(monitor.lines())


def test_a_quiesce_that_held_but_timed_out_is_still_the_monitors(ipvs, run, backends, slow_quiesce):
    monitor, a, on = quiesce_that_hangs(ipvs, run, backends, slow_quiesce, "ipvsadm_timeout = 1\n")
    monitor.wait_log(f"{a.address} quiesce FAILED in {VIP} (web)")
    on.unlink()
    restored_once_up(ipvs, monitor, a)


def test_a_quiesce_made_just_before_a_crash_is_still_the_monitors(ipvs, run, backends, slow_quiesce):
    monitor, a, on = quiesce_that_hangs(ipvs, run, backends, slow_quiesce)
    monitor.kill()  # SIGKILL (the OOM killer, a crash) after the change, before the pass's state file
    on.unlink()
    monitor.start()
    restored_once_up(ipvs, monitor, a)


def test_a_state_file_of_version_1_0_0_gives_its_quiesced_servers(tmp_path):
    """The first start after an upgrade from 1.0.0 (state in /run/monitor_rs-<hash>.state.json, a
    "quiesced" field, no memory): its quiesced servers are the monitor's, restored when up."""
    old = tmp_path / "old.state.json"
    old.write_text(json.dumps({"services": [{"protocol": "tcp", "address": VIP, "servers": [
        {"server": "127.0.0.11:8080", "quiesced": True}, {"server": "127.0.0.12:8080", "quiesced": False}]}]}))
    os.chmod(old, 0o644)
    memory = m.read_memory(str(old))
    assert memory[("tcp", VIP, "127.0.0.11:8080")] == m.Health(up=False, quiesced=True)
    assert memory[("tcp", VIP, "127.0.0.12:8080")] == m.Health()
    digest = m.default_run_path(str(tmp_path / "monitorRS.conf"), "x").rsplit("/", 1)[1].split(".")[0]
    assert m.legacy_state_path(str(tmp_path / "monitorRS.conf")) == f"/run/monitor_rs-{digest}.state.json"


def test_the_intent_adds_to_the_state_files_unconfirmed_changes(tmp_path):
    """A quiesce unconfirmed in the state file, then a restore written ahead and the monitor killed:
    both weights are the monitor's own when it starts again (the intent never replaces the first)."""
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"services": [{"protocol": "tcp", "address": VIP, "servers": [
        {"server": "127.0.0.11:8080", "memory": {"quiesced": False, "weight": 3, "operator": None,
                                                 "tried": [0]}}]}]}))
    os.chmod(state, 0o644)
    m.write_intent(str(state), {("tcp", VIP, "127.0.0.11:8080"): 3})
    (h,) = m.read_memory(str(state)).values()
    assert h.tried == (0, 3) and h.weight == 3
    with open(str(state) + m.INTENT, "w") as handle:
        handle.write('{"tried": [["tcp", "x", "y"], "junk", ["tcp", "' + VIP + '", "127.0.0.11:8080", 5]]}')
    (h,) = m.read_memory(str(state)).values()  # what cannot be read is skipped, not all of it
    assert h.tried == (0, 5)
