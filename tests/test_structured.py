"""Structured pruning to a MAC budget (compalign.compressors.structured)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from compalign.compressors.structured import prune_structured
from compalign.models import build_model
from compalign.pruning import count_macs, resize_to_state_dict

SHAPES = {"small_cnn": (1, 8), "resnet20": (3, 32), "vgg11_bn": (3, 32)}
NUM_CLASSES = 10


def make_model(name: str, seed: int = 0) -> nn.Module:
    channels, size = SHAPES[name]
    return build_model(name, NUM_CLASSES, channels, size, seed=seed)


def example(name: str, batch: int = 1, seed: int = 0) -> torch.Tensor:
    channels, size = SHAPES[name]
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=generator)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


def cross_entropy_gradients(model: nn.Module) -> None:
    """Fill gradients with cross-entropy on a fixed batch of random 32x32 images."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(16, 3, 32, 32, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (16,), generator=generator)
    F.cross_entropy(model(inputs), labels).backward()


@functools.cache
def pruned(name: str, fraction: float, importance: str, global_pruning: bool):
    """(original, its state before pruning, pruned model, fraction reached), built once per case
    (positional arguments only: functools.cache keys on them as passed)."""
    model = make_model(name)
    before = snapshot(model)
    gradient_fn = cross_entropy_gradients if importance == "taylor" else None
    result, reached = prune_structured(
        model, fraction, example(name), importance, gradient_fn, global_pruning
    )
    return model, before, result, reached


CASES = [
    ("small_cnn", 0.3, False),
    ("small_cnn", 0.5, False),
    ("small_cnn", 0.7, False),
    ("resnet20", 0.5, False),
    ("vgg11_bn", 0.5, False),
    ("resnet20", 0.5, True),
]


@pytest.mark.parametrize(("name", "fraction", "global_pruning"), CASES)
def test_reaches_flops_target(name, fraction, global_pruning):
    """The pruned model removes the target MAC fraction (re-counted), is smaller, keeps its
    output size, and the input model is untouched."""
    model, before, result, reached = pruned(name, fraction, "l1", global_pruning)
    x = example(name)
    assert abs(reached - fraction) <= 0.01
    recounted = 1 - count_macs(result, x) / count_macs(model, x)
    assert recounted == pytest.approx(reached, abs=1e-9)
    assert sum(p.numel() for p in result.parameters()) < sum(p.numel() for p in model.parameters())
    assert result is not model and result.training == model.training
    batch = example(name, batch=3, seed=2)
    with torch.no_grad():  # train-mode forwards would move the batch-norm statistics
        assert result.eval()(batch).shape == model.eval()(batch).shape == (3, NUM_CLASSES)
    model.train()
    assert same_state(before, snapshot(model))


def test_deterministic():
    """Same model and inputs give the same pruned model."""
    model = make_model("small_cnn")
    first, reached_1 = prune_structured(model, 0.5, example("small_cnn"))
    second, reached_2 = prune_structured(model, 0.5, example("small_cnn"))
    assert reached_1 == reached_2
    assert same_state(first.state_dict(), second.state_dict())


def test_taylor_importance():
    """Taylor importance (cross-entropy gradients) reaches the target and keeps other channels
    than L1 magnitude."""
    model, before, taylor, reached = pruned("resnet20", 0.5, "taylor", False)
    assert abs(reached - 0.5) <= 0.01
    x = example("resnet20", batch=2)
    taylor.eval()
    assert taylor(x).shape == (2, NUM_CLASSES)
    assert same_state(before, snapshot(model))
    assert all(p.grad is None for p in taylor.parameters())
    l1 = pruned("resnet20", 0.5, "l1", False)[2].state_dict()
    assert not same_state(l1, taylor.state_dict())


@pytest.mark.parametrize("name", ["small_cnn", "resnet20", "vgg11_bn"])
def test_resize_round_trip(name, tmp_path):
    """A pruned state dict loads strictly into a fresh model of the same architecture once
    resized, directly and through torch.save / torch.load(weights_only=True)."""
    result = copy.deepcopy(pruned(name, 0.5, "l1", False)[2]).eval()
    state = result.state_dict()
    path = tmp_path / "pruned.pt"
    torch.save(state, path)
    x = example(name, batch=2, seed=3)
    for loaded in (state, torch.load(path, weights_only=True)):
        fresh = resize_to_state_dict(make_model(name, seed=7), loaded)
        fresh.load_state_dict(loaded, strict=True)
        fresh.eval()
        assert torch.equal(fresh(x), result(x))


def test_count_macs_with_prune_masks():
    """Masks do not change dense MACs, and counting leaves them in place."""
    x = example("small_cnn", batch=2)
    masked = make_model("small_cnn")
    conv = masked[3]
    prune.l1_unstructured(conv, "weight", amount=0.5)
    masked(x)  # after a forward, a masked model no longer deep-copies
    macs = count_macs(masked, x)
    assert macs == count_macs(make_model("small_cnn"), x)
    assert macs > 1.99 * count_macs(make_model("small_cnn"), x[:1])  # the whole batch counts
    assert hasattr(conv, "weight_mask") and hasattr(conv, "weight_orig")
    assert (conv.weight == 0).float().mean() == pytest.approx(0.5, abs=0.01)


def test_prunes_masked_model():
    """A model carrying prune masks is pruned from its masked weights and keeps its masks."""
    x = example("small_cnn")
    masked = make_model("small_cnn")
    prune.l1_unstructured(masked[3], "weight", amount=0.5)
    masked(x)
    result, reached = prune_structured(masked, 0.5, x)
    assert abs(reached - 0.5) <= 0.01
    assert hasattr(masked[3], "weight_mask")
    assert not any(name.endswith("_mask") for name, _ in result.named_buffers())


def test_unreachable_target():
    """A target beyond what 90%-per-group channel pruning can remove raises, saying what was
    reached (about 0.99 for small_cnn, hence the tighter tolerance)."""
    with pytest.raises(ValueError, match=r"closest reached was 0\.9\d+"):
        prune_structured(make_model("small_cnn"), 0.999, example("small_cnn"), tolerance=0.001)


def test_rejects_bad_arguments():
    """Unknown importance, Taylor without gradients, and fractions outside (0, 1) are errors."""
    model, x = make_model("small_cnn"), example("small_cnn")
    with pytest.raises(ValueError, match="importance"):
        prune_structured(model, 0.5, x, importance="l2")
    with pytest.raises(ValueError, match="gradient_fn"):
        prune_structured(model, 0.5, x, importance="taylor")
    with pytest.raises(ValueError, match="flops_fraction"):
        prune_structured(model, 1.0, x)
