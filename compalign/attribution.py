"""Attribution agreement: do a compressed model's attribution maps match its reference's?

Joseph et al. (arXiv 2012.01604) report that alignment losses make a compressed model's
attributions agree better with its reference's. Here both models are asked the same question --
the gradient-based attribution of one target class (the reference's prediction) -- and the two
[H, W] maps are compared per example by Spearman rank correlation and by the overlap of their
most-attributed pixels.

A map is |attribution| summed over channels, so it says where the evidence is, not its sign.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from captum.attr import IntegratedGradients, Saliency
from scipy import stats
from torch import nn


def saliency(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    ig_steps: int = 32,
    batch_size: int = 64,
) -> np.ndarray:
    """Saliency (Simonyan et al. 2014): |d logit_target / d input| for one batch, via captum.

    Returns float32 [n, C, H, W]; `ig_steps` and `batch_size` are unused (one registry signature).
    """
    del ig_steps, batch_size
    # A leaf that already requires grad: otherwise captum flips the flag itself and warns each call.
    images = images.detach().requires_grad_()
    attributions = Saliency(model).attribute(images, target=targets, abs=True)
    return attributions.detach().cpu().numpy().astype(np.float32)


def integrated_gradients(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    ig_steps: int = 32,
    batch_size: int = 64,
) -> np.ndarray:
    """Integrated gradients (Sundararajan et al. 2017) from the all-zero normalised image, via captum.

    Zero in normalised space is the dataset's mean image. Returns float32 [n, C, H, W], signed.
    """
    # captum evaluates n examples x ig_steps points; capping each forward at `batch_size` rows
    # (at least the n examples, which captum requires) keeps memory at one ordinary batch.
    internal = max(batch_size, len(images))
    attributions = IntegratedGradients(model).attribute(
        images,
        baselines=torch.zeros_like(images),
        target=targets,
        n_steps=ig_steps,
        method="gausslegendre",
        internal_batch_size=internal,
    )
    return attributions.detach().cpu().numpy().astype(np.float32)


ATTRIBUTION_METHODS: dict[str, Callable[..., np.ndarray]] = {
    "saliency": saliency,
    "integrated_gradients": integrated_gradients,
}


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def attribution_maps(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    method: str,
    ig_steps: int = 32,
    batch_size: int = 64,
) -> np.ndarray:
    """Attribution maps of `method` for normalised float images [n, C, H, W] and class targets [n].

    Returns float32 [n, H, W] = |attribution| summed over channels. The model is run in eval
    mode and every module's train/eval flag is restored afterwards; captum takes gradients with
    torch.autograd.grad, so no parameter's .grad is touched. A model with a single logit (binary
    task) is attributed on that logit whatever the target: |d z / dx| is the same for both classes.
    """
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(
            f"unknown attribution method {method!r}; choose one of {sorted(ATTRIBUTION_METHODS)}"
        )
    if images.dim() != 4:
        raise ValueError(f"images must be [n, C, H, W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError("images must be normalised floats (Split.normalise), not raw pixels")
    targets = torch.as_tensor(targets).long().reshape(-1)
    if len(targets) != len(images):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    if ig_steps < 1 or batch_size < 1:
        raise ValueError("ig_steps and batch_size must be at least 1")
    count, _, height, width = images.shape
    if count == 0:
        return np.zeros((0, height, width), dtype=np.float32)

    attribute = ATTRIBUTION_METHODS[method]
    device = _device_of(model)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            single_logit = model(images[:1].to(device)).shape[1] == 1
        maps = []
        for start in range(0, count, batch_size):
            batch = images[start : start + batch_size].detach().to(device)
            batch_targets = targets[start : start + batch_size].to(device)
            if single_logit:
                batch_targets = torch.zeros_like(batch_targets)
            raw = attribute(model, batch, batch_targets, ig_steps=ig_steps, batch_size=batch_size)
            maps.append(np.abs(raw).sum(axis=1, dtype=np.float32))
    finally:
        for module, training in modes.items():
            module.train(training)
    return np.concatenate(maps).astype(np.float32, copy=False)


def _check_pair(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape or first.ndim != 3:
        raise ValueError(
            f"expected two [n, H, W] maps of one shape, got {first.shape} and {second.shape}"
        )
    return first.reshape(len(first), -1), second.reshape(len(second), -1)


def spearman_agreement(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per-example Spearman rank correlation of two [n, H, W] maps, each flattened; float64 [n].

    Computed as the Pearson correlation of scipy.stats.rankdata ranks (ties get their average
    rank), which is scipy.stats.spearmanr row by row. An example where either map is constant
    (zero variance) has no defined correlation and gives NaN; aggregate with np.nanmean.
    """
    first, second = _check_pair(first, second)
    if first.shape[1] == 0:
        return np.full(len(first), np.nan)
    ranks_first = stats.rankdata(first, axis=1) - (first.shape[1] + 1) / 2
    ranks_second = stats.rankdata(second, axis=1) - (second.shape[1] + 1) / 2
    numerator = (ranks_first * ranks_second).sum(axis=1)
    denominator = np.sqrt((ranks_first**2).sum(axis=1) * (ranks_second**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.where(denominator > 0, numerator / denominator, np.nan)
    # Rounding can push a perfect correlation a hair past 1.
    return np.clip(correlation, -1.0, 1.0)


def topk_iou(first: np.ndarray, second: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Per-example intersection-over-union of the top `fraction` pixels of two [n, H, W] maps.

    k = max(1, round(fraction * H * W)); among equal values the lower flat index ranks higher
    (stable argsort), so ties are broken the same way in both maps. Returns float64 [n].
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    first, second = _check_pair(first, second)
    count, pixels = first.shape
    k = max(1, round(fraction * pixels))
    if pixels == 0:
        return np.full(count, np.nan)

    def top_mask(maps: np.ndarray) -> np.ndarray:
        order = np.argsort(-maps, axis=1, kind="stable")[:, :k]
        mask = np.zeros(maps.shape, dtype=bool)
        np.put_along_axis(mask, order, True, axis=1)
        return mask

    intersection = (top_mask(first) & top_mask(second)).sum(axis=1)
    return intersection / (2 * k - intersection)


def attribution_sample(num_examples: int, size: int, seed: int) -> np.ndarray:
    """Sorted int64 indices of a fixed random sample of `size` of `num_examples` test examples.

    Drawn without replacement from numpy's PCG64 seeded with `seed`; all indices if size >= n.
    """
    if num_examples < 0 or size < 0:
        raise ValueError(f"num_examples and size must be non-negative, got {num_examples}, {size}")
    if size >= num_examples:
        return np.arange(num_examples, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(num_examples, size=size, replace=False)
    return np.sort(chosen).astype(np.int64)
