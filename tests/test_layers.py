"""The layers of src/vlmtune (docs/architecture.md): imports point downward only, no module imports itself back
through others, and no source file grows past MAX_LINES.

Every `import` and `from ... import` of every src/vlmtune/**/*.py is read with `ast` — at module level and inside
functions alike (an import inside a function is still a dependency: it runs on the first call instead of at
import time), relative imports resolved, `if TYPE_CHECKING:` ones included (the annotation still names the module).
Only `importlib.import_module` with a computed name (data/formats/__init__.py, the same layer) is invisible.

- **upward**: a module imports one of a higher layer, or of another package of its own layer where that layer's
  packages stand side by side (export, serve, chart, retrieval, demo) — except the pairs in SIDEWAYS_ALLOWED.
- **cycles**: the strongly connected components of the graph of ALL imports, function-level ones included. A cycle
  "fixed" by moving one import into a function is the same knot (issue 22 counts 134 such imports, many placed only
  to dodge a circle): the two modules still cannot be understood, tested or moved apart, and the import order is
  decided by whichever function runs first. Importing `a.b.c` also runs the __init__.py of the packages `a.b` and
  `a` first: that is an edge too, to each such package the importer is not itself inside (chart/lm.py importing
  chart/reason/llm.py runs chart/reason/__init__.py, which imports chart.lm back: a real circle, the
  partially-initialised-module ImportError). A module inside the package is not given that edge: a registry such as
  models/__init__.py gathering `llava`, whose file imports `vlmtune.models.family`, is no cycle.
- **long files**: more than MAX_LINES lines.

Today's violations are the known-debt lists below. The test fails on a violation not listed AND on a listed one that
no longer exists, so the lists only shrink: whoever fixes one removes its entry in the same commit.

- **imports inside functions**: imports sit at module level. The exceptions, each on purpose: a library of
  LAZY_LIBRARIES (heavy or optional: imported where it is used, so `vlmtune --help`, `vlmtune data ...` and the
  import of any vlmtune module start without torch, transformers or FastAPI — test_the_cli_starts_without_them
  holds that), and any import with a comment saying why, on its line or the line above (`# lazy: <why>`). Anything
  else inside a function fails. See the counts with `make layers` (`python tests/test_layers.py`).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO

SRC = REPO / "src" / "vlmtune"
MAX_LINES = 450

LAYERS: dict[str, int] = {
    "vlmtune": 0,  # the package's own __init__.py: imported before any of its modules, so it imports none
    "config": 0,
    "io": 0,  # atomic writes and file hashes: imports nothing of vlmtune
    "data": 1,
    "models": 2,
    "runs": 3,
    "infer": 4,
    "eval": 5, "remote": 5,
    "train": 6,
    "export": 7, "serve": 7, "chart": 7, "retrieval": 7, "demo": 7,
    "cli": 8,
}
"""Each top-level module or package of src/vlmtune -> its layer, bottom (0) to top. A new one must be added here and
to docs/architecture.md, or the test fails."""

SIDE_BY_SIDE = {7}
"""Layers whose packages may not import each other (the applications built on train/eval/infer)."""

SIDEWAYS_ALLOWED = {("serve", "retrieval")}
"""serve -> retrieval: `vlmtune serve --index` answers with catalogue items (retrieval/index.py) and serves the
dual encoder's /v1/retrieve; the server is the one place both meet, retrieval knows nothing of serving."""

KNOWN_UPWARD: set[str] = set()
"""`importer -> imported` (module names without the `vlmtune.` prefix)."""

KNOWN_CYCLES: set[frozenset[str]] = set()
"""Each cycle is the set of modules of one strongly connected component."""

KNOWN_LONG: set[str] = set()
"""Files over MAX_LINES lines, relative to src/vlmtune."""

LAZY_LIBRARIES: dict[str, str] = {
    # heavy: 0.1 s or more to import (bench/import_times.py; BENCHMARKS.md "Import times"), paid only by the commands
    # that compute with them
    "torch": "heavy", "transformers": "heavy", "peft": "heavy (imports bitsandbytes when installed)",
    "accelerate": "heavy (imports torch)", "safetensors": "safetensors.torch imports torch",
    "datasets": "heavy", "pyarrow": "heavy", "matplotlib": "heavy", "scipy": "scipy.optimize is heavy",
    "huggingface_hub": "its download and validation modules are heavy; only to resolve a hub id",
    "pycocoevalcap": "only to score captions", "sacrebleu": "only to score translations",
    "openpyxl": "only to read an .xlsx",
    "av": "PyAV (FFmpeg): only to read or write a video file",
    # optional: extras of pyproject.toml; the command that needs one names the extra when it is missing
    "bitsandbytes": "optional (qlora extra)", "uvicorn": "optional (serve extra)", "fastapi": "optional (serve extra)",
}
"""Third-party libraries imported inside the functions that use them, on purpose (see the module docstring)."""


# ---------------------------------------------------------------- the checker


@dataclass(frozen=True)
class Import:
    importer: str
    """Dotted module name of the importing file (`vlmtune.data.ocr`; a package's __init__.py is the package)."""
    imported: str
    """The module of the package it names (the longest existing prefix of the name, or the `from` module's child
    when the imported name is a submodule)."""
    line: int
    in_function: bool
    commented: bool
    """A comment on the import's lines or on the line above it."""
    implicit: bool = False
    """Not written: the __init__.py of a package on the way to the imported module, run first."""


def modules_of(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under `root` (the directory of `package`)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join([package, *parts])] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `name` that is a module of the package; None outside it."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The imports of one file that name modules of the package."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text, filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    seen: set[tuple[str, int]] = set()

    def commented(node: ast.stmt) -> bool:
        own = lines[node.lineno - 1 : node.end_lineno]
        above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
        return any("#" in line for line in own) or above.startswith("#")

    def add(node: ast.stmt, target: str, in_function: bool) -> None:
        resolved = _resolve(target, modules)
        # one Import per statement and module: `from x import a, b` is one import of x
        if resolved is not None and resolved != module and (resolved, node.lineno) not in seen:
            seen.add((resolved, node.lineno))
            found.append(Import(module, resolved, node.lineno, in_function, commented(node)))
            parts = resolved.split(".")[:-1]
            while parts:  # the packages whose __init__.py runs first, outside the importer's own packages
                package_ = ".".join(parts)
                inside = module == package_ or module.startswith(package_ + ".")
                if not inside and package_ in modules and (package_, node.lineno) not in seen:
                    seen.add((package_, node.lineno))
                    found.append(Import(module, package_, node.lineno, in_function, commented(node), implicit=True))
                parts.pop()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(child, alias.name, in_function)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: from the file's package, one level up per extra dot
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                for alias in child.names:
                    sub = f"{source}.{alias.name}"
                    add(child, sub if sub in modules else source, in_function)
            else:
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def scan(root: Path, package: str) -> tuple[dict[str, Path], list[Import]]:
    modules = modules_of(root, package)
    return modules, [imp for m, p in modules.items() for imp in imports_of(m, p, modules)]


def short(module: str, package: str) -> str:
    """`vlmtune.data.ocr` -> `data.ocr`; the package itself keeps its name."""
    return module.removeprefix(package + ".") if module != package else package


def component(module: str, package: str) -> str:
    """The top-level module or package a module belongs to (`vlmtune.data.formats.coco` -> `data`)."""
    return short(module, package).split(".")[0]


def unplaced(modules: dict[str, Path], package: str, layers: dict[str, int]) -> set[str]:
    return {component(m, package) for m in modules} - set(layers)


def upward(imports: list[Import], package: str, layers: dict[str, int], side_by_side: set[int] = frozenset(),
           allowed: set[tuple[str, str]] = frozenset()) -> set[str]:
    """`importer -> imported` for each import that points to a higher layer, or sideways between packages of a
    side-by-side layer (unless allowed)."""
    out = set()
    for imp in imports:
        if imp.implicit:  # its package's written import is reported already
            continue
        a, b = component(imp.importer, package), component(imp.imported, package)
        la, lb = layers[a], layers[b]
        if lb > la or (lb == la and a != b and la in side_by_side and (a, b) not in allowed):
            out.add(f"{short(imp.importer, package)} -> {short(imp.imported, package)}")
    return out


def cycles(imports: list[Import], package: str) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.importer, set()).add(imp.imported)
        graph.setdefault(imp.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = set()
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component_ = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component_.add(member)
                        if member == node:
                            break
                    if len(component_) > 1:
                        out.add(frozenset(short(m, package) for m in component_))
    return out


@dataclass(frozen=True)
class InnerImport:
    file: str
    """Relative to the package root."""
    line: int
    names: tuple[str, ...]
    """The modules it names (`from a.b import c` -> a.b; relative ones start with dots)."""
    commented: bool


def inner_imports(root: Path) -> list[InnerImport]:
    """Every import statement inside a function (or lambda) of every .py under `root`, its own or the package's."""
    out = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for fn in ast.walk(ast.parse(text, filename=str(path))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):  # a nested function's imports are seen twice; the set below keeps one
                if isinstance(node, ast.Import):
                    names = tuple(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    names = ("." * node.level + (node.module or ""),)
                else:
                    continue
                own = lines[node.lineno - 1 : node.end_lineno]
                above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                commented = any("#" in line for line in own) or above.startswith("#")
                out.append(InnerImport(str(path.relative_to(root)), node.lineno, names, commented))
    return sorted(set(out), key=lambda i: (i.file, i.line))


def misplaced(found: list[InnerImport], package: str, lazy: dict[str, str]) -> list[str]:
    """`file:line  module` for each import inside a function that is neither commented nor of a lazy library."""
    out = []
    for imp in found:
        for name in imp.names:
            root_ = name.split(".")[0]
            if not imp.commented and (name.startswith(".") or root_ == package or root_ not in lazy):
                out.append(f"{imp.file}:{imp.line}  {name}")
    return out


def long_files(root: Path, max_lines: int = MAX_LINES) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.py")
            if len(p.read_text(encoding="utf-8").splitlines()) > max_lines}


def check(root: Path, package: str, layers: dict[str, int], side_by_side: set[int] = frozenset(),
          allowed: set[tuple[str, str]] = frozenset(), max_lines: int = MAX_LINES) -> dict:
    modules, imports = scan(root, package)
    missing = unplaced(modules, package, layers)
    assert not missing, f"not in any layer: {sorted(missing)}: add them to LAYERS and docs/architecture.md"
    return {"upward": upward(imports, package, layers, side_by_side, allowed), "cycles": cycles(imports, package),
            "long": long_files(root, max_lines), "imports": imports}


def _differences(name: str, found: set, known: set, show=str) -> list[str]:
    new = sorted(map(show, found - known))
    gone = sorted(map(show, known - found))
    out = []
    if new:
        out.append(f"new {name} (fix it; a layer change goes to docs/architecture.md first):\n  " + "\n  ".join(new))
    if gone:
        out.append(f"fixed {name}, still listed as known debt (remove it from the list):\n  " + "\n  ".join(gone))
    return out


def _show_cycle(members: frozenset[str]) -> str:
    return "{" + ", ".join(sorted(members)) + "}"


def report(imports: list[Import], package: str, layers: dict[str, int]) -> str:
    """How many internal imports are inside functions, and those of them with no comment saying why."""
    imports = [i for i in imports if not i.implicit]
    inside = [i for i in imports if i.in_function]
    bare = sorted((i for i in inside if not i.commented), key=lambda i: (i.importer, i.line))
    up = upward(imports, package, layers, SIDE_BY_SIDE, SIDEWAYS_ALLOWED)
    lines = [f"{len(inside)} of {len(imports)} internal imports are inside functions; {len(bare)} of them carry no "
             "comment saying why:"]
    for i in bare:
        edge = f"{short(i.importer, package)} -> {short(i.imported, package)}"
        lines.append(f"  {i.importer.replace('.', '/')}:{i.line}  {edge}{'  (upward)' if edge in up else ''}")
    return "\n".join(lines)


# ---------------------------------------------------------------- src/vlmtune


def test_vlmtune_layers_hold_except_the_known_debt():
    found = check(SRC, "vlmtune", LAYERS, SIDE_BY_SIDE, SIDEWAYS_ALLOWED)
    config = sorted({i.imported for i in found["imports"] if component(i.importer, "vlmtune") == "config"
                     and component(i.imported, "vlmtune") != "config"})
    assert not config, f"config/ imports nothing of vlmtune but itself, not even the package root; it imports {config}"
    print(report(found["imports"], "vlmtune", LAYERS))
    problems = (_differences("upward imports", found["upward"], KNOWN_UPWARD)
                + _differences("import cycles", found["cycles"], KNOWN_CYCLES, _show_cycle)
                + _differences(f"files over {MAX_LINES} lines", found["long"], KNOWN_LONG))
    assert not problems, "\n".join(problems)


def test_imports_sit_at_module_level_unless_lazy_on_purpose():
    found = inner_imports(SRC)
    assert len(found) > 100  # not vacuous: torch and transformers are imported where used, across the package
    bad = misplaced(found, "vlmtune", LAZY_LIBRARIES)
    assert not bad, ("imports inside functions: move them to the top of the file, or say why on the line "
                     "(`# lazy: <why>`); a heavy or optional library goes to LAZY_LIBRARIES:\n  " + "\n  ".join(bad))
    used = {n.split(".")[0] for i in found for n in i.names}
    assert set(LAZY_LIBRARIES) <= used | {"fastapi"}, f"listed but never imported lazily: {set(LAZY_LIBRARIES) - used}"


def _modules_after(code: str, block: str = "") -> set[str]:
    """The top-level modules loaded by a fresh interpreter running `code`; `block`: a module made unimportable."""
    prelude = f"import sys; sys.modules[{block!r}] = None\n" if block else ""
    script = prelude + code + "\nimport json, sys; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(SRC.parent)}, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_the_cli_starts_without_them():
    """The purpose of LAZY_LIBRARIES: building the whole command line (`vlmtune --help`, and what every command does
    before its work) and importing every vlmtune module a command reads (not the serving app) loads none of them."""
    every = ("import pkgutil, importlib, vlmtune, vlmtune.cli\nvlmtune.cli.build_parser()\n"
             "for m in pkgutil.walk_packages(vlmtune.__path__, 'vlmtune.'):\n"
             "    if not m.name.endswith('__main__') and not m.name.startswith('vlmtune.serve.'):\n"
             "        importlib.import_module(m.name)")
    loaded = _modules_after(every)
    assert "vlmtune" in loaded and "numpy" in loaded  # the probe sees what it loads
    assert not loaded & set(LAZY_LIBRARIES), sorted(loaded & set(LAZY_LIBRARIES))


def test_vlmtune_works_without_the_serve_extra():
    """FastAPI is optional: without it the CLI starts and vlmtune.serve imports (serve() then names the extra)."""
    assert "vlmtune" in _modules_after("import vlmtune.cli, vlmtune.serve\nvlmtune.cli.build_parser()", "fastapi")
    with pytest.raises(AssertionError, match="fastapi"):  # the block works: importing the app itself fails
        _modules_after("import vlmtune.serve.app", "fastapi")


def test_the_scan_sees_the_package():
    """Not vacuous: the scan reads every file and finds imports of every kind."""
    modules, imports = scan(SRC, "vlmtune")
    assert {"vlmtune.config", "vlmtune.train.loop", "vlmtune.cli", "vlmtune.models"} <= set(modules)
    assert len(imports) > 250
    assert any(i.in_function for i in imports) and any(not i.in_function for i in imports)
    # eval/tasks/__init__.py: `from vlmtune.eval.tasks import caption, ...` names submodules
    assert any(i.importer == "vlmtune.eval.tasks" and i.imported == "vlmtune.eval.tasks.caption" for i in imports)


# ---------------------------------------------------------------- the checker on a fake package


FAKE_LAYERS = {"pkg": 0, "low": 0, "mid": 1, "app1": 2, "app2": 2}


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


CLEAN = {
    "__init__.py": "",
    "low.py": "import os\n",
    "mid/__init__.py": "from pkg.mid import a, b\n",
    "mid/a.py": "from pkg import low\nfrom . import b\n",
    "mid/b.py": "from ..low import os\n",
    "app1.py": "import pkg.mid.a\n\ndef f():\n    from pkg.mid import b  # lazy: only when asked\n    return b\n",
    "app2.py": "from pkg.low import *\n",
}


def test_a_clean_package_passes(tmp_path):
    root = _write(tmp_path, CLEAN)
    found = check(root, "pkg", FAKE_LAYERS, {2})
    assert (found["upward"], found["cycles"], found["long"]) == (set(), set(), set())
    edges = {(short(i.importer, "pkg"), short(i.imported, "pkg"), i.in_function, i.commented)
             for i in found["imports"] if not i.implicit}
    assert edges == {("mid", "mid.a", False, False), ("mid", "mid.b", False, False), ("mid.a", "low", False, False),
                     ("mid.a", "mid.b", False, False), ("mid.b", "low", False, False),
                     ("app1", "mid.a", False, False), ("app1", "mid.b", True, True), ("app2", "low", False, False)}


def test_an_upward_import_is_reported_even_inside_a_function(tmp_path):
    root = _write(tmp_path, {**CLEAN, "low.py": "def f():\n    from .mid import a\n    return a\n"})
    found = check(root, "pkg", FAKE_LAYERS, {2})
    assert found["upward"] == {"low -> mid.a"}
    assert "pkg/low:2  low -> mid.a  (upward)" in report(found["imports"], "pkg", FAKE_LAYERS)


def test_a_sideways_import_between_side_by_side_packages_is_reported(tmp_path):
    root = _write(tmp_path, {**CLEAN, "app2.py": "import pkg.app1\n"})
    assert check(root, "pkg", FAKE_LAYERS, {2})["upward"] == {"app2 -> app1"}
    assert check(root, "pkg", FAKE_LAYERS, {2}, allowed={("app2", "app1")})["upward"] == set()


def test_a_cycle_is_reported_through_a_function_level_import(tmp_path):
    root = _write(tmp_path, {**CLEAN, "mid/b.py": "def g():\n    from pkg.mid.a import low\n"})
    found = check(root, "pkg", FAKE_LAYERS, {2})
    assert found["cycles"] == {frozenset({"mid.a", "mid.b"})}
    assert found["upward"] == set()


def test_a_cycle_through_a_packages_init_is_reported(tmp_path):
    """mid/a.py imports mid/sub/c.py; Python runs mid/sub/__init__.py first, and it imports mid.a back."""
    files = {**CLEAN, "mid/sub/__init__.py": "from pkg.mid.a import low\n", "mid/sub/c.py": "X = 1\n",
             "mid/a.py": "from pkg import low\nfrom pkg.mid.sub.c import X\n"}
    found = check(_write(tmp_path, files), "pkg", FAKE_LAYERS, {2})
    assert found["cycles"] == {frozenset({"mid.a", "mid.sub"})}
    # inside the package it is no edge: a registry's member importing a sibling through the package path
    files["mid/sub/__init__.py"] = "from pkg.mid.sub import c\n"
    files["mid/sub/c.py"] = "from pkg.mid.sub.d import Y\n"
    files["mid/sub/d.py"] = "Y = 1\n"
    files["mid/a.py"] = "from pkg import low\n"
    assert check(_write(tmp_path, files), "pkg", FAKE_LAYERS, {2})["cycles"] == set()


def test_a_long_file_is_reported(tmp_path):
    root = _write(tmp_path, {**CLEAN, "mid/a.py": "x = 1\n" * (MAX_LINES + 1)})
    assert check(root, "pkg", FAKE_LAYERS)["long"] == {"mid/a.py"}
    root = _write(tmp_path, {**CLEAN, "mid/a.py": "x = 1\n" * MAX_LINES})
    assert check(root, "pkg", FAKE_LAYERS)["long"] == set()


def test_a_module_outside_every_layer_fails(tmp_path):
    root = _write(tmp_path, {**CLEAN, "utils.py": ""})
    with pytest.raises(AssertionError, match=r"not in any layer: \['utils'\]"):
        check(root, "pkg", FAKE_LAYERS)


def test_an_import_inside_a_function_needs_a_reason(tmp_path):
    root = _write(tmp_path, {**CLEAN, "mid/b.py": (
        "def f():\n    import json\n    import torch\n    from pkg import low\n    from . import a  # lazy: why\n"
        "    # lazy: heavy\n    import sympy\n    return lambda: __import__('os')\n")})
    found = inner_imports(root)
    assert [(i.file, i.line, i.names, i.commented) for i in found if i.file.startswith("mid")] == [
        ("mid/b.py", 2, ("json",), False), ("mid/b.py", 3, ("torch",), False), ("mid/b.py", 4, ("pkg",), False),
        ("mid/b.py", 5, (".",), True), ("mid/b.py", 7, ("sympy",), True)]
    assert misplaced(found, "pkg", {"torch": "heavy"}) == ["mid/b.py:2  json", "mid/b.py:4  pkg"]


def test_fixed_and_new_debt_are_both_named():
    problems = _differences("upward imports", {"a -> b", "c -> d"}, {"c -> d", "e -> f"})
    assert problems == ["new upward imports (fix it; a layer change goes to docs/architecture.md first):\n  a -> b",
                        "fixed upward imports, still listed as known debt (remove it from the list):\n  e -> f"]


if __name__ == "__main__":  # `make layers`: the whole picture, debt included
    found = check(SRC, "vlmtune", LAYERS, SIDE_BY_SIDE, SIDEWAYS_ALLOWED)
    print(f"upward imports ({len(found['upward'])}):", *sorted(found["upward"]), sep="\n  ")
    print(f"import cycles ({len(found['cycles'])}):", *map(_show_cycle, found["cycles"]), sep="\n  ")
    print(f"files over {MAX_LINES} lines ({len(found['long'])}):", *sorted(found["long"]), sep="\n  ")
    print(report(found["imports"], "vlmtune", LAYERS))
    inner = inner_imports(SRC)
    bad = misplaced(inner, "vlmtune", LAZY_LIBRARIES)
    print(f"{len(inner)} import statements inside functions; {len(bad)} neither commented nor of LAZY_LIBRARIES:",
          *bad, sep="\n  ")
