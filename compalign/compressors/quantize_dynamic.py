"""`quantize_dynamic`: post-training dynamic int8 quantization of the Linear layers (weights
int8, activations quantized on the fly; PyTorch's `quantize_dynamic`)."""

from __future__ import annotations

from torch import nn

from compalign import quantize
from compalign.compressors.base import Compressor


def quantize_dynamic(model: nn.Module, level, options, calibration) -> nn.Module:
    return quantize.quantize_dynamic(model.eval())


def rebuild(model: nn.Module, example, options) -> nn.Module:
    return quantize.rebuild(model, "quantize_dynamic", example)


ENTRY = Compressor(quantize_dynamic, quantize.QUANTIZATION, level_kind=None, rebuild=rebuild)
