"""The qemu provider's base image: Debian 13 (trixie) from Debian's mirror, built with
mmdebstrap onto a partitioned disk with a real bootloader (extlinux in the MBR), so the
same disk boots under qemu here and in VirtualBox after export.

The image holds only what Vagrant's base boxes hold (kernel, systemd, ssh, sudo, python3,
a `vagrant` user with a key made for this image); everything else is the playbook's job.
It is cached under cache/vm keyed by a hash of this recipe and the public key.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


def _recipe_hash(public_key: str, disk_gb: int) -> str:
    recipe = "\n".join([RECIPE_VERSION, SUITE, MIRROR, *PACKAGES, NETWORK_UNIT, SUDOERS, public_key, str(disk_gb)])
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


def base_image_path(vm_cache: Path, disk_gb: int) -> Path:
    key = ensure_key(build_key_path(vm_cache).parent)
    public = key.with_name("id_ed25519.pub").read_text().strip()
    return vm_cache / f"base-{SUITE}-{_recipe_hash(public, disk_gb)}.qcow2"


def missing_tools() -> list[str]:
    tools = ["mmdebstrap", "qemu-img", "sfdisk", "losetup", "mkfs.ext4", "extlinux", "ssh-keygen", "mount"]
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not MBR_BIN.exists():
        missing.append(f"{MBR_BIN} (package syslinux-common)")
    return missing


def ensure_base_image(vm_cache: Path, disk_gb: int, log: Callable[[str], None] = print) -> BaseImage:
    """Return the cached base image, building it first when the recipe changed."""
    path = base_image_path(vm_cache, disk_gb)
    key = build_key_path(vm_cache)
    if path.exists():
        log(f"base image: cached {path}")
        return BaseImage(disk=path, key=key)
    if os.geteuid() != 0:
        raise ApplianceError("building the qemu base image needs root (mmdebstrap, loop devices); run as root once, it is cached")
    missing = missing_tools()
    if missing:
        raise ApplianceError(f"building the qemu base image needs {', '.join(missing)}; install them (bin/install-test-deps does)")
    started = time.monotonic()
    log(f"base image: building Debian {SUITE} from {MIRROR} (a few minutes, cached afterwards)")
    public = key.with_name("id_ed25519.pub").read_text()
    with tempfile.TemporaryDirectory(prefix="base-", dir=vm_cache) as work:
        workdir = Path(work)
        tarball = workdir / "root.tar"
        _run(
            [
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
            ],
            stream=True,
        )
        raw = workdir / "disk.raw"
        _make_disk(raw, tarball, public, disk_gb, log)
        temporary = path.with_suffix(".qcow2.tmp")
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(temporary)])
        os.replace(temporary, path)
    for old in vm_cache.glob(f"base-{SUITE}-*.qcow2"):
        if old != path:
            old.unlink()
    log(f"base image: built {path} in {time.monotonic() - started:.0f} s")
    return BaseImage(disk=path, key=key)


def _make_disk(raw: Path, tarball: Path, public_key: str, disk_gb: int, log: Callable[[str], None]) -> None:
    with raw.open("wb") as handle:
        handle.truncate(disk_gb * 1024**3)
    # One bootable Linux partition from 1 MiB: the MBR layout every hypervisor's BIOS boots.
    _run(["sfdisk", "--quiet", str(raw)], input=f"label: dos\nstart={PARTITION_START_SECTOR}, type=83, bootable\n")
    # A loop device over the partition alone: partition nodes (losetup -P) need udev,
    # which containers and CI runners often lack.
    start = PARTITION_START_SECTOR * 512
    size = disk_gb * 1024**3 - start
    loop = _run(["losetup", "--find", "--show", f"--offset={start}", f"--sizelimit={size}", str(raw)]).strip()
    mountpoint = raw.parent / "mnt"
    mountpoint.mkdir()
    try:
        partition = loop
        # extlinux does not read ext4's 64bit layout; a 20 GB root does not need it.
        _run(["mkfs.ext4", "-q", "-O", "^64bit", "-L", "root", partition])
        uuid = _run(["blkid", "-s", "UUID", "-o", "value", partition]).strip()
        _run(["mount", partition, str(mountpoint)])
        try:
            log("base image: unpacking the root file system")
            _run(["tar", "-C", str(mountpoint), "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tarball)])
            _configure(mountpoint, uuid, public_key)
            _run(["extlinux", "--install", str(mountpoint / "boot" / "extlinux")])
        finally:
            _run(["umount", str(mountpoint)])
        with raw.open("r+b") as disk:
            disk.write(MBR_BIN.read_bytes()[:440])
    finally:
        _run(["losetup", "--detach", loop])


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
