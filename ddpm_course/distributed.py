"""The process group and the random seeds of a training run, on one process or many under torchrun.

Chapter 04. :func:`setup_distributed` joins the process group that ``torchrun`` describes in the
environment (RANK, WORLD_SIZE, LOCAL_RANK: NCCL on GPUs, gloo on CPUs); every process seeds the
same initial weights with :func:`seed_everything`, then draws from its own stream
(:func:`rank_seed`). :func:`autocast_dtype` is the precision of the forward pass on the device.
"""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "setup_distributed",
    "leave_distributed",
    "barrier",
    "rank_seed",
    "seed_everything",
    "autocast_dtype",
    "wrap_model",
    "any_process",
]

logger = logging.getLogger(__name__)


def setup_distributed() -> tuple[int, int, int, bool]:
    """(rank, world size, local rank, whether this call created the process group): joins the
    torchrun process group when there is one and none is joined yet."""
    if dist.is_available() and dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return dist.get_rank(), dist.get_world_size(), local_rank, False
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, 0, False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank, True


def leave_distributed() -> None:
    """Destroy the process group (the one :func:`setup_distributed` created)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world_size: int) -> None:
    """Wait for every process (nothing to wait for with one)."""
    if world_size > 1:
        dist.barrier()


def rank_seed(seed: int, rank: int) -> int:
    """An independent seed for each process (numpy's SeedSequence of (seed, rank)), below 2**32."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's ``random`` from ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 on GPUs that compute in it natively (compute capability 8+), fp16 where asked or
    where bf16 is only emulated; None (fp32) on the CPU."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "bf16" and torch.cuda.get_device_capability(device)[0] < 8:
        logger.warning(
            "this GPU has no native bf16; training in fp16 with a GradScaler instead"
        )
        return torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def wrap_model(
    model: nn.Module, device: torch.device, world_size: int, compile_model: bool
) -> nn.Module:
    """The model a training step calls: wrapped in DistributedDataParallel on several processes,
    and ``torch.compile``'d when asked on CUDA; ``model`` itself otherwise."""
    if world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if compile_model and device.type == "cuda":
        model = torch.compile(model)
    return model


def any_process(flag: bool, device: torch.device, world_size: int) -> bool:
    """Whether ``flag`` holds on any process (an all-reduce of the maximum; ``flag`` itself alone)."""
    if world_size == 1:
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
