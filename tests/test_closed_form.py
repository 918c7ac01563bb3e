r"""Samplers and bits/dim on Gaussian data, where everything is known in closed form.

For data :math:`x_0 \sim \mathcal N(\mu, s^2)` the best noise predictor is exact:
with :math:`a = \sqrt{\bar\alpha_t}`, :math:`b = \sqrt{1-\bar\alpha_t}`,
:math:`E[\epsilon \mid x_t] = b (x_t - a\mu) / (a^2 s^2 + b^2)` (the ``gaussian_eps_model`` fixture).
It is affine in :math:`x_t`, so every deterministic sampler step is an affine map and a whole
DDIM (η = 0) or DPM-Solver++ run is :math:`x_T \mapsto A x_T + B`, whose output law is
:math:`\mathcal N(B, A^2)`; ancestral DDPM is affine in x_T and its step noises. The maps are
composed here in float64 from the papers' update rules (Song et al. 2021, Eq. (12); Lu et al. 2022,
Algorithm 2; Ho et al. 2020, Eq. (7)), without calling the package's samplers.

The same exact model gives the variational bound in closed form on 8-bit Gaussian data, to check
bits/dim against the exact NLL of the discretised data and against the bound's expectation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from numpy.polynomial.hermite_e import hermegauss

from ddpm_course.diffusion import GaussianDiffusion, discretized_gaussian_log_likelihood
from ddpm_course.samplers import ddim_sample, ddpm_sample, dpm_solver_sample

T = 1000
MU, SIGMA = 0.2, 0.3  # the data law N(MU, SIGMA^2)
ALPHAS_CUMPROD = np.cumprod(
    1.0 - np.linspace(1e-4, 0.02, T)
)  # linear betas of Ho et al. 2020
X_T, ONE = (
    np.array([1.0, 0.0]),
    np.array([0.0, 1.0]),
)  # affine maps of x_T as [coefficient, offset]


def scaled_linear_betas(num_timesteps: int) -> np.ndarray:
    """Linear betas stretched to T steps (improved-diffusion): [1e-4, 0.02] * 1000 / T."""
    scale = 1000 / num_timesteps
    return np.linspace(1e-4 * scale, 0.02 * scale, num_timesteps)


# --------------------------------------------------------------- exact affine sampler maps
def exact_eps(x: np.ndarray, t: int) -> np.ndarray:
    """E[eps | x_t = x] for an affine x = [coef, offset] of x_T."""
    a, b = math.sqrt(ALPHAS_CUMPROD[t]), math.sqrt(1 - ALPHAS_CUMPROD[t])
    return b * (x - a * MU * ONE) / (a**2 * SIGMA**2 + b**2)


def exact_x0(x: np.ndarray, t: int) -> np.ndarray:
    """E[x0 | x_t = x] = (x - b E[eps | x]) / a."""
    a, b = math.sqrt(ALPHAS_CUMPROD[t]), math.sqrt(1 - ALPHAS_CUMPROD[t])
    return (x - b * exact_eps(x, t)) / a


def alpha_bar(t: int | None) -> float:
    """alpha-bar at t, and 1 after the last visited step (t = None)."""
    return 1.0 if t is None else float(ALPHAS_CUMPROD[t])


def visited_timesteps(steps: int, spacing: str) -> list[int]:
    """The timesteps of the DDIM paper ("leading"), Lin et al. 2024 ("trailing") and DPM-Solver ("linspace")."""
    if spacing == "leading":
        return list(range(0, T, T // steps))[:steps][::-1]
    if spacing == "trailing":
        return [round(T - i * T / steps) - 1 for i in range(steps)]
    return [round(i * (T - 1) / steps) for i in range(steps, 0, -1)]


def ddim_affine_map(steps: int, spacing: str) -> np.ndarray:
    r"""DDIM with η = 0: :math:`x_{t'} = \sqrt{\bar\alpha_{t'}}\hat x_0 + \sqrt{1-\bar\alpha_{t'}}\hat\epsilon`."""
    timesteps = visited_timesteps(steps, spacing)
    x = X_T
    for t, t_next in zip(timesteps, timesteps[1:] + [None], strict=True):
        x = math.sqrt(alpha_bar(t_next)) * exact_x0(x, t) + math.sqrt(
            1 - alpha_bar(t_next)
        ) * exact_eps(x, t)
    return x


def dpm_solver_pp_2m_affine_map(steps: int) -> np.ndarray:
    r"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) with λ = log(α/σ); the first step and the
    step to α = 1, σ = 0 are first order; the multistep correction uses r = h_{k-1}/h_k."""
    timesteps = visited_timesteps(steps, "linspace")
    x, previous_x0, previous_h = X_T, None, None
    for t, t_next in zip(timesteps, timesteps[1:] + [None], strict=True):
        x0 = exact_x0(x, t)
        if t_next is None:
            x = x0
            continue
        alpha_s, sigma_s = math.sqrt(alpha_bar(t)), math.sqrt(1 - alpha_bar(t))
        alpha_t, sigma_t = (
            math.sqrt(alpha_bar(t_next)),
            math.sqrt(1 - alpha_bar(t_next)),
        )
        h = math.log(alpha_t / sigma_t) - math.log(alpha_s / sigma_s)
        if previous_x0 is None:
            data_term = x0
        else:
            r = previous_h / h
            data_term = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * previous_x0
        x = sigma_t / sigma_s * x - alpha_t * (math.exp(-h) - 1) * data_term
        previous_x0, previous_h = x0, h
    return x


def ddpm_posterior_step(t: int) -> tuple[float, float, float]:
    r"""One ancestral step with :math:`\tilde\beta_t` (fixed_small) as :math:`x_{t-1} = g x_t + o + \sqrt{v} z`:
    the posterior mean :math:`c_1\hat x_0 + c_2 x_t` of Eq. (7) of Ho et al. 2020 at the exact
    :math:`\hat x_0`, and v = 0 at t = 0 (no noise on the last step). Returns (g, o, v)."""
    abar, abar_prev = ALPHAS_CUMPROD[t], (ALPHAS_CUMPROD[t - 1] if t > 0 else 1.0)
    beta = 1 - abar / abar_prev
    coef1 = math.sqrt(abar_prev) * beta / (1 - abar)
    coef2 = math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar)
    gain, offset = coef1 * exact_x0(X_T, t) + coef2 * X_T
    return gain, offset, (beta * (1 - abar_prev) / (1 - abar) if t > 0 else 0.0)


@pytest.fixture
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(torch.from_numpy(np.linspace(1e-4, 0.02, T)))


@pytest.fixture
def exact_model(gaussian_eps_model):
    return gaussian_eps_model(ALPHAS_CUMPROD, MU, SIGMA)


# --------------------------------------------------------------- samplers as affine maps
AFFINE_TOL = (
    1e-12  # float64 round-off over at most 1000 affine steps (measured: 2e-15 at 50)
)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_is_the_composed_affine_map(steps, spacing, diffusion, exact_model):
    x_T = torch.linspace(-4, 4, 81, dtype=torch.float64).reshape(81, 1)
    coef, offset = ddim_affine_map(steps, spacing)
    out = ddim_sample(
        exact_model,
        diffusion,
        x_T.shape,
        steps=steps,
        spacing=spacing,
        x_T=x_T,
        clip_denoised=False,
        dtype=torch.float64,
    )
    assert float((out - (coef * x_T + offset)).abs().max()) < AFFINE_TOL


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_is_the_composed_affine_map(steps, diffusion, exact_model):
    x_T = torch.linspace(-4, 4, 81, dtype=torch.float64).reshape(81, 1)
    coef, offset = dpm_solver_pp_2m_affine_map(steps)
    out = dpm_solver_sample(
        exact_model,
        diffusion,
        x_T.shape,
        steps=steps,
        spacing="linspace",
        x_T=x_T,
        dtype=torch.float64,
    )
    assert float((out - (coef * x_T + offset)).abs().max()) < AFFINE_TOL


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver"])
def test_deterministic_samples_follow_the_exact_output_law(
    sampler, diffusion, exact_model
):
    """20000 samples from random x_T: mean and std within 5 standard errors of N(B, A^2)."""
    n, generator = 20_000, torch.Generator().manual_seed(0)
    if sampler == "ddim":
        (coef, offset), out = (
            ddim_affine_map(10, "leading"),
            ddim_sample(
                exact_model,
                diffusion,
                (n, 1),
                steps=10,
                generator=generator,
                clip_denoised=False,
                dtype=torch.float64,
            ),
        )
    else:
        (coef, offset), out = (
            dpm_solver_pp_2m_affine_map(10),
            dpm_solver_sample(
                exact_model,
                diffusion,
                (n, 1),
                steps=10,
                generator=generator,
                dtype=torch.float64,
            ),
        )
    std = abs(coef)
    assert abs(float(out.mean()) - offset) < 5 * std / math.sqrt(
        n
    )  # SE of a mean: std / sqrt(n)
    assert abs(float(out.std()) - std) < 5 * std / math.sqrt(
        2 * n
    )  # SE of a Gaussian std: std / sqrt(2n)


@pytest.fixture(scope="module")
def ddpm_samples(gaussian_eps_model) -> torch.Tensor:
    """40000 scalar samples of 1000-step ancestral DDPM with the exact model (a few seconds)."""
    diffusion = GaussianDiffusion(torch.from_numpy(np.linspace(1e-4, 0.02, T)))
    return ddpm_sample(
        gaussian_eps_model(ALPHAS_CUMPROD, MU, SIGMA),
        diffusion,
        (40_000, 1),
        clip_denoised=False,
        generator=torch.Generator().manual_seed(1),
        dtype=torch.float64,
    )


def test_ddpm_ancestral_1000_steps_keeps_the_data_std_within_2_percent(ddpm_samples):
    """SE of the std: SIGMA / sqrt(2 * 40000) = 0.35% of SIGMA, so 2% is 5.7 standard errors. (The
    exact law of this sampler, composed as in the next test, has std 0.2963: fixed_small variances
    are narrower than the true reverse kernel, so the output is 1.2% under-dispersed.)"""
    assert abs(float(ddpm_samples.std()) - SIGMA) < 0.02 * SIGMA
    assert abs(float(ddpm_samples.mean()) - MU) < 0.02 * SIGMA


def test_ddpm_ancestral_is_the_composed_map_of_x_T_and_its_step_noises(
    diffusion, exact_model
):
    """Given x_T and the step noises z_t (drawn from the generator once per t > 0, which a twin
    generator reproduces), ancestral sampling is x <- g_t x + o_t + sqrt(v_t) z_t down to t = 0."""
    x_T = torch.linspace(-4, 4, 81, dtype=torch.float64).reshape(81, 1)
    out = ddpm_sample(
        exact_model,
        diffusion,
        x_T.shape,
        x_T=x_T,
        clip_denoised=False,
        generator=torch.Generator().manual_seed(6),
        dtype=torch.float64,
    )
    twin_generator, expected = torch.Generator().manual_seed(6), x_T
    for t in range(T - 1, -1, -1):
        gain, offset, noise_var = ddpm_posterior_step(t)
        expected = gain * expected + offset
        if t > 0:
            expected = expected + math.sqrt(noise_var) * torch.randn(
                x_T.shape, generator=twin_generator, dtype=torch.float64
            )
    assert float((out - expected).abs().max()) < AFFINE_TOL


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_is_closer_to_the_data_std_than_ddim_on_the_same_timesteps(
    steps, diffusion, exact_model
):
    """Both samplers are affine maps of x_T, so with the same x_T their stds are exact multiples of
    std(x_T): the comparison has no Monte-Carlo error. (At 10 steps both lose most of the std on
    the last step, from t = 100 straight to alpha-bar = 1: 0.193 against 0.184 for SIGMA = 0.3.)"""
    x_T = torch.randn(
        2000, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    ddim = ddim_sample(
        exact_model,
        diffusion,
        x_T.shape,
        steps=steps,
        spacing="linspace",
        x_T=x_T,
        clip_denoised=False,
        dtype=torch.float64,
    )
    dpm = dpm_solver_sample(
        exact_model, diffusion, x_T.shape, steps=steps, x_T=x_T, dtype=torch.float64
    )
    assert abs(float(dpm.std()) - SIGMA) < abs(float(ddim.std()) - SIGMA)


def test_ddim_50_shrinks_the_std_as_diffusers_does(diffusion, exact_model):
    """Deterministic DDIM with 50 leading steps under-disperses Gaussian data by about 8%; diffusers'
    DDIM, run here on the same x_T, gives the same std to float32 round-off (1e-4 relative)."""
    x_T = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(3))
    ours = ddim_sample(
        exact_model,
        diffusion,
        x_T.shape,
        steps=50,
        spacing="leading",
        x_T=x_T,
        clip_denoised=False,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=T,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
    )
    scheduler.set_timesteps(50)
    x = x_T
    for step in scheduler.timesteps.tolist():
        x = scheduler.step(
            exact_model(x, torch.full((x.shape[0],), step)), step, x
        ).prev_sample
    their_std, our_std = float(x.std()), float(ours.std())
    assert abs(our_std - their_std) < 1e-4 * their_std
    assert our_std < 0.95 * SIGMA


# ---------------------------------------------------------------------------- bits/dim
BIN_HALF_WIDTH = 1 / 255  # the 8-bit grid {-1 + 2k/255} has bins of width 2/255


def log_normal_mass(lo: float, hi: float) -> float:
    """log P(lo < Z < hi) for Z ~ N(0, 1), with erfc in the tail so that nothing cancels."""
    if lo > 0:
        mass = 0.5 * (math.erfc(lo / math.sqrt(2)) - math.erfc(hi / math.sqrt(2)))
    elif hi < 0:
        mass = 0.5 * (math.erfc(-hi / math.sqrt(2)) - math.erfc(-lo / math.sqrt(2)))
    else:
        mass = 0.5 * (math.erf(hi / math.sqrt(2)) - math.erf(lo / math.sqrt(2)))
    return math.log(mass) if mass > 0 else -math.inf  # beyond ~38 standard deviations


def log_bin_probability(k: int, mean: float, std: float) -> float:
    """log P(bin k) for N(mean, std^2) discretised to 256 bins, the edge bins open to +-infinity."""
    center = -1 + 2 * k / 255
    lo = -math.inf if k == 0 else (center - BIN_HALF_WIDTH - mean) / std
    hi = math.inf if k == 255 else (center + BIN_HALF_WIDTH - mean) / std
    return log_normal_mass(lo, hi)


def bins_to_check(mean: float, std: float) -> list[int]:
    """The edge bins, and bins 0 to 7 standard deviations either side of the mean, where the
    package's floor of 1e-12 on a bin's mass is not reached."""
    center = (mean + 1) * 255 / 2
    offsets = [
        round(center + z * std * 255 / 2)
        for z in (-7, -6, -5, -3, -1, 0, 1, 3, 5, 6, 7)
    ]
    ks = sorted({k for k in [0, 1, 2, 253, 254, 255, *offsets] if 0 <= k <= 255})
    return [k for k in ks if log_bin_probability(k, mean, std) > math.log(1e-11)]


@pytest.mark.parametrize(
    "mean,std", [(0.1, 0.3), (-0.95, 0.02), (0.9, 0.05), (0.002, 0.004)]
)
def test_discretized_gaussian_log_likelihood_matches_erf_bin_masses(mean, std):
    """Edge bins (k = 0, 255), the middle, and bins far in the tails of the Gaussian, in float64."""
    ks = bins_to_check(mean, std)
    x = torch.tensor([-1 + 2 * k / 255 for k in ks], dtype=torch.float64)
    ours = discretized_gaussian_log_likelihood(
        x, torch.full_like(x, mean), torch.full_like(x, math.log(std))
    )
    expected = torch.tensor(
        [log_bin_probability(k, mean, std) for k in ks], dtype=torch.float64
    )
    assert len(ks) >= 6
    torch.testing.assert_close(
        ours, expected, rtol=1e-9, atol=1e-12
    )  # float64, a few ulps of erfc


def test_discretized_gaussian_log_likelihood_is_accurate_in_float32_tails():
    """A decoder of std 0.0074 (sqrt of the t = 1 posterior variance, linear betas) whose mean is
    off by 0 to 7 bins: the log-probabilities agree with float64 erfc to float32 round-off
    (1e-5 relative; torch.special.ndtr alone gives 0 for the bin 6 away)."""
    mean, std = -1 + 2 * 127 / 255, 0.0074
    ks = list(range(120, 135))
    x = torch.tensor([-1 + 2 * k / 255 for k in ks], dtype=torch.float32)
    ours = discretized_gaussian_log_likelihood(
        x, torch.full_like(x, mean), torch.full_like(x, math.log(std))
    )
    expected = torch.tensor(
        [log_bin_probability(k, mean, std) for k in ks], dtype=torch.float32
    )
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mean,std", [(0.0, 0.3), (0.9, 0.005), (-3.0, 0.01)])
def test_discretized_gaussian_log_likelihood_has_finite_gradients_in_every_bin(
    mean, std
):
    """Training (the hybrid loss at t = 0) differentiates through every branch, floors included."""
    x = -1 + 2 * torch.arange(256, dtype=torch.float32) / 255
    means = torch.full_like(x, mean, requires_grad=True)
    log_scales = torch.full_like(x, math.log(std), requires_grad=True)
    discretized_gaussian_log_likelihood(x, means, log_scales).sum().backward()
    assert bool(torch.isfinite(means.grad).all()) and bool(
        torch.isfinite(log_scales.grad).all()
    )


@pytest.mark.parametrize(
    "mean,std", [(0.1, 0.3), (-1.3, 0.2), (0.999, 0.01), (0.0, 3.0), (0.5, 1e-3)]
)
def test_discretized_gaussian_probabilities_sum_to_one_over_256_bins(mean, std):
    x = -1 + 2 * torch.arange(256, dtype=torch.float64) / 255
    log_p = discretized_gaussian_log_likelihood(
        x,
        torch.tensor(mean, dtype=torch.float64),
        torch.tensor(math.log(std), dtype=torch.float64),
    )
    assert (
        abs(float(log_p.exp().sum()) - 1) < 1e-9
    )  # float64 round-off over 256 terms (and floors of 1e-12)


@pytest.mark.parametrize("num_timesteps", [20, 1000])
def test_prior_bpd_is_the_closed_form_kl_to_the_standard_normal(num_timesteps):
    """KL(N(a x0, 1 - a^2) || N(0, 1)) = (a^2 x0^2 - a^2 - log(1 - a^2)) / 2 nats, a^2 = alpha-bar_T."""
    betas = np.linspace(1e-4, 0.02, num_timesteps)
    alpha_bar_T = float(np.prod(1 - betas))
    x0 = (
        torch.rand(
            3, 2, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64
        )
        * 2
        - 1
    )
    expected = 0.5 * (alpha_bar_T * x0**2 - alpha_bar_T - math.log1p(-alpha_bar_T))
    expected = expected.mean(dim=(1, 2, 3)) / math.log(2)
    ours = GaussianDiffusion(torch.from_numpy(betas)).prior_bpd(x0)
    torch.testing.assert_close(
        ours, expected, rtol=1e-9, atol=1e-15
    )  # float64; the KL is ~1e-6 bits at T = 1000


def expected_bound_bits(x0: float, betas: np.ndarray) -> tuple[float, np.ndarray]:
    r"""Exact E_{x_t | x0}[L] for one scalar x0 under the exact model with fixed_small variances:
    (prior bits, (T,) per-step terms in bits).

    The model's :math:`\hat x_0(x_t) = c x_t + e` with :math:`c = (1 - bk)/a`, :math:`e = bk\mu`,
    :math:`k = b/(a^2 s^2 + b^2)`. For t >= 1 both Gaussians have variance :math:`\tilde\beta_t` and
    means that differ by :math:`c_1(x_0 - \hat x_0)`, so E[KL] = :math:`c_1^2 E[(x_0-\hat x_0)^2]/(2\tilde\beta_t)`
    with :math:`E[(x_0-\hat x_0)^2] = (bk(x_0-\mu))^2 + c^2 b^2`. At t = 0 the decoder is the
    discretised N(:math:`\hat x_0`, :math:`\tilde\beta_1`), averaged over z by Gauss-Hermite quadrature.
    """
    alphas_cumprod = np.cumprod(1 - betas)
    alphas_cumprod_prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
    posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
    coef1 = np.sqrt(alphas_cumprod_prev) * betas / (1 - alphas_cumprod)
    a, b = np.sqrt(alphas_cumprod), np.sqrt(1 - alphas_cumprod)
    k = b / (a**2 * SIGMA**2 + b**2)
    c, e = (1 - b * k) / a, b * k * MU
    mean_square_error = (b * k * (x0 - MU)) ** 2 + c**2 * b**2
    terms = np.empty_like(betas)
    terms[1:] = (
        coef1[1:] ** 2
        * mean_square_error[1:]
        / (2 * posterior_variance[1:])
        / math.log(2)
    )

    nodes, weights = hermegauss(80)
    bin_index = round((x0 + 1) * 255 / 2)
    decoder_std = math.sqrt(posterior_variance[1])
    decoder_nll = [
        -log_bin_probability(
            bin_index, c[0] * (a[0] * x0 + b[0] * z) + e[0], decoder_std
        )
        for z in nodes
    ]
    terms[0] = (
        float(np.dot(weights, decoder_nll)) / math.sqrt(2 * math.pi) / math.log(2)
    )

    abar_T = alphas_cumprod[-1]
    prior = 0.5 * (abar_T * x0**2 - abar_T - math.log1p(-abar_T)) / math.log(2)
    return prior, terms


@pytest.fixture(scope="module", params=[100, 1000], ids=lambda T: f"T{T}")
def bound_on_gaussian_data(request, gaussian_eps_model):
    """calc_bpd_loop on 8-bit data x0 = N(MU, SIGMA^2) rounded to the grid, with the exact model of the
    continuous Gaussian; plus each sample's exact -log2 P(bin) and exact expected bound."""
    num_timesteps = request.param
    n = 2000 if num_timesteps == 100 else 800
    betas = scaled_linear_betas(num_timesteps)
    generator = torch.Generator().manual_seed(5)
    bins = (
        (
            (
                MU
                + SIGMA * torch.randn(n, 1, generator=generator, dtype=torch.float64)
                + 1
            )
            * 127.5
        )
        .round()
        .clamp(0, 255)
    )
    x0 = bins / 127.5 - 1
    model = gaussian_eps_model(np.cumprod(1 - betas), MU, SIGMA)
    result = GaussianDiffusion(torch.from_numpy(betas)).calc_bpd_loop(
        model, x0, clip_denoised=False, generator=generator
    )
    exact_nll = torch.tensor(
        [-log_bin_probability(int(k), MU, SIGMA) / math.log(2) for k in bins.flatten()]
    )
    expected = {}
    for k in sorted(set(bins.flatten().tolist())):
        expected[k] = expected_bound_bits(k / 127.5 - 1, betas)
    expected_prior = torch.tensor([expected[k][0] for k in bins.flatten().tolist()])
    expected_terms = torch.from_numpy(
        np.stack([expected[k][1] for k in bins.flatten().tolist()])
    )
    return num_timesteps, result, exact_nll, expected_prior, expected_terms


def exact_gap_bits(num_timesteps: int) -> float:
    """E_data[expected bound] - H(data), summed over the 256 bins of the discretised N(MU, SIGMA^2)."""
    gap = 0.0
    for k in range(256):
        log_p = log_bin_probability(k, MU, SIGMA)
        if log_p > math.log(1e-300):
            prior, terms = expected_bound_bits(
                k / 127.5 - 1, scaled_linear_betas(num_timesteps)
            )
            gap += math.exp(log_p) * (prior + terms.sum() + log_p / math.log(2))
    return gap


def test_bits_per_dim_bound_is_not_below_the_exact_nll(bound_on_gaussian_data):
    """E[total_bpd] >= E[-log2 p_model(x0)] >= H(data) (the bound, then Gibbs' inequality); the
    measured gap also agrees with the exact one within 5 Monte-Carlo standard errors."""
    num_timesteps, result, exact_nll, _, _ = bound_on_gaussian_data
    gap = result["total_bpd"] - exact_nll
    standard_error = float(gap.std()) / math.sqrt(gap.shape[0])
    exact_gap = exact_gap_bits(num_timesteps)
    print(
        f"T = {num_timesteps}: exact NLL {float(exact_nll.mean()):.4f} bits/dim, bound "
        f"{float(result['total_bpd'].mean()):.4f}, gap {float(gap.mean()):.4f} +- {standard_error:.4f} "
        f"(exact gap {exact_gap:.4f})"
    )
    assert float(gap.mean()) > -4 * standard_error
    assert abs(float(gap.mean()) - exact_gap) < 5 * standard_error


def test_bits_per_dim_terms_have_their_closed_form_expectations(bound_on_gaussian_data):
    """Each sample's total bound, and the per-t terms at a few t, against their exact expectations
    over the noise; the tolerance is 5 Monte-Carlo standard errors of the samples' mean."""
    num_timesteps, result, _, expected_prior, expected_terms = bound_on_gaussian_data
    torch.testing.assert_close(
        result["prior_bpd"], expected_prior, rtol=1e-9, atol=1e-12
    )  # float64
    difference = result["total_bpd"] - expected_prior - expected_terms.sum(dim=1)
    assert abs(float(difference.mean())) < 5 * float(difference.std()) / math.sqrt(
        difference.shape[0]
    )
    for t in (0, 1, num_timesteps // 2, num_timesteps - 1):
        difference = result["vb"][:, t] - expected_terms[:, t]
        assert abs(float(difference.mean())) < 5 * float(difference.std()) / math.sqrt(
            difference.shape[0]
        ), t
