"""A run's W&B record: the nested config logged once, the run folder's metric rows as history, summaries by
``define_metric``, one W&B run per run folder (its id kept in the folder, so a resume continues it)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from . import run_folder

ID_FILE = "wandb_id"
STEP = "trainer/global_step"


def wandb_mode() -> str | None:
    """None (W&B decides, reading ``WANDB_MODE``) when ``WANDB_MODE`` is set; else online when W&B finds
    credentials by its own rules (``WANDB_API_KEY``, ``wandb login``, a netrc entry for ``WANDB_BASE_URL``'s host,
    settings files), offline otherwise."""
    if os.environ.get("WANDB_MODE"):
        return None
    import wandb

    return "online" if wandb.login(prompt=False, verify=False) else "offline"


def run_id(run_dir: Path) -> str:
    """The W&B run id of a run folder: made once, kept in the folder; unique per folder, the same on resume."""
    path = Path(run_dir) / ID_FILE
    if not path.exists():
        run_folder.atomic_write(path, secrets.token_hex(6))
    return path.read_text().strip()


def open_run(run_dir: Path, config: dict[str, Any], summaries: dict[str, str], project: str, group: str | None,
             tags: list[str], job_type: str):
    """Start (or resume) the run folder's W&B run. ``summaries`` maps a metric to how the run's summary shows it
    (``"max"``, ``"min"``, ``"last"``): W&B's ``define_metric``. History rows are plotted against the training step."""
    import wandb

    run = wandb.init(project=project, group=group, name=Path(run_dir).name, job_type=job_type, tags=tags,
                     dir=str(run_dir), id=run_id(run_dir), resume="allow", mode=wandb_mode(),
                     config=json.loads(json.dumps(config, default=str)))
    run.define_metric(STEP)
    run.define_metric("*", step_metric=STEP)
    for key, how in summaries.items():
        run.define_metric(key, step_metric=STEP, summary=how)
    return run
