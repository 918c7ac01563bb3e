r"""The exercises of chapter 01 (Brownian motion & SDEs): Euler-Maruyama and the VP-SDE.

References call :mod:`ddpm_course.sde`. The drift and the diffusion that the Euler-Maruyama
exercises take are :class:`LinearDrift` and :class:`SqrtAffineDiffusion` (the VP-SDE's shapes with
random coefficients), described by their parameters so that the grader can send them to a
submission's process. Continuous times are Python floats or float64 tensors; data tensors are
float32 or float64 and every answer comes back in the data's dtype.
"""

from __future__ import annotations

import torch

from ..sde import VPSDE, euler_maruyama_step, vp_sde_marginal
from .exercise import (
    ROUNDING,
    ROUNDING_REASON,
    Case,
    Exercise,
    InputFunction,
    Tolerance,
    draw_normal,
    draw_uniform,
    dtype_name,
    per_example_shape,
)

__all__ = ["EXERCISES", "LinearDrift", "SqrtAffineDiffusion"]

# (data dtype, data shape): a batch of scalars, of 2-D points and of images, in both dtypes
CONFIGS = (
    (torch.float32, (8,)),
    (torch.float64, (8,)),
    (torch.float32, (5, 2)),
    (torch.float64, (5, 2)),
    (torch.float32, (2, 3, 4, 4)),
    (torch.float64, (2, 3, 4, 4)),
)


class LinearDrift(InputFunction):
    r"""The drift :math:`f(x, s) = -(a + b s)\,x` (the VP-SDE's for a = β_min/2, b = (β_max - β_min)/2)."""

    kind = "linear_drift"

    def __call__(self, x: torch.Tensor, s: float | torch.Tensor) -> torch.Tensor:
        return -(self.params["a"] + self.params["b"] * s) * x


class SqrtAffineDiffusion(InputFunction):
    r"""The diffusion :math:`g(s) = \sqrt{c + d s}` (the VP-SDE's :math:`\sqrt{\beta(s)}` for
    c = β_min, d = β_max - β_min)."""

    kind = "sqrt_affine_diffusion"

    def __call__(self, s: float | torch.Tensor) -> float | torch.Tensor:
        return (self.params["c"] + self.params["d"] * s) ** 0.5


def _uniform_float(low: float, high: float, generator: torch.Generator) -> float:
    return (
        low
        + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()
    )


def _sde(generator: torch.Generator) -> tuple[LinearDrift, SqrtAffineDiffusion]:
    """A VP-like SDE with random coefficients: β_min in [0.05, 1], β_max in [5, 25]."""
    beta_min, beta_max = (
        _uniform_float(0.05, 1.0, generator),
        _uniform_float(5.0, 25.0, generator),
    )
    drift = LinearDrift(a=beta_min / 2, b=(beta_max - beta_min) / 2)
    return drift, SqrtAffineDiffusion(c=beta_min, d=beta_max - beta_min)


# ----------------------------------------------------------------------- vp_discrete_betas
def reference_vp_discrete_betas(N, beta_min, beta_max):
    return VPSDE(beta_min, beta_max).discrete_betas(N)


def cases_vp_discrete_betas(generator: torch.Generator) -> list[Case]:
    cases = [Case("N=1000, beta from 0.1 to 20 (DDPM's schedule)", (1000, 0.1, 20.0))]
    for N in (2, 10, 50, 333, 1000):
        beta_min, beta_max = (
            _uniform_float(0.01, 1.0, generator),
            _uniform_float(5.0, 30.0, generator),
        )
        cases.append(
            Case(
                f"N={N}, beta from {beta_min:.3g} to {beta_max:.3g}",
                (N, beta_min, beta_max),
            )
        )
    return cases


# --------------------------------------------------------------------- euler_maruyama_step
def cases_euler_maruyama_step(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, shape in CONFIGS:
        drift, diffusion = _sde(generator)
        s, ds = (
            _uniform_float(0.0, 0.9, generator),
            _uniform_float(1e-3, 0.1, generator),
        )
        args = (
            draw_normal(shape, dtype, generator),
            s,
            ds,
            drift,
            diffusion,
            draw_normal(shape, dtype, generator),
        )
        cases.append(
            Case(f"{dtype_name(dtype)}, x {shape}, s={s:.3f}, ds={ds:.3g}", args)
        )
    return cases


# ------------------------------------------------------------------------- vp_sde_marginal
def cases_vp_sde_marginal(generator: torch.Generator) -> list[Case]:
    cases = []
    for number, (dtype, shape) in enumerate(CONFIGS):
        beta_min, beta_max = (
            (0.1, 20.0)
            if number < 2
            else (
                _uniform_float(0.01, 1.0, generator),
                _uniform_float(5.0, 30.0, generator),
            )
        )
        if number % 2 == 0:  # s a float (1.0 in the first case: the end of the process)
            s = 1.0 if number == 0 else _uniform_float(0.05, 1.0, generator)
            label = f"s={s:.3f}"
        else:  # one s per example, float64, shaped to broadcast against x0
            s = draw_uniform(
                per_example_shape(shape), 0.05, 1.0, torch.float64, generator
            )
            label = f"s {tuple(s.shape)} float64"
        args = (draw_normal(shape, dtype, generator), s, beta_min, beta_max)
        cases.append(
            Case(
                f"{dtype_name(dtype)}, x0 {shape}, {label}, beta from {beta_min:.3g} to {beta_max:.3g}",
                args,
            )
        )
    return cases


# -------------------------------------------------------------------------- euler_maruyama
def reference_euler_maruyama(drift, diffusion, x_init, s_grid, noises):
    x = x_init
    for k in range(s_grid.shape[0] - 1):
        s, ds = s_grid[k].item(), (s_grid[k + 1] - s_grid[k]).item()
        x = euler_maruyama_step(x, s, ds, drift, diffusion, noises[k])
    return x


def cases_euler_maruyama(generator: torch.Generator) -> list[Case]:
    cases = []
    for number, (dtype, shape) in enumerate(CONFIGS):
        drift, diffusion = _sde(generator)
        n_points = (2, 11, 51)[number % 3]
        if number % 2 == 0:  # a uniform grid over [0, 1]
            s_grid = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64)
            grid = "uniform"
        else:  # uneven steps over [s_0, 1]
            s_grid = torch.sort(
                draw_uniform((n_points,), 0.0, 1.0, torch.float64, generator)
            ).values
            s_grid[-1] = 1.0
            grid = "uneven"
        noises = draw_normal((n_points - 1, *shape), dtype, generator)
        args = (drift, diffusion, draw_normal(shape, dtype, generator), s_grid, noises)
        cases.append(
            Case(
                f"{dtype_name(dtype)}, x {shape}, {grid} grid of {n_points} times", args
            )
        )
    return cases


SDE = "ddpm_course.sde"

EXERCISES = (
    Exercise(
        name="vp_discrete_betas",
        signature="vp_discrete_betas(N, beta_min, beta_max)",
        reference=reference_vp_discrete_betas,
        make_cases=cases_vp_discrete_betas,
        # float64 only: beta(s_i) / N evaluated as a linspace or from s_i = i / (N - 1) differ by an ulp or two
        tolerances={torch.float64: Tolerance(rtol=1e-12, atol=1e-15)},
        tolerance_reason="two float64 evaluations of the same affine function of i",
        hint=(
            "The betas are off. Compare the first and last with β_min/N and β_max/N: 1000 "
            "times too large means β(s) was not divided by N; a last beta short of β_max/N "
            "means the grid stopped before s = 1 (N points span [0, 1] in N − 1 gaps); "
            "digits wrong after the seventh mean float32. Reread chapter 01, “DDPM's "
            "forward chain is the discretised VP-SDE”."
        ),
        output_names=("betas",),
        package_functions=(f"{SDE}.VPSDE.discrete_betas",),
    ),
    Exercise(
        name="euler_maruyama_step",
        signature="euler_maruyama_step(x, s, ds, drift, diffusion, noise)",
        reference=euler_maruyama_step,
        make_cases=cases_euler_maruyama_step,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON,
        hint=(
            "The new x is off. If the error shrinks like ds rather than like √ds, the noise "
            "was scaled by ds, not by its square root; if it grows with the diffusion, g "
            "was squared; an error only where the drift is large means the drift was "
            "evaluated at the wrong point. Reread chapter 01, “SDEs and the Euler–Maruyama "
            "scheme” (one step of the scheme)."
        ),
        package_functions=(f"{SDE}.euler_maruyama_step", f"{SDE}.euler_maruyama"),
    ),
    Exercise(
        name="vp_sde_marginal",
        signature="vp_sde_marginal(x0, s, beta_min, beta_max)",
        reference=vp_sde_marginal,
        make_cases=cases_vp_sde_marginal,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON
        + " (1 - exp(-B) against -expm1(-B), B >= 0.005: relative 2e-14)",
        hint=(
            "The mean or the std is off (the case line says which). The classic mistakes: "
            "β(s)·s in place of the integral of β from 0 to s (wrong for every s > 0 unless "
            "β is constant); the mean's factor without its ½ in the exponent (the mean then "
            "shrinks as fast as the variance); the std without its square root; a float32 "
            "computation, which loses the std's digits near s = 0; a std shaped like x0 "
            "instead of like s. Reread chapter 01, “The variance-preserving SDE”."
        ),
        output_names=("mean", "std"),
        package_functions=(
            f"{SDE}.vp_sde_marginal",
            f"{SDE}.VPSDE.marginal_mean_coef",
            f"{SDE}.VPSDE.marginal_std",
            f"{SDE}.VPSDE.sample_marginal",
        ),
    ),
    Exercise(
        name="euler_maruyama",
        signature="euler_maruyama(drift, diffusion, x_init, s_grid, noises)",
        reference=reference_euler_maruyama,
        make_cases=cases_euler_maruyama,
        # each step rounds in the data's dtype; the contracting drift keeps the errors from growing
        tolerances={
            torch.float32: Tolerance(rtol=1e-5, atol=1e-5),
            torch.float64: Tolerance(rtol=1e-10, atol=1e-12),
        },
        tolerance_reason="roundings of up to 50 steps in the data's dtype",
        hint=(
            "The last state is off. K grid points make K − 1 steps: one step too many or "
            "too few is the classic off-by-one; each step has its own length (the grid need "
            "not be even) and its own noise draw, in order; the function returns only the "
            "final state. If euler_maruyama_step passes, build the loop from it. Reread "
            "chapter 01, “SDEs and the Euler–Maruyama scheme”."
        ),
        package_functions=(f"{SDE}.euler_maruyama", f"{SDE}.euler_maruyama_step"),
    ),
)
