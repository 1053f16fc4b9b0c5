"""The device setting: refused when it cannot be honoured, and the CPU path unchanged (CI has no GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_same_bits

from flwr.app import Context, RecordDict

from laq_fl.config import ALGORITHMS, AlgorithmConfig, ConfigError, ProblemConfig
from laq_fl.devices import resolve_device
from laq_fl.driver import run_in_process
from laq_fl.flower.client import store_state, stored_state
from laq_fl.problem import build_problem, check_problem
from laq_fl.run_config import parse_run_config
from laq_fl.worker import WorkerState

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("value", ["gpu", "CUDA", "cuda:x", "", "tpu"])
def test_an_unknown_device_is_refused_naming_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match="must be 'auto', 'cpu', 'cuda' or 'cuda:N'") as info:
        parse_run_config({"device": value})
    assert info.value.key == "device"


@no_gpu
@pytest.mark.parametrize("value", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_stops_before_round_one_saying_what_to_do(value: str) -> None:
    assert parse_run_config({"device": value}).problem.device == value  # parsing does no I/O
    with pytest.raises(ConfigError, match='torch sees no CUDA GPU.*use device = "cpu" or "auto"') as info:
        check_problem(parse_run_config({"device": value}).problem)
    assert info.value.key == "device"


@no_gpu
def test_auto_is_the_cpu_without_a_gpu() -> None:
    assert resolve_device("auto") == torch.device("cpu")


def test_the_cpu_device_is_the_library_default_bit_for_bit() -> None:
    config = AlgorithmConfig(algorithm="laq")
    default = run_in_process(config, ProblemConfig(dataset="synthetic", num_workers=3), 10)
    explicit = run_in_process(config, ProblemConfig(dataset="synthetic", num_workers=3, device="auto"), 10)
    assert_same_bits(explicit.theta, default.theta)


@gpu
def test_on_a_gpu_the_bits_on_the_wire_do_not_change_and_the_run_converges_alike() -> None:
    config = AlgorithmConfig(algorithm="gd")
    cpu = run_in_process(config, ProblemConfig(dataset="synthetic", num_workers=3), 30)
    cuda = run_in_process(config, ProblemConfig(dataset="synthetic", num_workers=3, device="cuda"), 30)
    assert cuda.total_bits == cpu.total_bits and cuda.total_uploads == cpu.total_uploads
    assert abs(cuda.records[-1].train_loss - cpu.records[-1].train_loss) < 1e-4


def _device_path_runs(algorithm: AlgorithmConfig, device: str, iterations: int = 8):
    """The same run twice on ``device``: gradients back to the CPU for numpy compression, and kept on the device."""
    config = ProblemConfig(dataset="synthetic", num_workers=4, partition="iid", device=device)
    numpy_path = build_problem(config)
    device_path = build_problem(config)
    for objective in device_path.objectives:
        objective.gradients_on_device = True
    return run_in_process(algorithm, numpy_path, iterations), run_in_process(algorithm, device_path, iterations)


@pytest.mark.parametrize("algorithm", [*sorted(ALGORITHMS), "laq two-way"])
def test_the_device_path_equals_the_numpy_path_bit_for_bit_on_the_cpu(algorithm: str) -> None:
    # Every member: its compressor (a torch kernel, or the CPU fallback), memory and rule on tensors give the same
    # payloads, decisions and copies as on numpy arrays, so theta agrees to the last bit.
    config = AlgorithmConfig(algorithm="laq", downlink_bits=4) if algorithm == "laq two-way" else AlgorithmConfig(algorithm=algorithm)
    numpy_run, device_run = _device_path_runs(config, "cpu")
    assert device_run.column("uploads").tolist() == numpy_run.column("uploads").tolist()
    assert device_run.total_bits == numpy_run.total_bits and device_run.total_downlink_bits == numpy_run.total_downlink_bits
    assert_same_bits(device_run.theta, numpy_run.theta)


def test_a_worker_state_held_as_tensors_reads_back_stores_and_restores_as_numpy() -> None:
    state = WorkerState(copy=np.arange(5, dtype=np.float32), held={"residual": np.linspace(0, 1, 5)}, version=3)
    expected = {key: np.array(value) for key, value in state.to_arrays().items()}
    checksum = state.checksum()
    state.to_device(torch.device("cpu"), ["residual"])
    assert isinstance(state.copy, torch.Tensor) and isinstance(state.held["residual"], torch.Tensor)
    arrays = state.to_arrays()
    assert set(arrays) == set(expected) and all(isinstance(value, np.ndarray) for value in arrays.values())
    for key, value in expected.items():
        assert_same_bits(arrays[key], value)
    assert state.checksum() == checksum

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    store_state(context, state)  # what a ClientApp on a GPU keeps in context.state between messages
    stored = stored_state(context, np.float32)
    assert_same_bits(stored.copy, expected["copy"])
    assert stored.version == 3

    state.restore(np.full(5, 2.0, np.float32), version=7, error_sq=0.5)
    assert isinstance(state.copy, torch.Tensor) and state.version == 7
    assert_same_bits(state.to_arrays()["copy"], np.full(5, 2.0, np.float32))
    with pytest.raises(ValueError, match="float32 of shape"):
        state.restore(np.zeros(4, np.float32), version=1, error_sq=0.0)


@gpu
def test_on_a_gpu_the_device_path_equals_compressing_on_the_cpu_bit_for_bit() -> None:
    for name in ("laq", "qgd", "lag", "gd"):
        numpy_run, device_run = _device_path_runs(AlgorithmConfig(algorithm=name), "cuda", iterations=20)
        assert device_run.column("uploads").tolist() == numpy_run.column("uploads").tolist()
        assert_same_bits(device_run.theta, numpy_run.theta)
