"""``ddpm-course sample``: every sampler of the command draws from a shipped model and saves the
grid and the tensor (images in [0, 1]); a seed fixes the draw."""

from __future__ import annotations

import pytest
import torch

from ddpm_course.cli import main


def _sample(tmp_path, sampler: str, seed: int = 0) -> torch.Tensor:
    out = tmp_path / f"{sampler}-{seed}.png"
    tensor = tmp_path / f"{sampler}-{seed}.pt"
    arguments = ["sample", "--checkpoint", "digits", "--n", "3", "--steps", "4"]
    arguments += ["--sampler", sampler, "--seed", str(seed), "--device", "cpu"]
    assert main([*arguments, "--out", str(out), "--save-tensor", str(tensor)]) == 0
    assert out.stat().st_size > 0
    return torch.load(tensor, weights_only=True)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm-solver"])
def test_each_sampler_saves_what_the_sampler_front_door_draws(tmp_path, sampler):
    """The saved tensor is samplers.sample's output for the same model, sampler, steps and seed,
    mapped from [-1, 1] to [0, 1]: the command adds nothing and drops nothing."""
    from ddpm_course.pretrained import load_pretrained
    from ddpm_course.samplers import sample

    images = _sample(tmp_path, sampler, seed=3)
    model, diffusion, _ = load_pretrained("digits", device="cpu")
    expected = sample(sampler, model, diffusion, (3, 1, 16, 16), steps=4,
                      generator=torch.Generator("cpu").manual_seed(3))  # fmt: skip
    torch.testing.assert_close(images, ((expected + 1) / 2).clamp(0, 1))


def test_the_seed_fixes_the_draw_and_the_sampler_changes_it(tmp_path):
    first, again = (
        _sample(tmp_path, "ddim", seed=5),
        _sample(tmp_path / "b", "ddim", seed=5),
    )
    assert torch.equal(first, again)
    assert not torch.equal(first, _sample(tmp_path, "ddim", seed=6))
    assert not torch.equal(first, _sample(tmp_path, "ddpm", seed=5))
