"""Eq. (5)-(6): the innovation quantizer."""

from __future__ import annotations

import numpy as np
import pytest

from laq_fl.quantizer import FULL_PRECISION, dequantize, quantize_innovation, validate_bits

ALL_BITS = list(range(1, 17))


def random_pair(rng: np.random.Generator, size: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    grad = (rng.normal(size=size) * rng.choice([1e-3, 1.0, 1e3])).astype(dtype)
    q_hat = (grad + rng.normal(size=size) * rng.choice([1e-4, 1e-1, 10.0])).astype(dtype)
    return grad, q_hat


@pytest.mark.parametrize("bits", ALL_BITS)
def test_error_bound_float64(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for _ in range(20):
        grad, q_hat = random_pair(rng, 1000, np.float64)
        result = quantize_innovation(grad, q_hat, bits)
        tau = 1.0 / (2**bits - 1)
        radius = float(result.radius)
        assert radius == pytest.approx(np.max(np.abs(grad - q_hat)), rel=1e-7)
        # R travels as float32; the bound holds up to that rounding and float64 arithmetic.
        slack = 1e-6 * tau * radius + 4 * np.finfo(np.float64).eps * np.max(np.abs(result.value))
        assert np.max(np.abs(result.error)) <= tau * radius + slack
        np.testing.assert_array_equal(result.error, grad - result.value)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_error_bound_float32(bits: int) -> None:
    rng = np.random.default_rng(100 + bits)
    for _ in range(20):
        grad, q_hat = random_pair(rng, 1000, np.float32)
        result = quantize_innovation(grad, q_hat, bits)
        tau = 1.0 / (2**bits - 1)
        # Q is stored as float32: it can sit up to half a float32 ulp away from the exact grid point.
        half_ulp = 0.5 * np.spacing(np.abs(result.value).astype(np.float32)).astype(np.float64)
        assert np.all(np.abs(result.error) <= tau * float(result.radius) * (1 + 1e-6) + half_ulp)
        assert result.value.dtype == np.float32


@pytest.mark.parametrize("bits", ALL_BITS)
def test_levels_in_range_and_reconstruct(bits: int) -> None:
    rng = np.random.default_rng(200 + bits)
    grad, q_hat = random_pair(rng, 5000, np.float32)
    result = quantize_innovation(grad, q_hat, bits)
    assert result.levels is not None
    assert result.levels.dtype == (np.uint8 if bits <= 8 else np.uint16)
    assert result.levels.min() >= 0 and result.levels.max() <= 2**bits - 1
    # The coordinate with |innovation| = R maps to the end of the grid on its side.
    innovation = grad.astype(np.float64) - q_hat
    extreme = np.argmax(np.abs(innovation))
    assert result.levels[extreme] == (2**bits - 1 if innovation[extreme] > 0 else 0)
    # The receiver rebuilds exactly the same Q from (q_hat, levels, R).
    np.testing.assert_array_equal(dequantize(q_hat, result.levels, result.radius, bits), result.value)


@pytest.mark.parametrize("bits", [1, 3, 8, 16])
def test_zero_innovation_keeps_copy(bits: int) -> None:
    q_hat = np.linspace(-1, 1, 101, dtype=np.float32)
    result = quantize_innovation(q_hat.copy(), q_hat, bits)
    assert result.radius == 0.0
    np.testing.assert_array_equal(result.value, q_hat)
    assert not np.any(np.isnan(result.value)) and result.error_sq == 0.0


def test_full_precision_is_identity() -> None:
    rng = np.random.default_rng(1)
    grad, q_hat = random_pair(rng, 100, np.float32)
    result = quantize_innovation(grad, q_hat, FULL_PRECISION)
    np.testing.assert_array_equal(result.value, grad)
    assert result.levels is None and result.error_sq == 0.0
    assert result.value is not grad


def test_more_bits_less_error() -> None:
    rng = np.random.default_rng(2)
    grad, q_hat = random_pair(rng, 2000, np.float64)
    errors = [quantize_innovation(grad, q_hat, bits).error_sq for bits in (2, 4, 8, 12)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] * 1e-6


@pytest.mark.parametrize("bits", [0, 17, 31, 33, -1, 4.0, True, "4"])
def test_invalid_bits_rejected(bits: object) -> None:
    with pytest.raises(ValueError, match="bits"):
        validate_bits(bits)  # type: ignore[arg-type]
