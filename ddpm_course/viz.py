"""Pictures of images: grids of samples for the training log, the book and the exercises.

Images are NCHW tensors in the model's space, [-1, 1], unless ``value_range=(0, 1)`` says they
are already user-facing (the package's convention: models work in [-1, 1], people see [0, 1]).
Grids come back as numpy arrays in [0, 1]: (H, W) for one-channel images, (H, W, 3) for colour.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

__all__ = ["image_grid", "save_image_grid", "show_images"]


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
