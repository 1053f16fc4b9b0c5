"""The README's first lines are the project's contract: keep them true."""

from __future__ import annotations

import re

from conftest import REPO_ROOT


def readme_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block and text.index(block.group(0)) < 40, "the README must open with its commands"
    return [line.split("  #")[0].strip() for line in block.group(1).strip().splitlines()]


def test_readme_opens_with_main_job_and_tests() -> None:
    main_job, tests = readme_commands()
    assert "flwr run ." in main_job
    assert "pytest" in tests


def test_ci_runs_the_readmes_test_command() -> None:
    _, tests = readme_commands()
    ci_lines = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines
