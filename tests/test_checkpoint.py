"""Checkpoints: round trip, digest check, weights_only loading."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from compalign.checkpoint import CHECKPOINT_FILE, MANIFEST_FILE, load_checkpoint, save_checkpoint
from compalign.compressors import COMPRESSORS
from compalign.errors import UserError
from compalign.files import sha256_file
from compalign.models import build_model
from compalign.pruning import masks_of

ARCH = {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "image_size": 8}


def test_round_trip_keeps_outputs_and_masks(tmp_path):
    model = COMPRESSORS["magnitude_global"](build_model(**ARCH, seed=3), 0.8).eval()
    manifest = save_checkpoint(model, ARCH, tmp_path, stage="compress")
    assert manifest["sha256"] == sha256_file(tmp_path / CHECKPOINT_FILE)
    loaded = load_checkpoint(tmp_path).eval()
    images = torch.randn(4, 1, 8, 8)
    assert torch.allclose(model(images), loaded(images))
    assert masks_of(loaded).keys() == masks_of(model).keys()
    assert all(torch.equal(masks_of(loaded)[k], v) for k, v in masks_of(model).items())


def test_changed_checkpoint_is_refused(tmp_path):
    save_checkpoint(build_model(**ARCH), ARCH, tmp_path)
    with open(tmp_path / CHECKPOINT_FILE, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(UserError, match="does not match its manifest"):
        load_checkpoint(tmp_path)


def test_missing_manifest_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


class Payload:
    """Arbitrary code a pickle could run: weights_only loading must refuse it."""


def test_loading_is_weights_only(tmp_path):
    torch.save({"format": 1, "evil": Payload()}, tmp_path / CHECKPOINT_FILE)
    manifest = {"file": CHECKPOINT_FILE, "sha256": sha256_file(tmp_path / CHECKPOINT_FILE)}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="refused: the file holds pickled Python objects") as caught:
        load_checkpoint(tmp_path)
    assert isinstance(caught.value.__cause__, pickle.UnpicklingError)
    assert "Weights only load failed" in str(caught.value.__cause__)


ROUND_TRIPS = [
    ("magnitude_global", 0.8, {}),
    ("magnitude_layerwise", 0.6, {}),
    ("random", 0.5, {"seed": 3}),
    ("gradual_magnitude", 0.7, {}),
    ("structured", 0.5, {"importance": "l1"}),
    ("quantize_dynamic", None, {}),
    ("quantize_dynamic", None, {"backend": "eager"}),
    ("quantize_static", None, {}),
    ("quantize_static", None, {"backend": "fx"}),
    ("half", None, {"dtype": "bfloat16"}),
    ("half", None, {"dtype": "float16"}),
]
# trains while it prunes (the training split, an alignment loss, the reference): its round trip
# is in tests/test_taylor_iterative.py, with those
NEEDS_TRAINING = {"taylor_iterative"}
# every other registered compressor, at its defaults: a new one is covered without listing it
ROUND_TRIPS += [
    (name, 0.5 if entry.uses_level else None, {})
    for name, entry in COMPRESSORS.items()
    if name not in {method for method, _, _ in ROUND_TRIPS} | NEEDS_TRAINING
]


@pytest.mark.parametrize(("method", "level", "options"), ROUND_TRIPS)
def test_every_compressor_round_trips(tmp_path, method, level, options):
    """Save -> load (weights_only) gives the same model: pruned masks, new shapes after
    structured pruning, int8 modules, half weights."""
    from compalign.compressors import COMPRESSORS, Calibration
    from compalign.train import runs_on

    generator = torch.Generator().manual_seed(0)
    calibration = Calibration([torch.randn(16, 1, 8, 8, generator=generator) for _ in range(2)])
    model = COMPRESSORS[method](build_model(**ARCH, seed=1), level, options, calibration).eval()
    compressor = COMPRESSORS[method]
    kind = method if compressor.family.quantized else "float"
    manifest = save_checkpoint(model, ARCH, tmp_path, kind=kind, options=options)
    assert manifest["kind"] == kind
    loaded = load_checkpoint(tmp_path)
    images = torch.randn(6, 1, 8, 8, generator=generator)
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
    assert runs_on(loaded, "cuda").type == ("cuda" if kind == "float" else "cpu")
    if method == "structured":
        assert sum(p.numel() for p in loaded.parameters()) < 0.7 * sum(
            p.numel() for p in build_model(**ARCH).parameters()
        )
    if compressor.family.name in ("unstructured", "gradual"):
        assert masks_of(loaded).keys() == masks_of(model).keys()


def test_format_3_int8_checkpoint_loads_with_the_torch_ao_path(tmp_path):
    """A static int8 checkpoint written before PT2E (format 3, no backend saved) is rebuilt with
    FX graph mode, the path that made it."""
    from compalign.compressors.quantize_static import quantize_static

    generator = torch.Generator().manual_seed(0)
    model = quantize_static(
        build_model(**ARCH, seed=1).eval(), [torch.randn(16, 1, 8, 8, generator=generator)], "fx"
    )
    save_checkpoint(model, ARCH, tmp_path, kind="quantize_static", options={"backend": "fx"})
    path = tmp_path / CHECKPOINT_FILE
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "format": 3, "options": {}}, path)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({**manifest, "sha256": sha256_file(path)}))
    images = torch.randn(6, 1, 8, 8, generator=generator)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(tmp_path)(images), model(images))


@pytest.mark.parametrize("backend", ["pt2e", "fx"])
def test_static_int8_checkpoints_of_one_structure_are_traced_once(tmp_path, monkeypatch, backend):
    """Loading traces an empty int8 model once per structure and process and copies it after:
    two checkpoints of one structure (different weights and ranges) each load exactly, in either
    order and again, so loading one changes nothing of another."""
    from compalign import checkpoint
    from compalign.compressors import Calibration
    from compalign.compressors import quantize_static as static

    monkeypatch.setattr(checkpoint, "_TRACED", {})
    traced = []
    quantize = static.quantize_static
    monkeypatch.setattr(
        static, "quantize_static", lambda *args: traced.append(args) or quantize(*args)
    )
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 1, 8, 8, generator=generator)
    options = {"backend": backend}
    saved = []
    for seed in (1, 2):
        batches = [torch.randn(16, 1, 8, 8, generator=generator) * seed]
        model = COMPRESSORS["quantize_static"](
            build_model(**ARCH, seed=seed), None, options, Calibration(batches)
        ).eval()
        save_checkpoint(model, ARCH, tmp_path / str(seed), kind="quantize_static", options=options)
        saved.append((tmp_path / str(seed), model))
    traced.clear()
    with torch.no_grad():
        outputs = [model(images) for _, model in saved]
        assert not torch.equal(*outputs)
        pairs = list(zip([folder for folder, _ in saved], outputs, strict=True))
        for folder, expected in [*pairs, *pairs[::-1]]:
            assert torch.equal(load_checkpoint(folder)(images), expected)
    assert len(traced) == 1
