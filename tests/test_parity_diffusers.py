"""Parity with diffusers 0.42 (a peer implementation): schedules, q_sample, one DDPM step, whole
DDIM and DPM-Solver++(2M) loops, and the timesteps the few-step samplers visit.

Each diffusers scheduler is built with an explicit config so that both sides describe the same
process. diffusers works in float32 (its betas and alpha-bars are float32 tensors), ours computes
the schedule in float64 and the samples in float32, so agreement is to float32 round-off: 1e-5 of
the output's scale, about 100 float32 ulps. Measured: at most 1.7e-6 for the DDIM loops, 6e-7 for
DPM-Solver and the 1000-step DDPM loop, 7e-6 for one DDPM step at the last cosine step (where
x0 = (x_t - b eps) / a divides by a = 5e-5). The DDPM tests give diffusers float64 alpha-bars (see
the one-step test) because its float32 1 - alpha_bar_t / alpha_bar_{t-1} loses digits near t = 0.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from ddpm_course.diffusion import GaussianDiffusion
from ddpm_course.samplers import ddim_sample, ddpm_sample, dpm_solver_sample, timestep_sequence
from ddpm_course.schedules import NoiseSchedule

T = 1000
DIFFUSERS_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
PREDICTION_TYPE = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
FLOAT32_TOL = 1e-5  # relative to the output's scale: float32 round-off, see the module docstring
IMAGE_SHAPE = (4, 3, 8, 8)

# diffusers 0.42's DPM-Solver calls np.array(tensor, copy=False) internally; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max |theirs|: the error relative to the scale of the reference."""
    theirs = torch.as_tensor(theirs).detach().double()
    return float((torch.as_tensor(ours).detach().double() - theirs).abs().max() / theirs.abs().max())


def ddpm_scheduler(schedule: str = "linear", objective: str = "eps") -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=T,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule=DIFFUSERS_SCHEDULE[schedule],
        variance_type="fixed_small",
        clip_sample=False,
        thresholding=False,
        prediction_type=PREDICTION_TYPE[objective],
    )


def ddim_scheduler(spacing: str) -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=T,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        thresholding=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="epsilon",
        timestep_spacing=spacing,
    )


def dpm_solver_scheduler(num_train_timesteps: int = T) -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        prediction_type="epsilon",
        thresholding=False,
        timestep_spacing="linspace",
        final_sigmas_type="zero",
        lower_order_final=True,
        euler_at_final=False,
        use_karras_sigmas=False,
    )


def image_batch(seed: int) -> torch.Tensor:
    return torch.randn(IMAGE_SHAPE, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ schedules
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_betas_match_diffusers(schedule):
    ours = NoiseSchedule.from_name(schedule, T).betas
    theirs = ddpm_scheduler(schedule).betas
    assert relative_error(ours, theirs) < FLOAT32_TOL


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_sample_matches_add_noise(schedule):
    diffusion = GaussianDiffusion(NoiseSchedule.from_name(schedule, T))
    x0, noise = image_batch(0).clamp(-1, 1), image_batch(1)
    t = torch.tensor([0, 1, 500, 999])
    ours = diffusion.q_sample(x0, t, noise=noise)
    theirs = ddpm_scheduler(schedule).add_noise(x0, noise, t)
    assert relative_error(ours, theirs) < FLOAT32_TOL


# ------------------------------------------------------------------------ one DDPM step
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_one_ddpm_step_matches_diffusers_mean_and_variance(objective, schedule, toy_noise_predictor):
    """Our p(x_{t-1} | x_t) against ``DDPMScheduler.step``. diffusers returns mean + sqrt(var) * z
    with z drawn from the generator we pass it; a twin generator gives us the same z to subtract.

    diffusers forms beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} and 1 - alpha_bar_t in float32, which
    loses 3-4 digits near t = 0 (measured: 8e-4 relative error in its variance at t = 5, cosine).
    So that the test compares formulas rather than that cancellation, the scheduler gets float64
    alpha-bars, computed from its own betas."""
    diffusion = GaussianDiffusion(NoiseSchedule.from_name(schedule, T), objective=objective)
    scheduler = ddpm_scheduler(schedule, objective)
    scheduler.alphas_cumprod = torch.cumprod(1.0 - scheduler.betas.double(), dim=0)
    x_t = image_batch(2)
    for step in (0, 1, 2, 5, 10, 100, 500, 998, 999):
        t = torch.full((x_t.shape[0],), step)
        ours = diffusion.p_mean_variance(toy_noise_predictor, x_t, t, clip_denoised=False)
        output = toy_noise_predictor(x_t, t)
        theirs = scheduler.step(output, step, x_t, generator=torch.Generator().manual_seed(step))
        their_variance = scheduler._get_variance(step)
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(step)) if step > 0 else 0.0
        their_mean = theirs.prev_sample - their_variance.sqrt() * z
        assert relative_error(ours.pred_x0, theirs.pred_original_sample) < FLOAT32_TOL, step
        assert relative_error(ours.mean, their_mean) < FLOAT32_TOL, step
        if step == 0:  # the posterior variance is exactly 0; diffusers clamps it to 1e-20
            assert float(ours.variance.abs().max()) <= 1e-20
        else:
            assert relative_error(ours.variance, their_variance) < FLOAT32_TOL, step


def test_whole_ddpm_ancestral_loop_matches_diffusers(toy_noise_predictor):
    """1000 ancestral steps from the same x_T. Both draw z ~ N(0, I) of the sample's shape from the
    generator at every t > 0 and none at t = 0, so one seed gives both the same noise. (float64
    alpha-bars for diffusers, as in the one-step test.)"""
    diffusion = GaussianDiffusion(NoiseSchedule.from_name("linear", T))
    x_T = image_batch(6)
    ours = ddpm_sample(toy_noise_predictor, diffusion, x_T.shape, x_T=x_T, clip_denoised=False,
                       generator=torch.Generator().manual_seed(7))
    scheduler = ddpm_scheduler("linear")
    scheduler.alphas_cumprod = torch.cumprod(1.0 - scheduler.betas.double(), dim=0)
    generator, x = torch.Generator().manual_seed(7), x_T
    with torch.no_grad():
        for step in range(T - 1, -1, -1):
            output = toy_noise_predictor(x, torch.full((x.shape[0],), step))
            x = scheduler.step(output, step, x, generator=generator).prev_sample
    assert relative_error(ours, x) < FLOAT32_TOL
    assert float(x.std()) > 0.05


# --------------------------------------------------------------------------- timesteps
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("num_timesteps", [50, 1000, 4000])
def test_ddim_timesteps_match_diffusers_for_every_number_of_steps(spacing, num_timesteps):
    """Every steps in 1..T (every 7th for T = 4000) where diffusers gives `steps` distinct timesteps."""
    scheduler = DDIMScheduler.from_config(ddim_scheduler(spacing).config, num_train_timesteps=num_timesteps)
    compared = 0
    for steps in range(1, num_timesteps + 1, 7 if num_timesteps > 1000 else 1):
        scheduler.set_timesteps(steps)
        theirs = scheduler.timesteps.tolist()
        if len(set(theirs)) == len(theirs) == steps:
            assert timestep_sequence(num_timesteps, steps, spacing).tolist() == theirs, steps
            compared += 1
    assert compared > 0.9 * len(range(1, num_timesteps + 1, 7 if num_timesteps > 1000 else 1))


def test_trailing_timesteps_stop_before_diffusers_overshoot_to_minus_one():
    """diffusers' np.arange(T, 0, -T/steps) gets one value too many for T = 50, steps = 29 (a
    timestep -1); ours keeps the first 29, which are diffusers' first 29."""
    scheduler = DDIMScheduler.from_config(ddim_scheduler("trailing").config, num_train_timesteps=50)
    scheduler.set_timesteps(29)
    ours = timestep_sequence(50, 29, "trailing").tolist()  # (diffusers 0.42 gives [49, ..., 2, 1, -1])
    assert ours == scheduler.timesteps.tolist()[:29]
    assert len(set(ours)) == 29 and min(ours) == 1


@pytest.mark.parametrize("num_timesteps", [50, 1000])
def test_dpm_solver_linspace_timesteps_match_diffusers(num_timesteps):
    """Every steps in 1..T-1 (every 13th for T = 1000); steps = T cannot give T distinct timesteps."""
    scheduler = dpm_solver_scheduler(num_timesteps)
    for steps in range(1, num_timesteps, 13 if num_timesteps > 50 else 1):
        scheduler.set_timesteps(steps)
        assert timestep_sequence(num_timesteps, steps, "linspace").tolist() == scheduler.timesteps.tolist(), steps


# ----------------------------------------------------------------------- whole loops
@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_loop_matches_diffusers(steps, spacing, eta, toy_noise_predictor):
    """A whole DDIM loop from the same x_T. Ours draws the step noise z ~ N(0, I) from its generator
    once per step with sigma > 0; diffusers gets the same z through ``variance_noise``."""
    diffusion = GaussianDiffusion(NoiseSchedule.from_name("linear", T))
    x_T = image_batch(3)
    ours = ddim_sample(
        toy_noise_predictor, diffusion, x_T.shape, steps=steps, eta=eta, spacing=spacing,
        x_T=x_T, generator=torch.Generator().manual_seed(4), clip_denoised=False,
    )

    scheduler = ddim_scheduler(spacing)
    scheduler.set_timesteps(steps)
    twin_generator = torch.Generator().manual_seed(4)
    x = x_T
    with torch.no_grad():
        for k, step in enumerate(scheduler.timesteps.tolist()):
            next_step = scheduler.timesteps[k + 1].item() if k + 1 < steps else -1
            draws_noise = eta > 0 and float(scheduler._get_variance(step, next_step)) > 0
            z = torch.randn(x.shape, generator=twin_generator) if draws_noise else None
            output = toy_noise_predictor(x, torch.full((x.shape[0],), step))
            x = scheduler.step(output, step, x, eta=eta, variance_noise=z).prev_sample
    assert relative_error(ours, x) < FLOAT32_TOL
    assert float(x.std()) > 0.05  # a real sample, not a collapsed one


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_loop_matches_diffusers(steps, toy_noise_predictor):
    diffusion = GaussianDiffusion(NoiseSchedule.from_name("linear", T))
    x_T = image_batch(5)
    ours = dpm_solver_sample(toy_noise_predictor, diffusion, x_T.shape, steps=steps, x_T=x_T, clip_denoised=False)

    scheduler = dpm_solver_scheduler()
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.tolist() == timestep_sequence(T, steps, "linspace").tolist()
    x = x_T
    with torch.no_grad():
        for step in scheduler.timesteps.tolist():
            output = toy_noise_predictor(x, torch.full((x.shape[0],), step))
            x = scheduler.step(output, step, x).prev_sample
    assert relative_error(ours, x) < FLOAT32_TOL
    assert float(x.std()) > 0.05
