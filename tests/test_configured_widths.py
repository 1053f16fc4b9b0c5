"""What travels has the width the run config asks for, in both directions and for every width it allows.

A width slip (codes packed with b - 1 bits where b was asked, say) keeps the compressor consistent with itself, so the
compressor's own tests pass; these tests start from the run-config value instead and check what the real ServerApp
and ClientApp send through the in-process Grid: the payload's byte size, the bits the results file counts, the codes
it holds (a b-bit grid's codes reach the upper half of 0..2^b - 1), and, for the broadcast, the error bound of LAQ's
grid, ``|theta - theta_tilde| <= R / (2^b - 1)`` with ``R`` the innovation's inf-norm (eq. 5-6).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, MessageType, RecordDict

from client_app import app as client_app
from laq_fl.codec import unpack_levels
from laq_fl.flower import InProcessGrid, LaqStrategy, run_rounds, run_server
from laq_fl.flower.messages import PAYLOAD, REPLY
from laq_fl.models import FlatModel
from laq_fl.results import read_results
from laq_fl.run_config import parse_run_config

M = 3
P = 7850  # synthetic logistic regression
RADIUS_BYTES = 4


class CapturingGrid(InProcessGrid):
    """Keeps every train message the server sends and every reply it gets, as they crossed the wire."""

    def __init__(self, run_config: dict) -> None:
        super().__init__(client_app, M, run_config)
        self.messages, self.replies = [], []

    def push_messages(self, messages):
        messages = list(messages)
        ids = list(super().push_messages(messages))
        for message in messages:
            if message.metadata.message_type == MessageType.TRAIN:
                self.messages.append(message)
                self.replies.append(self._replies[message.metadata.message_id])
        return ids


def grid_codes(payload: bytes, bits: int) -> np.ndarray:
    assert len(payload) == RADIUS_BYTES + (bits * P + 7) // 8, f"{len(payload)} bytes is not a {bits}-bit payload"
    return unpack_levels(payload[RADIUS_BYTES:], bits, P)


@pytest.mark.parametrize("bits", range(2, 17))
def test_every_broadcast_carries_the_configured_downlink_width(task_identity, bits: int) -> None:
    run_config = {"dataset": "synthetic", "num-clients": M, "data-dir": "/unused", "algorithm": "gd",
                  "downlink-bits": bits, "report-every": 0}
    settings = parse_run_config(run_config)
    grid = CapturingGrid(run_config)
    strategy = LaqStrategy(settings.algorithm, M, report_every=0)
    tildes = []
    run_rounds(strategy, grid, ArrayRecord([FlatModel.named("logistic").initial_parameters("glorot", 0)]), 4,
               on_round_end=lambda r: tildes.append((strategy.state.theta.copy(), strategy.state.downlink.theta_tilde.copy())))
    innovations = [message.content["instruction"]["theta-innovations"] for message in grid.messages[M:]]
    assert len(innovations) == 3 * M and all(len(chain) == 1 for chain in innovations)  # rounds 2-4: one each
    for (payload,) in innovations:
        codes = grid_codes(payload, bits)
        assert codes.max() >= 2 ** (bits - 1)  # a narrower grid never reaches the upper half
    assert all(message.content["instruction"]["downlink"] == f"grid bits={bits}" for message in grid.messages)
    stats = strategy.round_stats
    assert stats[1].downlink_payload_bits == M * 32 * P  # theta^0 in full
    assert all(stats[r].downlink_payload_bits == M * (32 + bits * P) for r in (2, 3, 4))
    for (_, before), (theta, after) in zip(tildes, tildes[1:]):
        radius = float(np.float32(np.max(np.abs(theta.astype(np.float64) - before))))
        error = np.max(np.abs(theta.astype(np.float64) - after))
        assert error <= radius / (2**bits - 1) * (1 + 1e-6) + 1e-7


@pytest.mark.parametrize(("algorithm", "bits"), [("laq", b) for b in range(1, 17)] + [("qsgd", b) for b in range(2, 17)])
def test_every_upload_carries_the_configured_width(tmp_path: Path, task_identity, algorithm: str, bits: int) -> None:
    run_config = {"dataset": "synthetic", "num-clients": M, "data-dir": "/unused", "algorithm": algorithm,
                  "bits": bits, "rounds": 2, "batch-size": 100, "out-dir": str(tmp_path), "run-name": "widths"}
    grid = CapturingGrid(run_config)
    run_server(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    uploads = [reply.content[REPLY][PAYLOAD] for reply in grid.replies if PAYLOAD in reply.content.get(REPLY, {})]
    assert len(uploads) >= M  # round 1 is forced
    for payload in uploads:
        codes = grid_codes(payload, bits)
        if algorithm == "laq" and bits > 1:
            assert codes.max() >= 2 ** (bits - 1)
    assert all(message.content["instruction"]["compressor"] == f"{'grid' if algorithm == 'laq' else 'qsgd'} bits={bits}"
               for message in grid.messages)
    rows, status = read_results(tmp_path / "widths.jsonl")
    assert status["status"] == "completed"
    assert all(row["payload-bits"] == row["uploads"] * (32 + bits * P) for row in rows[1:])
