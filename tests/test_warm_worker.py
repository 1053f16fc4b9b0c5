"""The warm worker: a ClientApp that forwards to it gives the same bits as one that computes, without torch."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, assert_same_bits
from flwr.app import Context, Message, MessageType, RecordDict

from client_app import app as client_app
from laq_fl.flower import InProcessGrid, run_server
from laq_fl.flower.messages import identify_content, read_identity
from laq_fl.flower.warm_worker import (
    MAGIC,
    WORKER_SOCKET_KEY,
    WarmWorkerError,
    WarmWorkerServer,
    WarmWorkerUnavailable,
    forward,
)
from laq_fl.results import read_results

RUN_CONFIG = {"dataset": "synthetic", "num-clients": 3, "data-dir": "/unused", "rounds": 8, "lr": 0.05,
              "report-every": 1, "checkpoint-every": 0}


@pytest.fixture
def socket_dir():
    folder = tempfile.mkdtemp(prefix="laqw", dir="/tmp")  # AF_UNIX paths are limited to 107 bytes
    yield Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def warm_worker(socket_dir: Path):
    server = WarmWorkerServer(socket_dir / "node.sock")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def run_app(tmp_path: Path, name: str, config: dict, socket_path: str | None) -> tuple[np.ndarray, list[dict], InProcessGrid]:
    run_config = {**RUN_CONFIG, **config, "out-dir": str(tmp_path), "run-name": name}
    grid = InProcessGrid(client_app, 3, run_config)
    if socket_path is not None:
        for context in grid.contexts.values():
            context.node_config[WORKER_SOCKET_KEY] = socket_path
    result = run_server(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                                      run_config=run_config))
    rows, status = read_results(tmp_path / f"{name}.jsonl")
    assert status["status"] == "completed"
    (theta,) = result.arrays.to_numpy_ndarrays()
    return theta, rows, grid


@pytest.mark.parametrize("config", [{"algorithm": "laq"}, {"algorithm": "laq", "downlink-bits": 4},
                                    {"algorithm": "slaq-wk2", "batch-size": 50, "lr": 0.02}])
def test_forwarding_to_a_warm_worker_is_bit_identical(tmp_path: Path, warm_worker: WarmWorkerServer, config: dict
                                                      ) -> None:
    local_theta, local_rows, local_grid = run_app(tmp_path, "local", config, None)
    warm_theta, warm_rows, warm_grid = run_app(tmp_path, "warm", config, str(warm_worker.path))
    assert_same_bits(warm_theta, local_theta)
    for key in ("uploads", "payload-bits", "downlink-payload-bits", "train-loss", "rejected", "resyncs"):
        assert [row.get(key) for row in warm_rows] == [row.get(key) for row in local_rows], key
    # The node state came back from the warm worker into context.state, byte for byte the local one's.
    for warm_context, local_context in zip(warm_grid.contexts.values(), local_grid.contexts.values()):
        assert warm_context.state.config_records == local_context.state.config_records
    assert warm_worker.handled == 3 * (RUN_CONFIG["rounds"] + 1)  # 3 identities, then 3 replies a round


def test_an_unreachable_warm_worker_falls_back_to_the_local_handler(tmp_path: Path, socket_dir: Path, caplog) -> None:
    local_theta, _, _ = run_app(tmp_path, "local", {}, None)
    theta, _, _ = run_app(tmp_path, "fallback", {}, str(socket_dir / "nobody-listens.sock"))
    assert_same_bits(theta, local_theta)
    assert "no warm worker answered" in caplog.text


def test_a_handler_error_in_the_warm_worker_reaches_the_client_app(warm_worker: WarmWorkerServer, task_identity
                                                                   ) -> None:
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 3},
                      state=RecordDict(), run_config={**RUN_CONFIG, "num-clients": 2})
    message = Message(RecordDict(), 7, MessageType.TRAIN)  # not a train request: the handler raises
    with pytest.raises(WarmWorkerError, match="does not fit num-clients=2"):
        forward(str(warm_worker.path), message, context)
    # The identify query answers the node-config error as content, as the local handler does.
    reply = forward(str(warm_worker.path), Message(identify_content(), 7, MessageType.QUERY), context)
    with pytest.raises(ValueError, match="does not fit num-clients=2"):
        read_identity(reply)


def test_a_malformed_request_is_dropped_and_the_worker_serves_on(warm_worker: WarmWorkerServer, task_identity
                                                                 ) -> None:
    for garbage in (b"", b"GET / HTTP/1.1\r\n\r\n", MAGIC + b"\xff" * 8, MAGIC + (3).to_bytes(8, "big") + b"[1]"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(str(warm_worker.path))
            connection.sendall(garbage)
            connection.shutdown(socket.SHUT_WR)
            connection.settimeout(10)
            try:
                answer = connection.recv(1 << 16)
            except ConnectionResetError:  # the worker closed with our bytes unread
                answer = b""
            assert answer == b""  # no reply: the worker dropped it
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 2, "num-partitions": 3},
                      state=RecordDict(), run_config=dict(RUN_CONFIG))
    reply = forward(str(warm_worker.path), Message(identify_content(), 7, MessageType.QUERY), context)
    assert read_identity(reply).partition == 2


def test_forward_to_a_missing_socket_raises_unavailable(socket_dir: Path, task_identity) -> None:
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config=dict(RUN_CONFIG))
    with pytest.raises(WarmWorkerUnavailable):
        forward(str(socket_dir / "missing.sock"), Message(identify_content(), 7, MessageType.QUERY), context)


def test_the_client_app_loads_without_torch() -> None:
    """A node served by a warm worker pays for Flower's import only, like Flower's own floor."""
    code = "import sys, client_app; assert 'torch' not in sys.modules, 'client_app imported torch'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)


def test_the_command_serves_and_stops_cleanly_on_sigterm(socket_dir: Path, task_identity) -> None:
    path = socket_dir / "cli.sock"
    process = subprocess.Popen([sys.executable, "-m", "laq_fl.flower.warm_worker", "--socket", str(path)],
                               cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        deadline = time.monotonic() + 120
        while not path.is_socket():
            assert process.poll() is None and time.monotonic() < deadline, "the warm worker did not start"
            time.sleep(0.1)
        assert path.stat().st_mode & 0o777 == 0o600
        context = Context(run_id=1, node_id=7, node_config={"partition-id": 1, "num-partitions": 3},
                          state=RecordDict(), run_config=dict(RUN_CONFIG))
        reply = forward(str(path), Message(identify_content(), 7, MessageType.QUERY), context)
        assert read_identity(reply).partition == 1
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert not path.exists()


def test_a_worker_that_does_not_answer_costs_one_timeout_then_the_node_computes_itself(tmp_path: Path,
                                                                                     socket_dir: Path) -> None:
    """A stopped (SIGSTOP) or hung warm worker: connections are accepted (the kernel's backlog) but never answered."""
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(socket_dir / "silent.sock"))
    silent.listen(16)
    try:
        expected, _, _ = run_app(tmp_path, "local", {"rounds": 2}, None)
        run_config = {**RUN_CONFIG, "rounds": 2, "out-dir": str(tmp_path), "run-name": "silent"}
        grid = InProcessGrid(client_app, 3, run_config)
        for context in grid.contexts.values():
            context.node_config.update({WORKER_SOCKET_KEY: str(socket_dir / "silent.sock"), "worker-timeout": 0.2})
        result = run_server(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                                          run_config=run_config))
    finally:
        silent.close()
    (theta,) = result.arrays.to_numpy_ndarrays()
    assert_same_bits(theta, expected)
    rows, status = read_results(tmp_path / "silent.jsonl")
    assert status["status"] == "completed" and sum(row["rejected"] + row["lost"] for row in rows) == 0


def test_the_reply_timeout_defaults_to_half_the_round_timeout() -> None:
    from laq_fl.flower.warm_worker import reply_timeout

    def context(node_config: dict, run_config: dict) -> Context:
        return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config)

    assert reply_timeout(context({}, {"round-timeout": 40.0})) == 20.0
    assert reply_timeout(context({}, {})) == 300.0
    assert reply_timeout(context({"worker-timeout": 3}, {"round-timeout": 40.0})) == 3.0


def test_a_client_stalled_mid_request_does_not_block_the_others(warm_worker: WarmWorkerServer, task_identity) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
        stalled.connect(str(warm_worker.path))
        stalled.sendall(MAGIC)  # and nothing more
        context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 3},
                          state=RecordDict(), run_config=dict(RUN_CONFIG))
        reply = forward(str(warm_worker.path), Message(identify_content(), 7, MessageType.QUERY), context, timeout=10)
        assert read_identity(reply).partition == 0


def test_a_second_worker_on_a_live_socket_is_refused_and_a_successor_keeps_its_socket(socket_dir: Path) -> None:
    path = socket_dir / "one.sock"
    first = WarmWorkerServer(path)
    thread = threading.Thread(target=first.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(FileExistsError, match="already serves"):
            WarmWorkerServer(path)
    finally:
        first.shutdown()
    # The first one stopped serving but has not closed yet; a successor replaces its (now dead) socket...
    first.socket.close()
    successor = WarmWorkerServer(path)
    first.server_close()  # ...and the first one's close leaves the successor's socket in place
    assert path.is_socket()
    successor.server_close()
    assert not path.exists()


def test_a_socket_path_too_long_is_refused_clearly(socket_dir: Path) -> None:
    with pytest.raises(ValueError, match="Unix sockets allow at most 107"):
        WarmWorkerServer(socket_dir / ("d" * 120 + ".sock"))
