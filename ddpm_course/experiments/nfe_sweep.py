r"""The NFE sweep of ``ddpm-course nfe-sweep``: sample quality against the number of network evaluations (chapter 05).

For a shipped model (``digits`` by default, or ``fashion``) and each sampler — DDPM respaced to
NFE steps, DDIM with η = 0 and η = 1, DPM-Solver++(2M) — and each NFE, draws ``--n`` samples
from the same x_T per seed (in batches of ``--batch``) and records their Fréchet distance and the
wall time of the sampling loop. The distance is the model's metric (:data:`METRICS`):
``digits``: :func:`ddpm_course.metrics.digits_fd` against the digits test split, with a floor of
``--n`` real training digits per seed (one random subset each); ``fashion``:
:func:`ddpm_course.metrics.fashion_fd` against the 10,000 Fashion-MNIST test images, with the
floor of :func:`ddpm_course.metrics.fashion_fd_floor` (``--n`` real training images, five draws:
the floor of ``ddpm_course/results/fashion_eval.json`` at the same n). Every sampler clips
:math:`\hat x_0` to [-1, 1] (unclipped DPM-Solver++ diverges on ``fashion``'s sigmoid schedule)
and uses trailing spacing. The JSON is rewritten after every run, so an interrupted sweep keeps
what it did; ``--append`` adds runs to an existing file (skipping those it holds) and records
each command, so that a sweep can be grown in pieces (every run is deterministic on the CPU: the
same sampler, NFE, seed and batch give the same FD in any piece).

Wall times come from whatever machine runs the sweep (the committed file: a 2-core machine shared
with other jobs, one torch thread), so compare them as ratios within one file, not across machines.
"""

from __future__ import annotations

import json
import platform
import time

import torch

from ..metrics import digits_fd, digits_fd_floor, fashion_fd, fashion_fd_floor
from ..pretrained import load_pretrained
from ..samplers import sample

# the sweep's samplers: name -> (samplers.sample's name, eta)
SWEPT = {
    "ddpm": ("ddpm", 0.0),
    "ddim-eta0": ("ddim", 0.0),
    "ddim-eta1": ("ddim", 1.0),
    "dpm-solver++2m": ("dpm-solver", 0.0),
}
SAMPLERS = tuple(SWEPT)
COMMAND = "OMP_NUM_THREADS=1 ddpm-course nfe-sweep"
# the models the sweep can measure: name -> the FD of a batch of its samples
METRICS = {"digits": digits_fd, "fashion": fashion_fd}
# fashion's floor: real-image subsets, as in ddpm_course/results/fashion_eval.json
FLOOR_DRAWS = 5


def add_floor(model: str, n: int, seeds: list[int], floor: dict) -> None:
    """Fill in ``floor`` (the results file's ``"floor"``) for ``model`` at ``n``: ``digits``:
    one FD of ``n`` real training digits per seed, keyed by the seed; ``fashion``:
    :func:`~ddpm_course.metrics.fashion_fd_floor` (``n``, five draws: median, min, max, values),
    computed once."""
    if model == "fashion":
        if "median" not in floor:
            floor.update(fashion_fd_floor(n, draws=FLOOR_DRAWS, seed=0))
        return
    for seed in seeds:
        if str(seed) not in floor:
            floor[str(seed)] = digits_fd_floor(n, torch.Generator().manual_seed(seed))


def sample_with(sampler: str, model, diffusion, shape, nfe: int, x_T, generator):
    """``shape`` samples of ``sampler`` (a name of :data:`SAMPLERS`) in ``nfe`` network
    evaluations from ``x_T``, by :func:`ddpm_course.samplers.sample`."""
    name, eta = SWEPT[sampler]
    return sample(name, model, diffusion, shape, steps=nfe, eta=eta, x_T=x_T,
                  generator=generator, clip_denoised=True)  # fmt: skip


def sample_batched(
    sampler: str, model, diffusion, nfe: int, x_T, generator, batch: int
) -> torch.Tensor:
    """:func:`sample_with` from each ``batch`` rows of ``x_T`` in turn (one ``generator``
    throughout), concatenated: what a sweep at large n draws, in bounded memory."""
    chunks = []
    for part in x_T.split(batch):
        chunks.append(
            sample_with(sampler, model, diffusion, part.shape, nfe, part, generator)
        )
    return torch.cat(chunks)


def run_sweep(args) -> int:
    """The sweep that ``args`` (the ``nfe-sweep`` command's namespace: ``model``, ``nfe``,
    ``seeds``, ``n``, ``batch``, ``samplers``, ``threads``, ``append``) asks for, written to
    ``args.out``."""
    if args.model not in METRICS:
        raise SystemExit(f"--model must be one of {sorted(METRICS)}, got {args.model}")
    fd_of = METRICS[args.model]
    torch.set_num_threads(args.threads)
    model, diffusion, config = load_pretrained(args.model, device="cpu")
    if config.class_conditional:
        raise SystemExit(
            f"--model {args.model} is class-conditional; use an unconditional model"
        )
    shape = (args.n, config.channels, config.image_size, config.image_size)
    command = (
        f"{COMMAND} --model {args.model} --n {args.n} --nfe {' '.join(map(str, args.nfe))} "
        f"--seeds {' '.join(map(str, args.seeds))} --samplers {' '.join(args.samplers)}"
        f" --batch {args.batch}"
    )
    result = {
        "commands": [],
        "model": args.model,
        "n": args.n,
        "batch": args.batch,
        "spacing": "trailing",
        "clip_denoised": True,
        "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)",
        "floor": {},
        "runs": [],
    }
    if args.append and args.out.exists():
        result = json.loads(args.out.read_text())
        held = (result["model"], result["n"], result.get("batch", result["n"]))
        if held != (args.model, args.n, args.batch):
            raise SystemExit(
                f"--append: {args.out} holds {held[0]} with n={held[1]}, batch={held[2]}"
            )
    result["commands"].append(command + (" --append" if args.append else ""))
    add_floor(args.model, args.n, args.seeds, result["floor"])
    done = {(r["sampler"], r["nfe"], r["seed"]) for r in result["runs"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        for sampler in args.samplers:
            for nfe in args.nfe:
                if (sampler, nfe, seed) in done:
                    continue
                generator = torch.Generator().manual_seed(10_000 + seed)
                start = time.perf_counter()
                samples = sample_batched(
                    sampler, model, diffusion, nfe, x_T, generator, args.batch
                )
                seconds = time.perf_counter() - start
                fd = fd_of(samples)
                run_result = dict(
                    sampler=sampler, nfe=nfe, seed=seed, fd=fd, seconds=seconds
                )
                result["runs"].append(run_result)
                print(json.dumps(run_result), flush=True)
                args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0
