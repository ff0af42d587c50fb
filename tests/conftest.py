import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from backends import Backend  # noqa: E402
from harness import Ipvs, Monitor, processes_with_env  # noqa: E402

VIP = "127.0.0.1:80"


@pytest.fixture
def backends():
    """Start Backend servers; all are stopped at the end of the test."""
    started = []

    def make(*args, **kwargs):
        backend = Backend(*args, **kwargs)
        started.append(backend)
        return backend

    yield make
    for backend in started:
        backend.stop()


@pytest.fixture
def ipvs(tmp_path):
    """The fake ipvsadm, with the virtual service VIP defined (test_e2e overrides this)."""
    table = Ipvs("fake", tmp_path)
    table.service(VIP)
    yield table
    # A monitor killed (not stopped) in the middle of a hung ipvsadm call leaves that call behind.
    for pid in processes_with_env(table.state):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


KERNEL = os.environ.get("MONITOR_RS_IPVS") == "1"


@pytest.fixture(params=[
    "fake",
    pytest.param("kernel", marks=[pytest.mark.ipvs, pytest.mark.skipif(
        not KERNEL, reason="needs the real kernel IPVS: runs inside the VM (tests/vm/run)")]),
])
def any_ipvs(request, tmp_path):
    """An empty IPVS table: the fake here, and the kernel's inside the VM (tests/vm/run)."""
    table = Ipvs(request.param, tmp_path)
    yield table
    table.close()


@pytest.fixture
def run(tmp_path):
    """Make monitors (not started); each is killed at the end of the test if still running."""
    started = []

    def make(ipvs, text, *extra, **kw):
        monitor = Monitor(tmp_path, ipvs, text, *extra, **kw)
        started.append(monitor)
        return monitor

    yield make
    for monitor in started:
        monitor.kill()
