"""`ddpm-course assign`: exercises/ is what the solutions make of it, and the solution regions are
replaced as specified (placeholder at the region's indentation, everything else verbatim)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import yaml

from ddpm_course.cli import main
from ddpm_course.grading.assign import assign, strip_solutions
from ddpm_course.grading.notebook import exercise_points, install_cell_repository
from ddpm_course.grading.registry import EXERCISES

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def _cells(notebook) -> list[tuple]:
    return [
        (cell.cell_type, cell.source, dict(cell.metadata)) for cell in notebook.cells
    ]


def _solution_notebook(
    *code_cells: str, points: dict | None = None, markdown: str = "# A title"
) -> nbformat.NotebookNode:
    """A minimal solutions notebook: the committed install cell, a title, the given code cells."""
    install = nbformat.read(SOLUTIONS[0], as_version=4).cells[0]
    cells = [install, nbformat.v4.new_markdown_cell(markdown)] + [
        nbformat.v4.new_code_cell(source) for source in code_cells
    ]
    metadata = {
        "ddpm_course": {"points": points if points is not None else {"q_sample": 1}}
    }
    return nbformat.v4.new_notebook(cells=cells, metadata=metadata)


def _write(tmp_path: Path, notebook, name: str = "03_elbo") -> Path:
    folder = tmp_path / "solutions"
    folder.mkdir(exist_ok=True)
    nbformat.write(notebook, folder / f"{name}.ipynb")
    return folder


Q_SAMPLE = '''def q_sample(x0, t, noise, alphas_cumprod):
    """Docstring stays."""
    ### BEGIN SOLUTION
    abar = alphas_cumprod[t]
    return abar.sqrt() * x0
    ### END SOLUTION'''


def test_every_chapter_with_graded_exercises_has_one_solutions_notebook():
    graded = sorted(
        path.name[2:4]
        for path in (ROOT / "ddpm_course" / "grading").glob("ch[0-9][0-9]_*.py")
    )
    assert graded[:3] == ["01", "02", "03"]
    assert [path.name[:2] for path in SOLUTIONS] == graded


def test_committed_exercises_are_not_stale(tmp_path):
    written = assign(ROOT / "solutions", tmp_path)
    committed = sorted((ROOT / "exercises").glob("*.ipynb"))
    assert [path.name for path in written] == [path.name for path in committed], (
        "run `make sync`"
    )
    for fresh_path, committed_path in zip(written, committed, strict=True):
        fresh = nbformat.read(fresh_path, as_version=4)
        old = nbformat.read(committed_path, as_version=4)
        assert _cells(fresh) == _cells(old), (
            f"exercises/{committed_path.name} is stale: run `make sync`"
        )
        assert fresh.metadata == old.metadata, (
            f"exercises/{committed_path.name} is stale: run `make sync`"
        )


def test_assign_output_is_byte_for_byte_deterministic(tmp_path):
    first = assign(ROOT / "solutions", tmp_path / "first")
    second = assign(ROOT / "solutions", tmp_path / "second")
    assert [path.read_bytes() for path in first] == [
        path.read_bytes() for path in second
    ]


def test_a_region_becomes_the_placeholder_at_its_indentation():
    expected = '''def q_sample(x0, t, noise, alphas_cumprod):
    """Docstring stays."""
    # YOUR CODE HERE
    raise NotImplementedError'''
    assert strip_solutions(Q_SAMPLE) == expected


def test_every_region_of_a_cell_is_replaced_and_the_rest_kept_verbatim():
    source = """x = 1
### BEGIN SOLUTION
y = 2
### END SOLUTION
class A:
    def f(self):
        if True:
            ### BEGIN SOLUTION
            return 3
            ### END SOLUTION
z = 4  # kept"""
    expected = """x = 1
# YOUR CODE HERE
raise NotImplementedError
class A:
    def f(self):
        if True:
            # YOUR CODE HERE
            raise NotImplementedError
z = 4  # kept"""
    assert strip_solutions(source) == expected


def test_an_end_marker_without_begin_is_an_error_naming_the_line():
    with pytest.raises(
        ValueError,
        match=r"the cell, line 2: ### END SOLUTION without a ### BEGIN SOLUTION",
    ):
        strip_solutions("x = 1\n### END SOLUTION")


def test_a_begin_marker_that_is_never_closed_is_an_error_naming_the_line():
    with pytest.raises(ValueError, match=r"line 2: ### BEGIN SOLUTION is never closed"):
        strip_solutions("def f():\n    ### BEGIN SOLUTION\n    return 1")


def test_a_begin_marker_inside_a_region_is_an_error():
    with pytest.raises(
        ValueError,
        match=r"line 3: ### BEGIN SOLUTION inside the region opened on line 1",
    ):
        strip_solutions(
            "### BEGIN SOLUTION\nx = 1\n### BEGIN SOLUTION\n### END SOLUTION"
        )


def test_unmatched_markers_in_a_notebook_name_the_notebook_and_cell(tmp_path):
    folder = _write(
        tmp_path, _solution_notebook(Q_SAMPLE.replace("    ### END SOLUTION", ""))
    )
    with pytest.raises(ValueError, match=r"solutions/03_elbo.ipynb, cell 2, line 3"):
        assign(folder, tmp_path / "exercises")


def test_solution_markers_in_markdown_are_rejected(tmp_path):
    notebook = _solution_notebook(
        Q_SAMPLE, markdown="### BEGIN SOLUTION\nthe answer\n### END SOLUTION"
    )
    with pytest.raises(ValueError, match="only supported in code cells"):
        assign(_write(tmp_path, notebook), tmp_path / "exercises")


def test_outputs_and_execution_counts_are_cleared(tmp_path):
    notebook = _solution_notebook(Q_SAMPLE, "print('hello')")
    notebook.cells[-1].outputs = [nbformat.v4.new_output("stream", text="hello\n")]
    notebook.cells[-1].execution_count = 7
    (written,) = assign(_write(tmp_path, notebook), tmp_path / "exercises")
    code_cells = [
        cell
        for cell in nbformat.read(written, as_version=4).cells
        if cell.cell_type == "code"
    ]
    assert all(
        cell.outputs == [] and cell.execution_count is None for cell in code_cells
    )


def test_exercises_start_with_a_colab_badge_then_the_hidden_install_cell():
    for path in sorted((ROOT / "exercises").glob("*.ipynb")):
        badge, install = nbformat.read(path, as_version=4).cells[:2]
        url = f"https://colab.research.google.com/github/ddpm-course/ddpm_course/blob/main/exercises/{path.name}"
        assert badge.cell_type == "markdown" and f"]({url})" in badge.source
        assert install.cell_type == "code" and install.metadata["tags"] == [
            "hide-output"
        ]
        assert 'find_spec("ddpm_course") is None' in install.source


def test_install_cells_install_from_the_repository_named_in_the_book_config():
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    for path in SOLUTIONS:
        assert (
            f"https://github.com/{install_cell_repository(nbformat.read(path, as_version=4))}"
            == url
        )


def test_exercises_keep_no_solution_code():
    for solution_path in SOLUTIONS:
        solution = nbformat.read(solution_path, as_version=4)
        exercise = nbformat.read(ROOT / "exercises" / solution_path.name, as_version=4)
        text = "\n".join(cell.source for cell in exercise.cells)
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
        # a bug hunt gives its buggy code (a cell defining buggy_...): lines it shares
        # with an answer are given on purpose; every other cell must hold none
        text = "\n".join(
            cell.source for cell in exercise.cells if "def buggy_" not in cell.source
        )
        for cell in solution.cells:
            inside = cell.source.split("### BEGIN SOLUTION")[1:]
            for region in (part.split("### END SOLUTION")[0] for part in inside):
                answer_lines = [
                    line.strip() for line in region.splitlines() if line.strip()
                ]
                assert not any(
                    line in text for line in answer_lines if len(line) > 20
                ), f"an answer line of {solution_path.name} leaked"
        for name in exercise_points(solution):
            (cell,) = [
                cell
                for cell in exercise.cells
                if cell.source.startswith(f"def {name}(")
            ]
            assert cell.source.rstrip().endswith("raise NotImplementedError")


def test_points_for_an_unregistered_exercise_are_rejected(tmp_path):
    notebook = _solution_notebook(
        Q_SAMPLE, points={"q_sample": 1, "not_an_exercise": 2}
    )
    with pytest.raises(
        ValueError, match="there is no exercise called 'not_an_exercise'"
    ):
        assign(_write(tmp_path, notebook), tmp_path / "exercises")


def test_points_for_a_function_the_notebook_does_not_define_are_rejected(tmp_path):
    notebook = _solution_notebook(Q_SAMPLE, points={"q_sample": 1, "normal_kl": 1})
    with pytest.raises(
        ValueError, match="gives points to 'normal_kl' but defines no function"
    ):
        assign(_write(tmp_path, notebook), tmp_path / "exercises")


def test_a_notebook_without_the_install_cell_is_rejected(tmp_path):
    notebook = _solution_notebook(Q_SAMPLE)
    notebook.cells = notebook.cells[1:]
    with pytest.raises(ValueError, match="must start with the Colab install cell"):
        assign(_write(tmp_path, notebook), tmp_path / "exercises")


def test_every_registered_exercise_is_in_exactly_one_solutions_notebook():
    graded = [
        name
        for path in SOLUTIONS
        for name in exercise_points(nbformat.read(path, as_version=4))
    ]
    assert sorted(graded) == sorted(EXERCISES)


def test_chapter_exercises_are_three_to_eight_per_notebook():
    # at most eight: chapter 03 has six small pieces of the bound and the whole bound twice
    for path in SOLUTIONS:
        assert 3 <= len(exercise_points(nbformat.read(path, as_version=4))) <= 8


def test_the_assign_command_writes_one_notebook_per_solution(tmp_path, capsys):
    assert main(["assign", str(ROOT / "solutions"), str(tmp_path / "out")]) == 0
    assert sorted(path.name for path in (tmp_path / "out").glob("*.ipynb")) == [
        path.name for path in SOLUTIONS
    ]
    assert "wrote" in capsys.readouterr().out


def test_the_assign_command_reports_a_bad_notebook_and_exits_2(tmp_path, capsys):
    folder = _write(tmp_path, _solution_notebook(Q_SAMPLE, "### END SOLUTION"))
    assert main(["assign", str(folder), str(tmp_path / "out")]) == 2
    assert "END SOLUTION without" in capsys.readouterr().err
