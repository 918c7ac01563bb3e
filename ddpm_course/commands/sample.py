"""``ddpm-course sample``: draw samples from a checkpoint (or a shipped model) and save a grid."""

from __future__ import annotations

import argparse
from pathlib import Path

from .guided_sample import GUIDED_MODES, guided_mode
from .guided_sample import add_arguments as add_guidance_arguments
from .sampling import draw, eta, labels, save, torch_generator

# samplers.SAMPLERS, SPACINGS and DEFAULT_SPACING, written out so that --help does not import
# torch (tests/test_samplers.py checks that they agree)
SPACINGS = ("leading", "trailing", "linspace")
DEFAULT_SPACING = "trailing"
LATENT_SPACING = "leading"  # latent.latent_sample's default (unclipped latents)
SAMPLERS = (
    "ddpm",
    "ddim",
    "dpm-solver",
    "flow-euler",
    "flow-heun",
    "edm-heun",
    "consistency",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a run folder, a checkpoint file, model.safetensors, or a shipped model name (e.g. digits)",
    )
    parser.add_argument(
        "--n", type=int, default=64, help="number of samples (default 64)"
    )
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=None,
        help="default: the model's own (ddim; flow-euler for fashion-flow; consistency for a "
        "distilled student)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=50,
        help="sampling steps (ddpm: respaced to this many; default 50)",
    )
    parser.add_argument(
        "--spacing",
        choices=SPACINGS,
        default=None,
        help=f"timestep spacing (default {DEFAULT_SPACING}: the first step is T - 1; for a "
        f"latent model {LATENT_SPACING}, see ddpm_course.latent.latent_sample)",
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
        help="a class name for a prompted latent model: a garment for fashion-ldm "
        "('ankle boot', 't-shirt/top', ...), a digit's name for digits-ldm",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import CheckpointError
    from ..pretrained import load_any
    from ..profiles import default_device

    if args.n < 1:
        raise SystemExit(f"--n must be at least 1, got {args.n}")
    device = torch.device(args.device) if args.device else default_device()
    try:
        model, diffusion, config = load_any(args.checkpoint, device=device)
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    if diffusion is None:  # e.g. digits-vae, an autoencoder
        raise SystemExit(
            f"error: {args.checkpoint} is not a diffusion model that `sample` can draw from; "
            "give a denoiser (e.g. fashion, fashion-cond, fashion-ldm, digits, a run folder or checkpoint)"
        )
    if not 1 <= args.steps <= diffusion.num_timesteps:
        raise SystemExit(
            f"--steps must lie in 1..{diffusion.num_timesteps} (the trained T), got {args.steps}"
        )
    if args.sampler is None:  # the model's own: ddim, flow-euler, consistency
        args.sampler = getattr(diffusion, "default_sampler", "ddim")
    mode = choose_mode(args, model, config)
    if mode != "latent" and args.spacing is None:
        args.spacing = DEFAULT_SPACING
    samples = MODES[mode](args, model, diffusion, config, device)
    return save(args, ((samples.float().cpu() + 1) / 2).clamp(0, 1))


def plain(args: argparse.Namespace, model, diffusion, config, device):
    """Samples of an unguided model; a class-conditional one of ``--class-label`` (else the null
    class). (N, C, H, W) in [-1, 1]."""
    shape = (args.n, config.channels, config.image_size, config.image_size)
    model_kwargs = None
    if config.class_conditional:
        model_kwargs = {"y": labels(args, config.num_classes, device, null=True)}
    return draw(args, model, diffusion, shape, device, model_kwargs=model_kwargs)


def latent(args: argparse.Namespace, model, diffusion, config, device):
    """Chapter 07: decoded samples of a prompted latent model (``--prompt`` a class name of
    its vocabulary, or ``--class-label``; ``--guidance-scale W`` applies classifier-free
    guidance)."""
    from ..latent import latent_sample, prompt_vocabulary

    classes = len(prompt_vocabulary(model).names)
    label = None if args.prompt is not None else labels(args, classes, "cpu", null=True)
    try:
        return latent_sample(
            model, diffusion, args.n, sampler=args.sampler, prompt=args.prompt, labels=label,
            guidance_scale=args.guidance_scale or 0.0, steps=args.steps,
            spacing=args.spacing or LATENT_SPACING,
            eta=eta(args), generator=torch_generator(args, device), progress=True,
        )  # fmt: skip
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


def choose_mode(args: argparse.Namespace, model, config) -> str:
    """The one mode that ``args`` and the model ask for (a key of :data:`MODES`), or a
    ``SystemExit`` that says which flags do not go together."""
    from ..latent import LatentDiffusion

    if args.prompt is not None and not isinstance(model, LatentDiffusion):
        raise SystemExit(
            "error: --prompt needs a prompt-conditioned latent model, e.g. --checkpoint fashion-ldm"
        )
    if isinstance(model, LatentDiffusion):
        return "latent"
    return guided_mode(args, model, config) or "plain"


MODES = {"plain": plain, "latent": latent, **GUIDED_MODES}
