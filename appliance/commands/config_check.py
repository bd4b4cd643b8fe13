"""`appliance config check [FILE]`"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance.config import load_config, network_warnings
from appliance.paths import config_path


def register(subparsers: argparse._SubParsersAction) -> None:
    config = subparsers.add_parser("config", help="work with workshop.yml")
    actions = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate workshop.yml and the files it names")
    check.add_argument("file", nargs="?", type=Path, default=config_path(), help="default: workshop.yml in the repository")
    check.set_defaults(run=run_check)
    render = actions.add_parser(
        "render", help="write the settings Ansible reads (workshop.yml validated, defaults filled in, VM assets chosen)",
        description="`appliance build` does this itself; run it before a plain `vagrant up`.",
    )
    render.add_argument("file", nargs="?", type=Path, default=config_path(), help="default: workshop.yml in the repository")
    render.set_defaults(run=run_render)


def run_check(args: argparse.Namespace) -> int:
    loaded = load_config(args.file)
    workshop = loaded.workshop
    print(
        f"{args.file}: ok: {workshop.artifact_name}, {workshop.vm.os} VM "
        f"({workshop.vm.memory_mb} MB, {workshop.vm.cpus} CPUs), "
        f"{len(workshop.notebooks)} notebooks, {len(loaded.included_assets())} assets, "
        f"Keras backend {workshop.keras_backend}"
    )
    for warning in network_warnings(workshop):
        print(f"appliance: warning: {warning}", file=sys.stderr)
    return 0


def run_render(args: argparse.Namespace) -> int:
    from appliance.vm.provision_vars import write_provision_vars

    print(f"wrote {write_provision_vars(load_config(args.file))}")
    return 0
