"""What a pipeline run makes: the grid of compressed models and the labels each child run gets."""

from __future__ import annotations

from dataclasses import dataclass

from compalign.config import NO_FINE_TUNING, Params


@dataclass(frozen=True)
class ModelSpec:
    """One compressed model: compressor at a sparsity, then fine-tuned with a loss."""

    method: str
    sparsity: float
    loss: str

    @property
    def compressed_name(self) -> str:
        return f"{self.method}-{self.sparsity:g}"

    @property
    def name(self) -> str:
        """The child run's name, e.g. magnitude_global-0.95-kd."""
        return f"{self.compressed_name}-{self.loss}"

    @property
    def fine_tuned(self) -> bool:
        return self.loss != NO_FINE_TUNING


def model_grid(params: Params) -> list[ModelSpec]:
    """Every (compressor, sparsity, loss) the params ask for, in a stable order."""
    return [
        ModelSpec(method, sparsity, loss)
        for method in params.compress.methods
        for sparsity in params.compress.sparsities
        for loss in params.align.losses
    ]


BASELINE_LOSS = "ce"  # reduction factors are mismatches of `ce` / mismatches of a loss


def grid_by_compression(params: Params) -> list[list[ModelSpec]]:
    """The grid grouped by (compressor, sparsity), the baseline loss first in each group (its
    audit is an input of the others')."""
    groups: dict[tuple[str, float], list[ModelSpec]] = {}
    for spec in model_grid(params):
        groups.setdefault((spec.method, spec.sparsity), []).append(spec)
    return [sorted(specs, key=lambda s: s.loss != BASELINE_LOSS) for specs in groups.values()]


def reference_labels(params: Params) -> dict[str, str]:
    """Tags of the reference's child run."""
    return {
        "name": "reference",
        "role": "reference",
        "compressor": "none",
        "sparsity": "0",
        "loss": "none",
        "dataset": params.data.source,
        "model": params.reference.model,
    }


def compressed_labels(params: Params, spec: ModelSpec) -> dict[str, str]:
    """Tags of a compressed model's child run."""
    return {
        "name": spec.name,
        "role": "compressed",
        "compressor": spec.method,
        "sparsity": f"{spec.sparsity:g}",
        "loss": spec.loss,
        "dataset": params.data.source,
        "model": params.reference.model,
    }
