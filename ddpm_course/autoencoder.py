r"""A small KL-regularised autoencoder (the first stage of latent diffusion).

Chapter 07 (Latent diffusion). :class:`AutoencoderKL`'s encoder gives the mean and the
log-variance of :math:`q_\phi(z \mid x) = \mathcal N(\mu, \operatorname{diag}\sigma^2)`;
:func:`reparameterize` draws :math:`z = \mu + \sigma \odot \epsilon`; :func:`gaussian_kl` is
:math:`\mathrm{KL}(q_\phi(z \mid x)\,\|\,\mathcal N(0, I))`; the loss (:func:`vae_loss`) is the
squared reconstruction error plus ``kl_weight`` times the KL; :func:`train_vae` trains it. For the
28×28×1 Fashion-MNIST images the latent is 7×7×4 (196 values: 4× fewer than the 784 pixels;
:data:`VAE_PRESETS`). :mod:`ddpm_course.latent` diffuses in its latent space.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .data import digits, fashion_mnist

__all__ = [
    "AutoencoderKL",
    "VAE_CONFIG",
    "VAE_PRESETS",
    "vae_training_images",
    "reparameterize",
    "gaussian_kl",
    "vae_loss",
    "train_vae",
]


# --------------------------------------------------------------------- the Gaussian encoder
def reparameterize(
    mean: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    r"""The reparameterisation trick (Kingma & Welling 2014, Sec. 2.4):

    .. math:: z = \mu + \sigma \odot \epsilon, \quad \sigma = \exp(\tfrac12 \log\sigma^2),
              \quad \epsilon \sim \mathcal N(0, I)

    a sample of :math:`\mathcal N(\mu, \operatorname{diag}\sigma^2)` that is a differentiable
    function of :math:`\mu` and :math:`\log\sigma^2`. All three tensors share one shape.
    """
    return mean + torch.exp(0.5 * logvar) * noise


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r"""KL of the encoder's Gaussian from the standard normal, one value per example:

    .. math:: \mathrm{KL}\big(\mathcal N(\mu, \operatorname{diag}\sigma^2) \,\|\, \mathcal N(0, I)\big)
              = \tfrac12 \sum_i \big(\mu_i^2 + \sigma_i^2 - 1 - \log\sigma_i^2\big)

    (Kingma & Welling 2014, Appendix B), summed over every dimension but the first.
    mean, logvar: (N, ...) -> (N,).
    """
    terms = mean.pow(2) + logvar.exp() - 1.0 - logvar
    return 0.5 * terms.flatten(1).sum(dim=1)


# ------------------------------------------------------------------------- the autoencoder
class _Block(nn.Module):
    """GroupNorm, SiLU, 3×3 convolution, twice, plus the input (a ResBlock without time)."""

    def __init__(self, channels: int, num_groups: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(num_groups, channels), nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(num_groups, channels), nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


# 16×16×1 → 4×4×4: two stride-2 downsamplings (f = 4), 4 latent channels (as Stable Diffusion)
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 1, "latent_channels": 4, "channels": (32, 64, 64), "num_groups": 8,
}  # fmt: skip
# The shipped autoencoders (``ddpm-course train --preset NAME``): the data, the architecture and
# the training settings of each. fashion-vae: 28×28×1 → 7×7×4, the same f = 4 and 4 channels,
# wider at the bottom for the clothes' texture.
VAE_PRESETS: dict[str, dict[str, Any]] = {
    "digits-vae": {"dataset": "digits", "image_size": 16, "config": VAE_CONFIG, "steps": 800,
                   "kl_weight": 1e-5, "batch_size": 64, "lr": 1e-3},
    "fashion-vae": {"dataset": "fashion_mnist", "image_size": 28,
                    "config": {**VAE_CONFIG, "channels": (32, 64, 128)}, "steps": 4000,
                    "kl_weight": 1e-5, "batch_size": 64, "lr": 1e-3},
}  # fmt: skip


def vae_training_images(preset: str, split: str = "train") -> torch.Tensor:
    """The images (N, 1, H, H) in [-1, 1] that autoencoder ``preset`` of :data:`VAE_PRESETS`
    trains on (``split`` "train") or is measured on ("test")."""
    from .utils import check_choice

    check_choice("autoencoder preset", preset, VAE_PRESETS)
    settings = VAE_PRESETS[preset]
    if settings["dataset"] == "digits":
        return digits(size=settings["image_size"], split=split)[0]
    return fashion_mnist(split)[0]


class AutoencoderKL(nn.Module):
    r"""A small KL-regularised autoencoder (the "KL-f4" autoencoder of Rombach et al. 2022, small).

    Encoder: a 3×3 convolution to ``channels[0]``, then per level a residual block and a stride-2
    convolution to the next width, a last residual block, GroupNorm, SiLU and a 3×3 convolution to
    ``2 * latent_channels`` (mean and log-variance; the log-variance clamped to [-30, 20] as in
    LDM). The decoder mirrors it with nearest-neighbour upsampling. With ``len(channels) - 1``
    downsamplings the latent is ``image_size / 2**(len(channels) - 1)`` on a side.

    ``encode(x) -> (mean, logvar)``, each (N, latent_channels, h, w); ``decode(z) -> (N,
    in_channels, H, W)`` (no squashing: the images are in [-1, 1]); ``forward(x, noise)`` returns
    (reconstruction, mean, logvar) with z drawn by :func:`reparameterize` from ``noise``.
    ``scale_factor``: the latent scale factor estimated for this autoencoder
    (:func:`~ddpm_course.latent.estimate_scale_factor`; read from its sidecar when loaded), or None.
    """

    def __init__(
        self,
        in_channels: int = 1,
        latent_channels: int = 4,
        channels: tuple[int, ...] = (32, 64, 64),
        num_groups: int = 8,
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        if len(channels) < 1 or any(c % num_groups for c in channels):
            raise ValueError(
                f"channels must be a non-empty tuple of multiples of num_groups={num_groups}, "
                f"got {channels!r}"
            )
        self.config: dict[str, Any] = {
            "in_channels": in_channels, "latent_channels": latent_channels,
            "channels": channels, "num_groups": num_groups,
        }  # fmt: skip
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.scale_factor: float | None = None
        self.downsampling = 2 ** (len(channels) - 1)
        down: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1)]
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            down += [_Block(c_in, num_groups), nn.Conv2d(c_in, c_out, 3, 2, padding=1)]
        down += [
            _Block(channels[-1], num_groups), nn.GroupNorm(num_groups, channels[-1]), nn.SiLU(),
            nn.Conv2d(channels[-1], 2 * latent_channels, 3, padding=1),
        ]  # fmt: skip
        self.encoder = nn.Sequential(*down)
        up: list[nn.Module] = [nn.Conv2d(latent_channels, channels[-1], 3, padding=1)]
        for c_in, c_out in zip(channels[::-1][:-1], channels[::-1][1:], strict=True):
            up += [
                _Block(c_in, num_groups), nn.Upsample(scale_factor=2.0, mode="nearest"),
                nn.Conv2d(c_in, c_out, 3, padding=1),
            ]  # fmt: skip
        up += [
            _Block(channels[0], num_groups), nn.GroupNorm(num_groups, channels[0]), nn.SiLU(),
            nn.Conv2d(channels[0], in_channels, 3, padding=1),
        ]  # fmt: skip
        self.decoder = nn.Sequential(*up)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if (
            x.ndim != 4
            or x.shape[1] != self.in_channels
            or x.shape[-1] % self.downsampling
        ):
            raise ValueError(
                f"the encoder takes images (N, {self.in_channels}, H, W) with H, W divisible by "
                f"{self.downsampling}, got {tuple(x.shape)}"
            )
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"the decoder takes latents (N, {self.latent_channels}, h, w), got {tuple(z.shape)}"
            )
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, logvar = self.encode(x)
        noise = torch.randn_like(mean) if noise is None else noise
        return self.decode(reparameterize(mean, logvar, noise)), mean, logvar


def vae_loss(
    x: torch.Tensor,
    reconstruction: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    kl_weight: float,
) -> dict[str, torch.Tensor]:
    r"""The autoencoder's loss per batch: :math:`\|x - \hat x\|^2 + \beta\,\mathrm{KL}`, each summed
    over an image's values and averaged over the batch (β = ``kl_weight``; with β = 1 this is the
    negative ELBO of a Gaussian decoder of variance 1/2, up to a constant; Higgins et al. 2017 call
    β > 1 a β-VAE). Returns ``loss``, ``reconstruction`` (the squared error per image) and ``kl``
    (per image), all 0-d."""
    reconstruction_error = (x - reconstruction).pow(2).flatten(1).sum(dim=1).mean()
    kl = gaussian_kl(mean, logvar).mean()
    return {
        "loss": reconstruction_error + kl_weight * kl,
        "reconstruction": reconstruction_error,
        "kl": kl,
    }


def train_vae(
    images: torch.Tensor | None = None,
    steps: int = 800,
    kl_weight: float = 1e-5,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    config: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[AutoencoderKL, list[dict[str, float]]]:
    """Train an :class:`AutoencoderKL` on ``images`` (default: the digits train split) with
    :func:`vae_loss`: Adam, cosine decay of ``lr``, batches drawn with replacement from a seeded
    generator. Returns the model (eval mode) and the per-100-steps history."""
    if images is None:
        images, _ = digits(size=16, split="train")
    torch.manual_seed(seed)
    model = AutoencoderKL(**(config or VAE_CONFIG))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    model.train()
    for step in range(1, steps + 1):
        index = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        x = images[index]
        noise = torch.randn(x.shape[0], model.latent_channels, *(s // model.downsampling for s in x.shape[2:]),
                            generator=generator)  # fmt: skip
        losses = vae_loss(x, *model(x, noise), kl_weight=kl_weight)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps:
            record = {"step": step, **{k: float(v.detach()) for k, v in losses.items()}}
            history.append(record)
            if log is not None:
                log(json.dumps(record))
    return model.eval(), history
