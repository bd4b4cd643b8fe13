"""The workshop lock: pinned with hashes, universal, and installable on old patch releases."""

from __future__ import annotations

import email.parser
import zipfile
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename

from appliance.lockfile import parse_lock
from appliance.wheels import marker_environment

LOCK = Path(__file__).resolve().parent.parent / "requirements" / "workshop.lock"
# The oldest patch releases the lock must serve: Debian 12's python3 and the first 3.13.
OLD_PYTHONS = ("3.11.2", "3.13.0")


def test_lock_header_has_the_regeneration_command():
    head = LOCK.read_text().splitlines()[:3]
    assert any("uv pip compile --universal --python-version 3.11 --generate-hashes" in line for line in head)


def test_every_pin_has_hashes_and_frameworks_are_pinned():
    pins = parse_lock(LOCK)
    assert len(pins) > 100
    names = {p.name for p in pins}
    for required in ("tensorflow-cpu", "tensorflow", "keras", "pytensor", "jupyterlab", "tensorboard",
                     "pydantic", "pyyaml", "pooch", "tqdm", "psutil", "papermill", "nbgitpuller"):
        assert required in names, required
    for pin in pins:
        assert pin.hashes and all(len(h) == 64 for h in pin.hashes), pin.name
        assert pin.version[0].isdigit(), pin.name


@pytest.mark.parametrize("platform", ["linux_x86_64", "linux_aarch64", "macosx_arm64", "win_amd64"])
@pytest.mark.parametrize("python", ["3.11.2", "3.11.9", "3.12.0", "3.13.0"])
def test_exactly_one_pin_per_package_on_every_target(platform, python):
    """The universal lock forks by marker; on any one target each package must resolve once."""
    env = marker_environment(python, platform)
    chosen: dict[str, list[str]] = {}
    for pin in parse_lock(LOCK):
        if pin.applies(env):
            chosen.setdefault(pin.name, []).append(pin.version)
    duplicates = {name: versions for name, versions in chosen.items() if len(versions) > 1}
    assert not duplicates
    # exactly one TensorFlow flavour: tensorflow-cpu where it has wheels, tensorflow elsewhere
    flavours = {"tensorflow", "tensorflow-cpu"} & chosen.keys()
    expected = "tensorflow-cpu" if platform in ("linux_x86_64", "win_amd64") else "tensorflow"
    assert flavours == {expected}
    assert "keras" in chosen and "pytensor" in chosen


def _wheel_requires_python(wheel: Path) -> str | None:
    with zipfile.ZipFile(wheel) as archive:
        metadata_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = email.parser.BytesParser().parsebytes(archive.read(metadata_name), headersonly=True)
    return message.get("Requires-Python")


@pytest.mark.local
def test_requires_python_admits_old_patch_releases(wheelhouse):
    """Each wheel the lock selects for Linux must accept Debian 12's 3.11.2 and 3.13.0.

    Requires-Python is per file, so it is read from the downloaded wheels themselves.
    """
    wheels: dict[tuple[str, str], list[Path]] = {}
    for wheel in wheelhouse.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        wheels.setdefault((canonicalize_name(name), str(version)), []).append(wheel)
    checked = 0
    problems = []
    for python in OLD_PYTHONS:
        env = marker_environment(python, "linux_x86_64")
        for pin in parse_lock(LOCK):
            if not pin.applies(env):
                continue
            files = wheels.get((pin.name, pin.version))
            assert files, f"{pin.name}=={pin.version} missing from the wheelhouse"
            for wheel in files:
                spec = _wheel_requires_python(wheel)
                checked += 1
                if spec and python not in SpecifierSet(spec):
                    problems.append(f"{wheel.name}: Requires-Python {spec} excludes {python}")
    assert checked > 200
    assert not problems
