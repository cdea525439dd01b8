"""flows/stages.py: the DVC stages are the table's stages with a DVC output; each runs the run
graph's steps of its stage into its fixed output paths, from the same store the flow uses (the
audit and predictions stages run in test_dvc.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import tasks.compress
from compalign.data import read_manifest
from conftest import ROOT, TINY
from flows.stages import run_stage
from tasks import dvc_stages
from tasks.infra.paths import ALIGNED_DIR, COMPRESSED_DIR, DATA_DIR, REFERENCE_DIR
from tasks.infra.store import artifact_of, entry_dir, is_complete, stage_key
from tiny_stages import must_not_run

OVERRIDES = [
    "data.limit=20",
    "reference.epochs=1",
    "compress.methods=[magnitude_global, quantize_dynamic]",
    "compress.sparsities=[0.5]",
    "align.losses=[none, ce]",
    "align.epochs=1",
    "run.device=cpu",
]


def test_stages_are_the_dvc_stages_in_order():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert dvc_stages() == list(dvc)


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """A project after `compalign stage` prepare, reference, compress and align, each output
    folder holding a stale entry of an earlier run before its stage."""
    from compalign.config import load_params

    params = load_params(TINY, OVERRIDES)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("stages"))
        patch.delenv("COMPALIGN_REFRESH", raising=False)
        for folder in (COMPRESSED_DIR, ALIGNED_DIR):
            (folder / "stale-model").mkdir(parents=True)
        for name in ("prepare", "reference", "compress", "align"):
            run_stage(name, params)
        yield params


def names(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


def test_prepare_and_reference_write_their_fixed_paths(staged):
    data = read_manifest(DATA_DIR)
    assert data["splits"] == {"train": 20, "val": 20, "test": 20}
    reference = json.loads((REFERENCE_DIR / "manifest.json").read_text())
    assert reference["stage"] == "reference"
    assert reference["data_digest"] == artifact_of(DATA_DIR)["digest"]
    # the same store entry the flow's prepare task makes
    assert is_complete(entry_dir(stage_key("prepare", {"data": staged.data.prepare_params()})))


def test_compress_writes_one_folder_per_compressed_model(staged):
    # `none` and `ce` of a pruner share one compressed model; the quantizer has no level; the
    # stale folder of an earlier run is gone
    assert names(COMPRESSED_DIR) == {"magnitude_global-0.5", "quantize_dynamic"}
    manifest = json.loads((COMPRESSED_DIR / "magnitude_global-0.5" / "manifest.json").read_text())
    assert manifest["compressor"] == "magnitude_global" and manifest["sparsity"] == 0.5


def test_align_writes_one_folder_per_fine_tuned_model(staged):
    # neither `none` nor the quantizer is fine-tuned; the stale folder is gone
    assert names(ALIGNED_DIR) == {"magnitude_global-0.5-ce"}
    manifest = json.loads((ALIGNED_DIR / "magnitude_global-0.5-ce" / "manifest.json").read_text())
    assert manifest["loss"] == "ce" and manifest["stage"] == "align"


def test_a_stage_rerun_copies_finished_entries_instead_of_recomputing(staged, monkeypatch):
    before = {name: artifact_of(COMPRESSED_DIR / name) for name in names(COMPRESSED_DIR)}
    monkeypatch.setattr(tasks.compress, "load_checkpoint", must_not_run)
    run_stage("compress", staged)
    assert {name: artifact_of(COMPRESSED_DIR / name) for name in names(COMPRESSED_DIR)} == before
