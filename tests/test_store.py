"""The content-addressed store: keys, atomic entries, stale Prefect records."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from compalign.config import DataParams
from tasks.data import prepare
from tasks.infra import store


def manifest_builder(calls):
    def build(scratch):
        calls.append(scratch)
        (scratch / "out.txt").write_text("result")
        (scratch / store.MANIFEST).write_text(
            json.dumps({"file": "out.txt", "sha256": store.sha256_file(scratch / "out.txt")})
        )

    return build


def test_key_depends_on_digests_and_params_not_paths():
    base = {"data": {"path": "a/b", "digest": "d1"}, "reference": {"epochs": 3}}
    moved = {
        "data": {"path": "elsewhere", "digest": "d1"},
        "reference": {"epochs": 3},
        "out_dir": "x",
    }
    key = store.stage_key("reference", base)
    assert key == store.stage_key("reference", moved)
    assert key != store.stage_key("reference", {**base, "reference": {"epochs": 4}})
    assert key != store.stage_key("reference", {**base, "data": {"path": "a/b", "digest": "d2"}})
    assert key != store.stage_key("align", base)
    assert key.startswith("reference-")


def test_materialize_builds_once_and_copies_to_out_dir(project):
    calls = []
    first = store.materialize("prepare", {"x": 1}, manifest_builder(calls))
    second = store.materialize("prepare", {"x": 1}, manifest_builder(calls), out_dir="view")
    assert len(calls) == 1
    assert first["digest"] == second["digest"]
    assert (project / "view" / "out.txt").read_text() == "result"


def test_failed_build_leaves_no_entry(project):
    def broken(scratch):
        (scratch / "half.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.materialize("prepare", {"x": 2}, broken)
    entry = store.entry_dir(store.stage_key("prepare", {"x": 2}))
    assert not entry.exists()
    assert not list(entry.parent.glob(".tmp-*"))


def test_cache_key_drops_stale_prefect_record(project):
    """A Prefect result record whose store entry was deleted by hand is dropped, so the task
    runs again instead of returning a path that no longer exists."""
    key_fn = store.prefect_cache_key("prepare")
    key = key_fn(None, {"x": 3})
    store.PREFECT_RESULTS_DIR.mkdir(parents=True)
    record = store.PREFECT_RESULTS_DIR / key
    record.write_text("{}")
    assert key_fn(None, {"x": 3}) == key
    assert not record.exists()
    store.materialize("prepare", {"x": 3}, manifest_builder([]))
    # a record as Prefect writes it with the project's JSON serializer (plain_json_record)
    plain = {"metadata": {"serializer": store.JSON_SERIALIZER}, "result": '{"path": "p"}'}
    record.write_text(json.dumps(plain))
    key_fn(None, {"x": 3})
    assert record.exists()


def test_require_refuses_changed_inputs(project):
    artifact = store.materialize("prepare", {"x": 4}, manifest_builder([]))
    (project / artifact["path"] / store.MANIFEST).write_text("{}")
    with pytest.raises(store.UserError, match="changed since it was made"):
        store.require(artifact, "dataset")


def test_prepare_key_covers_the_images_on_disk(project):
    """Adding an image to an image folder changes the prepare stage's key, so `prepare` builds a
    new entry; Prefect's key (the task's own parameters, out_dir included) is materialize's."""
    root = project / "images"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for index in range(8):
            Image.new("L", (8, 8), 10 * index).save(root / label / f"{index:02d}.png")
    data = DataParams(source="imagefolder", root=str(root)).model_dump()
    key = store.stage_key("prepare", {"data": data})
    assert store.prefect_cache_key("prepare")(None, {"data": data, "out_dir": None}) == key
    first = prepare(data)
    assert first["path"] == store.entry_dir(key).as_posix()
    assert store.stage_key("prepare", {"data": data}) == key  # unchanged folder, same key

    Image.new("L", (8, 8)).save(root / "dog" / "08.png")
    assert store.stage_key("prepare", {"data": data}) != key
    second = prepare(data)
    assert second["path"] != first["path"]
    assert json.loads((project / second["path"] / store.MANIFEST).read_text())["num_examples"] == 17


def test_tune_budget_enters_the_align_key_only_when_tuning():
    """Prefect hands the cache key every argument (tune_budget with tune off too); the task
    hands materialize tune_budget only when tuning: both give the same key."""
    from tasks.infra.store import stage_key

    parameters = {"method": "magnitude_global", "level": 0.9, "loss": "kd", "tune": False}
    assert stage_key("align", {**parameters, "tune_budget": 6}) == stage_key("align", parameters)
    assert stage_key("align", {**parameters, "tune_budget": None}) == stage_key("align", parameters)
    tuned = {**parameters, "tune": True}
    assert stage_key("align", {**tuned, "tune_budget": 6}) != stage_key("align", tuned)
