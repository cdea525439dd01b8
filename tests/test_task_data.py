"""tasks/data.py: the `prepare` stage writes the dataset once per data section."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

import tasks.data
from compalign.files import sha256_file
from tasks.data import prepare
from tasks.infra.store import is_complete
from tiny_stages import TINY_DATA, must_not_run


def manifest(artifact) -> dict:
    return json.loads((Path(artifact["path"]) / "manifest.json").read_text())


def test_prepare_writes_the_dataset_and_its_manifest(project):
    artifact = prepare({**TINY_DATA, "label_groups": {"odd": [1, 3, 5, 7, 9]}})
    directory = project / artifact["path"]
    assert artifact["path"].startswith("artifacts/prepare/")
    assert artifact["digest"] == sha256_file(directory / "manifest.json")
    written = manifest(artifact)
    assert written["source"] == "digits"
    assert written["splits"] == {"train": 20, "val": 20, "test": 20}
    assert written["image_shape"] == [8, 8, 1]
    assert written["group_columns"] == ["odd"]
    table = pd.read_parquet(directory / written["file"])
    assert len(table) == 60
    assert (table.odd == table.label.isin([1, 3, 5, 7, 9])).all()


def test_same_data_section_reuses_the_entry(project, monkeypatch):
    first = prepare(TINY_DATA)
    monkeypatch.setattr(tasks.data, "build_table", must_not_run)
    assert prepare(dict(TINY_DATA)) == first


def test_changed_data_section_makes_another_entry(project):
    first = prepare(TINY_DATA)
    second = prepare({**TINY_DATA, "limit": 10})
    assert second["path"] != first["path"]
    assert manifest(second)["splits"] == {"train": 10, "val": 10, "test": 10}
    assert is_complete(project / first["path"])  # the other entry is kept


def test_out_dir_gets_a_copy_of_the_entry(project):
    stored = prepare(TINY_DATA)
    copied = prepare(TINY_DATA, out_dir="data/prepared")
    assert copied == {"path": "data/prepared", "digest": stored["digest"]}
    assert (project / "data/prepared/dataset.parquet").read_bytes() == (
        project / stored["path"] / "dataset.parquet"
    ).read_bytes()


def test_invalid_data_section_fails_and_leaves_no_entry(project):
    with pytest.raises(ValidationError, match="limit"):
        prepare({**TINY_DATA, "limit": 5})
    assert not list((project / "artifacts" / "prepare").glob("*/manifest.json"))
