"""Checkpoints: a state dict plus what is needed to rebuild the model, with a digest manifest.

A checkpoint directory holds `model.pt` (loaded with `weights_only=True`: tensors and plain
Python values only, never pickled code) and `manifest.json` with its sha256. A file whose digest
does not match its manifest is refused.

Every kind of compressed model rebuilds from its architecture name and the state dict: a float
model (pruning masks stored separately and re-applied; a structurally pruned model's layers
resized to the saved shapes), or a quantized/half one (an empty model of the right structure is
built, then the saved int8/half state loaded into it).
"""

from __future__ import annotations

import copy
import json
import pickle
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compalign.errors import UserError
from compalign.files import sha256_file
from compalign.models import build_model
from compalign.pruning import apply_masks, folded_state_dict, masks_of, resize_to_state_dict

CHECKPOINT_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"

# 3: the compressor's options are saved (they rebuild a quantized model), not only a half dtype
# 4: int8 models come from torchao (PT2E static, quantize_ dynamic) unless their saved options
#    name another backend; a format-3 int8 checkpoint was made by the torch.ao paths
FORMAT_VERSION = 4
READABLE_FORMATS = {
    3: {"quantize_static": {"backend": "fx"}, "quantize_dynamic": {"backend": "eager"}}
}


def save_checkpoint(
    model: nn.Module,
    architecture: dict[str, Any],
    out_dir: str | Path,
    kind: str = "float",
    options: dict[str, Any] | None = None,
    **metadata: Any,
) -> dict[str, Any]:
    """Write `model` to out_dir/model.pt and its manifest; return the manifest.

    `architecture` holds build_model's arguments: name, num_classes, in_channels, image_size;
    `kind` is "float" (masks kept separately) or the name of the quantizing compressor that
    produced it, whose `options` are saved with it (they rebuild the model). The manifest also
    records `torch_threads`, the calling thread's torch thread count (the thread that trained
    the model, in the pipeline): the count changes how sums round, so the weights depend on it.
    """
    if kind != "float":
        from compalign.compressors import COMPRESSORS

        if kind not in COMPRESSORS or COMPRESSORS[kind].rebuild is None:
            raise ValueError(f"unknown checkpoint kind {kind!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "options": dict(options or {}),
        "architecture": dict(architecture),
        "state_dict": folded_state_dict(model) if kind == "float" else model.state_dict(),
        "masks": masks_of(model) if kind == "float" else {},
    }
    path = out_dir / CHECKPOINT_FILE
    torch.save(payload, path)
    manifest = {
        "file": CHECKPOINT_FILE,
        "sha256": sha256_file(path),
        "kind": kind,
        "architecture": dict(architecture),
        "torch_threads": torch.get_num_threads(),
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
    with warnings.catch_warnings():
        # torch.load of quantized tensors warns from inside torch about its own TypedStorage use
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        # and of a pickle protocol it then refuses (the refusal below is the message)
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise UserError(
                f"{path}: refused: the file holds pickled Python objects, not only tensors "
                "(loaded with weights_only=True, nothing in it was run); delete it and rerun "
                "the stage that wrote it"
            ) from error
    if payload.get("format") != FORMAT_VERSION and payload.get("format") not in READABLE_FORMATS:
        raise UserError(f"{path}: checkpoint format {payload.get('format')} is not supported")
    return rebuild(payload).to(device)


def rebuild(payload: dict[str, Any]) -> nn.Module:
    """The model a checkpoint payload describes, weights loaded, in eval mode."""
    architecture = payload["architecture"]
    model = build_model(**architecture)
    state = payload["state_dict"]
    if payload["kind"] == "float":
        resize_to_state_dict(model, state)
        model.load_state_dict(state)
        return apply_masks(model, payload["masks"]).eval()
    from compalign.compressors import COMPRESSORS

    entry = COMPRESSORS[payload["kind"]]
    size, channels = architecture["image_size"], architecture["in_channels"]
    example = torch.zeros(1, channels, size, size)
    legacy = READABLE_FORMATS.get(payload.get("format"), {}).get(payload["kind"], {})
    options = entry.settings({**legacy, **payload["options"]})
    if entry.traces_globally:  # one trace per structure and process (see _traced_empty)
        model = _traced_empty(entry, model, example, options, payload["kind"], architecture)
    else:
        model = entry.rebuild(model.eval(), example, options)
    model.load_state_dict(state)
    return model.eval()


_TRACED: dict[str, nn.Module] = {}  # empty traced models, by what determines their structure
_TRACED_LOCK = threading.Lock()
_TRACED_MOST = 8


def _traced_empty(
    entry: Any, model: nn.Module, example: torch.Tensor, options: Any, kind: str, architecture: dict
) -> nn.Module:
    """A copy of the empty model `entry.rebuild` traces for this architecture, kind and options,
    traced once per process: its structure depends on nothing else (load_state_dict then sets
    every weight, scale and zero point), and tracing a ResNet-18 with torch.export took 2-4 s
    at every load of a static int8 checkpoint (each audit, prediction and report of one)."""
    key = json.dumps([kind, architecture, options.model_dump(mode="json")], sort_keys=True)
    with _TRACED_LOCK:
        empty = _TRACED.get(key)
    if empty is None:
        empty = entry.rebuild(model.eval(), example, options)
        with _TRACED_LOCK:
            if len(_TRACED) >= _TRACED_MOST:
                _TRACED.pop(next(iter(_TRACED)))
            _TRACED[key] = empty
    return copy.deepcopy(empty)
