"""Drivers: procedures that call a student's function and return what it produced, for the
exercises graded by outcome (e.g. a few training steps, whose trained weights are judged).

An :class:`~ddpm_course.grading.exercise.Exercise` with ``driver="name"`` is run as
``DRIVERS["name"](student_fn, *case.args)`` instead of ``student_fn(*case.args)``; the outputs (a
tensor or a tuple of tensors, as many as the exercise's ``output_names``) go back to the grader,
which judges them with the exercise's ``judge``.

This module runs where the student's code runs: inside the grading sandbox (it is part of the
student view of the package, :mod:`~ddpm_course.grading.sandbox`) and inside ``check()``. It must
import ONLY the Python standard library and torch, never the package's maths (which would put the
answer key in the student's reach). ``tests/test_sandbox.py`` checks that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["DRIVERS", "call_with_driver"]

DRIVERS: dict[str, Callable[..., Any]] = {}


def call_with_driver(driver: str | None, fn: Callable[..., Any], args: tuple) -> Any:
    """``DRIVERS[driver](fn, *args)``, or ``fn(*args)`` when ``driver`` is None."""
    if driver is None:
        return fn(*args)
    if driver not in DRIVERS:
        raise KeyError(
            f"there is no grading driver called {driver!r}; the drivers are {sorted(DRIVERS)}"
        )
    return DRIVERS[driver](fn, *args)
