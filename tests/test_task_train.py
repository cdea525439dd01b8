"""tasks/train.py: the `reference` stage trains once per (data, reference section, device)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tasks.train
from compalign.checkpoint import load_checkpoint, read_checkpoint_manifest
from compalign.config import AlignParams, ReferenceParams
from compalign.data import read_manifest
from compalign.train import TrainConfig
from tasks.infra.store import is_complete
from tasks.train import architecture_of, member_parameters, train_config, train_reference
from tiny_stages import must_not_run, reference_settings, stage_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with stage_store(tmp_path_factory.mktemp("train")) as (data, reference):
        yield data, reference


def test_reference_checkpoint_records_its_data_architecture_and_accuracy(store):
    data, reference = store
    checkpoint = read_checkpoint_manifest(reference["path"])
    assert reference["path"].startswith("artifacts/reference/")
    assert checkpoint["stage"] == "reference"
    assert checkpoint["kind"] == "float"
    assert checkpoint["data_digest"] == data["digest"]
    assert checkpoint["architecture"] == architecture_of("small_cnn", read_manifest(data["path"]))
    assert 0.0 <= checkpoint["val_accuracy"] <= 1.0
    logits = load_checkpoint(reference["path"])(torch.zeros(3, 1, 8, 8))
    assert logits.shape == (3, 10)


def test_same_inputs_reuse_the_checkpoint(store, monkeypatch):
    data, reference = store
    monkeypatch.setattr(tasks.train, "fit", must_not_run)
    assert train_reference(dict(data), reference_settings(), "cpu") == reference


def test_changed_reference_section_trains_another_model(store):
    data, reference = store
    reseeded = train_reference(data, reference_settings(seed=1), "cpu")
    assert reseeded["path"] != reference["path"]
    assert is_complete(Path(reference["path"]))
    first, second = (read_checkpoint_manifest(a["path"]) for a in (reference, reseeded))
    assert first["sha256"] != second["sha256"]  # another seed, other weights


def test_out_dir_gets_a_copy(store, monkeypatch):
    data, reference = store
    monkeypatch.setattr(tasks.train, "fit", must_not_run)
    copied = train_reference(data, reference_settings(), "cpu", out_dir="models/reference")
    assert copied == {"path": "models/reference", "digest": reference["digest"]}
    assert json.loads(Path("models/reference/manifest.json").read_text())["stage"] == "reference"


def test_architecture_of_reads_the_prepared_image_shape():
    manifest = {"image_shape": [32, 32, 3], "num_classes": 100}
    assert architecture_of("resnet20", manifest) == {
        "name": "resnet20",
        "num_classes": 100,
        "in_channels": 3,
        "image_size": 32,
    }


def test_train_config_takes_the_training_settings_of_either_section():
    reference = ReferenceParams(model="resnet20", epochs=3, lr=0.1, optimizer="adamw", seed=4)
    assert train_config(reference) == TrainConfig(
        epochs=3,
        batch_size=64,
        optimizer="adamw",
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        augment=False,
        seed=4,
    )
    align = AlignParams(epochs=2, losses=["kd"], tune=True)
    assert train_config(align).epochs == 2
    assert train_config(align).lr == AlignParams().lr


def test_member_parameters_give_each_seed_its_own_entry():
    data = {"path": "artifacts/prepare/x", "digest": "d"}
    parameters = {"data": data, "reference": reference_settings(), "seeds": [3, 4], "device": "cpu"}
    members = member_parameters(parameters)
    assert [member["reference"]["seed"] for member in members] == [3, 4]
    for member in members:
        assert member["data"] == data and member["device"] == "cpu"
        assert member["vectorised"] is True  # never the entry of a one-at-a-time training
        assert {**member["reference"], "seed": 0} == reference_settings()
