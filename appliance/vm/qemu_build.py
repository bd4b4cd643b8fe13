"""`appliance build --provider qemu`: base image -> a copy of it booted with the forwarded
ports -> provision/site.yml over ssh -> clean halt. The provisioned disk stays at
`qemu.built_disk_path(config)` for `appliance export`, which seals it first with
provision/finalize.yml through `finalize` below."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.config import LoadedConfig
from appliance.errors import ApplianceError
from appliance.vm import qemu
from appliance.vm.cachepaths import vm_cache, workshop_state
from appliance.vm.image import USER, build_key_path, ensure_base_image
from appliance.vm.playbook import FINALIZE_PLAYBOOK, PLAYBOOK, Connection, PlaybookReport, run_playbook

SSH_TIMEOUT_SECONDS = 600
PLAY_ATTEMPTS = 2


@dataclass(frozen=True)
class QemuBuild:
    disk: Path
    report: PlaybookReport
    boot_seconds: float
    base_seconds: float


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

def build(config: LoadedConfig, provision_only: bool = False, log: Callable[[str], None] = print) -> QemuBuild:
    workshop_state(config).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    base = ensure_base_image(vm_cache(config), config.workshop.vm.disk_gb, log)
    base_seconds = time.monotonic() - started
    final = qemu.built_disk_path(config)
    if provision_only:
        if not final.exists():
            raise ApplianceError(f"no built VM at {final}; run `appliance build --provider qemu` first")
        disk = final
    else:
        disk = final.with_name("disk.partial.qcow2")
        disk.unlink(missing_ok=True)
        log(f"disk: copying the base image to {disk}")
        fresh_disk(base.disk, disk)
    left = "the half-built disk" if disk != final else "the built disk (provisioning did not finish)"
    played = run_play_in_vm(disk, config, base.key, PLAYBOOK, left, log)
    if disk != final:
        os.replace(disk, final)
    return QemuBuild(disk=final, report=played.report, boot_seconds=played.boot_seconds, base_seconds=base_seconds)


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
    qemu_line = qemu.qemu_command(disk, config, "tcg", state / "console.log", state / "qemu.pid", state / "monitor.sock")
    return [
        shlex.join(qemu_line),
        f"ANSIBLE_CONFIG={ANSIBLE_CFG} " + shlex.join(playbook_command(state / "inventory", config.path, vars_file_path(config), playbook)),
        "ssh ... sudo systemctl poweroff",
    ]
