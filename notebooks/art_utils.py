"""Helpers for notebook 05 (neural style transfer): a generated "painting" to use as the style
when you have no artwork at hand, and conversions between photos and VGG19's input format."""

from __future__ import annotations

import numpy as np

# VGG networks were trained on BGR images with the ImageNet mean pixel subtracted ("caffe" mode).
VGG_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype="float32")

NIGHT_PALETTE = ["#0b1d51", "#1f3b8c", "#2e5cb8", "#4f86c6", "#9cc3e6", "#f2d64b", "#f7b32b", "#1a1a2e"]


def swirl_painting(height: int = 256, width: int = 256, seed: int = 0, strokes: int = 2500) -> np.ndarray:
    """A generated picture of thick brush strokes that follow a few swirling vortices, in night-sky
    blues and yellows (a nod to Van Gogh's Starry Night). Returns uint8 (height, width, 3)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rng = np.random.default_rng(seed)
    centres = rng.uniform([0.15, 0.15], [0.85, 0.85], size=(4, 2))
    spins = rng.choice([-1.0, 1.0], size=4) * rng.uniform(0.5, 1.5, size=4)

    def flow(p: np.ndarray) -> np.ndarray:
        v = np.array([1.0, 0.15])  # a gentle drift to the right, like wind
        for (cx, cy), s in zip(centres, spins):
            d = p - (cx, cy)
            r2 = (d**2).sum() + 0.01
            v = v + s * np.array([-d[1], d[0]]) / r2 * 0.08
        return v / (np.linalg.norm(v) + 1e-9)

    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    ax.set_facecolor(NIGHT_PALETTE[0])
    fig.patch.set_facecolor(NIGHT_PALETTE[0])
    for _ in range(strokes):
        p = rng.uniform(0, 1, size=2)
        points = [p]
        for _ in range(int(rng.integers(4, 10))):
            p = p + flow(p) * 0.012
            points.append(p)
        points = np.array(points)
        # yellow strokes near vortex centres (the "stars"), blues elsewhere
        near = min(np.linalg.norm(points[0] - c) for c in centres)
        colour = NIGHT_PALETTE[int(rng.integers(5, 7))] if near < 0.08 else NIGHT_PALETTE[int(rng.integers(1, 5))]
        ax.plot(points[:, 0], points[:, 1], color=colour, lw=rng.uniform(1.5, 4.0), alpha=0.85,
                solid_capstyle="round")
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return rgba[:height, :width, :3].copy()


def to_vgg(image: np.ndarray) -> np.ndarray:
    """RGB 0..255 (H, W, 3) -> VGG input (1, H, W, 3): BGR, mean subtracted."""
    return (np.asarray(image, dtype="float32")[..., ::-1] - VGG_MEAN_BGR)[None]


def from_vgg(x: np.ndarray) -> np.ndarray:
    """VGG input (1, H, W, 3) or (H, W, 3) -> displayable RGB uint8 (H, W, 3)."""
    x = np.asarray(x, dtype="float32").reshape(x.shape[-3:])
    return np.clip(x + VGG_MEAN_BGR, 0, 255)[..., ::-1].astype("uint8")
