"""bin/run-tests runs two pytest-xdist workers: what the tests share between them."""

from __future__ import annotations

from pathlib import Path

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
