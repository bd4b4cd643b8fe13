"""GPU servers (`servers.gpu: true` in workshop.yml): the workshop lock with TensorFlow's CUDA build
(requirements/workshop-gpu.lock), its own wheelhouse (cache/wheels/gpu, apart from the CPU one the
VM and the thumb drive install from), and the variables `appliance deploy` passes to python_env.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from appliance.config import LoadedConfig
from appliance.errors import UsageError
from appliance.lockfile import parse_lock
from appliance.paths import gpu_lock_file

# The servers' Python: Debian 13's python3 and Fedora's python3.13 (provision/roles/python_env/vars).
GPU_PYTHON = "3.13"
GPU_PLATFORM = "linux_x86_64"


def gpu_wheels_dir(cache: Path) -> Path:
    """Beside the CPU wheelhouse, never in it: python_env takes every *.whl at a wheelhouse's top,
    and tensorflow's and tensorflow-cpu's wheels would both land in one venv."""
    return cache / "wheels" / "gpu"


def link_shared_wheels(lock: Path, cpu_wheels: Path, dest: Path) -> int:
    """Hard-link into `dest` the CPU wheelhouse's wheels whose sha256 the GPU lock allows (every
    package the two locks share has the same version), so they are neither downloaded nor stored twice."""
    from appliance.wheels import sha256_of

    allowed = {(pin.name, pin.version): pin.hashes for pin in parse_lock(lock)}
    dest.mkdir(parents=True, exist_ok=True)
    linked = 0
    for wheel in sorted(cpu_wheels.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        hashes = allowed.get((canonicalize_name(name), str(version)))
        if hashes is None or (dest / wheel.name).exists() or sha256_of(wheel) not in hashes:
            continue
        try:
            os.link(wheel, dest / wheel.name)
        except OSError:
            continue  # another file system, or no links there: build_wheelhouse downloads it
        linked += 1
    return linked


def fill_gpu_wheels(root: Path, cache: Path) -> None:
    """Every wheel the GPU lock selects for the servers, verified against its hashes, in cache/wheels/gpu."""
    from appliance import wheels

    lock = gpu_lock_file(root)
    if not lock.is_file():
        raise UsageError(f"servers.gpu is true but {lock} does not exist; copy it from the tool's requirements/ "
                         "or make it with the command in requirements/workshop-gpu.in")
    dest = gpu_wheels_dir(cache)
    linked = link_shared_wheels(lock, cache / "wheels", dest)
    print(f"wheels: GPU lock: {linked} wheels shared with {cache / 'wheels'} linked into {dest}", file=sys.stderr)
    wheels.fill(lock, dest, [wheels.Target(GPU_PYTHON, GPU_PLATFORM)])


def missing_gpu_wheels(lock: Path, dest: Path) -> list[str]:
    """Pins of the GPU lock with no wheel for the servers in `dest`, by file name: `fetch` verified
    each file's sha256 when it arrived and the server's installer checks it again (--require-hashes),
    so the deploy does not hash gigabytes of CUDA wheels before every run."""
    from appliance.wheels import Target, pins_for, target_tags

    accepted = target_tags(GPU_PYTHON, GPU_PLATFORM)
    present: set[tuple[str, str]] = set()
    for wheel in dest.glob("*.whl") if dest.is_dir() else []:
        try:
            name, version, _, tags = parse_wheel_filename(wheel.name)
        except ValueError:
            continue
        if not tags.isdisjoint(accepted):
            present.add((canonicalize_name(name), str(version)))
    target = Target(GPU_PYTHON, GPU_PLATFORM)
    return [f"{pin.name}=={pin.version}" for pin in pins_for(parse_lock(lock), target.python, target.platform)
            if (pin.name, pin.version) not in present]


def check_gpu_ready(config: LoadedConfig, cache: Path | None = None) -> None:
    """With servers.gpu, the GPU lock and all its wheels are on the controller (one line, exit 2 if not)."""
    if not config.workshop.servers.gpu:
        return
    lock = gpu_lock_file(config.root)
    if not lock.is_file():
        raise UsageError(f"servers.gpu is true but {lock} does not exist; copy it from the tool's requirements/")
    dest = gpu_wheels_dir(cache if cache is not None else config.root / "cache")
    missing = missing_gpu_wheels(lock, dest)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UsageError(f"servers.gpu is true but {dest} lacks {len(missing)} of the GPU lock's wheels ({shown}); "
                         "run `appliance fetch --wheels`")


def python_env_vars(config: LoadedConfig) -> dict[str, str]:
    """What the deploy passes to python_env (its defaults name the CPU lock and wheelhouse)."""
    if not config.workshop.servers.gpu:
        return {}
    return {"python_env_lock": str(gpu_lock_file(config.root)),
            "python_env_wheelhouse": str(gpu_wheels_dir(config.root / "cache"))}
