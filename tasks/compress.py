"""Stage `compress`: one compressed copy of the reference per (method, level)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compalign.calibration import calibration_sample
from compalign.checkpoint import load_checkpoint, read_checkpoint_manifest, save_checkpoint
from compalign.compressors import COMPRESSORS, Calibration
from compalign.data import load_split, read_manifest
from compalign.pruning import weight_sparsity
from tasks.infra import paths
from tasks.infra.code import compression_entries
from tasks.infra.logs import stage_logger
from tasks.infra.stage import Stage, compressed_name
from tasks.infra.store import Artifact, materialize, require


def calibration_data(
    data: Artifact,
    reference_dir: Path,
    calibration: dict[str, Any],
    loss: str | None,
    hyperparameters: dict[str, Any] | None,
) -> Calibration:
    """The calibration sample of the prepared data's training split (compalign.calibration),
    with the Taylor-importance gradient function of `loss` against the reference checkpoint
    in `reference_dir` when a loss is given."""
    data_dir = require(data, "prepared dataset")
    train = load_split(data_dir, "train", read_manifest(data_dir))
    reference = load_checkpoint(reference_dir) if loss is not None else None
    return calibration_sample(
        train, calibration["batches"], calibration["batch_size"], reference, loss, hyperparameters
    )


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


def loss_params() -> tuple[str, ...]:
    """The `align` keys DVC's compress stage reads: a loss's options rank channels for Taylor
    importance (every loss with options)."""
    from compalign.losses import LOSSES
    from compalign.options import has_options

    return ("align.losses",) + tuple(
        f"align.{name}" for name, entry in LOSSES.items() if has_options(entry.options)
    )


STAGE = Stage(
    name="compress",
    function=compress,
    run_name=lambda p: (
        "compress "
        + compressed_name(p["method"], p["level"])
        + (f" by {p['loss']}" if p.get("loss") else "")
    ),
    inputs=("data", "reference"),
    code=compression_entries,
    params=("compress", *loss_params()),
    out=(paths.COMPRESSED_DIR / "{model}").as_posix(),
)
