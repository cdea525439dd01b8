"""A torchvision classification architecture with your weights: `torchvision:<name>@<file>`,
the file a state dict (torch.save(model.state_dict()) or safetensors)."""

from __future__ import annotations

import difflib

import torch

from compalign.errors import UserError
from compalign.model_sources.base import (
    LoadedModel,
    ModelSource,
    last_linear_classes,
    load_weights_into,
    read_state_dict,
    split_name_file,
)
from compalign.models import torchvision_architecture
from compalign.preprocess import TransformParams


def architectures() -> list[str]:
    """torchvision's classification architectures (not detection or segmentation)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def default_transform(name: str) -> TransformParams | None:
    """The evaluation transform of the architecture's DEFAULT weights (metadata only: nothing
    is downloaded): resize, centre crop, mean, std, interpolation."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None
    preset = weights.transforms()
    return TransformParams(
        resize=int(preset.resize_size[0]),
        centre_crop=int(preset.crop_size[0]),
        mean=[float(value) for value in preset.mean],
        std=[float(value) for value in preset.std],
        interpolation=preset.interpolation.value,
    )


def load(argument: str, spec: str) -> LoadedModel:
    """A torchvision classification model (`torchvision.models.get_model(name)`) with the
    weights of a state dict file; the class count is read from the weights' last linear layer,
    the preprocessing from the architecture's default weights' `transforms()` (ImageNet's)."""
    name, path = split_name_file(argument, spec, "torchvision")
    known = architectures()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"model {spec!r}: {name!r} is not a torchvision classification model{hint}")
    state = read_state_dict(path)
    with torch.random.fork_rng():  # random initial weights, replaced below: leave the RNG alone
        num_classes = last_linear_classes(torchvision_architecture(name, None), state)
        model = torchvision_architecture(name, num_classes)
    load_weights_into(model, state, spec)
    return LoadedModel(
        model=model,
        source="torchvision",
        spec=spec,
        files=(path,),
        weights=model,
        num_classes=num_classes,
        transform=default_transform(name),
        eager=True,
        architecture={"source": "torchvision", "name": name, "num_classes": num_classes},
    )


SOURCE = ModelSource(
    load, syntax="torchvision:<architecture>@<state dict file>", build=torchvision_architecture
)
