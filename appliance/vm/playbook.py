"""Run provision/site.yml the way Vagrant's `ansible` provisioner does: an inventory naming
the forwarded ssh port, user and key (or, for the qemu provider's build at host speed, a
root file system in a folder reached through community.general.chroot), workshop.yml as an
extra variable, and provision/ansible.cfg as the configuration."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.config import LoadedConfig
from appliance.errors import ApplianceError
from appliance.paths import REPO_ROOT
from appliance.vm.cachepaths import workshop_state
from appliance.vm.provision_vars import write_provision_vars

PROVISION_DIR = REPO_ROOT / "provision"
PLAYBOOK = PROVISION_DIR / "site.yml"
# Sealing for export: run by `appliance export`, never by a re-provisioning.
FINALIZE_PLAYBOOK = PROVISION_DIR / "finalize.yml"
ANSIBLE_CFG = PROVISION_DIR / "ansible.cfg"


@dataclass(frozen=True)
class Connection:
    host: str
    port: int
    user: str
    key: Path


@dataclass(frozen=True)
class ChrootConnection:
    """A root file system in a host folder (needs root on the controller)."""

    root: Path


@dataclass(frozen=True)
class PlaybookReport:
    role_seconds: dict[str, float]
    total_seconds: float
    changed_tasks: list[str]
    failed_tasks: list[str]
    slowest_tasks: dict[str, float] = field(default_factory=dict)  # "role : task" -> seconds, slowest first

    @property
    def changed(self) -> int:
        return len(self.changed_tasks)


def ansible_playbook() -> str:
    """ansible-playbook from the tool venv next to this Python, else from PATH."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        raise ApplianceError("ansible-playbook is not installed; run `pip install -e .[vm]` (bin/install-test-deps does)")
    return found


def inventory_line(connection: Connection | ChrootConnection) -> str:
    if isinstance(connection, ChrootConnection):
        # Already root in the chroot: sudo there would only add a process per task.
        return f"default ansible_connection=community.general.chroot ansible_host='{connection.root}' ansible_become=false\n"
    # The same line Vagrant writes to .vagrant/provisioners/ansible/inventory.
    return (
        f"default ansible_host={connection.host} ansible_port={connection.port} "
        f"ansible_user='{connection.user}' ansible_ssh_private_key_file='{connection.key}' "
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n"
    )


def write_inventory(path: Path, connection: Connection | ChrootConnection) -> None:
    path.write_text(inventory_line(connection))


def playbook_command(inventory: Path, config_path: Path, vars_path: Path, playbook: Path = PLAYBOOK) -> list[str]:
    extra = {"workshop_config": str(config_path.resolve()), "workshop_vars": str(vars_path.resolve())}
    return [
        ansible_playbook(),
        "--inventory", str(inventory),
        "--extra-vars", json.dumps(extra),
        str(playbook),
    ]  # fmt: skip


def playbook_environment(report: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(ANSIBLE_CFG)
    env["APPLIANCE_ANSIBLE_REPORT"] = str(report)
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_playbook(
    connection: Connection | ChrootConnection,
    config: LoadedConfig,
    log: Callable[[str], None] = print,
    playbook: Path = PLAYBOOK,
) -> PlaybookReport:
    state_dir = workshop_state(config)
    state_dir.mkdir(parents=True, exist_ok=True)
    inventory = state_dir / "inventory"
    report = state_dir / "ansible-report.json"
    write_inventory(inventory, connection)
    vars_path = write_provision_vars(config)
    command = playbook_command(inventory, config.path, vars_path, playbook)
    return run_ansible(command, report, "provisioning", log)


def run_ansible(command: list[str], report: Path, what: str, log: Callable[[str], None] = print) -> PlaybookReport:
    """ansible-playbook with the timing callback writing `report`, its output streamed to `log`;
    a failed play is one line naming `what` and the failed tasks."""
    report.unlink(missing_ok=True)
    log(f"ansible: {shlex.join(command)}")
    with subprocess.Popen(
        command, env=playbook_environment(report), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            log(line.rstrip("\n"))
        status = process.wait()
    if not report.exists():
        raise ApplianceError(f"ansible-playbook ended (exit {status}) before the play finished; see the output above")
    data = json.loads(report.read_text())
    result = PlaybookReport(
        role_seconds=data["roles"],
        total_seconds=data["total_seconds"],
        changed_tasks=data["changed_tasks"],
        failed_tasks=data["failed_tasks"],
        slowest_tasks=data.get("slowest_tasks", {}),
    )
    if status != 0:
        failed = ", ".join(result.failed_tasks) or "see the output above"
        raise ApplianceError(f"{what} failed (ansible-playbook exit {status}): {failed}")
    return result
