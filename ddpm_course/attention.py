r"""Conditioning by cross-attention on tokens, as Stable Diffusion conditions on text.

Chapter 07 (Latent diffusion), section 5. A prompt is a class name: a garment of Fashion-MNIST
("ankle boot", split into the word tokens ``[<bos>, ankle, boot, <pad>]``) or a digit's name
("seven", spelled into characters as a sub-word tokenizer splits a rare word:
``[<bos>, s, e, v, e, n]``); :class:`PromptVocabulary` and :func:`tokenize`. The empty prompt ``""`` (only ``<bos>`` and padding) is the null condition of
classifier-free guidance. :class:`PromptEncoder` (token and position embeddings and one
transformer layer) stands in for CLIP's text encoder and gives the context (N, L, D).

:class:`CrossAttention` lets every position of a feature map attend to the context tokens
(Vaswani et al. 2017; Rombach et al. 2022, Sec. 3.3):

.. math:: \text{softmax}\big(Q K^\top / \sqrt d\big) V, \quad Q = W_Q\,\mathrm{GN}(h), \;
          K = W_K\,c, \; V = W_V\,c

and :class:`CrossAttnUNet` is the :class:`~ddpm_course.nn.UNet` with one after every
self-attention block (and in the middle). Its ``forward(x, t, y=None, context=None)`` takes the
prompts as token ids (``context``, (N, L) int64) or as digit labels ``y`` (N,) in {0, ..., 10}
(label 10 is the empty prompt), which the Trainer and the classifier-free guidance wrapper of
chapter 06 pass as they pass class labels.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import AttentionBlock, EmbedSequential, ResBlock, _zero_init
from .data import FASHION_MNIST_CLASSES
from .nn import UNet
from .utils import check_choice, check_class_labels

__all__ = [
    "DIGIT_NAMES",
    "PromptVocabulary",
    "PROMPT_VOCABULARIES",
    "VOCABULARY",
    "PROMPT_LENGTH",
    "tokenize",
    "prompt_labels",
    "label_tokens",
    "cross_attention_weights",
    "CrossAttention",
    "PromptEncoder",
    "CrossAttnUNet",
]

DIGIT_NAMES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)  # fmt: skip
PAD, BOS = "<pad>", "<bos>"


class PromptVocabulary:
    """The prompts a latent model understands: its class ``names`` (label i is ``names[i]``;
    label ``len(names)`` is the empty prompt) and how a name becomes tokens: ``split`` is
    ``"letters"`` (spelled into characters, as a sub-word tokenizer splits a rare word) or
    ``"words"`` (split at spaces and slashes: "ankle boot" is two tokens, "t-shirt/top" too).

    ``tokens`` is the vocabulary (``<pad>``, ``<bos>``, then the pieces in alphabetical
    order) and ``length`` the token length of every prompt (``<bos>`` + the longest name).
    """

    def __init__(self, names: tuple[str, ...], split: str) -> None:
        if split not in ("letters", "words"):
            raise ValueError(f"split must be 'letters' or 'words', got {split!r}")
        self.names, self.split = tuple(names), split
        pieces = sorted({piece for name in self.names for piece in self.pieces(name)})
        self.tokens: tuple[str, ...] = (PAD, BOS, *pieces)
        self.length = 1 + max(len(self.pieces(name)) for name in self.names)
        self._ids = {token: i for i, token in enumerate(self.tokens)}

    def pieces(self, name: str) -> list[str]:
        """The tokens of a name, without ``<bos>`` and padding."""
        if self.split == "letters":
            return list(name)
        return re.split(r"[\s/]+", name)

    def check(self, prompt: str) -> str:
        """The prompt as one of ``names`` (case and spaces ignored) or ``""``; else an error
        that lists the names."""
        if not isinstance(prompt, str):
            raise TypeError(f"a prompt must be a string, got {type(prompt).__name__}")
        text = " ".join(prompt.lower().split())
        if text and text not in self.names:
            raise ValueError(
                f"unknown prompt {prompt!r}: a prompt is one of {', '.join(self.names)}, "
                "or the empty prompt '' for no condition"
            )
        return text

    def tokenize(self, prompts: str | list[str]) -> torch.Tensor:
        """Token ids of prompts: (N, length) int64 (one prompt: (1, length)): ``<bos>``, the
        name's pieces, then ``<pad>``."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = torch.full((len(prompts), self.length), self._ids[PAD], dtype=torch.long)
        for row, prompt in enumerate(prompts):
            name = self.check(prompt)
            ids[row, 0] = self._ids[BOS]
            for column, piece in enumerate(self.pieces(name) if name else [], start=1):
                ids[row, column] = self._ids[piece]
        return ids

    def labels(self, prompts: str | list[str]) -> torch.Tensor:
        """The label of each prompt, as the Trainer and the CFG wrapper pass it: (N,) int64;
        the empty prompt is ``len(names)`` (the null condition)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        names = [self.check(p) for p in prompts]
        null = len(self.names)
        return torch.tensor(
            [self.names.index(n) if n else null for n in names], dtype=torch.long
        )

    def label_tokens(self) -> torch.Tensor:
        """The token ids of every label's prompt: (len(names) + 1, length); the last row is
        the empty prompt."""
        return self.tokenize([*self.names, ""])


# the prompt vocabularies by name (a CrossAttnUNet's ``prompts`` argument): the digits' names
# spelled into letters, and Fashion-MNIST's class names split into words
PROMPT_VOCABULARIES = {
    "digits": PromptVocabulary(DIGIT_NAMES, "letters"),
    "fashion": PromptVocabulary(FASHION_MNIST_CLASSES, "words"),
}
_DIGITS = PROMPT_VOCABULARIES["digits"]
VOCABULARY = _DIGITS.tokens
PROMPT_LENGTH = _DIGITS.length  # <bos> + the longest digit name (5 letters)


def _vocabulary(name: str) -> PromptVocabulary:
    check_choice("prompt vocabulary", name, PROMPT_VOCABULARIES)
    return PROMPT_VOCABULARIES[name]


def tokenize(prompts: str | list[str], vocabulary: str = "digits") -> torch.Tensor:
    """Token ids of prompts in ``vocabulary`` (:data:`PROMPT_VOCABULARIES`): (N, L) int64.

    Each prompt is a class name (case and surrounding spaces ignored) or ``""``; it becomes
    ``<bos>``, its pieces (a digit's letters; a garment's words), then ``<pad>``. An unknown
    prompt is an error that lists the names.
    """
    return _vocabulary(vocabulary).tokenize(prompts)


def prompt_labels(prompts: str | list[str], vocabulary: str = "digits") -> torch.Tensor:
    """The label of each prompt (the class the Trainer and the CFG wrapper pass): (N,) int64;
    the empty prompt is the null label (10 for both vocabularies)."""
    return _vocabulary(vocabulary).labels(prompts)


def label_tokens(vocabulary: str = "digits") -> torch.Tensor:
    """The token ids of the prompts by label: (11, L); row 10 is the empty prompt."""
    return _vocabulary(vocabulary).label_tokens()


def cross_attention_weights(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    r"""Attention weights :math:`A = \text{softmax}(Q K^\top / \sqrt d)`, softmax over the keys.

    queries: (..., Lq, d), keys: (..., Lk, d) -> (..., Lq, Lk); each row sums to 1.
    """
    if queries.shape[-1] != keys.shape[-1]:
        raise ValueError(
            f"queries and keys need the same feature size d, got {queries.shape[-1]} and {keys.shape[-1]}"
        )
    scores = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])
    return scores.softmax(dim=-1)


class CrossAttention(nn.Module):
    r"""Cross-attention from a feature map to context tokens, with a residual connection.

    Queries from the GroupNorm of x (a linear map of its C channels at each of the H·W
    positions), keys and values from the context (N, L, context_dim); ``num_heads`` heads of
    C / num_heads channels; :func:`cross_attention_weights` then the weighted values; heads
    concatenated, mixed by the zero-initialised ``proj_out`` (the block starts as the identity).
    With ``keep_weights = True`` the last weights are kept in ``weights``: (N, heads, H·W, L).

    x: (N, C, H, W), context: (N, L, context_dim) -> (N, C, H, W).
    """

    def __init__(
        self, channels: int, context_dim: int, num_heads: int = 1, num_groups: int = 8
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide the {channels} channels"
            )
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(num_groups, channels)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(context_dim, channels, bias=False)
        self.to_v = nn.Linear(context_dim, channels, bias=False)
        self.proj_out = _zero_init(nn.Linear(channels, channels))
        self.keep_weights = False
        self.weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, c, height, width = x.shape
        heads, d = self.num_heads, c // self.num_heads
        h = self.norm(x).flatten(2).transpose(1, 2)  # (N, H*W, C)
        q = self.to_q(h).reshape(n, -1, heads, d).transpose(1, 2)  # (N, heads, H*W, d)
        k = (
            self.to_k(context).reshape(n, -1, heads, d).transpose(1, 2)
        )  # (N, heads, L, d)
        v = self.to_v(context).reshape(n, -1, heads, d).transpose(1, 2)
        weights = cross_attention_weights(q, k)  # (N, heads, H*W, L)
        if self.keep_weights:
            self.weights = weights.detach()
        out = (weights @ v).transpose(1, 2).reshape(n, height * width, c)
        return x + self.proj_out(out).transpose(1, 2).reshape(n, c, height, width)


class PromptEncoder(nn.Module):
    """Token ids (N, L) -> context (N, L, dim): token plus learned position embeddings, then one
    pre-norm transformer encoder layer (4 heads, no dropout) and a LayerNorm; a small stand-in
    for the CLIP text encoder of Stable Diffusion."""

    def __init__(
        self,
        dim: int = 64,
        vocab_size: int = len(_DIGITS.tokens),
        length: int = _DIGITS.length,
    ) -> None:
        super().__init__()
        self.length = length
        self.token = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.randn(length, dim) * 0.02)
        self.layer = nn.TransformerEncoderLayer(
            dim, 4, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.shape[1] != self.length or ids.dtype.is_floating_point:
            raise ValueError(
                f"token ids must be (N, {self.length}) integers, got {tuple(ids.shape)} {ids.dtype}"
            )
        return self.norm(self.layer(self.token(ids) + self.position))


class CrossAttnUNet(UNet):
    r"""The :class:`~ddpm_course.nn.UNet` conditioned on prompts by cross-attention.

    The U-Net's arguments (unconditional: no class embedding), plus ``context_dim`` (the prompt
    encoder's width) and ``num_prompt_classes`` (10: label ``y`` = 10 is the empty prompt). A
    :class:`CrossAttention` follows every self-attention block of the down and up paths and the
    middle one; the time embedding alone enters the ResBlocks (as in Stable Diffusion v1).

    ``prompts`` names its :class:`PromptVocabulary` in :data:`PROMPT_VOCABULARIES` ("digits"
    or "fashion"; ``vocabulary`` holds it).

    ``forward(x, t, y=None, context=None)``: x (N, C, H, W), t (N,), and the prompts as ``context``
    token ids (N, L) (``vocabulary.tokenize``) or as labels ``y`` (N,) (neither: the empty prompt).
    """

    def __init__(
        self,
        context_dim: int = 64,
        num_prompt_classes: int = 10,
        prompts: str = "digits",
        **unet: Any,
    ) -> None:
        if unet.get("num_classes") is not None:
            raise ValueError(
                "CrossAttnUNet is conditioned by cross-attention: leave num_classes unset"
            )
        unet.pop("num_classes", None)
        super().__init__(**unet)
        self.vocabulary = _vocabulary(prompts)
        if num_prompt_classes != len(self.vocabulary.names):
            raise ValueError(
                f"num_prompt_classes={num_prompt_classes}, but the {prompts!r} prompts name "
                f"{len(self.vocabulary.names)} classes"
            )
        self.config.update(
            context_dim=context_dim,
            num_prompt_classes=num_prompt_classes,
            prompts=prompts,
        )
        self.config.pop("num_classes", None)
        self.num_classes = num_prompt_classes  # the CFG wrapper's null label
        self.prompt_encoder = PromptEncoder(
            context_dim, len(self.vocabulary.tokens), self.vocabulary.length
        )
        self.register_buffer(
            "label_ids", self.vocabulary.label_tokens(), persistent=False
        )
        num_groups = unet.get("num_groups", 32)
        head_channels = unet.get("head_channels")

        def with_cross(seq: nn.Module) -> nn.Module:
            layers: list[nn.Module] = []
            for layer in seq:
                layers.append(layer)
                if isinstance(layer, AttentionBlock):
                    channels = layer.qkv.in_channels
                    heads = (
                        channels // head_channels if head_channels else layer.num_heads
                    )
                    layers.append(
                        CrossAttention(channels, context_dim, heads, num_groups)
                    )
            return EmbedSequential(*layers)

        self.down = nn.ModuleList(with_cross(seq) for seq in self.down)
        self.middle = with_cross(self.middle)
        self.up = nn.ModuleList(with_cross(seq) for seq in self.up)

    def cross_attention_blocks(self) -> list[CrossAttention]:
        return [m for m in self.modules() if isinstance(m, CrossAttention)]

    def context(
        self, y: torch.Tensor | None, ids: torch.Tensor | None, n: int, device
    ) -> torch.Tensor:
        """The prompt encoder's context (N, L, context_dim) from token ids, else from labels."""
        if ids is None:
            if y is None:
                y = torch.full((n,), self.num_classes, dtype=torch.long, device=device)
            y = torch.as_tensor(y, device=device)
            y = check_class_labels(y, self.num_classes, n, what="prompt labels")
            ids = self.label_ids.to(device)[y]
        if ids.shape[0] != n:
            raise ValueError(
                f"need {n} prompts (one per image), got token ids of shape {tuple(ids.shape)}"
            )
        return self.prompt_encoder(ids.to(device))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._check_input(x)
        emb = self.embedding(t, None, x.shape[0], x.device)
        ctx = self.context(y, context, x.shape[0], x.device).to(x.dtype)

        def run(seq: nn.Module, h: torch.Tensor) -> torch.Tensor:
            for layer in seq:
                if isinstance(layer, ResBlock):
                    h = layer(h, emb)
                elif isinstance(layer, CrossAttention):
                    h = layer(h, ctx)
                else:
                    h = layer(h)
            return h

        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = run(block, h)
            skips.append(h)
        h = run(self.middle, h)
        for block in self.up:
            h = run(block, torch.cat([h, skips.pop()], dim=1))
        return self.conv_out(F.silu(self.norm_out(h)))
