"""Training the latent denoiser of chapter 07: the Trainer of chapter 04 on scaled latents.

Kept apart from :mod:`ddpm_course.latent` so that sampling a latent model (which imports
``latent``) never imports the trainer. ``ddpm-course train --preset digits-ldm|fashion-ldm``
runs :class:`LatentTrainer` with :func:`ldm_train_config` on the shipped autoencoder's latents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import TRAIN_PRESETS, TrainConfig
from .latent import LatentDiffusion
from .train import Trainer
from .utils import check_choice
from .viz import save_image_grid

__all__ = ["LatentTrainer", "ldm_train_config", "LDM_TRAIN", "LDM_AUTOENCODER"]


# the training settings of each shipped latent model, over its preset's (the U-Net is
# latent.LDM_UNETS[name]): digits-ldm the digits recipe; fashion-ldm the fashion recipe
# (sigmoid schedule, min-SNR-5) at batch 128 on fashion-vae's latents
LDM_TRAIN: dict[str, dict[str, Any]] = {
    "digits-ldm": {
        **TRAIN_PRESETS["digits"], "preset": "digits", "image_size": 4, "channels": 4,
        "class_conditional": True, "num_classes": 10, "p_uncond": 0.1, "max_steps": 3000,
        "sample_every": 0, "checkpoint_every": 1000, "lr": 1e-3,
    },
    "fashion-ldm": {
        **TRAIN_PRESETS["fashion"], "preset": "fashion", "image_size": 7, "channels": 4,
        "class_conditional": True, "num_classes": 10, "p_uncond": 0.1, "lr": 1e-3,
        "batch_size": 128, "max_steps": 6000, "sample_every": 2000, "checkpoint_every": 500,
    },
}  # fmt: skip
# the autoencoder whose latents each latent model diffuses
LDM_AUTOENCODER = {"digits-ldm": "digits-vae", "fashion-ldm": "fashion-vae"}


def ldm_train_config(name: str = "digits-ldm", **overrides: Any) -> TrainConfig:
    """The :class:`~ddpm_course.config.TrainConfig` of latent model ``name`` (``digits-ldm``:
    4×4×4 latents; ``fashion-ldm``: 7×7×4), labels = the prompts' classes with prompt dropout
    ``p_uncond`` (the null prompt), with ``overrides``."""
    check_choice("latent model", name, LDM_TRAIN)
    return TrainConfig.from_dict(
        {**LDM_TRAIN[name], "out_dir": f"runs/{name}", **overrides}
    )


class LatentTrainer(Trainer):
    """The package's :class:`~ddpm_course.train.Trainer` on scaled latents: trains ``ldm.denoiser``
    on ``ldm.encode(images)`` (one posterior sample per image, drawn once, 1,000 images at a time), with the labels as
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
        generator = torch.Generator().manual_seed(config.seed)
        # in chunks: 60,000 Fashion-MNIST images at once would hold gigabytes of activations
        latents = torch.cat(
            [ldm.encode(chunk, generator=generator) for chunk in images.split(1000)]
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
