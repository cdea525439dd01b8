"""Stage `prepare`: the dataset as Parquet with a manifest and content digest."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compalign.config import DataParams
from compalign.data import build_table, write_prepared
from tasks.infra import paths
from tasks.infra.logs import stage_logger
from tasks.infra.stage import Stage
from tasks.infra.store import Artifact, materialize


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

    # the key also covers the files under data.root (their fingerprint: STAGE.key)
    return materialize("prepare", {"data": data}, build, out_dir)


def data_files(parameters: Mapping[str, Any]) -> Mapping[str, Any]:
    """The parameters and the fingerprint of the files under data.root that the `data` section
    names: adding or changing an image changes the key (none for a call without a `data`
    section, as the store's own tests make)."""
    if "data" not in parameters:
        return parameters
    from compalign.data import fingerprint

    files = fingerprint(DataParams.model_validate(parameters["data"]))
    return {**parameters, "files": files}


def data_source(parameters: Mapping[str, Any] | None) -> list[Any]:
    """The data source the call reads (every source: None)."""
    from compalign.data.sources import SOURCES

    if parameters is None:
        return list(SOURCES.values())
    source = (parameters.get("data") or {}).get("source")
    return [SOURCES[source]] if isinstance(source, str) and source in SOURCES else []


STAGE = Stage(
    name="prepare",
    function=prepare,
    run_name=lambda p: f"prepare {p['data']['source']}",
    code=data_source,
    key=data_files,
    params=("data",),
    out=paths.DATA_DIR.as_posix(),
)
