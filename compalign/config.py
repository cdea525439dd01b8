"""params.yaml: one section per stage, validated by one pydantic model before any work starts.

`load_params(path, overrides)` returns a `Params` or raises `UserError` with one line naming the
offending key and what is allowed.
"""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from compalign.audit.base import AuditSettings
from compalign.audit.metrics import METRICS
from compalign.compressors import COMPRESSORS
from compalign.costs import CompileOptions, LatencyOptions
from compalign.data.sources import SOURCES
from compalign.errors import UserError
from compalign.losses import LOSSES
from compalign.losses.base import NO_FINE_TUNING
from compalign.options import MAX_BATCH, Fraction, Options, Seed, has_options
from compalign.preprocess import ClassNames, TransformParams

Section = Options  # a params section: unknown keys are errors, values checked on assignment


def entry_sections(registry: dict[str, Any]) -> dict[str, Any]:
    """One params sub-section per registry entry that has options, built from its options model
    (the entry's file is the one place its defaults are written)."""
    return {
        name: (entry.options, Field(default_factory=entry.options))
        for name, entry in registry.items()
        if has_options(entry.options)
    }


def merged_options(
    name: str, doc: str, *models: type[Options], base: type[Options] = Section
) -> type[Options]:
    """One flat params section holding the fields of `base` and of several options models (a key
    two models share must be the same field in both)."""
    fields: dict[str, Any] = {
        key: (info.annotation, info) for key, info in base.model_fields.items()
    }
    for model in models:
        for key, info in model.model_fields.items():
            if key in fields and fields[key][1] != info:
                raise TypeError(f"{name}: {key} is defined differently by {model.__name__}")
            fields[key] = (info.annotation, info)
    own = {key: field for key, field in fields.items() if key not in base.model_fields}
    return create_model(name, __base__=base, __module__=__name__, __doc__=doc, **own)


class DataSettings(Section):
    """Which dataset, how it is split, and where it is looked for on disk (the settings every
    source shares; each source's own options are keys of the same section: DataParams)."""

    source: str = "digits"
    """digits (embedded, offline) | cifar10 | cifar100 | mnist | fashionmnist | svhn | celeba |
    imagefolder"""
    root: str = "data/raw"
    """where torchvision datasets and the image folder are looked for"""
    download: bool = False
    """let torchvision download a missing dataset (needs internet)"""
    seed: Seed = 0
    """train/val/test split (stratified by label)"""
    val_fraction: Fraction = 0.15
    """of the whole dataset, taken from the training part"""
    test_fraction: Fraction = 0.25
    """only for sources without an official test split (digits, imagefolder)"""
    limit: Annotated[int, Field(ge=10)] | None = None
    """at most this many examples per split (a seeded subset)"""
    image_size: Annotated[int, Field(ge=4, le=1024)] | None = None
    """resize to a square of this side (null: keep; celeba defaults to 64)"""
    label_groups: dict[str, list[Annotated[int, Field(ge=0)]]] = Field(default_factory=dict)
    """derived group columns: name -> labels in the group, e.g. {odd: [1, 3, 5, 7, 9]}"""
    rare_classes: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    """make these labels rare in training (an imbalanced split; val/test untouched)"""
    rare_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    """keep this fraction of the rare classes' training examples (seeded)"""
    transform: TransformParams = Field(default_factory=TransformParams)
    """Models you bring (`compalign audit`, reference.source=file): the input they expect. null:
    the model source's own (a torchvision architecture's default weights' transforms(), timm's
    data config; an exported program's or ONNX file's fixed input size), else the dataset's (its
    per-channel mean and std, no resizing: what compalign's own models see)."""
    class_names: ClassNames | None = None
    """the model's output order: a list of its class names, or {folder: output index}"""

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        return _one_of(value, SOURCES)

    def dataset_name(self) -> str:
        """What titles and run names call the data: an image folder's own name (its last path
        part), else the source's."""
        if self.source == "imagefolder":
            return Path(self.root).expanduser().resolve().name or self.source
        return self.source

    def prepare_params(self) -> dict[str, Any]:
        """What the prepare stage reads (its cache key): the shared settings and the chosen
        source's own options; not the other sources' options, nor how models see the prepared
        images (applied when they are run)."""
        own = set(SOURCES[self.source].options.model_fields)
        others = {key for entry in SOURCES.values() for key in entry.options.model_fields} - own
        return self.model_dump(exclude=set(MODEL_INPUT_KEYS) | others)


MODEL_INPUT_KEYS = ("transform", "class_names")

DataParams = merged_options(
    "DataParams",
    "Which dataset, how it is split, and where it is looked for on disk.",
    *(entry.options for entry in SOURCES.values()),
    base=DataSettings,
)


class TrainingParams(Section):
    """Settings shared by reference training and alignment fine-tuning."""

    epochs: Annotated[int, Field(ge=1, le=100_000)] = 30
    """passes over the training split"""
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 64
    """examples per optimisation step"""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """sgd (Nesterov momentum) | adamw; cosine schedule either way"""
    lr: Annotated[float, Field(gt=0.0)] = 0.05
    """the learning rate at the start of the cosine schedule"""
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    """sgd only"""
    weight_decay: Annotated[float, Field(ge=0.0)] = 5e-4
    """on every trainable tensor"""
    augment: bool = False
    """random crop + flip (use for CIFAR/SVHN, not for digits)"""
    seed: Seed = 0
    """shuffling and augmentation (and the reference's initial weights)"""
    lr_schedule: Literal["cosine_per_step", "cosine_per_epoch"] = "cosine_per_step"
    """cosine_per_step | cosine_per_epoch (T_max = epochs, stepped once per epoch: Meyer & Wong's
    retrainer)"""


class ReferenceParams(TrainingParams):
    """The dense reference model and how it is trained, or (source: file) the trained model
    the pipeline starts from instead: a model spec (compalign.model_sources) of a PyTorch
    module the compressors can work on: torchvision:NAME@FILE, timm:NAME@FILE or a compalign
    checkpoint folder."""

    model: str = "small_cnn"
    """small_cnn | resnet20 | resnet56 | resnet18 | vgg11_bn | vgg16_bn"""
    source: Literal["train", "file"] = "train"
    """train | file: start from a trained model (reference.path) instead of training"""
    path: str | None = None
    """source=file: torchvision:NAME@FILE | timm:NAME@FILE | a compalign checkpoint folder"""

    def stage_params(self, data: DataParams) -> dict[str, Any]:
        """What the reference stage reads (its cache key): a trained reference's settings as
        they always were; a reference from a file, its spec and how it sees the data."""
        if self.source == "train":
            return self.model_dump(exclude={"source", "path"})
        return {**self.model_dump(), "model_input": data.model_dump(include=set(MODEL_INPUT_KEYS))}

    @model_validator(mode="after")
    def _file_has_a_path(self) -> ReferenceParams:
        if self.source == "file" and not self.path:
            raise ValueError("reference.source=file needs reference.path (a model spec)")
        return self

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from compalign.models import MODELS

        return _one_of(value, MODELS)


class CompressSettings(Section):
    """Which compressors, at which levels: the fraction of prunable weights set to zero for
    unstructured pruning, the fraction of MACs removed for `structured`; quantizers have none.
    Each compressor with options has its own sub-section (`compress.<name>`, from
    compalign.compressors)."""

    methods: list[str] = Field(default_factory=lambda: ["magnitude_global"], min_length=1)
    """magnitude_global | magnitude_layerwise | random (unstructured, one shot) | gradual_magnitude
    (Zhu & Gupta schedule while fine-tuning) | structured (channels removed, torch-pruning, one
    shot) | magnitude_channel | taylor_iterative (Meyer & Wong: iterative Taylor with the
    alignment loss) | quantize_dynamic | quantize_static (int8) | half (float16/bfloat16)"""
    sparsities: list[Fraction] = Field(
        default_factory=lambda: [0.9, 0.95, 0.97, 0.98], min_length=1
    )
    """Levels of the pruning methods: fraction of weights zeroed (unstructured), fraction of MACs
    removed (structured); quantizers have none. On the default data, the small CNN keeps its
    reference's labels after fine-tuning up to ~90% sparsity; mismatches appear from ~95%."""
    calibration_batches: Annotated[int, Field(ge=1, le=1000)] = 8
    """training batches for static quantization and Taylor importance"""
    calibration_batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 64
    """examples per calibration batch"""

    def options(self, method: str) -> dict[str, Any]:
        """The settings of compressor `method`: its sub-section, {} for one without options."""
        if method not in COMPRESSORS:
            raise KeyError(f"unknown compressor {method!r}")
        section = getattr(self, method, None)
        return section.model_dump() if isinstance(section, BaseModel) else {}

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, values: list[str]) -> list[str]:
        return _unique([_one_of(value, COMPRESSORS) for value in values])

    @field_validator("sparsities")
    @classmethod
    def _sorted_sparsities(cls, values: list[float]) -> list[float]:
        return sorted(set(values))


CompressParams = create_model(
    "CompressParams", __base__=CompressSettings, __module__=__name__, **entry_sections(COMPRESSORS)
)


class AlignSettings(TrainingParams):
    """Fine-tuning of each compressed model with each loss ("none": audited as compressed); each
    loss with options has its own sub-section (`align.<loss>`, from compalign.losses)."""

    losses: list[str] = Field(
        default_factory=lambda: [NO_FINE_TUNING, "ce", "kd", "label_preserving", "pw"], min_length=1
    )
    """none = audited straight after compression; ce = plain cross-entropy (the baseline of the
    reduction factors); kd = Hinton distillation; label_preserving = Joseph et al.'s multi-part
    loss; pw = Meyer & Wong's performance-weighted loss; logit_mse"""
    epochs: Annotated[int, Field(ge=1, le=100_000)] = 20
    """fine-tuning epochs of each compressed model"""
    lr: Annotated[float, Field(gt=0.0)] = 0.01
    """the learning rate at the start of the cosine schedule"""
    tune: bool = False
    """choose each loss's weights on the validation split (see compalign/tuning.py)"""
    quantization_aware: bool = False
    """quantizers: also fine-tune with each loss under fake quantization"""

    @field_validator("losses")
    @classmethod
    def _known_losses(cls, values: list[str]) -> list[str]:
        return _unique([_one_of(value, [NO_FINE_TUNING, *LOSSES]) for value in values])

    def loss_hyperparameters(self, loss: str) -> dict[str, Any]:
        """The hyperparameters of `loss`: its sub-section, {} for a loss without options."""
        if loss not in LOSSES and loss != NO_FINE_TUNING:
            raise KeyError(f"unknown loss {loss!r}")
        section = getattr(self, loss, None)
        return section.model_dump() if isinstance(section, BaseModel) else {}

    def training_settings(self) -> dict[str, Any]:
        """The settings every loss's fine-tuning shares (everything but the losses and their
        hyperparameter sub-sections)."""
        return self.model_dump(include=set(TrainingParams.model_fields))


AlignParams = create_model(
    "AlignParams", __base__=AlignSettings, __module__=__name__, **entry_sections(LOSSES)
)


AuditParams = merged_options(
    "AuditParams",
    "How the models are audited: the shared settings, each metric's options "
    "(compalign.audit.metrics) and the latency measurement (compalign.costs).",
    AuditSettings,
    *(entry.options for entry in METRICS.values()),
    LatencyOptions,
    CompileOptions,
)


# where a container's CPU limit is (cgroup v2, then v1): `docker --cpus 2` leaves every core in
# the affinity mask but lets the process use two cores' worth of time
CPU_QUOTA_FILES = (
    (Path("/sys/fs/cgroup/cpu.max"), None),
    (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")),
)


def cpu_quota() -> int | None:
    """Whole cores of this process's cgroup CPU limit (rounded up), or None without a limit."""
    for quota_file, period_file in CPU_QUOTA_FILES:
        try:
            fields = quota_file.read_text().split()
            if period_file is not None:
                fields.append(period_file.read_text().strip())
            quota, period = fields[0], float(fields[1])
        except (OSError, IndexError, ValueError):
            continue
        if quota in ("max", "-1") or period <= 0:
            return None
        return max(1, -(-int(quota) // int(period)))
    return None


def cores() -> int:
    """The CPU cores this process may use: its affinity (not the machine's count), capped by a
    container's CPU limit."""
    if hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:
        count = os.cpu_count() or 1
    quota = cpu_quota()
    return count if quota is None else min(count, quota)


class RunParams(Section):
    """Settings of the run as a whole, not of one stage (they enter no stage's cache key except
    `device`, which training stages record)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto | cpu | cuda"""
    experiment: Annotated[str, Field(min_length=1)] = "compalign"
    """MLflow experiment"""
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    """torch threads of each task (null: the cores not busy with other work, shared among the
    tasks that can run beside it: every core for a task that runs alone, one each in a full grid;
    flows/threads.py)"""
    busy_cores: int | Literal["auto"] = "auto"
    """cores other work keeps busy, left to it (auto: measured as each task starts; 0: none, so
    the thread counts follow the run graph alone, the same whatever the machine's load)"""
    workers: int | Literal["auto"] = "auto"
    """tasks run at once (auto: one per core; see bench/threads.py)"""
    gpu_workers: Annotated[int, Field(ge=1, le=64)] = 2
    """on CUDA, training tasks (reference, align) at once on the GPU; the other tasks (audits,
    compressions) still run `workers` at once"""
    runner: Literal["local", "dask"] = "local"
    """local (a thread pool) | dask (worker processes)"""
    dask_address: str | None = None
    """runner dask: a scheduler's address (null: a LocalCluster on loopback)"""
    resume_every: Annotated[int, Field(ge=0)] = 1
    """epochs between resume points of training (0: none); a killed run continues where it was,
    with the same results (compalign.resume)"""
    compile: bool = False
    """torch.compile models while training on CUDA (no effect on the CPU)"""

    @field_validator("workers", "busy_cores", mode="before")
    @classmethod
    def _auto_or_whole(cls, value: Any, info: Any) -> Any:
        low, high = {"workers": (1, 64), "busy_cores": (0, 1024)}[info.field_name]
        if value == "auto" or (
            isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        ):
            return value
        raise ValueError(f"must be auto or a whole number from {low} to {high}")

    def worker_count(self) -> int:
        """Tasks at once: `workers`, or the machine's cores for "auto"."""
        return cores() if self.workers == "auto" else self.workers

    def task_threads(self, at_once: int | None = None) -> int:
        """Torch threads of a task that runs with at most `at_once` tasks (itself included;
        default: the workers) at a time: `threads`, or the cores shared among them."""
        return self.threads or max(1, cores() // (at_once or self.worker_count()))


class PopulationsParams(Section):
    """Populations of independently trained models (Hooker et al.): K dense members with seeds
    first_seed .. first_seed+K-1, and K compressed members per level and loss. `protocol`:
    `from_scratch` (Hooker et al.'s) trains each compressed member of a compressor that can
    prune while training (gradual_magnitude) from its own seed, for the `reference` section's
    budget, pruning inside the run; `from_dense` compresses dense member k and fine-tunes it
    with the `align` section. Post-training compressors (quantizers, one-shot pruners) always
    compress dense member k."""

    size: Annotated[int, Field(ge=2, le=256)] = 8
    """K dense members (seeds first_seed..first_seed+K-1), K compressed per level and loss"""
    first_seed: Seed = 0
    """the first dense member's seed"""
    compressor: str = "gradual_magnitude"
    """how the compressed members are made (a compress.methods name)"""
    sparsities: list[Fraction] = Field(default_factory=lambda: [0.5, 0.8, 0.9, 0.95], min_length=1)
    """the compression levels of the compressed populations"""
    losses: list[str] = Field(default_factory=lambda: ["ce", "label_preserving"], min_length=1)
    """fine-tuning of the compressed members (compared against PIEs)"""
    significance: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    """Welch t-test level for disparately impacted classes"""
    gallery_examples: Annotated[int, Field(ge=0, le=200)] = 24
    """PIEs shown in each gallery"""
    runner: Literal["local", "dask"] = "local"
    """local (a thread pool) | dask (prefect-dask: a scheduler, or a LocalCluster)"""
    workers: Annotated[int, Field(ge=1, le=256)] | None = None
    """local: tasks at once (null: the cores)"""
    dask_address: str | None = None
    """dask: an existing scheduler, e.g. tcp://10.0.0.5:8786 (null: start a LocalCluster)"""
    dask_workers: Annotated[int, Field(ge=1, le=256)] = 2
    """dask LocalCluster: worker processes"""
    threads_per_task: Annotated[int, Field(ge=1, le=256)] | None = None
    """torch threads of each member task (null: the cores shared among the workers; every core
    for a task that runs alone: prepare, the vectorised dense members)"""
    vectorise: bool = False
    """train the dense members as one batched model (torch.func)"""
    protocol: Literal["from_scratch", "from_dense"] = "from_scratch"
    """Where a compressed member comes from. from_scratch (Hooker et al.'s): trained from its own
    seed (dense seed + 1,000,000 x round(1000 x level): no two members share one) for the
    reference section's budget, gradual_magnitude pruning inside the run; from_dense: dense
    member k compressed, then fine-tuned with the align section. Post-training compressors
    (quantizers, one-shot pruners) always compress dense member k."""

    @field_validator("compressor")
    @classmethod
    def _known_compressor(cls, value: str) -> str:
        return _one_of(value, COMPRESSORS)

    @field_validator("losses")
    @classmethod
    def _known_losses(cls, values: list[str]) -> list[str]:
        return _unique([_one_of(value, [NO_FINE_TUNING, *LOSSES]) for value in values])

    @field_validator("sparsities")
    @classmethod
    def _sorted(cls, values: list[float]) -> list[float]:
        return sorted(set(values))

    @property
    def seeds(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.size))


class ReproduceParams(Section):
    """`compalign reproduce` only: how many training seeds each paper's configuration runs with.
    Seed i (0-based) adds i to every training seed (reference.seed, align.seed and each
    compressor's seed: `training_seeds`); the data split (data.seed) and the audit's bootstrap
    (audit.seed) stay, so every seed is judged on the same test examples."""

    seeds: Annotated[int, Field(ge=1, le=100)] = 1
    """training seeds per configuration: seed i adds i to reference.seed, align.seed and every
    compress.<method>.seed (data.seed and audit.seed stay fixed)"""


class SearchParams(Section):
    """`compalign search` only: the grid of levels a compressor with levels is searched over
    (compalign.search: bisection on it, the least compressed level probed first)."""

    levels: list[Fraction] = Field(
        default_factory=lambda: [
            0.5,
            0.7,
            0.8,
            0.85,
            0.9,
            0.92,
            0.94,
            0.95,
            0.96,
            0.97,
            0.98,
            0.99,
        ],
        min_length=1,
    )
    """the levels a search may choose among, least to most compressed"""

    @field_validator("levels")
    @classmethod
    def _sorted_levels(cls, values: list[float]) -> list[float]:
        return sorted(set(values))


# the sections whose `seed` keys (at any depth) `training_seeds` moves: what a training run draws
TRAINING_SEED_SECTIONS = ("reference", "compress", "align")


class Params(Section):
    """The whole params.yaml."""

    data: DataParams = Field(default_factory=DataParams)
    reference: ReferenceParams = Field(default_factory=ReferenceParams)
    compress: CompressParams = Field(default_factory=CompressParams)
    align: AlignParams = Field(default_factory=AlignParams)
    audit: AuditParams = Field(default_factory=AuditParams)
    populations: PopulationsParams = Field(default_factory=PopulationsParams)
    run: RunParams = Field(default_factory=RunParams)
    reproduce: ReproduceParams = Field(default_factory=ReproduceParams)
    search: SearchParams = Field(default_factory=SearchParams)

    def training_seeds(self, offset: int) -> Params:
        """These params with `offset` added to every seed of reference training, compression
        and fine-tuning (each `seed` key under TRAINING_SEED_SECTIONS); offset 0: unchanged."""
        tree = self.model_dump()
        for section in TRAINING_SEED_SECTIONS:
            _add_to_seeds(tree[section], offset)
        return Params.model_validate(tree)

    def flat(self) -> dict[str, Any]:
        """{"section.key": value} for every leaf, lists as their YAML text (for MLflow params)."""
        return dict(_flatten(self.model_dump()))


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in tree.items():
        if isinstance(value, dict):
            items += _flatten(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _add_to_seeds(tree: dict[str, Any], offset: int) -> None:
    for key, value in tree.items():
        if isinstance(value, dict):
            _add_to_seeds(value, offset)
        elif key == "seed":
            tree[key] = value + offset


def _one_of(value: str, allowed: Any) -> str:
    if value not in allowed:
        raise ValueError(f"unknown name {value!r}; choose one of {', '.join(sorted(allowed))}")
    return value


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def shown_value(value: Any, limit: int = 80) -> str:
    """repr of a value for a message, cut to `limit` characters (an input can be huge)."""
    if isinstance(value, dict | list) and _count_values(value, 1000) > 1000:
        return f"a {type(value).__name__} of more than 1000 values"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _count_values(tree: Any, limit: int) -> int:
    """Values (mappings, lists, keys and leaves) in a YAML tree as if its aliases were copied,
    counted up to just past `limit` (the walk stops there: a billion-laughs file costs nothing)."""
    count, stack = 0, [tree]
    while stack and count <= limit:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return count


MAX_PARAMS_BYTES = 2**20  # a params file is a few KB
MAX_PARAMS_VALUES = 100_000  # and a few hundred values


def _bounded(tree: Any, source: str) -> Any:
    """`tree`, refused when its aliases (*name) expand it past MAX_PARAMS_VALUES values."""
    if _count_values(tree, MAX_PARAMS_VALUES) > MAX_PARAMS_VALUES:
        raise UserError(
            f"{source}: more than {MAX_PARAMS_VALUES} values once its YAML aliases (*name) are "
            "expanded, where params have a few hundred; write the values out without aliases"
        )
    return tree


def _format_error(error: ValidationError, prefix: str) -> str:
    """One line for the first problem: the dotted key, what is wrong, what is allowed."""
    first = error.errors()[0]
    key = ".".join(str(part) if isinstance(part, str) else f"[{part}]" for part in first["loc"])
    key = key.replace(".[", "[")
    if first["type"] == "extra_forbidden":
        *parents, name = first["loc"]
        model: Any = Params
        for part in parents:
            model = model.model_fields[part].annotation
        allowed = sorted(model.model_fields)
        close = difflib.get_close_matches(str(name), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        message = f"unknown key{hint}; allowed keys: {', '.join(allowed)}"
    else:
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] not in ("missing",):
            message += f" (got {shown_value(first['input'])})"
    more = len(error.errors()) - 1
    suffix = f" [+{more} more problem{'s' if more > 1 else ''}]" if more else ""
    return f"{prefix}{key}: {message}{suffix}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """ "section.key=value" -> (["section", "key"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or "." not in key:
        raise UserError(
            f"--set {text!r}: expected section.key=value, for example reference.epochs=5"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise UserError(f"--set {text!r}: the value is not valid YAML ({error.problem})") from error
    return key.split("."), _bounded(value, f"--set {key}")


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each "section.key=value" in a copy of the raw params tree."""
    tree = yaml.safe_load(yaml.safe_dump(tree)) or {}
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {text!r}: {part} is a value, not a section")
            node = child
        node[path[-1]] = value
    return tree


def validate(tree: Any, source: str = "params") -> Params:
    """Validate a raw params tree; UserError with one line on the first problem."""
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise UserError(f"{source}: expected a mapping of sections, got {type(tree).__name__}")
    try:
        return Params.model_validate(tree)
    except ValidationError as error:
        raise UserError(_format_error(error, f"{source}: ")) from None


def load_params(
    path: str | Path | None = "params.yaml", overrides: list[str] | None = None
) -> Params:
    """Read params.yaml (or `path`), apply `--set` overrides, validate."""
    tree: Any = {}
    label = "params"
    if path is not None:
        path = Path(path)
        label = str(path)
        if path.is_dir():
            raise UserError(f"{path}: is a directory, not a params file; pass --params FILE")
        if not path.is_file():
            raise UserError(
                f"{path}: params file not found; pass --params FILE, or write the defaults "
                "here with `compalign init`"
            )
        size = path.stat().st_size
        if size > MAX_PARAMS_BYTES:
            raise UserError(
                f"{path}: {size} bytes, not a params file (at most {MAX_PARAMS_BYTES}); pass "
                "--params FILE"
            )
        try:
            tree = _bounded(yaml.safe_load(path.read_bytes().decode("utf-8")), str(path))
        except UnicodeDecodeError as error:
            raise UserError(
                f"{path}: not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8"
            ) from error
        except yaml.YAMLError as error:
            raise UserError(f"{path}: not valid YAML ({error})".replace("\n", " ")) from error
    if overrides:
        tree = apply_overrides(tree or {}, overrides)
    return validate(tree, label)


# --------------------------------------------------------------------------------------------
# params.yaml as text: `compalign init` and `compalign params`

PARAMS_HEADER = """\
# compalign pipeline parameters: one section per stage (the same names as the Prefect tasks and
# the DVC stages). Validated as a whole before any work starts. Override one value on the
# command line: --set section.key=value. Written by `compalign init` from the settings' own
# descriptions (compalign/config.py and each method's options); `compalign params` prints the
# values in use.
"""
COMMENT_COLUMN = 26  # where a key's comment starts when it fits on the key's line
LINE_WIDTH = 100


def _yaml_value(value: Any) -> str:
    """One value as YAML on one line (lists and mappings in flow style)."""
    text = yaml.safe_dump([value], default_flow_style=True, width=10_000, sort_keys=False)
    return text.strip()[1:-1]


def _comment_lines(text: str, indent: str) -> list[str]:
    """`text` as comment lines of at most LINE_WIDTH characters (a paragraph per line break
    pair)."""
    import textwrap

    lines = []
    for paragraph in text.strip().split("\n\n"):
        words = " ".join(paragraph.split())
        lines += textwrap.wrap(
            words,
            LINE_WIDTH,
            initial_indent=f"{indent}# ",
            subsequent_indent=f"{indent}# ",
            break_on_hyphens=False,
        )
    return lines


def _description(model: type[BaseModel], key: str) -> str:
    return " ".join((model.model_fields[key].description or "").split())


def _section_lines(section: BaseModel, indent: str) -> list[str]:
    lines: list[str] = []
    model = type(section)
    for key in model.model_fields:
        value = getattr(section, key)
        about = _description(model, key)
        if isinstance(value, BaseModel):
            own = type(value).__dict__.get("__doc__") or ""  # its own docstring, not a base's
            about = about or inspect.cleandoc(own).split("\n\n")[0]
            lines += _comment_lines(about, indent) if about else []
            lines.append(f"{indent}{key}:")
            lines += _section_lines(value, indent + "  ")
            continue
        line = f"{indent}{key}: {_yaml_value(value)}"
        trailing = f"{line:<{COMMENT_COLUMN - 2}}  # {about}" if about else line
        if len(trailing) <= LINE_WIDTH:
            lines.append(trailing)
        else:
            lines += [*_comment_lines(about, indent), line]
    return lines


def params_yaml(params: Params | None = None, header: bool = True) -> str:
    """`params` (default: the defaults) as a commented params.yaml: every section and key in
    order, each with its description (the field's docstring) as a comment. What
    `compalign init` writes and `compalign params` prints; it reads back as the same Params."""
    params = params if params is not None else Params()
    lines = [PARAMS_HEADER.rstrip()] if header else []
    for key in Params.model_fields:
        about = _description(Params, key) or inspect.getdoc(type(getattr(params, key))) or ""
        lines += ["", *_comment_lines(about, ""), f"{key}:"]
        lines += _section_lines(getattr(params, key), "  ")
    return "\n".join(lines).lstrip("\n") + "\n"
