"""The SLURM job of a sweep run (``ablate sweep --executor slurm``), set in one place.

submitit's executor parameters already cover sbatch, so the settings are submitit's: its generic names
(``nodes``, ``gpus_per_node``, ``tasks_per_node``, ``cpus_per_task``, ``timeout_min``, ``mem_gb``, ``name``) and any
``SlurmExecutor`` parameter, with or without the ``slurm_`` prefix (``account``, ``qos``, ``mem``, ``constraint``,
``time``, ``array_parallelism``, ``exclude``, ``setup``, ``additional_parameters``, ...). They come from the
spec's ``slurm:`` mapping, then the command line (later wins); names and value types are checked against
submitit's own signatures before anything is submitted.

A run is ``nodes`` x ``gpus_per_node`` GPUs with one task per GPU (one on a CPU node). Every task starts the
training process with the same shape as ``--trainer.num_nodes`` and ``--trainer.devices``: Lightning refuses to
start when they differ from SLURM_NNODES and SLURM_NTASKS_PER_NODE.
"""

from __future__ import annotations

import collections.abc
import difflib
import typing
from typing import Any

import yaml

DEFAULTS = {"timeout_min": 24 * 60, "nodes": 1, "gpus_per_node": 1, "cpus_per_task": 8}
NOT_SETTINGS = {"command", "folder", "map_count", "num_gpus", "gpus_per_task"}  # set by submitit, or per-node GPUs
ZERO_ALLOWED = {"gpus_per_node", "signal_delay_s"}


def _signatures() -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(generic name -> type, sbatch name -> type, generic -> sbatch name), from submitit itself."""
    from submitit.auto.auto import AutoExecutor
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    sbatch = {k: v for k, v in typing.get_type_hints(_make_sbatch_string).items() if k not in NOT_SETTINGS | {"return"}}
    sbatch["time"] = int | str  # minutes, or sbatch's "D-HH:MM:SS"
    return AutoExecutor._typed_parameters(), sbatch, SlurmExecutor._equivalence_dict()


def _accepts(kind: Any, value: Any) -> bool:
    if kind is Any:
        return True
    if typing.get_origin(kind) in (typing.Union, getattr(__import__("types"), "UnionType")):
        return any(_accepts(k, value) for k in typing.get_args(kind))
    kind = typing.get_origin(kind) or kind
    if kind is collections.abc.Iterable:
        return isinstance(value, list)
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if kind is float else kind)


def settings(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """submitit parameters from ``layers`` of settings (later wins), checked; unknown names, wrong types and
    negative counts are one-line errors."""
    generic, sbatch, equivalent = _signatures()
    same_meaning = {sb: gen for gen, sb in equivalent.items() if sb == gen or sb == "ntasks_per_node"}
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            bare = str(key).replace("-", "_").removeprefix("slurm_")
            bare = same_meaning.get(bare, bare)
            if bare in generic:
                name, kind = bare, generic[bare] if generic[bare] is not float else float
            elif bare in sbatch:
                name, kind = f"slurm_{bare}", sbatch[bare]
            else:
                if bare in NOT_SETTINGS:
                    raise ValueError(f"SLURM setting {key!r}: a run's GPUs are set per node, with gpus_per_node")
                close = difflib.get_close_matches(bare, [*generic, *sbatch], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown SLURM setting {key!r}{hint}; valid: {', '.join(sorted({*generic, *sbatch}))}")
            if not _accepts(kind, value):
                shown = str(kind).replace("typing.", "").replace("<class '", "").replace("'>", "")
                raise ValueError(f"SLURM setting {key}={value!r} has the wrong type: submitit's {name} takes {shown}")
            if isinstance(value, int) and not isinstance(value, bool) and value < (0 if bare in ZERO_ALLOWED else 1):
                raise ValueError(f"SLURM setting {key}={value} must be at least {0 if bare in ZERO_ALLOWED else 1}")
            # a generic name and its sbatch twin (timeout_min/time, mem_gb/mem, name/job_name): the later one counts
            twin = f"slurm_{equivalent[bare]}" if bare in equivalent else next(
                (gen for gen, sb in equivalent.items() if name == f"slurm_{sb}"), None)
            out.pop(twin, None)
            out[name] = value
    return out


def job_parameters(spec_settings: dict[str, Any], command_line: dict[str, Any], name: str) -> dict[str, Any]:
    """The executor parameters of one run's job: defaults, the spec's ``slurm:``, the command line; one task per
    GPU (``tasks_per_node`` may only repeat that)."""
    params = settings([{**DEFAULTS, "name": name}, spec_settings, command_line])
    per_node = max(1, params["gpus_per_node"])
    if params.setdefault("tasks_per_node", per_node) != per_node:
        raise ValueError(f"SLURM setting tasks_per_node={params['tasks_per_node']} must equal gpus_per_node "
                         f"({per_node}): Lightning runs one process per GPU, --trainer.devices = SLURM_NTASKS_PER_NODE")
    if params["gpus_per_node"] == 0:
        del params["gpus_per_node"]
    return params


def run_shape(params: dict[str, Any]) -> tuple[int, int]:
    """(nodes, processes per node) of a job: the training command's ``--trainer.num_nodes/--trainer.devices``."""
    return params["nodes"], params["tasks_per_node"]


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``--slurm KEY=VALUE`` as YAML values, except that times such as ``48:00:00`` stay text (YAML 1.1 would read
    them as a number of seconds)."""
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--slurm expects KEY=VALUE, got {pair!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ValueError(f"--slurm {pair!r}: the value is not valid YAML") from None
        out[key.strip()] = text if isinstance(value, int) and ":" in text else value
    return out
