"""`appliance build [--provider virtualbox|libvirt|qemu] [--provision-only] [--config FILE] [--dry-run]`"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from appliance.config import LoadedConfig, load_config
from appliance.errors import ApplianceError
from appliance.paths import config_path, lock_file, wheels_dir

PROVIDERS = ("virtualbox", "libvirt", "qemu")


def register(subparsers: argparse._SubParsersAction) -> None:
    build = subparsers.add_parser("build", help="build the workshop VM (Vagrant + Ansible, or qemu on Linux)")
    build.add_argument("--provider", choices=PROVIDERS, default="virtualbox", help="default: virtualbox")
    build.add_argument("--provision-only", action="store_true", help="re-run the playbook on the built VM")
    build.add_argument("--config", type=Path, default=config_path(), help="default: workshop.yml in the repository")
    build.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    build.set_defaults(run=run_build)


def log(line: str) -> None:
    print(line, flush=True)


def check_cache(config: LoadedConfig) -> None:
    """What `appliance fetch --offline` checks, as far as the build needs it: the lock, the
    wheelhouse, and every asset with a place in the VM present in cache/ with its hash."""
    lock = lock_file(config.root)
    if not lock.is_file():
        raise ApplianceError(f"{lock} is missing; the VM installs exactly the lock")
    wheels = wheels_dir(config.root)
    if not wheels.is_dir() or not any(wheels.glob("*.whl")):
        raise ApplianceError(f"the wheelhouse {wheels} is empty; run `appliance fetch` first")
    from appliance.assets import check_cached, failure_line
    from appliance.paths import cache_dir

    cache = cache_dir(config.root)
    outcomes = [check_cached(asset, cache) for asset in config.included_assets() if asset.place]
    problem = failure_line(outcomes, cache, offline=True)
    if problem:
        raise ApplianceError(problem)


def run_build(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.provider == "qemu":
        from appliance.vm.qemu_build import check_os

        check_os(config)
    if args.dry_run:
        for command in dry_run_commands(config, args.provider, args.provision_only):
            print(command)
        return 0
    if args.provider != "qemu":
        from appliance.vm import vagrant_driver

        vagrant_driver.check_available(args.provider)
    check_cache(config)
    started = time.monotonic()
    if args.provider == "qemu":
        from appliance.vm import qemu_build

        result = qemu_build.build(config, provision_only=args.provision_only, log=log)
        report = result.report
        log("")
        log("time per role:")
        for role, seconds in sorted(report.role_seconds.items(), key=lambda item: -item[1]):
            log(f"  {role:<20} {seconds:8.1f} s")
        log(f"changed tasks: {report.changed}")
        if result.boot_seconds:
            log(f"verification boot: Jupyter ready after {result.boot_seconds:.0f} s")
        log(f"built disk: {result.disk} (halted)")
    else:
        from appliance.vm import vagrant_driver

        vagrant_driver.build(config, args.provider, args.provision_only, log=log)
    print_access(config)
    log(f"build finished in {time.monotonic() - started:.0f} s")
    return 0


def print_access(config: LoadedConfig) -> None:
    from appliance.vm.cachepaths import jupyter_token_path

    ports = config.workshop.ports
    host = "localhost" if ports.host_address in ("127.0.0.1", "0.0.0.0") else ports.host_address
    token_file = jupyter_token_path(config)
    if config.workshop.jupyter.password_hash:
        secret = " (password from workshop.yml)"
    elif token_file.exists():
        secret = f"?token={token_file.read_text().split()[0]}"
    else:
        secret = ""
    log(f"Jupyter:     http://{host}:{ports.jupyter}/lab{secret}")
    log(f"TensorBoard: http://{host}:{ports.tensorboard}/")


def dry_run_commands(config: LoadedConfig, provider: str, provision_only: bool) -> list[str]:
    if provider == "qemu":
        from appliance.vm.qemu_build import planned_build_commands

        return planned_build_commands(config, provision_only)
    from appliance.vm import vagrant_driver

    return vagrant_driver.planned_commands(config, provider, provision_only)
