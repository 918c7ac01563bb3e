"""Small helpers shared by several modules: argument checks, per-timestep lookups, and the
samplers' float64 coefficients, first state and model device (chapters 05 and 09)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def check_choice(what: str, value: str, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise a ``ValueError`` naming them all."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(
            f"unknown {what} {value!r}; choose one of {', '.join(map(repr, allowed))}"
        )
    return value


def check_timesteps(
    t: torch.Tensor, num_timesteps: int, batch_size: int | None = None
) -> torch.Tensor:
    """Validate discrete timesteps ``t``: integers in {0, ..., T-1}, shape (N,) or a scalar.

    A scalar is broadcast to ``batch_size`` when that is given. Returns an int64 tensor. Values are
    range-checked for CPU tensors only (checking CUDA tensors would synchronise the device).
    """
    t = torch.as_tensor(t)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise ValueError(
            f"timesteps must be integers in {{0, ..., {num_timesteps - 1}}}, got dtype {t.dtype}"
        )
    if t.ndim > 1:
        raise ValueError(
            f"timesteps must be a scalar or have shape (N,), got shape {tuple(t.shape)}"
        )
    # the range check reads values back, which would stall a GPU on every step: done on the CPU only
    if (
        t.numel()
        and t.device.type == "cpu"
        and (int(t.min()) < 0 or int(t.max()) >= num_timesteps)
    ):
        raise ValueError(
            f"timesteps must lie in {{0, ..., {num_timesteps - 1}}} (T = {num_timesteps}); "
            f"got values from {int(t.min())} to {int(t.max())}"
        )
    t = t.long()
    if batch_size is not None:
        if t.ndim == 0:
            t = t.expand(batch_size)
        elif t.shape[0] != batch_size:
            raise ValueError(
                f"got {t.shape[0]} timesteps for a batch of {batch_size}; give one per example"
            )
    return t


def extract(table: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Pick ``table[t]`` per example and shape it to broadcast against ``x``.

    table: (T,) float64 schedule quantity; t: (N,) int64; x: (N, ...) -> (N, 1, ..., 1) in x's dtype.
    """
    values = table.to(device=t.device)[t].to(dtype=x.dtype, device=x.device)
    return values.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def check_class_labels(
    labels: torch.Tensor,
    num_classes: int,
    batch_size: int | None = None,
    null: bool = True,
    what: str = "class labels",
) -> torch.Tensor:
    """Validate class labels: integers in {0, ..., num_classes - 1}, or ``num_classes`` (the null
    class of classifier-free guidance) when ``null``; shape (N,), N = ``batch_size`` when given.
    Returns an int64 tensor. The one place a label's range is checked (the U-Net, the sample
    command, latent sampling, the CFG wrapper, the prompt labels of the cross-attention U-Net).
    """
    labels = torch.as_tensor(labels)
    if (
        labels.ndim != 1
        or (batch_size is not None and labels.shape[0] != batch_size)
        or labels.dtype.is_floating_point
        or labels.dtype == torch.bool
    ):
        size = "N" if batch_size is None else batch_size
        raise ValueError(
            f"y must hold ({size},) integer {what}, got shape {tuple(labels.shape)} "
            f"and dtype {labels.dtype}"
        )
    top = num_classes if null else num_classes - 1
    if (
        labels.numel()
        and not torch.compiler.is_compiling()
        and bool(((labels < 0) | (labels > top)).any())
    ):
        allowed = (
            f"{{0, ..., {top}}} ({num_classes} is the null class)"
            if null
            else f"0..{top} (the model's {num_classes} classes, without the null class)"
        )
        raise ValueError(
            f"{what} must lie in {allowed}; got values from {int(labels.min())} to "
            f"{int(labels.max())}"
        )
    return labels.long()


# ------------------------------------------------------- shared by the samplers (05, 09)
def float64_on(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A schedule value (float or tensor) as a float64 tensor on ``like``'s device."""
    return torch.as_tensor(value, dtype=torch.float64, device=like.device)


def cast_like(coefficient: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A float64 coefficient in ``like``'s dtype, to multiply it."""
    return coefficient.to(dtype=like.dtype)


def initial_noise(
    shape,
    x_init: torch.Tensor | None,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
    scale: float = 1.0,
    name: str = "x_T",
) -> torch.Tensor:
    """A sampler's first state: ``x_init`` as given (its argument called ``name``), or ``scale``
    times N(0, I) of ``shape`` drawn with ``generator`` (on its device unless ``device``)."""
    if (
        not isinstance(shape, (tuple, list, torch.Size))
        or len(shape) < 2
        or not all(isinstance(n, int) and n >= 1 for n in shape)
    ):
        raise ValueError(
            f"shape must be a tuple of positive ints (N, C, ...), got {shape!r}"
        )
    if x_init is not None:
        if tuple(x_init.shape) != tuple(shape):
            raise ValueError(
                f"{name} has shape {tuple(x_init.shape)} but shape {tuple(shape)} was asked for"
            )
        return x_init.to(device=device, dtype=dtype)
    if generator is not None and device is None:
        device = generator.device
    noise = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    return noise if scale == 1.0 else scale * noise


def model_device(model) -> torch.device | None:
    """The device of a module's first parameter; None for a parameterless callable."""
    if isinstance(model, torch.nn.Module):
        for tensor in model.parameters():
            return tensor.device
    return None
