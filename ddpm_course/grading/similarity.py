"""Copy detection: each exercise function against the package's implementation and against the
same function of every other submission, after normalising names, formatting and literals.

A function becomes a sequence of tokens (:func:`tokens`): the AST's node types in order, every
local name replaced by its order of first appearance (``v0``, ``v1``...), every literal by its
type, docstrings dropped, attribute names kept (``torch.sqrt`` and ``torch.exp`` differ). The
similarity of two functions is the Jaccard index of their sets of token 5-grams (the
fingerprints of MOSS-like tools, without winnowing: the functions are short). Functions shorter
than :data:`MIN_TOKENS` are not compared: a two-line formula written correctly looks the same in
everyone's hands.

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
from functools import cache

__all__ = [
    "DEFAULT_THRESHOLD",
    "MIN_TOKENS",
    "apply_similarity",
    "similarity",
    "tokens",
]

DEFAULT_THRESHOLD = 0.9
MIN_TOKENS = 60
K = 5


class _Normaliser(ast.NodeVisitor):
    def __init__(self) -> None:
        self.out: list[str] = []
        self.names: dict[str, str] = {}

    def _name(self, name: str) -> str:
        return self.names.setdefault(name, f"v{len(self.names)}")

    def generic_visit(self, node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
            ):
                body = body[1:]  # the docstring
            self.out.append("def")
            for argument in (
                node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            ):
                self.out.append(self._name(argument.arg))
            for statement in body:
                self.visit(statement)
            return
        if isinstance(node, ast.Name):
            self.out.append(self._name(node.id))
            return
        if isinstance(node, ast.arg):
            self.out.append(self._name(node.arg))
            return
        if isinstance(node, ast.Constant):
            self.out.append(f"const:{type(node.value).__name__}")
            return
        if isinstance(node, ast.Attribute):
            self.visit(node.value)
            self.out.append(f".{node.attr}")
            return
        if isinstance(node, (ast.expr_context, ast.Expr)):
            if isinstance(node, ast.Expr):
                self.visit(node.value)
            return
        self.out.append(type(node).__name__)
        super().generic_visit(node)


def tokens(function: ast.AST) -> list[str]:
    """The normalised token sequence of a function definition (see the module docstring)."""
    normaliser = _Normaliser()
    normaliser.visit(function)
    return normaliser.out


def _grams(sequence: list[str]) -> frozenset:
    return frozenset(
        tuple(sequence[i : i + K]) for i in range(max(1, len(sequence) - K + 1))
    )


def similarity(a: list[str], b: list[str]) -> float:
    """Jaccard index of the token 5-grams of two functions (1: the same after normalising)."""
    first, second = _grams(a), _grams(b)
    return len(first & second) / len(first | second) if first | second else 0.0


def live_function(sources: list[str], name: str) -> ast.AST | None:
    """The last top-level ``def name`` of the notebook's cells (already plain Python)."""
    found = None
    for source in sources:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        for node in tree.body:
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.name == name
            ):
                found = node
    return found


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


def apply_similarity(
    results: list, points: dict, policy: str, threshold: float
) -> list[list]:
    """Fill each exercise grade's closest match; return the similarity.csv rows above threshold
    (and score them 0 under the ``zero`` policy)."""
    from .registry import get_exercise

    rows: list[list] = []
    for name in points:
        exercise = get_exercise(name)
        references = {}
        for dotted in exercise.package_functions:
            found = package_tokens(dotted)
            if found:
                references[f"package:{dotted}"] = list(found)
        functions = {}
        for result in results:
            node = live_function(result.sources, name) if result.sources else None
            if node is not None:
                functions[result.student] = tokens(node)
        for result in results:
            mine = functions.get(result.student)
            if mine is None or len(mine) < MIN_TOKENS:
                continue
            grade = next(g for g in result.exercises if g.name == name)
            scores = [
                (similarity(mine, theirs), other)
                for other, theirs in references.items()
            ]
            scores += [
                (similarity(mine, theirs), other)
                for other, theirs in functions.items()
                if other != result.student and len(theirs) >= MIN_TOKENS
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
