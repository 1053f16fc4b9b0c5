"""The library stays free of Flower: the math must be usable and testable alone."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO_ROOT

CHECK = """
import importlib, pkgutil, sys
import laq_fl
for module in pkgutil.walk_packages(laq_fl.__path__, "laq_fl."):
    importlib.import_module(module.name)
loaded = sorted(name for name in sys.modules if name == "flwr" or name.startswith("flwr."))
print("modules:", len([n for n in sys.modules if n.startswith("laq_fl")]))
if loaded:
    raise SystemExit("laq_fl imported Flower: " + ", ".join(loaded[:5]))
"""


def test_laq_fl_imports_no_flwr_module() -> None:
    completed = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO_ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr + completed.stdout
    assert int(completed.stdout.split("modules:")[1]) >= 10  # every module was really imported
