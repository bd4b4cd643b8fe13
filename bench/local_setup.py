#!/usr/bin/env python3
"""Time a warm-cache local-mode setup: local/setup.bash into a fresh copy of the repository,
wheels from cache/wheels (no network), once with uv and once with pip, side by side.

    .venv/bin/python bench/local_setup.py

"warm cache" means the wheelhouse is present; uv is timed both with its own cache already
holding the unpacked wheels (a second setup on the same machine) and with an empty one
(a participant's first setup), because uv's speed comes mostly from that cache. Last, the time
from `local/run-jupyter.bash` to the URL it prints: a first start (it runs setup.bash itself)
and a second one.
"""

from __future__ import annotations

import os
import shutil
import signal
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


def time_to_url(repo: Path, env: dict[str, str], timeout: float = 1800) -> float:
    """Seconds from starting local/run-jupyter.bash to the URL line it prints once the server answers."""
    started = time.perf_counter()
    process = subprocess.Popen(["bash", str(repo / "local" / "run-jupyter.bash")], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for line in process.stdout:  # the URL is the only line on stdout
            if "/lab" in line:
                return time.perf_counter() - started
            if time.perf_counter() - started > timeout:
                break
        sys.exit("run-jupyter.bash printed no URL")
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)


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
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "VIRTUAL_ENV", "JUPYTER_"))}
        env["PATH"] = f"{env.get('PATH', '')}{os.pathsep}{Path(sys.executable).parent}"
        env.update(NO_NETWORK, UV_CACHE_DIR=str(empty_cache))
        fresh = copy_repo(work / "first-start")
        (fresh / "cache").mkdir(exist_ok=True)
        (fresh / "cache" / "wheels").symlink_to(wheels)  # as in a checkout with the wheelhouse fetched
        first = time_to_url(fresh, env)  # runs setup.bash itself (uv, warm uv cache)
        again = time_to_url(work / "first-start", env)
    print(f"\nlocal/setup.bash --offline cache/wheels into a fresh env (Python {python}, "
          f"wheelhouse {wheelhouse_size(wheels) / 2**20:.0f} MB, {os.cpu_count()} CPUs)")
    print(f"{'installer':<22}{'seconds':>9}{'env MB':>9}")
    for label, seconds, size in rows:
        print(f"{label:<22}{seconds:>9.1f}{size:>9}")
    print("\nlocal/run-jupyter.bash until it prints the URL (the server answers /api/status)")
    print(f"{'first start (setup too)':<26}{first:>9.1f} s")
    print(f"{'second start':<26}{again:>9.1f} s")


if __name__ == "__main__":
    main()
