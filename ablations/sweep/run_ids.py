"""A run's id: readable from the usual axes, unique by a hash of the resolved settings its overrides name."""

from __future__ import annotations

import hashlib
from typing import Any

from ..identity import canonical, named_settings, plain

SHORT = {"model.model": "", "data.train_fraction": "f", "seed_everything": "s"}


def run_id(overrides: dict[str, Any], settings: dict[str, Any]) -> str:
    """Readable prefix from the usual axes, then a hash of the resolved values (``settings``: the run's result
    settings as ``ablate train`` parses them) at the options the overrides name (``identity.named_settings``:
    never W&B, progress bars or loader workers; ``1`` and ``1.0`` for a float option are one value). Stable across
    expansions, across how a run is watched or an override is spelled, and across options added later with a
    default; an edit of the base config changes no id."""
    named = named_settings(overrides, settings)
    digest = hashlib.sha1(canonical(named).encode()).hexdigest()[:8]
    shown = {plain(key): value for key, value in named.items()}
    parts = [f"{short}{shown[key]}" for key, short in SHORT.items() if key in shown]
    return "-".join([*parts, digest])
