"""Noise schedules against formulas written out here: the papers' betas, Bayes' rule for the
posterior q(x_{t-1} | x_t, x0), and the tower law of the forward marginals. All in float64."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_course.schedules import NoiseSchedule, cosine, get_betas, linear, sigmoid

SCHEDULE_NAMES = ["linear", "cosine", "sigmoid"]
FLOAT64_TOL = 1e-12  # relative; float64 round-off of a few operations (and cumprods of <= 1000 terms)


def cosine_alpha_bar(u: float, s: float = 0.008) -> float:
    """f(u) = cos^2((u + s) / (1 + s) * pi / 2), Eq. (17) of Nichol & Dhariwal 2021 (before dividing by f(0))."""
    return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def test_linear_betas_run_evenly_from_1e_4_to_0_02():
    betas = linear(1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert float(betas[0]) == pytest.approx(1e-4, rel=FLOAT64_TOL)
    assert float(betas[-1]) == pytest.approx(0.02, rel=FLOAT64_TOL)
    steps = betas.diff()
    assert (
        float((steps - (0.02 - 1e-4) / 999).abs().max()) < 1e-15
    )  # float64 spacing round-off


@pytest.mark.parametrize("T", [10, 1000, 4000])
def test_cosine_betas_follow_nichol_dhariwal(T):
    expected = [
        min(1 - cosine_alpha_bar((i + 1) / T) / cosine_alpha_bar(i / T), 0.999)
        for i in range(T)
    ]
    torch.testing.assert_close(
        cosine(T), torch.tensor(expected, dtype=torch.float64), rtol=FLOAT64_TOL, atol=0
    )


def test_cosine_alphas_cumprod_is_the_cos_squared_ratio_until_the_clip():
    """alpha-bar_t = f((t + 1)/T) / f(0) for every step before the last, where beta is clipped at 0.999."""
    T = 1000
    schedule = NoiseSchedule(cosine(T))
    expected = torch.tensor(
        [cosine_alpha_bar((t + 1) / T) / cosine_alpha_bar(0) for t in range(T)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(
        schedule.alphas_cumprod[:-1], expected[:-1], rtol=1e-10, atol=0
    )  # product of 999 ratios
    assert (
        float(schedule.betas[-1]) == 0.999 and float(schedule.betas[:-1].max()) < 0.999
    )
    assert (
        float(expected[-1]) < 1e-30 < float(schedule.alphas_cumprod[-1])
    )  # the clip keeps alpha-bar_T above 0


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_alphas_cumprod_is_the_running_product_of_one_minus_beta(name):
    schedule = NoiseSchedule.from_name(name, 300)
    product, expected = 1.0, []
    for beta in schedule.betas.tolist():
        product *= 1 - beta
        expected.append(product)
    torch.testing.assert_close(
        schedule.alphas_cumprod,
        torch.tensor(expected, dtype=torch.float64),
        rtol=FLOAT64_TOL,
        atol=0,
    )
    assert float(schedule.alphas_cumprod_prev[0]) == 1.0
    torch.testing.assert_close(
        schedule.alphas_cumprod_prev[1:], schedule.alphas_cumprod[:-1], rtol=0, atol=0
    )


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_posterior_variance_is_the_inverse_of_the_summed_precisions(name):
    r"""Bayes' rule for :math:`x_{t-1} \sim \mathcal N(\sqrt{\bar\alpha_{t-1}}x_0, 1-\bar\alpha_{t-1})` observed
    through :math:`x_t = \sqrt{\alpha_t}x_{t-1} + \sqrt{\beta_t}z`: precision
    :math:`1/(1-\bar\alpha_{t-1}) + \alpha_t/\beta_t`, for t >= 1."""
    schedule = NoiseSchedule.from_name(name, 500)
    betas, abar_prev = schedule.betas.tolist(), schedule.alphas_cumprod_prev.tolist()
    expected = [
        1 / (1 / (1 - abar_prev[t]) + (1 - betas[t]) / betas[t]) for t in range(1, 500)
    ]
    torch.testing.assert_close(
        schedule.posterior_variance[1:],
        torch.tensor(expected, dtype=torch.float64),
        rtol=1e-10,
        atol=0,
    )


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_posterior_mean_coefficients_are_precision_weighted(name):
    r"""Bayes' rule: :math:`\tilde\mu = \tilde\beta\,(\sqrt{\bar\alpha_{t-1}}x_0/(1-\bar\alpha_{t-1})
    + \sqrt{\alpha_t}x_t/\beta_t)`, for t >= 1."""
    schedule = NoiseSchedule.from_name(name, 500)
    betas, abar_prev = schedule.betas.tolist(), schedule.alphas_cumprod_prev.tolist()
    coef1, coef2 = [], []
    for t in range(1, 500):
        variance = 1 / (1 / (1 - abar_prev[t]) + (1 - betas[t]) / betas[t])
        coef1.append(variance * math.sqrt(abar_prev[t]) / (1 - abar_prev[t]))
        coef2.append(variance * math.sqrt(1 - betas[t]) / betas[t])
    torch.testing.assert_close(
        schedule.posterior_mean_coef1[1:],
        torch.tensor(coef1, dtype=torch.float64),
        rtol=1e-10,
        atol=0,
    )
    torch.testing.assert_close(
        schedule.posterior_mean_coef2[1:],
        torch.tensor(coef2, dtype=torch.float64),
        rtol=1e-10,
        atol=0,
    )


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_posterior_at_t0_returns_x0_exactly(name):
    """At t = 0, x_{t-1} is x0 itself: coefficient 1 on x0, 0 on x_t, variance 0; the clipped
    log-variance borrows the t = 1 value."""
    schedule = NoiseSchedule.from_name(name, 100)
    assert float(schedule.posterior_mean_coef1[0]) == pytest.approx(
        1.0, rel=FLOAT64_TOL
    )
    assert float(schedule.posterior_mean_coef2[0]) == 0.0
    assert float(schedule.posterior_variance[0]) == 0.0
    assert float(schedule.posterior_log_variance_clipped[0]) == pytest.approx(
        math.log(schedule.posterior_variance[1]), rel=FLOAT64_TOL
    )
    torch.testing.assert_close(
        schedule.posterior_log_variance_clipped[1:],
        schedule.posterior_variance[1:].log(),
    )


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_posterior_averages_back_to_the_forward_marginal(name):
    r"""Tower law: averaging q(x_{t-1} | x_t, x0) over q(x_t | x0) must give q(x_{t-1} | x0), so
    :math:`c_1 + c_2\sqrt{\bar\alpha_t} = \sqrt{\bar\alpha_{t-1}}` and
    :math:`c_2^2(1-\bar\alpha_t) + \tilde\beta_t = 1-\bar\alpha_{t-1}`."""
    s = NoiseSchedule.from_name(name, 1000)
    mean_identity = (
        s.posterior_mean_coef1 + s.posterior_mean_coef2 * s.alphas_cumprod.sqrt()
    )
    torch.testing.assert_close(
        mean_identity, s.alphas_cumprod_prev.sqrt(), rtol=1e-10, atol=1e-12
    )
    variance_identity = (
        s.posterior_mean_coef2**2 * (1 - s.alphas_cumprod) + s.posterior_variance
    )
    torch.testing.assert_close(
        variance_identity, 1 - s.alphas_cumprod_prev, rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_log_snr_is_strictly_decreasing(name):
    schedule = NoiseSchedule.from_name(name, 1000)
    assert bool((schedule.log_snr.diff() < 0).all())
    assert bool(torch.isfinite(schedule.log_snr).all())


def test_sigmoid_schedule_falls_monotonically_from_one_to_zero():
    schedule = NoiseSchedule(sigmoid(1000))
    alphas_cumprod = schedule.alphas_cumprod
    assert (
        float(alphas_cumprod[0]) > 0.999
    )  # one step of 1000 removes ~3e-4 of the signal
    assert float(alphas_cumprod[-1]) < 1e-5
    assert bool((alphas_cumprod.diff() < 0).all())


def test_sigmoid_alpha_bar_follows_its_formula():
    """alpha-bar(u) = (v(1) - v(u)) / (v(1) - v(0)), v(u) = sigmoid(6u - 3), at u = (t + 1)/T before the clip."""
    T = 200

    def v(u: float) -> float:
        return 1 / (1 + math.exp(-(6 * u - 3)))

    expected = torch.tensor(
        [(v(1) - v((t + 1) / T)) / (v(1) - v(0)) for t in range(T - 1)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(
        NoiseSchedule(sigmoid(T)).alphas_cumprod[:-1], expected, rtol=1e-10, atol=1e-15
    )


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_get_betas_and_from_name_give_the_named_schedule(name):
    direct = {"linear": linear, "cosine": cosine, "sigmoid": sigmoid}[name](50)
    torch.testing.assert_close(get_betas(name, 50), direct, rtol=0, atol=0)
    torch.testing.assert_close(
        NoiseSchedule.from_name(name, 50).betas, direct, rtol=0, atol=0
    )
