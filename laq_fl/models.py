"""The paper's two models and the local objective f_m, evaluated at a flat parameter vector.

* ``logistic``: multinomial logistic regression 784 -> 10 with bias, p = 7,850.
* ``mlp``: 784 -> 200 (ReLU) -> 10, p = 159,010.
* ``cnn``: LeNet-5 style, conv 5x5 (6) - pool - conv 5x5 (16) - pool - 120 - 84 - 10 (ReLU), p = 61,706.

``f_m(theta) = mean cross-entropy over worker m's samples + (lam/2) ||theta||^2`` on all
parameters, biases included (the authors' setup, ``../shared/notes/paper-setup.md``).
Parameters travel as one flat vector; :class:`FlatModel` maps it back to the tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from laq_fl.arrays import squared_norm

NUM_FEATURES = 784
NUM_CLASSES = 10
HIDDEN_UNITS = 200


def build_module(name: str) -> nn.Module:
    """The torch module for ``"logistic"``, ``"mlp"`` or ``"cnn"`` (features: flat 784-vectors)."""
    if name == "logistic":
        return nn.Linear(NUM_FEATURES, NUM_CLASSES)
    if name == "mlp":
        return nn.Sequential(
            nn.Linear(NUM_FEATURES, HIDDEN_UNITS), nn.ReLU(), nn.Linear(HIDDEN_UNITS, NUM_CLASSES)
        )
    if name == "cnn":
        # LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, as in most modern re-implementations; the first
        # convolution pads 28x28 to keep C1's 28x28 maps of the original's 32x32 input. p = 61,706.
        return nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, NUM_CLASSES),
        )
    raise ValueError(f"unknown model {name!r}; expected 'logistic', 'mlp' or 'cnn'")


class FlatModel:
    """A torch module evaluated at a flat parameter vector, with the map between both layouts."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        named = list(module.named_parameters())
        self.names = [name for name, _ in named]
        self.shapes = [tuple(param.shape) for _, param in named]
        self.numels = [param.numel() for _, param in named]
        self.offsets = np.cumsum([0, *self.numels]).tolist()
        self.size = int(self.offsets[-1])

    @classmethod
    def named(cls, name: str) -> FlatModel:
        return cls(build_module(name))

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``flat`` shaped like the module's parameters (no copy, gradients flow through)."""
        if flat.shape != (self.size,):
            raise ValueError(f"expected a flat vector of {self.size} parameters, got shape {tuple(flat.shape)}")
        return {
            name: flat[start:end].view(shape)
            for name, shape, start, end in zip(self.names, self.shapes, self.offsets, self.offsets[1:])
        }

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate tensors named like the module's parameters into one flat vector."""
        return torch.cat([tensors[name].reshape(-1) for name in self.names])

    def logits(self, theta: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, self.unflatten(theta), (features,))

    def initial_parameters(self, init: str = "glorot", seed: int = 0, dtype: str = "float32") -> np.ndarray:
        """theta^0: Glorot-uniform weights and zero biases from ``seed`` (Keras defaults), or all zeros."""
        torch_dtype = getattr(torch, dtype)
        tensors = {name: torch.zeros(shape, dtype=torch_dtype) for name, shape in zip(self.names, self.shapes)}
        if init == "glorot":
            generator = torch.Generator().manual_seed(seed)
            for tensor in tensors.values():
                if tensor.dim() >= 2:
                    nn.init.xavier_uniform_(tensor, generator=generator)
        elif init != "zeros":
            raise ValueError(f"unknown init {init!r}; expected 'glorot' or 'zeros'")
        return self.flatten(tensors).numpy()


class LocalObjective:
    """``f_m(theta) = mean CE over the worker's samples + (lam/2) ||theta||^2`` and its gradient."""

    def __init__(self, model: FlatModel, features: torch.Tensor, labels: torch.Tensor, lam: float,
                 data_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                 device: torch.device | str = "cpu", gradients_on_device: bool | None = None) -> None:
        """``data_loss(logits, labels)``: the mean loss over the samples given (a task's :meth:`~laq_fl.tasks.Task.loss`).
        ``device``: where the data live and the gradient is computed; theta comes in as a numpy array.
        ``gradients_on_device``: the gradient goes out as a torch tensor on ``device``, so that the worker's
        compression and rule run there too (:func:`laq_fl.worker.worker_round`); default: on any device but the
        CPU, where it goes out as a numpy array (the numpy path, whose counts the README publishes)."""
        if features.shape[0] != labels.shape[0] or features.shape[0] == 0:
            raise ValueError(f"need matching, non-empty features and labels, got {features.shape[0]} and {labels.shape[0]}")
        self.device = torch.device(device)
        self.model = model
        model.module.to(self.device)
        self.features = features.to(self.device)
        self.labels = labels.to(self.device)
        self.lam = lam
        self.data_loss = data_loss
        self.gradients_on_device = self.device.type != "cpu" if gradients_on_device is None else gradients_on_device

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def _batch(self, batch: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        if batch is None:
            return self.features, self.labels
        index = torch.from_numpy(np.asarray(batch, np.int64)).to(self.device)
        return self.features[index], self.labels[index]

    def loss_and_gradient(self, theta: np.ndarray, batch: np.ndarray | None = None) -> tuple[float, np.ndarray | torch.Tensor]:
        """``f_m(theta)`` and ``grad f_m(theta)`` (on ``batch`` sample indices when given: SGD, SLAQ), shape ``(p,)``
        in theta's dtype: a numpy array, or with ``gradients_on_device`` a tensor on the device (the same values)."""
        features, labels = self._batch(batch)
        theta = _writable(theta)
        params = torch.from_numpy(theta).to(self.device).requires_grad_(True)
        cross_entropy = self.data_loss(self.model.logits(params, features), labels)
        (grad,) = torch.autograd.grad(cross_entropy, params)
        if self.gradients_on_device:
            grad += self.lam * params.detach()
        else:
            grad = grad.cpu().numpy()
            grad += self.lam * theta
        return float(cross_entropy.detach()) + self._regulariser(theta), grad

    @torch.no_grad()
    def loss(self, theta: np.ndarray, batch: np.ndarray | None = None) -> float:
        """``f_m(theta)`` (on ``batch`` when given)."""
        features, labels = self._batch(batch)
        logits = self.model.logits(torch.from_numpy(_writable(theta)).to(self.device), features)
        return float(self.data_loss(logits, labels)) + self._regulariser(theta)

    def _regulariser(self, theta: np.ndarray) -> float:
        return 0.5 * self.lam * squared_norm(theta)


@torch.no_grad()
def evaluate(model: FlatModel, theta: np.ndarray, features: torch.Tensor, labels: torch.Tensor,
             data_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
             predict: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[float, float]:
    """Mean data loss (cross-entropy by default; no regulariser) and accuracy of ``theta`` on a labelled set
    (``predict(logits)``: the predicted labels; default the arg-max class)."""
    logits = model.logits(torch.from_numpy(_writable(theta)).to(features.device), features)
    loss = float(data_loss(logits, labels))
    predicted = logits.argmax(dim=1) if predict is None else predict(logits)
    accuracy = float((predicted == labels).double().mean())
    return loss, accuracy


def _writable(theta: np.ndarray) -> np.ndarray:
    # torch.from_numpy warns on read-only buffers (e.g. arrays decoded from a message); copy those once.
    return theta if theta.flags.writeable else theta.copy()
