"""The `appliance` command: a thin layer over functions the tests call directly."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from appliance.errors import ApplianceError

# Each module has register(subparsers), which adds its sub-command and sets `run`
# (a function of the parsed arguments that returns the exit status).
COMMAND_MODULES = (
    "appliance.commands.config_check",
    "appliance.commands.fetch",
    "appliance.commands.assets",
    "appliance.commands.doctor",
    "appliance.commands.build",
    "appliance.commands.export",
    "appliance.commands.thumbdrive",
    "appliance.commands.hub",
    "appliance.commands.deploy",
    "appliance.commands.personal",
    "appliance.commands.image",
    "appliance.commands.k8s",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="Build a deep learning workshop: fetch assets, build the VM, export the OVA, write thumb drives.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a service manager, a closing terminal): the same clean-up as Ctrl-C."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(args.run(args) or 0)
    except ApplianceError as exc:
        print(f"appliance: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print("appliance: stopped (SIGTERM); nothing half-written was kept", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("appliance: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
