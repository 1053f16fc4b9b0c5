"""Validated, frozen settings: which member of the LAQ family runs, and on which problem.

The family is one mechanism with three switches: the compressor (LAQ's eq. 5-6 or a baseline's), the skip rule, and
whether workers use full or minibatch gradients (Sun et al. 2019, section 2.3; LASG, Chen et al. 2020):

==========  ==================  ==================  ===========
algorithm   compressor          skip rule           gradients
==========  ==================  ==================  ===========
gd          none (32 bit)       never skip          full
qgd         laq, b bits         never skip          full
lag         none (32 bit)       (7a)-(7b)           full
laq         laq, b bits         (7a)-(7b)           full
sgd         none (32 bit)       never skip          minibatch
qsgd        qsgd, b bits        never skip          minibatch
ssgd        sparsify, density   never skip          minibatch
slaq        laq, b bits         (7a)-(7b)           minibatch
lasg        none (32 bit)       same-sample, (7b)   minibatch
slaq-wk2    laq, b bits         same-sample, (7b)   minibatch
==========  ==================  ==================  ===========

QSGD (Alistarh et al. 2017) and SSGD (Wangni et al. 2018) are the paper's Table 3 baselines: unbiased
compressors of the gradient itself, on the same worker and server machinery (see ``compressors.py``).

"same-sample" is LASG-WK2's test: skip when the gradient on this round's minibatch changed little
between theta_hat_m (the last upload) and theta^k, measured on that same minibatch, so that sampling
noise does not count as innovation (rule (7a) on minibatch gradients mostly measures noise).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

from laq_fl.compressors import LAQ, NONE, QSGD, SPARSIFY, Compressor
from laq_fl.quantizer import FULL_PRECISION, validate_bits
from laq_fl.rule import DEFAULT_T_BAR, default_xi


class ConfigError(ValueError):
    """An invalid setting; ``key`` names it and the message says what is allowed."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


RULE_NONE = "none"
RULE_LAQ = "laq"
RULE_SAME_SAMPLE = "same-sample"
RULES = (RULE_NONE, RULE_LAQ, RULE_SAME_SAMPLE)


@dataclass(frozen=True)
class AlgorithmSpec:
    """Where one algorithm sits in the family: its compressor, its skip rule, its gradient oracle."""

    name: str
    compressor: str
    rule: str
    stochastic: bool

    @property
    def lazy(self) -> bool:
        return self.rule != RULE_NONE


ALGORITHMS: dict[str, AlgorithmSpec] = {
    spec.name: spec
    for spec in (
        AlgorithmSpec("gd", compressor=NONE, rule=RULE_NONE, stochastic=False),
        AlgorithmSpec("qgd", compressor=LAQ, rule=RULE_NONE, stochastic=False),
        AlgorithmSpec("lag", compressor=NONE, rule=RULE_LAQ, stochastic=False),
        AlgorithmSpec("laq", compressor=LAQ, rule=RULE_LAQ, stochastic=False),
        AlgorithmSpec("sgd", compressor=NONE, rule=RULE_NONE, stochastic=True),
        AlgorithmSpec("qsgd", compressor=QSGD, rule=RULE_NONE, stochastic=True),
        AlgorithmSpec("ssgd", compressor=SPARSIFY, rule=RULE_NONE, stochastic=True),
        AlgorithmSpec("slaq", compressor=LAQ, rule=RULE_LAQ, stochastic=True),
        AlgorithmSpec("lasg", compressor=NONE, rule=RULE_SAME_SAMPLE, stochastic=True),
        AlgorithmSpec("slaq-wk2", compressor=LAQ, rule=RULE_SAME_SAMPLE, stochastic=True),
    )
}

MODELS = ("logistic", "mlp")
DATASETS = ("mnist", "synthetic")
PARTITIONS = ("contiguous", "iid", "dirichlet")
INITS = ("glorot", "zeros")
DTYPES = ("float32", "float64")


def _one_of(key: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise ConfigError(key, f"{value!r} is not one of {', '.join(map(str, allowed))}")


def _positive_int(key: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, f"must be an integer >= {minimum}, got {value!r}")


def _positive_float(key: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(key, f"must be a finite number {bound}, got {value!r}")


@dataclass(frozen=True)
class AlgorithmConfig:
    """The optimiser's settings: algorithm, bits b, step size alpha, rule weights xi, t_bar, batch size, density.

    ``xi_warmup`` spreads the weights over the differences that exist in the first D iterations, as the
    authors' script does (the paper counts the missing ones as zero); see :func:`laq_fl.rule.lazy_threshold`.
    """

    algorithm: str = "laq"
    bits: int = 4
    lr: float = 0.02
    xi: tuple[float, ...] = field(default_factory=default_xi)
    t_bar: int = DEFAULT_T_BAR
    batch_size: int = 500
    density: float = 0.5
    xi_warmup: bool = False

    def __post_init__(self) -> None:
        _one_of("algorithm", self.algorithm, list(ALGORITHMS))
        try:
            validate_bits(self.bits)
        except ValueError as exc:
            raise ConfigError("bits", f"must be in 1..16, or 32 for no quantization; got {self.bits!r}") from exc
        _positive_float("lr", self.lr)
        object.__setattr__(self, "xi", tuple(self.xi))
        if len(self.xi) < 1:
            raise ConfigError("xi", "needs D >= 1 weights")
        for weight in self.xi:
            _positive_float("xi", weight, allow_zero=True)
        _positive_int("t_bar", self.t_bar)
        _positive_int("batch_size", self.batch_size)
        if self.spec.compressor == QSGD:
            try:
                Compressor(QSGD, self.bits)
            except ValueError as exc:
                raise ConfigError("bits", str(exc)) from None
        if not isinstance(self.xi_warmup, bool):
            raise ConfigError("xi_warmup", f"must be true or false, got {self.xi_warmup!r}")
        _positive_float("density", self.density)
        if self.density > 1:
            raise ConfigError("density", f"is the expected fraction of coordinates sent, in (0, 1]; got {self.density}")

    @property
    def spec(self) -> AlgorithmSpec:
        return ALGORITHMS[self.algorithm]

    @functools.cached_property
    def compressor(self) -> Compressor:
        """What workers do to their gradients before upload (and the server to undo it)."""
        scheme = self.spec.compressor
        bits = self.bits if scheme in (LAQ, QSGD) else FULL_PRECISION
        return Compressor(scheme, bits, self.density if scheme == SPARSIFY else 1.0)

    @property
    def wire_bits(self) -> int:
        """Bits per coordinate of the fixed-width uploads: ``bits`` for quantized members, else 32."""
        return self.compressor.wire_bits

    @property
    def memory(self) -> int:
        """D, the number of past parameter differences rule (7a) looks at."""
        return len(self.xi)


@dataclass(frozen=True)
class ProblemConfig:
    """The learning problem: model, data, partition, objective f_m and starting point."""

    model: str = "logistic"
    dataset: str = "mnist"
    partition: str = "contiguous"
    num_workers: int = 10
    lam: float = 0.01
    init: str = "glorot"
    seed: int = 0
    dtype: str = "float32"
    data_dir: str = "data"
    dirichlet_alpha: float = 0.5

    def __post_init__(self) -> None:
        _one_of("model", self.model, MODELS)
        _one_of("dataset", self.dataset, DATASETS)
        _one_of("partition", self.partition, PARTITIONS)
        _positive_int("num_workers", self.num_workers)
        _positive_float("lam", self.lam, allow_zero=True)
        _one_of("init", self.init, INITS)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", f"must be an integer >= 0, got {self.seed!r}")
        _one_of("dtype", self.dtype, DTYPES)
        if not isinstance(self.data_dir, str) or not self.data_dir:
            raise ConfigError("data_dir", f"must be a non-empty path, got {self.data_dir!r}")
        _positive_float("dirichlet_alpha", self.dirichlet_alpha)
