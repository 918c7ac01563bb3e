"""``gradebook.csv`` in the column layout of Canvas's gradebook import.

Canvas (Grades > Import) reads a CSV whose first columns are ``Student``, ``ID``,
``SIS User ID``, ``SIS Login ID``, ``Section``, then one column per assignment, and an optional
second row ``Points Possible`` with the maximum of each assignment. The roster maps the grader's
student ids (the notebook file names) to those columns: a CSV with a header and the columns
``student`` (file stem, required), ``name``, ``id`` (Canvas's user id), ``sis_user_id``,
``sis_login_id``, ``section`` (missing columns are left empty). A submission that the roster
does not list is left out (and named in the returned list); a listed student without a
submission is given 0.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..checkpoint import atomic_write

__all__ = ["CANVAS_COLUMNS", "read_roster", "write_gradebook"]

CANVAS_COLUMNS = ("Student", "ID", "SIS User ID", "SIS Login ID", "Section")
ROSTER_COLUMNS = ("name", "id", "sis_user_id", "sis_login_id", "section")


def read_roster(path: Path | str) -> dict[str, dict[str, str]]:
    """student id (file stem) -> the roster's columns; a ``ValueError`` naming what is wrong."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "student" not in reader.fieldnames:
            raise ValueError(
                f"roster {path} needs a header with a 'student' column (the notebook file name "
                f"without .ipynb) and any of {', '.join(ROSTER_COLUMNS)}"
            )
        roster = {}
        for number, row in enumerate(reader, start=2):
            student = (row.get("student") or "").strip()
            if not student:
                raise ValueError(
                    f"roster {path}, line {number}: the 'student' column is empty"
                )
            if student in roster:
                raise ValueError(
                    f"roster {path}, line {number}: {student!r} is listed twice"
                )
            roster[student] = {
                key: (row.get(key) or "").strip() for key in ROSTER_COLUMNS
            }
    return roster


def write_gradebook(
    path: Path,
    assignment: str,
    points: dict,
    results: list,
    roster: dict[str, dict[str, str]],
) -> list[str]:
    """Write ``path`` (atomically); return the students graded but missing from the roster."""
    totals = {result.student: result.total for result in results}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*CANVAS_COLUMNS, assignment])
    writer.writerow(["Points Possible", "", "", "", "", f"{sum(points.values()):g}"])
    for student, row in roster.items():
        writer.writerow(
            [
                row["name"] or student,
                row["id"],
                row["sis_user_id"],
                row["sis_login_id"],
                row["section"],
                f"{totals.get(student, 0.0):g}",
            ]
        )
    text = buffer.getvalue()
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8", "replace")))
    path.chmod(0o644)
    return sorted(set(totals) - set(roster))
