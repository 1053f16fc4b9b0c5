"""The task interface: built-in tasks, a user's own task from examples/, and tasks that cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, assert_same_bits
from flwr.app import Context, RecordDict
from torch import nn

from client_app import app as client_app
from laq_fl.config import AlgorithmConfig, ConfigError, ProblemConfig
from laq_fl.data import Dataset
from laq_fl.driver import run_in_process
from laq_fl.flower import InProcessGrid, run_server
from laq_fl.problem import build_problem, check_problem, local_objective
from laq_fl.results import read_results
from laq_fl.run_config import parse_run_config
from laq_fl.tasks import TASKS, Task, TaskError, resolve_task

EXAMPLE = REPO_ROOT / "examples" / "own_task"


@pytest.fixture
def blobs(tmp_path: Path, monkeypatch) -> str:
    """The example's folder on sys.path (as PYTHONPATH would put it) and its data written to a fresh data-dir."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from make_data import write_blobs

    write_blobs(tmp_path / "data")
    return str(tmp_path / "data")


@pytest.mark.parametrize(("name", "size"), [("mnist-logistic", 7_850), ("mnist-mlp", 159_010),
                                            ("synthetic-logistic", 7_850), ("synthetic-mlp", 159_010),
                                            ("mnist-cnn", 61_706)])
def test_built_in_tasks_have_the_papers_models(name: str, size: int) -> None:
    module = resolve_task(name).build_module()
    assert sum(parameter.numel() for parameter in module.parameters()) == size


def test_the_cnn_learns_and_runs_through_the_app_as_through_the_driver(tmp_path: Path) -> None:
    rounds = 4
    run_config = {"task": "synthetic-cnn", "num-clients": 3, "rounds": rounds, "lr": 0.1, "report-every": 1,
                  "out-dir": str(tmp_path), "run-name": "cnn", "algorithm": "laq", "bits": 8}
    grid = InProcessGrid(client_app, 3, run_config)
    result = run_server(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    (theta,) = result.arrays.to_numpy_ndarrays()
    rows, _ = read_results(tmp_path / "cnn.jsonl")
    assert rows[-1]["train-loss"] < rows[1]["train-loss"]
    settings = parse_run_config(run_config)
    assert_same_bits(theta, run_in_process(settings.algorithm, settings.problem, rounds).theta)


def test_task_names_the_same_problem_as_dataset_and_model() -> None:
    by_task = run_in_process(AlgorithmConfig(algorithm="laq"), ProblemConfig(task="synthetic-logistic", num_workers=3), 15)
    by_keys = run_in_process(AlgorithmConfig(algorithm="laq"), ProblemConfig(dataset="synthetic", num_workers=3), 15)
    assert_same_bits(by_task.theta, by_keys.theta)


def test_the_example_task_runs_through_the_flower_app_as_through_the_driver(blobs: str, tmp_path: Path) -> None:
    """examples/own_task: a user's module and CSV data, no change to laq_fl/; the app equals the driver bit for bit."""
    rounds = 60
    run_config = {"task": "blobs_task:task", "data-dir": blobs, "num-clients": 3, "rounds": rounds, "lr": 0.5,
                  "lambda": 0.001, "report-every": 1, "out-dir": str(tmp_path / "out"), "run-name": "blobs",
                  "partition": "iid"}
    grid = InProcessGrid(client_app, 3, run_config)
    result = run_server(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    (theta,) = result.arrays.to_numpy_ndarrays()
    rows, status = read_results(tmp_path / "out" / "blobs.jsonl")
    assert status["status"] == "completed" and theta.size == 2 * 16 + 16 + 16 * 3 + 3
    assert rows[-1]["train-loss"] < 0.5 * rows[1]["train-loss"]
    assert rows[-1]["test-accuracy"] > 0.85  # three well-separated blobs
    assert sum(row["uploads"] for row in rows[1:]) < 3 * rounds  # LAQ skipped some

    settings = parse_run_config(run_config)
    expected = run_in_process(settings.algorithm, settings.problem, rounds)
    assert_same_bits(theta, expected.theta)
    assert [row["uploads"] for row in rows[1:]] == expected.column("uploads").tolist()


@pytest.mark.parametrize("scheme", ["contiguous", "iid", "dirichlet"])
def test_a_users_task_is_partitioned_disjointly_and_completely(blobs: str, scheme: str) -> None:
    config = ProblemConfig(task="blobs_task:task", data_dir=blobs, num_workers=4, partition=scheme)
    shards = [local_objective(config, worker) for worker in range(4)]
    assert sum(shard.num_samples for shard in shards) == 1200  # 80% of 1,500 rows
    rows = torch.cat([shard.features for shard in shards])
    assert torch.unique(rows, dim=0).shape[0] == 1200


def checked(run_config: dict):
    """What the ServerApp does before round 1 with a run config's task (parsing alone does no I/O)."""
    return check_problem(parse_run_config(run_config).problem)


@pytest.mark.parametrize(("spec", "match"), [
    ("mnist-transformer", "unknown task 'mnist-transformer'; built-in: .*mnist-logistic"),
    ("no_such_module_xyz:task", "cannot import 'no_such_module_xyz'.*PYTHONPATH"),
    ("laq_fl.tasks:nothing_here", "has no attribute 'nothing_here'"),
    ("math:pi", "is a float, not a laq_fl.tasks.Task"),
])
def test_a_task_that_cannot_be_found_fails_before_round_one_naming_the_key(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        checked({"task": spec})
    assert info.value.key == "task"


def test_a_task_module_that_raises_on_import_is_named(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "broken_task.py").write_text("raise RuntimeError('my bug')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="cannot import 'broken_task'.*RuntimeError: my bug") as info:
        checked({"task": "broken_task:task"})
    assert info.value.key == "task"


class CountingGrid(InProcessGrid):
    pushed = 0

    def push_messages(self, messages):
        messages = list(messages)
        self.pushed += len(messages)
        return super().push_messages(messages)


class _Misfit(Task):
    def __init__(self, name: str, outputs: int, features: int) -> None:
        self.name, self.outputs, self.features = name, outputs, features

    def build_module(self) -> nn.Module:
        return nn.Linear(4, self.outputs)

    def load_dataset(self, data_dir: str, seed: int) -> Dataset:
        generator = torch.Generator().manual_seed(seed)
        features = torch.rand(50, self.features, generator=generator)
        labels = torch.arange(50) % 5
        return Dataset(self.name, features[:40], labels[:40], features[40:], labels[40:])


misfit_classes = _Misfit("misfit-classes", outputs=3, features=4)
misfit_features = _Misfit("misfit-features", outputs=5, features=7)


class _Variant(_Misfit):
    """A task that fits (5 outputs, 4 features) but for one mistake."""

    def __init__(self, name: str, mistake: str) -> None:
        super().__init__(name, outputs=5, features=4)
        self.mistake = mistake

    def build_module(self) -> nn.Module:
        if self.mistake == "one-logit":
            return nn.Linear(4, 1)
        if self.mistake == "dropout":
            return nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5))
        if self.mistake == "batchnorm":
            return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
        if self.mistake == "no-parameters":
            return nn.Identity()
        if self.mistake == "build-raises":
            raise FileNotFoundError("weights.pt")
        return super().build_module()

    def load_dataset(self, data_dir: str, seed: int) -> Dataset:
        data = super().load_dataset(data_dir, seed)
        if self.mistake == "one-logit":
            return Dataset(self.name, data.train_features, data.train_labels % 2, data.test_features,
                           data.test_labels % 2)
        if self.mistake == "column-labels":
            return Dataset(self.name, data.train_features, data.train_labels[:, None], data.test_features,
                           data.test_labels[:, None])
        if self.mistake == "nan":
            features = data.train_features.clone()
            features[3, 1] = float("nan")
            return Dataset(self.name, features, data.train_labels, data.test_features, data.test_labels)
        if self.mistake == "numpy":
            return Dataset(self.name, data.train_features.numpy(), data.train_labels, data.test_features,
                           data.test_labels)
        if self.mistake == "tuple":
            return (data.train_features, data.train_labels)
        return data



class _PerSampleLoss(_Variant):
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, labels, reduction="none")


MISTAKES = {
    "one-logit": "one logit, but the loss is the default cross-entropy",
    "column-labels": r"labels must be one class index per sample, shape \(N,\)",
    "nan": "NaN or infinite values",
    "numpy": "must be a torch.Tensor, got ndarray",
    "tuple": "must return a laq_fl.data.Dataset, got tuple",
    "batchnorm": "has buffers",
    "no-parameters": "no parameters",
    "build-raises": "build_module\\(\\) raised FileNotFoundError: weights.pt",
    "per-sample-loss": "must return the mean over the samples",
}
for _mistake in MISTAKES:
    globals()[f"variant_{_mistake.replace('-', '_')}"] = _Variant(f"variant-{_mistake}", _mistake)
variant_dropout = _Variant("variant-dropout", "dropout")
variant_per_sample_loss = _PerSampleLoss("variant-per-sample-loss", "per-sample-loss")


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_task_mistake_is_named_before_round_one(mistake: str) -> None:
    with pytest.raises(ConfigError, match=MISTAKES[mistake]) as info:
        build_problem(ProblemConfig(task=f"{__name__}:variant_{mistake.replace('-', '_')}", num_workers=2))
    assert info.value.key == "task"


def test_dropout_is_off_so_runs_repeat_bit_for_bit() -> None:
    config = ProblemConfig(task=f"{__name__}:variant_dropout", num_workers=2)
    first = run_in_process(AlgorithmConfig(algorithm="laq", lr=0.1), config, 5)
    second = run_in_process(AlgorithmConfig(algorithm="laq", lr=0.1), config, 5)
    assert_same_bits(first.theta, second.theta)


@pytest.mark.parametrize(("attribute", "match"), [
    ("misfit_classes", "labels run from 0 to 4, but the module has 3 outputs"),
    ("misfit_features", r"does not take the data's features \(\(7,\) per sample\)"),
])
def test_a_task_whose_model_and_data_do_not_fit_stops_before_round_one(tmp_path: Path, attribute: str,
                                                                       match: str) -> None:
    spec = f"{__name__}:{attribute}"
    with pytest.raises(TaskError, match=match) as info:
        build_problem(ProblemConfig(task=spec, num_workers=2))
    assert info.value.key == "task"
    run_config = {"task": spec, "num-clients": 2, "rounds": 3, "out-dir": str(tmp_path), "run-name": "misfit"}
    grid = CountingGrid(client_app, 2, run_config)
    with pytest.raises(TaskError, match=match):
        run_server(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    assert grid.pushed == 0  # no node was asked anything
    rows, status = read_results(tmp_path / "misfit.jsonl")
    assert rows == [] and status["status"] == "failed" and match.split(" ")[0] in status["error"]


def test_registered_tasks_are_tasks() -> None:
    assert {"mnist-logistic", "mnist-mlp"} <= set(TASKS)
    assert all(isinstance(task, Task) and task.name == name for name, task in TASKS.items())



def test_ijcnn1_is_read_as_the_data_readme_describes(mnist_dir: str) -> None:
    dataset = resolve_task("ijcnn1-logistic").load_dataset(mnist_dir, 0)
    assert tuple(dataset.train_features.shape) == (49_990, 22) and tuple(dataset.test_features.shape) == (91_701, 22)
    assert int(dataset.train_labels.sum()) == 4_853  # the positives (label +1 -> 1)
    assert set(dataset.test_labels.unique().tolist()) == {0, 1}


def test_binary_logistic_loss_is_the_logistic_loss() -> None:
    task = resolve_task("ijcnn1-logistic")
    logits = torch.tensor([[2.0], [-1.0], [0.5]], dtype=torch.float64)
    labels = torch.tensor([1, 0, 0])
    signs = 2.0 * labels.double() - 1.0
    expected = torch.log1p(torch.exp(-signs * logits[:, 0])).mean()
    assert float(task.loss(logits, labels)) == pytest.approx(float(expected), rel=1e-12)
    assert task.predict(logits).tolist() == [1, 0, 1]


def test_ijcnn1_runs_through_the_flower_app_as_through_the_driver(mnist_dir: str, tmp_path: Path) -> None:
    rounds = 20
    run_config = {"task": "ijcnn1-logistic", "data-dir": mnist_dir, "num-clients": 3, "rounds": rounds, "lr": 0.5,
                  "lambda": 0.001, "report-every": 1, "out-dir": str(tmp_path), "run-name": "ijcnn1"}
    grid = InProcessGrid(client_app, 3, run_config)
    result = run_server(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    (theta,) = result.arrays.to_numpy_ndarrays()
    rows, status = read_results(tmp_path / "ijcnn1.jsonl")
    assert status["status"] == "completed" and theta.size == 23
    assert rows[-1]["train-loss"] < rows[1]["train-loss"]
    settings = parse_run_config(run_config)
    expected = run_in_process(settings.algorithm, settings.problem, rounds)
    assert_same_bits(theta, expected.theta)


def write_libsvm(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_any_libsvm_file_is_a_task_with_one_value(tmp_path: Path) -> None:
    rng = torch.Generator().manual_seed(0)
    points = torch.randn(200, 3, generator=rng)
    labels = (points @ torch.tensor([1.0, -2.0, 0.5]) > 0)
    lines = [f"{'+1' if label else '-1'} " + " ".join(f"{i + 1}:{value:.5f}" for i, value in enumerate(point.tolist()))
             for point, label in zip(points, labels)]
    train = write_libsvm(tmp_path / "mine", lines[:150])
    write_libsvm(tmp_path / "mine.t", lines[150:])
    settings = parse_run_config({"task": f"libsvm:{train}", "num-clients": 2, "lr": 1.0, "lambda": 0.001})
    result = run_in_process(settings.algorithm, settings.problem, 100)
    assert result.theta.size == 4
    assert result.records[-1].test_accuracy > 0.9


def test_a_malformed_libsvm_line_is_named_with_its_file_and_number(tmp_path: Path) -> None:
    train = write_libsvm(tmp_path / "bad", ["+1 1:0.5 2:0.25", "-1 1:0.1 2:0.3", "-1 1:0.2 two:0.4", "+1 2:1"])
    with pytest.raises(ConfigError, match=rf"{train}, line 3: .*'-1 1:0.2 two:0.4'") as info:
        checked({"task": f"libsvm:{train}"})
    assert info.value.key == "task"


def test_a_libsvm_line_with_unsorted_indices_is_named_with_its_file_and_number(tmp_path: Path) -> None:
    # scikit-learn refuses unsorted indices without saying where; we find the line.
    train = write_libsvm(tmp_path / "unsorted", ["+1 1:0.5 3:0.25", "-1 qid:2 1:0.1 2:0.3", "-1 2:0.2 1:0.4", "+1 2:1"])
    with pytest.raises(ConfigError, match=rf"{train}, line 3: feature indices must increase .*'-1 2:0.2 1:0.4'"):
        checked({"task": f"libsvm:{train}"})

def test_a_libsvm_task_needs_an_absolute_path_and_a_file() -> None:
    with pytest.raises(ConfigError, match="absolute path"):
        checked({"task": "libsvm:relative/file"})
    with pytest.raises(ConfigError, match="not found"):
        checked({"task": "libsvm:/nonexistent/file"})


def test_a_partition_that_cannot_be_made_stops_before_round_one(tmp_path: Path) -> None:
    run_config = {"dataset": "synthetic", "num-clients": 6000, "partition": "pathological",
                  "classes-per-partition": 11, "rounds": 2, "out-dir": str(tmp_path), "run-name": "bad-partition"}
    grid = CountingGrid(client_app, 2, run_config)
    with pytest.raises(ConfigError, match="'pathological' over 6000 workers") as info:
        run_server(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    assert info.value.key == "partition" and grid.pushed == 0


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological", "shard"])
def test_flower_datasets_partitions_run_through_the_app_as_through_the_driver(tmp_path: Path, scheme: str) -> None:
    rounds = 5
    run_config = {"dataset": "synthetic", "num-clients": 4, "partition": scheme, "rounds": rounds, "lr": 0.05,
                  "report-every": 1, "out-dir": str(tmp_path), "run-name": scheme}
    grid = InProcessGrid(client_app, 4, run_config)
    result = run_server(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    (theta,) = result.arrays.to_numpy_ndarrays()
    settings = parse_run_config(run_config)
    assert_same_bits(theta, run_in_process(settings.algorithm, settings.problem, rounds).theta)


def test_more_clients_than_training_samples_stops_before_round_one_naming_num_clients(tmp_path: Path) -> None:
    run_config = {"dataset": "synthetic", "num-clients": 7000, "rounds": 2, "out-dir": str(tmp_path), "run-name": "many"}
    grid = CountingGrid(client_app, 2, run_config)
    with pytest.raises(ConfigError, match="cannot split 6000 samples over 7000 workers") as info:
        run_server(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    assert info.value.key == "num-clients" and grid.pushed == 0


def test_a_gzip_libsvm_file_finds_its_gzip_test_file(tmp_path: Path) -> None:
    import gzip

    from laq_fl.libsvm import test_file_of

    for name in ("mine.gz", "mine.t.gz"):
        with gzip.open(tmp_path / name, "wt") as file:
            file.write("+1 1:0.5\n-1 1:-0.5\n")
    assert test_file_of(tmp_path / "mine.gz") == tmp_path / "mine.t.gz"
    dataset = resolve_task(f"libsvm:{tmp_path / 'mine.gz'}").load_dataset(str(tmp_path), 0)
    assert dataset.train_labels.tolist() == [1, 0] and dataset.test_labels.tolist() == [1, 0]


def test_zero_based_libsvm_indices_get_a_hint(tmp_path: Path) -> None:
    train = write_libsvm(tmp_path / "zero", ["+1 0:0.5 1:0.25", "-1 0:0.1 1:0.3"])
    with pytest.raises(ConfigError, match="indices start at 1"):
        checked({"task": f"libsvm:{train}"})
