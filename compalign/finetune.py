"""Alignment fine-tuning of a compressed model, as its compressor's family requires.

A family is a row of a table that each compressor entry points to (compalign.compressors):
- unstructured and structured: the compressed model itself is fine-tuned (pruning masks stay
  applied; a structurally pruned model is simply a smaller dense one);
- gradual (compalign.compressors.gradual_magnitude): fine-tuning starts from the reference and
  the cubic schedule prunes while it trains;
- quantization (compalign.quantize): fine-tuning starts from the reference with fake
  quantization, then the model is converted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compalign.train import EpochCallback, TrainConfig, fit

if TYPE_CHECKING:
    from compalign.data import Split
    from compalign.losses.base import LossFn
    from compalign.options import Options


@dataclass
class FineTuneJob:
    """One alignment fine-tuning: `compressed` and `fresh_reference` load new copies of the
    compressed and reference models (each family starts from one of them); `reference` is the
    frozen model whose logits the loss sees."""

    method: str
    level: float | None
    options: Options
    compressed: Callable[[], nn.Module]
    fresh_reference: Callable[[], nn.Module]
    reference: nn.Module
    train: Split
    config: TrainConfig
    loss_fn: LossFn
    device: torch.device | str = "cpu"
    on_epoch: EpochCallback | None = None

    def fit(self, model: nn.Module, **extra: Any) -> nn.Module:
        """compalign.train.fit of `model` with this job's data, settings, loss and reference."""
        return fit(
            model,
            self.train,
            self.config,
            self.loss_fn,
            self.reference,
            self.device,
            self.on_epoch,
            **extra,
        )


@dataclass(frozen=True)
class Family:
    """How the models of a group of compressors are fine-tuned, and whether they stay float.
    `train_pruned(model, train, config, level, options, device, on_epoch)`, where a family has
    it, trains a fresh model from scratch with the compression inside the training run (the
    populations flow's `protocol: from_scratch`)."""

    name: str
    fine_tune: Callable[[FineTuneJob], nn.Module]
    quantized: bool = False
    train_pruned: Callable[..., nn.Module] | None = None


def fine_tune_compressed(job: FineTuneJob) -> nn.Module:
    """Fine-tune the compressed model itself: pruning masks stay applied, and a structurally
    pruned model is simply a smaller dense one."""
    return job.fit(job.compressed())


UNSTRUCTURED = Family("unstructured", fine_tune_compressed)
STRUCTURED = Family("structured", fine_tune_compressed)


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
    from compalign.compressors import COMPRESSORS

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
