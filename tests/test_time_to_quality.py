"""Time to quality (ddpm-course bench --time-to-floor): the training clock, the snapshots, the
diffusers baseline's recipe and the report, on budgets of a fraction of a second."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from ddpm_course.experiments import time_to_quality as ttq


class _SleepyRun:
    """A fake contender: each step sleeps 5 ms and adds 1 to a single weight."""

    def __init__(self) -> None:
        self.model = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(self.model.weight)
        self.run = ttq.Run(self.step, lambda: self.model, diffusion=None)

    def step(self) -> None:
        time.sleep(0.005)
        with torch.no_grad():
            self.model.weight += 1


def test_snapshots_are_taken_when_the_training_clock_passes_each_checkpoint():
    fake = _SleepyRun()
    snapshots = ttq.train_with_snapshots(fake.run, [0.1, 0.05])
    (s1, n1, m1), (s2, n2, m2) = snapshots
    assert 0.05 <= s1 < 0.1 <= s2  # sorted, each just past its target
    assert 0 < n1 < n2 <= 0.1 / 0.005 + 1  # a 5 ms step cannot be taken more often
    # each snapshot is a copy of the weights at that moment, not a reference to the live model
    assert m1.weight.item() == n1 and m2.weight.item() == n2
    assert fake.model.weight.item() == n2


def test_summarise_gives_median_and_range():
    assert ttq.summarise([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}


def test_the_diffusers_baseline_warms_its_learning_rate_up_as_the_example_does():
    run = ttq.diffusers_recipe(seed=0, total_steps=1000)
    for _ in range(3):
        run.step()
    (group,) = run.optimizer.param_groups
    assert group["betas"] == (0.95, 0.999) and group["weight_decay"] == 1e-6
    assert group["lr"] == pytest.approx(
        1e-4 * 3 / 500
    )  # linear warm-up over 500 steps to 1e-4
    averaged = run.sampling_model()
    x = torch.randn(2, 1, 16, 16)
    assert averaged(x, torch.tensor([0, 999])).shape == x.shape


def test_a_tiny_run_reports_every_contender_far_above_the_floor(tmp_path):
    report = ttq.run_time_to_quality(
        ("digits", "diffusers"), checkpoint_seconds=[0.2], seeds=[0], num_samples=60,
        sample_steps=2, progress=False,
    )  # fmt: skip
    floor = report["floor"]["median"]
    for name in ("digits", "diffusers"):
        (point,) = report["contenders"][name]["fd"]
        assert point["min"] == point["median"] == point["max"]  # one seed
        assert (
            point["median"] > 5 * floor
        )  # a fraction of a second of training learns nothing
        assert report["contenders"][name]["steps"][0]["median"] >= 1
    json_path, png_path = ttq.write_time_to_quality(report, tmp_path)
    assert json.loads(json_path.read_text())["checkpoint_seconds"] == [0.2]
    assert png_path.stat().st_size > 0


def test_bad_budgets_and_presets_are_refused(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_seconds must be positive"):
        ttq.run_time_to_quality(checkpoint_seconds=[0, 1])
    with pytest.raises(ValueError, match="not an unconditional 16×16 digits preset"):
        ttq.our_recipe("digits-cond", seed=0, out_dir=str(tmp_path))
