"""The embedded digits source, deterministic stratified splits, the Parquet format and digests."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from compalign.config import DataParams
from compalign.data import (
    DATASET_FILE,
    build_table,
    load_split,
    read_manifest,
    write_prepared,
)
from compalign.errors import UserError


def prepare(tmp_path, **settings):
    table, manifest = build_table(DataParams(**settings))
    return write_prepared(table, manifest, tmp_path)


def test_digits_prepared(tmp_path):
    manifest = prepare(tmp_path)
    assert manifest["num_examples"] == 1797
    assert sum(manifest["splits"].values()) == 1797
    assert manifest["splits"]["test"] == pytest.approx(0.25 * 1797, abs=10)
    assert manifest["splits"]["val"] == pytest.approx(0.15 * 1797, abs=10)
    assert manifest["image_shape"] == [8, 8, 1] and manifest["num_classes"] == 10
    table = pq.read_table(tmp_path / DATASET_FILE)
    assert table.column_names == ["example_id", "split", "label", "image"]
    assert table.column("example_id").to_pylist()[:2] == ["digits-0000", "digits-0001"]
    test = load_split(tmp_path, "test", manifest)
    assert test.images.shape == (manifest["splits"]["test"], 1, 8, 8)
    assert test.images.max() == 255 and test.images.min() == 0


def test_splits_are_deterministic_stratified_and_disjoint(tmp_path):
    first = prepare(tmp_path / "a", seed=3)
    second = prepare(tmp_path / "b", seed=3)
    other = prepare(tmp_path / "c", seed=4)
    assert first["sha256"] == second["sha256"] != other["sha256"]
    ids = {
        name: set(load_split(tmp_path / "a", name).example_ids) for name in ("train", "val", "test")
    }
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    for name in ("train", "val", "test"):
        labels = load_split(tmp_path / "a", name).labels.numpy()
        shares = np.bincount(labels, minlength=10) / len(labels)
        assert shares.min() > 0.07 and shares.max() < 0.13  # each class ~10% of every split


def test_limit_keeps_a_seeded_subset_per_split(tmp_path):
    manifest = prepare(tmp_path, limit=50)
    assert manifest["splits"] == {"train": 50, "val": 50, "test": 50}


def test_image_size_resizes(tmp_path):
    manifest = prepare(tmp_path, image_size=16, limit=20)
    assert manifest["image_shape"] == [16, 16, 1]
    assert load_split(tmp_path, "train").images.shape[1:] == (1, 16, 16)


def test_normalisation_statistics_from_training_split(tmp_path):
    manifest = prepare(tmp_path)
    train = load_split(tmp_path, "train", manifest)
    normalised = train.normalise(train.images)
    assert float(normalised.mean()) == pytest.approx(0.0, abs=1e-3)
    assert float(normalised.std()) == pytest.approx(1.0, abs=1e-2)


def test_changed_dataset_is_refused(tmp_path):
    prepare(tmp_path, limit=20)
    with open(tmp_path / DATASET_FILE, "ab") as handle:
        handle.write(b"x")
    with pytest.raises(UserError, match="does not match its manifest"):
        read_manifest(tmp_path)


def test_missing_prepared_dataset(tmp_path):
    with pytest.raises(UserError, match="run the prepare stage"):
        read_manifest(tmp_path)


def test_rare_classes_are_rare_in_training_only(tmp_path):
    """Meyer & Wong's imbalanced variant: 10% of classes 3 and 8 stay in the training split;
    validation and test keep them all."""
    full = prepare(tmp_path / "full")
    rare = prepare(
        tmp_path / "rare", rare_classes=[3, 8], rare_fraction=0.1, label_groups={"rare": [3, 8]}
    )
    assert rare["group_columns"] == ["rare"]
    train = load_split(tmp_path / "rare", "train")
    full_train = load_split(tmp_path / "full", "train")
    for label in (3, 8):
        assert int((train.labels == label).sum()) == round(
            0.1 * int((full_train.labels == label).sum())
        )
    assert int((train.labels == 4).sum()) == int((full_train.labels == 4).sum())
    assert rare["splits"]["test"] == full["splits"]["test"]
    test = load_split(tmp_path / "rare", "test")
    assert test.groups.rare.tolist() == [int(label in (3, 8)) for label in test.labels.tolist()]
