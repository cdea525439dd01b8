"""Stage `reference`: train the dense reference model."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compalign.checkpoint import read_checkpoint_manifest, save_checkpoint
from compalign.config import ReferenceParams, TrainingParams
from compalign.data import load_split, read_manifest
from compalign.losses import LOSSES
from compalign.models import build_model
from compalign.train import TrainConfig, fit, predict_logits
from tasks.infra import paths
from tasks.infra.logs import epoch_logger, stage_logger
from tasks.infra.stage import Stage, Variant, model_name
from tasks.infra.store import (
    Artifact,
    entry_dir,
    is_complete,
    materialize,
    prefect_group_cache_key,
    refresh_requested,
    require,
    resume_dir_of,
    stage_key,
    training_runtime,
)


def validation_accuracy(model, val, device: str = "cpu") -> float:
    """Top-1 accuracy of `model` on the validation split (recorded with every reference)."""
    return float((predict_logits(model, val, device=device).argmax(1) == val.labels).float().mean())


def train_config(section: TrainingParams) -> TrainConfig:
    """The training loop's settings from a `reference` or `align` params section."""
    return TrainConfig(**section.model_dump(include=set(TrainingParams.model_fields)))


def architecture_of(model_name: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """build_model's arguments for `model_name` on the prepared dataset of `manifest`."""
    height, _, channels = manifest["image_shape"]
    return {
        "name": model_name,
        "num_classes": manifest["num_classes"],
        "in_channels": channels,
        "image_size": height,
    }


def train_reference(
    data: Artifact, reference: dict[str, Any], device: str, out_dir: str | None = None
) -> Artifact:
    """Train `reference.model` on the training split; record its validation accuracy."""

    def build(scratch: Path) -> None:
        settings = {key: value for key, value in reference.items() if key != "model_input"}
        params = ReferenceParams.model_validate(settings)
        data_dir = require(data, "prepared dataset")
        manifest = read_manifest(data_dir)
        if params.source == "file":
            import_reference(scratch, params, reference.get("model_input") or {}, data, manifest)
            return
        architecture = architecture_of(params.model, manifest)
        model = build_model(**architecture, seed=params.seed)
        train, val = load_split(data_dir, "train", manifest), load_split(data_dir, "val", manifest)
        fit(
            model,
            train,
            train_config(params),
            LOSSES["ce"](),
            device=device,
            on_epoch=epoch_logger("reference", params.epochs),
        )
        val_accuracy = validation_accuracy(model, val, device)
        stage_logger().info("reference %s: validation accuracy %.4f", params.model, val_accuracy)
        save_checkpoint(
            model,
            architecture,
            scratch,
            stage="reference",
            val_accuracy=val_accuracy,
            data_digest=data["digest"],
        )

    return materialize(
        "reference", {"data": data, "reference": reference, "device": device}, build, out_dir
    )


def import_reference(
    scratch: Path,
    params: ReferenceParams,
    model_input: dict[str, Any],
    data: Artifact,
    manifest: dict[str, Any],
) -> None:
    """reference.source=file: the model at reference.path becomes the reference checkpoint
    instead of a trained one. A torchvision or timm model gets its preprocessing
    (data.transform, else its source's) as a first layer that takes the pipeline's input
    (compalign.preprocess.InputAdapter); a compalign checkpoint is taken as it is. Its sha256
    is recorded beside the checkpoint's own."""
    from compalign.checkpoint import load_checkpoint
    from compalign.config import DataParams
    from compalign.errors import UserError
    from compalign.model_sources import load_model
    from compalign.preprocess import adapter_settings, model_transform

    loaded = load_model(params.path)
    data_dir = Path(data["path"])
    val = load_split(data_dir, "val", manifest)
    height, _, channels = manifest["image_shape"]
    if loaded.source == "checkpoint":
        model = load_checkpoint(params.path)
        architecture = {k: v for k, v in loaded.architecture.items() if k != "source"}
        if read_checkpoint_manifest(params.path).get("kind", "float") != "float":
            raise UserError(
                f"reference.path={params.path}: a compressed checkpoint, not a dense one"
            )
    elif loaded.source in ("torchvision", "timm"):
        settings = DataParams.model_validate({"transform": model_input.get("transform") or {}})
        if model_input.get("class_names") is not None:
            raise UserError(
                "reference.source=file: the model must output the data's classes in order "
                "(data.class_names maps classes for compalign audit only)"
            )
        transform = model_transform(
            settings.transform, [loaded], manifest["mean"], manifest["std"], channels
        )
        adapter = adapter_settings(transform, manifest["mean"], manifest["std"], height, channels)
        architecture = {
            "name": f"{loaded.source}:{loaded.architecture['name']}",
            "num_classes": loaded.num_classes,
            "in_channels": channels,
            "image_size": height,
            "adapter": adapter,
        }
        model = build_model(**architecture)
        model[1].load_state_dict(loaded.weights.state_dict())
    else:
        raise UserError(
            f"reference.path={params.path}: a {loaded.source} model cannot be compressed here; "
            "give the reference as torchvision:NAME@FILE, timm:NAME@FILE or a compalign checkpoint"
        )
    if architecture["num_classes"] != manifest["num_classes"]:
        raise UserError(
            f"reference.path={params.path}: the model outputs {architecture['num_classes']} "
            f"classes but the data has {manifest['num_classes']}"
        )
    model.eval()
    val_accuracy = validation_accuracy(model, val)
    stage_logger().info("reference %s: validation accuracy %.4f", params.path, val_accuracy)
    save_checkpoint(
        model,
        architecture,
        scratch,
        stage="reference",
        val_accuracy=val_accuracy,
        data_digest=data["digest"],
        source_spec=params.path,
        source_sha256=loaded.digest,
    )


def member_parameters(parameters: dict[str, Any]) -> list[dict[str, Any]]:
    """The store parameters of each member a `train_population` call makes."""
    return [
        {
            "data": parameters["data"],
            "reference": {**parameters["reference"], "seed": seed},
            "device": parameters["device"],
            # batched kernels round differently from one-at-a-time ones: never the same entry
            "vectorised": True,
        }
        for seed in parameters["seeds"]
    ]


def train_population(
    data: Artifact, reference: dict[str, Any], seeds: list[int], device: str
) -> list[Artifact]:
    """Train one dense member per seed together as one batched model (compalign.vectorised:
    fit's math for each member), each stored as its own reference checkpoint."""
    if reference.get("source") == "file":
        from compalign.errors import UserError

        raise UserError("populations train their members: reference.source=file is for `run`")
    parameters = {"data": data, "reference": reference, "seeds": seeds, "device": device}
    members = member_parameters(parameters)
    if all(is_complete(entry_dir(stage_key("reference", member))) for member in members):
        return [materialize("reference", member, _unreachable) for member in members]
    from compalign.vectorised import fit_population

    params = ReferenceParams.model_validate(reference)
    data_dir = require(data, "prepared dataset")
    manifest = read_manifest(data_dir)
    architecture = architecture_of(params.model, manifest)
    models = [build_model(**architecture, seed=seed) for seed in seeds]
    configs = [train_config(params.model_copy(update={"seed": seed})) for seed in seeds]
    train, val = load_split(data_dir, "train", manifest), load_split(data_dir, "val", manifest)
    stage_logger().info("training %d members of %s as one batched model", len(seeds), params.model)
    # resume points of the batched training, named by the members' keys (tasks.infra.store)
    group = hashlib.sha256("".join(stage_key("reference", m) for m in members).encode())
    resume_dir = resume_dir_of(entry_dir(f"reference-group-{group.hexdigest()[:24]}"))
    if refresh_requested():
        shutil.rmtree(resume_dir, ignore_errors=True)
    with training_runtime(resume_dir):
        fit_population(models, train, configs, LOSSES["ce"](), device=device)
    artifacts = []
    for member, model in zip(members, models, strict=True):
        val_accuracy = validation_accuracy(model, val, device)

        def build(scratch: Path, model=model, val_accuracy=val_accuracy) -> None:
            save_checkpoint(
                model,
                architecture,
                scratch,
                stage="reference",
                val_accuracy=val_accuracy,
                data_digest=data["digest"],
                vectorised=True,
            )

        artifacts.append(materialize("reference", member, build))
    shutil.rmtree(resume_dir, ignore_errors=True)  # every member stored: nothing to resume
    return artifacts


def _unreachable(scratch: Path) -> None:
    raise RuntimeError("a finished store entry was rebuilt")


def reference_file(parameters: Mapping[str, Any]) -> Mapping[str, Any]:
    """The parameters and, for reference.source=file, the content digest of the model file (a
    path names no content)."""
    reference = parameters.get("reference") or {}
    if reference.get("source") != "file":
        return parameters
    from compalign.files import sha256_file
    from compalign.model_sources import spec_files

    files = spec_files(str(reference.get("path")))
    digests = [sha256_file(path) if path.is_file() else None for path in files]
    return {**parameters, "reference_file": digests}


def reference_code(parameters: Mapping[str, Any] | None) -> list[Any]:
    """Trained with plain cross-entropy, or read by a model source (every source: None)."""
    from compalign.errors import UserError
    from compalign.model_sources import MODEL_SOURCES, parse_spec

    if parameters is None:
        return [LOSSES["ce"], *MODEL_SOURCES.values()]
    reference = parameters.get("reference") or {}
    if reference.get("source") != "file":
        return [LOSSES["ce"]]
    try:
        source = parse_spec(str(reference.get("path")))[0]
    except UserError:
        return []
    return [MODEL_SOURCES[source]] if source in MODEL_SOURCES else []


STAGE = Stage(
    name="reference",
    function=train_reference,
    run_name=lambda p: f"reference {model_name(p['reference'])}",
    inputs=("data",),
    code=reference_code,
    key=reference_file,
    params=("reference", "run.device", "data.transform", "data.class_names"),
    out=paths.REFERENCE_DIR.as_posix(),
    variants={
        # the dense members of a population, trained together as one batched model
        "population": Variant(
            train_population,
            {
                "name": "reference-population",
                "task_run_name": lambda parameters: (
                    f"reference {parameters['reference']['model']} seeds "
                    + ", ".join(map(str, parameters["seeds"]))
                ),
                "cache_key_fn": prefect_group_cache_key("reference", member_parameters),
            },
        )
    },
)
