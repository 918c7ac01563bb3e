"""Benchmarks: our U-Net against diffusers' ``UNet2DModel`` and lucidrains' ``Unet`` (chapter 04).

Each network is wrapped as ``model(x, t) -> eps`` and sized to within 10% of our U-Net's parameter
count; diffusers' model is built like ours (the same channel multipliers, GroupNorm groups,
attention at the same resolutions with one head, a sinusoidal time embedding of the same size in
diffusers' default sin/cos order) with its fixed two ResBlocks per level; lucidrains' is its own
design with multipliers (1, 2, 2). All of them run the
same way, the way our trainer runs on the CPU: channels_last memory format and fused AdamW (or
NCHW with ``layout="nchw"``). Measured side by side in one process, interleaved round by round
(the machine is noisy), so the ratios are what to read:

* training throughput: images/s of forward + backward + AdamW step at batch 64; the ratio to ours
  is the median over rounds of the ratio within a round (the two are timed back to back, so a
  slow spell of the machine hits both), with its range over the rounds;
* sampling: milliseconds per network evaluation (no grad) at batch 64;
* optionally quality at an equal wall-clock budget: each network trained on the 16×16 digits by
  :class:`~ddpm_course.train.Trainer` with the ``digits`` recipe (lr 1e-3 after 200 warm-up steps,
  gradient clipping, EMA) for the same number of seconds, then ``digits_fd`` of 400 DDIM-50
  samples of its EMA weights, for each seed.

Where our speed comes from (``ablation=True`` measures the split): partly the implementation (our
U-Net with diffusers' two blocks per level is about 1.1× diffusers' model), partly the ``digits``
preset's single ResBlock at full resolution, where a block costs the most arithmetic per parameter
(about 1.1× again). Equal layout and optimiser for everyone.

Peers come from the optional ``[bench]`` extra; a missing peer is reported, not fatal.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils import check_choice

__all__ = [
    "BenchResult",
    "build_contenders",
    "our_config",
    "run_bench",
    "write_results",
    "LAYOUTS",
]

BATCH = 64
LAYOUTS = ("channels_last", "nchw")
PARAMETER_TOLERANCE = (
    0.10  # a peer counts as matched within ±10% of our parameter count
)


class _Wrapped(nn.Module):
    """Adapt a peer network to ``forward(x, t) -> eps``."""

    def __init__(
        self,
        net: nn.Module,
        call: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__()
        self.net = net
        self.call = call

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.call(self.net, x, t)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def our_config(image_size: int, channels: int = 1) -> dict[str, Any]:
    """Our contender: the ``digits`` U-Net preset at ``image_size`` with ``channels`` channels."""
    from ..nn import PRESETS

    return {**PRESETS["digits"], "image_size": image_size, "in_channels": channels}


def _ours(config: dict[str, Any]) -> nn.Module:
    from ..nn import UNet

    return UNet(**config)


def _diffusers(width: int, config: dict[str, Any]) -> nn.Module:
    """diffusers' ``UNet2DModel`` laid out like our U-Net ``config``, level i with ``width * mult_i`` channels."""
    from diffusers import UNet2DModel

    mults, size = config["channel_mults"], config["image_size"]
    attended = [
        size // 2**level in config["attention_resolutions"]
        for level in range(len(mults))
    ]
    net = UNet2DModel(
        sample_size=size,
        in_channels=config["in_channels"],
        out_channels=config["in_channels"],
        block_out_channels=tuple(width * m for m in mults),
        down_block_types=tuple(
            "AttnDownBlock2D" if a else "DownBlock2D" for a in attended
        ),
        up_block_types=tuple(
            "AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attended)
        ),
        layers_per_block=2,
        attention_head_dim=None,  # one head of all the channels, as ours
        norm_num_groups=config["num_groups"],
        dropout=config["dropout"],
    )
    return _Wrapped(net, lambda m, x, t: m(x, t).sample)


def _lucidrains(width: int, config: dict[str, Any]) -> nn.Module:
    """``width`` = 1000 * attention head size + base width (its counts jump by ~50% per width step of 8)."""
    from denoising_diffusion_pytorch import Unet

    dim_head, dim = divmod(width, 1000)
    net = Unet(
        dim=dim,
        dim_mults=(1, 2, 2),
        channels=config["in_channels"],
        attn_dim_head=dim_head,
        flash_attn=True,
    )
    return _Wrapped(net, lambda m, x, t: m(x, t))


def _match_width(
    build: Callable[[int], nn.Module], target: int, widths: list[int]
) -> nn.Module:
    """The model, over ``widths``, whose parameter count is closest to ``target``."""
    best = min(widths, key=lambda w: abs(count_parameters(build(w)) - target))
    return build(best)


def build_contenders(
    image_size: int, channels: int = 1, seed: int = 0, ablation: bool = False
) -> dict[str, nn.Module | str]:
    """Our U-Net and each available peer at a matched parameter count, initialised from ``seed``;
    a peer that is missing (or cannot be matched within 10%) maps to the reason. With ``ablation``,
    also ``ours-2-per-level``: our U-Net with two ResBlocks at every level, the architecture of the
    diffusers peer, which separates our implementation from our choice of blocks."""
    config = our_config(image_size, channels)
    torch.manual_seed(seed)
    ours = _ours(config)
    target = count_parameters(ours)
    contenders: dict[str, nn.Module | str] = {"ours": ours}
    if ablation:
        torch.manual_seed(seed)
        contenders["ours-2-per-level"] = _ours({**config, "num_res_blocks": 2})
    search = {
        "diffusers": (_diffusers, list(range(8, 129, 8))),
        "lucidrains": (
            _lucidrains,
            [head * 1000 + dim for head in (32, 64) for dim in range(8, 129, 8)],
        ),
    }
    for name, (builder, widths) in search.items():
        try:
            torch.manual_seed(seed)
            model = _match_width(
                lambda w, build=builder: build(w, config), target, widths
            )
        except ImportError as error:
            contenders[name] = (
                f"not installed ({error.name}); pip install 'ddpm-course[bench]'"
            )
            continue
        mismatch = count_parameters(model) / target - 1
        if abs(mismatch) > PARAMETER_TOLERANCE:
            contenders[name] = (
                f"no width within 10% of {target:,} parameters (closest {mismatch:+.0%})"
            )
            continue
        contenders[name] = model
    return contenders


@dataclass
class BenchResult:
    image_size: int
    name: str
    parameters: int
    train_images_per_s: list[float] = field(default_factory=list)
    sample_ms_per_nfe: list[float] = field(default_factory=list)
    fd: list[float] = field(default_factory=list)  # one per quality seed
    quality_steps: list[int] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "image_size": self.image_size,
            "name": self.name,
            "parameters": self.parameters,
            "train_images_per_s": statistics.median(self.train_images_per_s),
            "sample_ms_per_nfe": statistics.median(self.sample_ms_per_nfe),
            "train_images_per_s_rounds": self.train_images_per_s,
            "fd": self.fd,
            "quality_steps": self.quality_steps,
        }


def _train_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, steps: int
) -> float:
    t = torch.randint(0, 1000, (x.shape[0],))
    start = time.perf_counter()
    for _ in range(steps):
        loss = ((model(x, t) - x) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


@torch.no_grad()
def _sample_steps(model: nn.Module, x: torch.Tensor, steps: int) -> float:
    t = torch.full((x.shape[0],), 500)
    start = time.perf_counter()
    for _ in range(steps):
        model(x, t)
    return time.perf_counter() - start


def run_bench(
    image_sizes=(16, 32),
    rounds: int = 5,
    steps: int = 3,
    channels: int = 1,
    quality_seconds: float = 0.0,
    quality_seeds=(0,),
    layout: str = "channels_last",
    ablation: bool = False,
) -> list[BenchResult]:
    """Interleaved rounds: in each round every contender does ``steps`` training steps and ``steps``
    forward passes. With ``quality_seconds`` > 0, the equal-wall-clock quality run (16×16 digits,
    one grey channel) for each seed of ``quality_seeds``. ``ablation``: see :func:`build_contenders`."""
    from tqdm.auto import tqdm

    check_choice("layout", layout, LAYOUTS)
    for name, value in [("rounds", rounds), ("steps", steps)]:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    memory_format = (
        torch.channels_last if layout == "channels_last" else torch.contiguous_format
    )
    results: list[BenchResult] = []
    for size in image_sizes:
        contenders = build_contenders(size, channels, ablation=ablation)
        models = {
            name: m.to(memory_format=memory_format)
            for name, m in contenders.items()
            if isinstance(m, nn.Module)
        }
        for name, reason in contenders.items():
            if isinstance(reason, str):
                print(f"skipping {name} at {size}x{size}: {reason}")
        x = torch.randn(BATCH, channels, size, size).contiguous(
            memory_format=memory_format
        )
        optimizers = {
            name: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)
            for name, m in models.items()
        }
        size_results = {
            name: BenchResult(size, name, count_parameters(m))
            for name, m in models.items()
        }
        for name, model in models.items():  # warm-up, not timed
            _train_steps(model.train(), optimizers[name], x, 1)
        for _ in tqdm(range(rounds), desc=f"bench {size}x{size}"):
            for name, model in models.items():
                seconds = _train_steps(model.train(), optimizers[name], x, steps)
                size_results[name].train_images_per_s.append(BATCH * steps / seconds)
                seconds = _sample_steps(model.eval(), x, steps)
                size_results[name].sample_ms_per_nfe.append(1000 * seconds / steps)
        if quality_seconds > 0 and size == 16 and channels == 1:
            for seed in quality_seeds:
                for name in models:
                    fd, trained_steps = _quality(
                        name, quality_seconds, seed, layout, ablation
                    )
                    size_results[name].fd.append(fd)
                    size_results[name].quality_steps.append(trained_steps)
                    print(
                        f"quality seed {seed}: {name} FD {fd:.1f} after {trained_steps} steps"
                    )
        results.extend(size_results.values())
    return results


def _quality(
    name: str, seconds: float, seed: int, layout: str, ablation: bool = False
) -> tuple[float, int]:
    """Train a fresh ``name`` on the 16×16 digits for ``seconds`` with the ``digits`` recipe; (FD of
    400 DDIM-50 samples of its EMA weights, optimiser steps taken)."""
    from ..metrics import digits_fd
    from ..samplers import ddim_sample
    from ..train import TrainConfig, Trainer

    model = build_contenders(16, 1, seed=seed, ablation=ablation)[name]
    with tempfile.TemporaryDirectory() as out_dir:
        config = TrainConfig.from_preset(
            "digits", max_steps=None, max_seconds=seconds, seed=seed, out_dir=out_dir, sample_every=0,
            checkpoint_every=0, num_samples=4, sample_steps=2, log_every=10**9, channels_last=layout == "channels_last",
        )  # fmt: skip
        trainer = Trainer(config, model=model)
        trainer.train()
        samples = ddim_sample(
            trainer.ema_model,
            trainer.diffusion,
            (400, 1, 16, 16),
            steps=50,
            generator=torch.Generator().manual_seed(seed + 1),
        )
    return digits_fd(samples), trainer.step


def write_results(
    results: list[BenchResult], out_dir: Path, layout: str = "channels_last"
) -> tuple[Path, Path]:
    """Write ``bench.json`` and ``bench.md`` (a table with ratios to ours) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r.summary() for r in results]
    for row in rows:  # ours ÷ this, paired within each round
        ours = next(
            r
            for r in rows
            if r["image_size"] == row["image_size"] and r["name"] == "ours"
        )
        ratios = [
            a / b
            for a, b in zip(
                ours["train_images_per_s_rounds"],
                row["train_images_per_s_rounds"],
                strict=True,
            )
        ]
        row["ratio_median"], row["ratio_min"], row["ratio_max"] = (
            statistics.median(ratios),
            min(ratios),
            max(ratios),
        )
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "batch": BATCH,
        "layout": layout,
        "optimizer": "AdamW (fused)",
    }
    json_path = out_dir / "bench.json"
    json_path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    lines = [
        f"Benchmark (batch {BATCH}, torch {meta['torch']}, {meta['threads']} threads, CPU, {layout}, fused AdamW; "
        "medians of interleaved rounds; FD: 400 DDIM-50 samples after equal training seconds, one per seed)",
        "",
        "| size | network | parameters | train images/s | ours ÷ this (range over rounds) | sample ms/NFE | FD (digits) per seed | steps trained |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row['ratio_median']:.2f}× ({row['ratio_min']:.2f}–{row['ratio_max']:.2f})"
        fd = ", ".join(f"{v:.1f}" for v in row["fd"]) or "—"
        trained = ", ".join(str(v) for v in row["quality_steps"]) or "—"
        lines.append(
            f"| {row['image_size']} | {row['name']} | {row['parameters']:,} | {row['train_images_per_s']:.1f} | "
            f"{ratio} | {row['sample_ms_per_nfe']:.1f} | {fd} | {trained} |"
        )
    markdown_path = out_dir / "bench.md"
    markdown_path.write_text("\n".join(lines) + "\n")
    return json_path, markdown_path
