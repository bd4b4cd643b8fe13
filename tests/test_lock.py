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


def _tiny_lock(tmp_path: Path, wheel_bytes: bytes) -> Path:
    import hashlib

    lock = tmp_path / "tiny.lock"
    lock.write_text("# tiny\ndemo-pkg==1.0 \\\n    --hash=sha256:" + hashlib.sha256(wheel_bytes).hexdigest() + "\n")
    return lock


def _make_wheel(path: Path) -> bytes:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("demo_pkg/__init__.py", "")
        archive.writestr("demo_pkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n")
    return path.read_bytes()


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.setenv("PIP_RETRIES", "0")


def test_wheelhouse_keeps_verified_wheels_without_downloading(tmp_path, monkeypatch):
    from appliance.wheels import build_wheelhouse

    dest = tmp_path / "wheels"
    dest.mkdir()
    lock = _tiny_lock(tmp_path, _make_wheel(dest / "demo_pkg-1.0-py3-none-any.whl"))
    _no_network(monkeypatch)  # any download attempt would fail
    build_wheelhouse(lock, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["demo_pkg-1.0-py3-none-any.whl"]


def test_wheelhouse_does_not_trust_a_wheel_with_another_hash(tmp_path, monkeypatch):
    from appliance.errors import ApplianceError
    from appliance.wheels import build_wheelhouse

    dest = tmp_path / "wheels"
    dest.mkdir()
    good = _make_wheel(tmp_path / "demo_pkg-1.0-py3-none-any.whl")
    lock = _tiny_lock(tmp_path, good)
    (dest / "demo_pkg-1.0-py3-none-any.whl").write_bytes(good + b"tampered")
    _no_network(monkeypatch)
    with pytest.raises(ApplianceError, match="could not download the wheels for Python 3.11"):
        build_wheelhouse(lock, dest, python_versions=("3.11",))
    assert not list(dest.glob(".download-*"))  # the staging folder is gone


def test_wheelhouse_targets():
    from appliance.errors import ApplianceError
    from appliance.wheels import pins_for, pip_platform_tags, target_tags

    pins = parse_lock(LOCK)
    linux311 = {p.name: p.version for p in pins_for(pins, "3.11", "linux_x86_64") if p.name == "soupsieve"}
    both = [p.version for p in pins_for(pins, "3.11", "linux_x86_64") if p.name == "soupsieve"]
    assert len(both) == 2 and linux311  # both sides of the python_full_version fork
    assert "manylinux_2_27_x86_64" in pip_platform_tags("linux_x86_64")
    assert "manylinux_2_34_x86_64" not in pip_platform_tags("linux_x86_64")
    tags311 = {str(t) for t in target_tags("3.11", "linux_x86_64")}
    assert "cp311-cp311-manylinux_2_27_x86_64" in tags311 and "py3-none-any" in tags311
    assert "cp313-cp313-manylinux_2_27_x86_64" not in tags311
    with pytest.raises(ApplianceError, match="unknown wheel platform 'solaris'"):
        pip_platform_tags("solaris")
