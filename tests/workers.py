"""bin/run-tests runs two pytest-xdist workers: what the tests share between them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from filelock import FileLock

REPO_ROOT = Path(__file__).resolve().parent.parent
# The xdist group of the VM tier's modules that use its one build (tests/vm/conftest.py's
# built_disk): one worker runs them all, first. Every other module is a group of its own.
SHARED_BUILD = "vm-build"


def shared_by_workers(name: str) -> FileLock:
    """What both workers make in the repository itself (./env, cache/wheels): the first makes
    it, the second waits and then finds it current."""
    (REPO_ROOT / "cache").mkdir(exist_ok=True)
    return FileLock(REPO_ROOT / "cache" / f".tests-{name}.lock")


# The server tiers (tests/vm/test_hub.py, tests/vm/test_personal.py) deploy over ssh into an
# emulated guest: 20-25 minutes each on this kind of machine, more than CI's budget beside the
# VM tier. They run by hand (RUN_SERVER_TIERS=1) on the same one build; CI reports them skipped.
SERVER_TIERS = pytest.mark.skipif(os.environ.get("RUN_SERVER_TIERS") != "1",
                                  reason="server tier: about 20 minutes under TCG; run with RUN_SERVER_TIERS=1")
