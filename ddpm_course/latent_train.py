"""Training the latent denoiser of chapter 07: the Trainer of chapter 04 on scaled latents.

Kept apart from :mod:`ddpm_course.latent` so that sampling a latent model (which imports
``latent``) never imports the trainer. ``ddpm-course train --preset digits-ldm`` runs
:class:`LatentTrainer` with :func:`ldm_train_config` on the shipped autoencoder's latents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import TRAIN_PRESETS, TrainConfig
from .latent import LatentDiffusion
from .train import Trainer
from .viz import save_image_grid

__all__ = ["LatentTrainer", "ldm_train_config"]


def ldm_train_config(**overrides: Any):
    """The :class:`~ddpm_course.config.TrainConfig` of ``digits-ldm``: the digits recipe on
    4×4×4 latents, labels = the prompt's digit with prompt dropout 0.1 (the null prompt)."""
    base = dict(TRAIN_PRESETS["digits"])
    values = {
        **base, "preset": "digits", "image_size": 4, "channels": 4, "class_conditional": True,
        "num_classes": 10, "p_uncond": 0.1, "max_steps": 3000, "sample_every": 0,
        "checkpoint_every": 1000, "lr": 1e-3, "out_dir": "runs/digits-ldm",
    }  # fmt: skip
    values.update(overrides)
    return TrainConfig.from_dict(values)


class LatentTrainer(Trainer):
    """The package's :class:`~ddpm_course.train.Trainer` on scaled latents: trains ``ldm.denoiser``
    on ``ldm.encode(images)`` (one posterior sample per image, drawn once), with the labels as
    the prompts' digits; its sample grids are decoded to images. ``autoencoder`` names the
    shipped autoencoder that ``ldm`` holds: the weights' sidecar records it and the scale factor,
    so that :func:`~ddpm_course.loading.load_model` rebuilds the whole latent model."""

    def __init__(
        self,
        config,
        ldm: LatentDiffusion,
        images: torch.Tensor,
        labels: torch.Tensor,
        autoencoder: str = "digits-vae",
    ) -> None:
        latents = ldm.encode(
            images, generator=torch.Generator().manual_seed(config.seed)
        )
        self.ldm, self.autoencoder_name = ldm, autoencoder
        super().__init__(config, model=ldm.denoiser, dataset=(latents, labels))

    def _model_metadata(self) -> dict[str, Any]:
        return {
            **super()._model_metadata(),
            "autoencoder": self.autoencoder_name,
            "scale_factor": self.ldm.scale_factor,
        }

    def save_samples(self) -> Path:
        path = self.samples_dir / f"step_{self.step:07d}.png"
        if self.is_main:
            generator = torch.Generator(self.device).manual_seed(self.config.seed)
            latents = self.sample(generator=generator)
            save_image_grid(
                self.ldm.autoencoder.to(self.device)
                .decode(latents / self.ldm.scale_factor)
                .cpu(),
                path,
            )
        self._last_sample_step = self.step
        return path
