"""The device setting: refused when it cannot be honoured, and the CPU path unchanged (CI has no GPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_bits

from laq_fl.config import AlgorithmConfig, ConfigError, ProblemConfig
from laq_fl.devices import resolve_device
from laq_fl.driver import run_in_process
from laq_fl.run_config import parse_run_config

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
    with pytest.raises(ConfigError, match='torch sees no CUDA GPU.*use device = "cpu" or "auto"') as info:
        parse_run_config({"device": value})
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
