"""The program that runs submitted notebooks: a fork server (the "zygote") inside the sandbox.

It imports ONLY the Python standard library, torch and safetensors (``tests/test_sandbox.py``
checks it), never the package: the grader copies this file into the student view
(:mod:`~ddpm_course.grading.sandbox`) and starts it with ``python -I -S`` inside a bubblewrap
sandbox whose file system holds the interpreter, site-packages (without ``ddpm_course``), the
student view and the job folders, and nothing else.

The zygote imports torch once, reads the seccomp program that the grader compiled
(``seccomp.bpf`` beside this file, :mod:`~ddpm_course.grading.seccomp`), then reads one JSON
request per line on stdin:

* ``{"run": id, "job": folder, "uid": uid or null, "limits": {...}, "keyctl": number}``: fork a
  child C that (sandboxed mode) drops to the unprivileged ``uid`` (when the zygote runs as
  root), joins a fresh session keyring, enters new user, mount, PID, network, IPC and UTS
  namespaces, mounts a tmpfs of ``job_folder_mb`` on ``/job`` and copies the grader's inputs
  into it, hides every other job folder and ``/proc`` behind empty tmpfs mounts, mounts
  size-capped tmpfs on ``/tmp`` and ``/dev/shm``, and forks G, the PID 1 of the new PID
  namespace, which sets the rlimits, drops every capability, loads the seccomp filter and runs
  the notebook (:func:`run_notebook`). When G ends, the kernel kills everything left in its
  namespace: nothing a notebook starts outlives it. C then copies the files the grader reads
  (regular files only, each capped) from the tmpfs to the job folder, and exits; the tmpfs,
  with whatever else the notebook left there, goes with the last process of its namespace.
* ``{"kill": id}``: SIGKILL G (G has a parent-death SIGKILL too); the namespace goes with G, and C
  copies out and exits (C is killed too if it has not within 15 s).

It writes ``{"id": id, "exit": code, "reason": ...}`` on stdout once C and G have both been
reaped, i.e. once no process of that notebook exists (the zygote is a child subreaper, so an
orphaned G is reaped here). A watchdog (4 Hz) stands in for a memory and CPU cgroup (see
ARCHITECTURE.md): it kills a job whose processes together hold more than the memory limit beyond what the
server held when it began to serve (its torch import, which every notebook starts from, as the
address-space rlimit counts from the server's size: one process meets its own MemoryError first)
(their proportional share of anonymous and shared memory, Pss_Anon + Pss_Shmem, summed over the
namespace's processes, so that memory shared copy-on-write after a fork counts in full), or that
used more CPU time than the notebook's limit (utime + stime of every process of the namespace,
and of the children it reaped). The notebook's cells are timed in CPU time too (ITIMER_PROF),
each with a wall-clock backstop (ITIMER_REAL): a busy sibling cannot make an honest notebook
run out of time.

In ``--no-sandbox`` mode C skips the namespaces (setsid, the rlimits and the seccomp filter
only), the job folder is a plain folder whose size the watchdog checks: the grader records that
mode in the CSV and every feedback file.

What G writes in the job folder (by absolute path: a notebook's ``os.chdir`` changes nothing):
``cells.jsonl`` (each cell's start and end), ``output.txt`` (what the notebook printed, capped),
``<exercise>.json`` and ``<exercise>.safetensors``, ``done``. The grader reads them only after
the job has ended, and trusts none of it.
"""

from __future__ import annotations

import ctypes
import io
import json
import linecache
import math
import os
import resource
import select
import signal
import stat
import sys
import time
import traceback
from typing import Any

CELL_LOG = "cells.jsonl"
OUTPUT_FILE = "output.txt"
DONE_FILE = "done"
STDIO_FILE = "stdio.txt"
MAX_FILE_BYTES = 64 * 2**20  # RLIMIT_FSIZE
# the grader's own inputs (the cases' tensors; an outcome exercise's paths can take 100 MiB):
# copied whole into /job, whose tmpfs grows by their size so the notebook keeps job_folder_mb
MAX_INPUT_BYTES = 1024 * 2**20
MAX_OUTPUT_ELEMENTS = 2**24  # a returned tensor larger than this is not saved
MAX_TRACEBACK = 2000
MAX_REQUEST_BYTES = 2**16

# Linux constants (linux/sched.h, linux/mount.h, linux/prctl.h)
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
KEYCTL_JOIN_SESSION_KEYRING = 1
FILTER_FILE = "seccomp.bpf"  # beside this file: the BPF program of grading/seccomp.py
INPUT_FILES = ("cells.json", "exercises.json", "inputs.pt")  # the grader's, read-only
MAX_NOTE_BYTES = (
    2**20
)  # a runner-written note (not outputs) copied out of the job's tmpfs

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str = ""
) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _drop_capabilities() -> None:
    """No capability left in any set (the bounding set included) and no way to gain one."""
    for cap in range(64):
        _libc.prctl(
            PR_CAPBSET_DROP, cap, 0, 0, 0
        )  # EINVAL past the last capability: ignored

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_uint32)
            for name in ("effective", "permitted", "inheritable")
        ]

    header, data = Header(0x20080522, 0), (Data * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _load_filter(program: bytes) -> None:
    """Put the seccomp program (``grading/seccomp.py`` compiled it) on this process and every
    process it will start; ``no_new_privs`` must be set."""

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    if not program or len(program) % 8:
        raise OSError("the seccomp filter of the sandbox is missing or damaged")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = Program(len(program) // 8, ctypes.addressof(buffer))
    _check(
        _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0),
        "seccomp",
    )


def _new_session_keyring(keyctl: int | None) -> None:
    """Join a fresh, empty session keyring: nothing of the grader's (or of the previous
    notebook's) is reachable from it. Where keyrings are refused already (a container's own
    seccomp filter), there is nothing to leave."""
    if keyctl is not None:
        _libc.syscall(ctypes.c_long(keyctl), KEYCTL_JOIN_SESSION_KEYRING, None)


# ------------------------------------------------------------------------------- the notebook (G)
class CellTimeout(BaseException):
    """A cell or an exercise ran past its time (not an Exception: ``except Exception`` misses it)."""


class OutputError(ValueError):
    """The function returned something other than the tensors the exercise expects."""


class CappedText(io.TextIOBase):
    """A text stream that keeps the first ``limit`` characters written to it and counts the rest."""

    def __init__(self, limit: int, path: str) -> None:
        self.limit, self.kept, self.dropped = limit, 0, 0
        self.file = open(path, "a", encoding="utf-8", errors="replace")

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        text = str(text)
        room = self.limit - self.kept
        if room > 0:
            # written through at once: what a notebook printed survives its being killed
            self.file.write(text[:room])
            self.file.flush()
            self.kept += min(room, len(text))
        self.dropped += max(0, len(text) - max(room, 0))
        return len(text)

    def flush(self) -> None:
        self.file.flush()


class _Shell:
    """What ``get_ipython()`` returns in a graded notebook: the grader turned magics into calls
    of these (IPython's input transformers); ``%time`` runs its statement, the rest do nothing."""

    def __init__(self, namespace: dict) -> None:
        self.namespace = namespace

    def run_line_magic(self, name: str, line: str, *args: Any) -> None:
        if name in ("time", "timeit") and line.strip():
            exec(compile(line, "<magic>", "exec"), self.namespace)

    def run_cell_magic(self, name: str, line: str, cell: str, *args: Any) -> None:
        return None  # %%time / %%timeit / %%capture cells arrive unwrapped; others are skipped

    def system(self, *args: Any, **kwargs: Any) -> None:
        return None

    def getoutput(self, *args: Any, **kwargs: Any) -> list:
        return []

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _display(*objects: Any, **_: Any) -> None:
    for value in objects:
        print(repr(value))


def _on_timeout(signum, frame) -> None:
    raise CellTimeout()


def _timer(limits: dict | None) -> None:
    """Arm (or, with None, disarm) the time limit of a cell: ``cell_timeout`` seconds of this
    process's own CPU time (ITIMER_PROF: a busy sibling notebook cannot use it up), and the
    generous wall-clock backstop ``cell_wall_timeout`` for a cell that sleeps or waits."""
    signal.setitimer(signal.ITIMER_PROF, limits["cell_timeout"] if limits else 0)
    signal.setitimer(signal.ITIMER_REAL, limits["cell_wall_timeout"] if limits else 0)


def _describe(error: BaseException) -> str:
    if isinstance(error, CellTimeout):
        return "ran past the time limit of a cell"
    if isinstance(error, SystemExit):
        return f"called sys.exit({error.code!r})"
    message = " ".join(str(error).split())[:300]
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _student_traceback(error: BaseException) -> str:
    frames = [
        f
        for f in traceback.extract_tb(error.__traceback__)
        if f.filename.startswith("<code")
    ]
    text = "".join(
        traceback.format_list(frames)
        + traceback.format_exception_only(type(error), error)
    )
    return text[:MAX_TRACEBACK]


def _append_line(path: str, record: dict) -> None:
    with open(path, "a") as log:
        log.write(json.dumps(record) + "\n")


def _as_outputs(value: Any, n_outputs: int) -> tuple:
    import torch

    if n_outputs == 1:
        if not torch.is_tensor(value):
            raise OutputError(
                f"returned a {type(value).__name__}; return a torch.Tensor"
            )
        return (value,)
    if not isinstance(value, (tuple, list)) or len(value) != n_outputs:
        got = (
            f"{len(value)} values"
            if isinstance(value, (tuple, list))
            else f"a {type(value).__name__}"
        )
        raise OutputError(f"returned {got}; return a tuple of {n_outputs} tensors")
    for position, item in enumerate(value):
        if not torch.is_tensor(item):
            raise OutputError(
                f"output {position} is a {type(item).__name__}; return torch.Tensors"
            )
    return tuple(value)


def _saveable(tensor):
    if tensor.numel() > MAX_OUTPUT_ELEMENTS:
        raise OutputError(
            f"returned a tensor of {tensor.numel()} elements, far more than expected"
        )
    import torch

    return tensor.detach().as_subclass(torch.Tensor).to("cpu").contiguous().clone()


def _evaluate(job: str, spec: dict, cases: list, namespace: dict, limits: dict) -> None:
    """Call the function ``spec["name"]`` on every case; write ``<name>.safetensors`` and ``.json``."""
    import torch
    from safetensors.torch import save_file

    from ddpm_course.grading.drivers import call_with_driver
    from ddpm_course.grading.exercise import clone_args, decode_args

    name, n_outputs, driver = spec["name"], int(spec["n_outputs"]), spec.get("driver")
    function = namespace.get(name)
    note: dict[str, Any] = {"status": "ok", "cases": []}
    tensors: dict[str, torch.Tensor] = {}
    if not callable(function):
        note["status"] = "missing"
        note["detail"] = (
            "not defined"
            if function is None
            else f"is a {type(function).__name__}, not a function"
        )
    else:
        _timer(limits)
        try:
            for number, encoded in enumerate(cases):
                error_text = None
                try:
                    value = call_with_driver(
                        driver, function, clone_args(decode_args(encoded))
                    )
                    for position, tensor in enumerate(_as_outputs(value, n_outputs)):
                        tensors[f"{number}.{position}"] = _saveable(tensor)
                except NotImplementedError:
                    if number == 0:
                        note["status"] = "not-attempted"
                        break
                    error_text = "raised NotImplementedError"
                except (CellTimeout, KeyboardInterrupt):
                    raise
                except (
                    BaseException
                ) as error:  # a wrong answer that crashes fails this case only
                    error_text = (
                        str(error)
                        if isinstance(error, OutputError)
                        else _describe(error)
                    )
                note["cases"].append({"case": number, "error": error_text})
        except CellTimeout:
            note["status"] = "timeout"
            note["detail"] = f"did not return within {limits['cell_timeout']:g} s"
        finally:
            _timer(None)
    try:
        save_file(tensors, os.path.join(job, f"{name}.safetensors"))
    except Exception as error:
        note["status"] = "unsaveable"
        note["detail"] = _describe(error)
    with open(os.path.join(job, f"{name}.json"), "w") as handle:
        json.dump(note, handle)


def _is_check_call(statement) -> bool:
    """A top-level ``check(...)`` expression: the self-check cells, which the grader skips."""
    import ast

    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Call)
        and isinstance(statement.value.func, ast.Name)
        and statement.value.func.id == "check"
    )


def _compile_cell(source: str, filename: str, flags: int):
    """The cell's code, compiled with the ``__future__`` features of the cells before it (as
    IPython does: ``from __future__ import annotations`` holds from its cell on), not this
    module's; returns (code, the features in force after it)."""
    import __future__

    import ast

    tree = ast.parse(source, filename)
    tree.body = [statement for statement in tree.body if not _is_check_call(statement)]
    code = compile(tree, filename, "exec", flags=flags, dont_inherit=True)
    for feature in __future__.all_feature_names:
        flag = getattr(__future__, feature).compiler_flag
        if code.co_flags & flag:
            flags |= flag
    return code, flags


def run_notebook(job: str, limits: dict) -> None:
    """Run ``job/cells.json`` (plain Python per code cell) in one namespace, each cell under the
    cell timeout, recording every error and carrying on; then evaluate the exercises of
    ``job/exercises.json`` on the inputs of ``job/inputs.pt`` and write the outputs."""
    import torch

    with open(os.path.join(job, "cells.json")) as handle:
        cells = json.load(handle)
    with open(os.path.join(job, "exercises.json")) as handle:
        specs = json.load(handle)
    inputs = torch.load(os.path.join(job, "inputs.pt"), weights_only=True)
    output = CappedText(int(limits["output_chars"]), os.path.join(job, OUTPUT_FILE))
    sys.stdout = sys.stderr = output
    signal.signal(signal.SIGALRM, _on_timeout)
    signal.signal(signal.SIGPROF, _on_timeout)
    namespace: dict[str, Any] = {"__name__": "__main__", "display": _display}
    shell = _Shell(namespace)
    namespace["get_ipython"] = lambda: shell
    cell_log = os.path.join(job, CELL_LOG)
    future_flags = 0
    for number, source in enumerate(cells, start=1):
        _append_line(cell_log, {"cell": number, "event": "start"})
        error_text = traceback_text = None
        try:
            filename = f"<code cell {number}>"
            linecache.cache[filename] = (
                len(source),
                None,
                source.splitlines(True),
                filename,
            )
            code, future_flags = _compile_cell(source, filename, future_flags)
            _timer(limits)
            try:
                exec(code, namespace)
            finally:
                _timer(None)
        except (
            BaseException
        ) as error:  # the notebook's errors are recorded, never fatal
            error_text, traceback_text = _describe(error), _student_traceback(error)
        _append_line(
            cell_log,
            {
                "cell": number,
                "event": "end",
                "error": error_text,
                "traceback": traceback_text,
            },
        )
    try:
        for spec in specs:
            _evaluate(job, spec, inputs.get(spec["name"], []), namespace, limits)
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    output.file.close()
    with open(os.path.join(job, DONE_FILE), "w") as handle:
        json.dump({"output_dropped": output.dropped}, handle)


# ----------------------------------------------------------------------------- the child (C and G)
def _address_space() -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _set_limits(limits: dict, base_address_space: int | None) -> None:
    """Hard rlimits of G (its children inherit them; it cannot raise them again)."""

    def hard(which: int, value: int) -> None:
        resource.setrlimit(which, (value, value))

    if base_address_space is not None:
        hard(resource.RLIMIT_AS, base_address_space + int(limits["memory_mb"]) * 2**20)
    hard(resource.RLIMIT_CPU, math.ceil(limits["timeout"]) + 5)
    hard(resource.RLIMIT_FSIZE, MAX_FILE_BYTES)
    hard(resource.RLIMIT_CORE, 0)
    hard(resource.RLIMIT_NOFILE, int(limits["open_files"]))
    hard(resource.RLIMIT_NPROC, int(limits["processes"]))
    signal.signal(
        signal.SIGXFSZ, signal.SIG_IGN
    )  # an oversized write fails instead of killing


def _remount_read_only(path: str) -> None:
    """Make the bind mount at ``path`` read-only in this mount namespace, keeping the flags it
    has (the kernel refuses to clear the ones it locked)."""
    current = os.statvfs(path).f_flag
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for st_flag, ms_flag in ((2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC), (1024, 1024),
                             (2048, 2048), (4096, 1 << 21)):  # fmt: skip
        if current & st_flag:
            flags |= ms_flag
    _mount(None, path, None, flags)


def _enter_namespaces(uid: int | None, limits: dict, keyctl: int | None) -> None:
    """C's part in sandboxed mode: an unprivileged uid, a fresh session keyring, new
    namespaces, and the job's mounts: ``/job`` is a tmpfs of its own, ``job_folder_mb`` in
    size, so that everything the notebook keeps there (unlinked files held open, deep trees)
    counts against its cap and vanishes with its namespace."""
    with open("/proc/cpuinfo") as handle:
        cpuinfo = handle.read()  # torch reads it lazily; /proc is hidden below
    if uid is not None and os.getuid() == 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # all uids non-zero: every capability is gone
        _libc.prctl(
            PR_SET_DUMPABLE, 1, 0, 0, 0
        )  # so that it may write its own /proc/self/uid_map
    _new_session_keyring(keyctl)
    outer_uid, outer_gid = os.getuid(), os.getgid()
    flags = (
        CLONE_NEWUSER
        | CLONE_NEWNS
        | CLONE_NEWPID
        | CLONE_NEWNET
        | CLONE_NEWIPC
        | CLONE_NEWUTS
    )
    _check(_libc.unshare(flags), "unshare")
    for name, text in (
        ("setgroups", "deny"),
        ("uid_map", f"65534 {outer_uid} 1"),
        ("gid_map", f"65534 {outer_gid} 1"),
    ):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # the sandbox's root and /dev are shared by every notebook of the batch: read-only here
    for shared in ("/", "/dev"):
        _remount_read_only(shared)
    _mount(
        "tmpfs", "/job", "tmpfs", MS_NOSUID | MS_NODEV,
        f"size={int(limits['job_folder_mb'])}m,mode=755",
    )  # fmt: skip
    _mount(
        "tmpfs", "/jobs", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=000"
    )
    tmp = f"size={int(limits['tmp_mb'])}m,mode=1777"
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmp)
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, tmp)
    _mount(
        "tmpfs", "/proc", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=1m,mode=755"
    )
    with open("/proc/cpuinfo", "w") as handle:
        handle.write(cpuinfo)
    _mount(
        None, "/proc", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    )


def _copy_file(
    name: str, limit: int, source_dir: int | None, target_dir: int | None
) -> None:
    """Copy the regular file ``name`` (at most ``limit`` bytes; a link or anything else is not
    copied) between two folders given as descriptors (None: the working folder)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        source = os.open(name, flags, dir_fd=source_dir)
    except OSError:
        return
    try:
        if not stat.S_ISREG(os.fstat(source).st_mode):
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        target = os.open(name, flags, 0o644, dir_fd=target_dir)
        try:
            left = limit
            while left > 0:
                chunk = os.read(source, min(left, 2**20))
                if not chunk:
                    break
                os.write(target, chunk)
                left -= len(chunk)
        finally:
            os.close(target)
    finally:
        os.close(source)


def _output_files(exercises: list) -> list[tuple[str, int]]:
    """The files of a run that the grader reads, and the most of each it reads."""
    files = [(name, MAX_NOTE_BYTES) for name in (CELL_LOG, DONE_FILE)]
    files += [(OUTPUT_FILE, MAX_NOTE_BYTES), (STDIO_FILE, MAX_NOTE_BYTES)]
    for spec in exercises:
        name = str(spec.get("name", ""))
        if name.isidentifier():
            files += [(f"{name}.json", MAX_NOTE_BYTES)]
            files += [(f"{name}.safetensors", MAX_FILE_BYTES)]
    return files


def _close_fds(keep: set[int]) -> None:
    for fd in range(3, 1024):
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _init_of(notebook: int) -> None:
    """In G (PID 1 of the namespace): return at once in the child (the notebook's process);
    in G, reap every process until the notebook's ends, then exit with its status (and the
    kernel kills whatever is left in the namespace). A notebook that kills itself therefore
    dies as it would anywhere (PID 1 would ignore its own signals)."""
    if notebook == 0:
        return
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(72)
        if pid == notebook:
            code = os.waitstatus_to_exitcode(status)
            os._exit(min(code, 255) if code >= 0 else min(128 - code, 255))


def _child(request: dict, report_fd: int, program: bytes) -> None:
    """C: prepare, fork G, tell the zygote G's pid, let G go, wait for it; in sandboxed mode
    copy what the grader reads from the job's tmpfs to the job folder; exit with G's status."""
    sandboxed = request.get("sandboxed", True)
    job, limits = request["job"], request["limits"]
    base = _address_space()
    folder = os.open(job, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    with open(os.path.join(job, "exercises.json"), "rb") as handle:
        exercises = json.loads(handle.read(MAX_NOTE_BYTES))
    if sandboxed:
        try:
            given = os.stat("inputs.pt", dir_fd=folder, follow_symlinks=False).st_size
        except OSError:
            given = 0
        room = dict(
            limits, job_folder_mb=int(limits["job_folder_mb"]) + -(-given // 2**20)
        )
        _enter_namespaces(request.get("uid"), room, request.get("keyctl"))
        workdir = "/job"
        inside = _dir(workdir)
        for name in INPUT_FILES:
            _copy_file(name, MAX_INPUT_BYTES, folder, inside)
            os.chmod(os.path.join(workdir, name), 0o444)
    else:
        os.setsid()
        _new_session_keyring(request.get("keyctl"))
        workdir = os.path.abspath(job)
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # G: PID 1 of the new namespace
        try:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            os.close(go_write)
            if os.read(go_read, 1) != b"g":  # C died before it let G go
                os._exit(70)
            os.close(go_read)
            os.close(report_fd)
            _close_fds(set())
            if not sandboxed:
                os.setpgid(0, 0)
            os.chdir(workdir)
            null = os.open(os.devnull, os.O_RDONLY)
            stdio = os.open(STDIO_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            for target, source in ((0, null), (1, stdio), (2, stdio)):
                os.dup2(source, target)
            os.close(null)
            os.close(stdio)
            os.environ.clear()
            os.environ.update(
                {
                    "PATH": "/usr/bin:/bin",
                    "HOME": workdir,
                    "OMP_NUM_THREADS": "1",
                    "MPLBACKEND": "Agg",
                    "CUDA_VISIBLE_DEVICES": "",
                    "TMPDIR": "/tmp",
                }
            )
            _set_limits(limits, base)
            if sandboxed:
                os.setsid()  # one session (autogroup) per notebook: see grading/seccomp.py
                _drop_capabilities()
            else:
                _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
            _load_filter(program)
            if sandboxed:
                _init_of(
                    os.fork()
                )  # G stays PID 1 (reaps orphans); the notebook runs below it
            run_notebook(workdir, limits)
            code = 0
        except BaseException:
            code = 1
        os._exit(code)
    os.close(go_read)
    os.write(report_fd, json.dumps({"gpid": pid}).encode() + b"\n")
    os.close(report_fd)
    os.write(go_write, b"g")
    os.close(go_write)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)  # minus the signal that killed G
    if sandboxed:  # every process of the namespace is gone: its files are what it left
        here = _dir("/job")
        for name, limit in _output_files(exercises):
            _copy_file(name, limit, here, folder)
    os._exit(min(code, 255) if code >= 0 else min(128 - code, 255))


def _dir(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


# ------------------------------------------------------------------------------------- the zygote
class _Job:
    def __init__(self, ident: str, request: dict, cpid: int, pipe: int) -> None:
        self.ident, self.request, self.cpid, self.pipe = ident, request, cpid, pipe
        self.gpid: int | None = None
        self.c_status: int | None = None
        self.g_done = False
        self.reason: str | None = None
        self.killed_at: float | None = None
        self.c_killed = False
        self.buffer = b""


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/PID/task/*/children)."""
    found, queue = [], [pid]
    while queue and len(found) < 4096:
        current = queue.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    queue += [int(child) for child in handle.read().split()]
        except (OSError, ValueError):
            continue
    return found


def _resident_bytes(pids: list[int]) -> int:
    """Resident set sizes summed (cheap, from /proc/PID/statm): an upper bound of the private
    memory, which is read only when this bound is over the limit."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * 4096
        except (OSError, ValueError, IndexError):
            continue
    return total


def _charged_bytes(pids: list[int]) -> int:
    """The memory the processes hold, shared or not: their proportional share (PSS) of
    anonymous and shared-memory pages (Pss_Anon + Pss_Shmem of /proc/PID/smaps_rollup). A
    block that the notebook's processes share copy-on-write after a fork counts once in full
    over them; pages shared with the fork server (torch's) count by their share; file pages
    (the libraries' code) do not count."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith(("Pss_Anon:", "Pss_Shmem:")):
                        total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


def _cpu_seconds(pids: list[int]) -> float:
    """CPU time used by the processes and by the children they reaped (utime + stime + cutime
    + cstime of /proc/PID/stat): the whole namespace's, when ``pids`` is its tree, since its
    PID 1 reaps every orphan."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            ticks += sum(int(value) for value in fields[11:15])
        except (OSError, ValueError, IndexError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def _folder_bytes(folder: str, cap_entries: int = 20000) -> int:
    total, queue, seen = 0, [folder], 0
    while queue:
        current = queue.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            seen += 1
            if seen > cap_entries:
                return 1 << 62
            try:
                if entry.is_dir(follow_symlinks=False):
                    queue.append(entry.path)
                else:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total


def serve(program: bytes) -> None:
    """The zygote's loop (see the module docstring); ``program``: the notebooks' seccomp filter."""
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    baseline = _charged_bytes([os.getpid()])  # what every notebook starts from
    reports = os.fdopen(os.dup(1), "w")
    reports.write(json.dumps({"ready": True}) + "\n")
    reports.flush()
    jobs: dict[str, _Job] = {}
    by_pid: dict[int, _Job] = {}
    pending, closed, last_watch = b"", False, 0.0

    def report(job: _Job) -> None:
        code = job.c_status if job.c_status is not None else -9
        reports.write(
            json.dumps({"id": job.ident, "exit": code, "reason": job.reason}) + "\n"
        )
        reports.flush()
        jobs.pop(job.ident, None)

    def kill(job: _Job, reason: str | None) -> None:
        """Kill the notebook: G, the PID 1 of its namespace, and with it every process there;
        C then copies out what it left and exits (without namespaces, or when C has not
        exited 15 s later, C is killed too)."""
        job.reason = job.reason or reason
        sandboxed = job.request.get("sandboxed", True)
        if job.killed_at is not None:
            return
        job.killed_at = time.monotonic()
        for pid in (job.gpid,) if sandboxed and job.gpid else (job.cpid, job.gpid):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        if job.gpid and not sandboxed:
            try:  # without namespaces, G's process group is what can be reached
                os.killpg(job.gpid, signal.SIGKILL)
            except OSError:
                pass

    while not closed or jobs:
        watch = [job.pipe for job in jobs.values() if job.pipe >= 0]
        ready, _, _ = select.select(([] if closed else [0]) + watch, [], [], 0.02)
        for fd in ready:
            if fd == 0:
                chunk = os.read(0, 65536)
                if not chunk:
                    closed = True
                    for job in list(jobs.values()):
                        kill(job, "the grader stopped")
                    continue
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    request = json.loads(line[:MAX_REQUEST_BYTES])
                    if "kill" in request:
                        if request["kill"] in jobs:
                            kill(jobs[request["kill"]], request.get("reason", "killed"))
                        continue
                    read_fd, write_fd = os.pipe()
                    cpid = os.fork()
                    if cpid == 0:
                        code = 0
                        try:
                            os.close(read_fd)
                            os.close(0)
                            _child(request, write_fd, program)
                        except BaseException:
                            traceback.print_exc()
                            code = 71
                        os._exit(code)
                    os.close(write_fd)
                    job = _Job(str(request["run"]), request, cpid, read_fd)
                    jobs[job.ident] = by_pid[cpid] = job
            else:
                job = next(j for j in jobs.values() if j.pipe == fd)
                chunk = os.read(fd, 4096)
                job.buffer += chunk
                if not chunk:
                    os.close(fd)
                    job.pipe = -1
                    try:
                        job.gpid = int(json.loads(job.buffer.split(b"\n")[0])["gpid"])
                        by_pid[job.gpid] = job
                    except (ValueError, KeyError, TypeError):
                        job.g_done = (
                            True  # C died before it forked G: nothing to wait for
                        )
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            job = by_pid.pop(pid, None)
            if job is None:
                continue
            if pid == job.cpid:
                job.c_status = os.waitstatus_to_exitcode(status)
            else:
                job.g_done = True
        for job in list(jobs.values()):
            if job.c_status is None or job.pipe >= 0:
                continue
            if not job.g_done and job.gpid is not None:
                # C is gone: G was reaped by C, or it is an orphan of ours (still dying)
                other = by_pid.get(job.gpid)
                if other is not None and other is not job:
                    job.g_done = True  # the pid is another job's now: C had reaped G
                else:
                    try:
                        pid, _ = os.waitpid(job.gpid, os.WNOHANG)
                        if pid:
                            job.g_done = True
                        else:
                            os.kill(job.gpid, signal.SIGKILL)
                    except ChildProcessError:
                        job.g_done = True
                    except OSError:
                        pass
            if job.g_done or job.gpid is None:
                if job.gpid is not None and by_pid.get(job.gpid) is job:
                    del by_pid[job.gpid]
                report(job)
        now = time.monotonic()
        if now - last_watch > 0.25:
            last_watch = now
            for job in list(jobs.values()):
                if job.c_status is not None:
                    continue
                if job.killed_at is not None:
                    if now - job.killed_at > 15 and not job.c_killed:
                        job.c_killed = True  # C has not copied out and exited in time
                        os.kill(job.cpid, signal.SIGKILL)
                    continue
                limits = job.request["limits"]
                tree = _tree(job.cpid)[1:]
                budget = int(limits["sandbox_memory_mb"]) * 2**20 + baseline
                if _resident_bytes(tree) > budget and _charged_bytes(tree) > budget:
                    kill(job, "memory")
                elif _cpu_seconds(tree) > float(limits["timeout"]):
                    kill(job, "timeout")
                elif not job.request.get("sandboxed", True) and (
                    _folder_bytes(job.request["job"])
                    > int(limits["job_folder_mb"]) * 2**20
                ):
                    kill(job, "disk")


def main(argv: list[str]) -> None:
    """``python -I -S sandbox_runner.py SITE_DIR...``: the view's folder and site-packages on
    sys.path (no .pth files are processed, so no editable install of the package is found), then
    import torch once and serve."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = (
        [here] + [p for p in sys.path if p and "site-packages" not in p] + argv
    )
    sys.dont_write_bytecode = True
    import safetensors.torch  # noqa: F401  (imported once, here, for every child)
    import torch

    torch.set_num_threads(1)
    import ddpm_course.grading.drivers  # noqa: F401
    import ddpm_course.grading.exercise  # noqa: F401

    with open(os.path.join(here, FILTER_FILE), "rb") as handle:
        program = handle.read()
    serve(program)


if __name__ == "__main__":
    main(sys.argv[1:])
