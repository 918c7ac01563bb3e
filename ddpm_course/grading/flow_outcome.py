r"""The outcome-graded exercise of chapter 09, ``flow_matching_loss``: the training points, the
held-out errors, the named mistakes and the judge (see :mod:`~ddpm_course.grading.ch09_flow`,
whose exercise list holds it). The driver ``train_tiny_flow``
(:mod:`~ddpm_course.grading.drivers`, where the student's code runs) trains a small velocity
model with the student's loss; :func:`judge_flow_matching_loss` (in the grader's process)
samples it with 50 Euler steps from fixed noise and measures the sliced Wasserstein distance to
fresh draws of the mixture, and checks the loss on the driver's fixed probe inputs.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..flow import flow_interpolant, flow_sample, flow_velocity_target
from ..flow_toy import gaussian_mixture_velocity, sliced_wasserstein
from .drivers import flow_probe, tiny_velocity
from .exercise import Case, CaseResult, malformed, per_example_shape


def _as_column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) values as (N, 1, ..., 1) against ``like``."""
    return values.reshape(per_example_shape(tuple(like.shape)))


# ----------------------------------------------------------------- flow_matching_loss
STEPS, BATCH_SIZE, LR = 600, 256, 3e-3
SAMPLING_STEPS = 50
# Measured over training seeds 0-119 (the correct loss) and 0-24 (each mistake): the correct
# loss reaches 0.047-0.148 (median 0.077; a grading seed gave 0.155), t and 1 - t swapped
# 0.268-0.368, 1 - s as the model's time 0.244-0.355, the sign flipped 3.5-4.1.
THRESHOLD = 0.2
MIXTURE_MEANS = ((2.0, 1.0), (-1.0, 2.0))
MIXTURE_STDS = ((0.3, 0.6), (0.5, 0.2))


def mixture_points(n: int, generator: torch.Generator) -> torch.Tensor:
    """n points (n, 2) float32 of the two-component mixture of the outcome-graded exercise: equal
    weights, means (2, 1) and (-1, 2), diagonal standard deviations (0.3, 0.6) and (0.5, 0.2)."""
    component = torch.randint(0, 2, (n,), generator=generator)
    means, stds = torch.tensor(MIXTURE_MEANS), torch.tensor(MIXTURE_STDS)
    return means[component] + stds[component] * torch.randn(n, 2, generator=generator)


def reference_flow_matching_loss(model, x0, noise, s):
    x_s = flow_interpolant(x0, noise, _as_column(s, x0).double())
    return ((model(x_s, s) - flow_velocity_target(x0, noise)) ** 2).mean()


def cases_flow_matching_loss(generator: torch.Generator) -> list[Case]:
    points = mixture_points(2000, torch.Generator().manual_seed(0))
    seeds = torch.randint(0, 2**16, (2,), generator=generator).tolist()
    return [Case(f"seed {seed}: {STEPS} steps of {BATCH_SIZE} points of a 2-D mixture",
                 (seed, points, STEPS, BATCH_SIZE, LR)) for seed in seeds]  # fmt: skip


@lru_cache(maxsize=1)
def _held_out() -> dict[str, torch.Tensor]:
    """Fixed draws for judging: 2,000 target points, the sampler's start noise, and held-out
    (x0, ε, s) with which the trained model's output is compared with each candidate target."""
    generator = torch.Generator().manual_seed(123)
    target = mixture_points(2000, generator)
    start = torch.randn(2000, 2, generator=generator)
    x0 = mixture_points(2000, generator)
    noise = torch.randn(2000, 2, generator=generator)
    s = torch.rand(2000, generator=generator)
    return {"target": target, "start": start, "x0": x0, "noise": noise, "s": s}


@torch.no_grad()
def held_out_errors(seed: int, weights: torch.Tensor) -> dict[str, float]:
    r"""What the trained weights do: the sliced Wasserstein distance of their Euler samples to the
    target (the graded number); the relative squared error of their output against what each
    loss would have taught, computed from the mixture's exact velocity :math:`u^*`
    (:func:`~ddpm_course.flow_toy.gaussian_mixture_velocity`) on held-out points of the path that
    loss trains on; and how far the time pathway moved from its start.

    Each loss's minimiser: the right one :math:`u^*(x, s)`; the sign flipped :math:`-u^*`; t and
    1 - t swapped (in the interpolant or in the model's time) :math:`u^*(x, 1-s)` on the swapped
    path; both :math:`-u^*(x, 1-s)`; the x0 target :math:`x - s\,u^*`; the ε target
    :math:`x + (1-s)\,u^*`."""
    model = tiny_velocity(seed)
    initial_time = torch.nn.utils.parameters_to_vector(model.time.parameters()).clone()
    torch.nn.utils.vector_to_parameters(weights.float(), model.parameters())
    data = _held_out()
    samples = flow_sample(
        model, (2000, 2), SAMPLING_STEPS, time_scale=1.0, x_init=data["start"]
    )
    x0, noise, s = data["x0"], data["noise"], data["s"]
    column = s[:, None]
    x_s = (1 - column) * x0 + column * noise
    x_swapped = column * x0 + (1 - column) * noise
    means = torch.tensor(MIXTURE_MEANS, dtype=torch.float64)
    covariances = torch.diag_embed(torch.tensor(MIXTURE_STDS, dtype=torch.float64) ** 2)

    def exact(x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        return gaussian_mixture_velocity(x, time, means, covariances)

    def relative(output: torch.Tensor, target: torch.Tensor) -> float:
        return float(((output - target) ** 2).mean() / (target**2).mean())

    out, out_swapped = model(x_s, s), model(x_swapped, s)
    velocity, velocity_swapped = exact(x_s, s), exact(x_swapped, 1 - s)
    moved = torch.nn.utils.parameters_to_vector(model.time.parameters()) - initial_time
    return {
        "distance": float(sliced_wasserstein(samples, data["target"])),
        "right": relative(out, velocity),
        "sign": relative(out, -velocity),
        "swapped": relative(out_swapped, velocity_swapped),
        "swapped_and_sign": relative(out_swapped, -velocity_swapped),
        "x0": relative(out, x_s - column * velocity),
        "eps": relative(out, x_s + (1 - column) * velocity),
        "time_moved": float(moved.abs().max()),
    }


MISTAKES = {
    "sign": "the velocity's sign is flipped: the target is ε - x0 (s = 1 is the noise, and "
    "the sampler runs from s = 1 down to 0)",
    "x0": "the model learned x0, not the velocity: the target is ε - x0",
    "eps": "the model learned the noise ε, not the velocity: the target is ε - x0",
    "swapped": "t and 1 - t are swapped, in the interpolant or in the time given to the model: "
    "x_s = (1 - s) x0 + s ε and model(x_s, s)",
    "swapped_and_sign": "time runs the wrong way (s = 1 is the data in this loss): "
    "x_s = (1 - s) x0 + s ε with target ε - x0",
}


PROBE_RTOL = 1e-4  # float32 losses of 8 points, evaluated in another order: about 1e-7


def _probe_problem(case: Case, probe: torch.Tensor) -> str | None:
    """What is wrong with the loss on the driver's fixed inputs (:func:`flow_probe`), or None:
    the same inputs must give the same loss, and the two batches' losses must be the reference
    loss's on them up to one constant factor (a sum over the two coordinates instead of their
    mean only rescales Adam's steps). A loss that draws its own noise or times, or regresses on
    another target, trains a model just as well but is not the loss of the noise it was given."""
    seed, points = case.args[0], case.args[1]
    if probe.shape != (3,) or not bool(probe.isfinite().all()):
        return f"the loss on fixed inputs is {probe.tolist()}, not three finite numbers"
    model, batches = flow_probe(seed, points)
    with torch.no_grad():
        want = [float(reference_flow_matching_loss(model, *batch)) for batch in batches]
    first, second, again = (float(v) for v in probe)
    if abs(first - again) > PROBE_RTOL * abs(first):
        return (
            f"the loss of the same model on the same (x0, noise, s) came out {first:.6g} and then "
            f"{again:.6g}: it draws fresh randomness of its own instead of using the noise and "
            "the times it is given"
        )
    ratios = first / want[0], second / want[1]
    if abs(ratios[0] / ratios[1] - 1) > PROBE_RTOL or not 0.25 <= ratios[0] <= 4:
        return (
            f"on two fixed batches the loss is {first:.6g} and {second:.6g}, where the flow-"
            f"matching loss of those x0, noise and s is {want[0]:.6g} and {want[1]:.6g} (ratios "
            f"{ratios[0]:.4g} and {ratios[1]:.4g}, which must agree): the loss ignores the given "
            "noise or times, or regresses on another target than ε - x0 at x_s = (1 - s) x0 + s ε"
        )
    return None


def judge_flow_matching_loss(
    case: Case, outputs: tuple[torch.Tensor, ...]
) -> CaseResult:
    """Pass when the Euler samples of the trained model are within :data:`THRESHOLD` of the
    target (sliced Wasserstein); otherwise say which classic mistake the trained model looks like."""
    weights, seed = outputs[0], case.args[0]
    size = sum(p.numel() for p in tiny_velocity(0).parameters())
    failure = malformed(weights, (size,), "the weights", "the training diverged")
    if failure is not None:
        return failure
    stats = held_out_errors(seed, weights)
    distance = stats["distance"]
    if distance < THRESHOLD:
        measured = f"distance of 50-step Euler samples to the data {distance:.3f} < {THRESHOLD}"
        problem = _probe_problem(case, outputs[2])
        if problem is None:
            return CaseResult(
                True, f"{measured}; the loss is the flow-matching loss of its inputs"
            )
        return CaseResult(False, f"{measured}, but {problem}")
    if stats["time_moved"] == 0.0:
        why = "the model never used the time: pass s to the model, model(x_s, s)"
    else:
        candidates = {key: stats[key] for key in MISTAKES}
        closest = min(candidates, key=candidates.get)
        if candidates[closest] < stats["right"]:
            why = MISTAKES[closest]
        else:
            why = ("check the interpolant x_s = (1 - s) x0 + s ε (s shaped (N, 1)), the target "
                   "ε - x0, the model's inputs (x_s, s) and the mean squared error")  # fmt: skip
    return CaseResult(
        False,
        f"distance of 50-step Euler samples to the data {distance:.3f}, not below "
        f"{THRESHOLD} (the untrained noise is at about 1.1): {why}",
    )
