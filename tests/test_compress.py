"""Global magnitude pruning: reached sparsity, global threshold, masks kept while fine-tuning."""

from __future__ import annotations

import pytest
import torch

from compalign.compress import (
    COMPRESSORS,
    masks_of,
    plain_state_dict,
    prunable_parameters,
    weight_sparsity,
)
from compalign.data import Split
from compalign.losses import LOSSES
from compalign.models import build_model
from compalign.train import TrainConfig, fit


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_reaches_target_sparsity(sparsity):
    model = COMPRESSORS["magnitude_global"](build_model("small_cnn", 10, 1, 8), sparsity)
    assert weight_sparsity(model) == pytest.approx(sparsity, abs=1e-3)


def test_threshold_is_global():
    """Every pruned weight is no larger in magnitude than every kept one, across layers."""
    model = build_model("resnet20", 10, 3, 8)
    original = {name: p.detach().abs().clone() for name, p in model.named_parameters()}
    COMPRESSORS["magnitude_global"](model, 0.7)
    pruned, kept = [], []
    for name, mask in masks_of(model).items():
        magnitudes = original[name]
        pruned.append(magnitudes[~mask])
        kept.append(magnitudes[mask])
    assert torch.cat(pruned).max() <= torch.cat(kept).min()
    per_layer = [float((~m).float().mean()) for m in masks_of(model).values()]
    assert max(per_layer) - min(per_layer) > 0.1  # layers differ: one threshold, not one ratio


def test_masks_stay_applied_during_fine_tuning():
    model = COMPRESSORS["magnitude_global"](build_model("small_cnn", 10, 1, 8), 0.9)
    generator = torch.Generator().manual_seed(0)
    split = Split(
        images=torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=generator),
        labels=torch.arange(64) % 10,
        example_ids=[str(i) for i in range(64)],
        mean=torch.zeros(1, 1, 1, 1),
        std=torch.ones(1, 1, 1, 1) * 255,
        groups=None,
    )
    fit(model, split, TrainConfig(epochs=2, batch_size=16, lr=0.1), LOSSES["ce"]())
    assert weight_sparsity(model) == pytest.approx(0.9, abs=1e-3)
    state = plain_state_dict(model)
    assert not any(key.endswith(("_orig", "_mask")) for key in state)
    zeros = sum(int((state[f"{n}.weight"] == 0).sum()) for n in masks_of(model) for n in [n[:-7]])
    total = sum(m.weight.numel() for m, _ in prunable_parameters(model))
    assert zeros / total == pytest.approx(0.9, abs=1e-3)
