r"""Discrete-time VP models (DDPM) as EDM denoisers and flow velocity models.

Chapter 09 (Flow matching & EDM). A VP state at :math:`\bar\alpha` has the same SNR as the EDM
state at :math:`\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}` and the flow state at
:math:`s = \sigma_\text{VP}/(\alpha_\text{VP}+\sigma_\text{VP})` (:mod:`ddpm_course.flow`'s one view
of Gaussian paths), so a model trained by :class:`~ddpm_course.diffusion.GaussianDiffusion` runs in
the other samplers after a change of variables: :class:`VPDenoiser` for
:func:`~ddpm_course.edm.edm_sample`, :class:`VPVelocity` (built on :class:`VPDenoiser`'s
predictions) and the matched grid :func:`vp_flow_times` for :func:`~ddpm_course.flow.flow_sample`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .diffusion import GaussianDiffusion
from .flow import (
    DEFAULT_TIME_SCALE,
    _per_example,
    eps_from_x0,
    flow_time,
    predictions_from_output,
    velocity_from_x0_eps,
    vp_alpha_sigma,
)
from .utils import cast_like, check_timesteps, float64_on

__all__ = ["VPDenoiser", "VPVelocity", "vp_flow_times"]


class VPDenoiser(torch.nn.Module):
    r"""A discrete-time VP model (ε, x0 or v) and its :class:`~ddpm_course.diffusion.GaussianDiffusion`
    as EDM's denoiser :math:`D(x;\sigma)` (Karras et al. 2022, Appendix C.3's VP case).

    The EDM state :math:`x = x_0 + \sigma\epsilon` is the VP state :math:`x_\text{VP} = x/\sqrt{1+\sigma^2}`
    with :math:`\bar\alpha = 1/(1+\sigma^2)`, i.e. :math:`\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}`.
    The model's t for σ is found by linear interpolation of :math:`\log\sigma_t` over its timesteps
    (:meth:`timestep`: a float t, or the nearest integer with ``quantize=True``; σ outside
    [``sigma_min``, ``sigma_max``], the σ of t = 0 and t = T-1, is clamped to those ends). Then
    :math:`D = \hat x_0`, which for an ε-model is :math:`x - \sigma\hat\epsilon`; with ``clip_denoised``
    it is clipped to [-1, 1]. ``forward(x, sigma, **model_kwargs)``: x (N, ...), sigma (N,) -> (N, ...).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        diffusion: GaussianDiffusion,
        quantize: bool = False,
        clip_denoised: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.diffusion = diffusion
        self.quantize = quantize
        self.clip_denoised = clip_denoised
        alphas_cumprod = diffusion.alphas_cumprod
        self.log_sigmas = 0.5 * (
            torch.log1p(-alphas_cumprod) - torch.log(alphas_cumprod)
        )

    @property
    def sigma_min(self) -> float:
        """σ at t = 0, the least noisy level the model was trained on."""
        return math.exp(float(self.log_sigmas[0]))

    @property
    def sigma_max(self) -> float:
        """σ at t = T - 1, the noisiest level the model was trained on."""
        return math.exp(float(self.log_sigmas[-1]))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        r"""The trained t whose :math:`\log\sigma_t` matches :math:`\log\sigma` (N,): float64 by linear
        interpolation between neighbouring steps, or int64 nearest with ``quantize``; mapped through
        the process's ``timestep_map`` (a respaced process)."""
        log_sigma = torch.as_tensor(sigma, dtype=torch.float64).log()
        table = self.log_sigmas.to(log_sigma.device)
        timestep_map = self.diffusion.timestep_map.to(log_sigma.device)
        T = table.shape[0]
        if T == 1:
            return timestep_map[torch.zeros_like(log_sigma, dtype=torch.long)]
        upper = torch.searchsorted(table, log_sigma).clamp(1, T - 1)
        lower = upper - 1
        fraction = (log_sigma - table[lower]) / (table[upper] - table[lower])
        fraction = fraction.clamp(0, 1)
        if self.quantize:
            return torch.where(fraction < 0.5, timestep_map[lower], timestep_map[upper])
        return timestep_map[lower] + fraction * (
            timestep_map[upper] - timestep_map[lower]
        )

    def predictions(
        self,
        x_vp: torch.Tensor,
        alpha: torch.Tensor,
        sigma: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""(x0, ε) of the model at the VP state x_vp with :math:`(\alpha, \sigma)`, :math:`\alpha^2+\sigma^2 = 1`
        (float64, (N,)); x0 clipped with ``clip_denoised`` (and ε recomputed from it)."""
        t = self.timestep(sigma / alpha).to(x_vp.device)
        if t.dtype == torch.float64:
            t = t.to(torch.promote_types(x_vp.dtype, torch.float32))
        out = self.model(x_vp, t, **(model_kwargs or {}))
        if self.diffusion.var_type == "learned_range":
            out = out.chunk(2, dim=1)[0]
        if out.shape != x_vp.shape:
            raise ValueError(
                f"the model returned shape {tuple(out.shape)} for input {tuple(x_vp.shape)}"
            )
        alpha, sigma = _per_example(alpha, x_vp), _per_example(sigma, x_vp)
        x0, eps = predictions_from_output(
            out, self.diffusion.objective, x_vp, alpha, sigma
        )
        if self.clip_denoised:
            x0 = x0.clamp(-1, 1)
            eps = eps_from_x0(x_vp, x0, alpha, sigma)
        return x0, eps

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, **model_kwargs: Any
    ) -> torch.Tensor:
        sigma = float64_on(sigma, x).reshape(-1).expand(x.shape[0])
        alpha_vp = (1 + sigma**2).rsqrt()
        x_vp = cast_like(_per_example(alpha_vp, x), x) * x
        return self.predictions(x_vp, alpha_vp, sigma * alpha_vp, model_kwargs)[0]


class VPVelocity(torch.nn.Module):
    r"""A discrete-time VP model as a flow velocity model, called like a :class:`~ddpm_course.flow.FlowMatching` network:
    ``forward(x_s, time_scale·s, **model_kwargs) -> û`` (N, ...).

    Change of variables: the flow state :math:`x_s = (1-s)x_0 + s\epsilon` is, divided by
    :math:`n = \sqrt{(1-s)^2+s^2}`, the VP state with :math:`\alpha = (1-s)/n`, :math:`\sigma = s/n`
    (the same SNR; conversely a VP state at :math:`\bar\alpha` is the flow state
    :func:`~ddpm_course.flow.flow_state` at :func:`~ddpm_course.flow.flow_time`). The model gives (x̂0, ε̂) there
    (:meth:`VPDenoiser.predictions`), and :math:`\hat u = \hat\epsilon - \hat x_0`. With it, Euler's
    step of the flow ODE is DDIM's step (η = 0) exactly. A VP model has no velocity at s = 1
    (ᾱ = 0): start the grid at ``s_max`` or lower, e.g. ``times=vp_flow_times(diffusion, timesteps)``
    (s outside [0, 1) is refused on the CPU; on CUDA it is not checked, as in ``utils.check_timesteps``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        diffusion: GaussianDiffusion,
        time_scale: float = DEFAULT_TIME_SCALE,
        quantize: bool = False,
        clip_denoised: bool = False,
    ) -> None:
        super().__init__()
        self.denoiser = VPDenoiser(model, diffusion, quantize, clip_denoised)
        self.time_scale = time_scale

    @property
    def s_max(self) -> float:
        """The flow time of the model's noisiest step t = T - 1."""
        return float(
            flow_time(*vp_alpha_sigma(self.denoiser.diffusion.alphas_cumprod[-1]))
        )

    def forward(
        self, x: torch.Tensor, time_input: torch.Tensor, **model_kwargs: Any
    ) -> torch.Tensor:
        s = torch.as_tensor(time_input, dtype=torch.float64, device=x.device).reshape(
            -1
        )
        s = (s / self.time_scale).expand(x.shape[0])
        # range-checked on CPU tensors only (a check on CUDA would synchronise every step)
        if s.device.type == "cpu" and (bool((s >= 1).any()) or bool((s < 0).any())):
            raise ValueError(
                f"a VP model has a velocity for flow times s in [0, 1) only (s = 1 is ᾱ = 0), got "
                f"s up to {float(s.max())}; start the grid at s_max = {self.s_max:.6f} "
                "(times=vp_flow_times(diffusion, timesteps))"
            )
        norm = ((1 - s) ** 2 + s**2).sqrt()
        x_vp = cast_like(_per_example(1 / norm, x), x) * x
        x0, eps = self.denoiser.predictions(
            x_vp, (1 - s) / norm, s / norm, model_kwargs
        )
        return velocity_from_x0_eps(x0, eps)


def vp_flow_times(
    diffusion: GaussianDiffusion, timesteps: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    r"""The flow grid matching a VP sampler's decreasing ``timesteps`` (indices of ``diffusion``), then
    0: :math:`s_k = \sigma_k/(\alpha_k + \sigma_k)` with :math:`\alpha_k = \sqrt{\bar\alpha_{t_k}}`
    (:func:`~ddpm_course.flow.flow_time`): (len(timesteps) + 1,) float64. E.g. ``vp_flow_times(diffusion,
    samplers.timestep_sequence(T, steps))`` is DDIM's grid, on which :func:`~ddpm_course.flow.flow_sample` of
    :class:`VPVelocity` reproduces ``ddim_sample(eta=0, clip_denoised=False)``."""
    timesteps = check_timesteps(torch.as_tensor(timesteps), diffusion.num_timesteps)
    if timesteps.ndim != 1 or not bool((timesteps[1:] < timesteps[:-1]).all()):
        raise ValueError(
            f"timesteps must be a strictly decreasing 1-D sequence (noisiest first), got {timesteps.tolist()}"
        )
    s = flow_time(*vp_alpha_sigma(diffusion.alphas_cumprod[timesteps]))
    return torch.cat([s, s.new_zeros(1)])
