"""tasks/predictions.py: the predictions stage's table, from hand-made audit folders."""

from __future__ import annotations

import json

import pandas as pd

from tasks.infra.store import MANIFEST
from tasks.predictions import COLUMNS, model_rows


def audit_folder(directory, table: pd.DataFrame, labels: dict) -> None:
    directory.mkdir(parents=True)
    table.to_parquet(directory / "table.parquet", index=False)
    manifest = {"file": "table.parquet", "labels": labels}
    (directory / MANIFEST).write_text(json.dumps(manifest))


def test_a_compressed_models_rows_compare_it_with_the_reference(tmp_path):
    table = pd.DataFrame(
        {
            "example_id": [10, 11, 12],
            "label": [0, 1, 2],
            "reference_prediction": [0, 1, 1],
            "compressed_prediction": [0, 2, 1],
            "compressed_confidence": [0.9, 0.6, 0.7],
        }
    )
    labels = {"role": "compressed", "compressor": "magnitude_global", "sparsity": 0.9, "loss": "ce"}
    audit_folder(tmp_path / "m", table, labels)
    rows = model_rows("m", tmp_path / "m")
    assert list(rows.columns) == list(COLUMNS)
    assert rows["model"].unique().tolist() == ["m"]
    assert rows[["compressor", "sparsity", "loss", "level_kind"]].iloc[0].tolist() == [
        "magnitude_global",
        "0.9",
        "ce",
        "",
    ]
    assert rows["prediction"].tolist() == [0, 2, 1]
    assert rows["correct"].tolist() == [True, False, False]
    assert rows["mismatch"].tolist() == [False, True, False]
    assert rows["reference_prediction"].tolist() == [0, 1, 1]


def test_the_references_rows_have_no_mismatch(tmp_path):
    table = pd.DataFrame(
        {"example_id": [1, 2], "label": [1, 0], "prediction": [1, 1], "confidence": [0.8, 0.5]}
    )
    audit_folder(tmp_path / "reference", table, {"role": "reference"})
    rows = model_rows("reference", tmp_path / "reference")
    assert rows["reference_prediction"].tolist() == rows["prediction"].tolist() == [1, 1]
    assert not rows["mismatch"].any()
    assert rows["correct"].tolist() == [True, False]
    assert rows["role"].tolist() == ["reference", "reference"]
