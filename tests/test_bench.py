"""ddpm_course.bench: peers matched to our U-Net, laid out like it, and the table of ratios."""

from __future__ import annotations

import builtins
import json

import pytest
import torch

from ddpm_course import bench

pytest.importorskip("diffusers")


def _diffusers_net(model: torch.nn.Module):
    return model.net  # the UNet2DModel inside the (x, t) wrapper


@pytest.mark.parametrize("size, attended_level", [(16, 1), (32, 2)])
def test_diffusers_peer_has_our_levels_attention_and_a_matched_parameter_count(size, attended_level):
    contenders = bench.build_contenders(size)
    ours, peer = contenders["ours"], contenders["diffusers"]
    target = bench.count_parameters(ours)
    assert abs(bench.count_parameters(peer) / target - 1) <= 0.10
    config = _diffusers_net(peer).config
    # attention where ours has it: at 8×8, which is level 1 at 16×16 and level 2 at 32×32
    expected = ["DownBlock2D"] * 3
    expected[attended_level] = "AttnDownBlock2D"
    assert list(config.down_block_types) == expected
    assert list(config.up_block_types) == [name.replace("Down", "Up") for name in reversed(expected)]
    assert config.attention_head_dim is None  # one head, as ours
    assert config.norm_num_groups == ours.config["num_groups"]


def test_a_peer_that_is_not_installed_is_reported_not_fatal(monkeypatch):
    real_import = builtins.__import__

    def no_lucidrains(name, *args, **kwargs):
        if name.startswith("denoising_diffusion_pytorch"):
            raise ImportError("no module", name="denoising_diffusion_pytorch")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lucidrains)
    contenders = bench.build_contenders(16)
    assert "pip install 'ddpm-course[bench]'" in contenders["lucidrains"]
    assert isinstance(contenders["diffusers"], torch.nn.Module)


def test_a_peer_that_cannot_be_matched_within_ten_percent_is_reported(monkeypatch):
    # only a width far too large to match is available
    monkeypatch.setattr(bench, "_match_width", lambda build, target, widths: build(widths[-1]))
    contenders = bench.build_contenders(16)
    assert "no width within 10%" in contenders["diffusers"]


def test_bench_table_reports_the_measured_ratios(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "BATCH", 4)
    results = bench.run_bench((16,), rounds=1, steps=1)
    assert {r.name for r in results} >= {"ours", "diffusers"}
    json_path, markdown_path = bench.write_results(results, tmp_path)
    rows = json.loads(json_path.read_text())["results"]
    ours = next(r for r in rows if r["name"] == "ours")
    table = markdown_path.read_text()
    for row in rows:
        ratio = ours["train_images_per_s"] / row["train_images_per_s"]
        assert f"| {row['name']} | {row['parameters']:,} |" in table
        assert f"{ratio:.2f}×" in table
        assert row["train_images_per_s"] > 0 and row["sample_ms_per_nfe"] > 0


@pytest.mark.parametrize("kwargs, message", [({"layout": "nhwc"}, "layout"), ({"rounds": 0}, "rounds")])
def test_bench_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bench.run_bench((16,), **kwargs)
