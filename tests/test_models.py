"""Models, parameter layout, initialisation and the local objective."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from laq_fl.models import FlatModel, LocalObjective


@pytest.mark.parametrize(("name", "size"), [("logistic", 7850), ("mlp", 159010)])
def test_parameter_counts(name: str, size: int) -> None:
    assert FlatModel.named(name).size == size


def test_glorot_init_is_seeded_with_zero_biases() -> None:
    model = FlatModel.named("mlp")
    theta = model.initial_parameters("glorot", seed=5)
    assert theta.dtype == np.float32 and theta.shape == (159010,)
    np.testing.assert_array_equal(theta, model.initial_parameters("glorot", seed=5))
    assert not np.array_equal(theta, model.initial_parameters("glorot", seed=6))
    params = model.unflatten(torch.from_numpy(theta))
    for name, tensor in params.items():
        if name.endswith("bias"):
            assert torch.all(tensor == 0)
        else:
            fan_out, fan_in = tensor.shape
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            assert float(tensor.abs().max()) <= limit and float(tensor.abs().max()) > 0.9 * limit
    assert not np.any(model.initial_parameters("zeros"))
    assert model.initial_parameters("zeros", dtype="float64").dtype == np.float64


def test_flatten_unflatten_round_trip() -> None:
    model = FlatModel.named("mlp")
    theta = torch.arange(model.size, dtype=torch.float32)
    np.testing.assert_array_equal(model.flatten(model.unflatten(theta)).numpy(), theta.numpy())


@pytest.mark.parametrize("name", ["logistic", "mlp"])
def test_gradient_matches_finite_differences(name: str) -> None:
    rng = np.random.default_rng(0)
    model = FlatModel.named(name)
    features = torch.from_numpy(rng.random((20, 784)))
    labels = torch.from_numpy(rng.integers(0, 10, 20))
    objective = LocalObjective(model, features, labels, lam=0.01)
    theta = model.initial_parameters("glorot", seed=1, dtype="float64") + 0.01
    loss, grad = objective.loss_and_gradient(theta)
    assert loss == pytest.approx(objective.loss(theta), rel=1e-12)
    for index in rng.choice(model.size, 8, replace=False):
        step = np.zeros_like(theta)
        step[index] = 1e-6
        numeric = (objective.loss(theta + step) - objective.loss(theta - step)) / 2e-6
        assert grad[index] == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_regulariser_is_on_all_parameters() -> None:
    model = FlatModel.named("logistic")
    objective = LocalObjective(model, torch.zeros(3, 784), torch.zeros(3, dtype=torch.int64), lam=0.5)
    theta = np.ones(model.size, np.float32)
    loss, grad = objective.loss_and_gradient(theta)
    # logits are all equal to the bias (1), so cross-entropy = log 10; regulariser = 0.25 * p
    assert loss == pytest.approx(math.log(10) + 0.25 * model.size, rel=1e-6)
    np.testing.assert_allclose(grad[:7840], 0.5, rtol=1e-6)  # zero features: only lam * theta on weights
