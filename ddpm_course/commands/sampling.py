"""What every mode of ``ddpm-course sample`` shares: the class labels of ``--class-label``, the
seeded generator, one call of :func:`ddpm_course.samplers.sample` with the command line's
sampler, and the grid that is saved."""

from __future__ import annotations

import argparse


def labels(
    args: argparse.Namespace, num_classes: int, device, null: bool, flag: str = ""
):
    """``--class-label`` (the null class ``num_classes`` when omitted and ``null``) for every
    sample, range-checked by :func:`ddpm_course.utils.check_class_labels`."""
    import torch

    from ..utils import check_class_labels

    label = num_classes if args.class_label is None and null else args.class_label
    if label is None:
        raise SystemExit(
            f"error: {flag} needs --class-label K (the class to guide towards)"
        )
    try:
        y = check_class_labels(
            torch.full((args.n,), label), num_classes, args.n, null=null
        )
    except ValueError:
        omitted = " (or be omitted)" if null else f" for {flag}"
        raise SystemExit(
            f"error: --class-label must lie in 0..{num_classes - 1}{omitted}, got {label}"
        ) from None
    return y.to(device)


def torch_generator(args: argparse.Namespace, device):
    import torch

    return torch.Generator(device).manual_seed(args.seed)


def eta(args: argparse.Namespace) -> float:
    return args.eta if args.sampler == "ddim" else 0.0  # --eta is DDIM's


def draw(args: argparse.Namespace, model, diffusion, shape: tuple, device, **kwargs):
    """Samples of ``shape`` from ``model`` by :func:`ddpm_course.samplers.sample` with the
    sampler the command line names (``--sampler``, ``--steps``, ``--eta``, ``--spacing``,
    ``--seed``); ``kwargs``: more of the sampler's keyword arguments."""
    from ..samplers import sample

    return sample(
        args.sampler, model, diffusion, shape, steps=args.steps, eta=eta(args),
        spacing=args.spacing, generator=torch_generator(args, device), progress=True,
        device=device, **kwargs,
    )  # fmt: skip


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
