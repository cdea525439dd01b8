"""What every compressor shares: its registry entry, the family that fine-tunes its models and the
calibration data some need.

An entry's `family` (a `Family`) is a table row, not a name to compare: `family.fine_tune(job)`
fine-tunes a model of that compressor with an alignment loss, `family.quantized` says its models
are no longer float (their checkpoints are rebuilt through the entry's `rebuild`). The families
of pruning are below; gradual pruning's is in compalign.compressors.gradual_magnitude, the
quantizers' in compalign.compressors.quantization.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compalign.options import NoOptions, Options
from compalign.train import EpochCallback, TrainConfig, fit

if TYPE_CHECKING:
    from compalign.data import Split
    from compalign.losses import LossFn

__all__ = [
    "LEVEL_KINDS",
    "STRUCTURED",
    "UNSTRUCTURED",
    "Calibration",
    "Compressor",
    "Family",
    "FineTuneJob",
]

# What a compressor's level measures (None: the compressor has no levels), as axis labels.
LEVEL_KINDS = {
    "weight_sparsity": "weight sparsity",
    "flops_removed": "fraction of MACs removed",
    "channel_sparsity": "fraction of channels masked per layer",
    "conv_flops_removed": "fraction of conv FLOPs removed",
}


@dataclass
class Calibration:
    """What data-driven compressors need: float training batches (normalised), and for Taylor
    importance a function that fills the model's gradients with the alignment loss. Iterative
    pruning (taylor_iterative) trains while it prunes: it gets the alignment loss itself, its
    name, the frozen reference and the whole training split."""

    batches: list[torch.Tensor]
    gradient_fn: Callable[[nn.Module], None] | None = None
    loss_name: str | None = None
    loss_fn: LossFn | None = None
    reference: nn.Module | None = None
    train: Split | None = None

    @property
    def example(self) -> torch.Tensor:
        return self.batches[0][:1]


@dataclass
class FineTuneJob:
    """One alignment fine-tuning: `compressed` and `fresh_reference` load new copies of the
    compressed and reference models (each family starts from one of them); `reference` is the
    frozen model whose logits the loss sees; `options` are the compressor's."""

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


Apply = Callable[[nn.Module, float | None, Any, Calibration | None], nn.Module]
Rebuild = Callable[[nn.Module, torch.Tensor, Any], nn.Module]


def _never(options: Any) -> bool:
    return False


@dataclass(frozen=True)
class Compressor:
    """A registry entry: the function, its options (the one place their defaults are written)
    and what the pipeline must know about it.

    - `apply(model, level, options, calibration)` returns the compressed model without
      fine-tuning (what the loss `none` audits); it may change `model`. It may set the returned
      model's `compression_record`, a dict of floats (what it measured of its own result), which
      the pipeline keeps in the checkpoint manifests and adds to the model's audit metrics.
    - `level_kind`: what `compress.sparsities` mean for it (a key of LEVEL_KINDS), None when it
      has no levels (quantizers).
    - `needs_calibration`: it gets training batches (compalign.compressors.base.Calibration).
    - `ranks_with_loss(options)`: it ranks weights with gradients of the alignment loss, so each
      loss gets its own compressed model (Taylor importance).
    - `traces_globally`: it traces with torch.fx, which patches torch.nn.Module.__call__ for the
      whole process while it runs: no other model may run meanwhile.
    - `rebuild(float_model, example, options)`: for a quantized family, an empty model of the
      right structure for a saved state dict (checkpoint loading).
    """

    apply: Apply
    family: Family
    options: type[Options] = NoOptions
    level_kind: str | None = "weight_sparsity"
    needs_calibration: bool = False
    ranks_with_loss: Callable[[Any], bool] = _never
    traces_globally: bool = False
    rebuild: Rebuild | None = None

    def __post_init__(self) -> None:
        if self.level_kind is not None and self.level_kind not in LEVEL_KINDS:
            raise ValueError(f"unknown level kind {self.level_kind!r}; add it to LEVEL_KINDS")
        if self.family.quantized and self.rebuild is None:
            raise ValueError("a quantized family's compressor needs a rebuild function")

    @property
    def uses_level(self) -> bool:
        return self.level_kind is not None

    def settings(self, options: Options | dict[str, Any] | None = None) -> Options:
        """`options` validated into this compressor's options model (None: the defaults)."""
        if isinstance(options, self.options):
            return options
        return self.options.model_validate(dict(options or {}))

    def checkpoint_kind(self, method: str) -> str:
        """ "float" for a model that stays float (masks saved apart), else the method's name."""
        return method if self.family.quantized else "float"

    def __call__(
        self,
        model: nn.Module,
        level: float | None = None,
        options: Options | dict[str, Any] | None = None,
        calibration: Calibration | None = None,
    ) -> nn.Module:
        return self.apply(model, level, self.settings(options), calibration)
