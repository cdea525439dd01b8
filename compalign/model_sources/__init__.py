"""The registry of model sources: one module per way of storing a trained classifier.

A spec names a model: `NAME:ARGUMENT` for a source of this registry (`torchvision:resnet18@w.pt`,
`onnx:model.onnx`), or a bare path whose form says its source (a folder: a compalign checkpoint;
`.pt`/`.ts`: TorchScript; `.pt2`: torch.export; `.onnx`: ONNX). Adding a source is one module
here (its loader and `SOURCE`), one line in MODEL_SOURCES and one test.
"""

from __future__ import annotations

from pathlib import Path

from compalign.errors import UserError
from compalign.model_sources import (
    checkpoint,
    exported,
    onnx_file,
    timm_state,
    torchscript,
    torchvision_state,
)
from compalign.model_sources.base import SAFE_FORMATS, LoadedModel, ModelSource

MODEL_SOURCES: dict[str, ModelSource] = {
    "checkpoint": checkpoint.SOURCE,
    "torchvision": torchvision_state.SOURCE,
    "timm": timm_state.SOURCE,
    "torchscript": torchscript.SOURCE,
    "export": exported.SOURCE,
    "onnx": onnx_file.SOURCE,
}


def parse_spec(spec: str) -> tuple[str, str]:
    """(source name, its argument) of a model spec; UserError with the accepted forms."""
    name, colon, argument = spec.partition(":")
    if colon and name in MODEL_SOURCES:
        if not argument:
            raise UserError(
                f"model {spec!r}: nothing after {name}:; write {MODEL_SOURCES[name].syntax}"
            )
        return name, argument
    path = Path(spec).expanduser()
    if path.is_dir():
        return next(key for key, entry in MODEL_SOURCES.items() if entry.directory), spec
    for key, entry in MODEL_SOURCES.items():
        if path.suffix.lower() in entry.suffixes:
            return key, spec
    forms = "; ".join(entry.syntax for entry in MODEL_SOURCES.values())
    if colon and "/" not in name and "\\" not in name:
        raise UserError(f"model {spec!r}: unknown model source {name!r}; write one of: {forms}")
    if not path.exists():
        raise UserError(f"model {spec!r}: no such file or folder; write one of: {forms}")
    raise UserError(f"model {spec!r}: cannot tell the format from its name; write one of: {forms}")


def spec_files(spec: str) -> list[Path]:
    """The files a spec reads, found without loading it (for content digests): NAME@FILE's
    file, a checkpoint folder's model.pt, else the path itself."""
    name, argument = parse_spec(spec)
    if "@" in argument and MODEL_SOURCES[name].build is not None:
        return [Path(argument.partition("@")[2]).expanduser()]
    path = Path(argument).expanduser()
    return [path / "model.pt"] if MODEL_SOURCES[name].directory else [path]


def load_model(spec: str) -> LoadedModel:
    """The model a spec names, loaded on the CPU in eval mode."""
    name, argument = parse_spec(spec)
    return MODEL_SOURCES[name].load(argument, spec)


__all__ = [
    "MODEL_SOURCES",
    "SAFE_FORMATS",
    "LoadedModel",
    "ModelSource",
    "load_model",
    "parse_spec",
    "spec_files",
]
