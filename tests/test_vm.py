"""The real-kernel tier: boots a VM with IPVS once and runs the `ipvs` tests in it.

Outside CI, a machine that cannot run the VM (no root to install QEMU, no
kernel image) skips this with the reason; in CI (CI=true) that is a failure.
"""

import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
VM_FAILED = 3  # tests/vm/run: the VM tier itself failed (tools, boot, IPVS setup)


@pytest.mark.ipvs
@pytest.mark.skipif(os.environ.get("MONITOR_RS_IPVS") == "1", reason="already inside the VM")
def test_real_kernel_tier_in_a_vm():
    env = dict(os.environ, VM_PYTHON=sys.executable)
    proc = subprocess.run([os.path.join(HERE, "vm", "run"), "-m", "ipvs", "-rA", HERE],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          timeout=3600)
    print(proc.stdout)  # shown by pytest on failure, and with -s
    if proc.returncode == VM_FAILED and os.environ.get("CI") != "true":
        pytest.skip("the VM tier could not run here (tests/vm/run said why):\n" + proc.stdout[-2000:])
    assert proc.returncode == 0, "real-kernel tests failed in the VM:\n" + proc.stdout[-6000:]
    summary = re.findall(r"=+ (?:.*?, )?(\d+) passed.* in [0-9.]+s", proc.stdout)
    assert summary and int(summary[-1]) >= 10, "the VM ran too few real-kernel tests:\n" + proc.stdout[-3000:]
