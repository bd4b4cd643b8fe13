"""Run provision/hub.yml against the organizer's inventory (hosts reachable by ssh), with the
settings `appliance` validated and the hub accounts `appliance hub slips` made."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path

from appliance.config import LoadedConfig
from appliance.errors import ApplianceError, UsageError
from appliance.gpu import check_gpu_ready, python_env_vars
from appliance.hub.accounts import accounts_path, hub_people
from appliance.hub.passwords import load_accounts
from appliance.paths import hub_lock_file
from appliance.vm.cachepaths import workshop_state
from appliance.vm.playbook import PROVISION_DIR, PlaybookReport, playbook_command, run_ansible
from appliance.vm.provision_vars import vars_file_path, write_provision_vars

HUB_PLAYBOOK = PROVISION_DIR / "hub.yml"


def check_ready(config: LoadedConfig, inventory: Path) -> Path:
    """Everything the play needs on the controller, checked before any host is touched."""
    if not inventory.is_file():
        raise UsageError(f"--inventory {inventory}: no such file; write an Ansible inventory naming the hub server")
    accounts = accounts_path(config)
    if not accounts.exists():
        raise UsageError(f"no hub passwords yet ({accounts}); run `appliance hub slips` first")
    stored = set(load_accounts(accounts))
    wanted = {p.name for p in hub_people(config)}
    if stored != wanted:
        raise UsageError("the roster changed since the last `appliance hub slips`; run it again "
                         "(new users get slips, everyone else keeps their password)")
    cache = config.root / "cache"
    if not any((cache / "wheels" / "hub").glob("*.whl")) or not (cache / "npm" / "node_modules").is_dir():
        raise UsageError(f"the hub's wheels or proxy are not in {cache}; run `appliance fetch --wheels`")
    if not any((cache / "wheels").glob("*.whl")):
        raise UsageError(f"the wheelhouse {cache / 'wheels'} is empty; run `appliance fetch --wheels`")
    if not hub_lock_file().is_file():
        raise ApplianceError(f"{hub_lock_file()} is missing from this checkout")
    check_gpu_ready(config)
    return accounts


def deploy_command(config: LoadedConfig, inventory: Path, accounts: Path, vars_path: Path, check: bool,
                   users_only: bool = False, remove_departed: bool = False) -> list[str]:
    command = playbook_command(inventory.resolve(), config.path, vars_path, HUB_PLAYBOOK)
    # on GPU servers (servers.gpu) python_env installs the GPU lock from its own wheelhouse
    extra = {"hub_accounts_file": str(accounts.resolve()), "hub_users_remove_departed": remove_departed,
             **python_env_vars(config)}
    command[1:1] = ["--extra-vars", json.dumps(extra)]
    # users only: the accounts and the hub's allow-list (provision/hub.yml's `users` tag), for a
    # roster change on the day without walking the whole server again
    return command + (["--tags", "users"] if users_only else []) + (["--check", "--diff"] if check else [])


def deploy_hub(config: LoadedConfig, inventory: Path, check: bool = False, users_only: bool = False,
               remove_departed: bool = False, log: Callable[[str], None] = print,
               dry_run: bool = False) -> PlaybookReport | None:
    """Run the play; with `dry_run`, only check the controller and print the command (None)."""
    accounts = check_ready(config, inventory)
    if dry_run:  # writes nothing: the vars file is named where the deploy would render it
        command = deploy_command(config, inventory, accounts, vars_file_path(config), check, users_only, remove_departed)
        log(f"ansible: {shlex.join(command)}")
        return None
    state = workshop_state(config)
    state.mkdir(parents=True, exist_ok=True)
    command = deploy_command(config, inventory, accounts, write_provision_vars(config), check, users_only,
                             remove_departed)
    return run_ansible(command, state / "hub-ansible-report.json", "the hub deploy", log)
