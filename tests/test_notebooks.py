"""The analysis notebook: stored without outputs, and executed end to end (nbmake) on a sweep the tests ran."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_on_a_sweep_folder_named_from_the_project_root(notebook, tiny_study, tmp_path):
    """As `make lab` opens it: ABLATE_SOURCE=runs/NAME, relative to the project root, while the kernel runs in
    notebooks/."""
    runs = ROOT / "runs"
    runs.mkdir(exist_ok=True)
    link = runs / f".notebook-test-{uuid.uuid4().hex[:8]}"
    link.symlink_to(tiny_study, target_is_directory=True)
    try:
        env = {**os.environ, "ABLATE_SOURCE": f"runs/{link.name}", "MPLBACKEND": "Agg"}
        result = subprocess.run([sys.executable, "-m", "pytest", "--nbmake", str(notebook), "-q", "-p",
                                 "no:cacheprovider", f"--rootdir={tmp_path}"], env=env, capture_output=True, text=True,
                                timeout=600, cwd=tmp_path)
    finally:
        link.unlink()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_notebook_checks_the_orderings_with_the_reports_functions(monkeypatch):
    """The notebook's ordering tables are the report's own, on the same runs."""
    from ablations import analysis
    from ablations.report import report_tables
    from tests.test_analysis import paper_study

    monkeypatch.setenv("MPLBACKEND", "Agg")
    frame = paper_study()
    frame["step"], frame["train_loss"] = frame["epoch"] * 10, frame["train_eval_loss"]
    monkeypatch.setattr(analysis, "load_source", lambda source: frame)
    shown = []
    namespace = {"display": shown.append}
    for cell in json.loads(NOTEBOOKS[0].read_text())["cells"]:
        if cell["cell_type"] == "code":
            exec("".join(cell["source"]), namespace)
    expected = [t for title, t in report_tables(frame).items() if title.startswith("paper ordering")]
    assert len(shown) == len(expected) == 3
    for table, report in zip(shown, expected):
        pd.testing.assert_frame_equal(table, report)
