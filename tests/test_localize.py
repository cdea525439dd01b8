"""compalign.localize: a candidate that differs from its reference in exactly one layer has its
flips localized to that layer, float or int8; formats without module names are refused."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

import compalign
from compalign.compressors.quantize_static import quantize_static
from compalign.errors import UserError
from compalign.localize import (
    check_localizable,
    localize_layers,
    localize_quantized,
    predictions,
)
from compalign.model_sources import LoadedModel


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5)
    ).eval()


def _inputs(count: int = 4, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 16, generator=generator) for _ in range(count)]


def _one_layer_changed(reference: nn.Module, layer: str) -> nn.Module:
    candidate = _mlp()
    candidate.load_state_dict(reference.state_dict())
    with torch.no_grad():
        weight = dict(candidate.named_modules())[layer].weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(2)))
    return candidate


def test_the_one_changed_layer_is_ranked_first_and_restoring_it_recovers_every_flip():
    reference = _mlp()
    candidate = _one_layer_changed(reference, "2")
    batches = _inputs()
    flips = int(
        (
            predictions(candidate, batches, lambda x: x)
            != predictions(reference, batches, lambda x: x)
        ).sum()
    )
    assert flips > 10  # the test needs flips to localize
    table = localize_layers(reference, candidate, batches)
    first = table.iloc[0]
    assert first["layer"] == "2"
    assert first["recovered"] == first["mismatches"] == flips
    assert first["mismatches_after"] == 0
    assert first["changed_fraction"] == pytest.approx(32 * 32 / (32 * 32 + 32))  # not its bias
    others = table.iloc[1:]
    assert (others["recovered"] == 0).all() and (others["changed_fraction"] == 0).all()
    sqnr = table.set_index("layer")["sqnr_db"]
    assert math.isinf(sqnr["0"]) and math.isfinite(sqnr["2"])  # before the change: identical


def test_pruning_masks_are_folded_and_restored_weights_recover_the_flips():
    from torch.nn.utils import prune

    reference = _mlp()
    candidate = _mlp()
    candidate.load_state_dict(reference.state_dict())
    prune.l1_unstructured(candidate[4], "weight", amount=0.9)  # a mask, as the pipeline keeps it
    table = localize_layers(reference, candidate, _inputs())
    assert table.iloc[0]["layer"] == "4"
    assert table.iloc[0]["recovered"] == table.iloc[0]["mismatches"] > 0
    assert table.iloc[0]["changed_fraction"] == pytest.approx(0.9 * 160 / 165, abs=0.01)


def test_a_structurally_pruned_candidate_cannot_be_localized():
    reference = _mlp()
    smaller = nn.Sequential(
        nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5)
    )
    with pytest.raises(UserError, match="layer shapes differ"):
        localize_layers(reference, smaller, _inputs(1))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_an_int8_candidate_is_localized_by_quantizing_again_with_each_layer_in_float():
    reference = _Net().eval()
    with torch.no_grad():  # one huge weight per output row: int8 rounds the rest of it to 0
        reference.fc.weight[:, 0] = 60.0
    generator = torch.Generator().manual_seed(3)
    calibration = [torch.randn(32, 1, 4, 4, generator=generator)]
    batches = [torch.randn(128, 1, 4, 4, generator=generator)]

    def requantize(float_layers):
        return quantize_static(reference, calibration, "pt2e", list(float_layers))

    candidate = requantize(["conv"])  # differs from the reference in fc only
    labels = predictions(reference, batches, lambda x: x)
    table, notes = localize_quantized(candidate, requantize, reference, ["conv"], labels, batches)
    assert notes == []
    assert list(table["layer"]) == ["fc"]  # the only int8 layer
    row = table.iloc[0]
    assert row["mismatches"] > 0 and row["recovered"] == row["mismatches"]
    assert row["kind"] == "Linear (int8)" and math.isfinite(row["sqnr_db"])


def test_formats_without_module_names_are_refused_in_one_line():
    reference = LoadedModel(
        model=_mlp(), source="module", spec="mlp", files=(), weights=_mlp(), eager=True
    )
    onnx = LoadedModel(model=_mlp(), source="onnx", spec="m.onnx", files=())
    scripted = LoadedModel(
        model=_mlp(), source="torchscript", spec="m.ts", files=(), weights=_mlp()
    )
    for candidate, needle in ((onnx, "ONNX graph"), (scripted, "TorchScript")):
        with pytest.raises(UserError, match=needle) as raised:
            check_localizable(reference, {"c": candidate})
        assert "\n" not in str(raised.value)


def test_the_python_api_localizes_next_to_audit_models():
    reference = _Net().eval()
    candidate = _Net().eval()
    with torch.no_grad():
        candidate.fc.weight.add_(torch.randn(4, 128, generator=torch.Generator().manual_seed(5)))
    generator = torch.Generator().manual_seed(4)
    images = torch.randn(128, 1, 4, 4, generator=generator)
    data = torch.utils.data.TensorDataset(images, torch.zeros(128).long())
    table = compalign.localize_flips(reference, candidate, data, class_names=list("abcd"))
    assert isinstance(table, pd.DataFrame) and table.iloc[0]["layer"] == "fc"
    assert table.iloc[0]["recovered"] == table.iloc[0]["mismatches"] > 0
    comparison = compalign.audit_models(
        reference,
        {"noisy": candidate},
        data,
        class_names=list("abcd"),
        costs=False,
        localize=True,
        attribution_samples=0,
        bootstrap_samples=100,
    )
    layers = comparison.layers["noisy"]
    assert layers.iloc[0]["layer"] == "fc"
    assert layers.iloc[0]["mismatches"] == comparison.metrics["noisy"]["mismatches"]
