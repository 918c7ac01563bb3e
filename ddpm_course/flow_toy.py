r"""Chapter 09's 2-D measures: exact velocity fields and distances where the answer is known.

Chapter 09 (Flow matching & EDM) trains flow and VP models on 2-D points, where what a model
should learn is known in closed form: the marginal velocity of Gaussian-mixture data
(:func:`gaussian_mixture_velocity`). :func:`train_toy_model` is the one training loop of a flow
or a VP model of points; :func:`path_straightness` and :func:`sliced_wasserstein` measure the
sampling paths and the samples. The paths, objectives and samplers are :mod:`ddpm_course.flow`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .flow import Coefficient
from .score import _draw_batch

__all__ = [
    "gaussian_mixture_velocity",
    "train_toy_model",
    "path_straightness",
    "sliced_wasserstein",
]


def gaussian_mixture_velocity(
    x: torch.Tensor,
    s: Coefficient,
    means: torch.Tensor,
    covariances: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The exact marginal velocity :math:`u^*(x, s) = \mathbb E[\epsilon - x_0 \mid x_s = x]` of the
    flow path when the data are a Gaussian mixture :math:`\sum_k w_k\,\mathcal N(\mu_k, C_k)`.

    Given the component k, :math:`(x_s, \epsilon - x_0)` is jointly Gaussian:
    :math:`x_s \sim \mathcal N\big((1-s)\mu_k,\ S_k\big)` with :math:`S_k = (1-s)^2 C_k + s^2 I`, and
    :math:`\operatorname{Cov}(\epsilon - x_0, x_s) = sI - (1-s)C_k`, so by Gaussian conditioning

    .. math:: u^*(x, s) = \sum_k r_k(x)\Big[\big(sI - (1-s)C_k\big)S_k^{-1}\big(x - (1-s)\mu_k\big)
       - \mu_k\Big],

    with :math:`r_k(x) \propto w_k\,\mathcal N(x; (1-s)\mu_k, S_k)` the responsibilities. One
    component (K = 1) gives the affine field of Gaussian data. This is the field that the
    flow-matching loss is minimised by (Lipman et al. 2023, Theorem 2), what a trained model
    approximates.

    x: (N, D); s: a float or (N,) in [0, 1]; means: (K, D); covariances: (K, D, D) symmetric
    positive definite; weights: (K,) positive (normalised here; None: equal). Computed in float64,
    returned in x's dtype.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be points of shape (N, D), got {tuple(x.shape)}")
    means = torch.as_tensor(means, dtype=torch.float64, device=x.device)
    covariances = torch.as_tensor(covariances, dtype=torch.float64, device=x.device)
    n_components, dim = means.shape if means.ndim == 2 else (0, 0)
    if means.ndim != 2 or dim != x.shape[1]:
        raise ValueError(
            f"means must have shape (K, {x.shape[1]}) for points of dimension "
            f"{x.shape[1]}, got {tuple(means.shape)}"
        )
    if covariances.shape != (n_components, dim, dim):
        raise ValueError(
            f"covariances must have shape ({n_components}, {dim}, {dim}), one (D, D) matrix "
            f"per mean, got {tuple(covariances.shape)}"
        )
    if weights is None:
        weights = torch.ones(n_components, dtype=torch.float64, device=x.device)
    weights = torch.as_tensor(weights, dtype=torch.float64, device=x.device)
    if weights.shape != (n_components,) or not bool((weights > 0).all()):
        raise ValueError(
            f"weights must be {n_components} positive numbers, one per mean, got {weights}"
        )
    s = torch.as_tensor(s, dtype=torch.float64, device=x.device).reshape(-1)
    s = s.expand(x.shape[0]).reshape(-1, 1, 1, 1)  # (N, 1, 1, 1) against (N, K, D, D)
    if bool((s < 0).any()) or bool((s > 1).any()):
        raise ValueError("s must lie in [0, 1] (s = 0 is the data, s = 1 pure noise)")
    points = x.to(torch.float64)
    identity = torch.eye(dim, dtype=torch.float64, device=x.device)
    marginal_cov = (1 - s) ** 2 * covariances + s**2 * identity  # S_k: (N, K, D, D)
    cross_cov = s * identity - (1 - s) * covariances  # (N, K, D, D)
    centred = points[:, None, :] - (1 - s[..., 0]) * means  # x - (1-s)μ_k: (N, K, D)
    solved = torch.linalg.solve(marginal_cov, centred[..., None])[..., 0]
    velocities = (cross_cov @ solved[..., None])[..., 0] - means  # (N, K, D)
    log_density = -0.5 * (
        (centred * solved).sum(-1)
        + torch.logdet(marginal_cov)
        + dim * math.log(2 * math.pi)
    )
    responsibilities = torch.softmax(
        torch.log(weights / weights.sum()) + log_density, dim=1
    )
    return (responsibilities[..., None] * velocities).sum(1).to(x.dtype)


def train_toy_model(
    model: torch.nn.Module,
    process: Any,
    data: torch.Tensor | Callable[..., torch.Tensor],
    steps: int = 1500,
    lr: float = 2e-3,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> list[float]:
    r"""Train a model of low-dimensional points (e.g. :class:`~ddpm_course.mlp.MLP2D`) on the
    loss of ``process``: a :class:`~ddpm_course.flow.FlowMatching` (the velocity loss) or a
    :class:`~ddpm_course.diffusion.GaussianDiffusion` (its ε, x0 or v loss), the same loop for
    both, so that two objectives compare on equal terms.

    Each step draws ``batch_size`` points (rows of a tensor ``data`` (M, D) with replacement, or
    ``data(batch_size, generator=generator)``), then ``process.training_losses(model, x0,
    generator=generator)`` draws t and the noise, and Adam takes one step; the learning rate
    decays from ``lr`` to 0 on a cosine. Everything random comes from ``generator`` (CPU).
    Returns the loss of every step; the model is left in eval mode.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not lr > 0 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"lr must be > 0 and batch_size a positive integer, got lr={lr}, "
            f"batch_size={batch_size!r}"
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    losses = []
    for _ in range(steps):
        x0 = _draw_batch(data, batch_size, generator, torch.device("cpu"))
        loss = process.training_losses(model, x0, generator=generator)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def path_straightness(trajectory: torch.Tensor) -> torch.Tensor:
    r"""How straight each path of a sampler is: the distance from its start to its end over the
    length of the polygon through its states,

    .. math:: S = \frac{\|x_K - x_0\|}{\sum_{k<K} \|x_{k+1} - x_k\|} \in [0, 1],

    1 for a straight path travelled in one direction; an arc of angle θ gives
    :math:`2\sin(\theta/2)/\theta`. It does not depend on how the time is parameterised, so it
    compares samplers in different coordinates (Liu et al. 2023 measure straightness through
    the velocity instead). trajectory: (K + 1, N, ...) (e.g. ``return_trajectory=True``) -> (N,)
    float64; a path that never moves gets 1.
    """
    if trajectory.ndim < 2 or trajectory.shape[0] < 2:
        raise ValueError(
            "trajectory must have shape (K + 1, N, ...) with at least two states, got "
            f"{tuple(trajectory.shape)}"
        )
    path = trajectory.to(torch.float64).flatten(2)
    length = (path[1:] - path[:-1]).norm(dim=-1).sum(0)
    chord = (path[-1] - path[0]).norm(dim=-1)
    return torch.where(length > 0, chord / length.clamp_min(1e-300), 1.0)


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    n_directions: int = 256,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""The sliced Wasserstein-1 distance between two equal-sized samples (Rabin et al. 2011):

    .. math:: \mathrm{SW}_1(x, y) = \mathbb E_\theta\,\Big[\tfrac1N \sum_i \big|\,(\theta^\top x)_{(i)}
       - (\theta^\top y)_{(i)}\big|\Big],

    the average over random unit directions θ of the 1-D Wasserstein distance of the projections,
    which for two samples of N points is the mean gap between their sorted values. For y = x + δ
    it is :math:`\|\delta\|\,\mathbb E|\cos\angle(\theta, \delta)|` (2/π of it in 2-D). Cheap and
    exact in 1-D, it measures how far samples of a 2-D model are from the data.

    x, y: (N, D); directions drawn with ``generator`` (a fixed default seed 0 when None, so that
    the same samples give the same number). Returns a 0-d float64 tensor.
    """
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(
            f"x and y must be samples of the same shape (N, D), got {tuple(x.shape)} and "
            f"{tuple(y.shape)}; draw as many points of each"
        )
    if not isinstance(n_directions, int) or n_directions < 1:
        raise ValueError(
            f"n_directions must be a positive integer, got {n_directions!r}"
        )
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    directions = torch.randn(
        x.shape[1], n_directions, generator=generator, dtype=torch.float64
    )
    directions = (directions / directions.norm(dim=0)).to(x.device)
    projected_x = (x.to(torch.float64) @ directions).sort(dim=0).values
    projected_y = (y.to(torch.float64) @ directions).sort(dim=0).values
    return (projected_x - projected_y).abs().mean()
