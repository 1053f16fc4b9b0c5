"""Two-way broadcasts: the iterate's innovation, versions, catching up, and checksums."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_same_bits
from laq_fl.compressors import Grid, TernGrad
from laq_fl.downlink import NO_VERSION, Broadcast, Downlink, StaleIterateError, state_checksum
from laq_fl.worker import WorkerState


def walk(size: int, steps: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=size).astype(np.float32)
    path = [theta]
    for _ in range(steps):
        theta = (theta - 0.05 * rng.normal(size=size)).astype(np.float32)
        path.append(theta)
    return path


@pytest.mark.parametrize("bits", [1, 4, 8, 16])
def test_round_trip_and_error_bound(bits: int) -> None:
    """theta_tilde on both sides is bit-identical, and |theta - theta_tilde| <= R / (2^b - 1) with R the innovation's
    inf-norm (eq. 5-6 applied to theta^{k+1} - theta_tilde^k)."""
    path = walk(257, 12)
    downlink = Downlink(path[0], Grid(bits))
    worker = WorkerState.zeros(257)
    worker.receive(downlink.broadcast(NO_VERSION))
    for theta in path[1:]:
        innovation = theta.astype(np.float64) - downlink.theta_tilde
        downlink.step(theta)
        broadcast = downlink.broadcast(worker.theta_version)
        assert len(broadcast.innovations) == 1 and broadcast.theta is None
        assert_same_bits(worker.receive(broadcast, downlink.compressor), downlink.theta_tilde)
        radius = float(np.float32(np.max(np.abs(innovation))))
        error = np.max(np.abs(theta.astype(np.float64) - downlink.theta_tilde))
        assert error <= radius / (2**bits - 1) * (1 + 1e-6) + 1e-6  # float32 rounding of theta_tilde on top
        assert worker.theta_version == downlink.version


def test_what_one_broadcast_misses_is_carried_to_the_next() -> None:
    """The server keeps the exact theta, so a fixed theta is approached geometrically (by 1/(2^b - 1) per broadcast)
    rather than left at one broadcast's error."""
    theta = walk(100, 0)[0]
    downlink = Downlink(np.zeros(100, np.float32), Grid(2))
    errors = []
    for _ in range(30):
        downlink.step(theta)
        errors.append(np.max(np.abs(theta - downlink.theta_tilde)))
    assert errors[-1] < 1e-4 * errors[0]


def test_a_worker_behind_gets_the_innovations_it_missed_or_the_full_iterate() -> None:
    path = walk(64, 40)
    downlink = Downlink(path[0], Grid(4))
    worker = WorkerState.zeros(64)
    worker.receive(downlink.broadcast(NO_VERSION))
    for theta in path[1:4]:
        downlink.step(theta)
    catch_up = downlink.broadcast(worker.theta_version)
    assert catch_up.base == 0 and catch_up.version == 3 and len(catch_up.innovations) == 3
    assert_same_bits(worker.receive(catch_up, downlink.compressor), downlink.theta_tilde)
    assert catch_up.payload_bits(downlink.compressor, 64) == 3 * (32 + 4 * 64)
    for theta in path[4:]:
        downlink.step(theta)
    far_behind = downlink.broadcast(worker.theta_version)  # 37 innovations cost more than theta itself
    assert far_behind.full and far_behind.payload_bits(None, 64) == 32 * 64
    assert_same_bits(worker.receive(far_behind), downlink.theta_tilde)
    current = downlink.broadcast(worker.theta_version)
    assert current.innovations == () and current.version == worker.theta_version


def test_a_worker_refuses_innovations_for_another_version() -> None:
    path = walk(16, 3)
    downlink = Downlink(path[0], Grid(4))
    restarted = WorkerState.zeros(16)  # lost its state: holds no theta_tilde
    downlink.step(path[1])
    with pytest.raises(StaleIterateError, match="holds none"):
        restarted.receive(Broadcast(version=1, base=0, innovations=downlink.broadcast(0).innovations), downlink.compressor)
    behind = WorkerState.zeros(16)
    behind.receive(Broadcast(version=0, theta=path[0]))
    downlink.step(path[2])
    newest = downlink.broadcast(1)  # the server believes the worker holds version 1; it holds 0
    with pytest.raises(StaleIterateError, match="version 0"):
        behind.receive(newest, downlink.compressor)
    assert behind.theta_version == 0
    assert_same_bits(behind.theta_tilde, path[0])
    lying = Broadcast(version=5, base=0, innovations=downlink.broadcast(0).innovations)
    with pytest.raises(StaleIterateError, match="claims version 5"):
        behind.receive(lying, downlink.compressor)


def test_downlink_refuses_a_random_compressor() -> None:
    with pytest.raises(ValueError, match="deterministic"):
        Downlink(np.zeros(4, np.float32), TernGrad())


def test_checksum_sees_any_change_and_ignores_byte_order() -> None:
    copy = np.linspace(-1, 1, 50).astype(np.float32)
    tilde = np.linspace(0, 2, 50).astype(np.float32)
    reference = state_checksum(copy, tilde)
    assert state_checksum(copy.astype(">f4"), tilde.astype(">f4")) == reference
    for array in (copy, tilde):
        flipped = array.copy()
        flipped.view(np.uint32)[17] ^= 1  # one bit
        changed = state_checksum(flipped, tilde) if array is copy else state_checksum(copy, flipped)
        assert changed != reference
    assert state_checksum(copy) != reference
