"""Chapter 03's whole variational bound, graded by its outcome (``bound_bpd``, and the bug hunt
``bound_bpd_x0``): 8-bit Gaussian data, the exact denoiser of the Gaussian, and the bound's excess
over the data's exact negative log-likelihood in closed form. The exercises are listed in
:mod:`ddpm_course.grading.ch03_elbo`.
"""

from __future__ import annotations

import math

import torch

from ..diffusion import (
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    normal_kl,
)
from ..schedules import NoiseSchedule, cosine, linear
from .exercise import (
    Case,
    CaseResult,
    InputFunction,
)

# ------------------------------------------------- the whole bound, graded by its outcome
# The data: y ~ N(mean, std²) rounded to the 8-bit grid of [-1, 1], with |mean| + 4.5 std <= 1 so
# that the edge bins hold < 1e-5 of the mass. The model: the exact denoiser of N(mean, std²)
# (chapter 03, "The best possible denoiser for Gaussian data"). Then the bound's mean excess over
# the data's exact NLL has a closed form (:func:`_closed_form_excess`), and the student's bound,
# averaged over BOUND_POINTS points, must land on it within Z_MAX standard errors (those of the
# package's bound on the same data and noise, paired with each point's exact NLL) plus
# DISCRETE_SLACK. Cost: two loops over T <= 100 steps on 16,384 numbers, about 0.3 s each.
BOUND_POINTS, Z_MAX = 4096, 5.0
# The closed form treats the data as continuous: at the first steps the true reverse step "sees"
# the 8-bit grid, which no Gaussian step can match. Measured on 65,536 points the package's
# bound is within 0.003 bits/dim (1.5 standard errors) of the closed form in every case below.
DISCRETE_SLACK = 0.01


class GaussianEpsModel(InputFunction):
    r"""The exact noise predictor of :math:`\mathcal N(\mu, \sigma^2)` data (``mean``, ``std``,
    floats), :math:`\epsilon^*(x_t, t) = \sqrt{1 - \bar\alpha_t}\,(x_t - \sqrt{\bar\alpha_t}\,\mu)
    / (\bar\alpha_t\sigma^2 + 1 - \bar\alpha_t)` with :math:`\bar\alpha_t` = ``alphas_cumprod[t]``
    (as :func:`ddpm_course.score.gaussian_eps_model`): x_t (N, ...), t (N,) int64."""

    kind = "gaussian_eps_model"

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        alpha_bar = self.params["alphas_cumprod"].double()[t].reshape(shape)
        mean, std = self.params["mean"], self.params["std"]
        eps = (
            (1 - alpha_bar).sqrt()
            * (x_t.double() - alpha_bar.sqrt() * mean)
            / (alpha_bar * std**2 + 1 - alpha_bar)
        )
        return eps.to(x_t.dtype)


class GaussianX0Model(InputFunction):
    r"""The exact x0 predictor of :math:`\mathcal N(\mu, \sigma^2)` data, the regression of
    x0 on x_t: :math:`\mathbb E[x_0 \mid x_t] = \mu + \sqrt{\bar\alpha_t}\,\sigma^2
    (x_t - \sqrt{\bar\alpha_t}\,\mu) / (\bar\alpha_t\sigma^2 + 1 - \bar\alpha_t)`."""

    kind = "gaussian_x0_model"

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        alpha_bar = self.params["alphas_cumprod"].double()[t].reshape(shape)
        mean, std = self.params["mean"], self.params["std"]
        x0 = mean + alpha_bar.sqrt() * std**2 * (
            x_t.double() - alpha_bar.sqrt() * mean
        ) / (alpha_bar * std**2 + 1 - alpha_bar)
        return x0.to(x_t.dtype)


def _gaussian_bytes(
    shape: tuple, mean: float, std: float, generator: torch.Generator
) -> torch.Tensor:
    """Draws of N(mean, std²) rounded to the 8-bit grid {-1 + 2k/255} (float64)."""
    y = mean + std * torch.randn(shape, generator=generator, dtype=torch.float64)
    return ((y + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1


def _exact_nll_bits(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    r"""-log2 of the probability of each element's bin under the data distribution: the Gaussian
    mass of [x - 1/255, x + 1/255], the edge bins open (chapter 03, "Bits per dimension, in a
    case where the answer is known"). A bin above the mean is mirrored below it, where the two
    CDF values are small and their difference keeps its digits."""
    upper = torch.where(x > 0.999, math.inf, x + 1 / 255)
    lower = torch.where(x < -0.999, -math.inf, x - 1 / 255)
    above = lower > mean
    a = torch.where(above, (mean - upper) / std, (lower - mean) / std)
    b = torch.where(above, (mean - lower) / std, (upper - mean) / std)
    return -torch.log2(torch.special.ndtr(b) - torch.special.ndtr(a))


def _entropy_bits(mean: float, std: float) -> float:
    """H = -Σ_k P_k log2 P_k over the 256 bins: the exact NLL of the data, bits per dimension."""
    levels = -1 + torch.arange(256, dtype=torch.float64) * 2 / 255
    nll = _exact_nll_bits(levels, mean, std)
    # bins far in the tails have mass 0 in float64, and contribute 0 (not 0 · inf)
    return float(torch.where(nll.isfinite(), torch.exp2(-nll) * nll, 0.0).sum())


def _true_reverse_variance(betas: torch.Tensor, std: float) -> torch.Tensor:
    r""":math:`\mathrm{Var}(x_{t-1} \mid x_t) = s_{t-1}\beta_t / (\alpha_t s_{t-1} + \beta_t)`
    with :math:`s_{t-1} = \bar\alpha_{t-1}\sigma^2 + 1 - \bar\alpha_{t-1}`, t = 1..T: (T,)."""
    s = NoiseSchedule(betas)
    data_var_prev = s.alphas_cumprod_prev * std**2 + 1 - s.alphas_cumprod_prev
    return data_var_prev * s.betas / (s.alphas * data_var_prev + s.betas)


def _closed_form_excess(
    betas: torch.Tensor, model_variance: torch.Tensor, mean: float, std: float
) -> tuple[float, float]:
    r"""The mean excess of the bound over the exact NLL, bits/dim, and its prior part, for the
    exact mean and the reverse variances ``model_variance`` (t = 1..T; at t = 1 it must be the
    true :math:`V_1`, where the decoder's excess has no closed form):
    :math:`\mathrm{KL}(q(x_T) \| \mathcal N(0, 1)) + \sum_{t \ge 2} \tfrac12(r_t - 1 - \log r_t)`,
    :math:`r_t = V_t / \sigma_t^2` (chapter 03, "Why there is a gap, and where it goes")."""
    true_variance = _true_reverse_variance(betas, std)
    ratio = true_variance[1:] / model_variance[1:]
    steps = 0.5 * float((ratio - 1 - torch.log(ratio)).sum())
    alpha_bar = float(NoiseSchedule(betas).alphas_cumprod[-1])
    marginal_mean2 = alpha_bar * mean**2
    marginal_var = alpha_bar * std**2 + 1 - alpha_bar
    prior = 0.5 * (marginal_var + marginal_mean2 - 1 - math.log(marginal_var))
    return (steps + prior) / math.log(2), prior / math.log(2)


def _bound_bpd(
    predict_x0,
    betas: torch.Tensor,
    model_variance: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    mistakes: frozenset[str] = frozenset(),
) -> torch.Tensor:
    r"""The bound :math:`L_T + \sum_{t \ge 2} L_{t-1} + L_0` of each example in bits/dim, (N,),
    from the package's pieces, with x_t drawn from ``noise[t]`` and the reverse step
    :math:`\mathcal N(\tilde\mu_t(x_t, \hat x_0), \sigma_t^2)`; ``predict_x0(x_t, t)`` gives
    :math:`\hat x_0`. ``mistakes`` plants classic ones (to name what a wrong answer matches):
    "nats", "sum" (over the dimensions), "no decoder", "no prior", "beta" (β_t as the forward
    posterior's variance), "log-scale" (the decoder's log-scale set to the log-variance)."""
    diffusion = GaussianDiffusion(betas)
    dims = tuple(range(1, x0.ndim))

    def per_example(value: torch.Tensor) -> torch.Tensor:
        return value.sum(dims) if "sum" in mistakes else value.mean(dims)

    last = torch.full((x0.shape[0],), len(betas) - 1, dtype=torch.long)
    mean_T, _, log_variance_T = diffusion.q_mean_variance(x0, last)
    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    if "no prior" not in mistakes:
        total += per_example(normal_kl(mean_T, log_variance_T, 0.0, 0.0))
    for step in range(len(betas)):
        t = torch.full((x0.shape[0],), step, dtype=torch.long)
        x_t = diffusion.q_sample(x0, t, noise=noise[step])
        model_mean, _, _ = diffusion.q_posterior(predict_x0(x_t, t), x_t, t)
        log_variance = torch.log(model_variance[step]).expand_as(x0)
        if step == 0:
            if "no decoder" in mistakes:
                continue
            log_scale = log_variance if "log-scale" in mistakes else 0.5 * log_variance
            term = -discretized_gaussian_log_likelihood(x0, model_mean, log_scale)
        else:
            true_mean, _, true_log_variance = diffusion.q_posterior(x0, x_t, t)
            if "beta" in mistakes:
                true_log_variance = torch.log(diffusion.betas[step]).expand_as(x0)
            term = normal_kl(true_mean, true_log_variance, model_mean, log_variance)
        total += per_example(term)
    return total if "nats" in mistakes else total / math.log(2)


def _eps_predictor(eps_model, betas: torch.Tensor):
    """x̂0 from a noise predictor, through the closed form of q(x_t | x_0)."""
    diffusion = GaussianDiffusion(betas)

    def predict_x0(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return diffusion.predict_x0_from_eps(x_t, t, eps_model(x_t, t))

    return predict_x0


def _x0_predictor(x0_model, betas: torch.Tensor):
    """An x0 predictor is its own x̂0."""
    return x0_model


def reference_bound_bpd(eps_model, betas, model_variance, x0, noise):
    predict_x0 = _eps_predictor(eps_model, betas)
    return _bound_bpd(predict_x0, betas, model_variance, x0, noise)


def reference_bound_bpd_x0(x0_model, betas, model_variance, x0, noise):
    return _bound_bpd(x0_model, betas, model_variance, x0, noise)


# (label of the schedule, betas, the reverse variance for t >= 2, data mean, data std): the
# first V_1 at t = 1 always; the first ends at pure noise with σ_t² = β̃_t (the closed form's
# excess is 1.6 bits/dim), the second stops at ᾱ_T = 0.58 with the exact variances (the excess
# is the prior's KL, 0.14 bits/dim), the third has σ_t² = β_t (an excess of 0.1 bits/dim)
BOUND_CONFIGS = (
    ("linear β 0.001..0.2, T = 100", linear(100, 1e-3, 0.2), "posterior", 0.1, 0.25),
    ("linear β 0.001..0.01, T = 100", linear(100, 1e-3, 1e-2), "exact", -0.2, 0.2),
    ("cosine, T = 50", cosine(50), "beta", 0.3, 0.15),
)
# the bug hunt: exact variances, schedules that end at pure noise (the bound is then the exact
# NLL up to Monte-Carlo error), images of 2 × 3 values
BUG_HUNT_CONFIGS = (
    ("linear β 0.001..0.2, T = 100", linear(100, 1e-3, 0.2), "exact", 0.1, 0.25),
    ("cosine, T = 40", cosine(40), "exact", -0.3, 0.15),
)
VARIANCE_NAMES = {"posterior": "β̃_t", "exact": "Var(x_{t-1} | x_t)", "beta": "β_t"}


def _bound_cases(
    generator: torch.Generator,
    configs: tuple,
    shape: tuple,
    model_class,
    points: int = BOUND_POINTS,
) -> list[Case]:
    cases = []
    for label, betas, variance, mean, std in configs:
        schedule = NoiseSchedule(betas)
        model_variance = {
            "posterior": schedule.posterior_variance,
            "exact": _true_reverse_variance(betas, std),
            "beta": schedule.betas,
        }[variance].clone()
        model_variance[0] = _true_reverse_variance(betas, std)[0]
        model = model_class(alphas_cumprod=schedule.alphas_cumprod, mean=mean, std=std)
        x0 = _gaussian_bytes((points, *shape), mean, std, generator)
        noise = torch.randn(
            (len(betas), *x0.shape), generator=generator, dtype=torch.float64
        )
        text = (
            f"x0 {tuple(x0.shape)} float64, N({mean:g}, {std:g}²) on the 8-bit grid; {label}; "
            f"reverse variance {VARIANCE_NAMES[variance]} (t ≥ 2)"
        )
        cases.append(Case(text, (model, betas, model_variance, x0, noise)))
    return cases


def cases_bound_bpd(generator: torch.Generator) -> list[Case]:
    return _bound_cases(generator, BOUND_CONFIGS, (4,), GaussianEpsModel)


def cases_bound_bpd_x0(generator: torch.Generator) -> list[Case]:
    return _bound_cases(generator, BUG_HUNT_CONFIGS, (2, 3), GaussianX0Model)


# a wrong bound's number, matched against the bound with these mistakes planted
MISTAKES = {
    frozenset({"nats"}): "it is in nats: divide by log 2 for bits",
    frozenset({"sum"}): (
        "it is the sum over each example's dimensions: bits per DIMENSION are their mean"
    ),
    frozenset({"no decoder"}): (
        "the decoder's L_0 is missing (it carries most of the bits of 8-bit data: a bin of "
        "width 2/255 costs about 7 bits)"
    ),
    frozenset({"no prior"}): (
        "the prior term L_T is missing (it is not negligible on a schedule that stops short "
        "of pure noise)"
    ),
    frozenset({"beta"}): (
        "the forward posterior q(x_{t-1} | x_t, x_0) was given the variance β_t: its variance "
        "is β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)"
    ),
    frozenset({"log-scale"}): (
        "the decoder's log-scale is the log-variance: a log standard deviation is half of it"
    ),
    frozenset({"beta", "sum"}): (
        "this is what the given routine returns: both of its bugs are still there"
    ),
}


def _judge_bound(case: Case, outputs: tuple, predictor, planted: tuple) -> CaseResult:
    """Pass when the mean excess of the bound over each point's exact NLL lands on the closed
    form within Z_MAX standard errors plus DISCRETE_SLACK; otherwise name the planted mistake
    (``planted``: keys of MISTAKES) whose bound matches, or say that the bound is below the
    exact NLL. ``predictor(model, betas)`` is x̂0 from the case's model."""
    model, betas, model_variance, x0 = case.args[:4]
    bound = outputs[0]
    n = x0.shape[0]
    if tuple(bound.shape) != (n,):
        return CaseResult(
            False,
            f"bound of shape {tuple(bound.shape)}, expected ({n},): one number per example",
        )
    if not bool(bound.isfinite().all()):
        return CaseResult(False, "the bound holds NaN or infinite values")
    mean, std = model.params["mean"], model.params["std"]
    nll = _exact_nll_bits(x0, mean, std).flatten(1).mean(1)
    excess, prior = _closed_form_excess(betas, model_variance, mean, std)
    predict_x0 = predictor(model, betas)
    expected = _bound_bpd(predict_x0, *case.args[1:])
    standard_error = float((expected - nll).std()) / math.sqrt(n)
    allowed = Z_MAX * standard_error + DISCRETE_SLACK
    measured = float((bound.double() - nll).mean())
    summary = (
        f"mean bound {float(bound.double().mean()):.4f} bits/dim against the data's exact NLL "
        f"{float(nll.mean()):.4f} (H = {_entropy_bits(mean, std):.4f} for the distribution): "
        f"excess {measured:+.4f}, closed form {excess:.4f} (of which the prior's KL "
        f"{prior:.4f}), allowed ±{allowed:.3f}"
    )
    if abs(measured - excess) <= allowed:
        return CaseResult(True, summary)
    below = (
        "the bound is below the exact NLL, which no bound can be"
        if measured < -allowed
        else ""
    )
    for mistakes in planted:
        variant = _bound_bpd(predict_x0, *case.args[1:], mistakes=mistakes)
        if abs(float((variant - nll).mean()) - measured) <= allowed:
            why = f"{below}; {MISTAKES[mistakes]}" if below else MISTAKES[mistakes]
            return CaseResult(False, f"{summary}: {why}")
    if below:
        why = f"{below}: a term is missing or too small"
    else:
        why = (
            "check each term against the closed-form excess: the prior's KL, each step's "
            "KL between the forward posterior and the reverse step of the given variance, "
            "and the decoder at t = 0, all averaged over each example's dimensions"
        )
    return CaseResult(False, f"{summary}: {why}")


SINGLE_MISTAKES = tuple(mistakes for mistakes in MISTAKES if len(mistakes) == 1)


def judge_bound_bpd(case: Case, outputs: tuple) -> CaseResult:
    return _judge_bound(case, outputs, _eps_predictor, SINGLE_MISTAKES)


def judge_bound_bpd_x0(case: Case, outputs: tuple) -> CaseResult:
    planted = (frozenset({"beta", "sum"}), *SINGLE_MISTAKES)
    return _judge_bound(case, outputs, _x0_predictor, planted)
