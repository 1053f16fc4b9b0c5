"""Tasks: what is learned — a torch module, a training set split over the workers, a test set, and the loss.

A run names its task with the run config's ``task``: a built-in name (:data:`TASKS`) or ``"package.module:attribute"``
(resolved with :mod:`importlib`, as Flower names its apps), where the attribute is a :class:`Task` or a callable that
returns one. The local objective of worker m is ``f_m(theta) = task.loss(module_theta(x), y)`` averaged over its
samples ``+ (lambda/2) ||theta||^2`` (Sun et al. 2019, eq. 1, with the authors' l2 term on all parameters).

Built-in tasks:

==================  =======================================================================  ========
name                model and data                                                           p
==================  =======================================================================  ========
mnist-logistic      multinomial logistic regression on MNIST (the paper's Table 2)            7,850
mnist-mlp           784-200-10 ReLU network on MNIST (the paper's Table 2)                  159,010
mnist-cnn           LeNet-5-style network on MNIST (conv-pool-conv-pool-120-84-10)           61,706
synthetic-logistic  logistic regression on a seeded MNIST-shaped problem (tests, no files)    7,850
synthetic-mlp       the MLP on the same (``synthetic-cnn``: the CNN)                         159,010
ijcnn1-logistic     binary logistic regression on ijcnn1 (Figure 6), ``<data-dir>/ijcnn1/``       23
libsvm:/abs/FILE    binary logistic regression on any LIBSVM file (test set ``FILE.t``)        d + 1
==================  =======================================================================  ========

Without ``task`` the run config's ``dataset`` and ``model`` name the built-in ``<dataset>-<model>``.

A task of your own (see ``examples/``)::

    class MyTask(Task):
        name = "my-task"
        def build_module(self) -> nn.Module: ...
        def load_dataset(self, data_dir: str, seed: int) -> Dataset: ...   # laq_fl.data.Dataset

    task = MyTask()          # run config: task = "my_package.my_module:task"
"""

from __future__ import annotations

import functools
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from laq_fl.data import Dataset, load_dataset
from laq_fl.errors import ConfigError, DatasetNotFoundError, TaskError
from laq_fl.models import build_module


def build_task_module(task: Task) -> nn.Module:
    """``task.build_module()``, checked: a torch module with at least one parameter and no buffers, in eval mode.

    Buffers (BatchNorm's running statistics) are refused: only parameters travel, as one flat vector, so a buffer
    would differ from node to node. Eval mode switches dropout off, so that every runner computes the same bits.
    Raises :class:`TaskError`."""
    try:
        module = task.build_module()
    except Exception as error:  # noqa: BLE001 - the user's code: say whose it is
        raise TaskError(f"{task.key}: build_module() raised {type(error).__name__}: {error}") from error
    if not isinstance(module, nn.Module):
        raise TaskError(f"{task.key}: build_module() must return a torch.nn.Module, got {type(module).__name__}")
    if not any(True for _ in module.parameters()):
        raise TaskError(f"{task.key}: the module has no parameters: there is nothing to learn")
    buffers = [name for name, _ in module.named_buffers()]
    if buffers:
        raise TaskError(f"{task.key}: the module has buffers ({', '.join(buffers[:3])}); only parameters travel, so "
                        "running statistics would differ between nodes: use LayerNorm or GroupNorm instead of BatchNorm")
    return module.eval()


def load_task_dataset(task: Task, data_dir: str, seed: int) -> Dataset:
    """``task.load_dataset(data_dir, seed)``, checked to be a :class:`~laq_fl.data.Dataset` of torch tensors.
    A missing data set raises :class:`~laq_fl.data.DatasetNotFoundError` as the task raised it; anything else the
    task raises becomes a :class:`TaskError`."""
    try:
        dataset = task.load_dataset(data_dir, seed)
    except (DatasetNotFoundError, ConfigError):
        raise
    except Exception as error:  # noqa: BLE001 - the user's code: say whose it is
        raise TaskError(f"{task.key}: load_dataset() raised {type(error).__name__}: {error}") from error
    if not isinstance(dataset, Dataset):
        raise TaskError(f"{task.key}: load_dataset() must return a laq_fl.data.Dataset, got {type(dataset).__name__}")
    for field in ("train_features", "train_labels", "test_features", "test_labels"):
        if not isinstance(getattr(dataset, field), torch.Tensor):
            raise TaskError(f"{task.key}: Dataset.{field} must be a torch.Tensor, got "
                            f"{type(getattr(dataset, field)).__name__} (convert numpy arrays with torch.from_numpy)")
    return dataset


class Task(ABC):
    """A learning task. Subclasses give :attr:`name`, :meth:`build_module` and :meth:`load_dataset`; the loss
    defaults to the mean cross-entropy of the module's logits (float tensor (N, C)) against int64 labels in 0..C-1.
    """

    name: str = ""

    @abstractmethod
    def build_module(self) -> nn.Module:
        """A fresh module mapping a float feature tensor (N, ...) to logits (N, C); its parameters (any shapes)
        travel as one flat vector (:class:`laq_fl.models.FlatModel`)."""

    @abstractmethod
    def load_dataset(self, data_dir: str, seed: int) -> Dataset:
        """The whole training and test sets (features float, labels int64), partitioned over the workers by the
        run config's ``partition``. Called once per process for each (data_dir, seed); may raise
        :class:`~laq_fl.data.DatasetNotFoundError`."""

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean data loss (a scalar tensor), without the l2 term, which the objective adds."""
        return F.cross_entropy(logits, labels)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """The predicted labels (int64, (N,)) for test accuracy: the arg-max class."""
        return logits.argmax(dim=1)

    @property
    def key(self) -> str:
        """What caches of this task's data are keyed by."""
        return self.name or f"{type(self).__module__}.{type(self).__qualname__}"


class BuiltinTask(Task):
    """A built-in model on a built-in data set (:func:`laq_fl.models.build_module`, :func:`laq_fl.data.load_dataset`)."""

    def __init__(self, dataset: str, model: str) -> None:
        self.dataset, self.model, self.name = dataset, model, f"{dataset}-{model}"

    def build_module(self) -> nn.Module:
        return build_module(self.model)

    def load_dataset(self, data_dir: str, seed: int) -> Dataset:
        return load_dataset(self.dataset, data_dir, seed)


class BinaryLogisticTask(Task):
    """Binary logistic regression on a LIBSVM data set (:mod:`laq_fl.libsvm`): one logit ``w.x + b`` per sample
    (p = d + 1), loss ``mean log(1 + exp(-s z))`` with s = +-1 (binary cross-entropy with logits), labels 0/1.

    ``path``: the training file, absolute, or relative to the run's ``data-dir`` (then ``num_features`` must be
    given, since the module is built before any data is read)."""

    def __init__(self, name: str, path: str, num_features: int | None = None) -> None:
        self.name, self.path, self._num_features = name, path, num_features

    def _file(self, data_dir: str | None) -> Path:
        path = Path(self.path).expanduser()
        if path.is_absolute():
            return path
        if data_dir is None:
            raise TaskError(f"{self.name}: {self.path} is relative to data-dir, so the feature count must be given")
        return Path(data_dir).expanduser() / path

    @property
    def num_features(self) -> int:
        if self._num_features is None:
            self._num_features = int(self._arrays(None)[0].shape[1])
        return self._num_features

    def _arrays(self, data_dir: str | None):
        from laq_fl.libsvm import load_binary

        return load_binary(self._file(data_dir))

    def build_module(self) -> nn.Module:
        return nn.Linear(self.num_features, 1)

    def load_dataset(self, data_dir: str, seed: int) -> Dataset:
        try:
            train_x, train_y, test_x, test_y = self._arrays(data_dir)
        except FileNotFoundError as error:
            raise DatasetNotFoundError(f"task {self.name}: {error} (data-dir = {data_dir})") from None
        return Dataset(self.name, torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x),
                       torch.from_numpy(test_y))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits[:, 0], labels.to(logits.dtype))

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, 0] > 0).to(torch.int64)


LIBSVM_PREFIX = "libsvm:"
"""``task = "libsvm:/abs/path/NAME[.bz2]"``: binary logistic regression on any LIBSVM file (test set: ``NAME.t``)."""

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS` under its name (an existing name is replaced)."""
    if not isinstance(task, Task) or not task.name:
        raise TypeError(f"register_task needs a Task with a name, got {task!r}")
    TASKS[task.name] = task
    return task


for _dataset in ("mnist", "synthetic"):
    for _model in ("logistic", "mlp", "cnn"):
        register_task(BuiltinTask(_dataset, _model))
register_task(BinaryLogisticTask("ijcnn1-logistic", "ijcnn1/ijcnn1.bz2", num_features=22))


@functools.lru_cache(maxsize=64)
def resolve_task(spec: str) -> Task:
    """The task a run config's ``task`` names: a key of :data:`TASKS`, or ``"package.module:attribute"``.

    Raises :class:`~laq_fl.errors.ConfigError` (key ``task``) for an unknown name, a module that does not import,
    a missing attribute, or one that is not a :class:`Task` (or a callable returning one).
    """
    if not isinstance(spec, str) or not spec:
        raise ConfigError("task", f"must be a task name or 'package.module:attribute', got {spec!r}")
    if spec.startswith(LIBSVM_PREFIX):
        path = Path(spec[len(LIBSVM_PREFIX):]).expanduser()
        if not path.is_absolute():
            raise ConfigError("task", f"{spec!r}: give the LIBSVM file's absolute path (every node reads it there)")
        task = BinaryLogisticTask(f"libsvm-{path.name}", str(path))
        try:
            task.num_features  # noqa: B018 - reads the file now, so that a missing or malformed one fails here
        except (OSError, ValueError) as error:
            raise ConfigError("task", f"{spec!r}: {error}") from None
        return task
    if ":" not in spec:
        if spec not in TASKS:
            raise ConfigError("task", f"unknown task {spec!r}; built-in: {', '.join(sorted(TASKS))}; or give "
                              "'package.module:attribute' for your own (see the README's 'Your own task')")
        return TASKS[spec]
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any failure to import is the user's task module failing
        raise ConfigError("task", f"cannot import {module_name!r} for task {spec!r}: {type(error).__name__}: "
                          f"{error} (is its folder on PYTHONPATH -- under flwr run, the SuperLink's environment -- or installed?)") from error
    try:
        value = functools.reduce(getattr, attribute.split("."), module)
    except AttributeError:
        raise ConfigError("task", f"module {module_name!r} has no attribute {attribute!r}") from None
    if isinstance(value, type) and issubclass(value, Task) or not isinstance(value, Task) and callable(value):
        value = _call(value, spec)
    if not isinstance(value, Task):
        raise ConfigError("task", f"{spec!r} is a {type(value).__name__}, not a laq_fl.tasks.Task")
    return value


def _call(factory: Callable[[], object], spec: str) -> object:
    try:
        return factory()
    except Exception as error:  # noqa: BLE001
        raise ConfigError("task", f"calling {spec!r} failed: {type(error).__name__}: {error}") from error


def check_fit(task: Task, module: nn.Module, dataset: Dataset) -> None:
    """Raise :class:`TaskError` unless the module maps the data's features to one logit per class of its labels.

    Runs the module on two training samples (a forward pass, no gradient)."""
    for part in ("train", "test"):
        features, labels = getattr(dataset, f"{part}_features"), getattr(dataset, f"{part}_labels")
        if features.shape[0] == 0 or features.shape[0] != labels.shape[0]:
            raise TaskError(f"{task.key}: the {part} set has {features.shape[0]} feature rows and "
                            f"{labels.shape[0]} labels (need as many, at least one; a LIBSVM file needs enough "
                            "rows or a test file FILE.t beside it)")
        if labels.dtype != torch.int64 or not torch.is_floating_point(features):
            raise TaskError(f"{task.key}: {part} features must be a float tensor and labels an int64 tensor, got "
                            f"{features.dtype} and {labels.dtype}")
        if labels.dim() != 1:
            raise TaskError(f"{task.key}: {part} labels must be one class index per sample, shape (N,), got "
                            f"{tuple(labels.shape)}")
        if not bool(torch.isfinite(features).all()):
            raise TaskError(f"{task.key}: the {part} features hold NaN or infinite values; clean the data first")
    if dataset.train_features.shape[1:] != dataset.test_features.shape[1:]:
        raise TaskError(f"{task.key}: train features are {tuple(dataset.train_features.shape[1:])} per "
                        f"sample, test features {tuple(dataset.test_features.shape[1:])}")
    # Two samples with the lowest and the highest label, so that the loss meets the whole label range.
    labels = dataset.train_labels
    pick = torch.stack([labels.argmin(), labels.argmax()])
    try:
        with torch.no_grad():
            logits = module(dataset.train_features[pick].to(next(module.parameters()).dtype))
    except Exception as error:  # noqa: BLE001 - the user's module
        raise TaskError(f"{task.key}: the module does not take the data's features "
                        f"({tuple(dataset.train_features.shape[1:])} per sample): {type(error).__name__}: {error}"
                        ) from error
    if logits.dim() != 2 or logits.shape[0] != 2:
        raise TaskError(f"{task.key}: the module must return logits of shape (N, classes), got "
                        f"{tuple(logits.shape)} for N = 2")
    if logits.shape[1] == 1 and type(task).loss is Task.loss:
        raise TaskError(f"{task.key}: the module returns one logit, but the loss is the default cross-entropy over "
                        "classes: return one logit per class, or override loss() and predict() for a binary task "
                        "(as laq_fl.tasks.BinaryLogisticTask does)")
    num_classes = logits.shape[1] if logits.shape[1] > 1 else 2  # one logit: a binary task, labels 0 and 1
    highest = int(max(dataset.train_labels.max(), dataset.test_labels.max()))
    lowest = int(min(dataset.train_labels.min(), dataset.test_labels.min()))
    if lowest < 0 or highest >= num_classes:
        raise TaskError(f"{task.key}: labels run from {lowest} to {highest}, but the module has "
                        f"{num_classes} outputs (labels must lie in 0..{num_classes - 1})")
    try:
        with torch.no_grad():
            value = task.loss(logits, labels[pick])
            predicted = task.predict(logits)
    except Exception as error:  # noqa: BLE001 - the user's loss
        raise TaskError(f"{task.key}: loss() or predict() failed on two samples: {type(error).__name__}: {error}"
                        ) from error
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise TaskError(f"{task.key}: loss() must return the mean over the samples, a scalar tensor; got "
                        f"{getattr(value, 'shape', type(value).__name__)}")
    if not isinstance(predicted, torch.Tensor) or tuple(predicted.shape) != (2,):
        raise TaskError(f"{task.key}: predict() must return one label per sample, shape (N,)")
