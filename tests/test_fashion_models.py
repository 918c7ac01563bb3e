"""The Fashion-MNIST models of chapters 06 and 07: their presets, and the experiment that
measures them (on tiny random models: these tests check the bookkeeping, not the quality,
which the results file and the chapters report)."""

from __future__ import annotations

import json

import pytest
import torch

from ddpm_course import results
from ddpm_course.attention import CrossAttnUNet
from ddpm_course.autoencoder import VAE_PRESETS, AutoencoderKL
from ddpm_course.diffusion import GaussianDiffusion
from ddpm_course.experiments import fashion_models
from ddpm_course.guidance import ClassifierFreeGuidance
from ddpm_course.guidance_models import SR_PRESETS
from ddpm_course.guidance_nets import SuperResUNet
from ddpm_course.latent import LDM_UNETS, LatentDiffusion
from ddpm_course.latent_train import ldm_train_config
from ddpm_course.nn import UNet
from ddpm_course.samplers import sample
from ddpm_course.schedules import linear

TINY = {"model_channels": 8, "channel_mults": (1,), "num_res_blocks": 1,
        "attention_resolutions": (), "num_groups": 4, "patch_size": 2}  # fmt: skip


def _random(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere (a fresh U-Net's zero-initialised output layer predicts 0,
    which no guidance scale changes)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.05)
    return model.eval()


def _diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(linear(1000))


def test_the_fashion_latent_holds_at_most_a_third_of_the_pixels():
    vae = AutoencoderKL(**VAE_PRESETS["fashion-vae"]["config"])
    mean, _ = vae.encode(torch.zeros(2, 1, 28, 28))
    assert tuple(mean.shape[1:]) == (4, 7, 7)
    assert mean[0].numel() * 3 <= 28 * 28
    unet = CrossAttnUNet(**LDM_UNETS["fashion-ldm"])
    assert (
        unet(mean, torch.tensor([3, 999]), y=torch.tensor([9, 10])).shape == mean.shape
    )
    config = ldm_train_config("fashion-ldm")
    assert (config.image_size, config.channels, config.num_classes) == (7, 4, 10)


def test_the_fashion_sr_model_maps_fourteen_to_twenty_eight():
    preset = SR_PRESETS["fashion-sr"]
    model = SuperResUNet(low_res_size=14, channels=1, unet=preset["unet"])
    x = torch.randn(2, 1, 28, 28)
    out = model(x, torch.tensor([0, 500]), low_res=torch.randn(2, 1, 14, 14))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match=r"low_res of shape \(N, 1, 14, 14\)"):
        model(x, torch.tensor([0, 500]), low_res=torch.randn(2, 1, 8, 8))


def test_balanced_labels_ask_for_every_class_equally_often():
    assert torch.bincount(fashion_models.balanced_labels(1000)).tolist() == [100] * 10


def test_guidance_section_reports_per_seed_rows_and_their_medians(monkeypatch):
    torch.manual_seed(0)
    model = UNet(image_size=28, in_channels=1, num_classes=10, **TINY).eval()
    monkeypatch.setattr(
        fashion_models,
        "load_pretrained",
        lambda name, device: (model, _diffusion(), None),
    )
    result = fashion_models.guidance_section(
        n=20, steps=2, scales=[0.0, 2.0], seeds=[0, 1]
    )
    assert [row["scale"] for row in result["rows"]] == [0.0, 2.0]
    for row in result["rows"]:
        fds = [seed["fd"] for seed in row["seeds"]]
        assert row["median_fd"] == pytest.approx(sum(fds) / 2)  # two seeds: their mean
        assert row["range_fd"] == [min(fds), max(fds)]
        assert all(0 <= seed["accuracy"] <= 1 for seed in row["seeds"])
    # the guided draw is DDIM on the CFG wrapper from the same seed
    labels = fashion_models.balanced_labels(4)
    guided = fashion_models.draw_conditional(
        model, _diffusion(), labels, 2, 0, scale=2.0
    )
    expected = sample(
        "ddim", ClassifierFreeGuidance(model, 2.0), _diffusion(), (4, 1, 28, 28), 2,
        generator=torch.Generator().manual_seed(0), model_kwargs={"y": labels},
    )  # fmt: skip
    torch.testing.assert_close(guided, expected)
    assert "accuracy" not in result["null_class"]["seeds"][0]
    json.dumps(result)  # it goes into a results file


def test_sr_section_measures_spread_and_consistency_against_bicubic(monkeypatch):
    torch.manual_seed(0)
    model = SuperResUNet(
        low_res_size=14, channels=1, unet={"image_size": 28, **TINY}
    ).eval()
    monkeypatch.setattr(
        fashion_models,
        "load_pretrained",
        lambda name, device: (model, _diffusion(), None),
    )
    monkeypatch.setattr(
        fashion_models,
        "super_resolve",
        lambda m, d, low, generator: _noisy_upscale(low),
    )
    result = fashion_models.sr_section(inputs=3, seed=0)
    # each "sample" is the nearest-neighbour upscale plus noise of std 0.1: its pooled image
    # is the input plus noise of std 0.1 / 2 (the mean of four), squared error ≈ 0.0025
    assert result["pooled_mse_samples_mean"] == pytest.approx(0.0025, rel=0.3)
    # the spread is the noise's 0.1 where nothing is clamped, less at the clamped background
    assert 0.05 < result["pixel_std_mean"] < 0.1
    assert 0 <= result["fraction_samples_better_than_bicubic"] <= 1


def _noisy_upscale(low: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    up = low.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    return up + 0.1 * torch.randn(up.shape, generator=generator)


def test_latent_section_compares_the_latent_and_pixel_models_at_the_same_n(monkeypatch):
    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE_PRESETS["fashion-vae"]["config"]).eval()
    tiny_latent = {**LDM_UNETS["fashion-ldm"], "model_channels": 8, "num_groups": 4,
                   "head_channels": 8, "context_dim": 16}  # fmt: skip
    ldm = LatentDiffusion(vae, _random(CrossAttnUNet(**tiny_latent)), scale_factor=2.0)
    pixel = UNet(image_size=28, in_channels=1, num_classes=10, **TINY).eval()
    models = {"fashion-ldm": ldm, "fashion-cond": pixel}
    monkeypatch.setattr(
        fashion_models,
        "load_pretrained",
        lambda name, device: (models[name], _diffusion(), None),
    )
    monkeypatch.setattr(fashion_models, "latent_sample", _few_step_latent_sample)
    monkeypatch.setattr(fashion_models, "draw_conditional", _few_step_pixels)
    result = fashion_models.latent_section(n=20, seeds=[0], repeats=1)
    assert result["latent_values"] == 196 and result["image_values"] == 784
    row = result["rows"][0]
    assert row["ldm_fd"] != row["ldm_fd_decoded_without_unscaling"]
    assert result["timing"]["median_ratio_latent_to_pixel"] > 0
    assert result["reconstruction_mse"] > 0


def _few_step_latent_sample(
    ldm, diffusion, n, labels, steps, generator=None, decode=True
):
    from ddpm_course.latent import latent_sample

    return latent_sample(ldm, diffusion, n, labels=labels, steps=2, generator=generator,
                         decode=decode)  # fmt: skip


_DRAW = fashion_models.draw_conditional


def _few_step_pixels(model, diffusion, labels, steps, seed, scale=0.0, batch=250):
    return _DRAW(model, diffusion, labels, 2, seed, scale, batch)


# ------------------------------------------------ the committed results of chapters 06, 07


def test_chapter_06_results_meet_issue_21s_acceptance():
    fashion = results.load("06_fashion")
    guidance = fashion["guidance"]
    rows = {row["scale"]: row for row in guidance["rows"]}
    assert guidance["n"] == 1000 and len(guidance["seeds"]) == 3
    # the unguided model is visibly imperfect; some w in the sweep reaches 90% accuracy
    assert rows[0.0]["median_accuracy"] < 0.9
    assert any(row["median_accuracy"] >= 0.9 for row in rows.values())
    # guidance buys precision with recall (Kynkäänniemi et al. 2019's trade-off)
    assert rows[4.0]["median_recall"] < rows[0.0]["median_recall"]
    assert rows[4.0]["median_precision"] > rows[0.0]["median_precision"]
    sr = fashion["sr"]
    # eight samples of one input differ (a per-pixel spread well above zero) while each
    # pools back to its input better than a bicubic upscale does
    assert sr["samples_per_input"] == 8 and sr["pixel_std_min"] > 0.01
    assert sr["fraction_samples_better_than_bicubic"] == 1.0
    assert sr["pooled_mse_samples_max"] < sr["pooled_mse_bicubic_mean"]


def test_chapter_07_results_meet_issue_21s_acceptance():
    latent = results.load("07_fashion")["latent"]
    assert latent["n"] == 1000 and len(latent["seeds"]) == 3
    assert latent["latent_values"] * 3 <= latent["image_values"]
    assert latent["median_ldm_fd"] <= 1.5 * latent["median_pixel_fd"]
    assert latent["timing"]["median_ratio_latent_to_pixel"] <= 1 / 3
    # the medians are those of the rows
    fds = sorted(row["ldm_fd"] for row in latent["rows"])
    assert latent["median_ldm_fd"] == fds[1]
