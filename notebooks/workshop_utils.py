"""Small helpers shared by the workshop notebooks: where the assets are, timing, plots,
TensorBoard log folders and a results file per notebook.

Kept free of heavy imports at module level (numpy and matplotlib are imported inside the
functions that need them) so `import workshop_utils` is instant and the test harness can
use the same asset-place rules without TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

NOTEBOOKS_DIR = Path(__file__).resolve().parent

# Where each asset of the standard workshop goes, used when no assets.yml can be found
# (a notebooks folder copied out of the repository). assets.yml, when present, wins.
DEFAULT_PLACES: dict[str, str] = {
    "mnist.npz": "keras/datasets/mnist.npz",
    "shakespeare.txt": "notebooks/data/shakespeare.txt",
    "imagenet_class_index.json": "keras/models/imagenet_class_index.json",
    "inception_v3_weights_tf_dim_ordering_tf_kernels.h5":
        "keras/models/inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5":
        "keras/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
    "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5":
        "keras/models/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


class AssetMissing(FileNotFoundError):
    """An asset the notebook needs is not where the manifest puts it.

    In a notebook it shows as one short message, not a 30-line traceback: IPython prints what
    `_render_traceback_` returns instead of the traceback.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[1;31mAssetMissing\x1b[0m: {self}"]


# --- where things are -------------------------------------------------------------------

def keras_home() -> Path:
    """Keras's cache folder: $KERAS_HOME, else ~/.keras (what Keras itself uses)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def notebooks_dir() -> Path:
    return Path(os.environ.get("WORKSHOP_NOTEBOOKS_DIR") or NOTEBOOKS_DIR)


def find_manifest(start: Path | None = None) -> Path | None:
    """assets.yml: $WORKSHOP_ASSETS_MANIFEST, else the first one found walking up from here."""
    given = os.environ.get("WORKSHOP_ASSETS_MANIFEST")
    if given:
        return Path(given)
    here = (start or notebooks_dir()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "assets.yml"
        if candidate.is_file():
            return candidate
    return None


def asset_places(manifest: Path | None = None) -> dict[str, str]:
    """Asset name -> manifest place ("keras/..." or "notebooks/...")."""
    places = dict(DEFAULT_PLACES)
    manifest = manifest or find_manifest()
    if manifest is not None and manifest.is_file():
        import yaml  # in the workshop lock; only needed when a manifest is there

        data = yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}
        for entry in data.get("assets") or []:
            if entry.get("place"):
                places[entry["name"]] = entry["place"]
    return places


def place_to_path(place: str) -> Path:
    """Turn a manifest place into a file path: keras/x -> $KERAS_HOME/x, notebooks/x -> <notebooks>/x."""
    root, *rest = PurePosixPath(place).parts
    roots = {"keras": keras_home(), "notebooks": notebooks_dir()}
    if root not in roots or not rest:
        raise ValueError(f"place {place!r} must start with keras/ or notebooks/")
    return roots[root].joinpath(*rest)


def asset_path(name: str, *, must_exist: bool = True) -> Path:
    """The file of asset `name` (as named in assets.yml), checked to exist."""
    places = asset_places()
    if name not in places:
        raise KeyError(f"asset {name!r} is not in the manifest (assets.yml); known: {', '.join(sorted(places))}")
    path = place_to_path(places[name])
    if must_exist and not path.is_file():
        raise AssetMissing(
            f"{name} is missing (expected at {path}). With internet: run `bin/appliance fetch`, then "
            f"`local/setup.bash`, in the workshop folder. Without: copy cache/ from the workshop thumb drive "
            f"into the workshop folder, then run `local/setup.bash`. (The appliance VM has it preloaded.)"
        )
    return path


def load_mnist() -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """MNIST as keras.datasets.mnist.load_data() returns it, read straight from the npz.

    Why not load_data(path=...)? It resolves the name under KERAS_HOME/datasets and checks
    the file's sha256 against its own; any other file (a test's generated digits, a mirror)
    would make it download again, and notebooks never download.
    """
    import numpy as np

    with np.load(asset_path("mnist.npz")) as data:
        return (data["x_train"], data["y_train"]), (data["x_test"], data["y_test"])


def logdir(name: str) -> Path:
    """A fresh TensorBoard log folder: $WORKSHOP_LOGDIR/<name>/<time> (default notebooks/logs)."""
    base = Path(os.environ.get("WORKSHOP_LOGDIR") or notebooks_dir() / "logs")
    path = base / name / time.strftime("%Y%m%d-%H%M%S")
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- quick mode and timing --------------------------------------------------------------

def pick(quick: bool, full: Any, short: Any) -> Any:
    """`short` in quick (test) mode, else the lesson's `full` value."""
    return short if quick else full


class Timer:
    seconds: float = 0.0


@contextlib.contextmanager
def timed(label: str = "took") -> Iterator[Timer]:
    """`with timed("training") as t:` prints the seconds the block took; t.seconds keeps them."""
    timer = Timer()
    start = time.perf_counter()
    try:
        yield timer
    finally:
        timer.seconds = time.perf_counter() - start
        print(f"{label}: {timer.seconds:.1f} s")


# --- results a notebook records (read by the tests and the benchmark) --------------------

def results_dir() -> Path:
    return Path(os.environ.get("WORKSHOP_RESULTS_DIR") or notebooks_dir() / "results")


def save_results(notebook: str, **values: Any) -> Path:
    """Merge `values` into results/<notebook>.json (written to a temp name, then renamed)."""
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{notebook}.json"
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update({key: _plain(value) for key, value in values.items()})
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True))
    tmp.replace(path)
    return path


def _plain(value: Any) -> Any:
    """numpy scalars/arrays -> JSON-friendly Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --- plots ------------------------------------------------------------------------------

def plot_history(histories: Mapping[str, Any] | Any, metrics: Sequence[str] = ("loss", "accuracy"),
                 title: str = "") -> None:
    """Learning curves: one panel per metric, training solid and validation dashed.

    `histories` is a Keras History, a history dict, or {label: History/dict} to compare runs.
    """
    import matplotlib.pyplot as plt

    if hasattr(histories, "history") or (isinstance(histories, Mapping) and "loss" in histories):
        histories = {"": histories}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, (label, hist) in enumerate(histories.items()):
            data = getattr(hist, "history", hist)
            color = f"C{i}"
            if metric in data:
                ax.plot(range(1, len(data[metric]) + 1), data[metric], color=color, label=f"{label} train".strip())
            if f"val_{metric}" in data:
                ax.plot(range(1, len(data[f"val_{metric}"]) + 1), data[f"val_{metric}"], "--", color=color,
                        label=f"{label} validation".strip())
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.show()


def show_images(images: Any, labels: Sequence[Any] | None = None, ncols: int = 8,
                cmap: str | None = "gray", size: float = 1.4, title: str = "") -> None:
    """A grid of images (N,H,W) or (N,H,W,C), with an optional label above each."""
    import matplotlib.pyplot as plt
    import numpy as np

    images = np.asarray(images)
    count = len(images)
    nrows = max(1, -(-count // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * 1.1), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= count:
            continue
        image = images[i]
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        ax.imshow(image, cmap=cmap if image.ndim == 2 else None)
        if labels is not None:
            ax.set_title(str(labels[i]), fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.show()
