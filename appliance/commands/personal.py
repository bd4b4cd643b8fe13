"""`appliance personal password`: the personal Jupyter's password, kept only as its hash.

A command of its own rather than a step of `deploy`, as `hub slips` is for the hub: the secret is
made once, on the organizer's machine, and the deploy only reads its hash, so a deploy (or a
`--check`) never waits at a prompt and can run again unattended."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from appliance.config import load_config
from appliance.errors import UsageError
from appliance.paths import config_path


def register(subparsers: argparse._SubParsersAction) -> None:
    personal = subparsers.add_parser("personal", help="a personal Jupyter on a remote machine: its password")
    actions = personal.add_subparsers(dest="personal_command", metavar="ACTION", required=True)
    password = actions.add_parser(
        "password", help="set the password of the personal Jupyter (`deploy --mode personal` needs it)",
        description="Asks for the password twice (or makes one with --generate and prints it once) and keeps "
        "only its argon2 hash, in cache/vm/<name>-<version>/personal-password.json (0600), for "
        "`appliance deploy --mode personal`. Running it again replaces the password at the next deploy.",
    )
    password.add_argument("--config", type=Path, default=config_path(), help="default: workshop.yml in the repository")
    how = password.add_mutually_exclusive_group()
    how.add_argument("--generate", action="store_true", help="make a random password and print it once")
    how.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input (a password manager, a script)")
    password.set_defaults(run=run_password)


def _ask() -> str:
    first = getpass.getpass("New password for the personal Jupyter: ")
    second = getpass.getpass("The same password again: ")
    from appliance.personal.password import same

    if not same(first, second):
        raise UsageError("the two passwords differ; nothing was changed")
    return first


def run_password(args: argparse.Namespace) -> int:
    from appliance.personal.password import check_strength, generate, hash_password, password_path, save_hash

    config = load_config(args.config)
    if args.generate:
        password = generate()
    elif args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = _ask()
    check_strength(password)
    path = password_path(config)
    replaced = path.exists()
    save_hash(path, hash_password(password))
    if args.generate:
        print(f"the password (shown only now; give it to the user): {password}")
    print(f"{'replaced the earlier password; ' if replaced else ''}its hash is in {path} "
          "(the next `appliance deploy --mode personal` sets it)")
    return 0
