"""``ddpm-course nfe-sweep``: FD and wall time against NFE per sampler (chapter 05); the sweep
is :mod:`ddpm_course.experiments.nfe_sweep`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import results

# experiments.nfe_sweep.SAMPLERS, written out so that --help does not import torch
SAMPLERS = ("ddpm", "ddim-eta0", "ddim-eta1", "dpm-solver++2m")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="digits",
        choices=("digits", "fashion"),
        help="the shipped model and its FD (default digits)",
    )
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--n", type=int, default=400, help="samples per FD (default 400)"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=250,
        help="samples drawn at once (default 250); part of what a run's FD depends on",
    )
    parser.add_argument(
        "--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS)
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=results.DEFAULT_DIR / "05_fd_vs_nfe.json",
        help="the JSON to write (default the book's ddpm_course/results/05_fd_vs_nfe.json)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1)"
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="add to the runs already in --out (same model and n), skipping those it holds",
    )


def run(args: argparse.Namespace) -> int:
    from ..experiments.nfe_sweep import run_sweep

    return run_sweep(args)
