"""`quantize_static`: post-training static int8 quantization, x86, activation ranges calibrated
on training batches: PT2E (torch.export + torchao's prepare_pt2e/convert_pt2e with its
X86InductorQuantizer), or FX graph mode behind `backend: fx`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from compalign import quantize
from compalign.compressors.base import Compressor
from compalign.options import Options


class QuantizeStaticOptions(Options):
    """Static int8: which quantization path, and which layers stay in float."""

    # pt2e: PyTorch's maintained path (torchao). fx: torch.ao.quantization.quantize_fx, which
    # PyTorch has deprecated and plans to remove (pytorch/ao#2259); kept as an optional fallback
    # that reproduces results made before the switch.
    backend: Literal["pt2e", "fx"] = "pt2e"
    """pt2e (torch.export + torchao) | fx (deprecated FX graph mode: the fallback)"""
    float_layers: list[str] = Field(default_factory=list)
    """conv and linear layers (module names) kept in float, e.g. those `compalign search --method
    quantize_static` chose; empty: every layer int8"""


def quantize_static(
    model: nn.Module, level, options: QuantizeStaticOptions, calibration
) -> nn.Module:
    batches = calibration.batches if calibration else []
    return quantize.quantize_static(model.eval(), batches, options.backend, options.float_layers)


def rebuild(model: nn.Module, example, options: QuantizeStaticOptions) -> nn.Module:
    return quantize.rebuild(
        model,
        "quantize_static",
        example,
        backend=options.backend,
        float_layers=options.float_layers,
    )


ENTRY = Compressor(
    quantize_static,
    quantize.QUANTIZATION,
    QuantizeStaticOptions,
    level_kind=None,
    needs_calibration=True,
    traces_globally=True,
    rebuild=rebuild,
)
