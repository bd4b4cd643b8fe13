"""Provisioning at host speed: the playbook runs over Ansible's chroot connection
(community.general.chroot) on the root file system in a host folder, instead of over ssh
into a guest whose CPU qemu emulates.

`chroot_session` gives the folder what a package manager and Python expect of a running
system (/proc, /sys, /dev, a /run with the host's DNS answer) and keeps services from
starting while packages install; all of it is gone again when the session ends, so nothing
of the build host lands in the image. `mounted_disk` opens a built qcow2 disk as such a
folder (for `--provision-only`) and writes it back only when the play succeeded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.vm.image import PARTITION_START_SECTOR

# Debian's convention: invoke-rc.d asks this script whether to start a service; 101 = no.
POLICY_RC_D = "#!/bin/sh\n# appliance build: no service starts inside the build chroot\nexit 101\n"


def _run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or [""])[-1]
        raise ApplianceError(f"{command[0]} failed (exit {result.returncode}): {detail}")
    return result.stdout


def _mount(stack: ExitStack, target: Path, *options: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    _run(["mount", *options, str(target)])
    # lazy: a process the play left behind (gpg-agent, a dbus launch) must not keep the build
    stack.callback(lambda: subprocess.run(["umount", "--lazy", str(target)], capture_output=True))


def _inside(root: Path, link: Path) -> Path:
    """Where symlink `link` (inside `root`) points, resolved inside `root`, not on the host."""
    target = Path(os.readlink(link))
    return root / target.relative_to("/") if target.is_absolute() else Path(os.path.normpath(link.parent / target))


@contextmanager
def chroot_session(root: Path) -> Iterator[Path]:
    with ExitStack() as stack:
        _mount(stack, root / "proc", "-t", "proc", "proc")
        _mount(stack, root / "sys", "-t", "sysfs", "sysfs")
        _mount(stack, root / "dev", "--bind", "/dev")
        _mount(stack, root / "run", "-t", "tmpfs", "tmpfs")
        resolv = root / "etc" / "resolv.conf"
        if resolv.is_symlink():
            # systemd-resolved's stub file under /run: the tmpfs above holds the host's answer
            target = _inside(root, resolv)
            if root / "run" in target.parents:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile("/etc/resolv.conf", target)
        elif resolv.exists():
            _mount(stack, resolv, "--bind", "/etc/resolv.conf")
        policy = root / "usr" / "sbin" / "policy-rc.d"
        if not policy.exists():
            policy.write_text(POLICY_RC_D)
            policy.chmod(0o755)
            stack.callback(policy.unlink, missing_ok=True)
        yield root


@contextmanager
def mounted_disk(disk: Path, work: Path, write_back: bool | Callable[[], bool] = True) -> Iterator[Path]:
    """The root file system of the qcow2 `disk` mounted at a folder under `work`. The disk is
    converted to raw beside it and back only when the block succeeds: a failed play leaves
    `disk` as it was (and `write_back=False` makes it a scratch copy). A callable `write_back`
    is asked after the block: a play that changed nothing need not rewrite gigabytes."""
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "disk.raw"
    mountpoint = work / "root"
    _run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(disk), str(raw)])
    try:
        loop = _run(["losetup", "--find", "--show", f"--offset={PARTITION_START_SECTOR * 512}", str(raw)]).strip()
        try:
            mountpoint.mkdir(exist_ok=True)
            _run(["mount", loop, str(mountpoint)])
            try:
                yield mountpoint
                # Blocks the play freed become holes in the raw file, so the qcow2 stays small.
                _run(["fstrim", str(mountpoint)])
            finally:
                subprocess.run(["umount", str(mountpoint)], capture_output=True)
        finally:
            subprocess.run(["losetup", "--detach", loop], capture_output=True)
        if not (write_back() if callable(write_back) else write_back):
            return
        partial = disk.with_name(disk.name + ".partial")
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(partial)])
        os.replace(partial, disk)
    finally:
        raw.unlink(missing_ok=True)
        if mountpoint.is_dir() and not os.path.ismount(mountpoint):
            mountpoint.rmdir()
