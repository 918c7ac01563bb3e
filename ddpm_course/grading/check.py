"""``check(fn)``: the self-check cell of the exercise notebooks.

It runs a student's function and the package's reference on the same randomised inputs (several
shapes, float32 and float64), prints one line per case with the largest error, a hint when something
fails, and "not attempted" while the function still raises ``NotImplementedError``. It never raises
on a wrong answer, so that a notebook always runs to its end. Its cases are public (seed 0 by
default); the grader draws other inputs for every student, so the summary says "public checks
passed", never that the exercise passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .exercise import CaseResult, OutputError
from .registry import get_exercise

__all__ = ["CheckResult", "check"]

MAX_MESSAGE = 300  # characters of an exception message shown per case


@dataclass(frozen=True)
class CheckResult:
    """What :func:`check` found: ``passed`` of ``total`` cases, or ``attempted=False``."""

    name: str
    passed: int
    total: int
    attempted: bool = True

    @property
    def all_passed(self) -> bool:
        return self.attempted and self.passed == self.total

    def __str__(self) -> str:
        if not self.attempted:
            return f"{self.name}: not attempted"
        return f"{self.name}: {self.passed}/{self.total} public checks passed"

    def _ipython_display_(self) -> None:
        """Show nothing in a notebook: :func:`check` has already printed the summary."""


def _one_line(error: BaseException) -> str:
    message = " ".join(str(error).split())
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + " ..."
    return (
        f"raised {type(error).__name__}: {message}"
        if message
        else f"raised {type(error).__name__}"
    )


def check(fn: Callable, exercise: str | None = None, seed: int = 0) -> CheckResult:
    """Compare ``fn`` with the reference of the exercise of the same name on randomised inputs.

    Args:
        fn: the student's function, called with the exercise's positional arguments.
        exercise: the exercise's name when it differs from ``fn.__name__``.
        seed: the seed of the test inputs (another seed, other inputs).

    Prints a line per case (✓ or ✗, the case, the largest error or what went wrong) and a summary
    with a hint; returns a :class:`CheckResult`. A ``NotImplementedError`` on the first case prints
    "not attempted"; any other exception, a wrong shape or dtype, or a wrong value fails that case
    only.
    """
    name = exercise or getattr(fn, "__name__", "")
    spec = get_exercise(name)
    cases = spec.cases(seed)
    passed = 0
    print(f"Checking {spec.signature} on {len(cases)} cases:")
    for number, case in enumerate(cases, start=1):
        expected = None if spec.judge is not None else spec.expected(case)
        try:
            outputs = spec.call(fn, case.args)  # through the exercise's driver, if any
            result = spec.grade_case(case, outputs, expected)
        except NotImplementedError as error:
            if number == 1:
                print(
                    f"{name}: not attempted (replace `raise NotImplementedError` with your code)"
                )
                return CheckResult(name, 0, len(cases), attempted=False)
            result = CaseResult(False, _one_line(error))
        except OutputError as error:
            result = CaseResult(False, str(error))
        except Exception as error:
            # a bug in the student's code fails this case, never the notebook
            result = CaseResult(False, _one_line(error))
        passed += result.passed
        print(
            f"  {'✓' if result.passed else '✗'} case {number} ({case.label}): {result.message}"
        )
    summary = CheckResult(name, passed, len(cases))
    if summary.all_passed:
        print(f"{summary}. Well done! The grader runs the same checks on other inputs.")
    else:
        print(f"{summary}. Hint: {spec.hint}")
    return summary
