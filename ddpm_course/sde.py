r"""Brownian motion and stochastic differential equations in continuous time s in [0, 1].

Chapter 01 (Brownian motion & SDEs). An SDE :math:`dx = f(x, s)\,ds + g(s)\,dW_s` is given here by
two callables: ``drift(x, s)``, which returns a tensor like x, and ``diffusion(s)``, which returns a
float or a tensor that broadcasts against x. The variance-preserving SDE of Song et al. 2021
(Eq. (11)) is the continuous-time limit of DDPM's forward chain, and :meth:`VPSDE.discrete_betas`
turns it back into DDPM's betas.

This is the only module of the package with continuous time; everywhere else the time is the
discrete step t in {0, ..., T-1}. Tensors are float (float32 by default, any float dtype works).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

__all__ = [
    "random_walk",
    "brownian_motion",
    "euler_maruyama_step",
    "euler_maruyama",
    "VPSDE",
    "vp_sde_marginal",
    "OrnsteinUhlenbeck",
    "fokker_planck_1d",
    "gaussian_density",
]

Time = float | torch.Tensor  # a continuous time s, or a tensor of them
Drift = Callable[[torch.Tensor, float], torch.Tensor]
Diffusion = Callable[[float], Time]


def _check_positive_int(what: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


def _check_time_grid(s_grid: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """``s_grid`` as a (K,) float64 tensor, K >= 2, strictly increasing; else a ``ValueError``."""
    grid = torch.as_tensor(s_grid, dtype=torch.float64).detach().cpu()
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(
            f"s_grid must be a 1-D grid of at least 2 times (start and end), got shape {tuple(grid.shape)}"
        )
    steps = grid[1:] - grid[:-1]
    if not bool((steps > 0).all()):
        first = int(torch.nonzero(steps <= 0)[0])
        raise ValueError(
            f"s_grid must be strictly increasing, but s_grid[{first + 1}] = {grid[first + 1].item()} "
            f"<= s_grid[{first}] = {grid[first].item()}; sort it, e.g. torch.linspace(0, 1, n)"
        )
    return grid


def _check_unit_time(s: torch.Tensor) -> None:
    if bool(((s < 0) | (s > 1)).any()):
        raise ValueError(
            f"the continuous time s must lie in [0, 1], got values from {s.min().item()} to {s.max().item()}"
        )


# --------------------------------------------------------------------- random walks and Brownian motion
def random_walk(
    n_paths: int,
    n_steps: int,
    step_size: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Simple symmetric random walks :math:`S_k = \sum_{j \le k} \xi_j`, :math:`\xi_j = \pm` ``step_size``
    with probability 1/2 each, started at :math:`S_0 = 0`.

    :math:`\mathbb E[S_k] = 0` and :math:`\mathrm{Var}[S_k] = k\,\text{step\_size}^2`. With
    ``step_size`` :math:`= \sqrt{\Delta t}` the walk at time :math:`t = k\Delta t` has variance t, and as
    :math:`\Delta t \to 0` it tends to Brownian motion (Donsker's theorem).

    Returns (n_paths, n_steps + 1) in the default float dtype; column k is :math:`S_k`.
    """
    _check_positive_int("n_paths", n_paths)
    _check_positive_int("n_steps", n_steps)
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    signs = 2 * torch.randint(0, 2, (n_paths, n_steps), generator=generator) - 1
    steps = step_size * signs.to(torch.get_default_dtype())
    return torch.cat([steps.new_zeros(n_paths, 1), steps.cumsum(dim=1)], dim=1)


def brownian_motion(
    n_paths: int,
    n_steps: int,
    t_end: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Standard Brownian motion on the uniform grid :math:`t_k = k\,t_\text{end}/n_\text{steps}`.

    :math:`B_0 = 0` and independent Gaussian increments :math:`B_{t_{k+1}} - B_{t_k} \sim \mathcal N(0, \Delta t)`,
    so :math:`\mathrm{Var}[B_t] = t` and :math:`\mathrm{Cov}[B_s, B_t] = \min(s, t)`.

    Returns ``times`` (n_steps + 1,) and ``paths`` (n_paths, n_steps + 1), in the default float dtype.
    """
    _check_positive_int("n_paths", n_paths)
    _check_positive_int("n_steps", n_steps)
    if not t_end > 0:
        raise ValueError(f"t_end must be positive, got {t_end}")
    times = torch.linspace(0.0, t_end, n_steps + 1)
    increments = math.sqrt(t_end / n_steps) * torch.randn(
        n_paths, n_steps, generator=generator
    )
    paths = torch.cat(
        [increments.new_zeros(n_paths, 1), increments.cumsum(dim=1)], dim=1
    )
    return times, paths


# --------------------------------------------------------------------- Euler-Maruyama
def euler_maruyama_step(
    x: torch.Tensor,
    s: float,
    ds: float,
    drift: Drift,
    diffusion: Diffusion,
    noise: torch.Tensor,
) -> torch.Tensor:
    r"""One Euler-Maruyama step of :math:`dx = f(x, s)\,ds + g(s)\,dW`:

    :math:`x_{s+ds} = x_s + f(x_s, s)\,ds + g(s)\sqrt{ds}\,z`, with :math:`z \sim \mathcal N(0, I)`
    (Särkkä & Solin 2019, Algorithm 8.1).

    x: (N, ...); s, ds: floats, ds >= 0; drift(x, s) -> like x; diffusion(s) -> float or tensor
    broadcastable to x; noise: like x, a draw of z. Returns a tensor like x.
    """
    if ds < 0:
        raise ValueError(
            f"the step ds must be >= 0 (Euler-Maruyama runs forward in s), got ds = {ds}"
        )
    if noise.shape != x.shape:
        raise ValueError(
            f"noise has shape {tuple(noise.shape)} but x has shape {tuple(x.shape)}; draw it like x"
        )
    return x + drift(x, s) * ds + diffusion(s) * math.sqrt(ds) * noise


def euler_maruyama(
    drift: Drift,
    diffusion: Diffusion,
    x_init: torch.Tensor,
    s_grid: torch.Tensor | Sequence[float],
    generator: torch.Generator | None = None,
    return_path: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    r"""Integrate :math:`dx = f(x, s)\,ds + g(s)\,dW` from ``s_grid[0]`` to ``s_grid[-1]`` with Euler-Maruyama.

    Takes one :func:`euler_maruyama_step` per interval of the strictly increasing 1-D ``s_grid``
    (K points), drawing fresh noise with ``generator`` each step. The scheme has weak order 1: the
    error of moments such as :math:`\mathbb E[x_s]` shrinks like the largest step.

    x_init: (N, ...) the state at ``s_grid[0]``. Returns x at ``s_grid[-1]`` (like x_init) or, with
    ``return_path``, every state: (K, N, ...), whose first entry is x_init.
    """
    grid = _check_time_grid(s_grid)
    x = x_init
    path = [x] if return_path else None
    for k in tqdm(range(grid.numel() - 1), disable=not progress, desc="Euler-Maruyama"):
        s, ds = grid[k].item(), (grid[k + 1] - grid[k]).item()
        noise = torch.randn(
            x.shape, generator=generator, dtype=x.dtype, device=x.device
        )
        x = euler_maruyama_step(x, s, ds, drift, diffusion, noise)
        if path is not None:
            path.append(x)
    return torch.stack(path) if path is not None else x


# --------------------------------------------------------------------- the VP-SDE and the OU process
class VPSDE:
    r"""The variance-preserving SDE :math:`dx = -\tfrac12\beta(s)\,x\,ds + \sqrt{\beta(s)}\,dW`, s in [0, 1]
    (Eq. (11) of Song et al. 2021), with the linear :math:`\beta(s) = \beta_\min + s(\beta_\max - \beta_\min)`.

    Its transition from a fixed :math:`x_0` is Gaussian (Eq. (29) of Song et al. 2021):
    :math:`x_s \mid x_0 \sim \mathcal N\big(e^{-\frac12\int_0^s\beta}\,x_0,\ (1 - e^{-\int_0^s\beta})\,I\big)`,
    with :math:`\int_0^s \beta = \beta_\min s + \tfrac12 s^2 (\beta_\max - \beta_\min)`. With the
    defaults :math:`e^{-\int_0^1\beta} = e^{-10.05} \approx 4\cdot 10^{-5}`: x_1 is nearly N(0, I).

    ``beta``, ``integrated_beta``, ``drift`` and ``diffusion`` take s as a float or a tensor and return
    the same kind; the ``marginal_*`` methods return tensors and check that s lies in [0, 1].
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not 0 <= beta_min <= beta_max:
            raise ValueError(
                f"need 0 <= beta_min <= beta_max (beta(s) grows from beta_min to beta_max), got "
                f"beta_min = {beta_min} and beta_max = {beta_max}"
            )
        if beta_max == 0:
            raise ValueError(
                "beta_max must be positive (beta_max = 0 adds no noise at all)"
            )
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def __repr__(self) -> str:
        return f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max})"

    def beta(self, s: Time) -> Time:
        r""":math:`\beta(s) = \beta_\min + s(\beta_\max - \beta_\min)`."""
        return self.beta_min + s * (self.beta_max - self.beta_min)

    def integrated_beta(self, s: Time) -> Time:
        r""":math:`\int_0^s \beta(u)\,du = \beta_\min s + \tfrac12 s^2 (\beta_\max - \beta_\min)`."""
        return self.beta_min * s + 0.5 * s**2 * (self.beta_max - self.beta_min)

    def drift(self, x: torch.Tensor, s: Time) -> torch.Tensor:
        r""":math:`f(x, s) = -\tfrac12\beta(s)\,x`; x: (N, ...), s a float or broadcastable to x."""
        return -0.5 * self.beta(s) * x

    def diffusion(self, s: Time) -> Time:
        r""":math:`g(s) = \sqrt{\beta(s)}`."""
        return self.beta(s) ** 0.5

    def marginal_mean_coef(self, s: Time) -> torch.Tensor:
        r""":math:`\sqrt{\bar\alpha(s)} = e^{-\frac12\int_0^s\beta}`, the weight of x_0 in the mean of x_s."""
        s = torch.as_tensor(s, dtype=torch.float64) if not torch.is_tensor(s) else s
        _check_unit_time(s)
        return torch.exp(-0.5 * self.integrated_beta(s))

    def marginal_std(self, s: Time) -> torch.Tensor:
        r""":math:`\sqrt{1 - \bar\alpha(s)} = \sqrt{1 - e^{-\int_0^s\beta}}`, computed with ``expm1`` (exact near s = 0)."""
        s = torch.as_tensor(s, dtype=torch.float64) if not torch.is_tensor(s) else s
        _check_unit_time(s)
        return torch.sqrt(-torch.expm1(-self.integrated_beta(s)))

    def sample_marginal(
        self, x0: torch.Tensor, s: Time, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        r"""Draw :math:`x_s = e^{-\frac12\int_0^s\beta}\,x_0 + \sqrt{1 - e^{-\int_0^s\beta}}\,z`, z ~ N(0, I),
        in one jump.

        x0: (N, ...); s: a float or a tensor broadcastable to x0 (e.g. (N, 1, ..., 1)). Returns like x0.
        """
        mean, std = vp_sde_marginal(x0, s, self.beta_min, self.beta_max)
        noise = torch.randn(
            x0.shape, generator=generator, dtype=x0.dtype, device=x0.device
        )
        return mean + std * noise

    def discrete_betas(self, N: int) -> torch.Tensor:
        r"""DDPM's betas for N steps as the discretised VP-SDE: :math:`\beta_i = \beta(s_i)/N` at
        :math:`s_i = i/(N-1)`, i = 0..N-1, i.e. ``linspace(beta_min/N, beta_max/N, N)``: (N,) float64.

        The step of the chain :math:`x_i = \sqrt{1-\beta_i}\,x_{i-1} + \sqrt{\beta_i}\,z` is, to first order
        in :math:`\beta_i`, an Euler-Maruyama step of length 1/N at :math:`s_i`. The end points
        :math:`s_0 = 0` and :math:`s_{N-1} = 1` make the defaults give DDPM's linear schedule
        exactly: :math:`\beta_0 = 0.1/1000 = 10^{-4}` and :math:`\beta_{999} = 20/1000 = 0.02` for
        N = 1000 (as in Song et al. 2021's code), and :math:`\sum_i \beta_i = \int_0^1 \beta` exactly.
        """
        if not isinstance(N, int) or isinstance(N, bool) or N < 2:
            raise ValueError(
                f"N, the number of discrete steps, must be an integer >= 2, got {N!r}"
            )
        s = torch.arange(N, dtype=torch.float64) / (N - 1)
        return self.beta(s) / N


def vp_sde_marginal(
    x0: torch.Tensor, s: Time, beta_min: float = 0.1, beta_max: float = 20.0
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and standard deviation of the VP-SDE transition :math:`x_s \mid x_0` (see :class:`VPSDE`):

    mean :math:`= e^{-\frac12\int_0^s\beta}\,x_0`, std :math:`= \sqrt{1 - e^{-\int_0^s\beta}}`, with
    :math:`\int_0^s\beta = \beta_\min s + \tfrac12 s^2(\beta_\max - \beta_\min)`.

    x0: (N, ...); s in [0, 1], a float or a tensor broadcastable to x0. Returns mean (like x0, in its
    dtype) and std (a tensor in x0's dtype that broadcasts against x0).
    """
    sde = VPSDE(beta_min, beta_max)
    s = torch.as_tensor(s, dtype=torch.float64, device=x0.device)
    mean_coef = sde.marginal_mean_coef(s).to(x0.dtype)
    std = sde.marginal_std(s).to(x0.dtype)
    return mean_coef * x0, std


class OrnsteinUhlenbeck:
    r"""The Ornstein-Uhlenbeck process :math:`dx = \theta(\mu - x)\,ds + \sigma\,dW` (Särkkä & Solin 2019, Sec. 6.1).

    It is pulled towards μ at rate θ > 0. From a fixed :math:`x_0`,
    :math:`x_s \sim \mathcal N\big(\mu + (x_0 - \mu)e^{-\theta s},\ \tfrac{\sigma^2}{2\theta}(1 - e^{-2\theta s})\big)`,
    which tends to the stationary :math:`\mathcal N(\mu, \sigma^2/(2\theta))`. The VP-SDE is an OU
    process with a time-varying rate :math:`\theta = \beta(s)/2`, μ = 0 and :math:`\sigma^2 = \beta(s)`.
    """

    def __init__(self, theta: float = 1.0, mu: float = 0.0, sigma: float = 1.0) -> None:
        if not theta > 0:
            raise ValueError(
                f"theta, the mean-reversion rate, must be positive, got {theta}"
            )
        if not sigma >= 0:
            raise ValueError(f"sigma, the noise scale, must be >= 0, got {sigma}")
        self.theta = float(theta)
        self.mu = float(mu)
        self.sigma = float(sigma)

    def __repr__(self) -> str:
        return (
            f"OrnsteinUhlenbeck(theta={self.theta}, mu={self.mu}, sigma={self.sigma})"
        )

    def drift(self, x: torch.Tensor, s: Time) -> torch.Tensor:
        r""":math:`f(x, s) = \theta(\mu - x)`."""
        return self.theta * (self.mu - x)

    def diffusion(self, s: Time) -> float:
        r""":math:`g(s) = \sigma`."""
        return self.sigma

    def marginal_mean(self, x0: torch.Tensor | float, s: Time) -> torch.Tensor:
        r""":math:`\mathbb E[x_s \mid x_0] = \mu + (x_0 - \mu)e^{-\theta s}`; x0 and s broadcast together, s >= 0."""
        s = torch.as_tensor(s, dtype=torch.float64) if not torch.is_tensor(s) else s
        x0 = torch.as_tensor(x0, dtype=torch.float64) if not torch.is_tensor(x0) else x0
        return self.mu + (x0 - self.mu) * torch.exp(-self.theta * s).to(x0.dtype)

    def marginal_std(self, s: Time) -> torch.Tensor:
        r""":math:`\sqrt{\mathrm{Var}[x_s \mid x_0]} = \sigma\sqrt{(1 - e^{-2\theta s})/(2\theta)}`, s >= 0."""
        s = torch.as_tensor(s, dtype=torch.float64) if not torch.is_tensor(s) else s
        return self.sigma * torch.sqrt(
            -torch.expm1(-2 * self.theta * s) / (2 * self.theta)
        )


# --------------------------------------------------------------------- densities
def gaussian_density(
    x: torch.Tensor, mean: Time = 0.0, std: Time = 1.0
) -> torch.Tensor:
    r"""The normal density :math:`\mathcal N(x; m, \sigma^2) = e^{-(x-m)^2/(2\sigma^2)}/(\sigma\sqrt{2\pi})`.

    x, mean and std broadcast together (std > 0); returns a tensor of their broadcast shape.
    """
    x = x if torch.is_tensor(x) else torch.as_tensor(x, dtype=torch.float64)
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    if not bool((std > 0).all()):
        raise ValueError(f"std must be positive, got {std.min().item()}")
    return torch.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


def _interface_rates(
    v: torch.Tensor, D: float, dx: float
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Rightward and leftward transfer rates of the Scharfetter-Gummel flux through each cell face.

    With the face drift v, :math:`D = g^2/2` and the cell Péclet number :math:`P = v\,dx/D`, the flux
    from cell i to cell i + 1 is :math:`F = r^+ p_i - r^- p_{i+1}` with :math:`r^\pm = \tfrac{D}{dx}B(\mp P)`
    and :math:`B(z) = z/(e^z - 1)`. Both rates are >= 0 and :math:`r^+ - r^- = v`. For small P this is
    central differencing; for D -> 0 it becomes upwinding (:math:`r^+ = \max(v, 0)`, :math:`r^- = \max(-v, 0)`).
    """
    if D == 0:
        return v.clamp(min=0), (-v).clamp(min=0)
    peclet = v * dx / D
    # B(z) = z / expm1(z), continued by its limit 1 at z = 0
    safe = torch.where(peclet == 0, torch.ones_like(peclet), peclet)
    bernoulli = torch.where(
        peclet == 0, torch.ones_like(peclet), safe / torch.expm1(safe)
    )
    leftward = D / dx * bernoulli
    return leftward + v, leftward


def fokker_planck_1d(
    density0: torch.Tensor,
    x_grid: torch.Tensor,
    s_grid: torch.Tensor | Sequence[float],
    drift: Drift,
    diffusion: Diffusion,
) -> torch.Tensor:
    r"""Evolve a 1-D density under the Fokker-Planck equation of :math:`dx = f(x, s)\,ds + g(s)\,dW`:

    :math:`\partial_s p = -\partial_x\big(f p\big) + \tfrac12\,\partial_x^2\big(g^2 p\big)`
    (Särkkä & Solin 2019, Eq. (5.11)).

    A conservative finite-volume scheme: cell i is centred at ``x_grid[i]`` (uniform spacing dx) and
    holds the density p_i; probability moves between neighbouring cells through the Scharfetter-Gummel
    flux (see ``_interface_rates``: second order, and positive for any drift), and no probability
    leaves through the two ends, so :math:`\sum_i p_i\,dx` is conserved exactly. Time steps are explicit
    Euler, each at most half the largest stable step (the CFL condition
    :math:`ds \le dx / \max_i (r^+_{i+1/2} + r^-_{i-1/2})`, about :math:`dx^2/g^2`), taken as many as
    needed between the times of ``s_grid``.

    density0: (M,) values at ``x_grid`` (M,) at time ``s_grid[0]``; choose a grid wide enough that p
    is negligible at its ends. drift(x, s) is called with a float64 tensor of cell faces (M - 1,);
    diffusion(s) must not depend on x. Returns (len(s_grid), M) float64 densities, row 0 = density0.
    """
    times = _check_time_grid(s_grid)
    x_grid = torch.as_tensor(x_grid, dtype=torch.float64).detach().cpu()
    density = torch.as_tensor(density0, dtype=torch.float64).detach().cpu().clone()
    if x_grid.ndim != 1 or x_grid.numel() < 3:
        raise ValueError(
            f"x_grid must be a 1-D grid of at least 3 points, got shape {tuple(x_grid.shape)}"
        )
    if density.shape != x_grid.shape:
        raise ValueError(
            f"density0 has shape {tuple(density.shape)} but x_grid has shape {tuple(x_grid.shape)}"
        )
    spacings = x_grid[1:] - x_grid[:-1]
    dx = spacings.mean().item()
    if not dx > 0 or not torch.allclose(
        spacings, torch.full_like(spacings, dx), rtol=1e-3, atol=0
    ):
        raise ValueError(
            "x_grid must be uniformly spaced and increasing, e.g. torch.linspace(-5, 5, 401)"
        )
    if not bool((density >= 0).all()):
        raise ValueError("density0 must be >= 0 everywhere")
    faces = 0.5 * (x_grid[1:] + x_grid[:-1])

    snapshots = [density.clone()]
    for s_start, s_stop in zip(times[:-1].tolist(), times[1:].tolist(), strict=True):
        s = s_start
        while s < s_stop:
            D = 0.5 * float(diffusion(s)) ** 2
            rightward, leftward = _interface_rates(
                torch.as_tensor(drift(faces, s), dtype=torch.float64), D, dx
            )
            # the rate at which cell i loses probability: out through its right face and its left face
            outflow = torch.zeros_like(density)
            outflow[:-1] += rightward
            outflow[1:] += leftward
            ds = min(s_stop - s, 0.5 * dx / max(outflow.max().item(), 1e-12))
            flux = (
                rightward * density[:-1] - leftward * density[1:]
            )  # (M - 1,) through each face
            change = torch.zeros_like(density)
            change[:-1] -= flux
            change[1:] += flux
            density = density + ds / dx * change
            s = s_stop if ds == s_stop - s else s + ds
        snapshots.append(density.clone())
    return torch.stack(snapshots)
