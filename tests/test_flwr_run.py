"""End to end: ``flwr run .`` in local simulation against a private SuperLink, then the results file."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from laq_fl.flower.local_run import flwr_run, free_port, owned_processes, private_env, start_superlink, stop_processes
from laq_fl.results import read_results


@pytest.fixture
def superlink():
    base = Path(tempfile.mkdtemp(prefix="laqfl", dir="/tmp"))  # short: Ray's socket paths live under it
    port = free_port()
    env = private_env(base, port)
    process = start_superlink(base, env, port)
    yield base, env
    stop_processes([process.pid])
    process.wait(timeout=10)
    assert not owned_processes([process.pid])[0]
    listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
    assert f"127.0.0.1:{port} " not in listening


def test_flwr_run_writes_the_results_file(superlink, mnist_dir: str) -> None:
    base, env = superlink
    rounds = 4
    run = flwr_run(
        REPO_ROOT,
        env,
        {"num-clients": 3, "rounds": rounds, "data-dir": mnist_dir, "out-dir": str(base / "out"), "run-name": "e2e"},
        num_supernodes=3,
    )
    assert run["status"] == "finished:completed", run["details"] + run["logs"][-3000:]
    rows, status = read_results(base / "out" / "e2e.jsonl")
    assert [row["round"] for row in rows] == list(range(rounds + 1)) and status["status"] == "completed"
    first, last = rows[1], rows[-1]
    assert first["uploads"] == 3  # every worker's first upload is forced
    assert first["payload-bits"] == 3 * (32 + 4 * 7850)
    assert first["uplink-bytes"] > first["payload-bits"] / 8 and first["downlink-bytes"] > 3 * 4 * 7850
    assert last["uploads-cum"] == sum(row["uploads"] for row in rows)
    assert last["train-loss"] < first["train-loss"] and last["test-accuracy"] > rows[0]["test-accuracy"]
    assert "LAQ summary" in run["logs"]


def test_flwr_run_with_more_supernodes_than_clients_stops_before_round_one(superlink) -> None:
    base, env = superlink
    run_config = {"dataset": "synthetic", "num-clients": 2, "rounds": 3, "out-dir": str(base / "out"), "run-name": "extra"}
    run = flwr_run(REPO_ROOT, env, run_config, num_supernodes=3)
    assert run["status"] == "finished:failed"
    rows, status = read_results(base / "out" / "extra.jsonl")
    assert [row["round"] for row in rows] == [0] and status["status"] == "failed"
    # The results file says why; the log stream (flwr log --stream) may end before a fast failure's last lines.
    assert "3 node(s) connected for num-clients=2" in status["error"], status


def test_flwr_run_rejects_a_bad_key_before_round_one(superlink) -> None:
    base, env = superlink
    run = flwr_run(REPO_ROOT, env, {"bits": 17, "num-clients": 2, "out-dir": str(base / "out")}, num_supernodes=2)
    assert run["status"] == "finished:failed"
    assert "bits" in run["details"] + run["logs"]
    assert not (base / "out").exists()
