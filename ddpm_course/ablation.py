"""Design choices of a DDPM measured at an equal training budget: schedule, objective, loss weighting.

Chapter 04, section 6. Every variant trains the ``digits`` preset for the same number of optimiser
steps (not seconds: a step budget does not depend on how busy the machine is) from the same
seeds, then draws ``num_samples`` DDIM samples from its EMA weights and scores them by the digits
FD (:func:`ddpm_course.metrics.digits_fd`). Variants that share a seed share the initial weights,
the data order, the training noise and the sampling noise, so their differences are paired.

Two phases: the beta schedules (linear, cosine, sigmoid) with the ε objective; then, with the
schedule of lowest mean FD, the x0 and v objectives and ε with min-SNR-5 weighting.

    ddpm-course ablate --steps 400 --seeds 0 1 2 --out book/results/04_ablation.json
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["SCHEDULE_VARIANTS", "second_phase_variants", "run_ablation", "summarise"]

SCHEDULE_VARIANTS: dict[str, dict[str, Any]] = {
    f"{schedule}, eps": {"schedule": schedule, "objective": "eps"} for schedule in ("linear", "cosine", "sigmoid")
}


def second_phase_variants(schedule: str) -> dict[str, dict[str, Any]]:
    """The objectives and the loss weighting, on ``schedule``."""
    return {
        f"{schedule}, x0": {"schedule": schedule, "objective": "x0"},
        f"{schedule}, v": {"schedule": schedule, "objective": "v"},
        f"{schedule}, eps, min-SNR-5": {"schedule": schedule, "objective": "eps", "min_snr_gamma": 5.0},
    }


def _train_and_score(overrides: dict[str, Any], seed: int, steps: int, num_samples: int, sample_steps: int,
                     work_dir: Path) -> dict[str, Any]:  # fmt: skip
    """Train the digits preset with ``overrides`` for ``steps`` steps; FD of its EMA samples."""
    from .config import TrainConfig
    from .metrics import digits_fd
    from .train import Trainer

    config = TrainConfig.from_preset(
        "digits", **overrides, seed=seed, max_steps=steps, sample_every=0, checkpoint_every=0,
        num_samples=16, log_every=max(1, steps // 10), out_dir=str(work_dir),
    )  # fmt: skip
    start = time.perf_counter()
    trainer = Trainer(config)
    trainer.train()
    seconds = time.perf_counter() - start
    log = [json.loads(line) for line in (work_dir / "log.jsonl").read_text().splitlines()]
    generator = torch.Generator().manual_seed(10_000 + seed)
    samples = trainer.sample(num_samples, steps=sample_steps, generator=generator)
    return {"fd": digits_fd(samples), "final_loss": log[-1]["loss"], "train_seconds": round(seconds, 1)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per variant: mean, sample standard deviation, min and max of the FD over seeds, and the
    mean over seeds of the paired difference from the first variant (``vs_first``)."""
    variants = list(dict.fromkeys(run["variant"] for run in runs))
    by_seed = {(run["variant"], run["seed"]): run["fd"] for run in runs}
    summary = {}
    for variant in variants:
        fds = [run["fd"] for run in runs if run["variant"] == variant]
        seeds = [run["seed"] for run in runs if run["variant"] == variant]
        diffs = [by_seed[(variant, s)] - by_seed[(variants[0], s)] for s in seeds if (variants[0], s) in by_seed]
        summary[variant] = {
            "mean": statistics.fmean(fds),
            "std": statistics.stdev(fds) if len(fds) > 1 else 0.0,
            "min": min(fds),
            "max": max(fds),
            "vs_first": statistics.fmean(diffs) if diffs else 0.0,
            "seeds": len(fds),
        }
    return summary


def run_ablation(steps: int = 400, seeds: tuple[int, ...] = (0, 1, 2), num_samples: int = 400,
                 sample_steps: int = 50, out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Run both phases and return (and, with ``out``, write as JSON after every run) the results:
    the budget, the seeds, one record per (variant, seed) and :func:`summarise` of them.

    A results file at ``out`` that has the same budget is continued: runs already in it are kept.
    """
    from .metrics import digits_fd_floor

    budget = {"preset": "digits", "steps": steps, "batch_size": 64, "num_samples": num_samples,
              "sampler": f"DDIM, {sample_steps} trailing steps, eta 0, EMA weights"}  # fmt: skip
    out = Path(out) if out is not None else None
    results: dict[str, Any] = {"budget": budget, "seeds": list(seeds), "runs": []}
    if out is not None and out.is_file():
        saved = json.loads(out.read_text())
        if saved.get("budget") == budget and saved.get("seeds") == list(seeds):
            results["runs"] = saved["runs"]
    done = {(run["variant"], run["seed"]) for run in results["runs"]}
    results["floor"] = digits_fd_floor(num_samples, generator=torch.Generator().manual_seed(0))

    def run_phase(variants: dict[str, dict[str, Any]]) -> None:
        for variant, overrides in variants.items():
            for seed in seeds:
                if (variant, seed) in done:
                    continue
                with tempfile.TemporaryDirectory() as work_dir:
                    record = _train_and_score(overrides, seed, steps, num_samples, sample_steps, Path(work_dir) / "run")
                results["runs"].append({"variant": variant, "seed": seed, **overrides, **record})
                if progress:
                    print(f"{variant:28s} seed {seed}: FD {record['fd']:.1f} ({record['train_seconds']:.0f} s)", flush=True)
                results["summary"] = summarise(results["runs"])
                if out is not None:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(results, indent=1) + "\n")

    run_phase(SCHEDULE_VARIANTS)
    phase1 = summarise([run for run in results["runs"] if run["variant"] in SCHEDULE_VARIANTS])
    best = min(phase1, key=lambda variant: phase1[variant]["mean"])
    results["best_schedule"] = SCHEDULE_VARIANTS[best]["schedule"]
    run_phase(second_phase_variants(results["best_schedule"]))
    results["summary"] = summarise(results["runs"])
    if out is not None:
        out.write_text(json.dumps(results, indent=1) + "\n")
    return results
