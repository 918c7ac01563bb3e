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
    FOLLOWED,
    ROUNDING,
    ROUNDING_REASON,
    Case,
    CaseResult,
    Exercise,
    InputFunction,
    Tolerance,
    correlation,
    draw_normal,
    draw_uniform,
    dtype_name,
    malformed,
    noise_verdict,
    not_followed,
    per_example_shape,
    relative_gap,
    row_weights,
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


# ------------------------------------------------ simulations graded by their statistics
# The student's simulation gets its noise as a tensor (the same seed, the same paths) and is
# judged by the statistics of its paths against closed forms, with a tolerance of a few Monte-Carlo
# standard errors: not element by element, so any correct simulation passes, and the mistakes
# (a step of noise ds instead of sqrt(ds), a drift without its 1/2, a constant beta) move the
# statistics by many standard errors. Cost: well under a second per case.
PATHS = 20_000
Z_MAX = 5.0  # how many standard errors a statistic may be off
# The statistics alone cannot tell the scheme from the target law sampled with fresh randomness
# (on a fine grid they agree), so a simulation must also have followed the noise it was given:
# its output is the scheme's on those noise rows, up to rounding (exercise.relative_gap at most
# NOISE_GAP; a simulation in float32 stays below 6e-7). Other schemes on the same noise are
# 1e-3 or more away (the exact transitions, β at the step's middle, DDPM's sqrt(1 - β) x + sqrt(β)
# ξ); the rows in another order about 1, fresh draws about 1.4.
NOISE_GAP = 1e-5


def _ou_em_moments(x0: float, theta: float, sigma: float, T: float, steps: int):
    """Mean and variance of Euler-Maruyama's X_T for dX = -θ X dt + σ dW on ``steps`` equal
    steps: x0 (1 - θΔ)^n and σ²Δ Σ_k (1 - θΔ)^(2k) (the scheme's own closed form)."""
    dt = T / steps
    factor = 1.0 - theta * dt
    variance = sigma**2 * dt * sum(factor ** (2 * k) for k in range(steps))
    return x0 * factor**steps, variance


def _ou_moments(x0: float, theta: float, sigma: float, T: float):
    """Mean and variance of the OU process at T (the SDE's closed form, chapter 01)."""
    decay = torch.exp(torch.tensor(-theta * T, dtype=torch.float64)).item()
    return x0 * decay, sigma**2 / (2 * theta) * (1 - decay**2)


def reference_ou_endpoint(x0, theta, sigma, T, noise):
    def drift(x, s):
        return -theta * x

    def diffusion(s):
        return sigma

    x = torch.full(noise.shape[1:], x0, dtype=noise.dtype)
    ds = T / noise.shape[0]
    for k in range(noise.shape[0]):
        x = euler_maruyama_step(x, k * ds, ds, drift, diffusion, noise[k])
    return x


def cases_ou_endpoint(generator: torch.Generator) -> list[Case]:
    cases = []
    # (θ, steps over T): a fine grid (θΔ = 0.01, EM's variance within 0.5% of the SDE's) and a
    # coarse one (θΔ = 0.25: EM's variance 14% above the SDE's, many standard errors)
    # (σ kept away from 1, where σ and σ² would give the same paths)
    for theta, steps, T, low, high in (
        (2.0, 100, 0.5, 1.4, 2.0),
        (1.0, 8, 2.0, 0.5, 0.7),
    ):
        x0 = round(_uniform_float(-3.0, 3.0, generator), 3)
        sigma = round(_uniform_float(low, high, generator), 3)
        noise = draw_normal((steps, PATHS), torch.float64, generator)
        label = f"x0 = {x0}, θ = {theta}, σ = {sigma}, T = {T}, {steps} steps, {PATHS} paths"
        cases.append(Case(label, (x0, theta, sigma, T, noise)))
    return cases


def _z(value: float, target: float, standard_error: float) -> float:
    return abs(value - target) / standard_error


def judge_ou_endpoint(case: Case, outputs: tuple) -> CaseResult:
    """Pass when the paths' mean and variance at T match Euler-Maruyama's own closed form for
    this grid within :data:`Z_MAX` standard errors (say which closed form they match if not),
    and the endpoints are the scheme's on the given noise (within :data:`NOISE_GAP`)."""
    x0, theta, sigma, T, noise = case.args
    x_T = outputs[0]
    failure = malformed(x_T, (noise.shape[1],), "X_T", "the simulation blew up")
    if failure is not None:
        return failure
    n = x_T.numel()
    mean, variance = float(x_T.double().mean()), float(x_T.double().var())
    em_mean, em_variance = _ou_em_moments(x0, theta, sigma, T, noise.shape[0])
    ou_mean, ou_variance = _ou_moments(x0, theta, sigma, T)
    z_mean = _z(mean, em_mean, (em_variance / n) ** 0.5)
    z_variance = _z(variance, em_variance, em_variance * (2 / (n - 1)) ** 0.5)
    measured = (
        f"mean {mean:.4f} (Euler-Maruyama on this grid: {em_mean:.4f}, the SDE: {ou_mean:.4f}), "
        f"variance {variance:.4f} (EM: {em_variance:.4f}, the SDE: {ou_variance:.4f}); "
        f"{z_mean:.1f} and {z_variance:.1f} standard errors off (allowed {Z_MAX:g})"
    )
    dt = T / noise.shape[0]
    if z_mean <= Z_MAX and z_variance <= Z_MAX:
        scheme = reference_ou_endpoint(*case.args)
        gap = relative_gap(x_T, scheme)
        return noise_verdict(measured, "the endpoints", x_T, scheme, gap <= NOISE_GAP,
                             f"the scheme on the given noise (gap {gap:.1e})",
                             lambda: _ou_departure(x_T, scheme, noise, gap))  # fmt: skip
    ratio = variance / em_variance
    if abs(ratio - sigma**2) < 0.1 * sigma**2 and abs(sigma - 1) > 0.1:
        why = (
            f"the variance is σ² = {sigma**2:.3g} times the scheme's: the noise of a step is "
            "σ sqrt(Δ) ξ, not σ² sqrt(Δ) ξ"
        )
    elif ratio < 0.5:
        why = (
            f"the variance is {ratio:.2g}× the scheme's (Δ = {dt:g}): the noise of a step is "
            "σ sqrt(Δ) ξ (Brownian increments have variance Δ), not σ Δ ξ"
        )
    elif _z(variance, ou_variance, em_variance * (2 / (n - 1)) ** 0.5) <= Z_MAX:
        why = (
            "the paths match the SDE's exact marginal, not the Euler-Maruyama scheme on this "
            f"coarse grid (θΔ = {theta * dt:g}): simulate the scheme step by step, "
            "x + (-θ x) Δ + σ sqrt(Δ) ξ_k"
        )
    elif z_mean > Z_MAX and abs(mean) > abs(x0):
        why = "the paths moved away from 0: the OU drift is -θ x (towards 0)"
    else:
        why = "check one step, x + (-θ x) Δ + σ sqrt(Δ) ξ_k with Δ = T / steps, from x0"
    return CaseResult(False, f"{measured}: {why}")


# VP-SDE forward: x0 from a two-point data set, the path on a uniform grid of s in [0, 1]
VP_STEPS, VP_TIMES = 200, (50, 100, 200)  # the grid points judged (s = 0.25, 0.5, 1)


def reference_vp_sde_path(x0, beta_min, beta_max, noise):
    sde = VPSDE(beta_min, beta_max)
    x, ds, path = x0, 1.0 / noise.shape[0], [x0]
    for k in range(noise.shape[0]):
        x = euler_maruyama_step(x, k * ds, ds, sde.drift, sde.diffusion, noise[k])
        path.append(x)
    return torch.stack(path)


def cases_vp_sde_path(generator: torch.Generator) -> list[Case]:
    cases = []
    for beta_min, beta_max in ((0.1, 20.0), (0.5, 5.0)):
        x0 = torch.where(
            torch.rand(PATHS, generator=generator) < 0.5, -1.0, 1.0
        ).double()
        x0 = x0 * round(_uniform_float(1.0, 3.0, generator), 3)
        noise = draw_normal((VP_STEPS, PATHS), torch.float64, generator)
        label = f"beta in [{beta_min}, {beta_max}], {VP_STEPS} steps, {PATHS} paths from ±{x0.abs().max():.3f}"
        cases.append(Case(label, (x0, beta_min, beta_max, noise)))
    return cases


def judge_vp_sde_path(case: Case, outputs: tuple) -> CaseResult:
    """Pass when, at s = 0.25, 0.5 and 1, the paths' regression on x0 and its residual
    variance match the VP-SDE's marginal (mean exp(-B/2) x0, variance 1 - exp(-B)) within
    :data:`Z_MAX` standard errors plus Euler-Maruyama's O(Δ) bias, and the path is the
    scheme's on the given noise (within :data:`NOISE_GAP`)."""
    x0, beta_min, beta_max, noise = case.args
    path = outputs[0]
    failure = malformed(path, (noise.shape[0] + 1, x0.shape[0]), "the path")
    if failure is not None:
        return failure
    lines, failed, why = [], False, ""
    for index in VP_TIMES:
        s = index / noise.shape[0]
        mean, std = vp_sde_marginal(
            torch.ones((), dtype=torch.float64), s, beta_min, beta_max
        )
        coefficient, variance = float(mean), float(std) ** 2
        x_s = path[index].double()
        slope = float((x_s * x0).mean() / (x0 * x0).mean())
        residual = float((x_s - slope * x0).var())
        n = x0.numel()
        se_slope = (variance / float((x0 * x0).sum())) ** 0.5
        se_variance = variance * (2 / (n - 1)) ** 0.5
        # Euler-Maruyama's bias at 200 steps: below 1% of each statistic here
        z_slope = abs(slope - coefficient) / (se_slope + 0.01 * coefficient)
        z_variance = abs(residual - variance) / (se_variance + 0.01 * variance)
        lines.append(f"s = {s:g}: mean coefficient {slope:.4f} (SDE {coefficient:.4f}), "
                     f"variance {residual:.4f} (SDE {variance:.4f})")  # fmt: skip
        if not failed and (z_slope > Z_MAX or z_variance > Z_MAX):
            failed = True
            if z_slope > Z_MAX and slope < coefficient:
                why = (f"at s = {s:g} the data decay faster than exp(-½∫β): the drift is "
                       "f(x, s) = -½ β(s) x, with the ½")  # fmt: skip
            elif z_slope > Z_MAX:
                why = (f"at s = {s:g} the data decay slower than exp(-½∫β): β(s) = β_min + "
                       "s (β_max - β_min) grows along the path (s = k / steps at step k)")  # fmt: skip
            elif residual < variance:
                why = (f"at s = {s:g} the variance is {residual / variance:.2f}× the SDE's: the "
                       "noise of a step is sqrt(β(s) Δ) ξ, with the square root of Δ")  # fmt: skip
            else:
                why = (f"at s = {s:g} the variance is {residual / variance:.2f}× the SDE's: "
                       "the diffusion is g(s) = sqrt(β(s)), not β(s)")  # fmt: skip
    measured = "; ".join(lines)
    if failed:
        return CaseResult(False, f"{measured}: {why}")
    scheme = reference_vp_sde_path(*case.args)
    gap = relative_gap(path, scheme)
    return noise_verdict(measured, "the paths", path, scheme, gap <= NOISE_GAP,
                         f"the scheme on the given noise (gap {gap:.1e})",
                         lambda: _vp_departure(path, scheme, case, gap))  # fmt: skip


def _ou_departure(x_T, scheme, noise, gap: float) -> str:
    """How endpoints that follow the given noise differ from Euler-Maruyama's on it: the weights
    of the last and the first row of noise in them, against the scheme's."""
    got, want = row_weights(x_T, noise), row_weights(scheme, noise)
    return (
        f"the endpoints follow the given noise but not the Euler-Maruyama scheme on it "
        f"(relative gap {gap:.1e}, allowed {NOISE_GAP:g}): the last row of noise enters "
        f"with weight {float(got[-1]):.5f} (the scheme's σ sqrt(Δ) = {float(want[-1]):.5f}), "
        f"the first with {float(got[0]):.5f} (the scheme's {float(want[0]):.5f}). Another "
        "scheme (the exact transition e^(-θΔ) in place of 1 - θΔ) or the rows taken in "
        "another order look like this"
    )


def _vp_departure(path, scheme, case: Case, gap: float) -> str:
    """Where and how a path that has the right marginals departs from Euler-Maruyama on the
    given noise: the first step that differs, its noise weight and drift against the scheme's."""
    x0, beta_min, beta_max, noise = case.args
    allowed = NOISE_GAP * float(scheme.double().std())
    rows = (path.double() - scheme.double()).pow(2).mean(1).sqrt()
    first = int((rows > allowed).nonzero()[0])
    if first == 0:
        return "the path's first row is not x0: the path starts at the data themselves"
    k = first - 1
    step, scheme_step = (
        path[k + 1].double() - path[k].double(),
        scheme[k + 1] - scheme[k],
    )
    rho = correlation(step, scheme_step)
    if rho < FOLLOWED:
        return not_followed(f"the path's steps (from step {k} on)", rho)
    ds = 1.0 / noise.shape[0]
    beta = beta_min + k * ds * (beta_max - beta_min)
    weight = float(row_weights(step, noise[k : k + 1])[0])
    rest = step - weight * noise[k].double()
    x_k = path[k].double()
    drift = float((rest * x_k).sum() / (x_k * x_k).sum())
    return (
        f"the path follows the given noise but departs from Euler-Maruyama on it at step {k} "
        f"(s = {k * ds:g}; relative gap {gap:.1e}, allowed {NOISE_GAP:g}): there the noise "
        f"enters with weight {weight:.6f} (the scheme's sqrt(β(s) Δ) = {(beta * ds) ** 0.5:.6f}) "
        f"and x with drift {drift:.6f} (the scheme's -½ β(s) Δ = {-0.5 * beta * ds:.6f}); β at "
        "the step's end or middle instead of its start, or the exact transition, look like this"
    )


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
    Exercise(
        name="ou_endpoint",
        signature="ou_endpoint(x0, theta, sigma, T, noise)",
        reference=reference_ou_endpoint,
        make_cases=cases_ou_endpoint,
        tolerances=ROUNDING,
        tolerance_reason="not compared element-wise: judged by the mean and variance of the "
        "paths against closed forms, within a few Monte-Carlo standard errors",
        hint=(
            "The endpoints' mean or variance is off, or they are not the scheme's on the "
            "given noise. Euler–Maruyama adds the drift times "
            "the step and the diffusion times the square root of the step times a fresh row "
            "of noise, at every step; classic mistakes: the step in place of its square "
            "root on the noise, a drift of the wrong sign, one row of noise reused. Reread "
            "chapter 01, “SDEs and the Euler–Maruyama scheme”."
        ),
        output_names=("x_T",),
        package_functions=(f"{SDE}.euler_maruyama", f"{SDE}.euler_maruyama_step"),
        judge=judge_ou_endpoint,
    ),
    Exercise(
        name="vp_sde_path",
        signature="vp_sde_path(x0, beta_min, beta_max, noise)",
        reference=reference_vp_sde_path,
        make_cases=cases_vp_sde_path,
        tolerances=ROUNDING,
        tolerance_reason="not compared element-wise: judged by the marginals of the paths "
        "against the VP-SDE's closed form",
        hint=(
            "The path's marginals are off, or it is not the scheme's on the given noise. "
            "The VP-SDE's drift is minus half of β(s) times x "
            "and its diffusion the square root of β(s), with β growing linearly from β_min "
            "to β_max as s goes from 0 to 1; classic mistakes: β in place of its square "
            "root on the noise, the whole β in the drift, a path without its starting "
            "point. Reread chapter 01, “The variance-preserving SDE”."
        ),
        output_names=("path",),
        package_functions=(
            f"{SDE}.euler_maruyama",
            f"{SDE}.euler_maruyama_step",
            f"{SDE}.VPSDE",
        ),
        judge=judge_vp_sde_path,
    ),
)
