"""Populations of models: Pruning Identified Exemplars and classes compression disparately
impacts (Hooker et al., "What Do Compressed Deep Neural Networks Forget?", arXiv 1911.05248).

Inputs are integer prediction arrays of shape [K, N]: the predicted label of each of K members
of a population on each of N test examples.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats


def modal_labels(
    predictions: np.ndarray, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The most frequent label of each example over the population's members, and the fraction
    of members that predicted it. Ties go to the LARGEST label, as Hooker et al.'s
    `predictions.mode().max()` (pie_dataset_gen/aggregate_predictions.py)."""
    predictions = np.asarray(predictions, dtype=np.int64)
    members, count = predictions.shape
    classes = num_classes or int(predictions.max()) + 1
    votes = np.zeros((count, classes), dtype=np.int64)
    np.add.at(votes, (np.tile(np.arange(count), members), predictions.ravel()), 1)
    modes = classes - 1 - votes[:, ::-1].argmax(axis=1)  # argmax takes the first: scan from the top
    return modes, votes[np.arange(count), modes] / members


def pies(reference_predictions: np.ndarray, compressed_predictions: np.ndarray) -> np.ndarray:
    """Pruning Identified Exemplars: examples whose modal label in the compressed population
    differs from the modal label in the dense population (the true label plays no part).
    Both arrays are [K, N] predicted labels; returns a boolean mask of length N."""
    classes = int(max(np.max(reference_predictions), np.max(compressed_predictions))) + 1
    reference_modes, _ = modal_labels(reference_predictions, classes)
    compressed_modes, _ = modal_labels(compressed_predictions, classes)
    return reference_modes != compressed_modes


def population_accuracy(
    predictions: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None
) -> float:
    """Mean top-1 accuracy of the members on the examples in `mask` (all when None); NaN when
    the mask selects nothing."""
    correct = np.asarray(predictions) == np.asarray(labels)[None, :]
    if mask is not None:
        correct = correct[:, np.asarray(mask, dtype=bool)]
    return float(correct.mean()) if correct.size else float("nan")


def pie_summary(
    reference_predictions: np.ndarray, compressed_predictions: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """PIE count and fraction, top-1 of both populations on PIEs and on the other examples, and
    the PIEs where the compressed population's modal label is the true one."""
    mask = pies(reference_predictions, compressed_predictions)
    compressed_modes, _ = modal_labels(
        compressed_predictions, int(max(compressed_predictions.max(), labels.max())) + 1
    )
    return {
        "pie_count": int(mask.sum()),
        "pie_fraction": float(mask.mean()),
        "pies_compressed_mode_correct": int((mask & (compressed_modes == labels)).sum()),
        "reference_top1_on_pies": population_accuracy(reference_predictions, labels, mask),
        "reference_top1_on_rest": population_accuracy(reference_predictions, labels, ~mask),
        "compressed_top1_on_pies": population_accuracy(compressed_predictions, labels, mask),
        "compressed_top1_on_rest": population_accuracy(compressed_predictions, labels, ~mask),
        "reference_top1": population_accuracy(reference_predictions, labels),
        "compressed_top1": population_accuracy(compressed_predictions, labels),
    }


def pie_table(
    example_ids: list[str],
    labels: np.ndarray,
    reference_predictions: np.ndarray,
    compressed_predictions: np.ndarray,
) -> pd.DataFrame:
    """One row per PIE: example_id, label, both modal labels and the fraction of each
    population's members that agree with its mode."""
    classes = int(max(reference_predictions.max(), compressed_predictions.max(), labels.max())) + 1
    reference_modes, reference_agreement = modal_labels(reference_predictions, classes)
    compressed_modes, compressed_agreement = modal_labels(compressed_predictions, classes)
    mask = reference_modes != compressed_modes
    return pd.DataFrame(
        {
            "example_id": np.asarray(example_ids)[mask],
            "label": np.asarray(labels)[mask],
            "reference_mode": reference_modes[mask],
            "compressed_mode": compressed_modes[mask],
            "reference_agreement": reference_agreement[mask],
            "compressed_agreement": compressed_agreement[mask],
            "compressed_mode_correct": (compressed_modes == labels)[mask],
        }
    )


def normalised_recalls(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, classes]: each member's recall of each class minus the POPULATION's mean top-1 (one
    number for all K members), as Hooker et al. normalise (per_class_accuracy/gen_tstatistic.py:
    `recall - mean_accuracy_dict[p]`), so that an overall accuracy drop is not a class effect."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    mean_top1 = population_accuracy(predictions, labels)
    result = np.full((len(predictions), num_classes), np.nan)
    for label in range(num_classes):
        members = labels == label
        if members.any():
            result[:, label] = (predictions[:, members] == label).mean(axis=1) - mean_top1
    return result


def class_impact(
    reference_predictions: np.ndarray,
    compressed_predictions: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Per class, Welch's two-sided t-test between the dense and the compressed members'
    normalised recalls (`normalised_recalls`), in Hooker et al.'s order: `ttest_ind(dense,
    compressed, equal_var=False)`, so t > 0 when the class loses relative recall. `change`
    (compressed mean - dense mean of the normalised recall) gives the direction and size; the
    decision is `decide_impact`'s (Benjamini-Hochberg over this table's classes). A class whose
    recall does not vary within either population is not tested (t and p NaN): its standard
    error is zero (it happens on small test sets where every member gets a class right)."""
    dense = normalised_recalls(reference_predictions, labels, len(class_names))
    sparse = normalised_recalls(compressed_predictions, labels, len(class_names))
    rows = []
    for index, name in enumerate(class_names):
        if np.ptp(dense[:, index]) == 0 and np.ptp(sparse[:, index]) == 0:
            # Every member of each population has the same recall (e.g. all perfect): Welch's
            # standard error is 0 and scipy returns t = inf, p = 0 whenever the two mean top-1s
            # differ, which is a difference of averages, not evidence about this class.
            statistic, p_value = float("nan"), float("nan")
        else:
            with warnings.catch_warnings():  # near-identical recalls: scipy warns, p is right
                warnings.simplefilter("ignore", RuntimeWarning)
                statistic, p_value = stats.ttest_ind(
                    dense[:, index], sparse[:, index], equal_var=False
                )
        rows.append(
            {
                "class": name,
                "reference_normalised_recall": float(np.mean(dense[:, index])),
                "compressed_normalised_recall": float(np.mean(sparse[:, index])),
                "change": float(np.mean(sparse[:, index]) - np.mean(dense[:, index])),
                "t": float(statistic),
                "p": float(p_value),
            }
        )
    return decide_impact(pd.DataFrame(rows), alpha)


def decide_impact(impact: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """`p_adjusted`: Benjamini-Hochberg adjusted p-values (scipy.stats.false_discovery_control)
    over every row of `impact` with a finite p (all classes x levels tested together); a class
    is `impacted` when its ADJUSTED p <= alpha, `direction` the sign of its `change`."""
    impact = impact.copy()
    p_values = impact["p"].to_numpy(dtype=float)
    adjusted = np.full(len(p_values), np.nan)
    finite = np.isfinite(p_values)
    if finite.any():
        adjusted[finite] = stats.false_discovery_control(p_values[finite], method="bh")
    impact["p_adjusted"] = adjusted
    impact["impacted"] = np.isfinite(adjusted) & (adjusted <= alpha)
    impact["direction"] = np.where(
        impact["impacted"], np.where(impact["change"] > 0, "better", "worse"), ""
    )
    return impact


def analyse_populations(
    example_ids: Sequence[str],
    labels: np.ndarray,
    class_names: list[str],
    reference_predictions: np.ndarray,
    compressed_predictions: dict[tuple[float | None, str], np.ndarray],
    significance: float,
    gallery_examples: int,
) -> dict[str, Any]:
    """What a populations run reports of each (level, loss) population against the dense one:
    `summary` (a row each: `pie_summary`, the PIEs shared with the level's first loss, the
    impacted classes: by Benjamini-Hochberg adjusted p, and `impacted_classes_raw` by raw p),
    `impact` (their `class_impact` tables with level and loss, p adjusted over all of them
    together), `pies` (their `pie_table`s) and `galleries` (the PIEs to show, those both
    populations are surest about first, at most `gallery_examples`: test position, label and
    both modal labels)."""
    classes = len(class_names)
    rows, pie_tables, galleries = [], {}, {}
    impacts = [
        class_impact(reference_predictions, predictions, labels, class_names, significance).assign(
            level=level, loss=loss
        )
        for (level, loss), predictions in compressed_predictions.items()
    ]
    # one Benjamini-Hochberg family: every class at every level (and loss) tested here
    impact_all = (
        decide_impact(pd.concat(impacts, ignore_index=True), significance)
        if impacts
        else pd.DataFrame()
    )
    first_loss_pies: dict[float | None, np.ndarray] = {}
    for position, ((level, loss), predictions) in enumerate(compressed_predictions.items()):
        summary = pie_summary(reference_predictions, predictions, labels)
        table = pie_table(example_ids, labels, reference_predictions, predictions)
        count = len(class_names)
        impact = impact_all.iloc[position * count : (position + 1) * count]
        reference_modes, _ = modal_labels(reference_predictions, classes)
        compressed_modes, _ = modal_labels(predictions, classes)
        mask = reference_modes != compressed_modes
        first = first_loss_pies.setdefault(level, mask)
        impacted = impact[impact.impacted]
        rows.append(
            {
                "level": level,
                "loss": loss,
                **summary,
                "pies_shared_with_first_loss": int((mask & first).sum()),
                "impacted_classes": int(len(impacted)),
                "impacted_classes_raw": int((impact.p <= significance).sum()),
                "impacted": ", ".join(
                    f"{row['class']} ({row['change']:+.3f}, p={row['p']:.3f}, "
                    f"p_BH={row['p_adjusted']:.3f})"
                    for _, row in impacted.iterrows()
                ),
            }
        )
        pie_tables[(level, loss)] = table
        order = np.argsort(
            -(table.reference_agreement.to_numpy() + table.compressed_agreement.to_numpy()),
            kind="stable",
        )[:gallery_examples]
        positions = np.flatnonzero(mask)[order]
        galleries[(level, loss)] = pd.DataFrame(
            {
                "position": positions,
                "label": np.asarray(labels)[positions],
                "reference_mode": reference_modes[positions],
                "compressed_mode": compressed_modes[positions],
            }
        )
    return {
        "summary": pd.DataFrame(rows),
        "impact": impact_all,
        "pies": pie_tables,
        "galleries": galleries,
    }
