"""`appliance thumbdrive build|write`"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.config import load_config
from appliance.errors import ApplianceError
from appliance.paths import config_path
from appliance.thumbdrive import layout, targets, write


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("thumbdrive", help="lay out the thumb-drive image and write it to drives")
    actions = parser.add_subparsers(dest="thumbdrive_command", metavar="ACTION", required=True)

    build = actions.add_parser("build", help="lay out the image folder: OVA, installers, local mode, guide, SHA256SUMS")
    build.add_argument("--config", type=Path, default=config_path(), help="workshop.yml (default: the repository's)")
    build.add_argument("--out", type=Path, help="image folder (default: dist/thumbdrive/<name>-<version>)")
    build.add_argument("--ova", type=Path, help="the OVA (default: dist/<name>-<version>.ova)")
    build.add_argument("--drive-size", default="16G", help="the smallest drive it must fit, e.g. 16G (default), 32GB")
    build.add_argument("--filesystem", choices=("fat32", "exfat"), default="exfat",
                       help="how the drives are formatted; FAT32 cannot hold files of 4 GiB or more (default exfat)")
    build.add_argument("--force", action="store_true",
                       help="replace --out even when it is a folder an earlier build did not make")
    build.set_defaults(run=run_build)

    wr = actions.add_parser("write", help="copy the image to mounted drives at once, then verify every file")
    wr.add_argument("targets", nargs="+", type=Path, metavar="TARGET", help="mount points of the drives")
    wr.add_argument("--image", type=Path, help="image folder (default: dist/thumbdrive/<name>-<version>)")
    wr.add_argument("--config", type=Path, default=config_path(), help="workshop.yml, to find the default image")
    wr.add_argument("--force", action="store_true",
                    help="write even to a target that is not a removable or loop-backed drive")
    wr.add_argument("--verify-only", action="store_true", help="copy nothing; re-read and check every file")
    wr.set_defaults(run=run_write)


def run_build(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    ova = args.ova or layout.default_ova(loaded)
    out = layout.check_out_folder(args.out or layout.default_out(loaded), args.force,
                                  protected=[loaded.root, loaded.path.parent, ova])
    drive_size = layout.parse_size(args.drive_size)

    plan = layout.plan_image(loaded, ova)
    needed = layout.check_fits(plan, drive_size, args.filesystem)
    for missing in plan.missing:
        print(f"thumbdrive: missing: {missing}")
    try:
        image = layout.build_image(plan, out, lambda m: print(f"thumbdrive: {m}", flush=True))
    except OSError as exc:
        # What was half-written is a marked hidden folder beside out; the next build removes it.
        raise ApplianceError(f"writing the image to {out}: {exc.strerror or exc} ({exc.filename or out})") from None
    for platform, size in plan.platform_sizes.items():
        print(f"thumbdrive: local mode for {platform}: {size / 1e9:.2f} GB (wheels, uv, Python)")
    if plan.platform_sizes:
        shared = sum(e.size for e in plan.entries if e.path.startswith(("wheels/", "tools/", "python/")))
        print(f"thumbdrive: local mode for all {len(plan.platform_sizes)} platforms: {shared / 1e9:.2f} GB "
              "(a wheel several platforms share is stored once)")
    print(f"wrote {image}: {len(plan.entries) + 1} files, {plan.total / 1e9:.2f} GB "
          f"({needed / 1e9:.2f} GB on {args.filesystem}, fits a {drive_size / 1e9:.0f} GB drive)"
          + (f"; {len(plan.missing)} missing (listed above)" if plan.missing else ""))
    return 0


def run_write(args: argparse.Namespace) -> int:
    checked = [targets.check_target(path, force=args.force) for path in args.targets]
    image = args.image
    if image is None:
        image = layout.default_out(load_config(args.config))
    if not (image / "SHA256SUMS").is_file():
        raise targets.TargetError(f"{image}: no SHA256SUMS; run `appliance thumbdrive build` first or pass --image")
    devices = [t.st_dev for t in checked]
    if len(set(devices)) != len(devices):
        raise targets.TargetError("two targets are on the same drive; give each drive once")
    states = write.write_drives(image, checked, verify_only=args.verify_only,
                                say=lambda line: print(line, flush=True))
    print(write.format_table(states))
    failed = [s for s in states if s.status != "ok"]
    return 1 if failed else 0
