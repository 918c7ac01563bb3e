"""The book's machinery: every chapter's .md and .ipynb say the same thing, notebooks are committed
without outputs, every chapter is in the table of contents and starts with the Colab install cell
that points at the repository named in _config.yml."""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.md"))


def _cells(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def _toc_files() -> set[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {toc["root"]}
    stack = [toc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "file" in node:
                files.add(node["file"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return files


def _repository_url() -> str:
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def test_launch_buttons_and_repository_are_top_level_config_keys():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["repository"]["url"].startswith("https://github.com/")
    assert "launch_buttons" not in config.get("html", {}).get("theme_options", {})


@pytest.mark.parametrize("markdown", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_markdown_and_notebook_are_in_sync(markdown: Path):
    notebook_path = markdown.with_suffix(".ipynb")
    assert notebook_path.exists(), f"{notebook_path.name} is missing: run `make sync`"
    from_markdown = jupytext.read(markdown)
    committed = nbformat.read(notebook_path, as_version=4)
    assert _cells(from_markdown) == _cells(committed), (
        f"{markdown.name} and its .ipynb differ: run `make sync`"
    )


@pytest.mark.parametrize("markdown", CHAPTERS, ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs(markdown: Path):
    committed = nbformat.read(markdown.with_suffix(".ipynb"), as_version=4)
    dirty = [
        i
        for i, cell in enumerate(committed.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count)
    ]
    assert not dirty, (
        f"cells {dirty} of {markdown.stem}.ipynb have outputs: clear them before committing"
    )


@pytest.mark.parametrize("markdown", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_is_in_the_table_of_contents(markdown: Path):
    assert f"book/{markdown.stem}" in _toc_files()


@pytest.mark.parametrize("markdown", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_starts_with_the_hidden_colab_install_cell(markdown: Path):
    notebook = jupytext.read(markdown)
    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    # Colab needs the cell; the rendered page leaves it out (scripts/browser_test.py checks the HTML)
    assert "remove-cell" in first_code.metadata.get("tags", []), (
        f"tag the install cell of {markdown.name} `remove-cell`"
    )
    assert 'find_spec("ddpm_course") is None' in first_code.source
    assert f"git+{_repository_url()}" in first_code.source
    code_lines = "\n".join(
        line
        for line in first_code.source.splitlines()
        if not line.lstrip().startswith("#")
    )
    assert "torch" not in code_lines.replace("ddpm_course", ""), (
        "the install cell must never (re)install torch"
    )


# [tool.ruff] line-length: a code line wider than this scrolls in the cell
MAX_LINE = 88


def _notebooks_with_code() -> list[Path]:
    return [
        *CHAPTERS,
        *sorted((ROOT / "solutions").glob("*.ipynb")),
        *sorted((ROOT / "exercises").glob("*.ipynb")),
    ]


@pytest.mark.parametrize(
    "path", _notebooks_with_code(), ids=lambda p: f"{p.parent.name}/{p.stem}"
)
def test_no_code_line_is_wider_than_the_cell(path: Path):
    notebook = jupytext.read(path)
    too_long = [
        f"cell {index}, line {number}: {len(line)} columns"
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
        for number, line in enumerate(cell.source.splitlines(), start=1)
        if len(line) > MAX_LINE
    ]
    assert not too_long, (
        f"{path.relative_to(ROOT)} has code lines over {MAX_LINE} columns (move long "
        "explanations into the prose or a comment line above): " + "; ".join(too_long)
    )


def _exercises_section(markdown: Path) -> str:
    """The text of the chapter's last `## Exercises` section, up to the next `## ` heading."""
    text = markdown.read_text()
    starts = [m.end() for m in re.finditer(r"^## Exercises[ \t]*$", text, flags=re.M)]
    assert starts, f"{markdown.name} has no `## Exercises` section"
    rest = text[starts[-1] :]
    following = re.search(r"^## ", rest, flags=re.M)
    return rest[: following.start()] if following else rest


def _graded_chapters() -> list:
    """(chapter number, grading module) for every ddpm_course/grading/chNN_*.py."""
    from ddpm_course.grading import registry

    modules = {module.__name__.split(".")[-1]: module for module in registry.CHAPTERS}
    files = sorted((ROOT / "ddpm_course" / "grading").glob("ch[0-9][0-9]_*.py"))
    return [pytest.param(f.stem[2:4], modules.get(f.stem), id=f.stem) for f in files]


@pytest.mark.parametrize("number, module", _graded_chapters())
def test_exercises_section_names_exactly_the_chapters_exercises(number, module):
    from ddpm_course.grading import registry

    assert module is not None, f"chapter {number}: grading module not in the registry"
    chapters = sorted((ROOT / "book").glob(f"{number}_*.md"))
    assert len(chapters) == 1, f"expected one book/{number}_*.md, found {chapters}"
    section = _exercises_section(chapters[0])
    named = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", section))
    expected = {exercise.name for exercise in module.EXERCISES}
    named_exercises = named & set(registry.EXERCISES)
    assert named_exercises == expected, (
        f"the Exercises section of {chapters[0].name} should name (as inline code) "
        f"{sorted(expected)}; missing {sorted(expected - named)}, "
        f"not exercises of this chapter {sorted(named_exercises - expected)}"
    )


def test_there_is_at_least_one_chapter_to_check():
    assert CHAPTERS, "no book/NN_*.md chapters found"
