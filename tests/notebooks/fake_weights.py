"""Random Keras application weights for the notebook tests, cached across test runs.

Building InceptionV3 / MobileNetV2 / VGG19 and writing ~200 MB of weights takes a while, so the
files fake_assets.py generates (random values in the legacy HDF5 layout of Keras's published
files, which `model.load_weights("<name>.h5")` reads) are kept under
cache/test-fakes/keras-<keras version>/ and copied to their manifest places for each session.
The key is the workshop env's Keras version: the layer order inside the file follows it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import fake_assets

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE = REPO_ROOT / "cache" / "test-fakes"

WEIGHT_ASSETS = [name for name, kind in fake_assets.ASSET_KINDS.items() if kind.startswith("weights:")]


def keras_version(python: Path) -> str:
    """The Keras version in the workshop env, read from package metadata (no TensorFlow import)."""
    result = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('keras'))"],
                            capture_output=True, text=True, check=True, timeout=120)
    return result.stdout.strip()


def cached_weights(name: str, python: Path) -> Path:
    """The cached fake weights file for asset `name`, generated on first use."""
    if name not in WEIGHT_ASSETS:
        raise KeyError(f"{name} is not a weights asset; one of {WEIGHT_ASSETS}")
    path = CACHE / f"keras-{keras_version(python)}" / name
    if not path.is_file():
        fake_assets.generate_asset(name, path, python)  # temp name, then rename: no half files
    return path


def place_weights(env, names: list[str]) -> None:
    """Put cached fake weights at their manifest places in a notebook_env (see conftest.py), and
    mark them made so the harness does not generate them again."""
    for name in names:
        if name in env.made:
            continue
        target = env.asset_file(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached_weights(name, env.python), target)
        env.made.add(name)
