"""The acceptance summary of chapter 06 (``guidance_eval.cfg_acceptance``), on hand-made
sections whose medians, means and verdicts are worked out by hand, and one tiny run of the
``cfg_seeds`` section on the shipped models."""

from __future__ import annotations

import math

import pytest

from ddpm_course.experiments.guidance_eval import cfg_acceptance, evaluate_cfg_seeds


def _row(variant: str, seed: int, fd: float, accuracy: float) -> dict:
    return {"variant": variant, "seed": seed, "fd": fd, "accuracy": accuracy,
            "diversity": 20.0}  # fmt: skip


def test_acceptance_uses_twice_the_median_floor_and_every_seed():
    section = {
        "floors": [30.0, 10.0, 20.0, 40.0, 50.0],  # median 30: threshold 60
        "rows": [
            _row("close", 1, 61.0, 1.0), _row("close", 0, 59.0, 1.0),
            _row("good", 0, 10.0, 0.96), _row("good", 1, 20.0, 0.99),
            _row("inaccurate", 0, 10.0, 0.94), _row("inaccurate", 1, 10.0, 1.0),
        ],
    }  # fmt: skip
    summary = cfg_acceptance(section)
    assert summary["close"]["fd"] == [59.0, 61.0]  # in seed order
    assert summary["close"]["threshold"] == 60.0
    assert summary["close"]["met"] is False  # one seed above 60
    assert summary["good"]["met"] is True
    assert summary["good"]["fd_mean"] == pytest.approx(15.0)
    assert summary["good"]["fd_sd"] == pytest.approx(math.sqrt(50.0))  # sample s.d.
    assert summary["inaccurate"]["met"] is False  # 94 % on seed 0


def test_acceptance_median_of_an_even_number_of_floors_is_the_middle_mean():
    section = {"floors": [10.0, 40.0, 20.0, 30.0], "rows": [_row("a", 0, 49.0, 1.0)]}
    assert cfg_acceptance(section)["a"]["threshold"] == pytest.approx(50.0)
    assert cfg_acceptance(section)["a"]["met"] is True


def test_cfg_seeds_section_runs_each_variant_on_each_seed():
    variants = (
        ("every step", None, False, None), ("separate", None, True, None),
        ("ancestral", None, False, 3),
    )  # fmt: skip
    out = evaluate_cfg_seeds(n=20, steps=2, seeds=(0, 1), variants=variants)
    assert [(r["variant"], r["seed"]) for r in out["rows"]] == [
        ("every step", 0), ("every step", 1), ("separate", 0), ("separate", 1),
        ("ancestral", 0), ("ancestral", 1),
    ]  # fmt: skip
    assert [(r["sampler"], r["steps"]) for r in out["rows"]][3:] == [
        ("ddim", 2), ("ddpm", 3), ("ddpm", 3),
    ]  # fmt: skip
    assert len(out["floors"]) == 2 and all(f > 0 for f in out["floors"])
    by = {(r["variant"], r["seed"]): r["fd"] for r in out["rows"]}
    assert by[("every step", 0)] != by[("separate", 0)]  # the other ε(x, ∅) is used
    assert by[("every step", 0)] != by[("every step", 1)]  # the seed is used
