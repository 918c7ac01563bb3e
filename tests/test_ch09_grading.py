"""Chapter 09's exercises: plain-torch answers (written here from the papers' formulas) pass, each
classic mistake fails with a message naming it, the outcome-graded flow-matching loss tells the
correct loss from each mistake, and the committed notebooks grade to full marks (solutions)
and zero (exercises) with `ddpm-course grade`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddpm_course.grading import ch09_flow as ch09
from ddpm_course.grading.drivers import DRIVERS
from ddpm_course.grading.exercise import clone_args
from ddpm_course.grading.registry import get_exercise

ROOT = Path(__file__).resolve().parents[1]


def column(values, like):
    return values.reshape(-1, *([1] * (like.ndim - 1)))


# ------------------------------------------------------- answers as a student writes them
def interpolant(x0, noise, s, mistake=None):
    s = column(s, x0)
    if mistake == "swapped":
        return s * x0 + (1 - s) * noise, noise - x0
    return (1 - s) * x0 + s * noise, (x0 - noise if mistake == "sign" else noise - x0)


def euler(model, x, s, s_next, mistake=None):
    if mistake == "backwards":
        return x + (s - s_next) * model(x, s)
    return x + (s_next - s) * model(x, s_next if mistake == "next time" else s)


def heun(model, x, s, s_next, mistake=None):
    first = model(x, s)
    predicted = x + (s_next - s) * first
    if mistake == "at x":
        second = model(x, s_next)
    elif mistake == "at s":
        second = model(predicted, s)
    else:
        second = model(predicted, s_next)
    half = 1.0 if mistake == "no half" else 0.5
    return x + (s_next - s) * half * (first + second)


def sigmas(steps, sigma_min, sigma_max, rho, mistake=None):
    """Eq. (5) of Karras et al. 2022, then σ_N = 0."""
    i = torch.arange(steps, dtype=torch.float64)
    ramp = i / (steps if mistake == "over n" else steps - 1)
    if mistake == "rho 1":
        rho = 1.0
    values = (
        sigma_max ** (1 / rho)
        + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    ) ** rho
    if mistake == "no zero":
        return values
    return torch.cat([values, torch.zeros(1, dtype=torch.float64)])


def velocity(x, eps, alpha, sigma, mistake=None):
    alpha, sigma = column(alpha, x), column(sigma, x)
    x0 = x - sigma * eps if mistake == "no alpha" else (x - sigma * eps) / alpha
    return x0 - eps if mistake == "sign" else eps - x0


def graded(name, fn):
    spec = get_exercise(name)
    return [
        spec.grade_case(case, spec.call(fn, case.args)) for case in spec.cases(seed=3)
    ]


@pytest.mark.parametrize(
    "name, answer",
    [("flow_interpolant", interpolant), ("flow_euler_step", euler), ("flow_heun_step", heun),
     ("edm_sigma_schedule", sigmas), ("velocity_from_eps", velocity)],
)  # fmt: skip
def test_a_plain_torch_answer_passes_every_case(name, answer):
    for result in graded(name, answer):
        assert result.passed, result.message


@pytest.mark.parametrize(
    "name, answer, mistake, named",
    [
        ("flow_interpolant", interpolant, "swapped", "t and 1 - t swapped"),
        ("flow_interpolant", interpolant, "sign", "sign flipped"),
        ("flow_euler_step", euler, "backwards", "backwards in time"),
        ("flow_euler_step", euler, "next time", "at s_next instead of s"),
        ("flow_heun_step", heun, "at x", "at x instead of the Euler prediction"),
        ("flow_heun_step", heun, "at s", "at s instead of s_next"),
        ("flow_heun_step", heun, "no half", "sum of the two velocities"),
        ("edm_sigma_schedule", sigmas, "over n", "i / steps"),
        ("edm_sigma_schedule", sigmas, "rho 1", "rho = 1"),
        ("edm_sigma_schedule", sigmas, "no zero", "no final 0"),
        ("velocity_from_eps", velocity, "sign", "sign flipped"),
        ("velocity_from_eps", velocity, "no alpha", "without dividing by alpha"),
    ],
)
def test_each_classic_mistake_fails_and_is_named(name, answer, mistake, named):
    results = graded(name, lambda *args: answer(*args, mistake=mistake))
    assert not any(result.passed for result in results)
    # the shape differs for a missing final 0: the message says so instead
    assert any(
        named in result.message or "shape" in result.message for result in results
    )
    if mistake != "no zero":
        assert all(named in result.message for result in results), results[0].message


# ----------------------------------------------------------- the outcome-graded loss
def student_loss(mistake: str | None = None):
    """A flow-matching loss as a student writes it, with at most one classic mistake."""

    def flow_matching_loss(model, x0, noise, s):
        column_s = s[:, None]
        x_s = (1 - column_s) * x0 + column_s * noise
        if mistake in ("swapped", "time reversed"):
            x_s = column_s * x0 + (1 - column_s) * noise
        target = {"sign": x0 - noise, "time reversed": x0 - noise, "x0": x0,
                  "eps": noise}.get(mistake, noise - x0)  # fmt: skip
        if mistake == "no s":
            prediction = model(x_s)
        else:
            prediction = model(x_s, 1 - s if mistake == "1 - s" else s)
        return ((prediction - target) ** 2).mean()

    return flow_matching_loss


def judged(loss, case):
    spec = get_exercise("flow_matching_loss")
    return spec.grade_case(case, spec.call(loss, case.args))


@pytest.fixture(scope="module")
def cases():
    return get_exercise("flow_matching_loss").cases(seed=0)


def test_the_correct_loss_passes_on_every_seed(cases):
    for case in cases + get_exercise("flow_matching_loss").cases(seed=5):
        for loss in (get_exercise("flow_matching_loss").reference, student_loss()):
            result = judged(loss, case)
            assert result.passed, result.message


@pytest.mark.parametrize(
    "mistake, named",
    [
        ("sign", "sign is flipped"),
        ("swapped", "t and 1 - t are swapped"),
        ("time reversed", "time runs the wrong way"),
        ("x0", "learned x0"),
        ("eps", "learned the noise"),
        ("no s", "pass s to the model"),
        ("1 - s", "t and 1 - t are swapped"),
    ],
)
def test_each_classic_loss_mistake_fails_the_judge_and_is_named(cases, mistake, named):
    result = judged(student_loss(mistake), cases[0])
    assert not result.passed
    assert named in result.message, result.message


def test_the_driver_returns_the_weights_the_losses_and_the_probe(cases):
    weights, losses, probe = DRIVERS["train_tiny_flow"](
        student_loss(), *clone_args(cases[0].args)
    )
    assert weights.ndim == 1 and losses.shape == (ch09.STEPS,)
    assert float(losses[-50:].mean()) < float(losses[:50].mean())  # it trained
    assert probe.shape == (3,) and float(probe[0]) == float(probe[2])


def fresh_noise_loss(model, x0, noise, s):
    """The right loss in law, on noise and times of its own: it trains as well as the right
    one, and is not the loss of the noise it was given."""
    noise, s = torch.randn_like(x0), torch.rand(x0.shape[0])
    x_s = (1 - s[:, None]) * x0 + s[:, None] * noise
    return ((model(x_s, s) - (noise - x0)) ** 2).mean()


def exact_velocity_loss(model, x0, noise, s):
    """Regression on the mixture's exact velocity (hand-computed from the data's law): the
    same minimiser, not the flow-matching loss of the given noise."""
    from ddpm_course.flow_toy import gaussian_mixture_velocity

    x_s = (1 - s[:, None]) * x0 + s[:, None] * noise
    means = torch.tensor(ch09.MIXTURE_MEANS, dtype=torch.float64)
    covariances = torch.diag_embed(torch.tensor(ch09.MIXTURE_STDS) ** 2).double()
    target = gaussian_mixture_velocity(x_s.double(), s.double(), means, covariances)
    return ((model(x_s, s) - target.float()) ** 2).mean()


def summed_loss(model, x0, noise, s):
    """The squared error summed over the two coordinates: twice the mean, the same steps under
    Adam; accepted."""
    x_s = (1 - s[:, None]) * x0 + s[:, None] * noise
    return ((model(x_s, s) - (noise - x0)) ** 2).sum(1).mean()


def test_a_loss_that_trains_well_but_not_on_its_inputs_fails_and_is_told_why(cases):
    result = judged(fresh_noise_loss, cases[0])
    assert not result.passed and "fresh randomness" in result.message, result.message
    result = judged(exact_velocity_loss, cases[0])
    assert not result.passed and "another target" in result.message, result.message
    assert "< 0.2" in result.message  # the samples were good: only the probe failed
    assert judged(summed_loss, cases[0]).passed
