"""The static check of :mod:`~ddpm_course.grading.integrity` and the copy check's tokens of
:mod:`~ddpm_course.grading.similarity`, run in worker processes under a time limit.

A worker loads these modules on their own (not the package: importing
``ddpm_course.grading`` would import every chapter) and, at its start, the modules whose
attribute chains the static check follows; it then answers one notebook per request. A notebook
too large or too slow to analyse gets :class:`AnalysisTimeout`, and its worker is replaced.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import subprocess
import sys
import threading
import time

from .integrity import PRELOAD_SKIPPED, RESOLVABLE, find_violations
from .notebook import python_source
from .similarity import answer_functions

__all__ = ["Analyser", "AnalysisTimeout"]


def _worker() -> None:
    """``python -m ddpm_course.grading.analyser --worker``: one JSON request per line on stdin
    (``{"cells": [the code cells as written], "names": [...]}``), one JSON answer per line on
    stdout (``{"sources": [the cells as Python], "report": {name: [finding, ...]},
    "functions": {name: [[function, tokens], ...]}}``, the last for the copy check)."""
    sys.setrecursionlimit(3000)
    python_source("%time pass")  # IPython's transformers imported before any notebook
    for name in sorted(
        RESOLVABLE - PRELOAD_SKIPPED
    ):  # the modules chains are followed in
        try:
            importlib.import_module(name)
        except Exception:  # not installed: chains into it are judged by their text
            continue
    for line in sys.stdin:
        request = json.loads(line)
        try:
            sources = [python_source(cell) for cell in request["cells"]]
            answer = {
                "sources": sources,
                "report": find_violations(sources, request["names"]),
                "functions": answer_functions(sources, request["names"]),
            }
        except (RecursionError, MemoryError) as error:
            answer = {"error": f"{type(error).__name__}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


class AnalysisTimeout(RuntimeError):
    """The static check did not finish in time (or could not run) on one notebook."""


class Analyser:
    """Runs :func:`find_violations` in worker processes, each call under a time limit: a notebook
    too large or too slow to analyse gets :class:`AnalysisTimeout`, and its worker is replaced."""

    def __init__(self, timeout: float, workers: int = 1) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        # started now, so that their imports overlap the sandbox's start
        self._idle: list[subprocess.Popen] = [self._start() for _ in range(workers)]
        self._fresh = set(map(id, self._idle))

    def _start(self) -> subprocess.Popen:
        environment = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        # this module, integrity, similarity and notebook loaded on their own: importing
        # ddpm_course.grading would import every chapter's module (seconds per worker)
        boot = (
            "import importlib, sys, types\n"
            "package = types.ModuleType('_ddpm_static')\n"
            f"package.__path__ = [{os.path.dirname(os.path.abspath(__file__))!r}]\n"
            "sys.modules['_ddpm_static'] = package\n"
            "importlib.import_module('_ddpm_static.analyser')._worker()\n"
        )
        return subprocess.Popen(
            [sys.executable, "-c", boot],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=environment, start_new_session=True,
        )  # fmt: skip

    def analyse(
        self, cells: list[str], names: list[str], first: bool = False
    ) -> tuple[list, dict, dict]:
        """(the cells as Python, the findings per exercise, the answers' functions as tokens for
        the copy check) of one notebook's code cells; the IPython transformation runs in the
        worker too (a huge cell cannot stall the grader)."""
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None or worker.poll() is not None:
            worker = self._start()
            first = True  # the worker's imports are not the notebook's fault
        elif id(worker) in self._fresh:
            self._fresh.discard(id(worker))
            first = True
        request = (json.dumps({"cells": cells, "names": names}) + "\n").encode()
        deadline = time.monotonic() + self.timeout + (30.0 if first else 0.0)
        try:
            worker.stdin.write(request)
            worker.stdin.flush()
            line = b""
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([worker.stdout], [], [], left)[0]:
                    raise AnalysisTimeout(
                        f"the static check did not finish within {self.timeout:g} s"
                    )
                chunk = worker.stdout.readline()
                if not chunk:
                    raise AnalysisTimeout("the static check stopped")
                line += chunk
            answer = json.loads(line)
        except BaseException:
            worker.kill()
            worker.wait()
            raise
        with self._lock:
            self._idle.append(worker)
        if "error" in answer:
            raise AnalysisTimeout(
                f"the static check could not analyse it ({answer['error']})"
            )
        return answer["sources"], answer["report"], answer["functions"]

    def close(self) -> None:
        with self._lock:
            workers, self._idle = self._idle, []
        for worker in workers:
            worker.stdin.close()
            worker.kill()
            worker.wait()


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker()
