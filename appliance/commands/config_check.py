"""`appliance config check [FILE]`"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.config import load_config
from appliance.paths import config_path


def register(subparsers: argparse._SubParsersAction) -> None:
    config = subparsers.add_parser("config", help="work with workshop.yml")
    actions = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate workshop.yml and the files it names")
    check.add_argument("file", nargs="?", type=Path, default=config_path(), help="default: workshop.yml in the repository")
    check.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    loaded = load_config(args.file)
    workshop = loaded.workshop
    print(
        f"{args.file}: ok: {workshop.artifact_name}, {workshop.vm.os} VM "
        f"({workshop.vm.memory_mb} MB, {workshop.vm.cpus} CPUs), "
        f"{len(workshop.notebooks)} notebooks, {len(loaded.included_assets())} assets, "
        f"Keras backend {workshop.keras_backend}"
    )
    return 0
