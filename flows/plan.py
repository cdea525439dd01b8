"""What a pipeline run makes: the grid of compressed models and the labels each child run gets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compalign.compressors import COMPRESSORS
from compalign.config import NO_FINE_TUNING, Params
from compalign.tuning import tune_budget

BASELINE_LOSS = "ce"  # reduction factors are mismatches of `ce` / mismatches of a loss


@dataclass(frozen=True)
class ModelSpec:
    """One compressed model: a compressor (at a level, if it has levels), then a loss."""

    method: str
    sparsity: float | None
    loss: str

    @property
    def compressed_name(self) -> str:
        return self.method if self.sparsity is None else f"{self.method}-{self.sparsity:g}"

    @property
    def name(self) -> str:
        """The child run's name, e.g. magnitude_global-0.95-kd or quantize_static-none."""
        return f"{self.compressed_name}-{self.loss}"

    @property
    def fine_tuned(self) -> bool:
        return self.loss != NO_FINE_TUNING

    @property
    def family(self) -> str:
        return COMPRESSORS[self.method].family.name


def losses_for(params: Params, method: str) -> list[str]:
    """The losses a compressor's models are fine-tuned with. A post-training quantizer's model
    cannot be fine-tuned after conversion: it is audited as it is (`none`), and also fine-tuned
    with each loss when `align.quantization_aware` is on."""
    losses = params.align.losses
    if COMPRESSORS[method].family.quantized and not params.align.quantization_aware:
        return [NO_FINE_TUNING]
    return losses


def model_grid(params: Params) -> list[ModelSpec]:
    """Every (compressor, level, loss) the params ask for, in a stable order."""
    grid = []
    for method in params.compress.methods:
        levels = params.compress.sparsities if COMPRESSORS[method].uses_level else [None]
        for level in levels:
            grid += [ModelSpec(method, level, loss) for loss in losses_for(params, method)]
    return grid


def grid_by_compression(params: Params) -> list[list[ModelSpec]]:
    """The grid grouped by (compressor, level), the baseline loss first in each group (its
    audit is an input of the others')."""
    groups: dict[tuple[str, float | None], list[ModelSpec]] = {}
    for spec in model_grid(params):
        groups.setdefault((spec.method, spec.sparsity), []).append(spec)
    return [sorted(specs, key=lambda s: s.loss != BASELINE_LOSS) for specs in groups.values()]


def importance_loss(params: Params, spec: ModelSpec) -> str | None:
    """The loss whose gradients rank channels for Taylor-importance structured pruning (the
    spec's own loss, `ce` for the un-fine-tuned model), None when compression needs no loss."""
    entry = COMPRESSORS[spec.method]
    if entry.ranks_with_loss(entry.settings(params.compress.options(spec.method))):
        return spec.loss if spec.fine_tuned else BASELINE_LOSS
    return None


def compressed_id(params: Params, spec: ModelSpec) -> str:
    """Names one compress output: compressor, level, and the loss that ranked channels if any."""
    loss = importance_loss(params, spec)
    return spec.compressed_name if loss is None else f"{spec.compressed_name}-by-{loss}"


def compress_arguments(params: Params, spec: ModelSpec) -> tuple[bool, dict[str, Any]]:
    """(whether it needs the prepared data, the compress task's other keyword arguments)."""
    loss = importance_loss(params, spec)
    needs_data = COMPRESSORS[spec.method].needs_calibration
    calibration = {
        "batches": params.compress.calibration_batches,
        "batch_size": params.compress.calibration_batch_size,
    }
    return needs_data, {
        "method": spec.method,
        "level": spec.sparsity,
        "options": params.compress.options(spec.method),
        "calibration": calibration if needs_data else None,
        "loss": loss,
        "hyperparameters": params.align.loss_hyperparameters(loss) if loss else None,
    }


def align_arguments(params: Params, spec: ModelSpec, device: str) -> dict[str, Any]:
    """The align task's keyword arguments besides its input artifacts."""
    return {
        "method": spec.method,
        "level": spec.sparsity,
        "options": params.compress.options(spec.method),
        "loss": spec.loss,
        "hyperparameters": params.align.loss_hyperparameters(spec.loss),
        "training": params.align.training_settings(),
        "device": device,
        "tune": params.align.tune,
        "tune_budget": tune_budget(
            {
                loss: params.align.loss_hyperparameters(loss)
                for loss in params.align.losses
                if loss != NO_FINE_TUNING
            }
        )
        if params.align.tune
        else None,
    }


def level_kind(method: str) -> str:
    """What a compressor's level measures (compalign.compressors.LEVEL_KINDS), "none" if it has
    no levels."""
    return COMPRESSORS[method].level_kind or "none"


def reference_labels(params: Params) -> dict[str, str]:
    """Tags of the reference's child run."""
    return {
        "name": "reference",
        "role": "reference",
        "compressor": "none",
        "sparsity": "0",
        "level_kind": "none",
        "loss": "none",
        "dataset": params.data.source,
        "model": reference_model_name(params),
    }


def reference_model_name(params: Params) -> str:
    """The reference's architecture, or the spec of the file it came from."""
    if params.reference.source == "file":
        return str(params.reference.path)
    return params.reference.model


def compressed_labels(params: Params, spec: ModelSpec) -> dict[str, str]:
    """Tags of a compressed model's child run."""
    return {
        "name": spec.name,
        "role": "compressed",
        "compressor": spec.method,
        "sparsity": "0" if spec.sparsity is None else f"{spec.sparsity:g}",
        "level_kind": level_kind(spec.method),
        "loss": spec.loss,
        "dataset": params.data.source,
        "model": reference_model_name(params),
    }
