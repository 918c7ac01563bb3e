r"""The building blocks of the U-Net (chapter 04): the sinusoidal time embedding, the residual
block conditioned on it, self-attention, down- and up-sampling.

:class:`~ddpm_course.nn.UNet` stacks them; chapter 06's classifier and chapter 07's
cross-attention U-Net reuse them. Shapes: x (N, C, H, W); the embedding e (N, emb_channels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "timestep_embedding",
    "ResBlock",
    "AttentionBlock",
    "Downsample",
    "Upsample",
    "EmbedSequential",
]


def _check_embedding_dim(dim: int) -> None:
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 4 or dim % 2:
        raise ValueError(
            f"the embedding dim must be an even integer >= 4 (sin and cos of dim/2 >= 2 frequencies), got {dim!r}"
        )


def timestep_embedding(
    t: torch.Tensor, dim: int, max_period: float = 10000.0
) -> torch.Tensor:
    r"""Sinusoidal embedding of timesteps (Sec. 3.5 of Vaswani et al. 2017, as in Ho et al. 2020).

    With :math:`h = \text{dim}/2` frequencies :math:`\omega_i = \text{max\_period}^{-i/(h-1)}`,
    i = 0, ..., h-1 (from 1 down to 1/max_period, evenly spaced in log),

    .. math:: \text{emb}(t) = [\sin(t\omega_0), \dots, \sin(t\omega_{h-1}),
              \cos(t\omega_0), \dots, \cos(t\omega_{h-1})].

    This is DDPM's ``get_timestep_embedding`` (diffusers: ``flip_sin_to_cos=False,
    downscale_freq_shift=1``). t: (N,) integer or float timesteps -> (N, dim) float32.
    """
    _check_embedding_dim(dim)
    t = torch.as_tensor(t)
    if t.ndim != 1:
        raise ValueError(f"timesteps must have shape (N,), got {tuple(t.shape)}")
    half = dim // 2
    frequencies = torch.exp(
        -math.log(max_period)
        * torch.arange(half, dtype=torch.float32, device=t.device)
        / (half - 1)
    )
    angles = t.float()[:, None] * frequencies[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def _zero_init(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero and return it (the block starts as the identity)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class ResBlock(nn.Module):
    r"""The residual block of the U-Net, conditioned on the embedding e (time, plus class).

    .. math:: h = \text{conv}_1(\text{SiLU}(\text{GN}_1(x))), \quad
              h = \text{conv}_2(\text{dropout}(\text{SiLU}(\text{GN}_2(h + W\,\text{SiLU}(e))))), \quad
              \text{out} = \text{skip}(x) + h

    (Ho et al. 2020). With ``scale_shift_norm`` the embedding instead modulates the normalised
    features (FiLM, Nichol & Dhariwal 2021): :math:`[s, b] = W\,\text{SiLU}(e)`,
    :math:`\text{GN}_2(h)(1 + s) + b`. ``conv_2`` starts at zero; ``skip`` is a 1×1 convolution
    when the number of channels changes, else the identity.

    x: (N, in_channels, H, W), emb: (N, emb_channels) -> (N, out_channels, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        dropout: float = 0.0,
        num_groups: int = 32,
        scale_shift_norm: bool = False,
    ) -> None:
        super().__init__()
        self.scale_shift_norm = scale_shift_norm
        self.norm1 = nn.GroupNorm(num_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(
            emb_channels, 2 * out_channels if scale_shift_norm else out_channels
        )
        self.norm2 = nn.GroupNorm(num_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        emb_out = self.emb_proj(F.silu(emb))[:, :, None, None]
        if self.scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + emb_out)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    r"""Self-attention over the H·W positions of a feature map, with a residual connection.

    ``qkv`` (a 1×1 convolution of :math:`\text{GN}(x)` to 3C channels) gives q, k and v as its
    channel blocks [0, C), [C, 2C), [2C, 3C); each is split into ``num_heads`` heads of
    d = C / num_heads consecutive channels, and every head computes, with Q, K, V its (H·W, d)
    matrices of queries, keys and values,

    .. math:: \text{softmax}\big(Q K^\top / \sqrt d\big)\, V

    (softmax over the key positions; ``F.scaled_dot_product_attention``, Vaswani et al. 2017).
    The heads are concatenated back, mixed by the zero-initialised 1×1 convolution ``proj_out`` and added to x.

    x: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, num_heads: int = 1, num_groups: int = 32) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide the {channels} channels of the attention block"
            )
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(num_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = _zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(
            n, 3, self.num_heads, c // self.num_heads, height * width
        )
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # each (N, heads, H*W, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, H*W, d)
        out = out.transpose(-1, -2).reshape(n, c, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve the resolution: a 3×3 convolution with stride 2, or 2×2 average pooling without conv.

    x: (N, C, H, W) -> (N, C, H/2, W/2).
    """

    def __init__(self, channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.op = (
            nn.Conv2d(channels, channels, 3, stride=2, padding=1)
            if with_conv
            else nn.AvgPool2d(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour up-sampling, then a 3×3 convolution (if with_conv).

    x: (N, C, H, W) -> (N, C, 2H, 2W).
    """

    def __init__(self, channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.conv = (
            nn.Conv2d(channels, channels, 3, padding=1) if with_conv else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """Layers applied in turn, the :class:`ResBlock` s among them also receiving the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x
