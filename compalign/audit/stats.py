"""What a compressed model lost beyond top-1 accuracy, measured against its reference.

Mismatch (Joseph et al., arXiv 2012.01604): a test example where argmax z_c != argmax z_r;
`mismatches_ref_correct` counts those where the reference's prediction equals the label.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def predictions_frame(
    example_ids: list[str], labels: torch.Tensor, logits: torch.Tensor
) -> pd.DataFrame:
    """One row per example: example_id, label, prediction, confidence (max softmax probability)."""
    probabilities = torch.softmax(logits, dim=1) if logits.shape[1] > 1 else None
    if probabilities is None:  # one logit: binary task
        positive = torch.sigmoid(logits[:, 0])
        probabilities = torch.stack([1 - positive, positive], dim=1)
    confidence, prediction = probabilities.max(dim=1)
    frame = pd.DataFrame(
        {
            "example_id": example_ids,
            "label": labels.numpy().astype(np.int64),
            "prediction": prediction.numpy().astype(np.int64),
            "confidence": confidence.numpy().astype(np.float64),
        }
    )
    if probabilities.shape[1] == 2:
        frame["positive_probability"] = probabilities[:, 1].numpy().astype(np.float64)
    return frame


def per_class_recall(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class (NaN for a class absent from `labels`)."""
    support = np.bincount(labels, minlength=num_classes).astype(np.float64)
    hits = np.bincount(labels[predictions == labels], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, hits / support, np.nan)


def model_metrics(frame: pd.DataFrame, class_names: list[str]) -> dict[str, float]:
    """accuracy and per-class recall (`recall.<class>`) of one model's predictions frame."""
    labels, predictions = frame["label"].to_numpy(), frame["prediction"].to_numpy()
    metrics = {"accuracy": float((labels == predictions).mean())}
    recall = per_class_recall(labels, predictions, len(class_names))
    metrics.update(
        {f"recall.{name}": float(value) for name, value in zip(class_names, recall, strict=True)}
    )
    return metrics


def mismatch_metrics(reference: pd.DataFrame, compressed: pd.DataFrame) -> dict[str, float]:
    """mismatches, mismatches_ref_correct and their rates, for two frames in the same row order."""
    if not reference["example_id"].equals(compressed["example_id"]):
        raise ValueError("reference and compressed predictions are not over the same examples")
    mismatch = reference["prediction"].to_numpy() != compressed["prediction"].to_numpy()
    reference_correct = reference["prediction"].to_numpy() == reference["label"].to_numpy()
    count = len(reference)
    return {
        "mismatches": int(mismatch.sum()),
        "mismatches_ref_correct": int((mismatch & reference_correct).sum()),
        "mismatch_rate": float(mismatch.mean()) if count else 0.0,
        "agreement": float(1 - mismatch.mean()) if count else 1.0,
    }


def comparison_frame(reference: pd.DataFrame, compressed: pd.DataFrame) -> pd.DataFrame:
    """Per-example table of a compressed model against its reference, for the audit artifact."""
    return pd.DataFrame(
        {
            "example_id": reference["example_id"],
            "label": reference["label"],
            "reference_prediction": reference["prediction"],
            "reference_confidence": reference["confidence"],
            "compressed_prediction": compressed["prediction"].to_numpy(),
            "compressed_confidence": compressed["confidence"].to_numpy(),
            "mismatch": reference["prediction"].to_numpy() != compressed["prediction"].to_numpy(),
        }
    )


def class_fairness(
    reference: pd.DataFrame, compressed: pd.DataFrame, class_names: list[str]
) -> dict[str, float]:
    """Fairness across classes: each class's recall for both models and its change, the worst
    class's change, and the max-min recall gap of each model and its change."""
    count = len(class_names)
    reference_recall = per_class_recall(
        reference["label"].to_numpy(), reference["prediction"].to_numpy(), count
    )
    recall = per_class_recall(
        compressed["label"].to_numpy(), compressed["prediction"].to_numpy(), count
    )
    change = recall - reference_recall
    metrics: dict[str, float] = {}
    for name, before, delta in zip(class_names, reference_recall, change, strict=True):
        metrics[f"reference_recall.{name}"] = float(before)
        metrics[f"recall_change.{name}"] = float(delta)
    metrics["worst_class_recall_change"] = float(np.nanmin(change))
    metrics["worst_class_index"] = float(np.nanargmin(change))
    metrics["recall_gap_reference"] = float(
        np.nanmax(reference_recall) - np.nanmin(reference_recall)
    )
    metrics["recall_gap"] = float(np.nanmax(recall) - np.nanmin(recall))
    metrics["recall_gap_change"] = metrics["recall_gap"] - metrics["recall_gap_reference"]
    return metrics


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 15
) -> float:
    """ECE (Guo et al. 2017): sum over equal-width confidence bins of
    (bin share) * |accuracy in bin - mean confidence in bin|."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bins are (lo, hi]; a confidence of exactly 0 cannot occur (max softmax >= 1/classes)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    error = 0.0
    for index in range(bins):
        members = which == index
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def bootstrap_indices(count: int, samples: int, seed: int) -> np.ndarray:
    """[samples, count] example indices drawn with replacement; the same seed gives the same
    resamples, so every model of a run is resampled alike (paired intervals)."""
    return np.random.default_rng(seed).integers(0, count, size=(samples, count), dtype=np.int32)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap values (inf allowed, NaN ignored)."""
    tail = (1.0 - level) / 2.0 * 100.0
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    # no interpolation between order statistics: it would turn [.., inf, inf] into NaN
    low, high = np.percentile(finite, [tail, 100.0 - tail], method="inverted_cdf")
    return float(low), float(high)


def count_interval(
    indicator: np.ndarray, resamples: np.ndarray, level: float = 0.95
) -> tuple[float, float]:
    """Bootstrap interval of a count (the sum of a 0/1 indicator over examples)."""
    return percentile_interval(np.asarray(indicator, dtype=np.int32)[resamples].sum(axis=1), level)


def reduction_factor(baseline: np.ndarray, other: np.ndarray) -> float:
    """mismatches of the baseline (ce) / mismatches of another loss, at the same compression
    (Joseph et al.'s reduction factor): inf when only the baseline has mismatches, NaN when
    neither has any."""
    numerator, denominator = int(np.sum(baseline)), int(np.sum(other))
    if denominator == 0:
        return float("inf") if numerator else float("nan")
    return numerator / denominator


def reduction_factor_interval(
    baseline: np.ndarray, other: np.ndarray, resamples: np.ndarray, level: float = 0.95
) -> tuple[float, float]:
    """Paired bootstrap interval of `reduction_factor`: both models' mismatches are counted on
    the same resampled examples."""
    numerators = np.asarray(baseline, dtype=np.int32)[resamples].sum(axis=1).astype(np.float64)
    denominators = np.asarray(other, dtype=np.int32)[resamples].sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = numerators / denominators
    return percentile_interval(ratios, level)
