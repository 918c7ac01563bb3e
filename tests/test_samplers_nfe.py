"""``ddpm-course nfe-sweep``: the results file of chapter 05's FD-against-NFE figure."""

from __future__ import annotations

import json

import pytest
import torch

from ddpm_course.cli import main
from ddpm_course.experiments.nfe_sweep import SAMPLERS, sample_batched, sample_with
from ddpm_course.metrics import fashion_fd, fashion_fd_floor
from ddpm_course.pretrained import load_pretrained


def test_sweep_writes_every_run_and_append_adds_only_the_missing_ones(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    main(
        [
            "nfe-sweep",
            "--n",
            "12",
            "--nfe",
            "2",
            "--seeds",
            "0",
            "--samplers",
            "ddim-eta0",
            "dpm-solver++2m",
            "--out",
            str(out),
        ]
    )
    first = json.loads(out.read_text())
    assert [(r["sampler"], r["nfe"], r["seed"]) for r in first["runs"]] == [
        ("ddim-eta0", 2, 0),
        ("dpm-solver++2m", 2, 0),
    ]
    assert set(first["floor"]) == {"0"} and len(first["commands"]) == 1
    main(
        [
            "nfe-sweep",
            "--n",
            "12",
            "--nfe",
            "2",
            "3",
            "--seeds",
            "0",
            "--samplers",
            "ddim-eta0",
            "--out",
            str(out),
            "--append",
        ]
    )
    second = json.loads(out.read_text())
    assert second["runs"][:2] == first["runs"]  # kept, not re-run
    assert [(r["sampler"], r["nfe"]) for r in second["runs"][2:]] == [("ddim-eta0", 3)]
    assert len(second["commands"]) == 2 and second["commands"][1].endswith("--append")
    assert all(r["fd"] > 0 and r["seconds"] > 0 for r in second["runs"])


def test_append_refuses_a_file_of_another_sample_size(tmp_path):
    out = tmp_path / "sweep.json"
    main(
        [
            "nfe-sweep",
            "--n",
            "12",
            "--nfe",
            "1",
            "--seeds",
            "0",
            "--samplers",
            "ddim-eta0",
            "--out",
            str(out),
        ]
    )
    with pytest.raises(SystemExit, match="holds digits with n=12"):
        main(
            [
                "nfe-sweep",
                "--n",
                "16",
                "--nfe",
                "1",
                "--seeds",
                "0",
                "--out",
                str(out),
                "--append",
            ]
        )


def test_each_sweep_sampler_spends_exactly_nfe_network_evaluations():
    model, diffusion, _ = load_pretrained("digits", device="cpu")
    calls = []

    def counting_model(x, t):
        calls.append(1)
        return model(x, t)

    x_T = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    for sampler in SAMPLERS:
        calls.clear()
        sample_with(
            sampler, counting_model, diffusion, x_T.shape, 7, x_T, torch.Generator()
        )
        assert len(calls) == 7, sampler


def test_drawing_in_batches_changes_nothing_for_a_deterministic_sampler():
    model, diffusion, _ = load_pretrained("digits", device="cpu")
    x_T = torch.randn(7, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    whole = sample_with("ddim-eta0", model, diffusion, x_T.shape, 3, x_T, None)
    batched = sample_batched("ddim-eta0", model, diffusion, 3, x_T, None, batch=3)
    # the same float32 operations on fewer rows at a time: equal to round-off
    torch.testing.assert_close(batched, whole, atol=1e-5, rtol=0)


def test_a_fashion_sweep_measures_fashion_fd_against_the_five_draw_floor(tmp_path):
    out = tmp_path / "sweep.json"
    argv = ["nfe-sweep", "--model", "fashion", "--n", "10", "--batch", "4"]
    argv += ["--nfe", "2", "--seeds", "0", "--samplers", "ddim-eta0", "--out", str(out)]
    main(argv)
    result = json.loads(out.read_text())
    assert (result["model"], result["n"], result["batch"]) == ("fashion", 10, 4)
    assert result["floor"] == fashion_fd_floor(10, draws=5, seed=0)
    x_T = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model, diffusion, _ = load_pretrained("fashion", device="cpu")
    samples = sample_batched("ddim-eta0", model, diffusion, 2, x_T, None, batch=4)
    assert result["runs"][0]["fd"] == pytest.approx(fashion_fd(samples), rel=1e-6)
    assert "--model fashion" in result["commands"][0]
