"""The README's first lines are the project's contract, and its Extending example runs: keep them true."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import test_compressor_contract as contract
from flwr.app import Context, RecordDict

from client_app import app as client_app
from conftest import REPO_ROOT
from laq_fl.compressors import COMPRESSORS, NonFiniteError, register_compressor
from laq_fl.config import ALGORITHMS, AlgorithmConfig, AlgorithmSpec, ConfigError, ProblemConfig, register_algorithm
from laq_fl.driver import run_in_process
from laq_fl.flower import InProcessGrid, run_server
from laq_fl.results import read_results


def readme_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block and text.index(block.group(0)) < 40, "the README must open with its commands"
    return [line.split("  #")[0].strip() for line in block.group(1).strip().splitlines()]


def test_readme_opens_with_main_job_and_tests() -> None:
    main_job, tests = readme_commands()
    assert "flwr run ." in main_job
    assert "pytest" in tests


def test_ci_runs_the_readmes_test_command() -> None:
    _, tests = readme_commands()
    ci_lines = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines


def extending_example() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("## Extending") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def restore_registries():
    """The example registers a compressor and an algorithm; leave the registries as they were."""
    saved = dict(COMPRESSORS), dict(ALGORITHMS)
    yield
    for registry, before in zip((COMPRESSORS, ALGORITHMS), saved):
        registry.clear()
        registry.update(before)


def test_the_extending_example_runs_through_the_contract_and_the_flower_app(tmp_path, restore_registries, task_identity) -> None:
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(extending_example(), "README.md", "exec"), namespace)
    assert "float16" in COMPRESSORS and "lag-fp16" in ALGORITHMS
    for size in (1, 9, 301):
        contract.test_round_trip_within_the_stated_bound("float16", size)
    for check in (contract.test_payload_bits_fit_the_bytes, contract.test_malformed_payloads_are_rejected,
                  contract.test_byte_order_of_the_input_does_not_matter, contract.test_spec_rebuilds_an_equal_compressor,
                  contract.test_zero_vector_sends_zeros, contract.test_no_corruption_decodes_to_non_finite_values):
        check("float16")
    with pytest.raises(NonFiniteError), np.errstate(over="ignore"):
        COMPRESSORS["float16"]().compress(np.array([1e6]))  # beyond float16's range

    rounds = 20
    run_config = {"algorithm": "lag-fp16", "dataset": "synthetic", "num-clients": 3, "rounds": rounds, "lr": 0.1,
                  "data-dir": "/unused", "out-dir": str(tmp_path), "run-name": "fp16"}
    grid = InProcessGrid(client_app, 3, run_config)
    run_server(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    rows, status = read_results(tmp_path / "fp16.jsonl")
    assert status["status"] == "completed"
    trained = rows[1:]
    assert len(trained) == rounds and sum(row["rejected"] for row in trained) == 0
    assert all(row["payload-bits"] == 16 * 7850 * row["uploads"] for row in trained)
    assert 0 < rows[-1]["uploads-cum"] < 3 * rounds  # LAG's rule skipped some uploads
    assert trained[-1]["train-loss"] < trained[0]["train-loss"]
    expected = run_in_process(AlgorithmConfig(algorithm="lag-fp16", lr=0.1),
                              ProblemConfig(dataset="synthetic", num_workers=3, data_dir="/unused"), rounds)
    assert [row["uploads"] for row in trained] == expected.column("uploads").tolist()


def test_running_the_example_twice_re_registers_it(restore_registries) -> None:
    for _ in range(2):  # a notebook cell run again, or importlib.reload
        exec(compile(extending_example(), "README.md", "exec"), {"__name__": "readme_example"})
    with pytest.raises(ValueError, match="already registered"):
        exec(compile(extending_example(), "README.md", "exec"), {"__name__": "someone_else"})


def test_a_compressor_refusing_its_settings_names_the_algorithm(restore_registries) -> None:
    exec(compile(extending_example(), "README.md", "exec"), {"__name__": "readme_example"})

    @dataclasses.dataclass(frozen=True)
    class Fussy(COMPRESSORS["float16"]):
        name = "fussy"

        def __post_init__(self) -> None:
            raise ValueError("no, thank you")

    register_compressor(Fussy)
    register_algorithm(AlgorithmSpec("fussy-gd", compressor="fussy", memory="none", rule="never"))
    with pytest.raises(ConfigError) as info:
        AlgorithmConfig(algorithm="fussy-gd")
    assert info.value.key == "algorithm" and "no, thank you" in str(info.value)
