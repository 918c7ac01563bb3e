"""The shipped weights: they load without unpickling, sample real-looking digits, and the CLI uses them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_course.metrics import digits_fd
from ddpm_course.pretrained import PRETRAINED, WEIGHTS_DIR, load_any, load_pretrained
from ddpm_course.samplers import ddim_sample


def test_shipped_weights_stay_under_25_mb_in_all_and_5_mb_each():
    # decimal megabytes, the stricter reading of the budget (25 MB < 25 MiB)
    sizes = [path.stat().st_size for path in WEIGHTS_DIR.glob("*.safetensors")]
    assert max(sizes) < 5_000_000 and sum(sizes) < 25_000_000


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_every_registered_model_is_shipped_with_its_sidecar(name):
    entry = PRETRAINED[name]
    assert entry.path.is_file() and entry.path.with_suffix(".json").is_file()


def test_unconditional_digits_model_samples_are_far_closer_to_digits_than_noise_is():
    model, diffusion, config = load_pretrained("digits", device="cpu")
    samples = ddim_sample(
        model,
        diffusion,
        (100, 1, 16, 16),
        steps=20,
        generator=torch.Generator().manual_seed(0),
    )
    noise = (
        torch.rand(100, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    )
    # noise scores ~2000 in this feature space; real digits at n = 100 score ~40-80 (the floor)
    assert digits_fd(samples) < 0.1 * digits_fd(noise)


def test_conditional_digits_model_draws_the_class_it_is_asked_for():
    from ddpm_course.metrics import load_digits_classifier

    model, diffusion, config = load_pretrained("digits-cond", device="cpu")
    labels = torch.arange(100) % 10
    samples = ddim_sample(
        model,
        diffusion,
        (100, 1, 16, 16),
        steps=20,
        generator=torch.Generator().manual_seed(0),
        model_kwargs={"y": labels},
    )
    with torch.no_grad():
        predicted = load_digits_classifier()(samples).argmax(1)
    # chance is 10%; a conditional model that ignored y could not pass 50%
    assert (predicted == labels).float().mean().item() > 0.5


def test_the_distilled_student_in_one_step_beats_its_teacher_in_one_step():
    """Chapter 10: fashion-fewstep's one consistency step lands near the data; its teacher's one
    Euler step (x0 = x1 - u(x1, 1), the mean of the data given the noise) is a blur. FD of 200
    samples from the same noise in the Fashion-MNIST metric: at n = 1,000 the results file has
    about 31 against about 500."""
    from ddpm_course.metrics import fashion_fd
    from ddpm_course.samplers import sample

    torch.set_num_threads(1)
    student, process, _ = load_pretrained("fashion-fewstep", device="cpu")
    teacher, flow, _ = load_pretrained("fashion-flow", device="cpu")
    shape = (200, 1, 28, 28)
    fds = [
        fashion_fd(sample(name, model, p, shape, 1, generator=torch.Generator().manual_seed(0)))
        for name, model, p in (("consistency", student, process), ("flow-euler", teacher, flow))
    ]  # fmt: skip
    assert fds[0] < 100 < 300 < fds[1], fds


def test_load_any_refuses_an_unknown_name_or_path_clearly(tmp_path: Path):
    from ddpm_course.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="no run folder"):
        load_any(str(tmp_path / "nope"))


def test_sample_cli_writes_a_grid_from_a_shipped_model(tmp_path: Path):
    out = tmp_path / "grid.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ddpm_course.cli",
            "sample",
            "--checkpoint",
            "digits",
            "--n",
            "4",
            "--steps",
            "3",
            "--out",
            str(out),
            "--save-tensor",
            str(tmp_path / "s.pt"),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    samples = torch.load(tmp_path / "s.pt", weights_only=True)
    assert out.stat().st_size > 0 and samples.shape == (4, 1, 16, 16)
    assert samples.min() >= 0 and samples.max() <= 1
    # the PNG shows the saved [0, 1] images as they are: a 2×2 grid with 2-pixel borders, pixel = 255·value
    from PIL import Image

    grid = torch.from_numpy(np.asarray(Image.open(out), dtype=np.float64)) / 255
    for i in range(4):
        row, col = divmod(i, 2)
        top, left = 2 + row * 18, 2 + col * 18
        torch.testing.assert_close(
            grid[top : top + 16, left : left + 16],
            samples[i, 0].double(),
            atol=0.5 / 255 + 1e-6,
            rtol=0,
        )


# ------------------------------------------------------------------ int8 weights
def test_int8_quantisation_matches_a_hand_computed_case_and_its_error_bound():
    from ddpm_course.checkpoint import (
        INT8_SCALE_PREFIX,
        dequantize_int8,
        quantize_int8,
    )

    weight = torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0]])
    bias, counter = torch.tensor([0.1, -0.2]), torch.tensor([3])
    packed = quantize_int8({"w": weight, "b": bias, "n": counter})
    # row 0: scale 1/127, -0.5·127 = -63.5 rounds to even (-64), 0.25·127 = 31.75 -> 32;
    # row 1 (all zero): scale 1, so no division by zero
    assert packed["w"].dtype == torch.int8
    assert packed["w"].tolist() == [[127, -64, 32], [0, 0, 0]]
    torch.testing.assert_close(
        packed[INT8_SCALE_PREFIX + "w"], torch.tensor([1 / 127, 1.0])
    )
    assert packed["b"].dtype == torch.float16 and torch.equal(packed["n"], counter)
    restored = dequantize_int8(packed)
    assert set(restored) == {"w", "b", "n"}
    torch.testing.assert_close(
        restored["w"], torch.tensor([[1.0, -64 / 127, 32 / 127], [0.0, 0.0, 0.0]])
    )
    # any weight: the error is at most half a step, max|w_c| / 254, per output channel
    conv = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    conv[2] *= 100  # channels of very different ranges keep their own scale
    error = (dequantize_int8(quantize_int8({"c": conv}))["c"] - conv).abs()
    bound = conv.abs().flatten(1).amax(1) / 254
    assert bool((error.flatten(1).amax(1) <= bound * (1 + 1e-5)).all())
    assert float(error[0].max()) < float(bound[2]) / 10


def test_an_int8_export_loads_as_float32_at_half_the_float16_size(
    tmp_path, monkeypatch
):
    from ddpm_course import pretrained
    from ddpm_course.checkpoint import CheckpointError, load_weights, save_weights

    model, _, _ = load_pretrained("fashion", device="cpu")
    state = {name: tensor.float() for name, tensor in model.state_dict().items()}
    metadata = load_weights(PRETRAINED["fashion"].path)[1]
    save_weights(state, tmp_path / "run" / "model.safetensors", metadata)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    half = pretrained.export(tmp_path / "run", "half")
    packed = pretrained.export(tmp_path / "run", "packed", int8=True)
    assert packed.stat().st_size < 0.53 * half.stat().st_size
    loaded, sidecar = load_weights(packed)
    assert sidecar["quantization"].startswith("int8")
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == torch.float32
        # half a step of the channel's int8 grid (or float16 rounding for 1-D tensors)
        scale = tensor.abs().flatten(1).amax(1) / 254 if tensor.ndim > 1 else 1e-3
        limit = (
            scale if tensor.ndim == 1 else scale.reshape(-1, *[1] * (tensor.ndim - 1))
        )
        assert bool(((loaded[name] - tensor).abs() <= limit * 1.001 + 1e-6).all()), name
    sidecar_file = packed.with_suffix(".json")
    sidecar_file.write_text(sidecar_file.read_text().replace("int8, sym", "int4, sym"))
    with pytest.raises(CheckpointError, match="int4"):
        load_weights(packed)
