"""The GPU check (ddpm_course.experiments.gpu_check, scripts/gpu_check.sh): every part that a CPU can run.

No GPU is available here, so the CUDA comparison is exercised with the CPU as both devices (then
fp32 must agree exactly and bf16 autocast must differ, within its tolerance), the training and
sampling parts run on the small ``digits`` preset, and DDP runs under torchrun with gloo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ddpm_course.experiments import gpu_check
from ddpm_course.nn import unet_from_preset

TINY = ["--device", "cpu", "--preset", "digits", "--batch-size", "8", "--steps", "2",
        "--warmup", "1", "--sample-steps", "2", "--peak-size", "128"]  # fmt: skip


def _digits_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return unet_from_preset("digits", image_size=16, in_channels=1)


def test_randomise_zero_parameters_fills_only_the_all_zero_tensors():
    model = _digits_unet()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    zero = [name for name, p in before.items() if not p.any()]
    assert zero, "the U-Net's output layers start at zero"
    gpu_check.randomise_zero_parameters(model)
    for name, parameter in model.named_parameters():
        if name in zero:
            assert parameter.abs().max() > 0, name
        else:
            assert torch.equal(parameter, before[name]), name


def test_forward_match_is_exact_in_fp32_and_within_tolerance_in_bf16_on_one_device():
    model = gpu_check.randomise_zero_parameters(_digits_unet())
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 400, 999])
    match = gpu_check.forward_match(model, x, t, torch.device("cpu"))
    assert match["output_scale"] > 0
    assert match["fp32_relative_error"] == 0.0  # the same kernels on the same inputs
    # bf16 really ran (8-bit mantissa: visibly different) and stays inside the stated tolerance
    assert 1e-4 < match["bf16_relative_error"] < gpu_check.BF16_TOLERANCE


def test_failures_name_each_quantity_out_of_tolerance():
    report = {
        "forward_match": {
            "fp32_relative_error": 1e-3,
            "fp32_tolerance": 1e-4,
            "bf16_relative_error": 0.2,
            "bf16_tolerance": 0.05,
        },  # fmt: skip
        "sample": {"finite": True, "in_unit_range": False},
        "train": [{"compile": True, "images_per_s": 0.0}],
    }
    found = gpu_check.failures(report)
    assert len(found) == 4
    assert any("CUDA fp32" in line for line in found)
    assert any("bf16" in line for line in found)
    assert (
        gpu_check.failures({"train": [{"compile": False, "images_per_s": 5.0}]}) == []
    )


def test_a_cpu_run_writes_a_report_with_flops_samples_and_no_failures(tmp_path):
    out = tmp_path / "single.json"
    assert gpu_check.main([*TINY, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["failures"] == []
    (run,) = report["train"]
    assert run["batch_per_process"] == 8 and run["processes"] == 1
    # forward + backward of convolutions and matmuls: the backward costs about twice the forward
    model = _digits_unet()
    counter = torch.utils.flop_counter.FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(8, 1, 16, 16), torch.zeros(8, dtype=torch.long))
    assert 2.5 < run["flops_per_step"] / counter.get_total_flops() < 3.5
    assert 0 < run["fraction_of_matmul_peak"]
    assert report["sample"]["shape"] == [16, 1, 16, 16]
    assert report["sample"]["finite"] and report["sample"]["in_unit_range"]
    assert (tmp_path / "single.png").stat().st_size > 0


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device is visible"):
        gpu_check.main(["--device", "cuda"])


def test_under_torchrun_rank_zero_reports_the_global_throughput(tmp_path):
    out = tmp_path / "ddp.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "ddpm_course.experiments.gpu_check", *TINY, "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=300)
    report = json.loads(out.read_text())
    (run,) = report["train"]
    assert run["processes"] == 2 and run["batch_per_process"] == 4
    assert run["global_images_per_s"] == pytest.approx(2 * run["images_per_s"])
    assert "forward_match" not in report and "sample" not in report
