"""Stage `align`: fine-tune a compressed model with an alignment loss, as its compressor needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compalign.checkpoint import load_checkpoint, read_checkpoint_manifest, save_checkpoint
from compalign.compressors import COMPRESSORS
from compalign.config import TrainingParams
from compalign.data import load_split, read_manifest
from compalign.finetune import fine_tune
from compalign.losses import LOSSES, AdaptiveLoss
from compalign.pruning import weight_sparsity
from compalign.tuning import tunable, tune_loss
from tasks.infra import paths
from tasks.infra.code import compression_entries
from tasks.infra.logs import epoch_logger, stage_logger
from tasks.infra.stage import Stage, compressed_name
from tasks.infra.store import Artifact, materialize, require
from tasks.train import train_config

TUNING_FILE = "tuning.csv"


def align(
    data: Artifact,
    reference: Artifact,
    compressed: Artifact,
    method: str,
    level: float | None,
    options: dict[str, Any],
    loss: str,
    hyperparameters: dict[str, Any],
    training: dict[str, Any],
    device: str,
    tune: bool = False,
    out_dir: str | None = None,
    tune_budget: int | None = None,
) -> Artifact:
    """Fine-tune the compressed model of `method` with `LOSSES[loss](**hyperparameters)`; with
    `tune`, first choose the hyperparameters on the validation split (compalign.tuning), with
    `tune_budget` candidates when given (every loss of a run the same number)."""

    def build(scratch: Path) -> None:
        data_dir = require(data, "prepared dataset")
        compressed_dir = require(compressed, "compressed checkpoint")
        reference_dir = require(reference, "reference checkpoint")
        settings = TrainingParams.model_validate(training)
        reference_model = load_checkpoint(reference_dir)
        manifest = read_manifest(data_dir)
        train = load_split(data_dir, "train", manifest)

        trajectories = {}  # id(model) -> its AdaptiveLoss's per-epoch record (SoftAdapt)

        def train_candidate(loss_fn, on_epoch, seed_offset=0):
            seeded = settings.model_copy(update={"seed": settings.seed + seed_offset})
            model = fine_tune(
                method,
                level,
                options,
                lambda: load_checkpoint(compressed_dir),
                lambda: load_checkpoint(reference_dir),
                reference_model,
                train,
                train_config(seeded),
                loss_fn,
                device,
                on_epoch,
            )
            if isinstance(loss_fn, AdaptiveLoss):
                trajectories[id(model)] = loss_fn.trajectory()
            return model

        chosen = dict(hyperparameters)
        tuned = bool(tune and tunable(loss, tune_budget))
        if tuned:
            model, chosen, table = tune_loss(
                train_candidate,
                reference_model,
                load_split(data_dir, "val", manifest),
                loss,
                hyperparameters,
                device,
                on_candidate=lambda index, values: epoch_logger(
                    f"tune {loss} candidate {index} {values}", settings.epochs
                ),
                budget=tune_budget,
            )
            table.to_csv(scratch / TUNING_FILE, index=False)
            stage_logger().info(
                "tuned %s: chose %s\n%s", loss, chosen, table.to_string(index=False)
            )
        else:
            model = train_candidate(
                LOSSES[loss](**hyperparameters), epoch_logger(f"align {loss}", settings.epochs)
            )
        quantized = COMPRESSORS[method].family.quantized
        measured = 0.0 if quantized else weight_sparsity(model)
        stage_logger().info("%s aligned with %s: weight sparsity %.4f", method, loss, measured)
        source = read_checkpoint_manifest(compressed_dir)
        save_checkpoint(
            model,
            source["architecture"],
            scratch,
            kind=source["kind"],
            options=options,
            stage="align",
            loss=loss,
            hyperparameters=chosen,
            tuned=tuned,
            compressor=method,
            sparsity=level,
            measured_sparsity=measured,
            compression_record=source.get("compression_record", {}),
            # per epoch, e.g. softadapt.w_ce: the audit logs it as an MLflow metric history
            **({"loss_trajectory": trajectories[id(model)]} if id(model) in trajectories else {}),
        )

    parameters = {
        "data": data,
        "reference": reference,
        "compressed": compressed,
        "method": method,
        "level": level,
        "options": options,
        "loss": loss,
        "hyperparameters": hyperparameters,
        "training": training,
        "device": device,
        "tune": tune,
    }
    if tune and tune_budget:  # absent otherwise: the cache keys of untuned runs stay as they were
        parameters["tune_budget"] = tune_budget
    return materialize("align", parameters, build, out_dir)


STAGE = Stage(
    name="align",
    function=align,
    run_name=lambda p: f"align {compressed_name(p['method'], p['level'])}-{p['loss']}",
    inputs=("data", "reference", "compressed"),
    code=compression_entries,
    params=("align", "compress", "run.device"),
    out=(paths.ALIGNED_DIR / "{model}").as_posix(),
)
