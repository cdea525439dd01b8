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
    return pd.DataFrame(
        {
            "example_id": example_ids,
            "label": labels.numpy().astype(np.int64),
            "prediction": prediction.numpy().astype(np.int64),
            "confidence": confidence.numpy().astype(np.float64),
        }
    )


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
