"""Validated, frozen settings: which member of the LAQ family runs, and on which problem.

A member of the family is a combination of four parts (Sun et al. 2019, section 2.3; LASG, Chen et al. 2020;
the journal version's baselines): a compressor (``laq_fl.compressors``), a memory (``laq_fl.memory``), a skip
rule (``laq_fl.skip_rules``) and a gradient oracle (full local gradients or seeded minibatches).
:data:`ALGORITHMS` is that table as data:

==========  ===============  ===============  ============  ==========
algorithm   compressor       memory           skip rule     gradients
==========  ===============  ===============  ============  ==========
gd          identity         none             never         full
qgd         grid (b bits)    reference        never         full
lag         identity         none             innovation    full
laq         grid (b bits)    reference        innovation    full
sgd         identity         none             never         minibatch
qsgd        qsgd (b bits)    none             never         minibatch
ssgd        sparsify         none             never         minibatch
slaq        grid (b bits)    reference        innovation    minibatch
lasg        identity         none             same-sample   minibatch
slaq-wk2    grid (b bits)    reference        same-sample   minibatch
ef-signsgd  scaled-sign      error-feedback   never         minibatch
terngrad    terngrad         none             never         minibatch
dgc         top-k            error-feedback   never         minibatch
lag-ps      identity         none             ps            full
laq-ps      grid (b bits)    reference        ps            full
lasg-ps     identity         none             ps            minibatch
slaq-ps     grid (b bits)    reference        ps            minibatch
==========  ===============  ===============  ============  ==========

``bits = 32`` means no quantization: a grid member then runs as its unquantized sibling (identity compressor,
no memory: QGD as GD, LAQ as LAG), which is what the paper's b = 32 means. ``innovation`` is rule (7a)-(7b);
``same-sample`` is LASG-WK2's test, which compares gradients on the same minibatch so that sampling noise does
not count as innovation; ``ps`` is LAG-PS / LASG-PS's server-side rule (the server does not contact a worker
whose iterate moved little since its last upload). A new member is one :func:`register_algorithm` call.

Any member can quantize the server's broadcast too (two-way LAQ, :mod:`laq_fl.downlink`): ``downlink_bits``
below 32 sends the iterate's innovation on LAQ's b-bit grid instead of theta in full.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from laq_fl.compressors import (
    COMPRESSORS,
    Compressor,
    Grid,
    Identity,
    ParameterError,
    build_compressor,
)
from laq_fl.errors import ConfigError
from laq_fl.memory import MEMORIES, Memory, NoMemory, memory_named
from laq_fl.part_state import declared
from laq_fl.skip_rules import (
    DEFAULT_T_BAR,
    RULES,
    RuleSettings,
    SkipRule,
    default_xi,
    rule_named,
)

FULL_PRECISION = 32
"""The ``bits`` value that switches quantization off."""

FULL = "full"
MINIBATCH = "minibatch"
GRADIENTS = (FULL, MINIBATCH)


@dataclass(frozen=True)
class AlgorithmSpec:
    """One member of the family: registry names of its compressor, memory and skip rule, and its gradients."""

    name: str
    compressor: str
    memory: str
    rule: str
    gradients: str = FULL

    def __post_init__(self) -> None:
        for kind, value, registry in (
            ("compressor", self.compressor, COMPRESSORS), ("memory", self.memory, MEMORIES), ("rule", self.rule, RULES)
        ):
            if value not in registry:
                raise ValueError(f"algorithm {self.name!r}: unknown {kind} {value!r}; registered: {', '.join(registry)}")
        declared((COMPRESSORS[self.compressor], MEMORIES[self.memory], RULES[self.rule].worker))  # no name twice
        if MEMORIES[self.memory].keeps_residual and RULES[self.rule].lazy:
            # On a skip nothing moves on either side, so the skipped gradient would be neither sent nor kept.
            raise ValueError(f"algorithm {self.name!r}: the {self.memory} memory needs a rule that never skips")
        if self.gradients not in GRADIENTS:
            raise ValueError(f"algorithm {self.name!r}: gradients must be one of {GRADIENTS}, got {self.gradients!r}")

    @property
    def lazy(self) -> bool:
        return RULES[self.rule].lazy

    @property
    def minibatch(self) -> bool:
        return self.gradients == MINIBATCH


ALGORITHMS: dict[str, AlgorithmSpec] = {}
"""Registry: algorithm name -> its parts."""


def register_algorithm(spec: AlgorithmSpec) -> AlgorithmSpec:
    """Add a member of the family (its parts must be registered); raises ``ValueError`` if the name is taken."""
    existing = ALGORITHMS.get(spec.name)
    if existing is not None and existing != spec:
        raise ValueError(f"an algorithm named {spec.name!r} is already registered: {existing}")
    ALGORITHMS[spec.name] = spec
    return spec


for _spec in (
    AlgorithmSpec("gd", "identity", "none", "never"),
    AlgorithmSpec("qgd", "grid", "reference", "never"),
    AlgorithmSpec("lag", "identity", "none", "innovation"),
    AlgorithmSpec("laq", "grid", "reference", "innovation"),
    AlgorithmSpec("sgd", "identity", "none", "never", MINIBATCH),
    AlgorithmSpec("qsgd", "qsgd", "none", "never", MINIBATCH),
    AlgorithmSpec("ssgd", "sparsify", "none", "never", MINIBATCH),
    AlgorithmSpec("slaq", "grid", "reference", "innovation", MINIBATCH),
    AlgorithmSpec("lasg", "identity", "none", "same-sample", MINIBATCH),
    AlgorithmSpec("slaq-wk2", "grid", "reference", "same-sample", MINIBATCH),
    AlgorithmSpec("ef-signsgd", "scaled-sign", "error-feedback", "never", MINIBATCH),
    AlgorithmSpec("terngrad", "terngrad", "none", "never", MINIBATCH),
    AlgorithmSpec("dgc", "top-k", "error-feedback", "never", MINIBATCH),
    AlgorithmSpec("lag-ps", "identity", "none", "ps"),
    AlgorithmSpec("laq-ps", "grid", "reference", "ps"),
    AlgorithmSpec("lasg-ps", "identity", "none", "ps", MINIBATCH),
    AlgorithmSpec("slaq-ps", "grid", "reference", "ps", MINIBATCH),
):
    register_algorithm(_spec)


MODELS = ("logistic", "mlp", "cnn")
DATASETS = ("mnist", "synthetic")
PARTITIONS = ("contiguous", "iid", "dirichlet", "pathological", "shard")  # laq_fl.data.PARTITIONS
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

    ``bits`` (1..16, or 32 for none) and ``density`` ((0, 1], the fraction of coordinates sent) go to the
    compressors that take them. ``xi_warmup`` spreads the weights over the differences that exist in the first D iterations, as the
    authors' script does (the paper counts the missing ones as zero); see :func:`laq_fl.skip_rules.lazy_threshold`.
    ``downlink_bits`` (2..16, or 32 for none) quantizes the broadcast (two-way LAQ); ``smoothness`` is ``L_m`` of
    the ``ps`` rule, the same for every worker (0: the server estimates it per worker).
    """

    algorithm: str = "laq"
    bits: int = 4
    lr: float = 0.02
    xi: tuple[float, ...] = field(default_factory=default_xi)
    t_bar: int = DEFAULT_T_BAR
    batch_size: int = 500
    density: float = 0.5
    xi_warmup: bool = False
    downlink_bits: int = FULL_PRECISION
    smoothness: float = 0.0

    def __post_init__(self) -> None:
        _one_of("algorithm", self.algorithm, list(ALGORITHMS))
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not (1 <= self.bits <= 16 or self.bits == 32):
            raise ConfigError("bits", f"must be in 1..16, or 32 for no quantization; got {self.bits!r}")
        _positive_float("lr", self.lr)
        object.__setattr__(self, "xi", tuple(self.xi))
        if len(self.xi) < 1:
            raise ConfigError("xi", "needs D >= 1 weights")
        for weight in self.xi:
            _positive_float("xi", weight, allow_zero=True)
        _positive_int("t_bar", self.t_bar)
        _positive_int("batch_size", self.batch_size)
        if not isinstance(self.xi_warmup, bool):
            raise ConfigError("xi_warmup", f"must be true or false, got {self.xi_warmup!r}")
        _positive_float("density", self.density)
        if self.density > 1:
            raise ConfigError("density", f"is the fraction of coordinates sent, in (0, 1]; got {self.density}")
        self.compressor()  # the compressor checks its own parameters, reported under the setting's name
        bits = self.downlink_bits
        if isinstance(bits, bool) or not isinstance(bits, int) or not (2 <= bits <= 16 or bits == FULL_PRECISION):
            raise ConfigError(
                "downlink_bits",
                f"must be in 2..16, or 32 to broadcast theta in full; got {bits!r} (a 1-bit grid's error is as large as "
                "the innovation it sends, so theta_tilde would never approach theta)",
            )
        _positive_float("smoothness", self.smoothness, allow_zero=True)

    @property
    def two_way(self) -> bool:
        """True when the broadcast is quantized (two-way LAQ)."""
        return self.downlink_bits != FULL_PRECISION

    def downlink_compressor(self, dtype: np.dtype | type | str = np.float32) -> Compressor | None:
        """LAQ's grid with ``downlink_bits`` for the iterate's innovation, or ``None`` to broadcast theta itself."""
        return _compressor(Grid.name, self.downlink_bits, self.density, 8 * np.dtype(dtype).itemsize) if self.two_way else None

    @property
    def spec(self) -> AlgorithmSpec:
        return ALGORITHMS[self.algorithm]

    @property
    def quantized(self) -> bool:
        """False when ``bits = 32`` turns a grid member into its unquantized sibling."""
        return not (self.spec.compressor == Grid.name and self.bits == FULL_PRECISION)

    def compressor(self, dtype: np.dtype | type | str = np.float32) -> Compressor:
        """The compressor for a run in ``dtype`` (the identity sends floats of that width)."""
        return _compressor(self.spec.compressor if self.quantized else Identity.name, self.bits, self.density,
                           8 * np.dtype(dtype).itemsize)

    @property
    def memory(self) -> Memory:
        return memory_named(self.spec.memory) if self.quantized else NoMemory()

    @property
    def rule(self) -> SkipRule:
        return rule_named(self.spec.rule)

    @property
    def num_differences(self) -> int:
        """D, the number of past parameter differences rule (7a) looks at."""
        return len(self.xi)

    def rule_settings(self, num_workers: int) -> RuleSettings:
        return RuleSettings(self.xi, self.lr, num_workers, self.xi_warmup, self.t_bar, self.smoothness)


@functools.lru_cache(maxsize=64)
def _compressor(name: str, bits: int, density: float, float_bits: int) -> Compressor:
    try:
        return build_compressor(name, {"bits": bits, "density": density, "float_bits": float_bits})
    except ParameterError as error:
        raise ConfigError(error.parameter, str(error)) from None
    except ValueError as error:  # a compressor that does not name its parameter
        raise ConfigError("algorithm", f"compressor {name!r} refused its settings: {error}") from None


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
    classes_per_partition: int = 2
    shards_per_partition: int = 2
    device: str = "cpu"
    """Where gradients and evaluation run: ``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (cuda when torch sees a GPU);
    only its spelling is checked here (:func:`laq_fl.problem.check_problem` asks torch)."""
    task: str = ""
    """A built-in task's name or ``"package.module:attribute"`` (:mod:`laq_fl.tasks`); empty: ``<dataset>-<model>``;
    resolved (imported, its files read) by :func:`laq_fl.problem.check_problem`, not here."""

    @property
    def task_spec(self) -> str:
        """What names this problem's task: ``task``, else ``"<dataset>-<model>"``."""
        return self.task or f"{self.dataset}-{self.model}"

    def __post_init__(self) -> None:
        _one_of("model", self.model, MODELS)
        _one_of("dataset", self.dataset, DATASETS)
        _one_of("partition", self.partition, PARTITIONS)
        _positive_int("num_workers", self.num_workers)
        _positive_float("lam", self.lam, allow_zero=True)
        _one_of("init", self.init, INITS)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError("seed", f"must be an integer in [0, 2^63) (torch's seed range), got {self.seed!r}")
        _one_of("dtype", self.dtype, DTYPES)
        if not isinstance(self.data_dir, str) or not self.data_dir:
            raise ConfigError("data_dir", f"must be a non-empty path, got {self.data_dir!r}")
        _positive_float("dirichlet_alpha", self.dirichlet_alpha)
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError("device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        _positive_int("classes_per_partition", self.classes_per_partition)
        _positive_int("shards_per_partition", self.shards_per_partition)
        if not isinstance(self.task, str):
            raise ConfigError("task", f"must be a string, got {self.task!r}")
        # No I/O here: whether torch sees the device and whether the task imports and fits its data is checked where
        # the problem is built (laq_fl.problem.check_problem, which the ServerApp calls before round 1).
