"""The guidance options of ``ddpm-course sample`` (chapter 06): CFG, classifier guidance,
inpainting, super-resolution and SDEdit.

:func:`add_arguments` adds the flags; :func:`guided_mode` says which one was given, and each mode
is one small function (:data:`GUIDED_MODES`) that returns the samples in [-1, 1]. Every misuse is a ``SystemExit`` that
says what to change: CFG on an unconditional model, a class label outside the model's classes, a
mask of the wrong shape, ``--sr`` without a super-resolution model.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("guidance and conditioning (chapter 06)")
    group.add_argument(
        "--guidance-scale", type=float, default=None, metavar="W",
        help="classifier-free guidance (1 + W) eps(y) - W eps(null) with --class-label; "
        "W = 0 is conditional sampling (diffusers' guidance_scale is 1 + W)",
    )  # fmt: skip
    group.add_argument(
        "--guidance-max-timestep", type=int, default=None, metavar="M",
        help="with --guidance-scale: guide only at trained timesteps t <= M and sample "
        "conditionally above (the limited interval of Kynkäänniemi et al. 2024; chapter 06 "
        "meets its FD target at W = 3 with M = 300)",
    )  # fmt: skip
    group.add_argument(
        "--classifier-scale", type=float, default=None, metavar="S",
        help="classifier guidance of an unconditional model towards --class-label with the "
        "shipped digits-noisy-classifier (ddpm: mean shift; ddim/dpm-solver: eps shift)",
    )  # fmt: skip
    group.add_argument(
        "--inpaint",
        type=Path,
        default=None,
        metavar="MASK",
        help="inpaint: a PNG or torch.save'd mask, 1 = known pixel (needs --known)",
    )
    group.add_argument(
        "--known",
        type=Path,
        default=None,
        metavar="IMAGES",
        help="the known images in [0, 1] (PNG or (N, C, H, W) tensor file)",
    )
    group.add_argument(
        "--jump-length", type=int, default=1, help="RePaint jump length (default 1)"
    )
    group.add_argument(
        "--resample",
        type=int,
        default=1,
        help="RePaint resamplings per jump (default 1: plain replacement)",
    )
    group.add_argument(
        "--sr",
        type=Path,
        default=None,
        metavar="LOWRES",
        help="super-resolve these low-resolution images in [0, 1] (e.g. with fashion-sr)",
    )
    group.add_argument(
        "--sdedit",
        type=Path,
        default=None,
        metavar="IMAGES",
        help="SDEdit: noise these guide images in [0, 1] to --t0 and denoise them",
    )
    group.add_argument(
        "--t0", type=int, default=None, help="SDEdit's starting timestep (0..T-1)"
    )


def _load_images(path: Path, what: str):
    """A PNG (one grey image, (1, 1, H, W)) or a ``torch.save``'d tensor, as float32 in [0, 1]."""
    import numpy as np
    import torch

    if not path.is_file():
        raise SystemExit(f"error: {what} {path} does not exist")
    if path.suffix.lower() == ".png":
        from PIL import Image

        array = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
        return torch.from_numpy(array)[None, None]
    try:
        tensor = torch.load(path, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same message
        raise SystemExit(
            f"error: cannot read {what} {path} (a PNG or a torch.save'd tensor): {error}"
        ) from None
    if not torch.is_tensor(tensor):
        raise SystemExit(
            f"error: {what} {path} holds a {type(tensor).__name__}, not a tensor"
        )
    tensor = tensor.float()
    if tensor.ndim == 2:
        tensor = tensor[None, None]
    elif tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.min() < 0 or tensor.max() > 1:
        raise SystemExit(f"error: {what} must be images (N, C, H, W) with values in [0, 1]; "
                         f"got shape {tuple(tensor.shape)}")  # fmt: skip
    return tensor


def _images(path: Path, what: str, n: int, channels: int, size: int, device):
    """Images of ``path`` in [-1, 1], (n, channels, size, size) (one image is repeated n times)."""
    images = _load_images(path, what)
    if tuple(images.shape[1:]) != (channels, size, size):
        raise SystemExit(f"error: {what} must be ({channels}, {size}, {size}) images for this model, "
                         f"got shape {tuple(images.shape)}")  # fmt: skip
    if images.shape[0] not in (1, n):
        raise SystemExit(f"error: {what} holds {images.shape[0]} images but --n is {n}; give "
                         f"--n {images.shape[0]} (or one image, repeated --n times)")  # fmt: skip
    if images.shape[0] == 1:
        images = images.expand(n, -1, -1, -1)
    return (images * 2 - 1).to(device)


def guided_mode(args, model, config) -> str | None:
    """The chapter-06 mode that ``args`` ask for (a key of :data:`GUIDED_MODES`), None for none,
    or a ``SystemExit`` for flags that do not go together or do not suit the model."""
    from ..guidance_nets import NoisyClassifier, SuperResUNet

    chosen = [name for name, value in [
        ("--guidance-scale", args.guidance_scale), ("--classifier-scale", args.classifier_scale),
        ("--inpaint", args.inpaint), ("--sr", args.sr), ("--sdedit", args.sdedit),
    ] if value is not None]  # fmt: skip
    if isinstance(model, NoisyClassifier):
        raise SystemExit("error: this model is the noisy classifier, not a denoiser; use it "
                         "through --classifier-scale with a denoising model")  # fmt: skip
    if isinstance(model, SuperResUNet) and args.sr is None:
        raise SystemExit(
            "error: a super-resolution model samples only with --sr LOWRES"
        )
    if args.known is not None and args.inpaint is None:
        raise SystemExit("error: --known needs --inpaint MASK")
    if args.t0 is not None and args.sdedit is None:
        raise SystemExit("error: --t0 needs --sdedit IMAGES")
    if args.guidance_max_timestep is not None and args.guidance_scale is None:
        raise SystemExit(
            "error: --guidance-max-timestep limits --guidance-scale W; give both"
        )
    if len(chosen) > 1:
        raise SystemExit(f"error: give one of {', '.join(chosen)}, not several")
    return chosen[0].lstrip("-") if chosen else None


def _shape(args, config) -> tuple[int, int, int, int]:
    return (args.n, config.channels, config.image_size, config.image_size)


def cfg(args, model, diffusion, config, device):
    """``--guidance-scale W --class-label K [--guidance-max-timestep M]``: classifier-free
    guidance of a class-conditional model."""
    from ..guidance import ClassifierFreeGuidance
    from .sampling import draw, labels

    if not config.class_conditional:
        raise SystemExit("error: --guidance-scale (classifier-free guidance) needs a "
                         "class-conditional model with a null class, e.g. digits-cond; "
                         "this one is unconditional (try --classifier-scale)")  # fmt: skip
    if args.guidance_scale < 0:
        raise SystemExit(
            f"error: --guidance-scale must be >= 0, got {args.guidance_scale}"
        )
    limit = args.guidance_max_timestep
    if limit is not None and not 0 <= limit < diffusion.num_timesteps:
        raise SystemExit(f"error: --guidance-max-timestep must lie in 0.."
                         f"{diffusion.num_timesteps - 1} (the model's trained timesteps), "
                         f"got {limit}")  # fmt: skip
    y = labels(args, config.num_classes, device, null=False, flag="--guidance-scale")
    guided = ClassifierFreeGuidance(model, args.guidance_scale, y, max_timestep=limit)
    return draw(args, guided, diffusion, _shape(args, config), device)


def classifier(args, model, diffusion, config, device):
    """``--classifier-scale S --class-label K``: classifier guidance of an unconditional model
    by the shipped noisy classifier (ddpm: the mean shift; ddim, dpm-solver: the ε shift)."""
    from ..guidance import ClassifierGuidance, classifier_guided_ddpm_sample
    from ..guidance_models import load_noisy_classifier
    from ..samplers import respace
    from .sampling import draw, labels, torch_generator

    if config.class_conditional:
        raise SystemExit("error: --classifier-scale guides an unconditional model (e.g. "
                         "digits); for digits-cond use --guidance-scale")  # fmt: skip
    noisy_classifier, _, _ = load_noisy_classifier(device=device)
    size, channels = config.image_size, config.channels
    if (noisy_classifier.image_size, noisy_classifier.in_channels) != (size, channels):
        raise SystemExit(f"error: the noisy classifier takes ({noisy_classifier.in_channels}, "
                         f"{noisy_classifier.image_size}, {noisy_classifier.image_size}) images; "
                         f"this model makes ({channels}, {size}, {size})")  # fmt: skip
    if diffusion.objective != "eps":
        raise SystemExit("error: --classifier-scale needs an eps-prediction model")
    y = labels(
        args,
        noisy_classifier.num_classes,
        device,
        null=False,
        flag="--classifier-scale",
    )
    if args.sampler == "ddpm":
        return classifier_guided_ddpm_sample(
            model, respace(diffusion, args.steps, args.spacing), noisy_classifier, y,
            args.classifier_scale, _shape(args, config),
            generator=torch_generator(args, device), progress=True,
        )  # fmt: skip
    guided = ClassifierGuidance(
        model, noisy_classifier, diffusion, y, args.classifier_scale
    )
    return draw(args, guided, diffusion, _shape(args, config), device)


def _model_kwargs(args, config, device):
    from .sampling import labels

    if not config.class_conditional:
        return None
    return {"y": labels(args, config.num_classes, device, null=True)}


def inpaint(args, model, diffusion, config, device):
    """``--inpaint MASK --known IMAGES``: replacement / RePaint (``--jump-length``, ``--resample``)."""
    from ..guidance import inpaint as inpaint_images
    from ..samplers import respace
    from .sampling import torch_generator

    if args.known is None:
        raise SystemExit(
            "error: --inpaint MASK needs --known IMAGES (the image to complete)"
        )
    n, channels, size, _ = _shape(args, config)
    known = _images(args.known, "--known", n, channels, size, device)
    mask = _load_images(args.inpaint, "--inpaint mask").to(device)
    if (
        mask.shape[-2:] != known.shape[-2:]
        or mask.shape[1] not in (1, channels)
        or mask.shape[0] not in (1, known.shape[0])
    ):
        raise SystemExit(f"error: the mask must be (1 or N, 1 or {channels}, {size}, {size}) "
                         f"like the known images {tuple(known.shape)}; got "
                         f"{tuple(mask.shape)}")  # fmt: skip
    mask = (mask > 0.5).to(known.dtype)
    try:
        return inpaint_images(
            model, respace(diffusion, args.steps, args.spacing), known, mask,
            args.jump_length, args.resample, generator=torch_generator(args, device),
            model_kwargs=_model_kwargs(args, config, device), progress=True,
        )  # fmt: skip
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


def sr(args, model, diffusion, config, device):
    """``--sr LOWRES``: super-resolution with an SR3 model (e.g. fashion-sr)."""
    from ..guidance import super_resolve
    from ..guidance_nets import SuperResUNet
    from .sampling import torch_generator

    if not isinstance(model, SuperResUNet):
        raise SystemExit(
            "error: --sr needs a super-resolution model (e.g. --checkpoint "
            "fashion-sr); this one is not conditioned on a low-resolution image"
        )
    n, channels, _, _ = _shape(args, config)
    low = _images(args.sr, "--sr", n, channels, model.low_res_size, device)
    return super_resolve(
        model, diffusion, low, steps=args.steps, generator=torch_generator(args, device)
    )


def sdedit(args, model, diffusion, config, device):
    """``--sdedit IMAGES --t0 T0``: noise the guides to t0 and denoise them."""
    from ..guidance import sdedit as sdedit_images
    from .sampling import torch_generator

    n, channels, size, _ = _shape(args, config)
    guides = _images(args.sdedit, "--sdedit", n, channels, size, device)
    if args.t0 is None or not 0 <= args.t0 < diffusion.num_timesteps:
        raise SystemExit(f"error: --sdedit needs --t0 in 0..{diffusion.num_timesteps - 1}, "
                         f"got {args.t0}")  # fmt: skip
    return sdedit_images(
        model, diffusion, guides, args.t0, steps=args.steps,
        generator=torch_generator(args, device),
        model_kwargs=_model_kwargs(args, config, device),
    )  # fmt: skip


# mode (the flag without its dashes) -> the function that draws its samples
GUIDED_MODES = {
    "guidance-scale": cfg,
    "classifier-scale": classifier,
    "inpaint": inpaint,
    "sr": sr,
    "sdedit": sdedit,
}
