"""Shared fixtures of the foundation tests: a fixed smooth noise predictor, and the exact noise
predictor of Gaussian data. Both are written here from their formulas, independently of the package."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


def linear_alphas_cumprod(
    T: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    r""":math:`\bar\alpha_t = \prod_{s \le t}(1 - \beta_s)` of the linear schedule, in float64 numpy."""
    return np.cumprod(1.0 - np.linspace(beta_start, beta_end, T))


class ToyNoisePredictor(torch.nn.Module):
    r"""A deterministic, smooth, non-trivial stand-in for a trained noise predictor on (N, C, H, W).

    :math:`\epsilon(x, t) = \frac{\sqrt{1-\bar\alpha_t}}{\bar\alpha_t s^2 + 1-\bar\alpha_t} x
    + 0.1\,\mathrm{conv}(\tanh(\mathrm{conv}(x) + \mathrm{emb}(t)))`: the exact predictor of
    N(0, s^2 I) data (s = 0.5, linear betas, T = 1000), which keeps sampling loops bounded, plus a
    random convolutional correction that couples neighbouring pixels and depends on t through a
    sinusoidal embedding. Its weights come from a fixed seed.
    """

    def __init__(
        self, channels: int = 3, hidden: int = 16, data_std: float = 0.5
    ) -> None:
        super().__init__()
        self.conv_in = torch.nn.Conv2d(channels, hidden, 3, padding=1)
        self.time_proj = torch.nn.Linear(8, hidden)
        self.conv_out = torch.nn.Conv2d(hidden, channels, 3, padding=1)
        alphas_cumprod = torch.from_numpy(linear_alphas_cumprod(1000))
        gain = (1 - alphas_cumprod).sqrt() / (
            alphas_cumprod * data_std**2 + 1 - alphas_cumprod
        )
        self.register_buffer("gain", gain.float())
        self.register_buffer(
            "freqs", torch.exp(-math.log(1000.0) * torch.arange(4) / 4)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        angles = t.float()[:, None] * self.freqs
        embedding = self.time_proj(torch.cat([angles.sin(), angles.cos()], dim=1))
        hidden = torch.tanh(self.conv_in(x) + embedding[:, :, None, None])
        return self.gain[t].to(x.dtype)[:, None, None, None] * x + 0.1 * self.conv_out(
            hidden
        )


@pytest.fixture
def toy_noise_predictor() -> ToyNoisePredictor:
    """A :class:`ToyNoisePredictor` for 3-channel images, initialised from seed 0 (global RNG untouched)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ToyNoisePredictor().eval().requires_grad_(False)


@pytest.fixture(scope="session")
def gaussian_eps_model():
    r"""Factory of the exact noise predictor for data :math:`x_0 \sim \mathcal N(\mu, s^2 I)`.

    With :math:`a = \sqrt{\bar\alpha_t}`, :math:`b = \sqrt{1-\bar\alpha_t}`:
    :math:`E[\epsilon \mid x_t] = b\,(x_t - a\mu) / (a^2 s^2 + b^2)` (Gaussian conditioning of
    :math:`(\epsilon, x_t = a x_0 + b\epsilon)`). ``alphas_cumprod`` is a float64 numpy table;
    the returned ``model(x, t)`` works in x's dtype on any (N, ...) shape.
    """

    def make(alphas_cumprod: np.ndarray, mu: float, std: float):
        table = torch.from_numpy(np.asarray(alphas_cumprod, dtype=np.float64))

        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            alpha_bar = table[t].reshape(-1, *([1] * (x.ndim - 1)))
            a, b = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
            return (b * (x - a * mu) / (a**2 * std**2 + b**2)).to(x.dtype)

        return model

    return make
