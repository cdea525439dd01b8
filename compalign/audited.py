"""The models and data of an audit you bring, loaded and checked before anything is measured.

Models come in any form a user has them (an `nn.Module`, any callable from images to logits, a
model spec such as `torchvision:resnet18@weights.pt` or `int8.onnx`, a `LoadedModel`), test data
as a prepared `Split`, a torch `Dataset` or a `DataLoader`. `check_models` loads them, chooses one
preprocessing for all, runs each model once and maps its outputs to the data's classes (every
mistake is one UserError here, before any audit runs); `check_outputs` predicts the whole data and
refuses non-finite inputs or logits. compalign.compare audits what this module prepared,
compalign.localize localizes it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import ValidationError
from torch import nn

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
