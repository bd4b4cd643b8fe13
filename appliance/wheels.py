"""Fill a wheelhouse (cache/wheels) with every wheel the lock selects for given targets.

The VM, local mode and the thumb drive then install with `--no-index --find-links` and
`--require-hashes`, so no index is needed on the day. Downloads go through pip (the ordinary
client) one target at a time; every file is checked against the lock's sha256 hashes before it
is moved into the wheelhouse, and wheels already there and verified are not fetched again.
"""

from __future__ import annotations

import hashlib
import os
import platform as host
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging import tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from appliance.errors import ApplianceError
from appliance.lockfile import Pin, parse_lock

# Oldest glibc a Linux wheel may need: RHEL 8 / Ubuntu 20.04 era laptops and every VM base.
MANYLINUX_GLIBC_MINOR = 28
MACOS_VERSION = (14, 0)

# Marker values per supported target (PEP 508 environment, minus the Python parts).
_PLATFORMS: dict[str, dict[str, str]] = {
    "linux_x86_64": {"sys_platform": "linux", "platform_machine": "x86_64", "os_name": "posix", "platform_system": "Linux"},
    "linux_aarch64": {"sys_platform": "linux", "platform_machine": "aarch64", "os_name": "posix", "platform_system": "Linux"},
    "macosx_arm64": {"sys_platform": "darwin", "platform_machine": "arm64", "os_name": "posix", "platform_system": "Darwin"},
    "macosx_x86_64": {"sys_platform": "darwin", "platform_machine": "x86_64", "os_name": "posix", "platform_system": "Darwin"},
    "win_amd64": {"sys_platform": "win32", "platform_machine": "AMD64", "os_name": "nt", "platform_system": "Windows"},
}
PLATFORMS = tuple(_PLATFORMS)
# uv's --python-platform for each target: `uv pip install --dry-run` then evaluates the lock's
# markers for that platform (pip's --platform keeps this machine's markers).
UV_PLATFORMS = {
    "linux_x86_64": f"x86_64-manylinux_2_{MANYLINUX_GLIBC_MINOR}",
    "linux_aarch64": f"aarch64-manylinux_2_{MANYLINUX_GLIBC_MINOR}",
    "macosx_arm64": "aarch64-apple-darwin",
    "macosx_x86_64": "x86_64-apple-darwin",
    "win_amd64": "x86_64-pc-windows-msvc",
}


def host_platform() -> str:
    """This machine's target name, e.g. linux_x86_64."""
    machine = host.machine().lower()
    if sys.platform.startswith("linux"):
        name = f"linux_{'aarch64' if machine in ('aarch64', 'arm64') else machine}"
    elif sys.platform == "darwin":
        name = f"macosx_{'arm64' if machine == 'arm64' else 'x86_64'}"
    elif sys.platform == "win32":
        name = "win_amd64"
    else:
        name = sys.platform
    return _check_platform(name)


def _check_platform(name: str) -> str:
    if name == "host":
        return host_platform()
    if name not in _PLATFORMS:
        raise ApplianceError(f"unknown wheel platform '{name}'; use one of: host, {', '.join(PLATFORMS)}")
    return name


def marker_environment(python_full_version: str, platform: str) -> dict[str, str]:
    """The PEP 508 marker environment of CPython `python_full_version` on `platform`."""
    major_minor = ".".join(python_full_version.split(".")[:2])
    return {
        "implementation_name": "cpython",
        "implementation_version": python_full_version,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_version": "",
        "python_version": major_minor,
        "python_full_version": python_full_version,
        **_PLATFORMS[_check_platform(platform)],
    }


def pip_platform_tags(platform: str) -> list[str]:
    """The --platform values that make pip accept every wheel this target can install."""
    platform = _check_platform(platform)
    if platform.startswith("linux_"):
        arch = platform.removeprefix("linux_")
        names = [f"manylinux_2_{minor}_{arch}" for minor in range(MANYLINUX_GLIBC_MINOR, 4, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        names += [f"{legacy[m]}_{arch}" for m in legacy if m <= MANYLINUX_GLIBC_MINOR
                  and (arch == "x86_64" or m == 17)]
        return names + [platform]
    if platform.startswith("macosx_"):
        return list(tags.mac_platforms(MACOS_VERSION, platform.removeprefix("macosx_")))
    return [platform]


def target_tags(python: str, platform: str) -> frozenset[tags.Tag]:
    """Wheel tags CPython `python` (e.g. "3.11") accepts on `platform`."""
    version = tuple(int(x) for x in python.split(".")[:2])
    abi = f"cp{version[0]}{version[1]}"
    platforms = pip_platform_tags(platform)
    return frozenset([*tags.cpython_tags(version, abis=[abi], platforms=platforms),
                      *tags.compatible_tags(version, interpreter=abi, platforms=platforms)])


def pins_for(pins: Iterable[Pin], python: str, platform: str) -> list[Pin]:
    """Pins the lock selects on any patch release of `python` (e.g. "3.11") on `platform`.

    Markers may split on the patch level (soupsieve: python_full_version < '3.11.5'), so a
    wheelhouse for "3.11" holds both sides and serves 3.11.2 as well as 3.11.9.
    """
    selected: list[Pin] = []
    for pin in pins:
        if any(pin.applies(marker_environment(f"{python}.{patch}", platform)) for patch in range(40)):
            selected.append(pin)
    return selected


@dataclass(frozen=True)
class Target:
    """One CPython minor version on one platform, e.g. Target("3.13", "win_amd64")."""

    python: str
    platform: str

    def __str__(self) -> str:
        return f"Python {self.python} on {self.platform}"


_Target = Target
# What the VM (Python 3.13, Debian 13 / Fedora) and local mode on a Linux build machine (3.11,
# Debian 12's python3) install from cache/wheels.
VM_TARGETS = (Target("3.13", "linux_x86_64"), Target("3.11", "linux_x86_64"))


def check_python(version: str) -> str:
    if version not in ("3.11", "3.12", "3.13"):
        raise ApplianceError(f"--python {version}: the lock serves CPython 3.11, 3.12 or 3.13; give one of those")
    return version


def wheel_targets(platforms: Sequence[str], python: str, extra_pythons: Sequence[str] = ()) -> list[Target]:
    """The drive's targets (each platform with its Python and any extra versions) plus the VM's."""
    wanted = [Target(v, p) for p in platforms for v in dict.fromkeys([python, *map(check_python, extra_pythons)])]
    return list(dict.fromkeys([*wanted, *VM_TARGETS]))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Verified:
    """Wheels in the wheelhouse whose sha256 is one the lock allows (hashed once per call)."""

    def __init__(self, dest: Path, pins: Sequence[Pin]):
        self._allowed = {(p.name, p.version): p.hashes for p in pins}
        self._dest = dest
        self._cache: dict[str, bool] = {}

    def matching(self, pin: Pin, accepted: frozenset[tags.Tag]) -> Path | None:
        for wheel in sorted(self._dest.glob("*.whl")):
            try:
                name, version, _, wheel_tags = parse_wheel_filename(wheel.name)
            except ValueError:
                continue
            if canonicalize_name(name) != pin.name or str(version) != pin.version:
                continue
            if wheel_tags.isdisjoint(accepted):
                continue
            if wheel.name not in self._cache:
                self._cache[wheel.name] = sha256_of(wheel) in pin.hashes
            if self._cache[wheel.name]:
                return wheel
        return None


def _pip_environment() -> dict[str, str]:
    """Our environment without the machine's pip configuration (constraints, extra indexes)."""
    keep = {"PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_TIMEOUT", "PIP_RETRIES", "PIP_DISABLE_PIP_VERSION_CHECK"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in keep}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def _rounds(pins: Sequence[Pin]) -> list[list[Pin]]:
    """Split pins so no name repeats in one requirements file (pip refuses double requirements)."""
    rounds: list[list[Pin]] = []
    for pin in pins:
        for batch in rounds:
            if all(other.name != pin.name for other in batch):
                batch.append(pin)
                break
        else:
            rounds.append([pin])
    return rounds


def _first_patch(pin: Pin, python: str, platform: str) -> str:
    """The lowest full version of `python` the pin is selected for (pip checks Requires-Python with it)."""
    for patch in range(40):
        if pin.applies(marker_environment(f"{python}.{patch}", platform)):
            return f"{python}.{patch}"
    return f"{python}.0"


def _pip_download(pins: Sequence[Pin], target: _Target, into: Path) -> None:
    """Download `pins` for `target` into `into`; one pip call per (patch level, name-unique batch)."""
    by_version: dict[str, list[Pin]] = {}
    for pin in pins:
        by_version.setdefault(_first_patch(pin, target.python, target.platform), []).append(pin)
    abi = "cp" + target.python.replace(".", "")
    for full_version, group in sorted(by_version.items()):
        for batch in _rounds(group):
            requirements = into / f"requirements-{full_version}-{target.platform}.txt"
            requirements.write_text("\n".join(pin.requirement for pin in batch) + "\n", encoding="utf-8")
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
                       "--only-binary", ":all:", "--python-version", full_version, "--implementation", "cp",
                       "--abi", abi, "--progress-bar", "on", "-d", str(into), "-r", str(requirements)]
            for tag in pip_platform_tags(target.platform):
                command += ["--platform", tag]
            result = subprocess.run(command, env=_pip_environment(), stdout=sys.stderr)
            requirements.unlink()
            if result.returncode != 0:
                raise ApplianceError(
                    f"pip could not download the wheels for Python {full_version} on {target.platform} "
                    "(see pip's message above); check the network, or regenerate requirements/workshop.lock")


def _move_verified(downloaded: Path, dest: Path, pins: Sequence[Pin]) -> int:
    allowed: dict[tuple[str, str], frozenset[str]] = {}
    for pin in pins:
        allowed[(pin.name, pin.version)] = allowed.get((pin.name, pin.version), frozenset()) | pin.hashes
    moved = 0
    for wheel in sorted(downloaded.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        hashes = allowed.get((canonicalize_name(name), str(version)))
        if hashes is None or sha256_of(wheel) not in hashes:
            raise ApplianceError(f"{wheel.name}: sha256 not in requirements/workshop.lock; not added to the wheelhouse")
        os.replace(wheel, dest / wheel.name)
        moved += 1
    return moved


def build_wheelhouse(lock: Path, dest: Path, python_versions: Sequence[str] = ("3.11", "3.13"),
                     platform: str = "linux_x86_64") -> None:
    """Download into `dest` every wheel `lock` selects for CPython `python_versions` on `platform`.

    `platform` is one of PLATFORMS or "host". Wheels already in `dest` whose hash the lock allows
    are kept; new ones are downloaded into a temporary directory inside `dest`, verified, then
    moved in, so an interrupted run never leaves a partial wheel under its real name.
    """
    platform = _check_platform(platform)
    pins = parse_lock(lock)
    dest.mkdir(parents=True, exist_ok=True)
    verified = _Verified(dest, pins)
    for python in python_versions:
        target = _Target(python, platform)
        wanted = pins_for(pins, python, platform)
        accepted = target_tags(python, platform)
        missing = [pin for pin in wanted if verified.matching(pin, accepted) is None]
        print(f"wheels: Python {python} on {platform}: {len(wanted)} packages, "
              f"{len(wanted) - len(missing)} already in {dest}, {len(missing)} to download", file=sys.stderr)
        if not missing:
            continue
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
        try:
            _pip_download(missing, target, staging)
        finally:
            # keep what did arrive and verifies, so a retry after a failure resumes
            moved = _move_verified(staging, dest, missing)
            shutil.rmtree(staging, ignore_errors=True)
        verified = _Verified(dest, pins)
        still = [pin.name for pin in missing if verified.matching(pin, accepted) is None]
        if still:
            raise ApplianceError(f"no wheel for Python {python} on {platform}: {', '.join(still)}; "
                                 "these packages publish none for that target")
        print(f"wheels: added {moved} wheels for Python {python}", file=sys.stderr)


def fill(lock: Path, dest: Path, targets: Sequence[Target]) -> None:
    """build_wheelhouse for every target; one flat folder, so a wheel several targets share
    (pure Python, abi3, one manylinux build for 3.11-3.13) is stored once."""
    by_platform: dict[str, list[str]] = {}
    for target in targets:
        by_platform.setdefault(target.platform, []).append(target.python)
    for platform, pythons in by_platform.items():
        build_wheelhouse(lock, dest, pythons, platform)


def verifier(dest: Path, pins: Sequence[Pin]) -> _Verified:
    """Share one between wheels_for calls over the same folder: each wheel is hashed once."""
    return _Verified(dest, pins)


def wheels_for(pins: Sequence[Pin], dest: Path, target: Target,
               verified: _Verified | None = None) -> tuple[list[Path], list[str]]:
    """(the verified wheels in `dest` that `target` installs, names of pins with none there)."""
    verified = verified or _Verified(dest, pins)
    accepted = target_tags(target.python, target.platform)
    found: list[Path] = []
    missing: list[str] = []
    for pin in pins_for(pins, target.python, target.platform):
        wheel = verified.matching(pin, accepted)
        if wheel is None:
            missing.append(f"{pin.name}=={pin.version}")
        else:
            found.append(wheel)
    return found, missing


def resolve_command(uv: str, lock: Path, target: Target, scratch: Path, find_links: Path | None) -> list[str]:
    """uv's resolver, for `target`, over the whole lock with its hashes: from `find_links` alone
    (no index), or from PyPI's metadata (no wheel is downloaded) when it is None."""
    source = ["--no-index", "--find-links", str(find_links)] if find_links else ["--index-url", "https://pypi.org/simple"]
    return [uv, "pip", "install", "--no-config", "--dry-run", "--target", str(scratch / "target"),
            "--cache-dir", str(scratch / "uv-cache"), "--python-platform", UV_PLATFORMS[target.platform],
            "--python-version", target.python, "--only-binary", ":all:", "--require-hashes", *source, "-r", str(lock)]


def wheelhouse_size(dest: Path) -> int:
    return sum(f.stat().st_size for f in dest.glob("*.whl"))
