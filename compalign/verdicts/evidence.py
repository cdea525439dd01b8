"""What the verdict rules read: every model's per-example outcomes on the shared test split, per
training seed (Joseph et al., Meyer & Wong) or per population member (Hooker et al.).

`compalign reproduce` builds these from its runs' audits (flows/reproduce.py); the simulation
check (compalign.verdicts.simulate) draws them from a model with or without an effect. The rules
see nothing else, so the numbers they are calibrated on are the numbers they judge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Cell = tuple[str, float]  # (compressor, level)


@dataclass
class Outcomes:
    """One model's outcomes on the N test examples, one row per training seed."""

    predictions: np.ndarray  # [S, N] predicted labels
    probabilities: np.ndarray | None = None  # [S, N, C] class probabilities (AUROC)
    attribution: np.ndarray | None = None  # [S, N] attribution agreement, NaN outside the sample

    def __post_init__(self) -> None:
        self.predictions = np.asarray(self.predictions, dtype=np.int64)
        if self.predictions.ndim != 2:
            raise ValueError("predictions must be [seeds, examples]")

    @property
    def seeds(self) -> int:
        return int(self.predictions.shape[0])


@dataclass
class SeedRunsEvidence:
    """A configuration run once per training seed (compalign reproduce joseph / meyer): the
    labels, each seed's reference, and every compressed model by (compressor, level, loss).
    `groups`: the judged group column's value per example (Meyer & Wong), when there is one."""

    labels: np.ndarray
    classes: int
    seeds: list[int]
    reference: Outcomes
    models: dict[tuple[str, float, str], Outcomes]
    groups: np.ndarray | None = None
    group_name: str = ""

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)

    @property
    def examples(self) -> int:
        return int(self.labels.shape[0])

    def cells(self, *losses: str) -> list[Cell]:
        """The (compressor, level) cells that hold a model for every one of `losses`."""
        cells = sorted({(c, level) for c, level, _ in self.models})
        return [cell for cell in cells if all((*cell, loss) in self.models for loss in losses)]

    def model(self, cell: Cell, loss: str) -> Outcomes:
        return self.models[(*cell, loss)]


@dataclass
class PopulationEvidence:
    """Populations of independently trained members (Hooker et al.): [K, N] predicted labels of
    the dense population, of a SECOND dense population trained from other seeds (the noise floor:
    what training noise alone does to modal labels and class recalls), of the compressed
    population at each level, and of each post-training quantizer applied to the second dense
    population's members (`quantized`: the same kind of comparison as the pruned levels, two
    independently trained populations) and to the first's (`quantized_paired`: the authors'
    comparison, which carries no training noise). `paired_levels`: the pruned members were made
    from dense member k (protocol from_dense), so they are not exchangeable with the floor."""

    labels: np.ndarray
    class_names: list[str]
    dense: np.ndarray
    floor: np.ndarray
    pruned: dict[float, np.ndarray]
    quantized: dict[str, np.ndarray] = field(default_factory=dict)
    quantized_paired: dict[str, np.ndarray] = field(default_factory=dict)
    paired_levels: bool = False

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.dense = np.asarray(self.dense, dtype=np.int64)
        self.floor = np.asarray(self.floor, dtype=np.int64)
        self.pruned = {float(k): np.asarray(v, dtype=np.int64) for k, v in self.pruned.items()}

    @property
    def members(self) -> int:
        return int(self.dense.shape[0])

    @property
    def levels(self) -> list[float]:
        return sorted(self.pruned)
