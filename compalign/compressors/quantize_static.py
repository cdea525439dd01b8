"""`quantize_static`: post-training static int8 quantization (FX graph mode, x86 backend),
activation ranges calibrated on training batches."""

from __future__ import annotations

from torch import nn

from compalign import quantize
from compalign.compressors.base import Compressor


def quantize_static(model: nn.Module, level, options, calibration) -> nn.Module:
    return quantize.quantize_static(model.eval(), calibration.batches if calibration else [])


def rebuild(model: nn.Module, example, options) -> nn.Module:
    return quantize.rebuild(model, "quantize_static", example)


ENTRY = Compressor(
    quantize_static,
    quantize.QUANTIZATION,
    level_kind=None,
    needs_calibration=True,
    traces_globally=True,
    rebuild=rebuild,
)
