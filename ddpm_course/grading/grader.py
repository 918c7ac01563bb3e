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

After the batch, every exercise function, together with the helpers it calls, is compared with
the package's implementation and with the same function of every other submission
(:mod:`~ddpm_course.grading.similarity`).

Each student's grading, feedback and clean-up is isolated: an error on the grader's side becomes
that student's ``grader-error`` row with its reason, never the batch's, and ``grades.csv`` is
written in a ``finally``, with a row for every submission. Student ids are made safe where they
become file names and escaped where they appear in text (:mod:`~ddpm_course.grading.students`).

It writes ``out_dir/grades.csv`` (one row per submission: the student id (the file name without
``.ipynb``, made printable), the points per exercise, the total, a status and the sandbox used),
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

import json
import logging
import os
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat
import torch
from tqdm.auto import tqdm

from ..checkpoint import atomic_write
from .analyser import Analyser, AnalysisTimeout
from .exercise import encode_args
from .gradebook import read_roster, write_gradebook
from .jobfiles import cell_log, grade_exercise, read_json, read_text
from .notebook import NotebookError, exercise_points, read_code_cells
from .registry import get_exercise
from .report import (
    SANDBOX_LABEL,
    ExerciseGrade,
    SubmissionGrade,
    csv_text,
    feedback_text,
    format_points,
    inline,
)
from .runner import DONE_FILE, OUTPUT_FILE, STDIO_FILE, Limits
from .sandbox import INSTALL_HINT, SandboxUnavailable, Zygote, bwrap_path
from .similarity import DEFAULT_THRESHOLD, apply_similarity, provided_functions
from .students import collect_submissions, file_stem, remove_tree

__all__ = ["ExerciseGrade", "SubmissionGrade", "collect_submissions", "grade"]

log = logging.getLogger(__name__)


def _case_seed(seed: int, student: str, exercise: str) -> int:
    """The seed of one student's inputs for one exercise: the same grading seed, the same inputs."""
    return zlib.crc32(f"{seed}/{student}/{exercise}".encode())


@dataclass
class _Batch:
    """What every notebook of a batch shares."""

    points: dict[str, float]
    seed: int
    limits: Limits
    zygote: Zygote
    analyser: Analyser


def _grade_one(student: str, path: Path, batch: _Batch) -> SubmissionGrade:
    points = batch.points
    exercises = [get_exercise(name) for name in points]
    result = SubmissionGrade(
        student, path, [ExerciseGrade(name, value) for name, value in points.items()]
    )
    try:
        cells = read_code_cells(path)
    except NotebookError as error:
        result.statuses.add("malformed")
        result.notes.append(
            f"the file could not be read as a notebook: {inline(str(error)[:300])}"
        )
        return result
    try:
        sources, violations, result.functions = batch.analyser.analyse(
            cells, list(points)
        )
    except AnalysisTimeout as error:
        result.statuses.add("unanalysable")
        result.notes.append(
            f"{error}: the notebook is too large or too complex to check, so nothing is scored "
            "(split long cells, remove generated code, or ask your instructor)"
        )
        return result
    ident, job, uid = batch.zygote.new_job()
    try:
        _run(result, exercises, cells_python=sources, violations=violations, job=job,
             ident=ident, uid=uid, batch=batch)  # fmt: skip
    finally:
        _remove(job)  # what the notebook left: its files, read, are no longer needed
    return result


def _remove(folder: Path) -> None:
    try:
        remove_tree(folder)
    except OSError:  # left for the batch's own clean-up (or the system's)
        log.exception("could not remove %s", folder)


def _run(
    result: SubmissionGrade,
    exercises: list,
    cells_python: list[str],
    violations: dict,
    job: Path,
    ident: str,
    uid: int | None,
    batch: _Batch,
) -> None:
    """Run one notebook in the sandbox and fill ``result`` from what it left in ``job``."""
    points, limits, student = batch.points, batch.limits, result.student
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
    (job / "cells.json").write_text(json.dumps(cells_python))
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
        exit_code == 0 and reason is None and read_json(job / DONE_FILE) is not None
    )
    cell_errors, running = cell_log(job)
    if reason == "timeout":
        result.statuses.add("timeout")
        where = f" (it was running code cell {running})" if running else ""
        result.notes.append(
            f"stopped at the notebook time limit of {limits.timeout:g} s of CPU time (or "
            f"{limits.wall_timeout:g} s of wall-clock time){where}"
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
    done = (read_json(job / DONE_FILE) or {}) if finished else {}
    stdio = read_text(job / STDIO_FILE, limits.output_chars + 1)
    result.output = (
        read_text(job / OUTPUT_FILE, limits.output_chars) + stdio[: limits.output_chars]
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
        status = grade_exercise(
            exercise,
            grade,
            cases[exercise.name],
            expected[exercise.name],
            job,
            violations.get(exercise.name, []),
        )
        if status:
            result.statuses.add(status)


def _failed(
    student: str, path: Path, points: dict, error: BaseException
) -> SubmissionGrade:
    """The row of a submission the grader itself could not grade (or could not finish)."""
    failed = SubmissionGrade(
        student, path, [ExerciseGrade(name, value) for name, value in points.items()]
    )
    failed.statuses.add("grader-error")
    failed.notes.append(
        "the grader could not grade this notebook: "
        f"{type(error).__name__}: {inline(str(error)[:500])}"
    )
    return failed


def _grade_all(
    found: dict[str, Path], batch: _Batch, jobs: int, progress: bool
) -> dict[str, SubmissionGrade]:
    results = {}
    with ThreadPoolExecutor(jobs) as pool:
        futures = {
            student: pool.submit(_grade_one, student, path, batch)
            for student, path in sorted(found.items())
        }
        for student, future in tqdm(
            futures.items(), disable=not progress, desc="grading", unit="notebook"
        ):
            try:
                results[student] = future.result()
            except Exception as error:  # the grader's own failure on one notebook
                log.exception("grading %r failed", student)
                results[student] = _failed(student, found[student], batch.points, error)
    return results


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` all or nothing, readable by everyone."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8", "replace")))
    os.chmod(path, 0o644)


def _write_feedback(
    out_dir: Path, results: dict[str, SubmissionGrade], assignment: str,
    points: dict, sandbox: bool,
) -> None:  # fmt: skip
    """Each student's feedback file; a failure costs that student a grader-error only."""
    for student, result in results.items():
        path = out_dir / "feedback" / f"{file_stem(student)}.md"
        try:
            _write_text(path, feedback_text(result, assignment, points, sandbox))
        except Exception as error:
            log.exception("the feedback of %r could not be written", student)
            failed = _failed(student, result.path, points, error)
            results[student] = failed
            try:
                _write_text(path, feedback_text(failed, assignment, points, sandbox))
            except Exception:
                log.exception("nor a short one")


def _rows(
    found: dict[str, Path], results: dict[str, SubmissionGrade], points: dict,
    sandbox: bool,
) -> list[list]:  # fmt: skip
    """grades.csv: a row for every submission, graded or not."""
    rows = [["student", *points, "total", "status", "sandbox"]]
    for student in sorted(found):
        result = results.get(student) or _failed(
            student, found[student], points, RuntimeError("the batch stopped before it")
        )
        rows.append(
            [
                student,
                *(format_points(g.points) for g in result.exercises),
                format_points(result.total),
                result.status,
                SANDBOX_LABEL[sandbox],
            ]
        )
    return rows


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
    limits = limits or Limits()
    assignment = Path(assignment)
    solutions = nbformat.read(assignment, as_version=4)
    points = exercise_points(solutions, str(assignment))
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
    results: dict[str, SubmissionGrade] = {}
    try:
        work = Path(tempfile.mkdtemp(prefix="ddpm-course-grade-"))
        try:
            os.chmod(work, 0o755)
            analyser = Analyser(analysis_timeout, workers=min(jobs, 2))
            try:
                zygote = Zygote(work, sandboxed=sandbox, bwrap=bwrap)
                try:
                    batch = _Batch(points, seed, limits, zygote, analyser)
                    results = _grade_all(found, batch, jobs, progress)
                finally:
                    zygote.close()  # every process of every notebook is gone after this
            finally:
                analyser.close()
        finally:
            _remove(work)
        try:
            pairs = apply_similarity(
                list(results.values()), points, copy_policy,
                similarity_threshold or DEFAULT_THRESHOLD, provided_functions(solutions),
            )  # fmt: skip
        except Exception as error:  # the batch's grades stand without it
            log.exception("the copy check failed")
            pairs = []
            for result in results.values():
                result.notes.append(
                    f"the copy check could not run ({type(error).__name__}); ask your instructor"
                )
        _write_feedback(out_dir, results, assignment.stem, points, sandbox)
        _write_text(
            out_dir / "similarity.csv",
            csv_text([["exercise", "student", "other", "similarity"], *pairs]),
        )
        if roster_rows is not None:
            write_gradebook(
                out_dir / "gradebook.csv", assignment.stem, points,
                list(results.values()), roster_rows,
            )  # fmt: skip
    finally:  # last, whatever happened: its presence means done
        _write_text(
            out_dir / "grades.csv", csv_text(_rows(found, results, points, sandbox))
        )
    return [results[student] for student in sorted(results)]
