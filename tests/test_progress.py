"""Progress lines of the long-running scripts: shown on a terminal, silent elsewhere."""

from __future__ import annotations

import io
import sys

from conftest import REPO_ROOT
from rich.console import Console

from laq_fl.config import AlgorithmConfig, ProblemConfig
from laq_fl.driver import run_in_process

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from progress import record_hook, row_hook, run_progress  # noqa: E402


def test_silent_when_the_output_is_not_a_terminal() -> None:
    out = io.StringIO()
    with run_progress("laq", 10, Console(file=out)) as update:
        update(3, 0.5, 7)
    assert out.getvalue() == ""


def test_a_driver_run_shows_rounds_loss_and_uploads_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    with run_progress("laq", 12, console) as update:
        result = run_in_process(AlgorithmConfig(algorithm="laq"), ProblemConfig(dataset="synthetic", num_workers=3),
                                12, on_record=record_hook(update))
    shown = out.getvalue()
    assert "12/12" in shown and "laq" in shown
    assert f"uploads {result.total_uploads}" in shown
    assert f"loss {result.records[-1].train_loss:.6f}" in shown


def test_a_results_row_updates_the_line() -> None:
    seen = []
    row_hook(lambda done, loss, uploads: seen.append((done, loss, uploads)))({"round": 4, "train-loss": 0.25,
                                                                              "uploads-cum": 9})
    assert seen == [(4, 0.25, 9)]
