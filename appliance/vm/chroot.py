"""Provisioning at host speed: the playbook runs over Ansible's chroot connection
(community.general.chroot) on the root file system in a host folder, instead of over ssh
into a guest whose CPU qemu emulates.

`chroot_session` gives the folder what a package manager and Python expect of a running
system (/proc, /sys, /dev, a /run with the host's DNS answer) and keeps services from
starting while packages install; all of it is gone again when the session ends, so nothing
of the build host lands in the image. `mounted_disk` opens a built qcow2 disk as such a
folder (for `--provision-only`) without copying it, and writes it back only when the play
succeeded and changed something.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
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


def _stop(pid: int, timeout: float = 60.0) -> None:
    """SIGTERM, then wait: qemu-storage-daemon flushes the image and leaves its FUSE mount."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if Path(f"/proc/{pid}").exists():
        raise ApplianceError(f"qemu-storage-daemon (pid {pid}) did not stop within {timeout:.0f} s")


def fuse_export_usable() -> bool:
    """qemu-storage-daemon (qemu-system-common) and /dev/fuse: a qcow2 shows as a raw file."""
    return shutil.which("qemu-storage-daemon") is not None and Path("/dev/fuse").exists()


@contextmanager
def _raw_view(image: Path, work: Path) -> Iterator[Path]:
    """The qcow2 `image` as a raw file that losetup can open, without copying it: qemu-storage-
    daemon's FUSE export. Writes (and discards: freed blocks become zero clusters) go to `image`."""
    raw = work / "disk.raw"
    raw.touch()
    pidfile = work / "storage-daemon.pid"
    # JSON, not key=value: a comma in a path would split qemu's option string
    _run(["qemu-storage-daemon", "--daemonize", "--pidfile", str(pidfile),
          "--blockdev", json.dumps({"driver": "file", "node-name": "file", "filename": str(image),
                                    "discard": "unmap"}),
          "--blockdev", json.dumps({"driver": "qcow2", "node-name": "disk", "file": "file", "discard": "unmap"}),
          "--export", json.dumps({"type": "fuse", "id": "raw", "node-name": "disk", "mountpoint": str(raw),
                                  "writable": True})])
    pid = int(pidfile.read_text())
    try:
        yield raw
    finally:
        _stop(pid)
        if os.path.ismount(raw):  # a daemon that died leaves its mount behind
            subprocess.run(["umount", "--lazy", str(raw)], capture_output=True)
        raw.unlink(missing_ok=True)


@contextmanager
def _raw_copy(image: Path, work: Path) -> Iterator[Path]:
    """Without FUSE: a raw copy of `image` (qemu-img convert; seconds per gigabyte). The copy
    stays for the write-back; mounted_disk removes it."""
    raw = work / "disk.raw"
    _run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(raw)])
    yield raw


@contextmanager
def mounted_disk(disk: Path, work: Path, write_back: bool | Callable[[], bool] = True) -> Iterator[Path]:
    """The root file system of the qcow2 `disk` mounted at a folder under `work`. `disk` itself
    is only read: the block writes to a copy-on-write overlay (seen as a raw file through
    qemu-storage-daemon's FUSE export, or copied to raw where FUSE is missing). When the block
    succeeds and `write_back` says so, the overlay is flattened into a new standalone qcow2
    under a temporary name, checked, and renamed over `disk`; a failed play, or
    `write_back=False` (a scratch session), leaves `disk` as it was. A callable `write_back` is
    asked after the block: a play that changed nothing need not rewrite gigabytes."""
    work.mkdir(parents=True, exist_ok=True)
    overlay = work / "overlay.qcow2"
    mountpoint = work / "root"
    overlay.unlink(missing_ok=True)
    _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk.resolve()), "-F", "qcow2", str(overlay)])
    fuse = fuse_export_usable()
    try:
        with (_raw_view if fuse else _raw_copy)(overlay, work) as raw:
            loop = _run(["losetup", "--find", "--show", f"--offset={PARTITION_START_SECTOR * 512}", str(raw)]).strip()
            try:
                mountpoint.mkdir(exist_ok=True)
                _run(["mount", loop, str(mountpoint)])
                try:
                    yield mountpoint
                    # Blocks the play freed become zeros, so the written-back qcow2 stays small.
                    _run(["fstrim", str(mountpoint)])
                finally:
                    subprocess.run(["umount", str(mountpoint)], capture_output=True)
            finally:
                subprocess.run(["losetup", "--detach", loop], capture_output=True)
        # (the storage daemon has let go of the overlay here: qemu-img may open it)
        if not (write_back() if callable(write_back) else write_back):
            return
        # The FUSE view wrote into the overlay; the raw copy holds the changes itself.
        source, source_format = (overlay, "qcow2") if fuse else (work / "disk.raw", "raw")
        partial = disk.with_name(disk.name + ".partial")
        try:
            _run(["qemu-img", "convert", "-f", source_format, "-O", "qcow2", str(source), str(partial)])
            _run(["qemu-img", "check", "-q", str(partial)])
            os.replace(partial, disk)
        finally:
            partial.unlink(missing_ok=True)
    finally:
        overlay.unlink(missing_ok=True)
        if not os.path.ismount(work / "disk.raw"):
            (work / "disk.raw").unlink(missing_ok=True)
        if mountpoint.is_dir() and not os.path.ismount(mountpoint):
            mountpoint.rmdir()
