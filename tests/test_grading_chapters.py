"""``ddpm-course grade`` on every chapter with exercises graded by their outcome: a scheme's
statistics (01, 02), a closed-form model (03), small training runs (04, 09, 10), shipped models
(05-07) or the chapter's detectors (08), in the sandbox. In one batch, the solutions notebook
earns full marks, the exercises notebook nothing, and a hostile notebook (the solutions with
outcome-graded answers replaced by ways to look right without doing the work)
earns nothing for those exercises and full marks for the rest.

The hostile answers: the target law sampled directly with fresh randomness, its parameters read
off the given arguments (01: the scheme's law at T, the VP-SDE's marginals; 02: the Langevin
chain's stationary law, the mixture itself; 08: a coin of P(+1) read off the noise predictor;
09: the flow-matching loss on noise and times of its own), flag the nearest half of the samples
as copies (08), the package's own training step (04), report the data's own entropy as
the bound (the truth, read off the batch
without the model), rescale the given buggy bound until one of its bugs hides, import the
package's sampler (the answer key is not importable in the sandbox, and the static check flags
it), draw good samples from noise other than the given one, guide by brute force along another
path, return the known image itself as its completion, decode the latents without their scale,
train the one-step map straight onto the batch's data without the teacher (10).
Each chapter's batch costs about twice its check() cost (the student's run and the grader's
reference), a minute or two of CPU (a few seconds for chapter 03).

These tests need bubblewrap (as tests/test_hostile.py); without it they are skipped, except in
CI.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import nbformat
import pytest

from ddpm_course.cli import main
from ddpm_course.grading import sandbox
from ddpm_course.grading.notebook import exercise_points
from ddpm_course.grading.registry import get_exercise

ROOT = Path(__file__).resolve().parents[1]

HOSTILE = {
    "01_brownian_sde": {
        # the scheme's law at T drawn afresh: right mean and variance on both grids, no scheme
        "ou_endpoint": """def ou_endpoint(x0, theta, sigma, T, noise):
    steps, n = noise.shape
    factor = 1 - theta * T / steps
    variance = sigma**2 * T / steps * sum(factor ** (2 * k) for k in range(steps))
    return x0 * factor**steps + variance**0.5 * torch.randn(n, dtype=noise.dtype)
""",
        # every row drawn from the VP-SDE's closed-form marginal, with noise of its own
        "vp_sde_path": """def vp_sde_path(x0, beta_min, beta_max, noise):
    s = torch.linspace(0, 1, noise.shape[0] + 1, dtype=x0.dtype)[:, None]
    integral = beta_min * s + 0.5 * s**2 * (beta_max - beta_min)
    fresh = torch.randn(noise.shape, dtype=x0.dtype)
    rows = torch.exp(-0.5 * integral[1:]) * x0 + torch.sqrt(-torch.expm1(-integral[1:])) * fresh
    return torch.cat([x0[None], rows])
""",
    },
    "04_training": {
        "v_training_step": """def v_training_step(model, optimizer, x0, alphas_cumprod, generator):
    from ddpm_course.diffusion import GaussianDiffusion  # the answer key

    betas = 1 - alphas_cumprod / torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    diffusion = GaussianDiffusion(betas.double(), objective="v")
    t = torch.randint(0, len(betas), (x0.shape[0],), generator=generator)
    loss = diffusion.training_losses(model, x0, t)["loss"].mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()
""",
    },
    "02_score_matching": {
        # the chain's stationary law (read off the given score's parameters), drawn afresh
        "langevin_chain": """def langevin_chain(score, x_init, step_size, noise):
    values, vectors = torch.linalg.eigh(torch.linalg.inv(score.params["precision"]))
    values = values / (1 - step_size / (2 * values))
    draws = torch.randn(x_init.shape, dtype=x_init.dtype)
    return score.params["mean"] + (draws * values.sqrt()) @ vectors.T
""",
        # the mixture itself, its shares and spread, drawn afresh: no annealing
        "annealed_langevin_sample": """def annealed_langevin_sample(score, sigmas, x_init, step_lr, noise):
    means, weights = score.params["means"], score.params["weights"]
    component = torch.multinomial(weights, x_init.shape[0], replacement=True)
    spread = (score.params["stds"][component] ** 2 + sigmas[-1] ** 2).sqrt()[:, None]
    return means[component] + spread * torch.randn_like(x_init)
""",
    },
    "08_evaluation": {
        # knows the share of copies instead of measuring each sample
        "find_copies": """def find_copies(samples, train):
    d1 = torch.cdist(samples.flatten(1), train.flatten(1)).min(1).values
    return d1 <= d1.median()
""",
        # a coin of P(+1) read off the noise predictor: right values, right proportions
        "ddpm_sampler": """def ddpm_sampler(eps_model, betas, x_T, seed):
    alpha_bar = 1 - betas[0]
    eps = eps_model(torch.zeros_like(x_T), torch.zeros(x_T.shape[0], dtype=torch.long))
    p_plus = (1 - eps * torch.sqrt(1 - alpha_bar) / torch.sqrt(alpha_bar)) / 2
    u = torch.rand(x_T.shape, generator=torch.Generator().manual_seed(seed), dtype=x_T.dtype)
    return torch.where(u < p_plus, 1.0, -1.0).to(x_T.dtype)
""",
    },
    "09_flow_matching": {
        # the loss in law, on noise and times of its own: it trains as well as the right one
        "flow_matching_loss": """def flow_matching_loss(model, x0, noise, s):
    noise, s = torch.randn_like(x0), torch.rand(x0.shape[0])
    x_s = (1 - s[:, None]) * x0 + s[:, None] * noise
    return ((model(x_s, s) - (noise - x0)) ** 2).mean()
""",
    },
    "10_few_steps": {
        "consistency_loss": """def consistency_loss(model, teacher, x0, noise, s, h):
    ones = torch.ones_like(s)
    return ((noise - model(noise, ones) - x0) ** 2).mean()
""",
    },
    "03_elbo": {
        "bound_bpd": """def bound_bpd(eps_model, betas, model_variance, x0, noise):
    values, counts = torch.unique(x0, return_counts=True)
    probability = counts.double() / x0.numel()
    nll = -torch.log2(probability[torch.searchsorted(values, x0)])
    return nll.flatten(1).mean(1)
""",
        "bound_bpd_x0": """def bound_bpd_x0(x0_model, betas, model_variance, x0, noise):
    bound = buggy_bound_bpd_x0(x0_model, betas, model_variance, x0, noise)
    return bound / x0[0].numel()
""",
    },
    "05_fast_sampling": {
        "ddim_sample": """def ddim_sample(model, alphas_cumprod, timesteps, x_T):
    from ddpm_course.samplers import ddim_step  # the answer key

    return ddim_step(x_T, x_T, 0.5, 1.0)
""",
        "respaced_ddpm_sample": """def respaced_ddpm_sample(model, alphas_cumprod, timesteps, x_T, noise):
    return ddim_sample(model, alphas_cumprod, timesteps, x_T.flip(0))
""",
    },
    "06_guidance": {
        "classifier_guidance_eps": """def classifier_guidance_eps(model, classifier, x_t, t, y, scale, alpha_bar_t):
    with torch.no_grad():
        eps = model(x_t, t)
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        chosen = classifier(x, t)[torch.arange(x.shape[0]), y].sum()
        (grad,) = torch.autograd.grad(chosen, x)
    return (eps - 30.0 * grad).detach()
""",
        "inpaint_ddim": """def inpaint_ddim(model, alphas_cumprod, timesteps, known, mask, x_T, noise):
    return known.clone()
""",
    },
    "07_latent": {
        "vae_training_step": """def vae_training_step(vae, optimizer, x, kl_weight, generator):
    from ddpm_course.autoencoder import vae_loss  # the answer key

    mean, logvar = vae.encode(x)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)
    loss = vae_loss(x, vae.decode(z), mean, logvar, kl_weight)["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()
""",
        "latent_ddim_sample": """def latent_ddim_sample(
    denoiser, decoder, scale_factor, alphas_cumprod, timesteps, z_T, labels
):
    return decoder(z_T / scale_factor)
""",
    },
}


def _hostile(solutions: nbformat.NotebookNode, answers: dict[str, str]):
    notebook = nbformat.from_dict(solutions)
    for name, source in answers.items():
        cells = [
            cell
            for cell in notebook.cells
            if cell.cell_type == "code" and cell.source.startswith(f"def {name}(")
        ]
        assert len(cells) == 1, name
        cells[0].source = source
    return notebook


@pytest.fixture(scope="module", params=sorted(HOSTILE))
def graded(request, tmp_path_factory):
    if sandbox.bwrap_path() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("bubblewrap is not installed: in CI the sandbox tests must run")
        pytest.skip("bubblewrap is not installed (make sandbox-deps)")
    chapter = request.param
    solutions_path = ROOT / "solutions" / f"{chapter}.ipynb"
    solutions = nbformat.read(solutions_path, as_version=4)
    submissions = tmp_path_factory.mktemp(f"submissions_{chapter}")
    nbformat.write(solutions, submissions / "solutions.ipynb")
    exercises = nbformat.read(ROOT / "exercises" / f"{chapter}.ipynb", as_version=4)
    nbformat.write(exercises, submissions / "exercises.ipynb")
    nbformat.write(_hostile(solutions, HOSTILE[chapter]), submissions / "hostile.ipynb")
    out = tmp_path_factory.mktemp(f"grades_{chapter}")
    arguments = ["grade", str(solutions_path), str(submissions), "--out", str(out)]
    arguments += ["--jobs", "2", "--cell-timeout", "120", "--timeout", "300"]
    assert main(arguments) == 0
    with open(out / "grades.csv", newline="") as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    return chapter, exercise_points(solutions), rows, out


def _feedback(out: Path, student: str) -> str:
    return (out / "feedback" / f"{student}.md").read_text()


def test_the_solutions_earn_full_marks(graded):
    chapter, points, rows, out = graded
    row = rows["solutions"]
    assert float(row["total"]) == sum(points.values()), _feedback(out, "solutions")
    assert row["status"] == "ok", _feedback(out, "solutions")


def test_the_exercises_earn_nothing(graded):
    chapter, points, rows, out = graded
    assert float(rows["exercises"]["total"]) == 0, _feedback(out, "exercises")


def test_a_hostile_notebook_earns_nothing_for_the_outcome_graded_exercises(graded):
    chapter, points, rows, out = graded
    row = rows["hostile"]
    for name in HOSTILE[chapter]:
        assert get_exercise(name).judge is not None
        assert float(row[name]) == 0, (name, _feedback(out, "hostile"))
    for name in set(points) - set(HOSTILE[chapter]):
        assert float(row[name]) == points[name], (name, _feedback(out, "hostile"))
