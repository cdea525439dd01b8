"""Attribution agreement: captum maps, Spearman and top-k IoU, the test sample, the figure."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from compalign.attribution import (
    ATTRIBUTION_METHODS,
    attribution_maps,
    attribution_sample,
    spearman_agreement,
    topk_iou,
)
from compalign.compressors import COMPRESSORS
from compalign.models import build_model

METHODS = sorted(ATTRIBUTION_METHODS)


def random_images(count: int = 16, channels: int = 1, side: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, channels, side, side, generator=torch.Generator().manual_seed(seed))


def predicted(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(images).argmax(dim=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on 8x8 inputs extra threads only synchronise, and when the cores are
    busy they spin (a batch-2 backward measured ~200x slower on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    return build_model("small_cnn", 10, 1, 8, seed=0).eval()


@pytest.mark.parametrize("method", METHODS)
def test_model_agrees_with_itself(cnn, method):
    """Two runs of one model give Spearman 1 and top-10% IoU 1 on every example."""
    images = random_images()
    targets = predicted(cnn, images)
    first = attribution_maps(cnn, images, targets, method, ig_steps=8)
    second = attribution_maps(cnn, images, targets, method, ig_steps=8)
    np.testing.assert_allclose(spearman_agreement(first, second), 1.0)
    np.testing.assert_allclose(topk_iou(first, second), 1.0)


def test_spearman_hand_computed():
    """Same order -> 1, reversed -> -1, one swapped pair of four -> 1 - 6*2/(4*15) = 0.8."""
    base = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    scaled = base**3 * 10  # monotone: same ranks
    reversed_ = -base
    one_swap = np.array([[[1.0, 3.0], [2.0, 4.0]]])
    np.testing.assert_allclose(spearman_agreement(base, scaled), [1.0])
    np.testing.assert_allclose(spearman_agreement(base, reversed_), [-1.0])
    np.testing.assert_allclose(spearman_agreement(base, one_swap), [0.8])
    batch = spearman_agreement(
        np.concatenate([base, base, base]), np.concatenate([scaled, reversed_, one_swap])
    )
    np.testing.assert_allclose(batch, [1.0, -1.0, 0.8])


def test_spearman_ties_match_scipy_and_constant_is_nan():
    """Tied values use average ranks like scipy.stats.spearmanr; a constant map gives NaN."""
    first = np.array([[[0.0, 0.0, 1.0], [2.0, 2.0, 5.0], [0.0, 3.0, 1.0]]])
    second = np.array([[[1.0, 0.0, 0.0], [2.0, 4.0, 4.0], [0.5, 3.0, 1.0]]])
    expected = stats.spearmanr(first.ravel(), second.ravel()).statistic
    np.testing.assert_allclose(spearman_agreement(first, second), [expected])
    constant = np.full((1, 3, 3), 7.0)
    result = spearman_agreement(np.concatenate([first, constant]), np.concatenate([second, first]))
    assert np.isnan(result[1]) and not np.isnan(result[0])


def test_topk_iou_hand_computed():
    """Top-2 of 4: identical -> 1, disjoint -> 0, one shared pixel -> 1/3; k is at least 1."""
    first = np.array([[[4.0, 3.0], [1.0, 0.0]]])  # top-2: flat {0, 1}
    shared_one = np.array([[[4.0, 0.0], [3.0, 1.0]]])  # top-2: flat {0, 2}
    disjoint = np.array([[[0.0, 1.0], [3.0, 4.0]]])  # top-2: flat {2, 3}
    assert topk_iou(first, first, 0.5) == pytest.approx([1.0])
    assert topk_iou(first, disjoint, 0.5) == pytest.approx([0.0])
    assert topk_iou(first, shared_one, 0.5) == pytest.approx([1 / 3])
    # fraction 0.1 of 4 pixels rounds to 0: k = 1, the single largest pixel.
    assert topk_iou(first, shared_one, 0.1) == pytest.approx([1.0])
    assert topk_iou(first, disjoint, 0.1) == pytest.approx([0.0])


def test_topk_iou_ties_are_stable():
    """Equal values rank by flat index, so a constant map's top-1 is pixel 0."""
    constant = np.zeros((1, 2, 2))
    first_pixel = np.array([[[1.0, 0.0], [0.0, 0.0]]])
    last_pixel = np.array([[[0.0, 0.0], [0.0, 1.0]]])
    assert topk_iou(constant, first_pixel, 0.25) == pytest.approx([1.0])
    assert topk_iou(constant, last_pixel, 0.25) == pytest.approx([0.0])


@pytest.mark.parametrize("method", METHODS)
def test_maps_shape_sign_determinism_and_state(cnn, method):
    """[n, H, W] float32, non-negative, identical across calls; mode restored, no .grad left."""
    model = copy.deepcopy(cnn).train()
    model[1].eval()  # a module frozen on its own keeps its own mode
    images = random_images(count=5)
    targets = torch.tensor([0, 1, 2, 3, 4])
    first = attribution_maps(model, images, targets, method, ig_steps=8, batch_size=2)
    second = attribution_maps(model, images, targets, method, ig_steps=8, batch_size=2)
    assert first.shape == (5, 8, 8) and first.dtype == np.float32
    assert (first >= 0).all() and first.sum() > 0
    np.testing.assert_array_equal(first, second)
    assert model.training and not model[1].training and model[0].training
    assert all(parameter.grad is None for parameter in model.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_batching_does_not_change_maps(cnn, method):
    """Chunking into batches (and captum's internal IG batches) only reorders the arithmetic."""
    images = random_images(count=5)
    targets = predicted(cnn, images)
    whole = attribution_maps(cnn, images, targets, method, ig_steps=8, batch_size=64)
    chunked = attribution_maps(cnn, images, targets, method, ig_steps=8, batch_size=2)
    np.testing.assert_allclose(whole, chunked, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_pruned_copy_agrees_less(cnn, method):
    """A 90%-pruned copy (prune masks as forward pre-hooks) agrees less than the model itself."""
    pruned = COMPRESSORS["magnitude_global"](copy.deepcopy(cnn), 0.9)
    assert hasattr(pruned[0], "weight_mask")
    images = random_images(count=16, seed=1)
    targets = predicted(cnn, images)
    reference = attribution_maps(cnn, images, targets, method, ig_steps=8)
    compressed = attribution_maps(pruned, images, targets, method, ig_steps=8)
    assert compressed.shape == reference.shape and (compressed >= 0).all()
    assert np.nanmean(spearman_agreement(reference, compressed)) < 0.95
    assert topk_iou(reference, compressed).mean() < 0.95


@pytest.mark.parametrize("channels", [1, 2])
def test_linear_model_closed_form(channels):
    """Linear logits z = Wx + b: saliency = |W[t]|, IG from 0 = |x * W[t]|, summed over channels."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(channels * 4, 3))
    images = torch.randn(4, channels, 2, 2, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 2, 1, 2])
    rows = model[1].weight.detach()[targets].reshape(4, channels, 2, 2)
    saliency = attribution_maps(model, images, targets, "saliency")
    np.testing.assert_allclose(saliency, rows.abs().sum(dim=1).numpy(), rtol=1e-6)
    # Completeness: for a linear model the path integral is exact, (x - 0) * W[t].
    gradients = attribution_maps(model, images, targets, "integrated_gradients", ig_steps=4)
    np.testing.assert_allclose(gradients, (images * rows).abs().sum(dim=1).numpy(), rtol=1e-5)


def test_single_logit_model_uses_its_logit():
    """A binary model with one logit gets the same maps for target 0 and target 1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1))
    images = random_images(count=2, side=2)
    ones = attribution_maps(model, images, torch.tensor([1, 1]), "saliency")
    zeros = attribution_maps(model, images, torch.tensor([0, 0]), "saliency")
    np.testing.assert_array_equal(ones, zeros)
    np.testing.assert_allclose(ones[0].ravel(), model[1].weight.detach().abs()[0].numpy())


def test_attribution_maps_rejects_bad_input(cnn):
    """Unknown method, raw uint8 pixels and mismatched targets are errors, not silent maps."""
    images = random_images(count=2)
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribution_maps(cnn, images, torch.tensor([0, 1]), "gradcam")
    with pytest.raises(ValueError, match="normalised"):
        attribution_maps(cnn, images.to(torch.uint8), torch.tensor([0, 1]), "saliency")
    with pytest.raises(ValueError, match="targets"):
        attribution_maps(cnn, images, torch.tensor([0]), "saliency")


def test_attribution_sample():
    """Deterministic per seed, sorted, without repeats, in range; everything when size >= n."""
    first = attribution_sample(1000, 50, seed=3)
    assert np.array_equal(first, attribution_sample(1000, 50, seed=3))
    assert not np.array_equal(first, attribution_sample(1000, 50, seed=4))
    assert len(first) == 50 and len(np.unique(first)) == 50
    assert np.all(np.diff(first) > 0) and first.min() >= 0 and first.max() < 1000
    np.testing.assert_array_equal(attribution_sample(7, 7, seed=0), np.arange(7))
    np.testing.assert_array_equal(attribution_sample(7, 100, seed=0), np.arange(7))
