"""The qemu provider: boot a disk with forwarded ports, wait for ssh, shut it down cleanly.

KVM is used when it works; on machines where /dev/kvm exists but guests hang (no nested
virtualization) a one-second probe finds that out and qemu's TCG is used instead.

Under multi-threaded TCG a guest kernel very rarely dies while it patches its own code
(an int3 oops in a static-key flip, seen once in CI on a loaded machine); nothing in the
disk is at fault and the next boot works, so `boot_until_ssh` sees the panic on the
console and boots again instead of waiting out the ssh timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.config import LoadedConfig
from appliance.errors import ApplianceError
from appliance.vm.cachepaths import vm_cache, workshop_state

QEMU = "qemu-system-x86_64"
GUEST_PORTS = {"ssh": 22}
SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=10",
)  # fmt: skip
KERNEL_PANIC = b"Kernel panic - not syncing"
BOOT_ATTEMPTS = 3


class GuestPanicked(ApplianceError):
    """The guest's kernel panicked: its console log says so."""


def console_shows_panic(console_log: Path) -> bool:
    try:
        return KERNEL_PANIC in console_log.read_bytes()
    except OSError:
        return False


def built_disk_path(config: LoadedConfig) -> Path:
    """The provisioned disk `appliance build --provider qemu` leaves (halted) for export."""
    return workshop_state(config) / "disk.qcow2"


@dataclass(frozen=True)
class Forward:
    name: str
    host_address: str
    host_port: int
    guest_port: int


def forwards(config: LoadedConfig) -> list[Forward]:
    """The same forwarded ports the Vagrantfile declares, with the same guest ports."""
    ports = config.workshop.ports
    return [
        Forward("ssh", ports.host_address, ports.ssh, 22),
        Forward("jupyter", ports.host_address, ports.jupyter, ports.jupyter),
        Forward("tensorboard", ports.host_address, ports.tensorboard, ports.tensorboard),
    ]


# A boot sector that writes to qemu's isa-debug-exit port: qemu exits at once when the
# accelerator runs guest code, and hangs where KVM is present but does not (nested KVM).
_PROBE_SECTOR = bytes([0xB0, 0x01, 0xE6, 0xF4, 0xF4, 0xEB, 0xFE]).ljust(510, b"\0") + b"\x55\xaa"


def kvm_works(timeout: float = 10.0) -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or shutil.which(QEMU) is None:
        return False
    with tempfile.NamedTemporaryFile(suffix=".img") as sector:
        sector.write(_PROBE_SECTOR)
        sector.flush()
        command = [
            QEMU, "-accel", "kvm", "-m", "16", "-display", "none", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive", f"file={sector.name},format=raw,if=floppy",
        ]  # fmt: skip
        try:
            result = subprocess.run(command, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        # isa-debug-exit exits with (value << 1) | 1
        return result.returncode == 3


def host_key() -> str:
    """What the KVM answer depends on: this kernel and this qemu."""
    try:
        version = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        version = ""
    return f"{os.uname().release} | {(version.splitlines() or [''])[0].strip()}"


def remembered_kvm(memo: Path) -> bool | None:
    """The answer an earlier probe or boot gave on this host, while kernel and qemu are the same."""
    try:
        data = json.loads(memo.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("host") != host_key() or not isinstance(data.get("kvm"), bool):
        return None
    return data["kvm"]


def remember_kvm(memo: Path, works: bool) -> None:
    memo.parent.mkdir(parents=True, exist_ok=True)
    partial = memo.with_name(memo.name + ".partial")
    partial.write_text(json.dumps({"host": host_key(), "kvm": works}) + "\n")
    os.replace(partial, memo)


def kvm_memo_path(config: LoadedConfig) -> Path:
    return vm_cache(config) / "kvm-probe.json"


def choose_accelerator(memo: Path | None = None) -> str:
    """APPLIANCE_QEMU_ACCEL=kvm|tcg forces one; otherwise KVM if the probe runs, else TCG.
    With `memo` the answer is kept per host (kernel release + qemu version): a /dev/kvm that
    hangs guests costs its probe and its 30 s boot timeout once, not at every boot."""
    forced = os.environ.get("APPLIANCE_QEMU_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return forced
    known = remembered_kvm(memo) if memo is not None else None
    if known is None:
        known = kvm_works()
        if memo is not None:
            remember_kvm(memo, known)
    return "kvm" if known else "tcg"


def qemu_command(
    disk: Path, config: LoadedConfig, accelerator: str, console_log: Path, pidfile: Path, monitor: Path
) -> list[str]:
    vm = config.workshop.vm
    hostfwd = ",".join(f"hostfwd=tcp:{f.host_address}:{f.host_port}-:{f.guest_port}" for f in forwards(config))
    accel = ["-accel", "kvm", "-cpu", "host"] if accelerator == "kvm" else ["-accel", "tcg,thread=multi", "-cpu", "max"]
    return [
        QEMU,
        "-name", config.workshop.artifact_name,
        *accel,
        "-m", str(vm.memory_mb),
        "-smp", str(vm.cpus),
        "-drive", f"file={disk},format=qcow2,if=virtio,discard=unmap",
        "-netdev", f"user,id=net0,{hostfwd}",
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
        "-display", "none",
        "-serial", f"file:{console_log}",
        "-monitor", f"unix:{monitor},server,nowait",
        "-pidfile", str(pidfile),
        "-daemonize",
    ]  # fmt: skip


@dataclass
class Machine:
    """A running qemu VM: its pid, disk and how to reach it over ssh."""

    disk: Path
    pid: int
    ssh_host: str
    ssh_port: int
    user: str
    key: Path
    console_log: Path
    monitor: Path
    accelerator: str
    forwards: list[Forward] = field(default_factory=list)

    def ssh_command(self, *remote: str) -> list[str]:
        return [
            "ssh", *SSH_OPTIONS, "-i", str(self.key), "-p", str(self.ssh_port),
            f"{self.user}@{self.ssh_host}", *remote,
        ]  # fmt: skip

    def ssh(self, *remote: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.ssh_command(*remote), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise ApplianceError(f"ssh {' '.join(remote)} failed (exit {result.returncode}): {result.stderr.strip()[-300:]}")
        return result

    def running(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def wait_for_ssh(self, timeout: float, log: Callable[[str], None] = print) -> float:
        started = time.monotonic()
        next_note = started + 30
        while True:
            if not self.running():
                raise ApplianceError(f"the VM stopped while booting; see its console log {self.console_log}")
            if console_shows_panic(self.console_log):
                raise GuestPanicked(f"the guest kernel panicked while booting; see its console log {self.console_log}")
            try:
                result = self.ssh("true", timeout=30, check=False)
                if result.returncode == 0:
                    return time.monotonic() - started
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now - started > timeout:
                raise ApplianceError(
                    f"no ssh on {self.ssh_host}:{self.ssh_port} after {timeout:.0f} s; see the console log {self.console_log}"
                )
            if now > next_note:
                log(f"  waiting for ssh ({now - started:.0f} s, {self.accelerator})")
                next_note = now + 30
            time.sleep(2)

    def shutdown(self, timeout: float = 180) -> None:
        """Power off from inside (clean file systems), then make sure qemu is gone."""
        if not self.running():
            return
        try:
            self.ssh("sudo", "systemctl", "poweroff", timeout=30, check=False)
        except subprocess.TimeoutExpired:
            pass
        if not _wait_gone(self.pid, timeout):
            _monitor(self.monitor, "system_powerdown")
            if not _wait_gone(self.pid, 60):
                os.kill(self.pid, signal.SIGTERM)
                _wait_gone(self.pid, 10)

    def kill(self) -> None:
        _kill(self.pid)

    def stop_after_panic(self, kept_name: str) -> Path:
        """Stop qemu at once (a dead kernel has nothing to power off cleanly) and keep the
        console log under `kept_name` beside it, so the next boot starts a fresh one."""
        self.kill()
        kept = self.console_log.with_name(kept_name)
        os.replace(self.console_log, kept)
        return kept


KVM_FIRST_OUTPUT_SECONDS = 30


def _start(command: list[str], pidfile: Path) -> int:
    pidfile.unlink(missing_ok=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ApplianceError(f"qemu did not start: {result.stderr.strip()[-300:]}")
    return int(pidfile.read_text().strip())


def _console_speaks(console_log: Path, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if console_log.exists() and console_log.stat().st_size > 0:
            return True
        time.sleep(1)
    return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    _wait_gone(pid, 10)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    return False


def monitor_socket_path(state: Path) -> Path:
    """qemu's monitor socket: in the workshop's state folder, unless that path is too long for a
    Unix socket (108 bytes; a deep checkout or test folder): then a short name in /tmp made from it."""
    path = state / "monitor.sock"
    if len(os.fsencode(path)) < 100:
        return path
    return Path("/tmp") / f"appliance-qemu-{hashlib.sha256(os.fsencode(state)).hexdigest()[:16]}.sock"


def _monitor(path: Path, command: str) -> None:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(command.encode() + b"\n")
    except OSError:
        pass


def check_ports_free(config: LoadedConfig) -> None:
    for forward in forwards(config):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((forward.host_address, forward.host_port))
            except OSError:
                raise ApplianceError(
                    f"port {forward.host_address}:{forward.host_port} ({forward.name}) is in use; stop what uses it "
                    f"or change ports.{forward.name} in {config.path}"
                ) from None


def pidfile_path(config: LoadedConfig) -> Path:
    return workshop_state(config) / "qemu.pid"


def running_pid(config: LoadedConfig) -> int | None:
    """The pid of this workshop's qemu VM when one is still running."""
    try:
        pid = int(pidfile_path(config).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def boot(disk: Path, config: LoadedConfig, key: Path, user: str, log: Callable[[str], None] = print) -> Machine:
    if shutil.which(QEMU) is None:
        raise ApplianceError(f"{QEMU} is not installed; install qemu-system-x86 (Debian) or qemu-system-x86-core (Fedora)")
    pid = running_pid(config)
    if pid is not None:
        raise ApplianceError(f"this workshop's VM is still running (qemu pid {pid}); stop it with `kill {pid}` first")
    check_ports_free(config)
    state = workshop_state(config)
    state.mkdir(parents=True, exist_ok=True)
    memo = kvm_memo_path(config)
    accelerator = choose_accelerator(memo)
    console_log = state / "console.log"
    pidfile = pidfile_path(config)
    monitor = monitor_socket_path(state)
    pidfile.unlink(missing_ok=True)
    try:
        pid = _start(qemu_command(disk, config, accelerator, console_log, pidfile, monitor), pidfile)
    except ApplianceError as exc:
        if accelerator != "kvm":
            raise
        # The probe's tiny guest ran, but qemu refuses this guest's CPU under KVM (e.g. "failed to
        # set MSR" with -cpu host on a nested host): TCG still boots it.
        log(f"qemu: KVM could not start the guest ({str(exc).splitlines()[-1][:160]}); using TCG from now on "
            f"on this host (remembered in {memo}; delete it to probe again)")
        remember_kvm(memo, False)
        accelerator = "tcg"
        pid = _start(qemu_command(disk, config, accelerator, console_log, pidfile, monitor), pidfile)
    if accelerator == "kvm" and not _console_speaks(console_log, pid, KVM_FIRST_OUTPUT_SECONDS):
        # Real-mode code runs but the kernel never prints: KVM without nested virtualization.
        log(f"qemu: KVM did not boot the guest within {KVM_FIRST_OUTPUT_SECONDS} s; using TCG from now on "
            f"on this host (remembered in {memo}; delete it to probe again)")
        remember_kvm(memo, False)
        _kill(pid)
        accelerator = "tcg"
        pid = _start(qemu_command(disk, config, accelerator, console_log, pidfile, monitor), pidfile)
    log(f"qemu: booting {disk.name} ({accelerator}, pid {pid}, console log {console_log})")
    ssh = next(f for f in forwards(config) if f.name == "ssh")
    ssh_host = "127.0.0.1" if ssh.host_address in ("0.0.0.0", "::") else ssh.host_address
    return Machine(
        disk=disk, pid=pid, ssh_host=ssh_host, ssh_port=ssh.host_port, user=user, key=key,
        console_log=console_log, monitor=monitor, accelerator=accelerator, forwards=forwards(config),
    )  # fmt: skip


def boot_until_ssh(
    disk: Path, config: LoadedConfig, key: Path, user: str, timeout: float,
    log: Callable[[str], None] = print, attempts: int = BOOT_ATTEMPTS,
) -> tuple[Machine, float]:  # fmt: skip
    """Boot and wait for ssh; a boot whose kernel panics is killed (its console log kept as
    console-panic-N.log) and the disk booted again, up to `attempts` boots in all.
    Returns the running machine and the seconds its last boot took to answer ssh."""
    attempt = 1
    while True:
        machine = boot(disk, config, key, user, log)
        try:
            return machine, machine.wait_for_ssh(timeout, log)
        except GuestPanicked:
            kept = machine.stop_after_panic(f"console-panic-{attempt}.log")
            if attempt >= attempts:
                raise GuestPanicked(
                    f"the guest kernel panicked in all {attempts} boots of {disk}; see {kept} (one panic can be "
                    f"qemu's rare TCG race, {attempts} in a row point at the disk's kernel)"
                ) from None
            attempt += 1
            log(f"qemu: the guest kernel panicked while booting (console kept at {kept}); booting again, "
                f"attempt {attempt} of {attempts}")
        except KeyboardInterrupt:
            machine.kill()
            raise
        except BaseException:
            # ssh never answered: power off through ACPI if the guest listens, else stop qemu.
            machine.shutdown(timeout=30)
            raise
