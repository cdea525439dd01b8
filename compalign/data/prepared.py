"""Deterministic splits of a source's examples, and the prepared Parquet format.

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
from compalign.data.sources.base import RawDataset
from compalign.errors import UserError
from compalign.files import sha256_file

DATASET_FILE = "dataset.parquet"
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "val", "test")


def _stratified_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..len(labels)-1 into (rest, taken) with `fraction` of each class taken."""
    taken = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        taken.append(members[: int(round(fraction * len(members)))])
    taken_positions = np.sort(np.concatenate(taken)) if taken else np.array([], dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), taken_positions)
    return rest, taken_positions


def assign_splits(raw: RawDataset, params: Any) -> np.ndarray:
    """train/val/test per example, deterministic from `data.seed`, stratified by label.

    The source's own test split is kept where it has one; val is then drawn from its train part.
    """
    rng = np.random.default_rng(params.seed)
    split = np.empty(len(raw.labels), dtype=object)
    if raw.official_split is None:
        pool = np.arange(len(raw.labels))
        rest, test = _stratified_split(raw.labels, params.test_fraction, rng)
        split[pool[test]] = "test"
        pool = pool[rest]
    else:
        split[:] = raw.official_split
        pool = np.flatnonzero(raw.official_split == "train")
    if raw.official_split is None or not (raw.official_split == "val").any():
        # val is a fraction of the whole dataset, taken from what is left for training
        left = len(pool)
        fraction = min(1.0, params.val_fraction * len(raw.labels) / max(left, 1))
        rest, val = _stratified_split(raw.labels[pool], fraction, rng)
        split[pool[val]] = "val"
        split[pool[rest]] = "train"
    return split.astype(str)


def _make_rare(
    split: np.ndarray, labels: np.ndarray, rare: list[int], fraction: float, seed: int
) -> np.ndarray:
    """Keep a seeded `fraction` of each rare class's training examples; the others leave the
    dataset (marked "dropped"). Validation and test splits keep every class, so the audit sees
    how a model trained on few examples of a group treats it (Meyer & Wong's imbalanced CIFAR-10)."""
    rng = np.random.default_rng(seed + 2)
    split = split.copy()
    for label in rare:
        members = np.flatnonzero((split == "train") & (labels == label))
        if not len(members):
            raise UserError(f"data.rare_classes: class {label} has no training examples")
        drop = rng.choice(
            members, size=len(members) - max(1, int(round(fraction * len(members)))), replace=False
        )
        split[drop] = "dropped"
    return split


def _limit(split: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices kept: at most `limit` per split, a seeded random subset, in original order."""
    rng = np.random.default_rng(seed + 1)
    kept = []
    for name in SPLITS:
        members = np.flatnonzero(split == name)
        if limit is not None and len(members) > limit:
            members = np.sort(rng.choice(members, size=limit, replace=False))
        kept.append(members)
    return np.sort(np.concatenate(kept))


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear, antialiased resize of uint8 [N, H, W, C] to [N, size, size, C]."""
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def plan_table(raw: RawDataset, params: Any) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """The checks a source's examples must pass before any image is read (classes, label
    groups, every split non-empty), then (split of every example, indices kept, groups)."""
    if len(raw.labels) == 0:
        raise UserError(
            f"data.source={params.source}: the dataset at {params.root} has no examples"
        )
    if len(raw.class_names) < 2:
        raise UserError(
            f"data.source={params.source}: {len(raw.class_names)} class found at {params.root}; "
            "a classifier needs at least two"
        )
    groups = raw.groups if len(raw.groups.columns) else pd.DataFrame(index=range(len(raw.labels)))
    for name, members in params.label_groups.items():
        # a derived binary group: 1 for examples whose label is one of `members`
        unknown = sorted(set(members) - set(range(len(raw.class_names))))
        if unknown:
            raise UserError(
                f"data.label_groups.{name}: labels {unknown} are not classes of {params.source}"
            )
        groups[name] = np.isin(raw.labels, members).astype(np.int64)
    split = assign_splits(raw, params)
    if params.rare_classes:
        split = _make_rare(
            split, raw.labels, params.rare_classes, params.rare_fraction, params.seed
        )
    kept = _limit(split, params.limit, params.seed)
    for name in SPLITS:
        if not (split[kept] == name).any():
            raise UserError(_empty_split(name, raw, params))
    return split, kept, groups


def _empty_split(name: str, raw: RawDataset, params: Any) -> str:
    """Why split `name` is empty, and what would fill it: the examples are too few for the
    split fractions (data.limit never empties a split: it keeps up to that many of each)."""
    counts = np.bincount(raw.labels, minlength=len(raw.class_names))
    smallest = int(counts.min())
    how = (
        "lower data.val_fraction and data.test_fraction"
        if name == "train"
        else f"raise data.{name}_fraction"
    )
    official = " (its official split)" if raw.official_split is not None else ""
    return (
        f"data: the {name} split is empty: {len(raw.labels)} examples{official}, the smallest "
        f"class {smallest}, are too few for data.val_fraction={params.val_fraction} and "
        f"data.test_fraction={params.test_fraction}; add examples (images per class) or {how}"
    )


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
