r"""Chapter 06's two networks: a classifier of noisy images and an SR3 super-resolution U-Net.

Chapter 06 (Guidance). Both are built from the pieces of :mod:`ddpm_course.nn` (chapter 04):
:class:`NoisyClassifier` is the U-Net's encoder half with its time embedding (for classifier
guidance), :class:`SuperResUNet` the U-Net conditioned on a low-resolution image by
concatenation (:func:`sr_model_input`). :mod:`ddpm_course.guidance_models` trains the shipped
ones; :mod:`ddpm_course.guidance` samples with them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import (
    AttentionBlock,
    Downsample,
    EmbedSequential,
    ResBlock,
    timestep_embedding,
)
from .nn import UNet, UNetConfig

__all__ = ["NoisyClassifier", "sr_model_input", "SuperResUNet"]


class NoisyClassifier(nn.Module):
    r"""A classifier of noisy images :math:`p_\phi(y \mid x_t, t)`: the U-Net's encoder half.

    Chapter 06 (classifier guidance, Dhariwal & Nichol 2021, Sec. 4.1, who also take the U-Net's
    downsampling trunk). The timestep enters through the same sinusoidal embedding and MLP as in
    :class:`UNet`; the down path (:class:`ResBlock` s, attention at ``attention_resolutions``,
    :class:`Downsample` between levels) and one middle ResBlock are followed by GroupNorm, SiLU,
    global average pooling and a linear layer to the logits.

    x: (N, in_channels, image_size, image_size) in [-1, 1], t: (N,) trained timesteps
    -> logits (N, num_classes). ``config`` holds the arguments (``NoisyClassifier(**config)``).
    """

    def __init__(
        self,
        image_size: int = 16,
        in_channels: int = 1,
        model_channels: int = 32,
        num_classes: int = 10,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_resolutions: tuple[int, ...] = (),
        num_groups: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channel_mults, attention_resolutions = (
            tuple(channel_mults),
            tuple(attention_resolutions),
        )
        self.config: dict[str, Any] = {
            "image_size": image_size,
            "in_channels": in_channels,
            "model_channels": model_channels,
            "num_classes": num_classes,
            "channel_mults": channel_mults,
            "num_res_blocks": num_res_blocks,
            "attention_resolutions": attention_resolutions,
            "num_groups": num_groups,
            "dropout": dropout,
        }
        UNetConfig(  # the encoder half of a U-Net: refused where that U-Net would be
            image_size=image_size, in_channels=in_channels, model_channels=model_channels,
            channel_mults=channel_mults, num_res_blocks=num_res_blocks, dropout=dropout,
            attention_resolutions=attention_resolutions, num_groups=num_groups,
            num_classes=num_classes,
        )  # fmt: skip
        self.image_size, self.in_channels = image_size, in_channels
        self.model_channels, self.num_classes = model_channels, num_classes
        emb_channels = 4 * model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_channels),
            nn.SiLU(),
            nn.Linear(emb_channels, emb_channels),
        )
        self.conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        blocks: list[nn.Module] = []
        channels, resolution = model_channels, image_size
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                out = model_channels * mult
                layers: list[nn.Module] = [
                    ResBlock(channels, out, emb_channels, dropout, num_groups)
                ]
                channels = out
                if resolution in attention_resolutions:
                    layers.append(AttentionBlock(channels, 1, num_groups))
                blocks.append(EmbedSequential(*layers))
            if level != len(channel_mults) - 1:
                blocks.append(EmbedSequential(Downsample(channels)))
                resolution //= 2
        blocks.append(
            EmbedSequential(
                ResBlock(channels, channels, emb_channels, dropout, num_groups)
            )
        )
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = nn.GroupNorm(num_groups, channels)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"this classifier expects images of shape (N, {expected[0]}, {expected[1]}, "
                f"{expected[2]}), got {tuple(x.shape)}"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(
                f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}"
            )
        sinusoids = timestep_embedding(t, self.model_channels).to(x.dtype)
        emb = self.time_embed(sinusoids)
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.head(F.silu(self.norm_out(h)).mean(dim=(2, 3)))


def sr_model_input(x_t: torch.Tensor, low_res: torch.Tensor) -> torch.Tensor:
    r"""The input of an SR3 super-resolution network (Saharia et al. 2021, Sec. 2.3):

    .. math:: [x_t,\ \mathrm{up}(x_\text{low})]

    the noisy high-resolution image concatenated along the channels with the low-resolution image
    upsampled to its size by bicubic interpolation. x_t: (N, C, H, W); low_res: (N, C, h, w)
    -> (N, 2C, H, W).
    """
    if low_res.ndim != 4 or low_res.shape[:2] != x_t.shape[:2]:
        raise ValueError(
            f"low_res must have shape (N, C, h, w) = ({x_t.shape[0]}, {x_t.shape[1]}, h, w) "
            f"like x_t {tuple(x_t.shape)}; got {tuple(low_res.shape)}"
        )
    upsampled = F.interpolate(
        low_res.to(x_t.dtype), size=x_t.shape[-2:], mode="bicubic", align_corners=False
    )
    return torch.cat([x_t, upsampled], dim=1)


class SuperResUNet(nn.Module):
    r"""A :class:`UNet` conditioned on a low-resolution image by concatenation (SR3).

    Chapter 06. ``forward(x_t, t, low_res)`` is ``unet(sr_model_input(x_t, low_res), t)``
    (:func:`sr_model_input`): the inner U-Net sees ``2 * channels`` input channels and predicts
    ``channels``. Arguments: ``low_res_size`` (h = w of the conditioning image), ``channels``,
    and the :class:`UNet` arguments in ``unet`` (its ``in_channels`` / ``out_channels`` are set
    here). ``config`` holds them (``SuperResUNet(**config)``).

    x_t: (N, channels, H, H), t: (N,), low_res: (N, channels, low_res_size, low_res_size)
    -> (N, channels, H, H).
    """

    def __init__(self, low_res_size: int, channels: int, unet: dict[str, Any]) -> None:
        super().__init__()
        unet = {**unet, "in_channels": 2 * channels, "out_channels": channels}
        self.unet = UNet(**unet)
        self.low_res_size, self.channels = low_res_size, channels
        self.image_size = self.unet.image_size
        self.config: dict[str, Any] = {
            "low_res_size": low_res_size,
            "channels": channels,
            "unet": self.unet.config,
        }

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, low_res: torch.Tensor | None = None
    ) -> torch.Tensor:
        expected = (self.channels, self.low_res_size, self.low_res_size)
        if low_res is None or low_res.ndim != 4 or tuple(low_res.shape[1:]) != expected:
            got = None if low_res is None else tuple(low_res.shape)
            raise ValueError(
                f"this super-resolution model needs low_res of shape (N, {expected[0]}, "
                f"{expected[1]}, {expected[2]}) (pass model_kwargs={{'low_res': ...}}), got {got}"
            )
        return self.unet(sr_model_input(x, low_res), t)
