"""`quantize_dynamic`: post-training dynamic int8 quantization of the Linear layers (weights
int8, activations quantized on the fly): torchao's `quantize_` with
Int8DynamicActivationInt8WeightConfig, or PyTorch's eager `quantize_dynamic` behind
`backend: eager`."""

from __future__ import annotations

from typing import Literal

from torch import nn

from compalign import quantize
from compalign.compressors.base import Compressor
from compalign.options import Options


class QuantizeDynamicOptions(Options):
    """Dynamic int8: which quantization path."""

    # torchao: per-row int8 weights and activations. eager: torch.ao.quantization.quantize_dynamic
    # (deprecated by PyTorch; per-tensor), which reproduces results made before the switch.
    backend: Literal["torchao", "eager"] = "torchao"
    """torchao (quantize_, per-row int8) | eager (deprecated torch.ao quantize_dynamic)"""


def quantize_dynamic(
    model: nn.Module, level, options: QuantizeDynamicOptions, calibration
) -> nn.Module:
    return quantize.quantize_dynamic(model.eval(), options.backend)


def rebuild(model: nn.Module, example, options: QuantizeDynamicOptions) -> nn.Module:
    return quantize.rebuild(model, "quantize_dynamic", example, backend=options.backend)


ENTRY = Compressor(
    quantize_dynamic,
    quantize.QUANTIZATION,
    QuantizeDynamicOptions,
    level_kind=None,
    rebuild=rebuild,
)
