"""Progress of long runs for the table, figure and benchmark scripts: one live line per run (rich, which comes with
flwr): rounds done of total, elapsed and remaining time, the running training loss and uploads. Quiet when
standard error is not a terminal (CI, pipes, nohup), where the scripts' own one-line summaries remain.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Update = Callable[[int, float, int], None]
"""``update(rounds_done, train_loss, uploads_so_far)``."""


def _loss_text(loss: float) -> str:
    return "-" if loss is None or (isinstance(loss, float) and math.isnan(loss)) else f"{loss:.6f}"


@contextmanager
def run_progress(description: str, total: int, console: Console | None = None) -> Iterator[Update]:
    """A progress line for one run of ``total`` rounds; yields ``update(done, loss, uploads)``."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield lambda done, loss, uploads: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("rounds"),
               TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
               TextColumn("loss {task.fields[loss]}  uploads {task.fields[uploads]}"))
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(description, total=total, loss="-", uploads=0)

        def update(done: int, loss: float, uploads: int) -> None:
            progress.update(task, completed=done, loss=_loss_text(loss), uploads=uploads)

        yield update


def record_hook(update: Update) -> Callable:
    """``on_record`` for :func:`laq_fl.driver.run_in_process`."""
    uploads = 0

    def on_record(record) -> None:
        nonlocal uploads
        uploads += record.uploads
        update(record.iteration + 1, record.train_loss, uploads)

    return on_record


def row_hook(update: Update) -> Callable[[dict], None]:
    """``on_row`` for :func:`laq_fl.flower.serverapp.run_server` (results rows; round 0 is the start)."""
    return lambda row: update(row["round"], row["train-loss"], row["uploads-cum"])
