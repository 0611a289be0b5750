"""The package's rooms: no import cycle between them, nothing outside the lab imports it.

Every ``import`` of every module counts, wherever it stands (inside functions and
``if TYPE_CHECKING:`` blocks too): a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PKG = ROOT / "orchestrator"
#: the only modules outside orchestrator/lab that may import it: the lab's own commands
LAB_COMMANDS = {"orchestrator.commands.lab", "orchestrator.commands.srs"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The orchestrator modules ``name`` imports (``from pkg import mod`` gives pkg.mod)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("orchestrator")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("orchestrator"):
                continue
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known}
    return out


def _room(module: str) -> str:
    """``orchestrator.lab.srs.sip`` → ``lab``; ``orchestrator.daemons`` → ``daemons``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "orchestrator"


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def test_the_scan_sees_the_imports_it_must() -> None:
    g = _graph()
    assert "orchestrator.daemons" in g["orchestrator.render.check"]
    assert "orchestrator.lab.srs" in g["orchestrator.commands.srs"]  # a lazy import
    assert "orchestrator.errors" in g["orchestrator"]  # `from . import errors`


def test_nothing_outside_the_lab_imports_it() -> None:
    bad = sorted(f"{src} imports {dst}" for src, dsts in _graph().items() for dst in dsts
                 if _room(dst) == "lab" and _room(src) != "lab" and src not in LAB_COMMANDS)
    assert bad == []


def test_no_import_cycle_between_rooms() -> None:
    edges: dict[str, set[str]] = {}
    for src, dsts in _graph().items():
        for dst in dsts:
            if _room(src) != _room(dst):
                edges.setdefault(_room(src), set()).add(_room(dst))
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(room: str) -> None:
        state[room] = 1
        path.append(room)
        for nxt in sorted(edges.get(room, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[room] = 2

    for room in sorted(edges):
        if room not in state:
            visit(room)
    assert cycles == [], " ; ".join(" → ".join(c) for c in cycles)
