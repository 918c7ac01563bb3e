"""Data-parallel training: two CPU processes under torchrun (gloo) train as one model.

The test starts ``torchrun --standalone --nproc_per_node 2 tests/test_ddp.py OUT`` (``--standalone``
picks a free port); each process runs :func:`worker` and saves what it holds; the test compares."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from ddpm_course.checkpoint import list_checkpoints, load_checkpoint

HERE = Path(__file__).resolve().parent
STEPS = 3


def worker(out: Path) -> None:
    """One process: train the tiny U-Net for STEPS steps of a global batch of 8, then save this
    rank's shard of epoch 0, its initial and final weights, and its EMA to out/rank{R}.pt."""
    from test_train import tiny_config, tiny_data

    from ddpm_course.train import Trainer

    trainer = Trainer(
        tiny_config(out / "run", max_steps=STEPS, checkpoint_every=0),
        dataset=tiny_data(),
    )
    trainer.sampler.set_epoch(0)
    shard = list(trainer.sampler)[: STEPS * trainer.rank_batch_size]
    initial = {
        name: tensor.clone() for name, tensor in trainer.model.state_dict().items()
    }
    rank = trainer.rank
    trainer.train()
    torch.save(
        {"shard": shard, "initial": initial, "model": trainer.model.state_dict(), "ema": trainer.ema_model.state_dict(),
         "world_size": trainer.world_size},
        out / f"rank{rank}.pt",
    )  # fmt: skip


def test_two_processes_hold_identical_weights_that_moved_and_read_disjoint_data(
    tmp_path,
):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(Path(__file__)),
        str(tmp_path),
    ]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [state["world_size"] for state in ranks] == [2, 2]
    assert set(ranks[0]["shard"]).isdisjoint(ranks[1]["shard"]), (
        "the processes must read different images"
    )
    for name, weights in ranks[0]["model"].items():
        assert torch.equal(weights, ranks[1]["model"][name]), (
            f"{name} differs between the processes"
        )
        assert torch.equal(ranks[0]["ema"][name], ranks[1]["ema"][name]), (
            f"EMA {name} differs between the processes"
        )
        assert torch.equal(ranks[0]["initial"][name], ranks[1]["initial"][name]), (
            f"{name} started differently"
        )
    moved = [
        name
        for name, weights in ranks[0]["model"].items()
        if not torch.equal(weights, ranks[0]["initial"][name])
    ]
    assert len(moved) == len(ranks[0]["model"]), (
        f"only {len(moved)} of {len(ranks[0]['model'])} tensors were trained"
    )

    run = tmp_path / "run"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == list(range(1, STEPS + 1)), (
        "rank 0 alone writes the log"
    )
    (final,) = list_checkpoints(run / "checkpoints")
    state = load_checkpoint(final)
    assert len(state["rng"]) == 2, (
        "the checkpoint keeps the random state of both processes"
    )
    assert not torch.equal(
        state["rng"][0]["generator"], state["rng"][1]["generator"]
    ), "one noise stream per process"


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
