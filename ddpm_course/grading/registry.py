"""The registry of exercises: every exercise of every chapter, by function name.

To add a chapter's exercises, write ``chNN_name.py`` with a tuple ``EXERCISES`` of
:class:`~ddpm_course.grading.exercise.Exercise` and add it to ``CHAPTERS`` below; then write the
solutions notebook and run ``ddpm-course assign``.
"""

from __future__ import annotations

from . import (
    ch01_sde,
    ch02_score,
    ch03_elbo,
    ch04_training,
    ch05_sampling,
    ch06_guidance,
    ch07_latent,
    ch08_evaluation,
    ch09_flow,
    ch10_few_steps,
)
from .exercise import Exercise

__all__ = ["EXERCISES", "get_exercise"]

CHAPTERS = (
    ch01_sde,
    ch02_score,
    ch03_elbo,
    ch04_training,
    ch05_sampling,
    ch06_guidance,
    ch07_latent,
    ch08_evaluation,
    ch09_flow,
    ch10_few_steps,
)

EXERCISES: dict[str, Exercise] = {
    exercise.name: exercise for chapter in CHAPTERS for exercise in chapter.EXERCISES
}


def get_exercise(name: str) -> Exercise:
    """The exercise whose function is called ``name``; a ``ValueError`` naming them all otherwise."""
    if name not in EXERCISES:
        raise ValueError(
            f"there is no exercise called {name!r}; the exercises are {', '.join(sorted(EXERCISES))}"
        )
    return EXERCISES[name]
