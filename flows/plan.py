"""What a run makes: the grid of compressed models (a pipeline run's, a population's), each
stage call's arguments from the params, and the labels each child run gets. flows/graph.py
puts them together into the run graph."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compalign.compressors import COMPRESSORS
from compalign.config import NO_FINE_TUNING, Params
from compalign.errors import UserError
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


def losses_for(params: Params, method: str, losses: list[str] | None = None) -> list[str]:
    """The losses a compressor's models are fine-tuned with (`losses`, default
    `align.losses`). A post-training quantizer's model cannot be fine-tuned after conversion:
    it is audited as it is (`none`), and also fine-tuned with each loss when
    `align.quantization_aware` is on."""
    if COMPRESSORS[method].family.quantized and not params.align.quantization_aware:
        return [NO_FINE_TUNING]
    return params.align.losses if losses is None else losses


def levels_of(method: str, sparsities: list[float]) -> list[float | None]:
    """The levels a compressor is applied at: `sparsities`, or None once for a compressor
    without levels (a quantizer)."""
    return list(sparsities) if COMPRESSORS[method].uses_level else [None]


def model_grid(params: Params) -> list[ModelSpec]:
    """Every (compressor, level, loss) the params ask for, in a stable order."""
    grid = []
    for method in params.compress.methods:
        for level in levels_of(method, params.compress.sparsities):
            grid += [ModelSpec(method, level, loss) for loss in losses_for(params, method)]
    return grid


def trains_from_scratch(params: Params) -> bool:
    """Whether a population's compressed members are trained from scratch with the compression
    inside the run: protocol `from_scratch` and a compressor whose family can (gradual
    pruning)."""
    family = COMPRESSORS[params.populations.compressor].family
    return params.populations.protocol == "from_scratch" and family.train_pruned is not None


def protocol_used(params: Params) -> str:
    """The protocol a population's compressed members really follow (a post-training
    compressor always compresses dense member k, whatever `populations.protocol` says)."""
    return "from_scratch" if trains_from_scratch(params) else "from_dense"


def population_losses(params: Params) -> list[str]:
    """A population's losses (`populations.losses`, as a pipeline's grid takes them: a
    post-training quantizer's members are audited as they are unless align.quantization_aware
    fine-tunes them); `none` is refused where every compressed member is trained."""
    losses = losses_for(params, params.populations.compressor, params.populations.losses)
    if trains_from_scratch(params) and NO_FINE_TUNING in losses:
        raise UserError(
            f"populations.losses: {NO_FINE_TUNING!r} (no training) has no meaning with "
            "populations.protocol=from_scratch, which trains every compressed member; drop it or "
            "set populations.protocol=from_dense"
        )
    return losses


def population_levels(params: Params) -> list[float | None]:
    """The population compressor's levels (None once for a quantizer)."""
    return levels_of(params.populations.compressor, params.populations.sparsities)


def member_reference(params: Params, seed: int) -> dict[str, Any]:
    """The `reference` section of the dense member with `seed`."""
    return {**params.reference.stage_params(params.data), "seed": seed}


def pruned_arguments(params: Params, level: float, loss: str) -> dict[str, Any]:
    """The pruned task's arguments besides its data, reference section, teacher and device."""
    method = params.populations.compressor
    return {
        "method": method,
        "level": level,
        "options": params.compress.options(method),
        "loss": loss,
        "hyperparameters": params.align.loss_hyperparameters(loss),
    }


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
