"""Stage `align`: fine-tune a compressed model with an alignment loss, masks kept applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from compalign.checkpoint import load_checkpoint, read_checkpoint_manifest, save_checkpoint
from compalign.compress import weight_sparsity
from compalign.config import TrainingParams
from compalign.data import load_split, read_manifest
from compalign.losses import LOSSES
from compalign.train import fit
from compalign.tuning import TUNING_GRIDS, tune_loss
from tasks.logs import epoch_logger, stage_logger
from tasks.options import task_options
from tasks.store import Artifact, materialize, require
from tasks.train import train_config

TUNING_FILE = "tuning.csv"


def align(
    data: Artifact,
    reference: Artifact,
    compressed: Artifact,
    loss: str,
    hyperparameters: dict[str, Any],
    training: dict[str, Any],
    device: str,
    tune: bool = False,
    out_dir: str | None = None,
) -> Artifact:
    """Fine-tune `compressed` on the training split with `LOSSES[loss](**hyperparameters)`;
    with `tune`, first choose the hyperparameters on the validation split (compalign.tuning)."""

    def build(scratch: Path) -> None:
        data_dir = require(data, "prepared dataset")
        compressed_dir = require(compressed, "compressed checkpoint")
        settings = TrainingParams.model_validate(training)
        reference_model = load_checkpoint(require(reference, "reference checkpoint"))
        manifest = read_manifest(data_dir)
        train = load_split(data_dir, "train", manifest)
        chosen = dict(hyperparameters)
        if tune and loss in TUNING_GRIDS:
            model, chosen, table = tune_loss(
                lambda: load_checkpoint(compressed_dir),
                reference_model,
                train,
                load_split(data_dir, "val", manifest),
                loss,
                hyperparameters,
                train_config(settings),
                device,
                on_candidate=lambda index, values: epoch_logger(
                    f"tune {loss} candidate {index} {values}", settings.epochs
                ),
            )
            table.to_csv(scratch / TUNING_FILE, index=False)
            stage_logger().info(
                "tuned %s: chose %s\n%s", loss, chosen, table.to_string(index=False)
            )
        else:
            model = load_checkpoint(compressed_dir)
            fit(
                model,
                train,
                train_config(settings),
                LOSSES[loss](**hyperparameters),
                reference=reference_model,
                device=device,
                on_epoch=epoch_logger(f"align {loss}", settings.epochs),
            )
        measured = weight_sparsity(model)
        stage_logger().info("aligned with %s: weight sparsity still %.4f", loss, measured)
        source = read_checkpoint_manifest(compressed_dir)
        save_checkpoint(
            model,
            source["architecture"],
            scratch,
            stage="align",
            loss=loss,
            hyperparameters=chosen,
            tuned=bool(tune and loss in TUNING_GRIDS),
            compressor=source["compressor"],
            sparsity=source["sparsity"],
            measured_sparsity=measured,
        )

    parameters = {
        "data": data,
        "reference": reference,
        "compressed": compressed,
        "loss": loss,
        "hyperparameters": hyperparameters,
        "training": training,
        "device": device,
        "tune": tune,
    }
    return materialize("align", parameters, build, out_dir)


align_task = task(align, **task_options("align"))
