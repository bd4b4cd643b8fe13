#!/usr/bin/env python3
"""VM build numbers (qemu provider): base-image build time, provisioning time from a warm
cache, boot-to-Jupyter-ready time, disk used in the guest; then the export of that VM
(finalize + OVA): sealing time, OVA size against the guest's used space.

    sudo .venv/bin/python bench/build.py [--skip-base] [--no-export] [--accel tcg|kvm]

The workshop is the VM tier's: the repository's lock and wheelhouse (cache/wheels), assets
made on the spot (the real ones are not downloadable everywhere; real assets add about
200 MB), one smoke notebook, free host ports, a Debian 13 guest. Needs root for the base
image. Numbers on stdout; the build's progress (one line per task) on stderr.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from appliance.config import LoadedConfig, load_config  # noqa: E402
from appliance.errors import ApplianceError  # noqa: E402
from appliance.vm import qemu, qemu_build  # noqa: E402
from appliance.vm.cachepaths import jupyter_token_path, vm_cache, workshop_state  # noqa: E402
from appliance.vm.image import USER, build_key_path, ensure_base_image  # noqa: E402
from vm.workshop_maker import make_workshop  # noqa: E402

JUPYTER_WAIT_SECONDS = 900


def progress(line: str) -> None:
    if line.startswith(("TASK [", "PLAY [", "qemu:", "base image", "mmdebstrap")):
        print(f"  .. {line.rstrip(' *')}", file=sys.stderr, flush=True)


def wait_for_jupyter(config: LoadedConfig, token: str, started: float) -> float:
    url = f"http://127.0.0.1:{config.workshop.ports.jupyter}/api/status"
    while True:
        try:
            if requests.get(url, params={"token": token}, timeout=5).ok:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        if time.monotonic() - started > JUPYTER_WAIT_SECONDS:
            raise ApplianceError(f"Jupyter did not answer within {JUPYTER_WAIT_SECONDS} s after boot")
        time.sleep(1)


def guest_usage(machine: qemu.Machine) -> dict[str, int]:
    used = int(machine.ssh("df", "-B1M", "--output=used", "/").stdout.split()[-1])
    sizes = {"used": used}
    for name, path in (("venv", "/opt/workshop/venv"), ("wheelhouse", "/opt/workshop/wheels")):
        found = machine.ssh("sudo", "du", "-sm", path, check=False).stdout.split()
        sizes[name] = int(found[0]) if found else 0
    return sizes


def bench(args: argparse.Namespace, tmp: Path) -> None:
    if not args.skip_base:
        started = time.monotonic()
        ensure_base_image(tmp / "fresh-vm-cache", 20, progress)
        print(f"base image build (mmdebstrap, fresh cache): {time.monotonic() - started:.0f} s")
    root = tmp / "workshop"
    root.mkdir()
    config_path, _, _ = make_workshop(root, REPO_ROOT)
    config = load_config(config_path)
    state = workshop_state(config)
    shutil.rmtree(state, ignore_errors=True)  # a previous interrupted run's

    try:
        started = time.monotonic()
        result = qemu_build.build(config, log=progress)
        print(f"provisioning (warm cache, full build): {time.monotonic() - started:.0f} s wall, "
              f"playbook {result.report.total_seconds:.0f} s, boot to ssh {result.boot_seconds:.0f} s")
        for role, seconds in sorted(result.report.role_seconds.items(), key=lambda item: -item[1]):
            print(f"  {role:<14} {seconds:7.0f} s")

        key = build_key_path(vm_cache(config))
        token = jupyter_token_path(config).read_text().split()[0]
        started = time.monotonic()
        machine, _ = qemu.boot_until_ssh(result.disk, config, key, USER, 600, progress)
        try:
            ready = wait_for_jupyter(config, token, started)
            print(f"boot to Jupyter ready: {ready:.0f} s ({machine.accelerator})")
            usage = guest_usage(machine)
            print(f"guest disk used: {usage['used']} MB (venv {usage['venv']} MB, "
                  f"wheelhouse copy {usage['wheelhouse']} MB)")
        finally:
            machine.shutdown()
        print(f"built qcow2 on the host: {result.disk.stat().st_size / 2**20:.0f} MB "
              f"({config.workshop.vm.disk_gb} GB virtual)")

        if not args.no_export:
            started = time.monotonic()
            exported = subprocess.run(
                [sys.executable, "-m", "appliance", "export", "--config", str(config_path), "--provider", "qemu",
                 "--out", str(tmp / "dist")],
                cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True)
            if exported.returncode != 0:
                raise ApplianceError("export failed: " + (exported.stderr.strip().splitlines() or ["?"])[-1])
            print(f"export with finalize: {time.monotonic() - started:.0f} s wall")
            # The sealed copy lets no one in to measure it from inside: export's own lines give
            # the data the sealed disk holds ("OVA / data in the guest disk").
            for line in exported.stdout.splitlines():
                if line.startswith(("export: sealed", "wrote ", "OVA / data")):
                    print(f"  {line}")
    finally:
        shutil.rmtree(state, ignore_errors=True)  # the bench's own build state under cache/vm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-base", action="store_true", help="do not time a fresh base-image build")
    parser.add_argument("--no-export", action="store_true", help="stop after the boot-to-Jupyter numbers")
    parser.add_argument("--accel", choices=("tcg", "kvm"), help="default: the build's own probe")
    args = parser.parse_args()
    if args.accel:
        os.environ["APPLIANCE_QEMU_ACCEL"] = args.accel
    try:
        with tempfile.TemporaryDirectory(prefix="bench-build-", dir="/var/tmp") as tmp:
            bench(args, Path(tmp))
    except ApplianceError as exc:
        print(f"bench/build.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/build.py: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
