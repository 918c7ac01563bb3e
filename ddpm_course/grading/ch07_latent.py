r"""The exercises of chapter 07 (Latent diffusion): the encoder's Gaussian, the scale factor, the
latent pipeline's glue and the weights of cross-attention.

Each exercise is a standalone function of explicit tensors; its reference calls
:mod:`ddpm_course.latent` and :mod:`ddpm_course.attention`. Data tensors are float32 or float64
and every answer comes back in the data's dtype.
"""

from __future__ import annotations

import torch

from ..attention import cross_attention_weights
from ..latent import (
    estimate_scale_factor,
    gaussian_kl,
    reparameterize,
    scale_latents,
    unscale_latents,
)
from .exercise import (
    ROUNDING,
    ROUNDING_REASON,
    Case,
    Exercise,
    Tolerance,
    draw_normal,
    draw_uniform,
    dtype_name,
)

__all__ = ["EXERCISES"]

# (dtype, latent shape): SD-like (N, 4, h, w) latents, flat codes, both dtypes
SHAPES = (
    (torch.float32, (4, 4, 4, 4)),
    (torch.float64, (4, 4, 4, 4)),
    (torch.float32, (3, 8)),
    (torch.float64, (2, 3, 8, 8)),
    (torch.float32, (1, 4, 2, 2)),
)


def _encoder_args(
    dtype, shape, generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mean = 3.0 * draw_normal(shape, dtype, generator)
    logvar = draw_uniform(shape, -8.0, 2.0, dtype, generator)
    return mean, logvar, draw_normal(shape, dtype, generator)


def cases_reparameterize(generator: torch.Generator) -> list[Case]:
    return [
        Case(
            f"{dtype_name(dtype)}, mean {shape}", _encoder_args(dtype, shape, generator)
        )
        for dtype, shape in SHAPES
    ]


def cases_gaussian_kl(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, shape in SHAPES:
        mean, logvar, _ = _encoder_args(dtype, shape, generator)
        # a sum of up to 768 terms of size up to ~10: the rounding scales with the sum of |terms|
        size = (mean.pow(2) + logvar.exp() + 1 + logvar.abs()).flatten(1).sum(1)
        cases.append(
            Case(
                f"{dtype_name(dtype)}, mean {shape}",
                (mean, logvar),
                scale=size.double(),
            )
        )
    return cases


def reference_scale_factor(latents):
    return torch.tensor(estimate_scale_factor(latents), dtype=latents.dtype)


def cases_scale_factor(generator: torch.Generator) -> list[Case]:
    cases = []
    for (dtype, shape), std in zip(SHAPES, (5.5, 0.3, 1.0, 12.0, 2.0), strict=True):
        latents = std * draw_normal(shape, dtype, generator) + 0.5
        cases.append(
            Case(f"{dtype_name(dtype)}, latents {shape} of std about {std}", (latents,))
        )
    return cases


def cases_scale_latents(generator: torch.Generator) -> list[Case]:
    cases = []
    for (dtype, shape), s in zip(SHAPES, (0.18215, 1.0, 0.5, 2.3, 0.0625), strict=True):
        cases.append(
            Case(
                f"{dtype_name(dtype)}, mean {shape}, s = {s}",
                (*_encoder_args(dtype, shape, generator), s),
            )
        )
    return cases


def cases_unscale_latents(generator: torch.Generator) -> list[Case]:
    cases = []
    for (dtype, shape), s in zip(SHAPES, (0.18215, 1.0, 0.5, 2.3, 0.0625), strict=True):
        cases.append(
            Case(
                f"{dtype_name(dtype)}, latents {shape}, s = {s}",
                (draw_normal(shape, dtype, generator), s),
            )
        )
    return cases


def cases_cross_attention_weights(generator: torch.Generator) -> list[Case]:
    configs = (
        (torch.float32, (2, 16, 32), (2, 6, 32)),  # 4×4 positions attending to 6 tokens
        (torch.float64, (2, 4, 16, 8), (2, 4, 6, 8)),  # with heads
        (torch.float32, (1, 2, 4, 5, 8), (1, 2, 4, 3, 8)),
        (torch.float64, (3, 1, 4), (3, 7, 4)),
    )
    cases = []
    for dtype, q_shape, k_shape in configs:
        args = (
            2.0 * draw_normal(q_shape, dtype, generator),
            2.0 * draw_normal(k_shape, dtype, generator),
        )
        cases.append(
            Case(f"{dtype_name(dtype)}, queries {q_shape}, keys {k_shape}", args)
        )
    return cases


LATENT = "ddpm_course.latent"
ATTENTION = "ddpm_course.attention"

EXERCISES = (
    Exercise(
        name="reparameterize",
        signature="reparameterize(mean, logvar, noise)",
        reference=reparameterize,
        make_cases=cases_reparameterize,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON,
        hint=(
            "z is off. Too spread out: the noise was scaled by the variance, or by the "
            "log-variance, where the std belongs (half the log-variance, exponentiated). "
            "Reread chapter 07, “A small KL-regularised autoencoder” (the "
            "reparameterisation trick)."
        ),
        output_names=("z",),
        package_functions=(f"{LATENT}.reparameterize", f"{LATENT}.scale_latents"),
    ),
    Exercise(
        name="gaussian_kl",
        signature="gaussian_kl(mean, logvar)",
        reference=gaussian_kl,
        make_cases=cases_gaussian_kl,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON + ", scaled by the sum of the terms' sizes",
        hint=(
            "The KL is off. Off by a factor 2: the ½; off by the number of latent values: a "
            "mean where the sum over all but the first dimension belongs; not 0 at mean 0 "
            "and log-variance 0: the −1 or the −log-variance term is missing. Reread "
            "chapter 07, “A small KL-regularised autoencoder” (chapter 03 has the KL of two "
            "Gaussians)."
        ),
        output_names=("kl",),
        package_functions=(f"{LATENT}.gaussian_kl", f"{LATENT}.vae_loss"),
    ),
    Exercise(
        name="scale_factor",
        signature="scale_factor(latents)",
        reference=reference_scale_factor,
        make_cases=cases_scale_factor,
        tolerances={
            torch.float32: Tolerance(rtol=1e-5, atol=1e-7),
            torch.float64: Tolerance(rtol=1e-10, atol=1e-12),
        },
        tolerance_reason="a standard deviation over up to 512 values, summed in different orders",
        hint=(
            "The scale factor is off. By a factor √(n/(n − 1)) for n values: the biased std "
            "where torch's default, the unbiased one, is meant; off by much more: one std "
            "per channel, or the std itself where its reciprocal belongs. Reread chapter "
            "07, “The scale factor”."
        ),
        output_names=("scale_factor",),
        package_functions=(f"{LATENT}.estimate_scale_factor",),
    ),
    Exercise(
        name="scale_latents",
        signature="scale_latents(mean, logvar, noise, scale_factor)",
        reference=scale_latents,
        make_cases=cases_scale_latents,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON,
        hint=(
            "z0 is off. The latent is a reparameterised sample of the posterior, then "
            "scaled: off by the scale factor exactly means it was skipped or applied twice; "
            "the reparameterize mistakes (variance where the std belongs) show here too. "
            "Reread chapter 07, “The scale factor”."
        ),
        output_names=("z0",),
        package_functions=(
            f"{LATENT}.scale_latents",
            f"{LATENT}.LatentDiffusion.encode",
        ),
    ),
    Exercise(
        name="unscale_latents",
        signature="unscale_latents(latents, scale_factor)",
        reference=unscale_latents,
        make_cases=cases_unscale_latents,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON,
        hint=(
            "The latents are off. A got/expected ratio equal to the scale factor: nothing "
            "was undone; its square: the factor was applied again instead of undone. The "
            "decoder was trained on unscaled latents. Reread chapter 07, “The scale "
            "factor”."
        ),
        output_names=("z",),
        package_functions=(
            f"{LATENT}.unscale_latents",
            f"{LATENT}.LatentDiffusion.decode",
        ),
    ),
    Exercise(
        name="cross_attention_weights",
        signature="cross_attention_weights(queries, keys)",
        reference=cross_attention_weights,
        make_cases=cases_cross_attention_weights,
        tolerances={
            torch.float32: Tolerance(rtol=1e-5, atol=1e-6),
            torch.float64: Tolerance(rtol=1e-10, atol=1e-12),
        },
        tolerance_reason="dot products of up to 32 terms, then a softmax",
        hint=(
            "The weights are off. Rows that do not sum to 1: the softmax ran over the "
            "queries, not the keys; too peaked or too flat: the scores must be divided by "
            "the square root of the key dimension, not by it or not at all. Reread chapter "
            "07, “Conditioning by cross-attention”."
        ),
        output_names=("weights",),
        package_functions=(
            f"{ATTENTION}.cross_attention_weights",
            f"{ATTENTION}.CrossAttention",
        ),
    ),
)
