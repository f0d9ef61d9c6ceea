"""The shape of the code, checked: imports run one way and classes stay readable.

The tree reads like the way a turn travels (README, "Layout"): `adapters/` imports `bot/`, never
the other way; the tools (`bot.tools`) and the composition root (`bot.runtime`, `bot.server`)
import the core, never the reverse; adapters see the core through `bot.adapter`'s context, not
the runtime, the dialogue manager or the inbox's internals. Read from the source with `ast`, so a
lazy import inside a function counts as much as one at the top for which way imports run; a
circle is one among the imports a module runs as it loads (a plugin registry that imports its
plugins when asked, and a plugin that imports the registry, are no circle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_CLASS_LINES = 250
COMPOSITION = ("bot.runtime", "bot.server", "bot.tools")  # may import anything in bot/
ADAPTERS_MUST_NOT = ("bot.runtime", "bot.server", "bot.dialogue", "bot.tools")
INBOX_FOR_ADAPTERS = {"Inbox"}  # the protocol an adapter puts turns into; the rest is the inbox's own


def modules() -> dict[str, Path]:
    found = {}
    for package in ("bot", "adapters"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, name: str) -> Iterator[tuple[str, tuple[str, ...], bool]]:
    """(module, names, not run as the module loads) of every import in `path`, absolute or
    relative; an import is not run at load time inside `if TYPE_CHECKING:` or a function."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if (isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test))
        or isinstance(block, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(block)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, (), id(node) in typing_only
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            yield base, tuple(alias.name for alias in node.names), id(node) in typing_only


def edges(*, every: bool) -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for base, names, later in imports(path, name):
            # `from bot.dialogue import stages` imports the module `stages`, not the package's code.
            targets = {f"{base}.{n}" if f"{base}.{n}" in known else base for n in names} or {base}
            graph[name] |= {t for t in targets if t in known and t != name and (every or not later)}
    return graph


def test_bot_never_imports_an_adapter():
    bad = [
        (m, t)
        for m, targets in edges(every=True).items()
        if m.startswith("bot")
        for t in targets
        if t.startswith("adapters")
    ]
    assert bad == []


def test_the_core_never_imports_the_tools_or_the_composition_root():
    bad = [
        (m, t)
        for m, targets in edges(every=True).items()
        if m.startswith("bot") and not m.startswith(COMPOSITION)
        for t in targets
        if t.startswith(COMPOSITION)
    ]
    assert bad == []


def test_adapters_see_the_core_through_their_context():
    bad = []
    for name, path in modules().items():
        if not name.startswith("adapters"):
            continue
        for target, names, _ in imports(path, name):
            if target.startswith(ADAPTERS_MUST_NOT):
                bad.append((name, target))
            elif target == "bot.store.inbox" and set(names) - INBOX_FOR_ADAPTERS:
                bad.append((name, f"{target}: {sorted(set(names) - INBOX_FOR_ADAPTERS)}"))
    assert bad == []


def test_there_is_no_import_circle():
    graph = edges(every=False)
    # Tarjan's strongly connected components: any component of more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert circles == []


def test_no_class_outgrows_a_sitting():
    big = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                big.append((name, node.name, node.end_lineno - node.lineno + 1))
    assert big == []
