"""Sweep specs small enough for the test suite: a two-stage model on synthetic 16x16 images, 4 classes."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tiny_spec(name: str, grid: str, train_size: int = 64, test_size: int = 16, epochs: int = 1) -> str:
    """A spec over ``grid`` (YAML lines, two-space indented) on the digits config with synthetic data; a key the
    grid sets is left out of ``set`` (a spec may not give one key in both)."""
    axes = {key.strip() for line in grid.splitlines() if line.startswith("  ") and ":" in line
            for key in line.split(":", 1)[0].split(",")}
    fixed = [("model.init_args.model_args", "{depths: [1, 1], dims: [16, 32], stem_dim: 16, head_dim: 16}"),
             ("data", "datamodules.SyntheticDataModule"), ("data.init_args.image_size", 16),
             ("data.init_args.num_classes", 4), ("data.init_args.train_size", train_size),
             ("data.init_args.test_size", test_size), ("data.init_args.batch_size", 16), ("trainer.max_epochs", epochs)]
    lines = "".join(f"  {key}: {value}\n" for key, value in fixed if key not in axes)
    return f"""
name: {name}
config: {ROOT / 'ablations/configs/digits_tiny.yaml'}
set:
{lines}grid:
{grid}"""
