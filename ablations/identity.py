"""What a run's result depends on: one definition for the run folder's hash, a sweep's run ids, the resume check
and the analysis's settings.

A run is its resolved settings (the config as ``config.yaml`` holds it, after parsing: ``1`` and ``1.0`` for a
float option are one value), minus how it is shown, logged, placed or fed (``NOT_RESULT``). An option at its
default is the same run whether or not a config names it: an option added later with a default changes no run's
hash and no resume check, and a ``config.yaml`` written before it existed reads as having the default.

A run started from trained weights (``init_from``) depends on the weights, not on how their place is spelled: the
option counts as its ``source_identity`` (a run folder as that run's settings hash and which of its checkpoints, a
file as its content hash). Once a run has started, the identity its summary records counts: a resume, or a run
that is itself a source, needs its source no more (moved, or spelled relative to another working directory).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
from pathlib import Path
from typing import Any

from lightning_modules import run_folder

# Every setting changes a run's result except these: where the run is written, how it is shown and logged, and how
# fast it is computed or fed. A new option counts as result-affecting until it is named here. Keys without
# ``init_args``; a key covers its sub-keys.
NOT_RESULT = (
    "config", "print_config", "run_dir", "runs_root", "wandb", "checkpoint_every_n_steps",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.logger", "trainer.log_every_n_steps",
    "trainer.default_root_dir", "trainer.profiler", "trainer.num_sanity_val_steps",
    "data.num_workers", "data.pin_memory", "model.compile",
    "model.optimizer_args.fused", "model.optimizer_args.foreach",  # which kernel applies the same update
)

MISSING = object()  # no declared default: a key that one config lacks differs from any value


def plain(key: str) -> str:
    """``--model.init_args.lr`` -> ``model.lr``: one spelling of an option."""
    return key.replace(".init_args.", ".").removeprefix("--")


def affects_result(key: str) -> bool:
    """Whether the option ``key`` (dotted, with or without ``init_args``) can change a run's result."""
    key = plain(key)
    return not any(key == k or key.startswith(k + ".") for k in NOT_RESULT)


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"model.init_args.lr": 0.002, ...}`` (non-empty mappings walked, lists kept)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flat(value, name))
        else:
            out[name] = value
    return out


def result_settings(config: dict[str, Any], run_dir: Path | str | None = None) -> dict[str, Any]:
    """The result-affecting settings of a resolved config (nested, as ``config.yaml`` holds it), flat by dotted key;
    a starting-weights source as its identity: the one ``run_dir``'s summary records for it (the run folder this
    config is, or will be, in), else ``source_identity``."""
    from lightning_modules import init_from

    settings = {key: value for key, value in flat(config).items() if affects_result(key)}
    for key, given in settings.items():
        if plain(key) == plain(init_from.OPTION) and given is not None:
            record = init_from.recorded(run_dir) or {}
            same = record.get("given") == str(given) and record.get("identity")
            settings[key] = record["identity"] if same else source_identity(given)
    return settings


def run_identity(settings: dict[str, Any], checkpoint: str = run_folder.LAST_CHECKPOINT) -> str:
    """What a run counts as when another run starts from it: its settings hash (the hash in its default folder
    name), known from its settings before it has run (a chained sweep's fine-tuning ids); ``/NAME`` added for a
    checkpoint other than its last (its final model, the default source), e.g. ``run:1a2b3c4d/best.ckpt``."""
    run = f"run:{settings_hash(settings)}"
    return run if checkpoint == run_folder.LAST_CHECKPOINT else f"{run}/{checkpoint}"


def source_identity(given: str) -> str:
    """What a run started from ``given`` depends on: a run folder's ``run_identity`` (one run however its path is
    spelled) and which of its checkpoints; a checkpoint file's sha256; a timm source's name and weights' sha256.
    One line (exit 2 in ablate train) when the source does not exist or its config.yaml does not read; a run folder
    needs only its config.yaml (its run need not be completed for its identity, only for its weights to be loaded).
    The source's own ``init_from`` counts as its summary records it (resolved where it ran)."""
    import yaml

    from lightning_modules import init_from

    source = init_from.resolve(given)
    if source.kind == "run":
        path = source.run_dir / run_folder.CONFIG
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"--{init_from.OPTION} {given}: {path} is no readable YAML "
                             f"({' '.join(str(err).split())[:200]})") from None
        if not isinstance(config, dict):
            raise ValueError(f"--{init_from.OPTION} {given}: {path} holds no config (a YAML mapping)")
        return run_identity(result_settings(config, source.run_dir), source.file.name)
    digest = f"sha256:{init_from.file_hash(source.file)}"
    return f"timm:{source.timm_name}@{digest}" if source.kind == "timm" else digest


def canonical(value: Any) -> str:
    """One text per value: tuples as lists, keys sorted."""
    return json.dumps(value, sort_keys=True, default=str)


@functools.cache
def _signature_default(class_path: str, name: str) -> Any:
    """The default of parameter ``name`` of ``class_path``'s constructor (found along the MRO where a subclass
    passes ``**kwargs`` on), or MISSING."""
    module, _, attr = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        return MISSING
    for klass in getattr(cls, "__mro__", [cls]):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            parameter = inspect.signature(init).parameters.get(name)
        except (TypeError, ValueError):
            return MISSING
        if parameter is not None and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            return MISSING if parameter.default is inspect.Parameter.empty else parameter.default
    return MISSING


def _owner_class(key: str, settings: dict[str, Any]) -> tuple[str | None, str]:
    """(class path, parameter) of an option: ``model.init_args.lr`` -> (the model's class, ``lr``)."""
    if ".init_args." in key:
        owner, _, name = key.rpartition(".init_args.")
        return (None, name) if "." in name else (settings.get(f"{owner}.class_path"), name)
    if key.startswith("trainer.") and key.count(".") == 1:
        return "lightning.pytorch.Trainer", key.split(".", 1)[1]
    return None, key


TOP_LEVEL_DEFAULTS: dict[str, Any] = {"seed_everything": 0}  # `ablate train`'s own options (None unless named)


def default(key: str, settings: dict[str, Any]) -> Any:
    """The value option ``key`` has in a run whose config does not name it: its constructor's default (the class
    the config picks), or MISSING where none is declared (a key inside a free mapping such as ``model_args``)."""
    cls, name = _owner_class(key, settings)
    if cls is not None:
        return _signature_default(str(cls), name)
    if "." not in key:
        return TOP_LEVEL_DEFAULTS.get(key)  # `ablate train`'s own options default to None (dumped as absent)
    return MISSING


def non_default(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that differ from their defaults: what a run's hash covers, so that an option added with a
    default leaves every existing hash as it was."""
    return {key: value for key, value in settings.items()
            if (d := default(key, settings)) is MISSING or canonical(d) != canonical(value)}


def settings_hash(settings: dict[str, Any]) -> str:
    """The run folder's hash of a run's result settings (its non-default ones)."""
    return hashlib.sha1(canonical(non_default(settings)).encode()).hexdigest()[:8]


def value_of(key: str, settings: dict[str, Any]) -> Any:
    """A setting's value, its default where the config does not name it; MISSING where neither is known."""
    return settings[key] if key in settings else default(key, settings)


def settings_diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """``key before -> after`` for every setting that differs, a key one side lacks read as its default
    (``unset`` where it has none)."""
    out = []
    for key in sorted(before.keys() | after.keys()):
        old, new = value_of(key, before), value_of(key, after)
        if (old is MISSING) != (new is MISSING) or (old is not MISSING and canonical(old) != canonical(new)):
            out.append(f"{key} {'unset' if old is MISSING else old} -> {'unset' if new is MISSING else new}")
    return out


def named_settings(overrides: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The resolved values (from ``settings``, the run's result settings after parsing) at the options the
    ``overrides`` name: what a sweep's run id covers. A key naming a class (``data: SyntheticDataModule``) covers
    its class path; a mapping value covers the entries it names. Keys by their plain spelling."""
    by_plain = {plain(key): key for key in settings}
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if not affects_result(key):
            continue
        paths = [plain(key)]
        if isinstance(value, dict) and value:
            paths = [plain(f"{key}.{sub}") for sub in flat(value)]
        for path in paths:
            if path in by_plain:
                out[path] = settings[by_plain[path]]
            elif f"{path}.class_path" in by_plain:
                out[f"{path}.class_path"] = settings[by_plain[f"{path}.class_path"]]
            else:
                below = {p: settings[k] for p, k in by_plain.items() if p.startswith(path + ".")}
                out.update(below or {path: None})
    return out
