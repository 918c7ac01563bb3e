"""``ddpm-course bench``: training throughput and sampling speed of our U-Net against peers."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[16, 32],
        help="image sizes (default 16 32)",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds (default 5)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=3,
        help="timed steps per network per round (default 3)",
    )
    parser.add_argument(
        "--layout",
        choices=["channels_last", "nchw"],
        default="channels_last",
        help="memory format of every network (default channels_last, as the trainer)",
    )
    parser.add_argument(
        "--quality-seconds",
        type=float,
        default=0.0,
        help="also train each network on the digits for this many seconds and report digits FD (default 0: skip)",
    )
    parser.add_argument(
        "--quality-seeds",
        type=int,
        nargs="+",
        default=[0],
        help="one quality run per network for each of these seeds (default 0)",
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also time our U-Net with two ResBlocks per level (the peer's layout)",
    )
    parser.add_argument(
        "--time-to-floor",
        action="store_true",
        help="instead: train from scratch and record digits FD against seconds of training",
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        default=["digits", "diffusers"],
        help="--time-to-floor: training presets of ours and/or 'diffusers' (default digits diffusers)",
    )
    parser.add_argument(
        "--checkpoints",
        type=float,
        nargs="+",
        default=[30, 60, 90, 120],
        help="--time-to-floor: seconds of training at which FD is measured (default 30 60 90 120)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="--time-to-floor: one run per contender and seed (default 0 1 2)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="folder for bench.json and bench.md",
    )


def run(args: argparse.Namespace) -> int:
    if args.time_to_floor:
        return _time_to_floor(args)
    from ..experiments.bench import run_bench, write_results

    results = run_bench(
        tuple(args.sizes), rounds=args.rounds, steps=args.steps, quality_seconds=args.quality_seconds,
        quality_seeds=tuple(args.quality_seeds), layout=args.layout, ablation=args.ablation,
    )  # fmt: skip
    json_path, markdown_path = write_results(results, args.out, layout=args.layout)
    print(markdown_path.read_text())
    print(f"wrote {json_path} and {markdown_path}")
    return 0


def _time_to_floor(args: argparse.Namespace) -> int:
    from ..experiments.time_to_quality import run_time_to_quality, write_time_to_quality

    report = run_time_to_quality(args.contenders, args.checkpoints, args.seeds)
    json_path, png_path = write_time_to_quality(report, args.out)
    floor = report["floor"]["median"]
    for name, result in report["contenders"].items():
        shown = ", ".join(
            f"{s:g}s: {p['median']:.1f} ({p['median'] / floor:.2f}x floor)"
            for s, p in zip(report["checkpoint_seconds"], result["fd"], strict=True)
        )
        print(f"{name}: median FD {shown}")
    print(f"wrote {json_path} and {png_path}")
    return 0
