"""``ddpm-course grade ASSIGNMENT SUBMISSIONS... --out DIR``: grade submitted notebooks into a CSV."""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "assignment",
        help="the solutions notebook (its exercises and points), e.g. solutions/03_elbo.ipynb",
    )
    parser.add_argument(
        "submissions",
        nargs="+",
        help="submitted .ipynb files and/or folders of them (student id = file name)",
    )
    parser.add_argument(
        "--out", required=True, help="folder for grades.csv and feedback/<student>.md"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="notebooks graded at the same time (default: 1)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds for a whole notebook (default: 300)",
    )
    parser.add_argument(
        "--cell-timeout",
        type=float,
        default=60.0,
        help="seconds per cell and per exercise (default: 60)",
    )
    parser.add_argument(
        "--memory-mb",
        type=int,
        default=2048,
        help="memory a notebook may allocate, MiB (default: 2048)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the test inputs (default: 0; pick your own)",
    )
    parser.add_argument(
        "--no-sandbox",
        action="store_true",
        help="run the notebooks without bubblewrap (trusted notebooks only; recorded in the CSV "
        "and every feedback file)",
    )
    parser.add_argument(
        "--copy-policy",
        choices=("flag", "zero"),
        default="flag",
        help="functions too similar to the package's or another submission's: flag them in "
        "similarity.csv and the feedback (default), or also score them 0",
    )
    parser.add_argument(
        "--similarity-threshold",
        type=float,
        default=None,
        help="similarity (0-1) at which two functions count as copies (default: 0.9)",
    )
    parser.add_argument(
        "--roster",
        default=None,
        help="CSV with columns student (file name without .ipynb), name, id, sis_user_id, "
        "sis_login_id, section: also write gradebook.csv for Canvas's gradebook import",
    )
    parser.add_argument(
        "--analysis-timeout",
        type=float,
        default=30.0,
        help="seconds for the static check of one notebook (default: 30)",
    )


def run(args: argparse.Namespace) -> int:
    from ..grading.grader import grade
    from ..grading.runner import Limits
    from ..grading.sandbox import SandboxUnavailable

    limits = Limits(
        timeout=args.timeout,
        cell_timeout=min(args.cell_timeout, args.timeout),
        memory_mb=args.memory_mb,
    )
    start = time.perf_counter()
    try:
        results = grade(
            args.assignment,
            args.submissions,
            args.out,
            jobs=args.jobs,
            limits=limits,
            seed=args.seed,
            progress=True,
            sandbox=not args.no_sandbox,
            copy_policy=args.copy_policy,
            similarity_threshold=args.similarity_threshold,
            roster=args.roster,
            analysis_timeout=args.analysis_timeout,
        )
    except (ValueError, SandboxUnavailable) as error:
        print(f"ddpm-course grade: {error}", file=sys.stderr)
        return 2
    not_ok = sum(result.status != "ok" for result in results)
    print(
        f"graded {len(results)} notebooks in {time.perf_counter() - start:.1f} s "
        f"({not_ok} with a status other than ok): {args.out}/grades.csv, {args.out}/feedback/"
    )
    return 0
