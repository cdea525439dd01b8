"""Stage `pruned`: one compressed population member trained from scratch with its compressor
inside the training run (Hooker et al.'s protocol, the populations flow's `protocol:
from_scratch`): a fresh model from its own seed, the `reference` section's training budget, the
compressor family's `train_pruned`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compalign.checkpoint import load_checkpoint, save_checkpoint
from compalign.compressors import COMPRESSORS
from compalign.config import ReferenceParams
from compalign.data import load_split, read_manifest
from compalign.losses import LOSSES
from compalign.models import build_model
from compalign.pruning import weight_sparsity
from tasks.infra.code import compression_entries
from tasks.infra.logs import epoch_logger, stage_logger
from tasks.infra.stage import Stage
from tasks.infra.store import Artifact, materialize, require
from tasks.train import architecture_of, train_config, validation_accuracy

# A compressed member's seed is its dense member's seed moved by the level, so that no two
# members of a populations run (dense or at any level) share an initialisation or a data order:
# Hooker et al. train every member as an independent run (their scripts set no seed at all).
LEVEL_SEED_STRIDE = 1_000_000


def pruned_seed(seed: int, level: float) -> int:
    """The training seed of the compressed member at `level` paired with dense member `seed`."""
    return seed + LEVEL_SEED_STRIDE * round(level * 1000)


def train_pruned_member(
    data: Artifact,
    reference: dict[str, Any],
    method: str,
    level: float,
    options: dict[str, Any],
    loss: str,
    hyperparameters: dict[str, Any],
    teacher: Artifact | None,
    device: str,
) -> Artifact:
    """Train `reference.model` from scratch (seed `reference.seed`) for the reference's budget
    while compressor `method` (a family with `train_pruned`) brings it to `level`; `loss` with
    `hyperparameters`, against the frozen `teacher` (a dense member) when the loss reads a
    reference's logits."""

    def build(scratch: Path) -> None:
        params = ReferenceParams.model_validate(reference)
        data_dir = require(data, "prepared dataset")
        manifest = read_manifest(data_dir)
        architecture = architecture_of(params.model, manifest)
        model = build_model(**architecture, seed=params.seed)
        train, val = load_split(data_dir, "train", manifest), load_split(data_dir, "val", manifest)
        loss_entry = LOSSES[loss]
        frozen = None
        if loss_entry.uses_reference:
            frozen = load_checkpoint(require(teacher, "dense member checkpoint"))
        family = COMPRESSORS[method].family
        family.train_pruned(
            model,
            train,
            train_config(params),
            level,
            COMPRESSORS[method].settings(options),
            loss_fn=loss_entry(**hyperparameters),
            reference=frozen,
            device=device,
            on_epoch=epoch_logger(f"pruned {method} {level:g}", params.epochs),
        )
        val_accuracy = validation_accuracy(model, val, device)
        measured = weight_sparsity(model)
        stage_logger().info(
            "%s %g from scratch (seed %d): weight sparsity %.4f, validation accuracy %.4f",
            method,
            level,
            params.seed,
            measured,
            val_accuracy,
        )
        save_checkpoint(
            model,
            architecture,
            scratch,
            options=options,
            stage="pruned",
            compressor=method,
            sparsity=level,
            seed=params.seed,
            measured_sparsity=measured,
            val_accuracy=val_accuracy,
            data_digest=data["digest"],
            loss=loss,
        )

    parameters = {
        "data": data,
        "reference": reference,
        "method": method,
        "level": level,
        "options": options,
        "loss": loss,
        "hyperparameters": hyperparameters,
        "teacher": teacher if LOSSES[loss].uses_reference else None,
        "device": device,
    }
    return materialize("pruned", parameters, build)


STAGE = Stage(
    name="pruned",
    function=train_pruned_member,
    inputs=("data", "teacher"),
    code=compression_entries,
)
