"""The static half of the integrity check: does an exercise function compute its answer itself?

A student function that just calls the package's implementation (the answer key) scores zero. The
grader decides that from the notebook's source, read with :mod:`ast` and :mod:`symtable` in the
grader's process (nothing the notebook does at run time can change the verdict), so it cannot be
talked out of it by a forged output file. For each exercise function it collects everything the
function can reach by name: the top-level statements that bind the names it uses (functions,
classes, assignments, imports), recursively, and the statements that assign attributes or items of
those names (``torch.kl = ...``). In that closure it flags:

* any import of ``ddpm_course`` (the rule for answers is: torch only, no package);
* imports of modules outside :data:`ALLOWED_MODULES` (``os``, ``sys``, ``importlib``, ``subprocess``,
  ``builtins``, ``pickle``, a file the notebook wrote, ...);
* the builtins that reach code or objects by name or by text: ``__import__``, ``eval``, ``exec``,
  ``compile``, ``globals``, ``vars``, ``locals``, ``setattr``, ``delattr``, and ``getattr`` with
  anything but a literal attribute name (``open`` is allowed: in the sandbox, files hold only
  what the notebook wrote);
* attributes that reach interpreter internals (``__dict__``, ``__globals__``, ``__closure__``,
  ``__wrapped__``, ``__subclasses__``, ``__self__``, frame and code attributes, ...);
* attribute chains on allowed modules that lead outside them or do not exist there (``torch.os``,
  ``torch.sys.modules``, ``torch.load``, ``torch.hub``, ``torch.kl`` put there at run time);
* names that nothing in the notebook defines and that are not Python builtins (injected into
  ``builtins`` by some other route); a name used only in an annotation that is never evaluated
  (``from __future__ import annotations`` in that cell or an earlier one, as IPython carries
  it) is not a use.

Attribute chains are followed in the modules the worker loaded at its start, never by importing
anything (a submodule such as ``tqdm.__main__`` would run): a chain into an allowed module that
is not loaded, but exists, is judged by its text only.

What it cannot see: code that the student copies from the package by hand, and tricks through
objects that an allowed module hands out at run time without an attribute chain the grader can
follow. The runner's tripwires (:mod:`~ddpm_course.grading.runner`) are a second, dynamic check.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import importlib.util
import symtable
import sys
from dataclasses import dataclass, field
from types import ModuleType

from .notebook import python_source

__all__ = ["ALLOWED_MODULES", "PRELOAD_SKIPPED", "RESOLVABLE", "find_violations"]

# what an answer may import (and anything below these, except DENIED): the standard library and
# the scientific stack; a progress bar is never a reason to flag
ALLOWED_MODULES = tuple(sorted(set(sys.stdlib_module_names) - {"__future__"})) + (
    "__future__", "torch", "numpy", "scipy", "einops", "tqdm", "matplotlib",
)  # fmt: skip
# parts of the allowed modules that load or run code from files, strings or by name, or reach
# every loaded module (the package included, when it is importable)
DENIED = (
    "torch.hub", "torch.package", "torch.serialization", "torch.utils", "torch.jit", "torch.ops",
    "torch.library", "torch.multiprocessing", "torch.distributed", "torch.compiler",
    "numpy.f2py", "numpy.distutils", "numpy.lib.npyio", "numpy.load", "numpy.fromfile", "torch.load",
    "importlib", "builtins", "ctypes", "runpy", "pickle", "marshal", "zipimport", "code", "codeop",
    "imp", "pkgutil", "sys.modules", "sys.meta_path", "sys.path_hooks", "gc", "inspect",
)  # fmt: skip
# ``open`` is not among them: inside the sandbox a file holds nothing but what the notebook
# wrote (no answer key is there to read), and ``pathlib`` reads files just as well; a training
# step that logs its loss to a file is an honest one
FORBIDDEN_NAMES = {
    "__import__", "eval", "exec", "compile", "globals", "vars", "locals", "setattr", "delattr",
    "breakpoint", "input", "__builtins__", "__loader__", "__spec__",
}  # fmt: skip
FORBIDDEN_ATTRIBUTES = {
    "__dict__", "__globals__", "__code__", "__closure__", "__wrapped__", "__builtins__", "__subclasses__",
    "__bases__", "__base__", "__mro__", "__getattribute__", "__getattr__", "__setattr__", "__delattr__",
    "__reduce__", "__reduce_ex__", "__loader__", "__spec__", "__self__", "__func__", "__defaults__",
    "__kwdefaults__", "__import__", "__module__", "__traceback__", "__init_subclass__",
    "f_globals", "f_locals", "f_builtins", "f_back", "gi_frame", "cr_frame", "ag_frame", "tb_frame",
    "tb_next", "co_code", "co_consts",
}  # fmt: skip
# names the runner defines in every notebook (Jupyter's display())
RUNNER_NAMES = {"display", "get_ipython"}


@dataclass
class _Statement:
    """A top-level statement of the notebook and the names it binds, uses and mutates."""

    cell: int
    node: ast.stmt
    binds: set[str] = field(default_factory=set)
    uses: set[str] = field(default_factory=set)
    mutates: set[str] = field(default_factory=set)
    imports: dict[str, str] = field(
        default_factory=dict
    )  # bound name -> dotted module or object
    star_imports: list[str] = field(
        default_factory=list
    )  # modules of ``from M import *``


def _scope_names(table: symtable.SymbolTable, statement: _Statement) -> None:
    """Names a nested scope reads from, or writes to (``global``), the notebook's namespace."""
    for symbol in table.get_symbols():
        if symbol.is_global() and symbol.is_referenced():
            statement.uses.add(symbol.get_name())
        if symbol.is_declared_global() and symbol.is_assigned():
            statement.binds.add(symbol.get_name())
    for child in table.get_children():
        _scope_names(child, statement)


def _module_level_nodes(node: ast.AST):
    """The nodes of a top-level statement that run at module level (not inside a def, class or lambda)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(
            child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
        ):
            yield from _module_level_nodes(child)


def _names_in(node: ast.AST) -> set[str]:
    return {child.id for child in ast.walk(node) if isinstance(child, ast.Name)}


def _annotation_only_names(node: ast.AST) -> set[str]:
    """Names that ``node`` uses only inside annotations (arguments, returns, annotated
    assignments), which deferred annotations never evaluate. Iterative."""
    inside, outside = set(), set()
    stack = [(node, False)]
    while stack:
        current, annotation = stack.pop()
        if isinstance(current, ast.Name):
            (inside if annotation else outside).add(current.id)
        roots = set()
        if isinstance(current, ast.arg) and current.annotation is not None:
            roots.add(id(current.annotation))
        elif isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if current.returns is not None:
                roots.add(id(current.returns))
        elif isinstance(current, ast.AnnAssign):
            roots.add(id(current.annotation))
        for child in ast.iter_child_nodes(current):
            stack.append((child, annotation or id(child) in roots))
    return inside - outside


def _statement(cell: int, node: ast.stmt, deferred: bool = False) -> _Statement:
    statement = _Statement(cell, node)
    table = symtable.symtable(ast.unparse(node), f"<code cell {cell}>", "exec")
    for symbol in table.get_symbols():
        if symbol.is_assigned() or symbol.is_imported():
            statement.binds.add(symbol.get_name())
        if symbol.is_referenced():
            statement.uses.add(symbol.get_name())
    for child in table.get_children():
        _scope_names(child, statement)
    if deferred:
        statement.uses -= _annotation_only_names(node)
    for child in ast.walk(node):
        if isinstance(child, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = (
                child.targets
                if isinstance(child, (ast.Assign, ast.Delete))
                else [child.target]
            )
            for target in targets:
                for part in ast.walk(target):
                    if isinstance(part, (ast.Attribute, ast.Subscript)):
                        statement.mutates |= _names_in(part)
        elif (
            isinstance(child, ast.Call)
            and isinstance(child.func, ast.Name)
            and child.func.id in ("setattr", "delattr")
        ):
            statement.mutates |= _names_in(child)
    for child in _module_level_nodes(node):
        if isinstance(child, ast.Import):
            for alias in child.names:
                root = alias.name.split(".")[0]
                statement.imports[alias.asname or root] = (
                    alias.name if alias.asname else root
                )
        elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
            for alias in child.names:
                if alias.name == "*":
                    statement.star_imports.append(child.module)
                else:
                    statement.imports[alias.asname or alias.name] = (
                        f"{child.module}.{alias.name}"
                    )
    return statement


def _defers_annotations(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(alias.name == "annotations" for alias in node.names)
        for node in tree.body
    )


def _parse_cells(sources: list[str]) -> list[_Statement]:
    statements = []
    deferred = (
        False  # from __future__ import annotations, from its cell on (as IPython)
    )
    for cell, source in enumerate(sources):
        try:
            tree = ast.parse(python_source(source))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue  # the runner cannot run this cell either
        deferred = deferred or _defers_annotations(tree)
        for node in tree.body:  # code cells counted from 1
            if isinstance(node, (ast.Import, ast.ImportFrom)) and len(node.names) > 1:
                # `import math, os, sys`: each name is its own binding, judged on its own
                for alias in node.names:
                    single = ast.copy_location(
                        type(node)(**{**vars(node), "names": [alias]}), node
                    )
                    statements.append(_statement(cell + 1, single, deferred))
            else:
                statements.append(_statement(cell + 1, node, deferred))
    return statements


def _is_allowed_module(dotted: str) -> bool:
    return dotted.split(".")[0] in ALLOWED_MODULES and not any(
        dotted == denied or dotted.startswith(denied + ".") for denied in DENIED
    )


# the modules whose attribute chains the grader follows, in the worker that loads them at its
# start (outside the sandbox): side-effect-free ones; a chain into any other allowed module
# (``antigravity`` opens a browser when imported) is judged by its text only
RESOLVABLE = {
    "torch", "numpy", "scipy", "einops", "tqdm", "matplotlib", "math", "cmath", "numbers",
    "typing", "collections", "functools", "itertools", "dataclasses", "statistics", "abc",
    "enum", "warnings", "operator", "copy", "time", "sys", "os", "random", "re", "string",
    "heapq", "bisect", "array", "decimal", "fractions", "contextlib", "types", "textwrap", "json",
}  # fmt: skip


# slow to import (a second or more each): not loaded by the worker, judged by their text only
PRELOAD_SKIPPED = {"scipy", "matplotlib"}


class _NotImported(Exception):
    """A module the grader does not import to follow a chain (see :data:`RESOLVABLE`)."""


def _loaded(dotted: str) -> ModuleType:
    """The module ``dotted`` if it is loaded already; :class:`_NotImported` if it exists but is
    not loaded (it is never imported here: importing runs its code), ``ImportError`` if there
    is no such module. Finding a submodule needs its parent loaded, which it is here."""
    module = sys.modules.get(dotted)
    if module is not None:
        return module
    try:
        spec = importlib.util.find_spec(dotted)
    except (ImportError, ValueError, AttributeError):
        spec = None
    if spec is None:
        raise ImportError(f"no module {dotted}")
    raise _NotImported(dotted)


@functools.lru_cache(maxsize=4096)
def _resolve(dotted: str) -> object:
    """The object ``dotted`` names inside an allowed module that is loaded here: a module, or an
    attribute of one; ``AttributeError`` / ``ImportError`` when there is none."""
    parts = dotted.split(".")
    if parts[0] not in RESOLVABLE:
        raise _NotImported(parts[0])
    value: object = _loaded(parts[0])
    for depth, part in enumerate(parts[1:], start=2):
        try:
            value = getattr(value, part)
        except AttributeError:
            value = _loaded(".".join(parts[:depth]))
    return value


def _object_origin(value: object) -> str | None:
    """The dotted home of a module or of an object defined in one (``torch.load`` -> ``torch.serialization.load``)."""
    if isinstance(value, ModuleType):
        return value.__name__
    module = getattr(value, "__module__", None)
    name = getattr(value, "__name__", None)
    if isinstance(module, str) and isinstance(name, str):
        return f"{module}.{name}"
    return None


def _check_attribute_chain(dotted: str, findings: set[str]) -> None:
    """Follow ``torch.a.b`` in the real modules; flag chains that lead to a denied or unknown
    place (``torch.sys.modules`` is ``sys.modules``) or do not exist."""
    parts = dotted.split(".")
    canonical = parts[0]
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        if depth > 1:
            canonical = f"{canonical}.{parts[depth - 1]}"
        if not _is_allowed_module(canonical):
            shown = f" (that is `{canonical}`)" if canonical != prefix else ""
            findings.add(f"uses `{prefix}`{shown}, which answers may not use")
            return
        if (
            depth > 1
            and parts[depth - 1].startswith("_")
            and not parts[depth - 1].startswith("__")
        ):
            findings.add(
                f"uses the private `{prefix}`, which the grader does not allow"
            )
            return
        try:
            value = _resolve(prefix)
        except (ImportError, AttributeError):
            findings.add(
                f"uses `{prefix}`, which does not exist in {parts[0]} (the grader cannot tell what it is)"
            )
            return
        except (
            Exception
        ):  # an allowed module that fails to import here: nothing more to follow
            return
        origin = _object_origin(value)
        if origin is not None:
            if not _is_allowed_module(origin):
                findings.add(
                    f"uses `{prefix}` (that is `{origin}`), which answers may not use"
                )
                return
            if isinstance(value, ModuleType):
                canonical = origin


def _attribute_chain(node: ast.Attribute) -> tuple[str | None, list[str]]:
    """(root name, attribute names) of ``a.b.c``; the root is None when the chain starts elsewhere."""
    attributes = []
    value: ast.AST = node
    while isinstance(value, ast.Attribute):
        attributes.append(value.attr)
        value = value.value
    return (value.id if isinstance(value, ast.Name) else None), attributes[::-1]


def _check_statement(
    statement: _Statement, module_aliases: dict[str, str], findings: set[str]
) -> None:
    """Flag what :func:`find_violations` forbids inside one statement of a closure (string
    annotations included: they are code that ``typing.get_type_hints`` evaluates)."""
    for node in _walk_with_annotations(statement.node):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.ImportFrom) and node.level:
                findings.add("uses a relative import")
                continue
            modules = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            for module in modules:
                if module.split(".")[0] == "ddpm_course":
                    findings.add(
                        f"imports `{module}`: answers may not use the package, whose functions are the answer key"
                    )
                elif not _is_allowed_module(module):
                    findings.add(f"imports `{module}`, which answers may not use")
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and _is_allowed_module(node.module)
            ):
                for alias in node.names:
                    if alias.name != "*":
                        _check_attribute_chain(f"{node.module}.{alias.name}", findings)
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            findings.add(
                f"uses `{node.id}`, which lets code reach anything by name; the grader cannot verify it"
            )
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            findings.add(
                f"uses `.{node.attr}`, which reaches the interpreter's internals"
            )
        elif isinstance(node, ast.Attribute):
            root, attributes = _attribute_chain(node)
            if root in module_aliases:
                _check_attribute_chain(
                    ".".join([module_aliases[root], *attributes]), findings
                )
        elif _is_literal_getattr(node):
            target, name = node.args[0], node.args[1].value
            if name in FORBIDDEN_ATTRIBUTES:
                findings.add(
                    f"uses `.{name}`, which reaches the interpreter's internals"
                )
            elif isinstance(target, ast.Name) and target.id in module_aliases:
                _check_attribute_chain(f"{module_aliases[target.id]}.{name}", findings)
    literal = {
        id(node.func) for node in ast.walk(statement.node) if _is_literal_getattr(node)
    }
    if any(
        isinstance(node, ast.Name) and node.id == "getattr" and id(node) not in literal
        for node in ast.walk(statement.node)
    ):
        findings.add("uses `getattr` with a computed name; the grader cannot verify it")


def _walk_with_annotations(root: ast.AST):
    """``ast.walk(root)``, plus the expressions parsed from every string constant (an annotation
    written as text, or any string that could be evaluated as code)."""
    queue = [root]
    while queue:
        tree = queue.pop()
        for node in ast.walk(tree):
            yield node
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if len(text) < 10_000 and any(c in text for c in "(._["):
                    try:
                        queue.append(ast.parse(text.strip(), mode="eval"))
                    except (SyntaxError, ValueError, RecursionError, MemoryError):
                        pass


def _is_literal_getattr(node: ast.AST) -> bool:
    """``getattr(x, "name")`` or ``getattr(x, "name", default)``: an attribute access with a literal name."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "getattr"
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    )


def _star_sources(name: str, star_statements: list[_Statement]) -> list[_Statement]:
    """The ``from M import *`` statements that may have bound ``name``: those of allowed modules that
    have it, and every one of a module the grader does not import (its import is then flagged)."""
    sources = []
    for statement in star_statements:
        for module in statement.star_imports:
            if not _is_allowed_module(module):
                sources.append(statement)
                break
            try:
                if hasattr(_resolve(module), name):
                    sources.append(statement)
                    break
            except Exception:  # an allowed module that does not import here
                continue
    return sources


def _live(statements: list[_Statement], name: str) -> list[_Statement]:
    """The bindings of ``name`` that are live at the end of the notebook: the last one, and the
    ones before it as long as each uses the name itself (``f = wrap(f)``, ``x += 1``) or binds
    it only conditionally (inside an ``if``, ``for``, ``try``...). An earlier draft that a later
    ``def`` replaces is not live."""
    live = []
    for statement in reversed(statements):
        live.append(statement)
        node = statement.node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            decorators = [d for d in node.decorator_list if name in _names_in(d)]
            if not decorators:
                break  # the body reads its globals when it runs: the live ones
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            break
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and name not in _names_in(
            node.value or ast.Pass()
        ):
            break
    return live[::-1]


def find_violations(
    sources: list[str], exercise_names: list[str]
) -> dict[str, list[str]]:
    """For each exercise, what its function (and everything it reaches) does that answers may not do.

    sources: the notebook's code cells. Returns ``{name: [finding, ...]}``, an empty list for a clean
    function. A name that no statement binds gets "is not defined by a def or an assignment the
    grader can read" (it only matters if the function turned up at run time).
    """
    statements = _parse_cells(sources)
    bindings: dict[str, list[_Statement]] = {}
    mutations: dict[str, list[_Statement]] = {}
    module_aliases: dict[str, str] = {}
    for statement in statements:
        for name in statement.binds:
            bindings.setdefault(name, []).append(statement)
        for name in statement.mutates:
            mutations.setdefault(name, []).append(statement)
        for name, dotted in statement.imports.items():
            if _is_allowed_module(dotted):
                module_aliases[name] = dotted
    star_statements = [statement for statement in statements if statement.star_imports]
    known = set(dir(builtins)) | RUNNER_NAMES
    report = {}
    for exercise in exercise_names:
        findings: set[str] = set()
        if exercise not in bindings:
            report[exercise] = [
                f"`{exercise}` is not defined by a def or an assignment the grader can read"
            ]
            continue
        closure: list[_Statement] = []
        in_closure: set[int] = set()
        seen_names, queue = set(), [exercise]
        while queue:
            name = queue.pop()
            if name in seen_names:
                continue
            seen_names.add(name)
            sources = _live(bindings.get(name, []), name)
            if not sources and name not in known:
                sources = _star_sources(name, star_statements)
                if not sources:
                    findings.add(f"uses `{name}`, which the notebook never defines")
            for statement in sources + mutations.get(name, []):
                if id(statement) not in in_closure:
                    in_closure.add(id(statement))
                    closure.append(statement)
                    queue += sorted(statement.uses)
        for statement in closure:
            statement_findings: set[str] = set()
            _check_statement(statement, module_aliases, statement_findings)
            findings |= {
                f"{finding} (code cell {statement.cell})"
                for finding in statement_findings
            }
        report[exercise] = sorted(findings)
    return report
