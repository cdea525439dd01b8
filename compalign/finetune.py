"""Alignment fine-tuning of a compressed model, as its compressor's family requires.

A family is a row of a table that each compressor entry points to
(compalign.compressors.base.Family):
- unstructured and structured: the compressed model itself is fine-tuned (pruning masks stay
  applied; a structurally pruned model is simply a smaller dense one);
- gradual (compalign.compressors.gradual_magnitude): fine-tuning starts from the reference and
  the cubic schedule prunes while it trains;
- quantization (compalign.compressors.quantization): fine-tuning starts from the reference with
  the quantizer's own fake quantization, then the model is converted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compalign.compressors import COMPRESSORS
from compalign.compressors.base import FineTuneJob
from compalign.train import EpochCallback, TrainConfig

if TYPE_CHECKING:
    from compalign.data import Split
    from compalign.losses.base import LossFn


def fine_tune(
    method: str,
    level: float | None,
    options: Any,
    compressed: Callable[[], nn.Module],
    fresh_reference: Callable[[], nn.Module],
    reference: nn.Module,
    train: Split,
    config: TrainConfig,
    loss_fn: LossFn,
    device: torch.device | str = "cpu",
    on_epoch: EpochCallback | None = None,
) -> nn.Module:
    """Fine-tune with `loss_fn` against the frozen `reference`; return the deployable model.

    `compressed` and `fresh_reference` load new copies of the compressed and reference models
    (each family starts from one of them); `options` are the compressor's."""
    entry = COMPRESSORS[method]
    job = FineTuneJob(
        method,
        level,
        entry.settings(options),
        compressed,
        fresh_reference,
        reference,
        train,
        config,
        loss_fn,
        device,
        on_epoch,
    )
    return entry.family.fine_tune(job)
