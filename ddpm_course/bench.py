"""Benchmarks: our U-Net against diffusers' ``UNet2DModel`` and lucidrains' ``Unet`` (chapter 04).

Each network is wrapped as ``model(x, t) -> eps`` and sized to within 10% of our U-Net's parameter
count. Measured side by side in one process, interleaved round by round (the machine is noisy), so
the ratios are what to read:

* training throughput: images/s of forward + backward + AdamW step at batch 64;
* sampling: milliseconds per network evaluation (no grad) at batch 64;
* optionally quality at an equal wall-clock budget: each network trained on the digits for the same
  number of seconds with the same loss and data, then ``digits_fd`` of DDIM-50 samples.

Peers come from the optional ``[bench]`` extra; a missing peer is reported, not fatal.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

__all__ = ["BenchResult", "build_contenders", "run_bench", "write_results"]

BATCH = 64


class _Wrapped(nn.Module):
    """Adapt a peer network to ``forward(x, t) -> eps``."""

    def __init__(self, net: nn.Module, call: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.net = net
        self.call = call

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.call(self.net, x, t)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _ours(image_size: int, channels: int) -> nn.Module:
    from .nn import unet_from_preset

    return unet_from_preset("digits", image_size=image_size, in_channels=channels)


def _diffusers(width: int, image_size: int, channels: int) -> nn.Module:
    from diffusers import UNet2DModel

    net = UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(width, 2 * width, 2 * width),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        norm_num_groups=8,
    )
    return _Wrapped(net, lambda m, x, t: m(x, t).sample)


def _lucidrains(width: int, image_size: int, channels: int) -> nn.Module:
    """``width`` = 1000 * attention head size + base width (its counts jump by ~50% per width step of 8)."""
    from denoising_diffusion_pytorch import Unet

    dim_head, dim = divmod(width, 1000)
    net = Unet(dim=dim, dim_mults=(1, 2, 2), channels=channels, attn_dim_head=dim_head, flash_attn=True)
    return _Wrapped(net, lambda m, x, t: m(x, t))


def _match_width(build: Callable[[int], nn.Module], target: int, widths: list[int]) -> tuple[nn.Module, int]:
    """The width whose parameter count is closest to ``target``."""
    best = min(widths, key=lambda w: abs(count_parameters(build(w)) - target))
    return build(best), best


def build_contenders(image_size: int, channels: int = 1) -> dict[str, nn.Module | str]:
    """Our U-Net and each available peer at a matched parameter count; a missing peer maps to the reason."""
    ours = _ours(image_size, channels)
    target = count_parameters(ours)
    contenders: dict[str, nn.Module | str] = {"ours": ours}
    search = {
        "diffusers": (_diffusers, list(range(8, 129, 8))),
        "lucidrains": (_lucidrains, [head * 1000 + dim for head in (32, 64) for dim in range(8, 129, 8)]),
    }
    for name, (builder, widths) in search.items():
        try:
            model, _ = _match_width(lambda w: builder(w, image_size, channels), target, widths)
        except ImportError as error:
            contenders[name] = f"not installed ({error.name}); pip install 'ddpm-course[bench]'"
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
    fd: float | None = None

    def summary(self) -> dict:
        return {
            "image_size": self.image_size,
            "name": self.name,
            "parameters": self.parameters,
            "train_images_per_s": statistics.median(self.train_images_per_s),
            "sample_ms_per_nfe": statistics.median(self.sample_ms_per_nfe),
            "fd": self.fd,
        }


def _train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, steps: int) -> float:
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


def run_bench(image_sizes=(16, 32), rounds: int = 5, steps: int = 3, channels: int = 1, quality_seconds: float = 0.0) -> list[BenchResult]:
    """Interleaved rounds: in each round every contender does ``steps`` training steps and ``steps`` forward passes."""
    from tqdm.auto import tqdm

    results: list[BenchResult] = []
    for size in image_sizes:
        contenders = build_contenders(size, channels)
        models = {name: m for name, m in contenders.items() if isinstance(m, nn.Module)}
        for name, reason in contenders.items():
            if isinstance(reason, str):
                print(f"skipping {name}: {reason}")
        x = torch.randn(BATCH, channels, size, size)
        optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
        size_results = {name: BenchResult(size, name, count_parameters(m)) for name, m in models.items()}
        for name, model in models.items():  # warm-up, not timed
            _train_steps(model.train(), optimizers[name], x, 1)
        for _ in tqdm(range(rounds), desc=f"bench {size}x{size}"):
            for name, model in models.items():
                seconds = _train_steps(model.train(), optimizers[name], x, steps)
                size_results[name].train_images_per_s.append(BATCH * steps / seconds)
                seconds = _sample_steps(model.eval(), x, steps)
                size_results[name].sample_ms_per_nfe.append(1000 * seconds / steps)
        if quality_seconds > 0 and size == 16 and channels == 1:
            for name in models:
                size_results[name].fd = _quality(name, size, quality_seconds)
        results.extend(size_results.values())
    return results


def _quality(name: str, size: int, seconds: float) -> float:
    """Train a fresh copy of a contender on the digits for ``seconds`` (same loss, data, lr), then FD of DDIM-50 samples."""
    from .data import digits
    from .diffusion import GaussianDiffusion
    from .metrics import digits_fd
    from .samplers import ddim_sample
    from .schedules import linear

    torch.manual_seed(0)
    model = build_contenders(size, 1)[name]
    diffusion = GaussianDiffusion(linear(1000))
    images, _ = digits(size=size, split="train")
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    ema = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = images[torch.randint(0, images.shape[0], (BATCH,), generator=generator)]
        loss = diffusion.training_losses(model, batch, generator=generator)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for average, p in zip(ema, model.parameters()):
                average.lerp_(p, 1 - 0.995)
    with torch.no_grad():
        for average, p in zip(ema, model.parameters()):
            p.copy_(average)
    samples = ddim_sample(model.eval(), diffusion, (400, 1, size, size), steps=50, generator=torch.Generator().manual_seed(1))
    return digits_fd(samples)


def write_results(results: list[BenchResult], out_dir: Path) -> tuple[Path, Path]:
    """Write ``bench.json`` and ``bench.md`` (a table with ratios to ours) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r.summary() for r in results]
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "batch": BATCH,
    }
    json_path = out_dir / "bench.json"
    json_path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    lines = [
        f"Benchmark (batch {BATCH}, torch {meta['torch']}, {meta['threads']} threads, CPU; medians of interleaved rounds)",
        "",
        "| size | network | parameters | train images/s | ours ÷ this | sample ms/NFE | FD (digits) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ours = next(r for r in rows if r["image_size"] == row["image_size"] and r["name"] == "ours")
        ratio = ours["train_images_per_s"] / row["train_images_per_s"]
        fd = "—" if row["fd"] is None else f"{row['fd']:.2f}"
        lines.append(
            f"| {row['image_size']} | {row['name']} | {row['parameters']:,} | {row['train_images_per_s']:.1f} | "
            f"{ratio:.2f}× | {row['sample_ms_per_nfe']:.1f} | {fd} |"
        )
    markdown_path = out_dir / "bench.md"
    markdown_path.write_text("\n".join(lines) + "\n")
    return json_path, markdown_path
