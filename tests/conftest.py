import pytest


@pytest.fixture(autouse=True)
def _no_wandb_network(monkeypatch):
    """W&B is disabled in tests unless a test asks for offline mode; nothing is ever sent."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
