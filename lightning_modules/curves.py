"""Numbers read off a run's training curve, for its summary.json."""

from __future__ import annotations

from typing import Sequence


def convergence(steps: Sequence[int], losses: Sequence[float], total_steps: int | float, last_fraction: float = 0.1,
                tolerance: float = 0.05) -> dict:
    """Whether a run was trained to convergence: the relative fall of the clean training loss over the last
    ``last_fraction`` of its ``total_steps``. A comparison at the end of a budget reads differently when some runs
    were still improving there, so the summary says which were.

    ``steps`` and ``losses`` are the evaluations (training step, clean training loss), in step order. L0 is the loss
    at the first evaluation at or after step ``(1 - last_fraction) * total_steps`` (the last one before it when
    fewer than two evaluations fall in that window), L1 the last evaluation's; ``rel_change = (L0 - L1) / L0`` (0
    when L0 is 0) and the run converged when ``rel_change <= tolerance``. With fewer than two evaluations nothing
    can be told: ``rel_change`` and ``converged`` are None."""
    rule = f"clean training loss fell by <= {tolerance * 100:g}% over the last {last_fraction * 100:g}% of steps"
    points = sorted(zip(steps, losses))
    if len(points) < 2:
        return {"rule": rule, "rel_change": None, "converged": None}
    start = (1 - last_fraction) * total_steps
    window = [i for i, (step, _) in enumerate(points) if step >= start]
    first = window[0] if len(window) >= 2 else len(points) - len(window) - 1
    l0, l1 = float(points[first][1]), float(points[-1][1])
    rel_change = (l0 - l1) / l0 if l0 else 0.0
    return {"rule": rule, "rel_change": rel_change, "converged": rel_change <= tolerance}
