"""`make gpu-check` on a CPU: the same steps at toy size (`--smoke`), and a node without a GPU is a failed check."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path):
    return subprocess.run([sys.executable, "-m", "ablations.gpu_check", "--out", str(tmp_path / "gc"), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)


@pytest.mark.slow
def test_smoke_check_runs_every_step_and_writes_markdown_and_json(tmp_path):
    proc = _run(["--smoke"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = json.loads((tmp_path / "gc" / "gpu-check.json").read_text())
    assert [s["status"] for s in steps] == ["ok"] * 6
    names = " | ".join(s["name"] for s in steps)
    for needle in ("device", "training step per model", "ablate train", "against timm", "layouts", "sweep"):
        assert needle in names
    compiled = steps[1]["data"]
    assert set(compiled) == {"cctt_tiny", "C-T"} and all(v["compile_s"] > 0 for v in compiled.values())
    assert steps[2]["data"]["summary"]["status"] == "completed"
    bench = steps[3]["data"]
    assert any(label.startswith("timm ") for label in bench) and all(v["kernels"] for v in bench.values())
    sweeps = steps[5]["data"]["runs"]
    assert {len(runs) for runs in sweeps.values()} == {1}
    assert all(run["status"] == "completed" for runs in sweeps.values() for run in runs.values())
    md = (tmp_path / "gc" / "gpu-check.md").read_text()
    assert "ratio ours / timm" in md and "Wall time:" in md


@pytest.mark.slow
def test_a_node_without_a_gpu_fails_the_check_with_the_reason(tmp_path):
    proc = _run([], tmp_path)
    assert proc.returncode == 1
    steps = json.loads((tmp_path / "gc" / "gpu-check.json").read_text())
    assert steps[0]["status"] == "failed" and "torch sees no CUDA device" in steps[0]["errors"][0]
    assert "## device: failed" in (tmp_path / "gc" / "gpu-check.md").read_text()


def test_a_failing_step_is_recorded_and_later_steps_still_run(tmp_path):
    from ablations.gpu_check import Check, Plan

    check = Check(Plan.smoke(), tmp_path, budget_s=60)
    check.run("breaks", lambda step: 1 / 0, needs_s=0)
    check.run("works", lambda step: step.lines.append("fine"), needs_s=0)
    check.run("too long", lambda step: None, needs_s=10_000)
    assert [s.status for s in check.steps] == ["failed", "ok", "skipped"] and not check.ok
    assert "ZeroDivisionError" in check.steps[0].errors[0]
    assert (tmp_path / "breaks.traceback.txt").exists()
