r"""Chapter 07's measured numbers (the book's: ``book/results/07_latent.json``).

``python -m ddpm_course.experiments.latent_eval evaluate --out book/results/07_latent.json``: the
acceptance numbers of :func:`evaluate` (values ratio, speed ratio against the pixel
``digits-cond``, FD beside the floor, prompt accuracy); ``... scale-ablation scaled|unscaled --out
book/results/07_latent.json``: :func:`scale_ablation`, merged into the same file.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..attention import DIGIT_NAMES, CrossAttnUNet
from ..data import digits
from ..latent import (
    LDM_UNET,
    LatentDiffusion,
    estimate_scale_factor,
    latent_sample,
    reparameterize,
)
from ..latent_train import LatentTrainer, ldm_train_config
from ..metrics import digits_fd, digits_fd_floor, load_digits_classifier
from ..pretrained import load_pretrained
from ..samplers import ddim_sample

__all__ = ["evaluate", "scale_ablation", "SD_LATENT_STD"]

COMMAND = "python -m ddpm_course.experiments.latent_eval"


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
    ldm, diffusion, _ = load_pretrained("digits-ldm", device="cpu")
    pixel, pixel_diffusion, pixel_config = load_pretrained("digits-cond", device="cpu")
    pixel = pixel.float()
    image_values = 1 * 16 * 16
    latent_values = math.prod(ldm.latent_shape)
    result: dict[str, Any] = {
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
    if which not in ("scaled", "unscaled"):
        raise ValueError(f"which must be 'scaled' or 'unscaled', got {which!r}")
    vae, _, _ = load_pretrained("digits-vae", device="cpu")
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


def main(argv: list[str] | None = None) -> int:
    """``python -m ddpm_course.experiments.latent_eval evaluate | scale-ablation WHICH --out PATH``."""
    parser = argparse.ArgumentParser(
        description="Chapter 07's numbers, into a JSON file"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ab = sub.add_parser(
        "scale-ablation",
        help="train on unscaled vs scaled latents; add the FDs to the results",
    )
    ab.add_argument("which", choices=("scaled", "unscaled"))
    ab.add_argument("--steps", type=int, default=1500)
    ev = sub.add_parser("evaluate", help="the acceptance numbers")
    ev.add_argument("--n", type=int, default=400)
    ev.add_argument("--steps", type=int, default=50)
    ev.add_argument(
        "--guidance-scale",
        type=float,
        default=0.5,
        help="the w of the acceptance numbers",
    )
    for command in (ab, ev):
        command.add_argument(
            "--out",
            type=Path,
            required=True,
            help="the JSON to write (the book's: book/results/07_latent.json)",
        )
    args = parser.parse_args(argv)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.command == "scale-ablation":
        part = scale_ablation(args.which, steps=args.steps)
        print(json.dumps(part))
        previous.setdefault("scale_ablation", {})[args.which] = part
        previous["scale_ablation"]["command"] = (
            f"{COMMAND} scale-ablation {{scaled,unscaled}} --out {args.out}"
        )
        result = previous
    else:
        result = evaluate(
            n=args.n, steps=args.steps, guidance_scale=args.guidance_scale
        )
        result = {"command": f"{COMMAND} evaluate --out {args.out}", **result}
        if "scale_ablation" in previous:  # kept: it has its own command
            result["scale_ablation"] = previous["scale_ablation"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
