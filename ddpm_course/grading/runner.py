"""The student's side of grading: run one submitted notebook in its own process and save its outputs.

``python -m ddpm_course.grading.runner`` is a fork server (:func:`serve`): a fresh interpreter that
imports torch and this package once, then forks one child per job that the grader sends, so that
each notebook runs in its own process without paying for ``import torch`` each time (no student
code ever runs in the grader or in the server). :func:`run_submission`, the body of each child,

1. puts itself in its own process group, sends stdin to /dev/null and stdout/stderr to a file;
2. limits its memory (``RLIMIT_AS``: the address space it has after importing torch plus
   ``memory_mb``), CPU time (``RLIMIT_CPU``), file size (``RLIMIT_FSIZE``) and core dumps;
3. replaces the package functions that answer the exercises by tripwires that record a call made
   while an exercise is being evaluated (and raise there);
4. runs the notebook's code cells in order in one namespace, skipping top-level ``check(...)`` calls
   and IPython magics, each cell under a timeout, recording every error and carrying on;
5. calls each exercise function (taken by name from the namespace, wherever its cell was) on the
   inputs the grader sent, and writes back only the outputs, as tensors (safetensors), with a JSON
   note per exercise.

Everything it writes lives in the job folder: ``cells.jsonl`` (one line as each cell starts and
ends), ``output.txt`` (what the notebook printed, truncated), ``<exercise>.json`` and
``<exercise>.safetensors``, and ``done`` at the end. The grader treats all of it as untrusted.
"""

from __future__ import annotations

import ast
import io
import json
import linecache
import math
import os
import resource
import select
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .exercise import OutputError, as_outputs, clone_args, decode_args
from .notebook import python_source
from .registry import EXERCISES

__all__ = [
    "CELL_LOG",
    "DONE_FILE",
    "OUTPUT_FILE",
    "STDIO_FILE",
    "Limits",
    "Tripwires",
    "kill_process_group",
    "run_submission",
    "serve",
]

CELL_LOG = "cells.jsonl"
OUTPUT_FILE = "output.txt"
DONE_FILE = "done"
STDIO_FILE = "stdio.txt"
MAX_FILE_BYTES = 64 * 2**20  # RLIMIT_FSIZE: no file the notebook writes grows beyond this
MAX_OUTPUT_ELEMENTS = 2**24  # a returned tensor larger than this is not saved
MAX_TRACEBACK = 2000  # characters of a traceback kept


@dataclass(frozen=True)
class Limits:
    """The limits of one submission: wall-clock seconds for the whole notebook (enforced by the
    grader) and per cell / per exercise (here), extra memory in MiB, and characters of output kept."""

    timeout: float = 300.0
    cell_timeout: float = 60.0
    memory_mb: int = 2048
    output_chars: int = 10_000


class CellTimeout(BaseException):
    """A cell or an exercise ran past its time (a BaseException, so ``except Exception`` does not swallow it)."""


class ReferenceCalled(BaseException):
    """An exercise function called the package function that answers it."""


class CappedText(io.TextIOBase):
    """A text stream that keeps the first ``limit`` characters written to it and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.kept = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        text = str(text)
        room = self.limit - self.kept
        if room > 0:
            self.parts.append(text[:room])
            self.kept += min(room, len(text))
        self.dropped += max(0, len(text) - max(room, 0))
        return len(text)

    def take(self) -> str:
        """What was kept since the last call."""
        text, self.parts = "".join(self.parts), []
        return text


class Tripwires:
    """Replace package functions by wrappers that, while ``window`` names an exercise, record the call
    under that exercise and raise :class:`ReferenceCalled`; outside a window they call through."""

    def __init__(self) -> None:
        self.window: str | None = None
        self.calls: dict[str, set[str]] = {}

    def _wrap(self, dotted: str, original: Any) -> Any:
        def tripwire(*args, **kwargs):
            if self.window is not None:
                self.calls.setdefault(self.window, set()).add(dotted)
                raise ReferenceCalled(f"{dotted} is the package's answer to this exercise")
            return original(*args, **kwargs)

        return tripwire

    def install(self, dotted_names: set[str]) -> None:
        """Install a tripwire for each ``module.function`` or ``module.Class.method`` in ``dotted_names``,
        in every loaded module that holds the function under any name."""
        for dotted in sorted(dotted_names):
            parts = dotted.split(".")
            split = max(i for i in range(1, len(parts)) if ".".join(parts[:i]) in sys.modules)
            owner: Any = sys.modules[".".join(parts[:split])]
            rest = parts[split:]
            for part in rest[:-1]:
                owner = getattr(owner, part)
            original = owner.__dict__[rest[-1]]
            wrapper = self._wrap(dotted, original)
            if isinstance(owner, type):
                setattr(owner, rest[-1], wrapper)
                continue
            for module in list(sys.modules.values()):
                for name, value in list(getattr(module, "__dict__", {}).items()):
                    if value is original:
                        setattr(module, name, wrapper)


def _on_timeout(signum, frame) -> None:
    raise CellTimeout()


def _start_timer(seconds: float) -> None:
    signal.setitimer(signal.ITIMER_REAL, seconds)


def _stop_timer() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)


def _address_space_bytes() -> int | None:
    """The process's current virtual memory size (Linux: VmSize in /proc/self/status), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _set_limits(limits: Limits) -> None:
    """Hard limits, so that the notebook cannot raise them again (unless it runs as root)."""
    current = _address_space_bytes()
    if current is not None:
        memory = current + limits.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu_seconds = math.ceil(limits.timeout) + 5
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # an oversized write then fails with an error instead of killing the process
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _isolate(job: Path) -> None:
    """Own process group (the grader kills it as a whole), its own job folder as the working
    directory, no stdin, stdout/stderr to a file."""
    os.setsid()
    os.chdir(job)
    stdio = os.open(job / STDIO_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(stdio, 1)
    os.dup2(stdio, 2)
    os.close(null)
    os.close(stdio)
    os.environ.update({"MPLBACKEND": "Agg", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)


def _is_check_call(statement: ast.stmt) -> bool:
    """A top-level ``check(...)`` expression: the self-check cells, which the grader does not run."""
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Call)
        and isinstance(statement.value.func, ast.Name)
        and statement.value.func.id == "check"
    )


def _compile_cell(source: str, number: int):
    filename = f"<code cell {number}>"
    plain = python_source(source)
    tree = ast.parse(plain, filename)
    tree.body = [statement for statement in tree.body if not _is_check_call(statement)]
    linecache.cache[filename] = (len(plain), None, plain.splitlines(keepends=True), filename)
    return compile(tree, filename, "exec")


def _describe(error: BaseException) -> str:
    if isinstance(error, CellTimeout):
        return "ran past the time limit of a cell"
    if isinstance(error, SystemExit):
        return f"called sys.exit({error.code!r})"
    message = " ".join(str(error).split())[:300]
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _student_traceback(error: BaseException) -> str:
    """The traceback restricted to the notebook's own frames, truncated."""
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if frame.filename.startswith("<code cell")
    ]
    text = "".join(
        traceback.format_list(frames) + traceback.format_exception_only(type(error), error)
    )
    return text[:MAX_TRACEBACK]


def _append_json_line(path: Path, record: dict) -> None:
    with open(path, "a") as log:
        log.write(json.dumps(record) + "\n")


def _run_cells(
    job: Path, cells: list[str], namespace: dict, limits: Limits, output: CappedText
) -> None:
    for number, source in enumerate(cells, start=1):
        _append_json_line(job / CELL_LOG, {"cell": number, "event": "start"})
        error_text = traceback_text = None
        try:
            code = _compile_cell(source, number)
            _start_timer(limits.cell_timeout)
            try:
                exec(code, namespace)
            finally:
                _stop_timer()
        except BaseException as error:  # the notebook's errors are recorded, never fatal
            error_text, traceback_text = _describe(error), _student_traceback(error)
        with open(job / OUTPUT_FILE, "a") as printed:
            printed.write(output.take())
        _append_json_line(
            job / CELL_LOG,
            {"cell": number, "event": "end", "error": error_text, "traceback": traceback_text},
        )


def _saveable(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.numel() > MAX_OUTPUT_ELEMENTS:
        raise OutputError(f"returned a tensor of {tensor.numel()} elements, far more than expected")
    return tensor.detach().as_subclass(torch.Tensor).to("cpu").contiguous().clone()


def _evaluate(
    job: Path, name: str, encoded_cases: list, namespace: dict, limits: Limits, tripwires: Tripwires
) -> None:
    """Call the function ``name`` on every case and write ``<name>.safetensors`` and ``<name>.json``."""
    exercise = EXERCISES[name]
    function = namespace.get(name)
    note: dict[str, Any] = {"status": "ok", "cases": []}
    tensors: dict[str, torch.Tensor] = {}
    if not callable(function):
        note["status"] = "missing"
        note["detail"] = (
            "not defined" if function is None else f"is a {type(function).__name__}, not a function"
        )
    else:
        _start_timer(limits.cell_timeout)
        try:
            for number, encoded in enumerate(encoded_cases):
                error_text = None
                tripwires.window = name
                try:
                    outputs = exercise.call(function, decode_args(encoded))
                    tripwires.window = None
                    for position, tensor in enumerate(outputs):
                        tensors[f"{number}.{position}"] = _saveable(tensor)
                except NotImplementedError:
                    if number == 0:
                        note["status"] = "not-attempted"
                        break
                    error_text = "raised NotImplementedError"
                except (CellTimeout, KeyboardInterrupt):
                    raise
                except BaseException as error:  # a wrong answer that crashes fails this case only
                    error_text = str(error) if isinstance(error, OutputError) else _describe(error)
                finally:
                    tripwires.window = None
                note["cases"].append({"case": number, "error": error_text})
        except CellTimeout:
            note["status"] = "timeout"
            note["detail"] = f"did not return within {limits.cell_timeout:g} s"
        finally:
            _stop_timer()
            tripwires.window = None
    note["package_calls"] = sorted(tripwires.calls.get(name, ()))
    try:
        save_file(tensors, str(job / f"{name}.safetensors"))
    except Exception as error:
        # e.g. a dtype safetensors cannot store: the outputs are lost, not the batch
        note["status"] = "unsaveable"
        note["detail"] = _describe(error)
    (job / f"{name}.json").write_text(json.dumps(note))


def _display(*objects: Any, **_: Any) -> None:
    """Jupyter's ``display()``, as plain printing."""
    for value in objects:
        print(repr(value))


def run_submission(job_dir: str, limits: Limits) -> None:
    """Run the notebook described in ``job_dir`` (``cells.json``, ``inputs.pt``) and write its outputs there.

    The body of the child process; it never returns an error (each problem is written down),
    although the notebook may end the process itself (``os._exit``, a signal, a memory kill).
    """
    job = Path(job_dir)
    _isolate(job)
    cells = json.loads((job / "cells.json").read_text())
    inputs = torch.load(job / "inputs.pt", weights_only=True)
    tripwires = Tripwires()
    tripwires.install(
        {dotted for exercise in EXERCISES.values() for dotted in exercise.package_functions}
    )
    signal.signal(signal.SIGALRM, _on_timeout)
    _set_limits(limits)
    output = CappedText(limits.output_chars)
    sys.stdout = sys.stderr = output
    namespace: dict[str, Any] = {"__name__": "__main__", "display": _display}
    try:
        _run_cells(job, cells, namespace, limits, output)
        for name, encoded_cases in inputs.items():
            _evaluate(job, name, encoded_cases, namespace, limits, tripwires)
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    with open(job / OUTPUT_FILE, "a") as printed:
        printed.write(output.take())
    (job / DONE_FILE).write_text(json.dumps({"output_dropped": output.dropped}))


def kill_process_group(pid: int) -> None:
    """SIGKILL the process group a child leads (and the child itself, should it not lead one yet)."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def serve() -> None:
    """The fork server. Reads one JSON job per line on stdin (``{"job": folder, "limits": {...}}``),
    forks a child that runs :func:`run_submission` on it, and writes one JSON line on stdout when the
    child starts (``{"job", "pid"}``) and when it ends (``{"pid", "exit"}``: the exit code, or minus
    the signal that killed it). At end of input it kills the children still running and exits."""
    reports = sys.stdout
    children: set[int] = set()
    pending = b""

    def report(record: dict) -> None:
        reports.write(json.dumps(record) + "\n")
        reports.flush()

    while True:
        ready, _, _ = select.select([0], [], [], 0.05)
        if ready:
            chunk = os.read(0, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    exit_code = 0
                    try:
                        run_submission(request["job"], Limits(**request["limits"]))
                    except BaseException:  # whatever happens, never return into the server's loop
                        exit_code = 1
                    os._exit(exit_code)
                children.add(pid)
                report({"job": request["job"], "pid": pid})
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            report({"pid": pid, "exit": os.waitstatus_to_exitcode(status)})
    for pid in children:
        kill_process_group(pid)


if __name__ == "__main__":
    serve()
