"""``ImageClassifier``: trains any registry model or layout and logs every number the study needs."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import v2

from . import compat
from . import init_from as init_from_source
from .backbones import budget_variant, count_macs, count_params, create_model, import_block_modules
from .optim import OptimizerName, build_optimizer, check_optimizer, param_groups
from .ranges import NonNegativeFinite, PositiveFinite, PositiveInt, Probability, plain

EVAL_SPLITS = ("val", "train_eval", "test")  # the order of the DataModule's validation loaders


def _eval_metrics(num_classes: int) -> MetricCollection:
    return MetricCollection({
        "loss": MeanMetric(),
        "acc": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
        "acc5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
    })


def check_budget(model: str, budget: str, size: tuple[int, int] | None) -> None:
    """A run at a budget is at it: the budget sizes a layout (a registry name has its own size) for its own
    resolution (at another, its parameters and MACs are another network's: the paper budget on 32x32 images spends
    96.5M MACs of its 5.0G, with S4 on a 1x1 map). ``size`` None: any resolution, for a run that starts from a
    source's weights (the budget's network, fine-tuned at another resolution as the paper's 224 -> 384)."""
    from .backbones import BUDGETS, MODELS

    if budget not in BUDGETS:
        return  # budget_variant names the valid ones
    if model.strip().lower() in MODELS:
        raise ValueError(f"--model.init_args.budget {budget} sizes a layout such as C-C-T-T; {model!r} is a registry "
                         "model with its own size: drop the budget, or give the layout (--model.init_args.model "
                         f"{getattr(MODELS[model.strip().lower()].config, 'layout', 'C-C-T-T')})")
    want = tuple(BUDGETS[budget].template.image_size)
    if size is not None and tuple(size) != want:
        fits = [name for name, b in BUDGETS.items() if tuple(b.template.image_size) == tuple(size)]
        hint = (f"use --model.init_args.budget {' or '.join(fits)}" if fits else
                f"no budget is sized for {size[0]}x{size[1]}; give depths and dims in --model.init_args.model_args")
        raise ValueError(f"--model.init_args.budget {budget} is sized for {want[0]}x{want[1]} images but the data are "
                         f"{size[0]}x{size[1]}; {hint}, or data at {want[0]}x{want[1]}")


class ImageClassifier(L.LightningModule):
    """AdamW (or another ``optimizer``, see ``lightning_modules.optim``) with linear warm-up and cosine decay, label
    smoothing, MixUp/CutMix, stochastic depth.

    Defaults follow the paper's ImageNet recipe (Table 10): lr 1e-3 -> 1e-5, weight decay 0.05, label smoothing
    0.1, MixUp 0.8; gradient clipping 1.0 is the Trainer's ``gradient_clip_val``. ``channels_last`` is off by
    default: it sped CoAtNet-0 training up on CPU but can slow hybrid models down; ``ablate bench`` measures it. ``num_classes``, ``image_size``
    and ``in_chans`` come from the DataModule when trained through ``ablate train``. ``budget`` sizes a layout
    ``model`` for a budget (``"C-T-C-T"`` at ``"cifar"``); ``imports`` names modules that register block types.
    ``init_from`` starts from trained weights (a run folder, a checkpoint file or ``timm:NAME``; ``init_from.py``),
    loaded by ``load_init_from`` before training (``ablate train`` calls it unless the run resumes); ``new_head``
    starts the classifier fresh even at the source's class count (other classes, e.g. digits 0-4 -> 5-9).

    Every metric it logs is recorded (``metrics.csv``, W&B, the analysis's table) under the name it is logged with;
    ``summaries`` says how a run's W&B summary shows the ones a comparison reads (W&B's default is the last value).
    """

    summaries = {"val/acc": "max", "train_eval/loss": "min", "test/acc": "last", "gap/acc": "last",
                 "gap/loss": "last", "lr": "last", "images_per_s": "mean"}

    def __init__(
        self,
        model: str = "cctt_tiny",
        model_args: dict[str, Any] | None = None,
        num_classes: PositiveInt = 10,
        image_size: PositiveInt | tuple[PositiveInt, PositiveInt] = 32,
        in_chans: PositiveInt = 3,
        lr: PositiveFinite = 1e-3,
        min_lr: NonNegativeFinite = 1e-5,
        weight_decay: NonNegativeFinite = 0.05,
        warmup_epochs: NonNegativeFinite = 1.0,
        label_smoothing: Probability = 0.1,
        mixup_alpha: NonNegativeFinite = 0.8,
        cutmix_alpha: NonNegativeFinite = 0.0,
        drop_path: Probability = 0.0,
        compile: bool | None = None,
        channels_last: bool = False,
        budget: str | None = None,
        imports: list[str] | None = None,
        init_from: str | None = None,
        new_head: bool = False,
        optimizer: OptimizerName = "adamw",
        optimizer_args: dict[str, Any] | None = None,
    ):
        super().__init__()
        if min_lr > lr:  # the schedule's floor above its peak would raise the rate as it "decays"
            raise ValueError(f"--model.init_args.min_lr {min_lr} is above --model.init_args.lr {lr}; valid: min_lr <= lr")
        if new_head and init_from is None:  # it would only change the run's identity
            raise ValueError(f"--model.init_args.new_head true starts a source's classifier fresh but no "
                             f"--{init_from_source.OPTION} is given; valid: new_head with init_from, or false")
        check_optimizer(optimizer, optimizer_args)
        self.save_hyperparameters()
        self.save_hyperparameters(plain(dict(self.hparams)))  # plain numbers: checkpoints load with weights_only
        import_block_modules(imports)
        size = tuple(image_size) if isinstance(image_size, (list, tuple)) else (image_size, image_size)
        overrides = dict(model_args or {})
        if drop_path:
            overrides.setdefault("drop_path", drop_path)
        build = dict(num_classes=num_classes, image_size=size, in_chans=in_chans, **overrides)
        if budget is not None:  # matched once (at the budget's own resolution and classes), then built twice
            check_budget(model, budget, size if init_from is None else None)
            cfg = budget_variant(model, budget, **build)
            build = {**build, "depths": cfg.depths, "dims": cfg.dims, "stem_dim": cfg.stem_dim}
        self.backbone = create_model(model, budget=budget, **build)
        self.init_record: dict[str, Any] | None = None  # what load_init_from loaded (summary.json's init_from)
        with torch.device("meta"):  # a weightless twin: MACs without running the real model
            self.macs = count_macs(create_model(model, budget=budget, **build))
        self.params = count_params(self.backbone)
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if compile:  # in place: state-dict keys stay those of the plain model, so checkpoints load uncompiled
            self.backbone.compile()
        mixers = [v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha > 0 else []
        mixers += [v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha > 0 else []
        self.mix = v2.RandomChoice(mixers) if mixers else None
        self.train_loss = MeanMetric()
        self.eval_metrics = nn.ModuleDict({split: _eval_metrics(num_classes) for split in EVAL_SPLITS})
        self._test_outputs: list[tuple[torch.Tensor, ...]] = []  # (targets, predicted classes, losses) per test batch
        self.test_predictions: dict[str, np.ndarray] | None = None  # the last test's, for predictions.npz

    def load_init_from(self, identity: str | None = None) -> dict[str, Any]:
        """Load the ``init_from`` source's weights into the backbone (one line, ValueError or FileNotFoundError, when
        they do not fit). Not done in ``__init__``: a resumed run restores its own checkpoint and must not need its
        source, and ``load_from_checkpoint`` has every weight already. ``identity``: what the run's folder hash
        counts the source as (``ablate train`` passes it), recorded beside it."""
        record = init_from_source.load(self.backbone, self.hparams.init_from, self.hparams.new_head)
        self.init_record = {**record, "identity": identity} if identity is not None else record
        return self.init_record

    def on_train_start(self) -> None:
        """Never train from random weights by mistake: a fresh run with ``init_from`` must have loaded it."""
        if self.hparams.init_from is not None and self.init_record is None and self.trainer.ckpt_path is None:
            raise ValueError(f"--{init_from_source.OPTION} {self.hparams.init_from} was never loaded: call "
                             "load_init_from() before fit (ablate train does)")

    def setup(self, stage: str) -> None:
        """``compile=None`` compiles where it pays: on GPUs (on CPUs inductor's training graphs ran slower than
        eager for these models)."""
        on_gpu = self.trainer.strategy.root_device.type == "cuda"
        if self.hparams.compile is None and on_gpu and not compat.is_compiled(self.backbone):
            self.backbone.compile()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    # --- steps ------------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        if self.mix is not None:
            images, targets = self.mix(images, targets)
        loss = F.cross_entropy(self(images), targets, label_smoothing=self.hparams.label_smoothing)
        self.train_loss.update(loss.detach(), images.shape[0])
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, batch_size=images.shape[0])
        return loss

    def _evaluate(self, split: str, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Update ``split``'s metrics with a batch; its targets, logits and per-image losses."""
        images, targets = batch
        logits = self(images)
        losses = F.cross_entropy(logits, targets, reduction="none")
        metrics = self.eval_metrics[split]
        metrics["loss"].update(losses)
        metrics["acc"].update(logits, targets)
        metrics["acc5"].update(logits, targets)
        return targets, logits, losses

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(EVAL_SPLITS[dataloader_idx], batch)

    def on_test_epoch_start(self) -> None:
        self._test_outputs, self.test_predictions = [], None

    def test_step(self, batch, batch_idx: int) -> None:
        targets, logits, losses = self._evaluate("test", batch)
        self._test_outputs.append((targets, logits.argmax(1), losses.float()))

    def _log_split(self, split: str) -> dict[str, torch.Tensor]:
        values = {f"{split}/{k}": v for k, v in self.eval_metrics[split].compute().items()}
        self.eval_metrics[split].reset()
        self.log_dict(values, add_dataloader_idx=False, sync_dist=False)  # torchmetrics already synchronised
        return values

    def on_validation_epoch_end(self) -> None:
        values = {}
        for split in EVAL_SPLITS:
            if self.eval_metrics[split]["loss"].update_called:
                values.update(self._log_split(split))
        if "val/loss" in values and "train_eval/loss" in values:
            self.log_dict({
                "gap/loss": values["val/loss"] - values["train_eval/loss"],
                "gap/acc": values["train_eval/acc"] - values["val/acc"],
            })

    def on_test_epoch_end(self) -> None:
        self._log_split("test")
        self.test_predictions = self._test_predictions()

    def _test_predictions(self) -> dict[str, np.ndarray]:
        """Every test image's target, predicted class and loss, in the test set's order (gathered from every rank),
        as compact arrays for ``predictions.npz``: runs compared image by image (paired tests) need them."""
        outputs, self._test_outputs = self._test_outputs, []
        labels = np.min_scalar_type(max(self.hparams.num_classes - 1, 0))  # uint8 up to 256 classes
        arrays = {}
        for i, (name, dtype) in enumerate((("target", labels), ("pred", labels), ("loss", np.float32))):
            local = torch.cat([o[i] for o in outputs]) if outputs else torch.zeros(0, device=self.device)
            arrays[name] = self._in_test_order(local).cpu().numpy().astype(dtype)
        return arrays

    def _in_test_order(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` of every rank, in the order of the test set. The evaluation loaders are not shuffled and give
        rank r the images r, r + world, r + 2 world, ... (``UnrepeatedDistributedSampler``, ``DeviceBatches``), so
        image i is rank i % world's (i // world)-th; ranks may hold one image fewer, so each pads to the largest."""
        world = self.trainer.world_size
        if world == 1:
            return values
        sizes = self.all_gather(torch.tensor(len(values), device=values.device))
        padded = values.new_zeros(int(sizes.max()), *values.shape[1:])
        padded[:len(values)] = values
        gathered = self.all_gather(padded)  # (world, most, ...)
        index = torch.arange(int(sizes.sum()), device=gathered.device)
        return gathered[index % world, index // world]

    # --- optimisation -----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        optimizer = build_optimizer(param_groups(self.backbone, hp.weight_decay), hp.lr, hp.optimizer, hp.optimizer_args)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(total - 1, round(self.hparams.warmup_epochs * total / max(1, self.trainer.max_epochs or 1)))
        floor = self.hparams.min_lr / self.hparams.lr

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
