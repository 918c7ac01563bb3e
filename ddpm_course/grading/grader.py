"""The instructor's batch grader: a folder of submitted notebooks in, a CSV and feedback files out.

``grade(assignment, submissions, out_dir)`` reads the exercises and their points from the solutions
notebook ``assignment``, then for each submission (in parallel with ``jobs``):

1. reads the notebook's code cells as JSON (a file that is not a notebook gets status
   ``malformed``) and checks statically which exercise functions lean on the package
   (:mod:`~ddpm_course.grading.integrity`);
2. draws the test inputs from the grading seed (a different draw per student and exercise) and
   computes the reference outputs here, in the grader's process;
3. runs the notebook in a fresh process (:func:`~ddpm_course.grading.runner.run_submission`,
   forked from ``python -m ddpm_course.grading.runner``, a server that has imported only torch and
   this package) under the time and memory limits, and kills its whole process group at the
   notebook time limit;
4. loads the outputs the notebook's functions returned (safetensors: tensors only, nothing that can
   run code) and compares them with the references; partial credit is points x passed / cases.

It writes ``out_dir/grades.csv`` (one row per submission: the student id (the file name without
``.ipynb``), the points per exercise, the total and a status) and ``out_dir/feedback/<student>.md``.
No student code ever runs in the grader's process; one bad submission never stops the batch.

Statuses (joined by ``;`` when several apply): ``ok``; ``malformed`` (not a notebook); ``timeout``
(killed at the notebook time limit); ``crashed`` (the process ended without finishing: ``os._exit``,
a signal, the memory limit); ``cell-errors`` (a cell raised, timed out or did not compile);
``missing`` (a graded function is not defined); ``reference-used`` (a function calls the package's
answer, or does something the static check cannot verify); ``output-truncated`` (the notebook printed
more than is kept); ``grader-error`` (a problem on the grader's side, e.g. it could not start a process).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from .exercise import Exercise, encode_args
from .integrity import find_violations
from .notebook import NotebookError, exercise_points, read_code_cells
from .registry import get_exercise
from .runner import CELL_LOG, DONE_FILE, OUTPUT_FILE, STDIO_FILE, Limits, kill_process_group

__all__ = ["ExerciseGrade", "SubmissionGrade", "collect_submissions", "grade"]

MAX_NOTE_BYTES = 2**20  # the most of any file the runner wrote that the grader reads
MAX_FAILURES_SHOWN = 3  # failing cases listed per exercise in the feedback
STATUS_ORDER = (
    "malformed",
    "grader-error",
    "timeout",
    "crashed",
    "cell-errors",
    "missing",
    "reference-used",
    "output-truncated",
)


@dataclass
class ExerciseGrade:
    """The grade of one exercise of one submission."""

    name: str
    max_points: float
    passed: int = 0
    total: int = 0
    # why the function scores zero despite its outputs
    flagged: list[str] = field(default_factory=list)
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

    @property
    def total(self) -> float:
        return round(sum(exercise.points for exercise in self.exercises), 2)

    @property
    def status(self) -> str:
        return ";".join(status for status in STATUS_ORDER if status in self.statuses) or "ok"


def collect_submissions(submissions: list[Path | str]) -> dict[str, Path]:
    """Student id -> notebook, from notebook files and folders of them (not recursive)."""
    found: dict[str, Path] = {}
    for entry in map(Path, submissions):
        if entry.is_dir():
            paths = sorted(entry.glob("*.ipynb"))
        elif entry.is_file():
            paths = [entry]
        else:
            raise ValueError(
                f"submission {entry} does not exist; give .ipynb files or folders of them"
            )
        for path in paths:
            if path.stem in found:
                raise ValueError(
                    f"two submissions have the student id {path.stem!r}: {found[path.stem]} and {path}; rename one"
                )
            found[path.stem] = path
    if not found:
        raise ValueError("no .ipynb submissions found")
    return found


def _case_seed(seed: int, student: str, exercise: str) -> int:
    """The seed of one student's inputs for one exercise: the same grading seed, the same inputs."""
    return zlib.crc32(f"{seed}/{student}/{exercise}".encode())


class _ForkServer:
    """The grader's end of ``python -m ddpm_course.grading.runner`` (see :func:`~ddpm_course.grading.runner.serve`).

    :meth:`run` sends one job and waits for its process to end (from any number of threads); a
    reader thread matches the server's reports to the waiting jobs.
    """

    START_TIMEOUT = 120.0  # seconds for the server to import torch and fork a child

    def __init__(self, work: Path) -> None:
        environment = dict(
            os.environ, OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2", CUDA_VISIBLE_DEVICES=""
        )
        self._errors = open(work / "fork-server-errors.txt", "wb")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "ddpm_course.grading.runner"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errors, env=environment, cwd=work,
        )  # fmt: skip
        self._lock = threading.Lock()
        self._started: dict[str, Future] = {}
        self._ended: dict[int, Future] = {}
        self._reader = threading.Thread(target=self._read_reports, daemon=True)
        self._reader.start()

    def _ended_future(self, pid: int) -> Future:
        with self._lock:
            return self._ended.setdefault(pid, Future())

    def _read_reports(self) -> None:
        for line in self._process.stdout:
            record = json.loads(line)
            if "job" in record:
                self._ended_future(record["pid"])
                self._started[record["job"]].set_result(record["pid"])
            else:
                self._ended_future(record["pid"]).set_result(record["exit"])
        with self._lock:  # the server is gone: nobody waits forever
            for future in [*self._started.values(), *self._ended.values()]:
                if not future.done():
                    future.set_exception(RuntimeError("the grading fork server stopped"))

    def run(self, job: Path, limits: Limits) -> tuple[bool, int]:
        """Run the runner on ``job`` in a fresh child process: (timed out?, exit code or minus the signal)."""
        started: Future = Future()
        with self._lock:
            self._started[str(job)] = started
            self._process.stdin.write(
                (json.dumps({"job": str(job), "limits": asdict(limits)}) + "\n").encode()
            )
            self._process.stdin.flush()
        pid = started.result(timeout=self.START_TIMEOUT)
        ended = self._ended_future(pid)
        try:
            return False, ended.result(timeout=limits.timeout)
        except FutureTimeout:
            kill_process_group(pid)
            return True, ended.result(timeout=self.START_TIMEOUT)

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait()
        self._reader.join()
        self._errors.close()


def _read_text(path: Path, limit: int = MAX_NOTE_BYTES) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as handle:
        return handle.read(limit).decode("utf-8", errors="replace")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(_read_text(path))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _cell_log(job: Path) -> tuple[list[str], int | None]:
    """The cell errors the runner recorded, and the cell that had started but not ended (if any)."""
    errors, running = [], None
    for line in _read_text(job / CELL_LOG).splitlines():
        try:
            record = json.loads(line)
            cell, event = int(record["cell"]), record["event"]
        except (ValueError, KeyError, TypeError):
            continue
        running = cell if event == "start" else None
        if event == "end" and record.get("error"):
            traceback_text = str(record.get("traceback") or "").strip()
            errors.append(
                f"code cell {cell}: {record['error']}"
                + (f"\n\n```\n{traceback_text}\n```" if traceback_text else "")
            )
    return errors, running


def _load_outputs(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file() or path.stat().st_size > 64 * 2**20:
        return {}
    try:
        return load_file(str(path))
    except Exception:  # a truncated or forged file: no outputs
        return {}


def _grade_exercise(
    exercise: Exercise, grade: ExerciseGrade, cases, expected, job: Path, findings: list[str]
) -> str | None:
    """Fill ``grade`` from the runner's note and outputs for one exercise; return a status code or None."""
    grade.total = len(cases)
    note = _read_json(job / f"{exercise.name}.json")
    if note is None:
        grade.notes.append("not run: the notebook's process ended before this function was called")
        return None
    status = note.get("status")
    if status == "missing":
        grade.notes.append(f"`{exercise.name}` {note.get('detail', 'is not defined')}")
        return "missing"
    if status == "not-attempted":
        grade.notes.append("not attempted (raises NotImplementedError)")
        return None
    if status == "timeout":
        grade.notes.append(f"`{exercise.name}` {note.get('detail', 'timed out')}")
    if status == "unsaveable":
        grade.notes.append(f"its outputs could not be saved ({note.get('detail', '')})")
    errors = {}
    for record in note.get("cases", []) if isinstance(note.get("cases"), list) else []:
        if isinstance(record, dict) and isinstance(record.get("case"), int) and record.get("error"):
            errors[record["case"]] = str(record["error"])[:500]
    outputs = _load_outputs(job / f"{exercise.name}.safetensors")
    for number, (case, want) in enumerate(zip(cases, expected)):
        got = [outputs.get(f"{number}.{position}") for position in range(exercise.n_outputs)]
        if number in errors:
            message = errors[number]
        elif any(tensor is None for tensor in got):
            message = "no output"
        else:
            result = exercise.grade_case(case, tuple(got), want)
            grade.passed += result.passed
            if result.passed:
                continue
            message = result.message
        grade.failures.append(f"case {number + 1} ({case.label}): {message}")
    calls = note.get("package_calls") if isinstance(note.get("package_calls"), list) else []
    grade.flagged = [
        f"calls `{name}` (the package's answer) while it runs" for name in map(str, calls)
    ] + findings
    # a static finding on a function that passes nothing changes no score (e.g. a name it never defines)
    return "reference-used" if calls or (findings and grade.passed) else None


def _grade_one(
    student: str,
    path: Path,
    points: dict[str, float],
    seed: int,
    limits: Limits,
    work: Path,
    server: _ForkServer,
) -> SubmissionGrade:
    exercises = [get_exercise(name) for name in points]
    result = SubmissionGrade(
        student, path, [ExerciseGrade(name, value) for name, value in points.items()]
    )
    try:
        sources = read_code_cells(path)
    except NotebookError as error:
        result.statuses.add("malformed")
        result.notes.append(f"the file could not be read as a notebook: {error}")
        return result
    violations = find_violations(sources, list(points))
    job = work / student
    job.mkdir()
    cases = {
        exercise.name: exercise.cases(_case_seed(seed, student, exercise.name))
        for exercise in exercises
    }
    expected = {  # an exercise with a judge is not compared with the reference's outputs
        exercise.name: [
            None if exercise.judge is not None else exercise.expected(case)
            for case in cases[exercise.name]
        ]
        for exercise in exercises
    }
    (job / "cells.json").write_text(json.dumps(sources))
    torch.save(
        {name: [encode_args(case.args) for case in cases[name]] for name in points},
        job / "inputs.pt",
    )
    timed_out, exit_code = server.run(job, limits)
    finished = (job / DONE_FILE).is_file()
    cell_errors, running = _cell_log(job)
    if timed_out:
        result.statuses.add("timeout")
        where = f" (it was running code cell {running})" if running else ""
        result.notes.append(f"stopped at the notebook time limit of {limits.timeout:g} s{where}")
    elif not finished:
        result.statuses.add("crashed")
        how = (
            f"was killed by signal {-exit_code}"
            if exit_code is not None and exit_code < 0
            else f"exited with code {exit_code}"
        )
        where = f" during code cell {running}" if running else ""
        result.notes.append(
            f"the notebook's process {how}{where} (os._exit, a signal, or the memory limit)"
        )
    if cell_errors:
        result.statuses.add("cell-errors")
        result.notes += cell_errors
    done = _read_json(job / DONE_FILE) or {}
    stdio = _read_text(job / STDIO_FILE, limits.output_chars + 1)
    result.output = (
        _read_text(job / OUTPUT_FILE, limits.output_chars) + stdio[: limits.output_chars]
    )
    if done.get("output_dropped") or len(stdio) > limits.output_chars:
        result.statuses.add("output-truncated")
        result.notes.append(
            f"the notebook printed more than {limits.output_chars} characters; the rest was dropped"
        )
    for exercise, grade in zip(exercises, result.exercises):
        status = _grade_exercise(
            exercise,
            grade,
            cases[exercise.name],
            expected[exercise.name],
            job,
            violations[exercise.name],
        )
        if status:
            result.statuses.add(status)
    return result


def _format_points(value: float) -> str:
    return f"{round(value, 2):g}"


def _feedback(result: SubmissionGrade, assignment: str, points: dict[str, float]) -> str:
    maximum = sum(points.values())
    lines = [
        f"# {assignment}: {result.student}",
        "",
        f"**Total: {_format_points(result.total)} / {_format_points(maximum)} points.** Status: {result.status}.",
        "",
        "| exercise | points | cases passed |",
        "|---|---|---|",
    ]
    for grade in result.exercises:
        cases = f"{grade.passed}/{grade.total}" if grade.total else "-"
        lines.append(
            f"| `{grade.name}` | {_format_points(grade.points)} / {_format_points(grade.max_points)} | {cases} |"
        )
    for grade in result.exercises:
        if grade.points == grade.max_points:
            continue
        lines += [
            "",
            f"## `{grade.name}`: {_format_points(grade.points)} / {_format_points(grade.max_points)}",
            "",
        ]
        lines += [f"- {note}" for note in grade.notes]
        lines += [f"- scored 0: {reason}" for reason in grade.flagged]
        if grade.flagged:
            lines.append(
                "- write the function with torch only: the package's functions are the answer key"
            )
            continue
        lines += [f"- ✗ {failure}" for failure in grade.failures[:MAX_FAILURES_SHOWN]]
        if len(grade.failures) > MAX_FAILURES_SHOWN:
            lines.append(f"- ... and {len(grade.failures) - MAX_FAILURES_SHOWN} more failing cases")
        if grade.failures:
            lines.append(f"- Hint: {get_exercise(grade.name).hint}")
    if result.notes:
        lines += ["", "## The notebook as a whole", ""] + [f"- {note}" for note in result.notes]
    if result.output.strip():
        lines += [
            "",
            "## What the notebook printed (truncated)",
            "",
            "```",
            result.output.strip()[:2000],
            "```",
        ]
    return "\n".join(lines) + "\n"


def _grade_all(
    found: dict[str, Path],
    points: dict[str, float],
    seed: int,
    limits: Limits,
    work: Path,
    server: _ForkServer,
    jobs: int,
    progress: bool,
) -> list[SubmissionGrade]:
    results = []
    with ThreadPoolExecutor(jobs) as pool:
        futures = {
            student: pool.submit(_grade_one, student, path, points, seed, limits, work, server)
            for student, path in sorted(found.items())
        }
        for student, future in tqdm(
            futures.items(), disable=not progress, desc="grading", unit="notebook"
        ):
            try:
                results.append(future.result())
            except Exception as error:
                # the grader's own failure on one notebook; the batch goes on
                failed = SubmissionGrade(
                    student,
                    found[student],
                    [ExerciseGrade(name, value) for name, value in points.items()],
                )
                failed.statuses.add("grader-error")
                failed.notes.append(
                    f"the grader could not grade this notebook: {type(error).__name__}: {error}"
                )
                results.append(failed)
    return results


def grade(
    assignment: Path | str,
    submissions: list[Path | str],
    out_dir: Path | str,
    jobs: int = 1,
    limits: Limits | None = None,
    seed: int = 0,
    progress: bool = False,
) -> list[SubmissionGrade]:
    """Grade every submission against the solutions notebook ``assignment``; write the CSV and the feedback.

    ``limits`` defaults to :class:`~ddpm_course.grading.runner.Limits` (). Returns the grades, sorted
    by student id. See the module docstring for what happens to each.
    """
    limits = limits or Limits()
    assignment = Path(assignment)
    points = exercise_points(nbformat.read(assignment, as_version=4), str(assignment))
    found = collect_submissions(submissions)
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    out_dir = Path(out_dir)
    (out_dir / "feedback").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ddpm-course-grade-") as work:
        server = _ForkServer(Path(work))
        try:
            results = _grade_all(found, points, seed, limits, Path(work), server, jobs, progress)
        finally:
            server.close()
    with open(out_dir / "grades.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", *points, "total", "status"])
        for result in results:
            writer.writerow(
                [
                    result.student,
                    *(_format_points(g.points) for g in result.exercises),
                    _format_points(result.total),
                    result.status,
                ]
            )
    for result in results:
        (out_dir / "feedback" / f"{result.student}.md").write_text(
            _feedback(result, assignment.stem, points)
        )
    return results
