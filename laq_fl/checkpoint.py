"""Checkpoints of the server's state: one ``.npz`` file per run, replaced atomically.

A checkpoint holds :meth:`~laq_fl.server_state.ServerState.to_arrays` (theta, theta_tilde, the lazy aggregate,
every worker's record -- copy, version, clock, sync state, ``||eps_hat||^2``, upload iterate and smoothness
estimate --, the last D parameter differences, the iteration) and a JSON ``meta`` record: the round it was taken after, the run config it
belongs to and anything the caller adds. Nothing else is needed to go on: the random streams (minibatches,
random compressors) are functions of (seed, worker, iteration), and each worker's own state comes back from the
server's copy (:class:`~laq_fl.protocol.Restore`).

Written with :func:`numpy.savez` to a temporary file in the same folder, flushed to disk, then renamed over the
old checkpoint (``os.replace``): a crash mid-write leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from laq_fl.errors import CheckpointError

FORMAT = 2
"""2: one column per field of :class:`~laq_fl.protocol.WorkerRecord` (1, before: sync state as two flags)."""
META = "meta"


def save_checkpoint(path: Path | str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write ``arrays`` and ``meta`` (JSON-serialisable) to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if META in arrays:
        raise ValueError(f"an array may not be called {META!r}")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as file:
        np.savez(file, **arrays, **{META: np.asarray(json.dumps({"format": FORMAT, **meta}))})
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    return path


def load_checkpoint(path: Path | str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and meta of a checkpoint. Raises :class:`CheckpointError` naming the path when it is missing,
    unreadable or of another format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
        meta = json.loads(str(arrays.pop(META)))
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"cannot read the checkpoint {path}: {error}") from error
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {meta.get('format')!r}; this version of laq-fl reads "
                              f"format {FORMAT} (resume it with the version that wrote it)")
    return arrays, meta


def config_differences(saved: dict[str, Any], current: dict[str, Any], ignore: set[str]) -> list[str]:
    """The keys (outside ``ignore``) whose values differ between a checkpoint's run config and the current one."""
    keys = (set(saved) | set(current)) - ignore
    return sorted(key for key in keys if saved.get(key) != current.get(key))
