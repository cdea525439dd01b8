"""A torch.export program (`torch.export.save(torch.export.export(model, (x,)), path)`): `.pt2`."""

from __future__ import annotations

import tempfile
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
)
from compalign.model_sources.pt2_archive import (
    check_archive,
    check_contents,
    check_graph,
    quiet_torch_export,
    write_checked_copy,
)


def input_shape(program: torch.export.ExportedProgram) -> list:
    """The shape of the program's first user input (ints where fixed, symbols where dynamic)."""
    first = program.graph_signature.user_inputs[0] if program.graph_signature.user_inputs else None
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == first and "val" in node.meta:
            return list(node.meta["val"].shape)
    raise UserError("the exported program has no image input")


def read_program(path: Path) -> tuple[torch.export.ExportedProgram, torch.nn.Module]:
    """The program and its module, read from a checked copy of the archive
    (compalign.model_sources.pt2_archive says what is checked and why torch's unpickling
    fallback cannot be reached); UserError naming the file for anything torch cannot read."""
    checked = check_archive(path)
    with tempfile.TemporaryDirectory(prefix="compalign-pt2-") as scratch:
        copy = Path(scratch) / "model.pt2"
        try:
            with zipfile.ZipFile(path) as archive:
                check_contents(archive, checked)
                write_checked_copy(archive, checked, copy)
        except (zipfile.BadZipFile, OSError) as error:
            raise UserError(f"{path}: not a readable .pt2 archive ({error})") from None
        try:
            with quiet_torch_export():
                program = torch.export.load(str(copy))
                module = program.module(check_guards=False)  # guards are never executed
        except UserError:
            raise
        except Exception as error:  # torch's deserializer raises many types on a bad program
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            raise UserError(
                f"{path}: not a readable torch.export program ({type(error).__name__}: {first})"
            ) from None
    check_graph(path, module)
    return program, module


def load(argument: str, spec: str) -> LoadedModel:
    """A program read with `torch.export.load` after its archive is checked entry by entry
    (an allow-list of what torch.export.save writes for a CPU program: no pickles, no compiled
    libraries, no code in its expressions or guards). A program exported with a fixed batch
    size runs on any batch (in chunks of that size); a fixed image size becomes the default
    resize and crop of the preprocessing."""
    path = existing_file(argument, spec)
    program, module = read_program(path)
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
