"""`appliance fetch`: fill cache/ with the workshop's assets (and, with --wheels, its wheelhouse)."""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.assets import UNPINNED, FetchOptions, failure_line, fetch_assets
from appliance.config import LoadedConfig, load_config
from appliance.errors import ApplianceError, UsageError
from appliance.gpu import check_gpu_ready, fill_gpu_wheels, gpu_wheels_dir
from appliance.manifest import Asset
from appliance.paths import config_path, lock_file
from appliance.table import format_table, human_size


class UsageError(ApplianceError):
    """A flag given wrongly: exit status 2, like every other bad input."""

    exit_code = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    fetch = subparsers.add_parser(
        "fetch",
        help="download and verify the assets the workshop needs into cache/",
        description="Download every asset workshop.yml includes into the cache, check each hash, "
        "and print a summary. Files already verified are not downloaded again.",
    )
    add_config_and_cache(fetch)
    fetch.add_argument("--offline", action="store_true", help="download nothing; only verify the cache and report")
    fetch.add_argument("--pin", nargs="+", metavar="NAME", default=[],
                       help="download these assets and write their sha256 into the manifest")
    fetch.add_argument("--only", nargs="+", metavar="NAME", default=None, help="handle only these assets")
    fetch.add_argument("--installers", action="store_true", help="include the installers (kind: installer)")
    fetch.add_argument("--wheels", action="store_true",
                       help="also fill CACHE/wheels from the lock file: every drive.platforms of workshop.yml "
                       "with drive.python, and what the VM needs; the hub's in CACHE/wheels/hub, and with "
                       "servers.gpu the GPU lock's in CACHE/wheels/gpu")
    fetch.add_argument("--python", action="append", default=[], metavar="X.Y",
                       help="with --wheels: another CPython version for the drive's platforms (repeatable), e.g. 3.12")
    fetch.add_argument("--retries", type=int, default=3, metavar="N", help="extra attempts per URL on network errors (default 3)")
    fetch.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                       help="give up on a URL that sends nothing, or less than 16 KiB, for this long (default 60)")
    fetch.set_defaults(run=run)


def add_config_and_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=config_path(), metavar="FILE",
                        help="workshop.yml to read (default: the repository's)")
    parser.add_argument("--cache", type=Path, default=None, metavar="DIR",
                        help="the asset cache (default: cache/ next to workshop.yml)")


def cache_of(args: argparse.Namespace, loaded: LoadedConfig) -> Path:
    return args.cache if args.cache is not None else loaded.root / "cache"


def select_assets(loaded: LoadedConfig, only: list[str] | None, pin: list[str], installers: bool) -> list[Asset]:
    """The assets this run handles: the config's selection, narrowed by --only or --pin."""
    known = loaded.manifest.by_name()
    for name in [*(only or []), *pin]:
        if name not in known:
            raise UsageError(f"{name!r} is not in {loaded.manifest_path}; check the name (see `appliance fetch --offline`)")
    if pin:
        return [known[name] for name in dict.fromkeys(pin)]
    chosen = loaded.included_assets()
    if not installers:
        chosen = [asset for asset in chosen if asset.kind != "installer"]
    if only is not None:
        wanted = set(only)
        chosen = [asset for asset in loaded.manifest.assets if asset.name in wanted]
    return chosen


def run(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    cache = cache_of(args, loaded)
    assets = select_assets(loaded, args.only, args.pin, args.installers)
    if args.retries < 0:
        raise UsageError("--retries must be 0 or more")
    if not args.timeout > 0:
        raise UsageError("--timeout must be more than 0 seconds")
    if args.python and not args.wheels:
        raise UsageError("--python only adds wheels: give it with --wheels")
    for version in args.python:
        if version not in ("3.11", "3.12", "3.13"):
            raise UsageError(f"--python {version}: the lock serves CPython 3.11, 3.12 or 3.13; give one of those")
    outcomes = fetch_assets(
        assets,
        cache,
        offline=args.offline,
        pin=args.pin,
        manifest_path=loaded.manifest_path,
        options=FetchOptions(retries=args.retries, timeout=args.timeout),
    )
    rows = [[o.name, human_size(o.size), o.status, _short(o.note)] for o in outcomes]
    print(format_table(["asset", "size", "status", "note"], rows))
    problem = failure_line(outcomes, cache, offline=args.offline)
    if problem:
        raise ApplianceError(problem)
    unpinned = [o.name for o in outcomes if o.status == UNPINNED]
    print(f"\n{len(outcomes)} asset(s) ready in {cache}" + (f"; unpinned (not verified): {', '.join(unpinned)}" if unpinned else ""))
    if args.wheels:
        fill_wheelhouse(loaded, cache, offline=args.offline, pythons=args.python)
    return 0


def _short(note: str, limit: int = 90) -> str:
    """Table notes stay on one screen line; the full text is in the error line below."""
    return note if len(note) <= limit else note[: limit - 3] + "..."


def fill_wheelhouse(loaded: LoadedConfig, cache: Path, *, offline: bool, pythons: list[str] | None = None) -> None:
    dest = cache / "wheels"
    if offline:
        wheels = sorted(dest.glob("*.whl")) if dest.is_dir() else []
        if not wheels:
            raise ApplianceError(f"offline: no wheels in {dest}; run `appliance fetch --wheels` where there is internet")
        print(f"wheelhouse: {len(wheels)} wheels in {dest}")
        if loaded.workshop.servers.gpu:
            check_gpu_ready(loaded, cache)
            print(f"GPU wheelhouse: every wheel of the GPU lock in {gpu_wheels_dir(cache)}")
        return
    from appliance import wheels  # only this branch needs pip and packaging

    lock = lock_file(loaded.root)
    if not lock.is_file():
        raise ApplianceError(f"{lock} does not exist; create the lock first")
    drive = loaded.workshop.drive
    wheels.fill(lock, dest, wheels.wheel_targets(drive.platforms, drive.python, pythons or []))
    fill_hub(cache)
    if loaded.workshop.servers.gpu:  # the CUDA wheels are gigabytes: only for GPU servers
        fill_gpu_wheels(loaded.root, cache)


def fill_hub(cache: Path) -> None:
    """The class hub's wheels (its one server target: CPython 3.13 on Linux x86_64, like the VM)
    in CACHE/wheels/hub and its npm proxy in CACHE/npm. The hub's environment is the tool's own
    (requirements/hub.lock of this checkout), like local/jupyter."""
    from appliance import wheels
    from appliance.hub.proxy import fetch_proxy
    from appliance.paths import hub_lock_file, requirements_dir

    wheels.fill(hub_lock_file(), cache / "wheels" / "hub", [wheels.Target("3.13", "linux_x86_64")])
    fetch_proxy(requirements_dir() / "npm", cache / "npm")
