"""Compressors: the registry from the name used in params.yaml to its entry.

`COMPRESSORS[name](model, level, options, calibration)` returns the compressed model *without*
fine-tuning (what the loss `none` audits). Each compressor is one module of this package holding
its function, its options and what the pipeline must know about it
(compalign.compressors.base.Compressor); `compress.<name>` in params.yaml is built from the
options. Adding a compressor: a module with an `ENTRY`, one line here, one test.
"""

from __future__ import annotations

from compalign.compressors import (
    gradual_magnitude,
    half,
    magnitude_channel,
    magnitude_global,
    magnitude_layerwise,
    quantize_dynamic,
    quantize_static,
    random_unstructured,
    structured,
    taylor_iterative,
)
from compalign.compressors.base import LEVEL_KINDS, Calibration, Compressor, Family

COMPRESSORS: dict[str, Compressor] = {
    "magnitude_global": magnitude_global.ENTRY,
    "magnitude_layerwise": magnitude_layerwise.ENTRY,
    "random": random_unstructured.ENTRY,
    "gradual_magnitude": gradual_magnitude.ENTRY,
    "structured": structured.ENTRY,
    "quantize_dynamic": quantize_dynamic.ENTRY,
    "quantize_static": quantize_static.ENTRY,
    "half": half.ENTRY,
    "magnitude_channel": magnitude_channel.ENTRY,
    "taylor_iterative": taylor_iterative.ENTRY,
}

__all__ = ["COMPRESSORS", "LEVEL_KINDS", "Calibration", "Compressor", "Family"]
