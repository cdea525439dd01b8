"""What data-driven compressors calibrate on: a fixed, seeded sample of training batches and,
for Taylor importance, the function that fills a model's gradients with an alignment loss
against the frozen reference, summed over those batches (compalign.compressors.Calibration)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compalign.compressors import Calibration
from compalign.data import Split
from compalign.losses import LOSSES

CALIBRATION_SEED = 0  # which training examples calibrate: a fixed, seeded sample


def calibration_sample(
    train: Split,
    batches: int,
    batch_size: int,
    reference: nn.Module | None = None,
    loss: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
) -> Calibration:
    """`batches` batches of `batch_size` training examples (normalised; every example once
    when the split holds fewer), drawn in a fixed order seeded by CALIBRATION_SEED; with
    `loss` (and the `reference` it is measured against), the gradient function of Taylor
    importance, and for iterative pruning the loss, the reference and the split themselves."""
    generator = torch.Generator().manual_seed(CALIBRATION_SEED)
    order = torch.randperm(len(train), generator=generator)
    chunks = [order[start : start + batch_size] for start in range(0, len(train), batch_size)]
    chunks = chunks[:batches]
    samples = [train.normalise(train.images[index]) for index in chunks]
    if loss is None:
        return Calibration(samples, None, None, None, None, train)
    if reference is None:
        raise ValueError(f"calibration with loss {loss!r} needs the reference it is measured by")
    reference = reference.eval()
    loss_fn = LOSSES[loss](**(hyperparameters or {}))

    def gradient_fn(model: nn.Module) -> None:
        model.eval()  # rank channels without moving the copy's batch-norm statistics
        model.zero_grad()
        for images, index in zip(samples, chunks, strict=True):
            with torch.no_grad():
                reference_logits = reference(images)
            loss_fn(model(images), reference_logits, train.labels[index]).backward()

    return Calibration(samples, gradient_fn, loss, loss_fn, reference, train)
