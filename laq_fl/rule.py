"""The lazy upload rule of LAQ, criteria (7a) and (7b).

Worker ``m`` skips its upload at iteration ``k`` when both hold::

    ||Q_m(theta_hat) - Q_m(theta^k)||^2 <= (1 / (alpha^2 M^2)) sum_d xi_d ||theta^{k+1-d} - theta^{k-d}||^2
                                          + 3 (||eps_m^k||^2 + ||eps_hat_m||^2)                  (7a)
    t_m < t_bar                                                                                   (7b)

The first term on the right is the same for every worker, so the server computes it
(:func:`lazy_threshold`) and sends it as one scalar; the worker adds its own error terms
(:func:`may_skip`). ``t_m`` counts the worker's consecutive skips; after ``t_bar`` of them
the upload is forced (:func:`upload_forced`), so a worker uploads at least once every
``t_bar + 1`` iterations.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_D = 10
DEFAULT_XI_SUM = 0.8
DEFAULT_T_BAR = 100


def default_xi(memory: int = DEFAULT_D, total: float = DEFAULT_XI_SUM) -> tuple[float, ...]:
    """The paper's weights: ``xi_d = total / D`` for ``d = 1..D`` (0.8/D by default)."""
    if memory < 1:
        raise ValueError(f"D (the number of parameter differences) must be >= 1, got {memory}")
    return (total / memory,) * memory


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


def may_skip(innovation_sq: float, threshold: float, error_sq: float, last_error_sq: float) -> bool:
    """Criterion (7a): skipping is allowed when the quantized innovation is small enough."""
    return innovation_sq <= threshold + 3.0 * (error_sq + last_error_sq)


def upload_forced(consecutive_skips: int, t_bar: int) -> bool:
    """Criterion (7b): a worker that has skipped ``t_bar`` times in a row must upload."""
    return consecutive_skips >= t_bar
