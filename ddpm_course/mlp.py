r"""A noise predictor for 2-D (or any low-dimensional) toy data: a small MLP with a time embedding.

The counterpart of :class:`~ddpm_course.nn.UNet` for points instead of images.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import _check_embedding_dim, timestep_embedding

__all__ = ["MLP2D"]


class MLP2D(nn.Module):
    r"""A noise predictor for 2-D (or any low-dimensional) toy data: :math:`\epsilon_\theta(x_t, t)`.

    The input is the point concatenated with the sinusoidal embedding of t,
    :math:`[x_t, \text{emb}(t)]`, followed by ``n_layers`` hidden layers (Linear, SiLU) of width
    ``hidden`` and a linear output layer.

    x: (N, dim), t: (N,) -> (N, dim).
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        n_layers: int = 3,
        time_embed_dim: int = 32,
    ) -> None:
        super().__init__()
        for name, value in [("dim", dim), ("hidden", hidden), ("n_layers", n_layers)]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.dim = dim
        self.time_embed_dim = time_embed_dim
        _check_embedding_dim(time_embed_dim)
        layers: list[nn.Module] = []
        width = dim + time_embed_dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"this MLP expects points of shape (N, {self.dim}), got {tuple(x.shape)}"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(
                f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}"
            )
        emb = timestep_embedding(t, self.time_embed_dim).to(x.dtype)
        return self.net(torch.cat([x, emb], dim=1))
