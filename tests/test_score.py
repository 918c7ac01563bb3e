"""ddpm_course.score: analytic scores, Langevin dynamics and the score-matching objectives.

References are independent of the code under test: finite differences, torch.distributions,
closed forms derived by hand (written out next to each test), and Monte Carlo averages whose
standard error is estimated from batch means of the samples themselves.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as dist

from ddpm_course.score import (
    GaussianMixture,
    ScoreMLP,
    annealed_langevin,
    dsm_loss,
    explicit_score_matching_loss,
    gaussian_eps_model,
    gaussian_optimal_eps,
    gaussian_score,
    geometric_sigmas,
    implicit_score_matching_loss,
    langevin_sample,
    langevin_step,
    mixture_score,
    train_score_model,
)

F64 = torch.float64


def _mixture_2d() -> GaussianMixture:
    means = torch.tensor([[-1.0, 0.5], [1.5, -0.5], [0.0, 2.0]], dtype=F64)
    return GaussianMixture(
        means,
        torch.tensor([0.5, 0.8, 0.6], dtype=F64),
        torch.tensor([0.2, 0.5, 0.3], dtype=F64),
    )


def _torch_mixture(mixture: GaussianMixture) -> dist.MixtureSameFamily:
    """The same mixture built from torch.distributions (the peer reference)."""
    scales = mixture.stds[:, None].expand_as(mixture.means)
    components = dist.Independent(dist.Normal(mixture.means, scales), 1)
    return dist.MixtureSameFamily(dist.Categorical(probs=mixture.weights), components)


def _mean_and_standard_error(values: list[torch.Tensor]) -> tuple[float, float]:
    """Mean of batch means and its standard error (batches are independent)."""
    batch_means = torch.stack(values).to(F64)
    return batch_means.mean().item(), (
        batch_means.std() / math.sqrt(len(values))
    ).item()


# ------------------------------------------------------------------------------ analytic scores
def test_gaussian_score_of_isotropic_gaussian_is_minus_displacement_over_variance():
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0], [3.0, 0.5]], dtype=F64)
    mean = torch.tensor([1.0, 1.0], dtype=F64)
    variance = 0.25
    expected = -(x - mean) / variance  # hand-derived: d/dx of -|x - mu|^2 / (2 s^2)
    torch.testing.assert_close(
        gaussian_score(x, mean, variance * torch.eye(2, dtype=F64)),
        expected,
        rtol=0,
        atol=1e-12,
    )


def test_gaussian_score_equals_autograd_gradient_of_multivariate_normal_log_prob():
    generator = torch.Generator().manual_seed(0)
    factor = torch.randn(3, 3, generator=generator, dtype=F64)
    cov = factor @ factor.T + 0.5 * torch.eye(3, dtype=F64)
    mean = torch.randn(3, generator=generator, dtype=F64)
    x = torch.randn(10, 3, generator=generator, dtype=F64).requires_grad_(True)
    dist.MultivariateNormal(mean, cov).log_prob(x).sum().backward()
    # float64 solve of a well-conditioned 3x3 system: agreement to ~1e-12
    torch.testing.assert_close(
        gaussian_score(x.detach(), mean, cov), x.grad, rtol=1e-10, atol=1e-10
    )


def test_mixture_log_prob_equals_torch_distributions_mixture():
    mixture = _mixture_2d()
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * 2
    # both are exact float64 logsumexps of the same terms
    torch.testing.assert_close(
        mixture.log_prob(x), _torch_mixture(mixture).log_prob(x), rtol=1e-12, atol=1e-12
    )


def test_mixture_score_equals_central_differences_of_log_prob():
    mixture = _mixture_2d()
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(2), dtype=F64) * 1.5
    h = 1e-4
    finite_differences = torch.stack(
        [
            (mixture.log_prob(x + h * e) - mixture.log_prob(x - h * e)) / (2 * h)
            for e in torch.eye(2, dtype=F64)
        ],
        dim=1,
    )
    # central differences err by h^2/6 |d^3 log p| <= 1e-8/6 * ~1e3 (stds >= 0.5) plus rounding ~1e-16/h
    torch.testing.assert_close(mixture.score(x), finite_differences, rtol=0, atol=1e-5)


def test_mixture_score_function_equals_autograd_of_torch_distributions_log_prob():
    mixture = _mixture_2d()
    x = torch.randn(
        30, 2, generator=torch.Generator().manual_seed(3), dtype=F64
    ).requires_grad_(True)
    _torch_mixture(mixture).log_prob(x).sum().backward()
    score = mixture_score(
        x.detach(),
        mixture.means,
        mixture.stds,
        torch.tensor([2.0, 5.0, 3.0], dtype=F64),
    )
    # float64, exact formula on both sides; the unnormalised weights 2:5:3 are the same mixture
    torch.testing.assert_close(score, x.grad, rtol=1e-10, atol=1e-10)


def test_mixture_score_is_finite_and_exact_far_from_every_mean():
    mixture = GaussianMixture(
        torch.tensor([[-1.0], [1.0]]),
        torch.tensor([1.0, 1.0]),
        torch.tensor([0.5, 0.5]),
    )
    # at x = 1000 the component at +1 has responsibility 1 - e^{-2000}: score = -(1000 - 1) / 1
    score = mixture.score(torch.tensor([[1000.0], [-1000.0]]))
    torch.testing.assert_close(
        score, torch.tensor([[-999.0], [999.0]]), rtol=0, atol=1e-3
    )  # float32 rounding of 999


def test_mixture_log_prob_integrates_to_one_on_a_grid():
    mixture = _mixture_2d()
    h = 0.02
    axis = torch.arange(
        -8.0, 8.0 + h / 2, h, dtype=F64
    )  # every mean is >= 6 stds from the edges
    grid = torch.cartesian_prod(axis, axis)
    total = mixture.log_prob(grid).exp().sum() * h * h
    # the Riemann sum of a smooth, rapidly decaying density is exponentially accurate in 1/h;
    # the mass outside the box is < e^{-18}
    assert abs(total.item() - 1.0) < 1e-6


def test_mixture_samples_have_the_mixture_mean_and_covariance():
    mixture = _mixture_2d()
    n = 100_000
    samples = mixture.sample(n, generator=torch.Generator().manual_seed(4))
    weights, means, variances = mixture.weights, mixture.means, mixture.stds**2
    expected_mean = (weights[:, None] * means).sum(0)  # E x = sum_k w_k mu_k
    second_moment = (
        weights[:, None, None]
        * (
            variances[:, None, None] * torch.eye(2, dtype=F64)
            + means[:, :, None] * means[:, None, :]
        )
    ).sum(0)
    expected_cov = second_moment - expected_mean[:, None] * expected_mean[None, :]
    # entries of the covariance are <= 2.1; 5 standard errors of means / covariances of n samples
    # (the fourth moments here are <= 30, so the standard error of a covariance entry is <= sqrt(30 / n))
    assert torch.allclose(samples.mean(0), expected_mean, atol=5 * math.sqrt(2.1 / n))
    assert torch.allclose(samples.T.cov(), expected_cov, atol=5 * math.sqrt(30 / n))


def test_noised_mixture_is_the_law_of_x_plus_sigma_z():
    means, stds = (
        torch.tensor([[-1.0], [2.0]], dtype=F64),
        torch.tensor([0.3, 0.5], dtype=F64),
    )
    mixture = GaussianMixture(means, stds, torch.tensor([0.4, 0.6], dtype=F64))
    sigma = 0.7
    noised = mixture.noised(sigma)
    torch.testing.assert_close(
        noised.stds,
        torch.tensor([math.sqrt(0.09 + 0.49), math.sqrt(0.25 + 0.49)], dtype=F64),
    )
    generator = torch.Generator().manual_seed(5)
    n = 200_000
    x_noisy = mixture.sample(n, generator) + sigma * torch.randn(
        n, 1, generator=generator, dtype=F64
    )
    thresholds = torch.tensor([-2.0, -0.5, 0.5, 1.5, 3.0], dtype=F64)
    empirical_cdf = (x_noisy < thresholds).to(F64).mean(0)
    exact_cdf = (
        mixture.weights
        * torch.special.ndtr((thresholds[:, None] - means[:, 0]) / noised.stds)
    ).sum(1)
    # binomial standard error of a frequency is <= 0.5 / sqrt(n); allow 5 of them
    assert torch.allclose(empirical_cdf, exact_cdf, atol=5 * 0.5 / math.sqrt(n))


# ------------------------------------------------------------------------------ Langevin dynamics
def test_langevin_step_is_the_unadjusted_langevin_update():
    x, score, noise = (
        torch.tensor([[1.0, -1.0]]),
        torch.tensor([[2.0, 4.0]]),
        torch.tensor([[0.3, -0.5]]),
    )
    # x + 0.5 * score + sqrt(2 * 0.5) * noise, by hand
    expected = torch.tensor([[1.0 + 1.0 + 0.3, -1.0 + 2.0 - 0.5]])
    torch.testing.assert_close(langevin_step(x, score, 0.5, noise), expected)


def test_langevin_sample_returns_the_path_from_the_initial_points():
    x_init = torch.zeros(5, 2)
    x, path = langevin_sample(
        lambda x: -x,
        x_init,
        0.1,
        7,
        generator=torch.Generator().manual_seed(0),
        return_path=True,
    )
    assert path.shape == (8, 5, 2)
    assert torch.equal(path[0], x_init) and torch.equal(path[-1], x)


def test_langevin_sampling_of_a_1d_mixture_matches_its_histogram_mean_and_variance():
    means, stds = (
        torch.tensor([[-1.5], [1.0]], dtype=F64),
        torch.tensor([0.6, 0.8], dtype=F64),
    )
    weights = torch.tensor([0.3, 0.7], dtype=F64)
    mixture = GaussianMixture(means, stds, weights)
    n, step = 10_000, 0.02
    generator = torch.Generator().manual_seed(0)
    samples = langevin_sample(
        mixture.score,
        2 * torch.randn(n, 1, generator=generator, dtype=F64),
        step,
        1000,
        generator=generator,
    )
    mean = (weights * means[:, 0]).sum()  # 0.25
    variance = (weights * (stds**2 + means[:, 0] ** 2)).sum() - mean**2  # 1.8685
    # ULA's stationary law is biased by O(step): for N(0, s^2) its variance is s^2 / (1 - step / (2 s^2)),
    # here <= 0.012 in total variance; chains are independent, so allow 4 standard errors + that bias
    assert abs(samples.mean() - mean) < 4 * math.sqrt(variance / n) + 0.01
    assert abs(samples.var() - variance) < 4 * variance * math.sqrt(2 / n) + 0.012
    edges = torch.linspace(-4.0, 4.0, 17, dtype=F64)
    cdf = (weights * torch.special.ndtr((edges[:, None] - means[:, 0]) / stds)).sum(1)
    bin_mass = cdf[1:] - cdf[:-1]
    histogram = torch.histogram(samples[:, 0], bins=edges).hist / n
    # 4 binomial standard errors per bin, plus 0.005 for the step bias
    assert torch.all(
        (histogram - bin_mass).abs()
        < 4 * torch.sqrt(bin_mass * (1 - bin_mass) / n) + 0.005
    )


def test_annealed_langevin_visits_each_noise_level_in_order_with_step_sigma_squared():
    sigmas = [2.0, 0.5]
    seen = []

    def zero_score(x, sigma):
        seen.append(sigma)
        return torch.zeros_like(x)

    n, n_steps_each, step_lr = 100_000, 3, 0.01
    x = annealed_langevin(
        zero_score,
        sigmas,
        torch.zeros(n, 1, dtype=F64),
        n_steps_each,
        step_lr,
        generator=torch.Generator().manual_seed(0),
    )
    assert seen == [2.0] * 3 + [0.5] * 3 and all(isinstance(s, float) for s in seen)
    # with a zero score x = sum sqrt(alpha_i) z: variance 3 * (alpha_1 + alpha_2), alpha_i = step_lr sigma_i^2 / sigma_L^2
    expected_variance = n_steps_each * step_lr * (4.0 / 0.25 + 1.0)
    # the sample variance of n Gaussians has relative standard error sqrt(2 / n) = 0.45%; allow 5 of them
    assert abs(x.var().item() / expected_variance - 1) < 5 * math.sqrt(2 / n)


def test_annealed_langevin_recovers_the_component_weights_of_a_2d_mixture():
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3], dtype=F64)
    means = 4 * torch.stack([angles.cos(), angles.sin()], dim=1)
    weights = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    mixture = GaussianMixture(means, torch.full((3,), 0.3, dtype=F64), weights)
    n = 3000
    generator = torch.Generator().manual_seed(0)
    sigmas = geometric_sigmas(10.0, 0.05, 10)
    x_init = 10 * torch.randn(n, 2, generator=generator, dtype=F64)
    samples = annealed_langevin(
        lambda x, sigma: mixture.noised(sigma).score(x),
        sigmas,
        x_init,
        100,
        1e-3,
        generator=generator,
    )
    frequencies = (
        torch.bincount(torch.cdist(samples, means).argmin(1), minlength=3).to(F64) / n
    )
    # annealing with 10 levels is not exact: over seeds the frequencies are off by <= 0.023, plus
    # 3 standard errors (0.009 at n = 3000); plain Langevin from the same start gives ~1/3 each (error 0.15)
    assert torch.allclose(frequencies, weights, atol=0.05), frequencies


# ------------------------------------------------------------------------------ score matching
def test_dsm_loss_equals_a_hand_computed_value_and_passes_sigma_through():
    received = []

    def score_fn(x_noisy, sigma):
        received.append(sigma)
        return torch.tensor([[-0.5, 1.0], [0.0, 0.0]])

    x, noise = torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    sigma = torch.tensor([2.0, 1.0])
    # point 1: |2 * (-0.5, 1) + (1, 0)|^2 / 2 = |(0, 2)|^2 / 2 = 2; point 2: |(0, 2)|^2 / 2 = 2
    assert dsm_loss(score_fn, x, sigma, noise).item() == pytest.approx(2.0, abs=1e-6)
    assert received[0] is sigma


def test_dsm_minus_sigma_squared_esm_is_the_closed_form_constant_for_gaussian_data():
    # Data N(0, s^2 I) in D dims, noised: q_sigma = N(0, (s^2 + sigma^2) I). With z = -sigma * grad log q(x~|x),
    # dsm - sigma^2 esm = D/2 - sigma^2/2 E|grad log q_sigma|^2 = D s^2 / (2 (s^2 + sigma^2)), whatever the model.
    dim, data_std, sigma = 2, 1.0, 0.5
    constant = dim * data_std**2 / (2 * (data_std**2 + sigma**2))  # 0.8
    torch.manual_seed(0)
    network = ScoreMLP(dim=2, hidden=32, n_layers=2).double()
    models = {
        "mlp": network,
        "linear": lambda x, s: -0.3 * x + torch.tensor([0.5, -1.0], dtype=F64),
    }
    generator = torch.Generator().manual_seed(6)
    differences = {name: [] for name in models}
    with torch.no_grad():
        for _ in range(40):
            x = data_std * torch.randn(5000, dim, generator=generator, dtype=F64)
            noise = torch.randn(5000, dim, generator=generator, dtype=F64)
            x_noisy = x + sigma * noise
            true_score = -x_noisy / (data_std**2 + sigma**2)
            for name, model in models.items():
                dsm = dsm_loss(model, x, sigma, noise)
                esm = explicit_score_matching_loss(
                    lambda y, model=model: model(y, sigma), x_noisy, true_score
                )
                differences[name].append(dsm - sigma**2 * esm)
    for name in models:
        mean, standard_error = _mean_and_standard_error(differences[name])
        assert abs(mean - constant) < 5 * standard_error, (
            name,
            mean,
            constant,
            standard_error,
        )  # 5 MC standard errors


def test_dsm_and_esm_differ_by_the_same_constant_for_two_models_on_a_mixture():
    mixture, sigma = _mixture_2d(), 0.4
    noised = mixture.noised(sigma)
    torch.manual_seed(1)
    network = ScoreMLP(dim=2, hidden=32, n_layers=2).double()
    models = [network, lambda x, s: 0.8 * noised.score(x) + 0.3]
    generator = torch.Generator().manual_seed(7)
    gaps = []
    with torch.no_grad():
        for _ in range(40):
            x = mixture.sample(5000, generator)
            noise = torch.randn(5000, 2, generator=generator, dtype=F64)
            x_noisy = x + sigma * noise
            true_score = noised.score(x_noisy)
            first, second = (
                dsm_loss(model, x, sigma, noise)
                - sigma**2
                * explicit_score_matching_loss(
                    lambda y, model=model: model(y, sigma), x_noisy, true_score
                )
                for model in models
            )
            gaps.append(first - second)
    mean, standard_error = _mean_and_standard_error(gaps)
    assert (
        abs(mean) < 5 * standard_error
    )  # the constant cancels: 0 up to 5 MC standard errors


def test_noised_mixture_score_minimises_the_dsm_loss():
    mixture, sigma = _mixture_2d(), 0.3
    noised = mixture.noised(sigma)
    generator = torch.Generator().manual_seed(8)
    x = mixture.sample(100_000, generator)
    noise = torch.randn(x.shape, generator=generator, dtype=F64)
    optimum = dsm_loss(lambda y, s: noised.score(y), x, sigma, noise)
    shift = torch.tensor([1.0, -1.0], dtype=F64)
    perturbations = {
        "scaled by 1.1": lambda y: 0.1 * noised.score(y),
        "shifted": lambda y: 0.3 * shift,
        "rotated": lambda y: 0.5 * torch.stack([-y[:, 1], y[:, 0]], dim=1).tanh(),
    }
    for name, delta in perturbations.items():
        perturbed = dsm_loss(
            lambda y, s, delta=delta: noised.score(y) + delta(y), x, sigma, noise
        )
        # same samples: the gap is sigma^2/2 E|delta|^2 (>= 0.0045 here) plus a zero-mean term of std ~1e-3
        assert perturbed > optimum, name


def test_implicit_score_matching_of_a_linear_field_is_trace_plus_half_squared_norm():
    A = torch.tensor([[1.0, 2.0], [-0.5, 3.0]], dtype=F64)
    b = torch.tensor([0.2, -1.0], dtype=F64)
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
    expected = (
        A.trace() + 0.5 * ((x @ A.T + b) ** 2).sum(1)
    ).mean()  # the Jacobian of Ax + b is A
    loss = implicit_score_matching_loss(lambda y: y @ A.T + b, x)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)  # float64, exact


def test_implicit_equals_explicit_score_matching_minus_half_trace_of_precision_for_a_gaussian():
    # Hyvarinen 2005: esm = ism + E|grad log p|^2 / 2, and for N(mu, Sigma) E|Sigma^-1 (x - mu)|^2 = tr Sigma^-1
    mean = torch.tensor([0.5, -1.0], dtype=F64)
    cov = torch.tensor([[1.0, 0.5], [0.5, 2.0]], dtype=F64)
    half_trace_precision = 0.5 * torch.linalg.inv(cov).trace().item()
    weight = torch.tensor([[0.7, -1.2], [0.4, 0.9]], dtype=F64)

    def score_fn(y):
        return torch.tanh(y @ weight.T) * 1.5 - 0.2 * y

    generator = torch.Generator().manual_seed(10)
    sampler = dist.MultivariateNormal(mean, cov)
    gaps = []
    for _ in range(40):
        x = (
            mean
            + torch.randn(5000, 2, generator=generator, dtype=F64)
            @ torch.linalg.cholesky(cov).T
        )
        ism = implicit_score_matching_loss(score_fn, x)
        esm = explicit_score_matching_loss(
            score_fn, x, gaussian_score(x, sampler.mean, sampler.covariance_matrix)
        )
        gaps.append((ism - esm).detach())
    mean_gap, standard_error = _mean_and_standard_error(gaps)
    assert (
        abs(mean_gap + half_trace_precision) < 5 * standard_error
    )  # 5 MC standard errors


def test_implicit_score_matching_loss_is_differentiable_in_the_model_parameters():
    torch.manual_seed(0)
    network = ScoreMLP(dim=2, hidden=16, n_layers=2)
    loss = implicit_score_matching_loss(lambda y: network(y, 1.0), torch.randn(8, 2))
    loss.backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all()
        for p in network.parameters()
    )


# ------------------------------------------------------------------------------ the learned score
def test_geometric_sigmas_run_from_max_to_min_with_a_constant_ratio():
    sigmas = geometric_sigmas(10.0, 0.01, 4)
    torch.testing.assert_close(
        sigmas, torch.tensor([10.0, 1.0, 0.1, 0.01], dtype=F64), rtol=1e-12, atol=0
    )


def test_score_mlp_accepts_a_float_or_one_sigma_per_point():
    torch.manual_seed(0)
    model = ScoreMLP()
    x = torch.randn(6, 2)
    sigma = torch.tensor([0.1, 0.1, 0.1, 1.0, 1.0, 1.0])
    per_point = model(x, sigma)
    assert per_point.shape == (6, 2)
    torch.testing.assert_close(per_point[:3], model(x[:3], 0.1))
    torch.testing.assert_close(per_point[3:], model(x[3:], 1.0))
    assert not torch.allclose(
        model(x, 0.1) * 0.1, model(x, 1.0) * 1.0
    )  # the network sees sigma


def test_training_by_dsm_approaches_the_minimum_loss_for_gaussian_data():
    # For N(0, I) data in 2-D the DSM loss (sigma^2 weighting) is minimised by -x/(1 + sigma^2), at the value
    # D/(2 (1 + sigma^2)) (the constant above with s = 1); averaged over the three levels below: 0.7471.
    sigmas = [1.0, 0.5, 0.25]
    minimum = sum(2 / (2 * (1 + s**2)) for s in sigmas) / len(sigmas)
    generator = torch.Generator().manual_seed(11)
    torch.manual_seed(0)
    model = ScoreMLP(dim=2, hidden=32, n_layers=2)
    losses = train_score_model(
        model,
        lambda n, generator: torch.randn(n, 2, generator=generator),
        sigmas,
        steps=300,
        lr=1e-2,
        batch_size=256,
        generator=generator,
    )
    assert len(losses) == 300
    n = 60_000
    x, noise = (
        torch.randn(n, 2, generator=generator),
        torch.randn(n, 2, generator=generator),
    )
    level = torch.randint(3, (n,), generator=generator)
    with torch.no_grad():
        trained = dsm_loss(model, x, torch.tensor(sigmas)[level], noise).item()
    # an untrained network (output ~ 0) scores ~1.0; the per-sample loss has std ~0.7, so the MC error
    # at n = 60 000 is ~0.003; a 300-step fit gets within 0.02 of the optimum
    assert minimum - 0.01 < trained < minimum + 0.02, (trained, minimum)


def test_train_score_model_draws_batches_from_a_data_tensor():
    torch.manual_seed(0)
    model = ScoreMLP(dim=2, hidden=8, n_layers=1)
    data = torch.randn(100, 2)
    losses = train_score_model(
        model,
        data,
        geometric_sigmas(1.0, 0.1, 3),
        steps=5,
        batch_size=16,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(losses) == 5 and all(math.isfinite(loss) for loss in losses)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(
            lambda: annealed_langevin(lambda x, s: x, [0.1, 1.0], torch.zeros(2, 2)),
            id="sigmas-increasing",
        ),
        pytest.param(
            lambda: annealed_langevin(lambda x, s: x, [1.0, 1.0], torch.zeros(2, 2)),
            id="sigmas-repeated",
        ),
        pytest.param(
            lambda: annealed_langevin(lambda x, s: x, [1.0, -0.1], torch.zeros(2, 2)),
            id="sigmas-negative",
        ),
        pytest.param(
            lambda: annealed_langevin(
                lambda x, s: x, [1.0, 0.1], torch.zeros(2, 2), step_lr=-1e-3
            ),
            id="negative-step-lr",
        ),
        pytest.param(
            lambda: geometric_sigmas(0.01, 1.0, 10), id="geometric-min-above-max"
        ),
        pytest.param(
            lambda: langevin_step(
                torch.zeros(3, 2), torch.zeros(3, 2), -0.1, torch.zeros(3, 2)
            ),
            id="negative-step",
        ),
        pytest.param(
            lambda: langevin_step(
                torch.zeros(3, 2), torch.zeros(3, 2), 0.0, torch.zeros(3, 2)
            ),
            id="zero-step",
        ),
        pytest.param(
            lambda: langevin_step(
                torch.zeros(3, 2), torch.zeros(2, 2), 0.1, torch.zeros(3, 2)
            ),
            id="score-shape",
        ),
        pytest.param(
            lambda: langevin_step(
                torch.zeros(3, 2), torch.zeros(3, 2), 0.1, torch.zeros(3, 1)
            ),
            id="noise-shape",
        ),
        pytest.param(
            lambda: langevin_sample(lambda x: x, torch.zeros(3, 2), -0.1, 10),
            id="langevin-sample-negative-step",
        ),
        pytest.param(
            lambda: GaussianMixture(torch.zeros(3, 2), torch.ones(2), torch.ones(3)),
            id="mixture-stds-length",
        ),
        pytest.param(
            lambda: GaussianMixture(torch.zeros(3, 2), torch.ones(3), torch.ones(4)),
            id="mixture-weights-length",
        ),
        pytest.param(
            lambda: GaussianMixture(torch.zeros(3), torch.ones(3), torch.ones(3)),
            id="mixture-means-1d",
        ),
        pytest.param(
            lambda: GaussianMixture(
                torch.zeros(2, 2), torch.tensor([1.0, -1.0]), torch.ones(2)
            ),
            id="mixture-negative-std",
        ),
        pytest.param(
            lambda: _mixture_2d().log_prob(torch.zeros(4, 3, dtype=F64)),
            id="mixture-point-dimension",
        ),
        pytest.param(
            lambda: _mixture_2d().score(torch.zeros(4, dtype=F64)),
            id="mixture-points-not-2d",
        ),
        pytest.param(
            lambda: gaussian_score(torch.zeros(4, 2), torch.zeros(3), torch.eye(2)),
            id="gaussian-mean-shape",
        ),
        pytest.param(
            lambda: gaussian_score(torch.zeros(4, 2), torch.zeros(2), torch.eye(3)),
            id="gaussian-cov-shape",
        ),
        pytest.param(
            lambda: dsm_loss(lambda x, s: x, torch.zeros(4, 2), 0.5, torch.zeros(4, 3)),
            id="dsm-noise-shape",
        ),
        pytest.param(
            lambda: dsm_loss(
                lambda x, s: x, torch.zeros(4, 2), torch.ones(3), torch.zeros(4, 2)
            ),
            id="dsm-sigma-length",
        ),
        pytest.param(
            lambda: dsm_loss(
                lambda x, s: x, torch.zeros(4, 2), -0.5, torch.zeros(4, 2)
            ),
            id="dsm-negative-sigma",
        ),
        pytest.param(
            lambda: explicit_score_matching_loss(
                lambda x: x, torch.zeros(4, 2), torch.zeros(4, 1)
            ),
            id="esm-true-score-shape",
        ),
    ],
)
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


# ------------------------------------------------- the exact noise predictor of Gaussian data
def test_gaussian_optimal_eps_is_tweedies_formula_by_autograd():
    # E[eps | x_t] = -sqrt(1 - abar) d/dx log q(x_t) with q = N(sqrt(abar) mu, abar s^2 + 1 - abar)
    # (Tweedie's formula), the score taken by autograd of torch's Normal log-density
    mu, s = 0.7, 0.3
    x = torch.linspace(-3, 3, 13, dtype=torch.float64, requires_grad=True)
    for abar in (0.999, 0.5, 0.01):
        law = (
            torch.distributions.Normal(  # float64 parameters (floats would be float32)
                torch.tensor(math.sqrt(abar) * mu, dtype=F64),
                torch.tensor(math.sqrt(abar * s**2 + 1 - abar), dtype=F64),
            )
        )
        (score,) = torch.autograd.grad(law.log_prob(x).sum(), x)
        expected = -math.sqrt(1 - abar) * score
        got = gaussian_optimal_eps(x.detach(), abar, mu, s)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_gaussian_optimal_eps_reaches_the_minimal_mse_and_nothing_beats_it():
    # the regression of eps on x_t: its MSE is abar s^2 / (abar s^2 + 1 - abar), and a predictor
    # with another slope does worse; 2e5 draws give the MSE to about 0.3 % (5 standard errors)
    generator = torch.Generator().manual_seed(0)
    mu, s, abar, n = -0.4, 0.5, 0.3, 200_000
    x0 = mu + s * torch.randn(n, generator=generator, dtype=torch.float64)
    eps = torch.randn(n, generator=generator, dtype=torch.float64)
    x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
    optimal = gaussian_optimal_eps(x_t, abar, mu, s)
    mse = float(((optimal - eps) ** 2).mean())
    minimal = abar * s**2 / (abar * s**2 + 1 - abar)
    assert abs(mse - minimal) < 5 * minimal * math.sqrt(2 / n)
    assert float(((1.05 * optimal - eps) ** 2).mean()) > mse


def test_gaussian_eps_model_takes_one_timestep_per_example():
    alphas_cumprod = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    model = gaussian_eps_model(alphas_cumprod, mean=0.2, std=0.8)
    x_t = torch.randn(3, 1, 2, 2)
    t = torch.tensor([2, 0, 1])
    got = model(x_t, t)
    assert got.dtype == torch.float32 and got.shape == x_t.shape
    for i in range(3):
        one = gaussian_optimal_eps(x_t[i], alphas_cumprod[t[i]], 0.2, 0.8)
        torch.testing.assert_close(got[i], one)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"std": 0.0}, "std"), ({"alpha_bar": 1.5}, "alpha_bar must lie in")],
)
def test_gaussian_optimal_eps_rejects_bad_input(kwargs, message):
    arguments = {"x_t": torch.zeros(2), "alpha_bar": 0.5, "mean": 0.0, "std": 1.0}
    with pytest.raises(ValueError, match=message):
        gaussian_optimal_eps(**{**arguments, **kwargs})
