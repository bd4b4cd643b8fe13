#!/usr/bin/env python3
"""Time a warm-cache local-mode setup: local/setup.bash into a fresh copy of the repository,
wheels from cache/wheels (no network), once with uv and once with pip, side by side.

    .venv/bin/python bench/local_setup.py

"warm cache" means the wheelhouse is present; uv is timed both with its own cache already
holding the unpacked wheels (a second setup on the same machine) and with an empty one
(a participant's first setup), because uv's speed comes mostly from that cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from appliance.wheels import build_wheelhouse, wheelhouse_size  # noqa: E402

NO_NETWORK = {"PIP_NO_INDEX": "1", "UV_OFFLINE": "1", "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}


def copy_repo(dest: Path) -> Path:
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, check=True).stdout.decode()
    for name in filter(None, listing.split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def timed_setup(work: Path, label: str, wheels: Path, **extra: str) -> tuple[str, float, int]:
    repo = copy_repo(work / label.replace(" ", "-").replace(",", ""))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "VIRTUAL_ENV"))}
    env["PATH"] = f"{env.get('PATH', '')}{os.pathsep}{Path(sys.executable).parent}"  # uv from the tool venv
    env.update(NO_NETWORK, **extra)
    started = time.perf_counter()
    result = subprocess.run(["bash", str(repo / "local" / "setup.bash"), "--offline", str(wheels)],
                            env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{label}: setup failed:\n{result.stderr[-2000:]}")
    size = int(subprocess.run(["du", "-sm", str(repo / "env")], capture_output=True, text=True).stdout.split()[0])
    return label, seconds, size


def main() -> None:
    wheels = REPO / "cache" / "wheels"
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    build_wheelhouse(REPO / "requirements" / "workshop.lock", wheels, python_versions=(python,), platform="host")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        work = Path(tmp)
        empty_cache = work / "uv-cache"
        rows.append(timed_setup(work, "uv, empty uv cache", wheels, UV_CACHE_DIR=str(empty_cache)))
        rows.append(timed_setup(work, "uv, warm uv cache", wheels, UV_CACHE_DIR=str(empty_cache)))
        rows.append(timed_setup(work, "pip", wheels, WORKSHOP_INSTALLER="pip"))
    print(f"\nlocal/setup.bash --offline cache/wheels into a fresh env (Python {python}, "
          f"wheelhouse {wheelhouse_size(wheels) / 2**20:.0f} MB, {os.cpu_count()} CPUs)")
    print(f"{'installer':<22}{'seconds':>9}{'env MB':>9}")
    for label, seconds, size in rows:
        print(f"{label:<22}{seconds:>9.1f}{size:>9}")


if __name__ == "__main__":
    main()
