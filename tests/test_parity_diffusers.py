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
from diffusers import (
    DDIMInverseScheduler,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
)

from ddpm_course.diffusion import GaussianDiffusion
from ddpm_course.samplers import (
    ddim_inversion_step,
    ddim_sample,
    ddim_step,
    ddpm_sample,
    ddpm_step,
    dpm_solver_2m_step,
    dpm_solver_sample,
    respace,
    timestep_sequence,
    usable_timesteps,
)
from ddpm_course.schedules import NoiseSchedule

T = 1000
DIFFUSERS_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
PREDICTION_TYPE = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
FLOAT32_TOL = (
    1e-5  # relative to the output's scale: float32 round-off, see the module docstring
)
IMAGE_SHAPE = (4, 3, 8, 8)

# diffusers 0.42's DPM-Solver calls np.array(tensor, copy=False) internally; nothing of ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max |theirs|: the error relative to the scale of the reference."""
    theirs = torch.as_tensor(theirs).detach().double()
    return float(
        (torch.as_tensor(ours).detach().double() - theirs).abs().max()
        / theirs.abs().max()
    )


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


def ddim_scheduler(
    spacing: str,
    schedule: str = "linear",
    objective: str = "eps",
    inverse: bool = False,
) -> DDIMScheduler | DDIMInverseScheduler:
    config = dict(
        num_train_timesteps=T,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule=DIFFUSERS_SCHEDULE[schedule],
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type=PREDICTION_TYPE[objective],
        timestep_spacing=spacing,
    )
    if inverse:
        return DDIMInverseScheduler(**config)
    return DDIMScheduler(**config, thresholding=False)


def dpm_solver_scheduler(
    num_train_timesteps: int = T,
    schedule: str = "linear",
    objective: str = "eps",
    lambda_min_clipped: float = -float("inf"),
) -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule=DIFFUSERS_SCHEDULE[schedule],
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        prediction_type=PREDICTION_TYPE[objective],
        lambda_min_clipped=lambda_min_clipped,
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
def test_one_ddpm_step_matches_diffusers_mean_and_variance(
    objective, schedule, toy_noise_predictor
):
    """Our p(x_{t-1} | x_t) against ``DDPMScheduler.step``. diffusers returns mean + sqrt(var) * z
    with z drawn from the generator we pass it; a twin generator gives us the same z to subtract.

    diffusers forms beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} and 1 - alpha_bar_t in float32, which
    loses 3-4 digits near t = 0 (measured: 8e-4 relative error in its variance at t = 5, cosine).
    So that the test compares formulas rather than that cancellation, the scheduler gets float64
    alpha-bars, computed from its own betas."""
    diffusion = GaussianDiffusion(
        NoiseSchedule.from_name(schedule, T), objective=objective
    )
    scheduler = ddpm_scheduler(schedule, objective)
    scheduler.alphas_cumprod = torch.cumprod(1.0 - scheduler.betas.double(), dim=0)
    x_t = image_batch(2)
    for step in (0, 1, 2, 5, 10, 100, 500, 998, 999):
        t = torch.full((x_t.shape[0],), step)
        ours = diffusion.p_mean_variance(
            toy_noise_predictor, x_t, t, clip_denoised=False
        )
        output = toy_noise_predictor(x_t, t)
        theirs = scheduler.step(
            output, step, x_t, generator=torch.Generator().manual_seed(step)
        )
        their_variance = scheduler._get_variance(step)
        z = (
            torch.randn(x_t.shape, generator=torch.Generator().manual_seed(step))
            if step > 0
            else 0.0
        )
        their_mean = theirs.prev_sample - their_variance.sqrt() * z
        assert (
            relative_error(ours.pred_x0, theirs.pred_original_sample) < FLOAT32_TOL
        ), step
        assert relative_error(ours.mean, their_mean) < FLOAT32_TOL, step
        if (
            step == 0
        ):  # the posterior variance is exactly 0; diffusers clamps it to 1e-20
            assert float(ours.variance.abs().max()) <= 1e-20
        else:
            assert relative_error(ours.variance, their_variance) < FLOAT32_TOL, step


def test_whole_ddpm_ancestral_loop_matches_diffusers(toy_noise_predictor):
    """1000 ancestral steps from the same x_T. Both draw z ~ N(0, I) of the sample's shape from the
    generator at every t > 0 and none at t = 0, so one seed gives both the same noise. (float64
    alpha-bars for diffusers, as in the one-step test.)"""
    diffusion = GaussianDiffusion(NoiseSchedule.from_name("linear", T))
    x_T = image_batch(6)
    ours = ddpm_sample(
        toy_noise_predictor,
        diffusion,
        x_T.shape,
        x_T=x_T,
        clip_denoised=False,
        generator=torch.Generator().manual_seed(7),
    )
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
def test_ddim_timesteps_match_diffusers_for_every_number_of_steps(
    spacing, num_timesteps
):
    """Every steps in 1..T (every 7th for T = 4000) where diffusers gives `steps` distinct timesteps."""
    scheduler = DDIMScheduler.from_config(
        ddim_scheduler(spacing).config, num_train_timesteps=num_timesteps
    )
    compared = 0
    for steps in range(1, num_timesteps + 1, 7 if num_timesteps > 1000 else 1):
        scheduler.set_timesteps(steps)
        theirs = scheduler.timesteps.tolist()
        if len(set(theirs)) == len(theirs) == steps:
            assert (
                timestep_sequence(num_timesteps, steps, spacing).tolist() == theirs
            ), steps
            compared += 1
    assert compared > 0.9 * len(
        range(1, num_timesteps + 1, 7 if num_timesteps > 1000 else 1)
    )


def test_trailing_timesteps_stop_before_diffusers_overshoot_to_minus_one():
    """diffusers' np.arange(T, 0, -T/steps) gets one value too many for T = 50, steps = 29 (a
    timestep -1); ours keeps the first 29, which are diffusers' first 29."""
    scheduler = DDIMScheduler.from_config(
        ddim_scheduler("trailing").config, num_train_timesteps=50
    )
    scheduler.set_timesteps(29)
    ours = timestep_sequence(
        50, 29, "trailing"
    ).tolist()  # (diffusers 0.42 gives [49, ..., 2, 1, -1])
    assert ours == scheduler.timesteps.tolist()[:29]
    assert len(set(ours)) == 29 and min(ours) == 1


@pytest.mark.parametrize("num_timesteps", [50, 1000])
def test_dpm_solver_linspace_timesteps_match_diffusers(num_timesteps):
    """Every steps in 1..T-1 (every 13th for T = 1000); steps = T cannot give T distinct timesteps."""
    scheduler = dpm_solver_scheduler(num_timesteps)
    for steps in range(1, num_timesteps, 13 if num_timesteps > 50 else 1):
        scheduler.set_timesteps(steps)
        assert (
            timestep_sequence(num_timesteps, steps, "linspace").tolist()
            == scheduler.timesteps.tolist()
        ), steps


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
        toy_noise_predictor,
        diffusion,
        x_T.shape,
        steps=steps,
        eta=eta,
        spacing=spacing,
        x_T=x_T,
        generator=torch.Generator().manual_seed(4),
        clip_denoised=False,
    )

    scheduler = ddim_scheduler(spacing)
    scheduler.set_timesteps(steps)
    twin_generator = torch.Generator().manual_seed(4)
    x = x_T
    with torch.no_grad():
        for k, step in enumerate(scheduler.timesteps.tolist()):
            next_step = scheduler.timesteps[k + 1].item() if k + 1 < steps else -1
            draws_noise = (
                eta > 0 and float(scheduler._get_variance(step, next_step)) > 0
            )
            z = torch.randn(x.shape, generator=twin_generator) if draws_noise else None
            output = toy_noise_predictor(x, torch.full((x.shape[0],), step))
            x = scheduler.step(output, step, x, eta=eta, variance_noise=z).prev_sample
    assert relative_error(ours, x) < FLOAT32_TOL
    assert float(x.std()) > 0.05  # a real sample, not a collapsed one


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_loop_matches_diffusers(steps, toy_noise_predictor):
    diffusion = GaussianDiffusion(NoiseSchedule.from_name("linear", T))
    x_T = image_batch(5)
    ours = dpm_solver_sample(
        toy_noise_predictor,
        diffusion,
        x_T.shape,
        steps=steps,
        spacing="linspace",
        x_T=x_T,
        clip_denoised=False,
    )

    scheduler = dpm_solver_scheduler()
    scheduler.set_timesteps(steps)
    assert (
        scheduler.timesteps.tolist() == timestep_sequence(T, steps, "linspace").tolist()
    )
    x = x_T
    with torch.no_grad():
        for step in scheduler.timesteps.tolist():
            output = toy_noise_predictor(x, torch.full((x.shape[0],), step))
            x = scheduler.step(output, step, x).prev_sample
    assert relative_error(ours, x) < FLOAT32_TOL
    assert float(x.std()) > 0.05


# ------------------------------------------------------------------ the step functions
# Each step function against the matching scheduler's ``step``, one step at a time: both sides get
# the same x_t and the same network output at every visited timestep (the x_t is diffusers' own
# previous output), for the linear and cosine schedules and the eps and v objectives. Our
# predictions come from GaussianDiffusion.p_mean_variance(model_out=...), as in the loops.
SCHEDULES_AND_OBJECTIVES = [(s, o) for s in ("linear", "cosine") for o in ("eps", "v")]


def _alpha_bar(diffusion: GaussianDiffusion, step: int) -> float:
    return 1.0 if step < 0 else float(diffusion.alphas_cumprod[step])


def _predictions(diffusion, output, x, step):
    t = torch.full((x.shape[0],), step)
    return diffusion.p_mean_variance(None, x, t, clip_denoised=False, model_out=output)


@pytest.mark.parametrize("schedule, objective", SCHEDULES_AND_OBJECTIVES)
def test_ddpm_step_matches_ddpm_scheduler_on_a_respaced_trailing_grid(
    schedule, objective, toy_noise_predictor
):
    """``ddpm_step`` between the visited steps of a 10-step trailing grid (diffusers' DDPMScheduler
    with num_inference_steps = 10 forms beta = 1 - abar_t / abar_prev, as ``respace`` does), and
    the whole respaced ancestral loop, with float64 alpha-bars for diffusers (see the one-step test)."""
    diffusion = GaussianDiffusion(
        NoiseSchedule.from_name(schedule, T), objective=objective
    )
    scheduler = DDPMScheduler.from_config(
        ddpm_scheduler(schedule, objective).config, timestep_spacing="trailing"
    )
    scheduler.alphas_cumprod = torch.cumprod(1.0 - scheduler.betas.double(), dim=0)
    scheduler.set_timesteps(10)
    timesteps = scheduler.timesteps.tolist()
    assert timesteps == timestep_sequence(T, 10).tolist()
    x = image_batch(8)
    x_T = x
    for k, step in enumerate(timesteps):
        prev_step = timesteps[k + 1] if k + 1 < len(timesteps) else -1
        output = toy_noise_predictor(x, torch.full((x.shape[0],), step))
        z = (
            torch.randn(x.shape, generator=torch.Generator().manual_seed(k))
            if k + 1 < 10
            else None
        )
        theirs = scheduler.step(
            output, step, x, generator=torch.Generator().manual_seed(k)
        )
        p = _predictions(diffusion, output, x, step)
        ours = ddpm_step(
            x,
            p.pred_x0,
            _alpha_bar(diffusion, step),
            _alpha_bar(diffusion, prev_step),
            z,
        )
        assert relative_error(ours, theirs.prev_sample) < FLOAT32_TOL, step
        x = theirs.prev_sample

    respaced = respace(diffusion, 10)
    generator, x = torch.Generator().manual_seed(9), x_T
    for step in timesteps:
        output = toy_noise_predictor(x, torch.full((x.shape[0],), step))
        x = scheduler.step(output, step, x, generator=generator).prev_sample
    ours = ddpm_sample(
        toy_noise_predictor,
        respaced,
        x_T.shape,
        x_T=x_T,
        clip_denoised=False,
        generator=torch.Generator().manual_seed(9),
    )
    assert relative_error(ours, x) < FLOAT32_TOL


@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("schedule, objective", SCHEDULES_AND_OBJECTIVES)
def test_ddim_step_matches_ddim_scheduler(
    schedule, objective, eta, toy_noise_predictor
):
    diffusion = GaussianDiffusion(
        NoiseSchedule.from_name(schedule, T), objective=objective
    )
    scheduler = ddim_scheduler("trailing", schedule, objective)
    scheduler.set_timesteps(10)
    x = image_batch(10)
    for k, step in enumerate(scheduler.timesteps.tolist()):
        prev_step = step - T // 10  # diffusers' previous timestep (-1: abar = 1)
        output = toy_noise_predictor(x, torch.full((x.shape[0],), step))
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(k))
        theirs = scheduler.step(output, step, x, eta=eta, variance_noise=z)
        p = _predictions(diffusion, output, x, step)
        ours = ddim_step(
            p.pred_x0,
            p.pred_eps,
            _alpha_bar(diffusion, step),
            _alpha_bar(diffusion, prev_step),
            eta,
            z,
        )
        assert relative_error(p.pred_x0, theirs.pred_original_sample) < FLOAT32_TOL, (
            step
        )
        assert relative_error(ours, theirs.prev_sample) < FLOAT32_TOL, step
        x = theirs.prev_sample


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_inversion_step_matches_ddim_inverse_scheduler(
    schedule, toy_noise_predictor
):
    """diffusers' inverse step calls the model at the target timestep and forms x0 at the current
    noise level (abar = 1 before the first step). Both go up a 10-step trailing grid from data.
    (eps only: for v, diffusers converts the output with the current alpha-bar, not the one the
    model was called at; ``ddim_invert`` converts with the model's own timestep.)"""
    diffusion = GaussianDiffusion(NoiseSchedule.from_name(schedule, T))
    scheduler = ddim_scheduler("trailing", schedule, inverse=True)
    scheduler.set_timesteps(10)
    timesteps = scheduler.timesteps.tolist()
    assert timesteps == timestep_sequence(T, 10).flip(0).tolist()
    x = image_batch(11).clamp(-1, 1)
    current = -1
    for step in timesteps:
        output = toy_noise_predictor(x, torch.full((x.shape[0],), step))
        theirs = scheduler.step(output, step, x).prev_sample
        ours = ddim_inversion_step(
            x, output, _alpha_bar(diffusion, current), _alpha_bar(diffusion, step)
        )
        assert relative_error(ours, theirs) < FLOAT32_TOL, step
        x, current = theirs, step


@pytest.mark.parametrize("lambda_min_clipped", [-float("inf"), -5.1])
@pytest.mark.parametrize("schedule, objective", SCHEDULES_AND_OBJECTIVES)
def test_dpm_solver_2m_step_matches_dpm_solver_multistep_scheduler(
    schedule, objective, lambda_min_clipped, toy_noise_predictor
):
    """Step by step over a 10-step grid: first order first, second order after, first order into
    abar = 1 (``final_sigmas_type="zero"``). With ``lambda_min_clipped`` the grid stops below the
    timesteps whose half-log-SNR is under it (diffusers' cosine recommendation, -5.1)."""
    diffusion = GaussianDiffusion(
        NoiseSchedule.from_name(schedule, T), objective=objective
    )
    scheduler = dpm_solver_scheduler(T, schedule, objective, lambda_min_clipped)
    scheduler.set_timesteps(10)
    timesteps = scheduler.timesteps.tolist()
    usable = usable_timesteps(diffusion, lambda_min_clipped)
    assert timesteps == timestep_sequence(usable, 10, "linspace").tolist()
    x = image_batch(12)
    previous_x0, previous_step = None, None
    for k, step in enumerate(timesteps):
        next_step = timesteps[k + 1] if k + 1 < len(timesteps) else -1
        output = toy_noise_predictor(x, torch.full((x.shape[0],), step))
        theirs = scheduler.step(output, step, x).prev_sample
        pred_x0 = _predictions(diffusion, output, x, step).pred_x0
        second_order = previous_x0 is not None and next_step >= 0
        ours = dpm_solver_2m_step(
            x, pred_x0, _alpha_bar(diffusion, step), _alpha_bar(diffusion, next_step),
            previous_x0 if second_order else None,
            _alpha_bar(diffusion, previous_step) if second_order else None,
        )  # fmt: skip
        assert relative_error(ours, theirs) < FLOAT32_TOL, step
        x, previous_x0, previous_step = theirs, pred_x0, step


def test_lambda_clipping_drops_the_noisiest_cosine_steps_as_diffusers_does():
    diffusion = GaussianDiffusion(NoiseSchedule.from_name("cosine", T))
    scheduler = dpm_solver_scheduler(T, "cosine", "v", lambda_min_clipped=-5.1)
    scheduler.set_timesteps(20)
    usable = usable_timesteps(diffusion, -5.1)
    assert (
        950 < usable < T
    )  # abar_t < e^{-10.2} only in the last few dozen cosine steps
    assert max(scheduler.timesteps.tolist()) == usable - 1


@pytest.mark.parametrize("lambda_min_clipped", [-float("inf"), -5.1])
def test_dpm_solver_loop_with_cosine_and_v_matches_diffusers(
    lambda_min_clipped, toy_noise_predictor
):
    diffusion = GaussianDiffusion(NoiseSchedule.from_name("cosine", T), objective="v")
    x_T = image_batch(13)
    ours = dpm_solver_sample(
        toy_noise_predictor, diffusion, x_T.shape, steps=15, spacing="linspace",
        lambda_min_clipped=lambda_min_clipped, x_T=x_T, clip_denoised=False,
    )  # fmt: skip
    scheduler = dpm_solver_scheduler(T, "cosine", "v", lambda_min_clipped)
    scheduler.set_timesteps(15)
    x = x_T
    with torch.no_grad():
        for step in scheduler.timesteps.tolist():
            output = toy_noise_predictor(x, torch.full((x.shape[0],), step))
            x = scheduler.step(output, step, x).prev_sample
    assert relative_error(ours, x) < FLOAT32_TOL
    assert float(x.std()) > 0.05
