"""`appliance hub slips`: passwords for the class hub's users and a sheet of slips to cut."""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.config import load_config
from appliance.errors import UsageError
from appliance.paths import config_path


def register(subparsers: argparse._SubParsersAction) -> None:
    hub = subparsers.add_parser("hub", help="the class JupyterHub: passwords and slips; status, restart and collect on the day")
    actions = hub.add_subparsers(dest="hub_command", metavar="ACTION", required=True)
    slips = actions.add_parser(
        "slips", help="make passwords for new roster users and write a sheet of slips to print and cut",
        description="Reads hub.roster and hub.admins of workshop.yml. Each new user gets a random password; "
        "only its hash is kept (cache/vm/<name>-<version>/hub-accounts.json, 0600) for `appliance deploy "
        "--mode hub`. Users who already have one keep it; the sheet then holds only the new slips.",
    )
    slips.add_argument("--config", type=Path, default=config_path(), help="default: workshop.yml in the repository")
    slips.add_argument("--url", default=None, help="the address on the slips (default: hub.url of workshop.yml)")
    slips.add_argument("--reset", nargs="+", default=[], metavar="USER", help="give these users a new password")
    slips.add_argument("--out", type=Path, default=None, metavar="FILE",
                       help="the sheet, a new file (default: hub-slips-<time>.html in the workshop's state folder)")
    slips.set_defaults(run=run_slips)

    # The day-of commands: the same inventory as `appliance deploy --mode hub`.
    status = actions.add_parser("status", help="who is logged in, and the memory each participant's server uses",
                                description="Asks the hub on the server (over ssh, as the deploy does).")
    restart = actions.add_parser("restart", help="restart one participant's server (their files stay)")
    restart.add_argument("user", help="the participant's user name")
    collect = actions.add_parser("collect", help="every participant's notebooks folder in one archive on this machine")
    collect.add_argument("--out", type=Path, default=None, metavar="FILE.tar.gz",
                         help="a new file (default: dist/<name>-<version>-notebooks-<time>.tar.gz)")
    for action, run in ((status, run_status), (restart, run_restart), (collect, run_collect)):
        action.add_argument("--inventory", type=Path, required=True, metavar="FILE", help="the deploy's Ansible inventory")
        action.add_argument("--config", type=Path, default=config_path(), help="default: workshop.yml in the repository")
        action.set_defaults(run=run)


def run_slips(args: argparse.Namespace) -> int:
    from appliance.hub.accounts import accounts_path, hub_people, slips_path
    from appliance.hub.passwords import issue
    from appliance.hub.slips import render, write_sheet

    config = load_config(args.config)
    url = args.url or config.workshop.hub.url
    if url is None:
        raise UsageError("the slips need the hub's address: set hub.url in workshop.yml or give --url https://...")
    if not url.startswith("https://") or any(c.isspace() for c in url):
        raise UsageError(f"--url {url!r}: give the hub's https:// address")
    if args.out is not None and args.out.exists():
        raise UsageError(f"--out {args.out} exists; it may hold slips not yet handed out: name another file")
    people = hub_people(config)
    emails = {p.name: p.email for p in people}
    issued = issue(accounts_path(config), [p.name for p in people], args.reset)
    sheet = args.out or slips_path(config)
    if issued.new:
        write_sheet(sheet, render(config.workshop.title, url, issued.new, emails))
        print(f"{len(issued.new)} new password(s): print {sheet}, cut the slips, then delete the file")
    else:
        print("no new users: every user keeps the password on their slip")
    if issued.kept:
        print(f"{len(issued.kept)} user(s) keep their password")
    if issued.dropped:
        print(f"no longer on the roster (no hub login after the next deploy): {', '.join(issued.dropped)}")
    print(f"password hashes for the deploy: {accounts_path(config)}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from appliance.hub.ops import format_status, hub_status

    print(format_status(hub_status(load_config(args.config), args.inventory)))
    return 0


def run_restart(args: argparse.Namespace) -> int:
    from appliance.hub.ops import restart_server

    restart_server(load_config(args.config), args.inventory, args.user)
    print(f"{args.user}: server restarted (their files are as they were)")
    return 0


def run_collect(args: argparse.Namespace) -> int:
    from appliance.hub.ops import collect_notebooks

    archive = collect_notebooks(load_config(args.config), args.inventory, args.out)
    print(f"every participant's notebooks: {archive}")
    return 0
