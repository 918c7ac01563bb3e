r"""The three-line DDPM: a facade over :mod:`~ddpm_course.diffusion` and :mod:`~ddpm_course.nn`.

Chapter 04. This keeps the API of the seed project exactly, for people arriving from its docs::

    ddpm = DDPM(image_size=32, channels=3)      # a ~21M-parameter U-Net, linear betas, T = 1000
    loss = ddpm(x)                              # x: (N, C, H, W) in [0, 1]
    loss.backward()
    samples = ddpm.sample(16)                   # (16, C, H, W) in [0, 1]

``model`` may be any ``nn.Module`` with ``forward(x, t) -> predicted noise``.
"""

from __future__ import annotations

import torch
from torch import nn

from .diffusion import GaussianDiffusion
from .schedules import linear
from .utils import check_timesteps

__all__ = ["DDPM", "GaussianDiffuser"]


class GaussianDiffuser:
    r"""The seed's diffuser: linear betas in [beta_start, beta_end], ε-prediction, fixed-small variance.

    A thin layer over :class:`~ddpm_course.diffusion.GaussianDiffusion` (available as ``.diffusion``).
    """

    def __init__(
        self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> None:
        self.diffusion = GaussianDiffusion(
            linear(timesteps, beta_start, beta_end),
            objective="eps",
            var_type="fixed_small",
        )
        self.timesteps = timesteps

    def sample_timesteps(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """t uniform in {0, ..., T-1}: (batch_size,) int64."""
        sample_device = generator.device if generator is not None else device
        return torch.randint(
            0, self.timesteps, (batch_size,), generator=generator, device=sample_device
        ).to(device)

    def add_noise(
        self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        r""":math:`x_t = \sqrt{\bar\alpha_t} x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon` (x_start in [-1, 1])."""
        return self.diffusion.q_sample(x_start, t, noise=noise)

    @torch.no_grad()
    def denoise(
        self,
        model: nn.Module,
        x: torch.Tensor,
        t: torch.Tensor | int,
        clip_denoised: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""One ancestral step :math:`x_t \to x_{t-1} = \mu_\theta(x_t, t) + \sigma_t z` (no noise at t = 0)."""
        t = check_timesteps(
            torch.as_tensor(t), self.timesteps, batch_size=x.shape[0]
        ).to(x.device)
        p = self.diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised)
        noise = torch.randn(
            x.shape, generator=generator, device=x.device, dtype=x.dtype
        )
        nonzero = (t != 0).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return p.mean + nonzero * torch.exp(0.5 * p.log_variance) * noise


class DDPM(nn.Module):
    """Denoising diffusion probabilistic model (Ho et al. 2020) in three lines.

    Args:
        model: the noise predictor ``forward(x, t)``; default: the ``ddpm-default`` U-Net preset
            (about 21M parameters at 32×32×3) built for ``image_size`` and ``channels`` (with two
            down-samplings instead of three when ``image_size`` is not a multiple of 8, e.g. 28).
        image_size, channels: the shape of one image.
        timesteps: T of the diffusion (default 1000).
        diffuser: a :class:`GaussianDiffuser` (default: linear betas in [1e-4, 0.02] with ``timesteps`` steps).
        clip_denoised: clip the predicted x0 to [-1, 1] while sampling.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        image_size: int = 32,
        channels: int = 3,
        timesteps: int = 1000,
        diffuser: GaussianDiffuser | None = None,
        clip_denoised: bool = True,
    ) -> None:
        super().__init__()
        if model is None:
            from .nn import unet_from_preset

            # three down-samplings need image_size % 8 == 0; 28×28 (MNIST) gets two
            overrides = (
                {}
                if image_size % 8 == 0
                else {
                    "channel_mults": (1, 2, 2),
                    "attention_resolutions": (image_size // 2,),
                }
            )
            model = unet_from_preset(
                "ddpm-default", image_size=image_size, in_channels=channels, **overrides
            )
        self.model = model
        self.image_size = image_size
        self.channels = channels
        # a given diffuser brings its own T
        self.diffuser = (
            diffuser if diffuser is not None else GaussianDiffuser(timesteps)
        )
        self.timesteps = self.diffuser.timesteps
        self.clip_denoised = clip_denoised

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _check_images(self, x: torch.Tensor) -> None:
        expected = (self.channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"expected images of shape (N, {expected[0]}, {expected[1]}, {expected[2]}), got {tuple(x.shape)}"
            )

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The training loss: MSE between the true and predicted noise. x: (N, C, H, W) in [0, 1]."""
        self._check_images(x)
        x_start = x * 2 - 1
        t = self.diffuser.sample_timesteps(
            x.shape[0], device=x.device, generator=generator
        )
        noise = torch.randn(
            x.shape, generator=generator, device=x.device, dtype=x.dtype
        )
        x_t = self.diffuser.add_noise(x_start, t, noise)
        return torch.mean((self.model(x_t, t) - noise) ** 2)

    @torch.no_grad()
    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Ancestral sampling with all T steps: (batch_size, C, H, W) in [0, 1]."""
        from tqdm.auto import tqdm

        device = self.device
        shape = (batch_size, self.channels, self.image_size, self.image_size)
        x = torch.randn(
            shape,
            generator=generator,
            device=generator.device if generator is not None else device,
        ).to(device)
        for step in tqdm(
            range(self.timesteps - 1, -1, -1), disable=not progress, desc="DDPM"
        ):
            x = self.diffuser.denoise(
                self.model,
                x,
                step,
                clip_denoised=self.clip_denoised,
                generator=generator,
            )
        return ((x + 1) / 2).clamp(0, 1)
