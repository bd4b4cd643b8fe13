"""The VirtualBox path of `appliance export`: VBoxManage exports the VM Vagrant built.

VirtualBox writes its own OVF 2.0 with the machine's forwarded-port rules and a SHA-256
manifest; this module only builds the command line (checked by the tests) and runs it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from appliance.config import Workshop
from appliance.errors import ApplianceError

VAGRANT_MACHINE = "default"
# The Vagrantfile's ssh forward (id "ssh"); VirtualBox names the NAT rule after it.
SSH_RULE = "ssh"


def vboxmanage() -> str | None:
    return shutil.which("VBoxManage") or shutil.which("vboxmanage")


def vagrant_vm_id(root: Path, machine: str = VAGRANT_MACHINE) -> str | None:
    """The UUID of the VirtualBox VM `vagrant up` made from this checkout, if any."""
    id_file = root / ".vagrant" / "machines" / machine / "virtualbox" / "id"
    if not id_file.is_file():
        return None
    vm_id = id_file.read_text(encoding="utf-8").strip()
    return vm_id or None


def export_argv(workshop: Workshop, vm: str, output: Path, program: str = "VBoxManage",
                eula_file: Path | None = None) -> list[str]:
    """`VBoxManage export` for one VM: OVF 2.0, SHA-256 manifest, MAC addresses left out so
    each imported copy gets its own, and the product fields from workshop.yml."""
    argv = [
        program, "export", vm,
        "--output", str(output),
        "--ovf20",
        "--options", "manifest,nomacs",
        "--vsys", "0",
        "--vmname", workshop.artifact_name,
        "--product", workshop.title,
        "--version", workshop.version,
    ]
    # Empty strings would be written as empty elements; leave the option out instead.
    for option, value in (("--vendor", workshop.vendor), ("--producturl", workshop.url),
                          ("--description", workshop.description)):
        if value:
            argv += [option, value]
    if eula_file is not None:
        argv += ["--eulafile", str(eula_file)]
    return argv


def prepare_argvs(workshop: Workshop, vm: str, nat_rules: list[str], program: str = "VBoxManage") -> list[list[str]]:
    """`VBoxManage modifyvm` before the export, so the exported machine carries no more than
    a participant needs: the guest must not reach the host's 127.0.0.1 (the build may have
    turned that on), and no ssh forward unless an instructor key lets someone log in. The
    build VM loses nothing it needs: Vagrant sets its forwards again on the next `vagrant up`."""
    argvs = [[program, "modifyvm", vm, "--nat-localhostreachable1", "off"]]
    if not workshop.vm.instructor_ssh_key and SSH_RULE in nat_rules:
        argvs.append([program, "modifyvm", vm, "--natpf1", "delete", SSH_RULE])
    return argvs


def parse_forwarding_rules(machinereadable: str) -> list[str]:
    """Rule names on the first NAT adapter from `showvminfo --machinereadable`
    (lines `Forwarding(0)="ssh,tcp,127.0.0.1,2222,,22"`)."""
    names = []
    for line in machinereadable.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("Forwarding("):
            names.append(value.strip('"').split(",")[0])
    return names


def forwarding_rules(program: str, vm: str) -> list[str]:
    result = subprocess.run([program, "showvminfo", vm, "--machinereadable"], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()
        raise ApplianceError(f"VBoxManage showvminfo {vm} failed: {last[-1] if last else result.returncode}")
    return parse_forwarding_rules(result.stdout)


def run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()
        raise ApplianceError(f"VBoxManage {argv[1]} failed: {last[-1] if last else result.returncode}; "
                             "is the VM powered off (vagrant halt)?")
