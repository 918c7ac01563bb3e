r"""The NFE sweep of ``ddpm-course nfe-sweep``: sample quality against the number of network evaluations (chapter 05).

For a shipped model (``digits`` by default) and each sampler — DDPM respaced to NFE steps, DDIM with
η = 0 and η = 1, DPM-Solver++(2M) — and each NFE, draws ``--n`` samples from the same x_T per seed
and records their Fréchet distance to the digits test split (:func:`ddpm_course.metrics.digits_fd`)
and the wall time of the sampling loop. Every sampler clips :math:`\hat x_0` to [-1, 1] and uses
trailing spacing. The FD floor (``--n`` real training digits, one random subset per seed) goes in
the same file. The JSON is rewritten after every run, so an interrupted sweep keeps what it did;
``--append`` adds runs to an existing file (skipping those it holds) and records each command, so
that a sweep can be grown in pieces (every run is deterministic on the CPU: the same sampler, NFE
and seed give the same FD in any piece).

Wall times come from whatever machine runs the sweep (the committed file: a 2-core machine shared
with other jobs, one torch thread), so compare them as ratios within one file, not across machines.
"""

from __future__ import annotations

import json
import platform
import time

import torch

from ..metrics import digits_fd, digits_fd_floor
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


def sample_with(sampler: str, model, diffusion, shape, nfe: int, x_T, generator):
    """``shape`` samples of ``sampler`` (a name of :data:`SAMPLERS`) in ``nfe`` network
    evaluations from ``x_T``, by :func:`ddpm_course.samplers.sample`."""
    name, eta = SWEPT[sampler]
    return sample(name, model, diffusion, shape, steps=nfe, eta=eta, x_T=x_T,
                  generator=generator, clip_denoised=True)  # fmt: skip


def run_sweep(args) -> int:
    """The sweep that ``args`` (the ``nfe-sweep`` command's namespace: ``model``, ``nfe``,
    ``seeds``, ``n``, ``samplers``, ``threads``, ``append``) asks for, written to ``args.out``."""
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
    )
    result = {
        "commands": [],
        "model": args.model,
        "n": args.n,
        "spacing": "trailing",
        "clip_denoised": True,
        "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)",
        "floor": {},
        "runs": [],
    }
    if args.append and args.out.exists():
        result = json.loads(args.out.read_text())
        if (result["model"], result["n"]) != (args.model, args.n):
            raise SystemExit(
                f"--append: {args.out} holds {result['model']} with n={result['n']}"
            )
    result["commands"].append(command + (" --append" if args.append else ""))
    for seed in args.seeds:
        if str(seed) not in result["floor"]:
            floor = digits_fd_floor(args.n, torch.Generator().manual_seed(seed))
            result["floor"][str(seed)] = floor
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
                samples = sample_with(
                    sampler, model, diffusion, shape, nfe, x_T, generator
                )
                seconds = time.perf_counter() - start
                fd = digits_fd(samples)
                run_result = dict(
                    sampler=sampler, nfe=nfe, seed=seed, fd=fd, seconds=seconds
                )
                result["runs"].append(run_result)
                print(json.dumps(run_result), flush=True)
                args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0
