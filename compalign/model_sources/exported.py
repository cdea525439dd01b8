"""A torch.export program (`torch.export.save(torch.export.export(model, (x,)), path)`): `.pt2`."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import torch

from compalign.errors import UserError
from compalign.model_sources.base import (
    FixedBatch,
    LoadedModel,
    ModelSource,
    Unregistered,
    existing_file,
    fixed_batch_size,
    pickled_object_error,
)

# torch.export.load unpickles (weights_only=False, pickle.loads) these parts of an archive:
# weights or constants saved with "use_pickle" (tensor subclasses), custom and opaque objects,
# and sample inputs that a weights-only load refuses. A program that has any is refused.
PICKLED_PREFIXES = ("custom_obj_", "opaque_obj_")


def check_archive(path: Path) -> None:
    """Refuse a .pt2 archive that loading would unpickle Python objects from; every torch.save
    part in it must load with weights_only=True."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise UserError(f"{path}: not a torch.export program (not a .pt2 archive)") from None
    with archive:
        names = archive.namelist()
        if not any("/models/" in name and name.endswith(".json") for name in names):
            raise UserError(f"{path}: not a torch.export program (no serialized model inside)")
        for name in names:
            if name.endswith(("_weights_config.json", "_constants_config.json")):
                config = json.loads(archive.read(name)).get("config", {})
                for entry in config.values():
                    pickled = entry.get("use_pickle") or str(entry.get("path_name", "")).startswith(
                        PICKLED_PREFIXES
                    )
                    if pickled:
                        raise pickled_object_error(path)
            elif name.endswith(".pt"):
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except pickle.UnpicklingError:
                    raise pickled_object_error(path) from None


def input_shape(program: torch.export.ExportedProgram) -> list:
    """The shape of the program's first user input (ints where fixed, symbols where dynamic)."""
    first = program.graph_signature.user_inputs[0]
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == first:
            return list(node.meta["val"].shape)
    raise UserError("the exported program has no image input")


def load(argument: str, spec: str) -> LoadedModel:
    """A program read with `torch.export.load` after its archive is checked to hold no pickled
    Python objects. A program exported with a fixed batch size runs on any batch (in chunks of
    that size); a fixed image size becomes the default resize and crop of the preprocessing."""
    path = existing_file(argument, spec)
    check_archive(path)
    program = torch.export.load(str(path))
    module = program.module()
    shape = input_shape(program)
    model: torch.nn.Module = Unregistered(module)
    batch = fixed_batch_size(shape)
    if batch is not None:
        model = FixedBatch(module, batch)
    sizes = [value if isinstance(value, int) else None for value in shape[1:]]
    channels, height, width = (sizes + [None, None, None])[:3]
    return LoadedModel(
        model=model,
        source="export",
        spec=spec,
        files=(path,),
        weights=module,
        input_size=(height, width) if height and width else None,
        in_channels=channels,
    )


SOURCE = ModelSource(load, syntax="export:<file> (or a .pt2 file)", suffixes=(".pt2",))
