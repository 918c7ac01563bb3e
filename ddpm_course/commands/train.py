"""``ddpm-course train``: train a U-Net from a preset, on the CPU, one GPU, or many under torchrun.

    ddpm-course train --preset digits --max-seconds 600 --out runs/digits
    ddpm-course train --out runs/digits --resume --max-steps 8000
    torchrun --nproc_per_node 8 -m ddpm_course.cli train --preset cifar10-ddpm --out runs/cifar10

Common settings have their own flag; any other field of ``ddpm_course.config.TrainConfig`` is set
with ``--set FIELD=VALUE`` (VALUE in JSON: ``--set ema_decay=0.999 --set model_overrides='{"dropout": 0}'``).
With ``--resume`` the run folder's ``config.json`` is the starting point and the flags change it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

# flag -> (TrainConfig field, type, help)
FLAGS: dict[str, tuple[str, type, str]] = {
    "--max-steps": ("max_steps", int, "stop after this many optimiser steps"),
    "--max-seconds": (
        "max_seconds",
        float,
        "stop after this many seconds of training (then save and sample)",
    ),
    "--batch-size": ("batch_size", int, "global batch size"),
    "--lr": ("lr", float, "peak learning rate"),
    "--seed": ("seed", int, "random seed"),
    "--dataset": ("dataset", str, "digits, mnist, fashion_mnist or cifar10"),
    "--data-dir": ("data_dir", str, "folder of the torchvision data sets"),
    "--precision": (
        "precision",
        str,
        "bf16, fp16 or fp32 on CUDA (the CPU always trains in fp32)",
    ),
    "--grad-accum": ("grad_accum", int, "micro-batches per optimiser step"),
    "--num-workers": ("num_workers", int, "DataLoader worker processes"),
    "--log-every": ("log_every", int, "steps between log lines"),
    "--sample-every": (
        "sample_every",
        int,
        "steps between sample grids (0: only at the end)",
    ),
    "--checkpoint-every": (
        "checkpoint_every",
        int,
        "steps between checkpoints (0: only at the end)",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        help="training preset, e.g. digits (the default) or cifar10-ddpm; see ddpm_course.config.TRAIN_PRESETS",
    )
    parser.add_argument("--out", help="the run folder (default runs/PRESET)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in the run folder",
    )
    for flag, (name, kind, help_text) in FLAGS.items():
        parser.add_argument(flag, dest=name, type=kind, help=help_text)
    parser.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the model (CUDA)",
    )
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="FIELD=VALUE",
                        help="set any field of ddpm_course.config.TrainConfig; VALUE is JSON (a bare word is a string)")  # fmt: skip


def _parse_settings(settings: list[str]) -> dict[str, Any]:
    values = {}
    for setting in settings:
        name, sep, text = setting.partition("=")
        if not sep or not name:
            raise ValueError(f"--set takes FIELD=VALUE, got {setting!r}")
        try:
            values[name.strip()] = json.loads(text)
        except json.JSONDecodeError:
            values[name.strip()] = text
    return values


def _config(args: argparse.Namespace):
    from ..config import TrainConfig

    overrides = {
        name: getattr(args, name)
        for name, _, _ in FLAGS.values()
        if getattr(args, name) is not None
    }
    if args.compile:
        overrides["compile"] = True
    overrides.update(_parse_settings(args.settings))
    out_dir = args.out or f"runs/{args.preset or 'digits'}"
    overrides["out_dir"] = out_dir
    saved = Path(out_dir) / "config.json"
    if args.resume and saved.is_file():
        base = TrainConfig.from_json(saved).to_dict()
        if args.preset is not None and args.preset != base["preset"]:
            raise ValueError(
                f"{out_dir} was trained with preset {base['preset']!r}, not {args.preset!r}"
            )
        return TrainConfig.from_dict({**base, **overrides})
    return TrainConfig.from_preset(args.preset or "digits", **overrides)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import CheckpointError
    from ..train import NonFiniteLossError, Trainer

    if args.preset in (
        "digits-vae",
        "fashion-vae",
    ):  # chapter 07's autoencoders: own loop
        return _train_vae(args)
    try:
        if args.preset in (
            "digits-ldm",
            "fashion-ldm",
        ):  # chapter 07: Trainer on latents
            return _train_ldm(args)
        config = _config(args)
        out_dir = Trainer(config).train(resume=args.resume)
    except (ValueError, FileExistsError, CheckpointError) as error:
        print(f"ddpm-course train: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"ddpm-course train: {error}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {out_dir} (load it with ddpm_course.loading.load_model)")
    return 0


def _train_vae(args: argparse.Namespace) -> int:
    """``--preset digits-vae|fashion-vae``: :func:`~ddpm_course.autoencoder.train_vae` with the
    preset's settings (``--max-steps`` replaces its steps) and its scale factor, written to
    ``--out`` (default the shipped weights)."""
    import time

    import torch

    from ..autoencoder import VAE_PRESETS, train_vae, vae_training_images
    from ..checkpoint import save_weights
    from ..latent import estimate_scale_factor, reparameterize
    from ..loading import WEIGHTS_DIR

    preset = VAE_PRESETS[args.preset]
    steps = args.max_steps or preset["steps"]
    train = {key: preset[key] for key in ("kl_weight", "batch_size", "lr")}
    images = vae_training_images(args.preset)
    start = time.perf_counter()
    model, history = train_vae(
        images, steps=steps, config=preset["config"], seed=0, log=print, **train
    )
    minutes = (time.perf_counter() - start) / 60
    with torch.no_grad():
        subset = (
            images  # the scale factor's batch: at most 5,000 images, drawn with seed 0
        )
        if images.shape[0] > 5000:
            order = torch.randperm(
                images.shape[0], generator=torch.Generator().manual_seed(0)
            )
            subset = images[order[:5000]]
        mean, logvar = model.encode(subset)
        noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
        scale = estimate_scale_factor(reparameterize(mean, logvar, noise))
    out = Path(args.out) if args.out else WEIGHTS_DIR / f"{args.preset}.safetensors"
    metadata = {
        "format": "ddpm_course.vae", "model_class": "AutoencoderKL",
        "model_config": model.config, "scale_factor": scale,
        "train": {"preset": args.preset, "steps": steps, **train, "seed": 0,
                  "train_minutes": round(minutes, 1)},
        "final": history[-1],
    }  # fmt: skip
    state = {k: v.half() for k, v in model.state_dict().items()}
    print(f"scale factor {scale:.5f}; wrote {save_weights(state, out, metadata)}")
    return 0


def _train_ldm(args: argparse.Namespace) -> int:
    """``--preset digits-ldm|fashion-ldm``: the Trainer on the shipped autoencoder's latents
    into the run folder ``--out`` (``--resume`` and the Trainer's flags apply; ``--set`` any
    field)."""
    from ..attention import CrossAttnUNet
    from ..data import digits, fashion_mnist
    from ..latent import LDM_UNETS, LatentDiffusion
    from ..latent_train import LDM_AUTOENCODER, LatentTrainer, ldm_train_config
    from ..pretrained import load_pretrained

    overrides = {
        name: getattr(args, name)
        for name, _, _ in FLAGS.values()
        if getattr(args, name) is not None
    }
    overrides.update(_parse_settings(args.settings))
    overrides["out_dir"] = args.out or f"runs/{args.preset}"
    autoencoder = LDM_AUTOENCODER[args.preset]
    vae, _, _ = load_pretrained(autoencoder, device="cpu")
    if args.preset == "digits-ldm":
        images, labels = digits(size=16, split="train")
    else:
        images, labels = fashion_mnist("train")
    ldm = LatentDiffusion(
        vae, CrossAttnUNet(**LDM_UNETS[args.preset]), vae.scale_factor
    )
    config = ldm_train_config(args.preset, **overrides)
    trainer = LatentTrainer(config, ldm, images, labels, autoencoder=autoencoder)
    run = trainer.train(resume=args.resume)
    print(f"run folder: {run} (load it with ddpm_course.loading.load_model)")
    return 0
