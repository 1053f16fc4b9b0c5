"""Skip rules, each a server half and a worker half, and their registry.

The server half decides, per worker and round, what to send with theta^k: the shared threshold, whether
the upload is forced, whether both sides reset to ``Q_hat = 0`` -- or nothing at all (``None``: the worker
is not contacted this round, computes nothing and keeps its stale copy in the aggregate). The worker half
decides upload or skip from the :class:`Evidence` it declares it needs.

=================  ============================================================  ==========================
rule               worker skips when                                             evidence
=================  ============================================================  ==========================
``never``          never (GD, QGD, SGD and the compressors' baselines)            --
``innovation``     ``||Q - Q_hat||^2 <= thr + 3 (||eps||^2 + ||eps_hat||^2)``    innovation, both errors
                   (7a), Sun et al. 2019
``same-sample``    ``||grad l(theta^k; xi) - grad l(theta_hat; xi)||^2 <= thr``   the gradient at theta_hat
                   LASG-WK2, Chen, Yin, Sun 2020                                  on the same minibatch xi
``ps``             not contacted when ``L_m^2 ||theta^k - theta_hat_m||^2 <= thr``   -- (the server decides)
                   LAG-PS, Chen et al. 2018; LASG-PS, Chen, Yin, Sun 2020
=================  ============================================================  ==========================

``thr = (1/(alpha^2 M^2)) sum_d xi_d ||theta^{k+1-d} - theta^{k-d}||^2`` is the same for every worker, so the
server computes it (:func:`lazy_threshold`). Criterion (7b) wraps any lazy rule's server half
(:class:`ForcedAfter`): after ``t_bar`` consecutive skips the upload is forced. Whatever the rule, the
server forces the upload, *with a reset* to ``Q_hat = 0`` on both sides, of a worker it holds no copy of or whose
last reply it lost (:attr:`laq_fl.protocol.WorkerRecord.needs_reset`): a half never sees to that.

A server half reads the server's :class:`ServerView` and the worker's record (:class:`WorkerView`); a worker half
decides from :class:`Evidence`. A half that keeps per-worker arrays declares them (``state_arrays``,
:mod:`laq_fl.part_state`) and the worker holds them for it.

``ps`` is the server-side rule: before the round the server skips worker m -- no message, no computation, no
reply, its stale copy stays in the aggregate -- when ``L_m^2 ||theta^k - theta_hat_m||^2`` (``theta_hat_m``: the
iterate of m's last upload) is at most the same threshold, LAG-PS's condition (Chen, Giannakis, Sun, Yin 2018):
by L_m-smoothness of f_m the skipped worker's gradient moved at most ``L_m ||theta^k - theta_hat_m||``. ``L_m`` is
the run's ``smoothness`` when it is set (LASG's code uses one constant for every worker), else the server's
estimate from m's own uploads: the largest secant ``||Q_m(new) - Q_m(old)|| / ||theta_new - theta_old||`` seen
(before a worker's second upload it is always contacted). The estimate is a heuristic, without LAG-PS's guarantee:
for exact gradients every secant is at most the true L_m, so it is a lower bound and the rule may skip a worker
whose gradient moved more than the threshold allows (set ``smoothness`` to a true bound for the guarantee); on
quantized and, above all, minibatch gradients noise inflates the secants, and the rule skips less than it could.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from laq_fl.arrays import squared_norm
from laq_fl.part_state import HoldsState, StateArray

DEFAULT_D = 10
DEFAULT_XI_SUM = 0.8
DEFAULT_T_BAR = 100



def default_xi(num_differences: int = DEFAULT_D, total: float = DEFAULT_XI_SUM) -> tuple[float, ...]:
    """The paper's weights: ``xi_d = total / D`` for ``d = 1..D`` (0.8/D by default)."""
    if num_differences < 1:
        raise ValueError(f"D (the number of parameter differences) must be >= 1, got {num_differences}")
    return (total / num_differences,) * num_differences


def lazy_threshold(
    recent_sq_diffs: Sequence[float], xi: Sequence[float], lr: float, num_workers: int, warmup: bool = False
) -> float:
    """Server part of (7a): ``(1/(alpha^2 M^2)) sum_d xi_d ||theta^{k+1-d} - theta^{k-d}||^2``.

    ``recent_sq_diffs[0]`` is the newest squared parameter difference ``||theta^k - theta^{k-1}||^2``.
    Differences from before the first iteration are missing and count as zero, as the paper has it.
    With ``warmup``, while fewer than D differences exist the total weight ``sum xi`` is spread
    evenly over those that do (``xi_d = 0.8/k`` at iteration ``k <= D``), as the authors' ``LAQ.py`` does.
    """
    if warmup and 0 < len(recent_sq_diffs) < len(xi):
        xi = (sum(xi) / len(recent_sq_diffs),) * len(recent_sq_diffs)
    weighted = sum(weight * sq for weight, sq in zip(xi, recent_sq_diffs))
    return weighted / (lr * lr * num_workers * num_workers)


@dataclass(frozen=True)
class Instruction:
    """What the server tells one worker with theta^k.

    ``threshold`` is the shared part of the rule; ``force_upload`` is (7b), a first upload or a non-lazy
    member; ``reset`` asks the worker to restart from ``Q_hat = 0`` because the server lost its last reply.
    """

    threshold: float
    force_upload: bool
    reset: bool = False


@dataclass(frozen=True)
class Evidence:
    """What a worker half may look at (squared norms, float64).

    ``innovation_sq`` is ``||Q - Q_hat||^2``; ``error_sq`` ``||eps||^2 = ||g - Q||^2``; ``last_error_sq``
    ``||eps_hat||^2`` of the last upload; ``same_sample_change`` ``||grad l(theta^k; xi) - grad l(theta_hat; xi)||^2``
    (``inf`` before the first upload), ``None`` unless the rule needs it.
    """

    innovation_sq: float
    error_sq: float
    last_error_sq: float
    same_sample_change: float | None = None


class ServerView(Protocol):
    """What a server half may read of the server's state."""

    recent_sq_diffs: Sequence[float]
    theta: np.ndarray
    iterate: np.ndarray
    """Where workers compute this round (``theta_tilde`` with two-way broadcasts)."""
    iteration: int


class WorkerView(Protocol):
    """What a server half may read of the server's record of one worker (:class:`laq_fl.protocol.WorkerRecord`)."""

    copy: Any
    """``Q_hat_m`` as the server holds it, ``None`` before the first upload."""
    skip_clock: int
    """Consecutive rounds without an upload (skips or no contact), for (7b)."""
    upload_iterate: np.ndarray | None
    """``theta_hat_m``; kept only when the rule's server half ``needs_upload_iterates``."""
    smoothness: float | None
    """The server's estimate of ``L_m`` (see ``ps``)."""


class ServerHalf(ABC):
    """Decides, per worker and round, the :class:`Instruction` to send, or ``None`` for no contact.

    A half need not handle resyncs: the server forces a reset upload whenever the worker needs one.
    """

    needs_upload_iterates: ClassVar[bool] = False
    """True when the half reads ``upload_iterate`` and ``smoothness``, which the server then keeps."""

    @abstractmethod
    def instruct(self, server: ServerView, worker: WorkerView) -> Instruction | None: ...


class WorkerHalf(ABC):
    """Decides upload or skip from :class:`Evidence`.

    A half that needs evidence beyond the innovation and the errors computes it in :meth:`extra_evidence` (called
    before the compression, unless the upload is forced) and keeps what it needs in its declared ``state_arrays``.
    """

    state_arrays: ClassVar[tuple[StateArray, ...]] = ()
    """The arrays this half keeps per worker (:class:`~laq_fl.part_state.StateArray`)."""

    @abstractmethod
    def skip(self, evidence: Evidence, threshold: float) -> bool: ...

    def extra_evidence(self, state: HoldsState, gradient_at: Callable[[np.ndarray], Any], grad: Any) -> float | None:
        """``Evidence.same_sample_change`` or another extra number; ``gradient_at(theta)`` computes the gradient at
        another iterate on this round's data (it costs a gradient). The base half needs none."""
        return None

    def uploaded(self, state: HoldsState, theta: np.ndarray) -> None:  # noqa: B027 - a hook
        """After an upload computed at ``theta``: update the half's own arrays; most keep none."""


class AlwaysUpload(ServerHalf):
    """Every worker uploads every round."""

    def instruct(self, server: ServerView, worker: WorkerView) -> Instruction:
        return Instruction(threshold=0.0, force_upload=True)


@dataclass(frozen=True)
class SharedThreshold(ServerHalf):
    """Sends (7a)'s shared threshold; forces only a first upload or a resync."""

    xi: tuple[float, ...]
    lr: float
    num_workers: int
    warmup: bool = False

    def threshold(self, server: ServerView) -> float:
        return lazy_threshold(server.recent_sq_diffs, self.xi, self.lr, self.num_workers, self.warmup)

    def instruct(self, server: ServerView, worker: WorkerView) -> Instruction:
        return Instruction(threshold=self.threshold(server), force_upload=False)


@dataclass(frozen=True)
class ForcedAfter(ServerHalf):
    """(7b) around any server half: after ``t_bar`` consecutive skips (or rounds without contact) force the upload."""

    inner: ServerHalf
    t_bar: int

    @property
    def needs_upload_iterates(self) -> bool:  # type: ignore[override]
        return self.inner.needs_upload_iterates

    def instruct(self, server: ServerView, worker: WorkerView) -> Instruction | None:
        instruction = self.inner.instruct(server, worker)
        if worker.skip_clock < self.t_bar:
            return instruction
        if instruction is None:
            return Instruction(threshold=0.0, force_upload=True)
        return dataclasses.replace(instruction, force_upload=True)


@dataclass(frozen=True)
class IterateDistance(ServerHalf):
    """LAG-PS / LASG-PS: contact worker m only when ``L_m^2 ||theta^k - theta_hat_m||^2`` exceeds (7a)'s threshold.

    ``smoothness`` is ``L_m`` for every worker; 0 uses the server's per-worker estimate (see the module docstring).
    Returns ``None`` (no contact) for a skipped worker; (7b) and resyncs are added around it.
    """

    threshold: SharedThreshold
    smoothness: float = 0.0
    needs_upload_iterates: ClassVar[bool] = True

    def instruct(self, server: ServerView, worker: WorkerView) -> Instruction | None:
        threshold = self.threshold.threshold(server)
        instruction = Instruction(threshold=threshold, force_upload=False)
        last = worker.upload_iterate
        lipschitz = self.smoothness or worker.smoothness
        if last is None or lipschitz is None:
            return instruction
        moved = server.iterate.astype(np.float64) - last
        return None if lipschitz * lipschitz * squared_norm(moved) <= threshold else instruction


class NeverSkip(WorkerHalf):
    def skip(self, evidence: Evidence, threshold: float) -> bool:
        return False


class InnovationTest(WorkerHalf):
    """(7a): skip when ``||Q - Q_hat||^2 <= threshold + 3 (||eps||^2 + ||eps_hat||^2)``."""

    def skip(self, evidence: Evidence, threshold: float) -> bool:
        return evidence.innovation_sq <= threshold + 3.0 * (evidence.error_sq + evidence.last_error_sq)


class SameSampleTest(WorkerHalf):
    """LASG-WK2 (Chen, Yin, Sun 2020): skip when the gradient on this round's minibatch moved little since
    ``theta_hat``, the iterate of the last upload: ``||grad l(theta^k; xi) - grad l(theta_hat; xi)||^2 <= thr``.
    Costs a second gradient per round (at ``theta_hat`` on the same minibatch); before the first upload it uploads."""

    theta_hat = StateArray("theta-hat", upload_iterate=True)
    """``theta_hat``, the run's dtype; the server keeps the same iterate and restores it."""
    state_arrays = (theta_hat,)

    def skip(self, evidence: Evidence, threshold: float) -> bool:
        if evidence.same_sample_change is None:
            raise ValueError("the same-sample rule needs Evidence.same_sample_change")
        return evidence.same_sample_change <= threshold

    def extra_evidence(self, state: HoldsState, gradient_at: Callable[[np.ndarray], Any], grad: Any) -> float:
        theta_hat = state.held.get(self.theta_hat.name)
        if theta_hat is None:  # nothing to compare with: upload
            return float("inf")
        stale = gradient_at(theta_hat)
        stale -= grad
        return squared_norm(stale)

    def uploaded(self, state: HoldsState, theta: np.ndarray) -> None:
        state.held[self.theta_hat.name] = np.array(theta, copy=True)


@dataclass(frozen=True)
class RuleSettings:
    """What a server half may be built from: xi (D weights), alpha, M, the warm-up switch and t_bar."""

    xi: tuple[float, ...]
    lr: float
    num_workers: int
    xi_warmup: bool = False
    t_bar: int = DEFAULT_T_BAR
    smoothness: float = 0.0


@dataclass(frozen=True)
class SkipRule:
    """A rule's two halves. ``lazy`` rules may skip; their server half is wrapped in (7b)."""

    name: str
    worker: WorkerHalf
    make_server: Callable[[RuleSettings], ServerHalf]
    lazy: bool = True

    def server(self, settings: RuleSettings) -> ServerHalf:
        half = self.make_server(settings)
        return ForcedAfter(half, settings.t_bar) if self.lazy else half


def _threshold(settings: RuleSettings) -> SharedThreshold:
    return SharedThreshold(settings.xi, settings.lr, settings.num_workers, settings.xi_warmup)


RULES: dict[str, SkipRule] = {
    rule.name: rule
    for rule in (
        SkipRule("never", NeverSkip(), lambda settings: AlwaysUpload(), lazy=False),
        SkipRule("innovation", InnovationTest(), _threshold),
        SkipRule("same-sample", SameSampleTest(), _threshold),
        SkipRule("ps", NeverSkip(), lambda settings: IterateDistance(_threshold(settings), settings.smoothness)),
    )
}
"""Registry: name -> skip rule."""


def rule_named(name: str) -> SkipRule:
    """The registered rule ``name``; raises ``KeyError`` naming the registered ones."""
    try:
        return RULES[name]
    except KeyError:
        raise KeyError(f"unknown skip rule {name!r}; registered: {', '.join(RULES)}") from None
