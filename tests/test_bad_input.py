"""Wrong input raises a ValueError whose message says what is allowed."""

from __future__ import annotations

import pytest
import torch

from ddpm_course.diffusion import GaussianDiffusion
from ddpm_course.samplers import (
    ddim_invert,
    ddim_sample,
    ddim_sigma,
    ddim_step,
    ddpm_sample,
    dpm_solver_sample,
    respace,
    timestep_sequence,
)
from ddpm_course.schedules import NoiseSchedule, get_betas

T = 50


@pytest.fixture
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(NoiseSchedule.from_name("linear", T))


def identity_model(x, t):
    return x


def x(n: int = 2) -> torch.Tensor:
    return torch.zeros(n, 1, 4, 4)


@pytest.mark.parametrize("t", [torch.tensor([0, T]), torch.tensor([-1, 3]), T])
def test_timestep_outside_0_to_T_minus_1_is_refused(diffusion, t):
    with pytest.raises(ValueError, match=r"timesteps must lie in \{0, \.\.\., 49\}"):
        diffusion.q_sample(x(), t)


@pytest.mark.parametrize(
    "call", ["q_sample", "q_posterior", "p_mean_variance", "training_losses"]
)
def test_float_timesteps_are_refused(diffusion, call):
    t = torch.tensor([1.0, 2.0])
    with pytest.raises(
        ValueError, match=r"timesteps must be integers in \{0, \.\.\., 49\}"
    ):
        if call == "q_sample":
            diffusion.q_sample(x(), t)
        elif call == "q_posterior":
            diffusion.q_posterior(x(), x(), t)
        elif call == "p_mean_variance":
            diffusion.p_mean_variance(identity_model, x(), t)
        else:
            diffusion.training_losses(identity_model, x(), t=t)


def test_one_timestep_per_example_is_required(diffusion):
    with pytest.raises(ValueError, match="got 3 timesteps for a batch of 2"):
        diffusion.q_sample(x(2), torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("steps", [0, T + 1, 2.5])
@pytest.mark.parametrize("sampler", [ddim_sample, dpm_solver_sample, "ddim_invert"])
def test_sampler_steps_outside_1_to_T_are_refused(diffusion, sampler, steps):
    with pytest.raises(ValueError, match=r"steps must be an integer in 1\.\.50"):
        if sampler == "ddim_invert":
            ddim_invert(identity_model, diffusion, x(1), steps=steps)
        else:
            sampler(identity_model, diffusion, (1, 1, 4, 4), steps=steps)


@pytest.mark.parametrize("steps", [0, T + 1])
def test_respace_steps_outside_1_to_T_are_refused(diffusion, steps):
    with pytest.raises(ValueError, match=r"steps must be an integer in 1\.\.50"):
        respace(diffusion, steps)


def test_respace_timesteps_outside_0_to_T_minus_1_are_refused(diffusion):
    with pytest.raises(ValueError, match=r"non-empty subset of 0\.\.49"):
        respace(diffusion, [0, 10, T])


def test_unknown_schedule_names_the_three_schedules():
    with pytest.raises(
        ValueError,
        match="unknown schedule 'quadratic'; choose one of 'linear', 'cosine', 'sigmoid'",
    ):
        get_betas("quadratic", 10)


def test_unknown_objective_names_the_objectives():
    with pytest.raises(
        ValueError, match="unknown objective 'score'; choose one of 'eps', 'x0', 'v'"
    ):
        GaussianDiffusion(NoiseSchedule.from_name("linear", T), objective="score")


def test_unknown_var_type_names_the_variance_types():
    with pytest.raises(
        ValueError, match="choose one of 'fixed_small', 'fixed_large', 'learned_range'"
    ):
        GaussianDiffusion(NoiseSchedule.from_name("linear", T), var_type="learned")


@pytest.mark.parametrize(
    "spacing_user",
    [
        "timestep_sequence",
        "ddim_sample",
        "respace",
        "dpm_solver_sample",
        "ddim_invert",
        "respace_list",
    ],
)
def test_unknown_spacing_names_the_spacings(diffusion, spacing_user):
    with pytest.raises(
        ValueError,
        match="unknown spacing 'uniform'; choose one of 'leading', 'trailing', 'linspace'",
    ):
        if spacing_user == "timestep_sequence":
            timestep_sequence(T, 10, "uniform")
        elif spacing_user == "ddim_sample":
            ddim_sample(
                identity_model, diffusion, (1, 1, 4, 4), steps=10, spacing="uniform"
            )
        elif spacing_user == "dpm_solver_sample":
            dpm_solver_sample(
                identity_model, diffusion, (1, 1, 4, 4), steps=10, spacing="uniform"
            )
        elif spacing_user == "ddim_invert":
            ddim_invert(identity_model, diffusion, x(1), steps=10, spacing="uniform")
        elif spacing_user == "respace":
            respace(diffusion, 10, "uniform")
        else:
            respace(diffusion, [0, 10], "uniform")


def test_unknown_loss_type_names_the_loss_types(diffusion):
    with pytest.raises(
        ValueError,
        match="unknown loss_type 'l1'; choose one of 'simple', 'hybrid', 'vlb'",
    ):
        diffusion.training_losses(identity_model, x(), loss_type="l1")


@pytest.mark.parametrize("call", ["q_sample", "training_losses"])
def test_noise_of_another_shape_is_refused(diffusion, call):
    noise = torch.zeros(2, 1, 4, 5)
    with pytest.raises(
        ValueError,
        match=r"noise has shape \(2, 1, 4, 5\) but x0 has shape \(2, 1, 4, 4\)",
    ):
        if call == "q_sample":
            diffusion.q_sample(x(), torch.tensor([1, 2]), noise=noise)
        else:
            diffusion.training_losses(
                identity_model, x(), t=torch.tensor([1, 2]), noise=noise
            )


@pytest.mark.parametrize("sampler", [ddpm_sample, ddim_sample, dpm_solver_sample])
def test_x_T_of_another_shape_is_refused(diffusion, sampler):
    with pytest.raises(
        ValueError,
        match=r"x_T has shape \(2, 1, 4, 4\) but shape \(3, 1, 4, 4\) was asked for",
    ):
        sampler(identity_model, diffusion, (3, 1, 4, 4), x_T=x(2))


@pytest.mark.parametrize(
    "var_type,expected",
    [
        ("fixed_small", r"\(2, 1, 4, 4\)"),
        ("learned_range", r"\(2, 2, 4, 4\) \(learned_range needs twice"),
    ],
)
def test_model_output_of_the_wrong_shape_is_refused(var_type, expected):
    diffusion = GaussianDiffusion(
        NoiseSchedule.from_name("linear", T), var_type=var_type
    )

    def flattening_model(x, t):
        return x.flatten(1)

    with pytest.raises(
        ValueError,
        match=rf"the model returned shape \(2, 16\) for input \(2, 1, 4, 4\); expected {expected}",
    ):
        diffusion.p_mean_variance(flattening_model, x(), torch.tensor([1, 2]))


def test_model_of_the_wrong_shape_is_caught_inside_samplers(diffusion):
    with pytest.raises(ValueError, match=r"expected \(1, 1, 4, 4\)"):
        ddim_sample(lambda x, t: x[:, :, :2], diffusion, (1, 1, 4, 4), steps=5)


@pytest.mark.parametrize("call", ["ddim_sample", "ddim_step", "ddim_sigma"])
def test_negative_eta_is_refused(diffusion, call):
    with pytest.raises(ValueError, match=r"eta must be >= 0"):
        if call == "ddim_sample":
            ddim_sample(identity_model, diffusion, (1, 1, 4, 4), steps=5, eta=-0.1)
        elif call == "ddim_step":
            ddim_step(x(), x(), 0.5, 0.7, eta=-0.1, noise=x())
        else:
            ddim_sigma(0.5, 0.7, float("nan"))


@pytest.mark.parametrize("sampler", [ddpm_sample, ddim_sample, dpm_solver_sample])
def test_a_shape_the_model_rejects_is_reported_as_the_shape_argument(
    diffusion, sampler
):
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)  # a model for 3-channel images

    def model(x, t):
        return conv(x)

    with pytest.raises(
        ValueError,
        match=r"model failed on x_t of shape \(1, 1, 4, 4\) \(the `shape` argument",
    ):
        sampler(model, diffusion, (1, 1, 4, 4))


@pytest.mark.parametrize("shape", [(4, 4, 0), (2,), "2x1x4x4", (2, 1.0, 4, 4)])
def test_a_malformed_shape_is_refused(diffusion, shape):
    with pytest.raises(ValueError, match=r"shape must be a tuple of positive ints"):
        ddim_sample(identity_model, diffusion, shape, steps=5)


def test_lambda_min_clipped_that_leaves_too_few_timesteps_is_refused(diffusion):
    with pytest.raises(
        ValueError,
        match=r"lambda_min_clipped=2.0 leaves \d+ timesteps, fewer than steps=20",
    ):
        dpm_solver_sample(
            identity_model, diffusion, (1, 1, 4, 4), steps=20, lambda_min_clipped=2.0
        )


@pytest.mark.parametrize("T_bad", [0, -3, 2.0, True])
def test_number_of_timesteps_must_be_a_positive_integer(T_bad):
    with pytest.raises(
        ValueError, match="the number of timesteps T must be a positive integer"
    ):
        get_betas("cosine", T_bad)


@pytest.mark.parametrize(
    "betas",
    [
        torch.tensor([0.1, 0.0]),
        torch.tensor([0.5, 1.5]),
        torch.tensor([[0.1]]),
        torch.tensor([]),
    ],
)
def test_betas_outside_0_1_or_not_1d_are_refused(betas):
    with pytest.raises(
        ValueError, match=r"betas must (lie in \(0, 1\]|be a non-empty 1-D tensor)"
    ):
        NoiseSchedule(betas)


def test_linear_beta_range_must_be_increasing_inside_0_1():
    with pytest.raises(ValueError, match="need 0 < beta_start <= beta_end < 1"):
        get_betas("linear", 10, beta_start=0.02, beta_end=1e-4)


def test_unbatched_data_is_refused_by_training_losses(diffusion):
    with pytest.raises(ValueError, match=r"x0 must be batched, shape \(N, C, \.\.\.\)"):
        diffusion.training_losses(identity_model, torch.zeros(16))


def test_sample_refuses_a_shipped_model_that_is_not_a_denoiser(tmp_path, capsys):
    from ddpm_course.cli import main

    with pytest.raises(SystemExit, match="digits-vae is not a diffusion model"):
        main(
            [
                "sample",
                "--checkpoint",
                "digits-vae",
                "--n",
                "2",
                "--out",
                str(tmp_path / "g.png"),
            ]
        )
