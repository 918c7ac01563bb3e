"""Chapter 07's ``vae_training_step``, graded by the model it trains: the correct step passes on
every seed, and each classic mistake fails with a message that names it.

The mistakes are written out as a student writes them (plain torch, no package); each trains the
tiny VAE of ``grading/drivers.py`` through the same driver as ``check()`` and the grader (about
3 s of CPU per case)."""

from __future__ import annotations

import pytest
import torch

from ddpm_course.grading import ch07_latent as ch07
from ddpm_course.grading.drivers import DRIVERS, TinyVAE
from ddpm_course.grading.exercise import clone_args
from ddpm_course.grading.registry import get_exercise


def student_step(mistake: str | None = None):
    """A VAE training step as a student writes it, with at most one classic mistake."""

    def vae_training_step(vae, optimizer, x, kl_weight, generator):
        mean, logvar = vae.encode(x)
        noise = torch.randn(mean.shape, generator=generator)
        z = mean if mistake == "no sampling" else mean + torch.exp(0.5 * logvar) * noise
        reconstruction = (vae.decode(z) - x).pow(2).flatten(1).sum(1).mean()
        terms = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar)
        kl = terms.mean() if mistake == "kl averaged" else terms.sum(1).mean()
        loss = reconstruction + (-1 if mistake == "kl sign" else 1) * kl_weight * kl
        if mistake != "no zero_grad":
            optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return vae_training_step


def judged(step, case):
    spec = get_exercise("vae_training_step")
    return spec.grade_case(case, spec.call(step, case.args))


@pytest.fixture(scope="module")
def cases():
    return get_exercise("vae_training_step").cases(seed=0)


def test_the_correct_step_passes_on_every_seed(cases):
    """The package's reference and a student's plain-torch step, on two seeds' cases."""
    more = get_exercise("vae_training_step").cases(seed=7)
    for case in cases + more:
        for step in (get_exercise("vae_training_step").reference, student_step()):
            result = judged(step, case)
            assert result.passed, result.message


@pytest.mark.parametrize(
    "mistake, named",
    [
        ("no sampling", "never learned to read a sampled z"),
        ("kl sign", "plus sign"),
        ("no zero_grad", "zero_grad"),
        ("kl averaged", "SUMMED over the latent dimensions"),
    ],
)
def test_each_classic_mistake_fails_the_judge_and_is_named(cases, mistake, named):
    result = judged(student_step(mistake), cases[0])
    assert not result.passed
    assert named in result.message, result.message


def test_the_held_out_kl_is_the_closed_form_of_torch_distributions(cases):
    """The judge's KL agrees with torch.distributions' KL of the trained encoder's Gaussian."""
    weights, _ = DRIVERS["train_tiny_vae"](student_step(), *clone_args(cases[0].args))
    measured = ch07.held_out_elbo(cases[0].args[0], weights)
    vae = TinyVAE()
    torch.nn.utils.vector_to_parameters(weights, vae.parameters())
    from ddpm_course.data import digits

    with torch.no_grad():
        mean, logvar = vae.encode(digits(size=8, split="test")[0])
    posterior = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    kl = torch.distributions.kl_divergence(posterior, prior).sum(1).mean()
    assert measured["kl"] == pytest.approx(float(kl), rel=1e-4)
