#!/usr/bin/env python3
"""VM build numbers (qemu provider): base-image build time, provisioning time from a warm
cache, boot-to-Jupyter-ready time, disk used in the guest.

    .venv/bin/python bench/build.py [--skip-base] [--accel tcg|kvm]

Uses the repository's lock, wheelhouse and cached assets with a copy of workshop.yml
(Debian 13 guest, free host ports); needs root for the base image.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from appliance.config import load_config  # noqa: E402
from appliance.vm import qemu, qemu_build  # noqa: E402
from appliance.vm.image import USER, ensure_base_image  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_root(parent: Path) -> Path:
    root = parent / "bench"
    cache = root / "cache"
    cache.mkdir(parents=True)
    (cache / "vm").symlink_to(REPO_ROOT / "cache" / "vm")
    (cache / "wheels").symlink_to(REPO_ROOT / "cache" / "wheels")
    (root / "requirements").symlink_to(REPO_ROOT / "requirements")
    (root / "assets.yml").symlink_to(REPO_ROOT / "assets.yml")
    if (REPO_ROOT / "notebooks").is_dir():
        (root / "notebooks").symlink_to(REPO_ROOT / "notebooks")
    workshop = yaml.safe_load((REPO_ROOT / "workshop.yml").read_text())
    manifest = yaml.safe_load((REPO_ROOT / "assets.yml").read_text())
    cached = []
    for asset in manifest["assets"]:
        source = REPO_ROOT / "cache" / asset["name"]
        if asset.get("place") and source.is_file():
            (cache / asset["name"]).symlink_to(source)
            cached.append(asset["name"])
    workshop.update(name="bench", version="1", notebooks=[])
    workshop["assets"] = {"manifest": "assets.yml", "include": cached}
    workshop["ports"] = {"host_address": "127.0.0.1", "jupyter": free_port(), "tensorboard": free_port(), "ssh": free_port()}
    workshop["vm"].update(os="debian", memory_mb=3072)
    (root / "workshop.yml").write_text(yaml.safe_dump(workshop, sort_keys=False))
    print(f"assets placed: {len(cached)} ({', '.join(cached) or 'none cached'})")
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-base", action="store_true", help="do not time a fresh base-image build")
    parser.add_argument("--accel", choices=("tcg", "kvm"), help="default: the build's own probe")
    args = parser.parse_args()
    if args.accel:
        os.environ["APPLIANCE_QEMU_ACCEL"] = args.accel
    quiet = lambda line: None  # noqa: E731

    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        if not args.skip_base:
            started = time.monotonic()
            ensure_base_image(Path(tmp) / "fresh-vm-cache", 20, quiet)
            print(f"base image build: {time.monotonic() - started:.0f} s")
        root = bench_root(Path(tmp))
        config = load_config(root / "workshop.yml")
        started = time.monotonic()
        result = qemu_build.build(config, log=quiet)
        print(f"provisioning (warm cache, full build): {time.monotonic() - started:.0f} s wall, "
              f"playbook {result.report.total_seconds:.0f} s, boot to ssh {result.boot_seconds:.0f} s")
        for role, seconds in sorted(result.report.role_seconds.items(), key=lambda item: -item[1]):
            print(f"  {role:<14} {seconds:7.0f} s")

        key = REPO_ROOT / "cache" / "vm" / "ssh" / "id_ed25519"
        token = (root / "cache" / "vm" / "bench-1" / "jupyter-token").read_text().split()[0]
        started = time.monotonic()
        machine = qemu.boot(qemu.built_disk_path(config), config, key, USER, quiet)
        try:
            url = f"http://127.0.0.1:{config.workshop.ports.jupyter}/api/status"
            while True:
                try:
                    if requests.get(url, params={"token": token}, timeout=5).ok:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() - started > 900:
                    raise SystemExit("Jupyter did not answer within 15 minutes")
                time.sleep(1)
            print(f"boot to Jupyter ready: {time.monotonic() - started:.0f} s ({machine.accelerator})")
            used = machine.ssh("df", "-B1M", "--output=used", "/").stdout.split()[-1]
            venv = machine.ssh("sudo", "du", "-sm", "/opt/workshop/venv").stdout.split()[0]
            wheels = machine.ssh("sudo", "du", "-sm", "/opt/workshop/wheels").stdout.split()[0]
            print(f"guest disk used: {used} MB (venv {venv} MB, wheelhouse copy {wheels} MB)")
        finally:
            machine.shutdown()
        disk = qemu.built_disk_path(config)
        print(f"built qcow2 on the host: {disk.stat().st_size / 2**20:.0f} MB")
        shutil.rmtree(disk.parent)  # the bench's own state under cache/vm
    return 0


if __name__ == "__main__":
    sys.exit(main())
