#!/usr/bin/env python3
"""The thumb drive's local mode: its size per platform and the time of a first and a second
start from a drive image.

    .venv/bin/python bench/thumbdrive.py            # sizes from cache/ + first/second start (root)
    .venv/bin/python bench/thumbdrive.py --fetch    # first download every drive platform's wheels
                                                    # (about 3 GB from PyPI) and uv + CPython

Sizes: the wheels each platform of workshop.yml's `drive` installs (re-hashed against the lock),
uv's binary and the CPython archive, then the whole set with shared wheels counted once. A
platform whose files are not in cache/ is reported as such (run with --fetch). The start times
come from a Linux x86_64 drive built by `thumbdrive build` and mounted read-only, with the
test's CPython archive (python-build-standalone's host is not reachable here), as in
tests/test_drive_launcher.py: first start = uv installs Python + builds the environment +
JupyterLab answers; second start = JupyterLab answers again.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from appliance.config import load_config  # noqa: E402
from appliance.lockfile import parse_lock  # noqa: E402
from appliance.thumbdrive.localmode import runtime_asset  # noqa: E402
from appliance.wheels import Target, build_wheelhouse, wheels_for  # noqa: E402


def sizes(wheels: Path) -> None:
    loaded = load_config(REPO / "workshop.yml")
    drive = loaded.workshop.drive
    pins = parse_lock(REPO / "requirements" / "workshop.lock")
    union: dict[str, int] = {}
    total_runtime = 0
    print(f"{'platform':16} {'wheels':>9} {'uv+python':>10} {'total':>9}  note")
    for platform in drive.platforms:
        found, missing = wheels_for(pins, wheels, Target(drive.python, platform))
        runtime = 0
        absent = []
        for prefix in ("uv-", f"cpython{drive.python}-"):
            asset = runtime_asset(loaded, prefix + platform)
            cached = REPO / "cache" / asset.name if asset else None
            if cached and cached.is_file():
                runtime += cached.stat().st_size
            else:
                absent.append(prefix.rstrip("-"))
        size = sum(w.stat().st_size for w in found)
        union.update({w.name: w.stat().st_size for w in found})
        total_runtime += runtime
        note = (f"{len(missing)} wheels missing; " if missing else "") + (f"not in cache: {', '.join(absent)}" if absent else "")
        print(f"{platform:16} {size / 1e9:8.2f}G {runtime / 1e9:9.2f}G {(size + runtime) / 1e9:8.2f}G  {note}")
    every = sum(union.values()) + total_runtime
    print(f"{'all ' + str(len(drive.platforms)):16} {sum(union.values()) / 1e9:8.2f}G {total_runtime / 1e9:9.2f}G "
          f"{every / 1e9:8.2f}G  (each shared wheel once)")


def start_times() -> None:
    if os.geteuid() != 0:
        print("start times: skipped (the read-only bind mount needs root)")
        return
    from test_drive_launcher import drive_image, participant_env, start, stop  # the test's own drive
    from freeports import free_port

    wheels = REPO / "cache" / "wheels"
    build_wheelhouse(REPO / "requirements" / "workshop.lock", wheels, ("3.11",), "linux_x86_64")
    with tempfile.TemporaryDirectory(prefix="bench-thumbdrive-") as tmp, drive_image(Path(tmp), wheels) as made:
        mount, base, _ = made
        env = participant_env(base)
        port = free_port()
        times = []
        for label in ("first", "second"):
            process, seconds, _ = start(mount, env, port, base / f"{label}.log")
            stop(process)
            times.append(seconds)
        home = Path(env["HOME"])
        used = subprocess.run(["du", "-sb", str(home)], capture_output=True, text=True).stdout.split()[0]
        print(f"start from the drive (Linux x86_64, Python 3.11 test build): first {times[0]:.1f} s, "
              f"second {times[1]:.1f} s; participant's folder afterwards {int(used) / 1e9:.2f} GB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fetch", action="store_true", help="download every drive platform's wheels, uv and CPython first")
    parser.add_argument("--no-start", action="store_true", help="only the sizes")
    parser.add_argument("--wheels", type=Path, default=REPO / "cache" / "wheels",
                        help="the wheelhouse to measure (default cache/wheels)")
    args = parser.parse_args()
    if args.fetch:
        subprocess.run([sys.executable, "-m", "appliance", "fetch", "--wheels", "--installers"], cwd=REPO, check=False)
    sizes(args.wheels)
    if not args.no_start:
        start_times()
    return 0


if __name__ == "__main__":
    sys.exit(main())
