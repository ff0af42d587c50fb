"""The per-server hot paths made cheaper (issue 14) give what the plain code gave (hypothesis):
decide's Health copy, the hashes of Endpoint and ProbeTarget."""

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

import monitor_rs as m


healths = st.builds(m.Health, up=st.sampled_from([None, True, False]), good=st.integers(0, 5), bad=st.integers(0, 5),
                    quiesced=st.booleans(), kept=st.booleans(), weight=st.none() | st.integers(0, 9),
                    operator=st.none() | st.integers(0, 9), tried=st.lists(st.integers(0, 9), max_size=2).map(tuple),
                    asked=st.none() | st.integers(0, 9), reason=st.text(max_size=3), since=st.floats(0, 1e9),
                    held=st.sampled_from(["", m.MAINTENANCE]))


@settings(max_examples=300, deadline=None)
@given(h=healths, other=healths, names=st.sets(st.sampled_from(sorted(m._HEALTH_FIELDS))))
def test_the_quick_health_copy_is_dataclasses_replace(h, other, names):
    """decide's _evolve (a copy of the __dict__) gives what dataclasses.replace gives: the same fields,
    equal, hashed alike, still frozen; the original untouched."""
    import dataclasses
    changes = {name: getattr(other, name) for name in names}
    before = dataclasses.astuple(h)
    quick, slow = m._evolve(h, **changes), dataclasses.replace(h, **changes)
    assert type(quick) is m.Health and quick == slow and hash(quick) == hash(slow)
    assert dataclasses.astuple(quick) == dataclasses.astuple(slow) and vars(quick) == vars(slow)
    assert dataclasses.astuple(h) == before
    try:
        quick.up = True
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("a Health copied by _evolve is not frozen")


@settings(max_examples=300, deadline=None)
@given(a=st.integers(0, 2 ** 32 - 1), b=st.integers(0, 2 ** 32 - 1), port=st.integers(0, 65535), six=st.booleans())
def test_endpoints_equal_as_parsed_are_one_dictionary_key(a, b, port, six):
    """Endpoint's own hash (its integer address and port): an endpoint parsed again finds the entry
    of the one parsed first; IPv4 and IPv6 of the same integer stay two endpoints."""
    make = ipaddress.IPv6Address if six else ipaddress.IPv4Address
    first, again = m.Endpoint(make(a), port), m.parse_address(str(m.Endpoint(make(a), port)))
    table = {first: "first", m.Endpoint(ipaddress.IPv6Address(a) if not six else ipaddress.IPv4Address(a % 2 ** 32),
                                        port): "other family"}
    assert again == first and hash(again) == hash(first) and table[again] == "first"
    assert (m.Endpoint(make(b), port) in table) == (b == a)


@settings(max_examples=200, deadline=None)
@given(a=st.integers(0, 2 ** 32 - 1), b=st.integers(0, 2 ** 32 - 1), port=st.integers(1, 65535),
       timeouts=st.tuples(st.none() | st.sampled_from([0.5, 1.0]), st.none() | st.sampled_from([0.5, 1.0])),
       checks=st.tuples(st.sampled_from(["tcp", "http"]), st.sampled_from(["tcp", "http"])))
def test_probe_targets_hash_once_as_their_fields_compare(a, b, port, timeouts, checks):
    """ProbeTarget's own hash (address as an integer, port, check, timeout): equal targets made apart
    are one key, unequal ones two."""
    one = m.ProbeTarget(checks[0], ipaddress.IPv4Address(a), port, timeout=timeouts[0])
    two = m.ProbeTarget(checks[1], ipaddress.IPv4Address(b), port, timeout=timeouts[1])
    table = {one: "one"}
    assert (two in table) == (one == two) == (a == b and timeouts[0] == timeouts[1] and checks[0] == checks[1])
    assert hash(m.ProbeTarget(checks[0], ipaddress.IPv4Address(a), port, timeout=timeouts[0])) == hash(one)
    assert one == m.ProbeTarget(**{f.name: getattr(one, f.name) for f in __import__("dataclasses").fields(one)})


def test_the_import_leaves_to_first_use_what_the_first_probe_does_not_need():
    """Start fast: importing the module (what the console script does) loads neither subprocess,
    tempfile, shutil (bz2, lzma) nor queue; a fresh interpreter, so that no other test loaded them."""
    import subprocess
    import sys
    code = ("import sys; import monitor_rs; "
            "print(' '.join(m for m in ('subprocess', 'tempfile', 'shutil', 'queue', 'bz2', 'lzma') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=str(__import__("pathlib").Path(m.__file__).parent))
    assert done.stdout.split() == []


def test_which_finds_what_shutil_which_finds(tmp_path, monkeypatch):
    """The module's own `which` (shutil not loaded at start) answers as shutil.which: the first runnable
    file on the path, a name with a slash as it is, not a folder, not a file without x, an empty PATH."""
    import os
    import shutil
    first, second, folder = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (first, second, folder):
        d.mkdir()
    (first / "tool").write_text("")  # not runnable: skipped
    (second / "tool").write_text("#!/bin/sh\n")
    (second / "tool").chmod(0o755)
    (folder / "tool").mkdir()  # a folder by that name
    (first / "other").write_text("")
    path = os.pathsep.join(map(str, (folder, first, second)))
    for name in ("tool", "other", "absent", str(second / "tool"), str(first / "tool"), str(folder / "tool")):
        assert m.which(name, path=path) == shutil.which(name, path=path), name
        monkeypatch.setenv("PATH", path)
        assert m.which(name) == shutil.which(name), name
        monkeypatch.setenv("PATH", "")
        assert m.which(name) == shutil.which(name), name
    assert m.which("tool", path=path) == str(second / "tool")
