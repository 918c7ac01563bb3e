"""``ddpm-course bench``: training throughput and sampling speed of our U-Net against peers."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32], help="image sizes (default 16 32)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per network per round (default 3)")
    parser.add_argument("--layout", choices=["channels_last", "nchw"], default="channels_last",
                        help="memory format of every network (default channels_last, as the trainer)")
    parser.add_argument("--quality-seconds", type=float, default=0.0,
                        help="also train each network on the digits for this many seconds and report digits FD (default 0: skip)")
    parser.add_argument("--quality-seeds", type=int, nargs="+", default=[0],
                        help="one quality run per network for each of these seeds (default 0)")
    parser.add_argument("--ablation", action="store_true",
                        help="also time our U-Net with two ResBlocks per level (the peer's layout)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for bench.json and bench.md")


def run(args: argparse.Namespace) -> int:
    from ..bench import run_bench, write_results

    results = run_bench(
        tuple(args.sizes), rounds=args.rounds, steps=args.steps, quality_seconds=args.quality_seconds,
        quality_seeds=tuple(args.quality_seeds), layout=args.layout, ablation=args.ablation,
    )  # fmt: skip
    json_path, markdown_path = write_results(results, args.out, layout=args.layout)
    print(markdown_path.read_text())
    print(f"wrote {json_path} and {markdown_path}")
    return 0
