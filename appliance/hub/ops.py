"""The organizer's day-of commands against the class hub: who is logged in and what each server
uses, restart one participant's server, collect everyone's notebooks. Each runs
provision/hub_ops.yml over the deploy's inventory; the server's workshop-hub script
(appliance/hub/server_ops.py) does the work there."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from appliance.config import LoadedConfig
from appliance.errors import ApplianceError, UsageError
from appliance.hub.roster import check_name
from appliance.paths import dist_dir
from appliance.table import format_table, human_size
from appliance.vm.cachepaths import workshop_state
from appliance.vm.playbook import PROVISION_DIR, playbook_command, run_ansible
from appliance.vm.provision_vars import write_provision_vars

OPS_PLAYBOOK = PROVISION_DIR / "hub_ops.yml"


def _run(config: LoadedConfig, inventory: Path, extra: dict[str, str], what: str) -> None:
    if not inventory.is_file():
        raise UsageError(f"--inventory {inventory}: no such file; give the inventory `appliance deploy --mode hub` used")
    state = workshop_state(config)
    state.mkdir(parents=True, exist_ok=True)
    command = playbook_command(inventory.resolve(), config.path, write_provision_vars(config), OPS_PLAYBOOK)
    command[1:1] = ["--extra-vars", json.dumps(extra)]
    output: list[str] = []
    try:
        # Ansible's task list is noise here; it is shown only when the operation fails.
        run_ansible(command, state / "hub-ops-report.json", what, output.append)
    except ApplianceError:
        print("\n".join(output[-40:]))
        raise


def hub_status(config: LoadedConfig, inventory: Path) -> dict:
    result = workshop_state(config) / "hub-status.json"
    result.unlink(missing_ok=True)
    _run(config, inventory, {"hub_ops_action": "status", "hub_ops_result": str(result)}, "`appliance hub status`")
    try:
        return json.loads(result.read_text())
    finally:
        result.unlink(missing_ok=True)


def format_status(status: dict) -> str:
    rows = []
    for user in status["users"]:
        limit = user.get("memory_max_bytes")
        rows.append([user["name"], "admin" if user["admin"] else "", user["server"],
                     human_size(user["memory_bytes"]) if user.get("memory_bytes") is not None else "-",
                     human_size(limit) if limit else "-", user.get("last_activity") or "never"])
    running = sum(1 for user in status["users"] if user["server"] == "ready")
    table = format_table(["user", "", "server", "memory", "limit", "last activity"], rows)
    return (f"{table}\n{running} of {len(status['users'])} servers running; "
            f"the hub and its proxy use {human_size(status.get('hub_memory_bytes'))}")


def restart_server(config: LoadedConfig, inventory: Path, user: str) -> None:
    try:
        check_name(user)
    except ValueError as exc:
        raise UsageError(f"restart {user!r}: {exc}") from None
    _run(config, inventory, {"hub_ops_action": "restart", "hub_ops_user": user}, f"restarting {user}'s server")


def collect_notebooks(config: LoadedConfig, inventory: Path, out: Path | None,
                      log: Callable[[str], None] = print) -> Path:
    """Every participant's notebooks folder in one .tar.gz on this machine (a new file each time)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    archive = out or (dist_dir() / f"{config.workshop.name}-{config.workshop.version}-notebooks-{stamp}.tar.gz")
    if archive.exists():
        raise UsageError(f"--out {archive} exists; name a new file (collected notebooks are never overwritten)")
    if not archive.name.endswith(".tar.gz"):
        raise UsageError(f"--out {archive}: name a .tar.gz file")
    archive.parent.mkdir(parents=True, exist_ok=True)
    log("collecting every participant's notebooks on the server ...")
    _run(config, inventory, {"hub_ops_action": "collect", "hub_ops_archive": str(archive.resolve())},
         "`appliance hub collect`")
    return archive
