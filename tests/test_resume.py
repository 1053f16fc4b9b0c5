"""Checkpoint and resume: a ServerApp that dies mid-run and is started again with ``resume = true`` (new run, new
nodes, every worker's state lost) ends with the uninterrupted run's iterate, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from laq_fl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from laq_fl.config import AlgorithmConfig, ConfigError
from laq_fl.flower.client import handle_train
from laq_fl.flower.grid import InProcessGrid
from laq_fl.flower.serverapp import run_server
from laq_fl.results import read_results
from laq_fl.run_config import parse_run_config
from laq_fl.protocol import Sync, record_columns
from laq_fl.server_state import ServerState

ROUNDS = 12


class CrashingGrid(InProcessGrid):
    """Raises (the SuperLink went away) when the ServerApp first sends messages of round ``crash_round`` or later."""

    def __init__(self, run_config: dict, crash_round: int | None = None, seed: int = 0) -> None:
        super().__init__(handle_train, run_config["num-clients"], run_config, seed=seed)
        self.crash_round = crash_round

    def push_messages(self, messages):
        messages = list(messages)
        rounds = [int(message.metadata.group_id.split("-")[0]) for message in messages]
        if self.crash_round is not None and any(r >= self.crash_round for r in rounds):
            raise ConnectionError("the SuperLink went away")
        return super().push_messages(messages)


def serve(run_config: dict, grid: InProcessGrid, run_id: int = 1):
    context = Context(run_id=run_id, node_id=1, node_config={}, state=RecordDict(), run_config=dict(run_config))
    (theta,) = run_server(grid, context).arrays.to_numpy_ndarrays()
    return theta


MEMBERS = {
    "laq": {"algorithm": "laq", "t-bar": 3},
    "laq-two-way": {"algorithm": "laq", "downlink-bits": 4, "t-bar": 3},
    "slaq-wk2": {"algorithm": "slaq-wk2", "batch-size": 100, "t-bar": 3},
    "laq-ps": {"algorithm": "laq-ps", "t-bar": 3},
}


@pytest.mark.parametrize("member", list(MEMBERS))
def test_a_resumed_run_ends_with_the_uninterrupted_iterate(tmp_path, task_identity, member: str) -> None:
    base = {"dataset": "synthetic", "num-clients": 3, "data-dir": "/unused", "rounds": ROUNDS, "lr": 0.05,
            "report-every": 1, **MEMBERS[member]}
    whole = serve({**base, "out-dir": str(tmp_path / "whole"), "run-name": "r"}, CrashingGrid(base))

    run_config = {**base, "out-dir": str(tmp_path / "cut"), "run-name": "r", "checkpoint-every": 4}
    with pytest.raises(ConnectionError):
        serve(run_config, CrashingGrid(run_config, crash_round=7))
    rows, status = read_results(tmp_path / "cut" / "r.jsonl")
    assert status["status"] == "failed" and 6 <= rows[-1]["round"] < ROUNDS  # laq-ps may send nothing in round 7
    _, meta = load_checkpoint(tmp_path / "cut" / "checkpoints" / "r.npz")
    assert meta["round"] == 4

    # A new run: new node ids, every context.state empty; the server restores each worker from its copies.
    resumed = serve({**run_config, "resume": True}, CrashingGrid(run_config, seed=1), run_id=2)
    np.testing.assert_array_equal(resumed, whole)
    rows, status = read_results(tmp_path / "cut" / "r.jsonl")
    whole_rows, _ = read_results(tmp_path / "whole" / "r.jsonl")
    assert [row["round"] for row in rows] == list(range(ROUNDS + 1)) and status["status"] == "completed"
    for key in ("uploads", "uploads-cum", "payload-bits", "train-loss", "test-accuracy"):
        assert [row[key] for row in rows] == [row[key] for row in whole_rows], key
    assert rows[5]["identified"] == 3 and rows[5]["restores"] == 3 - rows[5]["not-contacted"]  # every worker contacted


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path, task_identity) -> None:
    run_config = {"dataset": "synthetic", "num-clients": 2, "data-dir": "/unused", "rounds": 4, "out-dir": str(tmp_path),
                  "run-name": "r", "checkpoint-every": 2}
    serve(run_config, CrashingGrid(run_config))
    with pytest.raises(CheckpointError, match="other values of bits"):
        serve({**run_config, "bits": 8, "resume": True, "rounds": 6}, CrashingGrid(run_config))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        serve({**run_config, "run-name": "other", "resume": True}, CrashingGrid(run_config))
    # Longer than the checkpointed run: goes on from round 4 to 6.
    serve({**run_config, "rounds": 6, "resume": True}, CrashingGrid(run_config))
    rows, status = read_results(tmp_path / "r.jsonl")
    assert [row["round"] for row in rows] == list(range(7)) and status["status"] == "completed"


def test_checkpoint_round_trip_and_atomic_replace(tmp_path) -> None:
    config = AlgorithmConfig(algorithm="laq-ps", bits=4, downlink_bits=4)
    state = ServerState(np.linspace(-1, 1, 8, dtype=np.float32), config, 2)
    state.commit(0, np.ones(8, np.float32), 0.5)
    state.step()
    state.commit(0, np.full(8, 2.0, np.float32), 0.25)
    state.commit(1, np.full(8, -1.0, np.float32), 0.125)
    state.lost(1)
    path = tmp_path / "c.npz"
    save_checkpoint(path, state.to_arrays(), {"round": 1})
    save_checkpoint(path, state.to_arrays(), {"round": 2})  # replaces the first
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary left behind
    arrays, meta = load_checkpoint(path)
    back = ServerState.from_arrays(arrays, config, 2)
    assert meta["round"] == 2
    for name in ("theta", "aggregate"):
        np.testing.assert_array_equal(getattr(back, name), getattr(state, name))
    np.testing.assert_array_equal(back.downlink.theta_tilde, state.downlink.theta_tilde)
    assert back.workers.keys() == state.workers.keys() == {0, 1}
    assert back.record(1).sync is Sync.RESET and back.record(0).smoothness is not None
    for worker in (0, 1):
        saved, loaded = state.record(worker), back.record(worker)
        for name, _, kind in record_columns():
            if kind == "vector":
                np.testing.assert_array_equal(getattr(loaded, name), getattr(saved, name))
            else:
                assert getattr(loaded, name) == getattr(saved, name), name
    (tmp_path / "bad.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "bad.npz")


def test_resume_needs_a_run_name() -> None:
    with pytest.raises(ValueError, match="resume: needs run-name"):
        parse_run_config({"resume": True})


def test_an_unnamed_run_resumes_under_its_default_name_and_a_finished_one_returns_its_model(tmp_path, task_identity) -> None:
    run_config = {"dataset": "synthetic", "num-clients": 2, "data-dir": "/unused", "rounds": 4, "out-dir": str(tmp_path),
                  "checkpoint-every": 2}
    whole = serve(run_config, CrashingGrid(run_config), run_id=77)
    assert (tmp_path / "checkpoints" / "laq-logistic-77.npz").is_file()
    again = serve({**run_config, "resume": True, "run-name": "laq-logistic-77"}, CrashingGrid(run_config), run_id=78)
    np.testing.assert_array_equal(again, whole)  # nothing left to run: the checkpoint's model


def test_failures_before_round_one_leave_a_status_line(tmp_path, task_identity) -> None:
    run_config = {"dataset": "synthetic", "num-clients": 3, "data-dir": "/unused", "rounds": 4, "out-dir": str(tmp_path),
                  "run-name": "few", "node-wait-timeout": 0.1}
    with pytest.raises(RuntimeError, match="only 2 node"):
        serve(run_config, CrashingGrid({**run_config, "num-clients": 2}))
    rows, status = read_results(tmp_path / "few.jsonl")
    assert rows == [] and status["status"] == "failed" and "only 2 node" in status["error"]
    before = (tmp_path / "few.jsonl").read_bytes()
    with pytest.raises(CheckpointError):
        serve({**run_config, "resume": True}, CrashingGrid(run_config))
    assert (tmp_path / "few.jsonl").read_bytes() == before  # the earlier run's record stays as it was
    with pytest.raises(CheckpointError):
        serve({**run_config, "resume": True, "run-name": "never-ran"}, CrashingGrid(run_config))
    _, status = read_results(tmp_path / "never-ran.jsonl")
    assert status["status"] == "failed" and "no checkpoint" in status["error"]


def test_a_refused_resume_leaves_a_completed_run_completed(tmp_path, task_identity) -> None:
    run_config = {"dataset": "synthetic", "num-clients": 2, "data-dir": "/unused", "rounds": 4, "out-dir": str(tmp_path),
                  "run-name": "done", "checkpoint-every": 2}
    serve(run_config, CrashingGrid(run_config))
    before = (tmp_path / "done.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match="lr"):
        serve({**run_config, "resume": True, "lr": 0.03}, CrashingGrid(run_config))
    assert (tmp_path / "done.jsonl").read_bytes() == before
    assert read_results(tmp_path / "done.jsonl")[1]["status"] == "completed"


def test_an_out_dir_that_cannot_be_made_stops_the_run_naming_the_key(tmp_path, task_identity) -> None:
    (tmp_path / "afile").write_text("")
    run_config = {"dataset": "synthetic", "num-clients": 2, "data-dir": "/unused", "rounds": 2,
                  "out-dir": str(tmp_path / "afile"), "run-name": "x"}
    with pytest.raises(ConfigError, match="cannot hold the results") as info:
        serve(run_config, CrashingGrid(run_config))
    assert info.value.key == "out-dir"


def test_absurd_d_and_run_names_are_refused_naming_the_key() -> None:
    for values, key in [({"D": 10**9}, "D"), ({"run-name": "x" * 250}, "run-name"), ({"run-name": "a\nb"}, "run-name")]:
        with pytest.raises(ConfigError) as info:
            parse_run_config(values)
        assert info.value.key == key


@pytest.mark.parametrize("name", ["../escape", "a/b", ".."])
def test_run_name_is_a_plain_file_name(name: str) -> None:
    with pytest.raises(ValueError, match="run-name: must be a plain file name"):
        parse_run_config({"run-name": name})
