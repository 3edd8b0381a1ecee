"""The optimizer of a run, chosen by name in the config (``--model.init_args.optimizer sgd``), built in one place
for training, ``ablate bench`` and ``make gpu-check``; and the bytes of its state, for the disk preflight.

A name plus ``optimizer_args`` (as ``model`` plus ``model_args``) rather than a class path: the learning rate,
weight decay and schedule stay ``ImageClassifier``'s options (a class path would bring a second ``lr`` that the
schedule overrides), a run at the default names nothing new, so its run folder and id stay what they were, and the
hyper-parameters a checkpoint holds stay plain values.
"""

from __future__ import annotations

import inspect
from typing import Any, Iterable, Literal, get_args

import torch
from torch import nn

OptimizerName = Literal["adamw", "sgd", "rmsprop"]

# Each name's class and the settings it takes when optimizer_args does not say otherwise (torch's defaults apart from
# these). AdamW: the paper's recipe (Table 10), torch's betas and eps. SGD: momentum 0.9, as ResNet trained (He et
# al. 2016). RMSprop: EfficientNet's (Tan & Le 2019, section 5.2: decay 0.9, momentum 0.9); torch adds eps outside
# the square root, TensorFlow's inside.
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "adamw": (torch.optim.AdamW, {}),
    "sgd": (torch.optim.SGD, {"momentum": 0.9}),
    "rmsprop": (torch.optim.RMSprop, {"alpha": 0.9, "momentum": 0.9}),
}
assert tuple(OPTIMIZERS) == get_args(OptimizerName)

# Set by ImageClassifier's own options, per parameter group; optimizer_args may not set them a second time.
SET_ELSEWHERE = {"params": "the model's", "lr": "--model.init_args.lr", "weight_decay": "--model.init_args.weight_decay"}


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights, biases and relative-bias tables are not decayed."""
    return param.ndim <= 1 or name.endswith("rel_bias.table")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters in two groups: decayed with ``weight_decay``, and those ``no_decay`` spares."""
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if no_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _settings(name: str, args: dict[str, Any] | None) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The class of ``name`` and its keyword arguments; an unknown name or argument is a one-line error."""
    if name not in OPTIMIZERS:
        raise ValueError(f"--model.init_args.optimizer {name!r} is not valid; expected one of {', '.join(OPTIMIZERS)}")
    cls, defaults = OPTIMIZERS[name]
    args = dict(args or {})
    for key, where in SET_ELSEWHERE.items():
        if key in args:
            raise ValueError(f"--model.init_args.optimizer_args sets {key}, which is {where}; set it there")
    accepted = [p for p in inspect.signature(cls).parameters if p not in SET_ELSEWHERE]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ValueError(f"--model.init_args.optimizer_args: unknown option(s) {', '.join(unknown)} for {name} "
                         f"(torch.optim.{cls.__name__}); valid: {', '.join(accepted)}")
    return cls, {**defaults, **args}


def build_optimizer(groups: list[dict[str, Any]], lr: float, name: str = "adamw",
                    args: dict[str, Any] | None = None) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``groups`` (see ``param_groups``) at learning rate ``lr``. Fused (one kernel,
    no per-step host reads) where the class offers it for the parameters' device, unless ``args`` say otherwise."""
    cls, kwargs = _settings(name, args)
    params = [p for group in groups for p in group["params"]]
    kernel_chosen = "fused" in kwargs or kwargs.get("foreach") or kwargs.get("differentiable")  # torch takes one
    if ("fused" in inspect.signature(cls).parameters and params and params[0].device.type in ("cuda", "cpu")
            and not kernel_chosen):
        kwargs["fused"] = True
    try:
        return cls(groups, lr=lr, **kwargs)
    except (ValueError, TypeError, RuntimeError) as err:  # torch's own range checks: "Invalid momentum value: -1"
        given = ", ".join(f"{k}: {v}" for k, v in (args or {}).items())
        raise ValueError(f"--model.init_args.optimizer_args {{{given}}} is not valid for {name}: {err}") from None


def check_optimizer(name: str, args: dict[str, Any] | None) -> None:
    """Build the optimizer once over a stand-in parameter: a bad name or argument fails before any set-up."""
    build_optimizer([{"params": [nn.Parameter(torch.zeros(1))]}], 1e-3, name, args)


def _stand_in_bytes(numel: int, dtype: torch.dtype, name: str, args: dict[str, Any] | None) -> int:
    """Bytes of the optimizer's state after one step over a single parameter of ``numel`` elements."""
    param = nn.Parameter(torch.zeros(numel, dtype=dtype))
    optimizer = build_optimizer([{"params": [param]}], 1e-3, name, args)
    param.grad = torch.ones_like(param)
    optimizer.step()
    return sum(t.numel() * t.element_size() for t in optimizer.state[param].values() if torch.is_tensor(t))


def state_bytes(params: Iterable[torch.Tensor], name: str = "adamw", args: dict[str, Any] | None = None) -> int:
    """The bytes the optimizer's state will take for ``params`` (what a checkpoint holds beside the weights), read
    from torch's own state after one step over small stand-ins: so much per element (AdamW: two moments) and so
    much per parameter tensor (AdamW: a step count), for each dtype. The optimizers offered update element by
    element, so the state is linear in the elements."""
    params = [p for p in params if p.requires_grad]
    per: dict[torch.dtype, tuple[int, int]] = {}
    for dtype in {p.dtype for p in params}:
        one, two = _stand_in_bytes(1, dtype, name, args), _stand_in_bytes(2, dtype, name, args)
        per[dtype] = (two - one, 2 * one - two)  # (per element, per tensor)
    return sum(per[p.dtype][0] * p.numel() + per[p.dtype][1] for p in params)


def checkpoint_bytes(model: nn.Module, averaged: bool = False) -> int:
    """The tensors a checkpoint of ``model`` holds, in bytes: its state dict (weights, buffers) and the state of the
    optimizer its hyper-parameters name (``optimizer``, ``optimizer_args``; AdamW where they name none). ``averaged``:
    a weight-averaging callback (Lightning's ``WeightAveraging``, e.g. the fine-tuning presets' EMA) is on, and
    its checkpoints hold the current weights beside the averaged ones: a second state dict."""
    hparams = getattr(model, "hparams", {})
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values() if torch.is_tensor(t))
    optimizer = state_bytes(model.parameters(), hparams.get("optimizer", "adamw"), hparams.get("optimizer_args"))
    return (2 if averaged else 1) * weights + optimizer
