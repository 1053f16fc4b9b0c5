"""LIBSVM (svmlight) files read with scikit-learn, with errors that name the file and the line.

A data set ``NAME`` is a training file and, when there is one, a test file named as the LIBSVM data sets page names
them: ``NAME`` and ``NAME.t``, each optionally compressed (``.bz2`` or ``.gz``). Without a test file the last
:data:`HELD_OUT` of the training rows are the test set (a fixed split, so every node and the server agree).
Binary labels (any two values, e.g. -1/+1 or 1/2) become 0 and 1 (the smaller is 0); more than two values are
refused here (a multi-class LIBSVM task would map them to 0..C-1 the same way).

Parsed files are kept in ``$LAQ_FL_CACHE_DIR`` (default ``~/.cache/laq-fl/partitions``) as ``.npz``, named after
the files' paths, sizes and modification times: parsing ijcnn1's bzip2 text takes seconds, reading the cache
milliseconds, which matters where every message runs in a new process.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from laq_fl.data import PARTITION_CACHE_ENV

HELD_OUT = 0.2
_LINE = re.compile(r"^\s*[-+]?[0-9.eE+-]+(\s+qid:\d+)?(\s+\d+:[-+]?([0-9]*\.?[0-9]+([eE][-+]?\d+)?|nan|inf))*\s*(#.*)?$")


_INDEX = re.compile(r"\s(\d+):")


class LibsvmFormatError(ValueError):
    """A line of a LIBSVM file is not ``label index:value ...``; the message names the file and the line."""


COMPRESSED = (".bz2", ".gz")


def test_file_of(train: Path) -> Path | None:
    """``NAME.t``, ``NAME.t.bz2`` or ``NAME.t.gz`` beside ``train`` (``NAME``, ``NAME.bz2`` or ``NAME.gz``), if it
    exists."""
    stem = next((train.name[: -len(suffix)] for suffix in COMPRESSED if train.name.endswith(suffix)), train.name)
    for name in (f"{stem}.t", *(f"{stem}.t{suffix}" for suffix in COMPRESSED)):
        if (train.parent / name).is_file():
            return train.parent / name
    return None


def _open_text(path: Path):
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8", errors="replace")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


def first_malformed_line(path: Path) -> tuple[int, str, str] | None:
    """The 1-based number, text and fault of the first line of ``path`` that is not LIBSVM (``label index:value
    ...`` with increasing indices), or ``None``."""
    with _open_text(path) as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if not _LINE.match(line):
                return number, line.rstrip("\n")[:120], "not 'label index:value ...'"
            indices = [int(index) for index in _INDEX.findall(line.split("#", 1)[0])]
            if any(later <= earlier for earlier, later in zip(indices, indices[1:])):
                return number, line.rstrip("\n")[:120], "feature indices must increase along a line"
    return None


def _parse(paths: list[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_svmlight_files  # deferred: scikit-learn's import costs about a second

    try:
        loaded = load_svmlight_files([str(path) for path in paths], dtype=np.float32, zero_based=False)
    except ValueError as error:
        for path in paths:
            bad = first_malformed_line(path)
            if bad is not None:
                raise LibsvmFormatError(f"{path}, line {bad[0]}: {bad[2]} ({error}): {bad[1]!r}") from None
        hint = " (LIBSVM feature indices start at 1)" if "index 0" in str(error) else ""
        raise LibsvmFormatError(f"{', '.join(map(str, paths))}: {error}{hint}") from None
    return [(np.asarray(loaded[i].todense(), np.float32), np.asarray(loaded[i + 1])) for i in range(0, len(loaded), 2)]


def _cache_file(paths: list[Path]) -> Path:
    sources = [[str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns] for path in paths]
    digest = hashlib.sha256(json.dumps({"sources": sources, "format": 1}).encode()).hexdigest()[:20]
    folder = Path(os.environ.get(PARTITION_CACHE_ENV) or "~/.cache/laq-fl/partitions").expanduser()
    return folder / f"libsvm-{paths[0].name}-{digest}.npz"


def load_binary(train: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train features (float32, (N, d)), labels (int64 in {0, 1}), test features and labels of the data set whose
    training file is ``train``. Raises FileNotFoundError, :class:`LibsvmFormatError`, or ValueError when the
    labels are not binary."""
    if not train.is_file():
        raise FileNotFoundError(f"LIBSVM file {train} not found")
    test = test_file_of(train)
    paths = [train] if test is None else [train, test]
    cache = _cache_file(paths)
    try:
        with np.load(cache, allow_pickle=False) as stored:
            return tuple(stored[key] for key in ("train_x", "train_y", "test_x", "test_y"))  # type: ignore[return-value]
    except (OSError, ValueError, KeyError):
        pass
    parsed = _parse(paths)
    if test is None:
        features, raw = parsed[0]
        cut = len(raw) - int(len(raw) * HELD_OUT)
        parsed = [(features[:cut], raw[:cut]), (features[cut:], raw[cut:])]
    values = np.unique(np.concatenate([parsed[0][1], parsed[1][1]]))
    if len(values) != 2:
        raise ValueError(f"{train}: a binary task needs two label values, found {len(values)}: {values[:10]}")
    (train_x, train_raw), (test_x, test_raw) = parsed
    width = max(train_x.shape[1], test_x.shape[1])  # a test file may not use the last feature
    train_x, test_x = (np.pad(x, ((0, 0), (0, width - x.shape[1]))) for x in (train_x, test_x))
    arrays = {"train_x": train_x, "train_y": (train_raw == values[1]).astype(np.int64),
              "test_x": test_x, "test_y": (test_raw == values[1]).astype(np.int64)}
    temporary = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with temporary.open("wb") as file:
            np.savez(file, **arrays)
        os.replace(temporary, cache)
    except OSError:
        temporary.unlink(missing_ok=True)
    return arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"]
