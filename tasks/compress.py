"""Stage `compress`: one compressed copy of the reference per (method, level)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from prefect import task

from compalign.checkpoint import load_checkpoint, read_checkpoint_manifest, save_checkpoint
from compalign.compressors import COMPRESSORS, Calibration
from compalign.data import load_split, read_manifest
from compalign.losses import LOSSES
from compalign.pruning import weight_sparsity
from tasks.logs import stage_logger
from tasks.options import task_options
from tasks.store import Artifact, materialize, require

CALIBRATION_SEED = 0  # which training examples calibrate: a fixed, seeded sample


def calibration_data(
    data: Artifact,
    reference_dir: Path,
    calibration: dict[str, Any],
    loss: str | None,
    hyperparameters: dict[str, Any] | None,
) -> Calibration:
    """A seeded sample of training batches and, with a loss, the gradient function of Taylor
    importance (the loss against the frozen reference, summed over those batches), and for
    iterative pruning the loss, the reference and the training split themselves."""
    data_dir = require(data, "prepared dataset")
    train = load_split(data_dir, "train", read_manifest(data_dir))
    size = calibration["batch_size"]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(CALIBRATION_SEED))
    chunks = [order[start : start + size] for start in range(0, len(train), size)]
    chunks = chunks[: calibration["batches"]]
    batches = [train.normalise(train.images[index]) for index in chunks]
    gradient_fn = reference = loss_fn = None
    if loss is not None:
        reference = load_checkpoint(reference_dir).eval()
        loss_fn = LOSSES[loss](**(hyperparameters or {}))

        def gradient_fn(model: torch.nn.Module) -> None:
            model.eval()  # rank channels without moving the copy's batch-norm statistics
            model.zero_grad()
            for images, index in zip(batches, chunks, strict=True):
                with torch.no_grad():
                    reference_logits = reference(images)
                loss_fn(model(images), reference_logits, train.labels[index]).backward()

    return Calibration(batches, gradient_fn, loss, loss_fn, reference, train)


def compress(
    data: Artifact | None,
    reference: Artifact,
    method: str,
    level: float | None,
    options: dict[str, Any],
    calibration: dict[str, Any] | None = None,
    loss: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    out_dir: str | None = None,
) -> Artifact:
    """Apply compressor `method` at `level` to the reference checkpoint. `data` and
    `calibration` only for compressors that calibrate on training data; `loss` only for Taylor
    importance (so other compressions are shared by every loss)."""

    def build(scratch: Path) -> None:
        reference_dir = require(reference, "reference checkpoint")
        compressor = COMPRESSORS[method]
        samples = None
        if compressor.needs_calibration:
            samples = calibration_data(data, reference_dir, calibration, loss, hyperparameters)
        model = compressor(load_checkpoint(reference_dir), level, options, samples)
        quantized = compressor.family.quantized
        measured = 0.0 if quantized else weight_sparsity(model)
        stage_logger().info("%s at %s: weight sparsity %.4f", method, level, measured)
        save_checkpoint(
            model,
            read_checkpoint_manifest(reference_dir)["architecture"],
            scratch,
            kind=compressor.checkpoint_kind(method),
            options=options,
            stage="compress",
            compressor=method,
            sparsity=level,
            measured_sparsity=measured,
            importance_loss=loss,
            compression_record=dict(getattr(model, "compression_record", {})),
        )

    parameters = {
        "data": data,
        "reference": reference,
        "method": method,
        "level": level,
        "options": options,
        "calibration": calibration,
        "loss": loss,
        "hyperparameters": hyperparameters,
    }
    return materialize("compress", parameters, build, out_dir)


compress_task = task(compress, **task_options("compress"))
