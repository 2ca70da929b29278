"""Arrows only point down DESIGN.md's layer table: every import of ours (module level or inside a
function) goes from a layer to one it may use, no two layers import each other in a circle, and inside a
layer no modules do either (at module level, ``if TYPE_CHECKING:`` imports counted)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"mv2mae": REPO / "mv2mae", "mv2mae.preprocess": REPO / "preprocess", "mv2mae.shards": REPO / "shards",
         "mv2mae.tools": REPO / "tools"}

# layer -> the layers it may import (besides itself). Longest prefix decides a module's layer.
ALLOWED = {
    "mv2mae.shards": set(),
    "mv2mae.preprocess": {"mv2mae.shards"},
    "mv2mae.tools": {"mv2mae.shards"},
    "mv2mae.model": set(),
    "mv2mae.interop": {"mv2mae.model"},  # VideoMAE / Hugging Face weights in and out
    "mv2mae.data": {"mv2mae.shards", "mv2mae.model.config"},
    "mv2mae.config": {"mv2mae.model", "mv2mae.data"},
    # train and eval publish their outputs through the one atomic writer, which lives at the bottom (shards)
    "mv2mae.train": {"mv2mae.model", "mv2mae.data", "mv2mae.config", "mv2mae.shards.atomic"},
    "mv2mae.eval": {"mv2mae.model", "mv2mae.data", "mv2mae.config", "mv2mae.train", "mv2mae.shards.atomic"},
    "mv2mae.api": {"mv2mae.model", "mv2mae.data", "mv2mae.config", "mv2mae.eval"},  # the stable Python API
    # a study runs every stage in one process: data preparation, training, evaluation
    "mv2mae.experiment": {"mv2mae", "mv2mae.shards", "mv2mae.preprocess", "mv2mae.model", "mv2mae.data",
                          "mv2mae.config", "mv2mae.train", "mv2mae.eval"},
    "mv2mae.bench": {"mv2mae", "mv2mae.interop", "mv2mae.shards", "mv2mae.preprocess", "mv2mae.tools", "mv2mae.model",
                     "mv2mae.data", "mv2mae.config", "mv2mae.train", "mv2mae.eval"},
    "mv2mae.cli": {"mv2mae", "mv2mae.interop", "mv2mae.shards", "mv2mae.preprocess", "mv2mae.tools", "mv2mae.model",
                   "mv2mae.data", "mv2mae.config", "mv2mae.train", "mv2mae.eval", "mv2mae.bench",
                   "mv2mae.experiment"},
    "mv2mae": set(),  # the package root holds the version and imports nothing of ours
}


def _modules() -> dict[str, Path]:
    found = {}
    for name, root in ROOTS.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            module = ".".join([name, *parts])
            found[module] = path
    return found


def _layer(module: str) -> str:
    return max((layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")), key=len)


def _our_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n == "mv2mae" or n.startswith("mv2mae.")}


def _foreign_spellings(path: Path) -> list[str]:
    """Imports that bypass the one namespace: relative ones, and the folders' bare names (``shards``,
    ``preprocess``, ``tools``), which resolve from a checkout's root but not once installed."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append(f"relative import from {'.' * node.level}{node.module or ''}")
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        found += [f"import of {n}" for n in names if n.split(".")[0] in ("shards", "preprocess", "tools")]
    return found


def _permitted(target: str, allowed: set[str]) -> bool:
    return any(target == a or target.startswith(a + ".") for a in allowed)


def test_every_import_points_down_the_layer_table():
    modules = _modules()
    wrong = set()
    for module, path in modules.items():
        layer = _layer(module)
        for target in _our_imports(path):
            if target not in modules and target.rsplit(".", 1)[0] in modules:
                target = target.rsplit(".", 1)[0]  # ``from pkg.mod import name``: the module is what counts
            if target not in modules:
                continue  # ``from pkg import submodule`` already counted as pkg.submodule
            if target == "mv2mae" or _layer(target) == layer or _permitted(target, ALLOWED[layer]):
                continue  # the package root holds only the version: anyone may read it
            wrong.add(f"{module} -> {target}")
    assert not wrong, "imports against the layer table:\n" + "\n".join(sorted(wrong))


def test_every_import_of_ours_goes_through_the_mv2mae_namespace():
    wrong = [f"{module}: {what}" for module, path in _modules().items() for what in _foreign_spellings(path)]
    assert not wrong, "\n".join(wrong)


def test_layers_import_each_other_in_no_circle():
    modules = _modules()
    edges: dict[str, set[str]] = {layer: set() for layer in ALLOWED}
    for module, path in modules.items():
        for target in _our_imports(path):
            if target in modules and _layer(target) != _layer(module):
                edges[_layer(module)].add(_layer(target))
    state: dict[str, int] = {}

    def visit(layer: str, trail: list[str]) -> None:
        if state.get(layer) == 1:
            raise AssertionError("layers import each other in a circle: " + " -> ".join(trail + [layer]))
        if state.get(layer) == 2:
            return
        state[layer] = 1
        for nxt in sorted(edges[layer]):
            visit(nxt, trail + [layer])
        state[layer] = 2

    for layer in sorted(edges):
        visit(layer, [])


def _module_level_imports(source: str, modules: dict[str, Path]) -> set[str]:
    """Our modules that the module of ``source`` imports when it is imported (statements outside functions, those under
    ``if TYPE_CHECKING:`` included: a circle a type checker follows is one a reader follows too)."""
    names: set[str] = set()
    pending = list(ast.parse(source).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()  # submodules by name
            names.update(found or {node.module})
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # a function's imports run later
            pending += ast.iter_child_nodes(node)  # if/try/except/with/class bodies run at import
    return names & modules.keys()


def _circle(edges: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph ``edges`` as the path that closes it, or None."""
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        if state.get(node) == 1:
            return trail[trail.index(node):] + [node]
        if state.get(node) == 2:
            return None
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if (found := visit(nxt, trail + [node])) is not None:
                return found
        state[node] = 2
        return None

    return next((c for node in sorted(edges) if (c := visit(node, [])) is not None), None)


def test_modules_import_each_other_in_no_circle_inside_a_layer():
    modules = _modules()
    edges = {m: {t for t in _module_level_imports(p.read_text(), modules) if t != m} for m, p in modules.items()}
    found = _circle(edges)
    assert found is None, "modules import each other in a circle: " + " -> ".join(found or [])


def test_a_circle_under_type_checking_is_found_and_one_inside_a_function_is_not():
    """The guard above, on source text: an import only a type checker runs closes a circle as well as one
    that runs, and one in an ``except`` counts; an import inside a function runs later and closes none."""
    modules = {m: Path() for m in ("mv2mae.train.loop", "mv2mae.train.tasks", "mv2mae.train.logs")}
    sources = {"mv2mae.train.loop": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                    "    from mv2mae.train.tasks import Task\n",
               "mv2mae.train.logs": "try:\n    pass\nexcept ImportError:\n    import mv2mae.train.tasks\n"
                                    "def f():\n    import mv2mae.train.loop\n",
               "mv2mae.train.tasks": "from mv2mae.train import loop\n"}
    edges = {name: _module_level_imports(text, modules) for name, text in sources.items()}
    assert edges["mv2mae.train.logs"] == {"mv2mae.train.tasks"}
    assert _circle(edges) == ["mv2mae.train.tasks", "mv2mae.train.loop", "mv2mae.train.tasks"]
    del edges["mv2mae.train.loop"]  # without the TYPE_CHECKING import: no circle
    assert _circle(edges) is None


def test_the_command_line_is_imported_by_no_other_layer():
    modules = _modules()
    users = [f"{m} -> {t}" for m, p in modules.items() if _layer(m) != "mv2mae.cli"
             for t in _our_imports(p) if t == "mv2mae.cli" or t.startswith("mv2mae.cli.")]
    assert not users, users
