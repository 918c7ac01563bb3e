"""The instructor's batch grader: a folder of submitted notebooks in, a CSV and feedback files out.

``grade(assignment, submissions, out_dir)`` reads the exercises and their points from the solutions
notebook ``assignment``, then for each submission (in parallel with ``jobs``):

1. reads the notebook's code cells as JSON (a file that is not a notebook gets status
   ``malformed``), turns them into Python the way IPython does, and checks statically, in a worker
   process under a time limit, which exercise functions lean on the package or on what the
   grader cannot verify (:mod:`~ddpm_course.grading.integrity`);
2. draws the test inputs from the grading seed (a different draw per student and exercise) and
   computes the reference outputs here, in the grader's process;
3. runs the notebook in the sandbox (:mod:`~ddpm_course.grading.sandbox`): its own namespaces,
   its own job folder, no answer key importable, limits on processes, memory, CPU, files; the
   whole PID namespace is killed at the notebook time limit;
4. once every process of the notebook is gone, reads the outputs its functions returned
   (safetensors: tensors only; every file read with a size limit) and compares them with the
   references (or judges them, for outcome-graded exercises); partial credit is
   points x passed / cases. A notebook that crashed or timed out gets nothing from its files.

After the batch, every exercise function is compared with the package's implementation and with
the same function of every other submission (:mod:`~ddpm_course.grading.similarity`).

It writes ``out_dir/grades.csv`` (one row per submission: the student id (the file name without
``.ipynb``), the points per exercise, the total, a status and the sandbox used),
``out_dir/feedback/<student>.md``, ``out_dir/similarity.csv`` and, with a roster,
``out_dir/gradebook.csv`` (Canvas's gradebook import layout). Each file is written whole to a
temporary name and renamed, by the grader alone, after every sandbox is gone.

Statuses (joined by ``;`` when several apply): ``ok``; ``malformed`` (not a notebook); ``timeout``
(killed at the notebook time limit); ``crashed`` (the process ended without finishing: ``os._exit``,
a signal, the memory or disk limit); ``cell-errors`` (a cell raised, timed out or did not compile);
``missing`` (a graded function is not defined); ``reference-used`` (a function calls the package's
answer, or does something the static check cannot verify); ``unanalysable`` (the static check did
not finish in time: nothing is scored); ``copied`` (with ``--copy-policy zero``: a function too
similar to another's); ``output-truncated`` (the notebook printed more than is kept);
``grader-error`` (a problem on the grader's side, e.g. it could not start the sandbox).
"""

from __future__ import annotations

import csv
import json
import os
import re
import stat
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import torch
from safetensors.torch import load as safetensors_load
from tqdm.auto import tqdm

from .exercise import Exercise, encode_args
from .integrity import Analyser, AnalysisTimeout
from .notebook import NotebookError, exercise_points, read_code_cells
from .registry import get_exercise
from .runner import CELL_LOG, DONE_FILE, OUTPUT_FILE, STDIO_FILE, Limits
from .sandbox import INSTALL_HINT, SandboxUnavailable, Zygote, bwrap_path

__all__ = ["ExerciseGrade", "SubmissionGrade", "collect_submissions", "grade"]

MAX_NOTE_BYTES = 2**20  # the most of any file the runner wrote that the grader reads
MAX_OUTPUT_BYTES = 64 * 2**20  # the most of a safetensors file of outputs that is read
MAX_JSON_DEPTH = 8  # nesting of the JSON files the grader reads
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
    sources: list[str] = field(
        default_factory=list
    )  # the cells as Python (for the copy check)

    @property
    def total(self) -> float:
        return round(sum(exercise.points for exercise in self.exercises), 2)

    @property
    def status(self) -> str:
        return (
            ";".join(status for status in STATUS_ORDER if status in self.statuses)
            or "ok"
        )


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


def _read_bytes(path: Path, limit: int) -> bytes:
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


def _read_text(path: Path, limit: int = MAX_NOTE_BYTES) -> str:
    return _read_bytes(path, limit).decode("utf-8", errors="replace")


def _read_json(path: Path, limit: int = MAX_NOTE_BYTES) -> dict | None:
    """A JSON object written in the job folder: at most ``limit`` bytes, nested at most a few
    levels deep (a deeper one is refused before it is parsed); None otherwise."""
    text = _read_text(path, limit)
    depth = deepest = 0
    for character in text:
        if character in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif character in "]}":
            depth -= 1
    if deepest > MAX_JSON_DEPTH:
        return None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _cell_log(job: Path) -> tuple[list[str], int | None]:
    """The cell errors the runner recorded, and the cell that had started but not ended (if any)."""
    errors, running = [], None
    for line in _read_text(job / CELL_LOG).splitlines()[:10_000]:
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
                f"code cell {cell}: {_inline(str(record['error'])[:500])}"
                + (
                    f"\n\n{_fenced(traceback_text[:3000], '  ')}"
                    if traceback_text
                    else ""
                )
            )
    return errors, running


def _load_outputs(path: Path) -> dict[str, torch.Tensor]:
    data = _read_bytes(path, MAX_OUTPUT_BYTES + 1)
    if not data or len(data) > MAX_OUTPUT_BYTES:
        return {}
    try:
        return safetensors_load(data)
    except Exception:  # a truncated or forged file: no outputs
        return {}


def _plain(text: object, limit: int = 200) -> str:
    """Runner-written text reduced to letters, digits and plain punctuation (no Markdown)."""
    return re.sub(r"[^A-Za-z0-9_ ,.()-]", "", str(text))[:limit]


def _inline(text: str) -> str:
    """Student text as one inline code span that no backtick inside can close."""
    text = " ".join(str(text).split())
    run = 1
    while "`" * run in text:
        run += 1
    fence = "`" * run
    return f"{fence} {text} {fence}"


def _fenced(text: str, indent: str = "") -> str:
    """Student text as a fenced code block whose fence is longer than any run of backticks (or
    tildes) inside it, so that the text cannot close it."""
    run = 3
    while "`" * run in text:
        run += 1
    fence = "`" * run
    body = "\n".join(indent + line for line in text.splitlines())
    return f"{indent}{fence}text\n{body}\n{indent}{fence}"


def _grade_exercise(
    exercise: Exercise,
    grade: ExerciseGrade,
    cases,
    expected,
    job: Path,
    findings: list[str],
) -> str | None:
    """Fill ``grade`` from the runner's note and outputs for one exercise; return a status code or None."""
    grade.total = len(cases)
    note = _read_json(job / f"{exercise.name}.json")
    if note is None:
        grade.notes.append(
            "not run: the notebook's process ended before this function was called"
        )
        return None
    status = note.get("status")
    if status == "missing":
        grade.notes.append(
            f"`{exercise.name}` {_plain(note.get('detail', 'is not defined'))}"
        )
        return "missing"
    if status == "not-attempted":
        grade.notes.append("not attempted (raises NotImplementedError)")
        return None
    if status == "timeout":
        grade.notes.append(
            f"`{exercise.name}` {_plain(note.get('detail', 'timed out'))}"
        )
    if status == "unsaveable":
        grade.notes.append(
            f"its outputs could not be saved ({_inline(str(note.get('detail', ''))[:300])})"
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
    outputs = _load_outputs(job / f"{exercise.name}.safetensors")
    for number, (case, want) in enumerate(zip(cases, expected, strict=True)):
        got = [
            outputs.get(f"{number}.{position}")
            for position in range(exercise.n_outputs)
        ]
        if number in errors:
            message = _inline(errors[number])
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


@dataclass
class _Batch:
    """What every notebook of a batch shares."""

    points: dict[str, float]
    seed: int
    limits: Limits
    zygote: Zygote
    analyser: Analyser


def _grade_one(student: str, path: Path, batch: _Batch) -> SubmissionGrade:
    points, limits = batch.points, batch.limits
    exercises = [get_exercise(name) for name in points]
    result = SubmissionGrade(
        student, path, [ExerciseGrade(name, value) for name, value in points.items()]
    )
    try:
        cells = read_code_cells(path)
    except NotebookError as error:
        result.statuses.add("malformed")
        result.notes.append(
            f"the file could not be read as a notebook: {_inline(str(error)[:300])}"
        )
        return result
    try:
        sources, violations = batch.analyser.analyse(cells, list(points))
        result.sources = sources
    except AnalysisTimeout as error:
        result.statuses.add("unanalysable")
        result.notes.append(
            f"{error}: the notebook is too large or too complex to check, so nothing is scored "
            "(split long cells, remove generated code, or ask your instructor)"
        )
        return result
    ident, job, uid = batch.zygote.new_job()
    cases = {
        exercise.name: exercise.cases(_case_seed(batch.seed, student, exercise.name))
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
    specs = [
        {"name": e.name, "n_outputs": e.n_outputs, "driver": e.driver}
        for e in exercises
    ]
    (job / "exercises.json").write_text(json.dumps(specs))
    torch.save(
        {name: [encode_args(case.args) for case in cases[name]] for name in points},
        job / "inputs.pt",
    )
    for name in ("cells.json", "exercises.json", "inputs.pt"):
        (job / name).chmod(0o444)
    record = batch.zygote.run(ident, job, uid, limits.as_request())
    # from here on no process of the notebook exists: the files are what it left
    exit_code, reason = record.get("exit"), record.get("reason")
    finished = (
        exit_code == 0 and reason is None and _read_json(job / DONE_FILE) is not None
    )
    cell_errors, running = _cell_log(job)
    if reason == "timeout":
        result.statuses.add("timeout")
        where = f" (it was running code cell {running})" if running else ""
        result.notes.append(
            f"stopped at the notebook time limit of {limits.timeout:g} s{where}"
        )
    elif not finished:
        result.statuses.add("crashed")
        where = f" during code cell {running}" if running else ""
        if reason == "memory":
            how = f"held more than {limits.as_request()['sandbox_memory_mb']} MiB in all its processes together"
        elif reason == "disk":
            how = f"wrote more than {limits.job_folder_mb} MiB into its folder"
        elif isinstance(exit_code, int) and exit_code > 128:
            how = f"was killed by signal {exit_code - 128}"
        else:
            how = f"exited with code {exit_code}"
        result.notes.append(
            f"the notebook's process {how}{where} (os._exit, a signal, or a limit); "
            "nothing it left behind is scored"
        )
    if cell_errors:
        result.statuses.add("cell-errors")
        result.notes += cell_errors
    done = (_read_json(job / DONE_FILE) or {}) if finished else {}
    stdio = _read_text(job / STDIO_FILE, limits.output_chars + 1)
    result.output = (
        _read_text(job / OUTPUT_FILE, limits.output_chars)
        + stdio[: limits.output_chars]
    )
    if done.get("output_dropped") or len(stdio) > limits.output_chars:
        result.statuses.add("output-truncated")
        result.notes.append(
            f"the notebook printed more than {limits.output_chars} characters; the rest was dropped"
        )
    for exercise, grade in zip(exercises, result.exercises, strict=True):
        if not finished:  # a crashed or killed run earns nothing from the files it left
            grade.total = len(cases[exercise.name])
            continue
        status = _grade_exercise(
            exercise,
            grade,
            cases[exercise.name],
            expected[exercise.name],
            job,
            violations.get(exercise.name, []),
        )
        if status:
            result.statuses.add(status)
    return result


def _format_points(value: float) -> str:
    return f"{round(value, 2):g}"


def _feedback(
    result: SubmissionGrade, assignment: str, points: dict[str, float], sandboxed: bool
) -> str:
    maximum = sum(points.values())
    # the totals come first: nothing the notebook printed can come before them
    lines = [
        f"# {assignment}: {result.student}",
        "",
        f"**Total: {_format_points(result.total)} / {_format_points(maximum)} points.** Status: {result.status}.",
        "",
        f"Sandbox: {SANDBOX_LABEL[sandboxed]}.",
        "",
        "| exercise | points | cases passed |",
        "|---|---|---|",
    ]
    for grade in result.exercises:
        cases = f"{grade.passed}/{grade.total}" if grade.total else "-"
        lines.append(
            f"| `{grade.name}` | {_format_points(grade.points)} / {_format_points(grade.max_points)} | {cases} |"
        )
    lines += ["", "<!-- end of the grades; everything below is detail -->"]
    for grade in result.exercises:
        if grade.points == grade.max_points and not grade.similarity:
            continue
        lines += [
            "",
            f"## `{grade.name}`: {_format_points(grade.points)} / {_format_points(grade.max_points)}",
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
            _fenced(result.output.strip()[:2000]),
        ]
    return "\n".join(lines) + "\n"


def _grade_all(
    found: dict[str, Path], batch: _Batch, jobs: int, progress: bool
) -> list[SubmissionGrade]:
    results = []
    with ThreadPoolExecutor(jobs) as pool:
        futures = {
            student: pool.submit(_grade_one, student, path, batch)
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
                    [
                        ExerciseGrade(name, value)
                        for name, value in batch.points.items()
                    ],
                )
                failed.statuses.add("grader-error")
                failed.notes.append(
                    f"the grader could not grade this notebook: {type(error).__name__}: {_inline(str(error)[:500])}"
                )
                results.append(failed)
    return results


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it: readers see the old file
    or the whole new one, never a part."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            stream.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _csv_text(rows: list[list]) -> str:
    import io

    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def grade(
    assignment: Path | str,
    submissions: list[Path | str],
    out_dir: Path | str,
    jobs: int = 1,
    limits: Limits | None = None,
    seed: int = 0,
    progress: bool = False,
    sandbox: bool = True,
    copy_policy: str = "flag",
    similarity_threshold: float | None = None,
    roster: Path | str | None = None,
    analysis_timeout: float = 30.0,
) -> list[SubmissionGrade]:
    """Grade every submission against the solutions notebook ``assignment``; write the CSV and the feedback.

    ``limits`` defaults to :class:`~ddpm_course.grading.runner.Limits` (). ``sandbox=False`` runs
    the notebooks without bubblewrap (recorded in every output); with ``sandbox=True`` and no
    bubblewrap, :class:`~ddpm_course.grading.sandbox.SandboxUnavailable` says how to install it.
    ``copy_policy``: ``"flag"`` (report similar functions) or ``"zero"`` (and score them 0).
    ``roster``: a CSV (``student`` = file stem, ``id``, ``name``, ``section``...) for
    ``gradebook.csv``. Returns the grades, sorted by student id.
    """
    from .gradebook import read_roster, write_gradebook
    from .similarity import DEFAULT_THRESHOLD, apply_similarity

    limits = limits or Limits()
    assignment = Path(assignment)
    points = exercise_points(nbformat.read(assignment, as_version=4), str(assignment))
    found = collect_submissions(submissions)
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if copy_policy not in ("flag", "zero"):
        raise ValueError(f"copy_policy must be 'flag' or 'zero', got {copy_policy!r}")
    roster_rows = read_roster(roster) if roster is not None else None
    bwrap = bwrap_path()
    if sandbox and bwrap is None:
        raise SandboxUnavailable(INSTALL_HINT)
    out_dir = Path(out_dir)
    (out_dir / "feedback").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ddpm-course-grade-") as work:
        os.chmod(work, 0o755)
        analyser = Analyser(analysis_timeout, workers=min(jobs, 2))
        zygote = Zygote(Path(work), sandboxed=sandbox, bwrap=bwrap)
        try:
            batch = _Batch(points, seed, limits, zygote, analyser)
            results = _grade_all(found, batch, jobs, progress)
        finally:
            zygote.close()  # every process of every notebook is gone after this
            analyser.close()
    pairs = apply_similarity(
        results, points, copy_policy, similarity_threshold or DEFAULT_THRESHOLD
    )
    label = SANDBOX_LABEL[sandbox]
    rows = [["student", *points, "total", "status", "sandbox"]]
    for result in results:
        rows.append(
            [
                result.student,
                *(_format_points(g.points) for g in result.exercises),
                _format_points(result.total),
                result.status,
                label,
            ]
        )
    for result in results:
        _write_atomic(
            out_dir / "feedback" / f"{result.student}.md",
            _feedback(result, assignment.stem, points, sandbox),
        )
    _write_atomic(
        out_dir / "similarity.csv",
        _csv_text([["exercise", "student", "other", "similarity"], *pairs]),
    )
    if roster_rows is not None:
        write_gradebook(
            out_dir / "gradebook.csv", assignment.stem, points, results, roster_rows
        )
    _write_atomic(
        out_dir / "grades.csv", _csv_text(rows)
    )  # last: its presence means done
    return results
