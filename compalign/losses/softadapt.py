"""SoftAdapt: weights of a multi-part loss from each part's recent rate of change (Heydari,
Thompson & Mehmood, "SoftAdapt: Techniques for Adaptive Loss Weighting of Neural Networks with
Multi-Part Loss Functions", arXiv 1912.12355, section 3; the authors' code: dr-aheydari/SoftAdapt).

Written here, not imported: the `softadapt` package on PyPI (0.2.0) is the Keras 3 port (it
requires keras>=3.12 and findiff, GPL-3.0), and the algorithm is a few lines:

    s_k      = the rate of change of part k over the last update interval (its slope)
    plain:          alpha_k = exp(beta s_k) / sum_l exp(beta s_l)
    normalised:     the same with s_k / sum_l |s_l| in place of s_k
    loss_weighted:  alpha_k = f_k exp(beta s_k) / sum_l f_l exp(beta s_l),
                    f_k the part's mean value over the interval (the authors recommend it)

beta > 0 gives MORE weight to the part that decreases slowest (or increases): the optimiser
attends to the part that lags. The softmax is shifted by max(beta s) for stability (the
authors' code does the same; the weights are unchanged by it). Slopes here are first-order
differences of per-epoch means (loss per epoch); the authors' code fits higher-order finite
differences to the points of the interval instead, to the same end. The normalised variant
divides by the sum of |s_l|, which keeps beta's meaning at any scale; the authors' code divides
by the signed sum, which reverses the order whenever the slopes sum to a negative number (in its
README's first example the fastest-falling part gets the largest weight).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Variant = Literal["loss_weighted", "normalised", "plain"]
VARIANTS: tuple[str, ...] = ("loss_weighted", "normalised", "plain")


def softadapt_weights(
    slopes: Sequence[float],
    magnitudes: Sequence[float],
    variant: Variant = "loss_weighted",
    beta: float = 0.1,
) -> list[float]:
    """SoftAdapt's convex weights (they sum to 1) of the parts with these `slopes` (rate of
    change per epoch) and `magnitudes` (mean values over the interval, loss_weighted only)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown SoftAdapt variant {variant!r}; choose one of {VARIANTS}")
    rates = [float(s) for s in slopes]
    if variant == "normalised":
        scale = sum(abs(s) for s in rates)
        rates = [s / scale if scale > 0 else 0.0 for s in rates]
    top = max(beta * s for s in rates)
    exps = [math.exp(beta * s - top) for s in rates]
    if variant == "loss_weighted":
        exps = [max(float(f), 0.0) * e for f, e in zip(magnitudes, exps, strict=True)]
    total = sum(exps)
    if not total > 0 or not math.isfinite(total):  # every part at zero: nothing to prefer
        return [1.0 / len(rates)] * len(rates)
    return [e / total for e in exps]


def interval_slopes(
    history: Sequence[Sequence[float]], every: int
) -> tuple[list[float], list[float]]:
    """(slopes, magnitudes) of each part from its per-epoch means `history` [epochs][parts]:
    slope = (last - value `every` epochs earlier) / epochs between (fewer at the start),
    magnitude = mean over the last `every` epochs. Needs at least two epochs."""
    if len(history) < 2:
        raise ValueError("SoftAdapt needs the means of at least two epochs")
    start = max(0, len(history) - 1 - every)
    span = len(history) - 1 - start
    first, last = history[start], history[-1]
    slopes = [(b - a) / span for a, b in zip(first, last, strict=True)]
    recent = history[-every:]
    magnitudes = [sum(epoch[k] for epoch in recent) / len(recent) for k in range(len(last))]
    return slopes, magnitudes
