"""Start a run from trained weights (``--model.init_args.init_from SOURCE``): the paper's transfer experiment
pre-trains, then fine-tunes the same network on other classes or at a higher resolution (Table 2).

``SOURCE`` is one of

- a completed run folder: its ``checkpoints/last.ckpt``, the final model its test, predictions and summary report
  (the paper transfers the final pre-trained model);
- a file in a completed run folder's ``checkpoints/``, e.g. ``RUN/checkpoints/best.ckpt`` (its best validation
  accuracy): the same run, another of its checkpoints;
- any other checkpoint file, taken as it is;
- ``timm:NAME`` or ``timm:NAME@FILE``: one of timm's paper-style CoAtNets (``TIMM_MODELS``), converted by
  ``from_timm``, with its weights from timm's cache or from ``FILE``.

Every backbone tensor loads exactly, except two that a transfer must change: the classifier (the backbone's last
``Linear``) keeps its fresh initialisation when the class count differs or when ``new_head`` asks (other classes,
as many), and relative-bias tables of another resolution are resized bilinearly by their own load hook
(``RelativePositionBias``). Anything else missing, unexpected or of another shape means another architecture: one
line naming the first such tensor. The weights are loaded once, before a run's first step (``ablate train`` calls
``ImageClassifier.load_init_from``); a resumed run restores its own checkpoint and never reads its source again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import run_folder

OPTION = "model.init_args.init_from"  # the option, as a config key; on the command line "--" + OPTION
TIMM_PREFIX = "timm:"  # a timm source: timm:NAME[@FILE]
TIMM_MODELS = tuple(f"coatnet_{n}_224" for n in range(6))  # timm's paper-style CoAtNets, the ones from_timm converts
WEIGHTS_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")  # a source not on this disk named so is a file
VALID = f"valid: a completed run folder, a checkpoint file, or {TIMM_PREFIX}NAME[@FILE]"


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved ``init_from``: what it names (``kind``: run, checkpoint or timm) and the file its weights are in."""

    given: str
    kind: str
    file: Path  # the checkpoint or weights file (absolute)
    run_dir: Path | None = None  # kind "run": the source run folder (absolute); ``file`` is in its checkpoints/
    timm_name: str | None = None  # kind "timm"

    def record(self) -> dict[str, Any]:
        """What summary.json says about the source: enough to find it again and to know it is unchanged."""
        out: dict[str, Any] = {"given": self.given, "kind": self.kind, "file": str(self.file), "sha256": file_hash(self.file)}
        if self.run_dir is not None:
            out.update(run_dir=str(self.run_dir), run=self.run_dir.name, checkpoint=self.file.name)
        if self.timm_name is not None:
            out["timm"] = self.timm_name
        return out


def _bad(given: str, why: str) -> str:
    return f"--{OPTION} {given}: {why}"


def _first_line(err: BaseException) -> str:
    """The first line of an error (torch's and timm's run to many), cut to 200 characters."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _run_holding(file: Path) -> Path | None:
    """The run folder whose ``checkpoints/`` holds ``file``, if any."""
    run = file.parent.parent
    return run if file.parent.name == run_folder.CHECKPOINTS and (run / run_folder.CONFIG).is_file() else None


def resolve(given: str) -> Source:
    """The source ``given`` names, checked to exist (a run folder: to hold a run's config, not yet to be completed:
    its identity is known while it runs). FileNotFoundError or ValueError, one line, otherwise."""
    text = str(given).strip()
    if text.startswith(TIMM_PREFIX):
        return _resolve_timm(given, text.removeprefix(TIMM_PREFIX))
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / run_folder.CONFIG).is_file():
            raise ValueError(_bad(given, f"not a run folder (no {run_folder.CONFIG}); {VALID}"))
        return Source(given, "run", run_folder.last_checkpoint(path.resolve()), run_dir=path.resolve())
    if path.is_file():
        run = _run_holding(path.resolve())
        return Source(given, "checkpoint" if run is None else "run", path.resolve(), run_dir=run)
    raise FileNotFoundError(_bad(given, f"no such run folder or checkpoint file; {VALID}"))


def recorded_run_dir(source: str | dict[str, Any] | None) -> Path | None:
    """The run folder a source names as a run's records spell it (its config's ``init_from``, or the ``init_from``
    record of its summary.json), whether or not it is on this disk: a folder, or the run of a file in a run folder's
    ``checkpoints/``; None for a checkpoint file elsewhere, a timm source, or none. The analysis's and the chain's
    reading of ``resolve``'s rules."""
    if isinstance(source, dict):
        if source.get("run_dir"):
            return Path(source["run_dir"])
        source = source.get("file") if source.get("kind") == "checkpoint" else None  # written before runs took files
    if not source or str(source).startswith(TIMM_PREFIX):
        return None
    path = Path(str(source).strip()).expanduser()
    if path.parent.name == run_folder.CHECKPOINTS:
        return path.parent.parent
    return None if path.is_file() or (not path.exists() and path.suffix in WEIGHTS_SUFFIXES) else path


def recorded(run_dir: Path | str | None) -> dict[str, Any] | None:
    """The ``init_from`` record a run's summary.json holds (what it started from, resolved when it first started);
    None when there is none or it does not read."""
    if run_dir is None:
        return None
    try:
        summary = run_folder.load_summary(Path(run_dir))
    except (ValueError, OSError):
        return None
    record = (summary or {}).get("init_from")
    return record if isinstance(record, dict) else None


def check_completed(source: Source) -> None:
    """A run folder's weights are taken once the run is completed: its checkpoints are final then."""
    if source.run_dir is None:
        return
    try:
        summary = run_folder.load_summary(source.run_dir)
    except ValueError as err:
        raise ValueError(_bad(source.given, f"its {run_folder.SUMMARY} is unreadable ({err})")) from None
    status = summary["status"] if summary else "not started"
    if status != "completed":
        raise ValueError(_bad(source.given, f"the run is not completed (status {status}); wait for it (a run's "
                                            "checkpoints are final once it is completed)"))
    if not source.file.is_file():
        raise FileNotFoundError(_bad(source.given, f"the run has no {source.file}; give a checkpoint file"))


def _resolve_timm(given: str, spec: str) -> Source:
    name, _, file = spec.partition("@")
    if name.split(".")[0] not in TIMM_MODELS:  # a pretrained tag (NAME.TAG) names its model first
        raise ValueError(_bad(given, f"{name!r} is not one of timm's paper-style CoAtNets that from_timm converts; "
                                     f"valid: {TIMM_PREFIX}NAME[@FILE] with NAME one of {', '.join(TIMM_MODELS)}"))
    if file:
        path = Path(file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(_bad(given, f"no weights file {file}"))
        return Source(given, "timm", path.resolve(), timm_name=name)
    cached = _timm_cached_weights(name)
    if cached is None:
        raise FileNotFoundError(_bad(given, f"timm's cache holds no weights for {name} (timm publishes none for its "
                                            f"paper-style CoAtNets); give a weights file: {TIMM_PREFIX}{name}@FILE"))
    return Source(given, "timm", cached, timm_name=name)


def _timm_cached_weights(name: str) -> Path | None:
    """The file timm would load ``name``'s pretrained weights from, if it is already downloaded (never downloads)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=64)
def _hash(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hash(path: Path) -> str:
    """The sha256 of a file's content (computed once per process while the file is unchanged)."""
    stat = Path(path).stat()
    return _hash(str(path), stat.st_size, stat.st_mtime_ns)


# --- the weights -------------------------------------------------------------------------------------------------
def source_weights(source: Source) -> dict[str, torch.Tensor]:
    """The source's backbone state dict, under this codebase's names."""
    if source.kind == "timm":
        return _timm_weights(source)
    from .checkpoints import load_checked

    try:
        checkpoint = load_checked(source.file)
    except Exception as err:  # truncated, damaged, not a checkpoint: all mean the same to a user
        raise ValueError(_bad(source.given, f"{source.file} is not a readable training checkpoint "
                                            f"({_first_line(err)})")) from None
    prefix = "backbone."
    weights = {k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(_bad(source.given, f"{source.file} holds no backbone weights (no '{prefix}*' tensors); "
                                            "valid: a checkpoint of ablate train"))
    return weights


def _timm_weights(source: Source) -> dict[str, torch.Tensor]:
    import timm

    from .backbones import from_timm

    try:
        theirs = timm.models.load_state_dict(str(source.file))
    except Exception as err:
        raise ValueError(_bad(source.given, f"{source.file} is not a readable weights file ({_first_line(err)})")) from None
    classes = theirs["head.fc.weight"].shape[0] if "head.fc.weight" in theirs else 0
    try:
        model = timm.create_model(source.timm_name, pretrained=False, num_classes=classes)
        model.load_state_dict(theirs)
        return from_timm(model).state_dict()
    except RuntimeError as err:  # load_state_dict's several lines: the first missing or mis-shaped tensor is enough
        details = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        raise ValueError(_bad(source.given, f"{source.file} does not hold {source.timm_name}'s weights "
                                            f"({(details or [str(err)])[0][:200]})")) from None


def classifier(backbone: nn.Module) -> str:
    """The classifier's name: the backbone's last ``Linear`` (``head.fc`` in a StagedNet, ``head`` in ConvMixer)."""
    linears = [name for name, module in backbone.named_modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else ""


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


ANOTHER = "another architecture (give the source's model, model_args and budget)"


def fit(backbone: nn.Module, weights: dict[str, torch.Tensor], given: str, new_head: bool = False) -> dict[str, Any]:
    """Check that ``weights`` fit ``backbone`` up to its classifier's class count and its bias tables' resolution,
    then load them (strict). ``new_head``: keep the fresh classifier even at the source's class count (other
    classes). Returns what was not loaded as is."""
    ours = backbone.state_dict()
    head = classifier(backbone)
    head_keys = {f"{head}.weight", f"{head}.bias"}
    replace_head = new_head or any(k in weights and k in ours and weights[k].shape != ours[k].shape for k in head_keys)
    resized = []
    for key, value in ours.items():
        if key not in weights:
            raise ValueError(_bad(given, f"tensor {key} {_shape(value)} of this model is not in the source: {ANOTHER}"))
        theirs = weights[key]
        if theirs.shape == value.shape or (replace_head and key in head_keys):
            continue
        if key.endswith("rel_bias.table") and theirs.ndim == 3 and theirs.shape[0] == value.shape[0]:
            resized.append(key)  # RelativePositionBias resizes it while loading
            continue
        raise ValueError(_bad(given, f"tensor {key} is {_shape(theirs)} in the source but {_shape(value)} in this "
                                     f"model: {ANOTHER}"))
    extra = [key for key in weights if key not in ours]
    if extra:
        raise ValueError(_bad(given, f"source tensor {extra[0]} {_shape(weights[extra[0]])} has no place in this "
                                     f"model ({len(extra)} such): {ANOTHER}"))
    load = {k: v for k, v in weights.items() if not (replace_head and k in head_keys)}
    load.update({k: ours[k] for k in head_keys if replace_head and k in ours})
    backbone.load_state_dict(load, strict=True)
    return {"head": "replaced" if replace_head else "loaded", "resized": resized}


def load(backbone: nn.Module, given: str, new_head: bool = False) -> dict[str, Any]:
    """Load ``given``'s weights into ``backbone``; the record summary.json keeps (``Source.record`` and what ``fit``
    did not load as is)."""
    source = resolve(given)
    check_completed(source)
    return {**source.record(), **fit(backbone, source_weights(source), given, new_head)}
