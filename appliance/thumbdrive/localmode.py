"""What the drive carries for local mode without a VM or an install, per participant platform:
the wheels the lock selects (one flat `wheels/`, so a wheel several platforms share is stored
once), uv's binary taken from uv's wheel, a standalone CPython archive in the layout uv's
mirror setting expects (`python/<build>/<file>`, with `python/downloads.json` holding the URLs
and sha256 uv's own download metadata publishes), `local-mode/drive.json` for the launcher, and
one launcher per OS at the top of the drive.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from appliance.config import LoadedConfig
from appliance.errors import ApplianceError
from appliance.lockfile import parse_lock
from appliance.manifest import Asset
from appliance.paths import cache_dir, lock_file, wheels_dir
from appliance.thumbdrive import launchers
from appliance.wheels import Target, sha256_of, verifier, wheels_for

# uv's default download host; UV_PYTHON_INSTALL_MIRROR replaces this prefix with the drive's folder.
PBS_PREFIX = "https://github.com/astral-sh/python-build-standalone/releases/download"
_ARCHIVE = re.compile(r"^cpython-(\d+)\.(\d+)\.(\d+)\+([0-9A-Za-z._-]+)-.+-install_only(?:_stripped)?\.tar\.gz$")
# os, arch, libc as uv's download metadata names them
_UV_PLATFORM = {
    "linux_x86_64": ("linux", "x86_64", "gnu"),
    "linux_aarch64": ("linux", "aarch64", "gnu"),
    "macosx_arm64": ("darwin", "aarch64", "none"),
    "win_amd64": ("windows", "x86_64", "none"),
}
LABELS = {
    "win_amd64": "Windows (64-bit Intel/AMD)",
    "macosx_arm64": "macOS on Apple Silicon (M1 and later, macOS 14+)",
    "linux_x86_64": "Linux on 64-bit Intel/AMD",
    "linux_aarch64": "Linux on 64-bit ARM",
}


class DriveContentError(ApplianceError):
    """The guide would promise a platform the drive cannot serve."""

    exit_code = 2


@dataclass
class LocalMode:
    platforms: list[str]
    python: str
    files: list[tuple[str, Path]] = field(default_factory=list)   # drive path, source
    contents: list[tuple[str, bytes]] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)            # per platform, bytes


def runtime_asset(loaded: LoadedConfig, platform: str) -> Asset | None:
    for asset in loaded.manifest.assets:
        if asset.kind == "installer" and asset.platform == platform:
            return asset
    return None


def verified_file(loaded: LoadedConfig, asset: Asset | None) -> Path | None:
    """The cached file of `asset` when its sha256 is the manifest's (re-hashed: the cache is not trusted)."""
    if asset is None or asset.hash is None or not asset.hash.startswith("sha256:"):
        return None
    for candidate in (cache_dir(loaded.root) / asset.name, cache_dir(loaded.root) / "installers" / asset.name):
        if candidate.is_file() and sha256_of(candidate) == asset.hash.removeprefix("sha256:"):
            return candidate
    return None


def extract_uv(wheel: Path, into: Path) -> Path:
    """uv's binary from its (verified) wheel, checked against the wheel's RECORD hash."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if re.fullmatch(r"[^/]+\.data/scripts/uv(\.exe)?", n)]
        if len(names) != 1:
            raise ApplianceError(f"{wheel.name}: no uv binary inside; check the uv asset in assets.yml")
        member = names[0]
        record_name = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
        record = {line.split(",")[0]: line.split(",")[1] for line in archive.read(record_name).decode().splitlines() if line}
        data = archive.read(member)
    digest = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    if record.get(member) != digest:
        raise ApplianceError(f"{wheel.name}: {member} does not match the wheel's RECORD; delete it and fetch again")
    target = into / Path(member).name
    into.mkdir(parents=True, exist_ok=True)
    if not target.is_file() or target.read_bytes() != data:
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(data)
        partial.replace(target)
    return target


def downloads_entry(asset: Asset, platform: str) -> tuple[str, dict]:
    match = _ARCHIVE.match(asset.name)
    if not match:
        raise ApplianceError(f"{asset.name}: not a python-build-standalone install_only archive name")
    major, minor, patch, build = match.groups()
    os_name, arch, libc = _UV_PLATFORM[platform]
    return f"cpython-{major}.{minor}.{patch}-{os_name}-{arch}-{libc}", {
        "name": "cpython", "arch": {"family": arch, "variant": None}, "os": os_name, "libc": libc,
        "major": int(major), "minor": int(minor), "patch": int(patch), "prerelease": "",
        "url": f"{PBS_PREFIX}/{build}/{quote(asset.name)}", "sha256": asset.hash.removeprefix("sha256:") if asset.hash else None,
        "variant": None, "build": build,
    }


def plan_local_mode(loaded: LoadedConfig) -> LocalMode:
    """Everything local mode needs on the drive, or DriveContentError naming what is missing."""
    drive = loaded.workshop.drive
    result = LocalMode(list(drive.platforms), drive.python)
    if not drive.platforms:
        return result
    lock = lock_file(loaded.root)
    pins = parse_lock(lock)
    problems: list[str] = []
    wheels: dict[str, Path] = {}
    downloads: dict[str, dict] = {}
    tools = cache_dir(loaded.root) / "drive-tools"
    verified = verifier(wheels_dir(loaded.root), pins)
    for platform in drive.platforms:
        found, missing = wheels_for(pins, wheels_dir(loaded.root), Target(drive.python, platform), verified)
        lacks = []
        if missing:
            lacks.append(f"{len(missing)} wheel(s) for Python {drive.python} (e.g. {missing[0]})")
        uv_asset = runtime_asset(loaded, f"uv-{platform}")
        uv_wheel = verified_file(loaded, uv_asset)
        if uv_wheel is None:
            lacks.append("uv" + ("" if uv_asset else f" (no asset with platform uv-{platform} in assets.yml)"))
        py_asset = runtime_asset(loaded, f"cpython{drive.python}-{platform}")
        archive = verified_file(loaded, py_asset)
        if archive is None:
            lacks.append(f"CPython {drive.python}" + ("" if py_asset else
                         f" (no asset with platform cpython{drive.python}-{platform} in assets.yml)"))
        if lacks:
            problems.append(f"{platform}: {', '.join(lacks)}")
            continue
        assert uv_asset and uv_wheel and py_asset and archive
        binary = extract_uv(uv_wheel, tools / platform)
        key, entry = downloads_entry(py_asset, platform)
        downloads[key] = entry
        result.files.append((f"tools/{platform}/{binary.name}", binary))
        result.files.append((f"python/{entry['build']}/{py_asset.name}", archive))
        for wheel in found:
            wheels[wheel.name] = wheel
        result.sizes[platform] = (sum(w.stat().st_size for w in found) + binary.stat().st_size
                                  + archive.stat().st_size)
    if problems:
        raise DriveContentError(
            f"the guide would promise local mode the drive cannot give: {'; '.join(problems)}; run "
            "`appliance fetch --installers --wheels`, or remove those from drive.platforms in workshop.yml")
    result.files += [(f"wheels/{name}", path) for name, path in sorted(wheels.items())]
    result.contents.append(("python/downloads.json", json.dumps(downloads, indent=1, sort_keys=True).encode()))
    result.contents.append(("local-mode/drive.json", json.dumps(drive_info(loaded, lock), indent=1).encode()))
    for name, text in launchers.scripts(loaded.workshop.artifact_name, drive.python, drive.platforms).items():
        result.contents.append((name, text.encode("utf-8")))
    return result


def drive_info(loaded: LoadedConfig, lock: Path) -> dict:
    """What appliance/launcher.py reads: paths on the drive, the assets' places, the settings."""
    w = loaded.workshop
    assets = [{"file": f"local-mode/cache/{a.name}", "place": a.place, "size": a.size}
              for a in loaded.included_assets() if a.kind != "installer" and a.place
              and (cache_dir(loaded.root) / a.name).is_file()]
    for asset in assets:
        asset["size"] = (cache_dir(loaded.root) / Path(asset["file"]).name).stat().st_size
    return {
        "name": w.artifact_name, "python": w.drive.python, "wheels": "wheels",
        "lock": "local-mode/requirements/workshop.lock", "lock_sha256": sha256_of(lock),
        "notebooks": f"local-mode/{w.jupyter.root}", "assets": assets,
        "keras_backend": w.keras_backend, "jupyter_port": w.ports.jupyter,
    }
