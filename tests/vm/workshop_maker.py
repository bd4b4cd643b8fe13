"""The real workshop for building real VMs: the repository's workshop.yml (its defaults, its
notebook list), lock and wheelhouse, and every asset the VM gets made on the spot in its real
format at its manifest place (the notebook tier's generators: the real downloads are not
reachable everywhere). Only the name, the ports and `vm.os: debian` (what the qemu provider
builds) differ. Used by the VM tier and by bench/build.py."""

from __future__ import annotations

import hashlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from freeports import free_ports

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "notebooks"))
import fake_assets  # noqa: E402
import fake_weights  # noqa: E402

# Small but real: quick mode reads these, and the notebook tier uses the same sizes.
FAKE_SIZES = {"mnist.npz": 3000, "shakespeare.txt": 60_000}


@dataclass
class TestAsset:
    name: str
    place: str
    hash: str
    kind: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def make_assets(cache: Path, repo_root: Path, python: Path) -> list[TestAsset]:
    """Every asset of the repository's manifest that has a place in the VM, generated into
    `cache` with `python` (the workshop environment: the generators need numpy and Keras)."""
    manifest = yaml.safe_load((repo_root / "assets.yml").read_text())
    assets = []
    for entry in manifest["assets"]:
        if not entry.get("place") or entry.get("kind") == "installer":
            continue
        name = entry["name"]
        target = cache / name
        if name in fake_weights.WEIGHT_ASSETS:
            # ~200 MB of random weights take minutes to make: cached per Keras version
            shutil.copyfile(fake_weights.cached_weights(name, python), target)
        else:
            fake_assets.generate_asset(name, target, python, size=FAKE_SIZES.get(name))
        assets.append(TestAsset(name, entry["place"], "sha256:" + _sha256(target), entry["kind"]))
    return assets


def make_workshop(root: Path, repo_root: Path, python: Path, name: str = "vmtest") -> tuple[Path, dict[str, int], list[TestAsset]]:
    """The repository's workshop in `root`, with generated assets and free host ports."""
    cache = root / "cache"
    cache.mkdir()
    (repo_root / "cache" / "vm").mkdir(parents=True, exist_ok=True)
    (cache / "vm").symlink_to(repo_root / "cache" / "vm")  # the root file system cache
    (cache / "wheels").symlink_to(repo_root / "cache" / "wheels")
    (repo_root / "cache" / "tools").mkdir(exist_ok=True)
    (cache / "tools").symlink_to(repo_root / "cache" / "tools")  # the pinned uv wheel, fetched once
    (root / "requirements").symlink_to(repo_root / "requirements")
    shutil.copytree(repo_root / "notebooks", root / "notebooks",
                    ignore=shutil.ignore_patterns("results", "logs", ".ipynb_checkpoints", "__pycache__"))

    assets = make_assets(cache, repo_root, python)
    manifest = {"assets": [
        {"name": a.name, "kind": a.kind, "urls": [f"https://example.org/{a.name}"],
         "hash": a.hash, "place": a.place}
        for a in assets
    ]}  # fmt: skip
    (root / "assets.yml").write_text(yaml.safe_dump(manifest, sort_keys=False))

    ports = dict(zip(("jupyter", "tensorboard", "ssh"), free_ports(3)))
    workshop = yaml.safe_load((repo_root / "workshop.yml").read_text())
    workshop.update(
        name=name,
        version="1",
        ports={"host_address": "127.0.0.1", **ports},
        assets={"manifest": "assets.yml", "include": None},
    )
    workshop["vm"]["os"] = "debian"  # what the qemu provider builds; memory, cpus, disk stay the repository's
    config_path = root / "workshop.yml"
    config_path.write_text(yaml.safe_dump(workshop, sort_keys=False))
    return config_path, ports, assets
