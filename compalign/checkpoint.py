"""Checkpoints: a state dict plus what is needed to rebuild the model, with a digest manifest.

A checkpoint directory holds `model.pt` (loaded with `weights_only=True`: tensors and plain
Python values only, never pickled code) and `manifest.json` with its sha256. A file whose digest
does not match its manifest is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compalign.compress import apply_masks, masks_of, plain_state_dict
from compalign.errors import UserError
from compalign.files import sha256_file
from compalign.models import build_model

CHECKPOINT_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


def save_checkpoint(
    model: nn.Module, architecture: dict[str, Any], out_dir: str | Path, **metadata: Any
) -> dict[str, Any]:
    """Write `model` (masks kept separately) to out_dir/model.pt and its manifest; return it.

    `architecture` holds build_model's arguments: name, num_classes, in_channels, image_size.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT_VERSION,
        "architecture": dict(architecture),
        "state_dict": plain_state_dict(model),
        "masks": masks_of(model),
    }
    path = out_dir / CHECKPOINT_FILE
    torch.save(payload, path)
    manifest = {
        "file": CHECKPOINT_FILE,
        "sha256": sha256_file(path),
        "architecture": dict(architecture),
        **metadata,
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_checkpoint_manifest(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The manifest of a checkpoint directory (no digest check)."""
    path = Path(checkpoint_dir) / MANIFEST_FILE
    if not path.is_file():
        raise UserError(f"{checkpoint_dir}: not a checkpoint (missing {MANIFEST_FILE})")
    return json.loads(path.read_text())


def load_checkpoint(checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved in `checkpoint_dir`, masks re-applied, after checking its digest."""
    checkpoint_dir = Path(checkpoint_dir)
    manifest = read_checkpoint_manifest(checkpoint_dir)
    path = checkpoint_dir / manifest["file"]
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file is missing; rerun the stage that writes it")
    actual = sha256_file(path)
    if actual != manifest["sha256"]:
        raise UserError(
            f"{path}: sha256 {actual[:12]} does not match its manifest ({manifest['sha256'][:12]}); "
            "the checkpoint was changed or corrupted: delete it and rerun the stage that wrote it"
        )
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {payload.get('format')} is not supported")
    architecture = payload["architecture"]
    model = build_model(
        architecture["name"],
        architecture["num_classes"],
        architecture["in_channels"],
        architecture["image_size"],
    )
    model.load_state_dict(payload["state_dict"])
    apply_masks(model, payload["masks"])
    return model.to(device)
