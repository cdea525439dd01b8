"""Global magnitude pruning: reached sparsity, global threshold, masks kept while fine-tuning."""

from __future__ import annotations

import pytest
import torch

from compalign.compressors import COMPRESSORS
from compalign.data import Split
from compalign.losses import LOSSES
from compalign.models import build_model
from compalign.pruning import (
    folded_state_dict,
    masks_of,
    prunable_parameters,
    weight_sparsity,
)
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
    state = folded_state_dict(model)
    assert not any(key.endswith(("_orig", "_mask")) for key in state)
    zeros = sum(int((state[f"{n}.weight"] == 0).sum()) for n in masks_of(model) for n in [n[:-7]])
    total = sum(m.weight.numel() for m, _ in prunable_parameters(model))
    assert zeros / total == pytest.approx(0.9, abs=1e-3)


def test_layerwise_prunes_each_layer_to_the_target():
    model = COMPRESSORS["magnitude_layerwise"](build_model("resnet20", 10, 3, 8), 0.6)
    for mask in masks_of(model).values():
        assert float((~mask).float().mean()) == pytest.approx(0.6, abs=0.01)
    assert weight_sparsity(model) == pytest.approx(0.6, abs=1e-3)


def test_random_is_seeded_and_reaches_the_target():
    def masks(seed):
        model = COMPRESSORS["random"](build_model("small_cnn", 10, 1, 8), 0.8, {"seed": seed})
        assert weight_sparsity(model) == pytest.approx(0.8, abs=1e-3)
        return torch.cat([m.flatten() for m in masks_of(model).values()])

    assert torch.equal(masks(0), masks(0))
    assert not torch.equal(masks(0), masks(1))


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.0),  # t0: the initial sparsity
        (50, 0.9 + (0.0 - 0.9) * (1 - 50 / 200) ** 3),  # an update step
        (60, 0.9 + (0.0 - 0.9) * (1 - 50 / 200) ** 3),  # between updates: the last update holds
        (100, 0.9 - 0.9 * 0.5**3),
        (150, 0.9 - 0.9 * 0.25**3),
        (200, 0.9),  # t0 + n dt: the final sparsity
        (500, 0.9),
    ],
)
def test_gradual_schedule_values(step, expected):
    """Zhu & Gupta: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3, masks every dt steps
    (here t0 = 0, dt = 50, n = 4)."""
    from compalign.compressors.gradual_magnitude import gradual_sparsity

    value = gradual_sparsity(step, 0.0, 0.9, start_step=0, end_step=200, frequency=50)
    assert value == pytest.approx(expected)


def test_gradual_schedule_starting_late_and_from_an_initial_sparsity():
    from compalign.compressors.gradual_magnitude import gradual_sparsity

    assert gradual_sparsity(10, 0.2, 0.8, 100, 300, 100) == 0.2
    assert gradual_sparsity(200, 0.2, 0.8, 100, 300, 100) == pytest.approx(0.8 - 0.6 * 0.5**3)


def test_gradual_updates_prune_every_layer_and_never_revive_weights():
    """Each update re-prunes every layer to the scheduled sparsity by effective magnitude;
    weights pruned once stay pruned as the sparsity grows."""
    from compalign.compressors.gradual_magnitude import GradualSchedule

    model = build_model("small_cnn", 10, 1, 8)
    schedule = GradualSchedule(0.0, 0.8, start_step=0, end_step=40, frequency=10)
    previous = None
    for step in range(0, 50):
        schedule.update(step, model)
        with torch.no_grad():  # a training step: weights move, pruned ones may try to come back
            for module, _ in prunable_parameters(model, include_classifier=False):
                module.weight_orig.add_(torch.randn_like(module.weight_orig) * 0.01)
        current = torch.cat([m.flatten() for m in masks_of(model).values()])
        if previous is not None:
            assert not (current & ~previous).any()
        previous = current
    assert [s for _, s in schedule.history] == pytest.approx(
        [0.0, 0.8 - 0.8 * 0.75**3, 0.8 - 0.8 * 0.5**3, 0.8 - 0.8 * 0.25**3, 0.8]
    )
    for mask in masks_of(model).values():
        assert float((~mask).float().mean()) == pytest.approx(0.8, abs=0.01)


def test_magnitude_channel_masks_whole_channels_but_not_the_classifier():
    from torch import nn

    model = build_model("small_cnn", 10, 1, 8, seed=0)
    dense = {
        name: m.weight.detach().clone()
        for name, m in model.named_modules()
        if hasattr(m, "weight") and isinstance(m, nn.Conv2d | nn.Linear)
    }
    pruned = COMPRESSORS["magnitude_channel"](model, 0.5)
    layers = [(n, m) for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    classifier_name, classifier = layers[-1]
    assert not hasattr(classifier, "weight_mask")
    assert torch.equal(classifier.weight, dense[classifier_name])
    for name, module in layers[:-1]:
        rows = module.weight.detach().flatten(1)
        zero = (rows == 0).all(dim=1)
        assert int(zero.sum()) == round(0.5 * len(rows)), name
        norms = dense[name].flatten(1).abs().sum(dim=1)
        assert norms[zero].max() <= norms[~zero].min()  # the smallest L1 norms went
    assert masks_of(pruned)  # masks stay applied while fine-tuning (family unstructured)
    assert COMPRESSORS["magnitude_channel"].level_kind == "channel_sparsity"


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_every_compressor_describes_itself(name):
    """Its own module with a docstring, options with defaults, a known level kind."""
    from compalign.compressors import LEVEL_KINDS

    entry = COMPRESSORS[name]
    module = __import__(entry.apply.__module__, fromlist=["ENTRY"])
    assert module.ENTRY is entry and module.__doc__
    entry.settings({})
    assert entry.level_kind is None or entry.level_kind in LEVEL_KINDS
    assert entry.family.quantized == (entry.rebuild is not None)


def test_gradual_magnitude_never_prunes_the_classifier():
    """Hooker et al.'s ResNet-50 masks every conv (the first one and the shortcuts too) but not
    its final dense layer; the other unstructured compressors still prune the classifier."""
    from torch import nn

    model = build_model("resnet20", 10, 3, 8, seed=0)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    dense = classifier.weight.detach().clone()
    pruned = COMPRESSORS["gradual_magnitude"](model, 0.7)
    assert not hasattr(classifier, "weight_mask") and torch.equal(classifier.weight, dense)
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert len(masks_of(pruned)) == len(convs)  # first conv and 1x1 shortcuts included
    for conv in convs:
        assert float((~conv.weight_mask.bool()).float().mean()) == pytest.approx(0.7, abs=0.01)
        # the weight reads pruned before any forward pass (the compress stage logs its sparsity)
        assert float((conv.weight == 0).float().mean()) == pytest.approx(0.7, abs=0.01)
    other = COMPRESSORS["magnitude_layerwise"](build_model("resnet20", 10, 3, 8, seed=0), 0.7)
    assert len(masks_of(other)) == len(convs) + 1


def test_train_pruned_follows_hookers_schedule_scaled_to_the_run():
    """From scratch: no pruning before 5/32 of the steps, the final level at 8/32, masks every
    1/64 of the steps, frozen after; the classifier stays dense."""
    from torch import nn

    from compalign.compressors.gradual_magnitude import (
        GradualOptions,
        GradualSchedule,
        train_pruned,
    )

    schedule = GradualSchedule.for_training(0.9, GradualOptions(), 3200)
    assert (schedule.start_step, schedule.end_step, schedule.frequency) == (500, 800, 50)
    generator = torch.Generator().manual_seed(0)
    split = Split(
        images=torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=generator),
        labels=torch.arange(64) % 10,
        example_ids=[str(i) for i in range(64)],
        mean=torch.zeros(1, 1, 1, 1),
        std=torch.ones(1, 1, 1, 1) * 255,
        groups=None,
    )
    model = build_model("small_cnn", 10, 1, 8, seed=0)
    config = TrainConfig(epochs=6, batch_size=16, lr=0.05)  # 24 steps: prune at 4, 5, 6
    seen = []
    train_pruned(
        model, split, config, 0.8, on_epoch=lambda e, _: seen.append(weight_sparsity(model))
    )
    masked = sum(m.weight.numel() for m, _ in prunable_parameters(model)) - model[-1].weight.numel()
    ratio = masked / sum(m.weight.numel() for m, _ in prunable_parameters(model))
    # round(24 * 5/32) = 4, round(24 * 8/32) = 6, every max(1, round(24 / 64)) = 1 step: epoch 0
    # (steps 0-3) ends dense, epoch 1 (steps 4-7) reaches the final level and it stays there
    assert seen[0] == 0.0 and seen[1:] == pytest.approx([0.8 * ratio] * 5, abs=1e-3)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert not hasattr(classifier, "weight_mask") and bool((classifier.weight != 0).all())
