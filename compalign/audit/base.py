"""What every audit metric shares: the inputs of one model's audit and the registry entry type.

An audit metric reads an `AuditInputs` (the model's predictions, and for a compressed model its
reference's audit, the `ce` baseline's comparison table at the same compression, the model
itself and the test images, and the settings every metric shares) and its own options (a typed
view of the `audit` section holding only the keys its entry declares), and returns named numbers; it may also leave files in
`inputs.outputs` for the caller to store: tables, arrays, and the data of figures (`FigureData`),
which the presentation layer draws (compalign.report.figures.draw_figures): a metric returns
data, never pictures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import InitVar, dataclass, field
from functools import cached_property
from typing import Annotated, Any, TypeVar

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, Field
from torch import nn

from compalign.audit.stats import bootstrap_indices, comparison_frame
from compalign.options import MAX_BATCH, NoOptions, Options, Seed

View = TypeVar("View", bound=Options)


class AuditSettings(Options):
    """Audit options every metric may use: how predictions are made and resampled."""

    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 512
    """examples per forward pass of the audit"""
    seed: Seed = 0
    """bootstrap resamples and the attribution sample"""
    bootstrap_samples: Annotated[int, Field(ge=100, le=100_000)] = 1000
    """resamples of the test split for each interval"""
    confidence_level: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95
    """of every interval"""


@dataclass
class ReferenceAudit:
    """What a compressed model's audit needs from its reference's: its predictions frame, its
    metrics, and the attribution maps of the fixed sample (when attributions are on)."""

    frame: pd.DataFrame
    metrics: Mapping[str, float]
    attributions: Mapping[str, np.ndarray] | None = None


@dataclass
class AuditInputs:
    """One model's audit: its predictions frame (compalign.audit.stats.predictions_frame) and
    the context some metrics need. `reference` is None when the model is the reference.

    `options` is the validated `audit` section (compalign.config.AuditParams, or a dict of it):
    it is not kept whole. Every metric gets the `settings` they all share (AuditSettings) and its
    own options, `view(entry.options)`: the section's keys that its options model declares."""

    frame: pd.DataFrame
    class_names: list[str]
    groups: pd.DataFrame
    options: InitVar[Any]
    reference: ReferenceAudit | None = None
    baseline: pd.DataFrame | None = None  # the `ce` model's comparison table, same compression
    model: nn.Module | None = None
    images: torch.Tensor | None = None  # uint8 test images [N, C, H, W], in the frame's order
    normalise: Callable[[torch.Tensor], torch.Tensor] | None = None
    device: torch.device | str = "cpu"
    outputs: dict[str, Any] = field(default_factory=dict)
    logits: torch.Tensor | None = None  # the model's test logits, in the frame's order
    settings: AuditSettings = field(init=False)
    _section: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self, options: Any) -> None:
        section = options.model_dump() if isinstance(options, BaseModel) else options
        self._section = dict(section or {})
        self.settings = self.view(AuditSettings)

    def view(self, model: type[View]) -> View:
        """The keys of the `audit` section that `model` declares, validated into it: a metric's
        own options (the others' keys left out)."""
        return model.model_validate(
            {key: value for key, value in self._section.items() if key in model.model_fields}
        )

    @property
    def compared(self) -> bool:
        return self.reference is not None

    @cached_property
    def table(self) -> pd.DataFrame:
        """The per-example comparison with the reference (the compressed model's audit table)."""
        return comparison_frame(self.reference.frame, self.frame)

    @cached_property
    def resamples(self) -> np.ndarray:
        """The bootstrap resamples of the test examples, the same for every model of a run."""
        return bootstrap_indices(
            len(self.frame), self.settings.bootstrap_samples, self.settings.seed
        )

    @property
    def reference_right(self) -> np.ndarray:
        return (self.table.reference_prediction == self.table.label).to_numpy()


class FigureData:
    """The data of a figure a metric leaves in `outputs` under the figure's file name; the core
    writes no picture: compalign.report.figures.draw_figures draws it."""


Compute = Callable[[AuditInputs, Any], dict[str, float]]  # (inputs, its own options)


@dataclass(frozen=True)
class Column:
    """A column of the comparison table: its header and how a summary row shows it."""

    header: str
    show: Callable[[pd.Series], str]


@dataclass(frozen=True)
class Metric:
    """A registry entry: the function `compute(inputs, options)`, its options (their keys live
    in the `audit` section; the one place their defaults are written: `compute` gets a view of
    the section holding only these), the summary columns it adds
    (`summary(metrics, labels) -> {column: value}`) and how the comparison table shows them."""

    compute: Compute
    options: type[Options] = NoOptions
    summary: Callable[[Mapping[str, float], Mapping[str, str]], dict[str, Any]] = field(
        default=lambda metrics, labels: {}
    )
    columns: tuple[Column, ...] = ()
    headline: tuple[str, ...] = ()  # summary columns repeated on the run's parent for comparison

    def run(self, inputs: AuditInputs) -> dict[str, float]:
        """The metric on one model's audit, with its own options."""
        return self.compute(inputs, inputs.view(self.options))


def number(value: Any, digits: int = 2) -> str:
    """A table cell: "–" for a missing value, "∞" for an infinite one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}" if digits else f"{int(value)}"


def with_interval(row: pd.Series, column: str, digits: int) -> str:
    """ "value [low, high]" from a summary row's `<column>`, `<column>_ci_low`, `_ci_high`."""
    value, low, high = row[column], row[f"{column}_ci_low"], row[f"{column}_ci_high"]
    if isinstance(value, float) and math.isnan(value):
        return "–"
    if isinstance(low, float) and math.isnan(low):
        return number(value, digits)
    return f"{number(value, digits)} [{number(low, digits)}, {number(high, digits)}]"
