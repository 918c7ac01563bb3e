"""``ddpm-course sample``: draw samples from a checkpoint (or a shipped model) and save a grid."""

from __future__ import annotations

import argparse
from pathlib import Path

from .guided_sample import add_arguments as add_guidance_arguments
from .guided_sample import guided_samples

# samplers.SPACINGS and DEFAULT_SPACING, written out so that --help does not import torch
# (tests/test_samplers.py checks that they agree)
SPACINGS = ("leading", "trailing", "linspace")
DEFAULT_SPACING = "trailing"
SAMPLERS = ("ddpm", "ddim", "dpm-solver")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a run folder, a checkpoint file, model.safetensors, or a shipped model name (e.g. digits)",
    )
    parser.add_argument(
        "--n", type=int, default=64, help="number of samples (default 64)"
    )
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    parser.add_argument(
        "--steps",
        type=int,
        default=50,
        help="sampling steps (ddpm: respaced to this many; default 50)",
    )
    parser.add_argument(
        "--spacing",
        choices=SPACINGS,
        default=DEFAULT_SPACING,
        help=f"timestep spacing (default {DEFAULT_SPACING}: the first step is T - 1)",
    )
    parser.add_argument(
        "--eta", type=float, default=0.0, help="DDIM eta (default 0: deterministic)"
    )
    parser.add_argument(
        "--class-label",
        type=int,
        default=None,
        help="class to sample from for class-conditional models",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path("samples.png"), help="PNG grid to write"
    )
    parser.add_argument(
        "--save-tensor",
        type=Path,
        default=None,
        help="also save the samples (N, C, H, W) in [0, 1] as a .pt file",
    )
    parser.add_argument(
        "--device", default=None, help="cpu or cuda (default: cuda when available)"
    )
    add_guidance_arguments(parser)
    parser.add_argument(
        "--prompt",
        default=None,
        help="a digit's name (zero ... nine) for a prompted latent model such as digits-ldm",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from ..pretrained import load_any
    from ..profiles import default_device

    if args.n < 1:
        raise SystemExit(f"--n must be at least 1, got {args.n}")
    device = torch.device(args.device) if args.device else default_device()
    from ..checkpoint import CheckpointError

    try:
        loaded = load_any(args.checkpoint, device=device)
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    # a shipped model that is not a denoiser (digits-vae loads as (vae, scale))
    if not (isinstance(loaded, tuple) and len(loaded) == 3):
        raise SystemExit(
            f"error: {args.checkpoint} is not a diffusion model that `sample` can draw from; "
            "give a denoiser (digits, digits-cond, digits-ldm, a run folder or checkpoint)"
        )
    model, diffusion, config = loaded
    if args.prompt is not None or hasattr(model, "latent_shape"):  # chapter 07's models
        from ..latent import sample_from_cli

        return sample_from_cli(args, model, diffusion, config, device)
    shape = (args.n, config.channels, config.image_size, config.image_size)
    if not 1 <= args.steps <= diffusion.num_timesteps:
        raise SystemExit(
            f"--steps must lie in 1..{diffusion.num_timesteps} (the trained T), got {args.steps}"
        )
    model_kwargs = None
    if config.class_conditional:
        label = (
            config.num_classes if args.class_label is None else args.class_label
        )  # num_classes is the null class
        if not 0 <= label <= config.num_classes:
            raise SystemExit(
                f"--class-label must lie in 0..{config.num_classes - 1} (or be omitted), got {label}"
            )
        model_kwargs = {
            "y": torch.full((args.n,), label, dtype=torch.long, device=device)
        }
    generator = torch.Generator(device).manual_seed(args.seed)
    common = dict(
        model_kwargs=model_kwargs, generator=generator, progress=True, device=device
    )
    # a chapter-06 option (CFG, classifier guidance, inpainting, SR, SDEdit), else plain sampling
    samples = guided_samples(args, model, diffusion, config, shape, generator, device)
    if samples is None:
        samples = draw(args, model, diffusion, shape, **common)
    return save(args, ((samples.float().cpu() + 1) / 2).clamp(0, 1))


def draw(args: argparse.Namespace, model, diffusion, shape: tuple, **common):
    """Samples of ``shape`` from ``model`` by the sampler the command line names (``--sampler``,
    ``--steps``, ``--eta``, ``--spacing``); ``common``: the samplers' shared keyword arguments."""
    from ..samplers import ddim_sample, ddpm_sample, dpm_solver_sample, respace

    if args.sampler == "ddpm":
        return ddpm_sample(
            model, respace(diffusion, args.steps, args.spacing), shape, **common
        )
    if args.sampler == "ddim":
        return ddim_sample(
            model, diffusion, shape, steps=args.steps, eta=args.eta, spacing=args.spacing,
            **common,
        )  # fmt: skip
    return dpm_solver_sample(
        model, diffusion, shape, steps=args.steps, spacing=args.spacing, **common
    )


def save(args: argparse.Namespace, images) -> int:
    """Write ``images`` (N, C, H, W) in [0, 1] as a grid to ``--out`` (and the tensor to
    ``--save-tensor``); the command's exit status."""
    import torch

    from ..viz import save_image_grid

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_image_grid(images, args.out, value_range=(0.0, 1.0))
    print(f"wrote {args.out}")
    if args.save_tensor is not None:
        torch.save(images, args.save_tensor)
        print(f"wrote {args.save_tensor}")
    return 0
