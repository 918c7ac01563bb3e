r"""Time to quality: the digits FD of a model trained from scratch, against seconds of training.

``ddpm-course bench --time-to-floor`` (this module's :func:`run_time_to_quality`) trains each
contender on the 16×16 digits from a fresh start, keeps a copy of its EMA weights each time the
training clock passes one of ``checkpoint_seconds``, and afterwards measures the FD of 400 DDIM-50
samples of every copy (``ddpm_course.metrics.digits_fd``; sampling and FD do not count as training
time). Each seed runs every contender back to back, so that a slow spell of the machine hits them
alike; the report gives, per contender and checkpoint, the FD of each seed, their median and range,
and the optimiser steps taken, next to the FD floor (400 real training digits against the same test
split, :func:`~ddpm_course.metrics.digits_fd_floor`).

Contenders:

* a training preset of ours by name (``digits``, or any other 16×16 one-channel preset of
  :data:`~ddpm_course.config.TRAIN_PRESETS`): the preset's settings, model and optimiser as
  ``ddpm-course train --preset NAME`` builds them, stepped by
  :meth:`~ddpm_course.train.Trainer.train_step` on shuffled batches of the training digits;
* ``diffusers``: diffusers' ``UNet2DModel`` (laid out like our U-Net, at our parameter count:
  :func:`~ddpm_course.experiments.bench.build_contenders`) with ``DDPMScheduler(num_train_timesteps=1000)``,
  trained the way diffusers' ``examples/unconditional_image_generation/train_unconditional.py``
  trains by default: batch 16, AdamW (lr 1e-4, betas (0.95, 0.999), weight decay 1e-6, eps 1e-8),
  a cosine learning-rate schedule after 500 warm-up steps, gradient clipping at 1, fp32, and
  ``EMAModel`` with inverse gamma 1, power 3/4, at most 0.9999. Two departures, both stated in the
  report: no random horizontal flip (a mirrored digit is not a digit), and the cosine schedule's
  length is the number of steps the budget allows, estimated from the speed of the first steps
  (the example sets it from its number of epochs).
"""

from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "DIFFUSERS_RECIPE",
    "Run",
    "run_time_to_quality",
    "summarise",
    "train_with_snapshots",
    "write_time_to_quality",
]

NUM_SAMPLES = 400
SAMPLE_STEPS = 50
DIFFUSERS_RECIPE = dict(
    batch_size=16, lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8, warmup_steps=500,
    grad_clip=1.0, ema_inv_gamma=1.0, ema_power=0.75, ema_max_decay=0.9999,
)  # fmt: skip
DEPARTURES = (
    "no random horizontal flip (a mirrored digit is not a digit)",
    "cosine schedule length = the steps the budget allows, estimated from the first steps",
)


@dataclass
class Run:
    """One contender being trained: ``step()`` takes one optimiser step; ``sampling_model()`` is
    the EMA network as ``model(x, t) -> eps`` now; ``diffusion`` its process; ``optimizer`` the
    optimiser that ``step`` drives."""

    step: Callable[[], None]
    sampling_model: Callable[[], nn.Module]
    diffusion: Any
    optimizer: torch.optim.Optimizer | None = None


def _digits(seed: int) -> tuple[torch.Tensor, torch.Generator]:
    from ..data import digits

    images, _ = digits(size=16, split="train")
    return images, torch.Generator().manual_seed(seed)


def _batches(images: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Endless batches of ``images``: a fresh permutation every epoch, the last partial batch dropped."""
    while True:
        order = torch.randperm(images.shape[0], generator=generator)
        for start in range(0, images.shape[0] - batch_size + 1, batch_size):
            yield images[order[start : start + batch_size]]


def our_recipe(preset: str, seed: int, out_dir: str) -> Run:
    """Our training preset ``preset``, from scratch with ``seed``, through the :class:`Trainer`."""
    from ..config import TrainConfig
    from ..train import Trainer

    config = TrainConfig.from_preset(
        preset, max_steps=None, max_seconds=10**9, seed=seed, out_dir=out_dir,
        sample_every=0, checkpoint_every=0, log_every=10**9,
    )  # fmt: skip
    if (config.image_size, config.channels, config.class_conditional) != (16, 1, False):
        raise ValueError(
            f"preset {preset!r} is not an unconditional 16×16 digits preset"
        )
    trainer = Trainer(config)
    images, generator = _digits(seed)
    batches = _batches(images, config.batch_size, generator)
    return Run(
        lambda: trainer.train_step(next(batches)),
        lambda: trainer.ema_model,
        trainer.diffusion,
        trainer.optimizer,
    )


def diffusers_recipe(seed: int, total_steps: int) -> Run:
    """diffusers' training example (see the module docstring) with a cosine schedule of
    ``total_steps`` steps."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    from ..diffusion import GaussianDiffusion
    from ..schedules import get_betas
    from .bench import build_contenders

    recipe = DIFFUSERS_RECIPE
    model = build_contenders(16, 1, seed=seed)["diffusers"]
    if isinstance(model, str):
        raise RuntimeError(f"the diffusers baseline is unavailable: {model}")
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe["lr"], betas=recipe["betas"],
        weight_decay=recipe["weight_decay"], eps=recipe["eps"],
    )  # fmt: skip
    lr_schedule = get_cosine_schedule_with_warmup(
        optimizer, recipe["warmup_steps"], max(total_steps, recipe["warmup_steps"] + 1)
    )
    ema = EMAModel(
        model.parameters(), decay=recipe["ema_max_decay"], use_ema_warmup=True,
        inv_gamma=recipe["ema_inv_gamma"], power=recipe["ema_power"],
    )  # fmt: skip
    images, generator = _digits(seed)
    batches = _batches(images, recipe["batch_size"], generator)
    torch.manual_seed(seed)

    def step() -> None:
        clean = next(batches)
        noise = torch.randn(clean.shape)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (clean.shape[0],)
        )
        noisy = scheduler.add_noise(clean, noise, timesteps)
        loss = nn.functional.mse_loss(model(noisy, timesteps), noise)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
        optimizer.step()
        lr_schedule.step()
        ema.step(model.parameters())
        optimizer.zero_grad(set_to_none=True)

    def sampling_model() -> nn.Module:
        averaged = copy.deepcopy(model).eval()
        ema.copy_to(averaged.parameters())
        return averaged

    # DDPMScheduler's default betas: linear from 1e-4 to 0.02 over 1000 steps, as ours
    return Run(
        step, sampling_model, GaussianDiffusion(get_betas("linear", 1000)), optimizer
    )


def train_with_snapshots(
    run: Run, checkpoint_seconds: Sequence[float]
) -> list[tuple[float, int, nn.Module]]:
    """Step ``run`` until its training clock (the time spent inside ``step()`` only) passes the
    last of ``checkpoint_seconds``; at each one, a copy of the sampling network. Returns
    (seconds, steps, network) per checkpoint."""
    snapshots, clock, steps = [], 0.0, 0
    for target in sorted(checkpoint_seconds):
        while clock < target:
            start = time.perf_counter()
            run.step()
            clock += time.perf_counter() - start
            steps += 1
        snapshots.append((clock, steps, copy.deepcopy(run.sampling_model()).eval()))
    return snapshots


@torch.no_grad()
def _fd(
    model: nn.Module, diffusion, seed: int, num_samples: int, sample_steps: int
) -> float:
    from ..metrics import digits_fd
    from ..samplers import ddim_sample

    generator = torch.Generator().manual_seed(10_000 + seed)
    samples = ddim_sample(model, diffusion, (num_samples, 1, 16, 16), steps=sample_steps,
                          generator=generator)  # fmt: skip
    return digits_fd(samples)


def _steps_per_second(seed: int) -> float:
    """The diffusers baseline's speed over a few steps (to size its cosine schedule)."""
    run = diffusers_recipe(seed, total_steps=10**6)
    run.step()
    start = time.perf_counter()
    for _ in range(5):
        run.step()
    return 5 / (time.perf_counter() - start)


def summarise(values: Sequence[float]) -> dict[str, float]:
    """Median and range of one quantity over seeds."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_time_to_quality(
    contenders: Sequence[str] = ("digits", "diffusers"),
    checkpoint_seconds: Sequence[float] = (30, 60, 90, 120),
    seeds: Sequence[int] = (0, 1, 2),
    num_samples: int = NUM_SAMPLES,
    sample_steps: int = SAMPLE_STEPS,
    progress: bool = True,
) -> dict[str, Any]:
    """Train every contender for every seed and measure FD at each checkpoint (see the module
    docstring); a JSON-serialisable report."""
    from ..metrics import digits_fd_floor

    if not checkpoint_seconds or min(checkpoint_seconds) <= 0:
        raise ValueError(
            f"checkpoint_seconds must be positive, got {list(checkpoint_seconds)}"
        )
    if not seeds:
        raise ValueError("give at least one seed")
    checkpoint_seconds = sorted(checkpoint_seconds)
    per_seed: dict[str, list[dict[str, list]]] = {name: [] for name in contenders}
    for seed in seeds:
        for name in contenders:
            with tempfile.TemporaryDirectory() as out_dir:
                if name == "diffusers":
                    total = int(_steps_per_second(seed) * checkpoint_seconds[-1])
                    run = diffusers_recipe(seed, total_steps=total)
                else:
                    run = our_recipe(name, seed, out_dir)
                snapshots = train_with_snapshots(run, checkpoint_seconds)
            fds = [
                _fd(m, run.diffusion, seed, num_samples, sample_steps)
                for _, _, m in snapshots
            ]
            per_seed[name].append(
                {
                    "fd": fds,
                    "steps": [s for _, s, _ in snapshots],
                    "seconds": [c for c, _, _ in snapshots],
                }  # fmt: skip
            )
            if progress:
                shown = ", ".join(
                    f"{s:g}s {fd:.1f}"
                    for s, fd in zip(checkpoint_seconds, fds, strict=True)
                )
                print(f"seed {seed} {name}: FD {shown}", flush=True)
    floors = [
        digits_fd_floor(num_samples, torch.Generator().manual_seed(s)) for s in seeds
    ]
    report: dict[str, Any] = {
        "checkpoint_seconds": checkpoint_seconds,
        "seeds": list(seeds),
        "num_samples": num_samples,
        "sampler": f"ddim, {sample_steps} steps, eta 0",
        "floor": summarise(floors),
        "torch_threads": torch.get_num_threads(),
        "diffusers_recipe": {**DIFFUSERS_RECIPE, "departures": list(DEPARTURES)},
        "contenders": {},
    }
    for name, runs in per_seed.items():
        report["contenders"][name] = {
            "per_seed": runs,
            "fd": [
                summarise([r["fd"][i] for r in runs])
                for i in range(len(checkpoint_seconds))
            ],
            "steps": [
                summarise([r["steps"][i] for r in runs])
                for i in range(len(checkpoint_seconds))
            ],
        }
    return report


def write_time_to_quality(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``time_to_floor.json`` and ``time_to_floor.png`` (FD median and range against seconds, the
    floor as a line) in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "time_to_floor.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    seconds = report["checkpoint_seconds"]
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, result in report["contenders"].items():
        median = [point["median"] for point in result["fd"]]
        axes.plot(seconds, median, marker="o", label=name)
        axes.fill_between(seconds, [p["min"] for p in result["fd"]],
                          [p["max"] for p in result["fd"]], alpha=0.2)  # fmt: skip
    axes.axhline(
        report["floor"]["median"], color="black", linestyle="--", label="floor"
    )
    axes.set_xlabel("training time (s)")
    axes.set_ylabel(f"digits FD ({report['num_samples']} samples)")
    axes.set_yscale("log")
    axes.set_title(f"median and range over seeds {report['seeds']}")
    axes.legend()
    figure.tight_layout()
    png_path = out_dir / "time_to_floor.png"
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
    return json_path, png_path
