"""The house rules on layout: one-way imports, gradio only in ``diffusion/ui/``, small modules.

* No import cycle among the project's modules (every ``.py`` under ``diffusion/`` and
  ``app.py``), counting imports inside functions too: a cycle that only works because
  one side imports late is still two modules that cannot be understood apart. Imports
  under ``if TYPE_CHECKING:`` are not counted: they never run.
* No module outside ``diffusion/ui/`` loads gradio, directly or through another module,
  checked in a fresh interpreter per module (one interpreter importing them one after
  another would see gradio already loaded by an earlier one).
* No source module over :data:`MAX_LINES` lines (house rule 11).
* Every package folder has an ``__init__.py``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "diffusion"
UI_PACKAGE = "diffusion.ui"
MAX_LINES = 400


def source_files(root: Path = ROOT, package: str = PACKAGE) -> list[Path]:
    """Every ``.py`` file of the package, and ``app.py`` when there is one."""
    files = sorted(p for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts)
    return files + ([root / "app.py"] if (root / "app.py").is_file() else [])


def module_name(path: Path, root: Path = ROOT) -> str:
    """``diffusion/lessons/heat/__init__.py`` → ``diffusion.lessons.heat``; ``app.py`` → ``app``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from … import`` names, relative imports included."""
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _run_time_nodes(tree: ast.AST) -> Iterable[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` (their ``else`` runs)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _names_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _names_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: Path, modules: dict[str, Path], root: Path = ROOT) -> set[str]:
    """The project modules that importing ``path``'s module can run, at any depth of its code.

    ``from a.b import c`` imports ``a.b.c`` when that is a module (file or package) and
    ``a.b`` otherwise; importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``,
    except the packages the importer itself sits in (Python has started those before it).
    """
    importer = module_name(path, root)
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _run_time_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(importer, is_package, node)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                targets.add(candidate if candidate in modules else base)
    own = importer.split(".")
    own_packages = {".".join(own[:i]) for i in range(1, len(own) + (1 if is_package else 0))}
    found = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name in modules and name not in own_packages and name != importer:
                found.add(name)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module → the project modules it imports."""
    files = source_files(root, package)
    modules = {module_name(p, root): p for p in files}
    return {name: imported_modules(path, modules, root) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, …, a]``, or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_the_cycle_finder_sees_a_cycle_through_a_submodule_and_a_late_import(tmp_path: Path) -> None:
    """The rule above can fail: a cycle hidden in a function and a ``from package import module``."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Docstring only."""\n')
    (pkg / "sub" / "__init__.py").write_text('"""Docstring only."""\n')
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def late():\n    from pkg import a\n    return a\n")
    (pkg / "c.py").write_text("from pkg.a import something_that_is_not_a_module\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\n"
                              "else:\n    import pkg.a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}
    assert graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.d"] == {"pkg.a"}  # only the branch that runs
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("import json\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None


GRADIO_PROBE = """
import importlib, json, sys, traceback

class Spy:  # remembers which project lines were running when gradio was first asked for
    via = None

    def find_spec(self, name, path=None, target=None):
        if name == "gradio" and Spy.via is None:
            Spy.via = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()
                       if "/diffusion/" in f.filename]
        return None

sys.meta_path.insert(0, Spy())
for module in sys.argv[1:]:  # gradio is absent before: if it appears, this module brought it
    importlib.import_module(module)
    if "gradio" in sys.modules:
        print(json.dumps({"module": module, "via": Spy.via}))
        break
else:
    print(json.dumps({"module": None, "via": None}))
"""


def _outside_ui() -> list[str]:
    """Every module under ``diffusion/`` outside ``diffusion/ui/``, except the ``__main__`` scripts."""
    names = (module_name(p) for p in source_files() if p.name != "__main__.py" and p.parent != ROOT)
    return sorted(n for n in names if n != UI_PACKAGE and not n.startswith(UI_PACKAGE + "."))


def _first_gradio_loader(modules: list[str]) -> tuple[str | None, list[str] | None]:
    """Import ``modules`` one after the other in a fresh interpreter; the first one after which gradio is loaded."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", GRADIO_PROBE, *modules], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, "a module could not be imported: " + done.stderr.strip()[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["module"], report["via"]


def test_main_scripts_call_only_checked_modules() -> None:
    """``__main__.py`` files are not imported below (that would run the CLI): what they import is."""
    checked = set(_outside_ui())
    files = source_files()
    modules = {module_name(p): p for p in files}
    for script in (p for p in files if p.name == "__main__.py"):
        unchecked = imported_modules(script, modules) - checked
        assert not unchecked, f"{script.relative_to(ROOT)} imports modules the gradio check skips: {unchecked}"


def test_only_the_ui_package_loads_gradio() -> None:
    """Import every core module, as a notebook would, and check gradio never comes along."""
    culprit, via = _first_gradio_loader(_outside_ui())
    assert culprit is None, f"{culprit} loads gradio via {' → '.join(via or ['?'])}"


def test_the_gradio_check_finds_a_module_that_loads_gradio() -> None:
    """The probe itself: it must name the module that brings gradio in, not a later one."""
    culprit, _ = _first_gradio_loader(["diffusion.errors", "diffusion.ui.widgets", "diffusion.images"])
    assert culprit == "diffusion.ui.widgets"


def test_no_core_module_imports_gradio_or_the_ui_even_late() -> None:
    """Imports inside functions run only when called, so the probe cannot see them; the source can."""
    files = source_files()
    modules = {module_name(p): p for p in files}
    problems = []
    for path in files:
        name = module_name(path)
        if name == UI_PACKAGE or name.startswith(UI_PACKAGE + ".") or path.parent == ROOT:
            continue
        ui = {m for m in imported_modules(path, modules) if m == UI_PACKAGE or m.startswith(UI_PACKAGE + ".")}
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(n == "gradio" or n.startswith("gradio.") for n in names):
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno} imports gradio")
        problems += [f"{path.relative_to(ROOT)} imports {m}" for m in sorted(ui)]
    assert not problems, "\n".join(problems)


def _line_counts(files: Iterable[Path]) -> dict[str, int]:
    return {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in files}


def test_no_module_is_over_400_lines() -> None:
    too_long = {path: n for path, n in _line_counts(source_files()).items() if n > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines:\n" + "\n".join(
        f"{path}: {n}" for path, n in sorted(too_long.items(), key=lambda item: -item[1]))


def test_every_package_folder_has_an_init() -> None:
    top = ROOT / PACKAGE
    folders = {p.parent for p in top.rglob("*.py") if "__pycache__" not in p.parts}
    folders |= {parent for folder in folders for parent in folder.parents if top in parent.parents}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders | {top} if not (f / "__init__.py").is_file())
    assert not missing, f"package folders without __init__.py: {missing}"
