from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_wandb_network(monkeypatch):
    """W&B is disabled in tests unless a test asks for offline mode; nothing is ever sent."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")


ROOT = Path(__file__).resolve().parents[1]

STUDY_SPEC = f"""
name: study
config: {ROOT / 'ablations/configs/digits_tiny.yaml'}
set:
  model.init_args.model_args: {{depths: [1, 1], dims: [16, 32], stem_dim: 16, head_dim: 16}}
  data: datamodules.SyntheticDataModule
  data.init_args.image_size: 16
  data.init_args.num_classes: 4
  data.init_args.train_size: 96
  data.init_args.test_size: 32
  data.init_args.batch_size: 16
  trainer.max_epochs: 3
grid:
  model.init_args.model: [C-T, T-T]
  data.init_args.train_fraction: [0.5, 1.0]
  seed_everything: [0, 1]
"""


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
