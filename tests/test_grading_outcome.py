"""Outcome-graded exercises (``driver`` and ``judge`` of :class:`Exercise`) and check()'s message.

A toy exercise: the student writes ``step(w, x)`` (one gradient step on ``(w - x)**2``); the
driver calls it ``n`` times from a starting point in the case arguments and returns the final
weight; the judge accepts a weight near ``x``. Nothing here uses the package's maths.
"""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from ddpm_course.grading import check, drivers, registry
from ddpm_course.grading.exercise import ROUNDING, Case, CaseResult, Exercise


def _toy_driver(step, w0, x, n):
    w = w0.clone()
    for _ in range(int(n)):
        w = step(w, x)
    return w


def _judge(case: Case, outputs: tuple[torch.Tensor, ...]) -> CaseResult:
    (w,) = outputs
    x = case.args[1]
    error = (w - x).abs().max().item()
    if error < 1e-3:
        return CaseResult(True, f"distance to the minimum {error:.1e}")
    if torch.allclose(w, case.args[0]):
        return CaseResult(
            False, "the weight never moved: does the step return the new weight?"
        )
    return CaseResult(False, f"distance to the minimum {error:.1e} (allowed 1e-3)")


def _reference_step(w, x):
    return w - 0.25 * 2 * (w - x)


def _cases(generator):
    return [
        Case(
            f"case {k}",
            (
                torch.randn(3, generator=generator),
                torch.randn(3, generator=generator),
                40,
            ),
        )
        for k in range(3)
    ]


TOY = Exercise(
    name="toy_step",
    signature="toy_step(w, x)",
    reference=_reference_step,
    make_cases=_cases,
    tolerances=ROUNDING,
    tolerance_reason="judged by the outcome",
    hint="w - lr * gradient, with lr = 0.25",
    driver="toy_descent",
    judge=_judge,
)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(drivers.DRIVERS, "toy_descent", _toy_driver)
    monkeypatch.setitem(registry.EXERCISES, "toy_step", TOY)
    return TOY


def _check(fn):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = check(fn, exercise="toy_step")
    return result, printed.getvalue()


def test_the_judge_accepts_the_reference_through_the_driver(toy):
    for case in toy.cases(0):
        assert toy.grade_case(case, toy.call(toy.reference, case.args)).passed


def test_check_runs_the_driver_and_the_judge(toy):
    result, printed = _check(_reference_step)
    assert result.all_passed and "distance to the minimum" in printed

    def lazy(w, x):
        return w  # never moves: the judge names the mistake

    result, printed = _check(lazy)
    assert result.passed == 0 and "the weight never moved" in printed


def test_an_unknown_driver_fails_with_its_name(toy, monkeypatch):
    monkeypatch.delitem(drivers.DRIVERS, "toy_descent")
    with pytest.raises(KeyError, match="no grading driver called 'toy_descent'"):
        toy.call(_reference_step, toy.cases(0)[0].args)


def test_the_drivers_module_imports_only_the_standard_library_and_torch():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(drivers.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "drivers.py may not import from the package"
            roots.add((node.module or "").split(".")[0])
    import sys

    assert roots <= set(sys.stdlib_module_names) | {"torch"}, roots


def test_a_failing_case_names_the_element_with_the_largest_error():
    exercise = registry.get_exercise("normal_kl")
    want = torch.zeros(2, 3, dtype=torch.float64)
    got = want.clone()
    got[0, 1] = 1e-3  # a small error first ...
    got[1, 2] = -0.5  # ... and the largest one later
    message = exercise.compare((want,), (got,)).message
    assert "largest error 5.00e-01 at index (1, 2): expected 0, got -0.5" in message
    assert "allowed error there: 1.0e-12" in message


def test_an_outcome_judge_refuses_a_wrong_shape_and_non_finite_values_first():
    from ddpm_course.grading.exercise import malformed

    assert malformed(torch.zeros(3, 2), (3, 2), "the samples") is None
    result = malformed(torch.zeros(2, 3), (3, 2), "the samples")
    assert not result.passed
    assert result.message == "the samples of shape (2, 3), expected (3, 2)"
    bad = torch.tensor([[0.0, float("nan")], [1.0, 2.0], [3.0, 4.0]])
    result = malformed(bad, torch.Size([3, 2]), "the samples", "the chain diverged")
    assert not result.passed
    assert (
        result.message == "the samples hold NaN or infinite values: the chain diverged"
    )
    inf = torch.tensor([float("inf")])
    assert malformed(inf, (1,), "X_T").message == "X_T hold NaN or infinite values"
