"""The book's committed results: the measured numbers that the chapters read, as package data.

Every file here was written by a named command, recorded inside it (its ``"command"`` or
``"commands"`` entry), and it ships with the package, so that a chapter opened alone (in Colab,
from an installed package) reads the same numbers as the built book. This folder is the only
copy: the experiments write here by default (:data:`DEFAULT_DIR`, relative to a checkout's
root), and the chapters read it through :func:`load`::

    from ddpm_course import results

    fashion_eval = results.load("fashion_eval")  # fashion_eval.json, parsed
    bench = results.load("04_bench/bench")  # a file in a sub-folder
"""

from __future__ import annotations

import json
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_DIR", "load", "names", "path"]

# where the experiments write the book's results, relative to the repository's root
DEFAULT_DIR = Path("ddpm_course") / "results"


def _root() -> Traversable:
    return resources.files(__name__)


def names() -> list[str]:
    """The results files that ship with the package, as :func:`load` names them
    (``"06_fashion"``, ``"04_bench/bench"``)."""
    found = []
    for entry in _root().iterdir():
        if entry.is_file() and entry.name.endswith(".json"):
            found.append(entry.name.removesuffix(".json"))
        elif entry.is_dir():
            found += [
                f"{entry.name}/{child.name.removesuffix('.json')}"
                for child in entry.iterdir()
                if child.is_file() and child.name.endswith(".json")
            ]
    return sorted(found)


def path(name: str) -> Traversable:
    """The shipped file ``name`` (``"04_time_to_floor/time_to_floor.png"``; a name without a
    suffix means ``.json``), readable with ``read_text`` / ``read_bytes`` wherever the package
    is installed. A ``FileNotFoundError`` lists the files there are."""
    if not isinstance(name, str) or not name or name.startswith(("/", ".")):
        raise ValueError(f"name must be a file name such as '06_fashion', got {name!r}")
    parts = name.split("/")
    if "." not in parts[-1]:
        parts[-1] += ".json"
    target = _root().joinpath(*parts)
    if not target.is_file():
        raise FileNotFoundError(
            f"no results file {name!r} in ddpm_course/results; there are: "
            f"{', '.join(names())}"
        )
    return target


def load(name: str) -> dict[str, Any]:
    """The parsed JSON of the results file ``name`` (``"fashion_eval"``, ``"04_bench/bench"``).

    Each file records the command that wrote it; see the chapter that reads it.
    """
    return json.loads(path(name).read_text(encoding="utf-8"))
