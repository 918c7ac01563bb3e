r"""The exercises of chapter 09 (Flow matching, EDM and one view of them all).

Five exercises are compared element-wise with the package's answer (:mod:`ddpm_course.flow`,
:mod:`ddpm_course.edm`): the interpolant and its velocity target, one Euler step and one Heun
step of the flow ODE, EDM's ρ-schedule of noise levels, and the velocity implied by a
predicted ε. When an answer is wrong, the judge also computes what each classic mistake gives
on the same inputs (the sign of the velocity, t and 1 − t swapped, ...) and names the one the
answer matches.

The sixth, ``flow_matching_loss``, is graded by its outcome: the driver ``train_tiny_flow``
(:mod:`~ddpm_course.grading.drivers`, where the student's code runs) trains a
:class:`~ddpm_course.grading.drivers.TinyVelocity` with it for 600 steps on 2-D points of a
two-component Gaussian mixture, and :func:`judge_flow_matching_loss` (in the grader's process)
samples the trained model with 50 Euler steps from fixed noise and measures the sliced
Wasserstein distance (:func:`~ddpm_course.flow_toy.sliced_wasserstein`) to fresh draws of the
mixture. The threshold lies between what the correct loss reaches (0.07 to 0.08 on the seeds
tried) and what the classic mistakes reach (0.2 or more: the velocity's sign flipped, t and
1 − t swapped in the interpolant or in the model's input, x0 or ε as the target, s not given
to the model); the message names the mistake that the trained model looks like. Good samples
are not enough: the driver also evaluates the loss on fixed inputs (:func:`~ddpm_course.grading.
drivers.flow_probe`), where it must be the flow-matching loss of the noise and times given, up
to one constant factor (a loss that draws its own noise trains as well, and fails there).
That exercise's machinery lives in :mod:`~ddpm_course.grading.flow_outcome`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ..edm import edm_sigmas
from ..flow import (
    euler_step,
    flow_interpolant,
    flow_velocity_target,
    heun_step,
    velocity_from_x0_eps,
    x0_from_eps,
)
from .exercise import (
    ROUNDING,
    ROUNDING_REASON,
    Case,
    CaseResult,
    Exercise,
    InputFunction,
    Tolerance,
    as_outputs,
    clone_args,
    draw_normal,
    draw_uniform,
    dtype_name,
    per_example_shape,
)
from .flow_outcome import (
    MIXTURE_MEANS,
    MIXTURE_STDS,
    STEPS,
    THRESHOLD,
    cases_flow_matching_loss,
    held_out_errors,
    judge_flow_matching_loss,
    mixture_points,
    reference_flow_matching_loss,
)

__all__ = [
    "EXERCISES",
    "MIXTURE_MEANS",
    "MIXTURE_STDS",
    "STEPS",
    "AffineVelocity",
    "THRESHOLD",
    "judge_flow_matching_loss",
    "mixture_points",
    "held_out_errors",
]

SHAPES = (
    (torch.float32, (6, 2)),
    (torch.float64, (4, 2)),
    (torch.float32, (3, 1, 4, 4)),
    (torch.float64, (2, 3, 2, 2)),
)


def _as_column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) values as (N, 1, ..., 1) against ``like``."""
    return values.reshape(per_example_shape(tuple(like.shape)))


def with_named_mistakes(
    exercise: Exercise, mistakes: dict[str, Callable[..., object]]
) -> Exercise:
    """``exercise`` compared with its reference as usual; a failing answer is also compared with
    each classic mistake (``{"what the mistake is": a function with the exercise's signature}``),
    and the message names the first one that it matches."""

    def judge(case: Case, outputs: tuple[torch.Tensor, ...]) -> CaseResult:
        result = exercise.compare(exercise.expected(case), outputs, case.scale)
        if result.passed:
            return result
        for description, mistake in mistakes.items():
            wrong = as_outputs(mistake(*clone_args(case.args)), exercise.n_outputs)
            try:
                matches = exercise.compare(wrong, outputs, case.scale).passed
            except (KeyError, RuntimeError):  # another dtype or shape: not this mistake
                matches = False
            if matches:
                return CaseResult(
                    False, f"{result.message}; this is what {description} gives"
                )
        return result

    return dataclasses.replace(exercise, judge=judge)


# -------------------------------------------------------------------- flow_interpolant
def reference_flow_interpolant(x0, noise, s):
    x_s = flow_interpolant(x0, noise, _as_column(s, x0).double())
    return x_s, flow_velocity_target(x0, noise)


def cases_flow_interpolant(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, shape in SHAPES:
        s = draw_uniform((shape[0],), 0.0, 1.0, dtype, generator)
        s[0], s[-1] = 0.0, 1.0  # the two ends: the data and pure noise
        x0 = draw_uniform(shape, -1.0, 1.0, dtype, generator)
        args = (x0, draw_normal(shape, dtype, generator), s)
        cases.append(Case(f"{dtype_name(dtype)}, x0 {shape}, s {(shape[0],)}", args))
    return cases


def _swapped_interpolant(x0, noise, s):
    s = _as_column(s, x0)
    return s * x0 + (1 - s) * noise, noise - x0


def _flipped_velocity(x0, noise, s):
    s = _as_column(s, x0)
    return (1 - s) * x0 + s * noise, x0 - noise


# ------------------------------------------------------------- the Euler and Heun steps
class AffineVelocity(InputFunction):
    r"""A stand-in velocity model :math:`u(x, s) = a(s)\,x + b(s)` with
    :math:`a(s) = a_0 + a_1 s + a_2 s^2` and :math:`b(s) = b_0 + b_1 s + b_2 s^2` (``slope``,
    ``offset``: (3,) each), curved in s so that a step that evaluates it at the wrong time or
    place gives a different answer. Called as ``model(x, s)`` with s a float or (N,)."""

    kind = "affine_velocity"

    def __call__(self, x: torch.Tensor, s) -> torch.Tensor:
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device)
        if s.ndim == 1:
            s = _as_column(s, x)
        a, b = self.params["slope"].to(x.dtype), self.params["offset"].to(x.dtype)
        return (a[0] + a[1] * s + a[2] * s * s) * x + (b[0] + b[1] * s + b[2] * s * s)


def cases_flow_step(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, shape in SHAPES:
        s = round(float(draw_uniform((), 0.3, 1.0, torch.float64, generator)), 4)
        s_next = round(
            s - float(draw_uniform((), 0.05, 0.3, torch.float64, generator)), 4
        )
        model = AffineVelocity(
            slope=draw_uniform((3,), -1.5, 1.5, torch.float64, generator),
            offset=draw_uniform((3,), -1.0, 1.0, torch.float64, generator),
        )
        args = (model, draw_normal(shape, dtype, generator), s, s_next)
        label = f"{dtype_name(dtype)}, x {shape}, s {s} -> {s_next}"
        cases.append(Case(label, args))
    return cases


def reference_flow_euler_step(model, x, s, s_next):
    return euler_step(x, model(x, s), s, s_next)


def reference_flow_heun_step(model, x, s, s_next):
    slope = model(x, s)
    predicted = euler_step(x, slope, s, s_next)
    return heun_step(x, slope, model(predicted, s_next), s, s_next)


def _euler_backwards(model, x, s, s_next):
    return x + (s - s_next) * model(x, s)


def _euler_at_the_next_time(model, x, s, s_next):
    return x + (s_next - s) * model(x, s_next)


def _heun_slope_at_x(model, x, s, s_next):
    return x + (s_next - s) * 0.5 * (model(x, s) + model(x, s_next))


def _heun_slope_at_s(model, x, s, s_next):
    predicted = x + (s_next - s) * model(x, s)
    return x + (s_next - s) * 0.5 * (model(x, s) + model(predicted, s))


def _heun_without_half(model, x, s, s_next):
    predicted = x + (s_next - s) * model(x, s)
    return x + (s_next - s) * (model(x, s) + model(predicted, s_next))


def _heun_is_the_second_slope(model, x, s, s_next):
    predicted = x + (s_next - s) * model(x, s)
    return x + (s_next - s) * model(predicted, s_next)


# ------------------------------------------------------------------ edm_sigma_schedule
def cases_edm_sigma_schedule(generator: torch.Generator) -> list[Case]:
    cases = [
        Case("18 steps, 0.002 to 80, rho 7 (Karras et al.)", (18, 0.002, 80.0, 7.0))
    ]
    for steps, rho in ((10, 7.0), (5, 3.0), (3, 7.0)):
        sigma_min = round(
            float(draw_uniform((), 0.001, 0.05, torch.float64, generator)), 5
        )
        sigma_max = round(
            float(draw_uniform((), 5.0, 160.0, torch.float64, generator)), 3
        )
        label = f"{steps} steps, {sigma_min} to {sigma_max}, rho {rho}"
        cases.append(Case(label, (steps, sigma_min, sigma_max, rho)))
    return cases


def _ramp_over_n(steps, sigma_min, sigma_max, rho):
    ramp = torch.arange(steps, dtype=torch.float64) / steps
    high, low = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return torch.cat(
        [(high + ramp * (low - high)) ** rho, torch.zeros(1, dtype=torch.float64)]
    )


def _rho_one(steps, sigma_min, sigma_max, rho):
    return edm_sigmas(steps, sigma_min, sigma_max, 1.0)


def _no_final_zero(steps, sigma_min, sigma_max, rho):
    return edm_sigmas(steps, sigma_min, sigma_max, rho)[:-1]


def _increasing(steps, sigma_min, sigma_max, rho):
    return edm_sigmas(steps, sigma_min, sigma_max, rho).flip(0)


# ------------------------------------------------------------------- velocity_from_eps
def reference_velocity_from_eps(x, eps, alpha, sigma):
    alpha, sigma = _as_column(alpha, x), _as_column(sigma, x)
    return velocity_from_x0_eps(
        x0_from_eps(x, eps, alpha.double(), sigma.double()), eps
    )


def cases_velocity_from_eps(generator: torch.Generator) -> list[Case]:
    cases = []
    for k, (dtype, shape) in enumerate(SHAPES):
        n = shape[0]
        if k % 2 == 0:  # a VP path: alpha^2 + sigma^2 = 1, alpha down to 0.05
            alpha = draw_uniform((n,), 0.05, 1.0, torch.float64, generator)
            sigma, path = (1 - alpha**2).sqrt(), "VP"
        else:  # the flow path: alpha = 1 - s, sigma = s
            sigma = draw_uniform((n,), 0.0, 0.95, torch.float64, generator)
            alpha, path = 1 - sigma, "flow"
        args = (draw_normal(shape, dtype, generator), draw_normal(shape, dtype, generator),
                alpha.to(dtype), sigma.to(dtype))  # fmt: skip
        # x0 = (x - sigma eps) / alpha: rounding grows like 1 / alpha
        scale = _as_column(1 / alpha, args[0])
        cases.append(
            Case(f"{dtype_name(dtype)}, x {shape}, {path} path", args, scale=scale)
        )
    return cases


def _velocity_sign(x, eps, alpha, sigma):
    return -reference_velocity_from_eps(x, eps, alpha, sigma)


def _velocity_without_alpha(x, eps, alpha, sigma):
    return eps - (x - _as_column(sigma, x) * eps)


def _velocity_is_eps(x, eps, alpha, sigma):
    return eps.clone()


# ----------------------------------------------------------------------------- exercises
FLOW, EDM = "ddpm_course.flow", "ddpm_course.edm"
EXERCISES = (
    with_named_mistakes(
        Exercise(
            name="flow_interpolant",
            signature="flow_interpolant(x0, noise, s)",
            reference=reference_flow_interpolant,
            make_cases=cases_flow_interpolant,
            tolerances=ROUNDING,
            tolerance_reason=ROUNDING_REASON,
            hint=(
                "The point or its target is off. The path mixes the data and the noise linearly "
                "in s, all data at s 0 and all noise at s 1, and the target is the path's "
                "constant velocity, the noise minus the data (its sign says which way s runs); "
                "classic mistakes: the weights of data and noise swapped, the target's sign "
                "flipped, s left as a flat (N,) vector that does not broadcast over the image. "
                "Reread chapter 09, “1. Conditional flow matching on 2-D data”."
            ),
            output_names=("x_s", "velocity"),
            package_functions=(
                f"{FLOW}.flow_interpolant",
                f"{FLOW}.flow_velocity_target",
            ),
        ),
        {
            "t and 1 - t swapped (x_s = s x0 + (1 - s) noise)": _swapped_interpolant,
            "the velocity's sign flipped (x0 - noise)": _flipped_velocity,
        },
    ),
    with_named_mistakes(
        Exercise(
            name="flow_euler_step",
            signature="flow_euler_step(model, x, s, s_next)",
            reference=reference_flow_euler_step,
            make_cases=cases_flow_step,
            tolerances=ROUNDING,
            tolerance_reason=ROUNDING_REASON,
            hint=(
                "The next point is off. One Euler step evaluates the velocity once, at the "
                "current point and time, and moves by it times the step from s to s_next, which "
                "is negative when sampling towards the data; classic mistakes: the step's sign, "
                "the velocity taken at s_next. Reread chapter 09, “DDIM is the Euler step of "
                "the flow ODE”."
            ),
            output_names=("x_next",),
            package_functions=(f"{FLOW}.euler_step", f"{FLOW}.flow_sample"),
        ),
        {
            "a step of (s - s_next), backwards in time": _euler_backwards,
            "the velocity evaluated at s_next instead of s": _euler_at_the_next_time,
        },
    ),
    with_named_mistakes(
        Exercise(
            name="flow_heun_step",
            signature="flow_heun_step(model, x, s, s_next)",
            reference=reference_flow_heun_step,
            make_cases=cases_flow_step,
            tolerances=ROUNDING,
            tolerance_reason=ROUNDING_REASON,
            hint=(
                "The next point is off. Heun's step predicts with an Euler step, evaluates the "
                "velocity again at the predicted point and s_next, and moves from the starting "
                "point by the average of the two velocities; classic mistakes: moving from the "
                "predicted point, using only the second velocity. Reread chapter 09, “4. EDM: "
                "preconditioning, the ρ schedule and Heun's sampler”."
            ),
            output_names=("x_next",),
            package_functions=(
                f"{FLOW}.heun_step",
                f"{FLOW}.euler_step",
                f"{FLOW}.flow_sample",
            ),
        ),
        {
            "the second velocity taken at x instead of the Euler prediction": _heun_slope_at_x,
            "the second velocity taken at s instead of s_next": _heun_slope_at_s,
            "the sum of the two velocities instead of their average": _heun_without_half,
            "the second velocity alone, without the first": _heun_is_the_second_slope,
            "a plain Euler step": reference_flow_euler_step,
        },
    ),
    with_named_mistakes(
        Exercise(
            name="edm_sigma_schedule",
            signature="edm_sigma_schedule(steps, sigma_min, sigma_max, rho)",
            reference=edm_sigmas,
            make_cases=cases_edm_sigma_schedule,
            tolerances={torch.float64: Tolerance(rtol=1e-12, atol=1e-14)},
            tolerance_reason="a power of a float64 interpolation: a few roundings",
            hint=(
                "The noise levels are off. Karras et al. space the levels evenly in σ to the "
                "power 1/ρ, from σ_max down to σ_min, raise them back to the power ρ, and "
                "append a final 0 (steps plus one values); classic mistakes: spacing in σ "
                "itself, the order reversed, the final 0 missing. Reread chapter 09, “4. EDM: "
                "preconditioning, the ρ schedule and Heun's sampler”."
            ),
            output_names=("sigmas",),
            package_functions=(f"{EDM}.edm_sigmas", f"{EDM}.edm_sample"),
        ),
        {
            "i / steps instead of i / (steps - 1) (the last level is not sigma_min)": _ramp_over_n,
            "rho = 1 (evenly spaced sigmas)": _rho_one,
            "no final 0 appended": _no_final_zero,
            "the levels in increasing order (the sampler goes from sigma_max down)": _increasing,
        },
    ),
    with_named_mistakes(
        Exercise(
            name="velocity_from_eps",
            signature="velocity_from_eps(x, eps, alpha, sigma)",
            reference=reference_velocity_from_eps,
            make_cases=cases_velocity_from_eps,
            tolerances=ROUNDING,
            tolerance_reason=ROUNDING_REASON
            + ", scaled by 1 / alpha (the division by alpha)",
            hint=(
                "The velocity is off. From x and the predicted noise, solve the path's equation "
                "for the clean image; the velocity is the noise minus that image; classic "
                "mistakes: the target's sign flipped, α and σ swapped, coefficients left as "
                "flat (N,) vectors that do not broadcast. Reread chapter 09, “2. One view: "
                "paths, predictions and weightings”."
            ),
            output_names=("velocity",),
            package_functions=(
                f"{FLOW}.velocity_from_x0_eps",
                f"{FLOW}.x0_from_eps",
                f"{FLOW}.predictions_from_output",
            ),
        ),
        {
            "the velocity's sign flipped (x0 - eps)": _velocity_sign,
            "x0 = x - sigma eps, without dividing by alpha": _velocity_without_alpha,
            "eps itself, not eps - x0": _velocity_is_eps,
        },
    ),
    Exercise(
        name="flow_matching_loss",
        signature="flow_matching_loss(model, x0, noise, s)",
        reference=reference_flow_matching_loss,
        make_cases=cases_flow_matching_loss,
        tolerances=ROUNDING,
        tolerance_reason="not compared element-wise: judged by the samples of the trained model",
        hint=(
            "The trained model's samples are off. The loss draws a time and noise per "
            "example, forms the point of the linear path at that time, and compares the "
            "model's output there with the path's velocity (the noise minus the data) by "
            "the mean squared error; the model's time input is scaled as the chapter's "
            "models take it. Classic mistakes, each named when the samples show it: the "
            "velocity's sign flipped, s and 1 − s swapped. The loss uses the noise and the "
            "times it is given, drawing none of its own. Reread chapter 09, “1. "
            "Conditional flow matching on 2-D data”."
        ),
        output_names=("weights", "losses", "probe"),
        package_functions=(f"{FLOW}.FlowMatching", f"{FLOW}.flow_interpolant"),
        driver="train_tiny_flow",
        judge=judge_flow_matching_loss,
    ),
)
