"""Run-config parsing: defaults, types, directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from laq_fl.config import AlgorithmConfig, ConfigError
from laq_fl.run_config import DATA_DIR_ENV, RUN_CONFIG_SCHEMA, parse_run_config


def test_defaults_are_the_papers_laq_logistic_setting(monkeypatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    settings = parse_run_config({})
    algorithm, problem = settings.algorithm, settings.problem
    assert (algorithm.algorithm, algorithm.bits, algorithm.lr, algorithm.t_bar) == ("laq", 4, 0.02, 100)
    assert algorithm.xi == pytest.approx((0.08,) * 10)
    assert (problem.model, problem.partition, problem.num_workers, problem.lam) == ("logistic", "contiguous", 10, 0.01)
    assert os.path.isabs(problem.data_dir) and os.path.isabs(settings.out_dir)


def test_relative_data_dir_from_the_environment_resolves_against_cwd(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATA_DIR_ENV, "../shared/data")
    assert parse_run_config({}).problem.data_dir == str((tmp_path / ".." / "shared" / "data").resolve())


def test_relative_data_dir_in_the_run_config_is_rejected() -> None:
    with pytest.raises(ConfigError, match="data-dir.*absolute"):
        parse_run_config({"data-dir": "shared/data"})


def test_integral_floats_and_ints_convert_but_other_types_do_not() -> None:
    settings = parse_run_config({"lr": 1, "rounds": 5.0, "xi-sum": 0, "D": 4})
    assert settings.algorithm.lr == 1.0 and settings.rounds == 5 and settings.algorithm.xi == (0.0,) * 4
    for key, value in [("rounds", 2.5), ("lr", "0.1"), ("bits", True), ("algorithm", 3)]:
        with pytest.raises(ConfigError) as info:
            parse_run_config({key: value})
        assert info.value.key == key


def test_every_schema_key_reaches_the_settings(tmp_path) -> None:
    values = {"algorithm": "dgc", "task": "synthetic-logistic", "model": "mlp", "dataset": "synthetic", "partition": "dirichlet", "dirichlet-alpha": 0.3,
              "classes-per-partition": 3, "shards-per-partition": 5, "device": "cpu",
              "num-clients": 7, "rounds": 11, "bits": 5, "lr": 0.3, "xi-sum": 0.6, "D": 3, "xi-warmup": True, "t-bar": 9,
              "batch-size": 17, "density": 0.2, "lambda": 0.5, "seed": 4, "init": "zeros", "dtype": "float64",
              "data-dir": str(tmp_path / "data"), "out-dir": str(tmp_path / "out"), "run-name": "r", "round-timeout": 5.0,
              "node-wait-timeout": 6.0, "downlink-bits": 6, "smoothness": 2.5, "report-every": 3, "checkpoint-every": 4,
              "resume": True}
    assert set(values) == set(RUN_CONFIG_SCHEMA)
    settings = parse_run_config(values)
    algorithm, problem = settings.algorithm, settings.problem
    assert (algorithm.algorithm, algorithm.bits, algorithm.lr, algorithm.t_bar, algorithm.batch_size) == ("dgc", 5, 0.3, 9, 17)
    assert algorithm.xi == pytest.approx((0.2,) * 3) and algorithm.xi_warmup and algorithm.density == 0.2
    assert (algorithm.downlink_bits, algorithm.smoothness, settings.report_every) == (6, 2.5, 3)
    assert (problem.model, problem.dataset, problem.partition, problem.dirichlet_alpha, problem.num_workers) == (
        "mlp", "synthetic", "dirichlet", 0.3, 7)
    assert (problem.classes_per_partition, problem.shards_per_partition, problem.device) == (3, 5, "cpu")
    assert problem.task == problem.task_spec == "synthetic-logistic"  # task wins over dataset and model
    assert (problem.lam, problem.seed, problem.init, problem.dtype, problem.data_dir) == (0.5, 4, "zeros", "float64", values["data-dir"])
    assert (settings.rounds, settings.out_dir, settings.run_name, settings.round_timeout, settings.node_wait_timeout) == (
        11, values["out-dir"], "r", 5.0, 6.0)
    assert (settings.checkpoint_every, settings.resume) == (4, True)
    assert settings.checkpoint_path(1) == Path(values["out-dir"]) / "checkpoints" / "r.npz"
    assert dict(settings.values)["lambda"] == 0.5


@pytest.mark.parametrize("lr", [0.0, -0.02, float("nan"), float("inf")])
def test_a_step_size_that_cannot_descend_is_refused(lr: float) -> None:
    with pytest.raises(ConfigError) as info:
        parse_run_config({"lr": lr})
    assert info.value.key == "lr"
    with pytest.raises(ConfigError):
        AlgorithmConfig(lr=lr)
