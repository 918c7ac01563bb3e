"""Progressive distillation (ddpm_course.distill) on Gaussian data, where the flow's velocity
field and its exact flow map are known in closed form."""

from __future__ import annotations

import pytest
import torch

from ddpm_course.distill import (
    ConsistencyDistillation,
    ProgressiveDistillation,
    consistency_function,
    consistency_sample,
    consistency_scalings,
    two_step_target,
)
from ddpm_course.flow import flow_sample

MU, SIGMA = 0.7, 0.3  # 1-D data x0 ~ N(MU, SIGMA^2); x_s = (1 - s) x0 + s eps


def mean_var(s):
    return (1 - s) * MU, (1 - s) ** 2 * SIGMA**2 + s**2


def exact_velocity(x, s):
    """E[eps - x0 | x_s = x] for Gaussian x0: -MU + Cov(eps - x0, x_s)/Var(x_s) (x - E x_s)."""
    m, v = mean_var(s)
    return -MU + (s - (1 - s) * SIGMA**2) / v * (x - m)


def flow_map(x, s, s_next):
    """The exact ODE map from time s to s_next: the monotone map between the two Gaussians."""
    (m, v), (m_next, v_next) = mean_var(s), mean_var(s_next)
    return m_next + (v_next / v) ** 0.5 * (x - m)


class Field(torch.nn.Module):
    """A velocity "network" called as model(x, 1000·s), like a trained flow model."""

    def __init__(self, velocity):
        super().__init__()
        self.velocity = velocity

    def forward(self, x, time_input):
        s = time_input.double().reshape(-1, *[1] * (x.ndim - 1)) / 1000
        return self.velocity(x.double(), s).to(x.dtype)


def test_the_target_is_the_average_velocity_of_two_hand_computed_euler_steps():
    x = torch.tensor([[-1.2], [0.3], [2.0]], dtype=torch.float64)
    s = torch.tensor([0.5, 0.75, 1.0], dtype=torch.float64)
    h = 0.25
    target = two_step_target(Field(exact_velocity), x, s, h)
    for i in range(3):
        xi, si = float(x[i]), float(s[i])
        x_mid = xi - h * exact_velocity(xi, si)
        x_end = x_mid - h * exact_velocity(x_mid, si - h)
        assert float(target[i]) == pytest.approx((xi - x_end) / (2 * h), rel=1e-12)


def test_a_perfect_two_step_teacher_gives_the_exact_one_step_map():
    # the perfect student of an earlier round: its Euler step of 1/2 is the exact flow map
    def perfect_half_step(x, s):
        return (x - flow_map(x, s, s - 0.5)) / 0.5

    x1 = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    ones = torch.ones(7, dtype=torch.float64)
    target = two_step_target(Field(perfect_half_step), x1, ones, 0.5)
    # one Euler step of 1 from s = 1 must land on the data: x1 - target = MU + SIGMA x1
    torch.testing.assert_close(x1 - target, MU + SIGMA * x1, rtol=0, atol=1e-12)
    # so the perfect one-step student is u(x1) = (1 - SIGMA) x1 - MU, and sampling with it
    # in one step gives exactly N(MU, SIGMA^2)
    student = Field(lambda x, s: (1 - SIGMA) * x - MU)
    samples = flow_sample(
        student, (200_000, 1), 1, generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )  # fmt: skip
    assert float(samples.mean()) == pytest.approx(MU, abs=0.005)
    assert float(samples.std()) == pytest.approx(SIGMA, abs=0.005)


def test_the_objective_draws_student_times_and_scores_a_perfect_student_zero():
    teacher = Field(exact_velocity)
    objective = ProgressiveDistillation(teacher, teacher_steps=8)
    assert objective.num_timesteps == 4
    torch.testing.assert_close(
        objective.student_time(torch.arange(4)),
        torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64),
    )
    x0 = MU + SIGMA * torch.randn(64, 1, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(64, 1, generator=torch.Generator().manual_seed(2))
    t = torch.arange(64) % 4

    def student_velocity(x, s):  # the target itself, recomputed by hand: loss 0
        x_mid = x - exact_velocity(x, s) / 8
        return (x - (x_mid - exact_velocity(x_mid, s - 1 / 8) / 8)) * 4

    perfect = objective.training_losses(
        Field(student_velocity), x0.double(), t, noise=noise.double()
    )
    assert float(perfect["loss"].max()) < 1e-20
    # the teacher itself as the student is not perfect: Euler's error over two steps
    teacher_as_student = objective.training_losses(
        teacher, x0.double(), t, noise=noise.double()
    )["loss"]
    assert float(teacher_as_student.mean()) > 1e-6


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="even integer"):
        ProgressiveDistillation(Field(exact_velocity), teacher_steps=5)
    with pytest.raises(ValueError, match="s >= 2h"):
        two_step_target(
            Field(exact_velocity), torch.zeros(1, 1), torch.tensor([0.3]), 0.25
        )
    with pytest.raises(ValueError, match="min_snr_gamma=None"):
        ProgressiveDistillation(Field(exact_velocity), 4).training_losses(
            Field(exact_velocity), torch.zeros(2, 1), min_snr_gamma=5.0
        )


# ------------------------------------------------------------- consistency distillation
def exact_consistency(x, s):
    """The exact consistency function of the Gaussian data: the flow map from s to 0."""
    m, v = mean_var(s)
    return MU + SIGMA / v**0.5 * (x - m)


def test_the_consistency_function_meets_the_boundary_and_starts_as_the_x0_prediction():
    teacher = Field(exact_velocity)
    x = torch.tensor([[-1.0], [0.5], [2.0]], dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    assert torch.equal(consistency_function(teacher, x, zero), x)
    s = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    # x - s·E[eps - x0 | x] = E[x0 | x] (the teacher's x0 prediction), by hand for Gaussians
    m, v = mean_var(s[:, None])
    posterior_mean = MU + (1 - s[:, None]) * SIGMA**2 / v * (x - m)
    torch.testing.assert_close(consistency_function(teacher, x, s), posterior_mean)


def test_the_edm_consistency_scalings_meet_the_boundary_and_match_diffusers():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.CMStochasticIterativeScheduler(
        sigma_min=0.002, sigma_data=0.5
    )
    sigma = torch.tensor([0.002, 0.01, 0.5, 3.0, 80.0], dtype=torch.float64)
    c_skip, c_out = consistency_scalings(sigma, sigma_data=0.5, sigma_min=0.002)
    want_skip, want_out = scheduler.get_scalings_for_boundary_condition(sigma)
    torch.testing.assert_close(c_skip, want_skip, rtol=1e-14, atol=0)
    torch.testing.assert_close(c_out, want_out, rtol=1e-14, atol=0)
    assert c_skip[0] == 1 and c_out[0] == 0  # f(x, sigma_min) = x for any network
    # by hand at sigma = 0.5 + 0.002: c_skip = 0.25 / (0.25 + 0.25) and c_out = 0.25 / |(0.502, 0.5)|
    c_skip, c_out = consistency_scalings(torch.tensor(0.502, dtype=torch.float64))
    assert float(c_skip) == pytest.approx(0.5, rel=1e-14)
    assert float(c_out) == pytest.approx(0.25 / (0.502**2 + 0.25) ** 0.5, rel=1e-14)


def test_consistency_distillation_scores_the_exact_flow_map_zero_and_others_not():
    # with an exact teacher step the only consistent function is the exact flow map to 0
    objective = ConsistencyDistillation(Field(exact_velocity), num_steps=8)
    objective.teacher_step = lambda x, s, s_next, kwargs=None: flow_map(
        x, s.reshape(-1, 1), s_next.reshape(-1, 1)
    )
    x0 = MU + SIGMA * torch.randn(256, 1, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(256, 1, generator=torch.Generator().manual_seed(4))
    t = torch.arange(256) % 8

    def network_of(function):  # F = (x - f)/s, so that f(x, s) = function(x, s)
        return Field(lambda x, s: (x - function(x, s)) / s.clamp_min(1e-12))

    exact = objective.training_losses(
        network_of(exact_consistency), x0.double(), t, noise=noise.double()
    )["loss"]
    assert float(exact.max()) < 1e-20
    # the teacher's own x0 prediction is not consistent along its trajectories
    teacher_as_student = objective.training_losses(
        Field(exact_velocity), x0.double(), t, noise=noise.double()
    )["loss"]
    assert float(teacher_as_student.mean()) > 1e-4


def test_the_heun_teacher_step_is_exact_to_second_order_and_euler_at_the_end():
    objective = ConsistencyDistillation(Field(exact_velocity), num_steps=50)
    x = torch.linspace(-2, 2, 5, dtype=torch.float64)[:, None]
    s = torch.full((5,), 0.6, dtype=torch.float64)
    errors = []
    for h in (0.02, 0.01):
        step = objective.teacher_step(x, s, s - h)
        errors.append(float((step - flow_map(x, 0.6, 0.6 - h)).abs().max()))
    assert errors[1] < errors[0] / 6  # local error O(h^3): halving h divides it by ~8
    last = objective.teacher_step(x, torch.full((5,), 0.02, dtype=torch.float64), 0 * s)
    torch.testing.assert_close(last, x - 0.02 * exact_velocity(x, 0.02))


def test_multistep_consistency_sampling_with_the_exact_function_gives_the_data_law():
    student = Field(lambda x, s: (x - exact_consistency(x, s)) / s)
    for steps in (1, 2, 4):
        samples = consistency_sample(
            student, (100_000, 1), steps, generator=torch.Generator().manual_seed(steps)
        )
        assert float(samples.mean()) == pytest.approx(MU, abs=0.006)
        assert float(samples.std()) == pytest.approx(SIGMA, abs=0.006)


# ------------------------------------------------- distillation on the trainer (chapter 10)
def _tiny_flow_config(tmp_path, **overrides):
    from ddpm_course.config import TrainConfig

    return TrainConfig.from_preset(
        "fashion-flow", image_size=8, max_steps=2, batch_size=8, warmup_steps=0,
        log_every=1, sample_every=0, checkpoint_every=0, precision="fp32", num_samples=4,
        sample_steps=2, out_dir=str(tmp_path), model_overrides=dict(model_channels=8),
        **overrides,
    )  # fmt: skip


def test_a_distillation_config_names_its_method_and_its_flow_teacher():
    from ddpm_course.config import TrainConfig, build_diffusion

    with pytest.raises(ValueError, match="distill"):
        TrainConfig.from_preset(
            "fashion-flow", distill="reflow", teacher="fashion-flow"
        )
    with pytest.raises(ValueError, match="objective='flow' and teacher"):
        TrainConfig.from_preset("fashion-flow", distill="consistency")
    with pytest.raises(ValueError, match="objective='flow' and teacher"):
        TrainConfig.from_preset(
            "fashion", distill="consistency", teacher="fashion-flow"
        )
    config = TrainConfig.from_preset("fashion-fewstep")
    process = build_diffusion(config)
    assert isinstance(process, ConsistencyDistillation)
    assert process.num_timesteps == 18 and process.time_scale == 1000.0
    assert process.teacher is None  # a loaded student samples without its teacher
    with pytest.raises(ValueError, match="has no teacher"):
        process.training_losses(lambda x, t: x, torch.zeros(2, 1, 4, 4))


def test_the_trainer_distils_from_a_teacher_run_and_the_student_samples_alone(tmp_path):
    from ddpm_course.loading import load_model
    from ddpm_course.samplers import sample
    from ddpm_course.train import Trainer

    images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    data = (images, torch.zeros(16, dtype=torch.long))
    Trainer(_tiny_flow_config(tmp_path / "teacher"), dataset=data).train()
    teacher, teacher_process, _ = load_model(tmp_path / "teacher", device="cpu")
    config = _tiny_flow_config(
        tmp_path / "student", distill="consistency", teacher=str(tmp_path / "teacher"),
        distill_steps=4,
    )  # fmt: skip
    trainer = Trainer(config, dataset=data)
    # the student starts as its teacher, which is frozen inside the objective
    for mine, theirs in zip(
        trainer.model.parameters(), teacher.parameters(), strict=True
    ):
        assert torch.equal(mine, theirs)
    assert trainer.diffusion.teacher is not None
    assert not any(p.requires_grad for p in trainer.diffusion.teacher.parameters())
    # at the start, one consistency step is the teacher's one Euler step over [0, 1]
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    one_step = sample("consistency", trainer.model, trainer.diffusion, (3, 1, 8, 8), 1,
                      x_T=noise)  # fmt: skip
    euler = flow_sample(teacher, (3, 1, 8, 8), 1, "euler", x_init=noise,
                        time_scale=teacher_process.time_scale)  # fmt: skip
    torch.testing.assert_close(one_step, euler, rtol=1e-5, atol=1e-5)
    trainer.train()
    student, process, loaded = load_model(tmp_path / "student", device="cpu")
    assert isinstance(process, ConsistencyDistillation) and process.teacher is None
    assert loaded.distill == "consistency" and process.default_sampler == "consistency"
    for steps in (1, 2):
        out = sample("consistency", student, process, (2, 1, 8, 8), steps)
        assert out.shape == (2, 1, 8, 8) and bool(torch.isfinite(out).all())
    with pytest.raises(ValueError, match="samples with"):
        sample("ddim", student, process, (2, 1, 8, 8), 2)
    with pytest.raises(ValueError, match="samples with"):
        sample("consistency", teacher, GaussianDiffusionForTest(), (2, 1, 8, 8), 1)


def GaussianDiffusionForTest():
    from ddpm_course.diffusion import GaussianDiffusion
    from ddpm_course.schedules import linear

    return GaussianDiffusion(linear(10))
