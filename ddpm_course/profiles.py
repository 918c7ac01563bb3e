"""The two run profiles of the course: ``quick`` (CPU, small settings, shipped weights) and ``full``.

``DDPM_COURSE_PROFILE=quick|full`` picks one; without it, ``full`` when CUDA is available, else
``quick``. Chapters branch on :func:`profile` so that the same page runs in minutes on a laptop and
at paper scale on a GPU.
"""

from __future__ import annotations

import os

import torch

from .utils import check_choice

__all__ = ["PROFILES", "profile", "default_device"]

PROFILES = ("quick", "full")


def profile() -> str:
    """The active profile, ``"quick"`` or ``"full"`` (from ``DDPM_COURSE_PROFILE``, else by hardware)."""
    name = os.environ.get("DDPM_COURSE_PROFILE")
    if name is None or name == "":
        return "full" if torch.cuda.is_available() else "quick"
    return check_choice("DDPM_COURSE_PROFILE", name.strip().lower(), PROFILES)


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
