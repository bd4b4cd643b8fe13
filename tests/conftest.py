"""Shared fixtures: the repository root and a way to run the real CLI as a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance_runner import REPO_ROOT, run_appliance
from workers import SHARED_BUILD, shared_by_workers



@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With workers (--dist loadgroup): the modules that share the VM tier's one build (marked
    xdist_group(SHARED_BUILD)) are one unit, on one worker, started first (the longest path, and
    their session fixtures are made once); every other module is a unit of its own, so a module's
    fixtures (a 3 GB environment) are made on one worker only."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    if hasattr(config, "workerinput"):  # a worker of bin/run-tests; alone, the VM tier stays last
        items.sort(key=lambda item: item.get_closest_marker("xdist_group").args[0] != SHARED_BUILD)


def pytest_collection_finish(session: pytest.Session) -> None:
    """A worker whose xdist did not apply the groups would build the VM tier twice: stop at once."""
    if getattr(session.config.option, "loadgroup", False) and session.items and "@" not in session.items[0].nodeid:
        raise pytest.UsageError("pytest-xdist ignored the test groups (a pytest it does not support?); "
                                "reinstall with bin/install-test-deps, or run with -n 0")

@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def appliance_cli():
    return run_appliance


@pytest.fixture
def debian_workshop(tmp_path: Path) -> Path:
    """The repository's workshop.yml with vm.os: debian (what the qemu provider builds), in a
    folder of its own with a copy of the notebooks (paths must stay inside that folder)."""
    import yaml

    workshop = yaml.safe_load((REPO_ROOT / "workshop.yml").read_text())
    workshop["vm"]["os"] = "debian"
    folder = tmp_path / "debian-workshop"
    shutil.copytree(REPO_ROOT / "notebooks", folder / "notebooks",
                    ignore=shutil.ignore_patterns("results", "logs", ".ipynb_checkpoints", "__pycache__"))
    (folder / "assets.yml").write_text((REPO_ROOT / "assets.yml").read_text())
    (folder / "workshop.yml").write_text(yaml.safe_dump(workshop, sort_keys=False))
    return folder / "workshop.yml"


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """cache/wheels filled from the lock for CPython 3.11 and 3.13 on Linux x86_64 (real PyPI
    downloads the first time; later sessions only re-verify the hashes)."""
    from appliance.wheels import build_wheelhouse

    dest = REPO_ROOT / "cache" / "wheels"
    with shared_by_workers("wheels"):
        build_wheelhouse(REPO_ROOT / "requirements" / "workshop.lock", dest)
    return dest


@pytest.fixture(scope="session")
def hub_cache() -> Path:
    """cache/wheels/hub and cache/npm as `appliance fetch --wheels` fills them (real PyPI and npm
    the first time; later only verified): the hub tiers and the image (jupyterhub-singleuser)."""
    from appliance.commands.fetch import fill_hub

    with shared_by_workers("hub-wheels"):
        fill_hub(REPO_ROOT / "cache")
    return REPO_ROOT / "cache"


@pytest.fixture(scope="session")
def workshop_python(request: pytest.FixtureRequest) -> Path:
    """The Python of the workshop environment (the lock installed), for kernels and local mode.

    WORKSHOP_PYTHON names an existing one (e.g. a developer's venv); otherwise local/setup.bash
    builds (or, when current, just checks) ./env from the wheelhouse, as a participant would.
    """
    given = os.environ.get("WORKSHOP_PYTHON")
    if given:
        return Path(given)
    request.getfixturevalue("wheelhouse")
    env = {**os.environ, "PATH": f"{os.environ.get('PATH', '')}{os.pathsep}{Path(sys.executable).parent}"}
    with shared_by_workers("env"):
        subprocess.run(["bash", str(REPO_ROOT / "local" / "setup.bash")], check=True, timeout=3600, env=env)
    return REPO_ROOT / "env" / "bin" / "python"


@pytest.fixture
def workdir(tmp_path: Path, repo_root: Path) -> Path:
    """A folder holding the repository's assets.yml and one notebook: the smallest workshop to configure."""
    shutil.copy(repo_root / "assets.yml", tmp_path / "assets.yml")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "one.ipynb").write_text("{}")
    return tmp_path
