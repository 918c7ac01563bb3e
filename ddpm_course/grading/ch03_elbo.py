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
from ..schedules import NoiseSchedule, cosine, get_betas, linear
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
