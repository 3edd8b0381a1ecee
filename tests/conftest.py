from pathlib import Path

import pytest

from tests.specs import tiny_spec


@pytest.fixture(autouse=True)
def _no_wandb_network(monkeypatch):
    """W&B is disabled in tests unless a test asks for offline mode; nothing is ever sent."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")


STUDY_SPEC = tiny_spec("study", "  model.init_args.model: [C-T, T-T]\n  data.init_args.train_fraction: [0.5, 1.0]\n"
                               "  seed_everything: [0, 1]\n", train_size=96, test_size=32, epochs=3)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> Path:
    """A finished 8-run sweep folder (2 layouts x 2 data sizes x 2 seeds, 3 epochs) for the analysis tests."""
    from ablations.sweep import SweepSpec, run_sweep, sweep_dir

    root = tmp_path_factory.mktemp("study")
    spec_path = root / "study.yaml"
    spec_path.write_text(STUDY_SPEC)
    spec = SweepSpec.load(spec_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        results = run_sweep(spec, root / "runs", parallel=2, progress=False)
    assert sorted(results.values()) == ["completed"] * 8
    return sweep_dir(spec, root / "runs")
