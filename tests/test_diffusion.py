"""GaussianDiffusion against formulas written out here: Gaussian conditioning for the posterior,
torch.distributions for KLs, losses rebuilt by hand from the same t and noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ddpm_course.diffusion import GaussianDiffusion, normal_kl
from ddpm_course.samplers import respace

T = 100
BETAS = np.linspace(1e-4, 0.02, T)
ALPHAS_CUMPROD = np.cumprod(1 - BETAS)
FLOAT64_TOL = {"rtol": 1e-10, "atol": 1e-12}  # float64 round-off of a few operations


def per_example(values: np.ndarray, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[t] shaped (N, 1, ..., 1) to broadcast against an ndim tensor."""
    return torch.from_numpy(values)[t].reshape(-1, *([1] * (ndim - 1)))


def alpha_bar_prev() -> np.ndarray:
    return np.concatenate([[1.0], ALPHAS_CUMPROD[:-1]])


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(
        shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


@pytest.fixture
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(torch.from_numpy(BETAS))


# ----------------------------------------------------------------------- forward process
def test_q_sample_is_eq_4_of_ho_et_al(diffusion):
    x0, noise, t = (
        randn(5, 3, 4, 4, seed=0),
        randn(5, 3, 4, 4, seed=1),
        torch.tensor([0, 1, 17, 50, 99]),
    )
    a = per_example(np.sqrt(ALPHAS_CUMPROD), t, 4)
    b = per_example(np.sqrt(1 - ALPHAS_CUMPROD), t, 4)
    torch.testing.assert_close(
        diffusion.q_sample(x0, t, noise=noise), a * x0 + b * noise, **FLOAT64_TOL
    )
    mean, variance, log_variance = diffusion.q_mean_variance(x0, t)
    torch.testing.assert_close(mean, a * x0, **FLOAT64_TOL)
    torch.testing.assert_close(
        variance.expand_as(x0), (b**2).expand_as(x0), **FLOAT64_TOL
    )
    torch.testing.assert_close(
        log_variance.exp().expand_as(x0), (b**2).expand_as(x0), **FLOAT64_TOL
    )


def test_q_posterior_is_the_gaussian_conditioning_of_x_t_minus_1_on_x_t(diffusion):
    r"""Given x0, (x_{t-1}, x_t) is jointly Gaussian with Var x_{t-1} = P = 1 - abar_{t-1},
    Cov = sqrt(alpha_t) P, Var x_t = alpha_t P + beta_t; condition with the Schur complement."""
    x0, x_t, t = (
        randn(4, 2, 3, 3, seed=2),
        randn(4, 2, 3, 3, seed=3),
        torch.tensor([1, 2, 50, 99]),
    )
    prior_var = per_example(1 - alpha_bar_prev(), t, 4)
    prior_mean = per_example(np.sqrt(alpha_bar_prev()), t, 4) * x0
    alpha = per_example(1 - BETAS, t, 4)
    covariance = alpha.sqrt() * prior_var
    var_t = alpha * prior_var + per_example(BETAS, t, 4)
    mean_t = per_example(np.sqrt(ALPHAS_CUMPROD), t, 4) * x0
    expected_mean = prior_mean + covariance / var_t * (x_t - mean_t)
    expected_var = prior_var - covariance**2 / var_t
    mean, variance, log_variance = diffusion.q_posterior(x0, x_t, t)
    torch.testing.assert_close(mean, expected_mean, **FLOAT64_TOL)
    torch.testing.assert_close(
        variance.expand_as(x0), expected_var.expand_as(x0), **FLOAT64_TOL
    )
    torch.testing.assert_close(
        log_variance.expand_as(x0), expected_var.log().expand_as(x0), **FLOAT64_TOL
    )


def test_q_posterior_at_t0_is_x0(diffusion):
    x0, x_t = randn(3, 1, 2, 2, seed=4), randn(3, 1, 2, 2, seed=5)
    mean, variance, _ = diffusion.q_posterior(x0, x_t, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(mean, x0, **FLOAT64_TOL)
    assert float(variance.abs().max()) == 0.0


def test_normal_kl_matches_torch_distributions():
    mean1, mean2 = randn(50, seed=6), randn(50, seed=7)
    logvar1, logvar2 = randn(50, seed=8), randn(50, seed=9)
    expected = kl_divergence(
        Normal(mean1, (0.5 * logvar1).exp()), Normal(mean2, (0.5 * logvar2).exp())
    )
    torch.testing.assert_close(
        normal_kl(mean1, logvar1, mean2, logvar2), expected, **FLOAT64_TOL
    )
    assert float(normal_kl(mean1, logvar1, mean1, logvar1).abs().max()) < 1e-15


# ------------------------------------------------------------------ eps / x0 / v conversions
def test_conversion_tables_are_the_closed_forms_of_alpha_bar(diffusion):
    tables = {
        "sqrt_alphas_cumprod": np.sqrt(ALPHAS_CUMPROD),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ALPHAS_CUMPROD),
        "sqrt_recip_alphas_cumprod": 1 / np.sqrt(ALPHAS_CUMPROD),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / ALPHAS_CUMPROD - 1),
    }
    for name, expected in tables.items():
        table = getattr(diffusion, name)
        assert table.dtype == torch.float64, name
        torch.testing.assert_close(table, torch.from_numpy(expected), **FLOAT64_TOL)


def test_eps_x0_v_conversions_recover_the_pair_that_made_x_t(diffusion):
    """x_t = a x0 + b eps and v = a eps - b x0 (a = sqrt(abar), b = sqrt(1 - abar)): each conversion
    returns the x0 or eps that built x_t (Salimans & Ho 2022, Sec. 4)."""
    x0, eps, t = (
        randn(4, 2, 3, seed=30),
        randn(4, 2, 3, seed=31),
        torch.tensor([0, 7, 50, 99]),
    )
    a, b = (
        per_example(np.sqrt(ALPHAS_CUMPROD), t, 3),
        per_example(np.sqrt(1 - ALPHAS_CUMPROD), t, 3),
    )
    x_t, v = a * x0 + b * eps, a * eps - b * x0
    torch.testing.assert_close(
        diffusion.predict_x0_from_eps(x_t, t, eps), x0, rtol=1e-9, atol=1e-9
    )
    torch.testing.assert_close(
        diffusion.predict_eps_from_x0(x_t, t, x0), eps, rtol=1e-9, atol=1e-9
    )
    torch.testing.assert_close(diffusion.predict_v(x0, t, eps), v, **FLOAT64_TOL)
    torch.testing.assert_close(
        diffusion.predict_x0_from_v(x_t, t, v), x0, **FLOAT64_TOL
    )
    torch.testing.assert_close(
        diffusion.predict_eps_from_v(x_t, t, v), eps, **FLOAT64_TOL
    )


# ------------------------------------------------------------------------- reverse process
def test_clipped_prediction_keeps_x0_and_eps_consistent(diffusion):
    """With clip_denoised, pred_x0 lies in [-1, 1] and x_t = sqrt(abar) pred_x0 + sqrt(1 - abar) pred_eps still holds."""
    x_t, t = 3 * randn(4, 1, 4, 4, seed=10), torch.tensor([5, 40, 80, 99])
    p = diffusion.p_mean_variance(lambda x, t: -x, x_t, t, clip_denoised=True)
    assert float(p.pred_x0.abs().max()) <= 1.0 and float(p.pred_x0.abs().max()) == 1.0
    rebuilt = (
        per_example(np.sqrt(ALPHAS_CUMPROD), t, 4) * p.pred_x0
        + per_example(np.sqrt(1 - ALPHAS_CUMPROD), t, 4) * p.pred_eps
    )
    torch.testing.assert_close(rebuilt, x_t, **FLOAT64_TOL)


@pytest.mark.parametrize(
    "v,end", [(-1.0, "posterior"), (1.0, "beta"), (0.0, "geometric mean")]
)
def test_learned_range_variance_interpolates_the_log_between_the_two_ends(v, end):
    """Eq. (15) of Nichol & Dhariwal 2021: v = -1 gives beta-tilde_t (t = 1's at t = 0), v = +1 gives beta_t."""
    diffusion = GaussianDiffusion(torch.from_numpy(BETAS), var_type="learned_range")
    t = torch.tensor([0, 1, 30, 99])
    x_t = randn(4, 2, 3, 3, seed=11)
    p = diffusion.p_mean_variance(
        lambda x, t: torch.cat([x, torch.full_like(x, v)], dim=1),
        x_t,
        t,
        clip_denoised=False,
    )
    posterior = BETAS * (1 - alpha_bar_prev()) / (1 - ALPHAS_CUMPROD)
    posterior[0] = posterior[1]
    expected = {
        "posterior": posterior,
        "beta": BETAS,
        "geometric mean": np.sqrt(posterior * BETAS),
    }[end]
    torch.testing.assert_close(
        p.variance, per_example(expected, t, 4).expand_as(x_t), **FLOAT64_TOL
    )


def test_fixed_large_variance_is_beta_except_at_t0():
    diffusion = GaussianDiffusion(torch.from_numpy(BETAS), var_type="fixed_large")
    t = torch.tensor([0, 1, 99])
    p = diffusion.p_mean_variance(
        lambda x, t: x, randn(3, 1, 2, 2, seed=12), t, clip_denoised=False
    )
    posterior_1 = BETAS[1] * (1 - ALPHAS_CUMPROD[0]) / (1 - ALPHAS_CUMPROD[1])
    torch.testing.assert_close(
        p.variance.flatten(),
        torch.tensor([posterior_1, BETAS[1], BETAS[99]], dtype=torch.float64),
        **FLOAT64_TOL,
    )


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_simple_loss_is_the_mse_to_the_objective_target(objective):
    diffusion = GaussianDiffusion(torch.from_numpy(BETAS), objective=objective)
    x0, noise, t = (
        randn(6, 3, 4, 4, seed=13),
        randn(6, 3, 4, 4, seed=14),
        torch.tensor([0, 1, 10, 50, 98, 99]),
    )

    def model(x, t):
        return 0.5 * x + 0.01 * t[:, None, None, None]

    a = per_example(np.sqrt(ALPHAS_CUMPROD), t, 4)
    b = per_example(np.sqrt(1 - ALPHAS_CUMPROD), t, 4)
    x_t = a * x0 + b * noise
    target = {"eps": noise, "x0": x0, "v": a * noise - b * x0}[objective]
    expected = ((model(x_t, t) - target) ** 2).mean(dim=(1, 2, 3))
    losses = diffusion.training_losses(model, x0, t=t, noise=noise)
    torch.testing.assert_close(losses["loss"], expected, **FLOAT64_TOL)
    torch.testing.assert_close(losses["mse"], expected, **FLOAT64_TOL)


class MeanAndVarianceModel(torch.nn.Module):
    """Two scalar parameters: one scales the predicted noise (C channels), one the variance channels v."""

    def __init__(self) -> None:
        super().__init__()
        self.mean_weight = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
        self.var_weight = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, x, t):
        return torch.cat([self.mean_weight * x, torch.tanh(self.var_weight * x)], dim=1)


def hand_vb_bits(model: MeanAndVarianceModel, x0, t, noise) -> torch.Tensor:
    r"""KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) in bits/dim for t >= 1 and learned_range, from
    Eq. (7) of Ho et al. 2020 and Eq. (15) of Nichol & Dhariwal 2021, with torch.distributions."""
    nd = x0.ndim
    a, b = (
        per_example(np.sqrt(ALPHAS_CUMPROD), t, nd),
        per_example(np.sqrt(1 - ALPHAS_CUMPROD), t, nd),
    )
    betas, abar, abar_prev = (
        per_example(v, t, nd) for v in (BETAS, ALPHAS_CUMPROD, alpha_bar_prev())
    )
    coef1 = abar_prev.sqrt() * betas / (1 - abar)
    coef2 = (1 - betas).sqrt() * (1 - abar_prev) / (1 - abar)
    posterior_variance = betas * (1 - abar_prev) / (1 - abar)
    x_t = a * x0 + b * noise
    eps, v = model(x_t, t).chunk(2, dim=1)
    pred_x0 = (x_t - b * eps) / a
    frac = (v + 1) / 2
    log_variance = frac * betas.log() + (1 - frac) * posterior_variance.log()
    q = Normal(coef1 * x0 + coef2 * x_t, posterior_variance.sqrt())
    p = Normal(coef1 * pred_x0 + coef2 * x_t, (0.5 * log_variance).exp())
    return kl_divergence(q, p).mean(dim=tuple(range(1, nd))) / math.log(2)


def test_hybrid_loss_adds_0_001_T_times_the_vb_term():
    diffusion = GaussianDiffusion(torch.from_numpy(BETAS), var_type="learned_range")
    model = MeanAndVarianceModel()
    x0, noise, t = (
        randn(4, 2, 3, 3, seed=15),
        randn(4, 2, 3, 3, seed=16),
        torch.tensor([1, 20, 60, 99]),
    )
    losses = diffusion.training_losses(model, x0, t=t, noise=noise, loss_type="hybrid")
    vb = hand_vb_bits(model, x0, t, noise)
    torch.testing.assert_close(losses["vb"], vb, **FLOAT64_TOL)
    torch.testing.assert_close(
        losses["loss"], losses["mse"] + 0.001 * T * vb, **FLOAT64_TOL
    )


def test_hybrid_loss_trains_the_mean_only_through_the_simple_loss():
    """The vb term sees the mean detached: d(hybrid)/d(mean weight) = d(simple)/d(mean weight),
    while the variance weight gets a gradient only from the hybrid loss."""
    diffusion = GaussianDiffusion(torch.from_numpy(BETAS), var_type="learned_range")
    x0, noise, t = (
        randn(4, 2, 3, 3, seed=17),
        randn(4, 2, 3, 3, seed=18),
        torch.tensor([1, 20, 60, 99]),
    )
    gradients = {}
    for loss_type in ("simple", "hybrid"):
        model = MeanAndVarianceModel()
        diffusion.training_losses(model, x0, t=t, noise=noise, loss_type=loss_type)[
            "loss"
        ].sum().backward()
        gradients[loss_type] = (model.mean_weight.grad, model.var_weight.grad)
    torch.testing.assert_close(
        gradients["hybrid"][0], gradients["simple"][0], **FLOAT64_TOL
    )
    assert gradients["simple"][1] is None or float(gradients["simple"][1]) == 0.0
    assert abs(float(gradients["hybrid"][1])) > 1e-3


def test_vlb_loss_is_T_times_the_hand_computed_kl():
    diffusion = GaussianDiffusion(torch.from_numpy(BETAS), var_type="learned_range")
    model = MeanAndVarianceModel()
    x0, noise, t = (
        randn(3, 2, 3, 3, seed=19),
        randn(3, 2, 3, 3, seed=20),
        torch.tensor([3, 33, 99]),
    )
    losses = diffusion.training_losses(model, x0, t=t, noise=noise, loss_type="vlb")
    torch.testing.assert_close(
        losses["loss"], T * hand_vb_bits(model, x0, t, noise), **FLOAT64_TOL
    )


@pytest.mark.parametrize("loss_type", ["hybrid", "vlb"])
def test_a_loss_that_trains_the_variance_refuses_a_fixed_variance(loss_type):
    """hybrid with a fixed variance would silently equal simple; both name var_type."""
    diffusion = GaussianDiffusion(torch.from_numpy(BETAS), var_type="fixed_small")
    x0 = randn(2, 1, 2, 2, seed=25)
    with pytest.raises(ValueError, match="var_type 'fixed_small'.*learned_range"):
        diffusion.training_losses(
            lambda x, t: torch.zeros_like(x), x0, loss_type=loss_type
        )


@pytest.mark.parametrize(
    "objective, divisor", [("eps", "snr"), ("x0", "one"), ("v", "snr+1")]
)
def test_min_snr_weight_is_min_snr_gamma_over_the_objectives_snr_factor(
    objective, divisor
):
    """Hang et al. 2023, Eq. (8)-(9): the weight of the eps / x0 / v error is min(SNR, γ) / SNR,
    min(SNR, γ) and min(SNR, γ) / (SNR + 1); SNR = ᾱ / (1 - ᾱ) from the table written here."""
    diffusion = GaussianDiffusion(torch.from_numpy(BETAS), objective=objective)
    x0, noise, t = (
        randn(4, 1, 2, 2, seed=26),
        randn(4, 1, 2, 2, seed=27),
        torch.tensor([0, 10, 50, 99]),
    )
    model = lambda x, t: 0.5 * x  # noqa: E731
    plain = diffusion.training_losses(model, x0, t, noise)["loss"]
    weighted = diffusion.training_losses(model, x0, t, noise, min_snr_gamma=5.0)["loss"]
    snr = torch.from_numpy(ALPHAS_CUMPROD / (1 - ALPHAS_CUMPROD))[t]
    factor = {"snr": snr, "one": torch.ones_like(snr), "snr+1": snr + 1}[divisor]
    torch.testing.assert_close(
        weighted, plain * snr.clamp(max=5.0) / factor, **FLOAT64_TOL
    )
    assert float(snr[0]) > 5 > float(snr[-1])  # both sides of the clamp are exercised


def test_vlb_is_smaller_at_the_exact_model_of_gaussian_data(gaussian_eps_model):
    """Data N(0.2, 0.3^2) on the 8-bit grid; the exact model of N(0.2, 0.3^2) against that of
    N(0.2, 0.6^2), on the same t and noise: the paired difference is > 5 standard errors."""
    diffusion = GaussianDiffusion(torch.from_numpy(BETAS))
    generator = torch.Generator().manual_seed(21)
    n = 4000
    x0 = (
        (0.2 + 0.3 * torch.randn(n, 1, generator=generator, dtype=torch.float64)).clamp(
            -1, 1
        )
        * 127.5
    ).round() / 127.5
    t = torch.randint(0, T, (n,), generator=generator)
    noise = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    x_t = diffusion.q_sample(x0, t, noise=noise)

    def vb(model):
        p = diffusion.p_mean_variance(model, x_t, t, clip_denoised=False)
        return diffusion.vb_terms_bpd(p, x0, x_t, t)

    exact = vb(gaussian_eps_model(ALPHAS_CUMPROD, 0.2, 0.3))
    wrong = vb(gaussian_eps_model(ALPHAS_CUMPROD, 0.2, 0.6))
    difference = wrong - exact
    assert float(difference.mean()) > 5 * float(difference.std()) / math.sqrt(n)


# ----------------------------------------------------------------------------- respacing
def test_respace_keeps_alpha_bar_at_the_kept_steps_and_maps_the_model_time(diffusion):
    respaced = respace(diffusion, 10, "leading")
    kept = list(range(0, 100, 10))
    assert respaced.timestep_map.tolist() == kept
    torch.testing.assert_close(
        respaced.alphas_cumprod, torch.from_numpy(ALPHAS_CUMPROD[kept]), **FLOAT64_TOL
    )
    seen = []

    def model(x, t):
        seen.append(t.tolist())
        return torch.zeros_like(x)

    respaced.p_mean_variance(model, randn(2, 1, 2, 2, seed=22), torch.tensor([3, 9]))
    assert seen == [[30, 90]]


def test_respace_of_explicit_timesteps_sorts_them_and_chains_the_maps(diffusion):
    once = respace(diffusion, [90, 0, 40, 70])
    assert once.timestep_map.tolist() == [0, 40, 70, 90]
    torch.testing.assert_close(
        once.alphas_cumprod,
        torch.from_numpy(ALPHAS_CUMPROD[[0, 40, 70, 90]]),
        **FLOAT64_TOL,
    )
    twice = respace(once, [1, 3])
    assert twice.timestep_map.tolist() == [40, 90]
    torch.testing.assert_close(
        twice.alphas_cumprod, torch.from_numpy(ALPHAS_CUMPROD[[40, 90]]), **FLOAT64_TOL
    )
