"""Where a sweep's local runs go: CPU processes sharing the cores, or GPU groups pinned by CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import os


def device_slots(parallel: int | None, gpus_per_run: int, runs_per_gpu: int = 1) -> list[dict[str, str]]:
    """One environment per slot (a run at once). CPU: ``parallel`` processes (default 1). GPUs: each slot pinned
    with CUDA_VISIBLE_DEVICES to a group of ``gpus_per_run`` GPUs, ``runs_per_gpu`` slots per group (default: all
    groups once); ``parallel`` instead spreads that many slots round-robin over the groups. The CPU cores are split
    evenly between the slots."""
    import torch

    cores = os.cpu_count() or 1
    if not torch.cuda.is_available():  # share the cores instead of oversubscribing them
        if runs_per_gpu > 1:
            raise ValueError(f"--runs-per-gpu {runs_per_gpu} needs GPUs and none is visible; on CPU use --parallel N")
        parallel = parallel or 1
        threads = str(max(1, cores // parallel))
        return [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads} for _ in range(parallel)]
    count = torch.cuda.device_count()
    if runs_per_gpu > 1 and gpus_per_run > 1:
        raise ValueError(f"--runs-per-gpu {runs_per_gpu} shares one GPU between runs; it cannot combine with "
                         f"--gpus-per-run {gpus_per_run}")
    groups = [list(range(i, i + gpus_per_run)) for i in range(0, count - gpus_per_run + 1, gpus_per_run)]
    if not groups:
        raise ValueError(f"--gpus-per-run {gpus_per_run} asks for more GPUs than the {count} visible")
    if parallel is not None and runs_per_gpu > 1:
        raise ValueError(f"--parallel {parallel} and --runs-per-gpu {runs_per_gpu} both set the slots; give one")
    total = parallel or len(groups) * runs_per_gpu
    if parallel is not None and gpus_per_run > 1 and parallel > len(groups):
        raise ValueError(f"--parallel {parallel} runs of {gpus_per_run} GPUs need {parallel * gpus_per_run} GPUs; "
                         f"{count} are visible")
    threads = str(max(1, cores // total))
    return [{"CUDA_VISIBLE_DEVICES": ",".join(map(str, groups[i % len(groups)])), "OMP_NUM_THREADS": threads}
            for i in range(total)]


def describe_slots(slots: list[dict[str, str]]) -> str:
    """``3 slots: GPU 0 x2, GPU 1 x1, 5 CPU threads each`` (what the sweep runs at once, and where)."""
    places = {}
    for slot in slots:
        place = f"GPU {slot['CUDA_VISIBLE_DEVICES']}" if slot["CUDA_VISIBLE_DEVICES"] else "CPU"
        places[place] = places.get(place, 0) + 1
    where = ", ".join(f"{place} x{n}" for place, n in places.items())
    return f"{len(slots)} slot{'s' * (len(slots) != 1)}: {where}, {slots[0]['OMP_NUM_THREADS']} CPU threads each"
