"""The shape of the code, kept by tests: no import circles, and layers.

Imports are counted wherever they are, inside functions too (a deferred
import hides a circle or a layering breach, it does not remove it).

* No circles anywhere in the product (fsd, agent, control, cli).
* Layers (fsd/__init__.py and docs/architecture.md draw them): a module
  imports only from its own package and from packages of a lower rank, so
  the ground never reaches up into the data path, no fsd package reaches
  the agent or control, and nothing but `cli` imports the command line.
* Public surfaces: a module that imports from another layered fsd package
  uses only the modules that package's `__init__` names in `__all__`.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fsd", "agent", "control", "cli")

# Lowest first. fsd's own small modules (options, failpoints, tasks, rundir)
# and its format/, store/ and meta/ packages are the ground.
GROUND = "fsd"
RANKS = {
    "fsd": 0, "fsd.format": 0, "fsd.store": 0, "fsd.meta": 0,
    "fsd.volume": 1, "fsd.block": 1,
    "fsd.datapath": 2,
    "fsd.backup": 3,
    "fsd.gc": 4,
    "fsd.lifecycle": 5,
    "fsd.tools": 6,
    "control": 7,
    "agent": 8,
    "cli": 9,
}
# Packages whose __init__ names a public surface other packages must keep to.
LAYERED = ("fsd.volume", "fsd.block", "fsd.datapath", "fsd.backup", "fsd.gc", "fsd.lifecycle", "fsd.tools")


def modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for p in sorted((root / pkg).rglob("*.py")):
            name = ".".join(p.relative_to(root).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """module -> the product modules it imports, anywhere in its body."""
    mods = modules(root, packages)

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in mods:
                return ".".join(parts[:i])
        return None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = m.split(".") if path.name == "__init__.py" else m.split(".")[:-1]
                    pkg = pkg[:len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                r = resolve(t)
                if r is not None and r != m:
                    graph[m].add(r)
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.add(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    found.add(frozenset(comp))
    return found


def package_of(module: str, ranks: dict[str, int]) -> str:
    """The ranked package a module belongs to: the longest prefix listed in `ranks`."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in ranks:
            return ".".join(parts[:i])
    raise AssertionError(f"{module} is in no ranked package: give its package a rank in RANKS")


def public_modules(root: Path, package: str) -> set[str]:
    """The names in `package`'s `__all__` (read without importing it)."""
    init = root.joinpath(*package.split("."), "__init__.py")
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"{init} names no public surface (__all__)")


def layer_breaches(root: Path, graph: dict[str, set[str]], ranks: dict[str, int],
                   layered: tuple[str, ...]) -> list[str]:
    """Every import that reaches up or sideways, or past another package's public surface."""
    public = {p: public_modules(root, p) for p in layered}
    found = []
    for m, deps in sorted(graph.items()):
        mp = package_of(m, ranks)
        for d in sorted(deps):
            dp = package_of(d, ranks)
            if dp == mp:
                continue
            if ranks[dp] >= ranks[mp] and not (ranks[dp] == ranks[mp] == 0):
                found.append(f"{m} imports {d}: {dp} (rank {ranks[dp]}) is not below {mp} (rank {ranks[mp]})")
            elif dp in public and d != dp and d[len(dp) + 1:].split(".")[0] not in public[dp]:
                found.append(f"{m} imports {d}, which is not in {dp}'s public surface {sorted(public[dp])}")
    return found


def test_no_import_circles():
    found = cycles(import_graph(ROOT, PACKAGES))
    assert not found, "import circles: " + "; ".join(" <-> ".join(sorted(c)) for c in found)


def test_every_import_keeps_to_the_layers_and_public_surfaces():
    breaches = layer_breaches(ROOT, import_graph(ROOT, PACKAGES), RANKS, LAYERED)
    assert not breaches, "\n".join(breaches)


def test_the_layer_checker_finds_a_reach_up_and_a_private_import(tmp_path):
    for pkg, files in {"p": {}, "p.low": {"a": "", "hidden": ""}, "p.high": {"b": "from p.low import a\n"}}.items():
        d = tmp_path.joinpath(*pkg.split("."))
        d.mkdir(parents=True)
        (d / "__init__.py").write_text('__all__ = ["a"]\n' if pkg == "p.low" else '__all__ = ["b"]\n')
        for name, text in files.items():
            (d / f"{name}.py").write_text(text)
    ranks = {"p": 0, "p.low": 1, "p.high": 2}
    layered = ("p.low", "p.high")
    assert layer_breaches(tmp_path, import_graph(tmp_path, ("p",)), ranks, layered) == []
    (tmp_path / "p/low/a.py").write_text("def f():\n    from p.high import b\n")
    (tmp_path / "p/high/b.py").write_text("from p.low.hidden import x\n")
    breaches = layer_breaches(tmp_path, import_graph(tmp_path, ("p",)), ranks, layered)
    assert len(breaches) == 2
    assert "p.low.a imports p.high.b" in breaches[1] and "not below" in breaches[1]
    assert "p.high.b imports p.low.hidden" in breaches[0] and "public surface" in breaches[0]


def test_the_checker_finds_a_circle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from pkg.high import g\n    return g\n")
    (pkg / "high.py").write_text("from pkg import low\n")
    (pkg / "alone.py").write_text("from . import low\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.alone"] == {"pkg.low"}
    assert cycles(graph) == {frozenset({"pkg.low", "pkg.high"})}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == set()
