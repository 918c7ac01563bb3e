r"""What defines a training run: :class:`TrainConfig`, the presets, and the model and diffusion it builds.

Chapter 04 (Training a DDPM). A run is one JSON-serialisable :class:`TrainConfig` (start from a
preset: ``TrainConfig.from_preset("digits", max_steps=2000)``); :func:`build_model` and
:func:`build_diffusion` turn it into the U-Net and the :class:`~ddpm_course.diffusion.GaussianDiffusion`
that :class:`~ddpm_course.train.Trainer` trains and :func:`~ddpm_course.loading.load_model` rebuilds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from .diffusion import LOSS_TYPES, OBJECTIVES, VAR_TYPES, GaussianDiffusion
from .distill import ConsistencyDistillation, ProgressiveDistillation
from .flow import TIME_SAMPLINGS, FlowMatching
from .schedules import SCHEDULES, get_betas
from .utils import check_choice

__all__ = [
    "TrainConfig",
    "TRAIN_PRESETS",
    "QUICK_OVERRIDES",
    "DATASETS",
    "TRAIN_OBJECTIVES",
    "DISTILLATIONS",
    "PRECISIONS",
    "RESUME_INVARIANTS",
    "build_model",
    "build_diffusion",
]

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")
NATIVE_IMAGE_SIZE = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32}
PRECISIONS = ("bf16", "fp16", "fp32")
# what the network is trained to predict: a VP diffusion's eps, x0 or v, or a flow-matching
# model's velocity ("flow": build_diffusion returns a FlowMatching, chapter 09)
TRAIN_OBJECTIVES = (*OBJECTIVES, "flow")
# chapter 10: a flow student trained from a flow teacher (ddpm_course.distill)
DISTILLATIONS = {
    "consistency": ConsistencyDistillation,
    "progressive": ProgressiveDistillation,
}
# Settings that a resumed run must share with its checkpoint (anything else, e.g. lr or max_steps, may change).
RESUME_INVARIANTS = ("preset", "dataset", "image_size", "channels", "class_conditional", "num_classes", "schedule",
                     "timesteps", "objective", "time_sampling", "var_type", "loss_type", "min_snr_gamma",
                     "distill", "teacher", "distill_steps", "batch_size", "grad_accum", "seed")  # fmt: skip


def _option(default: Any, help: str) -> Any:
    """A config field with its one-line help in ``metadata["help"]``."""
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything that defines a training run; JSON-serialisable (:meth:`to_dict`, :meth:`from_dict`).

    Start from a preset, ``TrainConfig.from_preset("digits", max_steps=2000)``, or from
    :meth:`quick` for a short CPU run. Each field says what it does in ``metadata["help"]``.
    """

    preset: str = _option(
        "digits", "U-Net preset of ddpm_course.nn (also names the training preset)"
    )
    model_overrides: dict = _option(
        {}, "U-Net constructor arguments that replace the preset's"
    )
    dataset: str = _option("digits", "training images: " + ", ".join(DATASETS))
    data_dir: str = _option(
        "data", "folder of the torchvision data sets (downloaded there if missing)"
    )
    image_size: int = _option(16, "height and width of the training images")
    channels: int = _option(1, "image channels (1 grey, 3 colour)")
    random_flip: bool = _option(
        False, "flip torchvision images horizontally at random (CIFAR-10 augmentation)"
    )
    class_conditional: bool = _option(False, "condition the model on the class label")
    num_classes: int = _option(10, "number of classes of a class-conditional model")
    p_uncond: float = _option(
        0.1,
        "probability of replacing the label by the null class (classifier-free guidance)",
    )
    schedule: str = _option("linear", "beta schedule: linear, cosine or sigmoid")
    timesteps: int = _option(1000, "number of diffusion steps T")
    objective: str = _option(
        "eps",
        "what the network predicts: eps, x0 or v, or flow (a flow-matching velocity)",
    )
    time_sampling: str = _option(
        "uniform",
        "flow objective only: the flow time's law, uniform or logit_normal (Esser et al. 2024)",
    )
    distill: str | None = _option(
        None,
        "distil the teacher into a few-step student: consistency or progressive (None: off)",
    )
    teacher: str | None = _option(
        None,
        "distillation: the flow teacher, a shipped name (fashion-flow) or a run folder",
    )
    distill_steps: int = _option(
        18,
        "distillation: the consistency grid's N, or the teacher's steps (progressive)",
    )
    var_type: str = _option(
        "fixed_small", "reverse variance: fixed_small, fixed_large or learned_range"
    )
    loss_type: str = _option(
        "simple",
        "loss: simple, hybrid or vlb (the last two need var_type learned_range)",
    )
    min_snr_gamma: float | None = _option(
        None, "min-SNR-γ weighting of the simple loss (Hang et al. 2023; None: off)"
    )
    batch_size: int = _option(
        128, "global batch size (over all processes and accumulation steps)"
    )
    lr: float = _option(2e-4, "peak learning rate of AdamW, reached after the warm-up")
    weight_decay: float = _option(0.0, "AdamW weight decay")
    warmup_steps: int = _option(0, "steps of linear learning-rate warm-up")
    grad_clip: float = _option(
        1.0, "clip the global gradient norm to this (0: no clipping)"
    )
    grad_accum: int = _option(1, "micro-batches accumulated per optimiser step")
    ema_decay: float = _option(0.9999, "EMA decay of the sampling weights")
    ema_warmup: bool = _option(
        True, "use min(ema_decay, (1 + t) / (10 + t)) at update t"
    )
    max_steps: int | None = _option(
        10_000, "stop after this many optimiser steps (None: no limit)"
    )
    max_seconds: float | None = _option(
        None, "stop after this many seconds of training in this invocation"
    )
    seed: int = _option(0, "random seed (model initialisation, data order, noise)")
    precision: str = _option(
        "bf16",
        "CUDA precision: bf16 autocast, fp16 with GradScaler, or fp32 (the CPU is always fp32)",
    )
    channels_last: bool = _option(
        True, "channels_last memory format (faster convolutions on CUDA and on the CPU)"
    )
    compile: bool = _option(False, "torch.compile the model on CUDA")
    log_every: int = _option(50, "write a log line every this many steps")
    sample_every: int = _option(
        1000, "save a sample grid every this many steps (0: only at the end)"
    )
    sample_steps: int = _option(25, "DDIM steps of the sample grids")
    num_samples: int = _option(64, "images in a sample grid")
    checkpoint_every: int = _option(
        1000, "save a checkpoint every this many steps (0: only at the end)"
    )
    keep_checkpoints: int = _option(3, "keep the last K checkpoints")
    num_workers: int = _option(0, "DataLoader worker processes")
    out_dir: str = _option("runs/digits", "the run folder")

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("objective", self.objective, TRAIN_OBJECTIVES)
        check_choice("time_sampling", self.time_sampling, TIME_SAMPLINGS)
        check_choice("var_type", self.var_type, VAR_TYPES)
        check_choice("loss_type", self.loss_type, LOSS_TYPES)
        check_choice("precision", self.precision, PRECISIONS)
        for name in ("image_size", "channels", "num_classes", "timesteps", "batch_size", "grad_accum", "log_every",
                     "sample_steps", "num_samples", "keep_checkpoints"):  # fmt: skip
            _check_int(name, getattr(self, name), minimum=1)
        for name in (
            "warmup_steps",
            "sample_every",
            "checkpoint_every",
            "num_workers",
            "seed",
        ):
            _check_int(name, getattr(self, name), minimum=0)
        if self.loss_type != "simple" and self.var_type != "learned_range":
            raise ValueError(
                f"loss_type {self.loss_type!r} trains the reverse variance, but var_type {self.var_type!r} fixes it; "
                "use var_type='learned_range' or loss_type='simple'"
            )
        if self.min_snr_gamma is not None and not (
            self.min_snr_gamma > 0 and self.loss_type == "simple"
        ):
            raise ValueError(
                f"min_snr_gamma must be positive and needs loss_type 'simple', got {self.min_snr_gamma!r}"
            )
        if self.objective == "flow" and (
            self.min_snr_gamma is not None or self.var_type != "fixed_small"
        ):
            raise ValueError(
                "objective 'flow' trains a velocity with its own loss weighting and no variance: "
                f"set min_snr_gamma=None and var_type='fixed_small' (got {self.min_snr_gamma!r}, "
                f"{self.var_type!r})"
            )
        if self.time_sampling != "uniform" and self.objective != "flow":
            raise ValueError(
                f"time_sampling {self.time_sampling!r} applies to objective 'flow' only; a VP "
                f"diffusion (objective {self.objective!r}) draws t uniformly"
            )
        if self.distill is not None:
            check_choice("distill", self.distill, DISTILLATIONS)
            _check_int("distill_steps", self.distill_steps, minimum=1)
            if self.objective != "flow" or self.teacher is None:
                raise ValueError(
                    f"distill {self.distill!r} trains a flow student from a flow teacher: set "
                    f"objective='flow' and teacher (got {self.objective!r}, {self.teacher!r})"
                )
        if self.max_steps is not None:
            _check_int("max_steps", self.max_steps, minimum=1)
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(
                f"max_seconds must be positive or None, got {self.max_seconds!r}"
            )
        if self.max_steps is None and self.max_seconds is None:
            raise ValueError(
                "set max_steps or max_seconds (or both); with neither the run would never stop"
            )
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}"
            )
        if self.sample_steps > self.timesteps:
            raise ValueError(
                f"sample_steps {self.sample_steps} exceeds the {self.timesteps} timesteps"
            )
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(
                f"need lr > 0, weight_decay >= 0 and grad_clip >= 0; got {self.lr}, {self.weight_decay}, {self.grad_clip}"
            )
        if not 0 <= self.ema_decay < 1 or not 0 <= self.p_uncond < 1:
            raise ValueError(
                f"ema_decay and p_uncond must lie in [0, 1); got {self.ema_decay} and {self.p_uncond}"
            )
        try:
            json.dumps(self.model_overrides)
        except TypeError as error:
            raise ValueError(
                f"model_overrides must be JSON-serialisable: {error}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The config with these fields; an unknown field is an error that names the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown TrainConfig fields {unknown}; the fields are {sorted(known)}"
            )
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """The training settings of preset ``name`` (see :data:`TRAIN_PRESETS`), with ``overrides``."""
        check_choice("preset", name, TRAIN_PRESETS)
        return cls.from_dict(
            {
                "preset": name,
                "out_dir": f"runs/{name}",
                **TRAIN_PRESETS[name],
                **overrides,
            }
        )

    @classmethod
    def quick(cls, name: str = "digits", **overrides: Any) -> TrainConfig:
        """A short CPU run of preset ``name``: 200 steps of 64 images, fp32, one sample grid at
        the end. For smoke tests and the ``quick`` profile of the book."""
        return cls.from_preset(name, **{**QUICK_OVERRIDES, **overrides})


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


# digits on 2 CPU cores: 4,000 steps of 64 images (about 170 passes over the 1,497 training digits)
_DIGITS = dict(dataset="digits", image_size=16, channels=1, batch_size=64, lr=1e-3, warmup_steps=200, grad_clip=1.0,
               ema_decay=0.999, max_steps=4000, log_every=25, sample_every=500, checkpoint_every=500)  # fmt: skip
_CIFAR = dict(dataset="cifar10", image_size=32, channels=3, random_flip=True, batch_size=128, lr=2e-4, warmup_steps=5000,
              grad_clip=1.0, ema_decay=0.9999, max_steps=800_000, log_every=100, sample_every=10_000,
              checkpoint_every=5000, num_workers=4)  # fmt: skip
# Training settings per preset (the model comes from ddpm_course.nn.PRESETS under the same name).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "digits": _DIGITS,
    # p_uncond 0.2: the null class (guidance's unconditional half) trained on one label in five
    # (0.1 and 2,500 steps gave a weaker one: FD at w = 3 of 173 against 126, chapter 06)
    "digits-cond": {**_DIGITS, "class_conditional": True, "num_classes": 10, "p_uncond": 0.2},
    # FD at the floor in 2 minutes of 2 CPU cores, from scratch (ARCHITECTURE.md, "A digits
    # model in two minutes"): the digits-fast U-Net (3× the steps per second), twice the
    # learning rate after a quarter of the warm-up, the sigmoid schedule and min-SNR-5 weighting;
    # 1,800 steps ≈ 2 minutes there.
    "digits-fast": {**_DIGITS, "lr": 2e-3, "warmup_steps": 50, "schedule": "sigmoid", "min_snr_gamma": 5.0,
                    "max_steps": 1800, "sample_every": 300, "checkpoint_every": 300},
    # Fashion-MNIST 28×28 on one CPU thread (the shipped `fashion` model): the digits-fast
    # recipe (lr 2e-3, sigmoid schedule, min-SNR-5) on the patch-2 `fashion` U-Net.
    "fashion": dict(dataset="fashion_mnist", image_size=28, channels=1, batch_size=64, lr=2e-3, warmup_steps=100,
                    grad_clip=1.0, ema_decay=0.999, schedule="sigmoid", min_snr_gamma=5.0, max_steps=9000,
                    log_every=50, sample_every=1000, checkpoint_every=500, keep_checkpoints=10),
    # p_uncond 0.2 as digits-cond: the null class trained on one label in five
    "fashion-cond": dict(dataset="fashion_mnist", image_size=28, channels=1, batch_size=64, lr=2e-3,
                         warmup_steps=100, grad_clip=1.0, ema_decay=0.999, schedule="sigmoid",
                         min_snr_gamma=5.0, max_steps=5000, log_every=50, sample_every=1000,
                         checkpoint_every=500, keep_checkpoints=10, class_conditional=True,
                         num_classes=10, p_uncond=0.2),
    # flow matching (chapter 09) with the `fashion` U-Net and recipe, for the same steps (the
    # same CPU minutes: the loss costs what the eps loss costs); uniform flow times
    "fashion-flow": dict(dataset="fashion_mnist", image_size=28, channels=1, batch_size=64, lr=2e-3,
                         warmup_steps=100, grad_clip=1.0, ema_decay=0.999, objective="flow",
                         max_steps=9000, log_every=50, sample_every=1000, checkpoint_every=500,
                         keep_checkpoints=10),
    # consistency distillation of the shipped fashion-flow (chapter 10): the student starts as
    # its teacher; N = 18 as Song et al. (2023) on CIFAR-10, a small lr for a fine-tune
    "fashion-fewstep": dict(dataset="fashion_mnist", image_size=28, channels=1, batch_size=64, lr=1e-4,
                            warmup_steps=100, grad_clip=1.0, ema_decay=0.999, objective="flow",
                            distill="consistency", teacher="fashion-flow", distill_steps=18,
                            max_steps=3000, log_every=50, sample_every=500, sample_steps=2,
                            checkpoint_every=250, keep_checkpoints=20),
    # the diffusion transformer of chapter 10 (ddpm_course.dit) on the `fashion` recipe, with
    # a lower peak learning rate and a longer warm-up, as transformers want
    "fashion-dit": dict(dataset="fashion_mnist", image_size=28, channels=1, batch_size=64, lr=1e-3,
                        warmup_steps=500, grad_clip=1.0, ema_decay=0.999, schedule="sigmoid",
                        min_snr_gamma=5.0, max_steps=9000, log_every=50, sample_every=1000,
                        checkpoint_every=500, keep_checkpoints=10),
    "mnist": dict(dataset="mnist", image_size=28, channels=1, batch_size=128, lr=2e-4, warmup_steps=1000, grad_clip=1.0,
                  ema_decay=0.9995, max_steps=50_000, log_every=100, sample_every=5000, checkpoint_every=5000, num_workers=4),
    "cifar10-ddpm": _CIFAR,  # Ho et al. 2020, Appendix B: batch 128, lr 2e-4 after 5,000 warm-up steps, EMA 0.9999, 800k steps
    "ddpm-default": _CIFAR,
}  # fmt: skip
QUICK_OVERRIDES = dict(batch_size=64, max_steps=200, warmup_steps=50, log_every=10, sample_every=0, checkpoint_every=0,
                       num_samples=16, sample_steps=20, precision="fp32", num_workers=0)  # fmt: skip


def build_model(config: TrainConfig) -> nn.Module:
    """The network of ``config``: the U-Net of preset ``config.preset`` (or the
    :class:`~ddpm_course.dit.DiT` of a :data:`~ddpm_course.dit.DIT_PRESETS` name) with the image
    size, channels, classes and learned variance of the config, then ``config.model_overrides``."""
    from .dit import DIT_PRESETS, dit_from_preset
    from .nn import unet_from_preset

    overrides = dict(
        image_size=config.image_size,
        in_channels=config.channels,
        num_classes=config.num_classes if config.class_conditional else None,
        learned_variance=config.var_type == "learned_range",
    )
    if config.preset in DIT_PRESETS:
        return dit_from_preset(config.preset, **{**overrides, **config.model_overrides})
    return unet_from_preset(config.preset, **{**overrides, **config.model_overrides})


def build_diffusion(
    config: TrainConfig,
) -> (
    GaussianDiffusion | FlowMatching | ConsistencyDistillation | ProgressiveDistillation
):
    """The process of ``config``: a :class:`~ddpm_course.flow.FlowMatching` with T time bins for
    objective ``"flow"``, else the :class:`~ddpm_course.diffusion.GaussianDiffusion` of its
    schedule, T, objective and variance; for ``distill``, the distillation objective on
    ``distill_steps`` with no teacher yet (the :class:`~ddpm_course.train.Trainer` attaches
    ``config.teacher``; a loaded student samples without it)."""
    if config.distill is not None:
        return DISTILLATIONS[config.distill](
            None, config.distill_steps, time_scale=float(config.timesteps)
        )
    if config.objective == "flow":
        return FlowMatching(config.timesteps, time_sampling=config.time_sampling)
    betas = get_betas(config.schedule, config.timesteps)
    return GaussianDiffusion(
        betas, objective=config.objective, var_type=config.var_type
    )
