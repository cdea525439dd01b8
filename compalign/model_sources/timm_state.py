"""A timm architecture with your weights: `timm:<name>@<file>`, the file a state dict
(torch.save or safetensors, as timm writes them)."""

from __future__ import annotations

import difflib

import torch

from compalign.errors import UserError
from compalign.model_sources.base import (
    LoadedModel,
    ModelSource,
    load_weights_into,
    read_state_dict,
    split_name_file,
)
from compalign.models import timm_architecture
from compalign.preprocess import TransformParams, timm_resize


def data_transform(model: torch.nn.Module) -> TransformParams:
    """timm's evaluation transform for `model` (`timm.data.resolve_data_config`): resize to
    input size / crop_pct, centre crop, mean, std, interpolation."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    channels, height, _ = config["input_size"]
    interpolation = config.get("interpolation", "bilinear")
    return TransformParams(
        resize=timm_resize(height, config.get("crop_pct", 1.0)),
        centre_crop=height,
        mean=[float(value) for value in config["mean"]],
        std=[float(value) for value in config["std"]],
        channels=channels if channels in (1, 3) else None,
        interpolation=interpolation
        if interpolation in ("bilinear", "bicubic", "nearest")
        else None,
    )


def load(argument: str, spec: str) -> LoadedModel:
    """A timm model (`timm.create_model(name, pretrained=False)`) with the weights of a state
    dict file; the class count is read from the weights of its classifier
    (`default_cfg["classifier"]`), the preprocessing from `timm.data.resolve_data_config`."""
    import timm

    name, path = split_name_file(argument, spec, "timm")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"model {spec!r}: {name!r} is not a timm model{hint}")
    state = read_state_dict(path)
    with torch.random.fork_rng():
        probe = timm.create_model(name, pretrained=False)
        classifier = probe.default_cfg.get("classifier")
        classifier = classifier[0] if isinstance(classifier, list | tuple) else classifier
        weight = state.get(f"{classifier}.weight")
        num_classes = int(weight.shape[0]) if weight is not None else probe.num_classes
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    load_weights_into(model, state, spec)
    return LoadedModel(
        model=model,
        source="timm",
        spec=spec,
        files=(path,),
        weights=model,
        num_classes=num_classes,
        transform=data_transform(model),
        eager=True,
        architecture={"source": "timm", "name": name, "num_classes": num_classes},
    )


SOURCE = ModelSource(load, syntax="timm:<architecture>@<state dict file>", build=timm_architecture)
