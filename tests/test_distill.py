"""Progressive distillation (ddpm_course.distill) on Gaussian data, where the flow's velocity
field and its exact flow map are known in closed form."""

from __future__ import annotations

import pytest
import torch

from ddpm_course.distill import ProgressiveDistillation, two_step_target
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
