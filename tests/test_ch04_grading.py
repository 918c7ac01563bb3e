"""Chapter 04's exercises: the references pass, and the outcome-graded training step tells the
correct step from each classic mistake (and says which one it looks like).

The mistakes are written out below as a student would write them; each trains the tiny model
through the same driver as the grader and must fail the judge with a message naming it."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from ddpm_course.grading import ch04_training as ch04
from ddpm_course.grading.drivers import DRIVERS
from ddpm_course.grading.exercise import clone_args
from ddpm_course.grading.registry import get_exercise


def student_step(mistake: str | None = None):
    """A training step as a student writes it, with at most one classic mistake."""

    def training_step(model, optimizer, x0, alphas_cumprod, generator):
        n = x0.shape[0]
        t = torch.randint(0, alphas_cumprod.shape[0], (n,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        if mistake == "no noise":
            x_t = abar.sqrt() * x0
        if mistake == "t not passed":
            prediction = model(x_t)
        elif mistake == "t = 0":
            prediction = model(x_t, torch.zeros_like(t))
        else:
            prediction = model(x_t, t)
        loss = F.mse_loss(prediction, x0 if mistake == "x0 target" else noise)
        if mistake != "no zero_grad":
            optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return training_step


def judged(step, case):
    spec = get_exercise("training_step")
    return spec.grade_case(case, spec.call(step, case.args))


@pytest.fixture(scope="module")
def cases():
    return get_exercise("training_step").cases(seed=0)


@pytest.mark.parametrize(
    "name", ["timestep_embedding", "l_simple_loss", "ema_update", "cosine_betas"]
)
def test_each_reference_passes_its_own_cases(name):
    spec = get_exercise(name)
    for case in spec.cases(seed=1):
        assert spec.grade_case(case, spec.call(spec.reference, case.args)).passed, (
            case.label
        )


def test_ema_update_is_graded_by_what_it_does_in_place():
    """Returning the right value without changing ema fails: the driver looks at ema itself."""
    spec = get_exercise("ema_update")
    case = spec.cases(seed=0)[0]

    def returns_a_new_tensor(ema, weights, decay):
        return decay * ema + (1 - decay) * weights

    assert not spec.grade_case(case, spec.call(returns_a_new_tensor, case.args)).passed


def test_the_correct_step_passes_on_every_seed(cases):
    """The package's reference and a student's plain-torch step, on the cases of two seeds."""
    more = get_exercise("training_step").cases(seed=7)
    for case in cases + more:
        for step in (get_exercise("training_step").reference, student_step()):
            result = judged(step, case)
            assert result.passed, result.message


@pytest.mark.parametrize(
    "mistake, named",
    [
        ("no noise", "noise were never added"),
        ("x0 target", "predicts the clean image x0"),
        ("no zero_grad", "gradients pile up"),
        ("t not passed", "never used the timestep"),
        ("t = 0", "told t = 0"),
    ],
)
def test_each_classic_mistake_fails_the_judge_and_is_named(cases, mistake, named):
    result = judged(student_step(mistake), cases[0])
    assert not result.passed
    assert named in result.message, result.message


def test_the_driver_returns_the_weights_and_the_losses(cases):
    weights, losses = DRIVERS["train_tiny_denoiser"](
        student_step(), *clone_args(cases[0].args)
    )
    assert weights.ndim == 1 and losses.shape == (ch04.STEPS,)
    assert float(losses[-20:].mean()) < float(losses[:20].mean())  # it trained


# --------------------------------------------------------------------------- v_training_step
def student_v_step(mistake: str | None = None):
    """A v-objective training step as a student writes it, with at most one classic mistake:
    v's sign flipped, its two coefficients swapped, ε or x0 as the target."""

    def v_training_step(model, optimizer, x0, alphas_cumprod, generator):
        n = x0.shape[0]
        t = torch.randint(0, alphas_cumprod.shape[0], (n,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        target = {
            "sign": (1 - abar).sqrt() * x0 - abar.sqrt() * noise,
            "swapped": (1 - abar).sqrt() * noise - abar.sqrt() * x0,
            "eps": noise,
            "x0": x0,
        }.get(mistake, abar.sqrt() * noise - (1 - abar).sqrt() * x0)
        loss = F.mse_loss(model(x_t, t), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return v_training_step


def v_judged(step, case):
    spec = get_exercise("v_training_step")
    return spec.grade_case(case, spec.call(step, case.args))


def test_the_correct_v_step_passes_on_every_seed(cases):
    """The package's reference (GaussianDiffusion with objective "v") and a student's
    plain-torch step, on the cases of two seeds."""
    more = get_exercise("v_training_step").cases(seed=7)
    for case in cases + more:
        for step in (get_exercise("v_training_step").reference, student_v_step()):
            result = v_judged(step, case)
            assert result.passed, result.message


@pytest.mark.parametrize(
    "mistake, named",
    [
        ("sign", "sign of v is flipped"),
        ("swapped", "coefficients are swapped"),
        ("eps", "still the noise ε"),
        ("x0", "the clean image x0, not v"),
    ],
)
def test_each_classic_v_mistake_fails_and_is_named(cases, mistake, named):
    result = v_judged(student_v_step(mistake), cases[0])
    assert not result.passed
    assert named in result.message, result.message


def test_a_v_step_that_never_updates_fails_and_says_so(cases):
    """Untrained weights fail, and the message says that they never changed."""

    def no_step(model, optimizer, x0, alphas_cumprod, generator):
        return torch.zeros(())

    result = v_judged(no_step, cases[0])
    assert not result.passed
    assert "never changed" in result.message, result.message
