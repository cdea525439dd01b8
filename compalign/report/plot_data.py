"""The small tables behind `dvc plots`: accuracy and mismatches (with intervals) against the
compression level per loss, and each compressed model's predictions against its reference's
(a confusion matrix per model). Written as CSV by the DVC `audit` stage; dvc.yaml's `plots:`
section names them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

LEVELS_FILE = "levels.csv"
CONFUSION_DIR = "confusion"
COUNTS = ("mismatches", "mismatches_ref_correct")


def accuracy_interval(correct: int, total: int, level: float) -> tuple[float, float]:
    """Wilson score interval of an accuracy of `correct` / `total` at confidence `level`."""
    from scipy.stats import binomtest  # here, not at import: scipy.stats takes 0.6 s to load

    if total == 0:
        return (float("nan"), float("nan"))
    interval = binomtest(int(correct), int(total)).proportion_ci(level, method="wilson")
    return float(interval.low), float(interval.high)


def level_points(
    summary: pd.DataFrame, predictions: dict[str, pd.DataFrame], confidence_level: float
) -> pd.DataFrame:
    """One row per compressed model with a level: compressor, loss, level, accuracy with its
    Wilson interval (from the model's predictions table), mismatches and mismatches where the
    reference is right with their bootstrap intervals (from the summary)."""
    rows = []
    for _, row in summary.iterrows():
        if row.get("role") == "reference" or row.get("level_kind", "") == "none":
            continue
        table = predictions[row["name"]]
        correct = int((table["compressed_prediction"] == table["label"]).sum())
        low, high = accuracy_interval(correct, len(table), confidence_level)
        point = {
            "name": row["name"],
            "compressor": row["compressor"],
            "loss": row["loss"],
            "level": float(row["sparsity"]),
            "accuracy": correct / len(table),
            "accuracy_ci_low": low,
            "accuracy_ci_high": high,
        }
        for column in COUNTS:
            for suffix in ("", "_ci_low", "_ci_high"):
                point[column + suffix] = float(row.get(column + suffix, np.nan))
        rows.append(point)
    return pd.DataFrame(rows)


def confusion_pairs(table: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """The reference's and the compressed model's predicted class, by name, per test example
    (DVC's `confusion` template counts the pairs)."""
    names = np.asarray(class_names, dtype=object)
    return pd.DataFrame(
        {
            "reference": names[table["reference_prediction"].to_numpy()],
            "compressed": names[table["compressed_prediction"].to_numpy()],
        }
    )


def write_plot_data(
    summary: pd.DataFrame,
    predictions: dict[str, pd.DataFrame],
    class_names: list[str],
    confidence_level: float,
    out_dir: str | Path,
) -> list[Path]:
    """Write levels.csv and confusion/<model>.csv (every compressed model) to `out_dir`."""
    out_dir = Path(out_dir)
    (out_dir / CONFUSION_DIR).mkdir(parents=True, exist_ok=True)
    written = [out_dir / LEVELS_FILE]
    level_points(summary, predictions, confidence_level).to_csv(written[0], index=False)
    for name, table in predictions.items():
        if "compressed_prediction" not in table:
            continue  # the reference's own table
        path = out_dir / CONFUSION_DIR / f"{name}.csv"
        confusion_pairs(table, class_names).to_csv(path, index=False)
        written.append(path)
    return written
