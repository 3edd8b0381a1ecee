"""A run started from trained weights (``--model.init_args.init_from``, issue 22 point 1): its first weights are the
source's final ones (the classifier and the bias tables aside), a bad source is one line, the source is part of the
run's identity and recorded, and a resume continues from the run's own checkpoint without needing the source."""

import hashlib
import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml

from ablations.cli import main as cli_main
from ablations.identity import result_settings, settings_hash
from lightning_modules.classifier import ImageClassifier
from lightning_modules.init_from import OPTION, recorded_run_dir
from tests.test_train import SMALL_RUN, read_metrics

RUN = [a for a in SMALL_RUN if not a.startswith("--trainer.max_epochs")] + ["--trainer.max_epochs=1"]
MODEL_ARGS = dict(depths=(1, 1), dims=(16, 32), stem_dim=16, head_dim=16)  # SMALL_RUN's model


def train(*args: str) -> int:
    return cli_main(["train", *args])


class FirstWeights(L.Callback):
    """Saves the backbone's weights as training starts (after any restore): the weights a run starts from."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        torch.save({k: v.detach().clone() for k, v in pl_module.backbone.state_dict().items()}, self.path)


def first_weights(tmp_path: Path) -> list[str]:
    return ["--trainer.callbacks+=tests.test_transfer.FirstWeights", f"--trainer.callbacks.path={tmp_path / 'first.pt'}"]


def backbone_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


def perturb(checkpoint: Path, key: str = "backbone.head.fc.bias", by: float = 1.0) -> None:
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"][key] += by
    torch.save(state, checkpoint)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """``a``: a completed one-epoch pre-training run of SMALL_RUN's model (4 classes at 16x16), its best.ckpt made to
    differ from its last.ckpt (as a best epoch before the last would); ``b``: its copy as another run would leave it
    (another seed in its config, other weights in its checkpoints)."""
    root = tmp_path_factory.mktemp("sources")
    a, b = root / "a", root / "b"
    assert train(*RUN, f"--run_dir={a}") == 0
    perturb(a / "checkpoints" / "best.ckpt", "backbone.stem.0.weight", 0.5)
    shutil.copytree(a, b)
    (b / "config.yaml").write_text((a / "config.yaml").read_text().replace("seed_everything: 0", "seed_everything: 1"))
    for path in (b / "checkpoints").glob("*.ckpt"):
        perturb(path)
    return {"a": a, "b": b}


def identity_of(run: Path) -> str:
    """A run folder's identity as a source, computed here from its config.yaml (``run:<settings hash>``)."""
    return f"run:{settings_hash(result_settings(yaml.safe_load((run / 'config.yaml').read_text())))}"


@pytest.mark.slow
def test_the_sources_weights_are_the_fine_tuning_runs_first_weights(sources, tmp_path):
    """A run folder gives its last.ckpt (the final model its results come from), not its best.ckpt; a path to its
    best.ckpt is the same run, another checkpoint, and another identity; a checkpoint file elsewhere is taken as it
    is (its content hash). Each fine-tuning gets its own default folder, and summary.json records the identity its
    folder hash counts."""
    source = sources["a"]
    best, last = source / "checkpoints" / "best.ckpt", source / "checkpoints" / "last.ckpt"
    assert not torch.equal(backbone_weights(best)["stem.0.weight"], backbone_weights(last)["stem.0.weight"])
    elsewhere = shutil.copy(best, tmp_path / "elsewhere.ckpt")
    cases = [(source, last, "run", identity_of(source)), (best, best, "run", f"{identity_of(source)}/best.ckpt"),
             (elsewhere, Path(elsewhere), "checkpoint", f"sha256:{hashlib.sha256(best.read_bytes()).hexdigest()}")]
    for given, expected, kind, identity in cases:
        before = set(tmp_path.glob("C-T-*"))
        assert train(*RUN, *first_weights(tmp_path), f"--runs_root={tmp_path}", f"--model.init_args.init_from={given}") == 0
        (run_dir,) = set(tmp_path.glob("C-T-*")) - before  # a folder of its own: two sources never share one
        first, reference = torch.load(tmp_path / "first.pt", weights_only=True), backbone_weights(expected)
        assert first.keys() == reference.keys()
        assert all(torch.equal(first[k], reference[k]) for k in reference)
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["init_args"]["init_from"] == str(given)
        record = json.loads((run_dir / "summary.json").read_text())["init_from"]
        assert (record["kind"], record["file"], record["head"], record["resized"], record["identity"]) == (
            kind, str(expected), "loaded", [], identity)
        settings = result_settings(yaml.safe_load((run_dir / "config.yaml").read_text()))
        assert settings[OPTION] == identity and run_dir.name.endswith(settings_hash(settings))  # what its hash counts
        if kind == "run":
            assert (record["run_dir"], record["checkpoint"]) == (str(source), expected.name)


def fine_tuned(source: Path | None, seed: int = 0, **options) -> ImageClassifier:
    torch.manual_seed(seed)
    model = ImageClassifier("C-T", model_args=MODEL_ARGS, **options, init_from=str(source) if source else None)
    if source:
        model.load_init_from()
    return model


def test_another_class_count_replaces_only_the_classifier(sources):
    source = backbone_weights(sources["a"] / "checkpoints" / "last.ckpt")
    model = fine_tuned(sources["a"], num_classes=3, image_size=16)
    fresh = fine_tuned(None, num_classes=3, image_size=16)  # the same seed, from random weights
    for key, value in model.backbone.state_dict().items():
        expected = fresh.backbone.state_dict()[key] if key.startswith("head.fc.") else source[key]
        assert torch.equal(value, expected), key
    assert model.init_record["head"] == "replaced" and model.backbone.head.fc.weight.shape == (3, 32)


def test_new_head_starts_the_classifier_fresh_at_the_same_class_count(sources):
    """Other classes, as many (digits 0-4 -> 5-9): the source's head scores the wrong labels, so new_head keeps the
    fresh one; without it the same count loads the source's head."""
    source = backbone_weights(sources["a"] / "checkpoints" / "last.ckpt")
    fresh = fine_tuned(None, num_classes=4, image_size=16).backbone.state_dict()
    for new_head in (True, False):
        model = fine_tuned(sources["a"], num_classes=4, image_size=16, new_head=new_head)
        for key, value in model.backbone.state_dict().items():
            expected = fresh[key] if new_head and key.startswith("head.fc.") else source[key]
            assert torch.equal(value, expected), (new_head, key)
        assert model.init_record["head"] == ("replaced" if new_head else "loaded")


def test_new_head_without_a_source_is_one_line_exit_2(tmp_path, capsys):
    """It would start nothing fresh, only give a run from random weights another identity."""
    assert train(*RUN, "--model.init_args.new_head=true", f"--run_dir={tmp_path / 'run'}") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert errors == ["ablate train: error: --model.init_args.new_head true starts a source's classifier fresh but no "
                      "--model.init_args.init_from is given; valid: new_head with init_from, or false"]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_chained_spec_on_other_classes_starts_a_fresh_head():
    """The transfer demo fine-tunes on digits 5-9 from a source trained on 0-4: as many classes, other labels."""
    specs = Path(__file__).resolve().parents[1] / "ablations" / "sweeps"
    pretrain, finetune = (yaml.safe_load((specs / f"transfer_demo_{n}.yaml").read_text()) for n in ("pretrain", "finetune"))
    before, after = pretrain["set"]["data.init_args.classes"], finetune["set"]["data.init_args.classes"]
    assert len(before) == len(after) and before != after and finetune["set"]["model.init_args.new_head"] is True


def test_a_model_built_with_a_source_reads_it_only_when_asked(sources, tmp_path):
    """Building the model (a resume, load_from_checkpoint) never reads the source; a fit that starts fresh without
    loading it is refused rather than trained from random weights."""
    model = ImageClassifier("C-T", model_args=MODEL_ARGS, num_classes=4, image_size=16, init_from=str(tmp_path / "gone"))
    assert model.init_record is None
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    data = torch.utils.data.TensorDataset(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="was never loaded: call load_init_from"):
        trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))


def test_another_resolution_resizes_the_bias_tables_bilinearly(sources):
    """16x16 -> 32x32: the attention stage's map grows from 2x2 to 4x4 and its (heads, 3, 3) table to (heads, 7, 7),
    interpolated as the paper fine-tunes 224 -> 384 (bilinear, corners aligned: ``RelativePositionBias``)."""
    source = backbone_weights(sources["a"] / "checkpoints" / "last.ckpt")
    model = fine_tuned(sources["a"], num_classes=4, image_size=32)
    table = "stages.1.0.attn.rel_bias.table"
    assert model.init_record["resized"] == [table]
    by_hand = F.interpolate(source[table][None], size=(7, 7), mode="bilinear", align_corners=True)[0]
    weights = model.backbone.state_dict()
    assert weights[table].shape == (2, 7, 7) and torch.equal(weights[table], by_hand)
    assert all(torch.equal(weights[k], source[k]) for k in source if k != table)


def _unfinished(tmp_path, sources):
    run = shutil.copytree(sources["a"], tmp_path / "unfinished")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    return [f"--model.init_args.init_from={run}"]


def _corrupt_file(tmp_path, sources):
    path = tmp_path / "broken.ckpt"
    path.write_bytes((sources["a"] / "checkpoints" / "last.ckpt").read_bytes()[:5000])  # cut short
    return [f"--model.init_args.init_from={path}"]


def _corrupt_last(tmp_path, sources):
    run = shutil.copytree(sources["a"], tmp_path / "damaged")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    return [f"--model.init_args.init_from={run}"]


def _unfinished_best(tmp_path, sources):
    """A checkpoint of a run that is not completed is not final: refused like the run folder."""
    return [_unfinished(tmp_path, sources)[0] + "/checkpoints/best.ckpt"]


def _broken_config(tmp_path, sources):
    run = shutil.copytree(sources["a"], tmp_path / "broken")
    (run / "config.yaml").write_text("model: [unclosed\n")
    return [f"--model.init_args.init_from={run}"]


def _timm_resnet(tmp_path, sources):
    weights = tmp_path / "resnet50.pth"
    weights.write_bytes(b"")
    return [f"--model.init_args.init_from=timm:resnet50@{weights}"]


@pytest.mark.parametrize("args,needle", [
    (lambda t, s: [f"--model.init_args.init_from={t / 'nowhere'}"], "no such run folder or checkpoint file"),
    (lambda t, s: [f"--model.init_args.init_from={t}"], "not a run folder (no config.yaml)"),
    (_unfinished, "the run is not completed (status running)"),
    (lambda t, s: [f"--model.init_args.init_from={s['a']}", "--model.init_args.model_args={depths: [1, 1], dims: "
                   "[16, 48], stem_dim: 16, head_dim: 16}"],
     "tensor stages.1.0.shortcut.proj.weight is (32, 16, 1, 1) in the source but (48, 16, 1, 1) in this model: another "
     "architecture"),
    (lambda t, s: [f"--model.init_args.init_from={s['a']}", "--model.init_args.model=C-C"],
     "tensor stages.1.0.norm.weight (16,) of this model is not in the source: another architecture"),
    (_corrupt_file, "broken.ckpt is not a readable training checkpoint"),
    (_corrupt_last, "last.ckpt is not a readable training checkpoint"),
    (_unfinished_best, "the run is not completed (status running)"),
    (_broken_config, "config.yaml is no readable YAML"),
    (lambda t, s: ["--model.init_args.init_from=timm:coatnet_0_224"], "timm's cache holds no weights for coatnet_0_224"),
    (lambda t, s: ["--model.init_args.init_from=timm:coatnet_9_224@x"], "'coatnet_9_224' is not one of timm's"),
    (_timm_resnet, "'resnet50' is not one of timm's paper-style CoAtNets that from_timm converts; valid: "
                   "timm:NAME[@FILE] with NAME one of coatnet_0_224, coatnet_1_224, coatnet_2_224, coatnet_3_224, "
                   "coatnet_4_224, coatnet_5_224"),
], ids=["missing", "not a run", "unfinished", "other widths", "other layout", "corrupt file", "corrupt last",
        "unfinished best", "broken config", "timm without weights", "timm unknown model", "timm not a CoAtNet"])
def test_a_bad_source_is_one_line_exit_2_and_nothing_completed(sources, tmp_path, capsys, args, needle):
    run_dir = tmp_path / "run"
    assert train(*RUN, *args(tmp_path, sources), f"--run_dir={run_dir}") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("ablate train: error: --model.init_args.init_from "), errors
    assert needle in errors[0], errors[0]
    assert not (run_dir / "summary.json").exists() and not (run_dir / "metrics.csv").exists()


def run_hash(init_from, **options) -> str:
    """The default run folder's hash of SMALL_RUN's model started from ``init_from``."""
    config = {"model": {"class_path": "lightning_modules.classifier.ImageClassifier",
                        "init_args": {"model": "C-T", "init_from": init_from, **options}}}
    return settings_hash(result_settings(config))


def test_the_source_is_part_of_the_runs_identity(sources, tmp_path, monkeypatch):
    a, b = sources["a"], sources["b"]
    monkeypatch.chdir(a.parent)
    assert run_hash(str(a)) == run_hash("a") == run_hash("./a/") == run_hash(f"{a.parent}/../{a.parent.name}/a")
    assert run_hash(str(a)) == run_hash(str(a / "checkpoints" / "last.ckpt"))  # the run folder's own weights
    first, second = (shutil.copy(a / "checkpoints" / "best.ckpt", tmp_path / f"{n}.ckpt") for n in "12")
    assert run_hash(str(first)) == run_hash(str(second))  # one content, two places outside a run
    hashes = [run_hash(None), run_hash(str(a)), run_hash(str(b)), run_hash(str(a / "checkpoints" / "best.ckpt")),
              run_hash(str(b / "checkpoints" / "best.ckpt")), run_hash(str(first))]
    assert len(set(hashes)) == len(hashes)
    # a run folder counts as its settings hash, the one in its default folder name: known before it has run
    assert result_settings({"model": {"init_args": {"init_from": str(a)}}})[OPTION] == identity_of(a)
    assert result_settings({"model": {"init_args": {"init_from": str(a / "checkpoints" / "best.ckpt")}}})[OPTION] == (
        f"{identity_of(a)}/best.ckpt")
    # a run written before init_from existed keeps its folder, and so does one before new_head existed
    plain_run = {"class_path": "lightning_modules.classifier.ImageClassifier", "init_args": {"model": "C-T"}}
    assert run_hash(None) == settings_hash(result_settings({"model": plain_run}))
    assert run_hash(str(a)) == run_hash(str(a), new_head=False) != run_hash(str(a), new_head=True)


def test_a_sources_own_source_counts_as_its_summary_records_it(sources, tmp_path, monkeypatch):
    """A three-level chain: the source was itself fine-tuned from a relative path (relative to where it ran). Its
    identity, and so the fine-tuning run's, is the same from any working directory."""
    middle = shutil.copytree(sources["a"], tmp_path / "middle")
    config = yaml.safe_load((middle / "config.yaml").read_text())
    config["model"]["init_args"]["init_from"] = "a"  # relative to sources' folder, where it ran
    (middle / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(sources["a"].parent)
    where_it_ran = result_settings({"model": {"init_args": {"init_from": str(middle)}}})[OPTION]
    summary = json.loads((middle / "summary.json").read_text())
    summary["init_from"] = {"given": "a", "kind": "run", "identity": identity_of(sources["a"])}
    (middle / "summary.json").write_text(json.dumps(summary))
    monkeypatch.chdir(tmp_path)  # "a" names nothing here
    assert result_settings({"model": {"init_args": {"init_from": str(middle)}}})[OPTION] == where_it_ran


def test_the_run_folder_a_recorded_source_names(sources, tmp_path):
    """``recorded_run_dir``: how the analysis and the chain read a source their records give (as resolve does)."""
    a = sources["a"]
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")
    cases = {str(a): a, str(a / "checkpoints" / "best.ckpt"): a, str(weights): None, "timm:coatnet_0_224": None,
             "gone/sweep/run": Path("gone/sweep/run"), "gone/sweep/run/checkpoints/last.ckpt": Path("gone/sweep/run"),
             "gone/model.pth": None, "": None}
    for given, expected in cases.items():
        assert recorded_run_dir(given) == expected, given
    assert recorded_run_dir({"kind": "run", "run_dir": str(a), "file": "x"}) == a
    assert recorded_run_dir({"kind": "checkpoint", "file": str(a / "checkpoints" / "last.ckpt")}) == a
    assert recorded_run_dir({"kind": "timm", "given": "timm:coatnet_0_224"}) is None
    assert recorded_run_dir(None) is None


@pytest.mark.slow
def test_an_interrupted_fine_tuning_run_resumes_from_its_own_checkpoint_without_its_source(sources, tmp_path):
    """Stopped mid-epoch by SIGTERM (as SLURM preempts), its source then moved away, resumed by the same command:
    the same rows and the same init_from record as a run never stopped, with the EMA the fine-tuning presets use.
    Starting from the source again would change the rows; needing the source would refuse the resume."""
    source = shutil.copytree(sources["a"], tmp_path / "source")
    tune = [*RUN, "--trainer.max_epochs=2", f"--model.init_args.init_from={source}", "--data.init_args.image_size=32",
            "--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging", "--trainer.callbacks.decay=0.9"]
    assert train(*tune, f"--run_dir={tmp_path / 'straight'}") == 0
    stop = ["--trainer.callbacks+=tests.helpers.KillOnce", "--trainer.callbacks.epoch=1", "--trainer.callbacks.batch=2",
            "--trainer.callbacks.signal=SIGTERM", f"--trainer.callbacks.marker={tmp_path / 'stopped'}"]
    resumed = tmp_path / "resumed"
    assert train(*tune, *stop, f"--run_dir={resumed}") == 3
    source.rename(tmp_path / "moved")
    assert train(*tune, *stop, f"--run_dir={resumed}") == 0
    columns = ("epoch", "step", "train/loss", "train_eval/loss", "val/acc", "test/loss", "test/acc")
    assert [[r[c] for c in columns] for r in read_metrics(resumed)] == [
        [r[c] for c in columns] for r in read_metrics(tmp_path / "straight")]
    records = [json.loads((run / "summary.json").read_text())["init_from"] for run in (tmp_path / "straight", resumed)]
    assert records[0] == records[1] and records[1]["identity"] == identity_of(tmp_path / "moved")


@pytest.mark.slow
def test_a_timm_coatnet_from_a_local_weights_file(tmp_path):
    """timm:NAME@FILE, never downloaded: timm's coatnet_0_224 (random weights saved to a file) converted by
    from_timm; at 64x64 with 10 classes its head is replaced and its bias tables resized, the rest loads exactly."""
    timm = pytest.importorskip("timm")
    from lightning_modules.backbones import from_timm

    torch.manual_seed(0)
    theirs = timm.create_model("coatnet_0_224", pretrained=False)
    weights = tmp_path / "coatnet_0.pth"
    torch.save(theirs.state_dict(), weights)
    converted = from_timm(theirs).state_dict()
    model = ImageClassifier("coatnet_0", model_args=dict(style="timm", downsample="dw", pre_logits=True),
                            num_classes=10, image_size=64, in_chans=3, init_from=f"timm:coatnet_0_224@{weights}")
    record = model.load_init_from()
    assert (record["kind"], record["timm"], record["head"]) == ("timm", "coatnet_0_224", "replaced")
    ours = model.backbone.state_dict()
    assert sorted(record["resized"]) == sorted(k for k in ours if k.endswith("rel_bias.table"))
    assert all(torch.equal(ours[k], converted[k]) for k in ours
               if not k.startswith("head.fc.") and k not in record["resized"])


def test_a_budget_layout_is_fine_tuned_at_a_higher_resolution(tmp_path):
    """The budget sizes the network at its own resolution (32x32 for tiny); a run from a source's weights keeps that
    network at 64x64, as the paper fine-tunes at 384 what it sized at 224. Without a source 64x64 stays refused."""
    source = ImageClassifier("C-C-T-T", budget="tiny", num_classes=10, image_size=32, in_chans=1)
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": source.state_dict(), "loops": {}, "epoch": 1}, path)
    tuned = ImageClassifier("C-C-T-T", budget="tiny", num_classes=10, image_size=64, in_chans=1, init_from=str(path))
    tuned.load_init_from()
    assert (tuned.backbone.cfg.depths, tuned.backbone.cfg.dims) == (source.backbone.cfg.depths, source.backbone.cfg.dims)
    assert tuned.init_record["head"] == "loaded" and len(tuned.init_record["resized"]) == 3  # S3's 2 blocks, S4's 1
    with pytest.raises(ValueError, match="is sized for 32x32 images but the data are 64x64"):
        ImageClassifier("C-C-T-T", budget="tiny", num_classes=10, image_size=64, in_chans=1)
