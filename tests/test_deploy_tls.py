"""The deployment script runs as documented: TLS, SuperNode authentication, a SuperNode killed and restarted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT


def test_the_tls_deployment_survives_a_supernode_restart(tmp_path) -> None:
    """As the README recommends it: with a warm worker beside each SuperNode (the killed SuperNode's keeps running
    and serves the restarted one, whose state is lost and restored)."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "scripts/deploy_tls.py", "--warm"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=1500)
    summary = json.loads(done.stdout[done.stdout.index("{\n"):])
    assert done.returncode == 0 and summary["ok"], json.dumps(summary, indent=2) + done.stderr[-3000:]
    assert summary["status"] == "finished:completed" and summary["rounds-done"] == 12 and summary["warm-workers"]
    assert summary["restores"] + summary["resyncs"] >= 1
    assert abs(summary["final-train-loss"] - summary["undisturbed-train-loss"]) < 1e-3
