"""Chapter 03's whole bound, graded by its outcome (``bound_bpd``, and the bug hunt
``bound_bpd_x0``): on 8-bit Gaussian data with the exact denoiser the bound's mean excess over
the data's exact NLL has a closed form; the judges accept a correct bound written independently of
the package, reject each classic mistake and name it, and the closed form itself holds against a
long Monte-Carlo run. Each check costs well under a second per case."""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import pytest
import torch

from ddpm_course.diffusion import GaussianDiffusion
from ddpm_course.grading import elbo_bound
from ddpm_course.grading.registry import get_exercise
from ddpm_course.schedules import NoiseSchedule
from ddpm_course.score import gaussian_eps_model

ROOT = Path(__file__).resolve().parents[1]


def judged(name: str, function, case):
    spec = get_exercise(name)
    return spec.grade_case(case, spec.call(function, case.args))


def student_bound(mistake: str | None = None, predicts: str = "eps"):
    """A bound written from the chapter's formulas with torch alone (as a student would), with
    one classic mistake planted on request."""

    def bound(model, betas, model_variance, x0, noise):
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        nats = torch.zeros_like(x0)
        if mistake != "no prior":
            mean_T, var_T = abar[-1].sqrt() * x0, 1 - abar[-1]
            nats = nats + 0.5 * (var_T + mean_T**2 - 1 - torch.log(var_T))
        for t in range(len(betas)):
            t_batch = torch.full((x0.shape[0],), t, dtype=torch.long)
            x_t = abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * noise[t]
            if predicts == "eps":
                x0_hat = (x_t - (1 - abar[t]).sqrt() * model(x_t, t_batch)) / abar[
                    t
                ].sqrt()
            else:
                x0_hat = model(x_t, t_batch)
            coef_x0 = betas[t] * abar_prev[t].sqrt() / (1 - abar[t])
            coef_xt = (1 - abar_prev[t]) * alphas[t].sqrt() / (1 - abar[t])
            model_mean = coef_x0 * x0_hat + coef_xt * x_t
            var = model_variance[t]
            if t == 0:
                if mistake == "no decoder":
                    continue
                std = var if mistake == "log-scale" else var.sqrt()
                upper = torch.special.ndtr((x0 + 1 / 255 - model_mean) / std)
                lower = torch.special.ndtr((x0 - 1 / 255 - model_mean) / std)
                upper = torch.where(x0 > 0.999, 1.0, upper)
                lower = torch.where(x0 < -0.999, 0.0, lower)
                nats = nats - torch.log((upper - lower).clamp(min=1e-12))
            else:
                true_mean = coef_x0 * x0 + coef_xt * x_t
                true_var = betas[t] * (1 - abar_prev[t]) / (1 - abar[t])
                if mistake == "beta":
                    true_var = betas[t]
                nats = nats + 0.5 * (
                    torch.log(var / true_var)
                    + (true_var + (true_mean - model_mean) ** 2) / var
                    - 1
                )
        flat = nats.flatten(1)
        per_example = flat.sum(1) if mistake == "sum" else flat.mean(1)
        return per_example if mistake == "nats" else per_example / math.log(2)

    return bound


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_bound_written_from_the_formulas_passes(seed):
    for case in get_exercise("bound_bpd").cases(seed):
        result = judged("bound_bpd", student_bound(), case)
        assert result.passed, f"{case.label}: {result.message}"
    for case in get_exercise("bound_bpd_x0").cases(seed):
        result = judged("bound_bpd_x0", student_bound(predicts="x0"), case)
        assert result.passed, f"{case.label}: {result.message}"


@pytest.mark.parametrize(
    "mistake, case_number, named",
    [
        ("nats", 0, "it is in nats"),
        ("sum", 0, "the sum over each example's dimensions"),
        ("no decoder", 0, "the decoder's L_0 is missing"),
        ("no prior", 1, "the prior term L_T is missing"),
        ("beta", 0, "was given the variance β_t"),
        ("log-scale", 0, "the decoder's log-scale is the log-variance"),
    ],
)
def test_each_classic_mistake_fails_and_is_named(mistake, case_number, named):
    case = get_exercise("bound_bpd").cases(seed=0)[case_number]
    result = judged("bound_bpd", student_bound(mistake), case)
    assert not result.passed and named in result.message, result.message


def _given_buggy_routine():
    notebook = nbformat.read(ROOT / "solutions" / "03_elbo.ipynb", as_version=4)
    (source,) = [c.source for c in notebook.cells if c.source.startswith("def buggy_")]
    return source


def _define(source: str, name: str):
    namespace = {"math": math, "torch": torch}
    exec(source.replace("def buggy_bound_bpd_x0(", f"def {name}("), namespace)
    return namespace[name]


@pytest.mark.parametrize(
    "fixed, named",
    [
        ((), "both of its bugs are still there"),
        (("true_var = betas[t]",), "the sum over each example's dimensions"),
        (
            (".sum(1)",),
            "below the exact NLL, which no bound can be; the forward posterior",
        ),
    ],
)
def test_the_bug_hunts_given_routine_fails_until_both_bugs_are_fixed(fixed, named):
    fixes = {
        "true_var = betas[t]": "true_var = betas[t] * (1 - abar_prev[t]) / (1 - abar[t])",
        ".sum(1)": ".mean(1)",
    }
    source = _given_buggy_routine()
    for line in fixed:
        assert line in source
        source = source.replace(line, fixes[line])
    routine = _define(source, "bound_bpd_x0")
    for case in get_exercise("bound_bpd_x0").cases(seed=0):
        result = judged("bound_bpd_x0", routine, case)
        assert not result.passed and named in result.message, result.message
    both = _given_buggy_routine()
    for line, fix in fixes.items():
        both = both.replace(line, fix)
    for case in get_exercise("bound_bpd_x0").cases(seed=0):
        result = judged("bound_bpd_x0", _define(both, "bound_bpd_x0"), case)
        assert result.passed, result.message


def test_the_datas_own_entropy_without_the_model_fails_every_case():
    """Every case has a closed-form excess well above its allowance, so a number that ignores
    the model (the empirical entropy of the batch) cannot pass any of them."""

    def entropy_of_the_batch(model, betas, model_variance, x0, noise):
        values, counts = torch.unique(x0, return_counts=True)
        probability = counts.double() / x0.numel()
        return (
            -torch.log2(probability[torch.searchsorted(values, x0)]).flatten(1).mean(1)
        )

    for case in get_exercise("bound_bpd").cases(seed=0):
        result = judged("bound_bpd", entropy_of_the_batch, case)
        assert not result.passed, result.message


def test_the_exact_models_sent_to_the_sandbox_are_the_chapters():
    schedule = NoiseSchedule.from_name("cosine", 50)
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(64, 3, generator=generator, dtype=torch.float64)
    t = torch.randint(0, 50, (64,), generator=generator)
    params = {"alphas_cumprod": schedule.alphas_cumprod, "mean": 0.3, "std": 0.15}
    eps = gaussian_eps_model(schedule.alphas_cumprod, 0.3, 0.15)(x_t, t)
    torch.testing.assert_close(elbo_bound.GaussianEpsModel(**params)(x_t, t), eps)
    x0 = GaussianDiffusion(schedule.betas).predict_x0_from_eps(x_t, t, eps)
    torch.testing.assert_close(
        elbo_bound.GaussianX0Model(**params)(x_t, t), x0, rtol=1e-9, atol=1e-9
    )


def test_the_reference_is_the_packages_calc_bpd_loop_on_the_same_noise():
    """The exact-variance case through ``calc_bpd_loop`` with ``learned_range``, whose extra
    channel is solved for the exact variance (as the chapter does); the loop draws x_t from
    t = T - 1 down to 0, so the same generator gives noise[t] in reverse order."""
    case = get_exercise("bound_bpd").cases(seed=0)[1]
    model, betas, model_variance, x0, _ = case.args
    diffusion = GaussianDiffusion(betas, var_type="learned_range")
    s = diffusion.schedule
    min_log, max_log = s.posterior_log_variance_clipped, torch.log(s.betas)
    channel = 2 * (torch.log(model_variance) - min_log) / (max_log - min_log) - 1
    assert bool((channel.abs() <= 1).all())

    def learned(x_t, t):
        return torch.cat([model(x_t, t), channel[t, None].expand_as(x_t)], dim=1)

    out = diffusion.calc_bpd_loop(
        learned, x0, clip_denoised=False, generator=torch.Generator().manual_seed(9)
    )
    draws = torch.Generator().manual_seed(9)
    noise = torch.stack(
        [torch.randn(x0.shape, generator=draws, dtype=x0.dtype) for _ in betas]
    ).flip(0)
    expected = elbo_bound.reference_bound_bpd(model, betas, model_variance, x0, noise)
    torch.testing.assert_close(out["total_bpd"], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("configs", ["BOUND_CONFIGS", "BUG_HUNT_CONFIGS"])
def test_the_closed_form_excess_holds_on_many_points(configs):
    """On 32,768 points (eight times a case) the package's bound lands on the closed form
    within five standard errors without the slack for the discrete data, and the exact NLL's
    mean on H."""
    spec = get_exercise("bound_bpd" if configs == "BOUND_CONFIGS" else "bound_bpd_x0")
    model_class = (
        elbo_bound.GaussianEpsModel
        if configs == "BOUND_CONFIGS"
        else elbo_bound.GaussianX0Model
    )
    cases = elbo_bound._bound_cases(
        torch.Generator().manual_seed(3),
        getattr(elbo_bound, configs),
        (1,),
        model_class,
        points=8 * elbo_bound.BOUND_POINTS,
    )
    for case in cases:
        model, betas, model_variance, x0, _ = case.args
        mean, std = model.params["mean"], model.params["std"]
        nll = elbo_bound._exact_nll_bits(x0, mean, std).flatten(1).mean(1)
        difference = spec.reference(*case.args) - nll
        excess, _ = elbo_bound._closed_form_excess(betas, model_variance, mean, std)
        standard_error = float(difference.std()) / math.sqrt(len(difference))
        assert abs(float(difference.mean()) - excess) <= 5 * standard_error, case.label
        entropy = elbo_bound._entropy_bits(mean, std)
        assert abs(float(nll.mean()) - entropy) <= 5 * float(nll.std()) / math.sqrt(
            len(nll)
        ), case.label
