"""ddpm_course.results: the book's results files, one copy, read through the package."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from ddpm_course import results

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "ddpm_course" / "results"


def test_load_reads_each_file_of_the_folder():
    on_disk = sorted(FOLDER.rglob("*.json"))
    assert len(on_disk) >= 9
    assert results.names() == sorted(
        str(p.relative_to(FOLDER).with_suffix("")) for p in on_disk
    )
    for path in on_disk:
        name = str(path.relative_to(FOLDER).with_suffix(""))
        assert results.load(name) == json.loads(path.read_text())


def test_path_gives_files_that_are_not_json():
    png = results.path("04_time_to_floor/time_to_floor.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("06_fashoin", FileNotFoundError, "there are: .*06_fashion"),
        ("../pyproject.toml", ValueError, "name must be a file name"),
        ("", ValueError, "name must be a file name"),
    ],
)
def test_a_wrong_name_says_which_there_are(name, error, message):
    with pytest.raises(error, match=message):
        results.load(name)


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [
        ROOT / name
        for name in listed
        if Path(name).suffix
        in {".py", ".md", ".ipynb", ".json", ".toml", ".yml", ".cfg"}
        and (ROOT / name).is_file()
    ]


def test_no_file_names_the_old_results_folder():
    # one copy: the results moved from book/results/ into the package; nothing may point back
    stale = [
        str(path.relative_to(ROOT))
        for path in tracked_text_files()
        if "book/results" in path.read_text(errors="replace")
        and path.name != "test_results.py"
    ]
    assert not stale, f"these files still name book/results: {stale}"


def test_chapters_read_results_through_the_package():
    # a chapter opened alone (Colab) has no results folder beside it: no relative paths
    for page in sorted((ROOT / "book").glob("[0-9][0-9]_*.md")):
        text = page.read_text()
        assert not re.search(r"""Path\(["'](book/)?results""", text), page.name
        if "results file" in text:
            assert "results.load(" in text, page.name
