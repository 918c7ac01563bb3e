r"""The exponential moving average (EMA) of the weights that a diffusion model samples with.

Chapter 04, section "EMA". After every optimiser step
:math:`\theta_\text{EMA} \leftarrow d\,\theta_\text{EMA} + (1-d)\,\theta`; the average of the last
:math:`\approx 1/(1-d)` iterates is a smoother, better model than the last iterate (Ho et al. 2020
sample with d = 0.9999). :func:`ema_decay_at` warms the decay up so that the average forgets the
random initial weights quickly.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ema_decay_at", "ema_update"]


def ema_decay_at(update: int, ema_decay: float) -> float:
    r"""The EMA decay at update ``update`` (0 for the first): :math:`\min(\text{ema\_decay}, (1+t)/(10+t))`.

    The warm-up (as in TensorFlow's ``ExponentialMovingAverage(num_updates=...)``) lets the average
    forget the random initial weights quickly: 0.1 at the first update, 0.5 at t = 8, 0.9 at t = 80.
    """
    return min(ema_decay, (1 + update) / (10 + update))


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    r""":math:`\theta_\text{EMA} \leftarrow \text{decay}\cdot\theta_\text{EMA} + (1-\text{decay})\cdot\theta`
    for every parameter (in place, as a lerp); buffers are copied."""
    ema_params, params = list(ema_model.parameters()), list(model.parameters())
    if len(ema_params) != len(params):
        raise ValueError(
            f"the EMA model has {len(ema_params)} parameters but the model has {len(params)}"
        )
    torch._foreach_lerp_(
        ema_params, params, 1.0 - decay
    )  # one fused kernel over all tensors
    for ema_buffer, buffer in zip(ema_model.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)
