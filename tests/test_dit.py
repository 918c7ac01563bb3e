"""The diffusion transformer of chapter 10 (ddpm_course.dit): patches, positions, adaLN-Zero."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_course.config import TrainConfig
from ddpm_course.dit import (
    DiT,
    DiTBlock,
    count_parameters,
    dit_from_preset,
    modulate,
    patchify,
    sincos_position_embedding,
    unpatchify,
)
from ddpm_course.loading import load_model
from ddpm_course.samplers import sample
from ddpm_course.train import Trainer

TINY = dict(
    image_size=8, in_channels=1, patch_size=2, hidden_size=16, depth=2, num_heads=2
)


def test_patchify_orders_patches_row_major_and_round_trips_exactly():
    # a 2-channel 4×4 image whose value encodes (channel, row, column)
    c, r, k = torch.meshgrid(
        torch.arange(2), torch.arange(4), torch.arange(4), indexing="ij"
    )
    image = (100 * c + 10 * r + k).float()[None]
    tokens = patchify(image, 2)
    assert tokens.shape == (1, 4, 8)
    # token 1 is the top-right patch (rows 0-1, columns 2-3), flattened (row, column, channel)
    assert tokens[0, 1].tolist() == [2, 102, 3, 103, 12, 112, 13, 113]
    assert tokens[0, 2].tolist()[:2] == [20, 120]  # bottom-left patch starts at (2, 0)
    x = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    for p in (1, 2, 4, 7):
        assert torch.equal(unpatchify(patchify(x, p), p, 3, 28, 28), x)
    with pytest.raises(ValueError, match="patch_size 3 must divide"):
        patchify(x, 3)


def test_the_position_embedding_is_sin_cos_of_row_then_column():
    table = sincos_position_embedding(8, 3)  # 9 tokens, 4 features per axis
    assert table.shape == (9, 8)
    # token (i, j) = 3i + j; per axis [sin(x), sin(x/10000^(1/1)), cos(x), cos(x/10000)]
    i, j = 2, 1
    expected = [math.sin(i), math.sin(i / 1e4), math.cos(i), math.cos(i / 1e4)]
    expected += [math.sin(j), math.sin(j / 1e4), math.cos(j), math.cos(j / 1e4)]
    torch.testing.assert_close(
        table[3 * i + j], torch.tensor(expected), atol=1e-6, rtol=0
    )


def test_adaln_zero_blocks_start_as_the_identity_and_the_network_predicts_zero():
    block = DiTBlock(16, 2)
    x = torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(1))
    c = torch.randn(4, 16, generator=torch.Generator().manual_seed(2))
    assert torch.equal(block(x, c), x)
    model = DiT(**TINY, num_classes=3)
    images = torch.randn(4, 1, 8, 8)
    assert torch.equal(
        model(images, torch.tensor([0, 5, 9, 99])), torch.zeros_like(images)
    )
    # once the gates are not zero, the block is no longer the identity
    torch.nn.init.normal_(block.adaLN_modulation[1].weight)
    assert not torch.allclose(block(x, c), x)
    torch.testing.assert_close(
        modulate(torch.ones(1, 2, 3), torch.full((1, 3), 0.5), torch.full((1, 3), 1.0)),
        torch.full((1, 2, 3), 2.5),
    )


def test_the_output_depends_on_time_class_and_every_pixel_once_trained_a_little():
    torch.manual_seed(0)
    model = DiT(**TINY, num_classes=3)
    for parameter in model.parameters():  # leave the zero initialisation
        torch.nn.init.normal_(parameter, std=0.1)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    out = model(x, torch.tensor([3, 3]), y=torch.tensor([0, 0]))
    assert out.shape == x.shape
    assert not torch.allclose(
        out, model(x, torch.tensor([400, 400]), y=torch.tensor([0, 0]))
    )
    assert not torch.allclose(
        out, model(x, torch.tensor([3, 3]), y=torch.tensor([1, 1]))
    )
    # attention mixes all tokens: the output's first pixel sees the last patch
    out[0, 0, 0, 0].backward()
    assert float(x.grad[0, 0, -1, -1].abs()) > 0 and float(x.grad[1].abs().sum()) == 0


def test_the_fashion_dit_matches_the_fashion_unet_parameter_count():
    from ddpm_course.nn import unet_from_preset

    # per block 18·h² + 15·h for h = 136 (qkv, projection, MLP 4h, adaLN 6h, with biases)
    h = 136
    blocks = 6 * (18 * h * h + 15 * h)
    rest = (4 * h + h) + (256 * h + h + h * h + h) + (h * 4 + 4) + (h * 2 * h + 2 * h)
    dit = dit_from_preset("fashion-dit")
    assert count_parameters(dit) == blocks + rest
    unet = count_parameters(unet_from_preset("fashion"))
    assert abs(count_parameters(dit) / unet - 1) < 0.03


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="patch_size 3 must divide image_size 8"):
        DiT(**{**TINY, "patch_size": 3})
    with pytest.raises(ValueError, match="num_heads 3 must divide hidden_size 16"):
        DiT(**{**TINY, "num_heads": 3})
    with pytest.raises(ValueError, match="unconditional"):
        DiT(**TINY)(torch.zeros(1, 1, 8, 8), torch.tensor([1]), y=torch.tensor([0]))
    with pytest.raises(ValueError, match="expects images of shape"):
        DiT(**TINY)(torch.zeros(1, 1, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="unknown DiT preset"):
        dit_from_preset("imagenet")


def test_the_trainer_trains_a_dit_the_loader_rebuilds_it_and_samplers_take_it(tmp_path):
    config = TrainConfig.from_preset(
        "fashion-dit", image_size=8, max_steps=3, batch_size=8, warmup_steps=0,
        log_every=1, sample_every=0, checkpoint_every=0, precision="fp32",
        num_samples=4, sample_steps=2, out_dir=str(tmp_path),
        model_overrides=dict(hidden_size=16, depth=2, num_heads=2),
    )  # fmt: skip
    images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    trainer = Trainer(config, dataset=(images, torch.zeros(16, dtype=torch.long)))
    assert isinstance(trainer.model, DiT)
    trainer.train()
    model, diffusion, _ = load_model(tmp_path, device="cpu")
    assert isinstance(model, DiT) and model.config["hidden_size"] == 16
    for parameter, trained in zip(
        model.parameters(), trainer.ema_model.parameters(), strict=True
    ):
        assert torch.equal(parameter, trained)
    # the adaLN-Zero gates moved away from zero in three steps
    assert float(model.blocks[0].adaLN_modulation[1].weight.detach().abs().max()) > 0
    for name in ("ddim", "dpm-solver"):
        out = sample(name, model, diffusion, (2, 1, 8, 8), 3)
        assert out.shape == (2, 1, 8, 8) and bool(torch.isfinite(out).all())
