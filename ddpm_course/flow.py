r"""Flow matching and one view of Gaussian paths.

Chapter 09 (Flow matching & EDM). Every process of chapters 03-09 noises data along a Gaussian path
:math:`x = \alpha\,x_0 + \sigma\,\epsilon` (Kingma & Gao 2023); they differ in :math:`(\alpha, \sigma)`,
in what the network predicts and in how the loss weighs the noise levels:

* **VP** (DDPM, chapters 03-05): :math:`\alpha = \sqrt{\bar\alpha_t}`, :math:`\sigma = \sqrt{1-\bar\alpha_t}`,
  discrete t in {0, ..., T-1};
* **flow** (rectified flow / conditional flow matching; Lipman et al. 2023, Liu et al. 2023, Albergo
  & Vanden-Eijnden 2023): :math:`\alpha = 1 - s`, :math:`\sigma = s`, continuous s in [0, 1];
* **EDM** (Karras et al. 2022): :math:`\alpha = 1`, :math:`\sigma \in [0, \infty)`.

Time runs as in the rest of the course: **larger is noisier** (s = 1 is pure noise, s = 0 the data),
and samplers integrate from noise down to s = 0 (or σ = 0). Two paths with the same ratio
:math:`\sigma/\alpha` (the same SNR) carry the same information: a state x of the path
:math:`(\alpha, \sigma)` is the EDM state :math:`x/\alpha` at :math:`\sigma_\text{EDM} = \sigma/\alpha`,
and the flow state :math:`x/(\alpha+\sigma)` at :math:`s = \sigma/(\alpha+\sigma)`. That change of
variables makes DDIM the Euler step of the flow ODE, and lets the flow and EDM samplers run a
discrete-time VP model (:mod:`ddpm_course.vp_wrappers`).

This module has three parts: conversions between the paths and between the predictions (ε, x0, v,
score, velocity) for any :math:`(\alpha, \sigma)`; the flow-matching objective :class:`FlowMatching`,
which the trainer accepts in place of a :class:`~ddpm_course.diffusion.GaussianDiffusion`; and the
ODE step functions (:func:`euler_step`, :func:`heun_step`, shared with EDM) and the flow sampler.
Chapter 09's other modules build on it: :mod:`ddpm_course.flow_toy` (exact fields and measures on
2-D data), :mod:`ddpm_course.edm` (EDM's σ schedule, preconditioning
and Heun sampler) and :mod:`ddpm_course.vp_wrappers` (a VP model as an EDM denoiser or a flow
velocity model). Schedule coefficients (α, σ, s, EDM σ) are floats or float64 tensors that broadcast
against the data (e.g. (N, 1, 1, 1)); they are formed in float64 and applied in the data's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from .diffusion import Model, mean_flat, training_draws
from .utils import (
    cast_like,
    check_choice,
    check_timesteps,
    float64_on,
    initial_noise,
    model_device,
)

__all__ = [
    "PREDICTIONS",
    "TIME_SAMPLINGS",
    "ODE_METHODS",
    "DEFAULT_TIME_SCALE",
    "vp_alpha_sigma",
    "flow_alpha_sigma",
    "flow_time",
    "flow_state",
    "edm_sigma",
    "edm_state",
    "flow_interpolant",
    "flow_velocity_target",
    "x0_from_eps",
    "eps_from_x0",
    "v_from_x0_eps",
    "x0_from_v",
    "eps_from_v",
    "score_from_eps",
    "eps_from_score",
    "velocity_from_x0_eps",
    "x0_from_velocity",
    "eps_from_velocity",
    "predictions_from_output",
    "FlowMatching",
    "euler_step",
    "heun_step",
    "flow_times",
    "flow_sample",
]

PREDICTIONS = ("eps", "x0", "v", "velocity")
TIME_SAMPLINGS = ("uniform", "logit_normal")
ODE_METHODS = ("euler", "heun")
DEFAULT_TIME_SCALE = (
    1000  # the network sees T·s, the range of a DDPM model's t (T = 1000)
)

Coefficient = float | torch.Tensor


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) values shaped (N, 1, ..., 1) to broadcast against ``like`` (N, ...)."""
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


# ------------------------------------------------------------------- paths and conversions
def vp_alpha_sigma(alpha_bar: Coefficient) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The VP path (DDPM): :math:`\alpha = \sqrt{\bar\alpha}`, :math:`\sigma = \sqrt{1-\bar\alpha}` (float64)."""
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64)
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def flow_alpha_sigma(s: Coefficient) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The flow path (rectified flow): :math:`\alpha = 1 - s`, :math:`\sigma = s` (float64)."""
    s = torch.as_tensor(s, dtype=torch.float64)
    return 1 - s, s


def flow_time(alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    r"""The flow time with the same SNR as :math:`(\alpha, \sigma)`: :math:`s = \sigma/(\alpha+\sigma)`
    (float64), since :math:`(1-s)/s = \alpha/\sigma`."""
    alpha = torch.as_tensor(alpha, dtype=torch.float64)
    return sigma / (alpha + sigma)


def flow_state(x: torch.Tensor, alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    r"""A state of the path :math:`(\alpha, \sigma)` as a flow state: :math:`x/(\alpha+\sigma)`, which
    is :math:`(1-s)x_0 + s\,\epsilon` at :math:`s =` :func:`flow_time`. x: (N, ...) -> like x."""
    return cast_like(1 / (float64_on(alpha, x) + float64_on(sigma, x)), x) * x


def edm_sigma(alpha: Coefficient, sigma: Coefficient) -> torch.Tensor:
    r"""The EDM noise level with the same SNR as :math:`(\alpha, \sigma)`: :math:`\sigma/\alpha` (float64);
    for VP :math:`\sqrt{(1-\bar\alpha)/\bar\alpha}`, for the flow path :math:`s/(1-s)`."""
    alpha = torch.as_tensor(alpha, dtype=torch.float64)
    return sigma / alpha


def edm_state(x: torch.Tensor, alpha: Coefficient) -> torch.Tensor:
    r"""A state of the path :math:`(\alpha, \sigma)` as an EDM state: :math:`x/\alpha = x_0 + (\sigma/\alpha)\epsilon`."""
    return cast_like(1 / float64_on(alpha, x), x) * x


def flow_interpolant(
    x0: torch.Tensor, noise: torch.Tensor, s: Coefficient
) -> torch.Tensor:
    r"""The rectified-flow interpolant :math:`x_s = (1-s)\,x_0 + s\,\epsilon` (Liu et al. 2023, Eq. (1);
    Lipman et al. 2023's conditional path with :math:`\sigma_\text{min} = 0`).

    x0, noise: (N, ...); s: float or float64 tensor broadcastable against x0 (s = 1 is pure noise).
    """
    s = float64_on(s, x0)
    return cast_like(1 - s, x0) * x0 + cast_like(s, x0) * noise


def flow_velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    r"""The conditional velocity :math:`u = \frac{d x_s}{ds} = \epsilon - x_0` of :func:`flow_interpolant`:
    the regression target of flow matching. x0, noise: (N, ...)."""
    return noise - x0


def x0_from_eps(
    x: torch.Tensor, eps: torch.Tensor, alpha: Coefficient, sigma: Coefficient
) -> torch.Tensor:
    r""":math:`x_0 = (x - \sigma\epsilon)/\alpha` (the path :math:`x = \alpha x_0 + \sigma\epsilon` solved for x0)."""
    alpha, sigma = float64_on(alpha, x), float64_on(sigma, x)
    return cast_like(1 / alpha, x) * x - cast_like(sigma / alpha, x) * eps


def eps_from_x0(
    x: torch.Tensor, x0: torch.Tensor, alpha: Coefficient, sigma: Coefficient
) -> torch.Tensor:
    r""":math:`\epsilon = (x - \alpha x_0)/\sigma`."""
    alpha, sigma = float64_on(alpha, x), float64_on(sigma, x)
    return cast_like(1 / sigma, x) * x - cast_like(alpha / sigma, x) * x0


def v_from_x0_eps(
    x0: torch.Tensor, eps: torch.Tensor, alpha: Coefficient, sigma: Coefficient
) -> torch.Tensor:
    r"""The v-prediction target :math:`v = \alpha\epsilon - \sigma x_0` (Salimans & Ho 2022, Sec. 4;
    for VP, :math:`v = d x/d\phi` with :math:`\alpha = \cos\phi`, :math:`\sigma = \sin\phi`)."""
    alpha, sigma = float64_on(alpha, x0), float64_on(sigma, x0)
    return cast_like(alpha, x0) * eps - cast_like(sigma, x0) * x0


def x0_from_v(
    x: torch.Tensor, v: torch.Tensor, alpha: Coefficient, sigma: Coefficient
) -> torch.Tensor:
    r""":math:`x_0 = (\alpha x - \sigma v)/(\alpha^2+\sigma^2)` (:math:`\alpha x - \sigma v = \sqrt{\bar\alpha}x_t - \sqrt{1-\bar\alpha}v` for VP)."""
    alpha, sigma = float64_on(alpha, x), float64_on(sigma, x)
    norm = alpha**2 + sigma**2
    return cast_like(alpha / norm, x) * x - cast_like(sigma / norm, x) * v


def eps_from_v(
    x: torch.Tensor, v: torch.Tensor, alpha: Coefficient, sigma: Coefficient
) -> torch.Tensor:
    r""":math:`\epsilon = (\sigma x + \alpha v)/(\alpha^2+\sigma^2)`."""
    alpha, sigma = float64_on(alpha, x), float64_on(sigma, x)
    norm = alpha**2 + sigma**2
    return cast_like(sigma / norm, x) * x + cast_like(alpha / norm, x) * v


def score_from_eps(eps: torch.Tensor, sigma: Coefficient) -> torch.Tensor:
    r"""The score of the noisy marginal, :math:`\nabla_x \log p(x) = -\hat\epsilon/\sigma`
    (Tweedie; chapter 02's denoising score matching)."""
    return cast_like(-1 / float64_on(sigma, eps), eps) * eps


def eps_from_score(score: torch.Tensor, sigma: Coefficient) -> torch.Tensor:
    r""":math:`\epsilon = -\sigma\,\nabla_x \log p(x)`."""
    return cast_like(-float64_on(sigma, score), score) * score


def velocity_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    r"""The flow velocity :math:`u = \epsilon - x_0`: the velocity of the flow path with the same SNR,
    whatever the path :math:`(\alpha, \sigma)` that x lies on (:func:`flow_state`)."""
    return eps - x0


def x0_from_velocity(
    x: torch.Tensor, velocity: torch.Tensor, alpha: Coefficient, sigma: Coefficient
) -> torch.Tensor:
    r""":math:`x_0 = (x - \sigma u)/(\alpha+\sigma)`, from :math:`x = \alpha x_0 + \sigma\epsilon`,
    :math:`u = \epsilon - x_0` (on the flow path: :math:`x_0 = x_s - s\,u`)."""
    alpha, sigma = float64_on(alpha, x), float64_on(sigma, x)
    return (
        cast_like(1 / (alpha + sigma), x) * x
        - cast_like(sigma / (alpha + sigma), x) * velocity
    )


def eps_from_velocity(
    x: torch.Tensor, velocity: torch.Tensor, alpha: Coefficient, sigma: Coefficient
) -> torch.Tensor:
    r""":math:`\epsilon = (x + \alpha u)/(\alpha+\sigma)` (on the flow path: :math:`\epsilon = x_s + (1-s)u`)."""
    alpha, sigma = float64_on(alpha, x), float64_on(sigma, x)
    return (
        cast_like(1 / (alpha + sigma), x) * x
        + cast_like(alpha / (alpha + sigma), x) * velocity
    )


def predictions_from_output(
    output: torch.Tensor,
    prediction: str,
    x: torch.Tensor,
    alpha: Coefficient,
    sigma: Coefficient,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""(x0, ε) implied by a network output that predicts ``prediction`` ("eps", "x0", "v" or
    "velocity") at the state x of the path :math:`(\alpha, \sigma)`: the functions above, for any
    path (:meth:`~ddpm_course.diffusion.GaussianDiffusion.predictions_from_output` is the VP case,
    on integer t). output, x: (N, ...)."""
    check_choice("prediction", prediction, PREDICTIONS)
    if prediction == "eps":
        return x0_from_eps(x, output, alpha, sigma), output
    if prediction == "x0":
        return output, eps_from_x0(x, output, alpha, sigma)
    if prediction == "v":
        return x0_from_v(x, output, alpha, sigma), eps_from_v(x, output, alpha, sigma)
    return (
        x0_from_velocity(x, output, alpha, sigma),
        eps_from_velocity(x, output, alpha, sigma),
    )


# ------------------------------------------------------------- the flow-matching objective
class FlowMatching:
    r"""The conditional flow-matching objective (Lipman et al. 2023; Liu et al. 2023), in the shape the
    :class:`~ddpm_course.train.Trainer` expects of a process: ``num_timesteps`` and ``training_losses``.

    The trainer draws integer t uniformly in {0, ..., T-1}; :meth:`continuous_time` maps it to
    s in (0, 1): :math:`u = (t + \tfrac12)/T` (the midpoints of T equal bins), then

    * ``time_sampling="uniform"``: s = u;
    * ``"logit_normal"``: :math:`s = \mathrm{sigmoid}(m + \varsigma\,\Phi^{-1}(u))`, the quantile
      function of the logit-normal distribution (Esser et al. 2024, Sec. 3.1), so that uniform t
      give logit-normal s, which puts more training on the middle noise levels
      (``logit_mean`` m, ``logit_std`` ς; SD3 uses m = 0, ς = 1).

    The network is called as ``model(x_s, T·s, **model_kwargs)``: its time input spans (0, T), the
    range a DDPM model's t covers, so the same :class:`~ddpm_course.nn.UNet` and its sinusoidal
    embedding (which takes float t) serve both without retuning the frequencies (diffusers'
    ``FlowMatchEulerDiscreteScheduler`` feeds ``1000·σ`` likewise). Samplers must pass the same
    scale (``time_scale=num_timesteps`` in :func:`flow_sample`).
    """

    default_sampler = (
        "flow-euler"  # what the trainer's grids and `ddpm-course sample` use
    )

    def __init__(
        self,
        num_timesteps: int = 1000,
        time_sampling: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ) -> None:
        if (
            not isinstance(num_timesteps, int)
            or isinstance(num_timesteps, bool)
            or num_timesteps < 1
        ):
            raise ValueError(
                f"num_timesteps (T, the number of time bins) must be a positive integer, got {num_timesteps!r}"
            )
        self.time_sampling = check_choice(
            "time_sampling", time_sampling, TIME_SAMPLINGS
        )
        if not logit_std > 0 or not math.isfinite(logit_mean):
            raise ValueError(
                f"logit_std must be > 0 and logit_mean finite, got logit_mean={logit_mean}, "
                f"logit_std={logit_std} (Esser et al. use 0 and 1)"
            )
        self.num_timesteps = num_timesteps
        self.logit_mean = logit_mean
        self.logit_std = logit_std

    @property
    def time_scale(self) -> float:
        """The network's time input at s = 1 (T): ``model(x_s, time_scale·s)``."""
        return float(self.num_timesteps)

    def __repr__(self) -> str:
        return f"FlowMatching(T={self.num_timesteps}, time_sampling={self.time_sampling!r})"

    def continuous_time(self, t: torch.Tensor) -> torch.Tensor:
        r"""Integer t (N,) in {0, ..., T-1} -> flow time s (N,) float64 in (0, 1) (see the class)."""
        t = check_timesteps(t, self.num_timesteps)
        u = (t.to(torch.float64) + 0.5) / self.num_timesteps
        if self.time_sampling == "uniform":
            return u
        return torch.sigmoid(self.logit_mean + self.logit_std * torch.special.ndtri(u))

    def model_output(
        self,
        model: Model,
        x_s: torch.Tensor,
        s: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """The predicted velocity ``model(x_s, T·s, **model_kwargs)``, checked to have x_s's shape.
        x_s: (N, ...); s: (N,) float64."""
        return _velocity(model, x_s, s, self.num_timesteps, model_kwargs)

    def training_losses(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        model_kwargs: dict[str, Any] | None = None,
        loss_type: str = "simple",
        generator: torch.Generator | None = None,
        min_snr_gamma: float | None = None,
    ) -> dict[str, torch.Tensor]:
        r"""The flow-matching loss per example, ``{"loss": (N,), "mse": (N,)}`` (both the same):

        .. math:: \mathcal L = \big\| \hat u_\theta(x_s, s) - (\epsilon - x_0) \big\|^2 / d,\qquad
           x_s = (1-s)\,x_0 + s\,\epsilon,

        with s = :meth:`continuous_time` (t) (t uniform when None). In the one view (Kingma & Gao
        2023) this is an ε-loss weighted by :math:`1/(1-s)^2` and an x0-loss weighted by
        :math:`1/s^2`, since :math:`\hat u - u = (\hat\epsilon - \epsilon)/(1-s) = -(\hat x_0 - x_0)/s`.

        x0: (N, C, ...) in [-1, 1]; t: (N,) int64 or a scalar; noise: like x0 (drawn with
        ``generator`` when None). The signature is :meth:`GaussianDiffusion.training_losses`'s;
        only ``loss_type="simple"`` and ``min_snr_gamma=None`` apply.
        """
        if loss_type != "simple":
            raise ValueError(
                f"FlowMatching supports loss_type 'simple' only (the velocity MSE), got {loss_type!r}: "
                "'hybrid' and 'vlb' train a learned DDPM variance, which a flow model has not; "
                "set loss_type='simple'"
            )
        if min_snr_gamma is not None:
            raise ValueError(
                f"FlowMatching does not weight by min-SNR (got min_snr_gamma={min_snr_gamma!r}): the "
                "velocity loss already weighs noise levels its own way; set min_snr_gamma=None"
            )
        t, noise = training_draws(self.num_timesteps, x0, t, noise, generator)
        s = self.continuous_time(t).to(x0.device)
        x_s = flow_interpolant(x0, noise, _per_example(s, x0))
        predicted = self.model_output(model, x_s, s, model_kwargs)
        mse = mean_flat((flow_velocity_target(x0, noise) - predicted) ** 2)
        return {"loss": mse, "mse": mse}


def _velocity(
    model: Model,
    x: torch.Tensor,
    s: torch.Tensor,
    time_scale: float,
    model_kwargs: dict[str, Any] | None,
) -> torch.Tensor:
    """``model(x, time_scale·s, **model_kwargs)`` with s (N,) float64, the output checked against x."""
    time_input = (time_scale * s).to(torch.promote_types(x.dtype, torch.float32))
    out = model(x, time_input, **(model_kwargs or {}))
    if out.shape != x.shape:
        raise ValueError(
            f"the velocity model returned shape {tuple(out.shape)} for input {tuple(x.shape)}; "
            "a flow model predicts a velocity shaped like its input"
        )
    return out


# ------------------------------------------------------------------- ODE steps and the flow samplers
def euler_step(
    x: torch.Tensor, slope: torch.Tensor, time: Coefficient, time_next: Coefficient
) -> torch.Tensor:
    r"""One Euler step of :math:`dx/d\tau = f(x, \tau)`: :math:`x_\text{next} = x + (\tau_\text{next} - \tau)\,f(x, \tau)`.

    The flow ODE has :math:`\tau = s`, :math:`f = \hat u` (Liu et al. 2023); EDM's has
    :math:`\tau = \sigma`, :math:`f =` :func:`~ddpm_course.edm.edm_slope` (Algorithm 1 of Karras et al. 2022).
    x, slope: (N, ...); time, time_next: floats or float64 tensors broadcastable against x.
    """
    step = float64_on(time_next, x) - float64_on(time, x)
    return x + cast_like(step, x) * slope


def heun_step(
    x: torch.Tensor,
    slope: torch.Tensor,
    slope_next: torch.Tensor,
    time: Coefficient,
    time_next: Coefficient,
) -> torch.Tensor:
    r"""Heun's second-order step (the trapezoidal rule, Algorithm 1 of Karras et al. 2022, line 8):

    .. math:: x_\text{next} = x + (\tau_\text{next} - \tau)\,\tfrac12\big(f(x, \tau) + f(\tilde x, \tau_\text{next})\big),

    where ``slope_next`` is f at the Euler prediction :math:`\tilde x` = :func:`euler_step` (x, slope, τ, τ_next).
    """
    step = float64_on(time_next, x) - float64_on(time, x)
    return x + cast_like(step / 2, x) * (slope + slope_next)


def flow_times(steps: int, shift: float = 1.0) -> torch.Tensor:
    r"""The flow sampler's grid, ``steps + 1`` times from 1 down to 0: (steps + 1,) float64.

    Evenly spaced :math:`s_i = 1 - i/\text{steps}`, then shifted
    :math:`s \mapsto \text{shift}\cdot s/(1 + (\text{shift}-1)s)` (Esser et al. 2024, Eq. (23); shift > 1
    spends more steps at high noise; diffusers' ``shift``). diffusers' ``FlowMatchEulerDiscreteScheduler``
    stops its even grid at 1/T before 0; this one is evenly spaced all the way to 0.
    """
    _check_steps(steps)
    if not shift > 0:
        raise ValueError(f"shift must be > 0 (1: no shift; SD3 uses 3), got {shift}")
    s = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    return shift * s / (1 + (shift - 1) * s)


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


def _check_grid(
    grid: Sequence[float] | torch.Tensor, steps: int, what: str
) -> torch.Tensor:
    """A user-given decreasing grid of steps + 1 times ending at 0, as float64."""
    grid = torch.as_tensor(grid, dtype=torch.float64).cpu()
    if grid.ndim != 1 or grid.shape[0] != steps + 1:
        raise ValueError(
            f"{what} must have steps + 1 = {steps + 1} values, got shape {tuple(grid.shape)}"
        )
    if not bool((grid[1:] < grid[:-1]).all()) or float(grid[-1]) < 0:
        raise ValueError(
            f"{what} must decrease strictly to a value >= 0 (noise first), got {grid.tolist()}"
        )
    return grid


@torch.no_grad()
def flow_sample(
    model: Model,
    shape: Sequence[int],
    steps: int,
    method: str = "euler",
    times: Sequence[float] | torch.Tensor | None = None,
    shift: float = 1.0,
    time_scale: float = DEFAULT_TIME_SCALE,
    x_init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
):
    r"""Integrate the flow ODE :math:`dx/ds = \hat u(x, s)` from noise to data (s = 1 -> 0).

    ``method="euler"``: :func:`euler_step` at each of the ``steps`` intervals (``steps`` network
    calls); ``"heun"``: :func:`heun_step`, with Euler on the last interval when it ends at s = 0
    (2·steps - 1 calls, as Algorithm 1 of Karras et al. 2022).

    model: a velocity model called as ``model(x_s, time_scale·s, **model_kwargs)`` (as
    :class:`FlowMatching` trains it; ``time_scale`` = its ``num_timesteps``); shape: (N, C, ...).
    ``times``: the grid, ``steps + 1`` decreasing values ending at 0 (default :func:`flow_times`
    (steps, shift)). The start is ``x_init``, or :math:`\sqrt{(1-s_0)^2 + s_0^2}\,z`,
    z ~ N(0, I) drawn with ``generator`` (pure noise z when s_0 = 1; for s_0 < 1, the flow state of a
    VP model's x_T ~ N(0, I), see :func:`~ddpm_course.vp_wrappers.vp_flow_times`). Returns samples (N, C, ...), or
    ``(samples, trajectory)`` with trajectory (steps + 1, N, C, ...) on the CPU.
    """
    check_choice("method", method, ODE_METHODS)
    _check_steps(steps)
    times = (
        flow_times(steps, shift)
        if times is None
        else _check_grid(times, steps, "times")
    )
    s0 = float(times[0])
    if s0 > 1:
        raise ValueError(
            f"times must lie in [0, 1] (s = 1 is pure noise), got times[0] = {s0}"
        )
    device = device or model_device(model)
    x = initial_noise(
        shape, x_init, generator, device, dtype, math.hypot(1 - s0, s0), "x_init"
    )
    trajectory = [x.cpu()] if return_trajectory else None

    def velocity(state: torch.Tensor, s: float) -> torch.Tensor:
        s_batch = torch.full(
            (state.shape[0],), s, dtype=torch.float64, device=state.device
        )
        return _velocity(model, state, s_batch, time_scale, model_kwargs)

    for k in tqdm(range(steps), disable=not progress, desc=f"flow {method}"):
        s, s_next = float(times[k]), float(times[k + 1])
        slope = velocity(x, s)
        x_euler = euler_step(x, slope, s, s_next)
        if method == "heun" and s_next > 0:
            x = heun_step(x, slope, velocity(x_euler, s_next), s, s_next)
        else:
            x = x_euler
        if trajectory is not None:
            trajectory.append(x.cpu())
    return (x, torch.stack(trajectory)) if trajectory is not None else x
