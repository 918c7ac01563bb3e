"""Chapter 09's 2-D helpers in `flow`: the exact marginal velocity of Gaussian-mixture data
(against a hand formula and against autograd's score of torch.distributions' mixture), path
straightness and the sliced Wasserstein distance (against their closed forms on lines, arcs and
shifts), and the toy training loop (against the exact velocity of Gaussian data); then the
committed results that chapter 09 reads (issue 23's acceptance, the 2-D runs, the flow model's
schema)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from ddpm_course import flow, flow_toy, results

# Gaussian data N(MU, diag STD^2) in two dimensions
MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
STD = torch.tensor([0.5, 2.0], dtype=torch.float64)


def exact_velocity(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    r"""E[ε - x0 | x_s = x] for x_s = (1-s) x0 + s ε, x0 ~ N(MU, STD^2), by Gaussian conditioning
    written out per coordinate: v*(x, s) = (s - (1-s) STD^2) / ((1-s)^2 STD^2 + s^2)
    · (x - (1-s) MU) - MU."""
    variance = (1 - s) ** 2 * STD**2 + s**2
    return (s - (1 - s) * STD**2) / variance * (x - (1 - s) * MU) - MU


def gaussian_noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(
        n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


# ------------------------------------------- exact fields and measures of chapter 09's 2-D half
def test_the_mixture_velocity_of_one_gaussian_is_the_hand_formula():
    x = gaussian_noise(50, seed=4) * 2
    covariance = torch.diag(STD**2)[None]
    for s in (0.0, 0.3, 0.9, 1.0):
        got = flow_toy.gaussian_mixture_velocity(x, s, MU[None], covariance)
        torch.testing.assert_close(
            got, exact_velocity(x, torch.tensor(s, dtype=torch.float64))
        )


def test_the_mixture_velocity_is_minus_the_scaled_score_of_the_noised_mixture():
    r"""On the flow path ε̂ = -s ∇log p_s and x̂0 = (x - s ε̂)/(1 - s), so u* = (-s ∇log p_s - x)/(1 - s);
    the score here is torch.distributions' log-density of the mixture of
    N((1-s)μ_k, (1-s)²C_k + s²I), differentiated by autograd."""
    means = torch.tensor([[1.0, 0.5], [-1.5, 0.0], [0.0, -2.0]], dtype=torch.float64)
    root = torch.tensor([[[0.5, 0.0], [0.3, 0.2]], [[0.1, 0.0], [0.0, 0.4]],
                         [[0.3, 0.0], [-0.2, 0.6]]], dtype=torch.float64)  # fmt: skip
    covariances = root @ root.transpose(1, 2)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    x = gaussian_noise(40, seed=5) * 1.5
    for s in (0.05, 0.4, 0.8):
        mixture = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(weights),
            torch.distributions.MultivariateNormal(
                (1 - s) * means,
                (1 - s) ** 2 * covariances + s**2 * torch.eye(2, dtype=torch.float64),
            ),
        )
        points = x.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(mixture.log_prob(points).sum(), points)
        expected = (-s * score - x) / (1 - s)
        got = flow_toy.gaussian_mixture_velocity(x, s, means, covariances, weights)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    # at s = 1, x is the noise itself: E[ε - x0 | ε = x] = x - E[x0]
    at_noise = flow_toy.gaussian_mixture_velocity(x, 1.0, means, covariances, weights)
    torch.testing.assert_close(at_noise, x - weights @ means)


def test_straightness_is_one_on_a_line_and_the_chord_over_the_arc_on_a_circle():
    line = torch.linspace(0, 1, 11, dtype=torch.float64)[:, None, None] * torch.tensor(
        [[3.0, -4.0]], dtype=torch.float64
    )
    assert flow_toy.path_straightness(line).tolist() == pytest.approx([1.0])
    for theta in (math.pi / 2, math.pi):
        angles = torch.linspace(0, theta, 2001, dtype=torch.float64)
        arc = torch.stack([angles.cos(), angles.sin()], dim=1)[:, None, :]
        # the polygon through 2001 points is shorter than the arc by (θ/2000)²/24 relative
        assert float(flow_toy.path_straightness(arc)) == pytest.approx(
            2 * math.sin(theta / 2) / theta, rel=1e-6
        )
    back_and_forth = torch.tensor([[[0.0]], [[1.0]], [[0.0]]])
    assert float(flow_toy.path_straightness(back_and_forth)) == 0.0


def test_sliced_wasserstein_of_a_shift_is_its_length_times_the_mean_cosine():
    x = gaussian_noise(500, seed=6)
    shift = torch.tensor([0.6, -0.8], dtype=torch.float64)
    # 2-D: E|cos| over uniform directions is 2/π; 4096 directions: standard error about 0.3%
    got = flow_toy.sliced_wasserstein(x, x + shift, n_directions=4096)
    assert float(got) == pytest.approx(2 / math.pi, rel=0.02)
    x3 = torch.randn(300, 3, generator=torch.Generator().manual_seed(7))
    shift3 = torch.tensor([0.0, 2.0, 0.0])
    # 3-D: the cosine with a uniform direction is uniform on [-1, 1], so E|cos| = 1/2
    got3 = flow_toy.sliced_wasserstein(x3, x3 + shift3, n_directions=4096)
    assert float(got3) == pytest.approx(1.0, rel=0.02)
    shuffled = x[torch.randperm(500, generator=torch.Generator().manual_seed(8))]
    assert float(flow_toy.sliced_wasserstein(x, shuffled)) == pytest.approx(
        0.0, abs=1e-12
    )
    with pytest.raises(ValueError, match="same shape"):
        flow_toy.sliced_wasserstein(x, x[:10])


def test_train_toy_model_learns_the_exact_velocity_of_gaussian_data():
    from ddpm_course.mlp import MLP2D

    def gaussian_data(n, generator):
        return (
            MU + STD * torch.randn(n, 2, generator=generator, dtype=torch.float64)
        ).float()

    def train(steps):
        torch.manual_seed(0)
        model = MLP2D(hidden=64, n_layers=2)
        losses = flow_toy.train_toy_model(
            model, flow.FlowMatching(), gaussian_data, steps=steps,
            generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
        return model, losses

    assert train(20)[1] == train(20)[1]  # everything random comes from the generator
    model, _ = train(800)
    x0 = gaussian_data(4000, torch.Generator().manual_seed(2)).double()
    noise = gaussian_noise(4000, seed=3)
    errors = []
    for s in (0.25, 0.5, 0.75):
        x_s = (1 - s) * x0 + s * noise
        with torch.no_grad():
            learned = model(x_s.float(), torch.full((4000,), 1000 * s)).double()
        exact = exact_velocity(x_s, torch.tensor(s, dtype=torch.float64))
        errors.append(float((learned - exact).pow(2).mean() / exact.pow(2).mean()))
    # 800 steps bring it within 0.4% (when written); an untrained model is off by about 100%
    assert max(errors) < 0.05, errors


# ---------------------------------------------------- the committed results of chapter 09


def test_chapter_09_edm_heun_reaches_ddim_50_within_20_evaluations():
    """Issue 23's acceptance: EDM-Heun on `fashion` at <= 20 NFE, median FD over 3 seeds at
    n = 1,000, no worse than DDIM-50's at the same n."""
    data = results.load("fashion_eval")
    edm_rows = [r for r in data["nfe"]["rows"] if r["sampler"] == "edm-heun"]
    ddim_50 = data["fashion"]
    assert edm_rows and all(r["nfe"] <= 20 and len(r["fd"]) == 3 for r in edm_rows)
    assert data["nfe"]["n"] == ddim_50["n"] == 1000
    assert min(statistics.median(r["fd"]) for r in edm_rows) <= ddim_50["median_fd"]


def test_chapter_09_two_d_results_are_complete_and_recorded():
    data = results.load("09_flow_2d")
    assert data["command"].startswith(
        "OMP_NUM_THREADS=1 python -m ddpm_course.experiments.flow_2d"
    )
    seeds = len(data["seeds"])
    variants = {row["variant"] for row in data["rows"]}
    assert variants == {"flow-uniform", "flow-logit-normal", "vp-eps"} and seeds == 5
    for row in data["rows"]:
        assert len(row["values"]) == seeds
        assert row["median"] == statistics.median(row["values"])
        # every model is farther from the data than a second draw of the data
        assert row["min"] > data["floor"]["median"]


def test_chapter_09_flow_model_results_have_the_schema_the_page_reads():
    data = results.load("fashion_eval")
    flow_eval, curve = data["flow"], data["flow_curve"]
    assert flow_eval["n"] == curve["n"] == 1000 and flow_eval["seeds"] == [0, 1, 2]
    rows = {(r["sampler"], r["steps"]): r for r in flow_eval["rows"]}
    for steps in (5, 10, 20, 50):
        assert rows[("flow-euler", steps)]["nfe"] == steps
    for steps in (5, 10):
        assert rows[("flow-heun", steps)]["nfe"] == 2 * steps - 1
    assert all(len(r["fd"]) == 3 for r in rows.values())
    assert flow_eval["train_minutes"] > 0 and {"flow", "flow_curve"} <= set(
        data["commands"]
    )
