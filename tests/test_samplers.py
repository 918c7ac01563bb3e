"""The samplers against closed forms: the step functions' identities, the Gaussian case, inversion,
slerp and the default spacing. (Parity with diffusers' schedulers: tests/test_parity_diffusers.py.)

The Gaussian case: for data N(mu, s^2) per pixel and the exact noise predictor (conftest), every
deterministic step is affine in x. Writing a = sqrt(abar), b = sqrt(1 - abar), the exact predictions
are x0_hat - mu = w (x - a mu) with w = a s^2 / (a^2 s^2 + b^2), and a sampler's output is
mu + c (x_T - a_T mu) with a c that the tests below compute by their own recursions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm_course.commands import sample as sample_command
from ddpm_course.diffusion import GaussianDiffusion
from ddpm_course.samplers import (
    DEFAULT_SPACING,
    SPACINGS,
    ddim_inversion_step,
    ddim_invert,
    ddim_sample,
    ddim_sigma,
    ddim_step,
    ddpm_sample,
    ddpm_step,
    dpm_solver_2m_step,
    dpm_solver_sample,
    respace,
    sample,
    slerp,
    timestep_sequence,
)
from ddpm_course.schedules import NoiseSchedule

T = 1000
MU, STD = 0.3, 0.5
F64 = dict(
    rtol=1e-10, atol=1e-12
)  # float64 evaluations of one formula written two ways


def randn(*shape, seed):
    return torch.randn(
        shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


@pytest.fixture
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(NoiseSchedule.from_name("linear", T))


@pytest.fixture
def exact_model(gaussian_eps_model, diffusion):
    return gaussian_eps_model(diffusion.alphas_cumprod.numpy(), MU, STD)


def wiener_weight(alpha_bar: float) -> float:
    """w of x0_hat - mu = w (x - a mu) for the exact predictor of N(mu, s^2) data."""
    a2, b2 = alpha_bar, 1 - alpha_bar
    return math.sqrt(a2) * STD**2 / (a2 * STD**2 + b2)


# ------------------------------------------------------------------------ defaults
def test_trailing_is_the_default_spacing_everywhere_and_starts_at_T_minus_1(diffusion):
    assert DEFAULT_SPACING == "trailing"
    assert (sample_command.SPACINGS, sample_command.DEFAULT_SPACING) == (
        SPACINGS,
        DEFAULT_SPACING,
    )
    for steps in (1, 5, 10, 50):
        assert int(timestep_sequence(T, steps)[0]) == T - 1
    assert int(respace(diffusion, 5).timestep_map[-1]) == T - 1


def test_the_command_lines_name_the_samplers_of_the_front_door():
    """``--sampler`` and ``--samplers`` are written out in commands/ (``--help`` imports no
    torch); they must be the names that samplers.sample and the NFE sweep know."""
    from ddpm_course.commands import nfe as nfe_command
    from ddpm_course.experiments import nfe_sweep
    from ddpm_course.samplers import SAMPLERS

    assert sample_command.SAMPLERS == SAMPLERS
    assert nfe_command.SAMPLERS == nfe_sweep.SAMPLERS
    assert {name for name, _ in nfe_sweep.SWEPT.values()} <= set(SAMPLERS)


def test_the_front_door_is_each_sampler_with_its_arguments(diffusion):
    """samplers.sample(name, ...) is the named loop called with the same arguments (ddpm on the
    process respaced to ``steps``); dpm-solver refuses an eta it would ignore."""
    model = lambda x, t: 0.1 * x  # noqa: E731 - any callable model works
    shape, seed = (2, 1, 4, 4), 3

    def generator():
        return torch.Generator().manual_seed(seed)

    pairs = [
        (sample("ddpm", model, diffusion, shape, steps=7, generator=generator()),
         ddpm_sample(model, respace(diffusion, 7), shape, generator=generator())),
        (sample("ddim", model, diffusion, shape, steps=7, eta=0.5, spacing="leading",
                generator=generator()),
         ddim_sample(model, diffusion, shape, steps=7, eta=0.5, spacing="leading",
                     generator=generator())),
        (sample("dpm-solver", model, diffusion, shape, steps=7, generator=generator()),
         dpm_solver_sample(model, diffusion, shape, steps=7, generator=generator())),
    ]  # fmt: skip
    for got, expected in pairs:
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="eta must be 0"):
        sample("dpm-solver", model, diffusion, shape, steps=7, eta=0.5)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample("euler", model, diffusion, shape)


# -------------------------------------------------------------------- step identities
def test_ddim_sigma_at_eta_1_is_the_posterior_std():
    alpha_bar_t, alpha_bar_prev = 0.3, 0.6
    beta = 1 - alpha_bar_t / alpha_bar_prev
    posterior_variance = beta * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
    assert float(ddim_sigma(alpha_bar_t, alpha_bar_prev, 1.0)) == pytest.approx(
        math.sqrt(posterior_variance), rel=1e-14
    )
    assert float(ddim_sigma(alpha_bar_t, alpha_bar_prev, 0.0)) == 0.0


def test_ddim_step_at_eta_1_is_the_ddpm_step():
    """With eps_hat consistent with (x_t, x0_hat), DDIM's eta = 1 mean is the posterior mean."""
    alpha_bar_t, alpha_bar_prev = 0.3, 0.6
    x_t, pred_x0, noise = randn(4, 3, seed=0), randn(4, 3, seed=1), randn(4, 3, seed=2)
    pred_eps = (x_t - math.sqrt(alpha_bar_t) * pred_x0) / math.sqrt(1 - alpha_bar_t)
    ddim = ddim_step(
        pred_x0, pred_eps, alpha_bar_t, alpha_bar_prev, eta=1.0, noise=noise
    )
    ddpm = ddpm_step(x_t, pred_x0, alpha_bar_t, alpha_bar_prev, noise=noise)
    torch.testing.assert_close(ddim, ddpm, **F64)


def test_first_order_dpm_solver_step_is_the_ddim_step():
    alpha_bar_s, alpha_bar_t = 0.2, 0.7
    x_s, pred_x0 = randn(5, 2, seed=3), randn(5, 2, seed=4)
    pred_eps = (x_s - math.sqrt(alpha_bar_s) * pred_x0) / math.sqrt(1 - alpha_bar_s)
    torch.testing.assert_close(
        dpm_solver_2m_step(x_s, pred_x0, alpha_bar_s, alpha_bar_t),
        ddim_step(pred_x0, pred_eps, alpha_bar_s, alpha_bar_t),
        **F64,
    )


def test_second_order_dpm_solver_step_equals_first_order_for_a_constant_x0():
    """For a constant x0 prediction the exponential integrator is exact at any order: D = x0
    whatever r is, so the second-order step equals the first-order one."""
    alpha_bar_previous, alpha_bar_s, alpha_bar_t = 0.1, 0.2, 0.7
    x_s, pred_x0 = randn(3, 4, seed=5), randn(3, 4, seed=6)
    second = dpm_solver_2m_step(
        x_s, pred_x0, alpha_bar_s, alpha_bar_t, pred_x0, alpha_bar_previous
    )
    first = dpm_solver_2m_step(x_s, pred_x0, alpha_bar_s, alpha_bar_t)
    torch.testing.assert_close(second, first, **F64)


def test_dpm_solver_2m_combination_weights_the_two_predictions_by_r():
    """D = (1 + 1/(2r)) x0_s - 1/(2r) x0_prev with r = h_prev / h; checked in lambda directly."""
    abar = {"previous": 0.1, "s": 0.2, "t": 0.7}
    lam = {k: 0.5 * math.log(v / (1 - v)) for k, v in abar.items()}
    h, h_previous = lam["t"] - lam["s"], lam["s"] - lam["previous"]
    x_s, x0_s, x0_previous = (
        randn(2, 3, seed=7),
        randn(2, 3, seed=8),
        randn(2, 3, seed=9),
    )
    data = (1 + h / (2 * h_previous)) * x0_s - h / (2 * h_previous) * x0_previous
    expected = (
        math.sqrt((1 - abar["t"]) / (1 - abar["s"])) * x_s
        - math.sqrt(abar["t"]) * math.expm1(-h) * data
    )
    ours = dpm_solver_2m_step(
        x_s, x0_s, abar["s"], abar["t"], x0_previous, abar["previous"]
    )
    torch.testing.assert_close(ours, expected, **F64)


def test_ddim_inversion_step_undoes_a_ddim_step_with_the_same_eps():
    alpha_bar_t, alpha_bar_next = 0.8, 0.3
    x_t, eps = randn(4, 5, seed=10), randn(4, 5, seed=11)
    x_next = ddim_inversion_step(x_t, eps, alpha_bar_t, alpha_bar_next)
    pred_x0 = (x_next - math.sqrt(1 - alpha_bar_next) * eps) / math.sqrt(alpha_bar_next)
    torch.testing.assert_close(
        ddim_step(pred_x0, eps, alpha_bar_next, alpha_bar_t), x_t, **F64
    )


def test_step_functions_keep_the_data_dtype_with_float64_alpha_bar_tensors():
    x = torch.randn(2, 1, 3, 3)
    alpha_bar = torch.tensor([0.3, 0.5], dtype=torch.float64).reshape(2, 1, 1, 1)
    assert ddim_step(x, x, alpha_bar, 0.9).dtype == torch.float32
    assert ddpm_step(x, x, alpha_bar, 0.9, noise=x).dtype == torch.float32
    assert ddim_inversion_step(x, x, alpha_bar, 0.1).dtype == torch.float32
    assert dpm_solver_2m_step(x, x, alpha_bar, 0.9, x, 0.1).dtype == torch.float32


# ------------------------------------------------------------------- the Gaussian case
def deterministic_gain(sampler: str, alpha_bars: list[float]) -> float:
    """c of output = mu + c (x_T - a_T mu) for DDIM (eta = 0) or DPM-Solver++(2M) visiting
    ``alpha_bars`` (decreasing noise, then 1), with the exact predictor; by the affine recursion."""
    gain, previous = 1.0, None  # deviation x_k - a_k mu = gain * (x_T - a_T mu)
    levels = alpha_bars + [1.0]
    for k in range(len(alpha_bars)):
        ab, ab_next = levels[k], levels[k + 1]
        a, b, a_next, b_next = (
            math.sqrt(ab),
            math.sqrt(1 - ab),
            math.sqrt(ab_next),
            math.sqrt(1 - ab_next),
        )
        x0_gain = wiener_weight(ab) * gain  # x0_hat - mu
        if sampler == "ddim":
            eps_gain = (
                gain - a * x0_gain
            ) / b  # eps_hat = (x - a x0_hat) / b, on deviations
            gain_next = a_next * x0_gain + b_next * eps_gain
        else:
            lam = 0.5 * math.log(ab / (1 - ab))
            h = (
                0.5 * math.log(ab_next / (1 - ab_next)) if ab_next < 1 else math.inf
            ) - lam
            if previous is None or ab_next == 1.0:
                data = x0_gain
            else:
                r = (lam - previous[1]) / h
                data = (1 + 0.5 / r) * x0_gain - 0.5 / r * previous[0]
            gain_next = (b_next / b) * gain - a_next * math.expm1(-h) * data
            previous = (x0_gain, lam)
        gain = gain_next
    return gain


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
@pytest.mark.parametrize("steps", [3, 10])
def test_deterministic_samplers_are_the_affine_map_of_the_closed_form(
    sampler, steps, diffusion, exact_model
):
    x_T = randn(2, 1, 4, 4, seed=12)
    run = ddim_sample if sampler == "ddim" else dpm_solver_sample
    ours = run(
        exact_model,
        diffusion,
        x_T.shape,
        steps=steps,
        x_T=x_T,
        clip_denoised=False,
        dtype=torch.float64,
    )
    timesteps = timestep_sequence(T, steps).tolist()
    alpha_bars = [float(diffusion.alphas_cumprod[t]) for t in timesteps]
    gain = deterministic_gain(sampler, alpha_bars)
    expected = MU + gain * (x_T - math.sqrt(alpha_bars[0]) * MU)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-10)


def test_few_step_ddim_shrinks_the_variance_and_many_steps_do_not(diffusion):
    """Exact ODE: Var(x_0) = s^2 when x_T ~ N(a_T mu, a_T^2 s^2 + b_T^2). A DDIM step multiplies
    the exact variance by cos^2 of the angle between (a s, b) and (a' s, b') (Cauchy-Schwarz), so few
    steps shrink it, and 1000 steps recover s^2 to within 1%."""
    start = float(diffusion.alphas_cumprod[T - 1])
    exact_start_variance = start * STD**2 + 1 - start
    variance = {}
    for steps in (2, 5, 1000):
        alpha_bars = [
            float(diffusion.alphas_cumprod[t]) for t in timestep_sequence(T, steps)
        ]
        variance[steps] = (
            deterministic_gain("ddim", alpha_bars) ** 2 * exact_start_variance
        )
    assert variance[2] < variance[5] < variance[1000]
    assert variance[2] < 0.8 * STD**2
    assert variance[1000] == pytest.approx(STD**2, rel=0.01)


def test_respaced_ddpm_variance_matches_its_recursion_on_samples(
    diffusion, exact_model
):
    """Stochastic steps: Var' = f^2 Var + sigma^2 with f = (a' a s^2 + b b_dir) / (a^2 s^2 + b^2),
    b_dir = sqrt(b'^2 - sigma^2). 20,000 pixels: the sample variance is within 5 standard errors
    (sqrt(2/n) relative)."""
    respaced = respace(diffusion, 5)
    x_T = randn(20_000, 1, 1, 1, seed=13)
    # the exact predictor reads the trained t, which the respaced process passes (timestep_map)
    samples = ddpm_sample(
        exact_model,
        respaced,
        x_T.shape,
        x_T=x_T,
        clip_denoised=False,
        generator=torch.Generator().manual_seed(14),
        dtype=torch.float64,
    )
    levels = [float(a) for a in respaced.alphas_cumprod.flip(0)] + [1.0]
    variance = (
        1.0  # x_T ~ N(0, 1); track Var(x - a mu) (the mean offset a_T mu is ~0.002 mu)
    )
    for ab, ab_next in zip(levels[:-1], levels[1:], strict=True):
        a, b, a_next, b_next = (
            math.sqrt(ab),
            math.sqrt(1 - ab),
            math.sqrt(ab_next),
            math.sqrt(1 - ab_next),
        )
        sigma2 = float(ddim_sigma(ab, ab_next, 1.0)) ** 2 if ab_next < 1 else 0.0
        b_dir = math.sqrt(max(b_next**2 - sigma2, 0.0))
        f = (a_next * a * STD**2 + b_dir * b) / (a**2 * STD**2 + b**2)
        variance = f**2 * variance + sigma2
    measured = float(samples.var())
    assert abs(measured - variance) < 5 * math.sqrt(2 / x_T.numel()) * variance


# --------------------------------------------------------------------------- inversion
def test_ddim_inversion_round_trip_error_shrinks_with_steps(diffusion, exact_model):
    x0 = randn(8, 1, 4, 4, seed=15).clamp(-1, 1).float()
    model = exact_model
    errors = []
    for steps in (5, 20, 100):
        x_T = ddim_invert(model, diffusion, x0, steps=steps)
        back = ddim_sample(
            model, diffusion, x0.shape, steps=steps, x_T=x_T, clip_denoised=False
        )
        errors.append(float((back - x0).abs().max()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05


# ------------------------------------------------------------------------------- slerp
def test_slerp_ends_at_its_inputs_and_keeps_the_norm_between_orthogonal_vectors():
    x0 = torch.tensor([[3.0, 0.0]], dtype=torch.float64)
    x1 = torch.tensor([[0.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(slerp(x0, x1, 0.0), x0, **F64)
    torch.testing.assert_close(slerp(x0, x1, 1.0), x1, **F64)
    middle = slerp(x0, x1, 0.5)
    torch.testing.assert_close(
        middle,
        torch.tensor([[3 / math.sqrt(2), 3 / math.sqrt(2)]], dtype=torch.float64),
        **F64,
    )
    angle = slerp(x0, x1, 1 / 3)
    torch.testing.assert_close(
        angle,
        3
        * torch.tensor(
            [[math.cos(math.pi / 6), math.sin(math.pi / 6)]], dtype=torch.float64
        ),
        **F64,
    )


def test_slerp_of_parallel_inputs_is_the_straight_line():
    x0 = torch.ones(2, 3)
    torch.testing.assert_close(slerp(x0, 2 * x0, 0.25), 1.25 * x0)
    assert not torch.isnan(slerp(x0, x0, 0.5)).any()


def test_slerp_of_gaussian_draws_stays_near_the_sqrt_d_shell_where_the_line_does_not():
    d = 4096
    x0, x1 = randn(16, d, seed=16), randn(16, d, seed=17)
    spherical = slerp(x0, x1, 0.5).norm(dim=1) / math.sqrt(d)
    straight = (0.5 * (x0 + x1)).norm(dim=1) / math.sqrt(d)
    np.testing.assert_allclose(
        spherical.numpy(), 1.0, atol=0.05
    )  # norms of N(0, I_d): 1 ± 0.011
    np.testing.assert_allclose(straight.numpy(), 1 / math.sqrt(2), atol=0.05)
