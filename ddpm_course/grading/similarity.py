"""Copy detection: each exercise function, together with the helpers it calls, against the
package's implementation and against the same function of every other submission, after
normalising names, formatting and literals.

A function becomes a sequence of tokens (:func:`tokens`): the AST's node types in order, every
local name replaced by its order of first appearance (``v0``, ``v1``...), every literal by its
type, docstrings dropped, attribute names kept (``torch.sqrt`` and ``torch.exp`` differ). The
similarity of two functions is the Jaccard index of their sets of token 5-grams (the
fingerprints of MOSS-like tools, without winnowing: the functions are short). Functions shorter
than :data:`MIN_TOKENS` are not compared: a two-line formula written correctly looks the same in
everyone's hands.

An answer is compared as a few *units*: the answer and the notebook's top-level functions it
calls, transitively (:func:`answer_functions`, at most :data:`MAX_FUNCTIONS`), joined in the
order they are reached; and each of those functions alone. So the package's code, or a
classmate's, moved into a helper that a one-line answer calls is compared as it is. Functions
that the assignment itself provides (its notebook's functions outside the answers) are left
out. The static check's worker computes the tokens, under its time limit, and keeps at most
:data:`MAX_TOKENS` of each function.

Cost: the grams of every unit are computed once (the joined unit, too, is cut at
:data:`MAX_TOKENS`), and each pair of units costs one set intersection. Per 100 students and
chapter 03's six exercises (``tests/fixtures/bench_copy_check.py``, one core of the shared
machine): 0.6 s of CPU for honest answers, 20 s when every answer calls helpers up to the caps;
the cost grows with the square of the class (4x for 200 students), and the check stops at
:data:`TIME_LIMIT` seconds in any case, the functions it did not reach marked "not compared"
in the feedback.

``apply_similarity`` stores the closest match of each function in its grade (shown in the
feedback: the package by name, another student as "another submission" so that feedback names
nobody) and returns the pairs at or above the threshold for ``similarity.csv``; with the ``zero``
policy those functions score 0 and the notebook gets status ``copied``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
import time
from functools import cache

__all__ = [
    "DEFAULT_THRESHOLD",
    "MIN_TOKENS",
    "answer_functions",
    "apply_similarity",
    "provided_functions",
    "similarity",
    "tokens",
]

DEFAULT_THRESHOLD = 0.9
MIN_TOKENS = 60
MAX_TOKENS = 2000  # of one function
MAX_FUNCTIONS = 4  # an answer and the helpers it calls
TIME_LIMIT = 60.0  # seconds for the whole check of a batch
K = 5


def tokens(function: ast.AST, limit: int = 10**9) -> list[str]:
    """The normalised token sequence of a function definition (see the module docstring), at
    most ``limit`` tokens. Iterative: no expression is too deep for it."""
    names: dict[str, str] = {}
    out: list[str] = []

    def name(text: str) -> str:
        return names.setdefault(text, f"v{len(names)}")

    stack: list[ast.AST | str] = [function]
    while stack and len(out) < limit:
        node = stack.pop()
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
            ):
                body = body[1:]  # the docstring
            out.append("def")
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            out += [name(argument.arg) for argument in arguments]
            stack += reversed(body)
        elif isinstance(node, ast.Name):
            out.append(name(node.id))
        elif isinstance(node, ast.arg):
            out.append(name(node.arg))
        elif isinstance(node, ast.Constant):
            out.append(f"const:{type(node.value).__name__}")
        elif isinstance(node, ast.Attribute):
            stack += [f".{node.attr}", node.value]
        elif isinstance(node, ast.Expr):
            stack.append(node.value)
        elif not isinstance(node, ast.expr_context):
            out.append(type(node).__name__)
            stack += reversed(list(ast.iter_child_nodes(node)))
    return out[:limit]


def _grams(sequence: list[str]) -> frozenset:
    return frozenset(
        tuple(sequence[i : i + K]) for i in range(max(1, len(sequence) - K + 1))
    )


def similarity(a: list[str], b: list[str]) -> float:
    """Jaccard index of the token 5-grams of two functions (1: the same after normalising)."""
    first, second = _grams(a), _grams(b)
    return len(first & second) / len(first | second) if first | second else 0.0


def _top_level_functions(sources: list[str]) -> dict[str, ast.AST]:
    """name -> the last top-level ``def`` of that name in the cells (plain Python)."""
    found: dict[str, ast.AST] = {}
    for source in sources:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found[node.name] = node
    return found


def answer_functions(
    sources: list[str], names: list[str]
) -> dict[str, list[tuple[str, list[str]]]]:
    """For each exercise ``name`` the notebook defines: its function and the top-level functions
    it calls, transitively, in the order reached (at most :data:`MAX_FUNCTIONS`), each as
    (name, its first :data:`MAX_TOKENS` tokens)."""
    functions = _top_level_functions(sources)
    found = {}
    for name in names:
        if name not in functions:
            continue
        order, queue = [name], [functions[name]]
        while queue and len(order) < MAX_FUNCTIONS:
            for node in ast.walk(queue.pop(0)):
                if (
                    isinstance(node, ast.Name)
                    and node.id in functions
                    and node.id not in order
                    and len(order) < MAX_FUNCTIONS
                ):
                    order.append(node.id)
                    queue.append(functions[node.id])
        found[name] = [(each, tokens(functions[each], MAX_TOKENS)) for each in order]
    return found


def provided_functions(notebook) -> set[tuple[str, ...]]:
    """The tokens of the functions an assignment's notebook gives every student (its top-level
    functions that are not exercises): a helper of these is nobody's copy."""
    from .notebook import exercise_points, python_source

    answers = set(exercise_points(notebook))
    sources = [
        python_source(cell.source)
        for cell in notebook.cells
        if cell.cell_type == "code"
    ]
    return {
        tuple(tokens(node, MAX_TOKENS))
        for name, node in _top_level_functions(sources).items()
        if name not in answers
    }


def _units(functions: list, provided: set[tuple[str, ...]]) -> list[frozenset]:
    """The gram sets an answer is compared as (see the module docstring)."""
    own = [list(found) for _, found in functions if tuple(found) not in provided]
    if not own or len(own[0]) == 0:
        return []
    joined = [token for found in own for token in found][:MAX_TOKENS]
    units = [joined] + ([found for found in own] if len(own) > 1 else [])
    return [_grams(unit) for unit in units if len(unit) >= MIN_TOKENS]


@cache
def package_tokens(dotted: str) -> tuple[str, ...] | None:
    """The tokens of a package function (``ddpm_course.diffusion.normal_kl`` or a method)."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for part in parts[split:]:
                value = getattr(value, part)
            tree = ast.parse(textwrap.dedent(inspect.getsource(value)))
        except (AttributeError, OSError, TypeError, SyntaxError):
            return None
        return tuple(tokens(tree.body[0]))
    return None


def _closest(mine: list[frozenset], theirs: list[frozenset]) -> float:
    best = 0.0
    for first in mine:
        for second in theirs:
            shared = len(first & second)
            best = max(best, shared / (len(first) + len(second) - shared))
    return best


def apply_similarity(
    results: list,
    points: dict,
    policy: str,
    threshold: float,
    provided: set[tuple[str, ...]] = frozenset(),
    time_limit: float = TIME_LIMIT,
) -> list[list]:
    """Fill each exercise grade's closest match; return the similarity.csv rows above threshold
    (and score them 0 under the ``zero`` policy). Stops after ``time_limit`` seconds: the
    functions not reached are marked "not compared"."""
    from .registry import get_exercise

    deadline = time.monotonic() + time_limit
    rows: list[list] = []
    for name in points:
        exercise = get_exercise(name)
        if not exercise.copy_check:  # a bug hunt: every answer is the given code, fixed
            continue
        references = {}
        for dotted in exercise.package_functions:
            found = package_tokens(dotted)
            if found and len(found) >= MIN_TOKENS:
                references[f"package:{dotted}"] = [_grams(list(found)[:MAX_TOKENS])]
        units = {}
        for result in results:
            try:
                found = _units(result.functions.get(name, []), provided)
            except (
                TypeError,
                ValueError,
            ):  # not what the worker writes: nothing to compare
                found = []
            if found:
                units[result.student] = found
        for result in results:
            mine = units.get(result.student)
            if mine is None:
                continue
            grade = next(g for g in result.exercises if g.name == name)
            if time.monotonic() > deadline:
                grade.similarity = (
                    f"not compared with the others: the copy check's time limit of "
                    f"{time_limit:g} s was reached"
                )
                continue
            scores = [
                (_closest(mine, theirs), other) for other, theirs in references.items()
            ]
            scores += [
                (_closest(mine, theirs), other)
                for other, theirs in units.items()
                if other != result.student
            ]
            if not scores:
                continue
            best, other = max(scores)
            shown = (
                f"the package's `{other.removeprefix('package:')}`"
                if other.startswith("package:")
                else "another submission of this batch"
            )
            grade.similarity = f"closest match: {shown}, similarity {best:.2f}"
            for score, who in sorted(scores, reverse=True):
                if score >= threshold:
                    rows.append([name, result.student, who, f"{score:.2f}"])
            if best >= threshold:
                grade.similarity += f" (at or above the threshold {threshold:g})"
                if policy == "zero" and grade.points > 0:
                    grade.flagged.append(
                        f"it is {best:.2f} similar to {shown} (copy policy: zero)"
                    )
                    result.statuses.add("copied")
    return rows
