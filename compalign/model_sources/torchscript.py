"""A TorchScript file (`torch.jit.script` or `torch.jit.trace`, then `.save`): `.pt` or `.ts`."""

from __future__ import annotations

import warnings

import torch

from compalign.model_sources.base import (
    LoadedModel,
    ModelSource,
    diagnose_torch_file,
    existing_file,
)


def load(argument: str, spec: str) -> LoadedModel:
    """A TorchScript archive read with `torch.jit.load`, which rebuilds TorchScript code and
    tensors and unpickles no Python objects. The file says nothing of the input it expects:
    its preprocessing is the dataset's unless data.transform says otherwise. A file that is no
    TorchScript is diagnosed: a pickled module is refused, a state dict needs its architecture."""
    path = existing_file(argument, spec)
    try:
        with warnings.catch_warnings():
            # reading the TorchScript users already have is the point; we write none
            warnings.filterwarnings("ignore", message=".*torch.jit.load. is deprecated")
            model = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError:
        raise diagnose_torch_file(path, "a TorchScript file") from None
    model.eval()
    return LoadedModel(model=model, source="torchscript", spec=spec, files=(path,), weights=model)


SOURCE = ModelSource(load, syntax="torchscript:<file> (or a .pt/.ts file)", suffixes=(".pt", ".ts"))
