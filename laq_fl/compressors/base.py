"""The compressor interface: a vector becomes a payload that travels, and the payload becomes a vector again.

A compressor knows nothing of memories, rules or rounds (GRACE's decomposition, Xu et al. 2021): the memory
decides *what* vector is compressed (the gradient, its innovation against the last upload, or the gradient plus
an error-feedback residual) and what the receiver does with the decoded vector.

Contract, checked for every registered compressor by ``tests/test_compressor_contract.py``:

1. ``compress(x, rng)`` returns the payload and the float64 vector ``decompress(payload)`` yields, bit for bit,
   so worker and server can build identical copies without the worker decoding its own bytes.
2. ``|x_i - decompress(payload)_i| <= error_bound(x)`` for every coordinate (float32 rounding of values that
   travel as float32 aside).
3. ``payload_bits(payload, p)`` counts what the papers count and never more than ``8 * len(payload)``.
4. ``compress`` refuses a non-finite vector (:class:`NonFiniteError`); ``decompress`` refuses any malformed payload
   (wrong length, wrong type, NaN/inf, codes out of range) with :class:`~laq_fl.errors.PayloadError` and returns
   only finite vectors, so a bad upload never reaches the server's state.
5. Compressors with ``needs_rng`` draw only from the generator they are given, so runs are reproducible.
6. Every float on the wire is little-endian; bit-packed codes are most significant bit first.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from laq_fl.arrays import all_finite, as_float64, is_tensor, to_numpy
from laq_fl.codec import as_byte_array
from laq_fl.errors import NonFiniteError, ParameterError, PayloadError
from laq_fl.part_state import StateArray

FLOAT32_LE = np.dtype("<f4")
FLOAT64_LE = np.dtype("<f8")
"""The floats that travel: little-endian, whatever the machine."""
SCALE_BYTES = 4
"""One little-endian float32 scale (a radius or a norm) at the start of a payload."""


class Compressed:
    """One compressed vector.

    Attributes
    ----------
    payload
        The bytes that travel. A compressor may hand over a function that packs them instead: it runs on the first
        read, so a vector the rule then keeps back (a skip) is never packed, nor copied off a GPU.
    value
        ``decompress(payload)`` as float64, shape ``(p,)``: what the receiver will reconstruct, bit for bit (a
        numpy array, or a torch tensor on the device of the vector that was compressed).
    """

    __slots__ = ("_pack", "_payload", "value")

    def __init__(self, payload: bytes | Callable[[], bytes], value: Any) -> None:
        self._payload, self._pack = (None, payload) if callable(payload) else (bytes(payload), None)
        self.value = value

    @property
    def payload(self) -> bytes:
        if self._payload is None:
            self._payload, self._pack = self._pack(), None
        return self._payload


@dataclass(frozen=True)
class Compressor(ABC):
    """A compression scheme with its parameters (the dataclass fields); worker and server hold equal ones.

    Subclasses set ``name`` (the registry key), ``needs_rng`` and ``unbiased``, and implement
    :meth:`_compress`, :meth:`_decompress`, :meth:`payload_bits` and :meth:`error_bound`. Parameters are
    validated in ``__post_init__`` with a ``ValueError`` that names them.
    """

    name: ClassVar[str]
    needs_rng: ClassVar[bool] = False
    state_arrays: ClassVar[tuple[StateArray, ...]] = ()
    """Arrays the compressor keeps per worker between rounds (:class:`~laq_fl.part_state.StateArray`); none keeps any
    yet, the worker would hold them for it as for a memory."""
    """True when :meth:`compress` draws random numbers: pass ``rng``."""
    unbiased: ClassVar[bool] = False
    """True when ``E[decompress(compress(x))] = x`` over the draws of ``rng``."""

    def compress(self, vector: np.ndarray, rng: np.random.Generator | None = None) -> Compressed:
        """Compress a flat vector of shape ``(p,)`` (any float dtype or byte order; a numpy array, or a torch
        tensor on any device, whose :attr:`Compressed.value` then stays on that device).

        Raises :class:`NonFiniteError` for NaN or inf entries, ``ValueError`` for another shape or a missing ``rng``.
        """
        tensor = is_tensor(vector)
        if not tensor:
            vector = np.asarray(vector)
        if vector.ndim != 1 or not (vector.is_floating_point() if tensor else vector.dtype.kind == "f"):
            raise ValueError(f"compress takes a flat float vector, got {vector.dtype} with shape {tuple(vector.shape)}")
        values = as_float64(vector)  # numpy: native byte order from here on
        if not all_finite(values):
            check_finite(to_numpy(values))
        if self.needs_rng and rng is None:
            raise ValueError(f"{self.name} is random: pass rng=compression_rng(seed, worker, iteration)")
        compressed = self._compress_tensor(values, rng) if tensor else self._compress(values, rng)
        if not all_finite(compressed.value):  # e.g. a value beyond the range of the wire's floats
            raise NonFiniteError(f"{self.name} cannot represent this gradient: it compresses to NaN or inf")
        return compressed

    def _compress_tensor(self, values: Any, rng: np.random.Generator | None) -> Compressed:
        """``values``: a finite float64 torch tensor of shape ``(p,)``. This default compresses on the CPU with
        :meth:`_compress` and moves the value back to ``values``' device; compressors with a torch kernel
        override it, with the same payload and value bit for bit (``tests/test_compressor_contract.py``)."""
        import torch

        compressed = self._compress(values.cpu().numpy(), rng)
        return Compressed(payload=compressed.payload, value=torch.from_numpy(compressed.value).to(values.device))

    def decompress(self, payload: bytes | bytearray | memoryview | np.ndarray, size: int) -> np.ndarray:
        """The float64 vector of shape ``(size,)`` a payload encodes.

        Raises :class:`~laq_fl.errors.PayloadError` for anything malformed, before the caller changes any state.
        """
        buffer = as_byte_array(payload)
        try:
            values = self._decompress(buffer, size)
        except PayloadError:
            raise
        except (ValueError, TypeError, IndexError, OverflowError) as exc:  # a decoder that missed a check
            raise PayloadError(f"{self.name} could not decode a {buffer.size}-byte payload: {exc}") from exc
        if values.shape != (size,) or values.dtype != np.float64:
            raise PayloadError(f"{self.name} decoded {values.dtype} of shape {values.shape}; expected ({size},) float64")
        if not np.all(np.isfinite(values)):
            raise PayloadError(f"{self.name} payload decodes to NaN or inf")
        return values

    @abstractmethod
    def _compress(self, values: np.ndarray, rng: np.random.Generator | None) -> Compressed:
        """``values``: finite, float64, native byte order, shape ``(p,)``."""

    @abstractmethod
    def _decompress(self, buffer: np.ndarray, size: int) -> np.ndarray:
        """``buffer``: the payload as a 1-D uint8 array. Raise :class:`PayloadError` for anything malformed."""

    @abstractmethod
    def payload_bits(self, payload: bytes, size: int) -> int:
        """Bits of one payload as the papers count them; at most ``8 * len(payload)``."""

    @abstractmethod
    def error_bound(self, vector: np.ndarray) -> float:
        """``max_i |x_i - decompress(compress(x))_i|`` can reach at most this, for every draw of ``rng``."""

    def params(self) -> dict[str, Any]:
        """The parameters that, with ``name``, rebuild an equal compressor (plain Python numbers)."""
        return {key: value.item() if isinstance(value, np.generic) else value for key, value in dataclasses.asdict(self).items()}

    def spec(self) -> str:
        """``"name key=value ..."``, the compressor as one string (it travels in every instruction)."""
        return " ".join([self.name, *(f"{key}={value!r}" for key, value in sorted(self.params().items()))])


def check_finite(values: np.ndarray) -> None:
    """Raise :class:`NonFiniteError` naming the first NaN or inf of a gradient."""
    finite = np.isfinite(values)
    if not finite.all():
        first = int(np.argmin(finite))
        raise NonFiniteError(
            f"the gradient has {int(values.size - finite.sum())} non-finite value(s) "
            f"(first at index {first}: {values[first]}); a NaN or inf gradient cannot be sent"
        )


def check_size(buffer: np.ndarray, expected: int, what: str) -> None:
    """Raise :class:`PayloadError` unless the payload is exactly ``expected`` bytes."""
    if buffer.size != expected:
        raise PayloadError(f"{what} payload is {buffer.size} bytes; expected exactly {expected}")


def read_scale(buffer: np.ndarray, what: str) -> float:
    """The float32 scale at the start of a payload; raises :class:`PayloadError` unless finite and >= 0."""
    if buffer.size < SCALE_BYTES:
        raise PayloadError(f"{what} payload starts with a 4-byte float32 scale; got {buffer.size} bytes")
    scale = float(buffer[:SCALE_BYTES].view(FLOAT32_LE)[0])
    if not np.isfinite(scale) or scale < 0.0:
        raise PayloadError(f"{what} scale must be finite and >= 0, got {scale}")
    return scale


def scale_bytes(scale: float) -> bytes:
    return np.asarray(scale, FLOAT32_LE).tobytes()


def float32_at_least(value: float) -> np.float32:
    """The smallest float32 >= ``value``, so that ``|x_i| / scale <= 1`` survives rounding the scale to float32."""
    rounded = np.float32(value)
    if float(rounded) < value:
        rounded = np.nextafter(rounded, np.float32(np.inf))
    return rounded


def check_int(compressor: str, parameter: str, value: Any, low: int, high: int) -> None:
    """Raise :class:`ParameterError` unless ``value`` is an integer in ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ParameterError(parameter, f"{compressor} needs {parameter} in {low}..{high}, got {value!r}")


def check_fraction(compressor: str, parameter: str, value: Any) -> None:
    """Raise :class:`ParameterError` unless ``value`` is a number in (0, 1]."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and 0.0 < value <= 1.0
    if not ok:
        raise ParameterError(parameter, f"{compressor} needs {parameter} in (0, 1], got {value!r}")
