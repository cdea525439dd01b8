"""A compalign checkpoint: a folder with model.pt (a state dict and its architecture) and a
manifest holding its sha256, as the pipeline's stages write them."""

from __future__ import annotations

from pathlib import Path

from compalign.checkpoint import load_checkpoint, read_checkpoint_manifest
from compalign.errors import UserError
from compalign.model_sources.base import LoadedModel, ModelSource


def load(argument: str, spec: str) -> LoadedModel:
    """A compalign checkpoint folder (`artifacts/reference/<key>/`, `models/reference/`, ...):
    rebuilt from its architecture after its digest is checked; its preprocessing is the
    dataset's normalisation, as in the pipeline."""
    folder = Path(argument).expanduser()
    if not folder.is_dir():
        raise UserError(f"model {spec!r}: {folder} is not a checkpoint folder")
    manifest = read_checkpoint_manifest(folder)
    model = load_checkpoint(folder).eval()
    architecture = manifest["architecture"]
    size = architecture.get("image_size")
    return LoadedModel(
        model=model,
        source="checkpoint",
        spec=spec,
        files=(folder / manifest["file"],),
        weights=model,
        num_classes=architecture.get("num_classes"),
        input_size=None if size is None else (size, size),
        in_channels=architecture.get("in_channels"),
        eager=manifest.get("kind", "float") == "float",
        architecture={"source": "checkpoint", **architecture},
    )


SOURCE = ModelSource(load, syntax="checkpoint:<folder> (or the folder itself)", directory=True)
