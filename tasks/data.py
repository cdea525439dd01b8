"""Stage `prepare`: the dataset as Parquet with a manifest and content digest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from compalign.config import DataParams
from compalign.data import build_table, write_prepared
from tasks.logs import stage_logger
from tasks.options import task_options
from tasks.store import Artifact, materialize


def prepare(data: dict[str, Any], out_dir: str | None = None) -> Artifact:
    """Load `data.source`, split it and write dataset.parquet + manifest.json."""

    def build(scratch: Path) -> None:
        params = DataParams.model_validate(data)
        table, manifest = build_table(params)
        written = write_prepared(table, manifest, scratch)
        stage_logger().info(
            "prepared %s: %s, image %s, sha256 %s",
            params.source,
            written["splits"],
            written["image_shape"],
            written["sha256"][:12],
        )

    # the key also covers the files under data.root (their fingerprint: store.KEY_CONTENT)
    return materialize("prepare", {"data": data}, build, out_dir)


prepare_task = task(prepare, **task_options("prepare"))
