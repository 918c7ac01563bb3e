r"""Latent diffusion (Rombach et al. 2022): diffuse the code of an autoencoder, not the pixels.

Chapter 07 (Latent diffusion). The pieces, in the order the chapter builds them:

* :class:`~ddpm_course.autoencoder.AutoencoderKL` (:mod:`ddpm_course.autoencoder`): a small
  KL-regularised autoencoder, 16×16×1 → 4×4×4 for the digits.
* :func:`estimate_scale_factor`: :math:`1 / \mathrm{std}(z)` over a batch of latents (LDM,
  Appendix G; Stable Diffusion v1's 0.18215), so that the diffused latents have unit variance
  like the N(0, I) noise at t = T.
* :class:`LatentDiffusion`: the autoencoder, a denoiser of scaled latents and the scale factor.
  ``encode`` (image → scaled latent), ``decode`` (scaled latent → image), and ``forward`` is the
  denoiser, so that the :class:`~ddpm_course.train.Trainer` (on a latents tensor) and every
  sampler of :mod:`ddpm_course.samplers` (with the latent shape) take it as they take a U-Net.
* Conditioning by cross-attention (:mod:`ddpm_course.attention`): the prompt ("seven") is spelled
  into tokens, embedded by a small prompt encoder standing in for a text encoder, and attended to
  by the U-Net (:class:`~ddpm_course.attention.CrossAttnUNet`).

Shapes: images (N, 1, 16, 16) in [-1, 1]; latents (N, 4, 4, 4).

``ddpm-course train --preset fashion-vae`` and ``ddpm-course train --preset fashion-ldm`` (then
``python -m ddpm_course.pretrained export runs/fashion-ldm fashion-ldm``) reproduce the shipped
``fashion-vae`` and ``fashion-ldm`` (the digits presets likewise); ``python -m
ddpm_course.experiments.fashion_models --only latent --out ddpm_course/results/07_fashion.json`` the
chapter's numbers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .attention import (
    DIGIT_NAMES,
    PROMPT_VOCABULARIES,
    PromptVocabulary,
    prompt_labels,
    tokenize,
)
from .autoencoder import AutoencoderKL, gaussian_kl, reparameterize
from .guidance import ClassifierFreeGuidance
from .samplers import sample
from .utils import check_class_labels

__all__ = [
    "estimate_scale_factor",
    "scale_latents",
    "unscale_latents",
    "LatentDiffusion",
    "latent_sample",
    "LDM_UNET",
    "LDM_UNETS",
    "prompt_vocabulary",
    "DIGIT_NAMES",
    "tokenize",
    "prompt_labels",
    # chapter 07's exercises (grading/ch07_latent) import these two from here
    "gaussian_kl",
    "reparameterize",
]


# -------------------------------------------------------------------------- the latent scale
def estimate_scale_factor(latents: torch.Tensor) -> float:
    r"""The latent scale factor :math:`1 / \mathrm{std}(z)` over every value of a batch of latents
    (Rombach et al. 2022, Appendix G; Stable Diffusion v1 ships 0.18215). latents: (N, ...)."""
    if latents.numel() < 2:
        raise ValueError(
            f"latents must hold at least 2 values, got shape {tuple(latents.shape)}"
        )
    return float(1.0 / latents.detach().double().flatten().std())


def scale_latents(
    mean: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor, scale_factor: float
) -> torch.Tensor:
    r"""The diffusion model's data from the encoder's output: :math:`z_0 = s\,(\mu + \sigma\epsilon)`
    (a posterior sample, times the scale factor s). mean, logvar, noise: (N, c, h, w)."""
    return scale_factor * reparameterize(mean, logvar, noise)


def unscale_latents(latents: torch.Tensor, scale_factor: float) -> torch.Tensor:
    r"""The decoder's input from a sampled latent: :math:`z = z_0 / s`. latents: (N, c, h, w)."""
    return latents / scale_factor


# ------------------------------------------------------------------ latent diffusion wrapper
class LatentDiffusion(nn.Module):
    r"""Latent diffusion: encode → scale → diffuse → unscale → decode.

    Holds the (frozen) ``autoencoder``, the ``denoiser`` of scaled latents and ``scale_factor`` s.

    * ``encode(x, generator=None, sample=True)``: :math:`s\,(\mu + \sigma\epsilon)` (or
      :math:`s\,\mu` without ``sample``): images (N, 1, 16, 16) → latents (N, 4, 4, 4).
    * ``decode(z)``: the decoder of :math:`z / s`: latents → images in [-1, 1] (clamped).
    * ``forward(z_t, t, **kwargs)`` is ``denoiser(z_t, t, **kwargs)``: pass the wrapper to any
      sampler with ``shape=(n, *latent_shape)`` (or :func:`latent_sample`, which also decodes),
      to :class:`~ddpm_course.guidance.ClassifierFreeGuidance` (``num_classes`` is the
      denoiser's), or train ``denoiser`` on ``encode(images)`` with the Trainer
      (:class:`LatentTrainer`).
    """

    def __init__(
        self, autoencoder: AutoencoderKL, denoiser: nn.Module, scale_factor: float
    ) -> None:
        super().__init__()
        if not (
            isinstance(scale_factor, (int, float))
            and math.isfinite(scale_factor)
            and scale_factor > 0
        ):
            raise ValueError(
                f"scale_factor must be a positive number, got {scale_factor!r}"
            )
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.denoiser = denoiser
        self.scale_factor = float(scale_factor)
        self.num_classes = getattr(denoiser, "num_classes", None)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.denoiser.image_size
        return (self.autoencoder.latent_channels, size, size)

    @torch.no_grad()
    def encode(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> torch.Tensor:
        mean, logvar = self.autoencoder.encode(x)
        if not sample:
            return self.scale_factor * mean
        noise = torch.randn(
            mean.shape, generator=generator, device=mean.device, dtype=mean.dtype
        )
        return scale_latents(mean, logvar, noise, self.scale_factor)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(
            unscale_latents(latents, self.scale_factor)
        ).clamp(-1, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.denoiser(x, t, **kwargs)


def prompt_vocabulary(ldm: LatentDiffusion) -> PromptVocabulary:
    """The :class:`~ddpm_course.attention.PromptVocabulary` of a latent model's denoiser (the
    digits' names for a denoiser without one)."""
    return getattr(ldm.denoiser, "vocabulary", PROMPT_VOCABULARIES["digits"])


@torch.no_grad()
def latent_sample(
    ldm: LatentDiffusion,
    diffusion,
    n: int,
    sampler: str = "ddim",
    prompt: str | list[str] | None = None,
    labels: torch.Tensor | None = None,
    guidance_scale: float = 0.0,
    generator: torch.Generator | None = None,
    decode: bool = True,
    **sampler_kwargs: Any,
) -> torch.Tensor:
    r"""``n`` images from ``ldm``: the sampler ``sampler`` of :func:`ddpm_course.samplers.sample`
    (default DDIM) in latent space, without x0 clipping, then :meth:`LatentDiffusion.decode`.

    ``prompt``: a class name of the model's prompt vocabulary (a digit's name for
    ``digits-ldm``, a garment's for ``fashion-ldm``) for every image, a list of ``n`` names, or
    None; or ``labels`` (n,), the prompts' classes (10 is the empty prompt). Neither: the empty prompt. ``guidance_scale``
    w > 0 applies classifier-free guidance (:class:`~ddpm_course.guidance.ClassifierFreeGuidance`,
    Eq. 6 of Ho & Salimans 2022). ``sampler_kwargs`` go to the sampler (``steps``, ``eta``,
    ``spacing``, ``progress``, ...). ``spacing`` defaults to ``"leading"`` here, not the
    samplers' ``"trailing"``: latents are not clipped, and on a schedule whose last ᾱ is tiny
    (``fashion-ldm``'s sigmoid schedule: 3e-7) trailing's first step from t = T - 1 amplifies
    the network's error by 1/√ᾱ; its samples diverge (FD 266 against 11.8 for leading, 200
    samples of ``fashion-ldm`` at DDIM-50). Returns images (n, 1, H, H) in [-1, 1], or the latents
    without ``decode``.
    """
    device = next(ldm.parameters()).device
    if prompt is not None:
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n:
            raise ValueError(
                f"prompt must be one string or a list of n={n} strings, got {len(prompts)}"
            )
        labels = prompt_vocabulary(ldm).labels(prompts)
    elif labels is not None:
        labels = check_class_labels(labels, len(prompt_vocabulary(ldm).names), n)
    elif guidance_scale > 0:
        raise ValueError("guidance_scale > 0 needs a prompt to guide towards")
    model: nn.Module = ldm
    if guidance_scale > 0:
        model = ClassifierFreeGuidance(ldm, guidance_scale)
    model_kwargs = None if labels is None else {"y": labels.to(device)}
    sampler_kwargs.setdefault("spacing", "leading")
    latents = sample(sampler, model, diffusion, (n, *ldm.latent_shape), generator=generator,
                     model_kwargs=model_kwargs, device=device, clip_denoised=False,
                     **sampler_kwargs)  # fmt: skip
    return ldm.decode(latents) if decode else latents


# ------------------------------------------------------------------ training the latent model
# the latent U-Net: 4×4×4 in, levels 4 and 2, self- and cross-attention at both
LDM_UNET: dict[str, Any] = {
    "image_size": 4, "in_channels": 4, "model_channels": 32, "channel_mults": (1, 2),
    "num_res_blocks": 2, "attention_resolutions": (4, 2), "dropout": 0.0, "num_groups": 8,
    "head_channels": 32, "context_dim": 64, "num_prompt_classes": 10,
}  # fmt: skip
# the latent U-Nets of the shipped latent models. fashion-ldm: fashion-vae's 7×7×4 latents at
# one level (7 is odd: no halving), 64 channels, self- and cross-attention on the words of the
# garment's name in the middle block only. On one thread a forward pass of 64 latents took
# 0.24× the pixel `fashion` U-Net's on 64 images (0.41× with attention in every block too).
LDM_UNETS: dict[str, dict[str, Any]] = {
    "digits-ldm": LDM_UNET,
    "fashion-ldm": {
        "image_size": 7, "in_channels": 4, "model_channels": 64, "channel_mults": (1,),
        "num_res_blocks": 2, "attention_resolutions": (), "dropout": 0.0, "num_groups": 8,
        "head_channels": 32, "context_dim": 64, "num_prompt_classes": 10,
        "prompts": "fashion",
    },
}  # fmt: skip
