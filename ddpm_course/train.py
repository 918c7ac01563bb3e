r"""Training a diffusion model: a config in, a run folder out.

Chapter 04 (Training a DDPM). :class:`Trainer` runs Algorithm 1 of Ho et al. 2020: draw a batch
x0, timesteps t ~ U{0, ..., T-1} and noise ε ~ N(0, I), take a gradient step on
``diffusion.training_losses(model, x0, t, noise)["loss"].mean()`` (:math:`L_\text{simple}` by
default), and keep an exponential moving average (EMA) of the weights for sampling. Around that
loop it does what a real run needs:

* AdamW (the fused kernel, on CUDA and the CPU) with a linear warm-up of the learning rate
  (:func:`warmup_lr`), gradient clipping and gradient accumulation; the EMA with its warm-up
  (:mod:`ddpm_course.ema`);
* the channels_last memory format (convolutions in NHWC: about 1.15× faster on the CPU too);
* CUDA when available (bf16 autocast, or fp16 with a GradScaler; optional ``torch.compile``),
  else the CPU in fp32; DDP when started by ``torchrun`` (the same command on
  1 or N GPUs: a ``DistributedSampler``, one seed per process, rank 0 alone logs and saves);
* atomic checkpoints of everything (model, EMA, optimiser, scaler, step, data position, every
  random state) so that N steps + resume + N steps equals 2N steps bit for bit on the CPU;
* a tqdm bar, a JSON-lines log, sample grids from the EMA model, a wall-clock budget, and a
  clear :class:`NonFiniteLossError` when the loss diverges.

A run folder holds ``config.json``, ``log.jsonl``, ``checkpoints/step_XXXXXXX.pt`` (the last K),
``samples/step_XXXXXXX.png`` and, at the end, ``model.safetensors`` + ``model.json`` (EMA weights
and the model's configuration) for :func:`ddpm_course.loading.load_model`. The run's settings are
a :class:`~ddpm_course.config.TrainConfig` (:mod:`ddpm_course.config`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .checkpoint import (
    TRAINING_STATE_KEYS,
    CheckpointError,
    append_log,
    atomic_write,
    check_architecture,
    check_resumable,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
    trim_log,
)
from .config import (
    RESUME_INVARIANTS,
    TRAIN_PRESETS,
    TrainConfig,
    build_diffusion,
    build_model,
)
from .data import ResumableSampler, as_dataset, load_dataset, resumable_loader
from .distributed import (
    any_process,
    autocast_dtype,
    barrier,
    leave_distributed,
    rank_seed,
    seed_everything,
    setup_distributed,
    wrap_model,
)
from .ema import ema_decay_at, ema_update
from .pretrained import load_any  # a distillation's teacher, by name or path
from .samplers import sample
from .viz import save_image_grid

__all__ = [
    "Trainer",
    "NonFiniteLossError",
    "warmup_lr",
    # defined in data, config and ema; importable from here too
    "load_dataset",
    "ResumableSampler",
    "TrainConfig",
    "TRAIN_PRESETS",
    "build_model",
    "build_diffusion",
    "ema_decay_at",
    "ema_update",
]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite: training diverged. ``step``, ``loss`` and ``checkpoint``
    (the last good one, or None) say where; nothing after the divergence was saved."""

    def __init__(
        self, step: int, loss: float, lr: float, checkpoint: Path | None
    ) -> None:
        self.step, self.loss, self.checkpoint = step, loss, checkpoint
        saved = "no checkpoint had been written yet"
        if checkpoint:
            saved = f"the last good checkpoint, {checkpoint}, is intact"
        super().__init__(
            f"the loss is {loss} at step {step} (learning rate {lr:.3g}): training diverged, and {saved}. "
            f"Try a lower learning rate (e.g. lr={lr / 4:.3g}), a longer warm-up, or gradient clipping (grad_clip)."
        )


# ------------------------------------------------------------------- the pieces of a step
def warmup_lr(step: int, lr: float, warmup_steps: int) -> float:
    r"""The learning rate of optimiser step ``step`` (0 for the first) under a linear warm-up:
    :math:`\text{lr}\cdot\min(1, (\text{step} + 1)/\text{warmup\_steps})`; constant without warm-up."""
    if warmup_steps <= 0:
        return lr
    return lr * min(1.0, (step + 1) / warmup_steps)


def _split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A collated batch -> (images, labels or None)."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    return batch[0], (batch[1] if len(batch) > 1 else None)


# --------------------------------------------------------------------------- the trainer
class Trainer:
    """Train ``model`` (default: :func:`build_model` of ``config``) on ``dataset`` (default:
    :func:`load_dataset`; also an images tensor or an (images, labels) tuple) as ``config`` says.

    ``Trainer(config).train()`` returns the run folder. Under ``torchrun`` (RANK, WORLD_SIZE and
    LOCAL_RANK in the environment) every process builds its Trainer from the same config; the
    process group is created here and destroyed at the end of :meth:`train`. The constructor seeds
    the global random number generators (torch, numpy, python) from ``config.seed``.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module | None = None,
        dataset: Dataset | torch.Tensor | tuple | None = None,
    ) -> None:
        self.config = config
        self.rank, self.world_size, local_rank, self._owns_process_group = (
            setup_distributed()
        )
        self.is_main = self.rank == 0
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        self.autocast_dtype = autocast_dtype(self.device, config.precision)

        # identical initial weights on every process, then one random stream per process
        seed_everything(config.seed)
        model = model if model is not None else build_model(config)
        self.model = model.to(self.device)
        self.channels_last = config.channels_last and self.device.type in (
            "cuda",
            "cpu",
        )
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.diffusion = build_diffusion(config)
        if config.distill is not None:  # chapter 10: the student starts as its teacher
            teacher = load_any(config.teacher, device=self.device)[0]
            self.diffusion.teacher = teacher.eval().requires_grad_(False)
            self.model.load_state_dict(teacher.state_dict())
        self.ema_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        # one kernel for all tensors
        fused = {"fused": True} if self.device.type in ("cuda", "cpu") else {}
        self.optimizer = torch.optim.AdamW(self.model.parameters(), config.lr,
                                           weight_decay=config.weight_decay, **fused)  # fmt: skip
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.autocast_dtype == torch.float16
        )

        self.dataset = as_dataset(dataset, config)
        if config.batch_size % (self.world_size * config.grad_accum):
            raise ValueError(
                f"batch_size {config.batch_size} must split evenly over {self.world_size} process(es) × "
                f"{config.grad_accum} accumulation step(s)"
            )
        self.rank_batch_size = config.batch_size // self.world_size
        process_seed = rank_seed(config.seed, self.rank)
        self.sampler, self.loader = resumable_loader(
            self.dataset, self.rank_batch_size, self.world_size, self.rank, config.seed,
            process_seed, config.num_workers, pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        self.steps_per_epoch = self.sampler.num_samples // self.rank_batch_size
        seed_everything(process_seed)
        # timesteps, noise, label dropout
        self.generator = torch.Generator(self.device).manual_seed(process_seed)

        # the model that the step calls: DDP's wrapper under torchrun, compiled when asked
        self.train_model = wrap_model(self.model, self.device, self.world_size, config.compile)  # fmt: skip

        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        # seconds of training before this invocation (from the checkpoint)
        self.elapsed = 0.0
        self.last_grad_norm = float("nan")
        self.last_checkpoint: Path | None = None
        self._last_sample_step: int | None = None
        self.out_dir = Path(config.out_dir)
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.samples_dir = self.out_dir / "samples"
        self.log_path = self.out_dir / "log.jsonl"

    def close(self) -> None:
        """Leave the process group if this Trainer created it (:meth:`train` does this at its end)."""
        if self._owns_process_group:
            leave_distributed()
            self._owns_process_group = False

    def _autocast(self):
        """Mixed precision on CUDA (bf16 or fp16), nothing on the CPU."""
        return (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype
            else nullcontext()
        )

    # ------------------------------------------------------------------------ one step
    def train_step(
        self, images: torch.Tensor, labels: torch.Tensor | None = None
    ) -> float:
        """One optimiser step on this process's batch ``images`` (n, C, H, W) in [-1, 1] (and
        ``labels`` (n,) for a class-conditional model); returns the loss averaged over all processes.

        Algorithm 1 of Ho et al. 2020 (chapter 04, section 1), plus four named additions:
        gradient accumulation and AMP (:meth:`_backward`), clipping (:meth:`_clip_gradients`), the
        learning-rate warm-up (:meth:`_optimizer_step`) and the EMA (:meth:`_update_ema`). Raises
        :class:`NonFiniteLossError` (before touching the weights) when the loss or, outside fp16,
        the gradient norm is not finite.
        """
        x0 = self._to_device(images)  # x0 ~ q(x0)
        n, T, rng = x0.shape[0], self.diffusion.num_timesteps, self.generator
        # t ~ U{0, ..., T-1} and ε ~ N(0, I), one of each per image
        t = torch.randint(0, T, (n,), generator=rng, device=self.device)
        noise = torch.randn(x0.shape, generator=rng, device=x0.device, dtype=x0.dtype)
        y = self._conditioning(labels, n)  # label dropout (class-conditional)

        self.optimizer.zero_grad(set_to_none=True)
        loss = self._backward(x0, t, noise, y)  # x_t, predict, MSE, backward
        grad_norm = self._clip_gradients()
        loss_value = self._check_finite(loss, grad_norm)
        self._optimizer_step()
        self._update_ema()
        self.step += 1
        return loss_value

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        """Check the batch's shape against the config; move it to the device (channels_last when set)."""
        config, k = self.config, self.config.grad_accum
        expected = (config.channels, config.image_size, config.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"the config says images of shape (n, {', '.join(map(str, expected))}) but the data has {tuple(images.shape)}"
            )
        if images.shape[0] % k:
            raise ValueError(
                f"a batch of {images.shape[0]} images does not split into grad_accum={k} equal micro-batches"
            )
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _backward(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        y: torch.Tensor | None,
    ) -> torch.Tensor:
        """Accumulate the gradient of the mean loss over ``grad_accum`` micro-batches (each adds
        ``loss / grad_accum``), under autocast on CUDA and through the fp16 GradScaler; returns the
        batch's mean loss (a 0-d tensor, averaged over the processes under DDP)."""
        config, k = self.config, self.config.grad_accum
        loss_sum = torch.zeros((), device=self.device)
        micro_labels = y.chunk(k) if y is not None else [None] * k
        for i, (x0_i, t_i, noise_i, y_i) in enumerate(
            zip(x0.chunk(k), t.chunk(k), noise.chunk(k), micro_labels, strict=True)
        ):
            # all-reduce the gradients once, after the last micro-batch
            skip_sync = self.world_size > 1 and i < k - 1
            with self.train_model.no_sync() if skip_sync else nullcontext():
                with self._autocast():
                    losses = self.diffusion.training_losses(
                        self.train_model, x0_i, t_i, noise=noise_i, loss_type=config.loss_type,
                        model_kwargs={"y": y_i} if y_i is not None else None, min_snr_gamma=config.min_snr_gamma,
                    )  # fmt: skip
                    loss = losses["loss"].float().mean() / k
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if self.world_size > 1:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
            loss_sum /= self.world_size
        return loss_sum

    def _clip_gradients(self) -> torch.Tensor:
        """Clip the global gradient norm to ``grad_clip`` (unscaling fp16 gradients first); the norm before clipping."""
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)

    def _check_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> float:
        """The loss as a float (the step's one device sync); raise :class:`NonFiniteLossError` if it
        or (outside fp16, whose scaler skips such steps) the gradient norm is not finite."""
        loss_value, self.last_grad_norm = torch.stack(
            [loss, grad_norm.float()]
        ).tolist()
        if not math.isfinite(loss_value) or (
            not self.scaler.is_enabled() and not math.isfinite(self.last_grad_norm)
        ):
            bad = f"{loss_value:.4g} with a gradient norm of {self.last_grad_norm}"
            if not math.isfinite(loss_value):
                bad = loss_value
            lr = warmup_lr(self.step, self.config.lr, self.config.warmup_steps)
            raise NonFiniteLossError(self.step + 1, bad, lr, self.last_checkpoint)
        return loss_value

    def _optimizer_step(self) -> None:
        """AdamW at the warmed-up learning rate of this step (through the fp16 GradScaler when on)."""
        for group in self.optimizer.param_groups:
            group["lr"] = warmup_lr(self.step, self.config.lr, self.config.warmup_steps)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _update_ema(self) -> None:
        """Move the EMA weights towards the model's (with the decay's warm-up when ``ema_warmup``)."""
        config = self.config
        decay = config.ema_decay
        if config.ema_warmup:
            decay = ema_decay_at(self.step, config.ema_decay)
        ema_update(self.ema_model, self.model, decay)

    def _conditioning(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """Class labels with probability p_uncond replaced by the null class ``num_classes``; None if unconditional."""
        if not self.config.class_conditional:
            return None
        if labels is None:
            raise ValueError(
                "class_conditional training needs labels: the dataset must yield (image, label) pairs"
            )
        labels = labels.to(self.device).long()
        uniform = torch.rand(n, generator=self.generator, device=self.device)
        null = torch.full_like(labels, self.config.num_classes)
        return torch.where(uniform < self.config.p_uncond, null, labels)

    # ------------------------------------------------------------------- the run loop
    def train(self, resume: bool = False) -> Path:
        """Train until ``max_steps`` or ``max_seconds``; write the run folder and return its path.

        ``resume=True`` continues from the latest checkpoint in ``out_dir/checkpoints`` (and refuses
        to start without one); without it, a folder that already holds checkpoints is refused
        rather than overwritten. ``max_seconds`` counts the training loop of this call only; the
        final checkpoint, sample grid and weights are written after it.
        """
        try:
            self._start(resume)
            self._loop()
            self._finish()
        finally:
            self.close()
        return self.out_dir

    def _start(self, resume: bool) -> None:
        latest = latest_checkpoint(self.checkpoint_dir)
        if resume:
            if latest is None:
                raise CheckpointError(
                    f"nothing to resume: {self.checkpoint_dir} holds no step_*.pt checkpoint"
                )
            self.load_checkpoint(latest)
        elif latest is not None:
            raise FileExistsError(
                f"{self.out_dir} already holds checkpoints (latest {latest.name}); resume it (resume=True, "
                "--resume) or choose another out_dir"
            )
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.config.to_dict(), indent=2) + "\n"
            atomic_write(
                self.out_dir / "config.json", lambda file: file.write(text.encode())
            )
            trim_log(self.log_path, keep_through=self.step)
        barrier(self.world_size)

    def _batches(self):
        """This process's batches, epoch after epoch, from the saved data position on."""
        while True:
            if self.batch_in_epoch >= self.steps_per_epoch:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            self.sampler.set_epoch(
                self.epoch, skip=self.batch_in_epoch * self.rank_batch_size
            )
            for batch in self.loader:
                self.batch_in_epoch += 1
                yield _split_batch(batch)

    def _out_of_time(self, start: float) -> bool:
        if self.config.max_seconds is None:
            return False
        late = time.perf_counter() - start >= self.config.max_seconds
        # the processes must agree, or one would wait for the others forever
        return any_process(late, self.device, self.world_size)

    def _loop(self) -> None:
        config = self.config
        start = time.perf_counter()
        batches = self._batches()
        window_loss, window_steps, window_seconds = 0.0, 0, 0.0
        bar = tqdm(
            total=config.max_steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not self.is_main,
        )
        with bar:
            while (
                config.max_steps is None or self.step < config.max_steps
            ) and not self._out_of_time(start):
                step_start = time.perf_counter()
                loss = self.train_step(*next(batches))
                window_seconds += time.perf_counter() - step_start
                window_loss, window_steps = window_loss + loss, window_steps + 1
                bar.update(1)
                if self.step % config.log_every == 0:
                    self._log(
                        window_loss / window_steps,
                        window_steps,
                        window_seconds,
                        start,
                        bar,
                    )
                    window_loss, window_steps, window_seconds = 0.0, 0, 0.0
                if config.sample_every and self.step % config.sample_every == 0:
                    self.save_samples()
                if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                    self.save_checkpoint()
            if window_steps:
                self._log(
                    window_loss / window_steps, window_steps, window_seconds, start, bar
                )
        self.elapsed += time.perf_counter() - start

    def _log(self, loss: float, steps: int, seconds: float, start: float, bar) -> None:
        """One line of log.jsonl: the step, the mean loss since the last line, lr, throughput, time."""
        if not self.is_main:
            return
        images_per_s = steps * self.config.batch_size / max(seconds, 1e-9)
        record = {
            "step": self.step,
            "loss": loss,
            "lr": warmup_lr(self.step - 1, self.config.lr, self.config.warmup_steps),
            "grad_norm": self.last_grad_norm,
            "images_per_s": round(images_per_s, 2),
            "time": round(self.elapsed + time.perf_counter() - start, 3),
        }
        append_log(self.log_path, record)
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.0f}")

    def _finish(self) -> None:
        if self.last_checkpoint != checkpoint_path(self.checkpoint_dir, self.step):
            self.save_checkpoint()
        if self._last_sample_step != self.step:
            self.save_samples()
        if self.is_main:
            save_weights(
                self.ema_model.state_dict(),
                self.out_dir / "model.safetensors",
                self._model_metadata(),
            )
        barrier(self.world_size)

    # ------------------------------------------------------------------ samples
    @torch.no_grad()
    def sample(
        self,
        num_samples: int | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Images from the EMA model by the process's ``default_sampler`` (flow-Euler,
        consistency; else DDIM, η = 0, trailing): (num_samples, C, H, W) in [-1, 1] on the CPU.
        Class-conditional: labels 0, 1, ... in turn. Uses only ``generator``."""
        config = self.config
        n = num_samples or config.num_samples
        labels = torch.arange(n, device=self.device) % config.num_classes
        model_kwargs = {"y": labels} if config.class_conditional else None
        with self._autocast():
            name = getattr(self.diffusion, "default_sampler", "ddim")
            images = sample(
                name, self.ema_model, self.diffusion, (n, config.channels, config.image_size, config.image_size),
                steps=steps or config.sample_steps, spacing="trailing", generator=generator,
                model_kwargs=model_kwargs, device=self.device,
            )  # fmt: skip
        return images.float().clamp(-1, 1).cpu()

    def save_samples(self) -> Path:
        """Write ``samples/step_XXXXXXX.png``: a grid of :meth:`sample` from a fixed seed, so that
        the grids of one run show the same starting noise step after step."""
        path = self.samples_dir / f"step_{self.step:07d}.png"
        if self.is_main:
            generator = torch.Generator(self.device).manual_seed(self.config.seed)
            save_image_grid(self.sample(generator=generator), path)
        self._last_sample_step = self.step
        return path

    # --------------------------------------------------------------- checkpoints
    def _model_metadata(self) -> dict[str, Any]:
        model_config = getattr(self.model, "config", None)
        return {
            "format": "ddpm_course.model",
            "step": self.step,
            "model_class": type(self.model).__name__,
            "model_config": model_config,
            "train_config": self.config.to_dict(),
        }

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_XXXXXXX.pt`` atomically (rank 0) and keep the last K. Every
        process contributes its random state; all wait until the file is in place."""
        rng_states = [rng_state(self.generator, self.device)]
        if self.world_size > 1:
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, rng_states[0])
            rng_states = gathered
        path = checkpoint_path(self.checkpoint_dir, self.step)
        if self.is_main:
            state = {
                "step": self.step,
                "elapsed": self.elapsed,
                "config": self.config.to_dict(),
                **{
                    key: value
                    for key, value in self._model_metadata().items()
                    if key
                    in ("model_class", "model_config", "autoencoder", "scale_factor")
                },  # fmt: skip
                "model": self.model.state_dict(),
                "ema": self.ema_model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "data": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch},
                "rng": rng_states,
            }
            save_checkpoint(state, path)
            prune_checkpoints(self.checkpoint_dir, self.config.keep_checkpoints)
        barrier(self.world_size)
        self.last_checkpoint = path
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore everything :meth:`save_checkpoint` wrote, so that training continues exactly."""
        path = Path(path)
        state = load_checkpoint(path, required=TRAINING_STATE_KEYS)
        check_resumable(path, state["config"], self.config.to_dict(), RESUME_INVARIANTS)
        check_architecture(
            path, state.get("model_config"), getattr(self.model, "config", None)
        )
        try:
            self.model.load_state_dict(state["model"])
            self.ema_model.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(
                f"the checkpoint {path} does not fit this model: {str(error).splitlines()[0]}"
            ) from None
        for group in self.optimizer.param_groups:
            group["weight_decay"] = self.config.weight_decay
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.elapsed = state["step"], state.get("elapsed", 0.0)
        position = state["data"]  # where in the data the checkpoint was written
        self.epoch, self.batch_in_epoch = position["epoch"], position["batch_in_epoch"]
        if len(state["rng"]) == self.world_size:
            set_rng_state(state["rng"][self.rank], self.generator, self.device)
        else:
            logger.warning("the checkpoint holds the random state of %d process(es), not %d: reseeding, so the resume is not exact",
                           len(state["rng"]), self.world_size)  # fmt: skip
            self.generator.manual_seed(
                rank_seed(self.config.seed + self.step, self.rank)
            )
        self.last_checkpoint = path
        self._last_sample_step = None
