"""The package's three layers (ARCHITECTURE.md): chapter modules import only each other,
``commands/`` (the command line's glue) is imported by nothing but ``cli``, ``experiments/``
by nothing but ``commands``; and no import cycle anywhere.

Every import is counted, at module level or inside a function: a deferred import is still a
dependency, and deferring one to step around a cycle is what this test forbids.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ddpm_course

PACKAGE = Path(ddpm_course.__file__).parent
# over 600 lines by design: the sandbox's fork server stays one standalone file
LONG_BY_DESIGN = {"ddpm_course.grading.sandbox_runner"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the package modules it imports (``from . import x`` resolved to ``.x``)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [
                    f"{base}.{alias.name}"
                    if f"{base}.{alias.name}" in modules
                    else base
                    for alias in node.names
                ]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target != "ddpm_course":
                    found.add(target)
        graph[name] = found
    return graph


def _layer(module: str) -> str:
    if module.startswith("ddpm_course.commands") or module == "ddpm_course.cli":
        return "commands"
    if module.startswith("ddpm_course.experiments"):
        return "experiments"
    return "chapter"


def test_the_graph_sees_the_package():
    graph = _imports()
    assert "ddpm_course.samplers" in graph["ddpm_course.latent"]
    assert "ddpm_course.diffusion" in graph["ddpm_course.samplers"]
    assert len(graph) > 40


def test_chapter_modules_import_neither_commands_nor_experiments():
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in _imports().items()
        if _layer(module) == "chapter"
        for target in targets
        if _layer(target) != "chapter"
    )
    assert not wrong, wrong


def test_experiments_do_not_import_the_command_line():
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in _imports().items()
        if _layer(module) == "experiments"
        for target in targets
        if _layer(target) == "commands"
    )
    assert not wrong, wrong


def test_only_the_cli_imports_commands():
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in _imports().items()
        if _layer(module) != "commands"
        for target in targets
        if _layer(target) == "commands"
    )
    assert not wrong, wrong


def test_no_import_cycle():
    graph = _imports()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, " ; ".join(" -> ".join(cycle) for cycle in cycles)


def test_no_chapter_module_is_over_600_lines():
    long = {
        _module_name(path): n
        for path in PACKAGE.rglob("*.py")
        if _layer(_module_name(path)) == "chapter"
        and _module_name(path) not in LONG_BY_DESIGN
        and (n := len(path.read_text().splitlines())) > 600
    }
    assert not long, long


def test_no_module_finds_the_repository_through_its_own_path():
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "parent.parent" in path.read_text()
    ]
    assert not offenders, offenders
