"""Loading a trained model for sampling: a run folder, a checkpoint or a weights file in, ``(model, diffusion, config)`` out.

Chapter 04. Inference imports this module, never the trainer: the U-Net is rebuilt from the
configuration saved beside the weights (:func:`~ddpm_course.config.build_diffusion` for the process).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
)
from .config import TrainConfig, build_diffusion
from .diffusion import GaussianDiffusion
from .profiles import default_device

__all__ = ["load_model"]


def load_model(
    path: str | Path,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
) -> tuple[nn.Module, GaussianDiffusion, TrainConfig]:
    """The EMA model of a run for sampling: ``(model in eval mode, diffusion, config)``.

    ``path`` is a run folder (its latest checkpoint, else its ``model.safetensors``), a
    ``checkpoints/step_XXXXXXX.pt`` file, or a ``.safetensors`` file with its ``.json`` sidecar.
    The U-Net is rebuilt from the saved configuration; pass ``model`` to load into your own
    architecture instead. Raises :class:`~ddpm_course.checkpoint.CheckpointError` for a bad path.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no run folder, checkpoint or weights file at {path}")
    if path.is_dir():
        found = latest_checkpoint(path / "checkpoints")
        if found is None and (path / "model.safetensors").is_file():
            found = path / "model.safetensors"
        if found is None:
            raise CheckpointError(
                f"{path} holds neither checkpoints/step_*.pt nor model.safetensors; is it a run folder?"
            )
        path = found
    if path.suffix == ".safetensors":
        state_dict, metadata = load_weights(path)
        if "train_config" not in metadata:
            raise CheckpointError(
                f"the sidecar of {path} lacks 'train_config'; it was not written by the trainer"
            )
        config_dict, model_config = (
            metadata["train_config"],
            metadata.get("model_config"),
        )
    elif path.suffix == ".pt":
        state = load_checkpoint(path, required=("ema", "config"))
        state_dict, config_dict, model_config = (
            state["ema"],
            state["config"],
            state.get("model_config"),
        )
    else:
        raise CheckpointError(
            f"cannot load {path}: give a run folder, a step_*.pt checkpoint or a .safetensors file"
        )
    config = TrainConfig.from_dict(config_dict)
    if model is None:
        from .nn import UNet

        if model_config is None:
            raise CheckpointError(
                f"{path} was trained with a custom model; build it and pass it as load_model(path, model=...)"
            )
        model = UNet(**model_config)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise CheckpointError(
            f"the weights in {path} do not fit the model: {str(error).splitlines()[0]}"
        ) from None
    device = torch.device(device) if device is not None else default_device()
    return model.to(device).eval(), build_diffusion(config), config
