"""``ddpm-course ablate``: schedules, objectives and min-SNR weighting at an equal step budget.

    ddpm-course ablate --steps 300 --seeds 0 1 2 --jobs 3 --out ddpm_course/results/04_ablation.json

See :mod:`ddpm_course.experiments.ablation`. The results file is written after every run, and a rerun with
the same budget continues it.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--steps", type=int, default=300, help="optimiser steps per run (default 300)"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="training seeds (default 0 1 2)",
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=400,
        help="samples per run for the FD (default 400)",
    )
    parser.add_argument(
        "--sample-steps",
        type=int,
        default=50,
        help="DDIM steps of those samples (default 50)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs side by side, one process each (default 1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("ablation.json"),
        help="results JSON (default ablation.json)",
    )


def run(args: argparse.Namespace) -> int:
    from ..experiments.ablation import run_ablation

    if args.steps < 1 or args.num_samples < 2 or args.sample_steps < 1:
        raise SystemExit(
            "--steps and --sample-steps must be at least 1 and --num-samples at least 2"
        )
    results = run_ablation(args.steps, tuple(args.seeds), args.num_samples, args.sample_steps, out=args.out,
                           jobs=args.jobs)  # fmt: skip
    print(f"FD floor at {args.num_samples} samples: {results['floor']:.1f}")
    for variant, row in results["summary"].items():
        print(
            f"{variant:28s} FD {row['mean']:6.1f} ± {row['std']:4.1f}  (range {row['min']:.1f}-{row['max']:.1f})"
        )
    print(f"wrote {args.out}")
    return 0
