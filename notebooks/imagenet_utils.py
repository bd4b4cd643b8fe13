"""Helpers for the pretrained-network notebooks (03 ImageNet, 04 transfer learning, 05 style transfer):
load a keras.applications model from the preloaded weights file (never a download), read the
ImageNet class names, load photos, decode predictions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

import workshop_utils

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

# keras.applications constructor, the manifest asset holding its weights, and its input side.
APPLICATIONS: dict[str, tuple[str, str, int]] = {
    "InceptionV3": ("inception_v3", "inception_v3_weights_tf_dim_ordering_tf_kernels.h5", 299),
    "MobileNetV2": ("mobilenet_v2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5", 224),
    "VGG19": ("vgg19", "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", 224),
}


def load_application(name: str, **options: Any):
    """Build keras.applications.<name> without weights, then load them from the asset's place.

    Why not weights="imagenet"? Keras would look for the file by its own name and hash and download
    it when they don't match; here the file is preloaded (the appliance has no internet).
    """
    import keras

    module, asset, _ = APPLICATIONS[name]
    weights = workshop_utils.asset_path(asset)
    model = getattr(keras.applications, name)(weights=None, **options)
    model.load_weights(str(weights))
    return model


def preprocess(name: str, images: np.ndarray) -> np.ndarray:
    """The input scaling the network was trained with (inception: [-1, 1]; VGG: BGR minus mean)."""
    import keras

    module = APPLICATIONS[name][0]
    return getattr(keras.applications, module).preprocess_input(np.array(images, dtype="float32"))


def input_size(name: str) -> int:
    return APPLICATIONS[name][2]


def class_names() -> list[str]:
    """The 1000 ImageNet class names in output order, from imagenet_class_index.json
    ({"0": ["n01440764", "tench"], ...})."""
    index = json.loads(workshop_utils.asset_path("imagenet_class_index.json").read_text())
    return [index[str(i)][1] for i in range(len(index))]


def top_k(probabilities: np.ndarray, names: list[str], k: int = 5) -> list[tuple[str, float]]:
    order = np.argsort(probabilities)[::-1][:k]
    return [(names[i], float(probabilities[i])) for i in order]


def list_images(folder: Path) -> list[Path]:
    """Image files in folder (sorted), skipping hidden files and notes."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def load_image(path: Path, size: int | tuple[int, int], crop: bool = True) -> np.ndarray:
    """An RGB image as a float32 (H, W, 3) array in 0..255, resized to size (centre-cropped to a
    square first when crop=True, as the ImageNet networks saw their training photos)."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        height, width = (size, size) if isinstance(size, int) else size
        if crop:
            image = ImageOps.fit(image, (width, height), Image.BICUBIC)
        else:
            image = image.resize((width, height), Image.BICUBIC)
        return np.asarray(image, dtype="float32")


def class_folders(root: Path) -> dict[str, list[Path]]:
    """{class name: image files} for a folder with one sub-folder per class."""
    folders = sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
    return {folder.name: list_images(folder) for folder in folders if list_images(folder)}
