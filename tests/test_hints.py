"""Exercise hints teach without answering: no code of the answer, and a pointer to the page.

A hint is shown when a case fails (``check()`` in the notebook, and the grade report). It says
which quantity is wrong and which classic mistakes the error looks like, and it sends the student
to the section of the chapter that has the equation; it never writes the answer as code. The
first tests scan every hint for code and for the reference implementation's own expressions; the
last checks that every section a hint names exists in that chapter.
"""

from __future__ import annotations

import importlib
import inspect
import re
import textwrap
from pathlib import Path

import pytest

from ddpm_course.grading.registry import CHAPTERS, EXERCISES

ROOT = Path(__file__).resolve().parents[1]
HINTS = {name: exercise.hint for name, exercise in EXERCISES.items()}
CHAPTER_OF = {
    exercise.name: module.__name__.rsplit(".", 1)[1][2:4]  # "ch04_training" -> "04"
    for module in CHAPTERS
    for exercise in module.EXERCISES
}

# What code looks like in a sentence: a library call, an assignment of anything but a number
# (the answer's formula; "at t = 0" is a condition), a power, a product, an index, a matrix
# product, or a named function applied to arguments (sqrt(...), model(...); one-letter names
# such as q(x_t | x_0) or β(s) are mathematics).
CODE_PATTERNS = {
    "a torch/numpy/functional call": re.compile(r"\b(torch|np|numpy|F|math)\.\w"),
    "an assignment": re.compile(r"=(?!\s*[-−+]?\d+(?:\.\d+)?(?![\w(*/]|\.\d))"),
    "a power written as code": re.compile(r"\*\*"),
    "a product written as code": re.compile(r"\w\s*\*\s*\w"),
    "a slice or index": re.compile(r"\w\[|\[\s*:"),
    "a matrix product": re.compile(r"@"),
    "a method call": re.compile(r"\.\w+\("),
    "a function call": re.compile(r"\b[A-Za-z_]\w+\("),
}


@pytest.mark.parametrize("name", sorted(HINTS))
def test_hint_writes_no_code(name):
    hint = HINTS[name]
    found = {
        what: pattern.search(hint).group(0)
        for what, pattern in CODE_PATTERNS.items()
        if pattern.search(hint)
    }
    assert not found, f"the hint of {name} contains code: {found}\n{hint}"


def _resolve(dotted: str):
    """``ddpm_course.x.Class.method`` -> the object, or None where there is none (the list
    names every place a submission might call, some of which need not exist)."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            target = getattr(target, attribute, None)
        return target
    return None


def answer_expressions(name: str) -> set[str]:
    """The right-hand sides and return values (whitespace removed, at least 8 characters) of the
    reference and of the package functions that compute the answer."""
    exercise = EXERCISES[name]
    functions = [exercise.reference] + [
        _resolve(dotted) for dotted in exercise.package_functions
    ]
    expressions = set()
    for function in functions:
        if function is None:
            continue
        source = textwrap.dedent(inspect.getsource(function))
        for line in source.splitlines():
            code = line.split("#", 1)[0].strip()
            match = re.match(r"(?:return\s+|[\w.\[\], ]+\s*[-+*/]?=\s*)(.+)", code)
            if match:
                expression = re.sub(r"\s+", "", match.group(1)).rstrip(",")
                if len(expression) >= 8 and re.search(r"[()*/+\-\[]", expression):
                    expressions.add(expression)
    return expressions


def test_the_answer_scan_finds_expressions():
    # the scan below must be able to fail: it finds the reference's expressions
    assert any("alphas_cumprod" in e for e in answer_expressions("q_sample"))
    assert len(answer_expressions("ema_update")) >= 1


@pytest.mark.parametrize("name", sorted(HINTS))
def test_hint_quotes_no_expression_of_the_answer(name):
    hint = re.sub(r"\s+", "", HINTS[name])
    quoted = [e for e in answer_expressions(name) if e in hint]
    assert not quoted, f"the hint of {name} quotes the answer's code: {quoted}"


def _words(text: str, n: int = 3) -> list[str]:
    text = re.sub(r"\$[^$]*\$", " ", text)
    return re.sub(r"[^\w\s]", "", text).lower().split()[:n]


def headings_of(chapter: str) -> list[list[str]]:
    (page,) = (ROOT / "book").glob(f"{chapter}_*.md")
    return [
        _words(line.lstrip("#"))
        for line in page.read_text().splitlines()
        if re.match(r"#{2,4} ", line)
    ]


@pytest.mark.parametrize("name", sorted(HINTS))
def test_hint_points_to_a_section_of_its_chapter(name):
    pointers = re.findall(r"chapter (\d\d), “([^”]+)”", HINTS[name])
    assert any(chapter == CHAPTER_OF[name] for chapter, _ in pointers), (
        f"the hint of {name} names no section of chapter {CHAPTER_OF[name]}: "
        f"{HINTS[name]}"
    )
    for chapter, section in pointers:
        assert _words(section) in headings_of(chapter), (
            f"the hint of {name} names '{section}', which is no section of chapter "
            f"{chapter}"
        )
