"""The statistics-graded simulations of chapters 01-02: the judges accept a correct simulation
written independently of the package, and reject each classic mistake their feedback names by
many standard errors (the cases hold 20,000 paths; each check costs well under a second), and
reject answers with the right statistics that are not the scheme on the given noise (its law
drawn afresh, another scheme, the rows of noise in another order), saying which."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_course.grading.registry import get_exercise


def judged(name: str, function, case):
    spec = get_exercise(name)
    return spec.grade_case(case, spec.call(function, case.args))


# ------------------------------------------------------------------------------ ou_endpoint
def student_ou(mistake: str | None = None):
    def ou_endpoint(x0, theta, sigma, T, noise):
        steps = noise.shape[0]
        dt = T / steps
        x = torch.full(noise.shape[1:], float(x0), dtype=noise.dtype)
        if mistake == "exact transition":  # the SDE's marginal, not the scheme's
            decay = math.exp(-theta * T)
            return (
                x0 * decay + sigma * math.sqrt((1 - decay**2) / (2 * theta)) * noise[0]
            )
        for k in range(steps):
            size = {"dt noise": sigma * dt, "sigma squared": sigma**2 * math.sqrt(dt)}
            scale = size.get(mistake, sigma * math.sqrt(dt))
            drift = theta * x if mistake == "drift sign" else -theta * x
            x = x + drift * dt + scale * noise[k]
        return x

    return ou_endpoint


@pytest.fixture(scope="module")
def ou_cases():
    return get_exercise("ou_endpoint").cases(seed=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_correct_ou_simulation_passes_on_every_seed(seed):
    for case in get_exercise("ou_endpoint").cases(seed=seed):
        result = judged("ou_endpoint", student_ou(), case)
        assert result.passed, result.message


@pytest.mark.parametrize(
    "mistake, named",
    [
        ("dt noise", "not σ Δ ξ"),
        ("sigma squared", "not σ² sqrt(Δ) ξ"),
        ("drift sign", "towards 0"),
    ],
)
def test_each_classic_ou_mistake_fails_and_is_named(ou_cases, mistake, named):
    for case in ou_cases:
        result = judged("ou_endpoint", student_ou(mistake), case)
        assert not result.passed, case.label
        assert named in result.message, result.message


def test_the_sdes_exact_marginal_fails_the_fine_grid_by_its_noise_and_the_coarse_by_its_law(
    ou_cases,
):
    fine, coarse = ou_cases
    result = judged("ou_endpoint", student_ou("exact transition"), fine)
    # its statistics match on the fine grid; what gives it away is that it ignores the noise rows
    assert not result.passed
    assert "(allowed 5), but the endpoints do not follow" in result.message, (
        result.message
    )
    result = judged("ou_endpoint", student_ou("exact transition"), coarse)
    assert not result.passed and "not the Euler-Maruyama scheme" in result.message


def hostile_ou(kind: str):
    """Answers with the right statistics that skip the scheme or its noise."""

    def ou_endpoint(x0, theta, sigma, T, noise):
        steps, n = noise.shape
        dt = T / steps
        if (
            kind == "fresh law"
        ):  # the scheme's own law at T, drawn afresh (no simulation)
            factor = 1 - theta * dt
            variance = sigma**2 * dt * sum(factor ** (2 * k) for k in range(steps))
            return x0 * factor**steps + math.sqrt(variance) * torch.randn(
                n, dtype=noise.dtype
            )
        if kind == "exact steps":  # the SDE's exact transitions on the given rows
            decay = math.exp(-theta * dt)
            x = torch.full((n,), float(x0), dtype=noise.dtype)
            for k in range(steps):
                x = (
                    decay * x
                    + sigma * math.sqrt((1 - decay**2) / (2 * theta)) * noise[k]
                )
            return x
        return student_ou()(x0, theta, sigma, T, noise.flip(0))  # the rows reversed

    return ou_endpoint


@pytest.mark.parametrize(
    "kind, named",
    [
        ("fresh law", "do not follow the given noise"),
        ("exact steps", "e^(-θΔ) in place of 1 - θΔ"),
        ("rows reversed", "given noise"),
    ],
)
def test_right_statistics_without_the_scheme_on_the_given_noise_fail(
    ou_cases, kind, named
):
    fine, coarse = ou_cases
    assert not judged("ou_endpoint", hostile_ou(kind), coarse).passed
    result = judged("ou_endpoint", hostile_ou(kind), fine)
    assert not result.passed and named in result.message, result.message


def test_a_float32_ou_simulation_passes():
    def float32_ou(x0, theta, sigma, T, noise):
        return student_ou()(x0, theta, sigma, T, noise.float())

    for case in get_exercise("ou_endpoint").cases(seed=4):
        result = judged("ou_endpoint", float32_ou, case)
        assert result.passed, result.message


def test_the_em_closed_form_is_the_monte_carlo_variance_of_many_paths():
    """The judge's reference, EM's own variance on a coarse grid, against 200,000 paths."""
    from ddpm_course.grading.ch01_sde import _ou_em_moments

    noise = torch.randn(
        8, 200_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    x = student_ou()(1.5, 1.0, 0.8, 2.0, noise)
    mean, variance = _ou_em_moments(1.5, 1.0, 0.8, 2.0, 8)
    assert float(x.mean()) == pytest.approx(mean, abs=4 * math.sqrt(variance / 2e5))
    assert float(x.var()) == pytest.approx(variance, rel=4 * math.sqrt(2 / 2e5))


# ------------------------------------------------------------------------------ vp_sde_path
def student_vp(mistake: str | None = None):
    def vp_sde_path(x0, beta_min, beta_max, noise):
        steps = noise.shape[0]
        ds = 1.0 / steps
        x, path = x0, [x0]
        for k in range(steps):
            s = 0.0 if mistake == "constant beta" else k * ds
            beta = beta_min + s * (beta_max - beta_min)
            half = 1.0 if mistake == "no half" else 0.5
            noise_scale = (
                beta * math.sqrt(ds)
                if mistake == "beta diffusion"
                else math.sqrt(beta * ds)
            )
            if mistake == "dt noise":
                noise_scale = math.sqrt(beta) * ds
            x = x - half * beta * x * ds + noise_scale * noise[k]
            path.append(x)
        return torch.stack(path)

    return vp_sde_path


@pytest.mark.parametrize("seed", [0, 1])
def test_a_correct_vp_sde_simulation_passes(seed):
    for case in get_exercise("vp_sde_path").cases(seed=seed):
        result = judged("vp_sde_path", student_vp(), case)
        assert result.passed, result.message


def hostile_vp(kind: str):
    """Paths with the right marginals that skip the scheme or its noise."""

    def vp_sde_path(x0, beta_min, beta_max, noise):
        steps = noise.shape[0]
        if kind == "fresh marginals":  # each row drawn from the closed form, afresh
            rows = [x0]
            for k in range(1, steps + 1):
                s = k / steps
                integral = beta_min * s + 0.5 * s**2 * (beta_max - beta_min)
                mean, std = math.exp(-0.5 * integral), math.sqrt(-math.expm1(-integral))
                rows.append(mean * x0 + std * torch.randn_like(x0))
            return torch.stack(rows)
        x, path = (
            x0,
            [x0],
        )  # DDPM's chain, sqrt(1 - β Δ) x + sqrt(β Δ) ξ, on the given rows
        for k in range(steps):
            b = (beta_min + k / steps * (beta_max - beta_min)) / steps
            x = math.sqrt(1 - b) * x + math.sqrt(b) * noise[k]
            path.append(x)
        return torch.stack(path)

    return vp_sde_path


@pytest.mark.parametrize(
    "kind, named",
    [("fresh marginals", "do not follow the given noise"), ("ddpm chain", "departs")],
)
def test_right_marginals_without_the_scheme_on_the_given_noise_fail(kind, named):
    for case in get_exercise("vp_sde_path").cases(seed=3):
        result = judged("vp_sde_path", hostile_vp(kind), case)
        assert not result.passed and named in result.message, result.message


@pytest.mark.parametrize(
    "mistake, named",
    [
        ("no half", "with the ½"),
        ("beta diffusion", "not β(s)"),
        ("constant beta", "grows along the path"),
        ("dt noise", "square root of Δ"),
    ],
)
def test_each_classic_vp_sde_mistake_fails_and_is_named(mistake, named):
    case = get_exercise("vp_sde_path").cases(seed=0)[0]
    result = judged("vp_sde_path", student_vp(mistake), case)
    assert not result.passed
    assert named in result.message, result.message


# --------------------------------------------------------------------------- langevin_chain
def student_langevin(mistake: str | None = None):
    def langevin_chain(score, x_init, step_size, noise):
        x = x_init
        for k in range(noise.shape[0]):
            scale = {"sqrt eps": math.sqrt(step_size), "no noise": 0.0}.get(
                mistake, math.sqrt(2 * step_size)
            )
            sign = -1.0 if mistake == "descent" else 1.0
            x = x + sign * step_size * score(x) + scale * noise[k]
        return x

    return langevin_chain


def test_a_correct_langevin_chain_passes():
    for seed in (0, 1):
        case = get_exercise("langevin_chain").cases(seed=seed)[0]
        result = judged("langevin_chain", student_langevin(), case)
        assert result.passed, result.message


def test_the_target_law_drawn_afresh_fails_the_langevin_chain():
    """A chain's stationary law, sampled directly with fresh noise: right statistics, no chain."""
    from ddpm_course.grading.ch02_score import _ula_covariance

    def stationary(score, x_init, step_size, noise):
        cov = _ula_covariance(score.params["precision"], step_size)
        draws = torch.randn(x_init.shape, dtype=x_init.dtype)
        return score.params["mean"] + draws @ torch.linalg.cholesky(cov).T

    for seed in (0, 1):
        case = get_exercise("langevin_chain").cases(seed=seed)[0]
        result = judged("langevin_chain", stationary, case)
        assert not result.passed and "do not follow" in result.message, result.message
        assert "standard errors off" in result.message  # its statistics were right


@pytest.mark.parametrize(
    "mistake, named",
    [
        ("sqrt eps", "not sqrt(ε) z"),
        ("no noise", "collapsed onto the mode"),
        ("descent", "UP the score"),
    ],
)
def test_each_classic_langevin_mistake_fails_and_is_named(mistake, named):
    case = get_exercise("langevin_chain").cases(seed=0)[0]
    result = judged("langevin_chain", student_langevin(mistake), case)
    assert not result.passed
    assert named in result.message, result.message


# ----------------------------------------------------------------- annealed_langevin_sample
def student_annealed(mistake: str | None = None):
    def annealed_langevin_sample(score, sigmas, x_init, step_lr, noise):
        x = x_init
        levels = sigmas.tolist()
        steps_each = noise.shape[0] // len(levels)
        if mistake == "ascending":
            levels = levels[::-1]
        for i, sigma in enumerate(levels):
            alpha = (
                step_lr
                if mistake == "unscaled step"
                else step_lr * sigma**2 / levels[-1] ** 2
            )
            if mistake == "no annealing":
                sigma, alpha = levels[-1], step_lr
            for k in range(steps_each):
                z = noise[i * steps_each + k]
                noise_scale = (
                    math.sqrt(alpha / 2)
                    if mistake == "half noise"
                    else math.sqrt(alpha)
                )
                x = x + alpha / 2 * score(x, sigma) + noise_scale * z
        return x

    return annealed_langevin_sample


def test_a_correct_annealed_langevin_sampler_passes():
    for seed in (0, 1):
        case = get_exercise("annealed_langevin_sample").cases(seed=seed)[0]
        result = judged("annealed_langevin_sample", student_annealed(), case)
        assert result.passed, result.message


@pytest.mark.parametrize(
    "mistake, named",
    [
        ("no annealing", "never crossed between them"),
        ("unscaled step", "never crossed between them"),
        ("half noise", "sqrt(α_i) z"),
    ],
)
def test_each_classic_annealing_mistake_fails_and_is_named(mistake, named):
    case = get_exercise("annealed_langevin_sample").cases(seed=0)[0]
    result = judged("annealed_langevin_sample", student_annealed(mistake), case)
    assert not result.passed
    assert named in result.message, result.message


@pytest.mark.parametrize(
    "kind, named",
    [
        ("fresh mixture", "do not follow"),
        ("final denoising", "of the chains end within"),
    ],
)
def test_right_shares_without_the_chain_on_the_given_noise_fail(kind, named):
    def hostile(score, sigmas, x_init, step_lr, noise):
        if kind == "fresh mixture":  # the mixture drawn directly (its law, fresh noise)
            means, weights = score.params["means"], score.params["weights"]
            component = torch.multinomial(weights, x_init.shape[0], replacement=True)
            spread = (0.5**2 + float(sigmas[-1]) ** 2) ** 0.5
            return means[component] + spread * torch.randn_like(x_init)
        x = student_annealed()(score, sigmas, x_init, step_lr, noise)
        return x + float(sigmas[-1]) ** 2 * score(
            x, float(sigmas[-1])
        )  # Tweedie's step

    case = get_exercise("annealed_langevin_sample").cases(seed=2)[0]
    result = judged("annealed_langevin_sample", hostile, case)
    assert not result.passed and named in result.message, result.message
