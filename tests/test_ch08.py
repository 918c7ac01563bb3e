"""Chapter 08: the likelihood estimators and the metrics against independent references
(scipy, scikit-learn's kernels and neighbours, the package's own loops that the new code does
not use), the bugs of ``ddpm_course.pitfalls`` against the samplers they break, and the
chapter's exercises (the judges fail the classic bugs and name them; ``ddpm-course grade``
gives the solutions full marks and the exercises 0)."""

from __future__ import annotations

import csv
import math
import os
import shutil

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.metrics.pairwise import polynomial_kernel
from sklearn.neighbors import NearestNeighbors

from ddpm_course import metrics
from ddpm_course.diffusion import GaussianDiffusion
from ddpm_course.grading import ch08_evaluation, sandbox
from ddpm_course.pitfalls import (
    TimeBlind,
    ancestral_until_last,
    duplicated_dataset,
    last_step,
    with_schedule,
)
from ddpm_course.samplers import sample
from ddpm_course.schedules import linear

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- likelihood (metrics)
class _AffineEps(torch.nn.Module):
    """ε̂(x, t) = a x + b_t: any fixed function will do for an identity of estimators."""

    def __init__(self, T: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.bias = torch.randn(T, generator=generator) * 0.1

    def forward(self, x, t):
        return 0.6 * x + self.bias[t].view(-1, 1, 1, 1)


def test_the_stratified_bound_is_unbiased_for_the_full_sum_of_terms():
    T = 20
    diffusion = GaussianDiffusion(linear(T, 1e-3, 0.3))
    model = _AffineEps(T)
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, 256, (3, 1, 2, 2), generator=generator).float() / 127.5 - 1
    repeats = 200
    # the reference: every term of the bound summed by calc_bpd_loop, averaged over noise
    loop = torch.stack([
        diffusion.calc_bpd_loop(model, x0, generator=generator)["total_bpd"]
        for _ in range(repeats)
    ]).double()  # fmt: skip
    estimate = torch.stack([
        metrics.vlb_bits_per_dim(model, diffusion, x0, draws=3, generator=generator)["total"]
        for _ in range(repeats)
    ])  # fmt: skip
    difference = estimate.mean(0) - loop.mean(0)
    standard_error = (estimate.var(0) / repeats + loop.var(0) / repeats).sqrt()
    # per image, within 4 standard errors of the difference of two means (fails 6e-5 of runs)
    assert (difference.abs() < 4 * standard_error).all(), (difference, standard_error)
    # and the estimator is not trivially equal to the loop: it has its own variance
    assert (estimate.std(0) > 0).all()


def test_gaussian_bits_per_dim_match_scipys_density_of_the_dequantised_pixels():
    generator = torch.Generator().manual_seed(2)
    train = (
        torch.randint(0, 256, (400, 1, 2, 3), generator=generator).float() / 127.5 - 1
    )
    test = torch.randint(0, 256, (7, 1, 2, 3), generator=generator).float() / 127.5 - 1
    result = metrics.gaussian_bits_per_dim(
        train, test, generator=torch.Generator().manual_seed(5)
    )
    # the same uniform draws, in the same order: training images first, then the test images
    u = torch.Generator().manual_seed(5)
    y_train = ((train.flatten(1).double() + 1) * 127.5).round()
    y_train = y_train + torch.rand(y_train.shape, generator=u, dtype=torch.float64)
    y_test = ((test.flatten(1).double() + 1) * 127.5).round()
    y_test = y_test + torch.rand(y_test.shape, generator=u, dtype=torch.float64)
    density = scipy.stats.multivariate_normal(
        y_train.mean(0).numpy(), np.cov(y_train.numpy(), rowvar=False)
    )
    expected = -density.logpdf(y_test.numpy()) / (6 * math.log(2))
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-9)


def test_a_gaussian_fitted_to_uniform_pixels_costs_about_eight_bits():
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (6000, 1, 2, 2), generator=generator).float()
    images = pixels / 127.5 - 1
    bits = metrics.gaussian_bits_per_dim(images[:5000], images[5000:], diagonal=True)
    # a Gaussian of the uniform's variance (256²/12) has 0.5 log2(2πe·256²/12) = 8.25 bits
    assert bits.mean().item() == pytest.approx(
        0.5 * math.log2(2 * math.pi * math.e * 256**2 / 12), abs=0.05
    )


# ----------------------------------------------------------------- metrics against scikit-learn
def test_kid_uses_the_kernel_of_the_reference_implementation():
    # Bińkowski et al.'s code computes k with scikit-learn's polynomial_kernel(degree 3,
    # gamma 1/d, coef0 1); the unbiased MMD² written out with it:
    rng = np.random.RandomState(5)
    x, y = rng.randn(30, 6), rng.randn(30, 6) + 0.3
    k_xx, k_yy = (
        polynomial_kernel(x, degree=3, gamma=1 / 6, coef0=1),
        polynomial_kernel(y, degree=3, gamma=1 / 6, coef0=1),
    )
    k_xy = polynomial_kernel(x, y, degree=3, gamma=1 / 6, coef0=1)
    m = 30
    expected = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (
        m * (m - 1)
    ) - 2 * k_xy.mean()
    value, _ = metrics.kernel_inception_distance(
        torch.from_numpy(x), torch.from_numpy(y), subsets=1, subset_size=m
    )
    assert value == pytest.approx(expected, rel=1e-10)


def test_precision_recall_and_memorisation_agree_with_scikit_learns_neighbours():
    rng = np.random.RandomState(6)
    real, fake = rng.randn(200, 5), rng.randn(150, 5) * 1.3 + 0.4
    k = 3

    def radii(points):  # the k-th neighbour other than the point itself
        distances, _ = (
            NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
        )
        return distances[:, k]

    def inside(queries, points):
        distances = np.linalg.norm(queries[:, None] - points[None], axis=2)
        return np.mean((distances <= radii(points)[None]).any(axis=1))

    result = metrics.precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k)
    assert result["precision"] == pytest.approx(inside(fake, real), abs=1e-12)
    assert result["recall"] == pytest.approx(inside(real, fake), abs=1e-12)
    held_out = rng.randn(50, 5)
    stats = metrics.memorisation(
        torch.from_numpy(fake), torch.from_numpy(real), torch.from_numpy(held_out)
    )
    nn = NearestNeighbors(n_neighbors=2).fit(real)
    for name, queries in (("samples", fake), ("held_out", held_out)):
        d, _ = nn.kneighbors(queries)
        assert stats[f"{name}_median_d1"] == pytest.approx(
            np.median(d[:, 0]), rel=1e-10
        )
        assert stats[f"{name}_copy_fraction"] == pytest.approx(
            np.mean(d[:, 0] < d[:, 1] / 3), abs=1e-12
        )


# ----------------------------------------------------------------------------------- pitfalls
def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(4, 1, 1)
    )


class _Network(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _tiny_model()
        self.time = torch.nn.Embedding(50, 1)

    def forward(self, x, t):
        return self.body(x) + self.time(t).view(-1, 1, 1, 1)


def test_the_split_sampler_ends_exactly_as_the_ancestral_sampler_does():
    model = _Network().eval()
    diffusion = GaussianDiffusion(linear(50, 1e-3, 0.2))
    shape = (3, 1, 4, 4)
    reference = sample("ddpm", model, diffusion, shape, steps=10,
                       generator=torch.Generator().manual_seed(7))  # fmt: skip
    generator = torch.Generator().manual_seed(7)
    x_1, respaced = ancestral_until_last(
        model, diffusion, shape, 10, generator=generator
    )
    torch.testing.assert_close(
        last_step(model, respaced, x_1), reference, rtol=0, atol=0
    )
    # the bug adds exactly sigma z, with the clipped log-variance of the step
    z_generator = torch.Generator().manual_seed(8)
    broken = last_step(model, respaced, x_1, True, z_generator)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(8))
    sigma = float((0.5 * respaced.schedule.posterior_log_variance_clipped[0]).exp())
    assert sigma > 0
    torch.testing.assert_close(broken, reference + sigma * z, rtol=1e-6, atol=1e-6)


def test_with_schedule_swaps_the_betas_and_keeps_the_rest():
    diffusion = GaussianDiffusion(
        linear(100) * 0.5, objective="v", var_type="fixed_large"
    )
    swapped = with_schedule(diffusion, "linear")
    expected = torch.cumprod(
        1 - torch.linspace(1e-4, 0.02, 100, dtype=torch.float64), 0
    )
    torch.testing.assert_close(swapped.alphas_cumprod, expected, rtol=1e-12, atol=0)
    assert (swapped.objective, swapped.var_type) == ("v", "fixed_large")


def test_time_blind_calls_the_network_at_t_zero():
    network = _Network().eval()
    x, t = torch.randn(4, 1, 4, 4), torch.tensor([0, 5, 20, 49])
    torch.testing.assert_close(
        TimeBlind(network)(x, t), network(x, torch.zeros_like(t))
    )
    assert not torch.allclose(network(x, t), network(x, torch.zeros_like(t)))


def test_duplicated_dataset_repeats_each_group_its_count_of_times():
    images = torch.arange(20, dtype=torch.float32).view(20, 1, 1, 1)
    data, unique, counts = duplicated_dataset(
        images, [2, 5], 3, torch.Generator().manual_seed(0)
    )
    assert data.shape[0] == 14 + 3 * 2 + 3 * 5
    for image, count in zip(unique, counts, strict=True):
        assert int((data == image).sum()) == int(count)
    assert counts[:3].tolist() == [2] * 3 and counts[3:6].tolist() == [5] * 3
    with pytest.raises(ValueError, match="group_size"):
        duplicated_dataset(images, [2, 5], 11)


# ------------------------------------------------------------------------------- exercises
def _exercise(name):
    return next(e for e in ch08_evaluation.EXERCISES if e.name == name)


def _buggy_sampler(final_noise=True, noise=True):
    def sampler(eps_model, betas, x_T, seed):
        generator = torch.Generator().manual_seed(seed)
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)
        x = x_T
        for t in range(len(betas) - 1, -1, -1):
            eps = eps_model(x, torch.full((x.shape[0],), t))
            x = (x - betas[t] / (1 - alphas_cumprod[t]).sqrt() * eps) / alphas[t].sqrt()
            if noise and (t > 0 or final_noise):
                z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
                x = x + betas[t].sqrt() * z
        return x

    return sampler


@pytest.mark.parametrize(
    "variant, passes, says",
    [
        (_buggy_sampler(final_noise=False), True, "within 1e-3"),
        (_buggy_sampler(final_noise=True), False, "noise is added on the final step"),
        (_buggy_sampler(noise=False), False, "not their proportions"),
    ],
)
def test_the_bug_hunt_judge_passes_the_fix_and_names_each_bug(variant, passes, says):
    exercise = _exercise("ddpm_sampler")
    for seed in (0, 1):
        for case in exercise.cases(seed):
            result = exercise.grade_case(case, exercise.call(variant, case.args))
            assert result.passed == passes and says in result.message, result.message


def test_the_bug_hunt_judge_accepts_the_packages_sampler():
    exercise = _exercise("ddpm_sampler")
    for case in exercise.cases(3):
        result = exercise.grade_case(case, exercise.expected(case))
        assert result.passed, result.message


def test_binary_pixels_eps_is_the_exact_posterior_mean_predictor():
    # E[x0 | x_t] by Bayes' rule on the two values, against the closed form of the class
    alphas_cumprod = torch.cumprod(1 - ch08_evaluation.sampler_betas(), 0)
    model = ch08_evaluation.BinaryPixelsEps(
        p_plus=torch.tensor(0.7, dtype=torch.float64), alphas_cumprod=alphas_cumprod
    )
    x = torch.linspace(-2, 2, 9, dtype=torch.float64).view(9, 1)
    t = torch.full((9,), 40)
    a = float(alphas_cumprod[40])
    plus = 0.7 * scipy.stats.norm.pdf(x.numpy(), math.sqrt(a), math.sqrt(1 - a))
    minus = 0.3 * scipy.stats.norm.pdf(x.numpy(), -math.sqrt(a), math.sqrt(1 - a))
    mean_x0 = (plus - minus) / (plus + minus)
    expected = (x.numpy() - math.sqrt(a) * mean_x0) / math.sqrt(1 - a)
    np.testing.assert_allclose(model(x, t).numpy(), expected, rtol=1e-10)


def test_find_copies_cases_plant_exactly_the_copies_the_judge_counts():
    exercise = _exercise("find_copies")
    for seed in range(10):
        for case in exercise.cases(seed):
            samples, train = case.args
            truth = exercise.reference(samples, train)
            # 24 to 40 or 80 to 96 near-copies among 120 samples (never half of them)
            assert 24 <= int(truth.sum()) <= 40 or 80 <= int(truth.sum()) <= 96
            d, _ = metrics.nearest_neighbours(samples, train, k=2)
            # a wide margin between the two kinds: the judge's truth is not a close call
            assert (d[truth, 0] / d[truth, 1]).max() < 0.25
            assert (d[~truth, 0] / d[~truth, 1]).min() > 0.4


def test_an_absolute_threshold_fails_find_copies_and_is_told_why():
    exercise = _exercise("find_copies")

    def absolute(samples, train):
        return torch.cdist(samples.flatten(1), train.flatten(1)).min(1).values < 1.0

    results = [exercise.grade_case(c, exercise.call(absolute, c.args))
               for c in exercise.cases(0)]  # fmt: skip
    assert results[0].passed  # right on the scale it was tuned for ...
    assert not any(r.passed for r in results[1:])  # ... wrong on the others
    assert all("threshold" in r.message for r in results[1:])


def test_flagging_the_nearest_half_fails_find_copies():
    """A rule that knows the share of copies instead of measuring each sample: the cases never
    hold half copies."""
    exercise = _exercise("find_copies")

    def nearest_half(samples, train):
        d1 = torch.cdist(samples.flatten(1), train.flatten(1)).min(1).values
        return d1 <= d1.median()

    for seed in range(5):
        for case in exercise.cases(seed):
            assert not exercise.grade_case(
                case, exercise.call(nearest_half, case.args)
            ).passed


def test_coin_flips_in_the_right_proportions_fail_the_bug_hunt():
    """±1 drawn by a coin of P(+1) read off the ε-model: right values, right proportions, but
    not the chain from x_T with the seed's noise."""
    exercise = _exercise("ddpm_sampler")

    def coin(eps_model, betas, x_T, seed):
        alpha_bar = 1 - betas[0]
        t = torch.zeros(x_T.shape[0], dtype=torch.long)
        eps = eps_model(torch.zeros_like(x_T), t)
        p_plus = (1 - eps * torch.sqrt(1 - alpha_bar) / torch.sqrt(alpha_bar)) / 2
        generator = torch.Generator().manual_seed(seed)
        u = torch.rand(x_T.shape, generator=generator, dtype=x_T.dtype)
        return torch.where(u < p_plus, 1.0, -1.0).to(x_T.dtype)

    for case in exercise.cases(0):
        result = exercise.grade_case(case, exercise.call(coin, case.args))
        assert not result.passed and "do not follow x_T and the seed" in result.message
        assert (
            "100.0% of the pixels within 1e-3" in result.message
        )  # its values were right


def test_the_checks_of_chapter_08_cost_under_ten_seconds_of_cpu():
    import time

    from ddpm_course.grading.check import check  # noqa: F401  (the notebook's entry point)

    start = time.process_time()
    for exercise in ch08_evaluation.EXERCISES:
        for case in exercise.cases(0):
            exercise.grade_case(case, exercise.expected(case))
    assert time.process_time() - start < 10


# ------------------------------------------------------------------- grading, end to end
def _rows(path):
    with open(path, newline="") as handle:
        return {row["student"]: row for row in csv.DictReader(handle)}


def test_grade_gives_the_solutions_full_marks_and_the_exercises_zero(tmp_path):
    from ddpm_course.cli import main

    if sandbox.bwrap_path() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("bubblewrap is not installed: in CI the sandbox tests must run")
        pytest.skip("bubblewrap is not installed (make sandbox-deps)")
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    for folder in ("solutions", "exercises"):
        shutil.copy(
            ROOT / folder / "08_evaluation.ipynb", submissions / f"{folder}.ipynb"
        )
    out = tmp_path / "grades"
    arguments = ["grade", str(ROOT / "solutions" / "08_evaluation.ipynb"),
                 str(submissions), "--out", str(out), "--jobs", "2"]  # fmt: skip
    assert main(arguments) == 0
    rows = _rows(out / "grades.csv")
    assert (out / "feedback" / "solutions.md").read_text().count(
        "**Total: 9 / 9 points.**"
    ) == 1
    assert float(rows["exercises"]["total"]) == 0


# --------------------------------------------------------------- the committed results file
def test_the_committed_results_record_their_command_n_and_seeds():
    from safetensors.torch import load

    from ddpm_course import results

    measured = results.load("08_evaluation")
    prefix = (
        "OMP_NUM_THREADS=1 python -m ddpm_course.experiments.evaluation "
        "--out ddpm_course/results/08_evaluation.json "
    )
    for section in ("fd", "memorisation", "likelihood", "gallery", "duplication"):
        command = measured["commands"][section]
        assert command.startswith(prefix) and section in command.split("--only")[1]
    assert measured["gallery"]["floor"]["n"] == measured["gallery"]["n"]
    assert len(measured["gallery"]["seeds"]) >= 2
    assert measured["likelihood"]["n"] >= 500 and measured["fd"]["pool_size"] >= 500
    # the images the page shows ship with the package and stay small (the weight budget
    # is full)
    shown = 0
    for section in ("gallery", "memorisation", "duplication"):
        data = results.path(f"08_evaluation_{section}.safetensors").read_bytes()
        images = load(data)
        assert images and all(v.dtype == torch.uint8 for v in images.values())
        shown += len(data)
    assert shown < 500_000
