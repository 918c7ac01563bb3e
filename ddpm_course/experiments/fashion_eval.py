r"""The Fashion-MNIST metric and the shipped ``fashion`` model, measured: the results file that
chapters 04, 05 and 08 read.

Sections (each rewrites its own key of the JSON file named by ``--out``; the others are kept):

* ``floor``: the FD of ``n`` real *training* images against the 10,000 test images, over
  ``--draws`` independent subsets (median, range, values), and their KID;
* ``fashion``: ``n`` DDIM-``steps`` samples of the shipped ``fashion`` model per sampling seed:
  FD, KID, seconds per image; the median FD over seeds as a multiple of the floor's median;
* ``nfe``: FD of ``n`` samples of ``fashion`` per seed by DDIM and DPM-Solver++ at 10 network
  evaluations and by EDM's and the flow's Heun sampler at 19 (10 steps), beside ``fashion``'s
  DDIM-50;
* ``curve``: FD of ``n`` samples (the first seed) from checkpoints of a run (``--checkpoints``),
  against their optimiser steps and the training seconds of the run's log (``--log``); rows of
  an earlier call at the same n, steps and seed are kept, so checkpoints can be measured as
  the run writes them;
* ``flow``: FD of ``n`` samples per seed of the shipped flow-matching model ``fashion-flow``
  (chapter 09) by flow-Euler at 5, 10, 20 and 50 steps and flow-Heun at 5 and 10 steps;
* ``flow_curve``: the ``curve`` section for checkpoints of the ``fashion-flow`` run (sampled
  by flow-Euler, ``steps`` steps);
* ``fewstep``: chapter 10's distilled student (the shipped ``fashion-fewstep``, or one
  ``--checkpoints`` file of a ``fashion-fewstep`` run) by consistency sampling at 1, 2 and 4
  steps, per seed, beside its teacher ``fashion-flow`` by Euler at the same numbers of network
  evaluations and by Heun at 3, and ``fashion`` by DDIM and DPM-Solver++ at 1, 2 and 4; with
  ``--log`` (the run's log.jsonl), the minutes distillation took;
* ``dit_curve``: the ``curve`` section for checkpoints of a ``fashion-dit`` run (chapter 10's
  diffusion transformer; ``--checkpoints``, ``--log``) and, in ``unet_rows``, for checkpoints
  of the ``fashion`` U-Net's run (``--baseline-checkpoints``, ``--baseline-log``) at the same
  n, DDIM steps and seed, with the seconds per training step of both measured side by side in
  this process (:func:`step_seconds`), so that both curves can be drawn against training time
  on one machine at one load;
* ``int8``: what shipping weights in int8 costs: ``n`` DDIM-``steps`` samples (first seed) of
  the shipped ``fashion`` model and of the same weights through
  :func:`~ddpm_course.checkpoint.quantize_int8`, from the same noise: both FDs and the mean
  absolute pixel difference.

Each section records the command that wrote it under ``commands``.

FDs are comparable only at the same ``n``: every entry records its own.
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

from ..checkpoint import atomic_write, dequantize_int8, quantize_int8
from ..flow import FlowMatching
from ..loading import load_model
from ..metrics import (
    fashion_fd,
    fashion_fd_floor,
    fashion_features,
    fashion_test_features,
    kernel_inception_distance,
)
from ..pretrained import load_any, load_pretrained
from ..samplers import ddim_sample, sample

SECTIONS = (
    "floor",
    "fashion",
    "curve",
    "nfe",
    "flow",
    "flow_curve",
    "fewstep",
    "int8",
    "dit_curve",
)
# sampler, steps, network evaluations (Heun: 2·steps - 1) of the nfe section
NFE_ROWS = (
    ("ddim", 10, 10),
    ("dpm-solver", 10, 10),
    ("edm-heun", 10, 19),
    ("flow-heun", 10, 19),
)
# the distilled student (fewstep section) and its teacher at the same evaluations
FEWSTEP_ROWS = (("consistency", 1, 1), ("consistency", 2, 2), ("consistency", 4, 4))
TEACHER_ROWS = (
    ("flow-euler", 1, 1),
    ("flow-euler", 2, 2),
    ("flow-euler", 4, 4),
    ("flow-heun", 2, 3),
)
# chapter 05's samplers on the ε-model `fashion` at few evaluations (fewstep section)
FEW_NFE_ROWS = tuple(
    (name, steps, steps) for name in ("ddim", "dpm-solver") for steps in (1, 2, 4)
)
# the same for the shipped flow-matching model fashion-flow (flow section)
FLOW_ROWS = (
    ("flow-euler", 5, 5),
    ("flow-euler", 10, 10),
    ("flow-euler", 20, 20),
    ("flow-euler", 50, 50),
    ("flow-heun", 5, 9),
    ("flow-heun", 10, 19),
)


def _kid(samples: torch.Tensor, seed: int) -> dict[str, float]:
    mean, spread = kernel_inception_distance(
        fashion_features(samples),
        fashion_test_features(),
        subsets=10,
        subset_size=min(1000, samples.shape[0]),
        generator=torch.Generator().manual_seed(seed),
    )
    return {"kid": mean, "kid_std": spread}


@torch.no_grad()
def fewstep_section(
    student: str | Path, n: int, seeds: list[int], log: Path | None
) -> dict[str, Any]:
    """FD of ``n`` samples per seed of a distilled student (``student``: the shipped
    ``fashion-fewstep`` or a checkpoint of a ``fashion-fewstep`` run; :data:`FEWSTEP_ROWS`),
    of its teacher ``fashion-flow`` by Euler and Heun at as many network evaluations or fewer
    (:data:`TEACHER_ROWS`), and of the ε-model ``fashion`` by DDIM and DPM-Solver++ at 1, 2 and 4
    (:data:`FEW_NFE_ROWS`, x̂0 clipped as in the nfe section); with the run's ``log``, the
    minutes that distillation took to the student's step."""
    model, process, config = load_any(str(student), device="cpu")
    teacher, flow_process, _ = load_pretrained(config.teacher, device="cpu")
    fashion, diffusion, _ = load_pretrained("fashion", device="cpu")
    teacher_rows = [
        *({"model": config.teacher, **row} for row in fd_rows(
            teacher.float(), flow_process, TEACHER_ROWS, n, seeds)),
        *({"model": "fashion", **row} for row in fd_rows(
            fashion.float(), diffusion, FEW_NFE_ROWS, n, seeds, clip_denoised=True)),
    ]  # fmt: skip
    result = {
        "student": str(student), "step": config.max_steps,
        "teacher": config.teacher, "n": n, "seeds": seeds,
        "rows": fd_rows(model.float(), process, FEWSTEP_ROWS, n, seeds),
        "teacher_rows": teacher_rows,
    }  # fmt: skip
    if log is not None:
        result["distill_minutes"] = training_seconds(log)[config.max_steps] / 60
    return result


def draw(
    model, diffusion, n: int, steps: int, seed: int, size: int = 28, batch: int = 250
) -> torch.Tensor:
    """``n`` DDIM-``steps`` samples (η = 0, trailing spacing; flow-Euler for a flow-matching
    model) of size×size in [-1, 1], drawn in batches from one generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, n, batch):
        shape = (min(batch, n - start), 1, size, size)
        if isinstance(diffusion, FlowMatching):
            chunk = sample(
                "flow-euler", model, diffusion, shape, steps, generator=generator
            )
        else:
            chunk = ddim_sample(
                model, diffusion, shape, steps=steps, generator=generator
            )
        chunks.append(chunk)
    return torch.cat(chunks)


def floor_section(n: int, draws: int) -> dict[str, Any]:
    from ..data import fashion_mnist

    floor = fashion_fd_floor(n, draws=draws, seed=0)
    images, _ = fashion_mnist("train")
    subset = images[
        torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:n]
    ]
    return {**floor, **_kid(subset, seed=0), "draws": draws}


def nfe_section(n: int, seeds: list[int]) -> dict[str, Any]:
    """FD of ``n`` samples of the shipped ``fashion`` model by few-step samplers of chapters 05
    and 09 (:data:`NFE_ROWS`, through the sampler front door), per seed and as the median.

    Every sampler clips its x̂0 to [-1, 1] (``clip_denoised=True``, DDIM's default): without it,
    DPM-Solver++ diverges on this model's sigmoid schedule, whose last ᾱ is 3e-7 (x̂0 = (x -
    σε̂)/α amplifies the first step's error 1,800-fold; FD above 600,000 at 10 steps)."""
    model, diffusion, _ = load_pretrained("fashion", device="cpu")
    rows = fd_rows(model, diffusion, NFE_ROWS, n, seeds, clip_denoised=True)
    return {"n": n, "seeds": seeds, "clip_denoised": True, "rows": rows}


def fd_rows(
    model, diffusion, settings, n: int, seeds: list[int], **kwargs: Any
) -> list[dict[str, Any]]:
    """One row per (sampler, steps, nfe) of ``settings``: the FD of ``n`` samples per seed
    (through the sampler front door, in batches of 250 from one generator per seed) and the
    median. ``kwargs`` go to the sampler."""
    rows = []
    for name, steps, nfe in settings:
        fds = []
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            samples = torch.cat(
                [
                    sample(
                        name,
                        model,
                        diffusion,
                        (250, 1, 28, 28),
                        steps,
                        generator=generator,
                        **kwargs,
                    )
                    for _ in range(-(-n // 250))
                ]
            )[:n]
            fds.append(fashion_fd(samples))
        rows.append(
            {
                "sampler": name,
                "steps": steps,
                "nfe": nfe,
                "fd": fds,
                "median_fd": statistics.median(fds),
            }
        )
        print(rows[-1], flush=True)
    return rows


def flow_section(n: int, seeds: list[int], log: Path | None) -> dict[str, Any]:
    """FD of ``n`` samples of the shipped flow-matching model ``fashion-flow`` by the flow
    samplers (:data:`FLOW_ROWS`), per seed and as the median; with the run's ``log``, the
    minutes of training it took to its shipped step."""
    model, process, config = load_pretrained("fashion-flow", device="cpu")
    rows = fd_rows(model, process, FLOW_ROWS, n, seeds)
    result = {"model": "fashion-flow", "n": n, "seeds": seeds, "rows": rows}
    if log is not None:
        result["train_minutes"] = training_seconds(log)[config.max_steps] / 60
    return result


@torch.no_grad()
def int8_section(n: int, steps: int, seed: int) -> dict[str, Any]:
    """The shipped ``fashion`` model against its int8 copy, sampled from the same noise."""
    model, diffusion, _ = load_pretrained("fashion", device="cpu")
    float_samples = draw(model, diffusion, n, steps, seed)
    state = {name: tensor.float() for name, tensor in model.state_dict().items()}
    model.load_state_dict(dequantize_int8(quantize_int8(state)))
    int8_samples = draw(model, diffusion, n, steps, seed)
    return {
        "n": n,
        "steps": steps,
        "seed": seed,
        "fd_float16": fashion_fd(float_samples),
        "fd_int8": fashion_fd(int8_samples),
        "mean_abs_pixel_difference": float(
            (float_samples - int8_samples).abs().mean() / 2
        ),
        "note": "pixel difference on the [0, 1] scale, same noise for both",
    }


def model_section(
    n: int, steps: int, seeds: list[int], floor: dict[str, Any]
) -> dict[str, Any]:
    model, diffusion, _ = load_pretrained("fashion", device="cpu")
    rows = []
    for seed in seeds:
        start = time.perf_counter()
        samples = draw(model, diffusion, n, steps, seed)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "seed": seed,
                "fd": fashion_fd(samples),
                **_kid(samples, seed),
                "seconds_per_image": seconds / n,
            }
        )
    median = statistics.median(row["fd"] for row in rows)
    result = {
        "n": n,
        "steps": steps,
        "sampler": "ddim",
        "rows": rows,
        "median_fd": median,
    }
    if floor.get("n") == n:
        result["floor_median"] = floor["median"]
        result["ratio_to_floor"] = median / floor["median"]
    return result


def training_seconds(log: Path) -> dict[int, float]:
    """Seconds of training at each logged step of a run's ``log.jsonl``, summed over resumed
    invocations (each restarts its clock: a time below the previous one starts a new leg)."""
    seconds, offset, previous = {}, 0.0, 0.0
    for line in log.read_text().splitlines():
        if not line:
            continue
        row = json.loads(line)
        if row["time"] < previous:
            offset += previous
        previous = row["time"]
        seconds[row["step"]] = offset + row["time"]
    return seconds


def curve_section(
    checkpoints: list[Path], log: Path, n: int, steps: int, seed: int
) -> dict[str, Any]:
    """FD of ``n`` samples (seed ``seed``) of each checkpoint's EMA weights, with the optimiser
    steps and the training seconds that the run's ``log.jsonl`` recorded at that step."""
    seconds_at = training_seconds(log)
    rows = []
    for checkpoint in sorted(checkpoints):
        model, diffusion, _ = load_model(checkpoint, device="cpu")
        step = int(checkpoint.stem.split("_")[1])
        samples = draw(model, diffusion, n, steps, seed)
        rows.append(
            {
                "step": step,
                "train_seconds": seconds_at.get(step),
                "fd": fashion_fd(samples),
            }
        )
        print(rows[-1], flush=True)
    return {"log": str(log), "n": n, "steps": steps, "seed": seed, "rows": rows}


def step_seconds(
    presets: tuple[str, ...] = ("fashion", "fashion-dit"),
    rounds: int = 5,
    steps: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Seconds per training step of each preset's model and objective (batch of the preset,
    28×28 noise images, the loss, backward and an AdamW step), timed in interleaved rounds of
    ``steps`` steps after one untimed step: the median over rounds and every round's value."""
    from ..config import TrainConfig, build_diffusion, build_model

    torch.manual_seed(seed)
    setups = {}
    for name in presets:
        config = TrainConfig.from_preset(name)
        model = build_model(config)
        batch = torch.randn(config.batch_size, 1, 28, 28)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
        setups[name] = (model.train(), build_diffusion(config), optimizer, batch)

    def train_steps(name: str, count: int) -> float:
        model, objective, optimizer, batch = setups[name]
        start = time.perf_counter()
        for _ in range(count):
            loss = objective.training_losses(model, batch)["loss"].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / count

    for name in presets:
        train_steps(name, 1)
    per_round: dict[str, list[float]] = {name: [] for name in presets}
    for _ in range(rounds):
        for name in presets:
            per_round[name].append(train_steps(name, steps))
    return {
        "median": {name: statistics.median(v) for name, v in per_round.items()},
        "rounds": per_round,
        "steps_per_round": steps,
        "threads": torch.get_num_threads(),
    }


def _merge_rows(previous: dict[str, Any] | None, new: dict[str, Any]) -> list[dict]:
    """The curve's rows: those of an earlier run with the same n, steps and seed, replaced or
    joined by the new ones (so checkpoints can be measured as a run produces them)."""
    same = previous and all(previous.get(k) == new[k] for k in ("n", "steps", "seed"))
    rows = {row["step"]: row for row in (previous["rows"] if same else [])}
    rows.update({row["step"]: row for row in new["rows"]})
    return [rows[step] for step in sorted(rows)]


def _baseline_rows(
    args: argparse.Namespace, previous: dict[str, Any] | None, new: dict[str, Any]
) -> list[dict[str, Any]] | None:
    """dit_curve's U-Net rows: measured from ``--baseline-checkpoints`` when given, else those
    of an earlier call at the same n, steps and seed (None when there are none)."""
    if args.baseline_checkpoints and args.baseline_log is not None:
        return curve_section(
            args.baseline_checkpoints, args.baseline_log, new["n"], new["steps"],
            new["seed"],
        )["rows"]  # fmt: skip
    same = previous and all(previous.get(k) == new[k] for k in ("n", "steps", "seed"))
    return previous.get("unet_rows") if same else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON results file")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--n", type=int, default=1000, help="images per FD")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--draws", type=int, default=5, help="subsets of the floor")
    parser.add_argument(
        "--checkpoints",
        type=Path,
        nargs="+",
        help="step_*.pt files of the curve section",
    )
    parser.add_argument(
        "--log",
        type=Path,
        help="the run's log.jsonl (curve sections; flow: its minutes)",
    )
    parser.add_argument(
        "--baseline-checkpoints",
        type=Path,
        nargs="+",
        help="dit_curve: step_*.pt files of the fashion U-Net's run",
    )
    parser.add_argument(
        "--baseline-log", type=Path, help="dit_curve: the U-Net run's log.jsonl"
    )
    args = parser.parse_args(argv)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    words = sys.argv[1:] if argv is None else argv
    command = (
        "OMP_NUM_THREADS=1 python -m ddpm_course.experiments.fashion_eval "
        + " ".join(words)
    )
    for section in args.only:
        start = time.perf_counter()
        if section == "floor":
            value = floor_section(args.n, args.draws)
        elif section == "fashion":
            value = model_section(
                args.n, args.steps, args.seeds, results.get("floor", {})
            )
        elif section == "nfe":
            value = nfe_section(args.n, args.seeds)
        elif section == "flow":
            value = flow_section(args.n, args.seeds, args.log)
        elif section == "int8":
            value = int8_section(args.n, args.steps, args.seeds[0])
        elif section == "fewstep":
            student = args.checkpoints[-1] if args.checkpoints else "fashion-fewstep"
            value = fewstep_section(student, args.n, args.seeds, args.log)
        else:
            if not args.checkpoints or args.log is None:
                parser.error(
                    f"the {section} section needs --checkpoints FILE... and --log FILE"
                )
            baseline = args.baseline_checkpoints and args.baseline_log is not None
            if section == "dit_curve" and not (
                baseline or results.get(section, {}).get("unet_rows")
            ):
                parser.error(
                    "the dit_curve section needs --baseline-checkpoints FILE... and "
                    "--baseline-log FILE (the fashion U-Net's run)"
                )
            value = curve_section(
                args.checkpoints, args.log, args.n, args.steps, args.seeds[0]
            )
            if section == "flow_curve":
                value["sampler"] = "flow-euler"
            if section == "dit_curve":
                value["unet_rows"] = _baseline_rows(args, results.get(section), value)
                if value["unet_rows"] is None:
                    parser.error(
                        "the U-Net rows were measured at another n, steps or seed: give "
                        "--baseline-checkpoints and --baseline-log again"
                    )
                value["seconds_per_step"] = step_seconds()
            value["new_rows"] = value["rows"]
            value["rows"] = _merge_rows(results.get(section), value)
        value["minutes"] = round((time.perf_counter() - start) / 60, 1)
        # read again just before writing: another section may have been written meanwhile
        results = json.loads(args.out.read_text()) if args.out.exists() else {}
        results[section] = value
        commands = results.setdefault("commands", {})
        curve = section in ("curve", "flow_curve", "dit_curve")
        if curve and value["rows"] != value.get("new_rows", value["rows"]):
            # rows of earlier calls were kept: keep their commands too
            earlier = commands.get(section, [])
            commands[section] = [
                *(earlier if isinstance(earlier, list) else [earlier]),
                command,
            ]
        else:
            commands[section] = [command] if curve else command
        value.pop("new_rows", None)
        text = json.dumps(results, indent=1, sort_keys=True) + "\n"
        atomic_write(args.out, lambda file, text=text: file.write(text.encode()))
        print(section, json.dumps(value)[:400], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
