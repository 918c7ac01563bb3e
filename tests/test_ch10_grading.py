"""Chapter 10's exercises: plain-torch answers (written here from the papers' formulas) pass, each
classic mistake fails with a message naming it, the outcome-graded consistency loss tells the
correct loss from each mistake, and the committed notebooks grade to full marks (solutions)
and zero (exercises) with `ddpm-course grade`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ddpm_course.flow_toy import gaussian_mixture_velocity
from ddpm_course.grading import ch10_few_steps as ch10
from ddpm_course.grading import consistency_outcome
from ddpm_course.grading.drivers import DRIVERS
from ddpm_course.grading.exercise import clone_args
from ddpm_course.grading.registry import get_exercise

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------- answers as a student writes them
def patchify_by_loops(x, p, mistake=None):
    """Token k = (i, j) in row-major order; inside it, (row a, column b, channel c), c fastest."""
    n, c, h, w = x.shape
    tokens = []
    for i in range(h // p):
        for j in range(w // p):
            patch = x[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p]  # (N, C, p, p)
            if mistake == "channel first":
                tokens.append(patch.reshape(n, -1))
            else:
                tokens.append(patch.permute(0, 2, 3, 1).reshape(n, -1))
    return torch.stack(tokens, dim=1)


def unpatchify_by_loops(tokens, p, c, h, w, mistake=None):
    n = tokens.shape[0]
    x = tokens.new_zeros(n, c, h, w)
    for k in range(tokens.shape[1]):
        i, j = divmod(k, w // p)
        if mistake == "channel first":
            patch = tokens[:, k].reshape(n, c, p, p)
        else:
            patch = tokens[:, k].reshape(n, p, p, c).permute(0, 3, 1, 2)
        x[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p] = patch
    return x


def block(x, c, modulation, attention, mlp, mistake=None):
    """Peebles & Xie 2023, Sec. 3.2 (adaLN-Zero), written from the paper."""
    shift1, scale1, gate1, shift2, scale2, gate2 = modulation(c).chunk(6, dim=1)

    def ln(tokens):  # LayerNorm without affine parameters, by hand
        mean = tokens.mean(-1, keepdim=True)
        var = tokens.var(-1, unbiased=False, keepdim=True)
        return (tokens - mean) / torch.sqrt(var + 1e-6)

    one = 0.0 if mistake == "no 1 +" else 1.0
    h = attention(ln(x) * (one + scale1[:, None]) + shift1[:, None])
    x = x + (h if mistake == "no gate" else gate1[:, None] * h)
    h = mlp(ln(x) * (one + scale2[:, None]) + shift2[:, None])
    return x + (h if mistake == "no gate" else gate2[:, None] * h)


def two_steps(teacher, x, s, h, mistake=None):
    x1 = x - h * teacher(x, s)
    x2 = x1 - h * teacher(
        x if mistake == "at x" else x1, s if mistake == "at s" else s - h
    )
    return (x - x2) / (h if mistake == "over h" else 2 * h)


def boundary(model, x, sigma, sigma_data, sigma_min, mistake=None):
    """Song et al. 2023, Appendix C."""
    if mistake == "edm":  # Karras et al. 2022's c_skip and c_out, not shifted
        sigma_min = 0.0
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = sigma_data * (sigma - sigma_min) / torch.sqrt(sigma**2 + sigma_data**2)
    f = c_skip.view(-1, *[1] * (x.ndim - 1)) * x + c_out.view(
        -1, *[1] * (x.ndim - 1)
    ) * model(x, sigma)
    return c_skip, c_out, f


def graded(name, fn):
    spec = get_exercise(name)
    return [
        spec.grade_case(case, spec.call(fn, case.args)) for case in spec.cases(seed=3)
    ]


@pytest.mark.parametrize(
    "name, answer",
    [("patchify", patchify_by_loops), ("unpatchify", unpatchify_by_loops),
     ("adaln_zero_block", block), ("two_step_target", two_steps),
     ("consistency_boundary", boundary)],
)  # fmt: skip
def test_a_plain_torch_answer_passes_every_case(name, answer):
    for result in graded(name, answer):
        assert result.passed, result.message


@pytest.mark.parametrize(
    "name, answer, mistake, named",
    [
        ("patchify", patchify_by_loops, "channel first", "F.unfold's order"),
        ("unpatchify", unpatchify_by_loops, "channel first", "F.fold's order"),
        ("adaln_zero_block", block, "no gate", "no gates"),
        ("adaln_zero_block", block, "no 1 +", "without the 1 +"),
        ("two_step_target", two_steps, "at x", "at x instead of the midpoint"),
        ("two_step_target", two_steps, "at s", "at s instead of s - h"),
        ("two_step_target", two_steps, "over h", "dividing by h"),
        ("consistency_boundary", boundary, "edm", "without the shift by sigma_min"),
    ],
)
def test_each_classic_mistake_fails_and_is_named(name, answer, mistake, named):
    results = graded(name, lambda *args: answer(*args, mistake=mistake))
    failed = [result for result in results if not result.passed]
    # one channel makes the channel order moot; a zero modulation makes every block the identity
    assert len(failed) >= len(results) - 1
    assert all(named in result.message for result in failed), failed[0].message


def test_the_adaln_zero_block_starts_as_the_identity():
    (case,) = [case for case in get_exercise("adaln_zero_block").cases(seed=0)
               if "zero" in case.label]  # fmt: skip
    x = case.args[0]
    torch.testing.assert_close(ch10.reference_adaln_zero_block(*case.args), x)


def test_the_mixture_teacher_is_the_exact_mixture_velocity():
    teacher = consistency_outcome.mixture_teacher()
    x = torch.randn(
        64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    s = torch.rand(64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    want = gaussian_mixture_velocity(
        x, s, teacher.params["means"], teacher.params["covariances"]
    )
    torch.testing.assert_close(teacher(x, s), want, rtol=1e-12, atol=1e-12)
    # at s = 1 the exact velocity is x minus the data's mean (E[x0 | x1] = E[x0])
    torch.testing.assert_close(
        teacher(x, 1.0), x - teacher.params["means"].mean(0), rtol=1e-12, atol=1e-12
    )


# --------------------------------------------------------- the outcome-graded loss
def student_loss(mistake: str | None = None):
    """A consistency-distillation loss as a student writes it, with at most one mistake."""

    def consistency_loss(model, teacher, x0, noise, s, h):
        def f(x, time):
            if mistake == "no boundary":
                return model(x, time)
            return x - time[:, None] * model(x, time)

        column = s[:, None]
        x_s = (1 - column) * x0 + column * noise
        with torch.no_grad():
            if mistake == "student step":
                x_hat = x_s - h * model(x_s, s)
            elif mistake == "teacher sign":
                x_hat = x_s + h * teacher(x_s, s)
            elif mistake == "heun":
                slope = teacher(x_s, s)
                x_hat = x_s - h * (slope + teacher(x_s - h * slope, s - h)) / 2
            else:
                x_hat = x_s - h * teacher(x_s, s)
        if mistake == "teacher target":
            target = x_hat - (s - h)[:, None] * teacher(x_hat, s - h)
        elif mistake == "no stop-gradient":
            target = f(x_hat, s - h)
        else:
            with torch.no_grad():
                target = f(x_hat, s if mistake == "swapped" else s - h)
        online = f(x_s, s - h if mistake == "swapped" else s)
        return ((online - target) ** 2).mean()

    return consistency_loss


def judged(loss, case):
    spec = get_exercise("consistency_loss")
    return spec.grade_case(case, spec.call(loss, case.args))


@pytest.fixture(scope="module")
def cases():
    return get_exercise("consistency_loss").cases(seed=0)


def test_the_correct_loss_passes_on_every_seed(cases):
    spec = get_exercise("consistency_loss")
    for case in cases + spec.cases(seed=5):
        for loss in (spec.reference, student_loss(), student_loss("heun")):
            result = judged(loss, case)
            assert result.passed, result.message


@pytest.mark.parametrize(
    "mistake, named",
    [
        ("no stop-gradient", "gradient flows through the target"),
        ("teacher target", "target is an x0 estimate"),
        ("student step", "student's network"),
        ("swapped", "ran away"),
        ("no boundary", "ran away"),
        ("teacher sign", "towards the data (s going down"),
    ],
)
def test_each_classic_loss_mistake_fails_the_judge_and_is_named(cases, mistake, named):
    result = judged(student_loss(mistake), cases[0])
    assert not result.passed
    assert named in result.message, result.message


def test_the_driver_returns_the_weights_the_losses_and_where_the_gradient_went(cases):
    weights, losses, gradient_rows = DRIVERS["train_tiny_consistency"](
        student_loss(), *clone_args(cases[0].args)
    )
    assert weights.ndim == 1 and losses.shape == (consistency_outcome.STEPS,)
    assert float(gradient_rows) == 1.0  # the online point's output only
    assert math.isfinite(float(losses[-1]))
