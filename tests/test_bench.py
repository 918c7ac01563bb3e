"""ddpm_course.experiments.bench: peers matched to our U-Net, laid out like it, and the table of ratios."""

from __future__ import annotations

import builtins
import json

import pytest
import torch

from ddpm_course.experiments import bench

pytest.importorskip("diffusers")


def _diffusers_net(model: torch.nn.Module):
    return model.net  # the UNet2DModel inside the (x, t) wrapper


@pytest.mark.parametrize("size, attended_level", [(16, 1), (32, 2)])
def test_diffusers_peer_has_our_levels_attention_and_a_matched_parameter_count(
    size, attended_level
):
    contenders = bench.build_contenders(size)
    ours, peer = contenders["ours"], contenders["diffusers"]
    target = bench.count_parameters(ours)
    assert abs(bench.count_parameters(peer) / target - 1) <= 0.10
    config = _diffusers_net(peer).config
    # attention where ours has it: at 8×8, which is level 1 at 16×16 and level 2 at 32×32
    expected = ["DownBlock2D"] * 3
    expected[attended_level] = "AttnDownBlock2D"
    assert list(config.down_block_types) == expected
    assert list(config.up_block_types) == [
        name.replace("Down", "Up") for name in reversed(expected)
    ]
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
    monkeypatch.setattr(
        bench, "_match_width", lambda build, target, widths: build(widths[-1])
    )
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
        # one round: the paired ratio is the ratio of the two throughputs
        ratio = (
            ours["train_images_per_s_rounds"][0] / row["train_images_per_s_rounds"][0]
        )
        assert f"| {row['name']} | {row['parameters']:,} |" in table
        assert f"{ratio:.2f}× ({ratio:.2f}–{ratio:.2f})" in table
        assert row["train_images_per_s"] > 0 and row["sample_ms_per_nfe"] > 0


def test_ratio_is_the_median_of_ratios_paired_within_rounds(tmp_path):
    # ours is twice as fast in every round although both slow down together: the paired ratio is 2
    ours = bench.BenchResult(16, "ours", 10, [200.0, 100.0, 50.0], [1.0] * 3)
    peer = bench.BenchResult(16, "peer", 10, [100.0, 50.0, 25.0], [1.0] * 3)
    _, markdown_path = bench.write_results([ours, peer], tmp_path)
    assert "| 16 | peer | 10 | 50.0 | 2.00× (2.00–2.00) |" in markdown_path.read_text()


@pytest.mark.parametrize(
    "kwargs, message", [({"layout": "nhwc"}, "layout"), ({"rounds": 0}, "rounds")]
)
def test_bench_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bench.run_bench((16,), **kwargs)


def test_ablation_adds_our_unet_with_the_peers_blocks_per_level():
    contenders = bench.build_contenders(16, ablation=True)
    uniform = contenders["ours-2-per-level"]
    assert uniform.config["num_res_blocks"] == 2
    # the same architecture as the diffusers peer: the same parameter count
    assert bench.count_parameters(uniform) == bench.count_parameters(
        contenders["diffusers"]
    )
    assert "ours-2-per-level" not in bench.build_contenders(16)
