r"""Samplers: ancestral DDPM, DDIM, DPM-Solver++(2M), and respacing a trained process.

Chapter 05 (DDIM & fast sampling). Every sampler takes a ``model`` (``model(x_t, t, **model_kwargs)``),
the :class:`~ddpm_course.diffusion.GaussianDiffusion` it was trained with and the output ``shape``
(N, C, H, W); starts from ``x_T`` (drawn from N(0, I) with ``generator`` when None); works on the
whole batch at once; and returns samples in the model's space ([-1, 1] for images).

The few-step samplers visit a decreasing sequence of trained timesteps (see :func:`timestep_sequence`)
and finish at :math:`\bar\alpha = 1`, i.e. they return the last prediction of x0.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .diffusion import GaussianDiffusion, Model
from .utils import check_choice

__all__ = ["ddpm_sample", "ddim_sample", "dpm_solver_sample", "respace", "timestep_sequence", "SPACINGS"]

SPACINGS = ("leading", "trailing", "linspace")


def timestep_sequence(num_timesteps: int, steps: int, spacing: str = "leading") -> torch.Tensor:
    """The ``steps`` trained timesteps a few-step sampler visits, in decreasing order: (steps,) int64.

    * ``"leading"``: 0, k, 2k, ... with k = T // steps (DDIM paper, diffusers' ``leading``);
      with T = 1000 and 50 steps: 980, 960, ..., 0.
    * ``"trailing"``: round(T - i T/steps) - 1, which always starts at T - 1 (Lin et al. 2024,
      diffusers' ``trailing``): 999, 979, ..., 19.
    * ``"linspace"``: ``steps + 1`` points evenly spaced over [0, T - 1], rounded, without the last
      one (0), as diffusers' DPM-Solver: 999, 979, ..., 20. (diffusers' DDIM ``linspace`` keeps 0
      and has ``steps`` points instead.)
    """
    check_choice("spacing", spacing, SPACINGS)
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be an integer in 1..{num_timesteps} (the trained T), got {steps!r}")
    if spacing == "leading":
        seq = np.arange(steps) * (num_timesteps // steps)
    elif spacing == "trailing":
        # the first `steps` values only: np.arange(T, 0, -T/steps) (diffusers' expression) can overshoot
        # by one float rounding and append a timestep -1 (T = 50, steps = 29)
        seq = np.round(np.arange(num_timesteps, 0, -num_timesteps / steps)[:steps]).astype(np.int64) - 1
    else:
        seq = np.linspace(0, num_timesteps - 1, steps + 1).round().astype(np.int64)[1:]
    seq = np.unique(seq)
    if seq.shape[0] != steps:
        raise ValueError(f"{spacing!r} spacing gives only {seq.shape[0]} distinct timesteps for steps={steps}, T={num_timesteps}")
    return torch.from_numpy(seq[::-1].copy()).long()


def respace(diffusion: GaussianDiffusion, steps: int | Sequence[int], spacing: str = "leading") -> GaussianDiffusion:
    r"""A process on a subset S of the trained timesteps, with the same :math:`\bar\alpha` at each kept step.

    New betas :math:`\beta_i = 1 - \bar\alpha_{S_i}/\bar\alpha_{S_{i-1}}` (with :math:`\bar\alpha_{S_{-1}} = 1`),
    Appendix of Nichol & Dhariwal 2021. ``steps`` is a number of steps (placed by ``spacing``) or
    the timesteps themselves; the returned process calls the model with the trained t
    (``timestep_map``), so ancestral sampling with it is "DDPM in fewer steps".
    """
    T = diffusion.num_timesteps
    if isinstance(steps, int):
        kept = timestep_sequence(T, steps, spacing).flip(0)
    else:
        kept = torch.as_tensor(list(steps), dtype=torch.long).unique()
        if kept.numel() == 0 or int(kept.min()) < 0 or int(kept.max()) >= T:
            raise ValueError(f"respaced timesteps must be a non-empty subset of 0..{T - 1}, got {list(steps)!r}")
    kept_alphas_cumprod = diffusion.alphas_cumprod[kept]
    previous = torch.cat([kept_alphas_cumprod.new_ones(1), kept_alphas_cumprod[:-1]])
    betas = 1.0 - kept_alphas_cumprod / previous
    return GaussianDiffusion(
        betas,
        objective=diffusion.objective,
        var_type=diffusion.var_type,
        timestep_map=diffusion.timestep_map[kept],
    )


def _initial_noise(shape, x_T, generator, device, dtype) -> torch.Tensor:
    if x_T is not None:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape {tuple(shape)} was asked for")
        return x_T.to(device=device, dtype=dtype)
    if generator is not None and device is None:
        device = generator.device
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def _model_device(model: Model) -> torch.device | None:
    if isinstance(model, torch.nn.Module):
        for tensor in model.parameters():
            return tensor.device
    return None


@torch.no_grad()
def ddpm_sample(
    model: Model,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    x_T: torch.Tensor | None = None,
    clip_denoised: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
):
    r"""Ancestral sampling (Algorithm 2 of Ho et al. 2020): :math:`x_{t-1} = \mu_\theta(x_t, t) + \sigma_t z`.

    No noise is added on the last step (t = 0): the output is the mean :math:`\mu_\theta(x_1, 1)`.
    Runs all T steps of ``diffusion`` (use :func:`respace` for fewer). Returns the samples (N, C, H, W),
    or ``(samples, trajectory)`` with ``trajectory`` (T + 1, N, C, H, W) from x_T down to x_0 on the CPU.
    """
    device = device or _model_device(model)
    x = _initial_noise(shape, x_T, generator, device, dtype)
    trajectory = [x.cpu()] if return_trajectory else None
    for step in tqdm(range(diffusion.num_timesteps - 1, -1, -1), disable=not progress, desc="DDPM"):
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
        p = diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        if step > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = p.mean + torch.exp(0.5 * p.log_variance) * noise
        else:
            x = p.mean
        if trajectory is not None:
            trajectory.append(x.cpu())
    return (x, torch.stack(trajectory)) if trajectory is not None else x


def _alpha_bar_at(diffusion: GaussianDiffusion, t: int) -> float:
    """ᾱ at trained timestep t, with ᾱ = 1 "before" the first step (t = -1)."""
    return 1.0 if t < 0 else float(diffusion.alphas_cumprod[t])


@torch.no_grad()
def ddim_sample(
    model: Model,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    steps: int = 50,
    eta: float = 0.0,
    spacing: str = "leading",
    x_T: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
):
    r"""DDIM (Song, Meng & Ermon 2021, Eq. (12)) from t_k to the next visited timestep t_{k+1}:

    .. math:: x_{t_{k+1}} = \sqrt{\bar\alpha_{k+1}}\,\hat x_0 + \sqrt{1-\bar\alpha_{k+1}-\sigma_k^2}\,\hat\epsilon + \sigma_k z,
       \quad \sigma_k = \eta\sqrt{\tfrac{1-\bar\alpha_{k+1}}{1-\bar\alpha_k}}\sqrt{1-\tfrac{\bar\alpha_k}{\bar\alpha_{k+1}}}.

    η = 0 is deterministic (an ODE solver); η = 1 matches DDPM's variance. After the last visited
    timestep the process goes to :math:`\bar\alpha = 1` (returns :math:`\hat x_0`). With
    ``clip_denoised``, :math:`\hat x_0` is clipped to [-1, 1] and :math:`\hat\epsilon` recomputed from it.
    Returns samples, or ``(samples, trajectory)`` with trajectory (steps + 1, N, C, H, W).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (0: deterministic DDIM, 1: DDPM-like), got {eta}")
    timesteps = timestep_sequence(diffusion.num_timesteps, steps, spacing).tolist()
    device = device or _model_device(model)
    x = _initial_noise(shape, x_T, generator, device, dtype)
    trajectory = [x.cpu()] if return_trajectory else None
    for k, step in enumerate(tqdm(timesteps, disable=not progress, desc="DDIM")):
        prev_step = timesteps[k + 1] if k + 1 < len(timesteps) else -1
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
        p = diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        alpha_bar, alpha_bar_prev = _alpha_bar_at(diffusion, step), _alpha_bar_at(diffusion, prev_step)
        sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)) ** 0.5
        x = alpha_bar_prev**0.5 * p.pred_x0 + max(1 - alpha_bar_prev - sigma**2, 0.0) ** 0.5 * p.pred_eps
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if trajectory is not None:
            trajectory.append(x.cpu())
    return (x, torch.stack(trajectory)) if trajectory is not None else x


@torch.no_grad()
def dpm_solver_sample(
    model: Model,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    steps: int = 20,
    spacing: str = "linspace",
    x_T: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
):
    r"""DPM-Solver++(2M), the multistep second-order solver of the diffusion ODE in data prediction
    (Lu et al. 2022, Algorithm 2), in the half-log-SNR :math:`\lambda = \log(\alpha/\sigma)` with
    :math:`\alpha = \sqrt{\bar\alpha}`, :math:`\sigma = \sqrt{1-\bar\alpha}`, :math:`h_k = \lambda_{k+1}-\lambda_k`:

    .. math:: x_{k+1} = \tfrac{\sigma_{k+1}}{\sigma_k} x_k - \alpha_{k+1}(e^{-h_k} - 1)\,D_k,\qquad
       D_k = \big(1 + \tfrac{1}{2r_k}\big)\hat x_0^{(k)} - \tfrac{1}{2r_k}\hat x_0^{(k-1)},\ r_k = h_{k-1}/h_k.

    The first step and the last (to :math:`\bar\alpha = 1`, where λ is infinite) are first order
    (:math:`D_k = \hat x_0^{(k)}`, i.e. a DDIM step). Deterministic. Returns samples, or
    ``(samples, trajectory)``.
    """
    timesteps = timestep_sequence(diffusion.num_timesteps, steps, spacing).tolist()
    device = device or _model_device(model)
    x = _initial_noise(shape, x_T, generator, device, dtype)
    trajectory = [x.cpu()] if return_trajectory else None

    def alpha_sigma_lambda(step: int) -> tuple[float, float, float]:
        alpha_bar = _alpha_bar_at(diffusion, step)
        alpha, sigma = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
        return alpha, sigma, (np.log(alpha) - np.log(sigma)) if sigma > 0 else np.inf

    previous_x0, previous_h = None, None
    for k, step in enumerate(tqdm(timesteps, disable=not progress, desc="DPM-Solver++")):
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
        pred_x0 = diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs).pred_x0
        _, sigma_s, lambda_s = alpha_sigma_lambda(step)
        next_step = timesteps[k + 1] if k + 1 < len(timesteps) else -1
        alpha_t, sigma_t, lambda_t = alpha_sigma_lambda(next_step)
        if next_step < 0:  # last step: sigma_t = 0, so x = alpha_t * pred_x0 with alpha_t = 1
            x = alpha_t * pred_x0
        else:
            h = lambda_t - lambda_s
            if previous_x0 is None:
                data_term = pred_x0
            else:
                r = previous_h / h
                data_term = (1 + 0.5 / r) * pred_x0 - (0.5 / r) * previous_x0
            x = (sigma_t / sigma_s) * x - alpha_t * np.expm1(-h) * data_term
            previous_x0, previous_h = pred_x0, h
        if trajectory is not None:
            trajectory.append(x.cpu())
    return (x, torch.stack(trajectory)) if trajectory is not None else x
