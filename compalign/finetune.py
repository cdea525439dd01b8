"""Alignment fine-tuning of a compressed model, as its compressor's family requires.

- unstructured and structured: the compressed model itself is fine-tuned (pruning masks stay
  applied; a structurally pruned model is simply a smaller dense one);
- gradual: fine-tuning starts from the reference and the cubic schedule prunes while it trains;
- quantization (quantization-aware training): fine-tuning starts from the reference with fake
  quantization, then the model is converted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compalign.compress import COMPRESSORS, GradualSchedule, half_dtype, prune_layers_to
from compalign.data import Split
from compalign.losses import LossFn
from compalign.train import EpochCallback, TrainConfig, fit, total_steps


def fine_tune(
    method: str,
    level: float | None,
    options: dict[str, Any],
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
    (each family starts from one of them)."""
    family = COMPRESSORS[method].family
    if family in ("unstructured", "structured"):
        return fit(compressed(), train, config, loss_fn, reference, device, on_epoch)
    if family == "gradual":
        model = fresh_reference()
        schedule = GradualSchedule.for_run(level, options, total_steps(len(train), config))
        prune_layers_to(model, schedule.initial)  # registers the masks the schedule updates
        fit(model, train, config, loss_fn, reference, device, on_epoch, on_step=schedule.update)
        prune_layers_to(model, level)  # the final sparsity, however short the run was
        return model
    if family == "quantization":
        from compalign import quantize

        example = train.normalise(train.images[:1])
        dtype = half_dtype(options)
        prepared = quantize.prepare_qat(fresh_reference(), method, example, dtype=dtype)
        fit(prepared, train, config, loss_fn, reference, device, on_epoch)
        return quantize.convert_qat(prepared.cpu(), method, dtype)
    raise ValueError(f"unknown compressor family {family!r}")
