"""The math stays free of Flower: only the adapter subpackage ``laq_fl.flower`` may import flwr."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO_ROOT

ADAPTER = "laq_fl.flower"

CHECK = f"""
import importlib, pkgutil, sys
import laq_fl
# iter_modules, not walk_packages: walking a subpackage imports it.
names = [m.name for m in pkgutil.iter_modules(laq_fl.__path__, "laq_fl.") if m.name != "{ADAPTER}"]
for name in names:
    importlib.import_module(name)
loaded = sorted(n for n in sys.modules if n == "flwr" or n.startswith("flwr."))
print("modules:", len(names))
if loaded:
    raise SystemExit("the laq_fl math imported Flower: " + ", ".join(loaded[:5]))
"""


def test_laq_fl_math_imports_no_flwr_module() -> None:
    completed = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO_ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    assert int(completed.stdout.split("modules:")[1]) >= 12  # every math module was really imported


def test_only_the_adapter_names_flwr() -> None:
    offenders = []
    for path in (REPO_ROOT / "laq_fl").rglob("*.py"):
        if "flower" in path.relative_to(REPO_ROOT / "laq_fl").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] == "flwr"]
    assert offenders == []


LAYERS = [
    ("foundation", ["laq_fl.errors", "laq_fl._lazy", "laq_fl.arrays", "laq_fl.codec", "laq_fl.part_state"]),
    ("parts", ["laq_fl.compressors", "laq_fl.memory", "laq_fl.skip_rules", "laq_fl.downlink"]),
    ("protocol", ["laq_fl.protocol"]),
    ("algorithm", ["laq_fl.config", "laq_fl.worker", "laq_fl.server_state"]),
    ("problem", ["laq_fl.data", "laq_fl.models", "laq_fl.libsvm", "laq_fl.devices", "laq_fl.tasks", "laq_fl.problem"]),
    ("runs", ["laq_fl.run_config", "laq_fl.checkpoint", "laq_fl.results", "laq_fl.driver"]),
    ("flower", ["laq_fl.flower"]),
    ("facade", ["laq_fl"]),
]
"""The library's ladder, bottom first: a module may import its own layer and those below (a package name covers its
submodules), never one above; and no two modules import each other, however indirectly."""


def _layer_of(module: str) -> int:
    for depth, (_, members) in enumerate(LAYERS):
        if module in members or any(module.startswith(member + ".") for member in members if member != "laq_fl"):
            return depth
    raise AssertionError(f"{module} has no layer in tests/test_layering.py's LAYERS: place it on the ladder")


def import_graph() -> dict[str, set[str]]:
    """Module -> the laq_fl modules it imports anywhere in its source (functions and TYPE_CHECKING blocks too)."""
    package = REPO_ROOT / "laq_fl"
    modules = {}
    for path in package.rglob("*.py"):
        name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        own_package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = own_package.split(".")[: len(own_package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for candidate in candidates:
                while candidate and candidate not in modules:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name:
                    targets.add(candidate)
        graph[name] = targets
    return graph


def test_no_module_imports_a_higher_layer() -> None:
    upward = [f"{module} ({LAYERS[_layer_of(module)][0]}) imports {target} ({LAYERS[_layer_of(target)][0]})"
              for module, targets in import_graph().items() for target in sorted(targets)
              if _layer_of(target) > _layer_of(module) and not module.startswith(target + ".")]
    assert upward == []


def test_the_import_graph_has_no_circle() -> None:
    graph = import_graph()
    # A package's __init__ importing its own submodules (and them importing it) is how packages work, not a circle.
    edges = {module: {t for t in targets if not module.startswith(t + ".")} for module, targets in graph.items()}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for target in sorted(edges[module]):
            if seen.get(target) == 1:
                circles.append(path[path.index(target):] + [target])
            elif target not in seen:
                visit(target, [*path, target])
        seen[module] = 2

    for module in sorted(edges):
        if module not in seen:
            visit(module, [module])
    assert circles == []
