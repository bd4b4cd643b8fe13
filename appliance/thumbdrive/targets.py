"""Which mounted file systems may be written: removable or loop-backed drives, never the
one that holds the running system. Read from /proc/self/mountinfo and /sys/block."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError


class TargetError(ApplianceError):
    """A target the writer refuses: bad input, nothing was written."""

    exit_code = 2


@dataclass(frozen=True)
class Mount:
    device: str        # "major:minor"
    mount_point: Path
    fstype: str
    source: str


@dataclass(frozen=True)
class Target:
    path: Path
    mount: Mount
    disk: str          # the whole block device: sdb, loop3, mmcblk0
    kind: str          # removable, usb, loop, forced
    st_dev: int


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mounts(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Mount]:
    result = []
    for line in mountinfo.read_text(encoding="utf-8").splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        result.append(Mount(fields[2], Path(_unescape(fields[4])), tail[0], _unescape(tail[1])))
    return result


def mount_of(path: Path, table: list[Mount]) -> Mount | None:
    real = path.resolve()
    best: Mount | None = None
    for mount in table:
        if real == mount.mount_point or mount.mount_point in real.parents:
            # the last mount over a point wins, as in the kernel's view
            if best is None or len(mount.mount_point.parts) >= len(best.mount_point.parts):
                best = mount
    return best


def block_disk(device: str, sys_root: Path = Path("/sys")) -> Path | None:
    """/sys/block/<disk> for a major:minor (the parent disk of a partition)."""
    node = sys_root / "dev" / "block" / device
    if not node.exists():
        return None
    real = node.resolve()
    return real.parent if (real / "partition").exists() else real


def _fuse_block_disk(mount: Mount) -> Path | None:
    """FUSE file systems (exfat-fuse, fusefat, ntfs-3g) have an anonymous device number;
    the device they serve is their mount source."""
    if not mount.fstype.startswith(("fuse", "fuseblk")) or not mount.source.startswith("/dev/"):
        return None
    try:
        rdev = os.stat(mount.source).st_rdev
    except OSError:
        return None
    if not rdev:
        return None
    return block_disk(f"{os.major(rdev)}:{os.minor(rdev)}")


def classify(disk: Path) -> str | None:
    if disk.name.startswith("loop") and (disk / "loop" / "backing_file").exists():
        return "loop"
    try:
        if (disk / "removable").read_text().strip() == "1":
            return "removable"
    except OSError:
        pass
    # USB hard disks and many sticks report removable=0; the bus shows in the device path.
    if "/usb" in str(disk):
        return "usb"
    return None


def check_target(path: Path, force: bool = False) -> Target:
    """The target, or ApplianceError with the one-line reason it is refused."""
    if not path.is_dir():
        raise TargetError(f"{path}: not a directory; give the folder where the drive is mounted")
    if not os.access(path, os.W_OK):
        raise TargetError(f"{path}: not writable; mount the drive writable (or run as its owner)")
    table = mounts()
    mount = mount_of(path, table)
    st_dev = path.stat().st_dev
    if mount is None:
        raise TargetError(f"{path}: no mount found for it in /proc/self/mountinfo")
    if force:
        return Target(path, mount, mount.source, "forced", st_dev)
    root_dev = Path("/").stat().st_dev
    if st_dev == root_dev:
        raise TargetError(f"{path}: is on the file system of the running system (/); give a mounted "
                             "thumb drive (or --force)")
    disk = block_disk(mount.device) or _fuse_block_disk(mount)
    if disk is None:
        raise TargetError(f"{path}: {mount.fstype} at {mount.mount_point} is not on a block device; "
                             "give a mounted thumb drive (or --force)")
    root_mount = mount_of(Path("/"), table)
    root_disk = block_disk(root_mount.device) if root_mount else None
    if root_disk is not None and root_disk == disk:
        raise TargetError(f"{path}: is on {disk.name}, the disk that holds the running system; "
                             "give a thumb drive (or --force)")
    kind = classify(disk)
    if kind is None:
        raise TargetError(f"{path}: {disk.name} is neither removable nor a loop device; "
                             "give a mounted thumb drive (or --force if you are sure)")
    return Target(path, mount, disk.name, kind, st_dev)
