"""The limits of a graded notebook, and the names of the files its run leaves in its job folder.

The notebook itself runs in :mod:`~ddpm_course.grading.sandbox_runner` (a fork server that
imports only the standard library, torch and safetensors) inside the sandbox of
:mod:`~ddpm_course.grading.sandbox`; this module is what the grader's side needs to know of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .sandbox_runner import CELL_LOG, DONE_FILE, MAX_FILE_BYTES, OUTPUT_FILE, STDIO_FILE

__all__ = [
    "CELL_LOG",
    "DONE_FILE",
    "MAX_FILE_BYTES",
    "OUTPUT_FILE",
    "STDIO_FILE",
    "Limits",
]


# the wall-clock backstops: a notebook whose sibling holds both cores for its whole CPU budget
# still finishes within them
WALL_FACTOR = 3.0
WALL_SLACK = 30.0


@dataclass(frozen=True)
class Limits:
    """The limits of one submission.

    timeout: CPU seconds for the whole notebook, all its processes together (the fork server's
    watchdog kills its namespace then); cell_timeout: CPU seconds of the notebook's process per
    cell and per exercise. Both are CPU time, so that a busy sibling notebook on the same cores
    cannot make an honest one run out of time; each has a wall-clock backstop for a notebook
    that sleeps or waits: :data:`WALL_FACTOR` times ``timeout`` plus :data:`WALL_SLACK` seconds
    (``wall_timeout``), and :data:`WALL_FACTOR` times ``cell_timeout`` plus ``timeout``
    (``cell_wall_timeout``). memory_mb: address space each process may add beyond the
    runner's (RLIMIT_AS), and sandbox_memory_mb: the memory all its processes together may
    hold beyond the fork server's own (the watchdog; counted from the same start, so that one
    process meets its MemoryError first); output_chars: characters of output kept; processes:
    RLIMIT_NPROC (its processes, itself included); open_files: RLIMIT_NOFILE; tmp_mb: the size
    of its private /tmp and of /dev/shm; job_folder_mb: the most its job folder may hold.
    """

    timeout: float = 300.0
    cell_timeout: float = 60.0
    memory_mb: int = 2048
    output_chars: int = 10_000
    processes: int = 64
    open_files: int = 256
    tmp_mb: int = 64
    sandbox_memory_mb: int | None = None  # default: memory_mb
    job_folder_mb: int = 256

    @property
    def wall_timeout(self) -> float:
        return WALL_FACTOR * self.timeout + WALL_SLACK

    @property
    def cell_wall_timeout(self) -> float:
        """A sibling may hold the cores for its whole CPU budget (``timeout``) meanwhile."""
        return WALL_FACTOR * self.cell_timeout + self.timeout

    def as_request(self) -> dict:
        """The limits as the fork server reads them."""
        values = asdict(self)
        values["sandbox_memory_mb"] = self.sandbox_memory_mb or self.memory_mb
        values["wall_timeout"] = self.wall_timeout
        values["cell_wall_timeout"] = self.cell_wall_timeout
        return values
