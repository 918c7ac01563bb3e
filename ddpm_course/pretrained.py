"""Small pretrained checkpoints shipped with the package, so that every chapter runs in minutes on a CPU.

Each entry is an EMA weights file ``weights/<name>.safetensors`` with its ``.json`` sidecar (the
model and training configuration, written by the trainer), the exact command that reproduces it
on a 2-core CPU, and its model card (``weights/MODEL_CARDS.md``). Loading never unpickles code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import INT8_FORMAT, load_weights, quantize_int8, save_weights
from .config import TrainConfig
from .diffusion import GaussianDiffusion
from .loading import WEIGHTS_DIR, load_model
from .utils import check_choice

__all__ = [
    "PRETRAINED",
    "Pretrained",
    "load_pretrained",
    "load_any",
    "export",
    "WEIGHTS_DIR",
]


@dataclass(frozen=True)
class Pretrained:
    name: str
    description: str
    command: str
    # a denoiser of the digits whose FD `python -m ddpm_course.pretrained fd` measures
    denoiser: bool = False

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.safetensors"


# Retired (no page uses them since chapters 06 and 07 moved to Fashion-MNIST; their presets
# still train them): digits-sr (`python -m ddpm_course.guidance_models sr`) and digits-ldm
# (`ddpm-course train --preset digits-ldm`).
# the step each shipped model was trained to (on 1 thread of a 2-core CPU: digits 16 minutes,
# digits-cond 26; the run is deterministic on the CPU, so --max-steps reproduces it)
TRAINED_STEPS = {
    "digits": 2500,
    "digits-cond": 4000,
    "fashion": 9000,
    "fashion-cond": 5000,
    "fashion-flow": 9000,
    "fashion-fewstep": 3000,
}


def _command(preset: str) -> str:
    return (
        f"OMP_NUM_THREADS=1 ddpm-course train --preset {preset} --max-steps {TRAINED_STEPS[preset]} --out runs/{preset} && "
        f"python -m ddpm_course.pretrained export runs/{preset} {preset}"
    )


PRETRAINED = {
    "digits": Pretrained(
        "digits",
        "unconditional U-Net (digits preset) on the 16×16 digits",
        _command("digits"),
        denoiser=True,
    ),
    "digits-cond": Pretrained(
        "digits-cond",
        "class-conditional U-Net with a null class (p_uncond 0.2) on the 16×16 digits",
        _command("digits-cond"),
        denoiser=True,
    ),
    "fashion": Pretrained(
        "fashion",
        "unconditional patch-2 U-Net (fashion preset) on the 28×28 Fashion-MNIST images",
        _command("fashion"),
    ),
    "fashion-cond": Pretrained(
        "fashion-cond",
        "class-conditional patch-2 U-Net with a null class (p_uncond 0.2) on Fashion-MNIST",
        _command("fashion-cond"),
    ),
    "fashion-flow": Pretrained(
        "fashion-flow",
        "the fashion U-Net and recipe trained by flow matching (chapter 09); int8 weights",
        _command("fashion-flow") + " --int8",
    ),
    "fashion-fewstep": Pretrained(
        "fashion-fewstep",
        "fashion-flow consistency-distilled to sample in 1-4 steps (chapter 10); int8 weights",
        _command("fashion-fewstep") + " --int8",
    ),
    "fashion-sr": Pretrained(
        "fashion-sr",
        "14×14 → 28×28 super-resolution U-Net conditioned by concatenation (SR3, chapter 06); "
        "int8 weights",
        "OMP_NUM_THREADS=1 python -m ddpm_course.guidance_models fashion-sr "
        "--out runs/fashion-sr.safetensors && "
        "python -m ddpm_course.pretrained export runs/fashion-sr.safetensors fashion-sr --int8",
    ),
    "fashion-vae": Pretrained(
        "fashion-vae",
        "KL-regularised autoencoder 28×28×1 → 7×7×4 with its latent scale factor (chapter 07); "
        "int8 weights",
        "OMP_NUM_THREADS=1 ddpm-course train --preset fashion-vae "
        "--out runs/fashion-vae.safetensors && "
        "python -m ddpm_course.pretrained export runs/fashion-vae.safetensors fashion-vae --int8",
    ),
    "fashion-ldm": Pretrained(
        "fashion-ldm",
        "latent U-Net on fashion-vae latents, prompted by the garment's name (chapter 07); "
        "int8 weights",
        "OMP_NUM_THREADS=1 ddpm-course train --preset fashion-ldm --out runs/fashion-ldm && "
        "python -m ddpm_course.pretrained export runs/fashion-ldm fashion-ldm --int8",
    ),
    "digits-noisy-classifier": Pretrained(
        "digits-noisy-classifier",
        "classifier of noisy digits p(y | x_t, t) for classifier guidance (chapter 06)",
        "OMP_NUM_THREADS=1 python -m ddpm_course.guidance_models classifier",
    ),
    "digits-vae": Pretrained(
        "digits-vae",
        "KL-regularised autoencoder 16×16×1 → 4×4×4 with its latent scale factor (chapter 07)",
        "OMP_NUM_THREADS=1 ddpm-course train --preset digits-vae",
    ),
}


def load_pretrained(
    name: str, device: torch.device | str | None = None
) -> tuple[nn.Module, GaussianDiffusion | None, TrainConfig | None]:
    """A shipped model by name, by :func:`~ddpm_course.loading.load_model`: ``(model in eval
    mode, diffusion, training config)``; an autoencoder (``digits-vae``) has no diffusion
    (``(model, None, None)``, its scale factor in ``model.scale_factor``)."""
    check_choice("pretrained model", name, PRETRAINED)
    entry = PRETRAINED[name]
    if not entry.path.exists():
        raise FileNotFoundError(
            f"{entry.path} is missing from this installation; rebuild it with: {entry.command}"
        )
    return load_model(entry.path, device=device)


def load_any(spec: str | Path, device: torch.device | str | None = None):
    """A shipped model name (see :data:`PRETRAINED`), else a run folder / checkpoint / weights path."""
    if isinstance(spec, str) and spec in PRETRAINED:
        return load_pretrained(spec, device=device)
    return load_model(spec, device=device)


@torch.no_grad()
def evaluate_fd(
    name: str, n: int = 400, steps: int = 50, seed: int = 0, spacing: str = "leading"
) -> dict[str, float]:
    """FD of ``n`` DDIM-``steps`` samples of a shipped model against the digits test split, beside the
    floor (``n`` real training digits against the same split). A class-conditional model is sampled
    with balanced labels (no guidance) and with the null class. ``spacing`` stays "leading" (not the
    samplers' trailing default): the model card's numbers were measured with it."""
    from .metrics import digits_fd, digits_fd_floor
    from .samplers import sample

    model, diffusion, config = load_pretrained(name, device="cpu")
    shape = (n, config.channels, config.image_size, config.image_size)
    generator = torch.Generator().manual_seed(seed)
    result = {
        "floor": digits_fd_floor(n, generator=torch.Generator().manual_seed(seed))
    }
    if config.class_conditional:
        labels = torch.arange(n) % config.num_classes
        samples = sample(
            "ddim",
            model,
            diffusion,
            shape,
            steps=steps,
            spacing=spacing,
            generator=generator,
            model_kwargs={"y": labels},
        )
        result["fd_conditional"] = digits_fd(samples)
        null = torch.full((n,), config.num_classes)
        samples = sample(
            "ddim",
            model,
            diffusion,
            shape,
            steps=steps,
            spacing=spacing,
            generator=generator,
            model_kwargs={"y": null},
        )
        result["fd_null_class"] = digits_fd(samples)
    else:
        result["fd"] = digits_fd(
            sample(
                "ddim",
                model,
                diffusion,
                shape,
                steps=steps,
                spacing=spacing,
                generator=generator,
            )
        )
    return result


def export(run_dir: str | Path, name: str, int8: bool = False) -> Path:
    """Copy a run's EMA weights (``run_dir``: a run folder, or a ``.safetensors`` file that a
    training command wrote with its sidecar) into ``weights/<name>.safetensors`` in float16 (half the size; sampling
    quality is unchanged at this precision), with its JSON sidecar, by the one weights writer
    (:func:`~ddpm_course.checkpoint.save_weights`). ``int8``: the convolution and linear weights in
    int8 with one scale per output channel instead (:func:`~ddpm_course.checkpoint.quantize_int8`,
    about half the float16 size; the sidecar says so and loading dequantizes), for the models
    the 25 MB budget of shipped weights could not hold otherwise; measure such a model as shipped."""
    source = Path(run_dir)
    if source.suffix != ".safetensors":
        source = source / "model.safetensors"
    state, metadata = load_weights(source)
    if int8:
        return save_weights(
            quantize_int8(state),
            WEIGHTS_DIR / f"{name}.safetensors",
            {**metadata, "quantization": INT8_FORMAT},
        )
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return save_weights(half, WEIGHTS_DIR / f"{name}.safetensors", metadata)


def main(argv: list[str] | None = None) -> int:
    """``python -m ddpm_course.pretrained fd`` (FD of every shipped model, 400 DDIM-50 samples, beside the
    floor) or ``python -m ddpm_course.pretrained export RUN NAME``."""
    import argparse

    parser = argparse.ArgumentParser(
        description="The shipped models: measure their FD, or export a run into the package"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fd = sub.add_parser("fd", help="FD of each shipped model beside the floor")
    fd.add_argument("--n", type=int, default=400)
    fd.add_argument("--steps", type=int, default=50)
    exporter = sub.add_parser(
        "export", help="copy a run's EMA weights into the package (float16)"
    )
    exporter.add_argument(
        "run_dir", help="a run folder, or a .safetensors file with its sidecar"
    )
    exporter.add_argument("name", choices=sorted(PRETRAINED))
    exporter.add_argument(
        "--int8",
        action="store_true",
        help="convolution and linear weights in int8, one scale per output channel",
    )
    args = parser.parse_args(argv)
    if args.command == "export":
        print(f"wrote {export(args.run_dir, args.name, int8=args.int8)}")
        return 0
    for name in (name for name, entry in PRETRAINED.items() if entry.denoiser):
        print(
            name,
            {
                key: round(value, 2)
                for key, value in evaluate_fd(name, args.n, args.steps).items()
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
