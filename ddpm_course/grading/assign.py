"""Write the student notebooks ``exercises/`` from the instructor notebooks ``solutions/``.

In a solutions notebook each answer sits between two marker lines (as in nbgrader)::

    def q_sample(x0, t, noise, alphas_cumprod):
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

:func:`assign` replaces every such region by ``raise NotImplementedError`` at the indentation of
its BEGIN line, clears outputs, puts a Colab badge above the install cell, and keeps the points
(``metadata["ddpm_course"]["points"]``). The output depends only on the input (no timestamps,
the cell ids of the solutions), so ``exercises/`` can be checked for staleness by regenerating it.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from .notebook import exercise_points, install_cell_repository

__all__ = [
    "BEGIN_SOLUTION",
    "END_SOLUTION",
    "assign",
    "exercise_notebook",
    "strip_solutions",
]

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
PLACEHOLDER = ("# YOUR CODE HERE", "raise NotImplementedError")
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def strip_solutions(source: str, where: str = "the cell") -> str:
    """``source`` with each BEGIN/END SOLUTION region (markers included) replaced by the placeholder.

    Raises ``ValueError`` naming ``where`` and the line for an END without a BEGIN, a BEGIN inside
    a region, or a BEGIN that is never closed.
    """
    lines = source.split("\n")
    kept: list[str] = []
    begin_line = None
    for number, line in enumerate(lines, start=1):
        marker = line.strip()
        if marker == BEGIN_SOLUTION:
            if begin_line is not None:
                raise ValueError(
                    f"{where}, line {number}: {BEGIN_SOLUTION} inside the region opened on line "
                    f"{begin_line}; close it first"
                )
            begin_line = number
            indent = line[: len(line) - len(line.lstrip())]
            kept += [indent + placeholder for placeholder in PLACEHOLDER]
        elif marker == END_SOLUTION:
            if begin_line is None:
                raise ValueError(
                    f"{where}, line {number}: {END_SOLUTION} without a {BEGIN_SOLUTION} before it"
                )
            begin_line = None
        elif begin_line is None:
            kept.append(line)
    if begin_line is not None:
        raise ValueError(
            f"{where}, line {begin_line}: {BEGIN_SOLUTION} is never closed by {END_SOLUTION}"
        )
    return "\n".join(kept)


def _colab_url(repository: str, branch: str, name: str) -> str:
    return f"https://colab.research.google.com/github/{repository}/blob/{branch}/exercises/{name}.ipynb"


def exercise_notebook(
    solution: nbformat.NotebookNode, name: str, branch: str = "main"
) -> nbformat.NotebookNode:
    """The student notebook ``exercises/<name>.ipynb`` made from the solutions notebook ``solution``."""
    where = f"solutions/{name}.ipynb"
    repository = install_cell_repository(solution, where)
    points = exercise_points(solution, where)
    badge = nbformat.v4.new_markdown_cell(
        f"[![Open In Colab]({COLAB_BADGE})]({_colab_url(repository, branch, name)})",
        id="colab-badge",
    )
    cells = [badge]
    for number, cell in enumerate(solution.cells):
        metadata = (
            {"tags": list(cell.metadata["tags"])} if cell.metadata.get("tags") else {}
        )
        # nbformat < 4.5 has no ids; never a random one here (the output must be deterministic)
        cell_id = cell.get("id") or f"cell-{number}"
        if cell.cell_type == "code":
            source = strip_solutions(cell.source, f"{where}, cell {number}")
            cells.append(
                nbformat.v4.new_code_cell(source, id=cell_id, metadata=metadata)
            )
        elif BEGIN_SOLUTION in cell.source or END_SOLUTION in cell.source:
            raise ValueError(
                f"{where}, cell {number}: solution markers are only supported in code cells"
            )
        elif cell.cell_type == "markdown":
            cells.append(
                nbformat.v4.new_markdown_cell(
                    cell.source, id=cell_id, metadata=metadata
                )
            )
        else:
            cells.append(
                nbformat.v4.new_raw_cell(cell.source, id=cell_id, metadata=metadata)
            )
    metadata = {
        "kernelspec": dict(
            solution.metadata.get(
                "kernelspec",
                {"display_name": "Python 3", "language": "python", "name": "python3"},
            )
        ),
        "ddpm_course": {"points": points},
    }
    notebook = nbformat.v4.new_notebook(cells=cells, metadata=metadata)
    nbformat.validate(notebook)
    return notebook


def assign(solutions: Path, exercises: Path, branch: str = "main") -> list[Path]:
    """Write ``exercises/NN_name.ipynb`` for each solutions notebook; return the paths written.

    ``solutions`` is a folder of notebooks or a single notebook; ``branch`` is the branch the Colab
    badge opens.
    """
    solutions, exercises = Path(solutions), Path(exercises)
    sources = sorted(solutions.glob("*.ipynb")) if solutions.is_dir() else [solutions]
    if not sources or not all(path.is_file() for path in sources):
        raise ValueError(
            f"no solutions notebooks at {solutions}; give a folder of .ipynb files or one .ipynb file"
        )
    exercises.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sources:
        notebook = exercise_notebook(
            nbformat.read(path, as_version=4), path.stem, branch
        )
        target = exercises / path.name
        nbformat.write(notebook, target)
        written.append(target)
    return written
