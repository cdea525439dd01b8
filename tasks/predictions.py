"""Stage `predictions`: every audited model's per-example predictions in one Parquet table.

One row per (model, test example): the model's name and labels (role, compressor, level,
loss), the example, its label, the model's prediction and confidence, whether it is right, the
reference's prediction and whether the two differ. Read from the audits' own tables, so it costs
no forward pass; a table to diff across commits (`dvc diff`, or pandas on two revisions), to join
with the data, or to query which examples a loss keeps.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from compalign.files import sha256_file
from tasks.infra import paths
from tasks.infra.stage import Stage
from tasks.infra.store import MANIFEST, Artifact, materialize, require

PREDICTIONS_FILE = "predictions.parquet"
LABELS = ("role", "compressor", "sparsity", "level_kind", "loss")  # of each audit's manifest
COLUMNS = (
    "model",
    *LABELS,
    "example_id",
    "label",
    "prediction",
    "confidence",
    "correct",
    "reference_prediction",
    "mismatch",
)


def model_rows(name: str, directory: Path) -> pd.DataFrame:
    """One model's rows, from its audit's table (the file its manifest names) and labels."""
    manifest = json.loads((directory / MANIFEST).read_text())
    table = pd.read_parquet(directory / manifest["file"])
    labels = manifest["labels"]
    compared = "compressed_prediction" in table  # the reference's audit has no comparison
    prediction = table["compressed_prediction" if compared else "prediction"]
    confidence = table["compressed_confidence" if compared else "confidence"]
    reference = table["reference_prediction"] if compared else prediction
    rows = pd.DataFrame(
        {
            "model": name,
            **{label: str(labels.get(label, "")) for label in LABELS},
            "example_id": table["example_id"],
            "label": table["label"].astype("int64"),
            "prediction": prediction.astype("int64"),
            "confidence": confidence.astype("float64"),
            "correct": (prediction == table["label"]).to_numpy(),
            "reference_prediction": reference.astype("int64"),
            "mismatch": (prediction != reference).to_numpy(),
        }
    )
    return rows[list(COLUMNS)]


def write_predictions(audits: dict[str, Any], out_dir: str | None = None) -> Artifact:
    """Gather the per-example predictions of every audit in `audits` (model name -> its audit
    result) into predictions.parquet, the models in the order given."""

    def build(scratch: Path) -> None:
        frames = [
            model_rows(name, require(audit, f"audit of {name}")) for name, audit in audits.items()
        ]
        table = pd.concat(frames, ignore_index=True)
        table.to_parquet(scratch / PREDICTIONS_FILE, index=False)
        digest = sha256_file(scratch / PREDICTIONS_FILE)
        manifest = {"file": PREDICTIONS_FILE, "sha256": digest, "models": list(audits)}
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    return materialize("predictions", {"audits": audits}, build, out_dir)


def audit_digests(parameters: Mapping[str, Any]) -> Mapping[str, Any]:
    """What the key covers: each audit's content digest, by model name (not the MLflow run an
    audit result also carries: the DVC stage reads the audits from their folders)."""
    audits = parameters.get("audits") or {}
    return {
        **parameters,
        "audits": {name: {"digest": audit["digest"]} for name, audit in audits.items()},
    }


def read_predictions(artifact: Mapping[str, Any]) -> pd.DataFrame:
    """The table a `predictions` artifact holds."""
    return pd.read_parquet(require(artifact, "predictions") / PREDICTIONS_FILE)


STAGE = Stage(
    name="predictions",
    function=write_predictions,
    run_name=lambda p: f"predictions of {len(p['audits'])} models",
    inputs=("audits",),
    key=audit_digests,
    out=paths.AUDIT_PREDICTIONS_DIR.as_posix(),
)
