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
    CaseResult,
    Exercise,
    InputFunction,
    Tolerance,
    draw_normal,
    draw_uniform,
    dtype_name,
    malformed,
    noise_verdict,
    relative_gap,
)

__all__ = ["EXERCISES", "GaussianScoreFunction", "LinearScore", "NoisyMixtureScore"]

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


# ------------------------------------------------------ samplers graded by their samples
# The student's sampler gets its noise as a tensor and is judged by the statistics of its
# samples against closed forms, within a few Monte-Carlo standard errors. Cost: 0.3 s of CPU
# for the Langevin chain, 3.5 s for annealed Langevin (the student's run and the reference's on
# the same noise; 2-D points, analytic scores).
CHAINS, Z_MAX = 10_000, 5.0
# The statistics alone cannot tell a sampler from the target law drawn with fresh randomness, so
# a sampler must also have followed the noise it was given: its samples are the chain's on those
# noise rows. The Langevin chain on a Gaussian is linear in the noise: its samples are the
# reference's up to rounding (exercise.relative_gap at most NOISE_GAP; float32 arithmetic stays
# below 2e-7, the target law or fresh noise about 1.4 away). Annealed Langevin on two modes is
# not: a chain near the boundary between the modes could end in the other one when rounding
# differs, so there at least MATCHED of the chains must end within CHAIN_TOL of the reference's
# (float32 arithmetic: within 3e-6; a final denoising step moves them by 2e-2 or more).
NOISE_GAP, MATCHED, CHAIN_TOL = 1e-5, 0.99, 1e-4


def _last_row_weight(x: torch.Tensor, noise: torch.Tensor) -> float:
    """How much of the last row of noise the samples carry: the regression coefficient of
    their first coordinate on the noise's (sqrt(2ε) for the Langevin chain)."""
    last = noise[-1, :, 0].double()
    centred = x[:, 0].double() - x[:, 0].double().mean()
    return float((centred * last).sum() / (last * last).sum())


class GaussianScoreFunction(InputFunction):
    r"""The score of :math:`\mathcal N(\mu, \Sigma)`: :math:`s(x) = -(x - \mu)\Sigma^{-1}`,
    given by ``mean`` (D,) and ``precision`` :math:`\Sigma^{-1}` (D, D)."""

    kind = "gaussian_score_function"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - self.params["mean"].to(x.dtype)
        return -centred @ self.params["precision"].to(x.dtype)


class NoisyMixtureScore(InputFunction):
    r"""The score of the mixture :math:`\sum_k w_k\,\mathcal N(\mu_k, s_k^2 I)` perturbed by
    noise of std σ (each component's variance becomes :math:`s_k^2 + \sigma^2`): the exact
    noise-conditional score ``score(x, sigma)`` of Song & Ermon 2019."""

    kind = "noisy_mixture_score"

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        means = self.params["means"].to(x.dtype)
        variances = self.params["stds"].to(x.dtype) ** 2 + float(sigma) ** 2
        log_weights = self.params["weights"].to(x.dtype).log()
        squared = ((x[:, None, :] - means[None]) ** 2).sum(-1)
        dim = x.shape[1]
        log_probs = (
            log_weights - 0.5 * squared / variances - 0.5 * dim * variances.log()
        )
        responsibilities = torch.softmax(log_probs, dim=1)
        pulls = (means[None] - x[:, None, :]) / variances[None, :, None]
        return (responsibilities[:, :, None] * pulls).sum(1)


def reference_langevin_chain(score, x_init, step_size, noise):
    x = x_init
    for k in range(noise.shape[0]):
        x = langevin_step(x, score(x), step_size, noise[k])
    return x


def cases_langevin_chain(generator: torch.Generator) -> list[Case]:
    rotation, _ = torch.linalg.qr(draw_normal((2, 2), torch.float64, generator))
    eigenvalues = torch.tensor([0.5, 2.0], dtype=torch.float64)
    cov = rotation @ torch.diag(eigenvalues) @ rotation.T
    mean = draw_uniform((2,), -2.0, 2.0, torch.float64, generator)
    score = GaussianScoreFunction(mean=mean, precision=torch.linalg.inv(cov))
    steps, step_size = 400, 0.05
    x_init = draw_normal((CHAINS, 2), torch.float64, generator)
    noise = draw_normal((steps, CHAINS, 2), torch.float64, generator)
    label = f"N(μ, Σ) in 2-D (eigenvalues 0.5 and 2), {CHAINS} chains, {steps} steps of ε = {step_size}"
    return [Case(label, (score, x_init, step_size, noise))]


def _ula_covariance(precision: torch.Tensor, step_size: float) -> torch.Tensor:
    """The stationary covariance of the unadjusted Langevin chain on a Gaussian: along each
    eigenvector of Σ (eigenvalue λ), λ / (1 - ε / (2λ)) (the O(ε) bias of the discrete chain)."""
    eigenvalues, vectors = torch.linalg.eigh(torch.linalg.inv(precision))
    return (
        vectors
        @ torch.diag(eigenvalues / (1 - step_size / (2 * eigenvalues)))
        @ vectors.T
    )


def judge_langevin_chain(case: Case, outputs: tuple) -> CaseResult:
    """Pass when the chains' mean and covariance match the Langevin chain's stationary
    distribution within :data:`Z_MAX` standard errors and the samples are the chain's on the
    given noise (within :data:`NOISE_GAP`)."""
    score, x_init, step_size, noise = case.args
    x = outputs[0]
    failure = malformed(x, x_init.shape, "the samples", "the chain diverged")
    if failure is not None:
        return failure
    target_mean = score.params["mean"]
    target_cov = _ula_covariance(score.params["precision"], step_size)
    n = x.shape[0]
    mean = x.double().mean(0)
    cov = torch.cov(x.double().T)
    # standard errors: of the mean, sqrt(Σ_ii / n); of a covariance entry, sqrt((Σ_ii Σ_jj + Σ_ij²) / n)
    diagonal = target_cov.diagonal()
    z_mean = float(((mean - target_mean).abs() / (diagonal / n).sqrt()).max())
    se_cov = ((diagonal[:, None] * diagonal[None] + target_cov**2) / n).sqrt()
    z_cov = float(((cov - target_cov).abs() / se_cov).max())
    spread = float(
        torch.linalg.eigvalsh(cov).sum() / torch.linalg.eigvalsh(target_cov).sum()
    )
    measured = (
        f"mean {[round(v, 3) for v in mean.tolist()]} (target {[round(v, 3) for v in target_mean.tolist()]}), "
        f"total variance {spread:.3f}× the chain's stationary one; {z_mean:.1f} and {z_cov:.1f} "
        f"standard errors off (allowed {Z_MAX:g})"
    )
    if z_mean <= Z_MAX and z_cov <= Z_MAX:
        chain = reference_langevin_chain(*case.args)
        gap = relative_gap(x, chain)
        why = (
            f"the samples follow the given noise but not the Langevin chain on it (relative gap "
            f"{gap:.1e}, allowed {NOISE_GAP:g}): the last row of noise enters with weight "
            f"{_last_row_weight(x, noise):.5f} (the chain's sqrt(2ε) = {(2 * step_size) ** 0.5:.5f}"
            f", its last step's); another update (a Metropolis correction, a different "
            "discretisation) or the rows taken in another order look like this"
        )
        return noise_verdict(measured, "the samples", x, chain, gap <= NOISE_GAP,
                             f"the chain on the given noise (gap {gap:.1e})", lambda: why)  # fmt: skip
    if spread < 0.1:
        why = (
            "the samples collapsed onto the mode: without the noise term Langevin is gradient "
            "ascent on log p; add sqrt(2ε) z"
        )
    elif 0.35 < spread < 0.65:
        why = (
            "the spread is about half the target's: the noise of a step is sqrt(2ε) z, not "
            "sqrt(ε) z (x + ε ∇log p + sqrt(2ε) z; with α = 2ε: x + α/2 ∇log p + sqrt(α) z)"
        )
    elif z_mean > Z_MAX and spread > 2:
        why = (
            "the chains ran away from the mode: a step goes UP the score, x + ε ∇log p"
        )
    else:
        why = "check one step, x + ε score(x) + sqrt(2ε) z_k, applied to every chain"
    return CaseResult(False, f"{measured}: {why}")


# annealed Langevin on a two-mode mixture with unequal weights: only the annealing finds them
MODES = ((-3.0, -3.0), (3.0, 3.0))
MODE_WEIGHTS, MODE_STD = (0.2, 0.8), 0.5
# 10 levels of 100 steps leave the chains' share of the lighter mode above its weight by
# +0.015 ± 0.006 (mean ± sd over 30 grading seeds; largest +0.025), the binomial standard error
# being 0.006: the share may be off by SHARE_BIAS plus Z_MAX standard errors (a chain that never
# crosses between the modes keeps about half of them at each).
SHARE_BIAS = 0.015


def reference_annealed_langevin_sample(score, sigmas, x_init, step_lr, noise):
    x = x_init
    steps_each = noise.shape[0] // sigmas.shape[0]
    sigma_last = float(sigmas[-1])
    for level, sigma in enumerate(sigmas.tolist()):
        alpha = step_lr * sigma**2 / sigma_last**2
        for k in range(steps_each):
            z = noise[level * steps_each + k]
            x = langevin_step(x, score(x, sigma), alpha / 2, z)
    return x


def cases_annealed_langevin_sample(generator: torch.Generator) -> list[Case]:
    from ..score import geometric_sigmas

    order = torch.randperm(2, generator=generator)
    means = torch.tensor(MODES, dtype=torch.float64)[order]
    weights = torch.tensor(MODE_WEIGHTS, dtype=torch.float64)[order]
    score = NoisyMixtureScore(means=means, stds=torch.full((2,), MODE_STD, dtype=torch.float64),
                              weights=weights)  # fmt: skip
    sigmas = geometric_sigmas(8.0, 0.1, 10).double()
    steps_each, step_lr = 100, 5e-3
    x_init = draw_uniform((CHAINS // 2, 2), -8.0, 8.0, torch.float64, generator)
    noise = draw_normal(
        (steps_each * sigmas.shape[0], CHAINS // 2, 2), torch.float64, generator
    )
    label = (f"two modes of weights {weights.tolist()}, σ from 8 to 0.1 in 10 levels, "
             f"{steps_each} steps each, {CHAINS // 2} chains")  # fmt: skip
    return [Case(label, (score, sigmas, x_init, step_lr, noise))]


def judge_annealed_langevin_sample(case: Case, outputs: tuple) -> CaseResult:
    """Pass when the share of samples at each mode matches the mixture's weights (within
    :data:`SHARE_BIAS` plus :data:`Z_MAX` standard errors) and the spread around the modes
    matches their std (within Z_MAX standard errors plus 5% of the std for the last level's σ
    and the chain's step), and the samples are annealed Langevin's on the given noise (at least
    :data:`MATCHED` of the chains within :data:`CHAIN_TOL` of the reference's)."""
    score, sigmas, x_init = case.args[:3]
    x = outputs[0]
    failure = malformed(x, x_init.shape, "the samples", "the chain diverged")
    if failure is not None:
        return failure
    means, weights = score.params["means"], score.params["weights"]
    distances = torch.cdist(x.double(), means)
    nearest = distances.argmin(1)
    n = x.shape[0]
    minor = int(weights.argmin())
    share = float((nearest == minor).double().mean())
    target = float(weights[minor])
    se_share = (target * (1 - target) / n) ** 0.5
    z_share = max(0.0, abs(share - target) - SHARE_BIAS) / se_share
    # the spread per coordinate around the nearest mode: MODE_STD, plus the last σ's blur
    residual = x.double() - means[nearest]
    std = float(residual.std())
    expected_std = (MODE_STD**2 + float(sigmas[-1]) ** 2) ** 0.5
    std_ok = abs(std / expected_std - 1) < 0.05 + Z_MAX / (2 * n) ** 0.5
    measured = (
        f"{share:.1%} of the samples at the mode of weight {target:.0%}, spread {std:.3f} "
        f"around the modes (target {expected_std:.3f}); the share is {z_share:.1f} standard "
        f"errors off beyond the chains' own bias of {100 * SHARE_BIAS:.1f} points (allowed "
        f"{Z_MAX:g})"
    )
    if z_share <= Z_MAX and std_ok:
        chain = reference_annealed_langevin_sample(*case.args)
        close = (x.double() - chain).abs().amax(1) <= CHAIN_TOL
        matched, step_lr = float(close.double().mean()), case.args[3]
        why = (
            f"only {matched:.1%} of the chains end within {CHAIN_TOL:g} of where annealed "
            f"Langevin on the given noise ends them (need {MATCHED:.0%}): the last row of "
            f"noise enters with weight {_last_row_weight(x, case.args[4]):.5f} (the last "
            f"level's sqrt(α_L) = {step_lr**0.5:.5f}); another step rule, other levels, or the "
            "rows of noise taken in another order (row i·steps + k at step k of level i) look "
            "like this"
        )
        return noise_verdict(measured, "the samples", x, chain, matched >= MATCHED,
                             f"{matched:.2%} of the chains as on the given noise", lambda: why)  # fmt: skip
    if abs(std / expected_std - 0.5**0.5) < 0.07:
        why = (
            f"the spread around the modes is {std / expected_std:.2f}× the target's, about "
            "1/sqrt(2), as with half the noise's variance (which also sharpens the shares "
            "towards the heavier mode): the noise of a step is sqrt(α_i) z with "
            "x + α_i/2 score (Algorithm 1 of Song & Ermon 2019)"
        )
    elif z_share > Z_MAX and abs(share - 0.5) < 0.1:
        why = (
            "the samples split between the modes as the starting points do, not as the weights: "
            "the chain never crossed between them. Anneal from the LARGEST σ down, with steps "
            "α_i = step_lr σ_i² / σ_L² that are large while σ is large"
        )
    elif z_share > Z_MAX:
        why = (
            "the modes' shares are wrong: at each level i take the steps with that level's "
            "σ_i (score(x, σ_i)) and α_i = step_lr σ_i² / σ_L², from the largest σ down"
        )
    elif std < expected_std:
        why = (
            f"the spread around the modes is {std / expected_std:.2f}× the target's: the noise "
            "of a step is sqrt(α_i) z with x + α_i/2 score (Algorithm 1 of Song & Ermon 2019)"
        )
    else:
        why = (
            f"the spread around the modes is {std / expected_std:.2f}× the target's: does the "
            "last level run with the smallest σ, and α_i scale with σ_i² / σ_L²?"
        )
    return CaseResult(False, f"{measured}: {why}")


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
    Exercise(
        name="langevin_chain",
        signature="langevin_chain(score, x_init, step_size, noise)",
        reference=reference_langevin_chain,
        make_cases=cases_langevin_chain,
        tolerances=ROUNDING,
        tolerance_reason="not compared element-wise: judged by the samples' mean and "
        "covariance against the chain's stationary distribution",
        hint=(
            "The chains' statistics are off, or they are not the chain's on the given "
            "noise. Each Langevin step moves x by the step size "
            "times the score and adds noise of variance twice the step size, with the next "
            "row of noise; classic mistakes: the step size itself as the noise's scale (too "
            "cold a chain), the score subtracted, the same noise at every step. Reread "
            "chapter 02, “Langevin dynamics: from a score to samples”."
        ),
        output_names=("samples",),
        package_functions=(f"{SCORE}.langevin_sample", f"{SCORE}.langevin_step"),
        judge=judge_langevin_chain,
    ),
    Exercise(
        name="annealed_langevin_sample",
        signature="annealed_langevin_sample(score, sigmas, x_init, step_lr, noise)",
        reference=reference_annealed_langevin_sample,
        make_cases=cases_annealed_langevin_sample,
        tolerances=ROUNDING,
        tolerance_reason="not compared element-wise: judged by the share of samples at each "
        "mode and their spread",
        hint=(
            "The modes' shares or spread are off, or the samples are not the chains' on the "
            "given noise. Annealed Langevin runs a Langevin chain "
            "at each noise level from the largest to the smallest, its step size scaled by "
            "the level's variance over the smallest level's (Song & Ermon 2019, Algorithm "
            "1); classic mistakes: the levels in the wrong order, one step size for every "
            "level, σ where σ² belongs. Reread chapter 02, “Noise-conditional scores and "
            "annealed Langevin dynamics”."
        ),
        output_names=("samples",),
        package_functions=(f"{SCORE}.annealed_langevin", f"{SCORE}.langevin_step"),
        judge=judge_annealed_langevin_sample,
    ),
)
