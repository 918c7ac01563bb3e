r"""The denoising networks: the U-Net of Ho et al. 2020 for images.

Chapter 04 (Training a DDPM); its building blocks are in :mod:`ddpm_course.blocks`. A network here is a function :math:`\epsilon_\theta(x_t, t[, y])`
that sees a noisy input and its timestep and returns something the shape of the input (the
predicted noise, x0 or v; twice the channels with a learned variance).

The U-Net (Ho et al. 2020, Appendix B; Nichol & Dhariwal 2021 for the options):

* the timestep enters as a sinusoidal embedding (:func:`timestep_embedding`) passed through a
  two-layer MLP to ``4 * model_channels`` features, plus a learned class embedding when the model
  is class-conditional (with an extra "null" class for classifier-free guidance);
* the down path stacks :class:`ResBlock` s (and :class:`AttentionBlock` s at the listed
  resolutions) and halves the resolution between levels; every output is kept as a skip;
* the middle is ResBlock, attention, ResBlock at the lowest resolution;
* the up path takes ``num_res_blocks + 1`` ResBlocks per level, each fed the concatenation of the
  current features and one skip, and doubles the resolution between levels;
* the last layer (like the second convolution of every ResBlock and the output of every
  attention block) starts at zero, so that each block starts as the identity and the untrained
  network predicts 0.

Shapes: x is (N, C, H, W) with H = W = ``image_size``; t is (N,) (int64 timesteps, or floats);
y is (N,) int64 class labels in {0, ..., num_classes} (``num_classes`` is the null class).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import astuple, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import (
    AttentionBlock,
    Downsample,
    EmbedSequential,
    ResBlock,
    Upsample,
    _zero_init,
    timestep_embedding,
)
from .utils import check_choice, check_class_labels

__all__ = [
    "timestep_embedding",
    "ResBlock",
    "AttentionBlock",
    "Downsample",
    "Upsample",
    "EmbedSequential",
    "UNetConfig",
    "UNet",
    "PRESETS",
    "unet_from_preset",
]


@dataclass(frozen=True)
class UNetConfig:
    """The arguments of :class:`UNet`, stated once and checked when the config is made: a
    configuration that cannot be built is refused with a message that says what to change.
    ``to_dict()`` is the JSON-ready form that checkpoints store.

    Args:
        image_size: height and width of the (square) input; must be divisible by
            2 ** (len(channel_mults) - 1).
        in_channels: channels of the input image.
        model_channels: channels of the first level; level i has ``model_channels * channel_mults[i]``.
            The time embedding has ``4 * model_channels`` features.
        out_channels: channels of the prediction (default ``in_channels``); doubled when
            ``learned_variance`` (the extra channels parameterise the variance, ``learned_range``).
        channel_mults: one multiplier per resolution level; one down-sampling between levels.
        num_res_blocks: ResBlocks per level on the way down (``num_res_blocks + 1`` on the way up);
            an int for every level, or a tuple with one count per level (e.g. ``(1, 2, 2)``: fewer
            blocks at full resolution, where a block costs the most arithmetic per parameter).
        attention_resolutions: the resolutions (e.g. 16 for 16×16) with self-attention after each
            ResBlock; the middle block always has attention.
        dropout: dropout rate inside the ResBlocks.
        num_heads: attention heads, or ``head_channels``: channels per head (the number of heads
            then grows with the channels of the level).
        num_groups: groups of every GroupNorm; must divide every channel count.
        scale_shift_norm: FiLM conditioning in the ResBlocks (see :class:`ResBlock`).
        num_classes: make the model class-conditional on labels y in {0, ..., num_classes - 1};
            label ``num_classes`` (or ``y=None``) is the "null" class of classifier-free guidance.
        learned_variance: double the output channels.
        resample_with_conv: convolutions in the down-/up-sampling layers (else pooling / plain nearest).
        patch_size: fold each ``patch_size``×``patch_size`` patch of pixels into channels before
            the first convolution (``F.pixel_unshuffle``: (C, H, W) -> (C·p², H/p, W/p)) and
            unfold the prediction after the last (``F.pixel_shuffle``), so that every level runs
            at 1/p² of the positions. The levels then sit at ``image_size // patch_size``,
            ``// 2``, ... (``attention_resolutions`` counts those). 1: no folding.
    """

    image_size: int
    in_channels: int
    model_channels: int
    out_channels: int | None = None
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int | tuple[int, ...] = 2
    attention_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    num_heads: int = 1
    head_channels: int | None = None
    num_groups: int = 32
    scale_shift_norm: bool = False
    num_classes: int | None = None
    learned_variance: bool = False
    resample_with_conv: bool = True
    patch_size: int = 1

    def __post_init__(self) -> None:
        for name in ("channel_mults", "attention_resolutions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.num_res_blocks, int):
            object.__setattr__(self, "num_res_blocks", tuple(self.num_res_blocks))
        self._check()

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def _check(self) -> None:
        (image_size, in_channels, model_channels, out_channels, channel_mults, num_res_blocks,
         attention_resolutions, dropout, num_heads, head_channels, num_groups, _, num_classes,
         _, _, patch_size) = astuple(self)  # fmt: skip
        for name, value in [("image_size", image_size), ("in_channels", in_channels),
                            ("model_channels", model_channels), ("num_groups", num_groups),
                            ("patch_size", patch_size)]:  # fmt: skip
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        counts = (
            (num_res_blocks,)
            if isinstance(num_res_blocks, int)
            else tuple(num_res_blocks)
        )
        if (
            any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in counts)
            or not isinstance(num_res_blocks, int)
            and len(counts) != len(channel_mults)
        ):
            raise ValueError(
                f"num_res_blocks must be a positive integer or a tuple of {len(channel_mults)} positive integers "
                f"(one per level of channel_mults {channel_mults!r}), got {num_res_blocks!r}"
            )
        if model_channels % 2:
            raise ValueError(
                f"model_channels must be even (it is also the size of the sinusoidal time embedding), got {model_channels}"
            )
        if out_channels is not None and (
            not isinstance(out_channels, int) or out_channels < 1
        ):
            raise ValueError(
                f"out_channels must be a positive integer or None, got {out_channels!r}"
            )
        if not channel_mults or any(
            not isinstance(m, int) or m < 1 for m in channel_mults
        ):
            raise ValueError(
                f"channel_mults must be a non-empty tuple of positive integers, got {channel_mults!r}"
            )
        downsamplings = len(channel_mults) - 1
        if image_size % patch_size:
            raise ValueError(
                f"patch_size {patch_size} must divide image_size {image_size}"
            )
        top = image_size // patch_size  # the resolution of the first level
        if top % 2**downsamplings:
            multiple = 2**downsamplings * math.ceil(top / 2**downsamplings)
            folded = f" / patch_size {patch_size} = {top}" if patch_size > 1 else ""
            raise ValueError(
                f"image_size {image_size}{folded} is not divisible by 2**{downsamplings} "
                f"({downsamplings} downsamplings); use {multiple * patch_size} or fewer "
                "channel_mults"
            )
        resolutions = [top // 2**level for level in range(len(channel_mults))]
        missing = [r for r in attention_resolutions if r not in resolutions]
        if missing:
            warnings.warn(
                f"attention_resolutions {missing} are never reached, so they add no attention: this U-Net works at "
                f"resolutions {resolutions} (image_size {image_size} with {len(channel_mults)} channel_mults)",
                stacklevel=5,
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        level_channels = sorted(
            {model_channels * m for m in channel_mults} | {model_channels}
        )
        bad = [c for c in level_channels if c % num_groups]
        if bad:
            raise ValueError(
                f"num_groups={num_groups} must divide the channels of every GroupNorm, but not {bad} "
                f"(channel counts {level_channels}); choose a num_groups that divides model_channels"
            )
        attended = [
            m
            for m, r in zip(channel_mults, resolutions, strict=True)
            if r in attention_resolutions
        ]
        attention_channels = sorted(
            {model_channels * m for m in attended + [channel_mults[-1]]}
        )
        if head_channels is not None:
            if any(c % head_channels for c in attention_channels):
                raise ValueError(
                    f"head_channels={head_channels} must divide the attention channels {attention_channels}"
                )
        elif (
            not isinstance(num_heads, int)
            or num_heads < 1
            or any(c % num_heads for c in attention_channels)
        ):
            raise ValueError(
                f"num_heads={num_heads!r} must be a positive integer dividing the attention channels {attention_channels}"
            )
        if num_classes is not None and (
            not isinstance(num_classes, int)
            or isinstance(num_classes, bool)
            or num_classes < 1
        ):
            raise ValueError(
                f"num_classes must be a positive integer or None, got {num_classes!r}"
            )


class UNet(nn.Module):
    r"""The DDPM U-Net (Ho et al. 2020, Appendix B), with the options of Nichol & Dhariwal 2021.

    Its arguments are the fields of :class:`UNetConfig` (what each means is said there).

    ``forward(x, t, y=None)``: x (N, in_channels, image_size, image_size), t (N,) or a scalar,
    y (N,) int64 or None -> (N, out_channels, image_size, image_size). The arguments are the
    fields of :class:`UNetConfig`, given as one (``UNet(config)``) or as keywords; ``config``
    holds them as a dict, so that ``UNet(**model.config)`` builds the same architecture.
    """

    def __init__(self, config: UNetConfig | None = None, **fields: Any) -> None:
        super().__init__()
        if config is None:
            config = UNetConfig(**fields)
        elif fields:
            raise TypeError("give a UNetConfig or its fields as keywords, not both")
        self.unet_config = config
        self.config: dict[str, Any] = config.to_dict()
        (image_size, in_channels, model_channels, out_channels, channel_mults, num_res_blocks,
         attention_resolutions, dropout, num_heads, head_channels, num_groups, scale_shift_norm,
         num_classes, learned_variance, resample_with_conv, patch_size) = astuple(config)  # fmt: skip
        blocks_per_level = (
            (num_res_blocks,) * len(channel_mults)
            if isinstance(num_res_blocks, int)
            else num_res_blocks
        )
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = (out_channels or in_channels) * (
            2 if learned_variance else 1
        )
        self.num_classes = num_classes
        self.patch_size = patch_size

        emb_channels = 4 * model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_channels),
            nn.SiLU(),
            nn.Linear(emb_channels, emb_channels),
        )
        self.class_embed = (
            nn.Embedding(num_classes + 1, emb_channels)
            if num_classes is not None
            else None
        )

        def res_block(cin: int, cout: int) -> ResBlock:
            return ResBlock(
                cin, cout, emb_channels, dropout, num_groups, scale_shift_norm
            )

        def attention(channels: int) -> AttentionBlock:
            heads = (
                channels // head_channels if head_channels is not None else num_heads
            )
            return AttentionBlock(channels, heads, num_groups)

        folded = patch_size**2  # pixels of a patch, folded into channels
        self.conv_in = nn.Conv2d(in_channels * folded, model_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [model_channels]
        channels, resolution = model_channels, image_size // patch_size
        for level, mult in enumerate(channel_mults):
            for _ in range(blocks_per_level[level]):
                layers: list[nn.Module] = [res_block(channels, model_channels * mult)]
                channels = model_channels * mult
                if resolution in attention_resolutions:
                    layers.append(attention(channels))
                self.down.append(EmbedSequential(*layers))
                skip_channels.append(channels)
            if level != len(channel_mults) - 1:
                self.down.append(
                    EmbedSequential(Downsample(channels, resample_with_conv))
                )
                skip_channels.append(channels)
                resolution //= 2

        self.middle = EmbedSequential(
            res_block(channels, channels),
            attention(channels),
            res_block(channels, channels),
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for block in range(blocks_per_level[level] + 1):
                layers = [
                    res_block(channels + skip_channels.pop(), model_channels * mult)
                ]
                channels = model_channels * mult
                if resolution in attention_resolutions:
                    layers.append(attention(channels))
                if level != 0 and block == blocks_per_level[level]:
                    layers.append(Upsample(channels, resample_with_conv))
                    resolution *= 2
                self.up.append(EmbedSequential(*layers))

        self.norm_out = nn.GroupNorm(num_groups, channels)
        self.conv_out = _zero_init(
            nn.Conv2d(channels, self.out_channels * folded, 3, padding=1)
        )

    def _check_input(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"this U-Net expects images of shape (N, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(x.shape)}"
            )

    def embedding(
        self,
        t: torch.Tensor,
        y: torch.Tensor | None,
        batch_size: int,
        device: torch.device,
    ) -> torch.Tensor:
        """The conditioning vector e of every ResBlock: time MLP, plus the class embedding: (N, 4 * model_channels)."""
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch_size)
        if t.shape != (batch_size,):
            raise ValueError(
                f"t must be a scalar or have shape ({batch_size},), one per image; got {tuple(t.shape)}"
            )
        sinusoids = timestep_embedding(t, self.model_channels).to(
            self.time_embed[0].weight.dtype
        )
        emb = self.time_embed(sinusoids)
        if self.class_embed is None:
            if y is not None:
                raise ValueError(
                    "this U-Net is unconditional (num_classes=None) but got class labels y"
                )
            return emb
        if y is None:
            y = torch.full(
                (batch_size,), self.num_classes, dtype=torch.long, device=device
            )
        y = check_class_labels(
            torch.as_tensor(y, device=device), self.num_classes, batch_size
        )
        return emb + self.class_embed(y)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        self._check_input(x)
        emb = self.embedding(t, y, x.shape[0], x.device)
        if self.patch_size > 1:
            x = F.pixel_unshuffle(x, self.patch_size)
        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, self.patch_size) if self.patch_size > 1 else out


# Architectures by name, with their parameter counts (checked in tests/test_nn.py):
#   digits 1,566,305 (32 GFLOP per forward + backward at batch 64; 37 with two full-resolution
#   blocks); digits-cond 1,567,713;
#   mnist 6,469,889; cifar10-ddpm 35,746,307 (exactly Ho et al. 2020's "35.7M": the same layers);
#   ddpm-default 20,861,955 (the seed documented 20,907,649 for its default U-Net: 0.22% fewer).

# 16×16 digits on a CPU: levels 16, 8, 4; small and quick rather than best. One ResBlock at full
# resolution (two below): a 32-channel block at 16×16 holds 1.4% of the parameters (22,752) but
# costs as much arithmetic as a 64-channel block at 8×8 with 3.4× its parameters (and runs less
# efficiently: 32 channels fill the vector units less well), while these digits are 8×8 images
# upscaled, so the full-resolution level has little to add. No dropout: it costs ~7% of a CPU
# step, and short runs on 1,497 images do not need it.
_DIGITS: dict[str, Any] = {
    "image_size": 16, "in_channels": 1, "model_channels": 32, "channel_mults": (1, 2, 2),
    "num_res_blocks": (1, 2, 2), "attention_resolutions": (8,), "dropout": 0.0, "num_groups": 8,
}  # fmt: skip
PRESETS: dict[str, dict[str, Any]] = {
    "digits": _DIGITS,
    # the same, conditioned on the 10 classes (plus the null class of classifier-free guidance)
    "digits-cond": {**_DIGITS, "num_classes": 10},
    # the digits recipe for two minutes of a CPU (ddpm-course bench --time-to-floor): the same
    # levels at half the resolution, each 2×2 patch folded into channels (the digits are 8×8
    # images upscaled, so the 16×16 level had little to add) and no attention (a quarter of
    # the step's time at 8×8): about 3× the steps per second of `digits`.
    "digits-fast": {**_DIGITS, "patch_size": 2, "attention_resolutions": ()},
    # 28×28 Fashion-MNIST on a CPU: each 2×2 patch folded into channels, levels 14 and 7 at
    # 48 and 96 channels, two ResBlocks per level, no attention (2,062,948 parameters; 4 MB in
    # float16). On one thread: 0.74 s per step of 64 images, against 1.44 s for 64 channels
    # with attention at 7×7 (4.0M parameters, twice the shipped size).
    "fashion": {
        "image_size": 28, "in_channels": 1, "model_channels": 48, "channel_mults": (1, 2),
        "num_res_blocks": 2, "attention_resolutions": (), "dropout": 0.0, "num_groups": 8,
        "patch_size": 2,
    },
    # the same network trained by flow matching (chapter 09)
    "fashion-flow": {
        "image_size": 28, "in_channels": 1, "model_channels": 48, "channel_mults": (1, 2),
        "num_res_blocks": 2, "attention_resolutions": (), "dropout": 0.0, "num_groups": 8,
        "patch_size": 2,
    },
    # the student of fashion-flow distilled to few steps (chapter 10): the teacher's network
    "fashion-fewstep": {
        "image_size": 28, "in_channels": 1, "model_channels": 48, "channel_mults": (1, 2),
        "num_res_blocks": 2, "attention_resolutions": (), "dropout": 0.0, "num_groups": 8,
        "patch_size": 2,
    },
    # the same, conditioned on the 10 classes (plus the null class of classifier-free guidance)
    "fashion-cond": {
        "image_size": 28, "in_channels": 1, "model_channels": 48, "channel_mults": (1, 2),
        "num_res_blocks": 2, "attention_resolutions": (), "dropout": 0.0, "num_groups": 8,
        "patch_size": 2, "num_classes": 10,
    },
    # 28×28 MNIST / Fashion-MNIST on a GPU: levels 28, 14, 7.
    "mnist": {
        "image_size": 28, "in_channels": 1, "model_channels": 64, "channel_mults": (1, 2, 2),
        "num_res_blocks": 2, "attention_resolutions": (7,), "dropout": 0.1, "num_groups": 32,
    },
    # Ho et al. 2020's CIFAR-10 model (Appendix B): 35.7M parameters.
    "cifar10-ddpm": {
        "image_size": 32, "in_channels": 3, "model_channels": 128, "channel_mults": (1, 2, 2, 2),
        "num_res_blocks": 2, "attention_resolutions": (16,), "dropout": 0.1, "num_groups": 32,
    },
    # The default model of the DDPM facade: Ho et al.'s CIFAR-10 architecture at 3/4 width, with
    # attention at 16×16 and 8×8, which comes closest to the seed's ~21M parameters.
    "ddpm-default": {
        "image_size": 32, "in_channels": 3, "model_channels": 96, "channel_mults": (1, 2, 2, 2),
        "num_res_blocks": 2, "attention_resolutions": (16, 8), "dropout": 0.1, "num_groups": 32,
    },
}  # fmt: skip


def unet_from_preset(name: str, **overrides: Any) -> UNet:
    """The U-Net called ``name`` in :data:`PRESETS`, with any constructor argument overridden.

    ``unet_from_preset("digits")``; ``unet_from_preset("cifar10-ddpm", learned_variance=True)``.
    """
    check_choice("U-Net preset", name, PRESETS)
    return UNet(**{**PRESETS[name], **overrides})
