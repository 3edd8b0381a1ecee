from pathlib import Path

import pytest

from tests.specs import tiny_spec


def pytest_configure(config):
    """``ABLATE_MEASURE=FOLDER``: this run's test counts and wall time go into a dated file there (tests/measure.py)."""
    import os

    if os.environ.get("ABLATE_MEASURE"):
        from tests.measure import SuiteTimes

        config.pluginmanager.register(SuiteTimes(Path(os.environ["ABLATE_MEASURE"]), config), "ablate-measure")


@pytest.fixture(autouse=True)
def _no_wandb_network(monkeypatch):
    """W&B is disabled in tests unless a test asks for offline mode; nothing is ever sent."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")


TINY_MODEL = "depths: [1, 1], dims: [16, 32], stem_dim: 16, head_dim: 16"
STUDY_SPEC = tiny_spec("study", "  model.init_args.model: [C-T, T-T]\n"
                                f"  model.init_args.model_args: [{{{TINY_MODEL}, rel_pos: pre}}, {{{TINY_MODEL}, rel_pos: none}}]\n"
                                "  seed_everything: [0, 1]\n", train_size=96, test_size=32, epochs=3)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> Path:
    """A finished 8-run sweep folder (2 layouts x relative position bias pre/none x 2 seeds, 3 epochs) for the
    analysis tests: a setting besides layout and data size that must never be pooled."""
    from ablations.sweep import SweepSpec, run_sweep, sweep_dir

    root = tmp_path_factory.mktemp("study")
    spec_path = root / "study.yaml"
    spec_path.write_text(STUDY_SPEC)
    spec = SweepSpec.load(spec_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        results = run_sweep(spec, root / "runs", parallel=2, progress=False, fork=True)  # as `ablate sweep` runs it
    assert sorted(results.values()) == ["completed"] * 8
    return sweep_dir(spec, root / "runs")


@pytest.fixture
def fresh_wandb():
    """W&B's process-wide settings read again from the environment a test sets, and dropped after it: a test that
    changes HOME or WANDB_* leaves nothing behind for the next."""
    import wandb

    wandb.teardown()
    yield
    wandb.teardown()
