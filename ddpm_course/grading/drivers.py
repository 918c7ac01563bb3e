"""Drivers: procedures that call a student's function and return what it produced, for the
exercises graded by outcome (e.g. a few training steps, whose trained weights are judged).

An :class:`~ddpm_course.grading.exercise.Exercise` with ``driver="name"`` is run as
``DRIVERS["name"](student_fn, *case.args)`` instead of ``student_fn(*case.args)``; the outputs (a
tensor or a tuple of tensors, as many as the exercise's ``output_names``) go back to the grader,
which judges them with the exercise's ``judge``.

This module runs where the student's code runs: inside the grading sandbox (it is part of the
student view of the package, :mod:`~ddpm_course.grading.sandbox`) and inside ``check()``. It must
import ONLY the Python standard library and torch, never the package's maths (which would put the
answer key in the student's reach). ``tests/test_sandbox.py`` checks that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "DRIVERS",
    "call_with_driver",
    "TinyDenoiser",
    "tiny_denoiser",
    "train_tiny_denoiser",
    "TinyVelocity",
    "tiny_velocity",
    "train_tiny_flow",
    "in_place",
    "guided_ddim",
    "TinyVAE",
    "tiny_vae",
    "train_tiny_vae",
    "train_tiny_consistency",
]


# ------------------------------------------------------------- chapter 04: a training step
class TinyDenoiser(nn.Module):
    """An ε-predictor for 8×8 one-channel images: ``model(x_t, t) -> (N, 1, 8, 8)``.

    An MLP on the flattened x_t; t (N,) in {0, ..., T-1} enters as ``t / T`` through a small MLP
    whose output is added to the first hidden layer. ``model(x_t)`` (t left out) runs without any
    time input, so a step that forgets t trains a model that never learns when it is.
    """

    def __init__(self, num_timesteps: int, pixels: int = 64, hidden: int = 256) -> None:
        super().__init__()
        self.num_timesteps = num_timesteps
        # random Fourier features of t / T (Tancik et al. 2020), frequencies fixed from seed 0
        frequencies = torch.randn(16, generator=torch.Generator().manual_seed(0)) * 8.0
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.time = nn.Linear(32, hidden)
        self.inp = nn.Linear(pixels, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, pixels)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        h = self.inp(x.flatten(1))
        if t is not None:
            angles = (
                2
                * torch.pi
                * (t.to(x.dtype)[:, None] / self.num_timesteps)
                * self.frequencies
            )
            h = h + self.time(torch.cat([angles.sin(), angles.cos()], dim=1))
        return self.out(F.silu(self.mid(F.silu(h)))).view_as(x)


def tiny_denoiser(seed: int, num_timesteps: int) -> TinyDenoiser:
    """The :class:`TinyDenoiser` initialised from ``seed`` (without touching the global random state)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyDenoiser(num_timesteps)


def train_tiny_denoiser(training_step: Callable[..., Any], seed: int, images: torch.Tensor,
                        alphas_cumprod: torch.Tensor, steps: int, batch_size: int, lr: float):  # fmt: skip
    """Run ``training_step(model, optimizer, x0, alphas_cumprod, generator)`` ``steps`` times on
    random batches of ``images`` (N, 1, 8, 8), from a :func:`tiny_denoiser` of ``seed`` and Adam at
    ``lr``. Returns ``(weights, losses)``: the final parameters as one vector and the (steps,)
    losses that the step returned."""
    model = tiny_denoiser(seed, alphas_cumprod.shape[0])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)  # the step's t and noise
    batches = torch.Generator().manual_seed(seed + 1)  # which images each step sees
    losses = []
    for _ in range(steps):
        index = torch.randint(0, images.shape[0], (batch_size,), generator=batches)
        loss = training_step(model, optimizer, images[index], alphas_cumprod, generator)
        if loss is None:
            raise TypeError(
                "training_step returned None; return the loss (a 0-d tensor)"
            )
        losses.append(float(torch.as_tensor(loss).detach()))
    return nn.utils.parameters_to_vector(model.parameters()).detach(), torch.tensor(
        losses
    )


# ------------------------------------------------ chapter 09: a flow-matching loss, trained
class TinyVelocity(nn.Module):
    """A velocity model for 2-D points: ``model(x_s, s) -> (N, 2)``, s (N,) the flow time in [0, 1].

    An MLP on the point; s enters through fixed random Fourier features and a linear layer added
    to the first hidden layer. ``model(x_s)`` (s left out) runs without any time input, so a
    loss that forgets s trains a model that never learns when it is.
    """

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        frequencies = torch.randn(8, generator=torch.Generator().manual_seed(0)) * 4.0
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.time = nn.Linear(16, hidden)
        self.inp = nn.Linear(2, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        h = self.inp(x)
        if s is not None:
            s = torch.as_tensor(s, dtype=x.dtype, device=x.device).reshape(-1)
            angles = 2 * torch.pi * s.expand(x.shape[0])[:, None] * self.frequencies
            h = h + self.time(torch.cat([angles.sin(), angles.cos()], dim=1))
        return self.out(F.silu(self.mid(F.silu(h))))


def tiny_velocity(seed: int) -> TinyVelocity:
    """The :class:`TinyVelocity` initialised from ``seed`` (without touching the global random state)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyVelocity()


def train_tiny_flow(flow_matching_loss: Callable[..., Any], seed: int, points: torch.Tensor,
                    steps: int, batch_size: int, lr: float):  # fmt: skip
    """Train a :func:`tiny_velocity` of ``seed`` with Adam at ``lr`` for ``steps`` steps, each on
    ``flow_matching_loss(model, x0, noise, s)``: x0 a random batch of ``points`` (N, 2), noise
    ~ N(0, I) and s ~ U(0, 1) (batch_size,), drawn here. Returns ``(weights, losses, probe)``:
    the final parameters as one vector, the (steps,) losses, and the loss on the fixed inputs of
    :func:`flow_probe` (its first batch, its second, its first again: (3,))."""
    model = tiny_velocity(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)  # the noise and the times
    batches = torch.Generator().manual_seed(seed + 1)  # which points each step sees
    losses = []
    for _ in range(steps):
        index = torch.randint(0, points.shape[0], (batch_size,), generator=batches)
        x0 = points[index]
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        s = torch.rand(batch_size, generator=generator, dtype=x0.dtype)
        loss = flow_matching_loss(model, x0, noise, s)
        if not torch.is_tensor(loss) or loss.ndim != 0:
            raise TypeError(
                "flow_matching_loss must return the loss as a 0-d tensor (a mean), got "
                f"{type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}"
            )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    probe_model, (first, second) = flow_probe(seed, points)
    probe = torch.stack([
        torch.as_tensor(flow_matching_loss(probe_model, *[v.clone() for v in batch])).detach()
        for batch in (first, second, first)
    ]).reshape(-1)  # fmt: skip
    weights = nn.utils.parameters_to_vector(model.parameters()).detach()
    return weights, torch.tensor(losses), probe


def flow_probe(seed: int, points: torch.Tensor):
    """Fixed inputs on which a flow-matching loss is evaluated after training, so that the judge
    can compare it with the reference loss on the same noise and times: an untrained
    :func:`tiny_velocity` of ``seed`` and two batches ``(x0, noise, s)`` of 8 points."""
    generator = torch.Generator().manual_seed(seed + 2)
    batches = []
    for _ in range(2):
        x0 = points[torch.randint(0, points.shape[0], (8,), generator=generator)]
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        batches.append((x0, noise, torch.rand(8, generator=generator, dtype=x0.dtype)))
    return tiny_velocity(seed), batches


def in_place(fn: Callable[..., Any], target: torch.Tensor, *args: Any) -> torch.Tensor:
    """Call ``fn(target, *args)`` and return ``target`` itself: graded by what ``fn`` did to its
    first argument in place (its return value is not looked at)."""
    fn(target, *args)
    return target


# ------------------------------------------------------- chapter 06: a guided noise prediction
def guided_ddim(guided_eps: Callable[..., Any], model: Any, classifier: Any,
                alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, x_T: torch.Tensor,
                labels: torch.Tensor, scale: float) -> torch.Tensor:  # fmt: skip
    """DDIM (η = 0, x̂0 clipped to [-1, 1]) from ``x_T`` over the visited ``timesteps``
    (noisiest first), with the noise prediction of every step given by
    ``guided_eps(model, classifier, x_t, t, labels, scale, alpha_bar_t)`` (t: (N,) int64,
    alpha_bar_t: a float). Returns the samples like ``x_T``."""
    x = x_T
    visited = [int(step) for step in timesteps]
    for k, step in enumerate(visited):
        alpha_bar = float(alphas_cumprod[step])
        alpha_bar_prev = (
            float(alphas_cumprod[visited[k + 1]]) if k + 1 < len(visited) else 1.0
        )
        t = torch.full((x.shape[0],), step, dtype=torch.long)
        eps = guided_eps(model, classifier, x, t, labels, scale, alpha_bar)
        if not torch.is_tensor(eps) or eps.shape != x.shape:
            raise TypeError(
                f"classifier_guidance_eps returned {type(eps).__name__} "
                f"{tuple(getattr(eps, 'shape', ()))}; return a tensor shaped like x_t"
            )
        eps = eps.detach().to(x.dtype)
        x0 = ((x - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5).clamp(-1, 1)
        eps = (x - alpha_bar**0.5 * x0) / (1 - alpha_bar) ** 0.5
        x = alpha_bar_prev**0.5 * x0 + (1 - alpha_bar_prev) ** 0.5 * eps
    return x


# ----------------------------------------------------------- chapter 07: a VAE training step
class TinyVAE(nn.Module):
    """A variational autoencoder of 8×8 one-channel images with a 4-d latent (MLPs).

    ``vae.encode(x) -> (mean, logvar)``, each (N, 4), the encoder's Gaussian q(z|x);
    ``vae.decode(z) -> (N, 1, 8, 8)``, the decoder's mean.
    """

    latent_dim = 4

    def __init__(self, pixels: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(pixels, hidden), nn.SiLU(), nn.Linear(hidden, 2 * self.latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(self.latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, pixels)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x.flatten(1)).chunk(2, dim=1)
        return mean, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, 1, 8, 8)


def tiny_vae(seed: int) -> TinyVAE:
    """The :class:`TinyVAE` initialised from ``seed`` (without touching the global random state)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyVAE()


def train_tiny_vae(training_step: Callable[..., Any], seed: int, images: torch.Tensor,
                   kl_weight: float, steps: int, batch_size: int, lr: float):  # fmt: skip
    """Run ``training_step(vae, optimizer, x, kl_weight, generator)`` ``steps`` times on random
    batches of ``images`` (N, 1, 8, 8), from a :func:`tiny_vae` of ``seed`` and Adam at ``lr``.
    Returns ``(weights, losses)``: the final parameters as one vector and the (steps,) losses
    that the step returned."""
    vae = tiny_vae(seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)  # the step's noise
    batches = torch.Generator().manual_seed(seed + 1)  # which images each step sees
    losses = []
    for _ in range(steps):
        index = torch.randint(0, images.shape[0], (batch_size,), generator=batches)
        loss = training_step(vae, optimizer, images[index], kl_weight, generator)
        if loss is None:
            raise TypeError(
                "vae_training_step returned None; return the loss (a 0-d tensor)"
            )
        losses.append(float(torch.as_tensor(loss).detach()))
    weights = nn.utils.parameters_to_vector(vae.parameters()).detach()
    return weights, torch.tensor(losses)


# ------------------------------------------- chapter 10: a consistency-distillation loss, trained
class _GradientProbe(nn.Module):
    """Calls ``model`` and counts the rows of its outputs that the loss's gradient reaches."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows_reached = 0

    def forward(self, x: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model(x, s)
        if out.requires_grad:
            out.register_hook(self._count)
        return out

    def _count(self, grad: torch.Tensor) -> None:
        self.rows_reached += int((grad.reshape(grad.shape[0], -1) != 0).any(1).sum())


def train_tiny_consistency(consistency_loss: Callable[..., Any], seed: int, teacher: Any,
                           points: torch.Tensor, steps: int, batch_size: int, lr: float,
                           num_steps: int):  # fmt: skip
    """Train a :func:`tiny_velocity` F of ``seed`` as a consistency model f(x, s) = x - s F(x, s)
    with Adam at ``lr`` (decayed to 0 on a cosine) for ``steps`` steps, each on
    ``consistency_loss(model, teacher, x0, noise, s, h)``: x0 a random batch of ``points``
    (N, 2), noise ~ N(0, I), h = 1 / num_steps and s (batch_size,) drawn uniformly from the grid
    {h, 2h, ..., 1}. Returns ``(weights, losses, gradient_rows)``: the final parameters as one
    vector, the (steps,) losses, and, from one more batch after training, how many rows of the
    model's outputs the loss's gradient reached per example (1 when only the online point's
    output carries gradient, 2 when the target's does too)."""
    model = tiny_velocity(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(seed)  # the noise and the times
    batches = torch.Generator().manual_seed(seed + 1)  # which points each step sees
    h = 1.0 / num_steps

    def batch_loss(network: nn.Module) -> torch.Tensor:
        index = torch.randint(0, points.shape[0], (batch_size,), generator=batches)
        x0 = points[index]
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        grid = torch.randint(1, num_steps + 1, (batch_size,), generator=generator)
        loss = consistency_loss(network, teacher, x0, noise, grid.to(x0.dtype) * h, h)
        if not torch.is_tensor(loss) or loss.ndim != 0:
            raise TypeError(
                "consistency_loss must return the loss as a 0-d tensor (a mean), got "
                f"{type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}"
            )
        return loss

    losses = []
    for _ in range(steps):
        loss = batch_loss(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    probe = _GradientProbe(model)
    probe_loss = batch_loss(probe)
    if probe_loss.requires_grad:
        probe_loss.backward()
    optimizer.zero_grad()
    return (
        nn.utils.parameters_to_vector(model.parameters()).detach(),
        torch.tensor(losses),
        torch.tensor(probe.rows_reached / batch_size),
    )


DRIVERS: dict[str, Callable[..., Any]] = {
    "train_tiny_denoiser": train_tiny_denoiser,
    "train_tiny_flow": train_tiny_flow,
    "in_place": in_place,
    "guided_ddim": guided_ddim,
    "train_tiny_vae": train_tiny_vae,
    "train_tiny_consistency": train_tiny_consistency,
}


def call_with_driver(driver: str | None, fn: Callable[..., Any], args: tuple) -> Any:
    """``DRIVERS[driver](fn, *args)``, or ``fn(*args)`` when ``driver`` is None."""
    if driver is None:
        return fn(*args)
    if driver not in DRIVERS:
        raise KeyError(
            f"there is no grading driver called {driver!r}; the drivers are {sorted(DRIVERS)}"
        )
    return DRIVERS[driver](fn, *args)
