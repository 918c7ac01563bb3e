"""Reading notebooks for assignment and grading: the install cell, the points, the Python in code cells.

The grader never trusts a submitted file: :func:`read_code_cells` parses the JSON itself and
reports anything that is not a notebook as a :class:`NotebookError`. :func:`python_source` turns a
cell into plain Python the same way for the static check (in the grader) and for the execution
(in the runner), so that both see the same code.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat

__all__ = [
    "MAX_NOTEBOOK_BYTES",
    "NotebookError",
    "exercise_points",
    "install_cell_repository",
    "python_source",
    "read_code_cells",
]

MAX_NOTEBOOK_BYTES = 20 * 2**20  # a submitted notebook larger than this is not graded
INSTALL_MARKER = 'find_spec("ddpm_course") is None'
REPOSITORY_PATTERN = re.compile(
    r"git\+https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?[\"'@\s]"
)


class NotebookError(ValueError):
    """A file that cannot be read as a Jupyter notebook (or is too large to grade)."""


def read_code_cells(path: Path) -> list[str]:
    """The sources of the code cells of the notebook at ``path``, in order.

    Raises :class:`NotebookError` for a file that is too large, not JSON, or not shaped like an
    nbformat 4 notebook (a ``cells`` list whose code cells have a string or list-of-strings source).
    """
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        raise NotebookError(
            f"the file is {size / 2**20:.0f} MiB; notebooks over {MAX_NOTEBOOK_BYTES // 2**20} MiB are not graded"
        )
    try:
        notebook = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise NotebookError(
            f"not valid notebook JSON ({type(error).__name__}: {error})"
        ) from None
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if not isinstance(cells, list):
        raise NotebookError(
            "not a Jupyter notebook (nbformat 4): there is no list of cells"
        )
    sources = []
    for number, cell in enumerate(cells):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        if isinstance(source, list) and all(isinstance(line, str) for line in source):
            source = "".join(source)
        if not isinstance(source, str):
            raise NotebookError(
                f"cell {number} has a source that is neither text nor a list of lines"
            )
        sources.append(source)
    return sources


# cell magics whose body is ordinary Python that runs in the notebook's namespace
TRANSPARENT_CELL_MAGICS = ("time", "timeit", "capture", "prun")
_CELL_MAGIC = re.compile(r"\A\s*%%(\w+)[^\n]*\n?")


def python_source(source: str) -> str:
    """A code cell as plain Python, the way IPython itself reads it (its input transformers): line
    magics become ``get_ipython().run_line_magic(...)``, ``!`` lines ``get_ipython().system(...)``,
    and continuation lines (``!=`` or ``%`` inside brackets) stay Python. The body of a
    ``%%time`` / ``%%timeit`` / ``%%capture`` / ``%%prun`` cell is kept as the cell's code; any
    other cell magic (``%%bash``, ``%%writefile``...) becomes a call that the runner does not
    carry out. The static check (in the grader) and the runner both see this text."""
    from IPython.core.inputtransformer2 import TransformerManager

    match = _CELL_MAGIC.match(source)
    if match and match.group(1) in TRANSPARENT_CELL_MAGICS:
        return python_source(source[match.end() :])
    try:
        return TransformerManager().transform_cell(source)
    except Exception:  # IPython could not read it either: Python will report the error
        return source


def _defined_functions(notebook: nbformat.NotebookNode) -> list[str]:
    """Names of the functions defined at the top level of the notebook's code cells, in order."""
    names = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(python_source(cell.source))
        except SyntaxError:
            continue
        names += [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    return names


def exercise_points(
    notebook: nbformat.NotebookNode, where: str = "the notebook"
) -> dict[str, float]:
    """The exercises of a solutions notebook and their points, in the order the notebook defines them.

    They come from ``metadata["ddpm_course"]["points"]`` (``{"q_sample": 1, ...}``); each must be a
    registered exercise that the notebook defines, with a positive number of points.
    """
    points = notebook.metadata.get("ddpm_course", {}).get("points")
    if not isinstance(points, dict) or not points:
        raise ValueError(
            f'{where} has no exercises: set metadata["ddpm_course"]["points"] = {{"function_name": points, ...}}'
        )
    from .registry import (
        get_exercise,  # here: the static check's worker imports this module alone
    )

    defined = _defined_functions(notebook)
    for name, value in points.items():
        get_exercise(name)
        if name not in defined:
            raise ValueError(
                f"{where} gives points to {name!r} but defines no function of that name"
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not value > 0
        ):
            raise ValueError(
                f"{where} gives {name!r} {value!r} points; use a positive number"
            )
    order = sorted(points, key=defined.index)
    return {name: points[name] for name in order}


def install_cell_repository(
    notebook: nbformat.NotebookNode, where: str = "the notebook"
) -> str:
    """``owner/name`` of the GitHub repository that the notebook's install cell (its first code cell) installs from."""
    first_code = next(
        (cell for cell in notebook.cells if cell.cell_type == "code"), None
    )
    if first_code is None or INSTALL_MARKER not in first_code.source:
        raise ValueError(
            f"{where} must start with the Colab install cell (the book's hidden first cell, which checks "
            f"{INSTALL_MARKER} and pip-installs the package)"
        )
    match = REPOSITORY_PATTERN.search(first_code.source + "\n")
    if match is None:
        raise ValueError(
            f"the install cell of {where} does not install from git+https://github.com/OWNER/NAME"
        )
    return match.group(1)
