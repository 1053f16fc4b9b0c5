"""Compressors: what a worker does to a vector before it travels, one module each, and their registry.

==============  =====================================================  ==================  ========
name            scheme                                                 payload bits        unbiased
==============  =====================================================  ==================  ========
``identity``    the floats themselves                                  ``32 p``            yes
``grid``        LAQ's b-bit uniform grid on ``[-R, R]``, eq. (5)-(6)    ``32 + b p``        no
``qsgd``        QSGD (Alistarh et al. 2017)                            ``32 + b p``        yes
``sparsify``    random sparsification (Wangni et al. 2018)             ``p + 32 nnz``      yes
``scaled-sign`` EF-SignSGD's ``||v||_1/p sgn(v)`` (Karimireddy 2019)    ``32 + p``          no
``terngrad``    TernGrad (Wen et al. 2017)                             ``32 + 2 p``        yes
``top-k``       DGC's top-k (Lin et al. 2018)                          ``64 k``            no
==============  =====================================================  ==================  ========

A compressor is built from its name and the run's settings (``bits``, ``density``, ``float_bits``): each
class takes the ones that are its dataclass fields. To add one, write a module with a
:class:`~laq_fl.compressors.base.Compressor` subclass and add it to ``_BUILT_IN`` below (or call
:func:`register_compressor` from your own code); ``tests/test_compressor_contract.py`` then checks it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from laq_fl.compressors.base import Compressed, Compressor, NonFiniteError, ParameterError
from laq_fl.compressors.grid import Grid
from laq_fl.compressors.identity import Identity
from laq_fl.compressors.qsgd import Qsgd
from laq_fl.compressors.scaled_sign import ScaledSign
from laq_fl.compressors.sparsify import RandomSparsifier, sparsify_probabilities
from laq_fl.compressors.terngrad import TernGrad
from laq_fl.compressors.top_k import TopK

_BUILT_IN: tuple[type[Compressor], ...] = (Identity, Grid, Qsgd, RandomSparsifier, ScaledSign, TernGrad, TopK)

COMPRESSORS: dict[str, type[Compressor]] = {cls.name: cls for cls in _BUILT_IN}
"""Registry: name -> compressor class."""

_RNG_STREAM = 0x51C0  # keeps compression draws independent of the minibatch draws of the same round


def register_compressor(cls: type[Compressor]) -> type[Compressor]:
    """Add ``cls`` to :data:`COMPRESSORS` under ``cls.name`` (usable as a class decorator).

    Raises ``ValueError`` if the name is taken by another class (the same class reloaded replaces it).
    """
    existing = COMPRESSORS.get(cls.name)
    reloaded = existing is not None and (existing.__module__, existing.__qualname__) == (cls.__module__, cls.__qualname__)
    if existing is not None and existing is not cls and not reloaded:
        raise ValueError(f"a compressor named {cls.name!r} is already registered ({existing.__qualname__})")
    COMPRESSORS[cls.name] = cls
    return cls


def build_compressor(name: str, settings: Mapping[str, Any]) -> Compressor:
    """The compressor ``name`` with the settings among ``settings`` that it takes.

    Raises ``KeyError`` for an unknown name, ``ValueError`` for a bad parameter.
    """
    try:
        cls = COMPRESSORS[name]
    except KeyError:
        raise KeyError(f"unknown compressor {name!r}; registered: {', '.join(COMPRESSORS)}") from None
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in settings.items() if key in names})


@functools.lru_cache(maxsize=64)
def compressor_from_spec(spec: str) -> Compressor:
    """Inverse of :meth:`Compressor.spec`, cached: a worker validates each spec once per process.

    Raises ``ValueError`` for a malformed spec or parameter, ``KeyError`` for an unknown name.
    """
    name, *pairs = spec.split()
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise ValueError(f"compressor spec {spec!r}: expected key=value, got {pair!r}")
        settings[key] = _literal(text)
    compressor = build_compressor(name, settings)
    if compressor.params() != settings:
        raise ValueError(f"compressor spec {spec!r} does not match {name}'s parameters {sorted(compressor.params())}")
    return compressor


def _literal(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def compression_rng(seed: int, worker: int, iteration: int) -> np.random.Generator:
    """The random stream of ``worker`` at ``iteration`` for compressors with ``needs_rng``."""
    return np.random.default_rng([seed, worker, iteration, _RNG_STREAM])


__all__ = [
    "COMPRESSORS",
    "Compressed",
    "Compressor",
    "Grid",
    "Identity",
    "NonFiniteError",
    "ParameterError",
    "Qsgd",
    "RandomSparsifier",
    "ScaledSign",
    "TernGrad",
    "TopK",
    "build_compressor",
    "compression_rng",
    "compressor_from_spec",
    "register_compressor",
    "sparsify_probabilities",
]
