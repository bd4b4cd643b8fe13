"""`appliance deploy --mode hub --inventory FILE [--check]`: the workshop on the organizer's servers."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from appliance.config import load_config
from appliance.paths import config_path

MODES = ("hub",)


def register(subparsers: argparse._SubParsersAction) -> None:
    deploy = subparsers.add_parser(
        "deploy", help="deploy the workshop to servers over ssh (hub: a JupyterHub for the class)",
        description="Runs provision/hub.yml against an Ansible inventory. Needs `appliance fetch --wheels` "
        "(the hub's wheels and proxy) and `appliance hub slips` (the accounts) first.",
    )
    deploy.add_argument("--mode", choices=MODES, required=True, help="hub: one JupyterHub for the whole class")
    deploy.add_argument("--inventory", type=Path, required=True, metavar="FILE", help="Ansible inventory naming the server(s)")
    deploy.add_argument("--config", type=Path, default=config_path(), help="default: workshop.yml in the repository")
    deploy.add_argument("--check", action="store_true", help="change nothing; show what would change")
    deploy.add_argument("--users-only", action="store_true",
                        help="only the accounts and the hub's allow-list (after a roster change and `hub slips`)")
    deploy.add_argument("--remove-departed", action="store_true",
                        help="remove the accounts and homes of users no longer on the roster (default: locked, files kept)")
    deploy.add_argument("--dry-run", action="store_true",
                        help="check the controller's side, print the ansible-playbook command, run nothing")
    deploy.set_defaults(run=run_deploy)


def run_deploy(args: argparse.Namespace) -> int:
    from appliance.hub.deploy import deploy_hub

    config = load_config(args.config)
    started = time.monotonic()
    report = deploy_hub(config, args.inventory, check=args.check, users_only=args.users_only,
                        remove_departed=args.remove_departed, dry_run=args.dry_run)
    if report is None:
        return 0
    print("")
    print("time per role:")
    for role, seconds in sorted(report.role_seconds.items(), key=lambda item: -item[1]):
        print(f"  {role:<20} {seconds:8.1f} s")
    print(f"{'would change' if args.check else 'changed'} tasks: {report.changed}")
    hub = config.workshop.hub
    print(f"deploy finished in {time.monotonic() - started:.0f} s; the hub: {hub.url or f'https://<server>:{hub.port}/'}")
    return 0
