"""Stage `predict`: one model's predicted labels on the test split (population members)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from compalign.checkpoint import load_checkpoint
from compalign.data import load_split, read_manifest
from compalign.files import sha256_file
from compalign.train import predict_logits
from tasks.infra.stage import Stage, short_digest
from tasks.infra.store import MANIFEST, Artifact, materialize, require

PREDICTIONS_FILE = "predictions.npy"


def predict(data: Artifact, model: Artifact, batch_size: int, device: str) -> Artifact:
    """Predicted labels (int64 [N], test split order) of the model in `model`."""

    def build(scratch: Path) -> None:
        data_dir = require(data, "prepared dataset")
        test = load_split(data_dir, "test", read_manifest(data_dir))
        logits = predict_logits(
            load_checkpoint(require(model, "checkpoint")), test, batch_size, device
        )
        np.save(scratch / PREDICTIONS_FILE, logits.argmax(1).numpy().astype(np.int64))
        digest = sha256_file(scratch / PREDICTIONS_FILE)
        (scratch / MANIFEST).write_text(
            json.dumps({"file": PREDICTIONS_FILE, "sha256": digest}) + "\n"
        )

    parameters = {"data": data, "model": model, "batch_size": batch_size, "device": device}
    return materialize("predict", parameters, build)


def load_predictions(artifact: Artifact) -> np.ndarray:
    """The predicted labels a `predict` artifact holds."""
    return np.load(require(artifact, "predictions") / PREDICTIONS_FILE)


STAGE = Stage(
    name="predict",
    function=predict,
    run_name=lambda p: f"predict model {short_digest(p['model'])}",
    inputs=("data", "model"),
)
