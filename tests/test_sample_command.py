"""``ddpm-course sample``: every sampler of the command draws from a shipped model and saves the
grid and the tensor (images in [0, 1]); a seed fixes the draw."""

from __future__ import annotations

import pytest
import torch

from ddpm_course.cli import main


def _sample(
    tmp_path,
    sampler: str | None,
    seed: int = 0,
    checkpoint: str = "digits",
    steps: int = 4,
) -> torch.Tensor:
    out = tmp_path / f"{checkpoint}-{sampler}-{seed}-{steps}.png"
    tensor = tmp_path / f"{checkpoint}-{sampler}-{seed}-{steps}.pt"
    arguments = [
        "sample",
        "--checkpoint",
        checkpoint,
        "--n",
        "3",
        "--steps",
        str(steps),
    ]
    arguments += ["--seed", str(seed), "--device", "cpu"]
    arguments += ["--sampler", sampler] if sampler else []
    assert main([*arguments, "--out", str(out), "--save-tensor", str(tensor)]) == 0
    assert out.stat().st_size > 0
    return torch.load(tensor, weights_only=True)


@pytest.mark.parametrize(
    "checkpoint, sampler, drawn_by, steps",
    [
        ("digits", "ddpm", "ddpm", 4),
        ("digits", "ddim", "ddim", 4),
        ("digits", "dpm-solver", "dpm-solver", 4),
        ("digits", "flow-heun", "flow-heun", 4),  # chapter 09's, on a VP model
        ("digits", "edm-heun", "edm-heun", 4),
        ("fashion-flow", "flow-heun", "flow-heun", 4),
        (
            "fashion-flow",
            None,
            "flow-euler",
            4,
        ),  # a flow model's own sampler by default
        # chapter 10's distilled student: consistency sampling, its sidecar's default
        ("fashion-fewstep", None, "consistency", 1),
        ("fashion-fewstep", None, "consistency", 2),
        ("fashion-fewstep", None, "consistency", 4),
    ],
)
def test_each_sampler_saves_what_the_sampler_front_door_draws(
    tmp_path, checkpoint, sampler, drawn_by, steps
):
    """The saved tensor is samplers.sample's output for the same model, sampler, steps and seed,
    mapped from [-1, 1] to [0, 1]: the command adds nothing and drops nothing."""
    from ddpm_course.pretrained import load_pretrained
    from ddpm_course.samplers import sample

    images = _sample(tmp_path, sampler, seed=3, checkpoint=checkpoint, steps=steps)
    model, diffusion, config = load_pretrained(checkpoint, device="cpu")
    size = config.image_size
    expected = sample(drawn_by, model, diffusion, (3, 1, size, size), steps=steps,
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
