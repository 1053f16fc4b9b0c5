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
