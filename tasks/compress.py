"""Stage `compress`: one compressed copy of the reference per (method, sparsity)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from compalign.checkpoint import load_checkpoint, read_checkpoint_manifest, save_checkpoint
from compalign.compress import COMPRESSORS, weight_sparsity
from tasks.logs import stage_logger
from tasks.options import task_options
from tasks.store import Artifact, materialize, require


def compress(
    reference: Artifact, method: str, sparsity: float, out_dir: str | None = None
) -> Artifact:
    """Apply compressor `method` at `sparsity` to the reference checkpoint."""

    def build(scratch: Path) -> None:
        reference_dir = require(reference, "reference checkpoint")
        model = COMPRESSORS[method](load_checkpoint(reference_dir), sparsity)
        measured = weight_sparsity(model)
        stage_logger().info("%s at %.3f: measured weight sparsity %.4f", method, sparsity, measured)
        save_checkpoint(
            model,
            read_checkpoint_manifest(reference_dir)["architecture"],
            scratch,
            stage="compress",
            compressor=method,
            sparsity=sparsity,
            measured_sparsity=measured,
        )

    return materialize(
        "compress", {"reference": reference, "method": method, "sparsity": sparsity}, build, out_dir
    )


compress_task = task(compress, **task_options("compress"))
