"""`appliance doctor`: check this machine for what the workshop needs."""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.commands.fetch import add_config_and_cache, cache_of
from appliance.config import load_config
from appliance.doctor import BUILD_MANIFEST, any_failed, run_checks
from appliance.table import format_table


def register(subparsers: argparse._SubParsersAction) -> None:
    doctor = subparsers.add_parser(
        "doctor",
        help="check this machine: Python, memory, disk, AVX, ports, assets (and VM support with --vm)",
        description="Check what makes a workshop fail on a participant's machine and say what to do. "
        "Exit status 1 when any check FAILs.",
    )
    add_config_and_cache(doctor)
    doctor.add_argument("--vm", action="store_true", help="also check VT-x/AMD-V, VirtualBox and vagrant")
    doctor.add_argument("--build-manifest", type=Path, default=BUILD_MANIFEST, metavar="FILE",
                        help=f"the appliance's build manifest to summarize (default: {BUILD_MANIFEST})")
    doctor.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    checks = run_checks(loaded, cache_of(args, loaded), vm=args.vm, build_manifest=args.build_manifest)
    rows = [[c.name, c.status, c.found, c.advice] for c in checks]
    print(format_table(["check", "status", "found", "what to do"], rows))
    if any_failed(checks):
        failed = ", ".join(c.name for c in checks if c.status == "FAIL")
        print(f"\ndoctor: FAIL: {failed}; see 'what to do' above")
        return 1
    print("\ndoctor: this machine is ready" + (" (with warnings)" if any(c.status == "warn" for c in checks) else ""))
    return 0
