"""ddpm-course ablate: the summary statistics, the paired differences, the continuation of a
results file, and the command. The training runs are stubbed (the real ones take minutes); one
real run of two steps checks that the variants reach the trainer."""

from __future__ import annotations

import json
import statistics

import pytest

from ddpm_course.cli import main as cli_main
from ddpm_course.experiments import ablation


def fake_score(overrides, seed, steps, num_samples, sample_steps):
    """A deterministic FD per (variant, seed): the schedule's and objective's letters, plus the seed."""
    fd = 100.0 + len(overrides["schedule"]) + 10 * len(overrides["objective"]) + seed
    fd += 5.0 * (overrides.get("min_snr_gamma") is not None)
    return {"fd": fd, "final_loss": 0.1, "train_seconds": 0.0}


@pytest.fixture
def stubbed(monkeypatch):
    calls = []

    def run(*args):
        calls.append(args[:2])
        return fake_score(*args)

    monkeypatch.setattr(ablation, "_run_in_folder", run)
    monkeypatch.setattr(
        "ddpm_course.metrics.digits_fd_floor", lambda n, generator=None: 30.0
    )
    return calls


def test_summary_is_mean_sd_range_and_the_mean_paired_difference():
    runs = [
        {"variant": "a", "seed": 0, "fd": 10.0}, {"variant": "a", "seed": 1, "fd": 14.0},
        {"variant": "b", "seed": 0, "fd": 13.0}, {"variant": "b", "seed": 1, "fd": 19.0},
    ]  # fmt: skip
    summary = ablation.summarise(runs)
    assert summary["b"]["mean"] == 16.0
    assert summary["b"]["std"] == pytest.approx(statistics.stdev([13.0, 19.0]))
    assert (summary["b"]["min"], summary["b"]["max"]) == (13.0, 19.0)
    assert summary["b"]["vs_first"] == pytest.approx(((13 - 10) + (19 - 14)) / 2)
    assert summary["a"]["vs_first"] == 0.0


def test_every_variant_runs_once_per_seed_and_a_rerun_continues_the_file(
    stubbed, tmp_path
):
    out = tmp_path / "ablation.json"
    results = ablation.run_ablation(steps=3, seeds=(0, 1), out=out, progress=False)
    assert len(stubbed) == 2 * len(ablation.VARIANTS)
    assert {(run["variant"], run["seed"]) for run in results["runs"]} == {
        (variant, seed) for variant in ablation.VARIANTS for seed in (0, 1)
    }
    saved = json.loads(out.read_text())
    assert saved["budget"]["steps"] == 3 and saved["floor"] == 30.0
    assert list(saved["summary"]) == list(ablation.VARIANTS)
    stubbed.clear()
    ablation.run_ablation(steps=3, seeds=(0, 1, 2), out=out, progress=False)
    assert {seed for _, seed in stubbed} == {2}  # seeds 0 and 1 were kept from the file
    stubbed.clear()
    ablation.run_ablation(steps=4, seeds=(0,), out=out, progress=False)
    assert len(stubbed) == len(ablation.VARIANTS)  # another budget starts afresh


def test_the_command_writes_the_results_and_prints_the_table(stubbed, tmp_path, capsys):
    out = tmp_path / "a.json"
    assert cli_main(["ablate", "--steps", "2", "--seeds", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "linear, eps, min-SNR-5" in printed and "floor" in printed
    assert json.loads(out.read_text())["seeds"] == [0]


def test_a_real_run_trains_the_variant_it_names(tmp_path):
    """Two steps of the x0 objective on the sigmoid schedule with min-SNR: the run folder's config
    says so, and an FD comes back."""
    overrides = {"schedule": "sigmoid", "objective": "x0", "min_snr_gamma": 5.0}
    scored = ablation._train_and_score(overrides, 0, 2, 8, 1, tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {key: config[key] for key in overrides} == overrides
    assert config["max_steps"] == 2 and config["model_overrides"] == {
        "model_channels": 16
    }
    assert scored["fd"] > 0
