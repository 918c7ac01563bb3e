"""Chapter 09's `flow`, `edm` and `vp_wrappers` modules: conversions on hand-chosen numbers, the
flow-matching loss and its minimiser, flow and EDM samplers on Gaussian data with the exact velocity /
denoiser (written here from their closed forms), parity with diffusers' flow-matching and EDM
schedulers, and DDIM as the Euler step of the flow ODE."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from ddpm_course import edm, flow, vp_wrappers
from ddpm_course.cli import main
from ddpm_course.config import TrainConfig, build_diffusion
from ddpm_course.diffusion import GaussianDiffusion
from ddpm_course.loading import load_model
from ddpm_course.nn import UNet
from ddpm_course.samplers import ddim_sample, ddim_step, respace, timestep_sequence
from ddpm_course.schedules import linear
from ddpm_course.train import Trainer

# Gaussian data N(MU, diag STD^2) in two dimensions, the target of the sampler tests
MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
STD = torch.tensor([0.5, 2.0], dtype=torch.float64)


def exact_velocity(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    r"""E[ε - x0 | x_s = x] for x_s = (1-s) x0 + s ε, x0 ~ N(MU, STD^2), by Gaussian conditioning:
    x_s ~ N((1-s)MU, (1-s)^2 STD^2 + s^2), and the velocity is affine in x,
    v*(x, s) = (s - (1-s) STD^2) / ((1-s)^2 STD^2 + s^2) · (x - (1-s) MU) - MU."""
    variance = (1 - s) ** 2 * STD**2 + s**2
    return (s - (1 - s) * STD**2) / variance * (x - (1 - s) * MU) - MU


def exact_velocity_model(x: torch.Tensor, time_input: torch.Tensor) -> torch.Tensor:
    """exact_velocity called as a flow network is: model(x, 1000·s)."""
    return exact_velocity(x, time_input.to(torch.float64)[:, None] / 1000)


def exact_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    r"""EDM's ideal denoiser for the same data: E[x0 | x0 + σ n = x] = MU + STD^2/(STD^2+σ^2) (x - MU)."""
    sigma = sigma[:, None]
    return MU + STD**2 / (STD**2 + sigma**2) * (x - MU)


def transport(noise: torch.Tensor) -> torch.Tensor:
    """Where the probability-flow ODE of Gaussian data takes a start of (unit) noise z: the marginal
    at every level is MU + scale·z with the same z, so the data end is MU + STD·z."""
    return MU + STD * noise


def gaussian_noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(
        n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


# ------------------------------------------------------------------------------ conversions
def test_conversions_match_hand_values_on_a_vp_point():
    # alpha = 0.6, sigma = 0.8 (alpha_bar = 0.36); x0 = 0.5, eps = -1.5 -> x = 0.3 - 1.2 = -0.9
    alpha, sigma = flow.vp_alpha_sigma(0.36)
    assert (float(alpha), float(sigma)) == pytest.approx((0.6, 0.8), abs=1e-15)
    x, x0, eps = (torch.tensor([v], dtype=torch.float64) for v in (-0.9, 0.5, -1.5))
    v, velocity, score = (
        -1.3,
        -2.0,
        1.875,
    )  # 0.6·(-1.5) - 0.8·0.5;  -1.5 - 0.5;  1.5/0.8
    checks = {
        "x0_from_eps": (flow.x0_from_eps(x, eps, alpha, sigma), 0.5),
        "eps_from_x0": (flow.eps_from_x0(x, x0, alpha, sigma), -1.5),
        "v_from_x0_eps": (flow.v_from_x0_eps(x0, eps, alpha, sigma), v),
        "x0_from_v": (flow.x0_from_v(x, torch.tensor([v], dtype=torch.float64), alpha, sigma), 0.5),
        "eps_from_v": (flow.eps_from_v(x, torch.tensor([v], dtype=torch.float64), alpha, sigma), -1.5),
        "velocity": (flow.velocity_from_x0_eps(x0, eps), velocity),
        "x0_from_velocity": (flow.x0_from_velocity(x, torch.tensor([velocity], dtype=torch.float64), alpha, sigma), 0.5),  # (-0.9 + 1.6)/1.4
        "eps_from_velocity": (flow.eps_from_velocity(x, torch.tensor([velocity], dtype=torch.float64), alpha, sigma), -1.5),  # (-0.9 - 1.2)/1.4
        "score_from_eps": (flow.score_from_eps(eps, sigma), score),
        "eps_from_score": (flow.eps_from_score(torch.tensor([score], dtype=torch.float64), sigma), -1.5),
        "flow_time": (flow.flow_time(alpha, sigma), 4 / 7),  # 0.8 / 1.4
        "flow_state": (flow.flow_state(x, alpha, sigma), -0.9 / 1.4),
        "edm_sigma": (flow.edm_sigma(alpha, sigma), 4 / 3),
        "edm_state": (flow.edm_state(x, alpha), -1.5),
    }  # fmt: skip
    for name, (got, expected) in checks.items():
        assert float(got) == pytest.approx(expected, abs=1e-14), name


def test_conversions_hold_off_the_vp_circle_on_the_flow_path():
    # s = 0.25: alpha = 0.75, sigma = 0.25; x0 = 2, eps = -1 -> x = 1.25, v = -0.75 - 0.5 = -1.25
    alpha, sigma = flow.flow_alpha_sigma(0.25)
    x0, eps = (
        torch.tensor([2.0], dtype=torch.float64),
        torch.tensor([-1.0], dtype=torch.float64),
    )
    x = flow.flow_interpolant(x0, eps, 0.25)
    assert float(x) == pytest.approx(1.25, abs=1e-15)
    v = flow.v_from_x0_eps(x0, eps, alpha, sigma)
    assert float(v) == pytest.approx(-1.25, abs=1e-15)
    # x0 = (0.75·1.25 + 0.25·1.25) / (0.5625 + 0.0625) = 2
    assert float(flow.x0_from_v(x, v, alpha, sigma)) == pytest.approx(2.0, abs=1e-14)
    assert float(flow.eps_from_v(x, v, alpha, sigma)) == pytest.approx(-1.0, abs=1e-14)
    assert float(flow.flow_velocity_target(x0, eps)) == -3.0
    # on the flow path x0 = x - s u and eps = x + (1 - s) u: 1.25 + 0.75 = 2, 1.25 - 2.25 = -1
    for prediction, output in [
        ("eps", eps),
        ("x0", x0),
        ("v", v),
        ("velocity", eps - x0),
    ]:
        got_x0, got_eps = flow.predictions_from_output(
            output, prediction, x, alpha, sigma
        )
        assert (float(got_x0), float(got_eps)) == pytest.approx(
            (2.0, -1.0), abs=1e-14
        ), prediction


def test_conversions_agree_with_gaussian_diffusion_at_integer_t():
    diffusion = GaussianDiffusion(linear(1000))
    generator = torch.Generator().manual_seed(0)
    x0, eps = (
        torch.randn(4, 3, generator=generator, dtype=torch.float64) for _ in range(2)
    )
    t = torch.tensor([0, 10, 500, 999])
    alpha, sigma = flow.vp_alpha_sigma(diffusion.alphas_cumprod[t][:, None])
    x = diffusion.q_sample(x0, t, noise=eps)
    torch.testing.assert_close(x, alpha * x0 + sigma * eps, rtol=0, atol=1e-14)
    v = diffusion.predict_v(x0, t, eps)
    torch.testing.assert_close(
        flow.v_from_x0_eps(x0, eps, alpha, sigma), v, rtol=0, atol=1e-14
    )
    torch.testing.assert_close(
        flow.x0_from_v(x, v, alpha, sigma),
        diffusion.predict_x0_from_v(x, t, v),
        rtol=0,
        atol=1e-12,
    )
    torch.testing.assert_close(
        flow.x0_from_eps(x, eps, alpha, sigma),
        diffusion.predict_x0_from_eps(x, t, eps),
        rtol=0,
        atol=1e-10,
    )
    # and, in addition, round trips through the velocity on random values
    velocity = flow.velocity_from_x0_eps(x0, eps)
    torch.testing.assert_close(
        flow.x0_from_velocity(x, velocity, alpha, sigma), x0, rtol=0, atol=1e-12
    )
    torch.testing.assert_close(
        flow.eps_from_velocity(x, velocity, alpha, sigma), eps, rtol=0, atol=1e-12
    )


# ----------------------------------------------------------------------- the objective
def test_flow_matching_loss_matches_a_hand_computation():
    # T = 4, t = 1 -> s = 1.5/4 = 0.375; x_s = 0.625·1 + 0.375·(-1) = 0.25; target -1 - 1 = -2
    seen = []

    def model(x, time_input):
        seen.append(time_input.clone())
        return 0.5 * x  # predicts 0.125

    losses = flow.FlowMatching(num_timesteps=4).training_losses(
        model, torch.tensor([[1.0]]), torch.tensor([1]), noise=torch.tensor([[-1.0]])
    )
    assert losses["loss"].shape == (1,)
    assert float(losses["mse"]) == pytest.approx((-2 - 0.125) ** 2, abs=1e-6)
    assert float(seen[0]) == pytest.approx(1.5)  # the network sees T·s


def test_a_model_that_knows_x0_gets_zero_loss_only_through_the_right_interpolant_and_time():
    generator = torch.Generator().manual_seed(1)
    x0, noise = (
        torch.randn(6, 2, 4, 4, generator=generator),
        torch.randn(6, 2, 4, 4, generator=generator),
    )
    process = flow.FlowMatching(num_timesteps=1000, time_sampling="logit_normal")
    # u = (x_s - x0)/s is eps - x0 only if x_s = (1-s)x0 + s eps and the time fed is 1000·s
    losses = process.training_losses(
        lambda x_s, time_input: (x_s - x0) / (time_input / 1000)[:, None, None, None],
        x0, torch.tensor([0, 1, 250, 500, 998, 999]), noise=noise,
    )  # fmt: skip
    assert float(losses["loss"].max()) < 1e-8
    zero_model = process.training_losses(
        lambda x_s, t: torch.zeros_like(x_s), x0, torch.tensor([5] * 6), noise=noise
    )
    assert float(zero_model["loss"].min()) > 0.5  # the check above can fail


def test_the_loss_minimiser_over_affine_models_is_the_exact_marginal_velocity():
    # at a fixed s, the minimiser of E|u(x_s) - (eps - x0)|^2 is E[eps - x0 | x_s] = v*(x_s, s)
    process = flow.FlowMatching(num_timesteps=1000)
    t, s = 300, 300.5 / 1000
    n = 40_000
    generator = torch.Generator().manual_seed(2)
    x0 = MU + STD * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    slope = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    offset = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [slope, offset], max_iter=100, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = process.training_losses(
            lambda x, time_input: slope * x + offset,
            x0,
            torch.full((n,), t),
            noise=noise,
        )["loss"].mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    variance = (1 - s) ** 2 * STD**2 + s**2
    exact_slope = (s - (1 - s) * STD**2) / variance
    exact_offset = -exact_slope * (1 - s) * MU - MU
    # least squares on 40k draws: the coefficients' standard errors are below 0.01
    torch.testing.assert_close(slope.detach(), exact_slope, rtol=0, atol=0.03)
    torch.testing.assert_close(offset.detach(), exact_offset, rtol=0, atol=0.03)


def test_logit_normal_time_sampling_is_the_quantile_of_the_logit_normal():
    process = flow.FlowMatching(
        num_timesteps=1000, time_sampling="logit_normal", logit_mean=0.5, logit_std=0.8
    )
    for t in (0, 137, 500, 999):
        u = (t + 0.5) / 1000
        expected = 1 / (1 + math.exp(-(0.5 + 0.8 * NormalDist().inv_cdf(u))))
        assert float(process.continuous_time(torch.tensor([t]))) == pytest.approx(
            expected, rel=1e-12
        )
    logits = torch.logit(process.continuous_time(torch.arange(1000)))
    # the 1000 midpoint quantiles of N(0.5, 0.8^2): mean exact, std within the discretisation
    assert float(logits.mean()) == pytest.approx(0.5, abs=1e-9)
    assert float(logits.std()) == pytest.approx(0.8, abs=0.02)
    uniform = flow.FlowMatching(num_timesteps=4).continuous_time(torch.arange(4))
    assert uniform.tolist() == [0.125, 0.375, 0.625, 0.875]


def _flow_config(tmp_path, **overrides) -> TrainConfig:
    return TrainConfig.from_dict(dict(
        preset="digits", image_size=8, channels=1, timesteps=50, batch_size=8, lr=1e-3, warmup_steps=0,
        max_steps=2, log_every=1, sample_every=0, checkpoint_every=0, precision="fp32", out_dir=str(tmp_path),
        model_overrides=dict(model_channels=8, channel_mults=[1], num_res_blocks=1, attention_resolutions=[], num_groups=4),
        objective="flow", **overrides,
    ))  # fmt: skip


def test_the_flow_objective_builds_a_flow_matching_process_and_checks_its_settings():
    process = build_diffusion(
        TrainConfig.from_preset("fashion-flow", time_sampling="logit_normal")
    )
    assert isinstance(process, flow.FlowMatching)
    assert (process.num_timesteps, process.time_sampling) == (1000, "logit_normal")
    with pytest.raises(ValueError, match="min_snr_gamma=None"):
        TrainConfig.from_preset("fashion-flow", min_snr_gamma=5.0)
    with pytest.raises(ValueError, match="var_type='fixed_small'"):
        TrainConfig.from_preset(
            "fashion-flow", var_type="learned_range", loss_type="hybrid"
        )
    with pytest.raises(ValueError, match="applies to objective 'flow' only"):
        TrainConfig.from_preset("fashion", time_sampling="logit_normal")
    with pytest.raises(ValueError, match="time_sampling"):
        TrainConfig.from_preset("fashion-flow", time_sampling="beta")


def test_a_flow_run_samples_by_flow_euler_and_reloads_as_a_flow_model(tmp_path):
    images = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    config = _flow_config(tmp_path, num_samples=4, sample_steps=3)
    trainer = Trainer(config, dataset=(images, torch.zeros(8, dtype=torch.long)))
    trainer.train()
    grid = trainer.sample(generator=torch.Generator().manual_seed(5))
    model, process, loaded = load_model(tmp_path, device="cpu")
    assert isinstance(process, flow.FlowMatching) and loaded.objective == "flow"
    # three Euler steps of the loaded EMA model from the same noise: the trainer's grid
    expected = flow.flow_sample(
        model, (4, 1, 8, 8), 3, "euler", time_scale=50,
        generator=torch.Generator().manual_seed(5),
    ).clamp(-1, 1)  # fmt: skip
    torch.testing.assert_close(grid, expected, rtol=0, atol=1e-5)
    # the sample command's default sampler for a flow model is flow-Euler
    saved = tmp_path / "samples.pt"
    arguments = ["sample", "--checkpoint", str(tmp_path), "--n", "4", "--steps", "3"]
    arguments += ["--seed", "5", "--device", "cpu", "--out", str(tmp_path / "s.png")]
    assert main([*arguments, "--save-tensor", str(saved)]) == 0
    torch.testing.assert_close(
        torch.load(saved, weights_only=True), (expected + 1) / 2, rtol=0, atol=1e-5
    )


def test_the_trainer_trains_a_flow_model_through_training_losses(tmp_path):
    images = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    trainer = Trainer(
        _flow_config(tmp_path), dataset=(images, torch.zeros(8, dtype=torch.long))
    )
    assert isinstance(trainer.diffusion, flow.FlowMatching)
    times = []
    trainer.train_model.register_forward_pre_hook(
        lambda module, args: times.append(args[1])
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss = trainer.train_step(images)
    assert math.isfinite(loss) and loss > 0
    assert (
        times
        and times[0].is_floating_point()
        and 0 < float(times[0].min()) < float(times[0].max()) < 50
    )
    assert any(
        not torch.equal(a, b)
        for a, b in zip(before, trainer.model.parameters(), strict=True)
    )


# ---------------------------------------------------------------------- the flow samplers
def flow_error(steps: int, method: str) -> float:
    noise = gaussian_noise(2000)
    samples = flow.flow_sample(
        exact_velocity_model,
        (2000, 2),
        steps,
        method,
        x_init=noise,
        dtype=torch.float64,
    )
    return float((samples - transport(noise)).abs().max())


def test_flow_euler_with_many_steps_and_heun_with_few_reach_the_gaussian_target():
    n = 20_000
    for method, steps in [("euler", 200), ("heun", 20)]:
        samples = flow.flow_sample(
            exact_velocity_model, (n, 2), steps, method,
            generator=torch.Generator().manual_seed(3), dtype=torch.float64,
        )  # fmt: skip
        # standard error of the mean STD/sqrt(n) <= 0.014 and of the std STD/sqrt(2n) <= 0.01
        torch.testing.assert_close(samples.mean(0), MU, rtol=0, atol=0.05)
        torch.testing.assert_close(samples.std(0), STD, rtol=0, atol=0.04)
    # each sample lands where the exact ODE takes it: the largest error over 2000 draws (|z| up
    # to about 3.5, scaled by STD up to 2) was 0.052 and 0.012 when written
    assert flow_error(200, "euler") < 0.08
    assert flow_error(20, "heun") < 0.02


def test_heun_is_second_order_and_euler_first_order_on_the_exact_velocity():
    euler = [flow_error(steps, "euler") for steps in (10, 20)]
    heun = [flow_error(steps, "heun") for steps in (10, 20)]
    assert heun[0] < euler[0] / 5
    assert (
        1.6 < euler[0] / euler[1] < 2.5
    )  # halving the step halves a first-order error
    assert 3.0 < heun[0] / heun[1] < 5.0  # and quarters a second-order one


def test_flow_times_are_even_from_one_to_zero_and_shift_towards_noise():
    assert flow.flow_times(4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    shifted = flow.flow_times(2, shift=3.0)  # 3·0.5/(1 + 2·0.5) = 0.75
    assert shifted.tolist() == pytest.approx([1.0, 0.75, 0.0])


# ---------------------------------------------------------------------------------- EDM
def test_edm_sigmas_follow_the_rho_seven_formula_by_hand():
    sigmas = edm.edm_sigmas(10, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    assert sigmas.shape == (11,) and sigmas.dtype == torch.float64
    assert float(sigmas[0]) == pytest.approx(80.0, rel=1e-14)
    assert float(sigmas[9]) == pytest.approx(0.002, rel=1e-12)
    assert float(sigmas[10]) == 0.0
    for i in range(10):
        by_hand = (80 ** (1 / 7) + i / 9 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        assert float(sigmas[i]) == pytest.approx(by_hand, rel=1e-12)
    # (1.8702 + 5/9 · (0.41155 - 1.8702))^7 = 1.05984^7, worked by hand to four digits
    assert float(sigmas[5]) == pytest.approx(1.5017, rel=1e-3)
    assert edm.edm_sigmas(1, 0.002, 80.0).tolist() == [80.0, 0.0]


def test_edm_preconditioning_matches_table_one_by_hand():
    # sigma = 1.2, sigma_data = 0.5: sigma^2 + sigma_data^2 = 1.69 = 1.3^2
    c = edm.edm_preconditioning(1.2, sigma_data=0.5)
    assert float(c.c_skip) == pytest.approx(0.25 / 1.69)
    assert float(c.c_out) == pytest.approx(0.6 / 1.3)
    assert float(c.c_in) == pytest.approx(1 / 1.3)
    assert float(c.c_noise) == pytest.approx(math.log(1.2) / 4)


def edm_error(steps: int, method: str) -> float:
    noise, sigma_max = gaussian_noise(2000), 80.0
    start = (
        MU + (STD**2 + sigma_max**2).sqrt() * noise
    )  # the exact marginal at sigma_max
    samples = edm.edm_sample(
        exact_denoiser,
        (2000, 2),
        steps,
        method,
        sigma_max=sigma_max,
        x_init=start,
        dtype=torch.float64,
    )
    return float((samples - transport(noise)).abs().max())


def test_edm_heun_with_the_exact_denoiser_reaches_the_gaussian_target():
    n = 20_000
    # 18 steps leave a 4% error in the std (0.26 of edm_error below), churn more: the steps
    # here bring each below the tolerance (2.013 deterministic, 2.018 with churn, when written)
    for steps, churn in ((40, 0.0), (80, 20.0)):
        samples = edm.edm_sample(
            exact_denoiser, (n, 2), steps, S_churn=churn, S_tmin=0.05, S_tmax=50.0,
            generator=torch.Generator().manual_seed(4), dtype=torch.float64,
        )  # fmt: skip
        torch.testing.assert_close(samples.mean(0), MU, rtol=0, atol=0.05)
        torch.testing.assert_close(samples.std(0), STD, rtol=0, atol=0.04)
    # Heun's error is a quarter when the steps double, Euler's a half (0.26 -> 0.058 and
    # 0.91 -> 0.46 over 2000 draws when written)
    heun, euler = edm_error(18, "heun"), edm_error(18, "euler")
    assert heun < euler / 3
    assert heun / edm_error(36, "heun") > 3.0
    assert euler / edm_error(36, "euler") < 2.5


def test_a_vp_eps_model_as_denoiser_is_the_exact_denoiser_of_its_data(
    gaussian_eps_model,
):
    alphas_cumprod = np.cumprod(
        1 - np.linspace(1e-4, 0.02, 1000)
    )  # linear betas, by hand
    model = gaussian_eps_model(
        alphas_cumprod, 0.5, 1.5
    )  # the exact eps of N(0.5, 1.5^2) data
    denoiser = vp_wrappers.VPDenoiser(
        model, GaussianDiffusion(linear(1000)), quantize=True
    )
    sigma_t = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
    assert denoiser.sigma_min == pytest.approx(
        sigma_t[0]
    ) and denoiser.sigma_max == pytest.approx(sigma_t[-1])
    t = torch.tensor([0, 40, 400, 999])
    sigma = torch.from_numpy(sigma_t)[t]
    assert torch.equal(denoiser.timestep(sigma), t)
    x = (
        torch.randn(
            4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64
        )
        * 3
    )
    expected = 0.5 + 1.5**2 / (1.5**2 + sigma[:, None] ** 2) * (x - 0.5)
    torch.testing.assert_close(denoiser(x, sigma), expected, rtol=0, atol=1e-10)
    # halfway between two steps in log sigma, the interpolated t is halfway too
    between = torch.from_numpy(np.sqrt(sigma_t[[399]] * sigma_t[[400]]))
    assert float(
        vp_wrappers.VPDenoiser(model, GaussianDiffusion(linear(1000))).timestep(between)
    ) == pytest.approx(399.5)
    samples = edm.edm_sample(
        denoiser, (20_000, 1), 40, sigma_min=denoiser.sigma_min, sigma_max=denoiser.sigma_max,
        generator=torch.Generator().manual_seed(6), dtype=torch.float64,
    )  # fmt: skip
    assert float(samples.mean()) == pytest.approx(0.5, abs=0.05)
    assert float(samples.std()) == pytest.approx(1.5, abs=0.05)


def test_the_denoiser_of_a_v_or_x0_model_is_that_of_the_same_eps_model(
    toy_noise_predictor,
):
    eps_diffusion = GaussianDiffusion(linear(1000))
    eps_model = toy_noise_predictor.double()

    def as_objective(
        objective,
    ):  # the same predictor re-expressed by GaussianDiffusion's tables
        def model(x, t):
            eps = eps_model(x, t)
            x0 = eps_diffusion.predict_x0_from_eps(x, t, eps)
            return x0 if objective == "x0" else eps_diffusion.predict_v(x0, t, eps)

        return model

    x = torch.randn(
        3, 3, 8, 8, generator=torch.Generator().manual_seed(11), dtype=torch.float64
    )
    # at the trained levels (off them, a model of each objective is read at the nearest step
    # with the true sigma, and the three differ by that step's error)
    alphas_cumprod = eps_diffusion.alphas_cumprod[[10, 400, 900]]
    sigma = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    expected = vp_wrappers.VPDenoiser(eps_model, eps_diffusion, quantize=True)(x, sigma)
    for objective in ("x0", "v"):
        diffusion = GaussianDiffusion(linear(1000), objective=objective)
        denoiser = vp_wrappers.VPDenoiser(
            as_objective(objective), diffusion, quantize=True
        )
        torch.testing.assert_close(denoiser(x, sigma), expected, rtol=0, atol=1e-9)


def test_a_respaced_process_is_called_at_its_trained_timesteps():
    diffusion = GaussianDiffusion(linear(1000))
    respaced = respace(diffusion, 10)  # trained t 99, 199, ..., 999 (trailing)
    kept = respaced.timestep_map
    sigma = (
        (1 - diffusion.alphas_cumprod[kept]) / diffusion.alphas_cumprod[kept]
    ).sqrt()
    denoiser = vp_wrappers.VPDenoiser(lambda x, t: x, respaced)
    torch.testing.assert_close(
        denoiser.timestep(sigma), kept.double(), rtol=0, atol=1e-9
    )
    halfway = (sigma[3] * sigma[4]).sqrt()  # between trained 399 and 499 in log sigma
    assert float(denoiser.timestep(halfway[None])) == pytest.approx(449.0)


# ---------------------------------------------------------------------- DDIM = flow Euler
def tiny_unet() -> UNet:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = UNet(image_size=8, in_channels=1, model_channels=8, channel_mults=[1, 2], num_res_blocks=1,
                   attention_resolutions=[], num_groups=4)  # fmt: skip
        for p in (
            net.parameters()
        ):  # the output convolution starts at zero: make it say something
            p.data.add_(0.05 * torch.randn_like(p))
    return net.double().eval().requires_grad_(False)


@pytest.mark.parametrize("net", ["toy", "unet"])
def test_one_ddim_step_is_one_euler_step_of_the_flow_ode(net, toy_noise_predictor):
    diffusion = GaussianDiffusion(linear(1000))
    if net == "toy":  # integer t only: the exact step's t is found by rounding
        model, shape, quantize = toy_noise_predictor.double(), (2, 3, 8, 8), True
    else:  # a float t, interpolated in log sigma, lands on the trained step to rounding
        model, shape, quantize = tiny_unet(), (2, 1, 8, 8), False
    x_t = torch.randn(
        shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64
    )
    t, t_prev = 600, 400
    p = diffusion.p_mean_variance(model, x_t, torch.tensor([t, t]), clip_denoised=False)
    alpha_bar, alpha_bar_prev = (
        diffusion.alphas_cumprod[t],
        diffusion.alphas_cumprod[t_prev],
    )
    x_prev = ddim_step(p.pred_x0, p.pred_eps, alpha_bar, alpha_bar_prev, eta=0.0)

    alpha, sigma = flow.vp_alpha_sigma(alpha_bar)
    alpha_prev, sigma_prev = flow.vp_alpha_sigma(alpha_bar_prev)
    s, s_prev = flow.flow_time(alpha, sigma), flow.flow_time(alpha_prev, sigma_prev)
    velocity_model = vp_wrappers.VPVelocity(model, diffusion, quantize=quantize)
    z = flow.flow_state(x_t, alpha, sigma)
    velocity = velocity_model(z, torch.full((2,), 1000 * float(s), dtype=torch.float64))
    z_prev = flow.euler_step(z, velocity, s, s_prev)
    atol = (
        1e-12 if net == "toy" else 1e-9
    )  # the U-Net's float32 time embedding of t ± 1e-10
    torch.testing.assert_close(
        (alpha_prev + sigma_prev) * z_prev, x_prev, rtol=0, atol=atol
    )
    assert float((x_prev - x_t).abs().max()) > 0.1  # a real step


@pytest.mark.parametrize("clip_denoised", [False, True])
def test_ddim_sampling_is_flow_euler_sampling_of_the_wrapped_model_on_the_matched_grid(
    clip_denoised, toy_noise_predictor
):
    diffusion, steps, shape = GaussianDiffusion(linear(1000)), 10, (2, 3, 8, 8)
    model = toy_noise_predictor.double()
    x_T = torch.randn(
        shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64
    )
    ddim = ddim_sample(
        model,
        diffusion,
        shape,
        steps,
        eta=0.0,
        x_T=x_T,
        clip_denoised=clip_denoised,
        dtype=torch.float64,
    )
    timesteps = timestep_sequence(1000, steps)
    times = vp_wrappers.vp_flow_times(diffusion, timesteps)
    x_init = flow.flow_state(
        x_T, *flow.vp_alpha_sigma(diffusion.alphas_cumprod[timesteps[0]])
    )
    velocity_model = vp_wrappers.VPVelocity(
        model, diffusion, quantize=True, clip_denoised=clip_denoised
    )
    flowed = flow.flow_sample(
        velocity_model,
        shape,
        steps,
        "euler",
        times=times,
        x_init=x_init,
        dtype=torch.float64,
    )
    torch.testing.assert_close(flowed, ddim, rtol=0, atol=1e-10)


# ------------------------------------------------------------------- parity with diffusers
def test_flow_euler_step_and_loop_match_diffusers_flow_match_euler_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(8)
    sigmas = scheduler.sigmas.double()
    # diffusers feeds the network 1000·sigma, our time_scale·s
    torch.testing.assert_close(
        scheduler.timesteps.double(), 1000 * sigmas[:-1], rtol=1e-6, atol=0
    )
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 4, 4, generator=generator)
    theirs = x.clone()
    for i, timestep in enumerate(scheduler.timesteps):
        output = torch.randn(2, 3, 4, 4, generator=generator)
        expected = scheduler.step(output, timestep, theirs).prev_sample
        ours = flow.euler_step(theirs, output, sigmas[i], sigmas[i + 1])
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
        theirs = expected

    def velocity_model(sample, time_input):  # a smooth stand-in for a network
        return (
            torch.tanh(sample) * (time_input / 1000)[:, None, None, None] - 0.3 * sample
        )

    scheduler.set_timesteps(8)
    theirs = x.clone()
    for timestep in scheduler.timesteps:
        theirs = scheduler.step(
            velocity_model(theirs, timestep.expand(2)), timestep, theirs
        ).prev_sample
    ours = flow.flow_sample(
        velocity_model, (2, 3, 4, 4), 8, "euler", times=sigmas, x_init=x
    )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_edm_sigmas_preconditioning_and_euler_step_match_diffusers_edm_euler_scheduler():
    from diffusers import EDMEulerScheduler

    scheduler = EDMEulerScheduler(
        sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0
    )
    scheduler.set_timesteps(12)
    ours_sigmas = edm.edm_sigmas(12, 0.002, 80.0, 7.0)
    torch.testing.assert_close(
        scheduler.sigmas.double(), ours_sigmas, rtol=1e-6, atol=0
    )
    sigmas = scheduler.sigmas.double()
    generator = torch.Generator().manual_seed(10)
    x = torch.randn(2, 3, 4, 4, generator=generator) * 80
    coefficients = edm.edm_preconditioning(sigmas[:-1])
    torch.testing.assert_close(
        scheduler.timesteps.double(), coefficients.c_noise, rtol=0, atol=1e-6
    )
    theirs = x.clone()
    for i, timestep in enumerate(scheduler.timesteps):
        sigma = float(sigmas[i])
        c = edm.edm_preconditioning(sigma)
        torch.testing.assert_close(
            scheduler.precondition_inputs(theirs, scheduler.sigmas[i]),
            float(c.c_in) * theirs,
        )
        output = torch.randn(2, 3, 4, 4, generator=generator)
        denoised = float(c.c_skip) * theirs + float(c.c_out) * output
        torch.testing.assert_close(
            scheduler.precondition_outputs(theirs, output, scheduler.sigmas[i]),
            denoised,
        )
        expected = scheduler.step(output, timestep, theirs).prev_sample
        ours = flow.euler_step(
            theirs, edm.edm_slope(theirs, denoised, sigma), sigma, sigmas[i + 1]
        )
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
        theirs = expected

    def network(scaled, c_noise):  # F(c_in x; c_noise), a smooth stand-in
        return torch.sin(scaled) + 0.1 * c_noise.float()[:, None, None, None]

    scheduler.set_timesteps(12)
    theirs = x.clone()
    for timestep in scheduler.timesteps:
        scaled = scheduler.scale_model_input(theirs, timestep)
        theirs = scheduler.step(
            network(scaled, timestep.expand(2)), timestep, theirs
        ).prev_sample
    ours = edm.edm_sample(
        edm.EDMPrecond(network), (2, 3, 4, 4), 12, "euler", sigmas=sigmas, x_init=x
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: flow.FlowMatching(time_sampling="beta"), ["time_sampling", "logit_normal"]),
        (lambda: flow.FlowMatching(num_timesteps=0), ["num_timesteps", "positive"]),
        (lambda: flow.FlowMatching(logit_std=0.0), ["logit_std", "> 0"]),
        (lambda: flow.FlowMatching().training_losses(lambda x, t: x, torch.zeros(2, 1), torch.tensor([0, 1]), loss_type="vlb"), ["loss_type", "'simple'"]),
        (lambda: flow.FlowMatching().training_losses(lambda x, t: x, torch.zeros(2, 1), torch.tensor([0, 1]), min_snr_gamma=5.0), ["min_snr_gamma", "None"]),
        (lambda: flow.FlowMatching(num_timesteps=10).training_losses(lambda x, t: x, torch.zeros(2, 1), torch.tensor([0, 10])), ["timesteps", "0, ..., 9"]),
        (lambda: flow.FlowMatching().training_losses(lambda x, t: x[:, :1], torch.zeros(2, 3)), ["velocity model returned shape", "(2, 3)"]),
        (lambda: flow.flow_sample(exact_velocity_model, (2, 2), 4, "rk4"), ["method", "'heun'"]),
        (lambda: flow.flow_sample(exact_velocity_model, (2, 2), 4, times=[1.0, 0.5, 0.0]), ["times", "steps + 1 = 5"]),
        (lambda: flow.flow_sample(exact_velocity_model, (2, 2), 2, times=[0.0, 0.5, 1.0]), ["times", "decrease"]),
        (lambda: flow.flow_sample(exact_velocity_model, (2, 2), 1, times=[2.0, 0.0]), ["times", "[0, 1]"]),
        (lambda: flow.flow_sample(exact_velocity_model, (2, 2), 0), ["steps", "positive integer"]),
        (lambda: flow.flow_times(4, shift=0.0), ["shift", "> 0"]),
        (lambda: edm.edm_sigmas(10, sigma_min=90.0, sigma_max=80.0), ["sigma_min", "sigma_max"]),
        (lambda: edm.edm_sample(exact_denoiser, (2, 2), 4, S_churn=-1.0), ["S_churn", ">= 0"]),
        (lambda: edm.edm_preconditioning(1.0, sigma_data=0.0), ["sigma_data", "> 0"]),
        (lambda: flow.predictions_from_output(torch.zeros(1), "score", torch.zeros(1), 0.6, 0.8), ["prediction", "'velocity'"]),
        (lambda: vp_wrappers.VPVelocity(lambda x, t: x, GaussianDiffusion(linear(100)))(torch.zeros(1, 2), torch.tensor([1000.0])), ["s_max", "vp_flow_times"]),
        (lambda: vp_wrappers.vp_flow_times(GaussianDiffusion(linear(100)), [10, 50]), ["timesteps", "decreasing"]),
    ],
)  # fmt: skip
def test_bad_input_names_the_argument_and_what_to_do(call, words):
    with pytest.raises(ValueError) as error:
        call()
    for word in words:
        assert word in str(error.value)


# ------------------------------------------------------------ the sampler front door (ch. 09)
@pytest.mark.parametrize("clip_denoised", [False, True])
def test_front_door_flow_euler_on_a_vp_model_is_ddim(
    clip_denoised, toy_noise_predictor
):
    from ddpm_course.samplers import sample

    diffusion, shape = GaussianDiffusion(linear(1000)), (2, 3, 8, 8)
    model = toy_noise_predictor.double()
    draws = {}
    for name in ("ddim", "flow-euler"):
        draws[name] = sample(
            name, model, diffusion, shape, steps=10, clip_denoised=clip_denoised,
            generator=torch.Generator().manual_seed(3), dtype=torch.float64,
        )  # fmt: skip
    torch.testing.assert_close(draws["flow-euler"], draws["ddim"], rtol=0, atol=1e-9)


class _RoundedTime(torch.nn.Module):
    """The toy ε-model at the nearest trained step of a float t (EDM visits off-grid σ)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, torch.as_tensor(t).round().long())


def test_front_door_edm_heun_is_edm_sample_of_the_vp_denoiser(toy_noise_predictor):
    from ddpm_course.samplers import sample

    diffusion, shape = GaussianDiffusion(linear(1000)), (2, 3, 8, 8)
    model = _RoundedTime(toy_noise_predictor.double())
    x_T = torch.randn(
        shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )
    got = sample(
        "edm-heun", model, diffusion, shape, steps=6, x_T=x_T, dtype=torch.float64
    )
    denoiser = vp_wrappers.VPDenoiser(model, diffusion, clip_denoised=True)
    sigma_max = min(80.0, denoiser.sigma_max)
    # the VP model's largest sigma (t = 999 of the linear schedule) is about 157: EDM's 80 rules
    assert sigma_max == 80.0 and denoiser.sigma_min == pytest.approx(0.01, rel=0.01)
    expected = edm.edm_sample(
        denoiser, shape, 6, sigma_min=denoiser.sigma_min, sigma_max=80.0,
        x_init=80.0 * x_T, dtype=torch.float64,
    )  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_front_door_refuses_eta_outside_ddim_and_vp_samplers_on_a_flow_model():
    from ddpm_course.samplers import sample

    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(
        ValueError, match="only the ddim sampler takes eta: eta must be 0"
    ):
        sample(
            "flow-heun", model, GaussianDiffusion(linear(100)), (1, 1, 2, 2), eta=1.0
        )
    with pytest.raises(
        ValueError,
        match="FlowMatching samples with .*flow-euler.*flow-heun.*consistency",
    ):
        sample("ddim", model, flow.FlowMatching(100), (1, 1, 2, 2))
