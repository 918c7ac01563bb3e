r"""The measured numbers of chapter 06 (the book's: ``ddpm_course/results/06_guidance.json``).

``python -m ddpm_course.experiments.guidance_eval --out ddpm_course/results/06_guidance.json`` (all sections: each records its ``minutes`` in the file,
together about two and a half hours of one CPU thread, some on a shared machine) or ``--only
cfg_seeds inpaint`` (the named sections, merged into the file). Every section uses the shipped models, fixed seeds, and the shipped digits classifier of
:mod:`ddpm_course.metrics` for accuracy, features and FD:

* ``cfg``: classifier-free guidance on ``digits-cond`` over a sweep of w (DDIM), 400 samples
  each (40 per class): class accuracy, FD (and its floor at 400), diversity (mean pairwise feature
  distance within a class, averaged over classes), saturation (fraction of pixels with
  :math:`|x| > 0.98`); w = 3 also with DPM-Solver++(2M) in 15 steps. The acceptance test is
  w = 3: accuracy >= 95 % and FD <= 2 × floor.
* ``cfg_interval``: w = 3 guided only at t <= 150, 300, 500 (Kynkäänniemi et al. 2024), as
  ``cfg``.
* ``cfg_samplers``: w = 3 with DDIM (η = 0) in 50 steps and the ancestral sampler (DDPM
  respaced) in 100 and 250 steps, as ``cfg``: whether the sampler, not the scale, sets the FD.
* ``cfg_seeds``: the acceptance test over five sampling seeds (0-4: 0 is the seed the interval
  was chosen on, 1-4 are fresh): w = 3 guided at every step, at t <= 150 and at t <= 300, and at
  every step with the separately trained ``digits`` model as ε(x, ∅) instead of the null class
  (DDIM, 20 steps), and at every step with the ancestral sampler in 100 steps; beside
  them the floor of five subsets of 400 training digits (seeds 0-4).
* ``classifier``: the noisy classifier's test accuracy against t, and classifier guidance of the
  unconditional ``digits`` model over a sweep of scales (DDIM with the ε shift; ancestral with the
  mean shift at one scale).
* ``inpaint``: the top half of 100 test digits known; replacement and RePaint (jump 5, 5 samples),
  and replacement with as many network evaluations as RePaint: known-pixel error, class accuracy
  of the completions, RMSE of the filled half to the truth, and the seam error (the jump between
  rows 7 and 8 against the real image's).
* (super-resolution is measured on Fashion-MNIST: ``experiments.fashion_models --only sr``.)
* ``sdedit``: blurred test digits noised to each t0 of a sweep and denoised: distance to the guide
  and class agreement with the digit that was blurred.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data import digits
from ..guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    classifier_guided_ddpm_sample,
    inpaint,
    repaint_schedule,
    sdedit,
)
from ..metrics import (
    class_accuracy,
    digits_fd,
    digits_fd_floor,
    saturation,
    seam_error,
    within_class_diversity,
)
from ..samplers import respace, sample

__all__ = [
    "blur",
    "evaluate_cfg",
    "evaluate_cfg_samplers",
    "evaluate_cfg_seeds",
    "cfg_acceptance",
    "evaluate_classifier_guidance",
    "evaluate_inpainting",
    "evaluate_sdedit",
]

COMMAND = "python -m ddpm_course.experiments.guidance_eval"
CFG_SCALES = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0)
CLASSIFIER_SCALES = (0.0, 1.0, 2.0, 5.0, 10.0)
SDEDIT_T0 = (100, 200, 300, 400, 500, 600, 700, 800, 900)


def blur(images: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Gaussian blur (a separable kernel of width 2·ceil(2σ) + 1, reflect padding): (N, C, H, W)."""
    radius = int(2 * sigma + 0.999)
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    horizontal = kernel.reshape(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    out = F.conv2d(padded, horizontal, groups=channels)
    return F.conv2d(out, horizontal.transpose(2, 3), groups=channels)


def _balanced_labels(n: int, num_classes: int = 10) -> torch.Tensor:
    return torch.arange(n) % num_classes


def evaluate_cfg(
    n: int = 400, steps: int = 20, scales=CFG_SCALES, seed: int = 0
) -> dict[str, Any]:
    """Classifier-free guidance on digits-cond: one row per w (see the module docstring)."""
    from ..pretrained import load_pretrained

    model, diffusion, _ = load_pretrained("digits-cond", device="cpu")
    labels = _balanced_labels(n)
    rows = []
    for w in scales:
        generator = torch.Generator().manual_seed(seed)
        guided = ClassifierFreeGuidance(model, w, labels)
        samples = sample(
            "ddim", guided, diffusion, (n, 1, 16, 16), steps=steps, generator=generator
        )
        rows.append({
            "w": w, "accuracy": class_accuracy(samples, labels), "fd": digits_fd(samples),
            "diversity": within_class_diversity(samples, labels), "saturation": saturation(samples),
        })  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    samples = sample(
        "dpm-solver", ClassifierFreeGuidance(model, 3.0, labels), diffusion, (n, 1, 16, 16),
        steps=15, generator=generator, clip_denoised=True,
    )  # fmt: skip
    dpm = {
        "w": 3.0,
        "steps": 15,
        "accuracy": class_accuracy(samples, labels),
        "fd": digits_fd(samples),
    }
    real, real_labels = digits(size=16, split="train")
    return {
        "n": n, "ddim_steps": steps, "rows": rows, "dpm_solver": dpm,
        "floor": digits_fd_floor(n, generator=torch.Generator().manual_seed(seed)),
        "real_diversity": within_class_diversity(real, real_labels),
    }  # fmt: skip


def evaluate_cfg_interval(
    n: int = 400,
    steps: int = 20,
    w: float = 3.0,
    max_timesteps=(150, 300, 500),
    seed: int = 0,
) -> dict[str, Any]:
    """CFG at w guided only at t <= max_timestep (Kynkäänniemi et al. 2024), one row per
    max_timestep, measured as ``cfg``."""
    from ..pretrained import load_pretrained

    model, diffusion, _ = load_pretrained("digits-cond", device="cpu")
    labels = _balanced_labels(n)
    rows = []
    for max_timestep in max_timesteps:
        guided = ClassifierFreeGuidance(model, w, labels, max_timestep=max_timestep)
        samples = _sample(guided, diffusion, n, "ddim", steps, seed)
        rows.append({
            "max_timestep": max_timestep, "accuracy": class_accuracy(samples, labels),
            "fd": digits_fd(samples), "diversity": within_class_diversity(samples, labels),
        })  # fmt: skip
    return {
        "n": n, "ddim_steps": steps, "w": w, "rows": rows,
        "floor": digits_fd_floor(n, generator=torch.Generator().manual_seed(seed)),
    }  # fmt: skip


def _sample(
    guided, diffusion, n: int, sampler: str, steps: int, seed: int
) -> torch.Tensor:
    """n 16×16 samples of ``guided`` from seed by :func:`ddpm_course.samplers.sample`: "ddim"
    (η = 0) or "ddpm" (the ancestral sampler respaced to ``steps``), x0 clipped."""
    return sample(sampler, guided, diffusion, (n, 1, 16, 16), steps=steps,
                  generator=torch.Generator().manual_seed(seed))  # fmt: skip


def evaluate_cfg_samplers(
    n: int = 400, w: float = 3.0, runs=(("ddim", 50), ("ddpm", 100), ("ddpm", 250)),
    seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """CFG at w with a deterministic sampler (DDIM η = 0) and the ancestral one (DDPM respaced)
    at more steps than the sweep's, measured as ``cfg``: is the FD at w set by the sampler?"""
    from ..pretrained import load_pretrained

    model, diffusion, _ = load_pretrained("digits-cond", device="cpu")
    labels = _balanced_labels(n)
    rows = []
    for sampler, steps in runs:
        guided = ClassifierFreeGuidance(model, w, labels)
        samples = _sample(guided, diffusion, n, sampler, steps, seed)
        rows.append({
            "sampler": sampler, "steps": steps, "accuracy": class_accuracy(samples, labels),
            "fd": digits_fd(samples), "diversity": within_class_diversity(samples, labels),
        })  # fmt: skip
    return {
        "n": n, "w": w, "rows": rows,
        "floor": digits_fd_floor(n, generator=torch.Generator().manual_seed(seed)),
    }  # fmt: skip


CFG_VARIANTS = (
    ("every step", None, False, None),
    ("t <= 150", 150, False, None),
    ("t <= 300", 300, False, None),
    ("every step, digits as the unconditional half", None, True, None),
    ("every step, ancestral 100 steps", None, False, 100),
)


def evaluate_cfg_seeds(
    n: int = 400, steps: int = 20, w: float = 3.0, seeds=(0, 1, 2, 3, 4),
    variants=CFG_VARIANTS,
) -> dict[str, Any]:  # fmt: skip
    """CFG at w over several sampling seeds, one row per (variant, seed), measured as ``cfg``;
    each variant is (name, max_timestep, whether ε(x, ∅) comes from the unconditional
    ``digits`` model, ancestral steps): DDIM in ``steps`` steps when the last is None, else the
    ancestral sampler (DDPM respaced to that many steps). The floors are those of
    ``len(seeds)`` random subsets of n training digits."""
    from ..pretrained import load_pretrained

    model, diffusion, _ = load_pretrained("digits-cond", device="cpu")
    uncond, _, _ = load_pretrained("digits", device="cpu")
    labels = _balanced_labels(n)
    rows = []
    for name, max_timestep, separate, ancestral in variants:
        guided = ClassifierFreeGuidance(
            model, w, labels, max_timestep=max_timestep,
            uncond_model=uncond if separate else None,
        )  # fmt: skip
        sampler = "ddim" if ancestral is None else "ddpm"
        for seed in seeds:
            samples = _sample(guided, diffusion, n, sampler, ancestral or steps, seed)
            rows.append({
                "variant": name, "max_timestep": max_timestep, "separate_uncond": separate,
                "sampler": sampler, "steps": ancestral or steps,
                "seed": seed, "accuracy": class_accuracy(samples, labels),
                "fd": digits_fd(samples), "diversity": within_class_diversity(samples, labels),
            })  # fmt: skip
    floors = [
        digits_fd_floor(n, generator=torch.Generator().manual_seed(seed))
        for seed in seeds
    ]
    return {"n": n, "ddim_steps": steps, "w": w, "seeds": list(seeds), "rows": rows,
            "floors": floors}  # fmt: skip


def cfg_acceptance(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The acceptance test of chapter 06 on a ``cfg_seeds`` section, per variant: accuracy
    >= 95 % and FD <= 2 × the median floor on every seed. Returns, per variant name, the FDs,
    accuracies and diversities in seed order, their mean and sample s.d. (FD), the threshold,
    and ``met``."""
    floors = sorted(section["floors"])
    middle = len(floors) // 2
    median = (
        floors[middle] if len(floors) % 2 else (floors[middle - 1] + floors[middle]) / 2
    )
    threshold = 2 * median
    summary: dict[str, dict[str, Any]] = {}
    for row in sorted(section["rows"], key=lambda r: r["seed"]):
        entry = summary.setdefault(
            row["variant"], {"fd": [], "accuracy": [], "diversity": [], "seeds": []}
        )
        for key in ("fd", "accuracy", "diversity"):
            entry[key].append(row[key])
        entry["seeds"].append(row["seed"])
    for entry in summary.values():
        fds = torch.tensor(entry["fd"], dtype=torch.float64)
        entry["fd_mean"] = float(fds.mean())
        entry["fd_sd"] = float(fds.std()) if len(fds) > 1 else 0.0
        entry["threshold"] = threshold
        entry["met"] = all(a >= 0.95 for a in entry["accuracy"]) and all(
            f <= threshold for f in entry["fd"]
        )
    return summary


def evaluate_classifier_guidance(
    n: int = 200, steps: int = 25, scales=CLASSIFIER_SCALES, seed: int = 0
) -> dict[str, Any]:
    """The noisy classifier's accuracy against t, and classifier guidance of ``digits``."""
    from ..guidance_models import load_noisy_classifier, noisy_accuracy
    from ..pretrained import load_pretrained

    classifier, _, _ = load_noisy_classifier(device="cpu")
    model, diffusion, _ = load_pretrained("digits", device="cpu")
    timesteps = list(range(0, 1000, 100)) + [999]
    accuracy = noisy_accuracy(classifier, diffusion, timesteps)
    labels = _balanced_labels(n)
    rows = []
    for scale in scales:
        guided = ClassifierGuidance(model, classifier, diffusion, labels, scale)
        samples = _sample(guided, diffusion, n, "ddim", steps, seed)
        rows.append({"scale": scale, "accuracy": class_accuracy(samples, labels), "fd": digits_fd(samples),
                     "diversity": within_class_diversity(samples, labels)})  # fmt: skip
    ancestral_scale = 2.0
    samples = classifier_guided_ddpm_sample(
        model, respace(diffusion, 50), classifier, labels, ancestral_scale, (n, 1, 16, 16),
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    return {
        "timesteps": timesteps, "noisy_accuracy": accuracy, "n": n, "ddim_steps": steps,
        "rows": rows, "floor": digits_fd_floor(n, generator=torch.Generator().manual_seed(seed)),
        "ancestral": {"scale": ancestral_scale, "steps": 50,
                      "accuracy": class_accuracy(samples, labels), "fd": digits_fd(samples)},
    }  # fmt: skip


def _network_evaluations(steps: int, jump_length: int, resample: int) -> int:
    """The steps down (one network call each) of :func:`repaint_schedule`."""
    times = repaint_schedule(steps, jump_length, resample)
    return sum(
        later < earlier for earlier, later in zip(times[:-1], times[1:], strict=True)
    )


def _top_half_mask(size: int = 16) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., : size // 2, :] = 1
    return mask


def evaluate_inpainting(
    n: int = 100,
    steps: int = 50,
    jump_length: int = 5,
    resample: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Replacement against RePaint on the test digits with the top half known (``digits``)."""
    from ..pretrained import load_pretrained

    model, diffusion, _ = load_pretrained("digits", device="cpu")
    images, labels = digits(size=16, split="test")
    index = torch.randperm(
        images.shape[0], generator=torch.Generator().manual_seed(seed)
    )[:n]
    truth, labels = images[index], labels[index]
    mask = _top_half_mask()
    nfe = _network_evaluations(steps, jump_length, resample)
    methods = {
        "replacement": (steps, 1, 1),
        f"replacement, {nfe} steps": (nfe, 1, 1),
        "repaint": (steps, jump_length, resample),
    }
    rows = []
    for name, (method_steps, jump, count) in methods.items():
        start = time.perf_counter()
        out = inpaint(model, respace(diffusion, method_steps), truth * mask, mask, jump, count,
                      generator=torch.Generator().manual_seed(seed))  # fmt: skip
        hole = (1 - mask).bool().expand_as(out)
        rows.append({
            "method": name, "steps": method_steps, "jump_length": jump, "resample": count,
            "nfe": _network_evaluations(method_steps, jump, count),
            "known_max_error": (out - truth)[~hole].abs().max().item(),
            "accuracy": class_accuracy(out, labels),
            "hole_rmse": (out - truth)[hole].pow(2).mean().sqrt().item(),
            "seam_error": seam_error(out, truth), "seconds": time.perf_counter() - start,
        })  # fmt: skip
    return {"n": n, "mask": "top half known", "rows": rows}


def evaluate_sdedit(
    n: int = 100, steps: int = 50, t0s=SDEDIT_T0, seed: int = 0
) -> dict[str, Any]:
    """SDEdit of blurred test digits with ``digits``: faithfulness against realism over t0."""
    from ..pretrained import load_pretrained

    model, diffusion, _ = load_pretrained("digits", device="cpu")
    images, labels = digits(size=16, split="test")
    index = torch.randperm(
        images.shape[0], generator=torch.Generator().manual_seed(seed)
    )[:n]
    guides, labels = blur(images[index]), labels[index]
    rows = []
    for t0 in t0s:
        out = sdedit(
            model,
            diffusion,
            guides,
            t0,
            steps=steps,
            generator=torch.Generator().manual_seed(seed),
        )
        rows.append({
            "t0": t0, "guide_rmse": (out - guides).pow(2).mean().sqrt().item(),
            "accuracy": class_accuracy(out, labels), "fd": digits_fd(out),
        })  # fmt: skip
    return {"n": n, "blur_sigma": 1.5, "guide_accuracy": class_accuracy(guides, labels),
            "guide_fd": digits_fd(guides), "rows": rows}  # fmt: skip


SECTIONS = {
    "cfg": evaluate_cfg,
    "cfg_interval": evaluate_cfg_interval,
    "cfg_samplers": evaluate_cfg_samplers,
    "cfg_seeds": evaluate_cfg_seeds,
    "classifier": evaluate_classifier_guidance,
    "inpaint": evaluate_inpainting,
    "sdedit": evaluate_sdedit,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Measure chapter 06's numbers into a JSON file"
    )
    parser.add_argument(
        "--only", nargs="+", choices=sorted(SECTIONS), default=sorted(SECTIONS)
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the JSON to write (the book's: ddpm_course/results/06_guidance.json)",
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in args.only:
        start = time.perf_counter()
        results[name] = SECTIONS[name]()
        results[name]["minutes"] = round((time.perf_counter() - start) / 60, 1)
        results["command"] = f"{COMMAND} --out {args.out}"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        print(f"{name}: {json.dumps(results[name])[:400]}")
    if "cfg_seeds" in results:
        for name, entry in cfg_acceptance(results["cfg_seeds"]).items():
            print(f"acceptance (w = 3, {name}): FD {entry['fd_mean']:.1f} ± {entry['fd_sd']:.1f} "
                  f"over seeds {entry['seeds']}, max {max(entry['fd']):.1f} vs "
                  f"{entry['threshold']:.1f}, accuracy >= {min(entry['accuracy']):.3f}: "
                  f"{'met' if entry['met'] else 'NOT met'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
