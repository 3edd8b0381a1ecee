"""A run's id: readable from the usual axes, unique by a hash of what changes its result."""

from __future__ import annotations

import hashlib
import json
from typing import Any

SHORT = {"model.init_args.model": "", "data.init_args.train_fraction": "f", "seed_everything": "s"}


def run_id(overrides: dict[str, Any]) -> str:
    """Readable prefix from the usual axes, then a hash of every result-affecting override (``affects_result``:
    never W&B, progress bars or loader workers): stable across expansions and across how a run is watched."""
    from ..train import affects_result

    kept = {key: value for key, value in overrides.items() if affects_result(key)}
    digest = hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:8]
    parts = [f"{short}{overrides[key]}" for key, short in SHORT.items() if key in overrides]
    return "-".join([*parts, digest])
