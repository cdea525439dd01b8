"""The prepared Parquet format: a source's examples, split (compalign.data.splits), as one file.

A prepared dataset is one Parquet file with a row per example -- `example_id` (stable across
runs), `split` (train/val/test), `label`, optional group columns, and `image` (the raw uint8 HWC
pixels as fixed-size binary) -- plus `manifest.json` with the shape, class names, per-channel
normalisation statistics of the training split and the file's sha256 digest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from compalign.data.sources import SOURCES
from compalign.data.splits import SPLITS, plan_table
from compalign.errors import UserError
from compalign.files import sha256_file

DATASET_FILE = "dataset.parquet"
MANIFEST_FILE = "manifest.json"


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear, antialiased resize of uint8 [N, H, W, C] to [N, size, size, C]."""
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def build_table(params: Any) -> tuple[pa.Table, dict[str, Any]]:
    """Load `data.source`, split and subsample it; return the Parquet table and its manifest."""
    if params.source not in SOURCES:
        raise UserError(
            f"data.source: unknown source {params.source!r}; choose one of {sorted(SOURCES)}"
        )
    raw = SOURCES[params.source].load(params)
    split, kept, groups = plan_table(raw, params)
    images = raw.load_images(kept)
    if params.image_size is not None and images.shape[1:3] != (
        params.image_size,
        params.image_size,
    ):
        images = _resize(images, params.image_size)
    count, height, width, channels = images.shape
    if height != width:
        raise UserError(
            f"data.source={params.source}: images are {height}x{width}; set data.image_size"
        )
    split, labels = split[kept], raw.labels[kept]
    columns: dict[str, pa.Array] = {
        "example_id": pa.array(raw.ids[kept].astype(str)),
        "split": pa.array(split),
        "label": pa.array(labels, type=pa.int64()),
    }
    group_names = [str(name) for name in groups.columns]
    for name in group_names:
        if name in ("example_id", "split", "label", "image"):
            raise UserError(f"data: group column {name!r} clashes with a reserved column name")
        columns[name] = pa.array(groups[name].to_numpy()[kept])
    flat = np.ascontiguousarray(images).reshape(count, -1)
    columns["image"] = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(flat.shape[1]), count, [None, pa.py_buffer(flat.tobytes())]
    )
    table = pa.table(columns)

    train = images[split == "train"].astype(np.float64) / 255.0
    manifest = {
        "source": params.source,
        "num_examples": int(count),
        "splits": {name: int((split == name).sum()) for name in SPLITS},
        "num_classes": len(raw.class_names),
        "class_names": raw.class_names,
        "image_shape": [int(height), int(width), int(channels)],
        "mean": train.mean(axis=(0, 1, 2)).round(6).tolist(),
        "std": np.maximum(train.std(axis=(0, 1, 2)), 1e-6).round(6).tolist(),
        "group_columns": group_names,
    }
    if raw.skipped_unreadable:
        manifest["skipped_unreadable"] = raw.skipped_unreadable
    return table, manifest


def write_prepared(
    table: pa.Table, manifest: dict[str, Any], out_dir: str | Path
) -> dict[str, Any]:
    """Write dataset.parquet and manifest.json (with the Parquet file's sha256) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / DATASET_FILE
    pq.write_table(table, path, compression="zstd")
    manifest = {**manifest, "file": DATASET_FILE, "sha256": sha256_file(path)}
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(data_dir: str | Path, verify: bool = True) -> dict[str, Any]:
    """The manifest of a prepared dataset; with `verify`, refuse a Parquet file that was changed."""
    data_dir = Path(data_dir)
    manifest_path = data_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise UserError(
            f"{data_dir}: no prepared dataset here (missing {MANIFEST_FILE}); run the prepare stage"
        )
    manifest = json.loads(manifest_path.read_text())
    if verify:
        actual = sha256_file(data_dir / manifest["file"])
        if actual != manifest["sha256"]:
            raise UserError(
                f"{data_dir / manifest['file']}: sha256 {actual[:12]} does not match its manifest "
                f"({manifest['sha256'][:12]}); the file was changed: rerun the prepare stage"
            )
    return manifest


@dataclass
class Split:
    """One split in memory: uint8 images [N, C, H, W], labels, ids and the normalisation."""

    images: torch.Tensor
    labels: torch.Tensor
    example_ids: list[str]
    mean: torch.Tensor
    std: torch.Tensor
    groups: pd.DataFrame

    def __len__(self) -> int:
        return len(self.labels)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [n, C, H, W] -> float, scaled to [0, 1] then standardised per channel."""
        return (images.float() / 255.0 - self.mean) / self.std


def load_split(data_dir: str | Path, split: str, manifest: dict[str, Any] | None = None) -> Split:
    """Read one split of a prepared dataset into memory."""
    data_dir = Path(data_dir)
    manifest = manifest or read_manifest(data_dir, verify=False)
    table = pq.read_table(data_dir / manifest["file"], filters=[("split", "=", split)])
    return split_of_table(table, manifest)


def split_of_table(table: pa.Table, manifest: dict[str, Any], split: str | None = None) -> Split:
    """The rows of a prepared table (those of `split`, if given) as a Split in memory: what
    load_split reads, from a table that was built but not written."""
    if split is not None:
        table = table.filter(pa.compute.equal(table.column("split"), split))
    height, width, channels = manifest["image_shape"]
    column = table.column("image").combine_chunks()
    offset = column.offset * height * width * channels
    buffer = np.frombuffer(column.buffers()[1], dtype=np.uint8)
    pixels = buffer[offset : offset + len(column) * height * width * channels]
    images = torch.from_numpy(pixels.reshape(-1, height, width, channels).copy()).permute(
        0, 3, 1, 2
    )
    shape = (1, channels, 1, 1)
    return Split(
        images=images.contiguous(),
        labels=torch.from_numpy(table.column("label").to_numpy().astype(np.int64)),
        example_ids=table.column("example_id").to_pylist(),
        mean=torch.tensor(manifest["mean"], dtype=torch.float32).view(shape),
        std=torch.tensor(manifest["std"], dtype=torch.float32).view(shape),
        groups=table.select(manifest["group_columns"]).to_pandas(),
    )
