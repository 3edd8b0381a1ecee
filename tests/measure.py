"""The test suite's counts and wall time, written by the run that measured them (``make measure``).

With ``ABLATE_MEASURE=FOLDER`` a pytest run adds one row to ``FOLDER/tests-<UTC date>.md``: its command, how many
tests passed, failed, were skipped or deselected (``-m "not slow"`` deselects the slow tier), and its wall time.
The file names the machine, so a count or a time never has to be typed into the docs by hand.
"""

from __future__ import annotations

import shlex
import time
from collections import Counter
from pathlib import Path

import pytest

COLUMNS = ("passed", "failed", "skipped", "deselected")


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s" if seconds >= 60 else f"{seconds:.1f} s"


class SuiteTimes:
    """A pytest plugin: counts each test's outcome once (its call, or the setup that kept it from running)."""

    def __init__(self, folder: Path, config: pytest.Config):
        self.folder = folder
        self.config = config
        self.start = time.perf_counter()
        self.outcomes: Counter[str] = Counter()

    def pytest_deselected(self, items) -> None:
        self.outcomes["deselected"] += len(items)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.outcomes[report.outcome] += 1

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from ablations.cli import machine

        wall = time.perf_counter() - self.start
        path = self.folder / f"tests-{time.strftime('%Y-%m-%d', time.gmtime())}.md"
        command = shlex.join(["pytest", *self.config.invocation_params.args])
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            path.write_text(f"# Test suite on {machine()}\n\nWritten by `make measure` (`ABLATE_MEASURE={self.folder} "
                            "pytest ...`), a row per pytest run: the fast tier (`-m \"not slow\"`, the slow tests "
                            "deselected) and the full suite.\n\n| command | " + " | ".join(COLUMNS)
                            + " | wall time | finished |\n|---|" + "---|" * (len(COLUMNS) + 2) + "\n")
        row = [f"`{command}`", *(str(self.outcomes[c]) for c in COLUMNS), minutes(wall),
               time.strftime("%H:%M UTC", time.gmtime())]
        with path.open("a") as f:
            f.write("| " + " | ".join(row) + " |\n")
