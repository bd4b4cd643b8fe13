"""Every drive platform gets the whole lock: uv's resolver, evaluating the lock's markers for each
target, installs it (dry run) from PyPI's metadata with the lock's hashes (no multi-GB wheel
download in CI), and from the drive's own wheels alone with no index; a missing wheel fails
naming it. What each platform's wheels are made of is then `appliance.wheels.wheels_for`, which
re-hashes every file (tests/test_thumbdrive.py: a wheel whose hash is not the lock's is missing for `thumbdrive build`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import DRIVE_PLATFORMS
from appliance.lockfile import parse_lock
from appliance.wheels import Target, resolve_command, wheel_targets, wheels_for

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCK = REPO_ROOT / "requirements" / "workshop.lock"
UV = str(Path(sys.executable).parent / "uv")


def resolve(target: Target, scratch: Path, find_links: Path | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    return subprocess.run(resolve_command(UV, LOCK, target, scratch, find_links), env=env,
                          capture_output=True, text=True, timeout=600)


def test_drive_targets_default_to_the_four_platforms_plus_the_vm():
    targets = wheel_targets(list(DRIVE_PLATFORMS), "3.13")
    assert {str(t) for t in targets} == {
        "Python 3.13 on win_amd64", "Python 3.13 on macosx_arm64", "Python 3.13 on linux_x86_64",
        "Python 3.13 on linux_aarch64", "Python 3.11 on linux_x86_64"}
    assert Target("3.12", "macosx_arm64") in wheel_targets(list(DRIVE_PLATFORMS), "3.13", ["3.12"])


@pytest.mark.parametrize("platform", DRIVE_PLATFORMS)
def test_the_lock_resolves_with_its_hashes_for_each_drive_platform(platform, tmp_path):
    result = resolve(Target("3.13", platform), tmp_path, None)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tensorflow" in result.stderr and "jupyterlab==" in result.stderr


@pytest.mark.local
@pytest.mark.parametrize("python", ["3.11", "3.13"])
def test_the_drive_wheels_alone_install_the_lock_and_a_missing_one_is_named(python, wheelhouse, tmp_path):
    target = Target(python, "linux_x86_64")
    found, missing = wheels_for(parse_lock(LOCK), wheelhouse, target)
    assert not missing
    drive = tmp_path / "wheels"
    drive.mkdir()
    for wheel in found:  # only what the drive would carry for this target
        os.link(wheel, drive / wheel.name)
    result = resolve(target, tmp_path, drive)
    assert result.returncode == 0, result.stderr[-2000:]

    gone = next(w for w in found if w.name.startswith("numpy-"))
    (drive / gone.name).unlink()
    result = resolve(target, tmp_path, drive)
    assert result.returncode != 0
    version = gone.name.split("-")[1]
    assert "no solution" in result.stderr.lower() and "numpy" in result.stderr and f"=={version}" in result.stderr
