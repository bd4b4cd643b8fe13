"""`appliance build --provider qemu`: root file system -> provision/site.yml over the chroot
connection at host speed -> disk image -> one verification boot -> clean halt. The
provisioned disk stays at `qemu.built_disk_path(config)` for `appliance export`, which seals
it first with provision/finalize.yml through `finalize` below (over ssh in the booted VM)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.config import LoadedConfig
from uuid import uuid4

from appliance.errors import ApplianceError, ConfigError
from appliance.vm import qemu
from appliance.vm.cachepaths import build_record_path, jupyter_token_path, vm_cache, workshop_state
from appliance.vm.chroot import chroot_session, mounted_disk
from appliance.vm.image import (
    SUITE, USER, build_key_path, ensure_rootfs_tarball, require_free_space, require_root_tools, tree_bytes, unpack_root,
    write_disk,
)
from appliance.vm.playbook import (
    FINALIZE_PLAYBOOK, PLAYBOOK, ChrootConnection, Connection, PlaybookReport, run_playbook,
)

SSH_TIMEOUT_SECONDS = 600
PLAY_ATTEMPTS = 2


@dataclass(frozen=True)
class QemuBuild:
    disk: Path
    report: PlaybookReport
    boot_seconds: float  # the verification boot: qemu start to Jupyter ready (0 when there was none)
    base_seconds: float
    write_seconds: float = 0.0


@dataclass(frozen=True)
class PlayInVM:
    report: PlaybookReport
    boot_seconds: float


def fresh_disk(base: Path, target: Path) -> None:
    """A standalone copy of the base (no backing file), so rebuilding the base never breaks it."""
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(base), str(target)], check=True, capture_output=True)


def run_play_in_vm(
    disk: Path, config: LoadedConfig, key: Path, playbook: Path, what_is_left: str, log: Callable[[str], None],
    attempts: int = PLAY_ATTEMPTS,
) -> PlayInVM:  # fmt: skip
    """Boot `disk`, run `playbook` over ssh, power off cleanly. On failure the VM is stopped
    and the message says what is left on disk and how to remove it.

    When the guest's kernel panics during the play (qemu's rare TCG race; ssh then gives up
    within ServerAliveInterval x 3 = 45 s), the disk is booted again and the play run again:
    both playbooks are idempotent, so the second run does what the first left undone."""
    def left_behind(what_happened: str) -> str:
        return f"{playbook.stem} failed: {what_happened}; {what_is_left} is kept at {disk}; remove it with `rm {disk}`"

    attempt = 1
    while True:
        try:
            machine, boot_seconds = qemu.boot_until_ssh(disk, config, key, USER, SSH_TIMEOUT_SECONDS, log)
        except BaseException:
            log(left_behind("the VM did not come up"))
            raise
        log(f"qemu: ssh is up after {boot_seconds:.0f} s")
        try:
            connection = Connection(machine.ssh_host, machine.ssh_port, machine.user, machine.key)
            report = run_playbook(connection, config, log, playbook)
            log("qemu: shutting down cleanly")
            machine.shutdown()
            return PlayInVM(report=report, boot_seconds=boot_seconds)
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            panicked = qemu.console_shows_panic(machine.console_log)
            if panicked and not interrupted and attempt < attempts:
                kept = machine.stop_after_panic(f"console-panic-{playbook.stem}-{attempt}.log")
                attempt += 1
                log(f"qemu: the guest kernel panicked during {playbook.name} (console kept at {kept}); booting again "
                    f"and running it again, attempt {attempt} of {attempts}")
                continue
            # A clean power-off keeps the guest's file systems whole for a retry or a look;
            # an interrupt, or a guest whose kernel died, gets qemu stopped outright.
            if interrupted or panicked:
                machine.kill()
            else:
                machine.shutdown(timeout=120)
            why = " after its kernel panicked (a rare qemu TCG race: run the command again)" if panicked else ""
            log(left_behind(f"the VM (qemu pid {machine.pid}) was stopped{why} (console log {machine.console_log})"))
            raise

# What the qemu provider builds; `vm.os` must say so, and the build record keeps it for export.
BUILT_OS = {"os": "debian", "version": "13", "suite": SUITE}


def check_os(config: LoadedConfig) -> None:
    wanted = config.workshop.vm.os
    if wanted != BUILT_OS["os"]:
        raise ConfigError(
            f"vm.os: {wanted} in {config.path}: the qemu provider builds Debian {BUILT_OS['version']} only; "
            f"set vm.os: debian, or build {wanted} with --provider virtualbox or libvirt"
        )


def write_build_record(config: LoadedConfig, disk: Path) -> Path:
    """What was built, next to the disk: `appliance export` labels the OVA from it."""
    path = build_record_path(config)
    record = {**BUILT_OS, "provider": "qemu", "disk": disk.name, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, path)
    return path


def _unmount_below(folder: Path) -> None:
    """Mounts a killed build left under `folder` (its chroot's /dev is the host's): detach
    them before anything there is deleted."""
    below = str(folder.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(below)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount], capture_output=True)


def _fresh_folder(folder: Path) -> None:
    if folder.exists():
        _unmount_below(folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


@dataclass(frozen=True)
class Verified:
    ready_seconds: float  # from starting qemu to Jupyter answering with the token
    accelerator: str


def verify_boot(disk: Path, config: LoadedConfig, key: Path, log: Callable[[str], None]) -> Verified:
    """Boot the built disk once for what a chroot cannot show: the services start by
    themselves, Jupyter answers through the forwarded port with the token and refuses
    without it, TensorBoard's port is held by systemd; then power off cleanly."""
    started = time.monotonic()
    machine, ssh_seconds = qemu.boot_until_ssh(disk, config, key, USER, SSH_TIMEOUT_SECONDS, log)
    log(f"qemu: ssh is up after {ssh_seconds:.0f} s; waiting for Jupyter")
    try:
        ports = config.workshop.ports
        host = "127.0.0.1" if ports.host_address in ("0.0.0.0", "::") else ports.host_address
        token_file = jupyter_token_path(config)
        token = "" if config.workshop.jupyter.password_hash else token_file.read_text().split()[0]
        status = f"http://{host}:{ports.jupyter}/api/status"
        while _http_status(status, token) != 200:
            if time.monotonic() - started > SSH_TIMEOUT_SECONDS:
                failed = machine.ssh("systemctl", "--failed", "--no-legend", check=False).stdout.strip()
                raise ApplianceError(f"verification boot: Jupyter did not answer on {status} within "
                                     f"{SSH_TIMEOUT_SECONDS} s (failed units: {failed or 'none'})")
            time.sleep(1)
        ready = time.monotonic() - started
        refused = _http_status(status, "")
        if refused not in (401, 403):
            raise ApplianceError(f"verification boot: Jupyter answered {refused} without the token; it must refuse")
        # TensorBoard starts at its first visit (socket activation); under software emulation
        # that takes minutes, so the boot checks that systemd holds its port (the VM tier visits it).
        states = machine.ssh("systemctl", "is-active", "jupyter.service", "tensorboard.socket", check=False).stdout.split()
        if states != ["active", "active"]:
            raise ApplianceError(f"verification boot: jupyter.service and tensorboard.socket are {states}, not active")
        log(f"verified: Jupyter ready {ready:.0f} s after qemu started ({machine.accelerator}), refuses without "
            "the token; TensorBoard's socket listens")
        log("qemu: shutting down cleanly")
        machine.shutdown()
        return Verified(ready_seconds=ready, accelerator=machine.accelerator)
    except BaseException:
        if isinstance(sys.exc_info()[1], KeyboardInterrupt):
            machine.kill()
        else:
            machine.shutdown(timeout=60)
        raise


def _http_status(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def build(config: LoadedConfig, provision_only: bool = False, log: Callable[[str], None] = print) -> QemuBuild:
    """rootfs tar (mmdebstrap, cached) -> unpacked in a host folder -> site.yml over the chroot
    connection at host speed -> `mkfs.ext4 -d` into a partitioned disk -> one verification
    boot under qemu -> halted disk at qemu.built_disk_path(config)."""
    check_os(config)
    if provision_only:
        return reprovision(config, log)
    require_root_tools("`appliance build --provider qemu`")
    state = workshop_state(config)
    state.mkdir(parents=True, exist_ok=True)
    cache = vm_cache(config)
    started = time.monotonic()
    tarball = ensure_rootfs_tarball(cache, log)
    key = build_key_path(cache)
    final = qemu.built_disk_path(config)
    partial = final.with_name("disk.partial.qcow2")
    work = state / "build-work"
    _fresh_folder(work)
    try:
        uuid = str(uuid4())
        root = work / "root"
        unpack_root(tarball, root, cache, uuid)
        base_seconds = time.monotonic() - started
        log(f"root file system: unpacked and configured in {base_seconds:.0f} s; provisioning it over the chroot connection")
        with chroot_session(root):
            report = run_playbook(ChrootConnection(root), config, log)
        started = time.monotonic()
        raw = work / "disk.raw"
        # The raw disk holds the root's files once more, and so does the qcow2 made from it
        # (the root folder goes first); a tenth more for the file system's own blocks.
        require_free_space(work, int(tree_bytes(root) * 1.1), "writing the disk image")
        write_disk(root, raw, config.workshop.vm.disk_gb, uuid)
        _unmount_below(root)  # rmtree would follow a bind mount left there into the host's /dev
        shutil.rmtree(root)
        partial.unlink(missing_ok=True)
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(partial)], check=True)
        write_seconds = time.monotonic() - started
        log(f"disk: written in {write_seconds:.0f} s (mkfs.ext4 -d, extlinux, qcow2)")
    finally:
        _unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)
    try:
        verified = verify_boot(partial, config, key, log)
    except BaseException:
        log(f"the built disk did not pass its verification boot; it is kept at {partial}; remove it with `rm {partial}`")
        raise
    os.replace(partial, final)
    write_build_record(config, final)
    return QemuBuild(disk=final, report=report, boot_seconds=verified.ready_seconds, base_seconds=base_seconds,
                     write_seconds=write_seconds)


def reprovision(config: LoadedConfig, log: Callable[[str], None] = print) -> QemuBuild:
    """site.yml again on the built disk: as root, over the chroot connection on the mounted
    disk (host speed; the play writes to an overlay, which replaces the disk only when the
    play succeeded and changed something); otherwise over ssh in the booted VM."""
    final = qemu.built_disk_path(config)
    if not final.exists():
        raise ApplianceError(f"no built VM at {final}; run `appliance build --provider qemu` first")
    if os.geteuid() != 0:
        played = run_play_in_vm(final, config, build_key_path(vm_cache(config)), PLAYBOOK,
                                "the built disk (provisioning did not finish)", log)
        return QemuBuild(disk=final, report=played.report, boot_seconds=played.boot_seconds, base_seconds=0.0)
    if qemu.running_pid(config) is not None:
        raise ApplianceError(f"this workshop's VM is running (qemu pid {qemu.running_pid(config)}); stop it first")
    work = workshop_state(config) / "reprovision-work"
    _fresh_folder(work)
    try:
        # A play that changed nothing leaves the disk as it was: no write-back (the raw copy's
        # only differences are the mount's own bookkeeping). Asked only after the play succeeded.
        with mounted_disk(final, work, write_back=lambda: report.changed > 0) as root, chroot_session(root):
            report = run_playbook(ChrootConnection(root), config, log)
    finally:
        _unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)
    return QemuBuild(disk=final, report=report, boot_seconds=0.0, base_seconds=0.0)


def sealed_overlay_path(config: LoadedConfig) -> Path:
    """Where `appliance export` seals a copy of the built disk (removed after the export)."""
    return workshop_state(config) / "sealed.qcow2"


def overlay_command(disk: Path, overlay: Path) -> list[str]:
    return ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk.resolve()), "-F", "qcow2", str(overlay)]


def make_overlay(disk: Path, overlay: Path) -> None:
    """A copy-on-write copy of `disk`: writes (and trimmed blocks) land in the overlay only."""
    overlay.unlink(missing_ok=True)
    result = subprocess.run(overlay_command(disk, overlay), capture_output=True, text=True)
    if result.returncode != 0:
        raise ApplianceError(f"qemu-img create failed: {result.stderr.strip()[-300:]}")


def finalize(config: LoadedConfig, disk: Path, log: Callable[[str], None] = print) -> PlayInVM:
    """Seal a disk for export: build manifest, caches and logs cleaned, host keys, machine id
    and Jupyter secrets left for each copy to make, free space trimmed, and the build's own
    access (ssh keys, sudo, the build user) removed: afterwards the build key no longer
    logs in, so seal a copy (`make_overlay`), not the built disk."""
    if not disk.is_file():
        raise ApplianceError(f"{disk}: no built disk image; run `appliance build --provider qemu` first")
    key = build_key_path(vm_cache(config))
    if not key.is_file():
        raise ApplianceError(f"{key} is missing: the disk only lets in the key it was built with; export with --no-finalize")
    return run_play_in_vm(disk, config, key, FINALIZE_PLAYBOOK, "the partly sealed copy", log)


def planned_play_commands(config: LoadedConfig, disk: Path, playbook: Path) -> list[str]:
    """What `run_play_in_vm` runs, for --dry-run (shown with TCG; a KVM probe may pick KVM)."""
    from appliance.vm.playbook import ANSIBLE_CFG, playbook_command
    from appliance.vm.provision_vars import vars_file_path

    state = workshop_state(config)
    qemu_line = qemu.qemu_command(disk, config, "tcg", state / "console.log", state / "qemu.pid",
                                   qemu.monitor_socket_path(state))
    return [
        shlex.join(qemu_line),
        f"ANSIBLE_CONFIG={ANSIBLE_CFG} " + shlex.join(playbook_command(state / "inventory", config.path, vars_file_path(config), playbook)),
        "ssh ... sudo systemctl poweroff",
    ]


def planned_build_commands(config: LoadedConfig, provision_only: bool) -> list[str]:
    """What `build` runs, for --dry-run; computing it writes nothing (no key, no folder)."""
    from appliance.vm.image import mmdebstrap_command, rootfs_tarball_path
    from appliance.vm.playbook import ANSIBLE_CFG, playbook_command
    from appliance.vm.provision_vars import vars_file_path

    state = workshop_state(config)
    final = qemu.built_disk_path(config)
    play = f"ANSIBLE_CONFIG={ANSIBLE_CFG} " + shlex.join(
        playbook_command(state / "inventory", config.path, vars_file_path(config), PLAYBOOK)
    )
    if provision_only:
        work = state / "reprovision-work"
        overlay = work / "overlay.qcow2"
        return [
            shlex.join(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(final), "-F", "qcow2", str(overlay)]),
            f"qemu-storage-daemon --export type=fuse ... {overlay} as the raw file {work / 'disk.raw'} "
            "(without FUSE: qemu-img convert to raw)",
            f"losetup + mount {work / 'disk.raw'} at {work / 'root'}; /proc, /sys, /dev, /run for the chroot",
            f"{play}   # inventory: community.general.chroot on {work / 'root'}",
            "only when a task changed something: " + shlex.join(
                ["qemu-img", "convert", "-O", "qcow2", str(overlay), f"{final}.partial"]) + f"; qemu-img check; mv to {final}",
        ]
    tarball = rootfs_tarball_path(vm_cache(config))
    work = state / "build-work"
    partial = final.with_name("disk.partial.qcow2")
    qemu_line = qemu.qemu_command(partial, config, "tcg", state / "console.log", state / "qemu.pid",
                                   qemu.monitor_socket_path(state))
    commands = [] if tarball.exists() else [shlex.join(mmdebstrap_command(tarball))]
    return commands + [
        shlex.join(["tar", "-C", str(work / "root"), "--numeric-owner", "--xattrs", "-xpf", str(tarball)]),
        f"{play}   # inventory: community.general.chroot on {work / 'root'}",
        f"sfdisk + losetup {work / 'disk.raw'}; mkfs.ext4 -O ^64bit -L root -U <uuid> -d {work / 'root'} <loop>; extlinux --install",
        shlex.join(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(work / "disk.raw"), str(partial)]),
        shlex.join(qemu_line) + "   # verification boot: Jupyter with and without the token, TensorBoard",
        "ssh ... sudo systemctl poweroff",
        f"mv {partial} {final}",
    ]


def recorded_os(disk: Path, fallback: str) -> str:
    """The OS the build recorded next to `disk` (build.json), for the OVA's label; `fallback`
    (workshop.yml's vm.os) for a disk no qemu build recorded (`export --disk`)."""
    try:
        return str(json.loads((disk.parent / "build.json").read_text())["os"])
    except (OSError, ValueError, KeyError, TypeError):
        return fallback
