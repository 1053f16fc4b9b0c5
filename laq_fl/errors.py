"""Every error the library raises on purpose, in one module that imports nothing of the library.

The modules that raise them import them from here (and keep the names importable where they were defined before:
``laq_fl.config.ConfigError``, ``laq_fl.codec.PayloadError``, ...), so no module has to import a higher one to
raise or catch its error: the import graph stays a ladder (``tests/test_layering.py``).

================================  ==========================================================================
error                             raised when
================================  ==========================================================================
:class:`ConfigError`              a setting is invalid; ``key`` names the run-config key (before round 1)
:class:`TaskError`                a task's module and data do not fit, or its code raised (key ``task``)
:class:`ParameterError`           a compressor parameter is out of range (``parameter``: the field)
:class:`PayloadError`             a payload or reply does not fit the protocol (it is refused, never applied)
:class:`NonFiniteError`           a vector to compress, or the next iterate, holds NaN or inf
:class:`StaleIterateError`        a two-way broadcast applies to another version of theta_tilde
:class:`CheckpointError`          a checkpoint is missing, unreadable, or of another run configuration
:class:`DatasetNotFoundError`     a data set's files are absent and could not be downloaded
:class:`NodeConfigError`          a node's config does not fit the run (``partition-id``, ``num-partitions``)
:class:`RunStopped`               the run cannot go on (the message says why and what to check)
================================  ==========================================================================
"""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid setting; ``key`` names it and the message says what is allowed."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class TaskError(ConfigError):
    """A task that cannot run: its module and data do not fit (feature or class count, dtypes, empty sets,
    non-finite values), or building or loading them failed. A :class:`ConfigError` of key ``task``."""

    def __init__(self, message: str) -> None:
        super().__init__("task", message)


class ParameterError(ValueError):
    """A compressor parameter out of range; ``parameter`` names the dataclass field (``bits``, ``density``...)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


class PayloadError(ValueError):
    """A payload whose bytes, type, length, codes or floats do not fit what the receiver expects."""


class NonFiniteError(ValueError):
    """A vector to compress holds NaN or inf: it cannot travel, and the worker says so instead of sending it."""


class StaleIterateError(ValueError):
    """A worker was sent innovations for a version of ``theta_tilde`` it does not hold."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or belongs to another run configuration."""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are absent and could not be downloaded."""


class NodeConfigError(ValueError):
    """A node's config does not fit the run (no or a wrong ``partition-id``, another ``num-partitions``)."""


class RunStopped(RuntimeError):
    """The run cannot go on; the message says why (the round, the nodes, the errors) and what to check."""
