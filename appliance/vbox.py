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


def run_export(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()
        raise ApplianceError(f"VBoxManage export failed: {last[-1] if last else result.returncode}; "
                             "is the VM powered off (vagrant halt)?")
