"""The qemu provider's root file system and disks: Debian 13 (trixie) from Debian's mirror
with mmdebstrap (a tar, cached under cache/vm keyed by this recipe), unpacked into a host
folder and configured as Vagrant's base boxes are (kernel, systemd, ssh, sudo, python3, a
`vagrant` user with a key made for this cache); everything else is the playbook's job.
`write_disk` turns such a folder into a partitioned disk with a real bootloader (extlinux
in the MBR), so the same disk boots under qemu here and in VirtualBox after export.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

from filelock import FileLock, Timeout

from appliance.errors import ApplianceError

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
USER = "vagrant"
PACKAGES = (
    "linux-image-amd64",
    "initramfs-tools",
    "systemd-sysv",
    "systemd-resolved",
    "udev",
    "dbus",
    "openssh-server",
    "sudo",
    "python3",
    "python3-apt",
    "ca-certificates",
    "iproute2",
)
# The recipe version: bump when the steps below change in a way the package list does not show.
RECIPE_VERSION = "4"
PARTITION_START_SECTOR = 2048
JOURNAL_MB = 32
MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")

NETWORK_UNIT = """\
# Any wired NIC by DHCP: qemu's user-mode network here, VirtualBox's NAT after export.
[Match]
Name=en* eth*

[Network]
DHCP=yes
"""

SUDOERS = f"{USER} ALL=(ALL) NOPASSWD: ALL\n"


@dataclass(frozen=True)
class BaseImage:
    disk: Path
    key: Path  # the private ssh key for USER
    user: str = USER


def _recipe_hash(*parts: str) -> str:
    recipe = "\n".join([RECIPE_VERSION, SUITE, MIRROR, *PACKAGES, *parts])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def ensure_key(directory: Path) -> Path:
    """The ssh key for the image's user: made once per cache, never in the repository."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "id_ed25519"
    if not key.exists():
        temporary = directory / "id_ed25519.tmp"
        for stale in (temporary, temporary.with_suffix(".tmp.pub")):
            stale.unlink(missing_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "appliance-build", "-f", str(temporary)])
        os.replace(temporary.with_suffix(".tmp.pub"), directory / "id_ed25519.pub")
        os.replace(temporary, key)
    key.chmod(0o600)
    return key


def build_key_path(vm_cache: Path) -> Path:
    """The private key the base image (and so every disk built from it) lets in."""
    return vm_cache / "ssh" / "id_ed25519"


def public_key(vm_cache: Path, create: bool = True) -> str:
    """The build key's public half; with create=False (--dry-run) nothing is written and a
    missing key reads as empty."""
    path = build_key_path(vm_cache).with_name("id_ed25519.pub")
    if create:
        ensure_key(path.parent)
    return path.read_text().strip() if path.exists() else ""


def rootfs_tarball_path(vm_cache: Path) -> Path:
    """mmdebstrap's root file system as a tar: the start of every qemu build (no key inside)."""
    return vm_cache / f"rootfs-{SUITE}-{_recipe_hash()}.tar"


def base_image_path(vm_cache: Path, disk_gb: int, create_key: bool = True) -> Path:
    key = public_key(vm_cache, create_key)
    return vm_cache / f"base-{SUITE}-{_recipe_hash(NETWORK_UNIT, SUDOERS, key, str(disk_gb))}.qcow2"


def missing_tools() -> list[str]:
    tools = ["mmdebstrap", "qemu-img", "sfdisk", "losetup", "mkfs.ext4", "extlinux", "ssh-keygen", "mount", "chroot"]
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not MBR_BIN.exists():
        missing.append(f"{MBR_BIN} (package syslinux-common)")
    return missing


def require_root_tools(what: str) -> None:
    if os.geteuid() != 0:
        raise ApplianceError(f"{what} needs root (mmdebstrap, chroot, loop devices); run it as root")
    missing = missing_tools()
    if missing:
        raise ApplianceError(f"{what} needs {', '.join(missing)}; install them (bin/install-test-deps does)")


def mmdebstrap_command(tarball: Path) -> list[str]:
    return [
        "mmdebstrap",
        "--variant=apt",
        "--mode=root",
        "--format=tar",
        # Keep the package lists: the playbook's apt cache_valid_time trusts them.
        "--skip=cleanup/apt/lists",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(tarball),
        MIRROR,
    ]


def ensure_rootfs_tarball(vm_cache: Path, log: Callable[[str], None] = print) -> Path:
    """The cached mmdebstrap tar, made first when the recipe changed."""
    path = rootfs_tarball_path(vm_cache)
    if path.exists():
        log(f"root file system: cached {path}")
        return path
    require_root_tools("building the qemu root file system")
    vm_cache.mkdir(parents=True, exist_ok=True)
    with cache_lock(vm_cache, log):
        if path.exists():  # made by the build that held the lock
            log(f"root file system: cached {path}")
            return path
        return _make_rootfs_tarball(vm_cache, path, log)


@contextmanager
def cache_lock(vm_cache: Path, log: Callable[[str], None]) -> Iterator[None]:
    """One maker of cache/vm's shared files at a time: a second build (or test worker) started
    meanwhile waits, then finds the file made instead of deleting the first one's partial file."""
    lock = FileLock(vm_cache / ".making.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"waiting for another build that is making a file in {vm_cache}")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _make_rootfs_tarball(vm_cache: Path, path: Path, log: Callable[[str], None]) -> Path:
    started = time.monotonic()
    log(f"root file system: Debian {SUITE} from {MIRROR} with mmdebstrap (a few minutes, cached afterwards)")
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        _run(mmdebstrap_command(partial), stream=True)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    for old in vm_cache.glob(f"rootfs-{SUITE}-*.tar"):
        if old != path:
            old.unlink()
    log(f"root file system: made {path} in {time.monotonic() - started:.0f} s")
    return path


def unpack_root(tarball: Path, root: Path, vm_cache: Path, uuid: str) -> None:
    """The root file system in a host folder, configured as the base image is (user, key,
    network, bootloader configuration naming the file system `uuid` that write_disk makes)."""
    root.mkdir(parents=True)
    _run(["tar", "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tarball)])
    _configure(root, uuid, public_key(vm_cache) + "\n")


def write_disk(root: Path, raw: Path, disk_gb: int, uuid: str) -> None:
    """A bootable raw disk from a root folder: one MBR partition made by `mkfs.ext4 -d`
    (the files copied while the file system is made, no mount needed) and extlinux."""
    with raw.open("wb") as handle:
        handle.truncate(disk_gb * 1024**3)
    # One bootable Linux partition from 1 MiB: the MBR layout every hypervisor's BIOS boots.
    _run(["sfdisk", "--quiet", str(raw)], input=f"label: dos\nstart={PARTITION_START_SECTOR}, type=83, bootable\n")
    start = PARTITION_START_SECTOR * 512
    size = disk_gb * 1024**3 - start
    # mkfs writes the file system straight into the image file at the partition's offset:
    # gigabytes through a loop device turn a full disk into an "Input/output error".
    # extlinux does not read ext4's 64bit layout; a 20 GB root does not need it.
    # A 32 MB journal, not mkfs's 128 MB (256 MB from 32 GB on): every boot and the export's
    # seal fill the journal with metadata, and that lands compressed in the OVA; one user's
    # appliance commits far less at a time.
    try:
        _run(["mkfs.ext4", "-q", "-O", "^64bit", "-L", "root", "-U", uuid, "-E", f"offset={start}",
              "-J", f"size={JOURNAL_MB}", "-d", str(root), str(raw), f"{size // 1024}k"])
    except ApplianceError as exc:
        free_gb = shutil.disk_usage(raw.parent).free / 1024**3
        raise ApplianceError(f"{exc} ({free_gb:.1f} GB free under {raw.parent})") from None
    # A loop device over the partition alone, only for extlinux: partition nodes
    # (losetup -P) need udev, which containers and CI runners often lack.
    loop = _run(["losetup", "--find", "--show", f"--offset={start}", f"--sizelimit={size}", str(raw)]).strip()
    mountpoint = raw.parent / f"{raw.stem}-mnt"
    mountpoint.mkdir(exist_ok=True)
    try:
        _run(["mount", loop, str(mountpoint)])
        try:
            _run(["extlinux", "--install", str(mountpoint / "boot" / "extlinux")])
        finally:
            _run(["umount", str(mountpoint)])
        with raw.open("r+b") as disk:
            disk.write(MBR_BIN.read_bytes()[:440])
    finally:
        _run(["losetup", "--detach", loop])
        mountpoint.rmdir()


def require_free_space(folder: Path, needed_bytes: int, what: str) -> None:
    """Refuse before a long write that cannot fit, rather than fail in the middle of it."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise ApplianceError(
            f"{what} needs about {needed_bytes / 1024**3:.1f} GB free under {folder}, "
            f"which has {free / 1024**3:.1f} GB; free some space there and run it again"
        )


def tree_bytes(root: Path) -> int:
    """Bytes a folder's files take (du's count: hard links once, sparse files as stored)."""
    return int(_run(["du", "-s", "--block-size=1", str(root)]).split()[0])


def ensure_base_image(vm_cache: Path, disk_gb: int, log: Callable[[str], None] = print) -> BaseImage:
    """The unprovisioned, bootable base disk (cached): what the panic test and the export
    test of a bare image boot. The workshop build itself starts from the tarball."""
    path = base_image_path(vm_cache, disk_gb)
    key = build_key_path(vm_cache)
    if path.exists():
        log(f"base image: cached {path}")
        return BaseImage(disk=path, key=key)
    tarball = ensure_rootfs_tarball(vm_cache, log)
    require_root_tools("building the qemu base image")
    with cache_lock(vm_cache, log):
        if path.exists():
            log(f"base image: cached {path}")
            return BaseImage(disk=path, key=key)
        return _make_base_image(vm_cache, tarball, path, key, disk_gb, log)


def _make_base_image(vm_cache: Path, tarball: Path, path: Path, key: Path, disk_gb: int,
                     log: Callable[[str], None]) -> BaseImage:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="base-", dir=vm_cache) as work:
        workdir = Path(work)
        uuid = str(uuid4())
        unpack_root(tarball, workdir / "root", vm_cache, uuid)
        raw = workdir / "disk.raw"
        write_disk(workdir / "root", raw, disk_gb, uuid)
        temporary = path.with_suffix(".qcow2.tmp")
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(temporary)])
        os.replace(temporary, path)
    for old in vm_cache.glob(f"base-{SUITE}-*.qcow2"):
        if old != path:
            old.unlink()
    log(f"base image: built {path} in {time.monotonic() - started:.0f} s")
    return BaseImage(disk=path, key=key)


def _configure(root: Path, uuid: str, public_key: str) -> None:
    (root / "etc" / "hostname").write_text("workshop\n")
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 workshop\n")
    (root / "etc" / "fstab").write_text(f"UUID={uuid} / ext4 errors=remount-ro 0 1\n")
    (root / "etc" / "systemd" / "network" / "80-dhcp.network").write_text(NETWORK_UNIT)
    (root / "etc" / "sudoers.d" / USER).write_text(SUDOERS)
    (root / "etc" / "sudoers.d" / USER).chmod(0o440)
    extlinux = root / "boot" / "extlinux"
    extlinux.mkdir(parents=True, exist_ok=True)
    # The /vmlinuz and /initrd.img links follow kernel upgrades; both consoles so the
    # serial log shows the boot here and the screen shows it in VirtualBox.
    (extlinux / "extlinux.conf").write_text(
        "DEFAULT debian\nTIMEOUT 10\nPROMPT 0\n"
        "LABEL debian\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n"
        f"  APPEND root=UUID={uuid} ro console=tty0 console=ttyS0,115200n8\n"
    )
    chroot = ["chroot", str(root)]
    _run([*chroot, "systemctl", "enable", "systemd-networkd", "systemd-resolved", "ssh"])
    _run([*chroot, "useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", USER])
    ssh_dir = root / "home" / USER / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text(public_key)
    _run([*chroot, "chown", "-R", f"{USER}:{USER}", f"/home/{USER}/.ssh"])
    # Host keys are made on first boot, so every VM built from the image has its own.
    for host_key in (root / "etc" / "ssh").glob("ssh_host_*"):
        host_key.unlink()
    (root / "etc" / "systemd" / "system" / "ssh-keygen.service").write_text(
        "[Unit]\nDescription=Make ssh host keys on first boot\nBefore=ssh.service\n"
        "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n"
        "[Service]\nType=oneshot\n"
        # ed25519 only: an RSA key takes half a minute under software emulation.
        "ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key\n\n[Install]\nWantedBy=multi-user.target\n"
    )
    _run([*chroot, "systemctl", "enable", "ssh-keygen.service"])
    (root / "etc" / "machine-id").write_text("")


def _run(command: list[str], input: str | None = None, stream: bool = False) -> str:
    if stream:
        result = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr, text=True)
        output = ""
    else:
        result = subprocess.run(command, input=input, capture_output=True, text=True)
        output = result.stdout
    if result.returncode != 0:
        detail = (result.stderr or "").strip().splitlines()[-1:] if not stream else []
        raise ApplianceError(f"{command[0]} failed (exit {result.returncode}){': ' + detail[0] if detail else ''}")
    return output
