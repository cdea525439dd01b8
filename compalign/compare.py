"""Audit any compressed models against any reference: the audit without the pipeline.

`audit_models(reference, candidates, data)` takes models in any form a user has them (an
`nn.Module`, any callable from images to logits, a model spec such as
`torchvision:resnet18@weights.pt` or `int8.onnx`, a `LoadedModel`) and test data (a prepared
`Split`, a torch `Dataset` or a `DataLoader`), runs every registered audit metric
(compalign.audit) of each candidate against the reference, measures what is measurable of each
model's costs, and returns a `Comparison`: the summary table, one row per test example with
every model's prediction, the verdicts of the release rules. Pure PyTorch and pandas: no
Prefect, no MLflow and no presentation (the page is compalign.report.html.comparison_page's,
the MLflow record tasks/reports/compare.py's).

With `reference2` (a second reference, e.g. trained with another seed), its mismatches against
the reference are reported beside each candidate's: the noise floor that retraining alone gives.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from compalign.audit import (
    AuditInputs,
    ReferenceAudit,
    audit,
    predictions_frame,
    summary_row,
    write_outputs,
)
from compalign.audit.metrics.attribution import MAPS_FILE
from compalign.audited import (
    REFERENCE,
    REFERENCE2,
    RESERVED_NAMES,
    AuditData,
    AuditedModel,
    ModelLike,
    Prepared,
    check_models,
    check_outputs,
    reference_at_chance,
)
from compalign.costs import (
    COST_METRICS,
    LATENCY_DETAILS,
    compiled_latency,
    latency_spread_columns,
    measure_latency,
    parameter_counts,
    time_forward,
)
from compalign.preprocess import (
    ClassNames,
    TransformParams,
)

SUMMARY_FILE = "summary.parquet"
PREDICTIONS_FILE = "predictions.parquet"
REPORT_FILE = "report.html"
GATE_FILE = "gate.json"  # the release gate's verdicts, when rules were given
RELATIVE_COSTS = ("params_nonzero", "macs", "size_bytes", "latency_ms_b1", "latency_ms_b64")
NOISE_FLOOR = ("mismatches", "mismatches_ref_correct")
# formats that are timed as they are deployed: nothing for torch.compile to take
RUN_AS_DEPLOYED = ("torchscript", "export", "onnx", "callable")


def model_costs(audited: AuditedModel, example: torch.Tensor, options: Any) -> dict[str, float]:
    """Parameters (total, nonzero), MACs (PyTorch modules), size of its files on disk and
    gzipped, CPU latency (`audit.latency_*`: median and spread, at the model's fixed batch size
    where it has one, with the load it was taken at); NaN where the format does not let it be
    measured. An int8 PyTorch module read from a file is also compiled and timed
    (`compiled_costs`)."""
    from compalign.model_sources.base import FixedBatch
    from compalign.pruning import count_macs

    loaded = audited.loaded
    costs: dict[str, float] = {name: math.nan for name in COST_METRICS}
    if loaded.parameter_counts is not None:
        costs.update(loaded.parameter_counts)
    elif loaded.weights is not None:
        counts = parameter_counts(loaded.weights)
        if counts["params_total"]:  # int8 TorchScript packs its weights where no count sees them
            costs.update(counts)
    example = example.detach().cpu()
    if loaded.eager:
        costs["macs"] = count_macs(loaded.weights.cpu(), example)
    if loaded.files:
        data = b"".join(path.read_bytes() for path in loaded.files)
        costs["size_bytes"] = len(data)
        costs["size_gzip_bytes"] = len(gzip.compress(data, 6, mtime=0))
    elif loaded.weights is not None:
        from compalign.costs import serialized_size

        costs.update(serialized_size(loaded.weights))
    settings = (options.latency_batch_sizes, options.latency_warmup, options.latency_repeats)
    model = audited.model.cpu() if audited.device.type != "cpu" else audited.model
    if loaded.eager:
        costs.update(measure_latency(model, example, *settings))
    else:
        fixed = loaded.model.batch_size if isinstance(loaded.model, FixedBatch) else None
        costs.update(time_forward(model, example, *settings, fixed_batch=fixed))
    if costs["params_total"] and not math.isnan(costs["params_total"]):
        costs["weight_sparsity"] = 1.0 - costs["params_nonzero"] / costs["params_total"]
    return costs


def compiled_costs(audited: AuditedModel, example: torch.Tensor, options: Any) -> dict[str, Any]:
    """An int8 PyTorch module's latency after torch.compile, beside its eager latency
    (`latency_compiled_ms_b<N>`), measured in a process of its own that is killed after
    `audit.latency_compile_timeout` seconds; `latency_compiled_note` says why there is none.
    {} for the other models (float ones, TorchScript, torch.export and ONNX files, which run
    as they are deployed)."""
    from compalign.train import holds_int8

    loaded = audited.loaded
    if loaded.source in RUN_AS_DEPLOYED or loaded.weights is None:
        return {}
    if not holds_int8(loaded.weights):
        return {}
    if not options.latency_compile_timeout:
        return {"latency_compiled_note": "not compiled (audit.latency_compile_timeout is 0)"}
    if not loaded.files:
        return {
            "latency_compiled_note": "not compiled: a model given in Python has no file to load"
        }
    compiled, why = compiled_latency(
        loaded.spec,
        example,
        options.latency_batch_sizes,
        options.latency_warmup,
        options.latency_repeats,
        options.latency_compile_timeout,
    )
    return {**compiled, **({"latency_compiled_note": why} if why else {})}


# --------------------------------------------------------------------------------------------
# The comparison


@dataclass
class Comparison:
    """What `audit_models` found: `summary` (one row per model: its audit's summary columns,
    noise floor, costs and their ratio to the reference's), `predictions` (one row per test
    example: label, the reference's and each model's prediction and confidence), every model's
    full `metrics`, each candidate's per-example `tables`, and the files its metrics made."""

    summary: pd.DataFrame
    predictions: pd.DataFrame
    metrics: dict[str, dict[str, float]]
    tables: dict[str, pd.DataFrame]
    class_names: list[str]
    transform: str
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # with localize: each candidate's layer table (compalign.localize) and its notes
    layers: dict[str, pd.DataFrame] = field(default_factory=dict)
    layer_notes: dict[str, list[str]] = field(default_factory=dict)
    # the release gate's verdicts (compalign.gate.Verdict), every rule on every candidate, set
    # by apply_gate; shown on the page, written to gate.json, logged to MLflow
    verdicts: list[Any] = field(default_factory=list)
    degenerate: str | None = None  # why the comparison means nothing (reference_at_chance)

    @property
    def candidates(self) -> list[str]:
        return [name for name in self.metrics if name not in RESERVED_NAMES]

    def apply_gate(self, rules: Sequence[Any]) -> list[Any]:
        """Check release rules (`"mismatches_ref_correct_ci_high<=20"` or compalign.gate.Rule)
        on every candidate; the verdicts, passing ones too, are kept (`verdicts`) and
        returned. A malformed rule or an unknown metric is a UserError."""
        from compalign.gate import parse_rule, verdicts

        parsed = [parse_rule(rule) if isinstance(rule, str) else rule for rule in rules]
        metrics = {name: self.gate_metrics(name) for name in self.candidates}
        self.verdicts = verdicts(parsed, metrics)
        return self.verdicts

    def gate_metrics(self, name: str) -> dict[str, float]:
        """Every number a release rule can test for model `name`: its audit metrics, its costs
        and cost ratios, its noise floor, its summary columns."""
        row = self.summary.set_index("name").loc[name]
        numbers = {
            column: float(value)
            for column, value in row.items()
            if isinstance(value, int | float | np.number) and not isinstance(value, bool)
        }
        return {**numbers, **self.metrics[name]}

    def localize(
        self, prepared: Prepared, calibration: Sequence[torch.Tensor] | None = None
    ) -> dict[str, pd.DataFrame]:
        """Localize every candidate's mismatches to its layers (compalign.localize) and keep
        the tables in `layers`; `calibration` (float batches) for quantize_static candidates."""
        from compalign.localize import check_localizable, localize_audited

        reference = prepared.models[REFERENCE]
        check_localizable(
            reference.loaded, {name: prepared.models[name].loaded for name in self.candidates}
        )
        for name in self.candidates:
            frame, notes = localize_audited(
                reference,
                prepared.models[name],
                prepared.data.images,
                prepared.normalise,
                prepared.settings.batch_size,
                calibration,
            )
            self.layers[name], self.layer_notes[name] = frame, notes
        return self.layers

    def write(self, directory: str | Path) -> dict[str, Path]:
        """summary.parquet, predictions.parquet, gate.json, layers.parquet and, per model,
        `models/<name>/` (its per-example comparison, metrics.json, attribution files) under
        `directory`; the page is compalign.report.html.comparison_page's."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = {
            "summary": directory / SUMMARY_FILE,
            "predictions": directory / PREDICTIONS_FILE,
        }
        self.summary.to_parquet(written["summary"], index=False)
        self.predictions.to_parquet(written["predictions"], index=False)
        for name, metrics in self.metrics.items():
            folder = directory / "models" / name
            folder.mkdir(parents=True, exist_ok=True)
            safe = {k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}
            (folder / "metrics.json").write_text(json.dumps(safe, indent=2) + "\n")
            if name in self.tables:
                self.tables[name].to_parquet(folder / "comparison.parquet", index=False)
            write_outputs(self.outputs.get(name, {}), folder)
        if self.layers:
            from compalign.localize import LAYERS_FILE

            for name, frame in self.layers.items():
                frame.to_parquet(directory / "models" / name / LAYERS_FILE, index=False)
            written["layers"] = directory / LAYERS_FILE
            pd.concat(
                [frame.assign(candidate=name) for name, frame in self.layers.items()],
                ignore_index=True,
            ).to_parquet(written["layers"], index=False)
        (directory / GATE_FILE).unlink(missing_ok=True)  # a previous audit's
        if self.verdicts:
            written["gate"] = directory / GATE_FILE
            records = [verdict.record() for verdict in self.verdicts]
            for record in records:  # JSON has no NaN: a value not measured is null
                record["value"] = record["value"] if math.isfinite(record["value"]) else None
            written["gate"].write_text(json.dumps(records, indent=2) + "\n")
        return written


def audit_models(
    reference: ModelLike,
    candidates: Mapping[str, ModelLike],
    data: Any,
    *,
    reference2: ModelLike | None = None,
    class_names: Sequence[str] | None = None,
    class_map: ClassNames | None = None,
    groups: pd.DataFrame | None = None,
    transform: TransformParams | Mapping[str, Any] | None = None,
    normalise: Callable[[torch.Tensor], torch.Tensor] | None = None,
    options: Any = None,
    costs: bool = True,
    device: str | torch.device = "cpu",
    localize: bool = False,
    calibration: Sequence[torch.Tensor] | None = None,
    fail_on: Sequence[str] = (),
    progress: Progress | None = None,
    **audit_settings: Any,
) -> Comparison:
    """Audit each of `candidates` (name -> model) against `reference` on `data`.

    Models: nn.Modules, callables from a float batch to logits, model specs
    (compalign.model_sources) or LoadedModels. Data: a compalign Split (uint8 images, made into
    each model's input by `transform`: compalign.preprocess), a torch Dataset or a DataLoader
    (its images given to the models as they are, or through `normalise`). `class_map` maps the
    data's classes to model outputs (params: data.class_names); `groups` adds group columns
    (one row per example); audit settings come from `options` and keyword arguments (the
    `audit` params section: bootstrap_samples=..., attribution_samples=0, ...). `costs` measures
    parameters, MACs, size and latency; `fail_on` release rules
    (`"mismatches_ref_correct_ci_high<=20"`, as `compalign audit --fail-on`) are checked on
    every candidate (`Comparison.verdicts`; the rules are checked first, before any model runs);
    `progress(done, total, step)` hears of each step (a model's predictions, each metric, its
    costs) as it starts. `localize` finds, per candidate with the reference's module names, the
    layers whose restoration recovers its mismatches (`Comparison.layers`, compalign.localize;
    `calibration`: the float batches a quantize_static candidate is quantized again with).
    """
    if fail_on:  # a malformed rule: refused before the audit runs
        from compalign.gate import parse_rule

        for rule in fail_on:
            parse_rule(rule)
    prepared = check_models(
        reference,
        candidates,
        data,
        reference2=reference2,
        class_names=class_names,
        class_map=class_map,
        groups=groups,
        transform=transform,
        normalise=normalise,
        options=options,
        device=device,
        **audit_settings,
    )
    if localize:
        from compalign.localize import check_localizable

        check_localizable(
            prepared.models[REFERENCE].loaded,
            {name: prepared.models[name].loaded for name in candidates},
        )
    comparison = run_comparison(prepared, costs, progress)
    if localize:
        comparison.localize(prepared, calibration)
    if fail_on:
        comparison.apply_gate(fail_on)
    return comparison


Progress = Callable[[int, int, str], None]  # (steps done, steps in all, the step starting)


def comparison_steps(models: int, measure_costs: bool = True) -> int:
    """How many progress steps `run_comparison` reports for `models` models: per model its
    predictions and each audit metric, then (with costs) its costs."""
    from compalign.audit.metrics import METRICS

    return models * (1 + len(METRICS) + (1 if measure_costs else 0))


def run_comparison(
    prepared: Prepared, measure_costs: bool = True, progress: Progress | None = None
) -> Comparison:
    """Predict (checking every output: check_outputs), audit and (optionally) measure the
    costs of checked models; a reference not clearly above chance is noted as `degenerate`.
    `progress(done, total, step)` is called as each step starts (`comparison_steps` of them)
    and once at the end (done == total)."""
    logits = check_outputs(prepared)
    example = prepared.normalise(prepared.data.images[:1])
    comparison = _run(
        prepared.models,
        logits,
        prepared.data,
        prepared.normalise,
        prepared.settings,
        measure_costs,
        example,
        progress,
    )
    comparison.transform = prepared.transform
    comparison.notes = prepared.notes + comparison.notes
    comparison.degenerate = reference_at_chance(
        prepared.data.labels, logits[REFERENCE], prepared.transform
    )
    if comparison.degenerate:
        comparison.notes.insert(
            0, comparison.degenerate.replace("reference: ", "The reference's ", 1)
        )
    return comparison


def gate_names(prepared: Prepared) -> set[str]:
    """Every name a release rule may test on a candidate (Comparison.gate_metrics), found
    before the audit by a quick one on the checked logits: 100 bootstrap samples, at most 2
    attribution samples, no costs (their columns are there all the same)."""
    settings = prepared.settings.model_copy(
        update={
            "bootstrap_samples": 100,
            "attribution_samples": min(prepared.settings.attribution_samples, 2),
            "figure_examples": 0,
        }
    )
    logits = check_outputs(prepared)
    example = prepared.normalise(prepared.data.images[:1])
    quick = _run(
        prepared.models, logits, prepared.data, prepared.normalise, settings, False, example
    )
    return {name for candidate in quick.candidates for name in quick.gate_metrics(candidate)}


def _run(
    audited: dict[str, AuditedModel],
    all_logits: dict[str, torch.Tensor],
    examples: AuditData,
    normalise: Callable[[torch.Tensor], torch.Tensor],
    settings: Any,
    measure_costs: bool,
    example: torch.Tensor,
    progress: Progress | None = None,
) -> Comparison:
    total = comparison_steps(len(audited), measure_costs)
    done = 0

    def step(text: str) -> None:
        nonlocal done
        if progress is not None:
            progress(done, total, text)
        done += 1

    frames, results = {}, {}
    reference_audit = None
    for name, model in audited.items():  # the reference first
        step(f"{name}: predictions on {len(examples.labels)} test examples")
        logits = all_logits[name]
        frames[name] = predictions_frame(examples.example_ids, examples.labels, logits)
        inputs = AuditInputs(
            frame=frames[name],
            class_names=examples.class_names,
            groups=examples.groups,
            options=settings,
            reference=reference_audit,
            model=model.model if model.differentiable else None,
            images=examples.images,
            normalise=normalise,
            device=model.device,
        )
        results[name] = audit(inputs, on_metric=lambda metric, name=name: step(f"{name}: {metric}"))
        if name == REFERENCE:
            reference_audit = ReferenceAudit(
                frame=frames[name],
                metrics=results[name].metrics,
                attributions=results[name].outputs.get(MAPS_FILE),
            )
    metrics = {name: dict(result.metrics) for name, result in results.items()}
    floor = metrics.get(REFERENCE2)
    for name in audited:
        if name in RESERVED_NAMES or floor is None:
            continue
        for count in NOISE_FLOOR:
            metrics[name][f"noise_floor_{count}"] = floor[count]
            for end in ("ci_low", "ci_high"):
                metrics[name][f"noise_floor_{count}_{end}"] = floor[f"{count}_{end}"]
            metrics[name][f"{count}_above_noise_floor"] = metrics[name][count] - floor[count]
    model_costs_: dict[str, dict[str, Any]] = {}
    for name, model in audited.items():
        if measure_costs:
            step(f"{name}: costs (size, latency)")
            model_costs_[name] = model_costs(model, example, settings)
        else:
            model_costs_[name] = {}
    if measure_costs:  # compiling last: nothing else is timed while a compile child runs
        for name, model in audited.items():
            model_costs_[name].update(compiled_costs(model, example, settings))
    if progress is not None:
        progress(total, total, "done")
    summary = _summary(audited, metrics, model_costs_, settings.latency_batch_sizes)
    predictions = pd.DataFrame(
        {
            "example_id": examples.example_ids,
            "label": examples.labels.numpy().astype(np.int64),
        }
    )
    for name, frame in frames.items():
        predictions[f"{name}_prediction"] = frame["prediction"].to_numpy()
        predictions[f"{name}_confidence"] = frame["confidence"].to_numpy()
    notes = [
        f"{model.name}: no attribution agreement (no gradients reach the input of this "
        f"{model.loaded.source} model)."
        for model in audited.values()
        if not model.differentiable and settings.attribution_samples
    ]
    return Comparison(
        summary=summary,
        predictions=predictions,
        metrics=metrics,
        tables={name: result.table for name, result in results.items() if name != REFERENCE},
        class_names=examples.class_names,
        transform="",
        outputs={name: result.outputs for name, result in results.items() if result.outputs},
        notes=notes,
    )


def _summary(
    audited: dict[str, AuditedModel],
    metrics: dict[str, dict[str, float]],
    costs: dict[str, dict[str, Any]],
    batch_sizes: Sequence[int] = (1, 64),
) -> pd.DataFrame:
    details = [
        *(
            f"latency_ms_b{size}"
            for size in batch_sizes
            if f"latency_ms_b{size}" not in COST_METRICS
        ),
        *latency_spread_columns(batch_sizes),
        *LATENCY_DETAILS,
        *(f"latency_compiled_ms_b{size}" for size in batch_sizes),
    ]
    rows = []
    for name, model in audited.items():
        role = name if name in RESERVED_NAMES else "candidate"
        row: dict[str, Any] = {
            "name": name,
            "role": role,
            "source": model.loaded.source,
            "spec": model.loaded.spec,
            "sha256": model.loaded.digest if model.loaded.files else "",
        }
        columns = summary_row(metrics[name], {})
        row.update({k: v for k, v in columns.items() if not k.startswith("reduction_factor")})
        for count in NOISE_FLOOR:
            for suffix in ("", "_ci_low", "_ci_high"):
                key = f"noise_floor_{count}{suffix}"
                row[key] = metrics[name].get(key, math.nan)
        row["ece_change"] = metrics[name].get("ece_change", math.nan)
        row.update({column: costs[name].get(column, math.nan) for column in COST_METRICS})
        if costs[name]:
            row.update({column: costs[name].get(column, math.nan) for column in details})
            row["latency_compiled_note"] = costs[name].get("latency_compiled_note", "")
        rows.append(row)
    frame = pd.DataFrame(rows)
    reference = frame.iloc[0]
    extra = [f"latency_ms_b{size}" for size in batch_sizes if f"latency_ms_b{size}" in frame]
    for column in dict.fromkeys([*RELATIVE_COSTS, *extra]):
        base = reference[column]
        frame[f"{column}_ratio"] = (
            frame[column] / base if base and math.isfinite(base) else math.nan
        )
    return frame
