"""The one model loader: a run folder, a checkpoint or a weights file in, ``(model, diffusion, config)`` out.

Chapter 04. Inference imports this module, never the trainer. The network is rebuilt from what
was saved beside its weights: the class named by ``model_class`` (one of :data:`MODEL_CLASSES`;
``UNet`` when a file predates the field) built from ``model_config``, and the diffusion process
from the training config (:func:`~ddpm_course.config.build_diffusion`). A latent denoiser whose
sidecar names an ``autoencoder`` comes back wrapped in
:class:`~ddpm_course.latent.LatentDiffusion`; an autoencoder has no diffusion process (``None``
for diffusion and config; its ``scale_factor`` is set from the sidecar).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attention import CrossAttnUNet
from .autoencoder import AutoencoderKL
from .checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
)
from .config import TrainConfig, build_diffusion
from .diffusion import GaussianDiffusion
from .dit import DiT
from .guidance_nets import NoisyClassifier, SuperResUNet
from .latent import LatentDiffusion
from .nn import UNet
from .profiles import default_device

__all__ = ["MODEL_CLASSES", "WEIGHTS_DIR", "build_saved_model", "load_model"]

# the shipped weights (see ddpm_course.pretrained), inside the installed package
WEIGHTS_DIR = Path(__file__).parent / "weights"
# every class a sidecar's "model_class" may name
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (UNet, CrossAttnUNet, NoisyClassifier, SuperResUNet, AutoencoderKL, DiT)
}


def build_saved_model(saved: dict[str, Any], path: Path) -> nn.Module:
    """The untrained network that ``saved`` (a sidecar or checkpoint) describes."""
    name = saved.get("model_class", "UNet")
    if name not in MODEL_CLASSES or saved.get("model_config") is None:
        raise CheckpointError(
            f"{path} was trained with a custom model ({name}); build it and pass it as "
            "load_model(path, model=...)"
        )
    return MODEL_CLASSES[name](**saved["model_config"])


def _resolve(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(f"no run folder, checkpoint or weights file at {path}")
    if not path.is_dir():
        return path
    found = latest_checkpoint(path / "checkpoints")
    if found is None and (path / "model.safetensors").is_file():
        found = path / "model.safetensors"
    if found is None:
        raise CheckpointError(
            f"{path} holds neither checkpoints/step_*.pt nor model.safetensors; is it a run folder?"
        )
    return found


def load_model(
    path: str | Path,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
) -> tuple[nn.Module, GaussianDiffusion | None, TrainConfig | None]:
    """A saved model for sampling: ``(model in eval mode, diffusion, config)``.

    ``path`` is a run folder (its latest checkpoint, else its ``model.safetensors``), a
    ``checkpoints/step_XXXXXXX.pt`` file (its EMA weights), or a ``.safetensors`` file with its
    ``.json`` sidecar. Pass ``model`` to load into your own architecture instead. ``device``:
    default :func:`~ddpm_course.profiles.default_device`. Raises
    :class:`~ddpm_course.checkpoint.CheckpointError` for a bad path or weights that do not fit.
    """
    path = _resolve(Path(path))
    if path.suffix == ".safetensors":
        state_dict, saved = load_weights(path)
        config_dict = saved.get("train_config")
        if config_dict is None and saved.get("model_class") != "AutoencoderKL":
            raise CheckpointError(
                f"the sidecar of {path} lacks 'train_config'; it was not written by the trainer"
            )
    elif path.suffix == ".pt":
        saved = load_checkpoint(path, required=("ema", "config"))
        state_dict, config_dict = saved["ema"], saved["config"]
    else:
        raise CheckpointError(
            f"cannot load {path}: give a run folder, a step_*.pt checkpoint or a .safetensors file"
        )
    model = build_saved_model(saved, path) if model is None else model
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise CheckpointError(
            f"the weights in {path} do not fit the model: {str(error).splitlines()[0]}"
        ) from None
    device = torch.device(device) if device is not None else default_device()
    if isinstance(model, AutoencoderKL):
        model.scale_factor = float(saved["scale_factor"])
        return model.to(device).eval(), None, None
    config = TrainConfig.from_dict(config_dict)
    if (
        saved.get("autoencoder") is not None
    ):  # a latent denoiser: decode with its autoencoder
        autoencoder, _, _ = load_model(
            WEIGHTS_DIR / f"{saved['autoencoder']}.safetensors", device=device
        )
        scale_factor = saved.get("scale_factor", autoencoder.scale_factor)
        model = LatentDiffusion(autoencoder, model, scale_factor)
    return model.to(device).eval(), build_diffusion(config), config
