"""Throughput and memory of a registry model, optionally beside timm's equivalent measured in the same run.

Measurements of the two models are interleaved round by round (ours, timm, ours, timm, ...) so that both see
the same machine state, and the medians are compared.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.backbones import count_params, create_model
from lightning_modules.backbones.profile import attention_macs, macs_by_op
from lightning_modules.optim import build_optimizer, param_groups

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Dense bf16 tensor-core peaks from the vendor's data sheets (TFLOP/s), matched against the device name; the
# first key found in the name wins, so the more specific names come first. An H200 measured about 790 TFLOP/s
# on a large bf16 matmul; utilisation is quoted against the data-sheet figure.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def peak_tflops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in device_name), None)


@dataclass(frozen=True)
class BenchSettings:
    batch: int = 32
    image_size: tuple[int, int] = (224, 224)
    precision: str = "fp32"
    device: str = "cpu"
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    infer: bool = True  # also time inference (a second compiled graph)
    num_classes: int = 1000
    rounds: int = 5
    warmup: int = 2


@dataclass
class BenchResult:
    label: str
    params: int
    macs: int
    attention_macs: int = 0
    image_size: tuple[int, int] = (224, 224)
    train_times: list[float] = field(default_factory=list)
    infer_times: list[float] = field(default_factory=list)
    peak_memory: float | None = None  # bytes
    kernels: list[tuple[str, float]] = field(default_factory=list)  # (kernel, ms per train step), slowest first

    def images_per_s(self, times: list[float], batch: int) -> float:
        return batch / statistics.median(times) if times else float("nan")

    def train_mfu(self, batch: int, peak: float | None) -> float | None:
        """Model FLOPs utilisation of training: a step costs 3 forward passes (forward, and backward's two
        products), 2 FLOPs a MAC, over the device's peak."""
        if peak is None:
            return None
        return self.images_per_s(self.train_times, batch) * 6 * self.macs / (peak * 1e12)


def build(source: str, name: str, settings: BenchSettings, overrides: dict[str, Any]) -> nn.Module:
    if source == "ours":
        return create_model(name, num_classes=settings.num_classes, image_size=settings.image_size, **overrides)
    import timm  # development extra

    try:  # attention models are built for a resolution; convnets take none
        return timm.create_model(name, num_classes=settings.num_classes, img_size=settings.image_size)
    except TypeError:
        return timm.create_model(name, num_classes=settings.num_classes)


class Runner:
    """One model prepared for timed train steps (forward, backward, the training's default optimizer: fused AdamW
    over the decayed and undecayed groups) and inference batches."""

    def __init__(self, model: nn.Module, settings: BenchSettings):
        self.settings = settings
        device = torch.device(settings.device)
        fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=fmt)
        # fullgraph: a graph break is an error, not a silently slower model
        self.forward = torch.compile(self.model, fullgraph=True, backend=settings.compile_backend) if settings.compile else self.model
        self.optimizer = build_optimizer(param_groups(self.model, weight_decay=0.05), lr=1e-4)
        self.x = torch.randn(settings.batch, 3, *settings.image_size, device=device).contiguous(memory_format=fmt)
        self.y = torch.randint(0, settings.num_classes, (settings.batch,), device=device)
        dtype = PRECISIONS[settings.precision]
        self.autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext

    def train_step(self) -> None:
        self.model.train()
        with self.autocast():
            loss = F.cross_entropy(self.forward(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.inference_mode()
    def infer_step(self) -> None:
        self.model.eval()
        with self.autocast():
            self.forward(self.x)

    def timed(self, step: Callable[[], None]) -> float:
        sync()
        start = time.perf_counter()
        step()
        sync()
        return time.perf_counter() - start


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class PeakMemory:
    """Transient peak of one step above the memory in use before it (bytes), on CUDA or on Linux CPUs.

    Both models stay resident while they are interleaved, so a whole-process peak would count the other
    model too; a model's peak is its own persistent state plus this transient peak.
    """

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.supported = self.cuda or os.path.exists("/proc/self/clear_refs")

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        elif self.supported:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM, the peak resident set, to the current one
            self.base = _proc_status("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.transient = torch.cuda.max_memory_allocated() - self.base
        elif self.supported:
            self.transient = _proc_status("VmHWM") - self.base


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


def top_kernels(runner: Runner, steps: int = 3, top: int = 12) -> list[tuple[str, float]]:
    """The device kernels (CPU ops on a CPU) that take a train step's time, in ms per step, slowest first."""
    from torch.profiler import ProfilerActivity, profile

    cuda = runner.settings.device.startswith("cuda")
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            runner.train_step()
        sync()
    events = prof.key_averages()

    def self_time(e) -> float:  # microseconds
        return e.self_device_time_total if cuda else e.self_cpu_time_total

    ranked = sorted(events, key=self_time, reverse=True)[:top]
    return [(e.key, self_time(e) / 1e3 / steps) for e in ranked if self_time(e) > 0]


def run_bench(model: str, settings: BenchSettings, overrides: dict[str, Any] | None = None,
              timm_name: str | None = None, progress: bool | None = None, profile: bool = False) -> list[BenchResult]:
    """Benchmark ``model`` (and ``timm_name`` if given), interleaving the two round by round, alternating order.
    ``profile`` adds each model's top kernels per train step (measured after the timed rounds)."""
    from tqdm.auto import tqdm

    if settings.compile:  # compiled code of earlier models counts towards dynamo's per-function recompile limit,
        torch.compiler.reset()  # past which it would silently run later models eagerly
    overrides = overrides or {}
    entries = [("ours", model, f"{model}" + "".join(f" {k}={v}" for k, v in overrides.items()))]
    if timm_name:
        entries.append(("timm", timm_name, f"timm {timm_name}"))
    runners, results = [], []
    for source, name, label in entries:
        net = build(source, name, settings, overrides if source == "ours" else {})
        by_op = macs_by_op(net, settings.image_size, 3)  # on a meta copy: one pass for the total and attention
        results.append(BenchResult(label, count_params(net), sum(by_op.values()), attention_macs(by_op),
                                   settings.image_size))
        runners.append(Runner(net, settings))

    show = sys.stderr.isatty() if progress is None else progress
    total = len(runners) * (settings.warmup + settings.rounds)
    with tqdm(total=total, desc="bench", disable=not show, unit="round") as bar:
        for _ in range(settings.warmup):
            for runner in runners:
                runner.train_step()
                if settings.infer:
                    runner.infer_step()
                bar.update()
        for round_idx in range(settings.rounds):
            pairs = list(zip(runners, results))
            for runner, result in pairs[::-1] if round_idx % 2 else pairs:  # alternate who goes first
                result.train_times.append(runner.timed(runner.train_step))
                if settings.infer:
                    result.infer_times.append(runner.timed(runner.infer_step))
                bar.update()
    for runner, result in zip(runners, results):  # measured untimed, so the probes cost no throughput
        with PeakMemory(settings.device) as peak:
            runner.train_step()
        if peak.supported:
            result.peak_memory = _state_bytes(runner.model, runner.optimizer) + peak.transient
        if profile:
            result.kernels = top_kernels(runner)
    return results


def device_peak(settings: BenchSettings, override: float | None = None) -> float | None:
    """The bf16 peak (TFLOP/s) that utilisation is quoted against: ``override``, or the table's entry for this
    GPU; None on CPUs and unknown GPUs."""
    if override or not settings.device.startswith("cuda"):
        return override
    return peak_tflops(torch.cuda.get_device_name(torch.device(settings.device)))


def format_results(results: list[BenchResult], settings: BenchSettings, peak: float | None = None) -> str:
    b = settings.batch
    head = (f"batch {b}, {settings.precision}, {settings.device}, threads {torch.get_num_threads()}, "
            f"channels_last={settings.channels_last}, compile={settings.compile}, median of {settings.rounds} "
            f"interleaved rounds" + (f", MFU against {peak:g} TFLOP/s bf16" if peak else ""))
    rows = [f"{'model':<34} {'size':>7} {'params':>9} {'GMACs':>7} {'attn':>6} {'train img/s':>12} {'infer img/s':>12} "
            f"{'peak mem':>10}" + (f" {'MFU':>6}" if peak else "")]
    previous = None
    for r in results:
        mem = "n/a" if r.peak_memory is None or r.peak_memory != r.peak_memory else f"{r.peak_memory / 2**20:.0f} MiB"
        row = (f"{r.label:<34} {r.image_size[0]:>3}x{r.image_size[1]:<3} {r.params / 1e6:>8.2f}M {r.macs / 1e9:>7.3g} "
               f"{r.attention_macs / max(r.macs, 1):>6.1%} {r.images_per_s(r.train_times, b):>12.2f} "
               f"{r.images_per_s(r.infer_times, b):>12.2f} {mem:>10}")
        if peak:
            row += f" {r.train_mfu(b, peak):>6.1%}"
        rows.append(row)
        if r.label.startswith("timm ") and previous is not None:  # the pair measured side by side
            rows.append(f"{'ratio ours / timm':<34} {'':>7} {'':>9} {'':>7} {'':>6} "
                        f"{previous.images_per_s(previous.train_times, b) / r.images_per_s(r.train_times, b):>11.2f}x "
                        f"{previous.images_per_s(previous.infer_times, b) / r.images_per_s(r.infer_times, b):>11.2f}x")
        previous = r
    rows.append("attn: share of the forward MACs in the attention products (QK^T, attention x V), quadratic in tokens")
    return "\n".join([head, *rows])
