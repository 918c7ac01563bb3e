"""What a notebook's run left in its job folder, read by the grader after every process of it
is gone, and trusted in nothing: every file is read with a size limit and without following
links, JSON nested only a few levels deep, and a safetensors file of outputs only after its
header has been checked for size and number of entries (a forged header listing a million
empty tensors would cost the grader gigabytes and seconds to load).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import torch
from safetensors.torch import load as safetensors_load

from .exercise import Exercise
from .report import ExerciseGrade, fenced, inline, plain
from .runner import CELL_LOG

__all__ = ["cell_log", "grade_exercise", "load_outputs", "read_json", "read_text"]

MAX_NOTE_BYTES = 2**20  # the most of any file the runner wrote that the grader reads
MAX_OUTPUT_BYTES = 64 * 2**20  # the most of a safetensors file of outputs that is read
MAX_HEADER_BYTES = (
    2**20
)  # the most of a safetensors header (about 100 bytes per tensor)
MAX_JSON_DEPTH = 8  # nesting of the JSON files the grader reads


def read_bytes(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file that the notebook left in its job folder; a
    symbolic link (which could point at the grader's files) or anything else reads as empty."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            return b""
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(handle, min(left, 2**20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(handle)


def read_text(path: Path, limit: int = MAX_NOTE_BYTES) -> str:
    return read_bytes(path, limit).decode("utf-8", errors="replace")


def read_json(path: Path, limit: int = MAX_NOTE_BYTES) -> dict | None:
    """A JSON object written in the job folder: at most ``limit`` bytes, nested at most a few
    levels deep (a deeper one is refused before it is parsed); None otherwise."""
    text = read_text(path, limit)
    if _depth(text) > MAX_JSON_DEPTH:
        return None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def cell_log(job: Path) -> tuple[list[str], int | None]:
    """The cell errors the runner recorded, and the cell that had started but not ended (if any)."""
    errors, running = [], None
    for line in read_text(job / CELL_LOG).splitlines()[:10_000]:
        if line.count("{") + line.count("[") > MAX_JSON_DEPTH:
            continue
        try:
            record = json.loads(line)
            cell, event = int(record["cell"]), record["event"]
        except (ValueError, KeyError, TypeError):
            continue
        running = cell if event == "start" else None
        if event == "end" and record.get("error"):
            traceback_text = str(record.get("traceback") or "").strip()
            errors.append(
                f"code cell {cell}: {inline(str(record['error'])[:500])}"
                + (
                    f"\n\n{fenced(traceback_text[:3000], '  ')}"
                    if traceback_text
                    else ""
                )
            )
    return errors, running


def load_outputs(path: Path, max_entries: int) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file of outputs, or {} for a file that is too large, whose
    header (an 8-byte length, then JSON) is longer than :data:`MAX_HEADER_BYTES` or lists
    more than ``max_entries`` tensors, or that safetensors cannot read. The header is checked
    before safetensors parses it."""
    data = read_bytes(path, MAX_OUTPUT_BYTES + 1)
    if len(data) < 8 or len(data) > MAX_OUTPUT_BYTES:
        return {}
    length = int.from_bytes(data[:8], "little")
    if length > min(MAX_HEADER_BYTES, len(data) - 8):
        return {}
    header = data[8 : 8 + length].decode("utf-8", errors="replace")
    if header.count("{") > max_entries + 2 or _depth(header) > 3:
        return {}  # one object per tensor (and the metadata's), one level below the top
    try:
        entries = json.loads(header)
    except (json.JSONDecodeError, RecursionError):
        return {}
    if not isinstance(entries, dict):
        return {}
    if len(entries) - ("__metadata__" in entries) > max_entries:
        return {}
    try:
        return safetensors_load(data)
    except Exception:  # a truncated or forged file: no outputs
        return {}


def _depth(text: str) -> int:
    depth = deepest = 0
    for character in text:
        if character in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif character in "]}":
            depth -= 1
    return deepest


def grade_exercise(
    exercise: Exercise,
    grade: ExerciseGrade,
    cases,
    expected,
    job: Path,
    findings: list[str],
) -> str | None:
    """Fill ``grade`` from the runner's note and outputs for one exercise; return a status code or None."""
    grade.total = len(cases)
    note = read_json(job / f"{exercise.name}.json")
    if note is None:
        grade.notes.append(
            "not run: the notebook's process ended before this function was called"
        )
        return None
    status = note.get("status")
    if status == "missing":
        grade.notes.append(
            f"`{exercise.name}` {plain(note.get('detail', 'is not defined'))}"
        )
        return "missing"
    if status == "not-attempted":
        grade.notes.append("not attempted (raises NotImplementedError)")
        return None
    if status == "timeout":
        grade.notes.append(
            f"`{exercise.name}` {plain(note.get('detail', 'timed out'))}"
        )
    if status == "unsaveable":
        grade.notes.append(
            f"its outputs could not be saved ({inline(str(note.get('detail', ''))[:300])})"
        )
    errors = {}
    for record in (
        note.get("cases", [])[: len(cases)]
        if isinstance(note.get("cases"), list)
        else []
    ):
        if (
            isinstance(record, dict)
            and isinstance(record.get("case"), int)
            and record.get("error")
        ):
            errors[record["case"]] = str(record["error"])[:500]
    outputs = load_outputs(
        job / f"{exercise.name}.safetensors", len(cases) * exercise.n_outputs
    )
    for number, (case, want) in enumerate(zip(cases, expected, strict=True)):
        got = [
            outputs.get(f"{number}.{position}")
            for position in range(exercise.n_outputs)
        ]
        if number in errors:
            message = inline(errors[number])
        elif any(tensor is None for tensor in got):
            message = "no output"
        else:
            try:
                result = exercise.grade_case(case, tuple(got), want)
            except (
                Exception
            ) as error:  # a judge that cannot read these outputs: a failed case
                message = f"the outputs could not be judged ({type(error).__name__})"
                grade.failures.append(f"case {number + 1} ({case.label}): {message}")
                continue
            grade.passed += result.passed
            if result.passed:
                continue
            message = result.message
        grade.failures.append(f"case {number + 1} ({case.label}): {message}")
    grade.flagged = list(findings)
    # a finding on a function that passes nothing changes no score (e.g. a name it never
    # defines); reaching for the package is reported either way
    package = any("ddpm_course" in finding for finding in findings)
    return "reference-used" if findings and (grade.passed or package) else None
