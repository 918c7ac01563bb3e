r"""EDM (Karras et al. 2022): the σ schedule, the preconditioned denoiser and the Heun sampler.

Chapter 09 (Flow matching & EDM). EDM's path is :math:`x = x_0 + \sigma\,\epsilon`
(:math:`\alpha = 1`, :math:`\sigma \in [0, \infty)`; any path maps onto it by
:func:`~ddpm_course.flow.edm_sigma` and :func:`~ddpm_course.flow.edm_state`). This module holds the
noise levels :func:`edm_sigmas` (Eq. (5)), the preconditioning :func:`edm_preconditioning` and
:class:`EDMPrecond` (Table 1), the probability-flow slope :func:`edm_slope`, the stochastic churn
:func:`edm_churn` and the sampler :func:`edm_sample` (Algorithms 1 and 2). The ODE steps, the
coefficient helpers and the samplers' argument checks are :mod:`ddpm_course.flow`'s; a discrete-time
VP model runs here through :class:`~ddpm_course.vp_wrappers.VPDenoiser`. σ values are floats or
float64 tensors, formed in float64 and applied in the data's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from .diffusion import Model
from .flow import (
    ODE_METHODS,
    Coefficient,
    _check_grid,
    _check_steps,
    _per_example,
    euler_step,
    heun_step,
)
from .utils import cast_like, check_choice, float64_on, initial_noise, model_device

__all__ = [
    "edm_sigmas",
    "EDMCoefficients",
    "edm_preconditioning",
    "EDMPrecond",
    "edm_slope",
    "edm_churn",
    "edm_sample",
]


def edm_sigmas(
    steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> torch.Tensor:
    r"""EDM's noise levels (Eq. (5) of Karras et al. 2022): (steps + 1,) float64, from σ_max down to 0,

    .. math:: \sigma_i = \Big(\sigma_\text{max}^{1/\rho} + \tfrac{i}{N-1}\big(\sigma_\text{min}^{1/\rho}
       - \sigma_\text{max}^{1/\rho}\big)\Big)^{\rho},\quad i = 0, \dots, N-1,\qquad \sigma_N = 0,

    with N = ``steps``; ρ = 7 spends more steps at low noise. One step gives [σ_max, 0].
    """
    _check_steps(steps)
    if not 0 < sigma_min < sigma_max or not rho > 0:
        raise ValueError(
            f"need 0 < sigma_min < sigma_max and rho > 0, got sigma_min={sigma_min}, "
            f"sigma_max={sigma_max}, rho={rho} (Karras et al.: 0.002, 80, 7)"
        )
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


class EDMCoefficients(NamedTuple):
    """EDM's preconditioning (Table 1 of Karras et al. 2022), each float64 shaped like σ."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def edm_preconditioning(sigma: Coefficient, sigma_data: float = 0.5) -> EDMCoefficients:
    r"""The coefficients of :math:`D(x;\sigma) = c_\text{skip}x + c_\text{out}F(c_\text{in}x;\, c_\text{noise})`
    (Eq. (7) and Table 1 of Karras et al. 2022), float64:

    .. math:: c_\text{skip} = \frac{\sigma_d^2}{\sigma^2+\sigma_d^2},\quad
       c_\text{out} = \frac{\sigma\sigma_d}{\sqrt{\sigma^2+\sigma_d^2}},\quad
       c_\text{in} = \frac{1}{\sqrt{\sigma^2+\sigma_d^2}},\quad c_\text{noise} = \tfrac14\ln\sigma.

    c_in gives the network unit-variance inputs, c_skip and c_out a unit-variance target.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if not sigma_data > 0:
        raise ValueError(
            f"sigma_data must be > 0 (the data's std; 0.5 for images in [-1, 1]), got {sigma_data}"
        )
    variance = sigma**2 + sigma_data**2
    return EDMCoefficients(
        c_skip=sigma_data**2 / variance,
        c_out=sigma * sigma_data / variance.sqrt(),
        c_in=variance.rsqrt(),
        c_noise=sigma.log() / 4,
    )


class EDMPrecond(torch.nn.Module):
    r"""A network F turned into EDM's denoiser :math:`D(x;\sigma) = c_\text{skip}x + c_\text{out}F(c_\text{in}x;\, c_\text{noise})`
    with :func:`edm_preconditioning`. ``forward(x, sigma, **kwargs)``: x (N, ...), sigma (N,)
    float64 -> D (N, ...); F is called as ``network(c_in·x, c_noise, **kwargs)`` with c_noise (N,)."""

    def __init__(self, network: torch.nn.Module, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.network = network
        self.sigma_data = sigma_data

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        sigma = float64_on(sigma, x)
        c = edm_preconditioning(_per_example(sigma, x), self.sigma_data)
        c_noise = c.c_noise.reshape(-1).expand(x.shape[0])
        out = self.network(
            cast_like(c.c_in, x) * x, c_noise.to(torch.float32), **kwargs
        )
        return cast_like(c.c_skip, x) * x + cast_like(c.c_out, x) * out


def edm_slope(
    x: torch.Tensor, denoised: torch.Tensor, sigma: Coefficient
) -> torch.Tensor:
    r"""The probability-flow ODE's slope in EDM's coordinates, :math:`dx/d\sigma = (x - D(x;\sigma))/\sigma`
    (Eq. (3) of Karras et al. 2022 with :math:`\sigma(t) = t`, s(t) = 1). x, denoised: (N, ...)."""
    return cast_like(1 / float64_on(sigma, x), x) * (x - denoised)


def edm_churn(
    x: torch.Tensor,
    sigma: float,
    gamma: float,
    noise: torch.Tensor | None,
    S_noise: float = 1.0,
) -> tuple[torch.Tensor, float]:
    r"""EDM's stochastic churn (Algorithm 2 of Karras et al. 2022, lines 5-6): raise the noise level
    to :math:`\hat\sigma = (1+\gamma)\sigma` by adding fresh noise,
    :math:`\hat x = x + \sqrt{\hat\sigma^2 - \sigma^2}\,S_\text{noise}\,z`. Returns (x̂, σ̂); γ = 0 returns (x, σ)."""
    sigma_hat = sigma * (1 + gamma)
    if gamma == 0 or noise is None:
        return x, sigma_hat
    return x + math.sqrt(sigma_hat**2 - sigma**2) * S_noise * noise, sigma_hat


@torch.no_grad()
def edm_sample(
    denoiser: Model,
    shape: Sequence[int],
    steps: int = 18,
    method: str = "heun",
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    sigmas: Sequence[float] | torch.Tensor | None = None,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = math.inf,
    S_noise: float = 1.0,
    x_init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
):
    r"""EDM's sampler (Algorithm 2 of Karras et al. 2022; Algorithm 1 when S_churn = 0).

    Over the noise levels :func:`edm_sigmas` (steps, sigma_min, sigma_max, rho) (or ``sigmas``,
    ``steps + 1`` decreasing values ending at 0): at each σ_i in [S_tmin, S_tmax], churn
    (:func:`edm_churn`) with :math:`\gamma = \min(S_\text{churn}/N, \sqrt2 - 1)`, then
    :func:`~ddpm_course.flow.euler_step` on :func:`edm_slope` and, with ``method="heun"`` and σ_{i+1} > 0, the
    :func:`~ddpm_course.flow.heun_step` correction (2·steps - 1 denoiser calls).

    denoiser: ``denoiser(x, sigma, **model_kwargs) -> D(x; σ)`` with sigma (N,) float64
    (:class:`EDMPrecond`, or :class:`~ddpm_course.vp_wrappers.VPDenoiser` for a DDPM model; for the latter take
    ``sigma_min``/``sigma_max`` from its attributes). The start is ``x_init`` or
    :math:`\sigma_0 z`, z ~ N(0, I) drawn with ``generator``, which also draws the churn noise.
    Returns samples (N, C, ...), or ``(samples, trajectory)`` with trajectory (steps + 1, N, C, ...).
    """
    check_choice("method", method, ODE_METHODS)
    _check_steps(steps)
    sigmas = (
        edm_sigmas(steps, sigma_min, sigma_max, rho)
        if sigmas is None
        else _check_grid(sigmas, steps, "sigmas")
    )
    if S_churn < 0 or S_noise < 0 or S_tmin > S_tmax:
        raise ValueError(
            f"need S_churn >= 0, S_noise >= 0 and S_tmin <= S_tmax, got S_churn={S_churn}, "
            f"S_noise={S_noise}, S_tmin={S_tmin}, S_tmax={S_tmax} (S_churn=0: deterministic)"
        )
    device = device or model_device(denoiser)
    x = initial_noise(
        shape, x_init, generator, device, dtype, float(sigmas[0]), "x_init"
    )
    trajectory = [x.cpu()] if return_trajectory else None

    def slope_at(state: torch.Tensor, sigma: float) -> torch.Tensor:
        sigma_batch = torch.full(
            (state.shape[0],), sigma, dtype=torch.float64, device=state.device
        )
        denoised = denoiser(state, sigma_batch, **(model_kwargs or {}))
        return edm_slope(state, denoised, sigma)

    for i in tqdm(range(steps), disable=not progress, desc=f"EDM {method}"):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = (
            min(S_churn / steps, math.sqrt(2) - 1) if S_tmin <= sigma <= S_tmax else 0.0
        )
        noise = None
        if gamma > 0:
            noise = torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype
            )
        x_hat, sigma_hat = edm_churn(x, sigma, gamma, noise, S_noise)
        slope = slope_at(x_hat, sigma_hat)
        x = euler_step(x_hat, slope, sigma_hat, sigma_next)
        if method == "heun" and sigma_next > 0:
            x = heun_step(x_hat, slope, slope_at(x, sigma_next), sigma_hat, sigma_next)
        if trajectory is not None:
            trajectory.append(x.cpu())
    return (x, torch.stack(trajectory)) if trajectory is not None else x
