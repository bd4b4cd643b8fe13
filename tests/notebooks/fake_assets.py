"""Stand-ins for the workshop's downloaded assets, in their real formats, for the tests.

The notebooks never download and read each asset from its manifest place; the tests put a
generated file of the same format there: an mnist.npz with the real keys, shapes and dtypes
holding *learnable* digits (each class a distinct stroke pattern, shifted and noisy, so a
model must really learn to beat chance), a play-like text, an ImageNet class index, Keras
application weights (random, in the legacy HDF5 layout Keras publishes) and small JPEGs.

The generators need numpy / Keras, which live in the workshop environment, not in the
test tool venv: `generate(kind, path, python)` runs this file with the workshop python.
Usage as a script: python fake_assets.py KIND PATH [--size N] [--seed S]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

# Asset name (assets.yml) -> generator kind.
ASSET_KINDS: dict[str, str] = {
    "mnist.npz": "mnist",
    "shakespeare.txt": "shakespeare",
    "imagenet_class_index.json": "imagenet_class_index",
    "inception_v3_weights_tf_dim_ordering_tf_kernels.h5": "weights:InceptionV3",
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5": "weights:MobileNetV2",
    "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5": "weights:VGG19:notop",
}


def generate(kind: str, path: Path, python: Path, *, size: int | None = None, seed: int = 0,
             timeout: float = 900) -> Path:
    """Write a fake asset of `kind` at `path` using the workshop python (temp name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial" + path.suffix)
    command = [str(python), str(Path(__file__).resolve()), kind, str(tmp), "--seed", str(seed)]
    if size is not None:
        command += ["--size", str(size)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            env={**_quiet_env(), "KERAS_BACKEND": "tensorflow"})
    if result.returncode != 0:
        raise RuntimeError(f"making fake {kind} failed:\n{result.stderr[-3000:]}")
    tmp.replace(path)
    return path


def generate_asset(name: str, path: Path, python: Path, **options) -> Path:
    if name not in ASSET_KINDS:
        raise KeyError(f"no fake generator for asset {name!r}; add one to tests/notebooks/fake_assets.py")
    return generate(ASSET_KINDS[name], path, python, **options)


def _quiet_env() -> dict[str, str]:
    import os

    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


# --- generators (run inside the workshop python) ----------------------------------------

def make_mnist(path: Path, size: int | None, seed: int) -> None:
    """Learnable digits: class c is a fixed set of 3 strokes, drawn shifted by up to 3 px,
    with random stroke brightness and background noise. Real keys/shapes/dtypes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_train = size or 6000
    n_test = max(n_train // 6, 200)
    templates = np.zeros((10, 28, 28), dtype=np.float32)
    for digit in range(10):
        for _ in range(3):
            # a horizontal, vertical or diagonal stroke at a class-specific place
            kind = rng.integers(3)
            r, c = rng.integers(6, 22, size=2)
            length = int(rng.integers(6, 12))
            for t in range(length):
                rr, cc = {0: (r, c + t - length // 2), 1: (r + t - length // 2, c),
                          2: (r + t - length // 2, c + t - length // 2)}[int(kind)]
                if 2 <= rr < 26 and 2 <= cc < 26:
                    templates[digit, rr - 1:rr + 1, cc - 1:cc + 1] = 1.0

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, size=count).astype(np.uint8)
        images = np.empty((count, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            dy, dx = rng.integers(-3, 4, size=2)
            image = np.roll(templates[label], (dy, dx), axis=(0, 1)) * rng.uniform(0.6, 1.0)
            image = image + rng.normal(0.0, 0.12, size=(28, 28))
            images[i] = np.clip(image * 255, 0, 255).astype(np.uint8)
        return images, labels

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    with open(path, "wb") as handle:  # np.savez would append .npz to the temp name
        np.savez_compressed(handle, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def make_shakespeare(path: Path, size: int | None, seed: int) -> None:
    """A play-like text: speaker lines of verse from a small vocabulary (size = characters)."""
    import random

    rng = random.Random(seed)
    speakers = ["ROMEO", "JULIET", "HAMLET", "OPHELIA", "KING LEAR", "MACBETH", "PORTIA"]
    words = ("thou thee thy love night day sweet fair death lord lady heart king crown "
             "heaven grief honour gentle speak hath doth shall would good what which "
             "the and to of my is in not with be but me our all so").split()
    target = size or 60_000
    chunks: list[str] = []
    total = 0
    while total < target:
        lines = [f"{rng.choice(speakers)}:"]
        for _ in range(rng.randint(1, 4)):
            line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 9)))
            lines.append(line[0].upper() + line[1:] + rng.choice([",", ".", ";", "!", "?"]))
        chunk = "\n".join(lines) + "\n\n"
        chunks.append(chunk)
        total += len(chunk)
    path.write_text("".join(chunks), encoding="utf-8")


def make_imagenet_class_index(path: Path, size: int | None, seed: int) -> None:
    import json

    index = {str(i): [f"n{10000000 + i:08d}", f"class_{i}"] for i in range(1000)}
    path.write_text(json.dumps(index), encoding="utf-8")


def make_weights(path: Path, spec: str) -> None:
    """Random weights of a keras.applications model, in the legacy HDF5 layout of Keras's
    published files (layer_names / weight_names attributes) that load_weights(.h5) reads."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    name, *flags = spec.split(":")
    model = getattr(keras.applications, name)(weights=None, include_top="notop" not in flags)
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)


def make_jpeg(path: Path, size: int | None, seed: int) -> None:
    """A small colour photo stand-in: smooth gradients plus a few random blobs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    side = size or 160
    y, x = np.mgrid[0:side, 0:side] / side
    image = np.stack([x, y, 1 - x * y], axis=-1) * rng.uniform(80, 200, size=3)
    for _ in range(4):
        cy, cx, radius = rng.uniform(0, side, 2).tolist() + [rng.uniform(side / 10, side / 4)]
        mask = (np.mgrid[0:side, 0:side][0] - cy) ** 2 + (np.mgrid[0:side, 0:side][1] - cx) ** 2 < radius**2
        image[mask] = rng.uniform(0, 255, size=3)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind")
    parser.add_argument("path", type=Path)
    parser.add_argument("--size", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.kind.startswith("weights:"):
        make_weights(args.path, args.kind.split(":", 1)[1])
        return 0
    makers = {"mnist": make_mnist, "shakespeare": make_shakespeare,
              "imagenet_class_index": make_imagenet_class_index, "jpeg": make_jpeg}
    if args.kind not in makers:
        parser.error(f"unknown kind {args.kind!r}; one of {sorted(makers)} or weights:<Application>[:notop]")
    makers[args.kind](args.path, args.size, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
