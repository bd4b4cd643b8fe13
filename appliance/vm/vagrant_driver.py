"""The virtualbox and libvirt providers: Vagrant (through python-vagrant) runs the
Vagrantfile, whose ansible provisioner runs provision/site.yml."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from appliance.config import LoadedConfig
from appliance.errors import ApplianceError
from appliance.paths import REPO_ROOT
from appliance.vm.provision_vars import write_provision_vars

PROVIDERS = ("virtualbox", "libvirt")


def vagrant_env(config: LoadedConfig) -> dict[str, str]:
    """The Vagrantfile reads workshop.yml from WORKSHOP_CONFIG (default: the repo's)."""
    env = dict(os.environ)
    env["WORKSHOP_CONFIG"] = str(config.path.resolve())
    env["ANSIBLE_CONFIG"] = str(REPO_ROOT / "provision" / "ansible.cfg")
    return env


def _command_prefix(config: LoadedConfig) -> str:
    """How a printed vagrant command reaches this Vagrantfile and workshop.yml."""
    return f"cd {shlex.quote(str(REPO_ROOT))} && WORKSHOP_CONFIG={shlex.quote(str(config.path.resolve()))}"


def planned_commands(config: LoadedConfig, provider: str, provision_only: bool) -> list[str]:
    """What `appliance build` runs, printed by --dry-run and checked by the tests."""
    prefix = _command_prefix(config)
    name = config.workshop.artifact_name
    if provision_only:
        commands = [f"{prefix} vagrant up --no-provision", f"{prefix} vagrant provision"]
    else:
        commands = [f"{prefix} vagrant up --provider={provider} --provision"]
    commands.append(f"{prefix} vagrant halt")
    if provider == "virtualbox":
        # Checks the VM the Vagrantfile made: name, memory, ports bound to host_address.
        commands.insert(0, "VBoxManage --version")
        commands.append(f"VBoxManage showvminfo {shlex.quote(name)} --machinereadable")
    else:
        commands.insert(0, "virsh --connect qemu:///system version")
    return commands


def planned_finalize_commands(config: LoadedConfig) -> list[str]:
    """What `appliance export` runs on a Vagrant VM before VBoxManage export."""
    prefix = _command_prefix(config)
    return [
        f"{prefix} vagrant up --no-provision",
        f"{prefix} vagrant provision --provision-with finalize",
        f"{prefix} vagrant halt",
    ]


def check_available(provider: str) -> None:
    if shutil.which("vagrant") is None:
        raise ApplianceError("Vagrant is not installed; install it from https://developer.hashicorp.com/vagrant/install")
    if provider == "virtualbox":
        if shutil.which("VBoxManage") is None:
            raise ApplianceError(
                "VirtualBox is not installed (no VBoxManage); install it, or use --provider qemu on Linux"
            )
        if os.path.exists("/proc/cpuinfo"):
            flags = Path("/proc/cpuinfo").read_text()
            if " vmx" not in flags and " svm" not in flags:
                raise ApplianceError(
                    "this CPU shows no hardware virtualization (VT-x/AMD-V); enable it in the firmware settings"
                )
    elif provider == "libvirt":
        if not os.path.exists("/dev/kvm"):
            raise ApplianceError("libvirt needs KVM and /dev/kvm is missing; enable VT-x/AMD-V or use --provider qemu")
        plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True).stdout
        if "vagrant-libvirt" not in plugins:
            raise ApplianceError("the vagrant-libvirt plugin is missing; run `vagrant plugin install vagrant-libvirt`")
    else:
        raise ApplianceError(f"unknown provider {provider!r}; use one of virtualbox, libvirt, qemu")


def _machine(config: LoadedConfig):
    import vagrant  # python-vagrant; imported here so the qemu path does not need it

    write_provision_vars(config)
    return vagrant.Vagrant(root=str(REPO_ROOT), env=vagrant_env(config), quiet_stdout=False, quiet_stderr=False)


def _failed(machine, exc: subprocess.CalledProcessError) -> ApplianceError:
    states = ", ".join(f"{s.name}: {s.state}" for s in _safe_status(machine)) or "unknown"
    return ApplianceError(
        f"vagrant failed ({' '.join(map(str, exc.cmd[:2]))}); the VM is left as {states}: "
        f"remove it with `cd {REPO_ROOT} && vagrant destroy -f`, or retry with --provision-only"
    )


def build(config: LoadedConfig, provider: str, provision_only: bool, log: Callable[[str], None] = print) -> None:
    check_available(provider)
    machine = _machine(config)
    try:
        if provision_only:
            status = machine.status()
            if not status or status[0].state == "not_created":
                raise ApplianceError("there is no VM to provision; run `appliance build` without --provision-only first")
            log("vagrant up --no-provision")
            machine.up(provider=provider, provision=False)
            log("vagrant provision")
            machine.provision()
        else:
            log(f"vagrant up --provider={provider} --provision")
            machine.up(provider=provider, provision=True)
        log("vagrant halt")
        machine.halt()
    except subprocess.CalledProcessError as exc:
        raise _failed(machine, exc) from None


def finalize(config: LoadedConfig, log: Callable[[str], None] = print) -> None:
    """Seal the Vagrant VM for export (provision/finalize.yml), then halt it."""
    machine = _machine(config)
    try:
        log("vagrant up --no-provision")
        machine.up(provision=False)
        log("vagrant provision --provision-with finalize")
        machine.provision(provision_with=["finalize"])
        log("vagrant halt")
        machine.halt()
    except subprocess.CalledProcessError as exc:
        raise _failed(machine, exc) from None


def _safe_status(machine) -> list:
    try:
        return machine.status()
    except Exception:  # the status is only a hint in an error message
        return []
