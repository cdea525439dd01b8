"""tasks/predict.py: the `predict` stage stores a model's predicted test labels once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tasks.predict
from compalign.checkpoint import load_checkpoint
from compalign.data import load_split, read_manifest
from compalign.train import predict_logits
from tasks.infra.store import is_complete
from tasks.predict import PREDICTIONS_FILE, load_predictions, predict
from tiny_stages import must_not_run, stage_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with stage_store(tmp_path_factory.mktemp("predict")) as made:
        yield made


def test_predictions_are_the_int64_test_labels_of_the_model(store):
    data, reference = store
    artifact = predict(data, reference, 64, "cpu")
    assert artifact["path"].startswith("artifacts/predict/")
    assert is_complete(Path(artifact["path"]))
    predictions = load_predictions(artifact)
    np.testing.assert_array_equal(predictions, np.load(Path(artifact["path"]) / PREDICTIONS_FILE))
    manifest = read_manifest(data["path"])
    assert predictions.dtype == np.int64
    assert predictions.shape == (manifest["splits"]["test"],)
    test = load_split(data["path"], "test", manifest)
    expected = predict_logits(load_checkpoint(reference["path"]), test).argmax(1).numpy()
    np.testing.assert_array_equal(predictions, expected)


def test_same_inputs_reuse_the_predictions(store, monkeypatch):
    data, reference = store
    first = predict(data, reference, 64, "cpu")
    monkeypatch.setattr(tasks.predict, "predict_logits", must_not_run)
    assert predict(dict(data), dict(reference), 64, "cpu") == first


def test_batch_size_changes_the_entry_not_the_labels(store):
    data, reference = store
    first, second = predict(data, reference, 64, "cpu"), predict(data, reference, 7, "cpu")
    assert first["path"] != second["path"]
    np.testing.assert_array_equal(load_predictions(first), load_predictions(second))
