"""Start a run from trained weights (``--model.init_args.init_from SOURCE``): the paper's transfer experiment
pre-trains, then fine-tunes the same network on other classes or at a higher resolution (Table 2).

``SOURCE`` is one of

- a completed run folder: its ``checkpoints/best.ckpt`` (the weights a pre-training run reports);
- a checkpoint file, e.g. ``RUN/checkpoints/last.ckpt`` (how a user picks last over best);
- ``timm:NAME`` or ``timm:NAME@FILE``: one of timm's paper-style CoAtNets (``coatnet_0_224`` ..), converted by
  ``from_timm``, with its weights from timm's cache or from ``FILE``.

Every backbone tensor loads exactly, except two that a transfer must change: the classifier (the backbone's last
``Linear``) keeps its fresh initialisation when the class count differs, and relative-bias tables of another
resolution are resized bilinearly by their own load hook (``RelativePositionBias``). Anything else missing,
unexpected or of another shape means another architecture: one line naming the first such tensor. The source is read
in the model's ``__init__``, so Lightning's restore of a resumed run's own checkpoint, which follows, overwrites it.
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

OPTION = "--model.init_args.init_from"
TIMM = "timm:"


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved ``init_from``: what it names (``kind``: run, checkpoint or timm) and the file its weights are in."""

    given: str
    kind: str
    file: Path  # the checkpoint or weights file (absolute)
    run_dir: Path | None = None  # kind "run": the source run folder (absolute)
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
    return f"{OPTION} {given}: {why}"


def resolve(given: str) -> Source:
    """The source ``given`` names, checked to exist (a run folder: to hold a run's config, not yet to be completed:
    its identity is known while it runs). FileNotFoundError or ValueError, one line, otherwise."""
    text = str(given).strip()
    if text.startswith(TIMM):
        return _resolve_timm(given, text.removeprefix(TIMM))
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / run_folder.CONFIG).is_file():
            raise ValueError(_bad(given, f"not a run folder (no {run_folder.CONFIG}); valid: a completed run folder, "
                                         "a checkpoint file, or timm:NAME[@FILE]"))
        return Source(given, "run", run_folder.best_checkpoint(path.resolve()), run_dir=path.resolve())
    if path.is_file():
        return Source(given, "checkpoint", path.resolve())
    raise FileNotFoundError(_bad(given, "no such run folder or checkpoint file; valid: a completed run folder, a "
                                        "checkpoint file, or timm:NAME[@FILE]"))


def check_completed(source: Source) -> None:
    """A run folder's weights are taken once the run is completed (its best.ckpt is final then)."""
    if source.run_dir is None:
        return
    try:
        summary = run_folder.load_summary(source.run_dir)
    except ValueError as err:
        raise ValueError(_bad(source.given, f"its {run_folder.SUMMARY} is unreadable ({err})")) from None
    status = summary["status"] if summary else "not started"
    if status != "completed":
        raise ValueError(_bad(source.given, f"the run is not completed (status {status}); wait for it, or give one "
                                            f"of its checkpoint files, e.g. {run_folder.last_checkpoint(source.run_dir)}"))
    if not source.file.is_file():
        raise FileNotFoundError(_bad(source.given, f"the run has no {source.file}; give a checkpoint file"))


def _resolve_timm(given: str, spec: str) -> Source:
    name, _, file = spec.partition("@")
    import timm

    if not timm.is_model(name.split(".")[0]):  # a pretrained tag (NAME.TAG) names its model first
        raise ValueError(_bad(given, f"timm has no model {name!r}; valid: timm:NAME[@FILE] with NAME one of timm's "
                                     "paper-style CoAtNets, coatnet_0_224 .. coatnet_5_224"))
    if file:
        path = Path(file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(_bad(given, f"no weights file {file}"))
        return Source(given, "timm", path.resolve(), timm_name=name)
    cached = _timm_cached_weights(name)
    if cached is None:
        raise FileNotFoundError(_bad(given, f"timm's cache holds no weights for {name} (timm publishes none for its "
                                            f"paper-style CoAtNets); give a weights file: timm:{name}@FILE"))
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
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(_bad(source.given, f"{source.file} is not a readable training checkpoint ({reason})")) from None
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
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(_bad(source.given, f"{source.file} is not a readable weights file ({reason})")) from None
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


def fit(backbone: nn.Module, weights: dict[str, torch.Tensor], given: str) -> dict[str, Any]:
    """Check that ``weights`` fit ``backbone`` up to its classifier's class count and its bias tables' resolution,
    then load them (strict). Returns what was not loaded as is."""
    ours = backbone.state_dict()
    head = classifier(backbone)
    head_keys = {f"{head}.weight", f"{head}.bias"}
    replace_head = any(k in weights and k in ours and weights[k].shape != ours[k].shape for k in head_keys)
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


def load(backbone: nn.Module, given: str) -> dict[str, Any]:
    """Load ``given``'s weights into ``backbone``; the record summary.json keeps (``Source.record`` and what ``fit``
    did not load as is)."""
    source = resolve(given)
    check_completed(source)
    return {**source.record(), **fit(backbone, source_weights(source), given)}
