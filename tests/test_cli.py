"""The `ablate` command line as a user runs it: tables, benchmarks, and one-line errors with exit code 2."""

import statistics
import subprocess
import sys

import pytest

from ablations.bench import BenchSettings, format_results, run_bench
from ablations.cli import main


def test_models_table_shows_ours_beside_the_paper(capsys):
    assert main(["models", "coatnet_0", "convmixer_1536_20"]) == 0
    out = capsys.readouterr().out
    assert "| coatnet_0 | C-C-T-T stem 64, L=(2, 3, 5, 2), D=(96, 192, 384, 768) | 224x224 | 24.40M | 4.141 | 25.0M | 4.2 | -2.4% | -1.4% |" in out
    assert "| convmixer_1536_20 | dim 1536, depth 20, k9, p7, gelu | 224x224 | 51.63M" in out


@pytest.mark.parametrize("argv,needle", [
    (["models", "coatnet_9"], "unknown model 'coatnet_9'; valid names:"),
    (["bench", "C-Q-T"], "unknown stage type 'Q'"),
    (["bench", "cctt_tiny", "--image-size", "30"], "image_size 30x30 does not fit"),
    (["bench", "cctt_tiny", "--set", "downsample"], "--set expects KEY=VALUE"),
    (["bench", "cctt_tiny", "--device", "cuda:7"], "torch sees no CUDA device"),
    (["match", "--budget", "huge"], "unknown budget 'huge'; valid budgets: paper, cifar, tiny"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_entry_point_exit_code():
    proc = subprocess.run([sys.executable, "-m", "ablations.cli", "models", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown model 'nope'" in proc.stderr


def test_bench_interleaves_ours_and_timm_and_reports_the_ratio():
    pytest.importorskip("timm")
    settings = BenchSettings(batch=4, image_size=(32, 32), num_classes=10, rounds=2, warmup=1)
    results = run_bench("cctt_tiny", settings, {"drop_path": 0.1}, timm_name="resnet10t", progress=False)
    assert [r.label for r in results] == ["cctt_tiny drop_path=0.1", "timm resnet10t"]
    for r in results:
        assert len(r.train_times) == 2 and len(r.infer_times) == 2 and r.peak_memory > 0
    table = format_results(results, settings)
    assert "ratio ours / timm" in table and "train img/s" in table and "MFU" not in table  # no peak on CPU
    ours, theirs = results
    ratio = statistics.median(theirs.train_times) / statistics.median(ours.train_times)  # images/s at one batch
    assert f"{ratio:>11.2f}x" in table.splitlines()[4]


def test_mfu_is_a_training_steps_counted_flops_over_the_data_sheet_peak():
    """MFU's numerator is what torch's FLOP counter finds in one training step, forward and backward, of a model
    whose every layer computes both of its gradients (the input requires one too). The peaks are the vendors' dense
    bf16 figures, a PCIe H100 is not read as the SXM part, and a GPU with no listed peak gets no MFU."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ablations.bench import BenchResult, peak_tflops
    from lightning_modules.backbones import count_macs, create_model

    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989 and peak_tflops("NVIDIA H100 PCIe") == 756
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312 and peak_tflops("NVIDIA H200") == 989
    assert peak_tflops("NVIDIA GeForce RTX 4090") is None
    # vit_rel_tiny has no depthwise convolution, whose backward torch's counter over-counts (torch 2.14)
    with torch.device("meta"):
        model = create_model("vit_rel_tiny")
        images = torch.zeros(8, 3, 32, 32, requires_grad=True)
        labels = torch.zeros(8, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(images), labels).backward()
    result = BenchResult("vit_rel_tiny", params=1, macs=count_macs(model), train_times=[0.05, 0.04, 0.09])
    assert result.train_mfu(8, 312) == pytest.approx(counter.get_total_flops() / 0.05 / 312e12, rel=1e-9)  # median step
    # 1000 img/s x 4 GMACs x 2 FLOPs x 3 passes = 24 TFLOP/s, 7.7% of an A100's 312
    slow = BenchResult("m", params=1, macs=4_000_000_000, train_times=[0.1, 0.1, 0.1])
    table = format_results([slow], BenchSettings(batch=100, device="cuda"), peak=312)
    assert table.splitlines()[-2].endswith(" 7.7%")


def test_bench_table_grows_with_image_size_and_shows_the_attention_share(capsys):
    assert main(["bench", "C-T", "--set", "depths=[1,1]", "--set", "dims=[16,32]", "--set", "stem_dim=16",
                     "--set", "head_dim=16", "--image-size", "32", "64", "--batch", "2", "--rounds", "1",
                     "--warmup", "0", "--num-classes", "4"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("C-T")]
    macs = [float(r.split()[-6]) for r in rows]
    attn = [float(r.split()[-5].rstrip("%")) for r in rows]
    assert len(rows) == 2 and macs[1] > 3.9 * macs[0] and attn[1] > attn[0] > 0  # attention grows faster than the rest
