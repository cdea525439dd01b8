"""A model's own preprocessing, and the dataset classes it predicts.

A prepared dataset holds uint8 images; a model trained elsewhere expects its own input: a size
(resize the shorter side, then centre-crop, as torchvision's and timm's evaluation transforms
do), a channel count and a normalisation. `data.transform` sets any of these; what it leaves
null comes from the model's source where the source knows it (a torchvision architecture's
default weights' `transforms()`, timm's `resolve_data_config`), else from the dataset (its own
per-channel mean and std, no resizing): exactly what compalign's own models see.

`data.class_names` says which model output each dataset class is, when the model's output order
is not the dataset's (sorted folder names) or the model predicts more classes than the data has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from compalign.errors import UserError
from compalign.options import Options

Interpolation = Literal["bilinear", "bicubic", "nearest"]


class TransformParams(Options):
    """`data.transform`: the input the audited models expect; null: the source's, else the
    dataset's."""

    resize: Annotated[int, Field(ge=1, le=4096)] | None = None
    """shorter side resized to this (before the crop)"""
    centre_crop: Annotated[int, Field(ge=1, le=4096)] | None = None
    """square side of the centre crop"""
    mean: list[Annotated[float, Field(allow_inf_nan=False)]] | None = None
    """per channel, of pixels in [0, 1], e.g. [0.485, 0.456, 0.406]"""
    std: list[Annotated[float, Field(gt=0.0, allow_inf_nan=False)]] | None = None
    """per channel, like mean"""
    channels: Literal[1, 3] | None = None
    """1 or 3: grey images repeated to 3, RGB averaged to 1"""
    interpolation: Interpolation | None = None
    """bilinear | bicubic | nearest"""


@dataclass(frozen=True)
class Transform:
    """uint8 images [n, C, H, W] -> the float input of a model. None for resize or centre_crop
    means that step is skipped; mean and std have one value per output channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    centre_crop: int | None = None
    channels: int | None = None
    interpolation: Interpolation = "bilinear"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.from_unit(images.float() / 255.0)

    def from_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Float images with pixels in [0, 1] -> the model's input."""
        if self.channels is not None and x.shape[1] != self.channels:
            x = x.repeat(1, 3, 1, 1) if self.channels == 3 else x.mean(dim=1, keepdim=True)
        if self.resize is not None:
            height, width = x.shape[-2:]
            x = _resized(x, resized_size(height, width, self.resize), self.interpolation)
        if self.centre_crop is not None:
            x = centre_crop(x, self.centre_crop)
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32).view(shape)
        return (x - mean) / std

    def output_shape(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        """[C, H, W] of the model input made from images of this shape."""
        out = torch.zeros(1, channels, height, width, dtype=torch.uint8)
        return tuple(self(out).shape[1:])

    def describe(self) -> str:
        steps = []
        if self.channels is not None:
            steps.append(f"{self.channels} channels")
        if self.resize is not None:
            steps.append(f"resize {self.resize} ({self.interpolation})")
        if self.centre_crop is not None:
            steps.append(f"centre crop {self.centre_crop}")
        mean = ", ".join(f"{value:.3f}" for value in self.mean)
        std = ", ".join(f"{value:.3f}" for value in self.std)
        steps.append(f"mean [{mean}], std [{std}]")
        return "; ".join(steps)


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(H, W) after resizing the shorter side to `shorter`, keeping the aspect ratio."""
    scale = shorter / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resized(x: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    smooth = interpolation != "nearest"
    x = F.interpolate(
        x,
        size=size,
        mode=interpolation,
        antialias=smooth,
        **({"align_corners": False} if smooth else {}),
    )
    return x.clamp(0.0, 1.0) if interpolation == "bicubic" else x


def centre_crop(images: torch.Tensor, side: int) -> torch.Tensor:
    """The centre `side` x `side` square of [n, C, H, W] (torchvision's CenterCrop rounding);
    images smaller than `side` are zero-padded first, as CenterCrop does."""
    height, width = images.shape[-2:]
    if height < side or width < side:
        pad_h, pad_w = max(side - height, 0), max(side - width, 0)
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = images.shape[-2:]
    top = int(round((height - side) / 2.0))
    left = int(round((width - side) / 2.0))
    return images[..., top : top + side, left : left + side]


def resolve_transform(
    params: TransformParams,
    source: TransformParams | None,
    dataset_mean: Sequence[float],
    dataset_std: Sequence[float],
    dataset_channels: int,
) -> Transform:
    """Each setting from `params`, else from the model's `source`, else the dataset's (its mean
    and std, its channel count, no resize or crop). The source's crop is dropped when `params`
    resize to less than it (ImageNet's 224 crop of data you resize to 32 would only pad)."""
    source = source or TransformParams()

    def pick(name: str):
        value = getattr(params, name)
        return getattr(source, name) if value is None else value

    channels = pick("channels") or dataset_channels
    mean, std = pick("mean"), pick("std")
    if mean is None or std is None:
        if channels != dataset_channels and len(dataset_mean) != channels:
            # the dataset's statistics of the converted image: one grey value or three copies
            grey = [sum(dataset_mean) / len(dataset_mean)], [sum(dataset_std) / len(dataset_std)]
            dataset_mean, dataset_std = (grey[0] * channels, grey[1] * channels)
        mean = list(dataset_mean) if mean is None else mean
        std = list(dataset_std) if std is None else std
    mean, std = list(mean), list(std)  # copies: the params' own lists stay as they are
    if len(mean) == 1:
        mean = mean * channels
    if len(std) == 1:
        std = std * channels
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise UserError(
                f"data.transform.{name}: {len(values)} values for {channels}-channel inputs"
            )
    resize, crop = pick("resize"), pick("centre_crop")
    if params.centre_crop is None and resize is not None and crop is not None and crop > resize:
        # a resize you set, smaller than the source's usual crop: crop nothing (not pad)
        crop = None
    return Transform(
        mean=tuple(float(value) for value in mean),
        std=tuple(float(value) for value in std),
        resize=resize,
        centre_crop=crop,
        channels=channels if channels != dataset_channels else None,
        interpolation=pick("interpolation") or "bilinear",
    )


def with_input_size(transform: Transform, size: tuple[int, int] | None) -> Transform:
    """A transform whose output is `size` (H, W) when it would otherwise keep the dataset's size
    and the model only accepts `size` (an exported program or ONNX file with a fixed input)."""
    if size is None or transform.resize is not None or transform.centre_crop is not None:
        return transform
    height, width = size
    if height != width:
        return transform
    return replace(transform, resize=height, centre_crop=height)


def model_transform(
    params: TransformParams,
    models: Sequence[Any],
    dataset_mean: Sequence[float],
    dataset_std: Sequence[float],
    dataset_channels: int,
) -> Transform:
    """The preprocessing of models (LoadedModels) that see the same data (a compressed copy
    sees what its reference sees): `params`, else the fixed input size of an exported model,
    else the first model's source that knows it, else the dataset's."""
    known = next((model.transform for model in models if model.transform is not None), None)
    size = next((model.input_size for model in models if model.input_size is not None), None)
    if size is not None and known is not None:
        # a model that only accepts one size decides it; a source's usual size yields
        known = known.model_copy(update={"resize": None, "centre_crop": None})
    transform = resolve_transform(params, known, dataset_mean, dataset_std, dataset_channels)
    return with_input_size(transform, size)


def timm_resize(input_size: int, crop_pct: float) -> int:
    """The shorter side timm resizes to before its centre crop (timm.data.transforms_factory)."""
    return math.floor(input_size / crop_pct)


ClassNames = list[str] | dict[str, Annotated[int, Field(ge=0)]]


def output_indices(
    dataset_classes: Sequence[str], class_names: ClassNames | None, model_classes: int
) -> list[int] | None:
    """The model output of each dataset class, from `data.class_names` (a list: the model's
    class names in output order; a mapping: dataset class -> output index); None when the
    model's outputs are the dataset's classes in order. Raises UserError on a mismatch."""
    if class_names is None:
        if model_classes != len(dataset_classes):
            raise UserError(
                f"the model outputs {model_classes} classes but the data has "
                f"{len(dataset_classes)} ({', '.join(dataset_classes[:5])}"
                f"{', ...' if len(dataset_classes) > 5 else ''}); map them with data.class_names"
            )
        return None
    if isinstance(class_names, list):
        if len(class_names) != model_classes:
            raise UserError(
                f"data.class_names lists {len(class_names)} classes but the model outputs "
                f"{model_classes}"
            )
        positions = {name: index for index, name in enumerate(class_names)}
    else:
        positions = dict(class_names)
        too_large = {name: index for name, index in positions.items() if index >= model_classes}
        if too_large:
            raise UserError(
                f"data.class_names maps {too_large} beyond the model's {model_classes} outputs"
            )
    missing = [name for name in dataset_classes if name not in positions]
    if missing:
        raise UserError(
            f"data.class_names: the data's classes {missing[:5]} have no model output "
            f"(the data has {', '.join(dataset_classes)})"
        )
    indices = [int(positions[name]) for name in dataset_classes]
    if len(set(indices)) != len(indices):
        raise UserError("data.class_names: two dataset classes map to the same model output")
    return None if indices == list(range(model_classes)) else indices


class InputAdapter(nn.Module):
    """Turns the pipeline's input (images standardised with the dataset's mean and std, of one
    fixed size and channel count) into a model's own (`transform`), as the first layer of a
    model trained elsewhere: the pipeline's stages then train, compress and audit it unchanged.
    Every size is fixed when it is built (no branch on a tensor's shape), so torch.fx can trace
    it (static int8, structured pruning); static int8 leaves it in float (`keeps_float`)."""

    keeps_float = True  # quantize_static: its antialiased resize has no int8 kernel

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__()
        self.settings = dict(settings)
        shape = (1, -1, 1, 1)
        for name in ("dataset_mean", "dataset_std", "mean", "std"):
            values = torch.tensor(settings[name], dtype=torch.float32).view(shape)
            self.register_buffer(name, values, persistent=False)
        channels, wanted = settings.get("in_channels", 3), settings.get("channels")
        self.to_rgb = wanted == 3 and channels == 1
        self.to_grey = wanted == 1 and channels == 3
        self.interpolation = settings.get("interpolation") or "bilinear"
        size = (settings["image_size"], settings["image_size"])
        self.size = None
        if settings.get("resize") is not None:
            resized = resized_size(*size, settings["resize"])
            self.size = resized if resized != size else None
            size = resized
        self.crop: tuple[int, int, int, int] | None = None  # padding, then (top, left, side)
        self.padding: tuple[int, int, int, int] | None = None
        side = settings.get("centre_crop")
        if side is not None and (side, side) != size:
            height, width = size
            pad_h, pad_w = max(side - height, 0), max(side - width, 0)
            if pad_h or pad_w:
                self.padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
                height, width = height + pad_h, width + pad_w
            top, left = int(round((height - side) / 2.0)), int(round((width - side) / 2.0))
            self.crop = (top, left, side, side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.dataset_std + self.dataset_mean  # back to pixels in [0, 1]
        if self.to_rgb:
            x = x.repeat(1, 3, 1, 1)
        elif self.to_grey:
            x = x.mean(dim=1, keepdim=True)
        if self.size is not None:
            smooth = self.interpolation != "nearest"
            extra = {"align_corners": False} if smooth else {}
            x = F.interpolate(x, size=self.size, mode=self.interpolation, antialias=smooth, **extra)
            if self.interpolation == "bicubic":
                x = x.clamp(0.0, 1.0)
        if self.padding is not None:
            x = F.pad(x, self.padding)
        if self.crop is not None:
            top, left, height, width = self.crop
            x = x[:, :, top : top + height, left : left + width]
        return (x - self.mean) / self.std


def adapter_settings(
    transform: Transform,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    in_channels: int,
) -> dict[str, Any]:
    """What InputAdapter needs (JSON: it is saved in a checkpoint's architecture)."""
    return {
        "dataset_mean": [float(value) for value in mean],
        "dataset_std": [float(value) for value in std],
        "mean": list(transform.mean),
        "std": list(transform.std),
        "resize": transform.resize,
        "centre_crop": transform.centre_crop,
        "channels": transform.channels,
        "interpolation": transform.interpolation,
        "image_size": int(image_size),
        "in_channels": int(in_channels),
    }
