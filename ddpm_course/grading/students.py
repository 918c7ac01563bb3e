"""Student ids from submitted file names, and removing what a batch leaves on disk.

A student id is the notebook's file name without ``.ipynb``, made safe for every place it goes:
the name's bytes are read as UTF-8 or else as Latin-1 (old unzip tools extract ``Müller`` in
Latin-1), every character that is not printable (a newline, a tab, a control or separator
character) becomes ``_``, and the id is cut at :data:`MAX_ID_CHARS`. An id that had to be
changed, or that would collide with another, gets ``~`` and eight hex digits of a hash of the
original name, so that two submissions never share an id. :func:`file_stem` makes the name of
the student's feedback file from the id (at most :data:`MAX_STEM_BYTES` bytes, never hidden).

:func:`remove_tree` deletes a folder without recursion (a notebook can leave a tree deeper than
Python's recursion limit and paths longer than ``PATH_MAX``).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

__all__ = [
    "MAX_ID_CHARS",
    "collect_submissions",
    "file_stem",
    "remove_tree",
    "student_id",
]

MAX_ID_CHARS = 100  # characters of a student id
MAX_STEM_BYTES = 120  # UTF-8 bytes of a feedback file's name before ".md"


def _hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:8]


def student_id(path: Path) -> str:
    """The id of the submission at ``path`` (see the module docstring), before collisions."""
    raw = os.fsencode(path.name)
    raw = raw[: -len(".ipynb")] if raw.endswith(b".ipynb") else raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    clean = "".join(c if c.isprintable() else "_" for c in text).strip() or "_"
    if clean != text or len(clean) > MAX_ID_CHARS:
        clean = f"{clean[:MAX_ID_CHARS]}~{_hash(raw)}"
    return clean


def file_stem(student: str) -> str:
    """A file name (without its suffix) for the student id ``student``: at most
    :data:`MAX_STEM_BYTES` bytes of UTF-8, not hidden, no path separator."""
    stem = student.replace("/", "_").replace("\\", "_")
    if stem.startswith("."):
        stem = "_" + stem[1:]
    if len(stem.encode()) > MAX_STEM_BYTES:
        short = stem.encode()[: MAX_STEM_BYTES - 9].decode(errors="ignore")
        stem = f"{short}~{_hash(student.encode())}"
    return stem


def collect_submissions(submissions: list[Path | str]) -> dict[str, Path]:
    """Student id -> notebook, from notebook files and folders of them (not recursive).

    The same file name in two folders is refused (``ValueError``: rename one); ids that only
    collide once made safe are told apart by a hash of the name."""
    found: dict[str, Path] = {}
    names: dict[bytes, Path] = {}
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
            raw = os.fsencode(path.name)
            if raw in names:
                raise ValueError(
                    f"two submissions have the student id {student_id(path)!r}: "
                    f"{names[raw]} and {path}; rename one"
                )
            names[raw] = path
            ident = student_id(path)
            while ident in found or file_stem(ident) in map(file_stem, found):
                ident = f"{ident[:MAX_ID_CHARS]}~{_hash(raw + ident.encode())}"
            found[ident] = path
    if not found:
        raise ValueError("no .ipynb submissions found")
    return found


def _open_folder(name: str | Path, parent: int | None) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=parent)
    except (
        PermissionError
    ):  # a folder its notebook made unreadable (0o000): ours to open
        os.chmod(name, 0o700, dir_fd=parent, follow_symlinks=False)
        return os.open(name, flags, dir_fd=parent)


def remove_tree(path: Path | str) -> None:
    """Delete the folder ``path`` and everything in it, depth first without recursion: one
    open folder at a time (entered by name, left by ``..``), so neither the depth of the tree
    nor the length of its paths matters. Links are removed, never followed."""
    path = Path(path)
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            path.unlink(missing_ok=True)
            return
        folder = _open_folder(path, None)
    except FileNotFoundError:
        return
    above: list[str] = []  # the names of the folders entered, from the top
    while True:
        child = None
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    child = entry.name
                    break
                os.unlink(entry.name, dir_fd=folder)
        if child is not None:
            inner = _open_folder(child, folder)
            os.close(folder)
            folder, above = inner, [*above, child]
            continue
        if not above:
            break
        parent = os.open(
            "..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=folder
        )
        os.close(folder)
        os.rmdir(above.pop(), dir_fd=parent)
        folder = parent
    os.close(folder)
    os.rmdir(path)
