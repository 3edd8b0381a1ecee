"""The optimizer chosen in the config: each one's first training step equals a plain torch step with the settings it
promises, the default is AdamW exactly as before, a run at the default keeps its run folder, and the state size the
disk preflight reads is torch's own."""

import copy
import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ablations import identity
from lightning_modules.classifier import ImageClassifier
from lightning_modules.optim import no_decay, state_bytes

TINY = dict(model="C-T", model_args=dict(depths=(1, 1), dims=(16, 32), stem_dim=16, head_dim=16), num_classes=3,
            image_size=16, mixup_alpha=0.0)


def first_step(**options) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The backbone's weights after one ImageClassifier training step through a Trainer, and those after the same
    step taken by hand (same weights, batch and loss) with the torch optimizer the options promise: ``reference``,
    called with the decayed and undecayed parameter groups."""
    reference = options.pop("reference")
    torch.manual_seed(0)
    model = ImageClassifier(**TINY, **options)
    twin = copy.deepcopy(model.backbone)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8))

    named = list(twin.named_parameters())
    groups = [{"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": model.hparams.weight_decay},
              {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0}]
    optimizer = reference(groups)
    twin.train()
    F.cross_entropy(twin(x), y, label_smoothing=model.hparams.label_smoothing).backward()
    optimizer.step()
    return dict(model.backbone.named_parameters()), dict(twin.named_parameters())


@pytest.mark.parametrize("options", [
    # the default: AdamW at lr 1e-3 over the groups, weight decay 0.05, torch's betas and eps (before: fixed)
    dict(reference=lambda g: torch.optim.AdamW(g, lr=1e-3)),
    dict(optimizer="sgd", reference=lambda g: torch.optim.SGD(g, lr=1e-3, momentum=0.9)),
    dict(optimizer="sgd", optimizer_args={"nesterov": True, "momentum": 0.8}, lr=0.05,
         reference=lambda g: torch.optim.SGD(g, lr=0.05, momentum=0.8, nesterov=True)),
    # EfficientNet's RMSprop: decay 0.9, momentum 0.9
    dict(optimizer="rmsprop", reference=lambda g: torch.optim.RMSprop(g, lr=1e-3, alpha=0.9, momentum=0.9)),
], ids=["adamw default", "sgd", "sgd nesterov", "rmsprop"])
def test_a_training_step_is_the_plain_torch_step_of_the_chosen_optimizer(options):
    trained, expected = first_step(**options)
    for name in trained:  # fused and for-each kernels may round apart
        torch.testing.assert_close(trained[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_a_run_at_the_default_optimizer_keeps_its_run_folder_and_resumes():
    """A config.yaml written before the option existed, and one naming the default, are one run; SGD is another."""
    before = {"model": {"class_path": "lightning_modules.classifier.ImageClassifier", "init_args": {"lr": 0.003}}}
    now = copy.deepcopy(before)
    now["model"]["init_args"].update(optimizer="adamw", optimizer_args=None)
    sgd = copy.deepcopy(before)
    sgd["model"]["init_args"].update(optimizer="sgd", optimizer_args={"nesterov": True})
    old, new, other = (identity.result_settings(c) for c in (before, now, sgd))
    assert identity.settings_hash(old) == identity.settings_hash(new) != identity.settings_hash(other)
    assert identity.settings_diff(old, new) == []
    assert identity.settings_diff(old, other) == ["model.init_args.optimizer adamw -> sgd",
                                                  "model.init_args.optimizer_args.nesterov unset -> True"]


def test_the_kernel_that_applies_an_update_is_not_a_setting_of_the_result():
    """``fused``/``foreach`` pick the kernel of the same update (the test above: equal to the plain step within
    rounding), as ``compile`` does: one run, one folder; the optimizer's own settings stay part of it."""
    base = {"model": {"class_path": "lightning_modules.classifier.ImageClassifier",
                      "init_args": {"optimizer": "sgd", "optimizer_args": {"momentum": 0.8}}}}
    hashes = set()
    for kernel in ({}, {"fused": False}, {"foreach": True}):
        config = copy.deepcopy(base)
        config["model"]["init_args"]["optimizer_args"].update(kernel)
        hashes.add(identity.settings_hash(identity.result_settings(config)))
    assert len(hashes) == 1
    base["model"]["init_args"]["optimizer_args"]["momentum"] = 0.9
    assert identity.settings_hash(identity.result_settings(base)) not in hashes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_bytes_are_the_optimizers_own(dtype):
    """AdamW: two moments of the parameter's dtype per element and a float32 step count per tensor; SGD: one
    momentum buffer, none without momentum; RMSprop at EfficientNet's settings: a square average and a momentum
    buffer per element, and a step count."""
    params = [torch.nn.Parameter(torch.zeros(shape, dtype=dtype)) for shape in [(64, 32), (32,), (3, 3, 8, 8)]]
    elements, tensors, size = sum(p.numel() for p in params), len(params), params[0].element_size()
    assert state_bytes(params) == 2 * size * elements + 4 * tensors
    assert state_bytes(params, "sgd") == size * elements
    assert state_bytes(params, "sgd", {"momentum": 0.0}) == 0
    assert state_bytes(params, "rmsprop") == 2 * size * elements + 4 * tensors
    assert state_bytes(params, "rmsprop", {"centered": True}) == 3 * size * elements + 4 * tensors


def test_state_bytes_match_the_state_after_a_real_step():
    model = ImageClassifier(**TINY, optimizer="rmsprop")
    params = list(model.backbone.parameters())
    optimizer = torch.optim.RMSprop(params, lr=1e-3, alpha=0.9, momentum=0.9)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    real = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    assert state_bytes(params, "rmsprop") == real


@pytest.mark.parametrize("args,line", [
    (["--model.init_args.optimizer=adam"], "--model.init_args.optimizer adam is not valid; expected one of adamw, sgd, rmsprop"),
    (["--model.init_args.optimizer=sgd", "--model.init_args.optimizer_args={momentun: 0.8}"],
     "--model.init_args.optimizer_args: unknown option(s) momentun for sgd (torch.optim.SGD); valid: momentum, "
     "dampening, nesterov, maximize, foreach, differentiable, fused"),
    (["--model.init_args.optimizer=sgd", "--model.init_args.optimizer_args={momentum: -1}"],
     "--model.init_args.optimizer_args {momentum: -1} is not valid for sgd: Invalid momentum value: -1"),
    (["--model.init_args.optimizer_args={lr: 0.1}"],
     "--model.init_args.optimizer_args sets lr, which is --model.init_args.lr; set it there"),
], ids=["unknown optimizer", "unknown argument", "argument out of range", "lr set twice"])
def test_a_bad_optimizer_is_one_line_exit_2_before_any_run(tmp_path, capsys, args, line):
    from ablations.cli import main
    from tests.test_train import SMALL_RUN

    assert main(["train", *SMALL_RUN, *args, f"--run_dir={tmp_path / 'run'}"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"ablate train: error: {line}"]
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training
    for summary in tmp_path.rglob("summary.json"):
        assert json.loads(summary.read_text())["status"] != "completed"


@pytest.mark.slow
def test_sgd_trains_through_ablate_train_and_config_yaml_names_it(tmp_path):
    from ablations.cli import main
    from tests.test_train import SMALL_RUN

    run_dir = tmp_path / "run"
    assert main(["train", *SMALL_RUN, "--trainer.max_epochs=1", "--model.init_args.optimizer=sgd",
                 "--model.init_args.optimizer_args={nesterov: true}", f"--run_dir={run_dir}"]) == 0
    config = (run_dir / "config.yaml").read_text()
    assert "optimizer: sgd" in config and "nesterov: true" in config
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    [state] = checkpoint["optimizer_states"]
    assert state["param_groups"][0]["nesterov"] and state["param_groups"][0]["momentum"] == 0.9


@pytest.mark.parametrize("optimizer,averaged", [("adamw", False), ("sgd", False), ("adamw", True)],
                         ids=["adamw", "sgd", "adamw with EMA"])
def test_checkpoint_bytes_are_the_tensors_a_saved_checkpoint_holds(tmp_path, optimizer, averaged):
    """What the disk preflight reserves room for (three of these): a real checkpoint's weights, buffers and
    optimizer state after a training step; with Lightning's EMA (the fine-tuning presets') also the current weights
    it keeps beside the average (its few-byte averaging counter aside)."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from lightning_modules.optim import checkpoint_bytes

    model = ImageClassifier(**TINY, optimizer=optimizer)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[EMAWeightAveraging(decay=0.9)] if averaged else None)
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))), batch_size=8))
    trainer.save_checkpoint(tmp_path / "step.ckpt")
    saved = torch.load(tmp_path / "step.ckpt", weights_only=True)
    assert ("current_model_state" in saved) == averaged
    tensors = [*saved["state_dict"].values(), *saved.get("current_model_state", {}).values(),
               *(t for state in saved["optimizer_states"][0]["state"].values() for t in state.values())]
    expected = sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))
    assert checkpoint_bytes(model, averaged=averaged) == expected


def test_the_disk_preflight_reserves_the_chosen_optimizers_checkpoints(tmp_path, monkeypatch, capsys):
    """`ablate train` hands the preflight the model's checkpoint with its optimizer's real state, and the preflight
    wants room for three: less for SGD (one buffer a weight) than for AdamW (two)."""
    import ablations.training.cli as train_cli
    import ablations.training.run_setup as run_setup
    from ablations.cli import main
    from lightning_modules.optim import checkpoint_bytes
    from tests.test_train import SMALL_RUN

    model = dict(model="C-T", model_args=dict(depths=(1, 1), dims=(16, 32), stem_dim=16, head_dim=16), num_classes=4,
                 image_size=16)
    handed = {}

    def stop(run_dir, size):
        handed[run_dir.name] = size
        raise run_setup.RunFolderError("stopped after the preflight's input")

    monkeypatch.setattr(train_cli, "preflight", stop)
    for optimizer in ("adamw", "sgd"):
        assert main(["train", *SMALL_RUN, f"--model.init_args.optimizer={optimizer}", f"--run_dir={tmp_path / optimizer}"]) == 2
        assert handed[optimizer] == checkpoint_bytes(ImageClassifier(**model, optimizer=optimizer))
    weights = checkpoint_bytes(ImageClassifier(**model, optimizer="sgd", optimizer_args={"momentum": 0.0}))
    assert handed["adamw"] - weights > handed["sgd"] - weights > 0

    monkeypatch.setattr(run_setup, "MIN_FREE_BYTES", 0)
    monkeypatch.setattr(run_setup, "free_bytes", lambda folder: 3 * handed["sgd"] - 1)
    with pytest.raises(run_setup.RunFolderError, match="for its checkpoints"):
        run_setup.preflight(tmp_path, handed["sgd"])
    monkeypatch.setattr(run_setup, "free_bytes", lambda folder: 3 * handed["sgd"])
    run_setup.preflight(tmp_path, handed["sgd"])  # room for three checkpoints: enough


def test_a_chosen_kernel_is_kept_not_overridden_by_the_fused_default():
    """``foreach`` (or ``differentiable``) given is the user's choice: torch refuses it beside ``fused=True``."""
    from lightning_modules.optim import build_optimizer

    param = torch.nn.Parameter(torch.zeros(3))
    for args in ({"foreach": True}, {"fused": False}, {}):
        optimizer = build_optimizer([{"params": [param]}], 1e-3, "adamw", args)
        group = optimizer.param_groups[0]
        assert bool(group["fused"]) == (not args), args
        assert group["foreach"] == args.get("foreach", None), args
