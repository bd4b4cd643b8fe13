"""Helpers for the export and thumb-drive tests: a small workshop checkout, a small real disk
image, loop-mounted file systems."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import yaml

from appliance_runner import run_appliance  # noqa: F401  (test_ova imports it from here)

REPO_ROOT = Path(__file__).resolve().parent.parent


# Values unlike the defaults, so a test sees they travel from workshop.yml into the OVA.
WORKSHOP = {
    "name": "test-workshop",
    "version": "1.2",
    "title": "Test Workshop",
    "description": "A workshop made by the tests.",
    "vendor": "The Tests",
    "url": "https://example.org/test",
    "vm": {"os": "debian", "memory_mb": 3072, "cpus": 3, "video_memory_mb": 32, "disk_gb": 8},
    "ports": {"host_address": "127.0.0.1", "jupyter": 18888, "tensorboard": 16006, "ssh": 12222},
    "notebooks": [],
    "assets": {"manifest": "assets.yml", "include": None},
    "drive": {"platforms": []},  # a VM-only drive: its fake wheels serve no platform (tests/test_drive_launcher.py has local mode)
}


def make_checkout(root: Path, installers: bool = True, wheel_bytes: int = 200_000,
                  workshop: dict | None = None) -> Path:
    """A workshop checkout with the repository's manifest and package, and a cache filled
    with files of the right names (random bytes: the layout does not unpack them)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "workshop.yml").write_text(yaml.safe_dump(workshop or WORKSHOP), encoding="utf-8")
    shutil.copy(REPO_ROOT / "assets.yml", root / "assets.yml")
    shutil.copytree(REPO_ROOT / "appliance", root / "appliance",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "notebooks").mkdir()
    (root / "notebooks" / "01-mnist-mlp.ipynb").write_text('{"cells": [], "nbformat": 4, "nbformat_minor": 5, "metadata": {}}\n')
    (root / "local").mkdir()
    (root / "local" / "setup.bash").write_text("#!/usr/bin/env bash\necho setup\n")
    (root / "requirements").mkdir()
    (root / "requirements" / "workshop.lock").write_text("numpy==2.1.0 \\\n    --hash=sha256:00\n")
    cache = root / "cache"
    (cache / "wheels").mkdir(parents=True)
    (cache / "wheels" / "numpy-2.1.0-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(os.urandom(wheel_bytes))
    manifest = yaml.safe_load((root / "assets.yml").read_text())
    for asset in manifest["assets"]:
        if asset["kind"] == "installer" and not installers:
            continue
        (cache / asset["name"]).write_bytes(os.urandom(4096))
    return root


def make_disk(directory: Path, payload: bytes = b"", size_mb: int = 64) -> Path:
    """A qcow2 holding an ext4 file system with some data, made without mounting (mke2fs -d)."""
    content = directory / "disk-content"
    content.mkdir(parents=True, exist_ok=True)
    (content / "data.bin").write_bytes(payload or os.urandom(3_000_000))
    (content / "etc").mkdir(exist_ok=True)
    (content / "etc" / "hostname").write_text("appliance\n")
    raw = directory / "disk.raw"
    raw.unlink(missing_ok=True)
    subprocess.run(["truncate", "-s", f"{size_mb}M", str(raw)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(raw)], check=True)
    qcow2 = directory / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    raw.unlink()
    return qcow2


def kernel_has(filesystem: str) -> bool:
    try:
        known = Path("/proc/filesystems").read_text().split()
    except OSError:
        return False
    return filesystem in known


# Without the kernel's vfat/exfat (some CI kernels lack the modules), FUSE serves the same
# on-disk formats: fusefat for FAT32, exfat-fuse for exFAT. fsname names the device in
# /proc/self/mountinfo, as a kernel mount would.
def mount_command(filesystem: str, device: str, mount_point: Path) -> list[str]:
    if filesystem == "ext4":  # a drive that can hold symbolic links
        return ["mount", "-t", "ext4", device, str(mount_point)]
    if filesystem == "fat32":
        if kernel_has("vfat"):
            return ["mount", "-t", "vfat", device, str(mount_point)]
        return ["fusefat", "-o", f"rw+,fsname={device}", device, str(mount_point)]
    if kernel_has("exfat"):
        return ["mount", "-t", "exfat", device, str(mount_point)]
    return ["mount.exfat-fuse", device, str(mount_point)]


def loop_devices_usable() -> str | None:
    """None when loop-mount tests can run here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root (losetup and mount)"
    for tool in ("losetup", "mount", "umount", "mkfs.vfat", "mkfs.exfat"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install dosfstools exfatprogs util-linux)"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control: loop devices are not available"
    if not kernel_has("vfat") and shutil.which("fusefat") is None:
        return "the kernel has no vfat and fusefat is not installed (apt-get install fusefat)"
    if not kernel_has("exfat") and shutil.which("mount.exfat-fuse") is None:
        return "the kernel has no exfat and exfat-fuse is not installed (apt-get install exfat-fuse)"
    return None


class LoopDrive:
    def __init__(self, backing: Path, device: str, mount_point: Path, filesystem: str) -> None:
        self.backing, self.device, self.mount_point, self.filesystem = backing, device, mount_point, filesystem

    def unmount(self) -> None:
        subprocess.run(["umount", str(self.mount_point)], check=False, capture_output=True)

    def mount(self) -> None:
        subprocess.run(mount_command(self.filesystem, self.device, self.mount_point), check=True,
                       capture_output=True)

    def drop_caches(self) -> None:
        """Unmount and mount again: nothing of the drive stays cached."""
        subprocess.run(["sync"], check=True)
        self.unmount()
        subprocess.run(["losetup", "-d", self.device], check=False)
        self.device = subprocess.run(["losetup", "-f", "--show", str(self.backing)], check=True,
                                     capture_output=True, text=True).stdout.strip()
        self.mount()


@contextmanager
def loop_drives(directory: Path, specs: list[tuple[str, int]]):
    """Loop-backed drives, formatted and mounted: specs are (fat32|exfat|ext4, size in MB)."""
    drives: list[LoopDrive] = []
    try:
        for index, (filesystem, size_mb) in enumerate(specs):
            backing = directory / f"drive{index}.img"
            subprocess.run(["truncate", "-s", f"{size_mb}M", str(backing)], check=True)
            device = subprocess.run(["losetup", "-f", "--show", str(backing)], check=True,
                                    capture_output=True, text=True).stdout.strip()
            drive = LoopDrive(backing, device, directory / f"mnt{index}", filesystem)
            drives.append(drive)
            if filesystem == "fat32":
                subprocess.run(["mkfs.vfat", "-F", "32", "-n", f"WORKSHOP{index}", device], check=True, capture_output=True)
            elif filesystem == "ext4":
                subprocess.run(["mkfs.ext4", "-q", "-F", device], check=True, capture_output=True)
            else:
                subprocess.run(["mkfs.exfat", "-L", f"WORKSHOP{index}", device], check=True, capture_output=True)
            drive.mount_point.mkdir()
            drive.mount()
        yield drives
    finally:
        for drive in drives:
            drive.unmount()
            subprocess.run(["losetup", "-d", drive.device], check=False, capture_output=True)
