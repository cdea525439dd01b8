"""The measures the verdict rules judge, each as (values [S], influence [S, N]): one row per
training seed, over the N shared test examples (compalign.verdicts.estimate explains the
influence vector; `SeedEvidence(*measure)` makes one).

All are the papers' own measures: mismatch counts (Joseph et al.), per-class recall and its
worst change (Joseph et al.'s fairness), group accuracy gaps and one-vs-rest AUROC per class and
per group (Meyer & Wong's prune/evaluate.py), and the mean per-example attribution agreement over
a fixed sample (Joseph et al., section 5). AUROC's influence is DeLong's placement values
(DeLong et al. 1988), so two models' AUROCs on the same examples are paired like every other
measure. Every function takes rows of seeds (a [S, N] array; labels and groups are [N]).
"""

from __future__ import annotations

import numpy as np

Rows = tuple[np.ndarray, np.ndarray]  # (values [S], influence [S, N])


def count(indicator: np.ndarray) -> Rows:
    """A count of examples (mismatches): the sum of a 0/1 indicator; influence x_i - mean(x)."""
    x = np.atleast_2d(np.asarray(indicator, dtype=np.float64))
    return x.sum(axis=1), x - x.mean(axis=1, keepdims=True)


def sample_mean(values: np.ndarray) -> Rows:
    """The mean of a per-example value over the examples where it is defined (not NaN): the
    attribution agreement of the fixed attribution sample."""
    x = np.atleast_2d(np.asarray(values, dtype=np.float64))
    defined = np.isfinite(x)
    n = defined.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(defined, x, 0.0).sum(axis=1) / n
        influence = np.where(defined, (x - mean[:, None]) / n[:, None], 0.0)
    return np.where(n > 0, mean, np.nan), influence


def ratio_of_sums(numerator: np.ndarray, denominator: np.ndarray) -> Rows:
    """sum(a) / sum(b) per row (an accuracy within a subset, a recall); influence
    (a - value b) / sum(b). NaN (and no influence) where sum(b) is 0."""
    a = np.atleast_2d(np.asarray(numerator, dtype=np.float64))
    b = np.broadcast_to(np.asarray(denominator, dtype=np.float64), a.shape)
    total = b.sum(axis=1)
    safe = np.where(total > 0, total, 1.0)
    value = a.sum(axis=1) / safe
    influence = (a - value[:, None] * b) / safe[:, None]
    return np.where(total > 0, value, np.nan), np.where(total[:, None] > 0, influence, 0.0)


def difference(left: Rows, right: Rows) -> Rows:
    return left[0] - right[0], left[1] - right[1]


def _pick(measures: list[Rows], lowest: bool) -> Rows:
    """Per row, the lowest (or highest) finite one of several measures, with its influence."""
    values = np.stack([m[0] for m in measures])  # [M, S]
    influence = np.stack([m[1] for m in measures])  # [M, S, N]
    filled = np.where(np.isfinite(values), values, np.inf if lowest else -np.inf)
    index = filled.argmin(axis=0) if lowest else filled.argmax(axis=0)
    rows = np.arange(values.shape[1])
    picked = values[index, rows]
    none = ~np.isfinite(values).any(axis=0)
    return np.where(none, np.nan, picked), np.where(none[:, None], 0.0, influence[index, rows])


def worst(measures: list[Rows]) -> Rows:
    """The lowest of several measures per row (the worst class), with its influence: the
    interval treats which one is lowest on the whole test set as fixed."""
    return _pick(measures, lowest=True)


def spread(measures: list[Rows]) -> Rows:
    """max - min of several measures per row (a gap between groups), with its influence; NaN
    with fewer than two finite ones."""
    values = np.stack([m[0] for m in measures])
    high, low = _pick(measures, lowest=False), _pick(measures, lowest=True)
    gap = difference(high, low)
    enough = np.isfinite(values).sum(axis=0) >= 2
    return np.where(enough, gap[0], np.nan), np.where(enough[:, None], gap[1], 0.0)


def class_recall_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int) -> Rows:
    """Every class's recall per row at once: values [S, C] (NaN for a class with no example)
    and influence [S, N, C]."""
    member = (labels[:, None] == np.arange(classes)[None, :]).astype(np.float64)  # [N, C]
    correct = (np.atleast_2d(predictions) == labels[None, :]).astype(np.float64)  # [S, N]
    support = member.sum(axis=0)  # [C]
    safe = np.where(support > 0, support, 1.0)
    recall = (correct @ member) / safe  # [S, C]
    influence = (correct[:, :, None] - recall[:, None, :]) * member[None, :, :] / safe
    return np.where(support > 0, recall, np.nan), influence


def class_recalls(labels: np.ndarray, predictions: np.ndarray, classes: int) -> list[Rows]:
    """Each class's recall per row (NaN for a class with no example)."""
    values, influence = class_recall_matrix(labels, predictions, classes)
    return [(values[:, c], influence[:, :, c]) for c in range(classes)]


def worst_class_change(model: Rows, reference: Rows) -> Rows:
    """min over classes of (model - reference), from two `class_recall_matrix`-shaped measures
    (values [S, C], influence [S, N, C]), with the lowest class's influence."""
    values = model[0] - reference[0]
    filled = np.where(np.isfinite(values), values, np.inf)
    index = filled.argmin(axis=1)
    rows = np.arange(values.shape[0])
    influence = model[1][rows, :, index] - reference[1][rows, :, index]
    none = ~np.isfinite(values).any(axis=1)
    return np.where(none, np.nan, values[rows, index]), np.where(none[:, None], 0.0, influence)


def worst_class_recall_change(
    labels: np.ndarray, predictions: np.ndarray, reference: np.ndarray, classes: int
) -> Rows:
    """min over classes of (recall - the reference's recall): the audit's
    `worst_class_recall_change`, per row."""
    return worst_class_change(
        class_recall_matrix(labels, predictions, classes),
        class_recall_matrix(labels, reference, classes),
    )


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> Rows:
    correct = np.atleast_2d(predictions) == labels[None, :]
    return ratio_of_sums(correct, np.ones(labels.shape[0]))


def accuracy_gap(labels: np.ndarray, predictions: np.ndarray, groups: np.ndarray) -> Rows:
    """The largest minus the smallest group accuracy (the audit's `group.<col>.accuracy_gap`)."""
    correct = np.atleast_2d(predictions) == labels[None, :]
    return spread(
        [ratio_of_sums(correct & (groups == g)[None, :], groups == g) for g in np.unique(groups)]
    )


def _placements(
    positive: np.ndarray, scores: np.ndarray, subsets: list[np.ndarray | None]
) -> list[Rows]:
    """AUROCs of scores [R, n, C] separating positive [n, C] (column c: class c's members) from
    the rest, within each subset ([n] mask, None: all): per subset, values [R, C] (NaN where the
    subset holds one side only) and DeLong's influence [R, n, C]. One sort per row and column
    serves every subset; ties count half (midranks)."""
    scores = np.ascontiguousarray(np.moveaxis(scores, 1, 2))  # [R, C, n]: sort the last axis
    rows, columns, n = scores.shape
    order = np.argsort(scores, axis=2)  # ties are grouped below, so their order is free
    ordered = np.take_along_axis(scores, order, axis=2)
    is_pos = positive.T[np.arange(columns)[None, :, None], order]  # [R, C, n]
    index = np.arange(n)
    new = np.ones(ordered.shape, dtype=bool)
    np.not_equal(ordered[..., 1:], ordered[..., :-1], out=new[..., 1:])
    ties = not new.all()
    if ties:  # each run of equal scores: where it starts and ends
        last = np.ones(ordered.shape, dtype=bool)
        last[..., :-1] = new[..., 1:]
        start = np.maximum.accumulate(np.where(new, index, 0), axis=2)
        end = np.minimum.accumulate(np.where(last, index, n - 1)[..., ::-1], axis=2)[..., ::-1]
    finite = np.isfinite(scores).all(axis=2)
    results = []
    for subset in subsets:
        inside = np.ones((rows, columns, n), dtype=bool) if subset is None else subset[order]
        pos = is_pos & inside
        neg = ~is_pos & inside
        pos_count, neg_count = np.cumsum(pos, axis=2), np.cumsum(neg, axis=2)
        m = pos_count[..., -1:].astype(np.float64)  # [R, C, 1]
        k = neg_count[..., -1:].astype(np.float64)
        if not ties:  # each example's own counts are its placements
            neg_below, neg_equal, pos_upto, pos_equal = neg_count, 0.0, pos_count, 0.0
        else:  # count within each run of equal scores, half for the equal ones
            neg_below = np.take_along_axis(neg_count - neg, start, axis=2)
            neg_equal = np.take_along_axis(neg_count, end, axis=2) - neg_below
            pos_upto = np.take_along_axis(pos_count, end, axis=2)
            pos_equal = pos_upto - np.take_along_axis(pos_count - pos, start, axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            v10 = (neg_below + 0.5 * neg_equal) / k  # a positive: negatives it outranks
            v01 = (m - pos_upto + 0.5 * pos_equal) / m  # a negative: positives that outrank it
            value = np.where(pos, v10, 0.0).sum(axis=2) / m[..., 0]  # [R, C]
            ranked = np.where(pos, (v10 - value[..., None]) / m, 0.0)
            ranked = np.where(neg, (v01 - value[..., None]) / k, ranked)
        influence = np.empty_like(ranked)
        np.put_along_axis(influence, order, ranked, axis=2)
        defined = (m[..., 0] > 0) & (k[..., 0] > 0) & finite
        influence = np.moveaxis(np.where(defined[..., None], influence, 0.0), 2, 1)  # [R, n, C]
        results.append((np.where(defined, value, np.nan), influence))
    return results


def auroc(positive: np.ndarray, scores: np.ndarray, subset: np.ndarray | None = None) -> Rows:
    """AUROC of `scores` [S, N] separating `positive` [N] from the rest within `subset` [N],
    with DeLong's influence: a positive i contributes (V10_i - AUC) / m, a negative j
    (V01_j - AUC) / n, where V10_i is the share of negatives i outranks and V01_j the share of
    positives that outrank j (ties count half). NaN with one class only in the subset."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    values, influence = _placements(
        np.asarray(positive, dtype=bool)[:, None], scores[:, :, None], [_mask(subset)]
    )[0]
    return values[:, 0], influence[:, :, 0]


def _mask(subset: np.ndarray | None) -> np.ndarray | None:
    return None if subset is None else np.asarray(subset, dtype=bool)


def class_auroc_subsets(
    labels: np.ndarray, probabilities: np.ndarray, subsets: list[np.ndarray | None]
) -> list[list[Rows]]:
    """One-vs-rest AUROC of each class by its probability (`probabilities` [S, N, C]) within
    each subset: per subset, one Rows per class."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim == 2:
        probabilities = probabilities[None]
    classes = probabilities.shape[2]
    positive = labels[:, None] == np.arange(classes)[None, :]
    results = _placements(positive, probabilities, [_mask(s) for s in subsets])
    return [[(v[:, c], i[:, :, c]) for c in range(classes)] for v, i in results]


def mean_of(measures: list[Rows]) -> Rows:
    """The mean of several measures per row (NaN ones left out): a macro-averaged AUROC."""
    values = np.stack([m[0] for m in measures])
    influence = np.stack([m[1] for m in measures])
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, values, 0.0).sum(axis=0) / count
        row_influence = (finite[:, :, None] * influence).sum(axis=0) / count[:, None]
    return np.where(count > 0, mean, np.nan), np.where(count[:, None] > 0, row_influence, 0.0)


def class_aurocs(
    labels: np.ndarray, probabilities: np.ndarray, subset: np.ndarray | None = None
) -> list[Rows]:
    """One-vs-rest AUROC of each class by its probability (`probabilities` [S, N, C])."""
    return class_auroc_subsets(labels, probabilities, [subset])[0]


def model_auroc(
    labels: np.ndarray, probabilities: np.ndarray, subset: np.ndarray | None = None
) -> Rows:
    """The audit's `auroc`: the positive probability's for two classes, else the mean of the
    one-vs-rest AUROCs of the classes present (within `subset`)."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim == 2:
        probabilities = probabilities[None]
    if probabilities.shape[2] == 2:
        return auroc(labels == 1, probabilities[:, :, 1], subset)
    return mean_of(class_aurocs(labels, probabilities, subset))


def auroc_gap(labels: np.ndarray, probabilities: np.ndarray, groups: np.ndarray) -> Rows:
    """The largest minus the smallest group AUROC (the audit's `auroc.group.<col>.gap`)."""
    return spread([model_auroc(labels, probabilities, groups == g) for g in np.unique(groups)])


def worst_class_auroc_change(
    labels: np.ndarray, probabilities: np.ndarray, reference: list[Rows]
) -> Rows:
    """min over classes of (the class's one-vs-rest AUROC - the reference's, `reference` being
    `class_aurocs` of the reference's probabilities)."""
    model = class_aurocs(labels, probabilities)
    return worst([difference(m, r) for m, r in zip(model, reference, strict=True)])
