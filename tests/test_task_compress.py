"""tasks/compress.py: the `compress` stage writes one checkpoint per compression, with the
compressor and the sparsity it reached; calibration batches are a fixed sample."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tasks.compress
from compalign.checkpoint import load_checkpoint, read_checkpoint_manifest
from compalign.models import build_model
from compalign.pruning import weight_sparsity
from tasks.compress import calibration_data, compress
from tasks.infra.store import is_complete
from tiny_stages import must_not_run, stage_store

CALIBRATION = {"batches": 2, "batch_size": 8}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with stage_store(tmp_path_factory.mktemp("compress")) as made:
        yield made


@pytest.fixture(scope="module")
def pruned(store):
    _, reference = store
    return compress(None, reference, "magnitude_global", 0.9, {})


def test_pruned_checkpoint_records_the_compressor_and_the_measured_sparsity(store, pruned):
    manifest = read_checkpoint_manifest(pruned["path"])
    assert pruned["path"].startswith("artifacts/compress/")
    assert manifest["stage"] == "compress"
    assert manifest["compressor"] == "magnitude_global"
    assert manifest["kind"] == "float"
    assert manifest["sparsity"] == 0.9
    assert manifest["measured_sparsity"] == pytest.approx(0.9, abs=0.01)
    assert manifest["importance_loss"] is None
    assert manifest["architecture"] == read_checkpoint_manifest(store[1]["path"])["architecture"]
    model = load_checkpoint(pruned["path"])
    assert weight_sparsity(model) == pytest.approx(manifest["measured_sparsity"])


def test_same_compression_reuses_the_checkpoint(store, pruned, monkeypatch):
    _, reference = store
    monkeypatch.setattr(tasks.compress, "load_checkpoint", must_not_run)
    assert compress(None, dict(reference), "magnitude_global", 0.9, {}) == pruned


def test_another_level_is_another_checkpoint(store, pruned):
    _, reference = store
    half = compress(None, reference, "magnitude_global", 0.5, {})
    assert half["path"] != pruned["path"]
    assert is_complete(Path(pruned["path"]))
    assert read_checkpoint_manifest(half["path"])["measured_sparsity"] == pytest.approx(
        0.5, abs=0.01
    )


def test_quantizer_checkpoint_has_its_kind_and_no_level(store):
    _, reference = store
    quantized = compress(None, reference, "quantize_dynamic", None, {})
    manifest = read_checkpoint_manifest(quantized["path"])
    assert manifest["compressor"] == "quantize_dynamic"
    assert manifest["kind"] == "quantize_dynamic"
    assert manifest["sparsity"] is None
    assert manifest["measured_sparsity"] == 0.0
    assert load_checkpoint(quantized["path"])(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_calibrated_quantizer_uses_the_training_data(store):
    data, reference = store
    quantized = compress(data, reference, "quantize_static", None, {}, CALIBRATION)
    manifest = read_checkpoint_manifest(quantized["path"])
    assert manifest["kind"] == "quantize_static"
    assert load_checkpoint(quantized["path"])(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_calibration_batches_are_a_fixed_sample_of_training_batches(store):
    data, reference = store
    first = calibration_data(data, Path(reference["path"]), CALIBRATION, None, None)
    again = calibration_data(data, Path(reference["path"]), CALIBRATION, None, None)
    assert [batch.shape for batch in first.batches] == [(8, 1, 8, 8)] * 2
    assert all(torch.equal(a, b) for a, b in zip(first.batches, again.batches, strict=True))
    assert first.gradient_fn is None
    # more batches asked for than the split holds: every training example once
    everything = calibration_data(
        data, Path(reference["path"]), {"batches": 9, "batch_size": 8}, None, None
    )
    assert [len(batch) for batch in everything.batches] == [8, 8, 4]


def test_calibration_with_a_loss_fills_the_gradients_of_the_model(store):
    data, reference = store
    calibration = calibration_data(data, Path(reference["path"]), CALIBRATION, "kd", {})
    model = build_model("small_cnn", num_classes=10, in_channels=1, image_size=8, seed=3)
    calibration.gradient_fn(model)
    gradients = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(grad is not None for grad in gradients)
    assert any(grad.abs().sum() > 0 for grad in gradients)
