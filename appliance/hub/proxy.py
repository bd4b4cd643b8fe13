"""configurable-http-proxy (the hub's proxy, from npm) installed on the controller into cache/npm
with `npm ci` from the committed package-lock.json (every module's integrity hash checked), so the
hub server gets it from the cache and never reaches npm itself. Node comes from the server's
distribution (apt/dnf nodejs)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from appliance.errors import ApplianceError

PACKAGE = "configurable-http-proxy"


def pinned_version(npm_requirements: Path) -> str:
    return json.loads((npm_requirements / "package.json").read_text())["dependencies"][PACKAGE]


def installed_version(dest: Path) -> str | None:
    package = dest / "node_modules" / PACKAGE / "package.json"
    try:
        return json.loads(package.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def _same_lock(npm_requirements: Path, dest: Path) -> bool:
    lock = dest / "package-lock.json"
    return lock.is_file() and lock.read_bytes() == (npm_requirements / "package-lock.json").read_bytes()


def fetch_proxy(npm_requirements: Path, dest: Path) -> str:
    """Install the pinned proxy into `dest` (once; again when the lock changes). Returns its version."""
    version = pinned_version(npm_requirements)
    if installed_version(dest) == version and _same_lock(npm_requirements, dest):
        print(f"hub proxy: {PACKAGE} {version} already in {dest}", file=sys.stderr)
        return version
    npm = shutil.which("npm")
    if npm is None:
        raise ApplianceError("npm is not installed; install it (Debian/Fedora package `npm`) to fetch the hub's proxy")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(npm_requirements / name, dest / name)
    print(f"hub proxy: installing {PACKAGE} {version} into {dest} (npm ci)", file=sys.stderr)
    # ci: exactly the lock, integrity hashes checked; no install scripts run on the controller
    result = subprocess.run([npm, "ci", "--prefix", str(dest), "--omit=dev", "--ignore-scripts", "--no-audit",
                             "--no-fund", "--loglevel=error"], stdout=sys.stderr)
    if result.returncode != 0 or installed_version(dest) != version:
        raise ApplianceError(f"npm could not install {PACKAGE} {version} into {dest} (see npm's message above); "
                             "check the network to registry.npmjs.org")
    return version
