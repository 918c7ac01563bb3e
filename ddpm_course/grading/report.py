"""The grades of a batch and how they are shown: the per-exercise and per-submission records,
the feedback file of each student, and the text helpers that keep student-written text (printed
output, error messages, file names) from changing the feedback's Markdown.

The totals come first in a feedback file; nothing a notebook printed, raised or was named can
come before them or close the code block it is shown in.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from .registry import get_exercise

__all__ = [
    "ExerciseGrade",
    "SubmissionGrade",
    "csv_text",
    "feedback_text",
    "fenced",
    "format_points",
    "inline",
    "plain",
]

MAX_FAILURES_SHOWN = 3  # failing cases listed per exercise in the feedback
STATUS_ORDER = (
    "malformed",
    "grader-error",
    "timeout",
    "crashed",
    "cell-errors",
    "missing",
    "reference-used",
    "unanalysable",
    "copied",
    "output-truncated",
)
SANDBOX_LABEL = {True: "bubblewrap", False: "none (--no-sandbox)"}


@dataclass
class ExerciseGrade:
    """The grade of one exercise of one submission."""

    name: str
    max_points: float
    passed: int = 0
    total: int = 0
    # why the function scores zero despite its outputs
    flagged: list[str] = field(default_factory=list)
    similarity: str = ""  # the closest match, for the feedback
    notes: list[str] = field(default_factory=list)  # what happened, for the feedback
    failures: list[str] = field(default_factory=list)  # failing cases, for the feedback

    @property
    def points(self) -> float:
        if self.flagged or self.total == 0:
            return 0.0
        return round(self.max_points * self.passed / self.total, 2)


@dataclass
class SubmissionGrade:
    """The grade of one submitted notebook."""

    student: str
    path: Path
    exercises: list[ExerciseGrade]
    statuses: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    output: str = ""
    # exercise -> [(function name, tokens), ...]: the answer and the helpers it calls (for
    # the copy check, from the static check's worker)
    functions: dict[str, list] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return round(sum(exercise.points for exercise in self.exercises), 2)

    @property
    def status(self) -> str:
        return (
            ";".join(status for status in STATUS_ORDER if status in self.statuses)
            or "ok"
        )


def plain(text: object, limit: int = 200) -> str:
    """Runner-written text reduced to letters, digits and plain punctuation (no Markdown)."""
    return re.sub(r"[^A-Za-z0-9_ ,.()-]", "", str(text))[:limit]


def inline(text: str) -> str:
    """Student text as one inline code span that no backtick inside can close."""
    text = " ".join(str(text).split())
    run = 1
    while "`" * run in text:
        run += 1
    fence = "`" * run
    return f"{fence} {text} {fence}"


def fenced(text: str, indent: str = "") -> str:
    """Student text as a fenced code block whose fence is longer than any run of backticks (or
    tildes) inside it, so that the text cannot close it."""
    run = 3
    while "`" * run in text:
        run += 1
    fence = "`" * run
    body = "\n".join(indent + line for line in text.splitlines())
    return f"{indent}{fence}text\n{body}\n{indent}{fence}"


def format_points(value: float) -> str:
    return f"{round(value, 2):g}"


def feedback_text(
    result: SubmissionGrade, assignment: str, points: dict[str, float], sandboxed: bool
) -> str:
    maximum = sum(points.values())
    # the totals come first: nothing the notebook printed can come before them
    lines = [
        f"# {assignment}: {inline(result.student)}",
        "",
        f"**Total: {format_points(result.total)} / {format_points(maximum)} points.** Status: {result.status}.",
        "",
        f"Sandbox: {SANDBOX_LABEL[sandboxed]}.",
        "",
        "| exercise | points | cases passed |",
        "|---|---|---|",
    ]
    for grade in result.exercises:
        cases = f"{grade.passed}/{grade.total}" if grade.total else "-"
        lines.append(
            f"| `{grade.name}` | {format_points(grade.points)} / {format_points(grade.max_points)} | {cases} |"
        )
    lines += ["", "<!-- end of the grades; everything below is detail -->"]
    for grade in result.exercises:
        if grade.points == grade.max_points and not grade.similarity:
            continue
        lines += [
            "",
            f"## `{grade.name}`: {format_points(grade.points)} / {format_points(grade.max_points)}",
            "",
        ]
        lines += [f"- {note}" for note in grade.notes]
        if grade.similarity:
            lines.append(f"- {grade.similarity}")
        lines += [f"- scored 0: {reason}" for reason in grade.flagged]
        if grade.flagged:
            lines.append(
                "- write the function with torch only: the package's functions are the answer key"
            )
            continue
        lines += [f"- ✗ {failure}" for failure in grade.failures[:MAX_FAILURES_SHOWN]]
        if len(grade.failures) > MAX_FAILURES_SHOWN:
            lines.append(
                f"- ... and {len(grade.failures) - MAX_FAILURES_SHOWN} more failing cases"
            )
        if grade.failures:
            lines.append(f"- Hint: {get_exercise(grade.name).hint}")
    if result.notes:
        lines += ["", "## The notebook as a whole", ""] + [
            f"- {note}" for note in result.notes
        ]
    if result.output.strip():
        lines += [
            "",
            "## What the notebook printed (truncated)",
            "",
            fenced(result.output.strip()[:2000]),
        ]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[list]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()
