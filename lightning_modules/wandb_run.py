"""A run's W&B record: the nested config logged once, the run folder's metric rows as history, summaries by
``define_metric``, one W&B run per run folder (its id kept in the folder, so a resume continues it)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import run_folder

ID_FILE = "wandb_id"
STEP = "trainer/global_step"
LOGIN_PROBE = "import wandb; print(wandb.login(prompt=False, verify=False))"
LOGIN_PROBE_TIMEOUT_S = 60


def wandb_mode() -> str | None:
    """None (W&B decides, reading ``WANDB_MODE``) when ``WANDB_MODE`` is set; else online when W&B finds
    credentials by its own rules (``WANDB_API_KEY``, ``wandb login``, a netrc entry for ``WANDB_BASE_URL``'s host,
    settings files), offline otherwise.

    W&B's ``login`` is asked in a silent child process: a non-silent login starts W&B's service to look up the user
    name, and a service that cannot reach the server kept the process from exiting. The child leaves this process's
    W&B settings untouched and is given up after ``LOGIN_PROBE_TIMEOUT_S`` (then offline)."""
    if os.environ.get("WANDB_MODE"):
        return None
    try:
        probe = subprocess.run([sys.executable, "-c", LOGIN_PROBE], env={**os.environ, "WANDB_SILENT": "true"},
                               capture_output=True, text=True, timeout=LOGIN_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return "offline"
    return "online" if probe.stdout.strip().endswith("True") else "offline"


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
