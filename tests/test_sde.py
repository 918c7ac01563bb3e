"""ddpm_course.sde against closed forms: Brownian motion, Euler-Maruyama on the OU process and the
VP-SDE, the VP-SDE marginals and its discretisation into DDPM's betas, and the Fokker-Planck solver.

Monte Carlo tolerances are Z_TOL standard errors (plus the Euler-Maruyama bias where the scheme
has one); each random test draws from its own seeded generator, so it is deterministic.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_course.schedules import NoiseSchedule
from ddpm_course.sde import (
    VPSDE,
    OrnsteinUhlenbeck,
    brownian_motion,
    euler_maruyama,
    euler_maruyama_step,
    fokker_planck_1d,
    gaussian_density,
    random_walk,
    vp_sde_marginal,
)

# A Monte Carlo estimate is off by more than 5 standard errors with probability < 6e-7.
Z_TOL = 5.0
BETA_MIN, BETA_MAX = 0.1, 20.0


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _vp_integrated_beta(s: float) -> float:
    """int_0^s beta(u) du for beta(u) = 0.1 + u (20 - 0.1), written out by hand."""
    return BETA_MIN * s + 0.5 * s**2 * (BETA_MAX - BETA_MIN)


def _moments_on_grid(
    density: torch.Tensor, x: torch.Tensor
) -> tuple[float, float, float]:
    """Mass, mean and std of a density sampled on the uniform grid x (midpoint rule)."""
    dx = (x[1] - x[0]).item()
    mass = density.sum().item() * dx
    mean = (density * x).sum().item() * dx / mass
    var = (density * (x - mean) ** 2).sum().item() * dx / mass
    return mass, mean, math.sqrt(var)


# --------------------------------------------------------------------- random walk and Brownian motion
def test_random_walk_starts_at_zero_and_moves_by_plus_or_minus_one_step():
    walks = random_walk(50, 30, step_size=0.25, generator=_generator(0))
    assert walks.shape == (50, 31)
    assert torch.all(walks[:, 0] == 0)
    steps = walks.diff(dim=1)
    assert torch.all(steps.abs() == 0.25)


def test_random_walk_variance_is_number_of_steps_times_step_squared():
    n_paths, step = 40_000, 0.5
    walks = random_walk(n_paths, 64, step_size=step, generator=_generator(1))
    for k in (4, 16, 64):
        expected = k * step**2
        # the standard error of a sample variance is at most var * sqrt(2 / n) (kurtosis <= 3 here)
        tolerance = Z_TOL * expected * math.sqrt(2 / n_paths)
        assert walks[:, k].var().item() == pytest.approx(expected, abs=tolerance)


def test_brownian_motion_returns_the_uniform_time_grid_and_starts_at_zero():
    times, paths = brownian_motion(7, 20, t_end=2.0, generator=_generator(2))
    assert times.shape == (21,) and paths.shape == (7, 21)
    torch.testing.assert_close(
        times, torch.arange(21) * 0.1, rtol=0, atol=1e-6
    )  # float32 linspace rounding
    assert torch.all(paths[:, 0] == 0)


def test_brownian_motion_variance_grows_linearly_in_time():
    n_paths = 40_000
    times, paths = brownian_motion(n_paths, 100, t_end=2.0, generator=_generator(3))
    for k in (10, 50, 100):
        t = times[k].item()
        tolerance = (
            Z_TOL * t * math.sqrt(2 / n_paths)
        )  # standard error of a Gaussian sample variance
        assert paths[:, k].var().item() == pytest.approx(t, abs=tolerance)
        assert abs(paths[:, k].mean().item()) < Z_TOL * math.sqrt(t / n_paths)


def test_brownian_motion_covariance_is_the_earlier_time():
    n_paths = 40_000
    times, paths = brownian_motion(n_paths, 10, t_end=1.0, generator=_generator(4))
    early, late = paths[:, 3].double(), paths[:, 8].double()
    covariance = ((early - early.mean()) * (late - late.mean())).mean().item()
    # Cov(B_0.3, B_0.8) = min(0.3, 0.8); its estimator has variance (var_s var_t + cov^2) / n
    standard_error = math.sqrt((0.3 * 0.8 + 0.3**2) / n_paths)
    assert covariance == pytest.approx(0.3, abs=Z_TOL * standard_error)


def test_random_functions_are_reproducible_with_a_seeded_generator():
    torch.testing.assert_close(
        random_walk(3, 5, generator=_generator(5)),
        random_walk(3, 5, generator=_generator(5)),
    )
    torch.testing.assert_close(
        brownian_motion(3, 5, generator=_generator(5))[1],
        brownian_motion(3, 5, generator=_generator(5))[1],
    )


# --------------------------------------------------------------------- Euler-Maruyama
def test_euler_maruyama_step_is_drift_times_ds_plus_diffusion_times_sqrt_ds_times_noise():
    x = torch.tensor([1.0, -2.0])
    noise = torch.tensor([0.3, -1.0])
    out = euler_maruyama_step(
        x, 0.5, 0.04, drift=lambda x, s: -s * x, diffusion=lambda s: 2.0, noise=noise
    )
    # by hand: 1 - 0.5 * 1 * 0.04 + 2 * 0.2 * 0.3 = 1.1 and -2 + 0.5 * 2 * 0.04 - 2 * 0.2 = -2.36
    torch.testing.assert_close(
        out, torch.tensor([1.1, -2.36]), rtol=0, atol=1e-6
    )  # float32 rounding


def test_euler_maruyama_step_rejects_a_negative_step():
    with pytest.raises(ValueError, match="ds must be >= 0"):
        euler_maruyama_step(
            torch.zeros(3), 0.5, -0.1, lambda x, s: x, lambda s: 1.0, torch.zeros(3)
        )


@pytest.mark.parametrize(
    "s_grid",
    [[0.0, 0.5, 0.5, 1.0], [1.0, 0.5, 0.0], [0.0]],
    ids=["repeated", "decreasing", "single"],
)
def test_euler_maruyama_rejects_a_grid_that_is_not_strictly_increasing(s_grid):
    with pytest.raises(ValueError, match="s_grid"):
        euler_maruyama(lambda x, s: -x, lambda s: 1.0, torch.zeros(4), s_grid)


def test_euler_maruyama_path_starts_at_x_init_and_ends_at_the_final_state():
    sde = VPSDE()
    x_init = torch.randn(6, 2, generator=_generator(6))
    s_grid = torch.linspace(0, 1, 11)
    path = euler_maruyama(
        sde.drift,
        sde.diffusion,
        x_init,
        s_grid,
        generator=_generator(7),
        return_path=True,
    )
    final = euler_maruyama(
        sde.drift, sde.diffusion, x_init, s_grid, generator=_generator(7)
    )
    assert path.shape == (11, 6, 2)
    torch.testing.assert_close(path[0], x_init, rtol=0, atol=0)
    torch.testing.assert_close(path[-1], final, rtol=0, atol=0)


def test_euler_maruyama_on_the_ou_process_matches_the_closed_form_moments():
    theta, mu, sigma, x0 = 1.5, 0.5, 0.8, 2.0
    n_paths, h = 40_000, 0.005
    ou = OrnsteinUhlenbeck(theta, mu, sigma)
    s_grid = torch.linspace(0, 1, 201, dtype=torch.float64)
    path = euler_maruyama(
        ou.drift,
        ou.diffusion,
        torch.full((n_paths,), x0, dtype=torch.float64),
        s_grid,
        generator=_generator(8),
        return_path=True,
    )
    for k in (100, 200):
        s = k * h
        mean = mu + (x0 - mu) * math.exp(-theta * s)
        var = sigma**2 * (1 - math.exp(-2 * theta * s)) / (2 * theta)
        # EM on this linear SDE has exactly mean mu + (x0-mu)(1-theta h)^k and
        # variance sigma^2 h (1 - (1-theta h)^(2k)) / (1 - (1-theta h)^2): their gap is the EM bias
        em_mean = mu + (x0 - mu) * (1 - theta * h) ** k
        em_var = (
            sigma**2 * h * (1 - (1 - theta * h) ** (2 * k)) / (1 - (1 - theta * h) ** 2)
        )
        samples = path[k]
        mean_tol = abs(em_mean - mean) + Z_TOL * math.sqrt(var / n_paths)
        std_tol = abs(math.sqrt(em_var) - math.sqrt(var)) + Z_TOL * math.sqrt(
            var / (2 * n_paths)
        )
        assert samples.mean().item() == pytest.approx(mean, abs=mean_tol)
        assert samples.std().item() == pytest.approx(math.sqrt(var), abs=std_tol)


def test_euler_maruyama_on_the_vp_sde_matches_the_closed_form_moments():
    x0, n_paths, n_steps = 1.5, 40_000, 400
    sde = VPSDE(BETA_MIN, BETA_MAX)
    s_grid = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)
    path = euler_maruyama(
        sde.drift,
        sde.diffusion,
        torch.full((n_paths,), x0, dtype=torch.float64),
        s_grid,
        generator=_generator(9),
        return_path=True,
    )
    # exact moments of the EM recursion x <- (1 - beta_k h / 2) x + sqrt(beta_k h) z, by hand
    h = 1 / n_steps
    em_mean, em_var = [x0], [0.0]
    for k in range(n_steps):
        beta = BETA_MIN + k * h * (BETA_MAX - BETA_MIN)
        em_mean.append((1 - 0.5 * beta * h) * em_mean[-1])
        em_var.append((1 - 0.5 * beta * h) ** 2 * em_var[-1] + beta * h)
    for k in (200, 400):
        integral = _vp_integrated_beta(k * h)
        mean, std = math.exp(-0.5 * integral) * x0, math.sqrt(1 - math.exp(-integral))
        mean_tol = abs(em_mean[k] - mean) + Z_TOL * std / math.sqrt(n_paths)
        std_tol = abs(math.sqrt(em_var[k]) - std) + Z_TOL * std / math.sqrt(2 * n_paths)
        assert path[k].mean().item() == pytest.approx(mean, abs=mean_tol)
        assert path[k].std().item() == pytest.approx(std, abs=std_tol)


# --------------------------------------------------------------------- the OU process and the VP-SDE
def test_ou_marginal_mean_and_std_equal_the_hand_formulas():
    ou = OrnsteinUhlenbeck(theta=2.0, mu=1.0, sigma=0.5)
    # x0 = 3, s = 0.4: mean 1 + 2 e^{-0.8}; std 0.5 sqrt((1 - e^{-1.6}) / 4)
    assert ou.marginal_mean(3.0, 0.4).item() == pytest.approx(
        1 + 2 * math.exp(-0.8), rel=1e-12
    )
    assert ou.marginal_std(0.4).item() == pytest.approx(
        0.5 * math.sqrt((1 - math.exp(-1.6)) / 4), rel=1e-12
    )
    torch.testing.assert_close(
        ou.drift(torch.tensor([3.0, -1.0]), 0.4), torch.tensor([-4.0, 4.0])
    )
    assert ou.diffusion(0.4) == 0.5


def test_vp_sde_beta_and_its_integral_follow_the_linear_schedule():
    sde = VPSDE(BETA_MIN, BETA_MAX)
    assert sde.beta(0.0) == pytest.approx(0.1) and sde.beta(1.0) == pytest.approx(20.0)
    assert sde.integrated_beta(1.0) == pytest.approx(0.1 + 0.5 * 19.9)
    # d/ds of the integral is beta: a central difference is exact for a quadratic up to rounding
    s, eps = 0.37, 1e-5
    derivative = (sde.integrated_beta(s + eps) - sde.integrated_beta(s - eps)) / (
        2 * eps
    )
    assert derivative == pytest.approx(sde.beta(s), rel=1e-8)
    torch.testing.assert_close(
        sde.diffusion(torch.tensor([0.0, 1.0])), torch.tensor([0.1, 20.0]).sqrt()
    )
    torch.testing.assert_close(
        sde.drift(torch.tensor([2.0]), 1.0), torch.tensor([-20.0])
    )


@pytest.mark.parametrize("s", [0.0, 0.05, 0.5, 1.0])
def test_vp_sde_marginal_equals_the_closed_form(s):
    x0 = torch.tensor([[-1.0, 0.25, 2.0]], dtype=torch.float64)
    mean, std = vp_sde_marginal(x0, s)
    integral = 0.1 * s + 0.5 * s**2 * (20.0 - 0.1)
    torch.testing.assert_close(mean, math.exp(-0.5 * integral) * x0, rtol=1e-12, atol=0)
    assert std.item() == pytest.approx(
        math.sqrt(1 - math.exp(-integral)), rel=1e-12, abs=0
    )


def test_vp_sde_marginal_broadcasts_a_time_per_example():
    x0 = torch.ones(3, 1, 2, 2)
    s = torch.tensor([0.1, 0.5, 0.9]).reshape(3, 1, 1, 1)
    mean, std = vp_sde_marginal(x0, s, beta_min=0.5, beta_max=5.0)
    assert mean.shape == x0.shape and mean.dtype == x0.dtype
    for i, s_i in enumerate((0.1, 0.5, 0.9)):
        integral = 0.5 * s_i + 0.5 * s_i**2 * (5.0 - 0.5)
        assert mean[i, 0, 0, 0].item() == pytest.approx(
            math.exp(-0.5 * integral), rel=1e-6
        )  # float32
        assert std[i].item() == pytest.approx(
            math.sqrt(1 - math.exp(-integral)), rel=1e-6
        )  # float32


def test_vp_sde_marginal_std_keeps_its_digits_near_s_zero():
    _, std = vp_sde_marginal(torch.zeros(2, dtype=torch.float64), 1e-12)
    # int beta = 1e-13, where 1 - exp(-1e-13) loses 3 of float64's 16 digits; sqrt(1e-13) is right to 1e-13
    assert std.item() == pytest.approx(math.sqrt(1e-13), rel=1e-9)


def test_vp_sde_sample_marginal_has_the_closed_form_moments():
    n = 100_000
    x0 = torch.full((n,), 2.0)
    samples = VPSDE().sample_marginal(x0, 0.3, generator=_generator(10))
    integral = _vp_integrated_beta(0.3)
    mean, std = 2.0 * math.exp(-0.5 * integral), math.sqrt(1 - math.exp(-integral))
    assert samples.mean().item() == pytest.approx(mean, abs=Z_TOL * std / math.sqrt(n))
    assert samples.std().item() == pytest.approx(
        std, abs=Z_TOL * std / math.sqrt(2 * n)
    )


def test_discrete_betas_reproduce_ddpm_linear_schedule_for_1000_steps():
    betas = VPSDE(BETA_MIN, BETA_MAX).discrete_betas(1000)
    assert betas.shape == (1000,) and betas.dtype == torch.float64
    # float64 on both sides: a float32 linspace is itself only good to ~1e-9
    torch.testing.assert_close(
        betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(
        betas, NoiseSchedule.from_name("linear", 1000).betas, rtol=0, atol=1e-12
    )


def test_discrete_alphas_cumprod_approaches_the_continuous_one_within_the_derived_error():
    N = 1000
    betas = VPSDE(BETA_MIN, BETA_MAX).discrete_betas(N)
    log_prod = torch.log1p(-betas).sum().item()
    # sum_i beta_i = int_0^1 beta exactly on this grid, so
    # -int beta - log prod(1 - beta_i) = sum_i (beta_i^2/2 + beta_i^3/3 + ...) ~ (1/2N) int_0^1 beta^2
    # with int_0^1 beta^2 = (beta_max^3 - beta_min^3) / (3 (beta_max - beta_min)) = 134.0;
    # the cubic term (~1%) and the endpoint correction of the Riemann sum (~0.1%) fit inside 2%
    predicted_gap = (BETA_MAX**3 - BETA_MIN**3) / (3 * (BETA_MAX - BETA_MIN)) / (2 * N)
    gap = -_vp_integrated_beta(1.0) - log_prod
    assert gap == pytest.approx(predicted_gap, rel=0.02)
    assert math.exp(log_prod) == pytest.approx(
        math.exp(-_vp_integrated_beta(1.0)), rel=1.1 * predicted_gap
    )


def test_discrete_betas_need_at_least_two_steps():
    with pytest.raises(ValueError, match="N"):
        VPSDE().discrete_betas(1)


@pytest.mark.parametrize("beta_min, beta_max", [(20.0, 0.1), (-0.1, 20.0), (0.0, 0.0)])
def test_vp_sde_rejects_an_invalid_beta_range(beta_min, beta_max):
    with pytest.raises(ValueError, match="beta_m"):
        VPSDE(beta_min, beta_max)
    with pytest.raises(ValueError, match="beta_m"):
        vp_sde_marginal(torch.zeros(2), 0.5, beta_min, beta_max)


@pytest.mark.parametrize("s", [-0.1, 1.5])
def test_vp_sde_marginal_rejects_a_time_outside_the_unit_interval(s):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vp_sde_marginal(torch.zeros(2), s)


def test_ou_rejects_a_non_positive_rate():
    with pytest.raises(ValueError, match="theta"):
        OrnsteinUhlenbeck(theta=0.0)


# --------------------------------------------------------------------- densities and Fokker-Planck
def test_gaussian_density_equals_torch_normal():
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    mean, std = (
        torch.tensor(0.5, dtype=torch.float64),
        torch.tensor(1.5, dtype=torch.float64),
    )
    expected = torch.distributions.Normal(mean, std).log_prob(x).exp()
    torch.testing.assert_close(
        gaussian_density(x, 0.5, 1.5), expected, rtol=1e-12, atol=0
    )  # float64 rounding


def test_gaussian_density_rejects_a_non_positive_std():
    with pytest.raises(ValueError, match="std"):
        gaussian_density(torch.zeros(3), 0.0, 0.0)


# Grid for the Fokker-Planck tests: dx = 0.05 on [-6, 6], initial std 0.3.
X_GRID = torch.linspace(-6, 6, 241, dtype=torch.float64)
DX, STD0, MEAN0 = 0.05, 0.3, 1.5
# The scheme is second order in dx: for a Gaussian of std >= STD0 its errors are about (dx / std)^2
# relative to the density's scale: mean and std within dx^2 / STD0, the density within
# (dx / STD0)^2 times its peak (the measured errors are 3-4 times smaller; see the refinement test).
MOMENT_TOL = DX**2 / STD0


def _check_gaussian(density: torch.Tensor, mean: float, std: float) -> None:
    mass, numeric_mean, numeric_std = _moments_on_grid(density, X_GRID)
    assert mass == pytest.approx(1.0, abs=1e-12)  # conservation up to float64 rounding
    assert numeric_mean == pytest.approx(mean, abs=MOMENT_TOL)
    assert numeric_std == pytest.approx(std, abs=MOMENT_TOL)
    reference = gaussian_density(X_GRID, mean, std)
    peak = 1 / (std * math.sqrt(2 * math.pi))
    assert (density - reference).abs().max().item() <= (DX / STD0) ** 2 * peak


def test_fokker_planck_under_the_ou_process_keeps_a_gaussian_with_the_closed_form_moments():
    theta, mu, sigma = 2.0, 0.5, 0.8
    s_grid = [0.0, 0.1, 0.5, 1.0]
    ou = OrnsteinUhlenbeck(theta, mu, sigma)
    densities = fokker_planck_1d(
        gaussian_density(X_GRID, MEAN0, STD0), X_GRID, s_grid, ou.drift, ou.diffusion
    )
    assert densities.shape == (4, 241)
    torch.testing.assert_close(
        densities[0], gaussian_density(X_GRID, MEAN0, STD0), rtol=0, atol=0
    )
    for density, s in zip(densities[1:], s_grid[1:], strict=True):
        # a Gaussian start N(m, v) stays Gaussian: N(mu + (m - mu) e^{-theta s}, v e^{-2 theta s} + OU variance)
        mean = mu + (MEAN0 - mu) * math.exp(-theta * s)
        var = STD0**2 * math.exp(-2 * theta * s) + sigma**2 * (
            1 - math.exp(-2 * theta * s)
        ) / (2 * theta)
        _check_gaussian(density, mean, math.sqrt(var))


def test_fokker_planck_under_the_vp_sde_keeps_a_gaussian_with_the_closed_form_moments():
    s_grid = [0.0, 0.1, 0.5, 1.0]
    sde = VPSDE(BETA_MIN, BETA_MAX)
    densities = fokker_planck_1d(
        gaussian_density(X_GRID, MEAN0, STD0), X_GRID, s_grid, sde.drift, sde.diffusion
    )
    for density, s in zip(densities[1:], s_grid[1:], strict=True):
        alpha_bar = math.exp(-_vp_integrated_beta(s))
        _check_gaussian(
            density,
            math.sqrt(alpha_bar) * MEAN0,
            math.sqrt(alpha_bar * STD0**2 + 1 - alpha_bar),
        )


def test_fokker_planck_error_shrinks_quadratically_with_the_grid_spacing():
    ou = OrnsteinUhlenbeck(theta=2.0, mu=0.5, sigma=0.8)
    mean = 0.5 + (MEAN0 - 0.5) * math.exp(-1.0)
    std = math.sqrt(STD0**2 * math.exp(-2.0) + 0.64 * (1 - math.exp(-2.0)) / 4)
    errors = []
    for n_points in (121, 241):  # dx = 0.1, then 0.05
        x = torch.linspace(-6, 6, n_points, dtype=torch.float64)
        density = fokker_planck_1d(
            gaussian_density(x, MEAN0, STD0), x, [0.0, 0.5], ou.drift, ou.diffusion
        )[-1]
        errors.append((density - gaussian_density(x, mean, std)).abs().max().item())
    # second order: halving dx divides the error by about 4; 3 leaves room for higher-order terms
    assert errors[0] / errors[1] > 3


def test_fokker_planck_keeps_mass_and_positivity_without_diffusion():
    # g = 0: pure transport by the drift; the flux falls back to upwinding, which stays >= 0
    ou = OrnsteinUhlenbeck(theta=1.0, mu=0.0, sigma=0.0)
    density0 = 0.5 * gaussian_density(X_GRID, -2.0, 0.4) + 0.5 * gaussian_density(
        X_GRID, 2.0, 0.4
    )
    densities = fokker_planck_1d(
        density0, X_GRID, [0.0, 0.5, 1.0], ou.drift, ou.diffusion
    )
    assert densities.min().item() >= 0
    for density in densities:
        assert _moments_on_grid(density, X_GRID)[0] == pytest.approx(
            1.0, abs=1e-12
        )  # float64 rounding


@pytest.mark.parametrize(
    "s_grid", [[0.0, 0.5, 0.4], [0.3, 0.3]], ids=["decreasing", "repeated"]
)
def test_fokker_planck_rejects_a_grid_that_is_not_strictly_increasing(s_grid):
    sde = VPSDE()
    with pytest.raises(ValueError, match="s_grid"):
        fokker_planck_1d(
            gaussian_density(X_GRID), X_GRID, s_grid, sde.drift, sde.diffusion
        )


def test_fokker_planck_rejects_a_non_uniform_x_grid():
    x = torch.tensor([0.0, 0.1, 0.3, 0.4])
    with pytest.raises(ValueError, match="uniformly spaced"):
        fokker_planck_1d(torch.ones(4), x, [0.0, 1.0], lambda x, s: -x, lambda s: 1.0)
