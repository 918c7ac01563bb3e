"""The seccomp filter of every graded notebook, compiled to BPF by libseccomp.

The fork server (:mod:`~ddpm_course.grading.sandbox_runner`) loads the program that
:func:`compile_filter` writes into each notebook's PID 1 just before the notebook starts, after
``no_new_privs``: the notebook and everything it starts inherit it and cannot remove it. The
filter allows every system call except those below, which fail with ``EPERM`` (``clone3`` with
``ENOSYS``, so that the C library falls back to ``clone``, whose flags a filter can read):

* new namespaces: ``unshare``, ``setns``, and ``clone`` with any ``CLONE_NEW*`` flag (a user
  namespace would give the notebook back every capability inside it, and with them the kernel's
  whole surface of mounts, network and keys);
* new sessions (``setsid``): each notebook is one session, and so one of the scheduler's
  autogroups, which share the cores fairly whatever the number of processes in each;
* the kernel keyrings (``add_key``, ``keyctl``, ``request_key``): a keyring outlives a process
  and is shared by a session, a channel between students and a leak of the instructor's tickets;
* memory no watchdog sees: ``memfd_create``, ``memfd_secret``, System V shared memory and
  message queues (``shmget``, ``msgget``), ``userfaultfd``;
* other processes' memory: ``ptrace``, ``process_vm_readv``/``writev``, ``kcmp``,
  ``pidfd_getfd``;
* the rest of Docker's default deny list: the mount family (``mount``, ``umount2``,
  ``pivot_root``, ``chroot``, ``fsopen``, ``fsmount``, ``move_mount``, ``open_tree``,
  ``mount_setattr``...), ``bpf``, ``perf_event_open``, ``io_uring_*``, kernel modules, ``kexec``,
  ``reboot``, swap, clocks, ``acct``, ``quotactl``, ``syslog``, ``open_by_handle_at``, ``iopl``...

libseccomp is used through :mod:`ctypes` (``libseccomp.so.2``, Debian's ``libseccomp2``, which
``apt`` itself depends on, so it is on every Debian and Ubuntu system): it resolves the names to
this machine's numbers and adds the architecture check. Only the grader calls it; the fork
server loads the compiled program with ``prctl`` and needs nothing beyond the standard library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

__all__ = [
    "DENIED_SYSCALLS",
    "SeccompUnavailable",
    "compile_filter",
    "syscall_number",
]


DENIED_SYSCALLS = (
    # namespaces (clone's flags are checked below)
    "unshare", "setns",
    # sessions: a notebook's processes stay in the session (and so the scheduler's autogroup)
    # its PID 1 made, so that 30 busy processes get one notebook's share of the cores
    "setsid",
    # keyrings
    "add_key", "keyctl", "request_key",
    # memory the watchdog cannot count
    "memfd_create", "memfd_secret", "shmget", "msgget", "userfaultfd",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # mounts
    "mount", "umount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount",
    "fspick", "move_mount", "open_tree", "mount_setattr",
    # kernel surfaces and administration (Docker's default profile refuses these too)
    "bpf", "perf_event_open", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "fanotify_init", "init_module", "finit_module", "delete_module", "create_module",
    "query_module", "get_kernel_syms", "kexec_load", "kexec_file_load", "reboot", "swapon",
    "swapoff", "syslog", "acct", "settimeofday", "clock_settime", "clock_adjtime", "stime",
    "quotactl", "quotactl_fd", "nfsservctl", "lookup_dcookie", "open_by_handle_at",
    "name_to_handle_at", "iopl", "ioperm", "vm86", "vm86old", "uselib", "ustat", "sysfs",
    "_sysctl", "vhangup",
)  # fmt: skip
CLONE_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)  # SCMP_ACT_ERRNO(code)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class SeccompUnavailable(RuntimeError):
    """libseccomp is missing; the message says how to install it."""


def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        library = ctypes.CDLL(name, use_errno=True)
    except OSError:
        raise SeccompUnavailable(
            "libseccomp (libseccomp.so.2) is not installed, and every graded notebook runs under "
            "a seccomp filter that it compiles: install it (Debian/Ubuntu: `sudo apt-get install "
            "libseccomp2`, Fedora: `sudo dnf install libseccomp`, or `make sandbox-deps`)"
        ) from None
    library.seccomp_init.restype = ctypes.c_void_p
    library.seccomp_init.argtypes = [ctypes.c_uint32]
    library.seccomp_release.argtypes = [ctypes.c_void_p]
    library.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    library.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]  # fmt: skip
    library.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return library


def syscall_number(name: str) -> int | None:
    """This machine's number of the system call ``name`` (None where it has none)."""
    number = _library().seccomp_syscall_resolve_name(name.encode())
    return number if number >= 0 else None


def compile_filter(path: Path) -> Path:
    """Write the BPF program of the filter (see the module docstring) to ``path``."""
    library = _library()
    context = library.seccomp_init(SCMP_ACT_ALLOW)
    if not context:
        raise SeccompUnavailable("libseccomp could not create a filter")

    def rule(action: int, name: str, *comparisons: _ArgCmp) -> None:
        number = library.seccomp_syscall_resolve_name(name.encode())
        if number < 0:  # not a system call of this architecture
            return
        array = (_ArgCmp * max(1, len(comparisons)))(*comparisons)
        result = library.seccomp_rule_add_array(
            context, action, number, len(comparisons), array
        )
        if result < 0:
            raise SeccompUnavailable(
                f"libseccomp refused the rule for {name}: {os.strerror(-result)}"
            )

    try:
        for name in DENIED_SYSCALLS:
            rule(_errno_action(errno.EPERM), name)
        rule(_errno_action(errno.ENOSYS), "clone3")
        for flag in CLONE_NAMESPACE_FLAGS:  # rules of one call are alternatives
            rule(
                _errno_action(errno.EPERM),
                "clone",
                _ArgCmp(0, SCMP_CMP_MASKED_EQ, flag, flag),
            )
        with open(path, "wb") as handle:
            result = library.seccomp_export_bpf(context, handle.fileno())
        if result < 0:
            raise SeccompUnavailable(
                f"libseccomp could not export the filter: {os.strerror(-result)}"
            )
    finally:
        library.seccomp_release(context)
    return path
