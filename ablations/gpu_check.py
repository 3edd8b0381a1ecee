"""``make gpu-check``: the study's GPU path on this node's GPU, in one command, written to one Markdown and one
JSON file (``gpu-check/gpu-check.md``, ``.json``).

The steps run most important first, each timed; a failing step is recorded (with the model's name) and the check
goes on; steps that no longer fit the time budget are recorded as skipped. The exit code is 1 if any step
failed or was skipped, 0 otherwise.

1. the device: name, driver, torch and CUDA versions, the bf16 peak that MFU is quoted against;
2. one compiled (``fullgraph``) bf16 training step for every CIFAR-budget layout at batch 256 and CoAtNet-0 at
   224, then two more with dynamo's ``error_on_recompile``: a graph break or a recompile fails the model;
3. a 1-epoch ``ablate train`` on CIFAR-100-shaped synthetic data with the GPU defaults (compile, bf16, data on
   the device, fused AdamW);
4. CoAtNet-0 (``downsample=dw``) against timm's ``coatnet_0_224``, compiled bf16: images/s, the ratio, MFU,
   peak memory, and each model's top kernels;
5. the five CIFAR-budget layouts compiled bf16 at batch 256: images/s, MFU, peak memory;
6. the five layouts as a 1-epoch sweep with ``--runs-per-gpu 5``, then one at a time: wall times, the ratio,
   and each run's results side by side.

It runs from a source tree too (``PYTHONPATH=.``) where torch, Lightning, timm, torchmetrics and torchvision are
installed: ``make gpu-check`` installs wheels found in ``.whl/`` (jsonargparse, docstring-parser,
typeshed-client, submitit) into ``.whl/site`` first. ``--smoke`` runs the same steps on a CPU with tiny models
(the test suite does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
import yaml

from lightning_modules.backbones import STUDY_LAYOUTS

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Plan:
    """What the check runs; ``smoke()`` is the same shape at CPU size."""

    device: str = "cuda"
    budget: str = "cifar"  # the layouts' budget; models are variant_name(layout, budget)
    layouts: tuple[str, ...] = STUDY_LAYOUTS
    small_size: int = 32
    small_batch: int = 256
    num_classes: int = 100
    big_model: str = "coatnet_0"
    big_overrides: tuple[tuple[str, Any], ...] = (("downsample", "dw"),)
    big_size: int = 224
    big_batch: int = 256
    timm_name: str | None = "coatnet_0_224"
    precision: str = "bf16"
    backend: str = "inductor"
    rounds: int = 10
    warmup: int = 2
    train_size: int = 50_000
    test_size: int = 10_000
    train_eval_samples: int = 10_000
    config: str = "ablations/configs/cifar100.yaml"
    parallel_flags: tuple[str, ...] = ("--runs-per-gpu", "5")

    @classmethod
    def smoke(cls) -> "Plan":
        return cls(device="cpu", budget="tiny", layouts=("C-C-T-T",), small_batch=8, num_classes=10, big_model="C-T",
                   big_overrides=(("depths", [1, 1]), ("dims", [16, 32]), ("stem_dim", 16), ("head_dim", 16),
                                  ("downsample", "dw")),
                   big_size=32, big_batch=4, timm_name="resnet10t", precision="fp32", backend="eager", rounds=1,
                   warmup=1, train_size=64, test_size=32, train_eval_samples=32,
                   config="ablations/configs/digits_tiny.yaml", parallel_flags=("--parallel", "2"))


@dataclass
class Step:
    name: str
    status: str = "pending"  # ok | failed | skipped
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)  # Markdown shown under the step's heading
    data: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class Check:
    def __init__(self, plan: Plan, out: Path, budget_s: float):
        self.plan, self.out, self.deadline = plan, out, time.monotonic() + budget_s
        self.steps: list[Step] = []
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, body: Callable[[Step], None], needs_s: float) -> Step:
        step = Step(name)
        self.steps.append(step)
        if self.left() < needs_s:
            step.status = "skipped"
            step.errors.append(f"skipped: {self.left():.0f} s of the time budget left, the step needs about {needs_s:.0f} s")
        else:
            start = time.monotonic()
            try:
                body(step)
                step.status = "failed" if step.errors else "ok"
            except Exception as err:  # a broken step is a result, not the end of the check
                step.status = "failed"
                step.errors.append(f"{type(err).__name__}: {_first_line(err)}")
                (self.out / f"{_slug(name)}.traceback.txt").write_text(traceback.format_exc())
            step.seconds = round(time.monotonic() - start, 1)
        print(f"[gpu-check] {name}: {step.status} ({step.seconds:.0f} s)"
              + "".join(f"\n  {e}" for e in step.errors), flush=True)
        self.write()
        return step

    def write(self) -> None:
        """Both files after every step: a check cut off by a time limit still leaves what it measured."""
        (self.out / "gpu-check.json").write_text(json.dumps([asdict(s) for s in self.steps], indent=2, default=str))
        md = ["# gpu-check", ""]
        for s in self.steps:
            md += [f"## {s.name}: {s.status} ({s.seconds:.0f} s)", ""] + [f"- {e}" for e in s.errors]
            md += ([""] if s.errors else []) + s.lines + [""]
        (self.out / "gpu-check.md").write_text("\n".join(md))

    @property
    def ok(self) -> bool:
        return all(s.status == "ok" for s in self.steps)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:40]


def _models(plan: Plan) -> list[str]:
    from lightning_modules.backbones import variant_name

    return [variant_name(layout, plan.budget) for layout in plan.layouts]


# --- 1. the device ----------------------------------------------------------------------------------------
def environment(plan: Plan, step: Step) -> None:
    from ablations.bench import BenchSettings, device_peak

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    for name in ("lightning", "timm", "torchmetrics", "torchvision", "jsonargparse"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = "missing"
    if plan.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device; run the check on a GPU node (or --smoke on a CPU)")
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, capability=f"{props.major}.{props.minor}",
                    driver=_driver_version())
    else:
        info.update(device=f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    info["bf16_peak_tflops"] = device_peak(BenchSettings(device=plan.device))
    step.data.update(info)
    step.lines += [f"| {k} | {v} |" for k, v in [("", ""), *info.items()]]
    step.lines[:2] = ["| what | value |", "|---|---|"]


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


# --- 2. compiled training steps ---------------------------------------------------------------------------
def _compile_cases(plan: Plan) -> dict[str, tuple[dict[str, Any], int, int]]:
    cases = {name: ({}, plan.small_size, plan.small_batch) for name in _models(plan)}
    cases[plan.big_model] = (dict(plan.big_overrides), plan.big_size, plan.big_batch)
    return cases


def compile_one(plan: Plan, name: str) -> dict[str, float]:
    """One compiled (fullgraph) training step of ``name``, then two under ``error_on_recompile``."""
    from lightning_modules.backbones import create_model
    from lightning_modules.optim import build_optimizer, param_groups

    overrides, size, batch = _compile_cases(plan)[name]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.precision)
    model = create_model(name, num_classes=plan.num_classes, image_size=(size, size), **overrides)
    model = model.to(plan.device).train()
    compiled = torch.compile(model, fullgraph=True, backend=plan.backend)
    optimizer = build_optimizer(param_groups(model, weight_decay=0.05), lr=1e-4)  # training's: fused AdamW
    x = torch.randn(batch, 3, size, size, device=plan.device)
    y = torch.randint(0, plan.num_classes, (batch,), device=plan.device)

    def train_step() -> float:
        _sync(plan)
        start = time.perf_counter()
        with torch.autocast(torch.device(plan.device).type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(compiled(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(plan)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss {loss.item()} is not finite")
        return time.perf_counter() - start

    first = train_step()
    with torch.compiler.set_stance("fail_on_recompile"):  # a later step that recompiles is an error
        later = [train_step() for _ in range(2)]
    return {"compile_s": round(first, 2), "step_ms": round(1e3 * min(later), 3)}


def compile_steps(plan: Plan, out: Path, step: Step, timeout: float, smoke: bool) -> None:
    """Every model in its own process, all at once: compiling is mostly single-threaded Python, so six models
    take the time of the slowest rather than the sum (the graphs land in inductor's cache for the later steps)."""
    cases = _compile_cases(plan)
    procs = {}
    for name in cases:
        log = open(out / f"compile-{name}.log", "w")
        command = [sys.executable, "-m", "ablations.gpu_check", "--compile-one", name, "--out", str(out)]
        procs[name] = (subprocess.Popen(command + (["--smoke"] if smoke else []), stdout=subprocess.PIPE,
                                        stderr=log, text=True, env=_env(), cwd=PROJECT_ROOT), log)
    deadline = time.monotonic() + timeout
    step.lines += ["| model | input | batch | first step (compile) s | next steps ms | result |", "|---|---|---|---|---|---|"]
    for name, (proc, log) in procs.items():
        _, size, batch = cases[name]
        try:
            stdout, _ = proc.communicate(timeout=max(1, deadline - time.monotonic()))
            result = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {"error": "no output"}
        except subprocess.TimeoutExpired:
            proc.kill()
            result = {"error": "timed out"}
        log.close()
        if "error" in result:
            reason = result["error"] + f" (log: compile-{name}.log)"
            step.errors.append(f"{name}: {reason}")
            step.lines.append(f"| {name} | {size}x{size} | {batch} | | | **{reason}** |")
        else:
            step.data[name] = result
            step.lines.append(f"| {name} | {size}x{size} | {batch} | {result['compile_s']:.1f} | "
                              f"{result['step_ms']:.1f} | ok |")


def _sync(plan: Plan) -> None:
    if plan.device.startswith("cuda"):
        torch.cuda.synchronize()


# --- 3 and 6: training through the command line -----------------------------------------------------------
def _data_overrides(plan: Plan) -> dict[str, Any]:
    return {"data": "datamodules.SyntheticDataModule", "data.init_args.train_size": plan.train_size,
            "data.init_args.test_size": plan.test_size, "data.init_args.num_classes": plan.num_classes,
            "data.init_args.image_size": plan.small_size, "data.init_args.batch_size": plan.small_batch,
            "data.init_args.train_eval_samples": plan.train_eval_samples, "data.init_args.augmentation": "crop_flip",
            "trainer.max_epochs": 1}


def _env() -> dict[str, str]:
    """Child processes import this source tree, wherever they start."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}


def _ablate(args: list[str], log: Path, timeout: float) -> tuple[int, float]:
    env = _env()
    start = time.monotonic()
    with open(log, "w") as f:
        try:
            code = subprocess.run([sys.executable, "-m", "ablations.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                                  env=env, cwd=PROJECT_ROOT, timeout=max(timeout, 1)).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.monotonic() - start


def _error_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(no output)"])[-1][:300]


def _summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def _last_row(run_dir: Path) -> dict[str, str]:
    try:
        lines = (run_dir / "metrics.csv").read_text().splitlines()
    except OSError:
        return {}
    return dict(zip(lines[0].split(","), lines[-1].split(","))) if len(lines) > 1 else {}


def train_once(plan: Plan, out: Path, step: Step, timeout: float) -> None:
    run_dir = out / "train"
    args = ["train", f"--config={plan.config}", f"--model.init_args.model={_models(plan)[-1]}",
            *[f"--{k}={v}" for k, v in _data_overrides(plan).items()], f"--run_dir={run_dir}"]
    code, seconds = _ablate(args, out / "train.log", timeout)
    summary, row = _summary(run_dir), _last_row(run_dir)
    step.data.update(exit_code=code, wall_s=round(seconds, 1), summary=summary, last_epoch=row)
    step.lines += [f"`ablate {' '.join(args)}`", "", "| exit | wall s | status | test acc | epoch s | train img/s |",
                   "|---|---|---|---|---|---|",
                   f"| {code} | {seconds:.1f} | {summary.get('status')} | {summary.get('final', {}).get('test/acc')} | "
                   f"{row.get('epoch_time')} | {row.get('images_per_s')} |"]
    if code != 0 or summary.get("status") != "completed":
        step.errors.append(f"ablate train exited {code}: {_error_line(out / 'train.log')} (log: train.log)")


def sweeps(plan: Plan, out: Path, step: Step, timeout: float) -> None:
    spec = {"name": "gpu-check", "config": plan.config, "set": _data_overrides(plan), "budget": plan.budget,
            "grid": {"layout": list(plan.layouts)}}
    spec_path = out / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    walls, runs = {}, {}
    for label, flags in (("parallel", list(plan.parallel_flags)), ("one at a time", [])):
        root = out / ("sweep-parallel" if flags else "sweep-serial")
        code, seconds = _ablate(["sweep", str(spec_path), "--root", str(root), *flags], out / f"{root.name}.log",
                                timeout / 2)
        walls[label] = seconds
        folder = root / "gpu-check"
        runs[label] = {d.name: _summary(d) for d in sorted(folder.iterdir()) if d.is_dir()} if folder.is_dir() else {}
        if code != 0:
            step.errors.append(f"sweep {label} ({' '.join(flags) or 'one run at a time'}) exited {code}: "
                               f"{_error_line(out / f'{root.name}.log')}")
    ratio = walls["one at a time"] / walls["parallel"] if walls.get("parallel") else float("nan")
    step.data.update(wall_s=walls, ratio=ratio, runs=runs)
    step.lines += [f"Wall time: {' '.join(plan.parallel_flags)} {walls['parallel']:.1f} s, one at a time "
                   f"{walls['one at a time']:.1f} s: **{ratio:.2f}x**.", "",
                   "| run | test acc, parallel | test acc, one at a time | wall s parallel | wall s one at a time |",
                   "|---|---|---|---|---|"]
    for run_id in sorted(set(runs["parallel"]) | set(runs["one at a time"])):
        a, b = runs["parallel"].get(run_id, {}), runs["one at a time"].get(run_id, {})
        step.lines.append(f"| {run_id} | {a.get('final', {}).get('test/acc')} | {b.get('final', {}).get('test/acc')} | "
                          f"{a.get('wall_time')} | {b.get('wall_time')} |")


# --- 4 and 5: benchmarks ----------------------------------------------------------------------------------
def bench(plan: Plan, step: Step, models: list[str], size: int, batch: int, overrides: dict[str, Any],
          timm_name: str | None) -> None:
    from ablations.bench import BenchSettings, device_peak, format_results, run_bench

    settings = BenchSettings(batch=batch, image_size=(size, size), precision=plan.precision, device=plan.device,
                             compile=True, compile_backend=plan.backend, infer=False, num_classes=plan.num_classes if timm_name is None else 1000,
                             rounds=plan.rounds, warmup=plan.warmup)
    peak = device_peak(settings)
    results = []
    for model in models:
        try:
            results += run_bench(model, settings, overrides, timm_name, progress=False, profile=timm_name is not None)
        except Exception as err:
            step.errors.append(f"{model}{f' with timm {timm_name}' if timm_name else ''}: "
                               f"{type(err).__name__}: {_first_line(err)}")
            if timm_name:  # ours alone, so that one failing model does not hide the other's numbers
                try:
                    results += run_bench(model, settings, overrides, None, progress=False, profile=True)
                except Exception as err:
                    step.errors.append(f"{model} alone: {type(err).__name__}: {_first_line(err)}")
        if plan.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if not results:
        return
    step.lines += ["```", format_results(results, settings, peak), "```"]
    for r in results:
        step.data[r.label] = {"train_img_s": r.images_per_s(r.train_times, batch),
                              "infer_img_s": r.images_per_s(r.infer_times, batch),
                              "mfu": r.train_mfu(batch, peak), "peak_memory_mib": (r.peak_memory or 0) / 2**20,
                              "gmacs": r.macs / 1e9, "kernels": r.kernels}
        if r.kernels:
            step.lines += ["", f"Top kernels of `{r.label}` (ms per train step):", "",
                           "| kernel | ms |", "|---|---|"] + [f"| `{k[:90]}` | {ms:.2f} |" for k, ms in r.kernels]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablations.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu-check", help="folder for gpu-check.md, gpu-check.json and the logs")
    parser.add_argument("--budget-s", type=float, default=480, help="time budget; steps that no longer fit are skipped")
    parser.add_argument("--smoke", action="store_true", help="the same steps on a CPU with tiny models (tests)")
    parser.add_argument("--compile-one", metavar="MODEL", help=argparse.SUPPRESS)  # step 2's child process
    args = parser.parse_args(argv)
    plan = Plan.smoke() if args.smoke else Plan()
    if args.compile_one:
        try:
            result: dict[str, Any] = compile_one(plan, args.compile_one)
        except Exception as err:
            traceback.print_exc()
            result = {"error": f"{type(err).__name__}: {_first_line(err)}"}
        print(json.dumps(result), flush=True)
        return 0
    out = Path(args.out).resolve()
    check = Check(plan, out, args.budget_s)
    env = check.run("device", lambda s: environment(plan, s), needs_s=0)
    if env.status == "failed":
        check.write()
        return 1
    models = _models(plan)
    big = dict(plan.big_overrides)
    check.run(f"compiled {plan.precision} training step per model (fullgraph, no recompile)",
              lambda s: compile_steps(plan, out, s, min(check.left(), 240), args.smoke), needs_s=60)
    check.run("1-epoch ablate train with the GPU defaults", lambda s: train_once(plan, out, s, check.left()),
              needs_s=45)
    check.run(f"{plan.big_model} against timm {plan.timm_name}",
              lambda s: bench(plan, s, [plan.big_model], plan.big_size, plan.big_batch, big, plan.timm_name),
              needs_s=90)
    check.run(f"the {len(models)} {plan.budget}-budget layouts", lambda s: bench(plan, s, models, plan.small_size, plan.small_batch,
                                                                    {}, None), needs_s=60)
    check.run(f"sweep of the {len(models)} layouts, {' '.join(plan.parallel_flags)} against one at a time",
              lambda s: sweeps(plan, out, s, check.left()), needs_s=120)
    print(f"[gpu-check] {'all steps passed' if check.ok else 'FAILED'}: {out / 'gpu-check.md'}")
    return 0 if check.ok else 1


if __name__ == "__main__":
    sys.exit(main())
