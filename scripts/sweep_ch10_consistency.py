"""Calibrate chapter 10's outcome-graded ``consistency_loss``: train the tiny consistency model
with the correct loss and with each classic mistake over many training seeds, and print the
one-step sliced Wasserstein distance that the judge grades (and what the judge says).

    OMP_NUM_THREADS=1 python scripts/sweep_ch10_consistency.py 30 sweep.jsonl [VARIANT ...]

One JSON line per (variant, seed), appended to the file; pairs already there are skipped, so an
interrupted sweep resumes. The ranges are quoted in ddpm_course/grading/ch10_few_steps.py.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ddpm_course.grading import consistency_outcome as ch10
from ddpm_course.grading.ch09_flow import mixture_points
from ddpm_course.grading.drivers import DRIVERS
from ddpm_course.grading.exercise import Case


def student_loss(mistake: str | None = None):
    """A consistency-distillation loss as a student writes it, with at most one mistake."""

    def consistency_loss(model, teacher, x0, noise, s, h):
        def f(x, time):
            if mistake == "no boundary":
                return model(x, time)
            if mistake == "no time":
                return x - time[:, None] * model(x)
            return x - time[:, None] * model(x, time)

        column = s[:, None]
        x_s = (1 - column) * x0 + column * noise
        with torch.no_grad():
            if mistake == "student step":
                x_hat = x_s - h * model(x_s, s)
            elif mistake == "teacher sign":
                x_hat = x_s + h * teacher(x_s, s)
            elif mistake == "teacher at s - h":
                x_hat = x_s - h * teacher(x_s, s - h)
            elif mistake == "heun":
                slope = teacher(x_s, s)
                x_hat = x_s - h * (slope + teacher(x_s - h * slope, s - h)) / 2
            else:
                x_hat = x_s - h * teacher(x_s, s)
        if mistake == "reversed":  # the online point the less noisy one
            x_low = (1 - column + h) * x0 + (column - h) * noise
            with torch.no_grad():
                target = f(x_low + h * teacher(x_low, s - h), s)
            return ((f(x_low, s - h) - target) ** 2).mean()
        if mistake == "teacher target":
            target = x_hat - (s - h)[:, None] * teacher(x_hat, s - h)
        elif mistake == "no stop-gradient":
            target = f(x_hat, s - h)
        else:
            with torch.no_grad():
                target = f(x_hat, s if mistake == "s and s - h swapped" else s - h)
        online = f(x_s, s - h if mistake == "s and s - h swapped" else s)
        return ((online - target) ** 2).mean()

    return consistency_loss


VARIANTS = (None, "heun", "no stop-gradient", "teacher target", "student step",
            "teacher sign", "s and s - h swapped", "reversed", "no boundary",
            "teacher at s - h", "no time")  # fmt: skip


def main(n_seeds: int, path: Path, variants: list[str]) -> None:
    torch.set_num_threads(1)
    done = set()
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            done.add((row["variant"], row["seed"]))
    points = mixture_points(2000, torch.Generator().manual_seed(0))
    for variant in variants:
        for seed in range(n_seeds):
            if (variant, seed) in done:
                continue
            start = time.process_time()
            args = (seed, ch10.mixture_teacher(), points, ch10.STEPS, ch10.BATCH_SIZE,
                    ch10.LR, ch10.NUM_STEPS)  # fmt: skip
            loss = student_loss(None if variant == "correct" else variant)
            outputs = DRIVERS["train_tiny_consistency"](loss, *args)
            result = ch10.judge_consistency_loss(Case("sweep", args), outputs)
            stats = ch10.one_step_statistics(seed, outputs[0])
            row = {"variant": variant, "seed": seed, "gradient_rows": float(outputs[2]),
                   **stats, "passed": result.passed, "message": result.message,
                   "cpu_s": round(time.process_time() - start, 2)}  # fmt: skip
            with path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(
        int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:] or ["correct", *VARIANTS[1:]]
    )
