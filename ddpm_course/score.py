r"""Scores, score matching and Langevin dynamics.

Chapter 02 (Score matching & Langevin). The score of a density p is :math:`\nabla_x \log p(x)`.
It does not depend on p's normalising constant, it can be learned from samples of p (score
matching), and Langevin dynamics turns it back into samples:

* analytic scores of a Gaussian (:func:`gaussian_score`) and of an isotropic Gaussian mixture
  (:class:`GaussianMixture`, :func:`mixture_score`), including the exact score of the mixture
  convolved with :math:`\mathcal N(0, \sigma^2 I)` (:meth:`GaussianMixture.noised`), and the
  exact noise predictor of Gaussian data that chapters 03 and 05 test samplers against
  (:func:`gaussian_optimal_eps`, :func:`gaussian_eps_model`);
* Langevin dynamics :math:`x \leftarrow x + \epsilon \nabla_x \log p(x) + \sqrt{2\epsilon}\,z`
  (:func:`langevin_step`, :func:`langevin_sample`) and its annealed version (Algorithm 1 of
  Song & Ermon 2019, :func:`annealed_langevin`);
* the three score-matching objectives: explicit, implicit (Hyvärinen 2005) and denoising
  (Vincent 2011), and a small noise-conditional :class:`ScoreMLP` trained by denoising score
  matching (:func:`train_score_model`).

Shapes: points are (N, D) tensors; a noise level ``sigma`` is a float or an (N,) tensor (one per
point); a ``score_fn`` maps (N, D) points (and a noise level, where it takes one) to (N, D) scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = [
    "gaussian_score",
    "GaussianMixture",
    "mixture_score",
    "gaussian_optimal_eps",
    "gaussian_eps_model",
    "langevin_step",
    "langevin_sample",
    "annealed_langevin",
    "dsm_loss",
    "explicit_score_matching_loss",
    "implicit_score_matching_loss",
    "ScoreMLP",
    "train_score_model",
    "geometric_sigmas",
]

ScoreFn = Callable[..., torch.Tensor]


def _check_points(x: torch.Tensor, dim: int | None = None, what: str = "x") -> None:
    if x.ndim != 2:
        raise ValueError(
            f"{what} must be a batch of points of shape (N, D), got shape {tuple(x.shape)}"
        )
    if dim is not None and x.shape[1] != dim:
        raise ValueError(
            f"{what} has points of dimension {x.shape[1]} but the distribution has dimension {dim}"
        )


def _check_same_shape(
    a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str
) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b} has shape {tuple(b.shape)} but {name_a} has shape {tuple(a.shape)}; they must match"
        )


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _check_decreasing_sigmas(sigmas: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``sigmas`` as a (L,) float64 tensor, checked to be positive and strictly decreasing."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    if sigmas.ndim != 1 or sigmas.numel() == 0:
        raise ValueError(
            f"sigmas must be a non-empty 1-D sequence, got shape {tuple(sigmas.shape)}"
        )
    if not bool((sigmas > 0).all()):
        raise ValueError(f"sigmas must all be > 0, got {sigmas.tolist()}")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError(
            f"sigmas must be strictly decreasing (largest noise first), got {sigmas.tolist()}"
        )
    return sigmas


def _sigma_column(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A noise level (float, 0-d or (N,) tensor) as a 0-d or (N, 1) tensor, checked to be > 0.

    The result broadcasts against x (N, D).
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 1 and sigma.shape[0] == x.shape[0]:
        sigma = sigma[:, None]
    elif sigma.ndim != 0:
        raise ValueError(
            f"sigma must be a float or an (N,) tensor with N = {x.shape[0]}, got shape {tuple(sigma.shape)}"
        )
    if not bool((sigma > 0).all()):
        raise ValueError("sigma must be > 0")
    return sigma


# ------------------------------------------------------------------------- analytic scores
def gaussian_score(
    x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor
) -> torch.Tensor:
    r"""Score of a Gaussian: :math:`\nabla_x \log \mathcal N(x; \mu, \Sigma) = -\Sigma^{-1}(x - \mu)`.

    x: (N, D); mean: (D,); cov: (D, D) symmetric positive definite. Returns (N, D).
    """
    x = torch.as_tensor(x)
    _check_points(x)
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
    cov = torch.as_tensor(cov, dtype=x.dtype, device=x.device)
    dim = x.shape[1]
    if mean.shape != (dim,):
        raise ValueError(
            f"mean must have shape ({dim},) to match x of shape {tuple(x.shape)}, got {tuple(mean.shape)}"
        )
    if cov.shape != (dim, dim):
        raise ValueError(
            f"cov must have shape ({dim}, {dim}) to match x of shape {tuple(x.shape)}, got {tuple(cov.shape)}"
        )
    return -torch.linalg.solve(cov, (x - mean).T).T


class GaussianMixture:
    r"""A mixture of isotropic Gaussians :math:`p(x) = \sum_k w_k\, \mathcal N(x; \mu_k, s_k^2 I)`.

    means: (K, D); stds: (K,) positive; weights: (K,) positive (normalised here to sum to one).
    Methods take points x: (N, D) and compute in x's dtype and on x's device.
    """

    def __init__(
        self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor
    ) -> None:
        means = torch.as_tensor(means)
        if not means.dtype.is_floating_point:
            means = means.to(torch.get_default_dtype())
        stds = torch.as_tensor(stds, dtype=means.dtype, device=means.device)
        weights = torch.as_tensor(weights, dtype=means.dtype, device=means.device)
        if means.ndim != 2:
            raise ValueError(
                f"means must have shape (K, D), got shape {tuple(means.shape)}"
            )
        n_components = means.shape[0]
        if stds.shape != (n_components,) or weights.shape != (n_components,):
            raise ValueError(
                f"stds and weights must have shape ({n_components},), one per mean, "
                f"got {tuple(stds.shape)} and {tuple(weights.shape)}"
            )
        if not bool((stds > 0).all()):
            raise ValueError(f"stds must all be > 0, got {stds.tolist()}")
        if not bool((weights > 0).all()):
            raise ValueError(f"weights must all be > 0, got {weights.tolist()}")
        self.means = means
        self.stds = stds
        self.weights = weights / weights.sum()

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, D={self.dim})"

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _component_log_probs(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r""":math:`\log w_k + \log \mathcal N(x; \mu_k, s_k^2 I)`: (N, K).

        Also returns the means (K, D) and variances (K,) in x's dtype and on x's device.
        """
        _check_points(x, self.dim)
        means = self.means.to(dtype=x.dtype, device=x.device)
        variances = self.stds.to(dtype=x.dtype, device=x.device) ** 2
        log_weights = torch.log(self.weights.to(dtype=x.dtype, device=x.device))
        squared_distances = ((x[:, None, :] - means[None]) ** 2).sum(dim=-1)
        log_normal = -0.5 * self.dim * torch.log(
            2 * math.pi * variances
        ) - squared_distances / (2 * variances)
        return log_weights + log_normal, means, variances

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r"""Log-density (N, D) -> (N,):
        :math:`\log p(x) = \operatorname{logsumexp}_k\,[\log w_k + \log \mathcal N(x; \mu_k, s_k^2 I)]`."""
        component_log_probs, _, _ = self._component_log_probs(x)
        return torch.logsumexp(component_log_probs, dim=1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        r"""The exact score (N, D) -> (N, D):
        :math:`\nabla_x \log p(x) = \sum_k r_k(x)\,(\mu_k - x)/s_k^2`.

        :math:`r_k(x) = p(k \mid x)` are the responsibilities, a softmax over the component
        log-probabilities, so far from every mean nothing under- or overflows.
        """
        component_log_probs, means, variances = self._component_log_probs(x)
        responsibilities = torch.softmax(component_log_probs, dim=1)
        component_scores = (means[None] - x[:, None, :]) / variances[None, :, None]
        return (responsibilities[..., None] * component_scores).sum(dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` points (n, D): a component k with probability w_k, then a draw from N(mu_k, s_k^2 I)."""
        device = self.means.device
        components = torch.multinomial(
            self.weights, n, replacement=True, generator=generator
        )
        noise = torch.randn(
            (n, self.dim), generator=generator, dtype=self.means.dtype, device=device
        )
        return self.means[components] + self.stds[components, None] * noise

    def noised(self, sigma: float) -> GaussianMixture:
        r"""The law of :math:`x + \sigma z`, x from the mixture and z ~ N(0, I): the same mixture with
        stds :math:`\sqrt{s_k^2 + \sigma^2}` (a Gaussian convolved with a Gaussian adds the variances).

        Its :meth:`score` is the exact noise-conditional score :math:`\nabla \log q_\sigma`.
        """
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        return GaussianMixture(
            self.means, torch.sqrt(self.stds**2 + sigma**2), self.weights
        )


def mixture_score(
    x: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    r"""Score of the isotropic mixture :math:`\sum_k w_k \mathcal N(\mu_k, s_k^2 I)`: (N, D) -> (N, D).

    means: (K, D), stds: (K,), weights: (K,).
    Same as ``GaussianMixture(means, stds, weights).score(x)``.
    """
    return GaussianMixture(means, stds, weights).score(x)


def gaussian_optimal_eps(
    x_t: torch.Tensor,
    alpha_bar: torch.Tensor | float,
    mean: float = 0.0,
    std: float = 1.0,
) -> torch.Tensor:
    r"""The best possible noise predictor for data :math:`x_0 \sim \mathcal N(\mu, \sigma^2)`
    (each coordinate independently), :math:`\mathbb E[\epsilon \mid x_t]` with
    :math:`x_t = \sqrt{\bar\alpha}\,x_0 + \sqrt{1 - \bar\alpha}\,\epsilon` (chapter 03):

    .. math::
        \epsilon^*(x_t) = \frac{\sqrt{1 - \bar\alpha}\,(x_t - \sqrt{\bar\alpha}\,\mu)}
        {\bar\alpha\sigma^2 + 1 - \bar\alpha}
        = -\sqrt{1 - \bar\alpha}\,\nabla_{x_t} \log q(x_t),

    the regression line of ε on :math:`x_t` (they are jointly Gaussian), whose mean squared
    error :math:`\bar\alpha\sigma^2 / (\bar\alpha\sigma^2 + 1 - \bar\alpha)` no network
    can beat. x_t: any shape; alpha_bar: a float or a tensor broadcastable against x_t, in
    [0, 1]. Computed in the wider of the two dtypes (a Python float counts as float64),
    returned in x_t's dtype.
    """
    if not std > 0:
        raise ValueError(f"std, the data's standard deviation, must be > 0, got {std}")
    if not torch.is_tensor(alpha_bar):  # a Python float keeps its float64 digits
        alpha_bar = torch.tensor(float(alpha_bar), dtype=torch.float64)
    alpha_bar = alpha_bar.to(x_t.device)
    if not alpha_bar.is_floating_point():
        raise ValueError(f"alpha_bar must be a float, got dtype {alpha_bar.dtype}")
    if bool(((alpha_bar < 0) | (alpha_bar > 1)).any()):
        raise ValueError(
            "alpha_bar must lie in [0, 1] (a cumulative product of alphas)"
        )
    dtype = torch.promote_types(alpha_bar.dtype, x_t.dtype)
    alpha_bar, x = alpha_bar.to(dtype), x_t.to(dtype)
    eps = (
        (1 - alpha_bar).sqrt()
        * (x - alpha_bar.sqrt() * mean)
        / (alpha_bar * std**2 + 1 - alpha_bar)
    )
    return eps.to(x_t.dtype)


def gaussian_eps_model(
    alphas_cumprod: torch.Tensor, mean: float = 0.0, std: float = 1.0
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    r"""``model(x_t, t) ->`` :func:`gaussian_optimal_eps` at :math:`\bar\alpha_t` =
    ``alphas_cumprod[t]`` (one t per example; x_t: (N, ...), t: (N,) int64): the exact noise
    predictor of :math:`\mathcal N(\mu, \sigma^2)` data, a model that every sampler accepts,
    so that a sampler's own error can be measured apart from a network's."""
    table = torch.as_tensor(alphas_cumprod)

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = table.to(x_t.device)[t].reshape(-1, *[1] * (x_t.ndim - 1))
        return gaussian_optimal_eps(x_t, alpha_bar, mean, std)

    return model


# ------------------------------------------------------------------------- Langevin dynamics
def langevin_step(
    x: torch.Tensor, score: torch.Tensor, step_size: float, noise: torch.Tensor
) -> torch.Tensor:
    r"""One step of the unadjusted Langevin algorithm:
    :math:`x' = x + \epsilon\,\nabla_x \log p(x) + \sqrt{2\epsilon}\,z`.

    x, score (the tensor :math:`\nabla_x \log p(x)`) and noise z ~ N(0, I): all the same shape;
    step_size: ε > 0. Song & Ermon 2019 write the same step with α = 2ε:
    :math:`x + \tfrac{\alpha}{2}\nabla \log p + \sqrt{\alpha}\,z`.
    """
    _check_positive("step_size", step_size)
    _check_same_shape(x, score, "x", "score")
    _check_same_shape(x, noise, "x", "noise")
    return x + step_size * score + math.sqrt(2 * step_size) * noise


def langevin_sample(
    score_fn: ScoreFn,
    x_init: torch.Tensor,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    progress: bool = False,
    return_path: bool = False,
):
    r"""Run ``n_steps`` of :func:`langevin_step` from ``x_init`` with the score ``score_fn(x) -> (N, D)``.

    For a small step and many steps the points are distributed close to p. The step adds an
    O(ε) bias: for :math:`\mathcal N(0, s^2)` the chain's stationary variance is
    :math:`s^2/(1 - \epsilon/2s^2)`.
    ``score_fn`` runs with autograd on (it may use it); its output is detached. Returns the final
    points, or ``(points, path)`` with ``path`` (n_steps + 1, N, D) on the CPU, ``path[0] = x_init``.
    """
    _check_positive("step_size", step_size)
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 0:
        raise ValueError(f"n_steps must be a non-negative integer, got {n_steps!r}")
    x = x_init.detach()
    path = [x.cpu()] if return_path else None
    for _ in tqdm(range(n_steps), disable=not progress, desc="Langevin"):
        noise = torch.randn(
            x.shape, generator=generator, dtype=x.dtype, device=x.device
        )
        x = langevin_step(x, score_fn(x).detach(), step_size, noise)
        if path is not None:
            path.append(x.cpu())
    return (x, torch.stack(path)) if path is not None else x


def annealed_langevin(
    score_fn: ScoreFn,
    sigmas: Sequence[float] | torch.Tensor,
    x_init: torch.Tensor,
    n_steps_each: int = 100,
    step_lr: float = 2e-5,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    r"""Annealed Langevin dynamics, Algorithm 1 of Song & Ermon 2019.

    For each noise level :math:`\sigma_1 > \dots > \sigma_L` in turn, ``n_steps_each`` steps of
    :math:`x \leftarrow x + \tfrac{\alpha_i}{2} s(x, \sigma_i) + \sqrt{\alpha_i}\,z` with
    :math:`\alpha_i = \text{step\_lr}\cdot\sigma_i^2/\sigma_L^2`, i.e. :func:`langevin_step` with
    ε = α_i / 2. ``score_fn(x, sigma)`` gets sigma as a float. x_init: (N, D), e.g. uniform noise
    or :math:`\mathcal N(0, \sigma_1^2 I)`. Returns the points after the last level.
    """
    sigmas = _check_decreasing_sigmas(sigmas)
    _check_positive("step_lr", step_lr)
    if (
        not isinstance(n_steps_each, int)
        or isinstance(n_steps_each, bool)
        or n_steps_each < 1
    ):
        raise ValueError(
            f"n_steps_each must be a positive integer, got {n_steps_each!r}"
        )
    sigma_last = float(sigmas[-1])
    x = x_init.detach()
    with tqdm(
        total=len(sigmas) * n_steps_each, disable=not progress, desc="annealed Langevin"
    ) as bar:
        for sigma in sigmas.tolist():
            alpha = step_lr * sigma**2 / sigma_last**2
            for _ in range(n_steps_each):
                noise = torch.randn(
                    x.shape, generator=generator, dtype=x.dtype, device=x.device
                )
                x = langevin_step(x, score_fn(x, sigma).detach(), alpha / 2, noise)
                bar.update()
    return x


# ------------------------------------------------------------------------- score matching
def dsm_loss(
    score_fn: ScoreFn, x: torch.Tensor, sigma: float | torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    r"""Denoising score matching (Vincent 2011) with the weighting :math:`\lambda(\sigma) = \sigma^2`
    of Song & Ermon 2019:

    .. math:: \tfrac{1}{N}\sum_n \tfrac12 \big\lVert \sigma\, s(\tilde x_n, \sigma) + z_n \big\rVert^2,
       \qquad \tilde x_n = x_n + \sigma z_n,

    which is
    :math:`\sigma^2 \cdot \tfrac12\lVert s(\tilde x) - \nabla_{\tilde x}\log q_\sigma(\tilde x \mid x)\rVert^2`
    since :math:`\nabla_{\tilde x}\log q_\sigma(\tilde x \mid x) = -z/\sigma`. x, noise z: (N, D);
    sigma: a float or (N,) tensor, passed as given to ``score_fn(x_noisy, sigma)``. Returns a scalar.
    """
    _check_points(x)
    _check_same_shape(x, noise, "x", "noise")
    sigma_column = _sigma_column(sigma, x)
    predicted = score_fn(x + sigma_column * noise, sigma)
    _check_same_shape(x, predicted, "x", "score_fn's output")
    return 0.5 * ((sigma_column * predicted + noise) ** 2).sum(dim=1).mean()


def explicit_score_matching_loss(
    score_fn: ScoreFn, x: torch.Tensor, true_score: torch.Tensor
) -> torch.Tensor:
    r"""Explicit score matching:
    :math:`\tfrac{1}{N}\sum_n \tfrac12 \lVert s(x_n) - \nabla_x \log p(x_n)\rVert^2`.

    x: (N, D) samples of p; true_score: (N, D) the tensor :math:`\nabla_x \log p(x)`;
    ``score_fn(x) -> (N, D)``. Returns a scalar. Needs the true score, which is unknown for real data.
    """
    _check_points(x)
    _check_same_shape(x, true_score, "x", "true_score")
    predicted = score_fn(x)
    _check_same_shape(x, predicted, "x", "score_fn's output")
    return 0.5 * ((predicted - true_score) ** 2).sum(dim=1).mean()


def implicit_score_matching_loss(score_fn: ScoreFn, x: torch.Tensor) -> torch.Tensor:
    r"""Implicit score matching (Hyvärinen 2005, Theorem 1):
    :math:`\tfrac{1}{N}\sum_n \big[\operatorname{tr}\nabla_x s(x_n) + \tfrac12\lVert s(x_n)\rVert^2\big]`.

    Equals the explicit loss minus :math:`\tfrac12 \mathbb E\lVert\nabla\log p\rVert^2`, a constant,
    without knowing p. The trace of the Jacobian takes one backward pass per dimension (exact, for
    small D), built with ``create_graph=True`` so that the loss can be minimised. ``score_fn`` must
    act on each point separately (no batch statistics). x: (N, D) -> scalar.
    """
    _check_points(x)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        score = score_fn(x)
        _check_same_shape(x, score, "x", "score_fn's output")
        trace = torch.zeros(x.shape[0], dtype=score.dtype, device=score.device)
        for d in range(x.shape[1]):
            (gradient,) = torch.autograd.grad(score[:, d].sum(), x, create_graph=True)
            trace = trace + gradient[:, d]
        return (trace + 0.5 * (score**2).sum(dim=1)).mean()


# ------------------------------------------------------------------------- a learned score
def geometric_sigmas(sigma_max: float, sigma_min: float, n: int) -> torch.Tensor:
    r"""``n`` noise levels from ``sigma_max`` down to ``sigma_min`` in geometric progression (constant
    ratio :math:`\sigma_{i+1}/\sigma_i`, Song & Ermon 2019): (n,) float64, decreasing."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise ValueError(
            f"n must be an integer >= 2 (the number of noise levels), got {n!r}"
        )
    if not sigma_max > sigma_min > 0:
        raise ValueError(
            f"need sigma_max > sigma_min > 0, got sigma_max={sigma_max}, sigma_min={sigma_min}"
        )
    return torch.exp(
        torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64)
    )


class ScoreMLP(nn.Module):
    r"""A noise-conditional score network for low-dimensional data:
    :math:`s_\theta(x, \sigma) = f_\theta(x, e(\sigma))/\sigma`.

    :math:`e(\sigma)` embeds :math:`\log\sigma` with sines and cosines at fixed frequencies (plus
    :math:`\log\sigma` itself); :math:`f_\theta` is an MLP with ``n_layers`` hidden layers of width
    ``hidden`` and SiLU activations on the concatenation of x and the embedding. Dividing by σ
    (Song & Ermon 2020) lets :math:`f_\theta` predict :math:`-z` in the DSM loss, a target of unit size
    at every noise level. forward(x: (N, dim), sigma: float or (N,)) -> (N, dim).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, n_layers: int = 3) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or n_layers < 1:
            raise ValueError(
                f"dim, hidden and n_layers must be positive integers, got {dim}, {hidden}, {n_layers}"
            )
        self.dim = dim
        self.register_buffer(
            "frequencies", 2.0 ** torch.arange(-2.0, 4.0), persistent=False
        )
        layers: list[nn.Module] = [
            nn.Linear(dim + 1 + 2 * len(self.frequencies), hidden),
            nn.SiLU(),
        ]
        for _ in range(n_layers - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def sigma_embedding(self, log_sigma: torch.Tensor) -> torch.Tensor:
        r""":math:`[\log\sigma, \sin(f_j\log\sigma), \cos(f_j\log\sigma)]`, :math:`f_j = 2^{-2}, \dots, 2^{3}`.

        log_sigma: (N, 1) -> (N, 13).
        """
        angles = log_sigma * self.frequencies.to(log_sigma.dtype)
        return torch.cat([log_sigma, torch.sin(angles), torch.cos(angles)], dim=1)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        _check_points(x, self.dim)
        sigma_column = _sigma_column(sigma, x).expand(x.shape[0], 1)
        features = torch.cat([x, self.sigma_embedding(torch.log(sigma_column))], dim=1)
        return self.net(features) / sigma_column


def _draw_batch(
    data: torch.Tensor | Callable[..., torch.Tensor],
    batch_size: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """``batch_size`` points from the sampler ``data(n, generator=...)``, or rows of the tensor
    ``data`` drawn with replacement."""
    if callable(data):
        return data(batch_size, generator=generator)
    index = torch.randint(
        data.shape[0], (batch_size,), generator=generator, device=device
    )
    return data[index.to(data.device)]


def train_score_model(
    model: nn.Module,
    data: torch.Tensor | Callable[..., torch.Tensor],
    sigmas: Sequence[float] | torch.Tensor,
    steps: int = 2000,
    lr: float = 1e-2,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> list[float]:
    r"""Train a noise-conditional score ``model(x, sigma)`` by denoising score matching (:func:`dsm_loss`).

    Each step draws ``batch_size`` points (uniformly with replacement from a tensor ``data`` (M, D),
    or ``data(batch_size, generator=generator)`` for a sampler such as :meth:`GaussianMixture.sample`),
    one noise level per point uniformly from ``sigmas`` (Song & Ermon 2019, Eq. (6)) and the noise z,
    then takes one Adam step on the DSM loss; the learning rate decays from ``lr`` to 0 on a cosine
    (which lowers the final loss noticeably against a constant rate). Random draws use
    ``generator`` on its device and are moved to the model's device. Returns the loss of every step.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    _check_positive("lr", lr)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu().flatten()
    if sigmas.numel() == 0 or not bool((sigmas > 0).all()):
        raise ValueError(
            f"sigmas must be a non-empty sequence of positive noise levels, got {sigmas.tolist()}"
        )
    device = next(model.parameters()).device
    random_device = generator.device if generator is not None else torch.device("cpu")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    losses = []
    for _ in tqdm(range(steps), disable=not progress, desc="DSM training"):
        x = _draw_batch(data, batch_size, generator, random_device)
        level = torch.randint(
            len(sigmas), (batch_size,), generator=generator, device=random_device
        )
        sigma = sigmas.to(random_device)[level]
        noise = torch.randn(
            x.shape, generator=generator, dtype=x.dtype, device=random_device
        )
        x, sigma, noise = (
            x.to(device),
            sigma.to(device=device, dtype=x.dtype),
            noise.to(device),
        )
        loss = dsm_loss(model, x, sigma, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    model.eval()
    return losses
