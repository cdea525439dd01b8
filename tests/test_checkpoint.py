"""Checkpoints: round trip, digest check, weights_only loading."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from compalign.checkpoint import CHECKPOINT_FILE, MANIFEST_FILE, load_checkpoint, save_checkpoint
from compalign.compress import COMPRESSORS, masks_of
from compalign.errors import UserError
from compalign.files import sha256_file
from compalign.models import build_model

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
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(tmp_path)
