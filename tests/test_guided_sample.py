"""``ddpm-course sample``'s chapter-06 options: they run on the shipped models, keep known pixels,
and refuse what a model cannot do with a message that says what to change."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddpm_course.cli import main


def _sample(tmp_path: Path, *options: str) -> torch.Tensor:
    tensor = tmp_path / "s.pt"
    main(["sample", "--n", "2", "--steps", "3", "--device", "cpu", "--out", str(tmp_path / "g.png"),
          "--save-tensor", str(tensor), *options])  # fmt: skip
    return torch.load(tensor, weights_only=True)


def test_cfg_samples_are_the_asked_class_by_the_shipped_classifier(tmp_path: Path):
    """w = 3 towards 7 in 20 DDIM steps: the shipped digits classifier reads (nearly) every
    sample as a 7 (chance is 10 %; the chapter measures about 99 % at w = 3)."""
    from ddpm_course.metrics import load_digits_classifier

    main(["sample", "--n", "20", "--steps", "20", "--device", "cpu", "--out",
          str(tmp_path / "g.png"), "--save-tensor", str(tmp_path / "s.pt"), "--checkpoint",
          "digits-cond", "--guidance-scale", "3", "--class-label", "7"])  # fmt: skip
    images = torch.load(tmp_path / "s.pt", weights_only=True) * 2 - 1
    predicted = load_digits_classifier()(images).argmax(1)
    assert (predicted == 7).float().mean() >= 0.9


def test_cfg_and_classifier_guidance_draw_images(tmp_path: Path):
    cfg = _sample(
        tmp_path,
        "--checkpoint",
        "digits-cond",
        "--guidance-scale",
        "3",
        "--class-label",
        "4",
    )
    assert cfg.shape == (2, 1, 16, 16)
    # the limited interval: with M above every step it is full guidance, with M = 0 (below
    # every step the sampler visits) plain conditional sampling, from the same noise
    same = ("--checkpoint", "digits-cond", "--class-label", "4", "--seed", "5")
    full = _sample(tmp_path, *same, "--guidance-scale", "3")
    whole = _sample(
        tmp_path, *same, "--guidance-scale", "3", "--guidance-max-timestep", "999"
    )
    none = _sample(
        tmp_path, *same, "--guidance-scale", "3", "--guidance-max-timestep", "0"
    )
    plain = _sample(tmp_path, *same, "--guidance-scale", "0")
    torch.testing.assert_close(whole, full)
    torch.testing.assert_close(none, plain)
    assert (full - plain).abs().max() > 1e-3
    guided = _sample(tmp_path, "--checkpoint", "digits", "--classifier-scale", "2", "--class-label",
                     "1", "--sampler", "ddpm")  # fmt: skip
    # the ancestral mean shift of guidance.classifier_guided_ddpm_sample, seed 0, nothing else
    from ddpm_course.guidance import classifier_guided_ddpm_sample
    from ddpm_course.guidance_models import load_noisy_classifier
    from ddpm_course.pretrained import load_pretrained
    from ddpm_course.samplers import respace

    model, diffusion, _ = load_pretrained("digits", device="cpu")
    classifier, _, _ = load_noisy_classifier(device="cpu")
    expected = classifier_guided_ddpm_sample(
        model, respace(diffusion, 3), classifier, torch.ones(2, dtype=torch.long), 2.0,
        (2, 1, 16, 16), generator=torch.Generator("cpu").manual_seed(0),
    )  # fmt: skip
    torch.testing.assert_close(guided, ((expected + 1) / 2).clamp(0, 1))


def test_inpainting_keeps_the_known_pixels(tmp_path: Path):
    known = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(16, 16)
    mask[:8] = 1
    torch.save(known, tmp_path / "known.pt")
    torch.save(mask, tmp_path / "mask.pt")
    out = _sample(
        tmp_path,
        "--checkpoint",
        "digits",
        "--inpaint",
        str(tmp_path / "mask.pt"),
        "--known",
        str(tmp_path / "known.pt"),
        "--resample",
        "2",
        "--jump-length",
        "1",
    )
    # the saved samples are (x + 1) / 2 of x = 2 known - 1: equal up to float32 rounding
    torch.testing.assert_close(
        out[:, :, :8], known.expand(2, -1, -1, -1)[:, :, :8], atol=1e-6, rtol=0
    )


def test_sr_and_sdedit_run_on_their_models(tmp_path: Path):
    torch.save(torch.rand(2, 1, 14, 14), tmp_path / "low.pt")
    assert _sample(
        tmp_path, "--checkpoint", "fashion-sr", "--sr", str(tmp_path / "low.pt")
    ).shape == (2, 1, 28, 28)
    torch.save(torch.rand(2, 1, 16, 16), tmp_path / "guide.pt")
    out = _sample(
        tmp_path,
        "--checkpoint",
        "digits",
        "--sdedit",
        str(tmp_path / "guide.pt"),
        "--t0",
        "300",
    )
    assert out.shape == (2, 1, 16, 16)


@pytest.mark.parametrize(
    "options, message",
    [
        (
            ["--checkpoint", "digits", "--guidance-scale", "3", "--class-label", "1"],
            "unconditional",
        ),
        (
            [
                "--checkpoint",
                "digits-cond",
                "--guidance-scale",
                "3",
                "--class-label",
                "10",
            ],
            r"0\.\.9",
        ),
        (["--checkpoint", "digits-cond", "--guidance-scale", "3"], "--class-label"),
        (
            ["--checkpoint", "digits-cond", "--guidance-max-timestep", "300"],
            "give both",
        ),
        (
            [
                "--checkpoint",
                "digits-cond",
                "--guidance-scale",
                "3",
                "--class-label",
                "1",
                "--guidance-max-timestep",
                "1000",
            ],
            r"0\.\.999",
        ),  # fmt: skip
        (["--checkpoint", "digits", "--sr", "LOW"], "super-resolution model"),
        (["--checkpoint", "fashion-sr"], "--sr"),
        (["--checkpoint", "digits", "--inpaint", "MASK"], "--known"),
        (["--checkpoint", "digits", "--sdedit", "GUIDE", "--t0", "1000"], "--t0"),
    ],
)
def test_misuse_is_refused_clearly(tmp_path: Path, options, message):
    for name in ("LOW", "MASK", "GUIDE"):
        if name in options:
            size = 8 if name == "LOW" else 16
            torch.save(torch.rand(1, 1, size, size), tmp_path / f"{name}.pt")
            options = [
                str(tmp_path / f"{name}.pt") if o == name else o for o in options
            ]
    with pytest.raises(SystemExit, match=message):
        _sample(tmp_path, *options)


def test_a_mask_of_the_wrong_shape_is_refused(tmp_path: Path):
    torch.save(torch.rand(1, 1, 16, 16), tmp_path / "known.pt")
    torch.save(torch.ones(12, 12), tmp_path / "mask.pt")
    with pytest.raises(SystemExit, match="mask must be"):
        _sample(tmp_path, "--checkpoint", "digits", "--inpaint", str(tmp_path / "mask.pt"),
                "--known", str(tmp_path / "known.pt"))  # fmt: skip
