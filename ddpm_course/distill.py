r"""Distillation to few steps: progressive distillation in the flow view (chapter 10).

Chapter 10 (Transformers and few steps). A deterministic sampler of N steps is a map from noise
to data; progressive distillation (Salimans & Ho 2022) trains a *student* to take in one step
what its *teacher* takes in two, so the student samples in N/2 steps; the student becomes the
next teacher, and log2(N) rounds reach one step.

In the flow view of chapter 09 (:mod:`ddpm_course.flow`: :math:`x_s = (1-s)x_0 + s\epsilon`,
the network predicts a velocity, DDIM is the Euler step) the target is plain. On the student's
grid of N_s = N/2 steps, at s = i/N_s, the teacher takes two Euler steps of h = 1/N:

.. math:: x' = x_s - h\,u_T(x_s, s), \qquad x'' = x' - h\,u_T(x', s - h),

and the student's one Euler step of 2h must land on x'': its velocity target is the average
velocity :math:`\tilde u = (x_s - x'')/(2h)`. Predicting a velocity keeps the target finite at
s = 1, where an ε-prediction cannot say anything about x0 (Salimans & Ho switch to v- or
x-prediction for the same reason).

:class:`ProgressiveDistillation` is that objective in the shape the
:class:`~ddpm_course.train.Trainer` takes for a process (``num_timesteps``,
``training_losses``), so a round is a run of the trainer with the teacher inside the objective.
The student samples with :func:`~ddpm_course.flow.flow_sample` (Euler, N_s uniform steps).

A progressively distilled student samples well at its own number of steps only. *Consistency
distillation* (Song et al. 2023) trains one model for every number of steps: a consistency
function f(x_s, s) that maps every point of a teacher's ODE trajectory to the trajectory's end,
trained so that two neighbouring points of one trajectory (one a teacher ODE step from the
other) map to the same x0 (:func:`consistency_function`, :class:`ConsistencyDistillation`);
it samples in one call or, re-noising in between, in several (:func:`consistency_sample`).
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from .diffusion import Model, mean_flat, training_draws
from .flow import DEFAULT_TIME_SCALE, _velocity, flow_interpolant
from .utils import check_timesteps, model_device

__all__ = [
    "ProgressiveDistillation",
    "two_step_target",
    "ConsistencyDistillation",
    "consistency_function",
    "consistency_scalings",
    "consistency_sample",
]


@torch.no_grad()
def two_step_target(
    teacher: Model,
    x: torch.Tensor,
    s: torch.Tensor,
    h: float,
    time_scale: float = DEFAULT_TIME_SCALE,
    model_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    r"""The student's velocity target: the average velocity of two teacher Euler steps of size h,
    :math:`\tilde u = (x - x'')/(2h)` (see the module). x: (N, ...) flow states at times s (N,)
    float64 with s ≥ 2h; the teacher is called as ``teacher(x, time_scale·s, **model_kwargs)``."""
    if not 0 < h or bool((s < 2 * h - 1e-12).any()):
        raise ValueError(
            f"two Euler steps of h = {h} from s must stay in [0, 1]: need s >= 2h"
        )
    step = torch.as_tensor(h, dtype=x.dtype, device=x.device)
    x_mid = x - step * _velocity(teacher, x, s, time_scale, model_kwargs)
    x_end = x_mid - step * _velocity(teacher, x_mid, s - h, time_scale, model_kwargs)
    return (x - x_end) / (2 * step)


class ProgressiveDistillation:
    r"""One round of progressive distillation of a flow-matching teacher that samples in
    ``teacher_steps`` Euler steps into a student that samples in ``teacher_steps // 2``.

    The :class:`~ddpm_course.train.Trainer` draws integer t uniformly in {0, ..., N_s - 1}
    (``num_timesteps`` = N_s); the student's time is s = (t + 1)/N_s (its grid without s = 0),
    and :meth:`training_losses` returns the MSE between the student's velocity and
    :func:`two_step_target`. ``teacher``: a velocity model (frozen here; None until the
    trainer attaches it, as a loaded student needs none to sample); ``time_scale``: the time
    input scale of both networks (``FlowMatching.num_timesteps``).
    """

    default_sampler = "flow-euler"  # the student samples by Euler on its own grid

    def __init__(
        self,
        teacher: Model | None,
        teacher_steps: int,
        time_scale: float = DEFAULT_TIME_SCALE,
    ) -> None:
        if not isinstance(teacher_steps, int) or teacher_steps < 2 or teacher_steps % 2:
            raise ValueError(
                f"teacher_steps must be an even integer >= 2 (the student takes half), got "
                f"{teacher_steps!r}"
            )
        self.teacher = teacher
        if isinstance(teacher, torch.nn.Module):
            teacher.eval().requires_grad_(False)
        self.teacher_steps = teacher_steps
        self.num_timesteps = teacher_steps // 2
        self.time_scale = time_scale

    def __repr__(self) -> str:
        return f"ProgressiveDistillation({self.teacher_steps} -> {self.num_timesteps} steps)"

    def student_time(self, t: torch.Tensor) -> torch.Tensor:
        """Integer t (N,) in {0, ..., N_s - 1} -> the student's time s = (t + 1)/N_s, float64."""
        t = check_timesteps(t, self.num_timesteps)
        return (t.to(torch.float64) + 1) / self.num_timesteps

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
        """``{"loss": (N,), "mse": (N,)}``: the student's velocity at x_s = (1 - s) x0 + s ε
        against :func:`two_step_target`. x0: (N, C, ...) in [-1, 1]; t: (N,) int64 (uniform
        when None); noise like x0. The signature is the trainer's; only the defaults of
        ``loss_type`` and ``min_snr_gamma`` apply."""
        if loss_type != "simple" or min_snr_gamma is not None:
            raise ValueError(
                "progressive distillation trains the plain velocity MSE: use "
                "loss_type='simple' and min_snr_gamma=None"
            )
        t, noise = training_draws(self.num_timesteps, x0, t, noise, generator)
        s = self.student_time(t).to(x0.device)
        x_s = flow_interpolant(x0, noise, s.reshape(-1, *[1] * (x0.ndim - 1)))
        target = two_step_target(
            _frozen_teacher(self),
            x_s,
            s,
            1 / self.teacher_steps,
            self.time_scale,
            model_kwargs,
        )
        predicted = _velocity(model, x_s, s, self.time_scale, model_kwargs)
        mse = mean_flat((predicted - target) ** 2)
        return {"loss": mse, "mse": mse}


def _frozen_teacher(process: Any) -> Model:
    """The process's teacher, or a clear error when none was attached."""
    if process.teacher is None:
        raise ValueError(
            f"{process!r} has no teacher: set its teacher (TrainConfig.teacher names one "
            "for the trainer) before training"
        )
    return process.teacher


# ------------------------------------------------------------- consistency distillation
def consistency_function(
    model: Model,
    x: torch.Tensor,
    s: torch.Tensor,
    time_scale: float = DEFAULT_TIME_SCALE,
    model_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    r"""The consistency model's estimate of the data from x at flow time s (N,) float64:

    .. math:: f_\theta(x, s) = x - s\,F_\theta(x, s),

    Song et al. (2023)'s boundary parameterisation :math:`c_\text{skip}(s)\,x + c_\text{out}(s)\,F`
    with :math:`c_\text{skip} = 1`, :math:`c_\text{out} = -s` in the flow's coordinates: f(x, 0) = x
    for any network, and a velocity model F (a flow-matching teacher) starts as its one-step
    Euler jump to s = 0, i.e. its x̂0 prediction."""
    velocity = _velocity(model, x, s, time_scale, model_kwargs)
    return x - s.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1)) * velocity


def consistency_scalings(
    sigma: torch.Tensor, sigma_data: float = 0.5, sigma_min: float = 0.002
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Song et al. (2023, Appendix C)'s boundary scalings in EDM's noise level σ, for
    :math:`f_\theta(x, \sigma) = c_\text{skip}(\sigma)\,x + c_\text{out}(\sigma)\,F_\theta(x, \sigma)`:

    .. math:: c_\text{skip}(\sigma) = \frac{\sigma_\text{data}^2}{(\sigma - \sigma_\text{min})^2
       + \sigma_\text{data}^2}, \qquad
       c_\text{out}(\sigma) = \frac{\sigma_\text{data}\,(\sigma - \sigma_\text{min})}
       {\sqrt{\sigma^2 + \sigma_\text{data}^2}},

    so that :math:`c_\text{skip}(\sigma_\text{min}) = 1`, :math:`c_\text{out}(\sigma_\text{min}) = 0`
    and f(x, σ_min) = x for any network (EDM's c_skip, c_out with σ shifted by σ_min in the
    places that make the boundary exact). :func:`consistency_function` is the same condition in
    the flow's coordinates (σ_min = 0): c_skip = 1, c_out = −s. sigma: a tensor of any shape
    (≥ sigma_min); returns (c_skip, c_out) of its shape and dtype."""
    if not sigma_data > 0 or not sigma_min >= 0:
        raise ValueError(
            f"sigma_data must be > 0 and sigma_min >= 0, got {sigma_data}, {sigma_min}"
        )
    shifted = sigma - sigma_min
    c_skip = sigma_data**2 / (shifted**2 + sigma_data**2)
    c_out = sigma_data * shifted / (sigma**2 + sigma_data**2).sqrt()
    return c_skip, c_out


class ConsistencyDistillation:
    r"""Consistency distillation (Song et al. 2023) of a flow-matching teacher, in the shape the
    :class:`~ddpm_course.train.Trainer` takes for a process, with the stop-gradient target of
    Song & Dhariwal (2024) (the target network is the student itself, without gradient).

    On the grid :math:`s_n = n/N`, n = 0..N (``num_timesteps`` = N), the trainer's integer t is
    n: the loss compares :func:`consistency_function` at :math:`x_{s_{n+1}} = (1-s_{n+1})x_0 +
    s_{n+1}\epsilon` with the same function, without gradient, at :math:`\hat x_{s_n}`, one
    Heun step of the teacher's ODE from :math:`s_{n+1}` to :math:`s_n` (Euler on the last
    interval): the mean squared difference per example, times N (the λ = 1/Δs weighting).
    ``teacher`` is None until the trainer attaches it (a loaded student samples without it).
    """

    default_sampler = "consistency"

    def __init__(
        self,
        teacher: Model | None,
        num_steps: int = 18,
        time_scale: float = DEFAULT_TIME_SCALE,
    ) -> None:
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        self.teacher = teacher
        if isinstance(teacher, torch.nn.Module):
            teacher.eval().requires_grad_(False)
        self.num_timesteps = num_steps
        self.time_scale = time_scale

    def __repr__(self) -> str:
        return f"ConsistencyDistillation(N={self.num_timesteps})"

    @torch.no_grad()
    def teacher_step(
        self,
        x: torch.Tensor,
        s: torch.Tensor,
        s_next: torch.Tensor,
        model_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """One Heun step of the teacher's flow ODE from s to s_next (N,) float64 (Euler where
        s_next = 0, as :func:`~ddpm_course.flow.flow_sample` does)."""
        shape = (-1, *[1] * (x.ndim - 1))
        step = (s_next - s).to(x.dtype).reshape(shape)
        teacher = _frozen_teacher(self)
        slope = _velocity(teacher, x, s, self.time_scale, model_kwargs)
        euler = x + step * slope
        slope_next = _velocity(teacher, euler, s_next, self.time_scale, model_kwargs)
        heun = x + step * (slope + slope_next) / 2
        return torch.where((s_next > 0).reshape(shape), heun, euler)

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
        """``{"loss": (N,), "mse": (N,)}``: N·‖f(x_{s_{n+1}}) − sg f(x̂_{s_n})‖² / d per example.
        x0: (N, C, ...) in [-1, 1]; t: (N,) int64 = n (uniform when None)."""
        if loss_type != "simple" or min_snr_gamma is not None:
            raise ValueError(
                "consistency distillation trains its own squared distance: use "
                "loss_type='simple' and min_snr_gamma=None"
            )
        t, noise = training_draws(self.num_timesteps, x0, t, noise, generator)
        s = t.to(device=x0.device, dtype=torch.float64) / self.num_timesteps
        s_next = s + 1 / self.num_timesteps
        x_next = flow_interpolant(x0, noise, s_next.reshape(-1, *[1] * (x0.ndim - 1)))
        x_hat = self.teacher_step(x_next, s_next, s, model_kwargs)
        with torch.no_grad():
            target = consistency_function(
                model, x_hat, s, self.time_scale, model_kwargs
            )
        online = consistency_function(
            model, x_next, s_next, self.time_scale, model_kwargs
        )
        mse = mean_flat((online - target) ** 2)
        return {"loss": self.num_timesteps * mse, "mse": mse}


@torch.no_grad()
def consistency_sample(
    model: Model,
    shape: tuple[int, ...],
    steps: int = 1,
    time_scale: float = DEFAULT_TIME_SCALE,
    generator: torch.Generator | None = None,
    model_kwargs: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    x_T: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    r"""Multistep consistency sampling (Song et al. 2023, Algorithm 1) in the flow view:
    :math:`x_0 = f(z, 1)`, then for s = 1 − k/steps, k = 1..steps − 1, re-noise
    :math:`x = (1-s)\,x_0 + s\,\epsilon` and :math:`x_0 = f(x, s)`. ``steps`` network calls;
    shape (N, C, ...); z is ``x_T`` when given, and the noise is drawn with ``generator``;
    ``progress``: a progress bar over the steps."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    device = device or model_device(model) or "cpu"
    n = shape[0]
    if x_T is not None and tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
    x = torch.randn(shape, generator=generator, device=device) if x_T is None else x_T
    bar = tqdm(total=steps, disable=not progress, desc="consistency")
    x0 = consistency_function(
        model, x, torch.ones(n, dtype=torch.float64, device=device), time_scale,
        model_kwargs,
    )  # fmt: skip
    bar.update()
    for k in range(1, steps):
        bar.update()
        s = 1 - k / steps
        noise = torch.randn(shape, generator=generator, device=device)
        x = flow_interpolant(x0, noise, s)
        s_batch = torch.full((n,), s, dtype=torch.float64, device=device)
        x0 = consistency_function(model, x, s_batch, time_scale, model_kwargs)
    bar.close()
    return x0
