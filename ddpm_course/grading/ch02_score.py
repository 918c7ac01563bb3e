r"""The exercises of chapter 02 (Score matching & Langevin): analytic scores, Langevin, denoising score matching.

References call :mod:`ddpm_course.score`. Points are (N, D) tensors in float32 or float64; every
answer comes back in the points' dtype. The score model of the DSM exercise is a
:class:`LinearScore`, described by its weights so that the grader can send it to a submission's
process.
"""

from __future__ import annotations

import torch

from ..score import dsm_loss, gaussian_score, langevin_step, mixture_score
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
)

__all__ = ["EXERCISES", "LinearScore"]

# (dtype, N points, dimension D)
CONFIGS = (
    (torch.float32, 16, 1),
    (torch.float64, 16, 1),
    (torch.float32, 32, 2),
    (torch.float64, 32, 2),
    (torch.float32, 8, 5),
    (torch.float64, 8, 5),
)


class LinearScore(InputFunction):
    r"""A noise-conditional score model :math:`s(x, \sigma) = (x W^\top + b) / \sigma^2`, with sigma a
    float or one per point ((N,))."""

    kind = "linear_score"

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype)
        if sigma.ndim == 1:
            sigma = sigma[:, None]
        return (
            x @ self.params["weight"].to(x.dtype).T + self.params["bias"].to(x.dtype)
        ) / sigma**2


def _label(dtype: torch.dtype, n: int, dim: int) -> str:
    return f"{dtype_name(dtype)}, x ({n}, {dim})"


# --------------------------------------------------------------------------- langevin_step
def cases_langevin_step(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, n, dim in CONFIGS:
        step_size = 10 ** draw_uniform((), -4.0, -1.0, torch.float64, generator).item()
        args = (
            draw_normal((n, dim), dtype, generator),
            draw_normal((n, dim), dtype, generator),
            step_size,
            draw_normal((n, dim), dtype, generator),
        )
        cases.append(Case(f"{_label(dtype, n, dim)}, step_size={step_size:.2g}", args))
    return cases


# -------------------------------------------------------------------------- gaussian_score
def cases_gaussian_score(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, n, dim in CONFIGS:
        # cov = Q diag(lambda) Q^T with eigenvalues in [0.5, 2]: condition number <= 4
        rotation, _ = torch.linalg.qr(draw_normal((dim, dim), torch.float64, generator))
        eigenvalues = draw_uniform((dim,), 0.5, 2.0, torch.float64, generator)
        cov = rotation @ torch.diag(eigenvalues) @ rotation.T
        args = (
            draw_normal((n, dim), dtype, generator),
            draw_normal((dim,), dtype, generator),
            ((cov + cov.T) / 2).to(dtype),
        )
        cases.append(Case(_label(dtype, n, dim), args))
    return cases


# --------------------------------------------------------------------------- mixture_score
def cases_mixture_score(generator: torch.Generator) -> list[Case]:
    cases = []
    for number, (dtype, n, dim) in enumerate(CONFIGS):
        n_components = (1, 3, 8)[number % 3]
        means = 4.0 * draw_normal((n_components, dim), torch.float64, generator)
        stds = draw_uniform((n_components,), 0.2, 1.5, torch.float64, generator)
        weights = draw_uniform((n_components,), 0.1, 1.0, torch.float64, generator)
        weights = weights / weights.sum()
        # the last two cases put the points far from every mean (10 to 100 stds): exp underflows there
        spread = 40.0 if number >= 4 else 4.0
        x = spread * draw_normal((n, dim), torch.float64, generator)
        # the score sums the components' (mu_k - x) / s_k^2, weighted: rounding scales with the largest
        component_scores = (means[None] - x[:, None, :]).abs().amax(dim=2) / stds[
            None
        ] ** 2
        scale = component_scores.amax(dim=1, keepdim=True)
        where = "far from the means" if number >= 4 else "near the means"
        args = (x.to(dtype), means.to(dtype), stds.to(dtype), weights.to(dtype))
        cases.append(
            Case(
                f"{_label(dtype, n, dim)}, K={n_components}, points {where}",
                args,
                scale=scale,
            )
        )
    return cases


# -------------------------------------------------------------------------------- dsm_loss
def cases_dsm_loss(generator: torch.Generator) -> list[Case]:
    cases = []
    for number, (dtype, n, dim) in enumerate(CONFIGS):
        score_fn = LinearScore(
            weight=-torch.eye(dim, dtype=torch.float64)
            + 0.3 * draw_normal((dim, dim), torch.float64, generator),
            bias=0.1 * draw_normal((dim,), torch.float64, generator),
        )
        if number % 2 == 0:  # one noise level for the batch
            sigma = 10 ** draw_uniform((), -1.0, 0.5, torch.float64, generator).item()
            label = f"sigma={sigma:.3g}"
        else:  # one noise level per point, like a noise-conditional model's training batch
            sigma = (10 ** draw_uniform((n,), -1.0, 0.5, torch.float64, generator)).to(
                dtype
            )
            label = f"sigma ({n},)"
        args = (
            score_fn,
            draw_normal((n, dim), dtype, generator),
            sigma,
            draw_normal((n, dim), dtype, generator),
        )
        cases.append(Case(f"{_label(dtype, n, dim)}, {label}", args))
    return cases


SCORE = "ddpm_course.score"

EXERCISES = (
    Exercise(
        name="langevin_step",
        signature="langevin_step(x, score, step_size, noise)",
        reference=langevin_step,
        make_cases=cases_langevin_step,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON,
        hint=(
            "The new x is off. An error that scales with the noise by a factor near 1.41 "
            "means the noise was scaled by the square root of the step size instead of the "
            "root of twice it (the chain then samples a law that is too narrow); an error "
            "that scales with the score means its step size is wrong. Reread chapter 02, "
            "“Langevin dynamics: from a score to samples”."
        ),
        output_names=("x_next",),
        package_functions=(
            f"{SCORE}.langevin_step",
            f"{SCORE}.langevin_sample",
            f"{SCORE}.annealed_langevin",
        ),
    ),
    Exercise(
        name="gaussian_score",
        signature="gaussian_score(x, mean, cov)",
        reference=gaussian_score,
        make_cases=cases_gaussian_score,
        # a linear solve with condition number <= 4: a few roundings, amplified by at most 4
        tolerances={
            torch.float32: Tolerance(rtol=1e-5, atol=1e-5),
            torch.float64: Tolerance(rtol=1e-10, atol=1e-12),
        },
        tolerance_reason="a linear solve (or an inverse) of a covariance with condition number at most 4",
        hint=(
            "The score is off. A got/expected ratio of −1 is the sign (the score points "
            "towards the mean); an error that vanishes when the covariance is the identity "
            "means the covariance multiplied where its inverse belongs (or a transpose on "
            "the wrong side). Reread chapter 02, “The score of a Gaussian and of a Gaussian "
            "mixture”."
        ),
        output_names=("score",),
        package_functions=(f"{SCORE}.gaussian_score",),
    ),
    Exercise(
        name="mixture_score",
        signature="mixture_score(x, means, stds, weights)",
        reference=mixture_score,
        make_cases=cases_mixture_score,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON
        + ", scaled by the largest component score |mu_k - x| / s_k^2 of each point",
        hint=(
            "The score is off. NaN far from the means: the responsibilities were formed "
            "from exponentiated densities, which underflow; work with log-probabilities and "
            "normalise them together. Wrong only when the components' stds differ: the "
            "Gaussian's normalising constant was dropped. Off by the component's std: each "
            "component's score divides by its variance. Reread chapter 02, “The score of a "
            "Gaussian and of a Gaussian mixture”."
        ),
        output_names=("score",),
        package_functions=(
            f"{SCORE}.mixture_score",
            f"{SCORE}.GaussianMixture.score",
            f"{SCORE}.GaussianMixture._component_log_probs",
        ),
    ),
    Exercise(
        name="dsm_loss",
        signature="dsm_loss(score_fn, x, sigma, noise)",
        reference=dsm_loss,
        make_cases=cases_dsm_loss,
        # a mean over N points of sums over D squares: the summation order changes the last digits
        tolerances={
            torch.float32: Tolerance(rtol=1e-5, atol=1e-6),
            torch.float64: Tolerance(rtol=1e-10, atol=1e-12),
        },
        tolerance_reason="sums of up to 64 squares in a different order",
        hint=(
            "The loss is off. Twice the reference: the factor ½ is missing; D times "
            "smaller: a mean over the dimensions where the squared norm sums them; much "
            "larger, growing with σ: the sign of the noise term (the σ-scaled score should "
            "cancel the noise, not add to it), or σ not shaped as one value per point. "
            "Reread chapter 02, “Denoising score matching”."
        ),
        output_names=("loss",),
        package_functions=(f"{SCORE}.dsm_loss",),
    ),
)
