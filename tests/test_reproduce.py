"""flows/reproduce.py: what each paper's flow compares."""

from __future__ import annotations

from compalign.compressors import COMPRESSORS
from flows.reproduce import FLOWS, QUANTIZERS


def test_hooker_compares_pruning_with_every_quantizer():
    assert set(QUANTIZERS) == {"quantize_dynamic", "quantize_static", "half"}
    assert all(COMPRESSORS[name].family.quantized for name in QUANTIZERS)


def test_one_flow_per_paper():
    assert set(FLOWS) == {"joseph", "meyer", "hooker"}
