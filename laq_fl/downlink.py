"""The server's broadcast, one-way (theta itself) or two-way (a compressed innovation of the iterate, versioned).

Two-way LAQ (the journal version of Sun et al., IEEE TPAMI 2022; the authors' "TWO-LAQ" script): the server keeps
``theta_tilde``, the iterate every worker holds. After each step (4) it compresses the innovation of the iterate,
``theta^{k+1} - theta_tilde^k``, with the downlink compressor (LAQ's b-bit grid, eq. 5-6, with its own radius),
and server and workers both set::

    theta_tilde^{k+1} = theta_tilde^k + Q(theta^{k+1} - theta_tilde^k)              (the version goes k -> k + 1)

Workers compute their gradients at ``theta_tilde``. The server keeps the exact ``theta`` and steps it, so what one
broadcast could not carry is part of the next innovation rather than lost (the authors' script overwrites theta
with theta_tilde instead, dropping it: that variant is not implemented here).

Versions: ``theta_tilde`` after ``k`` innovations has version ``k`` (``theta^0`` itself is version 0). Every
broadcast names the version it applies to (``base``) and the one it makes (``version``). The server knows each
worker's version only from that worker's accepted replies; a worker it does not know to be current (new, restarted,
not contacted for a while, or whose reply was lost) gets the innovations it missed when they are fewer bytes than
the full iterate, else the full ``theta_tilde``. A worker whose version is not the broadcast's base refuses to
apply it (:class:`StaleIterateError`) rather than compute at a wrong iterate; the server then resends in full.
"""

from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass

import numpy as np

from laq_fl.compressors import Compressor
from laq_fl.errors import StaleIterateError

NO_VERSION = -1
"""The version of a worker that holds no ``theta_tilde`` (one-way broadcasts, or none received yet)."""


@dataclass(frozen=True)
class Broadcast:
    """What one worker receives with its instruction.

    Attributes
    ----------
    version
        The version of ``theta_tilde`` the worker holds once it applied this; :data:`NO_VERSION` for a one-way
        broadcast (``theta`` itself, not kept by the worker).
    theta
        The full iterate, shape ``(p,)`` in the run's dtype, or ``None`` when ``innovations`` carry it.
    base
        The version the first innovation applies to (``NO_VERSION`` with a full ``theta``).
    innovations
        Compressed innovations, oldest first, taking ``theta_tilde`` from ``base`` to ``version``.
    """

    version: int
    theta: np.ndarray | None = None
    base: int = NO_VERSION
    innovations: tuple[bytes, ...] = ()

    @property
    def full(self) -> bool:
        return self.theta is not None

    def payload_bits(self, compressor: Compressor | None, size: int) -> int:
        """Bits of the iterate this broadcast carries: ``8 * itemsize * p`` in full, else the compressor's count."""
        if self.theta is not None:
            return 8 * self.theta.itemsize * self.theta.size
        assert compressor is not None
        return sum(compressor.payload_bits(payload, size) for payload in self.innovations)


def advance(theta_tilde: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """``theta_tilde + Q`` in ``theta_tilde``'s dtype; server and worker both call this, so they agree bit for bit."""
    return (theta_tilde.astype(np.float64) + decoded).astype(theta_tilde.dtype)


class Downlink:
    """The server's side of two-way LAQ: ``theta_tilde``, its version and the recent innovations.

    Parameters
    ----------
    theta
        ``theta^0``, shape ``(p,)``: version 0, sent in full.
    compressor
        Compresses the iterate's innovation (deterministic ones only: both sides must rebuild the same vector).
    """

    def __init__(self, theta: np.ndarray, compressor: Compressor) -> None:
        if compressor.needs_rng:
            raise ValueError(f"the downlink compressor must be deterministic, {compressor.spec()!r} draws random numbers")
        self.compressor = compressor
        self.theta_tilde = np.array(theta, copy=True)
        self.version = 0
        # Enough innovations to bring a worker a few versions behind up to date for less than the full iterate.
        self._recent: deque[bytes] = deque()
        self._full_bytes = self.theta_tilde.nbytes

    def step(self, theta: np.ndarray) -> None:
        """Compress ``theta - theta_tilde`` and move ``theta_tilde`` by what the workers will decode.

        Raises :class:`~laq_fl.errors.NonFiniteError` (nothing changes) when theta holds NaN or inf.
        """
        compressed = self.compressor.compress(theta.astype(np.float64) - self.theta_tilde, None)
        self.theta_tilde = advance(self.theta_tilde, compressed.value)
        self.version += 1
        self._recent.append(compressed.payload)
        while sum(map(len, self._recent)) >= self._full_bytes:
            self._recent.popleft()

    def broadcast(self, known_version: int) -> Broadcast:
        """What a worker known to hold ``known_version`` (``NO_VERSION``: unknown) must receive to be current."""
        behind = self.version - known_version
        if known_version == NO_VERSION or not 0 <= behind <= len(self._recent):
            return Broadcast(version=self.version, theta=self.theta_tilde)
        innovations = tuple(self._recent)[len(self._recent) - behind:] if behind else ()
        return Broadcast(version=self.version, base=known_version, innovations=innovations)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"theta-tilde": self.theta_tilde, "theta-version": np.asarray(self.version, np.int64)}


def receive(
    broadcast: Broadcast, theta_tilde: np.ndarray | None, version: int, compressor: Compressor | None
) -> np.ndarray:
    """The worker's side: its ``theta_tilde`` after the broadcast (a new array), from the one it holds at ``version``.

    Raises :class:`StaleIterateError` when the innovations apply to another version than the worker's, and
    :class:`~laq_fl.errors.PayloadError` for a malformed innovation; the worker's state is then unchanged.
    """
    if broadcast.theta is not None:
        return np.array(broadcast.theta, copy=True)
    if theta_tilde is None or version != broadcast.base:
        raise StaleIterateError(
            f"the broadcast applies to version {broadcast.base} of theta_tilde, this worker holds "
            + ("none" if theta_tilde is None else f"version {version}")
            + "; it needs the full iterate"
        )
    if broadcast.version != broadcast.base + len(broadcast.innovations):
        raise StaleIterateError(
            f"the broadcast claims version {broadcast.version} from base {broadcast.base} "
            f"with {len(broadcast.innovations)} innovation(s)"
        )
    assert compressor is not None
    for payload in broadcast.innovations:
        theta_tilde = advance(theta_tilde, compressor.decompress(payload, theta_tilde.size))
    return theta_tilde


def state_checksum(copy: np.ndarray, theta_tilde: np.ndarray | None = None) -> int:
    """CRC-32 of ``Q_hat`` (and ``theta_tilde`` when the worker keeps one) as little-endian bytes.

    Worker and server compute it over their own copies; equal checksums mean equal state (up to CRC collisions,
    1 in 2**32 for a random change). Cheap: about 0.1 ms for 159,010 float32.
    """
    checksum = zlib.crc32(np.ascontiguousarray(copy, copy.dtype.newbyteorder("<")).view(np.uint8))
    if theta_tilde is not None:
        checksum = zlib.crc32(np.ascontiguousarray(theta_tilde, theta_tilde.dtype.newbyteorder("<")).view(np.uint8), checksum)
    return checksum
