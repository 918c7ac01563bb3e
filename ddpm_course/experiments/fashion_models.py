r"""The shipped Fashion-MNIST models of chapters 06 and 07, measured: the results file they read.

Sections (each rewrites its own key of the JSON file named by ``--out``; the others are kept):

* ``guidance``: ``fashion-cond`` sampled by DDIM-``--guidance-steps`` with classifier-free
  guidance at each scale w of ``--scales`` (w = 0: the conditional model unguided), ``n``
  samples with balanced labels per sampling seed: FD, the shipped classifier's accuracy on the
  labels asked for, precision and recall (k = 3, against ``n`` test images); and the null class
  alone (the model's unconditional half);
* ``sr``: ``fashion-sr`` on the first ``--sr-inputs`` test images pooled to 14×14, 8 samples
  each (ancestral, 100 steps): the per-pixel standard deviation across the 8, and how well each
  sample's 2×2-pooled image matches its input against a bicubic upscale's;
* ``latent``: ``fashion-ldm`` against the pixel-space ``fashion-cond``, both unguided DDIM-50
  with balanced labels, per seed (FD at ``n``); the autoencoder's reconstructions of ``n``
  training images (the latent model's own floor); the decoder fed scaled latents without
  dividing by the scale factor (the classic bug); and the sampling time per image of both at 50
  steps, measured interleaved in one run.

Every FD is against the 10,000 test images in the shipped classifier's features, and
comparable only at the same ``n`` (each entry records its own). Each section records the
command that wrote it under ``commands``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..checkpoint import atomic_write
from ..data import fashion_mnist
from ..guidance import ClassifierFreeGuidance, sr_downsample, super_resolve
from ..latent import latent_sample
from ..metrics import (
    fashion_fd,
    fashion_features,
    fashion_predict,
    fashion_test_features,
    precision_recall,
)
from ..pretrained import load_pretrained
from ..samplers import sample

SECTIONS = ("guidance", "sr", "latent")
SR_SAMPLES = 8


def balanced_labels(n: int, classes: int = 10) -> torch.Tensor:
    """Labels 0, 1, ..., classes - 1, 0, 1, ... (n,): every class equally often."""
    return torch.arange(n) % classes


@torch.no_grad()
def draw_conditional(
    model, diffusion, labels: torch.Tensor, steps: int, seed: int, scale: float = 0.0,
    batch: int = 250,
) -> torch.Tensor:  # fmt: skip
    """DDIM-``steps`` samples (η = 0, x̂0 clipped) of a class-conditional model for ``labels``,
    guided at scale w = ``scale`` (0: unguided), in batches from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    guided = ClassifierFreeGuidance(model, scale) if scale > 0 else model
    chunks = []
    for start in range(0, labels.shape[0], batch):
        y = labels[start : start + batch]
        chunks.append(
            sample(
                "ddim",
                guided,
                diffusion,
                (y.shape[0], 1, 28, 28),
                steps,
                generator=generator,
                model_kwargs={"y": y},
                clip_denoised=True,
            )  # fmt: skip
        )
    return torch.cat(chunks)


def _quality(samples: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
    """FD, precision/recall against as many test images as samples, and accuracy."""
    n = samples.shape[0]
    reference = fashion_test_features()[:n]  # the test split's order: a fixed subset
    row = {
        "fd": fashion_fd(samples),
        **precision_recall(reference, fashion_features(samples)),
    }
    if labels is not None:
        row["accuracy"] = float((fashion_predict(samples) == labels).double().mean())
    return row


def guidance_section(
    n: int, steps: int, scales: list[float], seeds: list[int]
) -> dict[str, Any]:
    model, diffusion, _ = load_pretrained("fashion-cond", device="cpu")
    model = model.float()
    labels = balanced_labels(n)
    rows = []
    for scale in scales:
        per_seed = []
        for seed in seeds:
            start = time.perf_counter()
            images = draw_conditional(model, diffusion, labels, steps, seed, scale)
            per_seed.append({"seed": seed, **_quality(images, labels),
                             "seconds": round(time.perf_counter() - start, 1)})  # fmt: skip
            print(scale, per_seed[-1], flush=True)
        rows.append({"scale": scale, "seeds": per_seed, **_medians(per_seed)})
    null = [
        {"seed": seed, **_quality(draw_conditional(
            model, diffusion, torch.full((n,), 10), steps, seed), None)}
        for seed in seeds
    ]  # fmt: skip
    return {"n": n, "steps": steps, "sampler": "ddim", "seeds": seeds, "rows": rows,
            "null_class": {"seeds": null, **_medians(null)}}  # fmt: skip


def _medians(rows: list[dict[str, float]]) -> dict[str, Any]:
    keys = [k for k in rows[0] if k not in ("seed", "seconds", "k")]
    return {f"median_{k}": statistics.median(r[k] for r in rows) for k in keys} | {
        f"range_{k}": [min(r[k] for r in rows), max(r[k] for r in rows)] for k in keys
    }


@torch.no_grad()
def sr_section(inputs: int, seed: int) -> dict[str, Any]:
    model, diffusion, _ = load_pretrained("fashion-sr", device="cpu")
    model = model.float()
    truth = fashion_mnist("test")[0][:inputs]
    low = sr_downsample(truth)
    generator = torch.Generator().manual_seed(seed)
    repeated = low.repeat_interleave(SR_SAMPLES, dim=0)
    samples = super_resolve(model, diffusion, repeated, generator=generator)
    samples = samples.clamp(-1, 1).view(inputs, SR_SAMPLES, 1, 28, 28)
    bicubic = F.interpolate(low, scale_factor=2, mode="bicubic").clamp(-1, 1)

    def pooled_error(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (sr_downsample(images) - target).pow(2).flatten(1).mean(1)

    sample_error = pooled_error(samples.flatten(0, 1), repeated).view(
        inputs, SR_SAMPLES
    )
    bicubic_error = pooled_error(bicubic, low)
    spread = samples.std(dim=1).flatten(1).mean(1)  # per input: mean per-pixel std
    quartiles = torch.quantile(spread, torch.tensor([0.25, 0.5, 0.75])).tolist()
    return {
        "inputs": inputs, "samples_per_input": SR_SAMPLES, "seed": seed,
        "sampler": "ancestral, 100 respaced steps (guidance.super_resolve)",
        "pixel_std_mean": float(spread.mean()), "pixel_std_min": float(spread.min()),
        "pixel_std_quartiles": quartiles,
        "pooled_mse_samples_mean": float(sample_error.mean()),
        "pooled_mse_samples_max": float(sample_error.max()),
        "pooled_mse_bicubic_mean": float(bicubic_error.mean()),
        "fraction_samples_better_than_bicubic": float(
            (sample_error < bicubic_error[:, None]).double().mean()
        ),
        "mse_to_truth_samples": float((samples - truth[:, None]).pow(2).mean()),
        "mse_to_truth_bicubic": float((bicubic - truth).pow(2).mean()),
    }  # fmt: skip


@torch.no_grad()
def latent_section(n: int, seeds: list[int], repeats: int = 3) -> dict[str, Any]:
    ldm, latent_diffusion, _ = load_pretrained("fashion-ldm", device="cpu")
    ldm = ldm.float()
    pixel, pixel_diffusion, _ = load_pretrained("fashion-cond", device="cpu")
    pixel = pixel.float()
    labels = balanced_labels(n)
    rows = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        latents = torch.cat([
            latent_sample(ldm, latent_diffusion, y.shape[0], labels=y, steps=50,
                          generator=generator, decode=False)
            for y in labels.split(250)
        ])  # fmt: skip
        images = ldm.decode(latents)
        unscaled = ldm.autoencoder.decode(latents).clamp(-1, 1)  # the bug: no division
        pixels = draw_conditional(pixel, pixel_diffusion, labels, 50, seed)
        rows.append({
            "seed": seed, "ldm_fd": fashion_fd(images),
            "ldm_accuracy": float((fashion_predict(images) == labels).double().mean()),
            "ldm_fd_decoded_without_unscaling": fashion_fd(unscaled),
            "pixel_fd": fashion_fd(pixels),
            "pixel_accuracy": float((fashion_predict(pixels) == labels).double().mean()),
        })  # fmt: skip
        print(rows[-1], flush=True)
    train = fashion_mnist("train")[0]
    subset = train[
        torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(0))[:n]
    ]
    reconstructions = torch.cat([
        ldm.decode(ldm.encode(chunk, sample=False)) for chunk in subset.split(250)
    ])  # fmt: skip
    return {
        "n": n, "steps": 50, "sampler": "ddim (eta 0): the latent model with leading spacing, unclipped "
        "(latent_sample's default), the pixel model trailing with x0 clipped", "seeds": seeds,
        "rows": rows, **_medians(rows),
        "reconstruction_fd": fashion_fd(reconstructions),
        "reconstruction_mse": float((reconstructions - subset).pow(2).mean()),
        "latent_values": int(torch.tensor(ldm.latent_shape).prod()), "image_values": 784,
        "scale_factor": ldm.scale_factor,
        "timing": _timing(ldm, latent_diffusion, pixel, pixel_diffusion, repeats),
    }  # fmt: skip


@torch.no_grad()
def _timing(
    ldm, latent_diffusion, pixel, pixel_diffusion, repeats: int, batch: int = 100
):
    """Seconds per image of DDIM-50 for both models (the latent one with its decoding),
    interleaved ``repeats`` times on batches of ``batch`` images; medians and their ratio."""
    torch.manual_seed(0)
    labels = balanced_labels(batch)
    latent_times, pixel_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        latent_sample(ldm, latent_diffusion, batch, labels=labels, steps=50)
        latent_times.append((time.perf_counter() - start) / batch)
        start = time.perf_counter()
        draw_conditional(pixel, pixel_diffusion, labels, 50, seed=0, batch=batch)
        pixel_times.append((time.perf_counter() - start) / batch)
    latent, pixel_time = statistics.median(latent_times), statistics.median(pixel_times)
    return {
        "batch": batch, "repeats": repeats, "threads": torch.get_num_threads(),
        "latent_seconds_per_image": latent_times, "pixel_seconds_per_image": pixel_times,
        "median_ratio_latent_to_pixel": latent / pixel_time,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON results file")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--n", type=int, default=1000, help="images per FD")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--guidance-steps", type=int, default=20)
    parser.add_argument(
        "--scales", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0]
    )
    parser.add_argument("--sr-inputs", type=int, default=64)
    args = parser.parse_args(argv)
    words = sys.argv[1:] if argv is None else argv
    command = (
        "OMP_NUM_THREADS=1 python -m ddpm_course.experiments.fashion_models "
        + " ".join(words)
    )
    for section in args.only:
        start = time.perf_counter()
        if section == "guidance":
            value = guidance_section(
                args.n, args.guidance_steps, args.scales, args.seeds
            )
        elif section == "sr":
            value = sr_section(args.sr_inputs, args.seeds[0])
        else:
            value = latent_section(args.n, args.seeds)
        value["minutes"] = round((time.perf_counter() - start) / 60, 1)
        # read just before writing: another process may have written another section
        results = json.loads(args.out.read_text()) if args.out.exists() else {}
        results[section] = value
        results.setdefault("commands", {})[section] = command
        text = json.dumps(results, indent=1, sort_keys=True) + "\n"
        atomic_write(args.out, lambda file, text=text: file.write(text.encode()))
        print(section, json.dumps(value)[:400], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
