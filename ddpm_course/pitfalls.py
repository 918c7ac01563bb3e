r"""The classic bugs of chapter 08, each a real code path beside its fix.

Chapter 08 (Evaluation & pitfalls). Most of the bugs are one flag of an existing function
(``spacing="leading"``, ``clip_denoised=False``, a guidance scale, a decoder called without
dividing by the latent scale factor); the ones that need code of their own live here:

* :func:`ancestral_until_last` and :func:`last_step`: ancestral sampling (Algorithm 2 of Ho et
  al. 2020) split before its final step, so that one trajectory ends both ways: with the mean
  :math:`\mu_\theta(x_1, 1)` (right) or with noise added there too (the bug: a loop that forgets
  ``if t > 0``);
* :func:`with_schedule`: the trained network paired with another noise schedule at sampling;
* :class:`TimeBlind`: a denoiser that never sees t (a U-Net whose time embedding is fed a
  constant), to be trained and compared with the same network that sees it;
* :func:`duplicated_dataset`: a training set in which chosen images appear many times.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .diffusion import GaussianDiffusion, Model
from .samplers import ddpm_step, respace
from .schedules import NoiseSchedule
from .utils import initial_noise, model_device

__all__ = [
    "ancestral_until_last",
    "last_step",
    "with_schedule",
    "TimeBlind",
    "duplicated_dataset",
]


@torch.no_grad()
def ancestral_until_last(
    model: Model,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    steps: int = 50,
    spacing: str = "trailing",
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, GaussianDiffusion]:
    r"""Ancestral sampling on ``respace(diffusion, steps, spacing)`` down to, not through, its
    last step: returns :math:`x_1` (the state before the last step; ``shape``) and the respaced
    process, for :func:`last_step`. Every step adds :math:`\sigma_t z` (Eq. (6)-(7) of Ho et al.
    2020 through :func:`~ddpm_course.samplers.ddpm_step`)."""
    respaced = respace(diffusion, steps, spacing)
    x = initial_noise(shape, None, generator, model_device(model), torch.float32)
    for step in range(respaced.num_timesteps - 1, 0, -1):
        t = torch.full((x.shape[0],), step, dtype=torch.long)
        p = respaced.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = ddpm_step(
            x,
            p.pred_x0,
            float(respaced.alphas_cumprod[step]),
            float(respaced.alphas_cumprod[step - 1]),
            noise,
            p.log_variance,
        )
    return x, respaced


@torch.no_grad()
def last_step(
    model: Model,
    respaced: GaussianDiffusion,
    x_1: torch.Tensor,
    final_noise: bool = False,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    model_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    r"""The last ancestral step from ``x_1`` (N, C, H, W) to :math:`x_0`: the mean
    :math:`\mu_\theta(x_1, 1)`, plus :math:`\sigma_1 z` when ``final_noise`` (**the bug**:
    :math:`\sigma_1^2` is the step's variance, which improved-diffusion's clipped log-variance
    sets to the next step's :math:`\tilde\beta`, not 0)."""
    t = torch.zeros(x_1.shape[0], dtype=torch.long)
    p = respaced.p_mean_variance(model, x_1, t, clip_denoised, model_kwargs)
    noise = None
    if final_noise:
        noise = torch.randn(x_1.shape, generator=generator, dtype=x_1.dtype)
    return ddpm_step(
        x_1, p.pred_x0, float(respaced.alphas_cumprod[0]), 1.0, noise, p.log_variance
    )


def with_schedule(diffusion: GaussianDiffusion, schedule: str) -> GaussianDiffusion:
    """``diffusion`` with its betas replaced by those of ``schedule`` (``"linear"``,
    ``"cosine"``, ``"sigmoid"``) at the same T, objective and variance: **the bug** of sampling
    a network with a schedule it was not trained on (the network reads t, and t now means
    another noise level)."""
    return GaussianDiffusion(
        NoiseSchedule.from_name(schedule, diffusion.num_timesteps),
        objective=diffusion.objective,
        var_type=diffusion.var_type,
    )


class TimeBlind(nn.Module):
    """``network`` called with t = 0 whatever t is: **the bug** of a denoiser without its time
    embedding (it must guess the noise level from x_t alone). ``forward(x, t, **kwargs)`` like
    the network's; the network's own embedding layers stay, fed a constant."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.network(x, torch.zeros_like(t), **kwargs)


def duplicated_dataset(
    images: torch.Tensor,
    counts: Sequence[int],
    group_size: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training set in which images are repeated: for each count c of ``counts``,
    ``group_size`` distinct images of ``images`` (N, ...) appear c times each; every other image
    once. Returns ``(dataset, unique, count_of_unique)``: the shuffled training set
    (M, ...), the distinct images (N, ...) in a random order, and how often each appears (N,)
    int64. The groups are the first ``group_size · len(counts)`` rows of ``unique``."""
    if group_size < 1 or any(c < 1 for c in counts):
        raise ValueError(
            f"group_size and counts must be >= 1, got {group_size} and {list(counts)}"
        )
    if group_size * len(counts) > images.shape[0]:
        raise ValueError(
            f"{len(counts)} groups of group_size {group_size} need that many distinct "
            f"images; images has {images.shape[0]}"
        )
    unique = images[torch.randperm(images.shape[0], generator=generator)]
    count_of_unique = torch.ones(unique.shape[0], dtype=torch.long)
    for k, count in enumerate(counts):
        count_of_unique[k * group_size : (k + 1) * group_size] = count
    dataset = unique.repeat_interleave(count_of_unique, dim=0)
    dataset = dataset[torch.randperm(dataset.shape[0], generator=generator)]
    return dataset, unique, count_of_unique
