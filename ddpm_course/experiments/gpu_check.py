r"""A five-minute check of the trainer on a GPU: speed, memory, bf16 and DDP, in one JSON file.

Written for someone with a GPU who wants to know that the paper-scale path works before a long run
(``scripts/gpu_check.sh`` runs it once on one GPU and once under ``torchrun`` on every GPU). It
trains the ``cifar10-ddpm`` U-Net (35.7M parameters) on random CIFAR-shaped data, so that nothing
is downloaded, and records:

* ``forward_match``: the same network (random weights, output layer included) on the CPU and on
  the GPU in fp32 with TF32 off: largest difference relative to the output's largest value, which
  must stay below :data:`FP32_TOLERANCE` (different kernels sum in a different order: about 1e-6);
  and the bf16-autocast output against fp32 on the GPU, below :data:`BF16_TOLERANCE` (bf16 keeps 8
  bits of mantissa, relative rounding 4e-3 per operation, through about 30 layers);
* ``train``: images/s of full optimiser steps (bf16 autocast, channels_last, fused AdamW, EMA:
  :meth:`~ddpm_course.train.Trainer.train_step` as a real run calls it) after a warm-up, for the
  eager model and, with ``--compile``, the ``torch.compile``-d one; peak memory; the FLOPs of one
  step (``torch.utils.flop_counter``: matmuls and convolutions of forward and backward) and the
  fraction of the bf16 matmul peak that this rate reaches, the peak measured here by a large
  matmul (:func:`matmul_peak`), not read from a data sheet;
* ``sample``: 16 images by DDIM in 50 steps from the EMA weights (finite, in [0, 1]; saved as a PNG
  next to the JSON).

Under ``torchrun`` every process trains and rank 0 writes the JSON with the global images/s.
Everything runs on the CPU as well (``--device cpu`` and small settings), which is how the tests
exercise it; a GPU is what it is for.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "BF16_TOLERANCE",
    "FP32_TOLERANCE",
    "forward_match",
    "main",
    "matmul_peak",
    "randomise_zero_parameters",
    "run_check",
]

FP32_TOLERANCE = (
    1e-4  # relative: fp32 kernels that sum in another order differ by ~1e-6
)
BF16_TOLERANCE = 5e-2  # relative: bf16 rounds at 4e-3 per operation through ~30 layers


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    device: torch.device, dtype: torch.dtype, size: int = 8192, repeats: int = 10
) -> float:
    """FLOP/s of a ``size``×``size`` matmul in ``dtype`` on ``device``: 2·size³ per product, best
    of ``repeats`` timed runs after one warm-up (the best run is the closest to the peak)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    _synchronize(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


@torch.no_grad()
def randomise_zero_parameters(
    model: nn.Module, std: float = 0.02, seed: int = 0
) -> nn.Module:
    """Give every all-zero parameter (the U-Net's zero-initialised output layers) N(0, std²)
    values, so that a forward pass is not trivially 0 and a comparison can fail."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        if parameter.numel() and not parameter.detach().cpu().any():
            values = torch.randn(parameter.shape, generator=generator) * std
            parameter.copy_(values.to(parameter.device, parameter.dtype))
    return model


@torch.no_grad()
def forward_match(
    model: nn.Module, x: torch.Tensor, t: torch.Tensor, device: torch.device
) -> dict[str, float]:
    """The CPU fp32 output of ``model(x, t)`` against the same on ``device`` in fp32 (TF32 off)
    and under bf16 autocast: the largest absolute difference over the largest absolute output."""
    model = model.eval()
    reference = model.cpu()(x.cpu(), t.cpu()).double()
    scale = reference.abs().max().item()
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        moved = model.to(device)
        fp32 = moved(x.to(device), t.to(device)).double().cpu()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            bf16 = moved(x.to(device), t.to(device)).double().cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
    return {
        "output_scale": scale,
        "fp32_relative_error": (fp32 - reference).abs().max().item() / scale,
        "bf16_relative_error": (bf16 - reference).abs().max().item() / scale,
        "fp32_tolerance": FP32_TOLERANCE,
        "bf16_tolerance": BF16_TOLERANCE,
    }


def _time_steps(
    trainer, data: torch.Tensor, steps: int, warmup: int
) -> dict[str, float]:
    """Run ``warmup`` then ``steps`` optimiser steps on batches cycled from ``data``; images/s of
    the timed steps on this process and its peak memory."""
    n = trainer.rank_batch_size
    batches = data.shape[0] // n

    def step(i: int) -> None:
        start = (i % batches) * n
        trainer.train_step(data[start : start + n])

    for i in range(warmup):
        step(i)
    _synchronize(trainer.device)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    _synchronize(trainer.device)
    seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated(trainer.device) / 2**20
        if trainer.device.type == "cuda"
        else None
    )
    return {
        "seconds": seconds,
        "images_per_s": steps * n / seconds,
        "peak_memory_mib": peak,
    }


def _flops_per_step(trainer, data: torch.Tensor) -> int:
    """FLOPs (matmuls and convolutions, forward and backward) of one optimiser step."""
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step(data[: trainer.rank_batch_size])
    return counter.get_total_flops()


def _config(args, compile_model: bool = False):
    """The training config of the check: the preset's, with the check's batch and precision."""
    from ..config import TrainConfig

    return TrainConfig.from_preset(
        args.preset,
        batch_size=args.batch_size,
        precision=args.precision,
        channels_last=True,
        compile=compile_model,
        max_steps=args.steps + args.warmup + 2,
        sample_every=0,
        checkpoint_every=0,
        num_workers=0,
        out_dir=str(Path(args.out).parent / "gpu-check-run"),
        model_overrides=args.model_overrides,
    )


def _train(args, compile_model: bool, data: torch.Tensor, world_size: int):
    """Time the optimiser steps of a fresh :class:`~ddpm_course.train.Trainer`; returns the
    result and the trainer (for sampling from its EMA weights)."""
    from ..train import Trainer

    config = _config(args, compile_model)
    trainer = Trainer(config, dataset=data[: config.batch_size])
    flops = _flops_per_step(trainer, data) if not compile_model else None
    timing = _time_steps(trainer, data, args.steps, args.warmup)
    result: dict[str, Any] = {
        "compile": compile_model,
        "precision": str(trainer.autocast_dtype or torch.float32).removeprefix(
            "torch."
        ),
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "batch_per_process": trainer.rank_batch_size,
        "processes": world_size,
        **timing,
        "global_images_per_s": timing["images_per_s"] * world_size,
        "flops_per_step": flops,
    }
    return result, trainer


def run_check(args) -> dict[str, Any] | None:
    """Run every part of the check (see the module's docstring); rank 0 returns the report,
    the other ranks ``None``."""
    from ..config import build_model
    from ..viz import save_image_grid

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = (
        torch.device(args.device, local_rank)
        if args.device == "cuda"
        else torch.device("cpu")
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else "cpu",
        "visible_gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "preset": args.preset,
    }
    config = _config(args)
    size, channels = config.image_size, config.channels
    generator = torch.Generator().manual_seed(0)
    data = (
        torch.rand((args.batch_size * 4, channels, size, size), generator=generator) * 2
        - 1
    )
    data = data.to(device)

    if world_size == 1:
        model = randomise_zero_parameters(build_model(config))
        x = torch.randn((4, channels, size, size), generator=generator)
        t = torch.tensor([0, 10, 500, 999])
        if device.type == "cuda":
            report["forward_match"] = forward_match(model, x, t, device)
        else:
            report["forward_match"] = "skipped: no GPU (the CPU is the reference)"
        peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        report["matmul_peak_tflops"] = (
            matmul_peak(device, peak_dtype, args.peak_size) / 1e12
        )
        report["matmul_peak_dtype"] = str(peak_dtype).removeprefix("torch.")

    runs = []
    trainer = None
    for compile_model in [False, True] if args.compile else [False]:
        result, trainer = _train(args, compile_model, data, world_size)
        runs.append(result)
    report["train"] = runs
    if "matmul_peak_tflops" in report and runs[0]["flops_per_step"]:
        for result in runs:
            achieved = runs[0]["flops_per_step"] * result["steps"] / result["seconds"]
            result["achieved_tflops"] = achieved / 1e12
            result["fraction_of_matmul_peak"] = achieved / (
                report["matmul_peak_tflops"] * 1e12
            )

    if world_size == 1:
        start = time.perf_counter()
        samples = trainer.sample(16, steps=args.sample_steps)
        _synchronize(device)
        samples = (samples.float().cpu() + 1) / 2  # the trainer samples in [-1, 1]
        grid = Path(args.out).with_suffix(".png")
        grid.parent.mkdir(parents=True, exist_ok=True)
        save_image_grid(samples, grid, value_range=(0.0, 1.0))
        report["sample"] = {
            "sampler": f"ddim, {args.sample_steps} steps",
            "seconds": time.perf_counter() - start,
            "shape": list(samples.shape),
            "finite": bool(samples.isfinite().all()),
            "in_unit_range": bool(((samples >= 0) & (samples <= 1)).all()),
            "grid": grid.name,
        }
    if trainer is not None:
        trainer.close()
    elif dist.is_initialized():
        dist.destroy_process_group()
    return report if rank == 0 else None


def failures(report: dict[str, Any]) -> list[str]:
    """What in ``report`` is outside its tolerance (empty when everything holds)."""
    found = []
    match = report.get("forward_match")
    if isinstance(match, dict):
        if not match["fp32_relative_error"] <= match["fp32_tolerance"]:
            found.append(
                f"CUDA fp32 forward differs from the CPU's by {match['fp32_relative_error']:.2e}"
            )
        if not match["bf16_relative_error"] <= match["bf16_tolerance"]:
            found.append(
                f"bf16 forward differs from fp32 by {match['bf16_relative_error']:.2e}"
            )
    sample = report.get("sample")
    if sample and not (sample["finite"] and sample["in_unit_range"]):
        found.append("the DDIM samples are not finite images in [0, 1]")
    for run in report.get("train", []):
        if not run["images_per_s"] > 0:
            found.append(f"training (compile={run['compile']}) made no progress")
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_course.experiments.gpu_check",
        description="Train the paper-scale U-Net briefly on random data: speed, memory, bf16, DDP.",
    )
    parser.add_argument(
        "--out", default="gpu-check/single.json", help="the JSON report"
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--preset", default="cifar10-ddpm", help="U-Net and training preset"
    )
    parser.add_argument("--model-overrides", type=json.loads, default={},
                        help='JSON of U-Net arguments, e.g. \'{"base_channels": 32}\'')  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=128, help="global batch size")
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--steps", type=int, default=300, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile"
    )
    parser.add_argument(
        "--sample-steps", type=int, default=50, help="DDIM steps of the grid"
    )
    parser.add_argument(
        "--peak-size", type=int, default=8192, help="matmul size of the peak"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "--device cuda: no CUDA device is visible; use --device cpu to try it"
        )
    for name in ("steps", "warmup", "batch_size", "sample_steps", "peak_size"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            raise SystemExit(f"--{name.replace('_', '-')} must be positive")
    report = run_check(args)
    if report is None:
        return 0
    problems = failures(report)
    report["failures"] = problems
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
