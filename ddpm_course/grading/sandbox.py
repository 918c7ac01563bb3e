"""Where submitted notebooks run: a bubblewrap sandbox holding a fork server and a student view.

The grader starts one bubblewrap (``bwrap``) sandbox per batch, whose file system is read-only
and holds only the interpreter, site-packages with every ``ddpm_course`` entry masked, the
student view of the package (below) and the batch's job folders (read-write); no network, its own
PID, IPC and UTS namespaces, a clean environment, ``--die-with-parent``. Inside, the fork server
of :mod:`~ddpm_course.grading.sandbox_runner` imports torch once and gives every notebook its own
user, mount, PID, network, IPC and UTS namespaces, its own job folder only (a size-capped
tmpfs), size-capped ``/tmp`` and ``/dev/shm``, an unprivileged uid, no capabilities, a fresh
session keyring, a seccomp filter (:mod:`~ddpm_course.grading.seccomp`: no new namespaces,
keyrings, memfds, ptrace, mounts, bpf...), and rlimits (processes, address space, CPU time, file
size, open files) with a watchdog on the memory and CPU time of all its processes together.

The student view (:data:`STUDENT_VIEW`) is what ``import ddpm_course`` finds inside: an explicit
allowlist of modules that import only the standard library and torch and hold no answer
(``check`` is a no-op there, ``drivers`` is the real module, ``exercise`` rebuilds the input
functions of the test cases); any other ``ddpm_course`` module raises an ``ImportError`` that
says why. To offer a notebook another module (a data loader, say), write it without the
package's maths and add it to :data:`STUDENT_VIEW`; ``tests/test_sandbox.py`` checks every
entry's imports.

Without bubblewrap the grader refuses (:class:`SandboxUnavailable`, which says how to install
it) unless ``--no-sandbox`` is given: then the same fork server runs as a plain process, each
notebook in its own session under the same rlimits, and the mode is written in the CSV and in
every feedback file.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import site
import subprocess
import sys
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from .exercise import InputFunction
from .sandbox_runner import FILTER_FILE
from .seccomp import SeccompUnavailable, compile_filter, syscall_number

__all__ = [
    "INSTALL_HINT",
    "STUDENT_VIEW",
    "SandboxUnavailable",
    "Zygote",
    "bwrap_path",
    "write_student_view",
]

INSTALL_HINT = (
    "bubblewrap (bwrap) is not installed, and the grader runs submitted notebooks only inside "
    "its sandbox. Install it (Debian/Ubuntu: `sudo apt-get install bubblewrap`, Fedora: `sudo dnf "
    "install bubblewrap`, or `make sandbox-deps`), or pass --no-sandbox to run them as plain "
    "processes (only for notebooks you trust; the CSV and every feedback file will say so)."
)
HERE = Path(__file__).resolve().parent

_PACKAGE_INIT = '''"""The student view of ddpm_course, inside the grading sandbox: no answer key here."""

import importlib.abc
import sys

__version__ = "student-view"
ALLOWED = {allowed!r}


class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith("ddpm_course.") and name not in ALLOWED:
            raise ImportError(
                f"{{name}} is not available while a notebook is graded: the package's functions "
                "are the answer key, so answers use torch only (this notebook's other cells and "
                "its exercise functions still run)",
                name=name,
            )
        return None


sys.meta_path.insert(0, _Refuse())


def __getattr__(name):
    raise ImportError(
        f"ddpm_course.{{name}} is not available while a notebook is graded (answers use torch only)"
    )
'''

_GRADING_INIT = '''"""check() is a no-op while a notebook is graded: the grader checks the functions itself."""

from .check import CheckResult, check

__all__ = ["CheckResult", "check"]
'''

_CHECK = '''"""check() is a no-op while a notebook is graded: the grader checks the functions itself."""


class CheckResult:
    def __init__(self, name=""):
        self.name, self.passed, self.total, self.attempted = name, 0, 0, False
        self.all_passed = False


def check(fn=None, exercise=None, seed=0, *args, **kwargs):
    return CheckResult(exercise or getattr(fn, "__name__", ""))
'''

_EXERCISE = '''"""The input functions of the test cases, rebuilt from data inside the grading sandbox."""

from typing import ClassVar

import math  # noqa: F401  (the input functions' sources may use it)

import torch


class InputFunction:
    kind: ClassVar[str] = ""
    registry: ClassVar[dict] = {{}}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        InputFunction.registry[cls.kind] = cls

    def __init__(self, **params):
        self.params = params

    def __repr__(self):
        return f"{{type(self).__name__}}({{', '.join(self.params)}})"


def clone_args(args):
    return tuple(arg.clone() if torch.is_tensor(arg) else arg for arg in args)


def decode_args(encoded):
    return tuple(
        InputFunction.registry[arg["function"]](**arg["params"]) if isinstance(arg, dict) else arg
        for arg in encoded
    )


{classes}
'''

# module of the view -> how it is made: "copy" (the real file, which must import only the
# standard library and torch) or the text of a hand-written stand-in
STUDENT_VIEW: dict[str, str] = {
    "ddpm_course.grading": "generated: check() only",
    "ddpm_course.grading.check": "generated: a no-op check()",
    "ddpm_course.grading.drivers": "copy",
    "ddpm_course.grading.exercise": "generated: InputFunction, clone_args, decode_args",
}


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here; the message says what to do."""


def bwrap_path() -> str | None:
    """The bubblewrap executable on PATH (or in /usr/bin), None when there is none."""
    return shutil.which("bwrap") or (
        "/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None
    )


def _input_function_sources() -> str:
    """The source of every registered :class:`InputFunction` subclass (plain callables of
    torch; the chapters' modules, which import the answers, are not needed to rebuild them)."""
    import ddpm_course.grading.registry  # noqa: F401  (registers every chapter's classes)

    sources = []
    for kind, cls in sorted(InputFunction.registry.items()):
        if not kind:
            continue
        sources.append(inspect.getsource(cls))
    return "\n\n".join(sources)


def write_student_view(folder: Path) -> Path:
    """Write the student view, the runner and its seccomp filter into ``folder``; return it."""
    package = folder / "ddpm_course"
    (package / "grading").mkdir(parents=True)
    allowed = sorted(STUDENT_VIEW)
    (package / "__init__.py").write_text(_PACKAGE_INIT.format(allowed=allowed))
    (package / "grading" / "__init__.py").write_text(_GRADING_INIT)
    (package / "grading" / "check.py").write_text(_CHECK)
    (package / "grading" / "exercise.py").write_text(
        _EXERCISE.format(classes=_input_function_sources())
    )
    for module, how in STUDENT_VIEW.items():
        if how == "copy":
            relative = Path(*module.split(".")[1:]).with_suffix(".py")
            shutil.copy(HERE.parent / relative, package / relative)
    shutil.copy(HERE / "sandbox_runner.py", folder / "sandbox_runner.py")
    try:
        compile_filter(folder / FILTER_FILE)
    except SeccompUnavailable as error:
        raise SandboxUnavailable(str(error)) from None
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


SITE_MOUNT = "/site"  # where the sandbox sees the grader's site-packages folders


def _site_dirs() -> list[str]:
    """The site-packages folders the grader's interpreter uses (torch, safetensors, numpy...)."""
    dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
    import torch

    torch_site = str(Path(torch.__file__).resolve().parents[1])
    if torch_site not in dirs:
        dirs.append(torch_site)
    return dirs


def _masks(site_dir: str, target: str) -> list[str]:
    """bwrap arguments that hide every ``ddpm_course`` entry of the site-packages folder
    ``site_dir``, mounted at ``target`` in the sandbox."""
    arguments = []
    for entry in sorted(os.listdir(site_dir)):
        if "ddpm_course" not in entry and "ddpm-course" not in entry:
            continue
        path = os.path.join(target, entry)
        if os.path.isdir(os.path.join(site_dir, entry)):
            arguments += ["--tmpfs", path]
        else:
            arguments += ["--ro-bind", "/dev/null", path]
    return arguments


def _ancestors(path: str) -> list[str]:
    parts = Path(path).parts
    return [str(Path(*parts[: depth + 1])) for depth in range(1, len(parts) - 1)]


def bwrap_command(bwrap: str, view: Path, jobs: Path, privileged: bool) -> list[str]:
    """The bubblewrap command line of the batch's sandbox (see the module docstring)."""
    interpreter = os.path.realpath(sys.executable)
    prefix = os.path.realpath(sys.base_prefix)
    # site-packages are mounted at /site/N, not where they are: a virtual environment under /tmp
    # (a CI checkout in a temporary folder) would be hidden by the sandbox's private /tmp
    site_dirs = _site_dirs()
    mounted_sites = [f"{SITE_MOUNT}/{index}" for index in range(len(site_dirs))]
    command = [bwrap, "--die-with-parent", "--new-session", "--clearenv"]
    command += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    command += ["--unshare-cgroup-try"]
    if privileged:
        # run by root: bwrap creates the namespaces itself, and leaves the fork server only the
        # capabilities to switch each notebook to its own unprivileged uid (after which it has none)
        # (and to read every job folder for its size watchdog, whatever modes a notebook sets)
        command += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        command += ["--cap-add", "CAP_DAC_READ_SEARCH"]
    else:
        command += ["--unshare-user"]
    command += ["--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp"]
    command += ["--setenv", "OMP_NUM_THREADS", "1", "--setenv", "MALLOC_ARENA_MAX", "2"]
    command += [
        "--setenv",
        "CUDA_VISIBLE_DEVICES",
        "",
        "--setenv",
        "PYTHONHASHSEED",
        "0",
    ]
    for system in ("/usr", "/etc/ld.so.cache", "/etc/localtime", "/etc/ssl"):
        if os.path.exists(system):
            command += ["--ro-bind", system, system]
    for link in ("lib", "lib64", "lib32", "bin", "sbin"):
        target = os.path.join("/", link)
        if os.path.islink(target):
            command += ["--symlink", os.readlink(target), target]
        elif os.path.isdir(target):
            command += ["--ro-bind", target, target]
    if not prefix.startswith("/usr/"):
        for parent in _ancestors(prefix):
            command += ["--perms", "0755", "--dir", parent]
        command += ["--ro-bind", prefix, prefix]
    command += ["--perms", "0755", "--dir", SITE_MOUNT]
    for source, target in zip(site_dirs, mounted_sites, strict=True):
        command += ["--ro-bind", source, target, *_masks(source, target)]
    command += ["--ro-bind", str(view), "/view", "--bind", str(jobs), "/jobs"]
    command += ["--perms", "0755", "--dir", "/job", "--proc", "/proc", "--dev", "/dev"]
    command += [
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/dev/shm",
        "--remount-ro",
        "/",
        "--chdir",
        "/tmp",
    ]
    command += [interpreter, "-I", "-S", "/view/sandbox_runner.py", *mounted_sites]
    return command


class Zygote:
    """The grader's end of the fork server: :meth:`run` one job and wait for it (thread-safe).

    ``sandboxed``: inside bubblewrap (True) or as a plain process (``--no-sandbox``).
    """

    START_TIMEOUT = 180.0  # seconds for the fork server to import torch and start a job
    KILL_TIMEOUT = 60.0  # seconds for a killed job's processes to be gone
    SLACK = 2.0  # seconds beyond the notebook limit for the fork to start and the files to close

    def __init__(self, work: Path, sandboxed: bool, bwrap: str | None = None) -> None:
        self.sandboxed = sandboxed
        self.view = write_student_view(work / "view")
        self.jobs = work / "jobs"
        self.jobs.mkdir(mode=0o711)
        self.privileged = os.geteuid() == 0
        self._uid_base = 100_000 + (os.getpid() % 4000) * 64
        self._keyctl = syscall_number("keyctl")
        if sandboxed:
            if bwrap is None:
                raise SandboxUnavailable(INSTALL_HINT)
            command = bwrap_command(bwrap, self.view, self.jobs, self.privileged)
            environment = {}
        else:
            command = [os.path.realpath(sys.executable), "-I", "-S"]
            command += [str(self.view / "sandbox_runner.py"), *_site_dirs()]
            environment = {
                "PATH": "/usr/bin:/bin",
                "OMP_NUM_THREADS": "1",
                "MALLOC_ARENA_MAX": "2",
            }
            environment["CUDA_VISIBLE_DEVICES"] = ""
        self._errors = open(work / "sandbox-errors.txt", "wb")
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errors,
            env=environment, cwd=work, start_new_session=True,
        )  # fmt: skip
        self._lock = threading.Lock()
        self._ended: dict[str, Future] = {}
        self._counter = 0
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_reports, daemon=True)
        self._reader.start()
        if not self._ready.wait(self.START_TIMEOUT) or self._process.poll() is not None:
            self.close()
            raise SandboxUnavailable(self._failure())

    def _read_reports(self) -> None:
        for line in self._process.stdout:
            try:
                record = json.loads(line[:4096])
                if record.get("ready"):
                    self._ready.set()
                    continue
                future = self._ended.get(str(record["id"]))
            except (ValueError, KeyError, TypeError):
                continue
            if future is not None and not future.done():
                future.set_result(record)
        self._ready.set()
        with self._lock:  # the fork server is gone: nobody waits forever
            for future in self._ended.values():
                if not future.done():
                    future.set_exception(RuntimeError(self._failure()))

    def _failure(self) -> str:
        try:
            text = Path(self._errors.name).read_bytes()[-1500:].decode(errors="replace")
        except OSError:
            text = ""
        return "the grading sandbox stopped" + (
            f": {text.strip()}" if text.strip() else ""
        )

    def new_job(self) -> tuple[str, Path, int | None]:
        """A fresh, private job folder: (job id, its path here, the uid its notebook runs as)."""
        with self._lock:
            self._counter += 1
            ident = str(self._counter)
        folder = self.jobs / ident
        folder.mkdir(
            mode=0o755
        )  # inside, no other notebook sees the folder that holds it
        uid = None
        if self.privileged:
            uid = self._uid_base + (self._counter % 64)
            os.chown(folder, uid, uid)
        return ident, folder, uid

    def _send(self, request: dict) -> None:
        with self._lock:
            self._process.stdin.write((json.dumps(request) + "\n").encode())
            self._process.stdin.flush()

    def run(self, ident: str, folder: Path, uid: int | None, limits: dict) -> dict:
        """Run the job in ``folder``; wait for every process of it to be gone. Returns the fork
        server's report ``{"exit": code, "reason": None | "timeout" | "memory" | "disk"}``
        ("timeout": its CPU time, or the wall-clock backstop ``limits["wall_timeout"]``)."""
        ended: Future = Future()
        with self._lock:
            if self._process.poll() is not None:
                raise RuntimeError(self._failure())
            self._ended[ident] = ended
        inside = f"/jobs/{ident}" if self.sandboxed else str(folder)
        self._send(
            {
                "run": ident,
                "job": inside,
                "uid": uid,
                "limits": limits,
                "sandboxed": self.sandboxed,
                "keyctl": self._keyctl,
            }
        )
        try:
            return ended.result(timeout=limits["wall_timeout"] + self.SLACK)
        except FutureTimeout:
            self._send({"kill": ident, "reason": "timeout"})
            record = ended.result(timeout=self.KILL_TIMEOUT)
            return dict(record, reason="timeout")

    def close(self) -> None:
        """End the fork server (it kills what still runs) and the sandbox with it."""
        try:
            self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(timeout=self.KILL_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever is left of the sandbox's session
            os.killpg(self._process.pid, 9)
        except OSError:
            pass
        self._process.kill()
        self._process.wait()
        self._reader.join(timeout=5)
        self._errors.close()
