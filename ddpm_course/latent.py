r"""Latent diffusion (Rombach et al. 2022): diffuse the code of an autoencoder, not the pixels.

Chapter 07 (Latent diffusion). The pieces, in the order the chapter builds them:

* :class:`AutoencoderKL`: a small KL-regularised autoencoder. The encoder gives the mean and the
  log-variance of :math:`q_\phi(z \mid x) = \mathcal N(\mu, \operatorname{diag}\sigma^2)`;
  :func:`reparameterize` draws :math:`z = \mu + \sigma \odot \epsilon`; :func:`gaussian_kl` is
  :math:`\mathrm{KL}(q_\phi(z \mid x)\,\|\,\mathcal N(0, I))`; the loss (:func:`vae_loss`) is the
  squared reconstruction error plus ``kl_weight`` times the KL. For the 16×16×1 digits the
  latent is 4×4×4 (64 values: 4× fewer than the 256 of the image).
* :func:`estimate_scale_factor`: :math:`1 / \mathrm{std}(z)` over a batch of latents (LDM,
  Appendix G; Stable Diffusion v1's 0.18215), so that the diffused latents have unit variance
  like the N(0, I) noise at t = T.
* :class:`LatentDiffusion`: the autoencoder, a denoiser of scaled latents and the scale factor.
  ``encode`` (image → scaled latent), ``decode`` (scaled latent → image), and ``forward`` is the
  denoiser, so that the :class:`~ddpm_course.train.Trainer` (on a latents tensor) and every
  sampler of :mod:`ddpm_course.samplers` (with the latent shape) take it as they take a U-Net.
* Conditioning by cross-attention (:mod:`ddpm_course.attention`): the prompt ("seven") is spelled
  into tokens, embedded by a small prompt encoder standing in for a text encoder, and attended to
  by the U-Net (:class:`~ddpm_course.attention.CrossAttnUNet`).

Shapes: images (N, 1, 16, 16) in [-1, 1]; latents (N, 4, 4, 4).

``ddpm-course train --preset digits-vae`` and ``ddpm-course train --preset digits-ldm`` (then
``python -m ddpm_course.latent export runs/digits-ldm``) reproduce the shipped ``digits-vae`` and
``digits-ldm``; ``python -m ddpm_course.latent evaluate`` the chapter's numbers
(``book/results/07_latent.json``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attention import DIGIT_NAMES, CrossAttnUNet, prompt_labels, tokenize

__all__ = [
    "AutoencoderKL",
    "reparameterize",
    "gaussian_kl",
    "vae_loss",
    "estimate_scale_factor",
    "scale_latents",
    "unscale_latents",
    "train_vae",
    "LatentDiffusion",
    "LatentTrainer",
    "ldm_train_config",
    "load_vae",
    "load_latent_diffusion",
    "latent_sample",
    "VAE_CONFIG",
    "LDM_UNET",
    "RESULTS_PATH",
    "DIGIT_NAMES",
    "tokenize",
    "prompt_labels",
]

RESULTS_PATH = (
    Path(__file__).resolve().parent.parent / "book" / "results" / "07_latent.json"
)


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


def estimate_scale_factor(latents: torch.Tensor) -> float:
    r"""The latent scale factor :math:`1 / \mathrm{std}(z)` over every value of a batch of latents
    (Rombach et al. 2022, Appendix G; Stable Diffusion v1 ships 0.18215). latents: (N, ...)."""
    if latents.numel() < 2:
        raise ValueError(
            f"latents must hold at least 2 values, got shape {tuple(latents.shape)}"
        )
    return float(1.0 / latents.detach().double().flatten().std())


def scale_latents(
    mean: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor, scale_factor: float
) -> torch.Tensor:
    r"""The diffusion model's data from the encoder's output: :math:`z_0 = s\,(\mu + \sigma\epsilon)`
    (a posterior sample, times the scale factor s). mean, logvar, noise: (N, c, h, w)."""
    return scale_factor * reparameterize(mean, logvar, noise)


def unscale_latents(latents: torch.Tensor, scale_factor: float) -> torch.Tensor:
    r"""The decoder's input from a sampled latent: :math:`z = z_0 / s`. latents: (N, c, h, w)."""
    return latents / scale_factor


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
    from .data import digits

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


# ------------------------------------------------------------------ latent diffusion wrapper
class LatentDiffusion(nn.Module):
    r"""Latent diffusion: encode → scale → diffuse → unscale → decode.

    Holds the (frozen) ``autoencoder``, the ``denoiser`` of scaled latents and ``scale_factor`` s.

    * ``encode(x, generator=None, sample=True)``: :math:`s\,(\mu + \sigma\epsilon)` (or
      :math:`s\,\mu` without ``sample``): images (N, 1, 16, 16) → latents (N, 4, 4, 4).
    * ``decode(z)``: the decoder of :math:`z / s`: latents → images in [-1, 1] (clamped).
    * ``forward(z_t, t, **kwargs)`` is ``denoiser(z_t, t, **kwargs)``: pass the wrapper to any
      sampler with ``shape=(n, *latent_shape)`` (or :func:`latent_sample`, which also decodes),
      to :class:`~ddpm_course.guidance.ClassifierFreeGuidance` (``num_classes`` is the
      denoiser's), or train ``denoiser`` on ``encode(images)`` with the Trainer
      (:class:`LatentTrainer`).
    """

    def __init__(
        self, autoencoder: AutoencoderKL, denoiser: nn.Module, scale_factor: float
    ) -> None:
        super().__init__()
        if not (
            isinstance(scale_factor, (int, float))
            and math.isfinite(scale_factor)
            and scale_factor > 0
        ):
            raise ValueError(
                f"scale_factor must be a positive number, got {scale_factor!r}"
            )
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.denoiser = denoiser
        self.scale_factor = float(scale_factor)
        self.num_classes = getattr(denoiser, "num_classes", None)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.denoiser.image_size
        return (self.autoencoder.latent_channels, size, size)

    @torch.no_grad()
    def encode(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> torch.Tensor:
        mean, logvar = self.autoencoder.encode(x)
        if not sample:
            return self.scale_factor * mean
        noise = torch.randn(
            mean.shape, generator=generator, device=mean.device, dtype=mean.dtype
        )
        return scale_latents(mean, logvar, noise, self.scale_factor)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(
            unscale_latents(latents, self.scale_factor)
        ).clamp(-1, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.denoiser(x, t, **kwargs)


@torch.no_grad()
def latent_sample(
    ldm: LatentDiffusion,
    diffusion,
    n: int,
    sampler: Callable[..., torch.Tensor] | None = None,
    prompt: str | list[str] | None = None,
    guidance_scale: float = 0.0,
    generator: torch.Generator | None = None,
    decode: bool = True,
    **sampler_kwargs: Any,
) -> torch.Tensor:
    r"""``n`` images from ``ldm``: any sampler of :mod:`ddpm_course.samplers` (default
    :func:`~ddpm_course.samplers.ddim_sample`) in latent space, then :meth:`LatentDiffusion.decode`.

    ``prompt``: a digit name (every image), a list of ``n`` names, or None (the empty prompt).
    ``guidance_scale`` w > 0 applies classifier-free guidance
    (:class:`~ddpm_course.guidance.ClassifierFreeGuidance`, Eq. 6 of Ho & Salimans 2022).
    Returns images (n, 1, 16, 16) in [-1, 1], or the latents without ``decode``.
    """
    from .samplers import ddim_sample

    sampler = sampler or ddim_sample
    device = next(ldm.parameters()).device
    model: nn.Module = ldm
    model_kwargs = None
    if prompt is not None:
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n:
            raise ValueError(
                f"prompt must be one string or a list of n={n} strings, got {len(prompts)}"
            )
        labels = prompt_labels(prompts).to(device)
        model_kwargs = {"y": labels}
        if guidance_scale > 0:
            from .guidance import ClassifierFreeGuidance

            model = ClassifierFreeGuidance(ldm, guidance_scale)
    elif guidance_scale > 0:
        raise ValueError("guidance_scale > 0 needs a prompt to guide towards")
    latents = sampler(model, diffusion, (n, *ldm.latent_shape), generator=generator,
                      model_kwargs=model_kwargs, device=device, clip_denoised=False,
                      **sampler_kwargs)  # fmt: skip
    return ldm.decode(latents) if decode else latents


# ------------------------------------------------------------------ training the latent model
# the latent U-Net: 4×4×4 in, levels 4 and 2, self- and cross-attention at both
LDM_UNET: dict[str, Any] = {
    "image_size": 4, "in_channels": 4, "model_channels": 32, "channel_mults": (1, 2),
    "num_res_blocks": 2, "attention_resolutions": (4, 2), "dropout": 0.0, "num_groups": 8,
    "head_channels": 32, "context_dim": 64, "num_prompt_classes": 10,
}  # fmt: skip


def ldm_train_config(**overrides: Any):
    """The :class:`~ddpm_course.config.TrainConfig` of ``digits-ldm``: the digits recipe on
    4×4×4 latents, labels = the prompt's digit with prompt dropout 0.1 (the null prompt)."""
    from .config import TRAIN_PRESETS, TrainConfig

    base = dict(TRAIN_PRESETS["digits"])
    values = {
        **base, "preset": "digits", "image_size": 4, "channels": 4, "class_conditional": True,
        "num_classes": 10, "p_uncond": 0.1, "max_steps": 3000, "sample_every": 0,
        "checkpoint_every": 1000, "lr": 1e-3, "out_dir": "runs/digits-ldm",
    }  # fmt: skip
    values.update(overrides)
    return TrainConfig.from_dict(values)


def _trainer_base():
    from .train import Trainer

    return Trainer


class LatentTrainer(_trainer_base()):  # type: ignore[misc]
    """The package's :class:`~ddpm_course.train.Trainer` on scaled latents: trains ``ldm.denoiser``
    on ``ldm.encode(images)`` (one posterior sample per image, drawn once), with the labels as
    the prompts' digits; its sample grids are decoded to images."""

    def __init__(
        self, config, ldm: LatentDiffusion, images: torch.Tensor, labels: torch.Tensor
    ) -> None:
        latents = ldm.encode(
            images, generator=torch.Generator().manual_seed(config.seed)
        )
        self.ldm = ldm
        super().__init__(config, model=ldm.denoiser, dataset=(latents, labels))

    def save_samples(self) -> Path:
        from .viz import save_image_grid

        path = self.samples_dir / f"step_{self.step:07d}.png"
        if self.is_main:
            generator = torch.Generator(self.device).manual_seed(self.config.seed)
            latents = self.sample(generator=generator)
            save_image_grid(
                self.ldm.autoencoder.to(self.device)
                .decode(latents / self.ldm.scale_factor)
                .cpu(),
                path,
            )
        self._last_sample_step = self.step
        return path


# ----------------------------------------------------------------------- shipped weights
def _weights_dir() -> Path:
    from .pretrained import WEIGHTS_DIR

    return WEIGHTS_DIR


def save_vae(
    model: AutoencoderKL, scale_factor: float, path: Path, extra: dict[str, Any]
) -> Path:
    """Write the autoencoder in float16 with a JSON sidecar (its config and the scale factor)."""
    from safetensors.torch import save_file

    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    sidecar = {
        "format": "ddpm_course.vae",
        "model_config": model.config,
        "scale_factor": scale_factor,
        **extra,
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1) + "\n")
    path.chmod(0o644)
    return path


def load_vae(
    path: str | Path | None = None, device: torch.device | str | None = None
) -> tuple[AutoencoderKL, float]:
    """The shipped ``digits-vae`` (or the file ``path``): (autoencoder in float32, eval mode, on
    ``device``, default the CPU; its scale factor)."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else _weights_dir() / "digits-vae.safetensors"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing; rebuild it with: python -m ddpm_course.latent train-vae"
        )
    sidecar = json.loads(path.with_suffix(".json").read_text())
    model = AutoencoderKL(**sidecar["model_config"])
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.eval().to(device or "cpu"), float(sidecar["scale_factor"])


def load_latent_diffusion(
    path: str | Path | None = None,
    vae_path: str | Path | None = None,
    device: torch.device | str | None = None,
):
    """The shipped ``digits-ldm`` (or a latent run folder / weights file ``path``) with the shipped
    autoencoder: ``(LatentDiffusion in eval mode, diffusion, training config)``."""
    from .checkpoint import latest_checkpoint, load_checkpoint, load_weights
    from .loading import load_model

    path = Path(path) if path is not None else _weights_dir() / "digits-ldm.safetensors"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing; rebuild it with: python -m ddpm_course.latent train-ldm"
        )
    if path.suffix == ".safetensors":
        model_config = load_weights(path)[1]["model_config"]
    else:  # a run folder (its latest checkpoint, else its weights) or a checkpoint file
        found = latest_checkpoint(path / "checkpoints") if path.is_dir() else path
        if found is None:
            model_config = load_weights(path / "model.safetensors")[1]["model_config"]
        else:
            model_config = load_checkpoint(found, required=("model_config",))[
                "model_config"
            ]
    denoiser = CrossAttnUNet(**model_config)
    denoiser, diffusion, config = load_model(path, model=denoiser, device="cpu")
    denoiser = denoiser.float()
    vae, scale = load_vae(vae_path)
    ldm = LatentDiffusion(vae, denoiser, scale).eval()
    if device is not None:
        ldm = ldm.to(device)
    return ldm, diffusion, config


# ------------------------------------------------------------------------ the results command
def _time_per_image(
    fn: Callable[[], torch.Tensor], n: int, repeats: int
) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) / n)
    return times


@torch.no_grad()
def evaluate(n: int = 400, steps: int = 50, guidance_scale: float = 0.5, speed_n: int = 64,
             speed_repeats: int = 5, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """The chapter's acceptance numbers, measured side by side in one run (CPU, 1 thread):

    values ratio (image / latent); seconds per image of DDIM-``steps`` sampling of the pixel
    ``digits-cond`` model and of ``digits-ldm`` (decoding included), interleaved, median of
    ``speed_repeats``; FD of ``n`` decoded samples (balanced prompts) and of the pixel model's,
    beside the floor; the shipped classifier's accuracy on the prompted samples.
    """
    import statistics

    from .data import digits
    from .metrics import digits_fd, digits_fd_floor, load_digits_classifier
    from .pretrained import load_pretrained
    from .samplers import ddim_sample

    ldm, diffusion, _ = load_latent_diffusion(device="cpu")
    pixel, pixel_diffusion, pixel_config = load_pretrained("digits-cond", device="cpu")
    pixel = pixel.float()
    image_values = 1 * 16 * 16
    latent_values = math.prod(ldm.latent_shape)
    result: dict[str, Any] = {
        "command": "python -m ddpm_course.latent evaluate",
        "torch_threads": torch.get_num_threads(),
        "image_values": image_values, "latent_values": latent_values,
        "values_ratio": image_values / latent_values, "steps": steps, "n": n,
        "guidance_scale": guidance_scale, "scale_factor": ldm.scale_factor,
    }  # fmt: skip
    # reconstruction error of the autoencoder on the test split
    test_images, test_labels = digits(size=16, split="test")
    mean, _ = ldm.autoencoder.encode(test_images)
    reconstruction = ldm.autoencoder.decode(mean).clamp(-1, 1)
    result["reconstruction_mse"] = float((reconstruction - test_images).pow(2).mean())
    result["fd_reconstructions"] = digits_fd(reconstruction)

    # speed, side by side: the same batch, steps and sampler; each timed run interleaved
    labels = torch.arange(speed_n) % 10

    def pixel_run() -> torch.Tensor:
        shape = (
            speed_n,
            pixel_config.channels,
            pixel_config.image_size,
            pixel_config.image_size,
        )
        return ddim_sample(pixel, pixel_diffusion, shape, steps=steps, model_kwargs={"y": labels},
                           generator=torch.Generator().manual_seed(seed))  # fmt: skip

    def latent_run() -> torch.Tensor:
        return ldm.decode(ddim_sample(ldm, diffusion, (speed_n, *ldm.latent_shape), steps=steps,
                                      model_kwargs={"y": labels}, clip_denoised=False,
                                      generator=torch.Generator().manual_seed(seed)))  # fmt: skip

    pixel_run(), latent_run()  # warm-up
    pixel_times, latent_times = [], []
    for _ in range(speed_repeats):
        pixel_times += _time_per_image(pixel_run, speed_n, 1)
        latent_times += _time_per_image(latent_run, speed_n, 1)
    result["seconds_per_image_pixel"] = statistics.median(pixel_times)
    result["seconds_per_image_latent"] = statistics.median(latent_times)
    result["speed_ratio"] = (
        result["seconds_per_image_pixel"] / result["seconds_per_image_latent"]
    )
    result["ratio_range"] = [min(p / q for p, q in zip(pixel_times, latent_times, strict=True)),
                             max(p / q for p, q in zip(pixel_times, latent_times, strict=True))]  # fmt: skip

    # quality: FD of decoded prompted samples and of the pixel model's, beside the floor
    result["fd_floor"] = digits_fd_floor(
        n, generator=torch.Generator().manual_seed(seed)
    )
    prompts = [DIGIT_NAMES[i % 10] for i in range(n)]
    asked = torch.arange(n) % 10
    classifier = load_digits_classifier()
    for w in sorted({0.0, 0.5, 1.0, 2.0, guidance_scale}):
        samples = latent_sample(ldm, diffusion, n, prompt=prompts, guidance_scale=w, steps=steps,
                                generator=torch.Generator().manual_seed(seed))  # fmt: skip
        key = f"w{w:g}"
        result[f"fd_latent_{key}"] = digits_fd(samples)
        result[f"prompt_accuracy_{key}"] = float(
            (classifier(samples).argmax(1) == asked).float().mean()
        )
    samples = ddim_sample(pixel, pixel_diffusion, (n, 1, 16, 16), steps=steps, model_kwargs={"y": asked},
                          generator=torch.Generator().manual_seed(seed))  # fmt: skip
    result["fd_pixel_w0"] = digits_fd(samples)
    key = f"w{guidance_scale:g}"
    result["fd"] = result[f"fd_latent_{key}"]
    result["fd_over_floor"] = result["fd"] / result["fd_floor"]
    result["prompt_accuracy"] = result[f"prompt_accuracy_{key}"]
    result["acceptance"] = {
        "values_ratio >= 4": result["values_ratio"] >= 4,
        "speed_ratio >= 3": result["speed_ratio"] >= 3,
        "fd <= 2 floor": result["fd_over_floor"] <= 2,
        "prompt_accuracy >= 0.9": result["prompt_accuracy"] >= 0.9,
    }
    return result


def sample_from_cli(args, model, diffusion, config, device) -> int:
    """``ddpm-course sample --checkpoint digits-ldm --prompt seven`` (the sample command's
    namespace): latent samples from any of its samplers (no x0 clipping), decoded, saved as the
    command saves pixel samples. ``--prompt`` (a digit name; an unknown word is an error listing
    the vocabulary) or ``--class-label``; ``--guidance-scale W`` applies classifier-free guidance."""
    from .commands.sample import draw, save

    if not isinstance(model, LatentDiffusion):
        raise SystemExit(
            "error: --prompt needs a prompt-conditioned latent model, e.g. --checkpoint digits-ldm"
        )
    if not 1 <= args.steps <= diffusion.num_timesteps:
        raise SystemExit(
            f"--steps must lie in 1..{diffusion.num_timesteps} (the trained T), got {args.steps}"
        )
    try:
        if args.prompt is not None:
            labels = prompt_labels([args.prompt] * args.n)
        else:
            label = len(DIGIT_NAMES) if args.class_label is None else args.class_label
            if not 0 <= label <= len(DIGIT_NAMES):
                raise ValueError(
                    f"--class-label must lie in 0..9 (or be omitted), got {label}"
                )
            labels = torch.full((args.n,), label, dtype=torch.long)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    guidance = getattr(args, "guidance_scale", None) or 0.0
    net: nn.Module = model
    if guidance > 0:
        from .guidance import ClassifierFreeGuidance

        net = ClassifierFreeGuidance(model, guidance)
    generator = torch.Generator(device).manual_seed(args.seed)
    shape = (args.n, *model.latent_shape)
    common = dict(model_kwargs={"y": labels.to(device)}, generator=generator, progress=True, device=device,
                  clip_denoised=False)  # fmt: skip
    latents = draw(args, net, diffusion, shape, **common)
    return save(args, ((model.decode(latents).float().cpu() + 1) / 2).clamp(0, 1))


SD_LATENT_STD = (
    1 / 0.18215
)  # the spread of Stable Diffusion v1's unscaled latents (about 5.5)


@torch.no_grad()
def scale_ablation(which: str, steps: int = 1500, n: int = 400, sample_steps: int = 50,
                   seed: int = 0) -> dict[str, float]:  # fmt: skip
    """Train the digits-ldm recipe for ``steps`` on latents with Stable Diffusion's spread
    (``which="unscaled"``: the shipped encoder's latents times c, c = 5.5 / std, i.e. an
    encoder that is equally good but gives SD-sized latents, diffused as they are) or on the
    same latents scaled to unit variance (``"scaled"``); return the FD of ``n`` decoded DDIM
    samples (balanced prompts, no guidance) and the latents' std. The decoder always gets the
    right latents back (it divides by the factor that was applied)."""
    import tempfile

    from .data import digits
    from .metrics import digits_fd

    if which not in ("scaled", "unscaled"):
        raise ValueError(f"which must be 'scaled' or 'unscaled', got {which!r}")
    vae, _ = load_vae()
    images, labels = digits(size=16, split="train")
    mean, logvar = vae.encode(images)
    z = reparameterize(
        mean,
        logvar,
        torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed)),
    )
    c = SD_LATENT_STD / float(z.std())
    factor = c if which == "unscaled" else c * estimate_scale_factor(c * z)
    with tempfile.TemporaryDirectory() as folder, torch.enable_grad():
        config = ldm_train_config(max_steps=steps, out_dir=folder, checkpoint_every=0, sample_every=0,
                                  seed=seed)  # fmt: skip
        ldm = LatentDiffusion(vae, CrossAttnUNet(**LDM_UNET), factor)
        trainer = LatentTrainer(config, ldm, images, labels)
        trainer.train()
        std = float(trainer.dataset.tensors[0].std())
    ldm = LatentDiffusion(vae, trainer.ema_model.float().eval(), factor)
    prompts = [DIGIT_NAMES[i % 10] for i in range(n)]
    samples = latent_sample(ldm, trainer.diffusion, n, prompt=prompts, steps=sample_steps,
                            generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return {"latent_std": std, "fd": digits_fd(samples), "steps": steps}


LATENT_PRESETS = ("digits-vae", "digits-ldm")


def train_from_cli(args) -> int:
    """``ddpm-course train --preset digits-vae | digits-ldm`` (the train command's namespace):
    digits-vae trains the autoencoder (``--max-steps``, default 800) into ``--out`` (a weights
    file; default the package's), digits-ldm trains the latent U-Net with the Trainer on the
    shipped autoencoder's latents into the run folder ``--out`` (``--resume`` and the Trainer's
    flags apply; ``--set`` any TrainConfig field)."""
    from .commands.train import FLAGS, _parse_settings

    if args.preset == "digits-vae":
        argv = ["train-vae"]
        if args.max_steps is not None:
            argv += ["--steps", str(args.max_steps)]
        if args.out:
            argv += ["--out", args.out]
        return main(argv)
    overrides = {
        name: getattr(args, name)
        for name, _, _ in FLAGS.values()
        if getattr(args, name) is not None
    }
    overrides.update(_parse_settings(args.settings))
    overrides["out_dir"] = args.out or "runs/digits-ldm"
    return _train_ldm(ldm_train_config(**overrides), resume=args.resume)


def _train_ldm(config, resume: bool = False, export: bool = False) -> int:
    from .data import digits

    vae, scale = load_vae()
    images, labels = digits(size=16, split="train")
    trainer = LatentTrainer(
        config, LatentDiffusion(vae, CrossAttnUNet(**LDM_UNET), scale), images, labels
    )
    run = trainer.train(resume=resume)
    print(f"run folder: {run} (load it with ddpm_course.latent.load_latent_diffusion)")
    if export:
        print(f"wrote {export_ldm(run)}")
    return 0


def export_ldm(run_dir: str | Path) -> Path:
    """Copy a latent run's EMA weights into the package as ``digits-ldm`` (float16, with the
    sidecar), as :func:`ddpm_course.pretrained.export` does for the pixel models."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    source = Path(run_dir) / "model.safetensors"
    with safe_open(str(source), "pt") as handle:
        metadata = handle.metadata()
    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous()
        for k, v in load_file(source).items()
    }
    target = _weights_dir() / "digits-ldm.safetensors"
    save_file(state, str(target), metadata=metadata)
    shutil.copy(source.with_suffix(".json"), target.with_suffix(".json"))
    for written in (target, target.with_suffix(".json")):
        written.chmod(0o644)
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m ddpm_course.latent train-vae | train-ldm | export RUN | evaluate``."""
    import argparse

    parser = argparse.ArgumentParser(
        description="Chapter 07: the digits autoencoder, the latent model, the numbers"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    vae = sub.add_parser(
        "train-vae", help="train digits-vae and write it into the package"
    )
    vae.add_argument("--steps", type=int, default=800)
    vae.add_argument("--kl-weight", type=float, default=1e-5)
    vae.add_argument(
        "--out",
        type=Path,
        default=None,
        help="weights file (default: the package's digits-vae)",
    )
    ldm = sub.add_parser(
        "train-ldm", help="train digits-ldm on the shipped autoencoder's latents"
    )
    ldm.add_argument("--max-steps", type=int, default=None)
    ldm.add_argument("--out", default="runs/digits-ldm")
    ldm.add_argument(
        "--export", action="store_true", help="copy the EMA weights into the package"
    )
    exporter = sub.add_parser(
        "export", help="copy a latent run's EMA weights into the package (digits-ldm)"
    )
    exporter.add_argument("run_dir")
    ab = sub.add_parser(
        "scale-ablation",
        help="train on unscaled vs scaled latents; add the FDs to the results",
    )
    ab.add_argument("which", choices=("scaled", "unscaled"))
    ab.add_argument("--steps", type=int, default=1500)
    ab.add_argument("--out", type=Path, default=RESULTS_PATH)
    ev = sub.add_parser(
        "evaluate", help="write the acceptance numbers to book/results/07_latent.json"
    )
    ev.add_argument("--n", type=int, default=400)
    ev.add_argument("--steps", type=int, default=50)
    ev.add_argument(
        "--guidance-scale",
        type=float,
        default=0.5,
        help="the w of the acceptance numbers",
    )
    ev.add_argument("--out", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    if args.command == "train-vae":
        from .data import digits

        images, _ = digits(size=16, split="train")
        model, history = train_vae(
            images, steps=args.steps, kl_weight=args.kl_weight, log=print
        )
        with torch.no_grad():
            mean, logvar = model.encode(images)
            z = reparameterize(
                mean,
                logvar,
                torch.randn(mean.shape, generator=torch.Generator().manual_seed(0)),
            )
        scale = estimate_scale_factor(z)
        out = args.out or _weights_dir() / "digits-vae.safetensors"
        extra = {"train": {"steps": args.steps, "kl_weight": args.kl_weight, "batch_size": 64, "lr": 1e-3, "seed": 0},
                 "final": history[-1]}  # fmt: skip
        print(f"scale factor {scale:.5f}; wrote {save_vae(model, scale, out, extra)}")
        return 0
    if args.command == "train-ldm":
        overrides = {"out_dir": args.out}
        if args.max_steps is not None:
            overrides["max_steps"] = args.max_steps
        return _train_ldm(ldm_train_config(**overrides), export=args.export)
    if args.command == "export":
        print(f"wrote {export_ldm(args.run_dir)}")
        return 0
    if args.command == "scale-ablation":
        part = scale_ablation(args.which, steps=args.steps)
        print(json.dumps(part))
        merged = json.loads(args.out.read_text()) if args.out.is_file() else {}
        merged.setdefault("scale_ablation", {})[args.which] = part
        merged["scale_ablation"]["command"] = (
            "python -m ddpm_course.latent scale-ablation {scaled,unscaled}"
        )
        args.out.write_text(json.dumps(merged, indent=1) + "\n")
        return 0
    result = evaluate(n=args.n, steps=args.steps, guidance_scale=args.guidance_scale)
    if args.out.is_file():  # keep the scale ablation, which has its own command
        previous = json.loads(args.out.read_text())
        if "scale_ablation" in previous:
            result["scale_ablation"] = previous["scale_ablation"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
