"""Pictures of images: grids of samples for the training log, the book and the exercises.

Images are NCHW tensors in the model's space, [-1, 1], unless ``value_range=(0, 1)`` says they
are already user-facing (the package's convention: models work in [-1, 1], people see [0, 1]).
Grids come back as numpy arrays in [0, 1]: (H, W) for one-channel images, (H, W, 3) for colour.
:func:`player` turns a sequence of image batches into a frame-by-frame player (play, pause, step,
slider) that works on a static HTML page with no network.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

__all__ = ["image_grid", "player", "player_html", "save_image_grid", "show_images"]


def image_grid(
    images: torch.Tensor,
    nrow: int | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    padding: int = 2,
) -> np.ndarray:
    """Tile ``images`` (N, C, H, W) with C = 1 or 3 into one picture, ``nrow`` images per row.

    ``value_range`` is the range the images live in: (-1, 1) for model outputs (the default) or
    (0, 1); values outside it are clipped. ``nrow`` defaults to ceil(sqrt(N)), a square-ish grid.
    Returns a float32 array in [0, 1]: (H', W') for one channel, (H', W', 3) for three, with
    ``padding`` white pixels between the images (``torchvision.utils.make_grid``).
    """
    images = torch.as_tensor(images).detach()
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"images must have shape (N, 1 or 3, H, W), got {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError("no images to put in a grid (N = 0)")
    low, high = value_range
    if not high > low:
        raise ValueError(
            f"value_range must be (low, high) with high > low, e.g. (-1, 1) or (0, 1); got {value_range}"
        )
    unit = ((images.float().cpu() - low) / (high - low)).clamp(0, 1)
    nrow = nrow or math.ceil(math.sqrt(unit.shape[0]))
    grid = make_grid(
        unit, nrow=nrow, padding=padding, pad_value=1.0
    )  # (3, H', W'), channels repeated if C = 1
    if images.shape[1] == 1:
        return grid[0].numpy()
    return grid.permute(1, 2, 0).contiguous().numpy()


def save_image_grid(
    images: torch.Tensor,
    path: str | Path,
    nrow: int | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> Path:
    """Write :func:`image_grid` of ``images`` (N, C, H, W) to the PNG file ``path`` (8-bit; grey for
    one channel, RGB for three), creating the folder if needed. Returns the path."""
    from PIL import Image

    grid = image_grid(images, nrow=nrow, value_range=value_range)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(grid * 255).astype(np.uint8)).save(path, format="PNG")
    return path


def show_images(
    images: torch.Tensor,
    ax=None,
    title: str | None = None,
    nrow: int | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
):
    """Draw :func:`image_grid` of ``images`` (N, C, H, W) on a matplotlib axis (a new figure when
    ``ax`` is None), grey-scale for one channel, without ticks. Returns the axis."""
    import matplotlib.pyplot as plt

    grid = image_grid(images, nrow=nrow, value_range=value_range)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(
        grid,
        cmap="gray" if grid.ndim == 2 else None,
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
    )
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax


# matplotlib's player draws its buttons with Font Awesome icons fetched from a CDN; offline they
# would be blank. These characters replace them (each button keeps its title and aria-label).
_PLAYER_GLYPHS = {
    "fa fa-minus": "\u2212",  # slower
    "fa fa-fast-backward": "|\u25c0\u25c0",  # first frame
    "fa fa-step-backward": "|\u25c0",  # previous frame
    "fa fa-play fa-flip-horizontal": "\u25c0",  # play backwards
    "fa fa-pause": "\u275a\u275a",  # pause
    "fa fa-play": "\u25b6",  # play
    "fa fa-step-forward": "\u25b6|",  # next frame
    "fa fa-fast-forward": "\u25b6\u25b6|",  # last frame
    "fa fa-plus": "+",  # faster
}
_FONT_AWESOME_LINK = re.compile(r"<link[^>]*font-awesome[^>]*>\s*")
_ICON = re.compile(r'<i class="(fa [^"]+)"></i>')


def _offline_player(html: str) -> str:
    """matplotlib's ``to_jshtml`` page with its CDN stylesheet removed and each icon a glyph."""
    html = _FONT_AWESOME_LINK.sub("", html)

    def glyph(match: re.Match) -> str:
        if match.group(1) not in _PLAYER_GLYPHS:
            raise ValueError(
                f"unknown player icon {match.group(1)!r} in matplotlib's HTML"
            )
        return _PLAYER_GLYPHS[match.group(1)]

    return _ICON.sub(glyph, html)


def player_html(
    frames: Sequence[torch.Tensor] | torch.Tensor,
    titles: Sequence[str] | None = None,
    nrow: int | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    pixels_per_pixel: int = 3,
    interval_ms: int = 250,
) -> str:
    """The HTML of a frame-by-frame player of ``frames``: a sequence of F image batches
    (N, C, H, W) with the same shape (or one (F, N, C, H, W) tensor), each shown as an
    :func:`image_grid` with ``nrow`` images per row and its title from ``titles`` (F strings).

    The player is matplotlib's ``FuncAnimation(...).to_jshtml()``: every frame embedded as a PNG,
    buttons for play, play backwards, pause, step, first and last frame, speed, and a slider;
    plain JavaScript with nothing fetched from the network, so it works on a static page offline.
    Each image pixel is drawn as ``pixels_per_pixel`` screen pixels (the PNGs grow with its
    square); ``interval_ms`` is the delay between frames when playing.
    """
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    if torch.is_tensor(frames) and frames.ndim == 5:
        frames = list(frames)
    frames = list(frames)
    if not frames:
        raise ValueError("frames is empty: give at least one (N, C, H, W) batch")
    shapes = {tuple(torch.as_tensor(frame).shape) for frame in frames}
    if len(shapes) != 1:
        raise ValueError(
            f"every frame must have the same shape (N, C, H, W), got {sorted(shapes)}"
        )
    if titles is not None and len(titles) != len(frames):
        raise ValueError(
            f"titles must have one string per frame: {len(titles)} titles, "
            f"{len(frames)} frames"
        )
    if not (isinstance(pixels_per_pixel, int) and pixels_per_pixel >= 1):
        raise ValueError(
            f"pixels_per_pixel must be an integer >= 1, got {pixels_per_pixel!r}"
        )
    grids = [image_grid(frame, nrow=nrow, value_range=value_range) for frame in frames]
    height, width = grids[0].shape[:2]
    dpi = 100
    title_px = 24 if titles is not None else 0
    fig = plt.figure(
        figsize=(
            width * pixels_per_pixel / dpi,
            (height * pixels_per_pixel + title_px) / dpi,
        ),
        dpi=dpi,
    )
    ax = fig.add_axes(
        (
            0.0,
            0.0,
            1.0,
            height * pixels_per_pixel / (height * pixels_per_pixel + title_px),
        )
    )
    ax.set_axis_off()
    image = ax.imshow(
        grids[0],
        cmap="gray" if grids[0].ndim == 2 else None,
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
    )
    label = fig.text(0.5, 1.0, "", ha="center", va="top", fontsize=9)

    def draw(k: int):
        image.set_data(grids[k])
        if titles is not None:
            label.set_text(titles[k])
        return image, label

    draw(0)
    animation = FuncAnimation(
        fig, draw, frames=len(grids), interval=interval_ms, blit=False
    )
    try:
        html = animation.to_jshtml(default_mode="once")
    finally:
        plt.close(fig)
    return _offline_player(html)


def player(
    frames: Sequence[torch.Tensor] | torch.Tensor,
    titles: Sequence[str] | None = None,
    nrow: int | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    pixels_per_pixel: int = 3,
    interval_ms: int = 250,
):
    """:func:`player_html` wrapped in ``IPython.display.HTML``: the last expression of a notebook
    cell, it shows the player (in Jupyter, Colab, and on the built book's static page)."""
    from IPython.display import HTML

    return HTML(
        player_html(frames, titles, nrow, value_range, pixels_per_pixel, interval_ms)
    )
