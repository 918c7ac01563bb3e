"""Design choices of a DDPM measured at an equal training budget: schedule, objective, loss weighting.

Chapter 04, section 6. Every variant trains the ``digits`` preset (at half width, see
:data:`ABLATION_OVERRIDES`) for the same number of optimiser
steps (not seconds: a step budget does not depend on how busy the machine is) from the same
seeds, then draws ``num_samples`` DDIM samples from its EMA weights and scores them by the digits
FD (:func:`ddpm_course.metrics.digits_fd`). Variants that share a seed share the initial weights,
the data order, the training noise and the sampling noise, so their differences are paired.

The variants: the three beta schedules with the ε objective, then, on the linear schedule (the
digits preset's and Ho et al.'s, fixed in advance so that no variant is chosen on these numbers),
the x0 and v objectives and ε with min-SNR-5 weighting. The runs are independent, so ``jobs``
processes run them side by side (one torch thread each); the results do not depend on ``jobs``.

    ddpm-course ablate --steps 300 --seeds 0 1 2 --jobs 3 --out ddpm_course/results/04_ablation.json
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

__all__ = ["VARIANTS", "ABLATION_OVERRIDES", "run_ablation", "summarise"]

VARIANTS: dict[str, dict[str, Any]] = {
    "linear, eps": {"schedule": "linear", "objective": "eps"},
    "cosine, eps": {"schedule": "cosine", "objective": "eps"},
    "sigmoid, eps": {"schedule": "sigmoid", "objective": "eps"},
    "linear, x0": {"schedule": "linear", "objective": "x0"},
    "linear, v": {"schedule": "linear", "objective": "v"},
    "linear, eps, min-SNR-5": {
        "schedule": "linear",
        "objective": "eps",
        "min_snr_gamma": 5.0,
    },
}
# the digits recipe with a warm-up that fits a budget of a few hundred steps, on the digits U-Net at
# half width (16 channels at the first level: about a quarter of the arithmetic, so that 18 runs fit
# in a shared 2-core machine's half hour)
ABLATION_OVERRIDES: dict[str, Any] = {
    "warmup_steps": 50,
    "model_overrides": {"model_channels": 16},
}


def _train_and_score(overrides: dict[str, Any], seed: int, steps: int, num_samples: int, sample_steps: int,
                     work_dir: Path) -> dict[str, Any]:  # fmt: skip
    """Train the digits preset with ``overrides`` for ``steps`` steps; FD of its EMA samples."""
    from ..config import TrainConfig
    from ..metrics import digits_fd
    from ..train import Trainer

    torch.set_num_threads(1)
    config = TrainConfig.from_preset(
        "digits", **ABLATION_OVERRIDES, **overrides, seed=seed, max_steps=steps, sample_every=0, checkpoint_every=0,
        num_samples=16, log_every=max(1, steps // 10), out_dir=str(work_dir),
    )  # fmt: skip
    start = time.perf_counter()
    trainer = Trainer(config)
    trainer.train()
    seconds = time.perf_counter() - start
    log = [
        json.loads(line) for line in (work_dir / "log.jsonl").read_text().splitlines()
    ]
    generator = torch.Generator().manual_seed(10_000 + seed)
    samples = trainer.sample(num_samples, steps=sample_steps, generator=generator)
    return {
        "fd": digits_fd(samples),
        "final_loss": log[-1]["loss"],
        "train_seconds": round(seconds, 1),
    }


def _run_in_folder(
    overrides: dict[str, Any],
    seed: int,
    steps: int,
    num_samples: int,
    sample_steps: int,
):
    with tempfile.TemporaryDirectory() as work_dir:
        return _train_and_score(
            overrides, seed, steps, num_samples, sample_steps, Path(work_dir) / "run"
        )


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per variant: mean, sample standard deviation, min and max of the FD over seeds, and the
    mean over seeds of the paired difference from the first variant (``vs_first``)."""
    variants = list(dict.fromkeys(run["variant"] for run in runs))
    by_seed = {(run["variant"], run["seed"]): run["fd"] for run in runs}
    summary = {}
    for variant in variants:
        fds = [run["fd"] for run in runs if run["variant"] == variant]
        seeds = [run["seed"] for run in runs if run["variant"] == variant]
        diffs = [
            by_seed[(variant, s)] - by_seed[(variants[0], s)]
            for s in seeds
            if (variants[0], s) in by_seed
        ]
        summary[variant] = {
            "mean": statistics.fmean(fds),
            "std": statistics.stdev(fds) if len(fds) > 1 else 0.0,
            "min": min(fds),
            "max": max(fds),
            "vs_first": statistics.fmean(diffs) if diffs else 0.0,
            "seeds": len(fds),
        }
    return summary


def run_ablation(steps: int = 300, seeds: tuple[int, ...] = (0, 1, 2), num_samples: int = 400,
                 sample_steps: int = 50, out: str | Path | None = None, jobs: int = 1,
                 progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Train and score every (variant, seed) of :data:`VARIANTS` and return (and, with ``out``,
    write as JSON after every run) the results: the budget, the seeds, one record per run and
    :func:`summarise` of them. A results file at ``out`` with the same budget is continued: the
    runs already in it are kept.
    """
    from ..metrics import digits_fd_floor

    budget = {"preset": "digits", **ABLATION_OVERRIDES, "steps": steps, "batch_size": 64,
              "num_samples": num_samples, "sampler": f"DDIM, {sample_steps} trailing steps, eta 0, EMA weights"}  # fmt: skip
    out = Path(out) if out is not None else None
    results: dict[str, Any] = {"budget": budget, "seeds": list(seeds), "runs": []}
    if out is not None and out.is_file():
        saved = json.loads(out.read_text())
        if saved.get("budget") == budget:
            results["runs"] = [
                run
                for run in saved["runs"]
                if run["seed"] in seeds and run["variant"] in VARIANTS
            ]
    results["floor"] = digits_fd_floor(
        num_samples, generator=torch.Generator().manual_seed(0)
    )
    done = {(run["variant"], run["seed"]) for run in results["runs"]}
    todo = [
        (variant, seed)
        for seed in seeds
        for variant in VARIANTS
        if (variant, seed) not in done
    ]

    def record(variant: str, seed: int, scored: dict[str, Any]) -> None:
        results["runs"].append(
            {"variant": variant, "seed": seed, **VARIANTS[variant], **scored}
        )
        order = {name: i for i, name in enumerate(VARIANTS)}
        results["runs"].sort(key=lambda run: (order[run["variant"]], run["seed"]))
        results["summary"] = summarise(results["runs"])
        if progress:
            print(
                f"{variant:24s} seed {seed}: FD {scored['fd']:.1f} ({scored['train_seconds']:.0f} s)",
                flush=True,
            )
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1) + "\n")

    if jobs <= 1:
        for variant, seed in todo:
            record(
                variant,
                seed,
                _run_in_folder(
                    VARIANTS[variant], seed, steps, num_samples, sample_steps
                ),
            )
    else:
        with ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            futures = {pool.submit(_run_in_folder, VARIANTS[variant], seed, steps, num_samples, sample_steps):
                       (variant, seed) for variant, seed in todo}  # fmt: skip
            for future in as_completed(futures):
                record(*futures[future], future.result())
    results["summary"] = summarise(results["runs"])
    return results
