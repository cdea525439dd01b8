"""One number over several training seeds and a shared test set, with an interval that covers
both, and the tests the verdict rules use.

A measure is given per training seed s as its value on the whole test set, theta_s, and its
influence vector over the N test examples, phi_s (theta_s's first-order change when one
example is drawn once more: for a count, x_i - mean(x); for a ratio of sums, (a_i - theta b_i) /
sum(b); compalign.verdicts.measures has one per measure). Every seed is audited on the SAME test
examples, so test resampling moves all seeds together:

    estimate       = mean_s theta_s
    test variance  = sum_i (mean_s phi_s,i)^2      (the bootstrap's variance over the test
                                                    examples, resampled alike for every seed
                                                    and model, to first order; exact for sums)
    seed variance  = var_s(theta_s) / S             (training noise; S - 1 degrees of freedom)
    interval       = estimate +- t(nu) sqrt(seed + test variance), nu by Welch-Satterthwaite
                     with the test part counted as known (nu >= S - 1)

Contrasts between models of the same seed (label_preserving - ce, pw - ce) subtract the values
and the influence vectors, so they are paired over the seeds and the test examples alike. A
ratio E[A] / E[B] (a reduction factor: ce's mismatches over another loss's, summed over seeds)
is judged through the linear contrast A - k B, never through a ratio of two small counts: the
ratio exceeds k exactly when the contrast exceeds 0, and the contrast is defined when B counts
no mismatch at all (Fieller's construction; its interval is every k the contrast's test keeps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

MIN_SEEDS = 2  # fewer: no seed variance, so no verdict ("not judged (needs >= 2 seeds)")


def t_tail(statistic: float, dof: float) -> float:
    """P(T > statistic) for Student's t with `dof` (the normal's for infinite dof); scipy.special
    rather than scipy.stats: the simulation check calls it a million times."""
    if math.isinf(dof):
        return float(special.ndtr(-statistic))
    return float(special.stdtr(dof, -statistic))


def t_quantile(tail: float, dof: float) -> float:
    """The upper `tail` quantile of Student's t with `dof` (the normal's for infinite dof)."""
    if math.isinf(dof):
        return float(-special.ndtri(tail))
    return float(special.stdtrit(dof, 1 - tail))


@dataclass(frozen=True)
class SeedEvidence:
    """A measure on S seeds: `values` [S] on the whole test set, `influence` [S, N]."""

    values: np.ndarray
    influence: np.ndarray

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float64).reshape(-1)
        influence = np.asarray(self.influence, dtype=np.float64)
        if influence.ndim != 2 or influence.shape[0] != values.shape[0]:
            raise ValueError("influence must be [seeds, examples] with one row per value")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "influence", influence)

    @property
    def seeds(self) -> int:
        return int(self.values.shape[0])

    def __sub__(self, other: SeedEvidence) -> SeedEvidence:
        return SeedEvidence(self.values - other.values, self.influence - other.influence)

    def __add__(self, other: SeedEvidence) -> SeedEvidence:
        return SeedEvidence(self.values + other.values, self.influence + other.influence)

    def scaled(self, factor: float) -> SeedEvidence:
        return SeedEvidence(self.values * factor, self.influence * factor)

    def estimate(self) -> Estimate:
        """The estimate over seeds with its two variance parts."""
        values, seeds = self.values, self.seeds
        point = float(np.mean(values))
        test_var = float(np.sum(np.mean(self.influence, axis=0) ** 2))
        seed_var = float(np.var(values, ddof=1)) / seeds if seeds >= MIN_SEEDS else math.nan
        return Estimate(point, seed_var, test_var, seeds)


def stack(parts: list[tuple[float, np.ndarray]]) -> SeedEvidence:
    """SeedEvidence from one (value, influence) pair per seed."""
    return SeedEvidence(
        np.array([value for value, _ in parts]), np.stack([row for _, row in parts])
    )


@dataclass(frozen=True)
class Estimate:
    """`point` with its seed and test variance parts; intervals and tests on t(dof)."""

    point: float
    seed_var: float
    test_var: float
    seeds: int

    @property
    def judged(self) -> bool:
        """Whether there is a seed variance (>= 2 seeds) and a finite point."""
        return self.seeds >= MIN_SEEDS and math.isfinite(self.point)

    @property
    def variance(self) -> float:
        return self.seed_var + self.test_var

    @property
    def dof(self) -> float:
        """Welch-Satterthwaite: only the seed part is estimated with finite (S - 1) df."""
        if not self.judged:
            return math.nan
        if self.seed_var <= 0:
            return math.inf
        return self.variance**2 / (self.seed_var**2 / (self.seeds - 1))

    def quantile(self, tail: float) -> float:
        """t(dof)'s upper `tail` quantile (the normal's for infinite dof)."""
        return t_quantile(tail, self.dof)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Two-sided interval at `level` (NaN, NaN when not judged)."""
        if not self.judged:
            return math.nan, math.nan
        half = self.quantile((1 - level) / 2) * math.sqrt(self.variance)
        return self.point - half, self.point + half

    def keeps(self, tail: float) -> bool:
        """Whether the two-sided test of "the true value is 0" at 2 * `tail` keeps it."""
        if self.variance <= 0:
            return self.point == 0
        return abs(self.point) <= self.quantile(tail) * math.sqrt(self.variance)

    def p_greater(self, null: float = 0.0) -> float:
        """One-sided p-value of H1: the true value exceeds `null` (NaN when not judged). With
        no variance at all (identical models) a point equal to `null` gives p = 1."""
        if not self.judged:
            return math.nan
        if self.variance <= 0:
            return 0.0 if self.point > null else 1.0
        statistic = (self.point - null) / math.sqrt(self.variance)
        return t_tail(statistic, self.dof)

    def p_less(self, null: float = 0.0) -> float:
        """One-sided p-value of H1: the true value is below `null`."""
        if not self.judged:
            return math.nan
        return Estimate(-self.point, self.seed_var, self.test_var, self.seeds).p_greater(-null)


# Fieller's interval of E[A] / E[B]: the factors k whose contrast A - k B the two-sided test keeps
RATIO_GRID = np.exp(np.linspace(math.log(1e-3), math.log(1e3), 4001))


@dataclass(frozen=True)
class Ratio:
    """E[A] / E[B] over seeds (a ratio of sums: sum_s A_s / sum_s B_s) with its Fieller interval
    and tests of "the ratio exceeds k"."""

    numerator: SeedEvidence
    denominator: SeedEvidence

    @property
    def seeds(self) -> int:
        return self.numerator.seeds

    @property
    def judged(self) -> bool:
        return self.seeds >= MIN_SEEDS

    @property
    def point(self) -> float:
        top, bottom = float(np.sum(self.numerator.values)), float(np.sum(self.denominator.values))
        if bottom == 0:
            return math.inf if top > 0 else math.nan
        return top / bottom

    def contrast(self, factor: float) -> Estimate:
        """The estimate of E[A] - factor E[B]."""
        return (self.numerator - self.denominator.scaled(factor)).estimate()

    def p_greater(self, factor: float) -> float:
        """One-sided p of H1: E[A] / E[B] > factor (E[B] >= 0: counts)."""
        return self.contrast(factor).p_greater(0.0)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Every k of RATIO_GRID whose two-sided test of A - k B = 0 at `level` keeps it: (lowest,
        highest); 0 / inf where the kept set reaches the grid's ends; (inf, inf) when every k is
        rejected because A exceeds k B for all of them (B counted nothing at all)."""
        if not self.judged:
            return math.nan, math.nan
        kept = self._kept(RATIO_GRID, (1 - level) / 2)
        if not kept.any():  # every factor rejected (B counted nothing, A clearly did): one side
            above = self.contrast(float(RATIO_GRID[-1])).point > 0
            return (math.inf, math.inf) if above else (0.0, 0.0)
        low = 0.0 if kept[0] else float(RATIO_GRID[np.argmax(kept)])
        high = math.inf if kept[-1] else float(RATIO_GRID[len(kept) - 1 - np.argmax(kept[::-1])])
        return low, high

    def _kept(self, factors: np.ndarray, tail: float) -> np.ndarray:
        """Whether the two-sided test of A - k B = 0 keeps each k (vectorised `contrast`)."""
        a, b = self.numerator, self.denominator
        seeds = self.seeds
        point = np.mean(a.values) - factors * np.mean(b.values)
        ma, mb = np.mean(a.influence, axis=0), np.mean(b.influence, axis=0)
        test = np.sum(ma**2) - 2 * factors * np.sum(ma * mb) + factors**2 * np.sum(mb**2)
        da, db = a.values - np.mean(a.values), b.values - np.mean(b.values)
        spread = (np.sum(da**2) - 2 * factors * np.sum(da * db) + factors**2 * np.sum(db**2)) / (
            seeds - 1
        )
        seed = np.maximum(spread, 0.0) / seeds
        test = np.maximum(test, 0.0)
        total = seed + test
        with np.errstate(divide="ignore", invalid="ignore"):
            dof = np.where(seed > 0, total**2 / (seed**2 / (seeds - 1)), np.inf)
        quantile = np.where(
            np.isinf(dof),
            -special.ndtri(tail),
            special.stdtrit(np.where(np.isinf(dof), 1, dof), 1 - tail),
        )
        return np.where(total > 0, np.abs(point) <= quantile * np.sqrt(total), point == 0)


def holm(p_values: list[float] | np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Holm's step-down rejections (family-wise error <= alpha) for the finite p-values; a NaN
    p-value is never rejected and does not count in the family."""
    p_values = np.asarray(p_values, dtype=np.float64)
    rejected = np.zeros(p_values.shape, dtype=bool)
    finite = np.flatnonzero(np.isfinite(p_values))
    order = finite[np.argsort(p_values[finite], kind="stable")]
    family = len(order)
    for rank, index in enumerate(order):
        if p_values[index] > alpha / (family - rank):
            break
        rejected[index] = True
    return rejected


def holm_adjusted(p_values: list[float] | np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (NaN stays NaN): reject at alpha exactly where `holm` does."""
    p_values = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p_values.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p_values))
    order = finite[np.argsort(p_values[finite], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted
