r"""Diffusion transformers (Peebles & Xie 2023): the network of chapter 10, beside the U-Net.

Chapter 10 (Transformers and few steps). A DiT cuts the image into p×p patches, treats each as
a token, and runs a plain transformer over the tokens; the noise level (and the class) enter
every block by *adaptive layer norm*. The pieces, in the order the forward pass uses them:

* :func:`patchify` / :func:`unpatchify`: (N, C, H, W) <-> (N, L, p·p·C) tokens, L = (H/p)(W/p);
* a linear patch embedding plus a fixed 2-D sine-cosine position embedding
  (:func:`sincos_position_embedding`);
* the conditioning vector c = MLP(sinusoids(t)) (+ a class embedding with a null class, as the
  :class:`~ddpm_course.nn.UNet`'s, for classifier-free guidance);
* :class:`DiTBlock`: self-attention and an MLP, each after a LayerNorm without its own affine
  parameters whose shift and scale come from c, and each scaled by a gate from c before the
  residual sum (**adaLN-Zero**: the layer that maps c to shifts, scales and gates starts at
  zero, so every block starts as the identity);
* :class:`FinalLayer`: an adaLN'd LayerNorm and a linear map back to p·p·C per token (zero at
  initialisation, so the untrained network predicts 0), then :func:`unpatchify`.

:class:`DiT` has the U-Net's interface (``forward(x, t, y=None)``, ``image_size``,
``in_channels``, ``num_classes``, ``config``), so the trainer, the loader and every sampler take
it unchanged: ``TrainConfig.from_preset("fashion-dit")`` trains one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import timestep_embedding

__all__ = [
    "DiT",
    "DiTBlock",
    "FinalLayer",
    "DIT_PRESETS",
    "patchify",
    "unpatchify",
    "sincos_position_embedding",
    "modulate",
    "dit_from_preset",
    "count_parameters",
]

# Architectures by name. fashion-dit matches the `fashion` U-Net's 2,062,948 parameters within
# 2% (2,101,884: 6 blocks of width 136 with 4 heads, each 18·136² + 15·136 parameters, plus
# 101,076 in the embeddings and the final layer), on 2×2 patches of the 28×28 images: 196
# tokens.
DIT_PRESETS: dict[str, dict[str, Any]] = {
    "fashion-dit": {
        "image_size": 28, "in_channels": 1, "patch_size": 2, "hidden_size": 136, "depth": 6,
        "num_heads": 4, "mlp_ratio": 4.0,
    },
}  # fmt: skip


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p·p·C) with L = (H/p)·(W/p): patches in row-major order, each
    flattened as (row in patch, column in patch, channel)."""
    n, c, h, w = x.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(
            f"patch_size {p} must divide the image's height and width, got {h}×{w}"
        )
    x = x.reshape(n, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(
    tokens: torch.Tensor, patch_size: int, channels: int, height: int, width: int
) -> torch.Tensor:
    """The inverse of :func:`patchify`: (N, L, p·p·C) -> (N, C, H, W)."""
    n, length, dim = tokens.shape
    p = patch_size
    if length != (height // p) * (width // p) or dim != p * p * channels:
        raise ValueError(
            f"tokens of shape {tuple(tokens.shape)} do not tile a {channels}×{height}×{width} "
            f"image in {p}×{p} patches"
        )
    x = tokens.reshape(n, height // p, width // p, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(n, channels, height, width)


def sincos_position_embedding(dim: int, grid_size: int) -> torch.Tensor:
    r"""Fixed 2-D position embedding of a grid_size×grid_size grid of tokens: (L, dim).

    The first half of the features embeds the token's row i, the second half its column j, each
    by :func:`~ddpm_course.blocks.timestep_embedding` with the period 10,000 (Vaswani et al.
    2017, as DiT and MAE do): token (i, j) gets [emb(i), emb(j)]. dim: a multiple of 4."""
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4, got {dim}")
    rows, columns = torch.meshgrid(
        torch.arange(grid_size), torch.arange(grid_size), indexing="ij"
    )
    return torch.cat(
        [
            timestep_embedding(rows.flatten(), dim // 2),
            timestep_embedding(columns.flatten(), dim // 2),
        ],
        dim=1,
    )


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN's modulation of tokens x (N, L, D) by shift and scale (N, D): x·(1 + scale) + shift."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    r"""A transformer block conditioned by adaLN-Zero (Peebles & Xie 2023, Sec. 3.2):

    .. math:: x \leftarrow x + g_1 \odot \mathrm{Attn}(\mathrm{LN}(x)(1 + a_1) + b_1), \qquad
              x \leftarrow x + g_2 \odot \mathrm{MLP}(\mathrm{LN}(x)(1 + a_2) + b_2),

    with :math:`(b_1, a_1, g_1, b_2, a_2, g_2) = W\,\mathrm{SiLU}(c) + w_0` and W, w0 zero at
    initialisation, so the block starts as the identity. ``forward(x (N, L, D), c (N, D))``.
    """

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(
                f"num_heads {num_heads} must divide hidden_size {hidden_size}"
            )
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        hidden_mlp = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden_mlp),
            nn.GELU(approximate="tanh"),
            nn.Linear(hidden_mlp, hidden_size),
        )
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size)
        )
        nn.init.zeros_(self.adaLN_modulation[1].weight)
        nn.init.zeros_(self.adaLN_modulation[1].bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over the tokens: (N, L, D) -> (N, L, D)."""
        n, length, dim = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(n, length, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, heads, L, D / heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(
            6, dim=1
        )
        x = x + gate1[:, None] * self.attention(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN'd LayerNorm and a linear map to p·p·C_out per token, zero at initialisation."""

    def __init__(self, hidden_size: int, patch_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_dim)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size)
        )
        for layer in (self.linear, self.adaLN_modulation[1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    r"""A diffusion transformer with adaLN-Zero blocks (Peebles & Xie 2023), with the
    :class:`~ddpm_course.nn.UNet`'s interface: ``forward(x, t, y=None)``, x (N, in_channels,
    image_size, image_size), t (N,) or a scalar (integer or float), y (N,) int64 class labels
    (index ``num_classes`` is the null class of classifier-free guidance; None means the null
    class for a conditional model) -> (N, out_channels, image_size, image_size).

    ``patch_size`` p must divide ``image_size``; ``hidden_size`` (a multiple of 4 and of
    ``num_heads``) is the token width; ``depth`` blocks; ``learned_variance`` doubles the output
    channels as the U-Net's does. ``config`` holds the arguments, so ``DiT(**model.config)``
    builds the same architecture.
    """

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        patch_size: int = 2,
        hidden_size: int = 128,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        learned_variance: bool = False,
        frequency_size: int = 256,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"patch_size {patch_size} must divide image_size {image_size}"
            )
        if hidden_size % 4:
            raise ValueError(f"hidden_size must be a multiple of 4, got {hidden_size}")
        if num_classes is not None and (
            not isinstance(num_classes, int) or num_classes < 1
        ):
            raise ValueError(
                f"num_classes must be a positive integer or None, got {num_classes!r}"
            )
        self.config: dict[str, Any] = dict(
            image_size=image_size, in_channels=in_channels, patch_size=patch_size,
            hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            num_classes=num_classes, learned_variance=learned_variance,
            frequency_size=frequency_size,
        )  # fmt: skip
        self.image_size, self.in_channels = image_size, in_channels
        self.out_channels = in_channels * (2 if learned_variance else 1)
        self.patch_size, self.num_classes = patch_size, num_classes
        self.frequency_size = frequency_size
        grid = image_size // patch_size
        self.patch_embed = nn.Linear(patch_size * patch_size * in_channels, hidden_size)
        self.register_buffer(
            "pos_embed",
            sincos_position_embedding(hidden_size, grid)[None],
            persistent=False,
        )
        self.time_embed = nn.Sequential(
            nn.Linear(frequency_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.class_embed = (
            nn.Embedding(num_classes + 1, hidden_size) if num_classes else None
        )
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.final = FinalLayer(
            hidden_size, patch_size * patch_size * self.out_channels
        )
        self._initialise()

    def _initialise(self) -> None:
        """DiT's initialisation: Xavier-uniform linear layers (the patch embedding as a
        flattened convolution), N(0, 0.02²) time MLP and class table, then the zeros of
        adaLN-Zero and of the final layer (set by the blocks; restored here)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for layer in (self.time_embed[0], self.time_embed[2]):
            nn.init.normal_(layer.weight, std=0.02)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[1].weight)
            nn.init.zeros_(block.adaLN_modulation[1].bias)
        for layer in (self.final.linear, self.final.adaLN_modulation[1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def conditioning(
        self, t: torch.Tensor, y: torch.Tensor | None, batch_size: int, device
    ) -> torch.Tensor:
        """c (N, hidden_size): the time MLP of the sinusoids of t, plus the class embedding."""
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch_size)
        if t.shape != (batch_size,):
            raise ValueError(
                f"t must be a scalar or have shape ({batch_size},), one per image; got {tuple(t.shape)}"
            )
        weight = self.time_embed[0].weight
        c = self.time_embed(timestep_embedding(t, self.frequency_size).to(weight.dtype))
        if self.class_embed is None:
            if y is not None:
                raise ValueError(
                    "this DiT is unconditional (num_classes=None) but got class labels y"
                )
            return c
        if y is None:
            y = torch.full((batch_size,), self.num_classes, device=device)
        return c + self.class_embed(y)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"this DiT expects images of shape (N, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}"
            )
        c = self.conditioning(t, y, x.shape[0], x.device)
        h = self.patch_embed(patchify(x, self.patch_size)) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            h = block(h, c)
        out = self.final(h, c)
        size = self.image_size
        return unpatchify(out, self.patch_size, self.out_channels, size, size)

    def extra_repr(self) -> str:
        tokens = (self.image_size // self.patch_size) ** 2
        return f"{tokens} tokens of {self.patch_size}×{self.patch_size} patches"


def dit_from_preset(name: str, **overrides: Any) -> DiT:
    """The DiT of :data:`DIT_PRESETS` ``name``, with ``overrides`` of its arguments."""
    if name not in DIT_PRESETS:
        raise ValueError(
            f"unknown DiT preset {name!r}; choose one of {', '.join(map(repr, DIT_PRESETS))}"
        )
    return DiT(**{**DIT_PRESETS[name], **overrides})


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
