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
from pydantic import ValidationError
from torch import nn

from compalign.audit import (
    AuditInputs,
    ReferenceAudit,
    audit,
    predictions_frame,
    summary_row,
    write_outputs,
)
from compalign.audit.metrics.attribution import MAPS_FILE
from compalign.costs import (
    COST_METRICS,
    LATENCY_DETAILS,
    compiled_latency,
    latency_spread_columns,
    measure_latency,
    parameter_counts,
    time_forward,
)
from compalign.errors import UserError
from compalign.model_sources import LoadedModel, load_model
from compalign.model_sources.base import Unregistered
from compalign.preprocess import (
    ClassNames,
    Transform,
    TransformParams,
    model_transform,
    output_indices,
)

REFERENCE = "reference"
REFERENCE2 = "reference2"
RESERVED_NAMES = (REFERENCE, REFERENCE2)
SUMMARY_FILE = "summary.parquet"
PREDICTIONS_FILE = "predictions.parquet"
REPORT_FILE = "report.html"
GATE_FILE = "gate.json"  # the release gate's verdicts, when rules were given
RELATIVE_COSTS = ("params_nonzero", "macs", "size_bytes", "latency_ms_b1", "latency_ms_b64")
NOISE_FLOOR = ("mismatches", "mismatches_ref_correct")
# formats that are timed as they are deployed: nothing for torch.compile to take
RUN_AS_DEPLOYED = ("torchscript", "export", "onnx", "callable")

ModelLike = LoadedModel | nn.Module | Callable[[torch.Tensor], torch.Tensor] | str | Path


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class AuditData:
    """Test examples in memory: images (uint8 [N, C, H, W] to be transformed, or floats that
    are already a model's input), labels, ids, group columns and class names."""

    images: torch.Tensor
    labels: torch.Tensor
    example_ids: list[str]
    groups: pd.DataFrame
    class_names: list[str]
    mean: list[float] | None = None  # the dataset's normalisation of uint8 images
    std: list[float] | None = None

    @property
    def raw(self) -> bool:
        return self.images.dtype == torch.uint8


def audit_data(
    data: Any,
    class_names: Sequence[str] | None = None,
    groups: pd.DataFrame | None = None,
    batch_size: int = 256,
) -> AuditData:
    """`data` as AuditData: a compalign `Split` (uint8 images, its groups and normalisation), a
    map-style torch Dataset of (image, label) pairs, or an iterable of (images, labels) batches
    (a DataLoader). Class names: `class_names`, else the dataset's `classes`, else 0..K-1."""
    from compalign.data import Split

    mean = std = None
    if isinstance(data, AuditData):
        return data
    if isinstance(data, Split):
        images, labels, ids = data.images, data.labels, list(data.example_ids)
        mean, std = data.mean.flatten().tolist(), data.std.flatten().tolist()
        groups = data.groups if groups is None else groups
    else:
        batches = data
        if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            batches = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
        image_batches, label_batches = [], []
        for batch in batches:
            if not isinstance(batch, list | tuple) or len(batch) < 2:
                raise UserError("data: expected (images, labels) pairs or batches")
            image_batches.append(torch.as_tensor(batch[0]))
            label_batches.append(torch.as_tensor(batch[1]).reshape(-1))
        if not image_batches:
            raise UserError("data: no examples")
        images, labels = torch.cat(image_batches), torch.cat(label_batches).long()
        ids = [str(index) for index in range(len(labels))]
        dataset = getattr(data, "dataset", data)
        if class_names is None and hasattr(dataset, "classes"):
            class_names = list(dataset.classes)
    if images.dim() != 4:
        raise UserError(f"data: images must be [N, C, H, W], got shape {list(images.shape)}")
    if class_names is None:
        class_names = [str(index) for index in range(int(labels.max()) + 1)]
    if groups is None:
        groups = pd.DataFrame(index=range(len(labels)))
    if len(groups) != len(labels):
        raise UserError(f"groups: {len(groups)} rows for {len(labels)} examples")
    return AuditData(
        images=images,
        labels=labels,
        example_ids=ids,
        groups=groups.reset_index(drop=True),
        class_names=[str(name) for name in class_names],
        mean=mean,
        std=std,
    )


# --------------------------------------------------------------------------------------------
# Models


def as_loaded(model: ModelLike, name: str) -> LoadedModel:
    """Any accepted form of a model as a LoadedModel (a spec is loaded from its file)."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str | Path):
        return load_model(str(model))
    if isinstance(model, nn.Module):
        return LoadedModel(
            model=model.eval(),
            source="module",
            spec=type(model).__name__,
            files=(),
            weights=model,
            eager=True,
        )
    if callable(model):
        return LoadedModel(
            model=Unregistered(model),
            source="callable",
            spec=getattr(model, "__name__", name),
            files=(),
        )
    raise TypeError(f"{name}: expected an nn.Module, a callable or a model spec, got {model!r}")


class SelectedOutputs(nn.Module):
    """The model's logits of the dataset's classes only, in the dataset's order."""

    def __init__(self, model: nn.Module, indices: list[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("indices", torch.tensor(indices, dtype=torch.long), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)[:, self.indices.to(images.device)]


@dataclass
class AuditedModel:
    """A model ready to run on the data: its name, what it was loaded from, the module that
    gives the data's classes' logits, where it runs, and whether gradients reach its input."""

    name: str
    loaded: LoadedModel
    model: nn.Module
    device: torch.device
    differentiable: bool
    num_classes: int


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _device_for(loaded: LoadedModel, device: torch.device) -> torch.device:
    """A PyTorch module runs on `device` (a quantized or half one on the CPU); an exported
    program, an ONNX session or a plain callable on the CPU."""
    if loaded.weights is None or loaded.source == "export" or device.type == "cpu":
        return torch.device("cpu")
    from compalign.train import runs_on

    return runs_on(loaded.model, device)


def gradients_flow(model: nn.Module, example: torch.Tensor) -> bool:
    """Whether the model's logits have a gradient with respect to its input (not for int8
    kernels, ONNX sessions or callables outside autograd)."""
    images = example.detach().clone().requires_grad_()
    try:
        with torch.enable_grad():
            output = model(images)
            (gradient,) = torch.autograd.grad(output.float().sum(), images, allow_unused=True)
    except Exception:  # any failure of a user's model under autograd: no gradients
        return False
    return gradient is not None


def prepare_model(
    name: str,
    loaded: LoadedModel,
    example: torch.Tensor,
    class_names: list[str],
    class_map: ClassNames | None,
    device: torch.device,
    probe_gradients: bool = True,
) -> AuditedModel:
    """Run the model on `example` (inputs as it will get them) as a batch of 1 and, where
    there are two, of 2: its logits must be [batch, classes] with the same class count on both;
    map its outputs to the data's classes. UserError naming the model on any mismatch."""
    where = f"{name} ({loaded.spec})"
    run_on = _device_for(loaded, device)
    model = loaded.model.to(run_on).eval()
    counts = {}
    for size in sorted({1, min(2, len(example))}):
        batch = example[:size].to(run_on)
        try:
            with torch.no_grad():
                output = model(batch)
        except Exception as error:  # the user's model refused the input: say which input
            raise UserError(
                f"{where}: fails on an input of shape {list(batch.shape)} ({_first_line(error)}); "
                "set data.transform (resize, centre_crop, channels) to the input it expects"
            ) from None
        if not isinstance(output, torch.Tensor) or output.dim() != 2 or len(output) != size:
            shape = (
                list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            )
            raise UserError(
                f"{where}: returns {shape} for a batch of {size}, not logits [batch, classes]"
            )
        counts[size] = int(output.shape[1])
    if len(set(counts.values())) > 1:
        raise UserError(
            f"{where}: returns {counts[1]} logits for a batch of 1 but {counts[2]} for a batch "
            "of 2; a classifier's class count does not depend on the batch"
        )
    num_classes = counts[1]
    try:
        indices = output_indices(class_names, class_map, num_classes)
    except UserError as error:
        raise UserError(f"{where}: {error}") from None
    if indices is not None:
        model = SelectedOutputs(model, indices)
    differentiable = (
        probe_gradients
        and loaded.source != "onnx"
        and gradients_flow(model, example[:1].to(run_on))
    )
    return AuditedModel(name, loaded, model, run_on, differentiable, num_classes)


@torch.no_grad()
def predict(
    audited: AuditedModel,
    images: torch.Tensor,
    normalise: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
) -> torch.Tensor:
    """Logits [N, classes] of the model on every image, in order, on the CPU; every batch's
    output checked for its shape (UserError naming the model and the batch size)."""
    where = f"{audited.name} ({audited.loaded.spec})"
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = normalise(images[start : start + batch_size]).to(audited.device)
        try:
            output = audited.model(batch)
        except Exception as error:  # e.g. fewer logits on this batch than the classes mapped
            raise UserError(
                f"{where}: fails on a batch of {len(batch)} ({_first_line(error)}) though it ran "
                "on batches of 1 and 2"
            ) from None
        expected = (len(batch), _output_width(audited))
        if not isinstance(output, torch.Tensor) or tuple(output.shape) != expected:
            shape = (
                list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            )
            raise UserError(
                f"{where}: returns {shape} for a batch of {len(batch)}, but "
                f"[batch, {audited.num_classes}] for batches of 1 and 2"
            )
        outputs.append(output.float().cpu())
    return torch.cat(outputs)


def _output_width(audited: AuditedModel) -> int:
    """The logits per example the audited model gives (after mapping to the data's classes)."""
    if isinstance(audited.model, SelectedOutputs):
        return len(audited.model.indices)
    return audited.num_classes


def non_finite_inputs(
    images: torch.Tensor, normalise: Callable[[torch.Tensor], torch.Tensor], batch_size: int
) -> int:
    """How many examples the preprocessing makes into an input with a NaN or infinite value."""
    count = 0
    for start in range(0, len(images), batch_size):
        batch = normalise(images[start : start + batch_size])
        count += int((~torch.isfinite(batch.float())).flatten(1).any(dim=1).sum())
    return count


def check_outputs(prepared: Prepared) -> dict[str, torch.Tensor]:
    """Every model's logits on the whole data, checked: finite inputs, the shape of every
    batch's output, finite logits. A model with NaN or infinite logits cannot be audited (its
    argmax and confidence mean nothing): UserError naming it and how many examples. Returns the
    logits (kept in `prepared.logits`)."""
    if prepared.logits is not None:
        return prepared.logits
    data, settings = prepared.data, prepared.settings
    total = len(data.labels)
    bad_inputs = non_finite_inputs(data.images, prepared.normalise, settings.batch_size)
    if bad_inputs:
        raise UserError(
            f"the preprocessing ({prepared.transform}) makes non-finite inputs (NaN or inf) for "
            f"{bad_inputs} of {total} test examples; check data.transform (mean, std)"
        )
    logits = {}
    for name, audited in prepared.models.items():
        values = predict(audited, data.images, prepared.normalise, settings.batch_size)
        bad = int((~torch.isfinite(values)).any(dim=1).sum())
        if bad:
            raise UserError(
                f"{name} ({audited.loaded.spec}): non-finite logits (NaN or inf) on {bad} of "
                f"{total} test examples; a model with such outputs cannot be audited: check "
                "the model and its input (data.transform)"
            )
        logits[name] = values
    prepared.logits = logits
    return logits


CHANCE_SIGNIFICANCE = 0.01


def reference_at_chance(labels: torch.Tensor, logits: torch.Tensor, transform: str) -> str | None:
    """One line when the reference is not clearly above chance (a degenerate comparison:
    every model agrees with a reference that knows nothing), else None. Chance is the largest
    class's share of the examples (what always answering that class scores); "clearly above"
    is a one-sided binomial test at CHANCE_SIGNIFICANCE."""
    from scipy.stats import binomtest

    total = len(labels)
    if total == 0:
        return None
    correct = int((logits.argmax(dim=1) == labels).sum())
    chance = float(torch.bincount(labels).max()) / total
    p_value = binomtest(correct, total, chance, alternative="greater").pvalue
    if p_value < CHANCE_SIGNIFICANCE:
        return None
    return (
        f"reference: accuracy {correct / total:.3f} is not clearly above chance ({chance:.3f}, "
        f"the largest class's share of {total} test examples; binomial p = {p_value:.2g}): "
        f"a degenerate comparison. Input handling used: {transform}; set data.transform "
        "(resize, centre_crop, mean, std) to the input the reference expects, or pass "
        "--reference-at-chance if the reference is meant to be so"
    )


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


def audit_options(options: Any = None, **overrides: Any) -> Any:
    """The `audit` params section (compalign.config.AuditParams) from a section, a dict or
    keyword overrides (e.g. attribution_samples=0, bootstrap_samples=200)."""
    from compalign.config import AuditParams

    base = options.model_dump() if hasattr(options, "model_dump") else dict(options or {})
    try:
        return AuditParams.model_validate({**base, **overrides})
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise UserError(f"audit option {key}: {first['msg']}") from None


def _check_names(candidates: Mapping[str, Any]) -> None:
    if not candidates:
        raise UserError("no candidate to audit: give at least one compressed model")
    for name in candidates:
        if name in RESERVED_NAMES or not name or not all(c.isalnum() or c in "_-." for c in name):
            raise UserError(
                f"candidate name {name!r}: use letters, digits, _ - . (not reference, reference2)"
            )


def choose_transform(
    data: AuditData, models: Sequence[LoadedModel], params: TransformParams
) -> Transform:
    """One preprocessing for every model of a comparison (compalign.preprocess.model_transform:
    `data.transform`, else the first model's source that knows it, the reference first, else
    the dataset's)."""
    channels = data.images.shape[1]
    mean = data.mean if data.mean is not None else [0.0] * channels
    std = data.std if data.std is not None else [1.0] * channels
    return model_transform(params, models, mean, std, channels)


def parse_candidate(text: str) -> tuple[str, str]:
    """ "NAME=SPEC" -> (NAME, SPEC); UserError for anything else."""
    name, equals, spec = text.partition("=")
    if not equals or not name or not spec:
        raise UserError(f"--compressed {text!r}: expected NAME=SPEC, e.g. int8=model_int8.onnx")
    _check_names({name: spec})
    return name, spec


@dataclass
class Prepared:
    """Models and data resolved for a comparison, before anything is predicted."""

    models: dict[str, AuditedModel]
    data: AuditData
    normalise: Callable[[torch.Tensor], torch.Tensor]
    transform: str
    settings: Any
    notes: list[str]
    logits: dict[str, torch.Tensor] | None = None  # set by check_outputs


MAX_BATCH_BYTES = 4 * 2**30


def _check_batch_memory(settings: Any, example: torch.Tensor, count: int) -> None:
    """Refuse a prediction or latency batch whose inputs alone take more than MAX_BATCH_BYTES
    (a latency batch is built whatever the data's size)."""
    per_input = example[:1].numel() * example.element_size()
    batches = [("audit.batch_size", min(settings.batch_size, count))]
    batches += [("audit.latency_batch_sizes", size) for size in settings.latency_batch_sizes]
    for key, size in batches:
        if size * per_input > MAX_BATCH_BYTES:
            raise UserError(
                f"{key}: a batch of {size} inputs of shape {list(example.shape[1:])} takes "
                f"{size * per_input / 2**30:.1f} GiB (at most {MAX_BATCH_BYTES // 2**30}); "
                "lower it"
            )


def check_models(
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
    device: str | torch.device = "cpu",
    **audit_settings: Any,
) -> Prepared:
    """Load the models, choose the preprocessing, run each model once and map its outputs to
    the data's classes: every mistake (a file, a format, an input size, a class count) is a
    UserError here, before any audit runs. Arguments as for `audit_models`."""
    if candidates is None or not isinstance(candidates, Mapping):
        raise UserError("candidates: expected a mapping of names to models")
    _check_names(candidates)
    settings = audit_options(options, **audit_settings)
    examples = audit_data(data, class_names, groups, settings.batch_size)
    named = {REFERENCE: reference, **({} if reference2 is None else {REFERENCE2: reference2})}
    named.update(candidates)
    loaded = {name: as_loaded(model, name) for name, model in named.items()}
    transform_params = TransformParams.model_validate(dict(transform or {}))
    notes = []
    if normalise is None and examples.raw:
        chosen = choose_transform(examples, list(loaded.values()), transform_params)
        normalise, described = chosen, chosen.describe()
    elif normalise is None:
        normalise, described = (lambda images: images), "images as the data gives them"
    else:
        described = f"the given normalise function ({getattr(normalise, '__name__', 'callable')})"
    if not examples.raw and settings.figure_examples:
        settings = settings.model_copy(update={"figure_examples": 0})
        notes.append("No attribution figure: the data's images are not raw pixels.")
    example = normalise(examples.images[:2])
    _check_batch_memory(settings, example, len(examples.labels))
    probe = settings.attribution_samples > 0
    models = {
        name: prepare_model(
            name, model, example, examples.class_names, class_map, torch.device(device), probe
        )
        for name, model in loaded.items()
    }
    return Prepared(models, examples, normalise, described, settings, notes)


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
