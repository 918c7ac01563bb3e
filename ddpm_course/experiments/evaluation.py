r"""Chapter 08's measurements: the metrics' biases, likelihood, memorisation and every classic
bug beside its fix → ``ddpm_course/results/08_evaluation.json`` (and a few images per section
in ``08_evaluation_<section>.safetensors`` beside it, uint8; the chapter reads both through
:mod:`ddpm_course.results`).

Sections (``--only``; each rewrites its own key of the JSON file named by ``--out``, and records
its command under ``commands``):

* ``fd``: FD and KID against n, for real training images (five subsets per n) and for the
  shipped ``fashion`` model's DDIM-50 samples (a pool of ``--pool-size`` from the first seed,
  subsets of it);
* ``memorisation``: nearest-neighbour distances of that pool to the 60,000 training images,
  beside those of as many test images, in pixels and in classifier features;
* ``likelihood``: the variational bound of ``fashion`` in bits/dim on test images (unbiased
  stratified estimate, :func:`~ddpm_course.metrics.vlb_bits_per_dim`) and where its bits go
  over t, beside Gaussians fitted to the training set and the uniform 8 bits;
* ``gallery``: the bugs of :mod:`ddpm_course.pitfalls` and the samplers' flags, broken and
  fixed, FD at ``--n-gallery`` over the seeds (the floor at the same n);
* ``duplication``: the ``digits-fast`` U-Net trained on 16×16 Fashion-MNIST images of which
  groups appear 1, 4, 16 and 64 times; how often its samples copy each group.

The pool drawn by ``fd`` is cached in ``--cache`` (default ``runs/08_evaluation``) for
``memorisation``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..checkpoint import atomic_write
from ..config import TrainConfig
from ..data import fashion_mnist
from ..latent import latent_sample
from ..metrics import (
    fashion_fd,
    fashion_fd_floor,
    fashion_features,
    fashion_test_features,
    frechet_distance,
    gaussian_bits_per_dim,
    gaussian_stats,
    kernel_inception_distance,
    memorisation,
    nearest_neighbours,
    vlb_bits_per_dim,
)
from ..pitfalls import (
    ancestral_until_last,
    duplicated_dataset,
    last_step,
    with_schedule,
)
from ..pretrained import load_pretrained
from ..samplers import ddim_sample, sample
from ..train import Trainer
from .fashion_models import balanced_labels

SECTIONS = (
    "fd",
    "memorisation",
    "likelihood",
    "gallery",
    "duplication",
)
SHOWN = 8  # images stored per variant


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as uint8 0..255 (what the page shows)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "values": values,
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def _fashion() -> tuple[torch.nn.Module, Any]:
    model, diffusion, _ = load_pretrained("fashion", device="cpu")
    return model.float(), diffusion


def pool(seed: int, n: int, cache: Path) -> torch.Tensor:
    """``n`` DDIM-50 samples (trailing, x̂0 clipped: fashion_eval's) of ``fashion`` drawn in
    batches of 250 from one generator seeded ``seed``; cached as uint8 in ``cache``."""
    path = cache / f"fashion_ddim50_seed{seed}_n{n}.pt"
    if path.exists():
        return torch.load(path, weights_only=True).float() / 127.5 - 1
    model, diffusion = _fashion()
    generator = torch.Generator().manual_seed(seed)
    chunks = [
        ddim_sample(
            model, diffusion, (min(250, n - s), 1, 28, 28), 50, generator=generator
        )
        for s in range(0, n, 250)
    ]
    samples = torch.cat(chunks)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(to_uint8(samples), path)
    return to_uint8(samples).float() / 127.5 - 1  # the same rounding as a cached pool


def _fd_kid(features: torch.Tensor, seed: int) -> tuple[float, float]:
    fd = frechet_distance(
        *gaussian_stats(features), *gaussian_stats(fashion_test_features())
    )
    kid, _ = kernel_inception_distance(
        features,
        fashion_test_features(),
        subsets=10,
        subset_size=min(1000, features.shape[0]),
        generator=torch.Generator().manual_seed(seed),
    )
    return fd, kid


def fd_section(
    seeds: list[int], cache: Path, pool_size: int, draws: int = 5
) -> dict[str, Any]:
    """FD and KID of n real training images and of n model samples against the test set."""
    train, _ = fashion_mnist("train")
    # the real curve's subsets (n up to 10,000) are drawn from a random 10,000 of the 60,000:
    # a random subset of a random subset is a random subset, at a sixth of the features' cost
    generator = torch.Generator().manual_seed(1000)
    subset = torch.randperm(train.shape[0], generator=generator)[:10_000]
    train_features = fashion_features(train[subset])
    samples = pool(seeds[0], pool_size, cache)
    sample_features = fashion_features(samples)
    rows = []
    for source, features, sizes in (
        ("real", train_features, (100, 200, 500, 1000, 2000, 5000, 10000)),
        ("model", sample_features, (100, 200, 500, 1000)),
    ):
        for n in sizes:
            if n > features.shape[0]:
                continue
            fds, kids = [], []
            subsets = draws if n < features.shape[0] else 1
            for k in range(subsets):
                generator = torch.Generator().manual_seed(k)
                index = torch.randperm(features.shape[0], generator=generator)[:n]
                fd, kid = _fd_kid(features[index], seed=k)
                fds.append(fd)
                kids.append(kid)
            rows.append(
                {"source": source, "n": n, "fd": _summary(fds), "kid": _summary(kids)}
            )
            print(rows[-1]["source"], n, rows[-1]["fd"]["median"], flush=True)
    return {
        "model": "fashion",
        "sampler": "ddim, 50 steps, trailing, x0 clipped (fashion_eval's)",
        "seed": seeds[0],
        "pool_size": pool_size,
        "model_fd": fashion_fd(samples),
        "draws": draws,
        "kid_subsets": 10,
        "rows": rows,
    }


def memorisation_section(seed: int, cache: Path, pool_size: int) -> tuple[dict, dict]:
    """Nearest training neighbours of samples and of test images, pixels and features."""
    train, _ = fashion_mnist("train")
    test, _ = fashion_mnist("test")
    samples = pool(seed, pool_size, cache)
    held_out = test[:pool_size]
    result: dict[str, Any] = {
        "seed": seed,
        "n_samples": pool_size,
        "n_held_out": pool_size,
    }
    spaces = {
        "pixels": (samples, train, held_out),
        "features": tuple(fashion_features(x) for x in (samples, train, held_out)),
    }
    for space, (s, tr, ho) in spaces.items():
        stats = memorisation(s, tr, ho)
        d_samples, i_samples = nearest_neighbours(s, tr, k=2)
        d_held, _ = nearest_neighbours(ho, tr, k=2)
        quantiles = torch.tensor([0.01, 0.1, 0.5, 0.9], dtype=torch.float64)
        stats["samples_d1_quantiles"] = d_samples[:, 0].quantile(quantiles).tolist()
        stats["held_out_d1_quantiles"] = d_held[:, 0].quantile(quantiles).tolist()
        stats["samples_min_d1_over_d2"] = float(
            (d_samples[:, 0] / d_samples[:, 1]).min()
        )
        stats["held_out_min_d1_over_d2"] = float((d_held[:, 0] / d_held[:, 1]).min())
        result[space] = stats
        if space == "pixels":
            closest = (d_samples[:, 0] / d_samples[:, 1]).argsort()[:SHOWN]
            images = {
                "first_samples": to_uint8(samples[:SHOWN]),
                "first_neighbours": to_uint8(train[i_samples[:SHOWN, 0]]),
                "closest_samples": to_uint8(samples[closest]),
                "closest_neighbours": to_uint8(train[i_samples[closest, 0]]),
            }
            result["closest_indices"] = closest.tolist()
        print(space, stats, flush=True)
    return result, images


def likelihood_section(n: int, draws: int, seed: int) -> dict[str, Any]:
    """The bound of ``fashion`` on ``n`` test images, its terms over t, and the baselines."""
    model, diffusion = _fashion()
    test, _ = fashion_mnist("test")
    train, _ = fashion_mnist("train")
    x0 = test[:n]
    generator = torch.Generator().manual_seed(seed)
    parts = [
        vlb_bits_per_dim(model, diffusion, chunk, draws, generator)
        for chunk in x0.split(250)
    ]
    bound = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    result: dict[str, Any] = {
        "n": n,
        "draws_per_image": draws,
        "seed": seed,
        "timesteps": diffusion.num_timesteps,
        "clip_denoised": True,
    }
    for key, values in bound.items():
        result[f"{key}_bpd"] = float(values.mean())
        result[f"{key}_bpd_standard_error"] = float(values.std() / n**0.5)
    # where the bits go: T · L_t at a grid of t, on the first 100 images (one draw each)
    profile = []
    subset = x0[:100]
    for t_value in (0, 1, 2, 5, 10, 20, 50, 100, 200, 400, 600, 800, 999):
        t = torch.full((subset.shape[0],), t_value, dtype=torch.long)
        noise = torch.randn(subset.shape, generator=generator)
        x_t = diffusion.q_sample(subset, t, noise=noise)
        with torch.no_grad():
            p = diffusion.p_mean_variance(model, x_t, t)
            terms = diffusion.vb_terms_bpd(p, subset, x_t, t).double()
        profile.append(
            {"t": t_value, "mean_bpd": float(terms.mean()), "images": subset.shape[0]}
        )
    result["terms_at_t"] = profile
    dequant = torch.Generator().manual_seed(seed)
    for name, diagonal in (("gaussian_full", False), ("gaussian_diagonal", True)):
        values = gaussian_bits_per_dim(train, x0, diagonal, generator=dequant)
        result[f"{name}_bpd"] = float(values.mean())
        result[f"{name}_bpd_standard_error"] = float(values.std() / n**0.5)
    result["uniform_bpd"] = 8.0
    print(result, flush=True)
    return result


def _fds(make, seeds: list[int]) -> tuple[dict[str, Any], torch.Tensor]:
    values, shown = [], None
    for seed in seeds:
        images = make(seed)
        values.append(fashion_fd(images))
        if shown is None:
            shown = to_uint8(images[:SHOWN])
    return _summary(values), shown


def gallery_section(n: int, seeds: list[int], steps: int = 20) -> tuple[dict, dict]:
    """Each bug of the pixel and latent models beside its fix, FD at ``n`` over ``seeds``
    (the first three rows with ``steps`` sampling steps, the spacing rows with 10)."""
    model, diffusion = _fashion()
    rows, images = [], {}

    def add(bug: str, variant: str, make) -> None:
        start = time.perf_counter()
        summary, shown = _fds(make, seeds)
        rows.append({"bug": bug, "variant": variant, "fd": summary,
                     "seconds": round(time.perf_counter() - start, 1)})  # fmt: skip
        images[f"{bug}/{variant}"] = shown
        print(rows[-1], flush=True)

    def ddim(steps, spacing="trailing", clip=True, diff=diffusion, name="ddim"):
        def make(seed):
            generator = torch.Generator().manual_seed(seed)
            return torch.cat([
                sample(name, model, diff, (min(250, n - s), 1, 28, 28), steps,
                       spacing=spacing, generator=generator, clip_denoised=clip)
                for s in range(0, n, 250)
            ])  # fmt: skip

        return make

    add("none", "fixed", ddim(steps))
    # noise on the final step: one ancestral trajectory, ended both ways
    endings: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        fixed, broken = [], []
        for s in range(0, n, 250):
            shape = (min(250, n - s), 1, 28, 28)
            x_1, respaced = ancestral_until_last(model, diffusion, shape, steps,
                                                 generator=generator)  # fmt: skip
            fixed.append(last_step(model, respaced, x_1))
            broken.append(last_step(model, respaced, x_1, True, generator))
        endings[seed] = (torch.cat(fixed), torch.cat(broken))
    sigma = float((0.5 * respaced.schedule.posterior_log_variance_clipped[0]).exp())
    add("final_noise", "fixed", lambda seed: endings[seed][0])
    add("final_noise", "broken", lambda seed: endings[seed][1])
    add("schedule", "broken", ddim(steps, diff=with_schedule(diffusion, "linear")))
    add("spacing", "fixed", ddim(10, "trailing"))
    add("spacing", "broken", ddim(10, "leading"))
    add("unclipped", "broken", ddim(10, "trailing", clip=False))
    add("dpm_unclipped", "fixed", ddim(10, name="dpm-solver"))
    add("dpm_unclipped", "broken", ddim(10, clip=False, name="dpm-solver"))
    # the latent model: trailing spacing unclipped, and the decoder without 1/s
    ldm, latent_diffusion, _ = load_pretrained("fashion-ldm", device="cpu")
    ldm = ldm.float()
    labels = balanced_labels(n)

    latents: dict[tuple[str, int], torch.Tensor] = {}

    def latent(spacing: str, unscale: bool = True):
        def make(seed):
            if (spacing, seed) not in latents:  # one draw serves both decodings
                generator = torch.Generator().manual_seed(seed)
                latents[spacing, seed] = torch.cat([
                    latent_sample(ldm, latent_diffusion, y.shape[0], labels=y, steps=50,
                                  spacing=spacing, generator=generator, decode=False)
                    for y in labels.split(250)
                ])  # fmt: skip
            if unscale:
                return ldm.decode(latents[spacing, seed])
            # the bug: the decoder fed the scaled latents (no division by s)
            return ldm.autoencoder.decode(latents[spacing, seed]).clamp(-1, 1)

        return make

    add("latent_spacing", "fixed", latent("leading"))
    add("latent_spacing", "broken", latent("trailing"))
    add("latent_scale", "broken", latent("leading", unscale=False))
    floor = fashion_fd_floor(n, draws=5, seed=0)
    result = {
        "n": n,
        "seeds": seeds,
        "floor": floor,
        "steps": steps,
        "final_step_sigma": sigma,
        "latent_scale_factor": float(ldm.scale_factor),
        "rows": rows,
        "notes": {
            "none": f"fashion, DDIM-{steps} trailing, x0 clipped",
            "final_noise": f"ancestral {steps} respaced steps (trailing, x0 clipped); broken: "
            "sigma z also added on the last step, one trajectory ended both ways",
            "schedule": f"DDIM-{steps} with the linear schedule's alpha-bars (trained: sigmoid)",
            "spacing": "DDIM-10, x0 clipped; broken: leading spacing",
            "unclipped": "DDIM-10 trailing without clipping x0",
            "dpm_unclipped": "DPM-Solver++(2M), 10 steps, trailing; broken: x0 unclipped",
            "latent_spacing": "fashion-ldm, DDIM-50 unclipped (latent_sample), balanced "
            "labels; fixed: leading spacing; broken: trailing",
            "latent_scale": "fashion-ldm leading, decoded without dividing by s",
        },
    }
    return result, images


def _train(model: torch.nn.Module, data: torch.Tensor, steps: int, seed: int):
    """``steps`` of the digits-fast recipe (Trainer.train_step) on ``data``; the EMA model."""
    config = TrainConfig.from_preset(
        "digits-fast", max_steps=steps, seed=seed, out_dir="runs/08_evaluation/unused"
    )
    trainer = Trainer(config, model=model, dataset=data)
    batches = torch.Generator().manual_seed(seed)
    start = time.process_time()
    for _ in range(steps):
        index = torch.randint(0, data.shape[0], (config.batch_size,), generator=batches)
        trainer.train_step(data[index])
    return trainer.ema_model.eval(), trainer.diffusion, time.process_time() - start


def duplication_section(
    steps: int, counts: list[int], group_size: int, unique: int, n: int, seed: int
) -> tuple:
    """digits-fast trained on 16×16 Fashion-MNIST with duplicated groups; copies per group."""
    from ..config import build_model

    train, _ = fashion_mnist("train", size=16)
    test, _ = fashion_mnist("test", size=16)
    generator = torch.Generator().manual_seed(seed)
    chosen = train[torch.randperm(train.shape[0], generator=generator)[:unique]]
    data, distinct, count_of = duplicated_dataset(chosen, counts, group_size, generator)
    torch.manual_seed(seed)
    ema, diffusion, cpu = _train(
        build_model(TrainConfig.from_preset("digits-fast")), data, steps, seed
    )
    samples = torch.cat([
        ddim_sample(ema, diffusion, (min(250, n - s), 1, 16, 16), 50,
                    generator=torch.Generator().manual_seed(seed + 1 + s))
        for s in range(0, n, 250)
    ])  # fmt: skip
    distances, indices = nearest_neighbours(samples, distinct, k=2)
    copies = distances[:, 0] < distances[:, 1] / 3
    held_d, _ = nearest_neighbours(test[:n], distinct, k=2)
    groups = []
    for k, count in enumerate([*counts, 1]):
        if k < len(counts):
            members = torch.arange(k * group_size, (k + 1) * group_size)
            label = f"x{count}"
        else:
            members = torch.arange(len(counts) * group_size, distinct.shape[0])
            label = "x1 (the rest)"
        is_member = torch.isin(indices[:, 0], members)
        copied = indices[copies & is_member, 0].unique()
        groups.append({
            "group": label, "count": count, "images": members.numel(),
            "share_of_training_set": float(count * members.numel() / data.shape[0]),
            "share_of_samples_copying": float((copies & is_member).double().mean()),
            "fraction_of_images_copied": float(copied.numel() / members.numel()),
        })  # fmt: skip
        print(groups[-1], flush=True)
    top = torch.arange(group_size * (len(counts) - 1), group_size * len(counts))
    nearest_sample = pairwise_nearest(distinct[top], samples)
    return {
        "preset": "digits-fast on 16x16 Fashion-MNIST", "train_steps": steps, "seed": seed,
        "counts": counts, "group_size": group_size, "unique_images": unique,
        "training_set_size": data.shape[0], "train_cpu_seconds": round(cpu, 1),
        "n_samples": n, "sampler": "ddim, 50 steps, trailing, x0 clipped",
        "copy_rule": "d1 < d2 / 3 against the distinct training images, pixels",
        "copy_fraction": float(copies.double().mean()),
        "held_out_copy_fraction": float((held_d[:, 0] < held_d[:, 1] / 3).double().mean()),
        "groups": groups,
    }, {"most_duplicated": to_uint8(distinct[top][:SHOWN]),
        "their_nearest_samples": to_uint8(samples[nearest_sample][:SHOWN])}  # fmt: skip


def pairwise_nearest(queries: torch.Tensor, pool_: torch.Tensor) -> torch.Tensor:
    """Index (N,) of the nearest row of ``pool_`` to each query (pixels)."""
    _, indices = nearest_neighbours(queries, pool_, k=1)
    return indices[:, 0]


def _save_images(out: Path, section: str, images: dict[str, torch.Tensor]) -> None:
    path = out.with_name(f"{out.stem}_{section}.safetensors")
    tensors = {key: value.contiguous() for key, value in images.items()}
    save_file(tensors, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON results file")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--cache", type=Path, default=Path("runs/08_evaluation"))
    parser.add_argument("--pool-size", type=int, default=1000, help="samples per seed")
    parser.add_argument("--n-gallery", type=int, default=300)
    parser.add_argument("--likelihood-images", type=int, default=1000)
    parser.add_argument("--likelihood-draws", type=int, default=10)
    parser.add_argument("--dup-steps", type=int, default=3000)
    args = parser.parse_args(argv)
    words = sys.argv[1:] if argv is None else argv
    command = (
        "OMP_NUM_THREADS=1 python -m ddpm_course.experiments.evaluation "
        + " ".join(words)
    )
    for section in args.only:
        start = time.perf_counter()
        cpu_start = time.process_time()
        images: dict[str, torch.Tensor] = {}
        if section == "fd":
            value = fd_section(args.seeds, args.cache, args.pool_size)
        elif section == "memorisation":
            value, images = memorisation_section(
                args.seeds[0], args.cache, args.pool_size
            )
        elif section == "likelihood":
            value = likelihood_section(
                args.likelihood_images, args.likelihood_draws, args.seeds[0]
            )
        elif section == "gallery":
            value, images = gallery_section(args.n_gallery, args.seeds)
        else:
            value, images = duplication_section(
                args.dup_steps, [1, 4, 16, 64], 16, 1000, args.pool_size, args.seeds[0]
            )
        value["minutes"] = round((time.perf_counter() - start) / 60, 1)
        value["cpu_minutes"] = round((time.process_time() - cpu_start) / 60, 1)
        if images:
            _save_images(args.out, section, images)
        # read again just before writing: another section may have been written meanwhile
        results = json.loads(args.out.read_text()) if args.out.exists() else {}
        results[section] = value
        results.setdefault("commands", {})[section] = command
        text = json.dumps(results, indent=1, sort_keys=True) + "\n"
        atomic_write(args.out, lambda file, text=text: file.write(text.encode()))
        print(section, "done", value["minutes"], "min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
