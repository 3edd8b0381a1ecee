"""``ablate``: one command line for the study. ``ablate --help`` lists the subcommands."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml


def _parse_overrides(pairs: Sequence[str], flag: str = "--set", values: bool = False) -> dict[str, Any]:
    """``["downsample=dw", "depths=[2,2,6,2]"]`` -> ``{"downsample": "dw", "depths": [2, 2, 6, 2]}`` (YAML values);
    with ``values`` (``--grid``), a comma-separated list: ``seed_everything=0,1,2`` -> ``[0, 1, 2]``."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or (values and not value.strip()):
            raise ValueError(f"{flag} expects KEY={'V1,V2,...' if values else 'VALUE'}, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(f"[{value}]" if values else value)
        except yaml.YAMLError:
            raise ValueError(f"{flag} {pair!r}: the value is not valid YAML") from None
    return out


def _image_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        sizes = [int(p) for p in parts if p]
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW, got {text!r}") from None
    if len(sizes) == 1:
        return (sizes[0], sizes[0])
    if len(sizes) == 2:
        return (sizes[0], sizes[1])
    raise argparse.ArgumentTypeError(f"image size must be N or HxW, got {text!r}")


def cmd_models(args: argparse.Namespace) -> None:
    from .model_table import model_table

    print(model_table(args.models or None, progress=None))


def cmd_match(args: argparse.Namespace) -> None:
    from lightning_modules.backbones import BUDGETS, match_budget
    from lightning_modules.backbones.registry import ATTENTION_LAYOUTS, MATCHED, STUDY_LAYOUTS, SUPERSEDED

    from .model_table import stage_shapes

    budgets = [args.budget] if args.budget else list(BUDGETS)
    for name in budgets:
        if name not in BUDGETS:
            raise ValueError(f"unknown budget {name!r}; valid budgets: {', '.join(BUDGETS)}")
        budget = BUDGETS[name]
        print(f"budget {name}: {budget.params / 1e6:.3g}M params, {budget.macs / 1e9:.3g} GMACs at "
              f"{budget.template.image_size[0]}x{budget.template.image_size[1]}")
        for layout in args.layouts or (*STUDY_LAYOUTS, *ATTENTION_LAYOUTS):
            cfg, cost = match_budget(layout, budget)
            frozen = MATCHED.get((name, layout))
            note = "" if frozen is None else (
                "  = registry" if frozen == (cfg.stem_dim if layout != "VIT_REL" else None, cfg.depths, cfg.dims)
                else f"  (registry: {frozen})")
            before = SUPERSEDED.get((name, layout))
            if before is not None:
                note += "  (unchanged)" if before == (cfg.depths, cfg.dims) else f"  (before: depths={before[0]} dims={before[1]})"
            print(f"  {layout:<8} {stage_shapes(cfg)}  {cost.params / 1e6:.2f}M {cost.macs / 1e9:.3f}G  "
                  f"miss {cost.error(budget.params, budget.macs):.1%}{note}")


def cmd_bench(args: argparse.Namespace) -> None:
    import torch

    from .bench import PRECISIONS, BenchSettings, device_peak, format_results, run_bench

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
    precision = args.precision or ("bf16" if device.startswith("cuda") else "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r} is not valid; choose one of {', '.join(PRECISIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out and Path(args.out).suffix not in ("", ".md"):  # said before minutes of measuring, not after
        raise ValueError(f"--out {args.out} is not valid; expected a .md file or a folder")
    if args.timm and len(args.model) > 1:
        raise ValueError(f"--timm {args.timm} pairs with one model; {len(args.model)} given ({' '.join(args.model)})")
    results = []
    for size in args.image_size:  # one table: every model at every size
        settings = BenchSettings(batch=args.batch, image_size=size, precision=precision, device=device,
                                 channels_last=args.channels_last, compile=args.compile, num_classes=args.num_classes,
                                 rounds=args.rounds, warmup=args.warmup)
        for model in args.model:
            results += run_bench(model, settings, _parse_overrides(args.set), args.timm)
    table = format_results(results, settings, device_peak(settings, args.peak_tflops))
    print(table)
    if args.out:
        gpu = f", {torch.cuda.get_device_name(torch.device(device))}" if device.startswith("cuda") else ""
        print(f"wrote {write_measurement(args.out, 'bench', args.command_line, table, machine() + gpu)}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from .report import write_report
    from .sweep import SweepSpec, run_sweep, sweep_dir

    for flag in ("parallel", "gpus_per_run", "runs_per_gpu", "nodes_per_run", "time"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be at least 1")
    spec = SweepSpec.load(args.spec, _parse_overrides(args.set), _parse_overrides(args.grid, "--grid", values=True))
    if args.export_wandb:
        from .sweep import wandb_sweep_config

        Path(args.export_wandb).write_text(yaml.safe_dump(wandb_sweep_config(spec), sort_keys=False))
        print(f"wrote {args.export_wandb}: `wandb sweep {args.export_wandb}`, then `wandb agent ID` once per GPU")
        return
    if args.executor != "processes":
        from .cluster import parse_settings
        from .sweep import submit_sweep

        shorthands = {"partition": args.partition, "timeout_min": args.time, "nodes": args.nodes_per_run,
                      "gpus_per_node": args.gpus_per_run}
        slurm = {**{k: v for k, v in shorthands.items() if v is not None}, **parse_settings(args.slurm)}
        jobs = submit_sweep(spec, args.root, executor=args.executor, slurm=slurm, wait=args.executor == "local")
        print(f"submitted {len(jobs)} run(s): {', '.join(str(j.job_id) for j in jobs) or 'nothing left to run'}; "
              f"`ablate status {args.spec}` follows them")
        if args.executor == "local":
            print(write_report(sweep_dir(spec, args.root)))
        if spec.init_from is not None:
            from .sweep import chain

            folder = sweep_dir(spec, args.root)
            _refuse_held(len(chain.held(spec.expand(folder), folder)), args.spec)
        return
    results = run_sweep(spec, args.root, parallel=args.parallel, gpus_per_run=args.gpus_per_run or 1,
                        runs_per_gpu=args.runs_per_gpu, fork=True)
    counts = {s: list(results.values()).count(s) for s in sorted(set(results.values()))}
    report = write_report(sweep_dir(spec, args.root), wandb=bool(spec.fixed.get("wandb.enabled")))
    running = sorted(run_id_ for run_id_, status in results.items() if status == "running")  # another process's
    print(f"sweep {spec.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; report: {report}"
          + (f"; still running in another process: {', '.join(running)} (`ablate status {args.spec}` follows them)"
             if running else ""))
    if counts.get("failed"):
        from .sweep import failure

        for run_id_, status in results.items():
            if status == "failed":
                kind, reason = failure(sweep_dir(spec, args.root) / run_id_)
                print(f"failed ({kind}) {run_id_}: {reason}", file=sys.stderr)
        raise ValueError(f"{counts['failed']} run(s) failed; `ablate status {args.spec}` lists them and why")
    _refuse_held(counts.get("waiting", 0) + counts.get("source failed", 0), args.spec)


def _refuse_held(held: int, spec: str) -> None:
    """A chained sweep that left runs unstarted for their sources exits 2, locally and on SLURM alike (after
    starting or submitting the others): a script that chains `ablate sweep` calls must not read "some runs wait
    for a later launch" as "the sweep is under way", and the same command, run once the sources are done, is the
    remedy, as for any exit 2."""
    if held:
        raise ValueError(f"{held} run(s) not started: their sources are not completed (named above); "
                         f"`ablate status {spec}` shows them; run this command again once they are")


def cmd_status(args: argparse.Namespace) -> None:
    from .progress import collect, render, watch

    if args.slots is not None and args.slots < 1:
        raise ValueError(f"--slots {args.slots} must be at least 1")
    if args.watch is not None:
        if args.watch <= 0:
            raise ValueError(f"--watch {args.watch:g} must be a positive number of seconds")
        try:
            watch(args.spec, args.root, args.slots, args.watch)
        except KeyboardInterrupt:
            pass
        return
    print(render(*collect(args.spec, args.root), args.slots))


def cmd_report(args: argparse.Namespace) -> None:
    from .report import write_report

    source = args.source
    if Path(source).is_file():  # a sweep spec: its sweep folder
        from .sweep import SweepSpec, sweep_dir

        source = sweep_dir(SweepSpec.load(source), args.root)
    print(write_report(source, args.out, wandb=args.wandb, margins=_parse_overrides(args.margin, "--margin")))


def cmd_plan(args: argparse.Namespace) -> None:
    from .plan import plan

    print(plan(args.spec, args.pilot, _parse_overrides(args.margin, "--margin")), end="")


DEMO_SPEC = Path(__file__).parent / "sweeps" / "demo.yaml"


def write_measurement(out: str, kind: str, command: str, text: str, where: str) -> Path:
    """A measurement kept as a file that says when, on what and with which command it was made, so that no
    machine-dependent number is ever typed into the docs by hand. ``out`` is a ``.md`` file or a folder, which gets
    ``<kind>-<UTC date and time>.md``."""
    import time

    from lightning_modules.run_folder import atomic_write

    now = time.gmtime()
    path = Path(out)
    if path.suffix != ".md":
        path.mkdir(parents=True, exist_ok=True)
        path = path / f"{kind}-{time.strftime('%Y-%m-%d-%H%M', now)}.md"
    atomic_write(path, f"# {kind}, {time.strftime('%Y-%m-%d %H:%M UTC', now)}\n\nMeasured on {where} with\n\n"
                       f"```bash\n{command}\n```\n\n```text\n{text}\n```\n")
    return path


def machine() -> str:
    """The machine a measurement ran on, in words: CPU model, cores and operating system."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


# the transfer demo: pre-training, then a sweep chained onto it (its spec names runs/transfer_demo_pretrain)
TRANSFER_SPECS = tuple(Path(__file__).parent / "sweeps" / f"transfer_demo_{stage}.yaml" for stage in ("pretrain", "finetune"))


def cmd_demo(args: argparse.Namespace) -> None:
    """The main job: the five stacking orders on the embedded digits, end to end, then the report, which ends with
    the wall time and the machine that measured it. ``--transfer``: the transfer demo, its report the fine-tuning
    sweep's (with its Transfer section)."""
    import time

    if args.transfer and Path(args.root).resolve() != Path("runs").resolve():
        raise ValueError(f"--root {args.root} is not valid with --transfer: the fine-tuning spec chains onto "
                         "runs/transfer_demo_pretrain; valid: runs (the default)")
    start = time.time()
    specs = TRANSFER_SPECS if args.transfer else (DEMO_SPEC,)
    for spec in specs:
        cmd_sweep(build_parser().parse_args(["sweep", str(spec), "--root", args.root, "--parallel", str(args.parallel)]))
    name = yaml.safe_load(specs[-1].read_text())["name"]
    report = Path(args.root) / name / "report.md"
    elapsed = time.time() - start
    from lightning_modules.run_folder import atomic_write

    command = f"ablate demo{' --transfer' if args.transfer else ''} --parallel {args.parallel}"
    atomic_write(report, report.read_text() + f"\n`{command}` took {elapsed / 60:.1f} min "
                 f"({elapsed:.0f} s, completed runs skipped) on {machine()}.\n")
    print(report.read_text())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ablate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("train", help="train one model (LightningCLI: `ablate train --help`)", add_help=False)

    p = sub.add_parser("sweep", help="run a sweep spec (resumable; re-running skips completed runs)")
    p.add_argument("spec", help="sweep YAML, e.g. ablations/sweeps/demo.yaml")
    p.add_argument("--root", default="runs", help="parent folder of sweep folders")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fixed override on top of the spec's set (run ids follow), e.g. trainer.max_epochs=2")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="grid axis added or replaced, e.g. seed_everything=0,1,2")
    p.add_argument("--parallel", type=int,
                   help="slots (runs at once): CPU processes sharing the cores (default 1); on GPUs spread "
                        "round-robin over them (default: one per GPU group, or --runs-per-gpu)")
    p.add_argument("--gpus-per-run", type=int,
                   help="GPUs per run (one DDP run over k GPUs; default 1); with --executor slurm, GPUs per node")
    p.add_argument("--runs-per-gpu", type=int, default=1,
                   help="slots per GPU, for runs too small to fill one (e.g. CIFAR-budget models)")
    p.add_argument("--export-wandb", metavar="PATH", help="write a W&B sweep YAML instead of running")
    p.add_argument("--executor", default="processes", choices=["processes", "slurm", "local"],
                   help="processes: here, in parallel; slurm: a submitit job array; local: submitit's local executor")
    p.add_argument("--partition", help="SLURM partition (= --slurm partition=...)")
    p.add_argument("--time", type=int, help="SLURM time limit per job, minutes, requeued after (default 1440)")
    p.add_argument("--nodes-per-run", type=int, help="SLURM nodes per run, multi-node DDP (= --slurm nodes=N)")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="any submitit SLURM parameter over the spec's slurm: mapping, e.g. account=proj qos=high "
                        "mem=64G constraint=a100 cpus_per_task=10 array_parallelism=8 (ablations/cluster.py)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("status", help="per run: state, epoch k/N, latest accuracies, elapsed, ETA; the sweep's ETA")
    p.add_argument("spec", help="sweep YAML, sweep folder (e.g. runs/demo) or any folder of run folders")
    p.add_argument("--root", default="runs", help="parent folder of sweep folders (with a spec)")
    p.add_argument("--slots", type=int, help="runs at once for the rest, for the sweep's ETA (default: those running now)")
    p.add_argument("--watch", type=float, nargs="?", const=10.0, metavar="SECONDS",
                   help="refresh every SECONDS (default 10) until no run is running or pending")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="write report.md and plots for a folder of runs or a W&B project")
    p.add_argument("source", help="a folder of run folders (a sweep's, e.g. runs/demo, or runs), a sweep YAML, "
                                  "or wandb:ENTITY/PROJECT")
    p.add_argument("--root", default="runs", help="parent folder of sweep folders (with a sweep YAML)")
    p.add_argument("--out", help="folder for report.md and its PNGs (default: the source folder)")
    p.add_argument("--wandb", action="store_true",
                   help="also log the tables and figures to one W&B run (job type report) in the sweep's group")
    p.add_argument("--margin", action="append", default=[], metavar="KIND=VALUE",
                   help="equivalence margin of a metric kind over the spec's margins: accuracy=1 (points, default), "
                        "log_loss=0.1 (log units, default)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("plan", help="before a sweep: the seeds each relation needs, and their cost, from a pilot")
    p.add_argument("spec", help="sweep YAML to plan, e.g. ablations/sweeps/demo.yaml")
    p.add_argument("--pilot", required=True, help="folder of finished pilot runs (e.g. runs/demo)")
    p.add_argument("--margin", action="append", default=[], metavar="KIND=VALUE",
                   help="equivalence margin over the spec's: accuracy=1 (points), log_loss=0.1 (log units)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("demo", help="run the default study: five layouts x data sizes x seeds on the embedded digits")
    p.add_argument("--root", default="runs")
    p.add_argument("--parallel", type=int, default=min(4, os.cpu_count() or 1), help="runs at once (CPU)")
    p.add_argument("--transfer", action="store_true",
                   help="the transfer demo instead: C-C-T-T and C-T-T-T pre-trained on digits 0-4, fine-tuned on 5-9 "
                        "(ablations/sweeps/transfer_demo_*.yaml), the report beside each run its source")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="parameters and MACs of registry models, beside the papers' figures")
    p.add_argument("models", nargs="*", help="names (default: all)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("match", help="run the budget matcher and compare with the registry's frozen choices")
    p.add_argument("--budget", help="budget name (default: all)")
    p.add_argument("--layout", dest="layouts", action="append", help="layout(s) to match (default: the five)")
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("bench", help="train/inference images/s and peak memory, optionally beside timm")
    p.add_argument("model", nargs="+", help="registry name(s) or layout(s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    p.add_argument("--timm", metavar="NAME", help="timm model to measure in the same run, e.g. coatnet_0_224")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=_image_size, nargs="+", default=[(224, 224)],
                   help="N or HxW; several give one row per size (how cost grows)")
    p.add_argument("--peak-tflops", type=float, help="bf16 peak for MFU (default: the table's entry for the GPU)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--precision", help="fp32 | bf16 | fp16 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per model (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", metavar="FILE_OR_DIR",
                   help="also write the table, with the date, the machine and this command, to FILE.md or to "
                        "DIR/bench-<date>-<time>.md (e.g. docs/measurements)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # LightningCLI owns the whole option space of `ablate train`
        from .training.cli import main as train_main

        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["ablate", *argv])  # what a measurement file quotes
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"ablate {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
