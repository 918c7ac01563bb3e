"""``ddpm-course assign SOLUTIONS EXERCISES``: write the student notebooks from the solutions notebooks."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "solutions",
        help="a folder of solutions notebooks (NN_name.ipynb), or one of them",
    )
    parser.add_argument(
        "exercises",
        help="the folder to write the exercise notebooks to (created if missing)",
    )
    parser.add_argument(
        "--branch",
        default="main",
        help="the git branch the Colab badges open (default: main)",
    )


def run(args: argparse.Namespace) -> int:
    from ..grading.assign import assign

    try:
        written = assign(args.solutions, args.exercises, branch=args.branch)
    except ValueError as error:
        print(f"ddpm-course assign: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0
