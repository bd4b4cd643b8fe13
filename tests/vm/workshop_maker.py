"""A small workshop for building real VMs: the repository's lock and wheelhouse, assets the
test makes (both hash kinds), one smoke notebook, free host ports. Used by the VM tier and
by bench/build.py."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from freeports import free_ports


@dataclass
class TestAsset:
    name: str
    place: str
    hash: str


def make_workshop(root: Path, repo_root: Path) -> tuple[Path, dict[str, int], list[TestAsset]]:
    """A small workshop: real lock and wheelhouse, test-made assets, one smoke notebook."""
    cache = root / "cache"
    cache.mkdir()
    (repo_root / "cache" / "vm").mkdir(parents=True, exist_ok=True)
    (cache / "vm").symlink_to(repo_root / "cache" / "vm")  # the base image cache
    (cache / "wheels").symlink_to(repo_root / "cache" / "wheels")
    (root / "requirements").symlink_to(repo_root / "requirements")

    # Assets the test makes, with the two hash kinds the manifest allows.
    weights = os.urandom(200_000)
    text = b"To be, or not to be\n" * 500
    (cache / "vmtest_weights.h5").write_bytes(weights)
    (cache / "vmtest.txt").write_bytes(text)
    assets = [
        TestAsset("vmtest_weights.h5", "keras/models/vmtest_weights.h5", "sha256:" + hashlib.sha256(weights).hexdigest()),
        TestAsset("vmtest.txt", "notebooks/data/vmtest.txt", "md5:" + hashlib.md5(text).hexdigest()),
    ]
    manifest = {
        "assets": [
            {"name": a.name, "kind": "model" if a.name.endswith(".h5") else "text", "urls": [f"https://example.org/{a.name}"],
             "hash": a.hash, "place": a.place}
            for a in assets
        ]
    }
    (root / "assets.yml").write_text(yaml.safe_dump(manifest, sort_keys=False))

    notebooks = root / "notebooks"
    notebooks.mkdir()
    smoke = {
        "cells": [
            {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": [
                "import os, pathlib\n",
                "import keras, numpy as np\n",
                "x = keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.ones((3, 4))))\n",
                "print('backend', keras.backend.backend(), 'sum', float(x))\n",
                "print('keras_home', os.environ['KERAS_HOME'])\n",
                "print('asset', pathlib.Path(os.environ['KERAS_HOME'], 'models', 'vmtest_weights.h5').stat().st_size)\n",
            ]},
        ],
        "metadata": {"kernelspec": {"name": "workshop", "display_name": "Python 3 (workshop)", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    (notebooks / "smoke.ipynb").write_text(json.dumps(smoke, indent=1))

    ports = dict(zip(("jupyter", "tensorboard", "ssh"), free_ports(3)))
    workshop = yaml.safe_load((repo_root / "workshop.yml").read_text())
    workshop.update(
        name="vmtest",
        version="1",
        title="VM test workshop",
        notebooks=["smoke.ipynb"],
        ports={"host_address": "127.0.0.1", **ports},
        assets={"manifest": "assets.yml", "include": None},
    )
    workshop["vm"].update(os="debian", memory_mb=3072, cpus=2)
    config_path = root / "workshop.yml"
    config_path.write_text(yaml.safe_dump(workshop, sort_keys=False))
    return config_path, ports, assets
