"""A run's W&B record: the nested config logged once, the run folder's metric rows as history, summaries by
``define_metric``, one W&B run per run folder (its id kept in the folder, so a resume continues it)."""

from __future__ import annotations

import contextlib
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


INIT_TIMEOUT_S = 30  # W&B's own default is 90 s; WANDB_INIT_TIMEOUT overrides either
API_TIMEOUT_S = 20  # the public API's HTTP timeout (ablate report wandb:...)


class WandbUnavailable(ValueError):
    """W&B cannot serve this command: one line saying what to do (log in, set WANDB_API_KEY, check the path)."""


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:160]


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


UNREACHABLE = ("failed to execute api request", "did not respond", "connection", "timed out", "timeout",
               "name resolution", "unreachable")


def reachable(timeout: float = 5.0) -> bool:
    """Whether W&B's server accepts a TCP connection within ``timeout`` s (True behind a proxy: not ours to test).
    W&B's own client waits 20-90 s on a server it cannot reach."""
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "WANDB__PROXIES")):
        return True
    url = urlsplit(base_url())
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def explain(err: BaseException, project: str | None = None) -> WandbUnavailable | None:
    """The one line for a W&B failure of the public API, by the class W&B raises; None for anything else."""
    from wandb import errors

    unreachable = WandbUnavailable(f"W&B at {base_url()} could not be reached ({_reason(err)}); check the network, "
                                   "WANDB_BASE_URL and the credentials (`wandb login`), or report from the run folders")
    if isinstance(err, errors.Error) and any(word in str(err).lower() for word in UNREACHABLE):
        return unreachable
    if isinstance(err, errors.AuthenticationError) or (
            isinstance(err, errors.CommError) and any(code in str(err) for code in ("401", "403"))):
        return WandbUnavailable(f"W&B refused the credentials ({_reason(err)}); run `wandb login --relogin` or set "
                                "WANDB_API_KEY to a valid key")
    if isinstance(err, errors.UsageError) and "api key" in str(err).lower():
        return WandbUnavailable(f"W&B has no API key on this machine ({_reason(err)}); run `wandb login` or set "
                                "WANDB_API_KEY")
    if project and ("not found" in str(err).lower() or "could not find" in str(err).lower() or "404" in str(err)):
        return WandbUnavailable(f"W&B project {project!r} was not found or is not visible with these credentials "
                                f"({_reason(err)}); check the path: wandb:ENTITY/PROJECT")
    if isinstance(err, (errors.Error, OSError)):
        return unreachable
    return None


@contextlib.contextmanager
def explained(project: str | None = None):
    """W&B's own failures inside the block re-raised as their one line (``explain``); anything else as it was."""
    try:
        yield
    except Exception as err:  # noqa: BLE001  W&B's classes, mapped by explain; anything else is a bug
        line = explain(err, project)
        if line is None:
            raise
        raise line from None


def public_api():
    """``wandb.Api()``, its failures as one line each (``WandbUnavailable``)."""
    import wandb

    if not reachable():
        raise WandbUnavailable(f"W&B at {base_url()} could not be reached (no connection within 5 s); check the "
                               "network and WANDB_BASE_URL, or report from the run folders")
    with explained():
        return wandb.Api(timeout=API_TIMEOUT_S)


def run_id(run_dir: Path) -> str:
    """The W&B run id of a run folder: made once, kept in the folder; unique per folder, the same on resume."""
    path = Path(run_dir) / ID_FILE
    if not path.exists():
        run_folder.atomic_write(path, secrets.token_hex(6))
    return path.read_text().strip()


def wandb_dir(run_dir: Path) -> str:
    """Where W&B writes its files (its ``wandb/`` folder): ``WANDB_DIR`` when set, else the run folder."""
    return os.environ.get("WANDB_DIR") or str(run_dir)


def open_run(run_dir: Path, config: dict[str, Any], summaries: dict[str, str], project: str, group: str | None,
             tags: list[str], job_type: str):
    """Start (or resume) the run folder's W&B run. ``summaries`` maps a metric to how the run's summary shows it
    (``"max"``, ``"min"``, ``"last"``): W&B's ``define_metric``. History rows are plotted against the training step."""
    import wandb

    kwargs = dict(project=project, group=group, name=Path(run_dir).name, job_type=job_type, tags=tags,
                  dir=wandb_dir(run_dir), id=run_id(run_dir), resume="allow",
                  config=json.loads(json.dumps(config, default=str)))
    mode = wandb_mode()
    if mode == "online" and not reachable():
        print(f"W&B at {base_url()} could not be reached; logging offline to {kwargs['dir']} instead: `wandb sync` "
              "uploads it once W&B is reachable", file=sys.stderr, flush=True)
        mode = "offline"
    timeout = float(os.environ.get("WANDB_INIT_TIMEOUT") or INIT_TIMEOUT_S)
    try:
        run = wandb.init(**kwargs, mode=mode, settings=wandb.Settings(init_timeout=timeout))
    except Exception as err:  # noqa: BLE001  W&B unreachable or refusing: the run goes on, offline
        if mode == "offline" or os.environ.get("WANDB_MODE") in ("offline", "disabled") or explain(err) is None:
            raise
        print(f"W&B could not start this run online ({_reason(err)}); logging offline to {kwargs['dir']} instead: "
              "`wandb sync` uploads it once W&B is reachable", file=sys.stderr, flush=True)
        run = wandb.init(**kwargs, mode="offline")
    run.define_metric(STEP)
    run.define_metric("*", step_metric=STEP)
    for key, how in summaries.items():
        run.define_metric(key, step_metric=STEP, summary=how)
    return run
