"""`half`: weights and compute in bfloat16 or float16 (CPUs without native float16, like the
2-core machines this project is sized for, run float16 very slowly); its quantization-aware
fine-tuning (weights rounded to the half dtype while training) and the rebuilding of its
checkpoints."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from compalign.compressors.base import Compressor
from compalign.compressors.quantization import quantization, strip_parametrizations
from compalign.options import Options
from compalign.pruning import folded_copy

HALF_DTYPES = (torch.float16, torch.bfloat16)


class HalfOptions(Options):
    """Half-precision weights."""

    dtype: Literal["float16", "bfloat16"] = "bfloat16"
    """bfloat16 | float16 (float16 is very slow on CPUs without native support)"""

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def _check_half(dtype: torch.dtype) -> None:
    if dtype not in HALF_DTYPES:
        raise ValueError(
            f"half precision dtype must be torch.float16 or torch.bfloat16, got {dtype}"
        )


class CastInput(nn.Module):
    """Runs `module` in a lower precision: casts the float32 input to `dtype` and the output back
    to float32 (so a half-precision model is a drop-in replacement)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.dtype)).float()


def to_half(model: nn.Module, dtype: torch.dtype = torch.float16) -> nn.Module:
    """Weights (and compute) in float16 or bfloat16, wrapped in CastInput."""
    _check_half(dtype)
    return CastInput(folded_copy(model).to(dtype), dtype).eval()


class _RoundToHalf(nn.Module):
    """Parametrization: the weight rounded to `dtype` in the forward pass, straight-through
    gradient (the rounding error is treated as a constant)."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (weight.to(self.dtype).to(weight.dtype) - weight).detach()


def prepare_qat(model: nn.Module, example: torch.Tensor, options: HalfOptions) -> nn.Module:
    """A trainable copy of a float model whose floating-point parameters are rounded to the half
    dtype in the forward pass (straight-through gradient); train it with compalign.train.fit."""
    dtype = options.torch_dtype
    clone = folded_copy(model)
    _check_half(dtype)
    for module in list(clone.modules()):
        for name, parameter in list(module.named_parameters(recurse=False)):
            if parameter.is_floating_point():
                parametrize.register_parametrization(module, name, _RoundToHalf(dtype))
    return clone.train()


def convert_qat(prepared: nn.Module, options: HalfOptions) -> nn.Module:
    """The deployable half model after quantization-aware fine-tuning: the underlying float
    weights cast to the half dtype, exactly the weights the forward pass trained against;
    `options.dtype` must be the one the model was prepared with."""
    dtype = options.torch_dtype
    clone = folded_copy(prepared).eval()
    removed = strip_parametrizations(clone)
    trained = {p.dtype for p in removed if isinstance(p, _RoundToHalf)}
    if trained - {dtype}:
        raise ValueError(f"the model was prepared for {trained.pop()}, not {dtype}")
    return to_half(clone, dtype)


def apply(model: nn.Module, level, options: HalfOptions, calibration) -> nn.Module:
    return to_half(model.eval(), options.torch_dtype)


def rebuild(model: nn.Module, example, options: HalfOptions) -> nn.Module:
    """An empty half model of the right structure to load a saved state dict into."""
    return to_half(model, options.torch_dtype)


ENTRY = Compressor(
    apply, quantization(prepare_qat, convert_qat), HalfOptions, level_kind=None, rebuild=rebuild
)
