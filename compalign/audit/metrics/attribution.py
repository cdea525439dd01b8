"""`attribution`: whether the compressed model looks at the same pixels as its reference
(Joseph et al., arXiv 2012.01604, section 5): saliency and integrated-gradients maps (captum) of
both models on a fixed sample of test images, explaining the reference's predicted class;
per-example Spearman rank correlation and top-k IoU, their mean and quantiles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from compalign.audit.base import AuditInputs, Column, FigureData, Metric, number
from compalign.options import Options

NAN = float("nan")
MAPS_FILE = "attributions.npz"  # the reference's maps, reused by every compressed model
AGREEMENT_FILE = "attribution_agreement.parquet"
FIGURE_FILE = "attribution_agreement.png"


class AttributionOptions(Options):
    """The fixed sample, the methods and how maps are compared."""

    attribution_samples: Annotated[int, Field(ge=0)] = 64
    """test images whose attribution maps are compared (0: off)"""
    attribution_methods: list[Literal["saliency", "integrated_gradients"]] = Field(
        default_factory=lambda: ["saliency", "integrated_gradients"]
    )
    """saliency | integrated_gradients"""
    integrated_gradients_steps: Annotated[int, Field(ge=2, le=512)] = 32
    """points of the integral"""
    top_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    """top-k% pixels for the IoU of two maps"""
    figure_examples: Annotated[int, Field(ge=0, le=32)] = 6
    """rows of the attribution figure (where the two models disagree most)"""


@dataclass(frozen=True)
class AgreementFigure(FigureData):
    """The side-by-side figure of the sample's examples where the two models' maps disagree most
    (compalign.report.figures.agreement_figure draws it): their images (uint8 [n, C, H, W]),
    per method the reference's and the compressed model's maps, a caption per example, and how
    many rows to show."""

    images: torch.Tensor
    maps: dict[str, tuple[np.ndarray, np.ndarray]]
    captions: list[str]
    examples: int


def attributable(model) -> bool:
    """Gradient attributions need a differentiable model of the deployed computation: int8 models
    get no attribution agreement, whichever path made them: no gradient reaches the input of
    torch.ao's int8 modules, of a PT2E program (its quantize ops) or of torchao's dynamic int8
    (its activation quantization), so captum's saliency and integrated gradients fail on them.
    Their float or fake-quantized parents are not substituted: they are not the model audited.
    Half-precision models get one."""
    from compalign.train import holds_int8

    return not holds_int8(model)


def _maps(
    inputs: AuditInputs, options: AttributionOptions, indices: np.ndarray, targets: np.ndarray
) -> dict[str, np.ndarray]:
    from compalign.attribution import attribution_maps  # captum: imported when used

    images = inputs.normalise(inputs.images[indices]).to(inputs.device)
    model = inputs.model.to(inputs.device)
    return {
        method: attribution_maps(
            model, images, torch.as_tensor(targets), method, options.integrated_gradients_steps
        )
        for method in options.attribution_methods
    }


def attribution(inputs: AuditInputs, options: AttributionOptions) -> dict[str, float]:
    """Reference: its maps of the sample (output `attributions.npz`). Compressed:
    `attribution.<method>.<spearman|iou>_<mean|p10|p50|p90>`, the per-example table and the
    side-by-side figure's data."""
    from compalign.attribution import attribution_sample, spearman_agreement, topk_iou

    if not options.attribution_samples or inputs.model is None or inputs.images is None:
        return {}
    if not inputs.compared:
        indices = attribution_sample(
            len(inputs.frame), options.attribution_samples, inputs.settings.seed
        )
        targets = inputs.frame["prediction"].to_numpy()[indices]  # both explain the reference's
        maps = _maps(inputs, options, indices, targets)
        inputs.outputs[MAPS_FILE] = {"indices": indices, "targets": targets, **maps}
        return {}
    saved = inputs.reference.attributions
    if saved is None or not attributable(inputs.model):
        return {}
    indices, targets = saved["indices"], saved["targets"]
    maps = _maps(inputs, options, indices, targets)
    table = inputs.table
    rows = {"example_id": table["example_id"].to_numpy()[indices]}
    metrics: dict[str, float] = {}
    pairs = {}
    for method, compressed_maps in maps.items():
        reference_maps = saved[method]
        pairs[method] = (reference_maps, compressed_maps)
        for name, values in (
            ("spearman", spearman_agreement(reference_maps, compressed_maps)),
            ("iou", topk_iou(reference_maps, compressed_maps, options.top_fraction)),
        ):
            rows[f"{method}_{name}"] = values
            metrics[f"attribution.{method}.{name}_mean"] = float(np.nanmean(values))
            for quantile in (10, 50, 90):
                metrics[f"attribution.{method}.{name}_p{quantile}"] = float(
                    np.nanpercentile(values, quantile)
                )
    inputs.outputs[AGREEMENT_FILE] = pd.DataFrame(rows)
    if options.figure_examples:
        sample = table.iloc[indices]
        first = next(iter(maps))  # the rank correlation of the first method orders the figure
        agreement = np.asarray(rows[f"{first}_spearman"], dtype=float)
        order = disagreement_order(
            (sample["compressed_prediction"] != sample["reference_prediction"]).to_numpy(),
            agreement,
        )
        captions = [
            f"y {row.label} / ref {row.reference_prediction} / comp {row.compressed_prediction}"
            f" / ρ {number(agreement[position], 2)}"
            for position, row in zip(order, sample.iloc[order].itertuples(), strict=True)
        ]
        inputs.outputs[FIGURE_FILE] = AgreementFigure(
            images=inputs.images[indices[order]],
            maps={method: (ref[order], comp[order]) for method, (ref, comp) in pairs.items()},
            captions=captions,
            examples=options.figure_examples,
        )
    return metrics


def disagreement_order(differ: np.ndarray, agreement: np.ndarray) -> np.ndarray:
    """The sample's positions, those where the two models disagree most first: where their
    predictions differ, then by the rank correlation of their maps, lowest first (a NaN
    correlation last, then the sample's order)."""
    key = np.where(np.isfinite(agreement), agreement, np.inf)
    return np.lexsort((np.arange(len(key)), key, ~np.asarray(differ, dtype=bool)))


def summary(metrics, labels) -> dict[str, float]:
    for method in ("integrated_gradients", "saliency"):
        if f"attribution.{method}.spearman_mean" in metrics:
            return {"attribution_agreement": metrics[f"attribution.{method}.spearman_mean"]}
    return {"attribution_agreement": NAN}


ENTRY = Metric(
    attribution,
    AttributionOptions,
    summary=summary,
    columns=(Column("attr. ρ", lambda row: number(row.attribution_agreement, 2)),),
)
