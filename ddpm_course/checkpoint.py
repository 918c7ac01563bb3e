"""Saving and loading training state safely: atomic writes, safe loads, the last K checkpoints.

* A file is written atomically: into a temporary file in the same folder, flushed to disk, then
  renamed over the target with ``os.replace``. A crash half-way leaves the previous file as it was.
* Loading never unpickles code: checkpoints go through ``torch.load(weights_only=True)`` (plain
  dicts, lists, numbers, strings and tensors only) and weights through safetensors.
* A missing, truncated or foreign file raises :class:`CheckpointError` with a message that says
  which file and what to do, not a traceback from deep inside the unpickler.

Layout of a run folder: ``checkpoints/step_0001000.pt`` (full training state), and for inference
``model.safetensors`` (EMA weights) next to ``model.json`` (the model's configuration).
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "atomic_write",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_path",
    "list_checkpoints",
    "latest_checkpoint",
    "prune_checkpoints",
    "save_weights",
    "load_weights",
    "quantize_int8",
    "dequantize_int8",
    "INT8_SCALE_PREFIX",
    "sidecar_path",
    "append_log",
    "trim_log",
    "rng_state",
    "set_rng_state",
    "check_architecture",
    "check_resumable",
    "TRAINING_STATE_KEYS",
]

CHECKPOINT_FORMAT = "ddpm_course.checkpoint"
# what a training checkpoint holds (the Trainer's save_checkpoint)
TRAINING_STATE_KEYS = (
    "step",
    "config",
    "model",
    "ema",
    "optimizer",
    "scaler",
    "data",
    "rng",
)
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that is missing, unreadable or not what it should be."""


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Create or replace ``path`` with what ``write(file)`` writes, all or nothing.

    ``write`` fills a temporary file in the same folder (same file system, so the rename is
    atomic); the file is flushed and fsync'ed, then ``os.replace`` puts it in place. If ``write``
    raises, the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def checkpoint_path(folder: str | Path, step: int) -> Path:
    """``folder/step_0001000.pt`` for step 1000 (seven digits, so that names sort by step)."""
    return Path(folder) / f"step_{step:07d}.pt"


def list_checkpoints(folder: str | Path) -> list[Path]:
    """The ``step_*.pt`` files in ``folder``, oldest step first (an empty list if there is no folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := _STEP_FILE.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``folder``, or None."""
    checkpoints = list_checkpoints(folder)
    return checkpoints[-1] if checkpoints else None


def prune_checkpoints(folder: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` most recent checkpoints in ``folder``; returns the deleted paths."""
    if keep < 1:
        raise ValueError(
            f"keep must be at least 1 (the checkpoint just written), got {keep}"
        )
    stale = list_checkpoints(folder)[:-keep]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write a training state (a dict of tensors, numbers, strings, lists and dicts) atomically
    with ``torch.save``, tagged with its format so that :func:`load_checkpoint` recognises it."""
    tagged = {"format": CHECKPOINT_FORMAT, **state}
    return atomic_write(path, lambda file: torch.save(tagged, file))


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU, refusing to unpickle code.

    ``required``: keys the state must have. Raises :class:`CheckpointError` when the file is missing,
    truncated, holds anything but plain data (``torch.load(weights_only=True)``), or is not a
    ddpm_course checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... by damage
        reason = (
            str(error).strip().splitlines()[0]
            if str(error).strip()
            else type(error).__name__
        )
        raise CheckpointError(
            f"cannot read the checkpoint {path}: it is truncated, corrupt, or holds more than plain "
            f"tensors and numbers (only weights_only loading is allowed) [{type(error).__name__}: {reason}]. "
            "Delete it to fall back to the previous checkpoint."
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a ddpm_course training checkpoint (no format tag {CHECKPOINT_FORMAT!r})"
        )
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(
            f"the checkpoint {path} lacks {', '.join(missing)}; it was not written by this trainer"
        )
    return state


def sidecar_path(weights_path: str | Path) -> Path:
    """The JSON file that describes a weights file: ``model.safetensors`` -> ``model.json``."""
    return Path(weights_path).with_suffix(".json")


def save_weights(
    state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, Any]
) -> Path:
    """Write ``state_dict`` to a ``.safetensors`` file and ``metadata`` (JSON-serialisable) to its
    sidecar :func:`sidecar_path`, both atomically and readable by all (0644, like any shipped
    file). The one writer of weights: the trainer's ``model.safetensors`` and every export of
    shipped weights (:func:`ddpm_course.pretrained.export`, chapter 06's and 07's models) go
    through it. Returns the weights path."""
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"weights go to a .safetensors file, got {path}")
    tensors = {
        name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()
    }
    payload = save(tensors)
    atomic_write(path, lambda file: file.write(payload))
    text = json.dumps(metadata, indent=2, sort_keys=True) + "\n"
    atomic_write(sidecar_path(path), lambda file: file.write(text.encode()))
    for written in (path, sidecar_path(path)):
        written.chmod(0o644)  # mkstemp's files are 0600
    return path


# ----------------------------------------------------------- int8 weights (shipped models)
INT8_SCALE_PREFIX = "int8_scale."
INT8_FORMAT = "int8, symmetric, one scale per output channel"


def quantize_int8(
    state_dict: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    r"""Weight-only int8 quantisation, for shipping weights at a quarter of float32's size.

    Each floating tensor with two or more dimensions (convolution and linear weights, where the
    parameters are) becomes int8 with one float32 scale per output channel (dim 0):
    :math:`s_c = \max_i |w_{c,i}| / 127`, :math:`q_{c,i} = \mathrm{round}(w_{c,i}/s_c)`, so
    :math:`|q_{c,i} s_c - w_{c,i}| \le s_c/2`. The scale of tensor ``name`` is stored as
    ``INT8_SCALE_PREFIX + name``, shape (C_out,). Other floating tensors (biases, norms) become
    float16; the rest is unchanged. :func:`dequantize_int8` inverts it.
    """
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        if name.startswith(INT8_SCALE_PREFIX):
            raise ValueError(f"state_dict key {name!r} uses the reserved prefix")
        tensor = tensor.detach().cpu()
        if not tensor.is_floating_point():
            out[name] = tensor
        elif tensor.ndim < 2:
            out[name] = tensor.half()
        else:
            weights = tensor.float().reshape(tensor.shape[0], -1)
            scale = weights.abs().amax(dim=1) / 127
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            quantized = torch.round(weights / scale[:, None]).clamp(-127, 127)
            out[name] = quantized.to(torch.int8).reshape(tensor.shape)
            out[INT8_SCALE_PREFIX + name] = scale
    return out


def dequantize_int8(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float32 state dict of :func:`quantize_int8`'s output: int8 tensors times their scales,
    the other floating tensors cast to float32, the rest unchanged; the scales removed."""
    scales = {
        name.removeprefix(INT8_SCALE_PREFIX): scale
        for name, scale in state_dict.items()
        if name.startswith(INT8_SCALE_PREFIX)
    }
    out = {}
    for name, tensor in state_dict.items():
        if name.startswith(INT8_SCALE_PREFIX):
            continue
        if name in scales:
            if tensor.dtype != torch.int8:
                raise CheckpointError(
                    f"{name} has an int8 scale but dtype {tensor.dtype}"
                )
            shape = (-1,) + (1,) * (tensor.ndim - 1)
            tensor = tensor.float() * scales[name].float().reshape(shape)
        out[name] = tensor.float() if tensor.is_floating_point() else tensor
    return out


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a ``.safetensors`` file and its JSON sidecar: (state_dict on the CPU, metadata).
    Weights stored in int8 (:func:`quantize_int8`; the sidecar's ``"quantization"``) come back
    dequantized to float32."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    sidecar = sidecar_path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    if not sidecar.is_file():
        raise CheckpointError(
            f"{path} has no sidecar {sidecar.name} describing the model; it is written next to the weights by the trainer"
        )
    try:
        state_dict = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read the weights {path}: {error}") from None
    try:
        metadata = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"the sidecar {sidecar} is not valid JSON: {error}"
        ) from None
    if metadata.get("quantization") is not None:
        if metadata["quantization"] != INT8_FORMAT:
            raise CheckpointError(
                f"{path} is quantised as {metadata['quantization']!r}; this version reads "
                f"{INT8_FORMAT!r} only"
            )
        state_dict = dequantize_int8(state_dict)
    return state_dict, metadata


# -------------------------------------------------------------------------- the run log
def append_log(path: Path, record: dict[str, Any]) -> None:
    """Add ``record`` as one JSON line to the run's ``log.jsonl``."""
    with Path(path).open("a") as file:
        file.write(json.dumps(record) + "\n")


def trim_log(path: Path, keep_through: int) -> None:
    """Drop the log lines of steps after ``keep_through`` (steps that a resumed run will redo),
    and any line cut short by a crash; atomically."""
    path = Path(path)
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    kept = ""
    for line in lines:
        try:
            if json.loads(line)["step"] <= keep_through:
                kept += line
        except (
            json.JSONDecodeError,
            KeyError,
            TypeError,
        ):  # a line cut short by a crash
            continue
    atomic_write(path, lambda file: file.write(kept.encode()))


# ------------------------------------------------------------------ exact resume
def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """This process's random state (torch, CUDA on ``device``, ``generator``, numpy, Python), as plain tensors and numbers (loadable with weights_only)."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "generator": generator.get_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": position,
            "has_gauss": has_gauss,
            "cached_gaussian": cached_gaussian,
        },
        "python": {
            "version": version,
            "state": torch.tensor(python_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def set_rng_state(
    state: dict[str, Any], generator: torch.Generator, device: torch.device
) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    generator.set_state(state["generator"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))  # fmt: skip
    python_state = state["python"]
    random.setstate(
        (
            python_state["version"],
            tuple(python_state["state"].tolist()),
            python_state["gauss_next"],
        )
    )


def check_resumable(
    path: Path,
    saved: dict[str, Any],
    current: dict[str, Any],
    invariants: tuple[str, ...],
) -> None:
    """Refuse to resume the checkpoint ``path`` (its training config ``saved``) with a config
    ``current`` that changes one of the settings named in ``invariants``."""
    changed = [f"{name}: {saved.get(name)!r} -> {current.get(name)!r}"
               for name in invariants if saved.get(name) != current.get(name)]  # fmt: skip
    if changed:
        raise ValueError(
            f"cannot resume {path} with a different {', '.join(changed)}; keep these settings as they were"
        )


def check_architecture(path: Path, saved: Any, current: Any) -> None:
    """Refuse a checkpoint whose model config ``saved`` differs from ``current`` (the model
    being resumed; e.g. a preset that changed since), naming the differences and the
    ``model_overrides`` that rebuild the saved model."""
    if not isinstance(saved, dict) or not isinstance(current, dict):
        return

    def plain(value: Any) -> Any:  # tuples and lists alike, as in JSON
        return json.loads(json.dumps(value))

    differ = sorted(
        key
        for key in saved.keys() | current.keys()
        if plain(saved.get(key)) != plain(current.get(key))
    )
    if differ:
        was = ", ".join(f"{key}={saved.get(key)!r}" for key in differ)
        now = ", ".join(f"{key}={current.get(key)!r}" for key in differ)
        overrides = json.dumps(
            {key: plain(saved.get(key)) for key in differ if key in saved}
        )
        raise CheckpointError(
            f"the checkpoint {path} was written by a model with {was}, but this run builds {now} (did the preset "
            f"change?); resume with the checkpoint's architecture: --set model_overrides='{overrides}' "
            f"(TrainConfig.model_overrides)"
        )
