"""Verdicts on layout comparisons: what one relation of the study says, with the numbers it rests on.

A *relation* compares layout A with layout B on one metric, paired by seed: ``diffs`` holds A − B per seed, signed so
that a positive difference means A is better. A *family* is a set of relations whose verdicts are read together (the
paper's generalisation order at one data size, its capacity order); within it, p values are corrected by Holm's
step-down procedure, separately for the two claims a verdict can make:

- ``A better`` / ``B better``: the two-sided paired t test of "no difference" rejects after Holm (a 95% interval);
- ``equivalent``: TOST rejects after Holm, i.e. the 90% interval lies inside ±margin (the difference is shown to be
  smaller than the declared margin; this takes precedence over a significant but smaller-than-margin difference);
- ``inconclusive``: neither: the data do not resolve the margin (with the seeds that would, ``seeds_needed``);
- ``not comparable``: the relation cannot be read at this budget (a layout never reaches the comparison point, a run
  did not converge), with the reason;
- ``not robust`` (set by the caller): the verdict changes with an arbitrary choice of the analysis.

The paper's own relation gets its own test, Holm-corrected over the family too, in the column ``paper``:
``≈`` by TOST, ``≥`` by non-inferiority (H0: A − B ≤ −margin), ``>`` by superiority (H0: A − B ≤ 0) and ``≫`` by
superiority by at least the margin (H0: A − B ≤ margin), each one-sided at ``ALPHA`` (so read with the 90% interval);
``supported`` when it rejects, ``contradicted`` when the verdict is the opposite of the paper's claim, else
``not shown``.

The standard error may include the test set's own sampling noise (``image_var``: the variance over test images of the
per-image difference, averaged over seeds, divided by the number of images). The seed-to-seed variance never sees it
(every seed is scored on the same images) and it does not shrink with more seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
VERDICTS = ("equivalent", "A better", "B better", "inconclusive", "not comparable", "not robust")
PAPER_TESTS = {"≈": "TOST", "≥": "non-inferiority", ">": "superiority", "≫": "superiority by the margin"}
MAX_SEEDS = 1000  # a search bound: beyond it, "more than 1000"

# What a difference is measured in, and the default equivalence margin: accuracy in points (1 point), a loss in
# log units (0.1, about a 10% ratio). `ablate report --margin accuracy=0.5` or a
# spec's `margins:` change them.
KINDS = {"accuracy": (100.0, "points"), "log_loss": (1.0, "log units")}
MARGINS = {"accuracy": 1.0, "log_loss": 0.1}


def parse_margins(pairs: dict[str, Any] | None) -> dict[str, float]:
    """``{"accuracy": 0.5}`` over ``MARGINS``; an unknown kind or a margin that is not a positive number is an
    error naming it."""
    margins = dict(MARGINS)
    for kind, value in (pairs or {}).items():
        if kind not in MARGINS:
            raise ValueError(f"margin {kind!r} is not a metric kind; valid: {', '.join(MARGINS)}")
        try:
            margin = float(value)
        except (TypeError, ValueError):
            margin = float("nan")
        if not margin > 0 or margin == float("inf"):
            raise ValueError(f"margin {kind}={value!r} is not valid; expected a positive number "
                             f"({KINDS[kind][1]}, default {MARGINS[kind]:g})")
        margins[kind] = margin
    return margins



@dataclass(frozen=True)
class Relation:
    """One comparison: A − B per seed (positive: A better), and where it cannot be read, why."""

    left: str
    rel: str
    right: str
    diffs: np.ndarray
    image_var: float | None = None  # variance of the mean difference due to the test set's sampling (already / N)
    reason: str | None = None  # not comparable, and why

    @property
    def pair(self) -> str:
        return f"{self.left} {self.rel} {self.right}"


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p values (NaN stays NaN and does not count toward the family's size)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out


def standard_error(diffs: np.ndarray, image_var: float | None = None) -> float:
    """Standard error of the mean paired difference: seed-to-seed variance over n, plus the test set's share."""
    n = len(diffs)
    seed_var = float(np.var(diffs, ddof=1)) / n if n > 1 else float("nan")
    return math.sqrt(seed_var + (image_var or 0.0))


def _tests(diffs: np.ndarray, image_var: float | None, margin: float) -> dict[str, float]:
    """Raw p values and intervals of one relation (t with n − 1 degrees of freedom)."""
    n = len(diffs)
    mean = float(np.mean(diffs)) if n else float("nan")
    out = {"n": n, "effect": mean}
    nan = float("nan")
    if n < 2:
        return {**out, "se": nan, "low": nan, "high": nan, "low90": nan, "high90": nan, "p": nan, "p_equiv": nan,
                "p_ni": nan, "p_sup": nan, "p_sup_margin": nan}
    # n - 1 degrees of freedom even with the test set's share: Welch-Satterthwaite's would grow whenever the seeds'
    # spread happens to be small, which at 3 seeds made a no-difference shuffle of the demo 1.8x as likely to
    # yield a `better` verdict as the seeds alone
    se, df = standard_error(diffs, image_var), n - 1
    if se == 0:  # no spread at all: every test is decided by the sign of the distance
        se = 1e-300
    t95, t90 = stats.t.ppf(1 - ALPHA / 2, df), stats.t.ppf(1 - ALPHA, df)
    upper = lambda x: float(stats.t.sf((mean - x) / se, df))  # noqa: E731  H0: effect <= x
    lower = lambda x: float(stats.t.cdf((mean - x) / se, df))  # noqa: E731  H0: effect >= x
    return {**out, "se": se, "low": mean - t95 * se, "high": mean + t95 * se, "low90": mean - t90 * se,
            "high90": mean + t90 * se, "p": min(1.0, 2 * min(upper(0.0), lower(0.0))),
            "p_equiv": max(upper(-margin), lower(margin)), "p_ni": upper(-margin), "p_sup": upper(0.0),
            "p_sup_margin": upper(margin)}


PAPER_P = {"≈": "p_equiv", "≥": "p_ni", ">": "p_sup", "≫": "p_sup_margin"}


def decide(relations: Sequence[Relation], margin: float, alpha: float = ALPHA) -> list[dict]:
    """Each relation's verdict within its family (Holm over the family's comparable relations), with n, the effect,
    its 95% and 90% intervals, the raw and adjusted p values and the paper's test. How many seeds would resolve an
    inconclusive one is ``seeds_needed``'s, at ``alpha / family`` (Holm's strictest step)."""
    rows = [{"pair": r.pair, **_tests(np.asarray(r.diffs, dtype=float), r.image_var, margin),
             "sd": float(np.std(r.diffs, ddof=1)) if len(r.diffs) > 1 else float("nan"), "image_var": r.image_var}
            for r in relations]
    comparable = [r.reason is None and row["n"] >= 2 for r, row in zip(relations, rows)]
    pick = lambda key: [row[key] if ok else np.nan for row, ok in zip(rows, comparable)]  # noqa: E731
    adjusted = holm(pick("p"))
    adjusted_equiv = holm(pick("p_equiv"))
    adjusted_paper = holm([row[PAPER_P[r.rel]] if ok else np.nan for r, row, ok in zip(relations, rows, comparable)])
    size = sum(comparable)
    for r, row, ok, p_adj, eq_adj, paper_adj in zip(relations, rows, comparable, adjusted, adjusted_equiv,
                                                     adjusted_paper):
        row.update(p_holm=p_adj, p_equiv_holm=eq_adj, p_paper_holm=paper_adj, family=size, margin=margin,
                   paper_test=PAPER_TESTS[r.rel])
        if not ok:
            if r.reason:  # numbers read where they mean nothing are not shown
                row.update(effect=np.nan, low=np.nan, high=np.nan, low90=np.nan, high90=np.nan)
            row["verdict"] = "not comparable" if r.reason else "inconclusive"
            row["why"] = r.reason or f"{row['n']} paired seed(s); a verdict needs at least 2"
            row["paper"] = "not shown"
            continue
        if eq_adj < alpha:
            row["verdict"] = "equivalent"
        elif p_adj < alpha:
            row["verdict"] = "A better" if row["effect"] > 0 else "B better"
        else:
            row["verdict"] = "inconclusive"
        row["why"] = None
        opposite = {"≈": ("A better", "B better"), "≥": ("B better",), ">": ("B better",),
                    "≫": ("B better", "equivalent")}[r.rel]
        row["paper"] = ("supported" if paper_adj < alpha else
                        "contradicted" if row["verdict"] in opposite else "not shown")
    return rows


# --- how many seeds a question needs ---------------------------------------------------------------------------
def _power(n: int, sd: float, image_var: float, margin: float, alpha: float) -> float:
    """The lower of two powers at n seeds: detecting a true difference of one margin (two-sided paired t), and
    showing equivalence when the true difference is zero (TOST)."""
    se = math.sqrt(sd * sd / n + image_var)
    if se == 0:
        return 1.0
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = margin / se
    superiority = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    equivalence = max(0.0, 2 * float(stats.t.cdf(margin / se - stats.t.ppf(1 - alpha, df), df)) - 1)
    return min(superiority, equivalence)


def _seeds_for(sd: float, image_var: float, margin: float, alpha: float, power: float) -> int | None:
    """The fewest seeds (at least 2) reaching ``power``; None when even ``MAX_SEEDS`` do not (or the test set's
    noise alone is too large: more seeds cannot help). Starts from the normal approximation, then steps exactly."""
    room = (margin / (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))) ** 2 - image_var
    if room <= 0 or _power(MAX_SEEDS, sd, image_var, margin, alpha) < power:
        return None
    n = max(2, min(MAX_SEEDS, math.floor(sd * sd / room) - 2))
    while n > 2 and _power(n, sd, image_var, margin, alpha) >= power:
        n -= 1
    while n < MAX_SEEDS and _power(n, sd, image_var, margin, alpha) < power:
        n += 1
    return n


def seeds_needed(diffs: np.ndarray, margin: float, image_var: float | None = None, alpha: float = ALPHA,
                 power: float = POWER, level: float = 0.8) -> dict:
    """Seeds that resolve ``margin`` at ``power`` (either way: a true one-margin difference found, a true zero shown
    equivalent), from the observed paired standard deviation (``seeds_for_sd``)."""
    diffs = np.asarray(diffs, dtype=float)
    sd = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else float("nan")
    return seeds_for_sd(sd, len(diffs), margin, image_var, alpha, power, level)


def seeds_for_sd(sd: float, n: int, margin: float, image_var: float | None = None, alpha: float = ALPHA,
                 power: float = POWER, level: float = 0.8) -> dict:
    """``seeds`` for a paired sd ``sd`` observed over ``n`` seeds; ``range``: the same at the ends of the sd's
    ``level`` chi-square interval, since an sd from few seeds is itself uncertain; None: not reachable;
    ``test_set_limits``: the test set's noise alone is too large for the margin, whatever the seeds."""
    if n < 2 or not np.isfinite(sd):
        return {"seeds": None, "range": None, "sd": float("nan"), "test_set_limits": False}
    image_var = image_var or 0.0
    df = n - 1
    sd_low = sd * math.sqrt(df / stats.chi2.ppf(1 - (1 - level) / 2, df))
    sd_high = sd * math.sqrt(df / stats.chi2.ppf((1 - level) / 2, df))
    return {"seeds": _seeds_for(sd, image_var, margin, alpha, power), "sd": sd,
            "range": (_seeds_for(sd_low, image_var, margin, alpha, power),
                      _seeds_for(sd_high, image_var, margin, alpha, power)),
            "test_set_limits": _seeds_for(0.0, image_var, margin, alpha, power) is None}


def format_seeds(need: dict) -> str:
    """``9 (4–60)`` from ``seeds_needed``; where no number of seeds would do, why."""
    if need.get("test_set_limits"):
        return "none: the test set's noise alone exceeds the margin"
    if need["range"] is None:
        return "(needs 2 seeds to estimate)"
    show = lambda s: f"> {MAX_SEEDS}" if s is None else str(s)  # noqa: E731
    if need["seeds"] is None and need["range"][0] is None:
        return show(None)
    return f"{show(need['seeds'])} ({show(need['range'][0])}–{show(need['range'][1])})"


def image_variance(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """The test set's contribution to the variance of the mean accuracy difference, from per-image correctness of
    A and B (seeds x images, paired by seed and image): the variance over images of each image's expected
    difference, divided by their number (images drawn again from the same distribution would move the difference by
    about this much). The seed-to-seed noise within an image is taken out (the seed variance already holds it)."""
    x = np.asarray(correct_a, dtype=float) - np.asarray(correct_b, dtype=float)
    seeds, images = x.shape
    if images < 2:
        return 0.0
    between = float(np.var(x.mean(axis=0), ddof=1))
    if seeds > 1:
        between -= float(np.mean(np.var(x, axis=0, ddof=1))) / seeds
    return max(between, 0.0) / images


__all__ = ["ALPHA", "KINDS", "MARGINS", "parse_margins", "PAPER_TESTS", "POWER", "Relation", "VERDICTS", "decide", "format_seeds", "holm",
           "image_variance", "seeds_for_sd", "seeds_needed", "standard_error"]
