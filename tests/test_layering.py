"""Package layering (DESIGN.md principle 8, issue 20): no upward import, no cycle.

The import graph is read with `ast` from every `import`, `from ... import` (function-level and
relative ones too) and `importlib.import_module("...")` with a literal name in r1jax/. Each
module belongs to a unit (a subpackage or top-level module of r1jax, unless `OWN_UNITS` makes
it one of its own) and each unit to a layer, low to high:

  0  foundation: the root package, sharding, distributed, ownership, preemption, config_utils
  1  data, models
  2  sampling, rule rewards, plan (model-config arithmetic)
  3  rollout + evaluation (evals)
  4  rl, train (the learned reward model, `train.reward_model`, sits above the rule rewards)
  5  r1 (experiments/ sit above it, outside the package)

A unit may import its own layer or any below; an import into a higher layer is a violation,
and so is any cycle between units (within a layer too).
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "r1jax"

LAYERS = {
    "r1jax": 0, "sharding": 0, "distributed": 0, "ownership": 0, "preemption": 0,
    "config_utils": 0, "peak_flops": 0,
    "data": 1, "models": 1,
    "sampling": 2, "rewards": 2, "plan": 2,
    "evals": 3,
    "rl": 4, "train": 4,
    "r1": 5,
}  # fmt: skip
# Modules that form a unit of their own rather than belong to their package's.
OWN_UNITS: dict[str, str] = {}

# Allowed violations, (importing module, imported module): none. Issue 20 part 2 removed the
# last ones (the rl <-> evals and rewards <-> train cycles); nothing may be added.
ALLOWED: frozenset[tuple[str, str]] = frozenset()


@dataclasses.dataclass(frozen=True)
class Edge:
    """One import: `module` (at `where`, file:line) imports `target`."""

    module: str
    target: str
    where: str


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    """r1jax/models/moe/layer.py -> r1jax.models.moe.layer; a package's __init__ -> the package."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: pathlib.Path) -> bool:
    rel = pathlib.Path(*name.split(".")[1:])
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def _targets(node: ast.AST, package: str, root: pathlib.Path) -> list[str]:
    """The modules one AST node imports (`from P import N` is P.N when that is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: strip level - 1 trailing parts off the current package
            parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = f"{parent}.{base}" if base else parent
        names = [f"{base}.{alias.name}" for alias in node.names]
        return [n if _is_module(n, root) else base for n in names]
    if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and ast.unparse(node.func) in ("importlib.import_module", "__import__")):
        return [node.args[0].value]
    return []


def import_edges(root: pathlib.Path = ROOT) -> list[Edge]:
    """Every import inside the package at `root` of a module of that package."""
    edges = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _targets(node, package, root):
                if target.split(".")[0] == root.name:
                    where = f"{path.relative_to(root.parent)}:{node.lineno}"
                    edges.append(Edge(module, target, where))
    return edges


def unit_of(module: str, own_units=OWN_UNITS) -> str:
    """The layering unit of a module: its own unit, else r1jax's subpackage or module."""
    for prefix, unit in own_units.items():
        if module == prefix or module.startswith(prefix + "."):
            return unit
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one unit (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def violations(edges, layers=LAYERS, allowed=ALLOWED, own_units=OWN_UNITS) -> list[str]:
    """Messages for units without a layer, upward imports and cycles (`allowed` edges skipped)."""
    out, graph = [], {}
    for e in edges:
        src, dst = unit_of(e.module, own_units), unit_of(e.target, own_units)
        missing = [u for u in (src, dst) if u not in layers]
        if missing:
            out.append(f"{e.where}: unit {missing[0]!r} has no layer (add it to LAYERS)")
        elif src != dst and (e.module, e.target) not in allowed:
            if layers[dst] > layers[src]:
                out.append(f"{e.where}: upward import {e.module} -> {e.target} "
                           f"({src}, layer {layers[src]} -> {dst}, layer {layers[dst]})")
            graph.setdefault(src, set()).add(dst)
    for cycle in _cycles(graph):
        where = [e.where for e in edges if {unit_of(e.module, own_units),
                                            unit_of(e.target, own_units)} <= set(cycle)
                 and unit_of(e.module, own_units) != unit_of(e.target, own_units)]
        out.append(f"import cycle between {cycle}: {sorted(set(where))}")
    return out


def test_no_upward_import_and_no_cycle():
    edges = import_edges()
    assert len({e.module for e in edges}) > 50  # the walk really read the package
    problems = violations(edges)
    assert not problems, "\n".join(problems)


def test_allow_list_has_no_stale_entry():
    found = {(e.module, e.target) for e in import_edges()}
    stale = sorted(ALLOWED - found)
    assert not stale, f"remove from ALLOWED, these imports are gone: {stale}"
    everything = violations(import_edges(), allowed=frozenset())
    print("today's violations, none allowed:", *everything, sep="\n  ")
    for module, target in sorted(ALLOWED):  # each entry is an upward import, nothing else
        assert any(f"upward import {module} -> {target} " in p for p in everything), target


def _write(root: pathlib.Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_upward_imports_cycles_and_unplaced_units(tmp_path):
    root = tmp_path / "r1jax"
    _write(root, {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from r1jax.high import b  # function-level, upward\n",
        "high/__init__.py": "from . import b\n",
        "high/b.py": "import importlib\nimportlib.import_module('r1jax.mid.c')\n",
        "mid/__init__.py": "",
        "mid/c.py": "from r1jax.mid2 import d\n",
        "mid2/__init__.py": "",
        "mid2/d.py": "from ..mid import c\n",  # relative, same layer: a cycle
        "stray.py": "from r1jax.low import a\n",
    })
    edges = import_edges(root)
    assert Edge("r1jax.mid2.d", "r1jax.mid.c", "r1jax/mid2/d.py:1") in edges
    assert Edge("r1jax.high", "r1jax.high.b", "r1jax/high/__init__.py:1") in edges
    layers = {"r1jax": 0, "low": 1, "mid": 2, "mid2": 2, "high": 3}
    problems = violations(edges, layers, allowed=frozenset(), own_units={})
    assert any("upward import r1jax.low.a -> r1jax.high.b" in p and "low/a.py:2" in p
               for p in problems), problems
    assert any("cycle between ['mid', 'mid2']" in p for p in problems), problems
    assert any("'stray' has no layer" in p for p in problems), problems
    assert len(problems) == 3, problems
    allowed = frozenset({("r1jax.low.a", "r1jax.high.b"), ("r1jax.mid2.d", "r1jax.mid.c")})
    layers["stray"] = 2
    assert violations(edges, layers, allowed, own_units={}) == []
