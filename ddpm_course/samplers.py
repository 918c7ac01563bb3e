r"""Samplers built from step functions: ancestral DDPM, DDIM, DDIM inversion, DPM-Solver++(2M).

Chapter 05 (DDIM & fast sampling). The module has two layers.

* **Step functions** (:func:`ddpm_step`, :func:`ddim_step`, :func:`ddim_inversion_step`,
  :func:`dpm_solver_2m_step`): one formula each, pure functions of tensors. They take the network's
  predictions (:math:`\hat x_0`, :math:`\hat\epsilon`) and the :math:`\bar\alpha` of the two noise
  levels, as floats or as float64 tensors that broadcast against the data (e.g. (N, 1, 1, 1)); the
  coefficients are formed in float64 and applied in the data's dtype.
* **Loops** (:func:`ddpm_sample`, :func:`ddim_sample`, :func:`ddim_invert`,
  :func:`dpm_solver_sample`): call the model through
  :meth:`~ddpm_course.diffusion.GaussianDiffusion.p_mean_variance` (which turns an ε, x0 or v output
  into :math:`\hat x_0, \hat\epsilon`) and then a step function. Each takes a ``model``
  (``model(x_t, t, **model_kwargs)``), the :class:`~ddpm_course.diffusion.GaussianDiffusion` it was
  trained with and the output ``shape`` (N, C, H, W); starts from ``x_T`` (drawn from N(0, I) with
  ``generator`` when None) and returns samples in the model's space ([-1, 1] for images).

The few-step samplers visit a decreasing sequence of trained timesteps (:func:`timestep_sequence`,
``"trailing"`` by default, so that the first visited step is T - 1, where x_T is pure noise) and
finish at :math:`\bar\alpha = 1`, i.e. they return the last prediction of x0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from . import distill
from .diffusion import GaussianDiffusion, Model, PMeanVariance
from .edm import edm_sample
from .flow import DEFAULT_TIME_SCALE, FlowMatching, flow_sample
from .schedules import DEFAULT_SPACING, SPACINGS, timestep_sequence
from .utils import cast_like, check_choice, float64_on, initial_noise, model_device
from .vp_wrappers import VPDenoiser, VPVelocity, vp_flow_times

__all__ = [
    "SAMPLERS", "sample", "SPACINGS", "DEFAULT_SPACING", "timestep_sequence", "respace",
    "ddim_sigma", "ddpm_step", "ddim_step", "ddim_inversion_step", "dpm_solver_2m_step", "slerp",
    "ddpm_sample", "ddim_sample", "ddim_invert", "dpm_solver_sample", "usable_timesteps",
]  # fmt: skip

AlphaBar = float | torch.Tensor


def respace(
    diffusion: GaussianDiffusion,
    steps: int | Sequence[int],
    spacing: str = DEFAULT_SPACING,
) -> GaussianDiffusion:
    r"""A process on a subset S of the trained timesteps, with the same :math:`\bar\alpha` at each kept step.

    New betas :math:`\beta_i = 1 - \bar\alpha_{S_i}/\bar\alpha_{S_{i-1}}` (with
    :math:`\bar\alpha_{S_{-1}} = 1`), Appendix of Nichol & Dhariwal 2021. ``steps`` is a number of
    steps (placed by ``spacing``) or the timesteps themselves; the returned process calls the model
    with the trained t (``timestep_map``), so ancestral sampling with it is "DDPM in fewer steps".
    """
    T = diffusion.num_timesteps
    if isinstance(steps, int):
        kept = timestep_sequence(T, steps, spacing).flip(0)
    else:
        check_choice("spacing", spacing, SPACINGS)
        kept = torch.as_tensor(list(steps), dtype=torch.long).unique()
        if kept.numel() == 0 or int(kept.min()) < 0 or int(kept.max()) >= T:
            raise ValueError(
                f"respaced timesteps must be a non-empty subset of 0..{T - 1}, got {list(steps)!r}"
            )
    kept_alphas_cumprod = diffusion.alphas_cumprod[kept]
    previous = torch.cat([kept_alphas_cumprod.new_ones(1), kept_alphas_cumprod[:-1]])
    betas = 1.0 - kept_alphas_cumprod / previous
    return GaussianDiffusion(
        betas,
        objective=diffusion.objective,
        var_type=diffusion.var_type,
        timestep_map=diffusion.timestep_map[kept],
    )


# ---------------------------------------------------------------------------- step functions
def ddim_sigma(
    alpha_bar_t: AlphaBar, alpha_bar_prev: AlphaBar, eta: float
) -> torch.Tensor:
    r"""DDIM's noise level, Eq. (16) of Song, Meng & Ermon 2021 (float64, shaped like the inputs):

    .. math:: \sigma_t(\eta) = \eta\sqrt{\frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}}
       \sqrt{1-\frac{\bar\alpha_t}{\bar\alpha_{t-1}}}.

    η = 1 gives the DDPM posterior's :math:`\tilde\beta_t^{1/2}`, η = 0 no noise.
    """
    if not eta >= 0:
        raise ValueError(
            f"eta must be >= 0 (0: deterministic DDIM, 1: DDPM-like), got {eta}"
        )
    alpha_bar_t = torch.as_tensor(alpha_bar_t, dtype=torch.float64)
    alpha_bar_prev = torch.as_tensor(alpha_bar_prev, dtype=torch.float64)
    return (
        eta
        * (
            (1 - alpha_bar_prev)
            / (1 - alpha_bar_t)
            * (1 - alpha_bar_t / alpha_bar_prev)
        ).sqrt()
    )


def ddpm_step(
    x_t: torch.Tensor,
    pred_x0: torch.Tensor,
    alpha_bar_t: AlphaBar,
    alpha_bar_prev: AlphaBar,
    noise: torch.Tensor | None = None,
    log_variance: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""One ancestral step (Algorithm 2 of Ho et al. 2020): :math:`x_{t-1} = \tilde\mu_t(x_t, \hat x_0) + \sigma_t z`.

    With :math:`\beta_t = 1 - \bar\alpha_t/\bar\alpha_{t-1}` (so that it also holds between two
    visited steps of a respaced process), Eqs. (6)-(7):

    .. math:: \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\beta_t}{1-\bar\alpha_t}\hat x_0
       + \frac{\sqrt{1-\beta_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}x_t,\qquad
       \sigma_t^2 = \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t.

    x_t, pred_x0, noise: (N, ...); alpha_bar_t, alpha_bar_prev: floats or float64 tensors that
    broadcast against x_t (:math:`\bar\alpha_{t-1} = 1` at the last step). ``log_variance``
    (broadcastable) replaces :math:`\log\tilde\beta_t` (a fixed-large or learned variance);
    ``noise=None`` adds no noise (the last step). Returns x_{t-1} like x_t.
    """
    alpha_bar_t, alpha_bar_prev = (
        float64_on(alpha_bar_t, x_t),
        float64_on(alpha_bar_prev, x_t),
    )
    beta_t = 1 - alpha_bar_t / alpha_bar_prev
    coef_x0 = alpha_bar_prev.sqrt() * beta_t / (1 - alpha_bar_t)
    coef_x_t = (1 - beta_t).sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
    x_prev = cast_like(coef_x0, x_t) * pred_x0 + cast_like(coef_x_t, x_t) * x_t
    if noise is None:
        return x_prev
    if log_variance is None:
        std = cast_like((beta_t * (1 - alpha_bar_prev) / (1 - alpha_bar_t)).sqrt(), x_t)
    else:
        std = torch.exp(0.5 * log_variance).to(x_t.dtype)
    return x_prev + std * noise


def ddim_step(
    pred_x0: torch.Tensor,
    pred_eps: torch.Tensor,
    alpha_bar_t: AlphaBar,
    alpha_bar_prev: AlphaBar,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""One DDIM step from t to the previous visited timestep (Eq. (12) of Song, Meng & Ermon 2021):

    .. math:: x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,\hat x_0
       + \sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\,\hat\epsilon + \sigma_t z,

    with :math:`\sigma_t = \sigma_t(\eta)` of :func:`ddim_sigma`. pred_x0, pred_eps, noise: (N, ...);
    alpha_bar_t, alpha_bar_prev: floats or float64 tensors broadcastable against them
    (:math:`\bar\alpha_{t-1} = 1` for the step to the data). ``noise=None`` means z = 0 (η = 0, or
    the last step, where σ = 0). Returns x_{t-1} like pred_x0.
    """
    alpha_bar_prev = float64_on(alpha_bar_prev, pred_x0)
    sigma = ddim_sigma(float64_on(alpha_bar_t, pred_x0), alpha_bar_prev, eta)
    direction = (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt()
    x_prev = (
        cast_like(alpha_bar_prev.sqrt(), pred_x0) * pred_x0
        + cast_like(direction, pred_x0) * pred_eps
    )
    if noise is not None:
        x_prev = x_prev + cast_like(sigma, pred_x0) * noise
    return x_prev


def ddim_inversion_step(
    x_t: torch.Tensor,
    pred_eps: torch.Tensor,
    alpha_bar_t: AlphaBar,
    alpha_bar_next: AlphaBar,
) -> torch.Tensor:
    r"""One deterministic DDIM step *up* in noise, from t to the next visited timestep (Eq. (13) of
    Song, Meng & Ermon 2021, integrated forwards): the Euler step of the probability-flow ODE in
    :math:`\bar x = x/\sqrt{\bar\alpha}`, :math:`\rho = \sqrt{1-\bar\alpha}/\sqrt{\bar\alpha}`,
    :math:`\bar x_\text{next} = \bar x_t + (\rho_\text{next} - \rho_t)\,\hat\epsilon`, i.e.

    .. math:: x_\text{next} = \sqrt{\bar\alpha_\text{next}}\,
       \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon}{\sqrt{\bar\alpha_t}}
       + \sqrt{1-\bar\alpha_\text{next}}\,\hat\epsilon.

    x_t, pred_eps: (N, ...); alpha_bar_t (1 for the clean image), alpha_bar_next: floats or float64
    tensors broadcastable against x_t. As diffusers' ``DDIMInverseScheduler``, the loop
    (:func:`ddim_invert`) evaluates :math:`\hat\epsilon` at the *target* timestep. Returns x_next.
    """
    alpha_bar_t, alpha_bar_next = (
        float64_on(alpha_bar_t, x_t),
        float64_on(alpha_bar_next, x_t),
    )
    scale = (alpha_bar_next / alpha_bar_t).sqrt()
    coef_eps = (1 - alpha_bar_next).sqrt() - scale * (1 - alpha_bar_t).sqrt()
    return cast_like(scale, x_t) * x_t + cast_like(coef_eps, x_t) * pred_eps


def _half_log_snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    r""":math:`\lambda = \log(\alpha/\sigma) = \tfrac12\log(\bar\alpha/(1-\bar\alpha))` (+inf at ᾱ = 1)."""
    return 0.5 * (torch.log(alpha_bar) - torch.log1p(-alpha_bar))


def dpm_solver_2m_step(
    x_s: torch.Tensor,
    pred_x0: torch.Tensor,
    alpha_bar_s: AlphaBar,
    alpha_bar_t: AlphaBar,
    previous_pred_x0: torch.Tensor | None = None,
    alpha_bar_previous: AlphaBar | None = None,
) -> torch.Tensor:
    r"""One DPM-Solver++(2M) step from s to t (Lu et al. 2022, Algorithm 2), the exponential
    integrator of the diffusion ODE in data prediction, in :math:`\lambda = \log(\alpha/\sigma)`
    (:math:`\alpha = \sqrt{\bar\alpha}`, :math:`\sigma = \sqrt{1-\bar\alpha}`, :math:`h = \lambda_t-\lambda_s`):

    .. math:: x_t = \frac{\sigma_t}{\sigma_s}x_s - \alpha_t\,(e^{-h}-1)\,D,\qquad
       D = \Big(1 + \frac1{2r}\Big)\hat x_0^{(s)} - \frac1{2r}\hat x_0^{(\text{previous})},\quad
       r = \frac{\lambda_s - \lambda_\text{previous}}{h}.

    Without ``previous_pred_x0`` (the first step, and the last one, to :math:`\bar\alpha_t = 1`
    where λ is infinite) it is first order, :math:`D = \hat x_0^{(s)}`: DDIM's η = 0 step.
    x_s, pred_x0, previous_pred_x0: (N, ...); the alpha-bars: floats or float64 tensors
    broadcastable against x_s (``alpha_bar_previous`` at the timestep before s). Returns x_t.
    """
    alpha_bar_s, alpha_bar_t = (
        float64_on(alpha_bar_s, x_s),
        float64_on(alpha_bar_t, x_s),
    )
    lambda_s, lambda_t = _half_log_snr(alpha_bar_s), _half_log_snr(alpha_bar_t)
    h = lambda_t - lambda_s
    coef_x = ((1 - alpha_bar_t) / (1 - alpha_bar_s)).sqrt()  # sigma_t / sigma_s
    coef_data = -alpha_bar_t.sqrt() * torch.expm1(-h)
    if previous_pred_x0 is None:
        data_term = pred_x0
    else:
        if alpha_bar_previous is None:
            raise ValueError(
                "alpha_bar_previous is needed with previous_pred_x0 (second order)"
            )
        h_previous = lambda_s - _half_log_snr(float64_on(alpha_bar_previous, x_s))
        half_inverse_r = 0.5 * h / h_previous  # 1 / (2 r)
        data_term = (
            cast_like(1 + half_inverse_r, x_s) * pred_x0
            - cast_like(half_inverse_r, x_s) * previous_pred_x0
        )
    return cast_like(coef_x, x_s) * x_s + cast_like(coef_data, x_s) * data_term


def slerp(x0: torch.Tensor, x1: torch.Tensor, fraction: float) -> torch.Tensor:
    r"""Spherical interpolation between two noise tensors, per example (Shoemake 1985; DDIM Sec. 5.3):

    .. math:: \mathrm{slerp}(x_0, x_1; f) = \frac{\sin((1-f)\theta)}{\sin\theta}x_0
       + \frac{\sin(f\theta)}{\sin\theta}x_1,\qquad
       \theta = \arccos\frac{\langle x_0, x_1\rangle}{\|x_0\|\|x_1\|}.

    Unlike the straight line, it keeps the norm of two independent Gaussian draws (about
    :math:`\sqrt{d}`), so every point looks like x_T to the model. x0, x1: (N, ...); fraction in
    [0, 1]; θ per example (falls back to the line when x0 and x1 are parallel). Returns (N, ...).
    """
    if x0.shape != x1.shape:
        raise ValueError(
            f"x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must have the same shape"
        )
    flat0, flat1 = (
        x0.reshape(x0.shape[0], -1).double(),
        x1.reshape(x1.shape[0], -1).double(),
    )
    cosine = (flat0 * flat1).sum(1) / (flat0.norm(dim=1) * flat1.norm(dim=1))
    theta = torch.arccos(cosine.clamp(-1, 1))
    sin_theta = torch.sin(theta)
    parallel = sin_theta < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin_theta), sin_theta)
    w0 = torch.where(
        parallel, 1 - fraction + 0 * theta, torch.sin((1 - fraction) * theta) / safe
    )
    w1 = torch.where(parallel, fraction + 0 * theta, torch.sin(fraction * theta) / safe)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return (w0.reshape(shape) * x0.double() + w1.reshape(shape) * x1.double()).to(
        x0.dtype
    )


# ------------------------------------------------------------------------------------ loops
def _predict(
    diffusion: GaussianDiffusion,
    model: Model,
    x: torch.Tensor,
    step: int,
    clip_denoised: bool,
    model_kwargs: dict[str, Any] | None,
) -> PMeanVariance:
    """The network's predictions at timestep ``step`` of ``diffusion`` (its own index, mapped to the
    trained t by ``timestep_map``), with a failure of the model turned into an error naming ``shape``."""
    t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
    try:
        return diffusion.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs
        )
    except RuntimeError as error:
        raise ValueError(
            f"the model failed on x_t of shape {tuple(x.shape)} (the `shape` argument, or x_T's); "
            f"give the shape it was trained on. The model said: {error}"
        ) from error


def _alpha_bar_at(diffusion: GaussianDiffusion, t: int) -> float:
    """ᾱ at timestep t, with ᾱ = 1 "before" the first step (t = -1)."""
    return 1.0 if t < 0 else float(diffusion.alphas_cumprod[t])


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
    r"""Ancestral sampling (Algorithm 2 of Ho et al. 2020): :func:`ddpm_step` at every t of ``diffusion``.

    No noise is added on the last step (t = 0): the output is the mean :math:`\mu_\theta(x_1, 1)`.
    Runs all T steps of ``diffusion``; for fewer, pass ``respace(diffusion, steps)``. Returns the
    samples (N, C, H, W), or ``(samples, trajectory)`` with ``trajectory`` (T + 1, N, C, H, W)
    from x_T down to x_0 on the CPU.
    """
    device = device or model_device(model)
    x = initial_noise(shape, x_T, generator, device, dtype)
    trajectory = [x.cpu()] if return_trajectory else None
    for step in tqdm(
        range(diffusion.num_timesteps - 1, -1, -1), disable=not progress, desc="DDPM"
    ):
        p = _predict(diffusion, model, x, step, clip_denoised, model_kwargs)
        noise = None
        if step > 0:
            noise = torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype
            )
        alpha_bar, alpha_bar_prev = (
            _alpha_bar_at(diffusion, step),
            _alpha_bar_at(diffusion, step - 1),
        )
        x = ddpm_step(x, p.pred_x0, alpha_bar, alpha_bar_prev, noise, p.log_variance)
        if trajectory is not None:
            trajectory.append(x.cpu())
    return (x, torch.stack(trajectory)) if trajectory is not None else x


@torch.no_grad()
def ddim_sample(
    model: Model,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    steps: int = 50,
    eta: float = 0.0,
    spacing: str = DEFAULT_SPACING,
    x_T: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
):
    r"""DDIM (Song, Meng & Ermon 2021): :func:`ddim_step` over the ``steps`` timesteps of
    :func:`timestep_sequence`, then to :math:`\bar\alpha = 1` (returns the last :math:`\hat x_0`).

    η = 0 is deterministic (an ODE solver); η = 1 has DDPM's variance. With ``clip_denoised``,
    :math:`\hat x_0` is clipped to [-1, 1] and :math:`\hat\epsilon` recomputed from it. Returns
    samples, or ``(samples, trajectory)`` with trajectory (steps + 1, N, C, H, W).
    """
    if not eta >= 0:
        raise ValueError(
            f"eta must be >= 0 (0: deterministic DDIM, 1: DDPM-like), got {eta}"
        )
    timesteps = timestep_sequence(diffusion.num_timesteps, steps, spacing).tolist()
    device = device or model_device(model)
    x = initial_noise(shape, x_T, generator, device, dtype)
    trajectory = [x.cpu()] if return_trajectory else None
    for k, step in enumerate(tqdm(timesteps, disable=not progress, desc="DDIM")):
        prev_step = timesteps[k + 1] if k + 1 < len(timesteps) else -1
        p = _predict(diffusion, model, x, step, clip_denoised, model_kwargs)
        alpha_bar, alpha_bar_prev = (
            _alpha_bar_at(diffusion, step),
            _alpha_bar_at(diffusion, prev_step),
        )
        noise = None
        if eta > 0 and float(ddim_sigma(alpha_bar, alpha_bar_prev, eta)) > 0:
            noise = torch.randn(
                x.shape, generator=generator, device=x.device, dtype=x.dtype
            )
        x = ddim_step(p.pred_x0, p.pred_eps, alpha_bar, alpha_bar_prev, eta, noise)
        if trajectory is not None:
            trajectory.append(x.cpu())
    return (x, torch.stack(trajectory)) if trajectory is not None else x


@torch.no_grad()
def ddim_invert(
    model: Model,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    steps: int = 50,
    spacing: str = DEFAULT_SPACING,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
):
    r"""Deterministic DDIM inversion: x0 (N, C, H, W) in [-1, 1] → the x_T from which
    ``ddim_sample(..., eta=0, steps, spacing, x_T=...)`` returns (nearly) x0.

    Visits the same timesteps as the sampler in increasing order and applies
    :func:`ddim_inversion_step`, with :math:`\hat\epsilon` from the model at the target timestep and
    the current sample (as diffusers' ``DDIMInverseScheduler``; the first step starts from
    :math:`\bar\alpha = 1`). The error of each Euler step makes the round trip inexact; it shrinks
    with more steps. Returns x_T, or ``(x_T, trajectory)`` (steps + 1, N, C, H, W).
    """
    timesteps = (
        timestep_sequence(diffusion.num_timesteps, steps, spacing).flip(0).tolist()
    )
    x = x0
    trajectory = [x.cpu()] if return_trajectory else None
    alpha_bar = 1.0
    for step in tqdm(timesteps, disable=not progress, desc="DDIM inversion"):
        p = _predict(diffusion, model, x, step, False, model_kwargs)
        alpha_bar_next = _alpha_bar_at(diffusion, step)
        x = ddim_inversion_step(x, p.pred_eps, alpha_bar, alpha_bar_next)
        alpha_bar = alpha_bar_next
        if trajectory is not None:
            trajectory.append(x.cpu())
    return (x, torch.stack(trajectory)) if trajectory is not None else x


def usable_timesteps(diffusion: GaussianDiffusion, lambda_min_clipped: float) -> int:
    r"""How many trained timesteps (from t = 0 up) have :math:`\lambda_t \ge` ``lambda_min_clipped``:
    DPM-Solver's grid then spans only those, as diffusers' ``lambda_min_clipped`` does. For the
    cosine schedule the last steps have :math:`\bar\alpha \approx 10^{-9}` (λ ≈ -10), where
    :math:`\hat x_0 = (x - \sigma\hat\epsilon)/\alpha` multiplies the network's error by 1/α."""
    lambdas = _half_log_snr(diffusion.alphas_cumprod)
    return int((lambdas >= lambda_min_clipped).sum())


@torch.no_grad()
def dpm_solver_sample(
    model: Model,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    steps: int = 20,
    spacing: str = DEFAULT_SPACING,
    lambda_min_clipped: float = -math.inf,
    x_T: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
):
    r"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): :func:`dpm_solver_2m_step` over the
    ``steps`` timesteps of :func:`timestep_sequence`, then to :math:`\bar\alpha = 1`.

    The first step and the last (to :math:`\bar\alpha = 1`, where λ is infinite) are first order,
    the others second order with the previous :math:`\hat x_0`. ``lambda_min_clipped`` (e.g. -5.1
    for the cosine schedule) keeps the grid within the timesteps whose λ is at least that
    (:func:`usable_timesteps`). Deterministic. Returns samples, or ``(samples, trajectory)``.
    """
    T = diffusion.num_timesteps
    usable = (
        usable_timesteps(diffusion, lambda_min_clipped)
        if lambda_min_clipped > -math.inf
        else T
    )
    if usable < T and isinstance(steps, int) and usable < steps:
        raise ValueError(
            f"lambda_min_clipped={lambda_min_clipped} leaves {usable} timesteps, fewer than "
            f"steps={steps}; lower lambda_min_clipped or take fewer steps"
        )
    timesteps = timestep_sequence(usable, steps, spacing).tolist()
    device = device or model_device(model)
    x = initial_noise(shape, x_T, generator, device, dtype)
    trajectory = [x.cpu()] if return_trajectory else None
    previous_x0, previous_step = None, None
    for k, step in enumerate(
        tqdm(timesteps, disable=not progress, desc="DPM-Solver++")
    ):
        next_step = timesteps[k + 1] if k + 1 < len(timesteps) else -1
        pred_x0 = _predict(
            diffusion, model, x, step, clip_denoised, model_kwargs
        ).pred_x0
        second_order = previous_x0 is not None and next_step >= 0
        x = dpm_solver_2m_step(
            x,
            pred_x0,
            _alpha_bar_at(diffusion, step),
            _alpha_bar_at(diffusion, next_step),
            previous_x0 if second_order else None,
            _alpha_bar_at(diffusion, previous_step) if second_order else None,
        )
        previous_x0, previous_step = pred_x0, step
        if trajectory is not None:
            trajectory.append(x.cpu())
    return (x, torch.stack(trajectory)) if trajectory is not None else x


SAMPLERS = ("ddpm", "ddim", "dpm-solver", "flow-euler", "flow-heun", "edm-heun", "consistency")  # fmt: skip
# the processes of a velocity network (chapters 09 and 10)
FLOW_PROCESSES = (
    FlowMatching,
    distill.ConsistencyDistillation,
    distill.ProgressiveDistillation,
)


def sample(
    name: str,
    model: Model,
    diffusion: GaussianDiffusion | FlowMatching,
    shape: Sequence[int],
    steps: int = 50,
    eta: float = 0.0,
    spacing: str = DEFAULT_SPACING,
    **kwargs: Any,
):
    """The one front door: ``shape`` samples of ``model`` by the sampler called ``name``.

    ``"ddpm"``: :func:`ddpm_sample` on ``respace(diffusion, steps, spacing)``; ``"ddim"``:
    :func:`ddim_sample` with ``eta``; ``"dpm-solver"``: :func:`dpm_solver_sample`.
    Chapter 09's: ``"flow-euler"`` / ``"flow-heun"``: :func:`~ddpm_course.flow.flow_sample` of
    a flow model (``diffusion`` a :class:`~ddpm_course.flow.FlowMatching`), or of a VP model as
    a velocity (:class:`~ddpm_course.vp_wrappers.VPVelocity`) on the flow times of the
    ``spacing`` timesteps (flow-Euler there is DDIM); ``"edm-heun"``: Karras et al.'s
    :func:`~ddpm_course.edm.edm_sample` of a VP model as a denoiser, on the ρ = 7 σ schedule
    within the model's σ range (``steps`` intervals: 2·steps − 1 network calls). Chapter 10's
    ``"consistency"``: :func:`~ddpm_course.distill.consistency_sample` of a flow model (a
    distilled student such as ``fashion-fewstep``), ``steps`` network calls.
    Only DDIM takes ``eta`` ≠ 0. ``kwargs`` go to the loop (``x_T``: for chapter 09's, the unit
    noise their first state scales; ``generator``, ``model_kwargs``, ``clip_denoised``, ...).
    """
    check_choice("sampler", name, SAMPLERS)
    if eta != 0.0 and name != "ddim":
        raise ValueError(f"only the ddim sampler takes eta: eta must be 0, got {eta}")
    flow_model = isinstance(diffusion, FLOW_PROCESSES)
    allowed = (
        ("flow-euler", "flow-heun", "consistency") if flow_model else SAMPLERS[:-1]
    )
    if name not in allowed:  # a velocity model by its ODE or as a consistency model
        raise ValueError(
            f"{type(diffusion).__name__} samples with {allowed}, not {name!r}"
        )
    if name == "ddpm":
        return ddpm_sample(model, respace(diffusion, steps, spacing), shape, **kwargs)
    if name == "ddim":
        return ddim_sample(model, diffusion, shape, steps, eta, spacing, **kwargs)
    if name == "dpm-solver":
        return dpm_solver_sample(model, diffusion, shape, steps, spacing, **kwargs)
    x_T, clip = kwargs.pop("x_T", None), kwargs.pop("clip_denoised", True)
    if name == "consistency":
        return distill.consistency_sample(model, tuple(shape), steps, diffusion.time_scale, x_T=x_T, **kwargs)  # fmt: skip
    if name == "edm-heun":
        denoiser = VPDenoiser(model, diffusion, clip_denoised=clip)
        sigma_max = min(80.0, denoiser.sigma_max)
        return edm_sample(
            denoiser, shape, steps, sigma_min=max(0.002, denoiser.sigma_min),
            sigma_max=sigma_max, x_init=None if x_T is None else sigma_max * x_T, **kwargs,
        )  # fmt: skip
    method = name.removeprefix("flow-")
    if flow_model:
        scale, times, model_time = 1.0, None, diffusion.time_scale
    else:  # the VP model on the flow times of its own timesteps (trained t: quantize)
        times = vp_flow_times(
            diffusion, timestep_sequence(diffusion.num_timesteps, steps, spacing)
        )
        model = VPVelocity(model, diffusion, quantize=True, clip_denoised=clip)
        scale = math.hypot(1 - float(times[0]), float(times[0]))
        model_time = DEFAULT_TIME_SCALE
    return flow_sample(
        model, shape, steps, method, times=times, time_scale=model_time,
        x_init=None if x_T is None else scale * x_T, **kwargs,
    )  # fmt: skip
