"""A sweep's overrides as ``ablate train`` arguments, checked with ``ablate train``'s own parser before any run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .spec import Run, SweepSpec


def override_args(overrides: dict[str, Any]) -> list[str]:
    """``--key=value`` as the training process reads them (JSON for anything but a string)."""
    return [f"--{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in overrides.items()]


def train_args(spec: SweepSpec, run: Run, run_dir: Path, gpus: int = 1, nodes: int = 1) -> list[str]:
    """The ``ablate train`` arguments of a run (``launch`` decides how the process starts)."""
    args = [f"--config={spec.config}"]
    if gpus > 1 or nodes > 1:  # one DDP run over the worker's pinned GPUs, or over a SLURM job's nodes x tasks
        args += [f"--trainer.num_nodes={nodes}", f"--trainer.devices={gpus}", "--trainer.strategy=ddp"]
    args += override_args(run.overrides)
    return args + [f"--run_dir={run_dir}", f"--wandb.group={spec.name}"]


def resolved_settings(config: str, overrides: dict[str, Any]) -> dict[str, Any]:
    key = (config, Path(config).read_text(), json.dumps(overrides, sort_keys=True, default=str))
    if key not in _RESOLVED:
        _RESOLVED[key] = _resolve(config, overrides)
    return _RESOLVED[key]


_RESOLVED: dict[tuple[str, str, str], dict[str, Any]] = {}  # parsed once per process


def _resolve(config: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The result settings a run of ``overrides`` on the base ``config`` gets, as ``ablate train`` parses them
    (``identity.result_settings`` of the config it would save): what its id and identity are computed from."""
    import yaml

    from ..identity import result_settings
    from ..training.cli import training_parser

    parser = training_parser()
    parsed = parser.parse_args([f"--config={config}", *override_args(overrides)])
    return result_settings(yaml.safe_load(parser.dump(parsed)) or {})


def check_overrides(spec: SweepSpec, runs: list[Run]) -> None:
    """Parse the spec's overrides with `ablate train`'s own parser, once, before any run starts: the fixed ones
    together, then each grid value on top of them. A key that is no option is named with the closest one; a value
    its option refuses, with the option's range. Nothing is built and no data is read."""
    from jsonargparse import ArgumentError

    from ..training.cli import training_parser
    from ..training.messages import closest_option, flat_keys, is_option, one_line
    from ..training.trainer_options import check_trainer

    parser = training_parser()
    base = [f"--config={spec.config}"]

    def parse(overrides: dict[str, Any], where: str) -> Any:
        try:
            config = parser.parse_args(base + override_args(overrides))
            check_trainer(config.trainer)
            return config
        except (ArgumentError, ValueError) as err:
            raise ValueError(f"sweep {spec.name}: {where}: {one_line(err)}") from None

    options = [*flat_keys(parse({}, "config").as_dict()), *flat_keys(parser.get_defaults().as_dict())]

    def unknown(key: str) -> bool:  # no option, nor a parent of options (it may be one of a class picked)
        return not is_option(key, options)

    def check(overrides: dict[str, Any], where: str) -> None:
        """Parse the overrides together. When they fail, a key that is no option of the base is the typo if the
        known keys parse alone but not with it (an option of a class the overrides pick, such as
        ``data.init_args.*``, parses with them): it is named with the closest option. Otherwise the known keys'
        own error is the one to see."""
        try:
            parse(overrides, where)
            return
        except ValueError as err:
            failure = err
        known_only = {k: v for k, v in overrides.items() if not unknown(k)}
        if len(known_only) < len(overrides):
            parse(known_only, where)  # the trouble is elsewhere: say what it is
        for key in [k for k in overrides if unknown(k)]:
            try:
                parse({**known_only, key: overrides[key]}, where)
            except ValueError:
                close = closest_option(key, options)
                hint = f"; the closest option is {close}" if close else ""
                raise ValueError(f"sweep {spec.name}: {where} key {key} is not an `ablate train` option{hint}") from None
        raise failure

    check(spec.fixed, "set")
    pairs = {(key, json.dumps(value, sort_keys=True, default=str)): (key, value)
             for run in runs for key, value in run.overrides.items() if spec.fixed.get(key, object()) != value}
    for key, value in pairs.values():
        check({**spec.fixed, key: value}, "grid")

