"""`appliance image build`: the Zero to JupyterHub single-user image (an OCI archive in dist/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.config import load_config
from appliance.paths import config_path


def register(subparsers: argparse._SubParsersAction) -> None:
    image = subparsers.add_parser("image", help="the single-user OCI image for Zero to JupyterHub")
    actions = image.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build", help="write dist/<name>-<version>-singleuser.oci.tar and print the line that pushes it",
        description="Builds (as root, with buildah) the single-user image from the qemu provider's Debian 13 root "
        "file system, the lock and wheelhouse (no package index), the assets and the notebooks; no registry is "
        "needed. The organizer pushes the archive with the printed `skopeo copy` line.",
    )
    build.add_argument("--config", type=Path, default=config_path(), help="workshop.yml (default: the repository's)")
    build.add_argument("--out", type=Path, default=None, help="output folder (default: dist/)")
    build.set_defaults(run=run_build)


def run_build(args: argparse.Namespace) -> int:
    from appliance.k8s.image_build import build_image

    config = load_config(args.config)
    built = build_image(config, args.out)
    print(f"image {built.reference}: {len(built.layers)} layers (OS and environment, assets, notebooks)")
    for what, digest in zip(("OS and environment", "assets", "notebooks"), built.layers):
        print(f"  {digest}  {what}")
    print("push it to your registry (replace REGISTRY, e.g. registry.example.org/workshop):")
    print(built.push_line)
    return 0
