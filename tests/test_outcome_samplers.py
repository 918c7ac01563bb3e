"""The outcome-graded samplers of chapters 05-07: the judges accept the correct sampler and
reject each classic mistake their feedback names, and samples that do not follow from the given
noise (real digits, another sampler's) however good they look.

The mistakes are written out as a student writes them (plain torch, no package) and run through
the same case and judge as ``check()`` and the grader. Each sampler case runs the shipped model
(about 5 s of CPU per loop of 200 samples)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from ddpm_course.data import digits
from ddpm_course.grading.outcome import TracedModel, traced_model
from ddpm_course.grading.registry import get_exercise
from ddpm_course.pretrained import load_pretrained


def judged(name: str, function, case):
    spec = get_exercise(name)
    return spec.grade_case(case, spec.call(function, case.args))


@pytest.fixture(scope="module")
def ddim_case():
    return get_exercise("ddim_sample").cases(seed=0)[0]


@pytest.fixture(scope="module")
def ddpm_case():
    return get_exercise("respaced_ddpm_sample").cases(seed=0)[0]


# ------------------------------------------------------------------ the traced shipped model
def test_the_traced_model_computes_what_the_shipped_model_computes():
    """The program the sandbox receives gives the shipped network's outputs (another batch
    size than the one it was traced with, and gradients through it)."""
    model = load_pretrained("digits")[0].eval()
    traced = traced_model("digits")
    rebuilt = TracedModel(**traced.params)  # as decode_args rebuilds it in the sandbox
    x = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 10, 500, 900, 999])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, t), model(x, t), rtol=1e-5, atol=1e-5)
    assert traced.params["program"].dtype == torch.uint8


# ------------------------------------------------------------------------------ ddim_sample
def student_ddim(mistake: str | None = None):
    def ddim_sample(model, alphas_cumprod, timesteps, x_T):
        x, visited, n = x_T, timesteps.tolist(), x_T.shape[0]
        if mistake == "increasing":
            visited = visited[::-1]
        for k, t in enumerate(visited):
            abar = alphas_cumprod[t].float()
            if mistake == "t - 1":
                abar_prev = alphas_cumprod[max(t - 1, 0)].float()
            elif k + 1 < len(visited):
                abar_prev = alphas_cumprod[visited[k + 1]].float()
            elif mistake == "no final step":
                break
            else:
                abar_prev = torch.tensor(1.0)
            with torch.no_grad():
                eps = model(x, torch.full((n,), t, dtype=torch.long))
            x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
            if mistake != "no clip":
                x0 = x0.clamp(-1, 1)
                eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
            x = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
        return x

    return ddim_sample


@pytest.mark.parametrize("variant", [None, "no clip"])
def test_a_correct_ddim_loop_passes_with_or_without_clipping(ddim_case, variant):
    result = judged("ddim_sample", student_ddim(variant), ddim_case)
    assert result.passed, result.message


@pytest.mark.parametrize(
    "mistake, named",
    [
        ("no final step", "stops one step early"),
        ("t - 1", "NEXT VISITED"),
        ("increasing", "from the noisiest down"),
    ],
)
def test_each_classic_ddim_mistake_fails_and_is_named(ddim_case, mistake, named):
    result = judged("ddim_sample", student_ddim(mistake), ddim_case)
    assert not result.passed
    assert named in result.message, result.message


def test_samples_that_do_not_follow_from_the_given_noise_fail(ddim_case):
    """Real digits fail; so do the correct sampler's own samples in another order: the same
    FD, but not the samples of this x_T."""

    def returns_real_digits(model, alphas_cumprod, timesteps, x_T):
        return digits(size=16, split="train")[0][: x_T.shape[0]]

    def another_noise(model, alphas_cumprod, timesteps, x_T):
        return student_ddim()(model, alphas_cumprod, timesteps, x_T.flip(0))

    assert not judged("ddim_sample", returns_real_digits, ddim_case).passed
    result = judged("ddim_sample", another_noise, ddim_case)
    assert not result.passed and "not the ones this noise leads to" in result.message


# --------------------------------------------------------------------- respaced_ddpm_sample
def student_respaced(fixed: tuple[str, ...]):
    """The notebook's buggy sampler with the named bugs fixed ("beta", "t")."""

    def respaced_ddpm_sample(model, alphas_cumprod, timesteps, x_T, noise):
        x = x_T
        previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        betas = 1 - alphas_cumprod / previous
        visited = timesteps.tolist()
        for k, t in enumerate(visited):
            abar = alphas_cumprod[t]
            if k + 1 < len(visited):
                abar_prev = alphas_cumprod[visited[k + 1]]
            else:
                abar_prev = alphas_cumprod.new_ones(())
            beta = 1 - abar / abar_prev if "beta" in fixed else betas[t]
            seen = t if "t" in fixed else k
            with torch.no_grad():
                eps = model(x, torch.full((x.shape[0],), seen, dtype=torch.long))
            x0 = ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
            coef_x0 = abar_prev.sqrt() * beta / (1 - abar)
            coef_x = (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar)
            variance = beta * (1 - abar_prev) / (1 - abar)
            x = (coef_x0 * x0 + coef_x * x + variance.sqrt() * noise[k]).to(x_T.dtype)
        return x

    return respaced_ddpm_sample


def test_the_bug_hunt_passes_with_both_bugs_fixed(ddpm_case):
    result = judged("respaced_ddpm_sample", student_respaced(("beta", "t")), ddpm_case)
    assert result.passed, result.message


@pytest.mark.parametrize(
    "fixed, named",
    [
        ((), "1 - ᾱ_t / ᾱ_prev"),  # the given code: the β bug shows first
        (("t",), "1 - ᾱ_t / ᾱ_prev"),
        (("beta",), "What t does the model see"),
    ],
)
def test_the_bug_hunt_fails_while_a_bug_is_left_and_names_it(ddpm_case, fixed, named):
    result = judged("respaced_ddpm_sample", student_respaced(fixed), ddpm_case)
    assert not result.passed
    assert named in result.message, result.message


def test_another_samplers_digits_do_not_pass_the_bug_hunt(ddpm_case):
    """DDIM from the same x_T makes good digits, but not the ones this noise (and z) lead to."""

    def ddim_instead(model, alphas_cumprod, timesteps, x_T, noise):
        return student_ddim()(model, alphas_cumprod, timesteps, x_T)

    result = judged("respaced_ddpm_sample", ddim_instead, ddpm_case)
    assert not result.passed and "not the ones this noise leads to" in result.message


# ------------------------------------------------------------------ classifier_guidance_eps
def student_guidance(mistake: str | None = None):
    def classifier_guidance_eps(model, classifier, x_t, t, y, scale, alpha_bar_t):
        with torch.no_grad():
            eps = model(x_t, t)
        if mistake == "no gradient":
            return eps
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            logits = classifier(x, t)
            if mistake == "probability":
                chosen = F.softmax(logits, dim=-1)[torch.arange(x.shape[0]), y].sum()
            else:
                chosen = F.log_softmax(logits, dim=-1)[
                    torch.arange(x.shape[0]), y
                ].sum()
            (grad,) = torch.autograd.grad(chosen, x)
        sign = 1.0 if mistake == "plus" else -1.0
        return (eps + sign * scale * (1 - alpha_bar_t) ** 0.5 * grad).detach()

    return classifier_guidance_eps


@pytest.fixture(scope="module")
def guidance_case():
    return get_exercise("classifier_guidance_eps").cases(seed=0)[0]


def test_classifier_guidance_through_autograd_passes(guidance_case):
    result = judged("classifier_guidance_eps", student_guidance(), guidance_case)
    assert result.passed, result.message


@pytest.mark.parametrize(
    "mistake, named",
    [
        ("plus", "pushes AWAY from y"),
        ("no gradient", "about chance"),
        ("probability", "not of p(y|x_t) itself"),
    ],
)
def test_each_classic_guidance_mistake_fails_and_is_named(
    guidance_case, mistake, named
):
    result = judged("classifier_guidance_eps", student_guidance(mistake), guidance_case)
    assert not result.passed
    assert named in result.message, result.message


# ----------------------------------------------------------------------------- inpaint_ddim
def student_inpaint(fixed: tuple[str, ...]):
    """The notebook's buggy inpainting sampler with the named bugs fixed ("mask", "level")."""

    def inpaint_ddim(model, alphas_cumprod, timesteps, known, mask, x_T, noise):
        x, visited = x_T, timesteps.tolist()
        for k, t in enumerate(visited):
            abar = alphas_cumprod[t].to(x.dtype)
            if k + 1 < len(visited):
                abar_prev = alphas_cumprod[visited[k + 1]].to(x.dtype)
            else:
                abar_prev = torch.ones((), dtype=x.dtype)
            with torch.no_grad():
                eps = model(x, torch.full((x.shape[0],), t, dtype=torch.long))
            x0 = ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
            eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
            x = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
            level = abar_prev if "level" in fixed else abar
            known_noisy = level.sqrt() * known + (1 - level).sqrt() * noise[k]
            if "mask" in fixed:
                x = mask * known_noisy + (1 - mask) * x
            else:
                x = mask * x + (1 - mask) * known_noisy
        return x

    return inpaint_ddim


@pytest.fixture(scope="module")
def inpaint_case():
    return get_exercise("inpaint_ddim").cases(seed=0)[0]


def test_the_inpainting_bug_hunt_passes_with_both_bugs_fixed(inpaint_case):
    result = judged("inpaint_ddim", student_inpaint(("mask", "level")), inpaint_case)
    assert result.passed, result.message


@pytest.mark.parametrize(
    "fixed, named",
    [
        ((), "mask = 1 marks what is KNOWN"),
        (("level",), "mask = 1 marks what is KNOWN"),
        (("mask",), "noise level of the step's start"),
    ],
)
def test_the_inpainting_bug_hunt_fails_while_a_bug_is_left(inpaint_case, fixed, named):
    result = judged("inpaint_ddim", student_inpaint(fixed), inpaint_case)
    assert not result.passed
    assert named in result.message, result.message


def test_the_known_image_itself_is_not_a_completion(inpaint_case):
    """Known rows exact and no seam, but not what the noise leads to."""
    spec = get_exercise("inpaint_ddim")
    result = spec.grade_case(inpaint_case, (inpaint_case.args[3].clone(),))
    assert not result.passed and "not what this noise leads to" in result.message


# ----------------------------------------------------------------------- latent_ddim_sample
def student_latent(fixed: tuple[str, ...]):
    """The notebook's buggy latent sampler with the named bugs fixed ("clip", "scale")."""

    def latent_ddim_sample(
        denoiser, decoder, scale_factor, alphas_cumprod, timesteps, z_T, labels
    ):
        z, visited = z_T, timesteps.tolist()
        for k, t in enumerate(visited):
            abar = alphas_cumprod[t].to(z.dtype)
            if k + 1 < len(visited):
                abar_prev = alphas_cumprod[visited[k + 1]].to(z.dtype)
            else:
                abar_prev = torch.ones((), dtype=z.dtype)
            with torch.no_grad():
                t_batch = torch.full((z.shape[0],), t, dtype=torch.long)
                eps = denoiser(z, t_batch, labels)
            z0 = (z - (1 - abar).sqrt() * eps) / abar.sqrt()
            if "clip" not in fixed:
                z0 = z0.clamp(-1, 1)
                eps = (z - abar.sqrt() * z0) / (1 - abar).sqrt()
            z = abar_prev.sqrt() * z0 + (1 - abar_prev).sqrt() * eps
        with torch.no_grad():
            return decoder(z / scale_factor if "scale" in fixed else z)

    return latent_ddim_sample


@pytest.fixture(scope="module")
def latent_case():
    return get_exercise("latent_ddim_sample").cases(seed=0)[0]


def test_the_latent_bug_hunt_passes_with_both_bugs_fixed(latent_case):
    result = judged(
        "latent_ddim_sample", student_latent(("clip", "scale")), latent_case
    )
    assert result.passed, result.message


@pytest.mark.parametrize(
    "fixed, named",
    [
        ((), "clipping x̂0 to [-1, 1] is for pixels"),
        (("scale",), "clipping x̂0 to [-1, 1] is for pixels"),
        (("clip",), "divide by s before decoding"),
    ],
)
def test_the_latent_bug_hunt_fails_while_a_bug_is_left(latent_case, fixed, named):
    result = judged("latent_ddim_sample", student_latent(fixed), latent_case)
    assert not result.passed
    assert named in result.message, result.message
