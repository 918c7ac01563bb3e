r"""The exercises of chapter 03 (The ELBO): the forward process, its posterior and the bound's terms.

Each exercise is a standalone function of explicit tensors; its reference calls
:class:`~ddpm_course.diffusion.GaussianDiffusion` and the helpers of :mod:`ddpm_course.diffusion`.
Schedule tensors (``betas``, ``alphas_cumprod``) are (T,) float64, as everywhere in the package;
data tensors are float32 or float64 and every answer comes back in the data's dtype.

``bound_bpd`` (the whole bound) and ``bound_bpd_x0`` (a bug hunt: a bound with two planted
bugs) are graded by their outcome on 8-bit Gaussian data, where the truth is known: with the
exact denoiser, the bound's excess over the data's exact negative log-likelihood has a closed form
(the prior's KL and the variance mismatch of each step), and the mean of the student's bound
must land on it within a few standard errors. A bound below the exact NLL is impossible, and a
failure names the classic mistake whose number the student's matches.
"""

from __future__ import annotations

import math

import torch

from ..diffusion import (
    GaussianDiffusion,
    PMeanVariance,
    discretized_gaussian_log_likelihood,
    normal_kl,
)
from ..schedules import get_betas
from .elbo_bound import (
    GaussianEpsModel,
    GaussianX0Model,
    cases_bound_bpd,
    cases_bound_bpd_x0,
    judge_bound_bpd,
    judge_bound_bpd_x0,
    reference_bound_bpd,
    reference_bound_bpd_x0,
)
from .exercise import (
    ROUNDING,
    ROUNDING_REASON,
    Case,
    Exercise,
    Tolerance,
    draw_normal,
    draw_uniform,
    dtype_name,
    per_example_shape,
)

__all__ = ["EXERCISES", "GaussianEpsModel", "GaussianX0Model"]

# (data dtype, data shape, schedule, T): images and flat data, both dtypes, long and short schedules
CONFIGS = (
    (torch.float32, (4, 3, 8, 8), "linear", 1000),
    (torch.float64, (4, 3, 8, 8), "cosine", 1000),
    (torch.float32, (6, 2), "cosine", 50),
    (torch.float64, (6, 2), "linear", 50),
    (torch.float32, (2, 1, 16, 16), "sigmoid", 200),
    (torch.float64, (3, 5), "sigmoid", 10),
)


def _label(dtype: torch.dtype, shape: tuple, schedule: str, T: int) -> str:
    return f"{dtype_name(dtype)}, x {shape}, {schedule} T={T}"


def _timesteps(n: int, T: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) int64 timesteps, uniform in {0, ..., T-1}, with the two ends t = 0 and t = T-1 included."""
    t = torch.randint(0, T, (n,), generator=generator)
    t[0] = 0
    if n > 1:
        t[-1] = T - 1
    return t


def _eight_bit(
    shape: tuple, dtype: torch.dtype, generator: torch.Generator
) -> torch.Tensor:
    """Data on the 8-bit grid {-1, -1 + 2/255, ..., 1}, with both edge values present."""
    levels = torch.randint(0, 256, shape, generator=generator)
    levels.view(-1)[:2] = torch.tensor([0, 255])
    return (levels.double() / 127.5 - 1.0).to(dtype)


def _diffusion_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> GaussianDiffusion:
    r""":math:`\beta_t = 1 - \bar\alpha_t / \bar\alpha_{t-1}` recovers the process from its :math:`\bar\alpha`."""
    previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    return GaussianDiffusion(1.0 - alphas_cumprod / previous)


# ------------------------------------------------------------------------------ q_sample
def reference_q_sample(x0, t, noise, alphas_cumprod):
    return _diffusion_from_alphas_cumprod(alphas_cumprod).q_sample(x0, t, noise=noise)


def cases_q_sample(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, shape, schedule, T in CONFIGS:
        alphas_cumprod = torch.cumprod(1.0 - get_betas(schedule, T), dim=0)
        args = (
            draw_normal(shape, dtype, generator),
            _timesteps(shape[0], T, generator),
            draw_normal(shape, dtype, generator),
            alphas_cumprod,
        )
        cases.append(Case(_label(dtype, shape, schedule, T), args))
    return cases


# ------------------------------------------------------------------ predict_x0_from_eps
def reference_predict_x0_from_eps(x_t, t, eps, alphas_cumprod):
    return _diffusion_from_alphas_cumprod(alphas_cumprod).predict_x0_from_eps(
        x_t, t, eps
    )


def cases_predict_x0_from_eps(generator: torch.Generator) -> list[Case]:
    cases = []
    for case in cases_q_sample(
        generator
    ):  # the same arguments: a data-shaped tensor, t, noise, alphas_cumprod
        x_t, t, eps, alphas_cumprod = case.args
        # near t = T-1 the formula divides terms of size |x_t| + |eps| by sqrt(abar_t) << 1 (and they cancel):
        # rounding errors grow by the same factor, in any evaluation order
        inverse_sqrt = (
            alphas_cumprod[t].rsqrt().reshape(per_example_shape(tuple(x_t.shape)))
        )
        cases.append(
            Case(
                case.label,
                case.args,
                scale=inverse_sqrt * (x_t.abs() + eps.abs()).double(),
            )
        )
    return cases


# ------------------------------------------------------------------------------ normal_kl
def cases_normal_kl(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, shape, _schedule, _T in CONFIGS:
        per_example = per_example_shape(shape)
        # log-variances per element or per example (as the fixed reverse variances are), in [-5, 1]
        logvar1_shape = shape if len(shape) > 2 else per_example
        args = (
            draw_normal(shape, dtype, generator),
            draw_uniform(logvar1_shape, -5.0, 1.0, dtype, generator),
            draw_normal(shape, dtype, generator),
            draw_uniform(per_example, -5.0, 1.0, dtype, generator),
        )
        cases.append(
            Case(
                f"{dtype_name(dtype)}, means {shape}, log-variances {logvar1_shape} and {per_example}",
                args,
            )
        )
    return cases


# ------------------------------------------------------------- q_posterior_mean_variance
def reference_q_posterior_mean_variance(x0, x_t, t, betas):
    mean, variance, _ = GaussianDiffusion(betas).q_posterior(x0, x_t, t)
    return mean, variance


def cases_q_posterior(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, shape, schedule, T in CONFIGS:
        args = (
            draw_normal(shape, dtype, generator),
            draw_normal(shape, dtype, generator),
            _timesteps(shape[0], T, generator),
            get_betas(schedule, T),
        )
        cases.append(Case(_label(dtype, shape, schedule, T), args))
    return cases


# -------------------------------------------------- discretized_gaussian_log_likelihood
def cases_discretized(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, shape, _, _ in CONFIGS:
        x = _eight_bit(shape, dtype, generator)
        scale_shape = per_example_shape(shape) if len(shape) > 2 else shape
        log_scales = draw_uniform(
            scale_shape, math.log(0.005), math.log(0.5), dtype, generator
        )
        # means within 2.5 standard deviations of x: every bin then holds a probability > 1e-4
        means = x + torch.exp(log_scales) * draw_uniform(
            shape, -2.5, 2.5, dtype, generator
        )
        label = f"{dtype_name(dtype)}, x {shape}, log_scales {scale_shape}"
        cases.append(Case(label, (x, means, log_scales)))
    return cases


# ------------------------------------------------------------------------------- vlb_term
def reference_vlb_term(x0, x_t, t, betas, model_mean, model_log_variance):
    nan = torch.full_like(
        x0, math.nan
    )  # the bound's terms use only the mean and the variance of p
    p = PMeanVariance(
        model_mean,
        torch.exp(model_log_variance),
        model_log_variance,
        pred_x0=nan,
        pred_eps=nan,
    )
    return GaussianDiffusion(betas).vb_terms_bpd(p, x0, x_t, t)


def cases_vlb_term(generator: torch.Generator) -> list[Case]:
    cases = []
    for dtype, shape, schedule, T in CONFIGS:
        diffusion = GaussianDiffusion(get_betas(schedule, T))
        x0 = _eight_bit(shape, dtype, generator)
        t = _timesteps(shape[0], T, generator)
        x_t = diffusion.q_sample(x0, t, noise=draw_normal(shape, dtype, generator))
        # a model close to the true posterior: its mean off by half a posterior std, its log-variance by <= 0.5
        true_mean, _, true_log_variance = diffusion.q_posterior(x0, x_t, t)
        model_log_variance = true_log_variance + draw_uniform(
            per_example_shape(shape), -0.5, 0.5, dtype, generator
        )
        model_mean = true_mean + 0.5 * torch.exp(0.5 * true_log_variance) * draw_normal(
            shape, dtype, generator
        )
        args = (x0, x_t, t, diffusion.betas, model_mean, model_log_variance)
        cases.append(Case(_label(dtype, shape, schedule, T), args))
    return cases


DIFFUSION = "ddpm_course.diffusion"

EXERCISES = (
    Exercise(
        name="q_sample",
        signature="q_sample(x0, t, noise, alphas_cumprod)",
        reference=reference_q_sample,
        make_cases=cases_q_sample,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON,
        hint=(
            "x_t is off. By a lot: the classic ᾱ_t in place of its square root, or the "
            "one-step α_t in place of the cumulative ᾱ_t; errors along the wrong axis mean "
            "ᾱ_t was not shaped as one value per example; a dtype message means the float64 "
            "table leaked into the result. Reread chapter 03, “The latent-variable view” "
            "(q(x_t | x_0) in closed form)."
        ),
        package_functions=(
            f"{DIFFUSION}.GaussianDiffusion.q_sample",
            f"{DIFFUSION}.GaussianDiffusion.q_mean_variance",
        ),
    ),
    Exercise(
        name="predict_x0_from_eps",
        signature="predict_x0_from_eps(x_t, t, eps, alphas_cumprod)",
        reference=reference_predict_x0_from_eps,
        make_cases=cases_predict_x0_from_eps,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON
        + ", scaled by (|x_t| + |eps|) / sqrt(abar_t) where the division amplifies them",
        hint=(
            "x̂0 is off. The error grows as t grows: the division by √ᾱ_t is missing or "
            "uses ᾱ_t; an error proportional to the noise prediction: its coefficient is 1 "
            "− ᾱ_t where its square root belongs, or the sign is flipped. Solve the closed "
            "form of q(x_t | x_0) for x_0: chapter 03, “Three ways to predict the mean: ε, "
            "x0 and v”."
        ),
        package_functions=(f"{DIFFUSION}.GaussianDiffusion.predict_x0_from_eps",),
    ),
    Exercise(
        name="normal_kl",
        signature="normal_kl(mean1, logvar1, mean2, logvar2)",
        reference=normal_kl,
        make_cases=cases_normal_kl,
        # exp(logvar1 - logvar2) and exp(logvar1) / exp(logvar2) differ by a rounding of exp's argument,
        # which exp turns into a relative error of |logvar| * eps, |logvar| <= 6
        tolerances={
            torch.float32: Tolerance(rtol=1e-5, atol=1e-5),
            torch.float64: Tolerance(rtol=1e-10, atol=1e-12),
        },
        tolerance_reason=(
            "exp of a difference and a ratio of exps round differently (relative error up to |logvar| · eps)"
        ),
        hint=(
            "The KL is off. It must be 0 when the two Gaussians are equal: a constant "
            "offset is the missing −1; an error that grows with the mean difference: that "
            "term is not divided by the second variance; a factor 2: the overall ½; "
            "negative values, impossible for a KL: a sign, or the two log-variances swapped "
            "in one term. Note the arguments are log-variances. Reread chapter 03, “The "
            "three kinds of terms” (the KL of two Gaussians)."
        ),
        package_functions=(f"{DIFFUSION}.normal_kl",),
    ),
    Exercise(
        name="q_posterior_mean_variance",
        signature="q_posterior_mean_variance(x0, x_t, t, betas)",
        reference=reference_q_posterior_mean_variance,
        make_cases=cases_q_posterior,
        tolerances=ROUNDING,
        tolerance_reason=ROUNDING_REASON + " (with the schedule computed in float64)",
        hint=(
            "The posterior mean or variance is off (the case line says which). Wrong only "
            "at t = 0: ᾱ_{t−1} must be 1 there; the variance larger than β_t: the factors "
            "(1 − ᾱ_{t−1}) and (1 − ᾱ_t) swapped. The case inputs are betas: the α and ᾱ "
            "tables come from them, in float64. Reread chapter 03, “The forward posterior "
            "q(x_{t−1} | x_t, x_0)”."
        ),
        output_names=("mean", "variance"),
        package_functions=(f"{DIFFUSION}.GaussianDiffusion.q_posterior",),
    ),
    Exercise(
        name="discretized_gaussian_log_likelihood",
        signature="discretized_gaussian_log_likelihood(x, means, log_scales)",
        reference=discretized_gaussian_log_likelihood,
        make_cases=cases_discretized,
        # a bin 2.5 std from the mean holds ~1e-4 of the mass; Phi(upper) - Phi(lower) of two float32 numbers
        # near 1 keeps ~3 of its digits, a log error up to ~3e-4 (the stable form below keeps ~1e-6)
        tolerances={
            torch.float32: Tolerance(rtol=1e-4, atol=1e-3),
            torch.float64: Tolerance(rtol=1e-9, atol=1e-10),
        },
        tolerance_reason="in float32 a difference of two CDF values near 1 keeps only ~3 digits of a bin mass of 1e-4",
        hint=(
            "The log-likelihood is off. Wrong only at the pixels at −1 or 1: the edge bins "
            "extend to ∓∞; everywhere by a similar amount: the bin's half-width (the 256 "
            "levels on [−1, 1] are 2/255 apart); −inf or large errors in float32 where the "
            "bin is far in the upper tail: take its mass from the other tail. Reread "
            "chapter 03, “The three kinds of terms” (L_0)."
        ),
        package_functions=(f"{DIFFUSION}.discretized_gaussian_log_likelihood",),
    ),
    Exercise(
        name="vlb_term",
        signature="vlb_term(x0, x_t, t, betas, model_mean, model_log_variance)",
        reference=reference_vlb_term,
        make_cases=cases_vlb_term,
        tolerances={
            torch.float32: Tolerance(rtol=1e-5, atol=1e-5),
            torch.float64: Tolerance(rtol=1e-9, atol=1e-10),
        },
        tolerance_reason="the KL and the decoder log-likelihood, averaged over up to 256 elements",
        hint=(
            "The bound term is off. Wrong only at t = 0: that term is the decoder's "
            "negative log-likelihood, the others a KL; off by a factor 0.693 or 1.44: nats "
            "against bits (the term is in bits); off by the number of pixels: a sum where a "
            "mean over all but the first dimension belongs; the log-scale of the decoder is "
            "half the log-variance. Reread chapter 03, “The three kinds of terms: L_T, "
            "L_{t−1}, L_0”."
        ),
        output_names=("bits_per_dim",),
        package_functions=(
            f"{DIFFUSION}.GaussianDiffusion.vb_terms_bpd",
            f"{DIFFUSION}.GaussianDiffusion.q_posterior",
            f"{DIFFUSION}.normal_kl",
            f"{DIFFUSION}.discretized_gaussian_log_likelihood",
        ),
    ),
    Exercise(
        name="bound_bpd",
        signature="bound_bpd(eps_model, betas, model_variance, x0, noise)",
        reference=reference_bound_bpd,
        make_cases=cases_bound_bpd,
        tolerances=ROUNDING,
        tolerance_reason="not compared element-wise: judged by the mean excess of the bound "
        "over the data's exact NLL against its closed form, within five standard errors",
        hint=(
            "The bound's mean misses its closed form. About 0.69 times the expected bound: "
            "nats, not bits; about the number of dimensions times it: a sum where each "
            "example's mean over its dimensions belongs; below the data's exact NLL, which no bound can be: a "
            "term is missing (the decoder at the first step carries about 7 bits, the prior "
            "matters on a schedule that stops short of pure noise). Each step draws its noisy "
            "point from its own row of the given noise, the model's noise prediction gives "
            "the reverse mean through the forward posterior, and the reverse variance of "
            "each step is the given one. Reread chapter 03, “The three kinds of terms” and "
            "“Bits per dimension, in a case where the answer is known”."
        ),
        output_names=("bound_bpd",),
        package_functions=(
            f"{DIFFUSION}.GaussianDiffusion.calc_bpd_loop",
            f"{DIFFUSION}.GaussianDiffusion.vb_terms_bpd",
            f"{DIFFUSION}.GaussianDiffusion.prior_bpd",
            f"{DIFFUSION}.GaussianDiffusion.q_posterior",
            f"{DIFFUSION}.normal_kl",
            f"{DIFFUSION}.discretized_gaussian_log_likelihood",
        ),
        judge=judge_bound_bpd,
    ),
    Exercise(
        name="bound_bpd_x0",
        signature="bound_bpd_x0(x0_model, betas, model_variance, x0, noise)",
        reference=reference_bound_bpd_x0,
        make_cases=cases_bound_bpd_x0,
        tolerances=ROUNDING,
        tolerance_reason="not compared element-wise: judged by the mean excess of the bound "
        "over the data's exact NLL against its closed form, within five standard errors",
        hint=(
            "A bug hunt: the given routine's bound is far from the data's exact NLL, which "
            "the exact model with the exact variances should reach. Read each line against "
            "the chapter: which variance does the forward posterior have, and over what is "
            "a bound in bits per dimension averaged? Reread chapter 03, “The forward "
            "posterior q(x_{t−1} | x_t, x_0)” and “The three kinds of terms”."
        ),
        output_names=("bound_bpd",),
        package_functions=(
            f"{DIFFUSION}.GaussianDiffusion.calc_bpd_loop",
            f"{DIFFUSION}.GaussianDiffusion.vb_terms_bpd",
            f"{DIFFUSION}.GaussianDiffusion.prior_bpd",
            f"{DIFFUSION}.GaussianDiffusion.q_posterior",
            f"{DIFFUSION}.normal_kl",
            f"{DIFFUSION}.discretized_gaussian_log_likelihood",
        ),
        judge=judge_bound_bpd_x0,
        copy_check=False,
    ),
)
