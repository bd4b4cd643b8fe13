"""bin/install-test-deps waits while another apt holds its locks (it used to fail at once):
a real holder of apt's and dpkg's locks, a real apt-get behind the script."""

from __future__ import annotations

import os
from pathlib import Path
import shutil
import subprocess
import sys
import time

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock")
HOLD_SECONDS = 5

# apt and dpkg lock with fcntl write locks, as lockf does.
HOLDER = f"""
import fcntl, sys, time
handles = [open(path, "a") for path in {LOCKS!r}]
for handle in handles:
    fcntl.lockf(handle, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep({HOLD_SECONDS})
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("apt-get") is None, reason="needs root and apt-get")
def test_waits_for_the_dpkg_lock_instead_of_failing():
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        # A package that does not exist makes the script reach apt-get, and fail after it ran.
        env = {**os.environ, "INSTALL_TEST_DEPS_EXTRA": "appliance-test-no-such-package"}
        result = subprocess.run([str(REPO_ROOT / "bin" / "install-test-deps")], env=env, capture_output=True,
                                text=True, timeout=900)
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert "another apt or dpkg holds its lock; waiting for it" in result.stderr, result.stderr
    assert "Could not get lock" not in result.stderr and "Unable to acquire" not in result.stderr
    # it waited, ran apt-get, and apt-get's own answer ended it (not the lock)
    assert waited >= HOLD_SECONDS - 1
    assert result.returncode != 0
    assert "appliance-test-no-such-package" in result.stderr
