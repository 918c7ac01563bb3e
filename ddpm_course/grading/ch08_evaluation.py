r"""The exercises of chapter 08 (Evaluation & pitfalls): two metrics, a copy detector and a bug
hunt.

Two are compared with the package's answer: the Fréchet distance between two Gaussians
(:func:`ddpm_course.metrics.frechet_distance`) and the unbiased KID estimate
(:func:`ddpm_course.metrics.kernel_inception_distance` on whole sets).

Two are graded by their outcome. ``find_copies`` may use any rule: the judge measures which
planted near-copies of training digits it flags and which fresh digits it leaves alone (the
scale of the images changes from case to case, so an absolute threshold fails). ``ddpm_sampler``
is the bug hunt: the notebook gives an ancestral sampler with one classic bug planted; the
student's fixed sampler is run with the exact ε-predictor of a data set whose pixels are ±1
(:class:`BinaryPixelsEps`), and :func:`judge_ddpm_sampler` checks what no buggy sampler reaches:
every pixel within 1e-3 of ±1, in the data's proportions, and each pixel's sign the one that
the chain from x_T with the seed's noise gives (a coin of the right bias has the values and the
proportions, and fails there). The message names the bug that a wrong result looks like. Each
case costs under 0.5 s of CPU.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..diffusion import GaussianDiffusion
from ..metrics import frechet_distance, kernel_inception_distance, nearest_neighbours
from ..samplers import ddpm_sample
from .exercise import (
    ROUNDING,
    Case,
    CaseResult,
    Exercise,
    InputFunction,
    Tolerance,
    draw_normal,
    dtype_name,
    malformed,
)

__all__ = [
    "EXERCISES",
    "BinaryPixelsEps",
    "judge_find_copies",
    "judge_ddpm_sampler",
    "sampler_statistics",
]


# ----------------------------------------------------------------------- frechet_distance
def reference_frechet_distance(mu1, sigma1, mu2, sigma2):
    return torch.tensor(frechet_distance(mu1, sigma1, mu2, sigma2), dtype=mu1.dtype)


def _covariance(dim: int, dtype, generator) -> torch.Tensor:
    a = draw_normal((dim, dim), torch.float64, generator)
    return (a @ a.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)).to(dtype)


def cases_frechet_distance(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, dim in ((torch.float64, 4), (torch.float32, 8), (torch.float64, 32)):
        args = (
            draw_normal((dim,), dtype, generator),
            _covariance(dim, dtype, generator),
            draw_normal((dim,), dtype, generator),
            _covariance(dim, dtype, generator),
        )
        cases.append(Case(f"{dtype_name(dtype)}, D = {dim}", args, scale=float(dim)))
    # equal covariances: FD is the squared distance of the means
    dim = 6
    sigma = _covariance(dim, torch.float64, generator)
    mu = draw_normal((dim,), torch.float64, generator)
    cases.append(Case("float64, D = 6, equal covariances", (mu, sigma, -mu, sigma)))
    return cases


# ------------------------------------------------------------------------------ kid_unbiased
def reference_kid_unbiased(features_a, features_b):
    m = features_a.shape[0]
    value, _ = kernel_inception_distance(features_a, features_b, 1, m)
    return torch.tensor(value, dtype=features_a.dtype)


def cases_kid_unbiased(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, m, d, shift in ((torch.float64, 10, 3, 0.5), (torch.float32, 50, 16, 0.2),
                               (torch.float64, 200, 8, 0.0)):  # fmt: skip
        a = draw_normal((m, d), dtype, generator)
        b = draw_normal((m, d), dtype, generator) + shift
        # the estimate is a difference of sums of up to m² kernel values of size ~1
        cases.append(Case(f"{dtype_name(dtype)}, m = {m}, d = {d}", (a, b), scale=4.0))
    return cases


# ------------------------------------------------------------------------------- find_copies
def reference_find_copies(samples, train):
    distances, _ = nearest_neighbours(samples, train, k=2)
    return distances[:, 0] < distances[:, 1] / 3


@lru_cache(maxsize=1)
def _copy_candidates() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training digits (8×8), those far from every other training digit (so that a noisy
    copy stays closest to its own original), and the test digits that are no near-duplicate
    of a training digit (d1 > d2 / 2)."""
    from ..data import digits

    train, _ = digits(size=8, split="train")
    test, _ = digits(size=8, split="test")
    within, _ = nearest_neighbours(train, train, k=2)  # the first is the digit itself
    isolated = train[within[:, 1] > 2.0]
    across, _ = nearest_neighbours(test, train, k=2)
    fresh = test[across[:, 0] > across[:, 1] / 2]
    return train, isolated, fresh


SAMPLES = 120  # per case of find_copies


def cases_find_copies(generator: torch.Generator) -> list[Case]:
    """Training digits (8×8), and 120 samples: near-copies of training digits (a little noise
    added) and test digits, shuffled; each case on another pixel scale, with a share of copies
    drawn from 20-33% or 67-80% (never a half: flagging the half of the samples nearest to the
    training set, which knows the share instead of measuring each sample, fails)."""
    train, isolated, fresh_digits = _copy_candidates()
    cases = []
    for scale, noise in ((1.0, 0.02), (255.0, 0.05), (0.01, 0.03)):
        n_copies = 24 + int(torch.randint(0, 17, (), generator=generator))
        if bool(torch.rand((), generator=generator) < 0.5):
            n_copies = SAMPLES - n_copies
        originals = isolated[
            torch.randperm(isolated.shape[0], generator=generator)[:n_copies]
        ]
        copies = originals + noise * draw_normal(
            originals.shape, torch.float32, generator
        )
        fresh = fresh_digits[
            torch.randperm(fresh_digits.shape[0], generator=generator)[
                : SAMPLES - n_copies
            ]
        ]
        samples = torch.cat([copies, fresh])
        samples = samples[torch.randperm(samples.shape[0], generator=generator)]
        cases.append(
            Case(
                f"120 samples, 1,497 training digits, pixel scale {scale:g}",
                (scale * samples, scale * train),
            )
        )
    return cases


def _truth(case: Case) -> torch.Tensor:
    """Which samples were planted as copies: the cases' noise (at most 0.05 per pixel, ~0.4 in
    distance) leaves each far closer to its digit (whose nearest other training digit is more
    than 2 away) than to any other, and the test digits were chosen with d1 > d2 / 2 (the
    tests check that the rule recovers exactly the planted copies on many seeds)."""
    return reference_find_copies(*case.args)


def judge_find_copies(case: Case, outputs: tuple[torch.Tensor, ...]) -> CaseResult:
    """Pass when at least 95% of the planted copies are flagged and at most 5% of the fresh
    digits; otherwise say what the rule seems to get wrong."""
    (flags,) = outputs
    samples = case.args[0]
    if flags.shape != (samples.shape[0],):
        return CaseResult(
            False,
            f"returned shape {tuple(flags.shape)}; return one flag per sample, "
            f"({samples.shape[0]},)",
        )
    flags = flags.bool() if flags.dtype == torch.bool else flags > 0.5
    truth = _truth(case)
    caught = float(flags[truth].double().mean())
    false_alarms = float(flags[~truth].double().mean())
    summary = (
        f"flags {caught:.0%} of the planted copies (need >= 95%) and {false_alarms:.0%} "
        f"of the fresh digits (need <= 5%)"
    )
    if caught >= 0.95 and false_alarms <= 0.05:
        return CaseResult(True, summary)
    if caught > 0.95 and false_alarms > 0.95:
        why = ("every sample is flagged: an absolute threshold that every distance meets on this "
               "pixel scale (it changes between cases; a ratio d1 < d2 / 3 does not), or a "
               "sample compared with itself?")  # fmt: skip
    elif caught < 0.05 and false_alarms < 0.05:
        why = ("nothing is flagged: on this pixel scale the threshold is never met; a ratio "
               "of distances (d1 < d2 / 3) does not depend on the scale")  # fmt: skip
    elif false_alarms > 0.05:
        why = ("fresh digits are flagged too: an absolute distance threshold depends on the pixel "
               "scale, which changes between cases; compare d1 with d2")  # fmt: skip
    else:
        why = ("copies are missed: measure the distance to the nearest and second-nearest "
               "training image over all pixels (flatten each image)")  # fmt: skip
    return CaseResult(False, f"{summary}: {why}")


# ------------------------------------------------------------------------------- ddpm_sampler
class BinaryPixelsEps(InputFunction):
    r"""The exact ε-predictor of data whose pixels are independently +1 (probability
    ``p_plus``) or -1: :math:`\hat\epsilon(x_t, t) = (x_t - \sqrt{\bar\alpha_t}\,
    \mathbb E[x_0 \mid x_t]) / \sqrt{1 - \bar\alpha_t}`, with
    :math:`\mathbb E[x_0 \mid x_t] = \tanh(\ell/2)`, :math:`\ell = \log\frac{p}{1-p} +
    \frac{2\sqrt{\bar\alpha_t}\,x_t}{1-\bar\alpha_t}`. ``alphas_cumprod``: (T,) float64."""

    kind = "binary_pixels_eps"

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = self.params["alphas_cumprod"].double()[t]
        alpha_bar = alpha_bar.reshape(-1, *([1] * (x.ndim - 1)))
        p = float(self.params["p_plus"])
        x64 = x.double()
        logit = math.log(p / (1 - p)) + 2 * alpha_bar.sqrt() * x64 / (1 - alpha_bar)
        mean_x0 = torch.tanh(logit / 2)
        return ((x64 - alpha_bar.sqrt() * mean_x0) / (1 - alpha_bar).sqrt()).to(x.dtype)


T_SAMPLER = 200
SAME_SIGNS = (
    0.99  # the share of pixels whose sign must match the chain's on the same noise
)


def sampler_betas() -> torch.Tensor:
    """The bug hunt's schedule: 200 linear betas from 1e-4 to 0.06 (ᾱ_T ≈ 0.0024)."""
    return torch.linspace(1e-4, 0.06, T_SAMPLER, dtype=torch.float64)


def reference_ddpm_sampler(eps_model, betas, x_T, seed):
    diffusion = GaussianDiffusion(betas.double(), var_type="fixed_large")
    return ddpm_sample(eps_model, diffusion, x_T.shape, x_T=x_T, clip_denoised=False,
                       generator=torch.Generator().manual_seed(seed), dtype=x_T.dtype,
                       device="cpu")  # fmt: skip


def cases_ddpm_sampler(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, p_plus in ((torch.float64, 0.8), (torch.float32, 0.3)):
        model = BinaryPixelsEps(
            p_plus=torch.tensor(p_plus, dtype=torch.float64),
            alphas_cumprod=torch.cumprod(1 - sampler_betas(), 0),
        )
        x_T = draw_normal((1000, 16), dtype, generator)
        seed = int(torch.randint(0, 2**16, (), generator=generator))
        cases.append(
            Case(
                f"{dtype_name(dtype)}, 1,000 samples of 16 pixels, P(+1) = {p_plus}",
                (model, sampler_betas().to(dtype), x_T, seed),
            )
        )
    return cases


def sampler_statistics(case: Case, samples: torch.Tensor) -> dict[str, float]:
    """What the judge measures: the fraction of pixels within 1e-3 of ±1, the root mean square
    distance to the nearer of ±1, the fraction of positive pixels against P(+1)."""
    x = samples.double()
    distance = torch.minimum((x - 1).abs(), (x + 1).abs())
    return {
        "close": float((distance < 1e-3).double().mean()),
        "rms": float(distance.pow(2).mean().sqrt()),
        "plus": float((x > 0).double().mean()),
        "p_plus": float(case.args[0].params["p_plus"]),
        "sigma_0": float(case.args[1][0].double().sqrt()),
    }


def judge_ddpm_sampler(case: Case, outputs: tuple[torch.Tensor, ...]) -> CaseResult:
    """Pass when 99.9% of the pixels lie within 1e-3 of ±1 and the fraction of +1 is within
    0.03 of P(+1) (16,000 pixels: its standard deviation is ≤ 0.004); otherwise name the bug
    the samples look like."""
    (samples,) = outputs
    x_T = case.args[2]
    failure = malformed(samples, x_T.shape, "the samples x_0",
                        "the chain blew up; a coefficient too large (ᾱ_t where α_t belongs, "
                        "1/sqrt(ᾱ_t) is 20 at t = T - 1) or a division by zero?")  # fmt: skip
    if failure is not None:
        return failure
    s = sampler_statistics(case, samples)
    summary = (
        f"{s['close']:.1%} of the pixels within 1e-3 of ±1 (need 99.9%), rms distance to "
        f"±1 {s['rms']:.2g}; {s['plus']:.3f} of them positive, P(+1) = {s['p_plus']}"
    )
    if s["close"] >= 0.999 and abs(s["plus"] - s["p_plus"]) < 0.03:
        # the right values in the right proportions: were they drawn by the chain from x_T with
        # the seed's noise, or by a coin (fresh randomness)? A coin agrees with the chain on
        # P(+1)² + P(-1)² of the pixels (58% to 68% here); the fixed sampler on all of them
        chain = reference_ddpm_sampler(*case.args)
        same = float(((samples.double() > 0) == (chain.double() > 0)).double().mean())
        if same >= SAME_SIGNS:
            return CaseResult(
                True, f"{summary}; {same:.2%} of the pixels as the chain's"
            )
        return CaseResult(False, (
            f"{summary}, but only {same:.1%} of the pixels have the sign that the chain from "
            f"x_T with the seed's noise gives (need {SAME_SIGNS:.0%}; independent coin flips "
            "in the right proportions agree on about P(+1)² + P(-1)² of them): the samples "
            "do not follow x_T and the seed. Keep the given sampler's noise: one draw per "
            "step t > 0, from a generator seeded with `seed`, in the given order"
        ))  # fmt: skip
    if s["close"] < 0.999 and 0.5 * s["sigma_0"] < s["rms"] < 2 * s["sigma_0"]:
        why = (f"the samples sit at ±1 plus noise of size {s['rms']:.2g} ≈ sqrt(β_0) = "
               f"{s['sigma_0']:.2g}: noise is added on the final step (add σ_t z only for t > 0)")  # fmt: skip
    elif s["close"] < 0.999:
        why = ("the samples are not at ±1: check each coefficient of the mean, "
               "(x_t - β_t / sqrt(1 - ᾱ_t) ε̂) / sqrt(α_t), ᾱ_t against α_t, and that t runs "
               "from T - 1 down to 0")  # fmt: skip
    else:
        why = ("the values are right but not their proportions: is noise added at every "
               "step t > 0 (without it the chain collapses towards the more likely value), "
               "with σ_t = sqrt(β_t)?")  # fmt: skip
    return CaseResult(False, f"{summary}: {why}")


METRICS = "ddpm_course.metrics"
EXERCISES = (
    Exercise(
        name="frechet_distance_gaussians",
        signature="frechet_distance_gaussians(mu1, sigma1, mu2, sigma2)",
        reference=reference_frechet_distance,
        make_cases=cases_frechet_distance,
        tolerances={
            torch.float32: Tolerance(rtol=1e-4, atol=1e-5),
            torch.float64: Tolerance(rtol=1e-8, atol=1e-9),
        },
        tolerance_reason="a matrix square root of up to 32×32 by another route (eigh, sqrtm)",
        hint=(
            "The FD is off. It is the squared distance of the means plus the trace of both "
            "covariances less twice the trace of the square root of their product, a matrix "
            "square root (the sum of the square roots of the product's eigenvalues); classic "
            "mistakes: the square root taken entry by entry, the means' distance not "
            "squared, the factor 2 of the cross term missing, a complex or negative result "
            "from eigenvalues that rounding made slightly negative. Reread chapter 08, “The "
            "Fréchet distance, and what it cannot tell you”."
        ),
        output_names=("fd",),
        package_functions=(f"{METRICS}.frechet_distance", f"{METRICS}.fashion_fd"),
    ),
    Exercise(
        name="kid_unbiased",
        signature="kid_unbiased(features_a, features_b)",
        reference=reference_kid_unbiased,
        make_cases=cases_kid_unbiased,
        tolerances=ROUNDING,
        tolerance_reason="sums of m² kernel values in another order",
        hint=(
            "The KID is off. The kernel is the cubic polynomial of the features' dot product "
            "divided by their dimension, plus 1; within each set it is averaged over the "
            "pairs i ≠ j only, across the sets over all pairs, and the cross average counts "
            "twice; classic mistakes: the diagonal terms kept (biased upwards, more so for "
            "small sets), the cross term counted once, the dot product not divided by the "
            "dimension. Reread chapter 08, “The Fréchet distance, and what it cannot tell "
            "you” (KID is unbiased)."
        ),
        output_names=("kid",),
        package_functions=(
            f"{METRICS}.kernel_inception_distance",
            f"{METRICS}.fashion_kid",
        ),
    ),
    Exercise(
        name="find_copies",
        signature="find_copies(samples, train)",
        reference=reference_find_copies,
        make_cases=cases_find_copies,
        tolerances={torch.float32: Tolerance(rtol=0.0, atol=0.0)},
        tolerance_reason="not compared element-wise: judged by the copies it catches and "
        "the fresh images it leaves alone",
        hint=(
            "The copies flagged are off. A fixed threshold on the distance to the nearest "
            "training image cannot work at every pixel scale: compare that distance d1 with "
            "d2, the distance to the second nearest, on the flattened images; a copy has d1 "
            "below a third of d2. Classic mistakes: an absolute threshold, distances "
            "between images that were not flattened, d2 taken as the nearest distance "
            "again. Reread chapter 08, “Memorisation”."
        ),
        output_names=("is_copy",),
        package_functions=(f"{METRICS}.memorisation", f"{METRICS}.nearest_neighbours"),
        judge=judge_find_copies,
    ),
    Exercise(
        name="ddpm_sampler",
        signature="ddpm_sampler(eps_model, betas, x_T, seed)",
        reference=reference_ddpm_sampler,
        make_cases=cases_ddpm_sampler,
        tolerances={torch.float32: Tolerance(rtol=0.0, atol=0.0)},
        tolerance_reason="not compared element-wise: judged by what its samples look like",
        hint=(
            "A bug hunt: the given sampler's samples do not sit exactly at ±1. Read each "
            "line against Algorithm 2 of Ho et al. (2020): which coefficients form the "
            "mean, and at which steps is noise added? Keep the given sampler's noise draws: "
            "the samples must be the chain's from x_T with the seed's noise. Reread chapter "
            "08, “Each classic bug, live”."
        ),
        output_names=("x0",),
        package_functions=(
            "ddpm_course.samplers.ddpm_sample",
            "ddpm_course.samplers.sample",
        ),
        judge=judge_ddpm_sampler,
    ),
)
