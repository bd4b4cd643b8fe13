"""`appliance deploy --mode hub|personal --inventory FILE [--check]`: the workshop on the organizer's servers."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from appliance.config import LoadedConfig, load_config
from appliance.errors import UsageError
from appliance.paths import config_path
from appliance.vm.playbook import PlaybookReport

MODES = ("hub", "personal")


def register(subparsers: argparse._SubParsersAction) -> None:
    deploy = subparsers.add_parser(
        "deploy", help="deploy the workshop to servers over ssh (hub: a JupyterHub for the class; "
        "personal: one user's HTTPS Jupyter)",
        description="Runs provision/hub.yml or provision/personal.yml against an Ansible inventory. Needs "
        "`appliance fetch --wheels` first, and `appliance hub slips` (hub) or `appliance personal password` (personal).",
    )
    deploy.add_argument("--mode", choices=MODES, required=True,
                        help="hub: one JupyterHub for the whole class; personal: one user's Jupyter over HTTPS")
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


def _print_report(report: PlaybookReport, check: bool) -> None:
    print("")
    print("time per role:")
    for role, seconds in sorted(report.role_seconds.items(), key=lambda item: -item[1]):
        print(f"  {role:<20} {seconds:8.1f} s")
    print(f"{'would change' if check else 'changed'} tasks: {report.changed}")


def run_deploy(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    started = time.monotonic()
    if args.mode == "personal":
        given = [flag for flag, on in (("--users-only", args.users_only), ("--remove-departed", args.remove_departed),
                                       ("--dry-run", args.dry_run)) if on]
        if given:
            raise UsageError(f"{given[0]} is for --mode hub; leave it out of a personal deploy")
        return _run_personal(config, args, started)
    from appliance.hub.deploy import deploy_hub

    report = deploy_hub(config, args.inventory, check=args.check, users_only=args.users_only,
                        remove_departed=args.remove_departed, dry_run=args.dry_run)
    if report is None:
        return 0
    _print_report(report, args.check)
    hub = config.workshop.hub
    print(f"deploy finished in {time.monotonic() - started:.0f} s; the hub: {hub.url or f'https://<server>:{hub.port}/'}")
    return 0


def _run_personal(config: LoadedConfig, args: argparse.Namespace, started: float) -> int:
    from appliance.personal.deploy import deploy_personal, host_certificates

    report = deploy_personal(config, args.inventory, check=args.check)
    _print_report(report, args.check)
    personal = config.workshop.personal
    host = personal.acme.domain if personal.acme else "<server>"
    print(f"deploy finished in {time.monotonic() - started:.0f} s; Jupyter: https://{host}:{personal.port}/ "
          f"(TensorBoard: /tensorboard/), log in with the password of `appliance personal password`")
    if not args.check and personal.acme is None:
        for cert in host_certificates(config):
            print(f"certificate of {cert.host}: {cert.path}, SHA-256 fingerprint {cert.sha256}")
    return 0
