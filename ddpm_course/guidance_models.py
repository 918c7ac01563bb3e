r"""The two shipped models of chapter 06: a noisy-digits classifier and an 8×8 → 16×16 SR model.

Chapter 06 (Guidance and conditioning). Neither fits the Trainer of chapter 04 (one is not a
denoiser, the other needs a low-resolution image beside each batch), so each has a short
training loop here, written like the Trainer's core step:

* :func:`train_noisy_classifier`: :class:`~ddpm_course.guidance_nets.NoisyClassifier` on
  :math:`x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\epsilon` with t uniform over all T
  steps of the digits schedule, cross-entropy against the label (Dhariwal & Nichol 2021, Sec. 4.1).
* :func:`train_sr`: :class:`~ddpm_course.guidance_nets.SuperResUNet` with :math:`L_\text{simple}`, conditioned
  on :func:`~ddpm_course.guidance.sr_downsample` of the image (2×2 average pooling to 8×8).

Both write ``.safetensors`` + JSON sidecar in the trainer's format (``model_config``,
``train_config``: a :class:`~ddpm_course.config.TrainConfig` that names the diffusion process),
so :func:`~ddpm_course.loading.load_model` reads them. Reproduce the shipped files with
``python -m ddpm_course.guidance_models classifier`` and ``... sr`` (see ``weights/MODEL_CARDS.md``).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import save_weights
from .config import TrainConfig, build_diffusion
from .data import digits, fashion_mnist
from .diffusion import GaussianDiffusion
from .ema import ema_decay_at, ema_update
from .guidance import sr_downsample
from .guidance_nets import NoisyClassifier, SuperResUNet
from .loading import WEIGHTS_DIR
from .pretrained import load_pretrained

__all__ = [
    "CLASSIFIER_NAME",
    "SR_NAME",
    "SR_UNET",
    "SR_PRESETS",
    "train_noisy_classifier",
    "train_sr",
    "load_noisy_classifier",
    "load_sr_model",
    "noisy_accuracy",
]

CLASSIFIER_NAME = "digits-noisy-classifier"
SR_NAME = "digits-sr"
# the SR network: the digits U-Net at half width, one ResBlock per level (280,321 parameters)
SR_UNET: dict[str, Any] = {
    "image_size": 16, "model_channels": 16, "channel_mults": (1, 2, 2),
    "num_res_blocks": (1, 1, 1), "attention_resolutions": (8,), "num_groups": 8,
}  # fmt: skip
# The shipped SR models: the data, the network and the process (a TrainConfig preset) of each.
# fashion-sr: 14×14 → 28×28 on Fashion-MNIST, the fashion U-Net's shape (2×2 patches folded
# into channels, levels 14 and 7, no attention) at 32 / 64 channels, the fashion process
# (sigmoid schedule).
SR_PRESETS: dict[str, dict[str, Any]] = {
    "digits-sr": {"dataset": "digits", "image_size": 16, "unet": SR_UNET,
                  "process": "digits-cond", "steps": 1500, "lr": 1e-3, "shift": True},
    "fashion-sr": {"dataset": "fashion_mnist", "image_size": 28,
                   "unet": {"image_size": 28, "model_channels": 32, "channel_mults": (1, 2),
                            "num_res_blocks": 2, "attention_resolutions": (), "num_groups": 8,
                            "patch_size": 2},
                   "process": "fashion", "steps": 3000, "lr": 1e-3, "shift": False},
}  # fmt: skip


def _shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The batch rolled by one random shift of -1, 0 or 1 pixel in each direction (augmentation)."""
    shifts = torch.randint(-1, 2, (2,), generator=generator).tolist()
    return torch.roll(images, shifts=shifts, dims=(2, 3))


def _process_config(**overrides: Any) -> TrainConfig:
    """The digits process (linear β, T = 1000, ε) as a TrainConfig, so load_model rebuilds it."""
    return TrainConfig.from_preset("digits-cond", **overrides)


def train_noisy_classifier(
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[NoisyClassifier, GaussianDiffusion, TrainConfig]:
    """Train :class:`NoisyClassifier` on noised training digits, t uniform in {0, ..., T-1}.

    AdamW with a cosine learning rate, ±1-pixel shifts. Returns (classifier in eval mode, the
    diffusion whose q_sample noised the data, the config recorded in the sidecar).
    """
    config = _process_config(
        batch_size=batch_size, lr=lr, max_steps=steps, seed=seed, class_conditional=False,
        ema_decay=0.0, warmup_steps=0, out_dir=f"runs/{CLASSIFIER_NAME}",
    )  # fmt: skip
    diffusion = build_diffusion(config)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    images, labels = digits(size=16, split="train")
    model = NoisyClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    for _ in tqdm(range(steps), disable=not progress, desc="noisy classifier"):
        index = torch.randint(images.shape[0], (batch_size,), generator=generator)
        x0 = _shift(images[index], generator)
        t = torch.randint(diffusion.num_timesteps, (batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        loss = F.cross_entropy(
            model(diffusion.q_sample(x0, t, noise), t), labels[index]
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model.eval(), diffusion, config


def train_sr(
    steps: int | None = None,
    batch_size: int = 64,
    lr: float | None = None,
    warmup_steps: int = 200,
    ema_decay: float = 0.999,
    seed: int = 0,
    progress: bool = True,
    name: str = SR_NAME,
) -> tuple[SuperResUNet, GaussianDiffusion, TrainConfig]:
    r"""Train the SR3 model :math:`\epsilon_\theta(x_t, t, \mathrm{down}(x_0))` of ``name`` in
    :data:`SR_PRESETS` (``digits-sr``: 8×8 → 16×16; ``fashion-sr``: 14×14 → 28×28) with
    :math:`L_\text{simple}` on its training images (the digits with ±1-pixel shifts, the
    low-resolution image taken after the shift). AdamW, linear warm-up, gradient clipping at 1,
    EMA; ``steps`` and ``lr`` default to the preset's. Returns (EMA model in eval mode,
    diffusion, config)."""
    preset = SR_PRESETS[name]
    steps, lr = steps or preset["steps"], lr or preset["lr"]
    config = TrainConfig.from_preset(
        preset["process"], batch_size=batch_size, lr=lr, max_steps=steps, seed=seed,
        class_conditional=False, ema_decay=ema_decay, warmup_steps=warmup_steps,
        out_dir=f"runs/{name}",
    )  # fmt: skip
    if name == SR_NAME:  # the shipped digits-sr's sidecar names the digits U-Net preset
        config = TrainConfig.from_dict({**config.to_dict(), "preset": "digits"})
    diffusion = build_diffusion(config)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    size = preset["image_size"]
    if preset["dataset"] == "digits":
        images, _ = digits(size=size, split="train")
    else:
        images, _ = fashion_mnist("train")
    model = SuperResUNet(low_res_size=size // 2, channels=1, unet=preset["unet"])
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in tqdm(range(steps), disable=not progress, desc="SR model"):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(warmup_steps, 1))
        index = torch.randint(images.shape[0], (batch_size,), generator=generator)
        x0 = images[index]
        if preset["shift"]:
            x0 = _shift(x0, generator)
        t = torch.randint(diffusion.num_timesteps, (batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        prediction = model(
            diffusion.q_sample(x0, t, noise), t, low_res=sr_downsample(x0)
        )
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema_update(ema, model, ema_decay_at(step, ema_decay))
    return ema.eval(), diffusion, config


def _save(
    model: nn.Module, config: TrainConfig, path: Path, extra: dict[str, Any]
) -> Path:
    """Float16 weights + the trainer's sidecar format (``model_config`` is the model's config)."""
    state = {
        k: (v.half() if v.is_floating_point() else v)
        for k, v in model.state_dict().items()
    }
    metadata = {
        "format": "ddpm_course.model",
        "model_class": type(model).__name__,
        "model_config": model.config,
        "train_config": config.to_dict(),
        "step": config.max_steps,
        **extra,
    }
    return save_weights(state, path, metadata)


def load_noisy_classifier(device: torch.device | str | None = None):
    """The shipped noisy classifier: ``(classifier in eval mode, diffusion, config)``."""
    return load_pretrained(CLASSIFIER_NAME, device=device)


def load_sr_model(device: torch.device | str | None = None, name: str = SR_NAME):
    """The shipped SR model ``fashion-sr`` (14×14 → 28×28): ``(SuperResUNet in eval mode,
    diffusion, config)``. (``digits-sr``, 8×8 → 16×16, is no longer shipped; ``python -m
    ddpm_course.guidance_models sr`` trains it, and ``load_model`` reads the file.)"""
    return load_pretrained(name, device=device)


@torch.no_grad()
def noisy_accuracy(
    classifier: nn.Module,
    diffusion: GaussianDiffusion,
    timesteps: list[int],
    split: str = "test",
    seed: int = 0,
) -> list[float]:
    """Accuracy of ``classifier`` on the digits ``split`` noised to each t in ``timesteps``."""
    images, labels = digits(size=16, split=split)
    generator = torch.Generator().manual_seed(seed)
    accuracies = []
    for t in timesteps:
        t_batch = torch.full((images.shape[0],), int(t), dtype=torch.long)
        noise = torch.randn(images.shape, generator=generator)
        logits = classifier(diffusion.q_sample(images, t_batch, noise), t_batch)
        accuracies.append((logits.argmax(1) == labels).float().mean().item())
    return accuracies


def main(argv: list[str] | None = None) -> int:
    """``python -m ddpm_course.guidance_models classifier|sr|fashion-sr [--steps N] [--out PATH]``."""
    parser = argparse.ArgumentParser(description="Train a shipped model of chapter 06")
    parser.add_argument("which", choices=("classifier", "sr", "fashion-sr"))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=None, help="the .safetensors to write"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.which == "classifier":
        model, diffusion, config = train_noisy_classifier(
            args.steps or 1500, seed=args.seed
        )
        accuracy = noisy_accuracy(model, diffusion, [0, 250, 500, 750, 999])
        extra = {
            "test_accuracy_at_t": dict(
                zip(["0", "250", "500", "750", "999"], accuracy, strict=True)
            )
        }
        name = CLASSIFIER_NAME
    else:
        name = SR_NAME if args.which == "sr" else args.which
        model, diffusion, config = train_sr(args.steps, seed=args.seed, name=name)
        extra = {}
    minutes = (time.perf_counter() - start) / 60
    out = args.out or WEIGHTS_DIR / f"{name}.safetensors"
    _save(model, config, out, {**extra, "train_minutes": round(minutes, 1)})
    print(f"wrote {out} after {minutes:.1f} min; {extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
