r"""Noise schedules: the betas of the forward process and every quantity derived from them.

Chapter 03 (The ELBO). The forward process adds noise in ``T`` steps,
:math:`q(x_t \mid x_{t-1}) = \mathcal N(\sqrt{1-\beta_t}\,x_{t-1}, \beta_t I)`, so that
:math:`q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\,x_0, (1-\bar\alpha_t) I)` with
:math:`\alpha_t = 1-\beta_t` and :math:`\bar\alpha_t = \prod_{s \le t} \alpha_s` (Eq. (4) of Ho et al. 2020).

Everything here is computed in float64 (1 - alphas_cumprod loses digits in float32 near t = 0)
and indexed by the discrete time t in {0, ..., T-1}, t = 0 the least noisy step.
:func:`timestep_sequence` places the few trained timesteps that a fast sampler visits
(chapter 05; :mod:`ddpm_course.samplers` uses it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from .utils import check_choice

__all__ = [
    "linear",
    "cosine",
    "sigmoid",
    "get_betas",
    "NoiseSchedule",
    "SCHEDULES",
    "SPACINGS",
    "DEFAULT_SPACING",
    "timestep_sequence",
]


def _check_T(T: int) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(
            f"the number of timesteps T must be a positive integer, got {T!r}"
        )


def linear(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    r"""Linear betas from ``beta_start`` to ``beta_end`` (Ho et al. 2020, Sec. 4): (T,) float64."""
    _check_T(T)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(
            f"need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}"
        )
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def _betas_from_alpha_bar(alpha_bar, T: int, max_beta: float) -> torch.Tensor:
    r""":math:`\beta_i = \min(1 - \bar\alpha((i+1)/T) / \bar\alpha(i/T), \beta_{max})` for a
    continuous :math:`\bar\alpha(s)`, s in [0, 1]."""
    s = torch.arange(T + 1, dtype=torch.float64) / T
    alpha_bar_s = alpha_bar(s)
    return (1 - alpha_bar_s[1:] / alpha_bar_s[:-1]).clamp(max=max_beta)


def cosine(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    r"""Cosine schedule of Nichol & Dhariwal 2021 (Eq. (17)): (T,) float64.

    :math:`\bar\alpha(u) = \cos^2\!\big(\tfrac{u + s}{1 + s}\cdot\tfrac{\pi}{2}\big)` for u = t/T, and
    :math:`\beta_i = \min(1 - \bar\alpha((i+1)/T)/\bar\alpha(i/T), \text{max\_beta})`; the clip stops
    the singularity at u = 1. (diffusers calls this ``squaredcos_cap_v2``.)
    """
    _check_T(T)
    return _betas_from_alpha_bar(
        lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2, T, max_beta
    )


def sigmoid(
    T: int,
    start: float = -3.0,
    end: float = 3.0,
    tau: float = 1.0,
    max_beta: float = 0.999,
) -> torch.Tensor:
    r"""Sigmoid schedule of Jabri et al. 2023 / Chen 2023: (T,) float64.

    With :math:`v(u) = \sigma((u(\text{end}-\text{start}) + \text{start})/\tau)`,
    :math:`\bar\alpha(u) = (v(1) - v(u)) / (v(1) - v(0))`, which falls from 1 at u = 0 to 0 at u = 1.
    """
    _check_T(T)
    if not end > start or tau <= 0:
        raise ValueError(
            f"need end > start and tau > 0, got start={start}, end={end}, tau={tau}"
        )
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))

    def alpha_bar(u: torch.Tensor) -> torch.Tensor:
        return (v_end - torch.sigmoid((u * (end - start) + start) / tau)) / (
            v_end - v_start
        )

    return _betas_from_alpha_bar(alpha_bar, T, max_beta)


SCHEDULES = {"linear": linear, "cosine": cosine, "sigmoid": sigmoid}


def get_betas(name: str, T: int, **kwargs) -> torch.Tensor:
    """The betas of the schedule called ``name`` ("linear", "cosine" or "sigmoid"): (T,) float64."""
    check_choice("schedule", name, SCHEDULES)
    return SCHEDULES[name](T, **kwargs)


@dataclass(frozen=True)
class NoiseSchedule:
    r"""Every per-timestep quantity of a schedule, as (T,) float64 tensors indexed by t = 0..T-1.

    Build one with ``NoiseSchedule(betas)`` or ``NoiseSchedule.from_name("cosine", 1000)``.

    * ``alphas`` :math:`\alpha_t = 1-\beta_t`; ``alphas_cumprod`` :math:`\bar\alpha_t`;
      ``alphas_cumprod_prev`` :math:`\bar\alpha_{t-1}` (1 at t = 0).
    * ``snr`` :math:`\bar\alpha_t/(1-\bar\alpha_t)` and ``log_snr`` (Kingma et al. 2021).
    * ``posterior_variance`` :math:`\tilde\beta_t = \beta_t(1-\bar\alpha_{t-1})/(1-\bar\alpha_t)`
      (Eq. (7) of Ho et al. 2020), which is 0 at t = 0, so ``posterior_log_variance_clipped``
      replaces that entry by the t = 1 value.
    * ``posterior_mean_coef1`` and ``posterior_mean_coef2``: the weights of x0 and x_t in the
      posterior mean :math:`\tilde\mu_t`, Eq. (7) of Ho et al. 2020.
    """

    betas: torch.Tensor

    def __post_init__(self) -> None:
        betas = (
            torch.as_tensor(self.betas).detach().to(device="cpu", dtype=torch.float64)
        )
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(
                f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}"
            )
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError(
                f"betas must lie in (0, 1], got values from {betas.min().item()} to {betas.max().item()}"
            )
        object.__setattr__(self, "betas", betas)

    @classmethod
    def from_name(cls, name: str, T: int, **kwargs) -> NoiseSchedule:
        """The schedule called ``name`` with T steps; ``kwargs`` go to the beta function."""
        return cls(get_betas(name, T, **kwargs))

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    @cached_property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, dim=0)

    @cached_property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        return torch.cat([self.betas.new_ones(1), self.alphas_cumprod[:-1]])

    @cached_property
    def snr(self) -> torch.Tensor:
        alphas_cumprod = self.alphas_cumprod
        return alphas_cumprod / (1.0 - alphas_cumprod)

    @cached_property
    def log_snr(self) -> torch.Tensor:
        alphas_cumprod = self.alphas_cumprod
        return torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod)

    @cached_property
    def posterior_variance(self) -> torch.Tensor:
        return (
            self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )

    @cached_property
    def posterior_log_variance_clipped(self) -> torch.Tensor:
        variance = self.posterior_variance
        if variance.numel() == 1:
            return torch.log(self.betas)
        return torch.log(torch.cat([variance[1:2], variance[1:]]))

    @cached_property
    def posterior_mean_coef1(self) -> torch.Tensor:
        return (
            self.betas
            * torch.sqrt(self.alphas_cumprod_prev)
            / (1.0 - self.alphas_cumprod)
        )

    @cached_property
    def posterior_mean_coef2(self) -> torch.Tensor:
        return (
            (1.0 - self.alphas_cumprod_prev)
            * torch.sqrt(self.alphas)
            / (1.0 - self.alphas_cumprod)
        )


# ------------------------------------------- the timesteps a few-step sampler visits (ch. 05)
SPACINGS = ("leading", "trailing", "linspace")
DEFAULT_SPACING = "trailing"  # starts at T - 1 (Lin et al. 2024); see ARCHITECTURE.md


def timestep_sequence(
    num_timesteps: int, steps: int, spacing: str = DEFAULT_SPACING
) -> torch.Tensor:
    """The ``steps`` trained timesteps a few-step sampler visits, in decreasing order: (steps,) int64.

    * ``"trailing"`` (default): round(T - i T/steps) - 1, which always starts at T - 1 (Lin et al.
      2024, diffusers' ``trailing``): with T = 1000 and 50 steps 999, 979, ..., 19.
    * ``"leading"``: 0, k, 2k, ... with k = T // steps (DDIM paper, diffusers' ``leading``):
      980, 960, ..., 0. Its first step lies below T - 1 although x_T is drawn as pure noise.
    * ``"linspace"``: ``steps + 1`` points evenly spaced over [0, T - 1], rounded, without the last
      one (0), as diffusers' DPM-Solver: 999, 979, ..., 20. (diffusers' DDIM ``linspace`` keeps 0
      and has ``steps`` points instead.)
    """
    check_choice("spacing", spacing, SPACINGS)
    if (
        not isinstance(steps, int)
        or isinstance(steps, bool)
        or not 1 <= steps <= num_timesteps
    ):
        raise ValueError(
            f"steps must be an integer in 1..{num_timesteps} (the trained T), got {steps!r}"
        )
    if spacing == "leading":
        seq = np.arange(steps) * (num_timesteps // steps)
    elif spacing == "trailing":
        # the first `steps` values only: np.arange(T, 0, -T/steps) (diffusers' expression) can
        # overshoot by one float rounding and append a timestep -1 (T = 50, steps = 29)
        grid = np.arange(num_timesteps, 0, -num_timesteps / steps)[:steps]
        seq = np.round(grid).astype(np.int64) - 1
    else:
        seq = np.linspace(0, num_timesteps - 1, steps + 1).round().astype(np.int64)[1:]
    seq = np.unique(seq)
    if seq.shape[0] != steps:
        raise ValueError(
            f"{spacing!r} spacing gives only {seq.shape[0]} distinct timesteps for "
            f"steps={steps}, T={num_timesteps}"
        )
    return torch.from_numpy(seq[::-1].copy()).long()
