"""Exercises and grading: ``check()`` for students, ``assign`` for authors, the batch grader for instructors.

* :func:`check` (``from ddpm_course.grading import check``) compares a student's function with the
  package's reference on randomised inputs, in the notebook.
* :mod:`~ddpm_course.grading.assign` writes the student notebooks ``exercises/`` from the instructor
  notebooks ``solutions/`` (``ddpm-course assign``).
* :mod:`~ddpm_course.grading.grader` grades a folder of submitted notebooks into a CSV and one
  feedback file per student (``ddpm-course grade``); each notebook runs in a bubblewrap sandbox
  of its own namespaces (:mod:`~ddpm_course.grading.sandbox`, with the fork server
  :mod:`~ddpm_course.grading.sandbox_runner`), where ``ddpm_course`` is a student view without
  the answer key, and only its functions' outputs come back.
* :mod:`~ddpm_course.grading.registry` lists the exercises of every chapter.
"""

from .check import CheckResult, check

__all__ = ["CheckResult", "check"]
