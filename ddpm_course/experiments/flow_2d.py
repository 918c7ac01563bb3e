r"""Chapter 09's 2-D measurements over seeds: the results file ``ddpm_course/results/09_flow_2d.json``.

On the ``8gaussians`` toy set, the same :class:`~ddpm_course.mlp.MLP2D` is trained with
:func:`~ddpm_course.flow_toy.train_toy_model` (``--steps`` steps, batches of 256, one seed per run)
three ways: flow matching with uniform times, flow matching with logit-normal times (Esser et
al. 2024; m = 0, s = 1) and a VP ε-model (linear β, T = 1000). Each trained model is sampled
from the same ``--n`` noise draws by the flow's Euler sampler (the VP model by DDIM, which is
the same Euler step after the change of variables, chapter 09) at each of ``--sampler-steps``
steps, and the samples' sliced Wasserstein distance (:func:`~ddpm_course.flow_toy.sliced_wasserstein`,
256 directions) to one fixed draw of ``--n`` data points is recorded per seed, with the
median and range over the seeds; the floor is the same distance between independent draws of
the data. The command that wrote the file is recorded in it.

    OMP_NUM_THREADS=1 python -m ddpm_course.experiments.flow_2d --out ddpm_course/results/09_flow_2d.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from ..checkpoint import atomic_write
from ..data import toy_2d
from ..diffusion import GaussianDiffusion
from ..flow import FlowMatching, flow_sample
from ..flow_toy import sliced_wasserstein, train_toy_model
from ..mlp import MLP2D
from ..samplers import ddim_sample
from ..schedules import linear

DATA = "8gaussians"
VARIANTS = ("flow-uniform", "flow-logit-normal", "vp-eps")


def process_of(variant: str) -> FlowMatching | GaussianDiffusion:
    """The objective each variant trains with."""
    if variant == "flow-uniform":
        return FlowMatching()
    if variant == "flow-logit-normal":
        return FlowMatching(time_sampling="logit_normal")
    return GaussianDiffusion(linear(1000))


def data_sampler(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points of the chapter's 2-D data set."""
    return toy_2d(DATA, n, generator=generator)


def train(variant: str, seed: int, steps: int) -> torch.nn.Module:
    """An MLP2D (128 wide, 3 layers) trained on ``variant``'s loss from ``seed``."""
    torch.manual_seed(seed)
    model = MLP2D(hidden=128, n_layers=3)
    train_toy_model(model, process_of(variant), data_sampler, steps=steps,
                    generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return model


@torch.no_grad()
def samples_of(
    model: torch.nn.Module, variant: str, noise: torch.Tensor, steps: int
) -> torch.Tensor:
    """Samples of a trained model from ``noise``: flow Euler, or DDIM for the VP model."""
    if variant.startswith("flow"):
        return flow_sample(model, tuple(noise.shape), steps, x_init=noise)
    process = process_of(variant)
    return ddim_sample(model, process, tuple(noise.shape), steps, x_T=noise,
                       clip_denoised=False)  # fmt: skip


def summary(values: list[float]) -> dict:
    return {"values": values, "median": statistics.median(values),
            "min": min(values), "max": max(values)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON results file")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=1500, help="training steps")
    parser.add_argument("--n", type=int, default=2000, help="samples per distance")
    parser.add_argument("--sampler-steps", type=int, nargs="+", default=[5, 10, 50])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    words = sys.argv[1:] if argv is None else argv
    start = time.perf_counter()
    target = data_sampler(args.n, torch.Generator().manual_seed(10_000))
    noise = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(10_001))
    floor = [float(sliced_wasserstein(data_sampler(args.n, torch.Generator().manual_seed(k)),
                                      target)) for k in range(20_000, 20_005)]  # fmt: skip
    distances: dict[str, dict[int, list[float]]] = {
        v: {k: [] for k in args.sampler_steps} for v in VARIANTS
    }
    for seed in args.seeds:
        for variant in VARIANTS:
            model = train(variant, seed, args.steps)
            for steps in args.sampler_steps:
                samples = samples_of(model, variant, noise, steps)
                distances[variant][steps].append(
                    float(sliced_wasserstein(samples, target))
                )
            print(
                seed,
                variant,
                {k: v[-1] for k, v in distances[variant].items()},
                flush=True,
            )
    results = {
        "command": "OMP_NUM_THREADS=1 python -m ddpm_course.experiments.flow_2d "
        + " ".join(words),
        "data": DATA,
        "n": args.n,
        "seeds": args.seeds,
        "train_steps": args.steps,
        "batch_size": 256,
        "model": "MLP2D(hidden=128, n_layers=3)",
        "distance": "sliced Wasserstein-1, 256 directions, against one draw of the data",
        "floor": summary(floor),
        "rows": [
            {
                "variant": variant,
                "sampler_steps": steps,
                **summary(distances[variant][steps]),
            }
            for variant in VARIANTS
            for steps in args.sampler_steps
        ],
        "minutes": round((time.perf_counter() - start) / 60, 1),
    }
    text = json.dumps(results, indent=1, sort_keys=True) + "\n"
    atomic_write(args.out, lambda file: file.write(text.encode()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
