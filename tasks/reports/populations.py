"""The populations flow's analysis: PIEs, impacted classes and losses against PIEs (computed by
`compalign.populations`), written to reports/populations/ and logged on the population's MLflow
parent run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compalign.data import load_split, read_manifest
from compalign.populations import analyse_populations
from compalign.report.figures import pie_gallery
from compalign.report.tables import PIE_MEASURES, populations_markdown
from tasks.infra.tracking import Tracking, log_artifacts, log_metrics


def _slug(level: float | None, loss: str) -> str:
    return f"{'all' if level is None else f'{level:g}'}-{loss}"


def analyse(
    data_path: str,
    reference_predictions: np.ndarray,
    compressed_predictions: dict[tuple[float | None, str], np.ndarray],
    significance: float,
    gallery_examples: int,
    out_dir: str | Path,
) -> dict[str, Any]:
    """PIE summary per (level, loss), PIE tables and galleries, class impact, losses vs PIEs;
    files written to `out_dir`. Returns {"summary", "impact"} frames and the file paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(data_path, verify=False)
    test = load_split(data_path, "test", manifest)
    names = manifest["class_names"]
    analysis = analyse_populations(
        test.example_ids,
        test.labels.numpy(),
        names,
        reference_predictions,
        compressed_predictions,
        significance,
        gallery_examples,
    )
    files = []
    for (level, loss), table in analysis["pies"].items():
        slug = _slug(level, loss)
        table.to_parquet(out_dir / f"pies-{slug}.parquet", index=False)
        gallery = analysis["galleries"][(level, loss)]
        pie_gallery(
            test.images[gallery["position"].to_numpy(copy=True)],  # torch wants it writable
            gallery["label"].to_numpy(),
            gallery["reference_mode"].to_numpy(),
            gallery["compressed_mode"].to_numpy(),
            names,
            out_dir / f"gallery-{slug}.png",
            title=f"PIEs at level {level} with loss {loss}: label / dense mode / compressed mode",
            limit=gallery_examples,
        )
        files += [out_dir / f"pies-{slug}.parquet", out_dir / f"gallery-{slug}.png"]
    summary, impact = analysis["summary"], analysis["impact"]
    summary.to_parquet(out_dir / "summary.parquet", index=False)
    impact.to_parquet(out_dir / "class_impact.parquet", index=False)
    (out_dir / "summary.md").write_text(populations_markdown(summary, impact) + "\n")
    files += [out_dir / name for name in ("summary.parquet", "class_impact.parquet", "summary.md")]
    return {"summary": summary, "impact": impact, "files": files}


def publish(tracking: Tracking, parent_run_id: str, analysis: dict[str, Any]) -> None:
    """Log the PIE metrics (`<level>/<loss>/<metric>`) and every file on the parent run."""
    metrics = {}
    for _, row in analysis["summary"].iterrows():
        prefix = f"{_slug(row['level'], row['loss']).replace('-', '/', 1)}/"
        for name in (*PIE_MEASURES, "compressed_top1"):
            metrics[prefix + name] = row[name]
    if len(analysis["summary"]):
        metrics["reference_top1"] = analysis["summary"].reference_top1.iloc[0]
    log_metrics(tracking, parent_run_id, metrics)
    log_artifacts(tracking, parent_run_id, [("populations", path) for path in analysis["files"]])
