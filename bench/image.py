#!/usr/bin/env python3
"""Single-user image numbers, in one run: the time to build it from a warm cache (the root
file system tar and the wheelhouse already there), the archive's size (compressed, as
`appliance image build` writes it) and the image unpacked (the sum of its layers, each
layer's size), beside the VM's OVA (dist/ or the VM cache; else "absent") and the wheelhouse.

    sudo .venv/bin/python bench/image.py [--config workshop.yml] [--keep]

Without --config the workshop is the image tier's: the repository's workshop.yml, notebooks,
lock and wheelhouse, every asset generated in its real format (tests/vm/workshop_maker.py;
needs ./env, which local/setup.bash makes). Needs root. Numbers on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from appliance.config import load_config  # noqa: E402
from appliance.errors import ApplianceError  # noqa: E402
from appliance.k8s.image_build import build_image  # noqa: E402
from appliance.paths import cache_dir, dist_dir  # noqa: E402


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def gb(size: int) -> str:
    return f"{size / 1024**3:.2f} GB"


def layer_sizes(archive: Path) -> list[tuple[int, int]]:
    """(compressed, unpacked) bytes per layer, base first, read from the archive's own index."""
    with tarfile.open(archive) as tar:
        def blob(digest: str) -> tarfile.TarInfo:
            return tar.getmember("blobs/sha256/" + digest.split(":", 1)[1])

        def load(digest: str) -> dict:
            handle = tar.extractfile(blob(digest))
            assert handle is not None
            return json.load(handle)

        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = load(index["manifests"][0]["digest"])
        sizes = []
        for layer in manifest["layers"]:
            compressed = blob(layer["digest"]).size
            if layer["mediaType"].endswith("+gzip"):
                import gzip

                handle = tar.extractfile(blob(layer["digest"]))
                assert handle is not None
                unpacked = 0
                with gzip.GzipFile(fileobj=handle) as stream:
                    while chunk := stream.read(1 << 20):
                        unpacked += len(chunk)
            else:
                unpacked = compressed
            sizes.append((compressed, unpacked))
        return sizes


def ova_size(root: Path) -> str:
    found = sorted(dist_dir(root).glob("*.ova")) + sorted((cache_dir(root) / "vm").glob("**/*.ova"))
    if not found:
        return "absent (no .ova in dist/ or cache/vm; `appliance export` writes one)"
    return f"{gb(found[0].stat().st_size)} ({found[0].name})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="workshop.yml (default: the image tier's generated workshop)")
    parser.add_argument("--keep", action="store_true", help="keep the archive (default: removed after measuring)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-image-", dir=REPO_ROOT / "tmp" if (REPO_ROOT / "tmp").is_dir() else None) as work:
        if args.config:
            config_path = args.config
        else:
            from vm.workshop_maker import make_workshop

            python = REPO_ROOT / "env" / "bin" / "python"
            if not python.exists():
                progress("bench/image.py: ./env is missing; run local/setup.bash first")
                return 2
            (Path(work) / "workshop").mkdir()
            config_path, _, _ = make_workshop(Path(work) / "workshop", REPO_ROOT, python, name="imagebench")
        config = load_config(config_path)
        try:
            started = time.monotonic()
            built = build_image(config, log=progress)
            seconds = time.monotonic() - started
        except ApplianceError as exc:
            progress(f"bench/image.py: {exc}")
            return 2
        try:
            layers = layer_sizes(built.archive)
            names = ("OS + environment", "datasets + models", "notebooks + start")
            print(f"build from a warm cache: {seconds:.0f} s (" +
                  ", ".join(f"{k} {v:.0f} s" for k, v in built.stage_seconds.items()) + ")")
            print(f"archive (compressed):    {gb(built.archive.stat().st_size)}  {built.archive.name}")
            print(f"image unpacked:          {gb(sum(u for _, u in layers))}")
            for name, (compressed, unpacked) in zip(names, layers):
                print(f"  layer {name:<18} {gb(compressed)} compressed, {gb(unpacked)} unpacked")
            print(f"notebook layer reproduced: {'yes' if built.notebook_layer_reproduced else 'NO'} (committed twice)")
            for name, digest in zip(names, built.layers):
                print(f"  diff id {name:<18} {digest}")
            print(f"VM OVA:                  {ova_size(config.root)}")
            wheels = cache_dir(REPO_ROOT) / "wheels"
            total = sum(p.stat().st_size for p in wheels.rglob("*.whl"))
            print(f"wheelhouse:              {gb(total)} ({wheels}, every platform the drive serves)")
        finally:
            if not args.keep:
                built.archive.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
