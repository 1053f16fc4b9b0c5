"""Run-config parsing: defaults, types, directories."""

from __future__ import annotations

import os

import pytest

from laq_fl.config import ConfigError
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


def test_every_schema_key_is_accepted() -> None:
    parse_run_config({key: default for key, (_, default) in RUN_CONFIG_SCHEMA.items()})
