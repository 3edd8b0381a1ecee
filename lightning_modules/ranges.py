"""The valid range of each numeric option, as types that jsonargparse checks while parsing.

An option annotated with one of these is refused before anything is built, and ``ablate train`` names the option,
the value and the range in one line (``DESCRIPTIONS``). Every float range excludes NaN and infinities: a NaN fails
every comparison, and each range has a finite upper bound.
"""

from __future__ import annotations

import math

from jsonargparse.typing import NonNegativeInt, PositiveInt, restricted_number_type

INF = math.inf


def _floats(name: str, *restrictions: tuple[str, float]) -> type:
    return restricted_number_type(name, float, list(restrictions), join="and")


Finite = _floats("Finite", (">", -INF), ("<", INF))
PositiveFinite = _floats("PositiveFinite", (">", 0), ("<", INF))
NonNegativeFinite = _floats("NonNegativeFinite", (">=", 0), ("<", INF))
Fraction = _floats("Fraction", (">", 0), ("<=", 1))  # a share of a data set that keeps some of it
Probability = _floats("Probability", (">=", 0), ("<", 1))  # a share that cannot be all of it
SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit: a larger one fails in Lightning's seed_everything, unnamed
Seed = restricted_number_type("Seed", int, [(">=", 0), ("<=", SEED_MAX)], join="and")

def plain(value):
    """``value`` with every range-typed number made a plain ``int`` or ``float`` (recursively): checkpoints are read
    with ``weights_only=True``, which refuses any class it does not know, these included."""
    if isinstance(value, dict):
        return {key: plain(inner) for key, inner in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(inner) for inner in value) if type(value) in (list, tuple) else value
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return float(value) if isinstance(value, float) else value


DESCRIPTIONS = {
    "PositiveInt": "an integer > 0",
    "NonNegativeInt": "an integer >= 0",
    "Finite": "a finite number",
    "PositiveFinite": "a finite number > 0",
    "NonNegativeFinite": "a finite number >= 0",
    "Fraction": "a number in (0, 1]",
    "Probability": "a number in [0, 1)",
    "Seed": f"an integer >= 0 and <= {SEED_MAX}",
}

__all__ = ["DESCRIPTIONS", "Finite", "Fraction", "NonNegativeFinite", "NonNegativeInt", "PositiveFinite", "PositiveInt",
           "Probability", "SEED_MAX", "Seed", "plain"]
