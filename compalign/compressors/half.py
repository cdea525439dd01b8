"""`half`: weights and compute in bfloat16 or float16 (CPUs without native float16, like the
2-core machines this project is sized for, run float16 very slowly)."""

from __future__ import annotations

from typing import Literal

from torch import nn

from compalign import quantize
from compalign.compressors.base import Compressor
from compalign.options import Options


class HalfOptions(Options):
    """Half-precision weights."""

    dtype: Literal["float16", "bfloat16"] = "bfloat16"
    """bfloat16 | float16 (float16 is very slow on CPUs without native support)"""


def half(model: nn.Module, level, options: HalfOptions, calibration) -> nn.Module:
    return quantize.to_half(model.eval(), quantize.half_dtype(options))


def rebuild(model: nn.Module, example, options: HalfOptions) -> nn.Module:
    return quantize.rebuild(model, "half", example, quantize.half_dtype(options))


ENTRY = Compressor(half, quantize.QUANTIZATION, HalfOptions, level_kind=None, rebuild=rebuild)
