"""Dataset sources, deterministic splits, and the prepared Parquet format.

A prepared dataset is one Parquet file with a row per example -- `example_id` (stable across
runs), `split` (train/val/test), `label`, optional group columns, and `image` (the raw uint8 HWC
pixels as fixed-size binary) -- plus `manifest.json` with the shape, class names, per-channel
normalisation statistics of the training split and the file's sha256 digest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from compalign.errors import UserError
from compalign.files import sha256_file

DATASET_FILE = "dataset.parquet"
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "val", "test")


@dataclass
class RawDataset:
    """A source's examples before splitting; images are loaded only for the rows that are kept."""

    ids: np.ndarray  # str [N], stable across runs
    labels: np.ndarray  # int64 [N]
    class_names: list[str]
    load_images: Callable[[np.ndarray], np.ndarray]  # indices -> uint8 [n, H, W, C]
    official_split: np.ndarray | None = None  # str [N] in SPLITS, where the source defines one
    groups: pd.DataFrame = field(default_factory=pd.DataFrame)  # one column per group attribute


# --------------------------------------------------------------------------------------------
# Sources. Each takes the `data` params section and returns a RawDataset.
# --------------------------------------------------------------------------------------------


def _digits(params: Any) -> RawDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes); works offline."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are counts 0..16 of an 4x4 block; scale to the usual 0..255 range.
    pixels = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    count = len(bunch.target)
    return RawDataset(
        ids=np.array([f"digits-{index:04d}" for index in range(count)]),
        labels=bunch.target.astype(np.int64),
        class_names=[str(name) for name in bunch.target_names],
        load_images=lambda indices: pixels[indices],
    )


def _not_found(source: str, where: Path | str, how: str) -> UserError:
    return UserError(
        f"data.source={source}: dataset not found at {where} (downloading is off); {how}, "
        f"or set data.root to the folder that holds it"
    )


def _torchvision_arrays(
    params: Any, source: str, cls_name: str, files: str, splits: dict[str, dict[str, Any]]
) -> RawDataset:
    """Read a torchvision dataset whose pixels sit in memory as `.data` (CIFAR, MNIST, SVHN)."""
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    root = Path(params.root)
    parts = []
    for split_name, kwargs in splits.items():
        try:
            dataset = cls(str(root), download=params.download, **kwargs)
        except RuntimeError as error:
            raise _not_found(
                source,
                ", ".join(str(root / name) for name in files.split(", ")),
                f"put the official {cls_name} files there (torchvision.datasets.{cls_name} layout) "
                "or rerun with data.download=true on a machine with internet",
            ) from error
        data = dataset.data
        data = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        if data.ndim == 3:  # MNIST-like: [N, H, W]
            data = data[..., None]
        elif cls_name == "SVHN":  # [N, C, H, W]
            data = data.transpose(0, 2, 3, 1)
        targets = getattr(dataset, "targets", None)
        if targets is None:
            targets = dataset.labels
        targets = np.asarray(targets.numpy() if isinstance(targets, torch.Tensor) else targets)
        parts.append((split_name, np.ascontiguousarray(data, dtype=np.uint8), targets))
        class_names = list(getattr(dataset, "classes", [str(c) for c in range(10)]))

    pixels = np.concatenate([part[1] for part in parts])
    return RawDataset(
        ids=np.array(
            [
                f"{source}-{name}-{index:06d}"
                for name, data, _ in parts
                for index in range(len(data))
            ]
        ),
        labels=np.concatenate([part[2] for part in parts]).astype(np.int64),
        class_names=class_names,
        load_images=lambda indices: pixels[indices],
        official_split=np.concatenate([np.full(len(part[1]), part[0]) for part in parts]),
    )


def _cifar10(params: Any) -> RawDataset:
    """CIFAR-10 (Krizhevsky 2009): torchvision's `cifar-10-batches-py` folder under data.root."""
    splits = {"train": {"train": True}, "test": {"train": False}}
    return _torchvision_arrays(params, "cifar10", "CIFAR10", "cifar-10-batches-py", splits)


def _cifar100(params: Any) -> RawDataset:
    """CIFAR-100: torchvision's `cifar-100-python` folder under data.root."""
    splits = {"train": {"train": True}, "test": {"train": False}}
    return _torchvision_arrays(params, "cifar100", "CIFAR100", "cifar-100-python", splits)


def _mnist(params: Any) -> RawDataset:
    """MNIST: torchvision's `MNIST/raw` idx files under data.root."""
    splits = {"train": {"train": True}, "test": {"train": False}}
    return _torchvision_arrays(params, "mnist", "MNIST", "MNIST/raw", splits)


def _fashionmnist(params: Any) -> RawDataset:
    """Fashion-MNIST: torchvision's `FashionMNIST/raw` idx files under data.root."""
    splits = {"train": {"train": True}, "test": {"train": False}}
    return _torchvision_arrays(params, "fashionmnist", "FashionMNIST", "FashionMNIST/raw", splits)


def _svhn(params: Any) -> RawDataset:
    """SVHN cropped digits: `train_32x32.mat` and `test_32x32.mat` under data.root."""
    splits = {"train": {"split": "train"}, "test": {"split": "test"}}
    return _torchvision_arrays(params, "svhn", "SVHN", "train_32x32.mat, test_32x32.mat", splits)


def _load_pil(paths: Sequence[str], image_size: int | None, mode: str) -> np.ndarray:
    from PIL import Image

    images = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert(mode)
            width, height = image.size
            side = min(width, height)
            if width != height:  # centre-crop to a square before any resize
                left, top = (width - side) // 2, (height - side) // 2
                image = image.crop((left, top, left + side, top + side))
            if image_size is not None and side != image_size:
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
        images.append(array if array.ndim == 3 else array[..., None])
    sides = sorted({image.shape[0] for image in images})
    if len(sides) > 1:
        raise UserError(
            f"data: the images have different sizes ({sides[0]}..{sides[-1]} pixels square after "
            "centre-cropping); set data.image_size"
        )
    return np.stack(images)


def _celeba(params: Any) -> RawDataset:
    """CelebA aligned faces (Liu et al. 2015): label = attribute `data.target`, groups = all 40.

    Reads torchvision's `celeba` folder (img_align_celeba/ and the list_*.txt files) under
    data.root; official train/valid/test partition.
    """
    import torchvision

    root = Path(params.root)
    parts = {}
    for split_name, official in (("train", "train"), ("val", "valid"), ("test", "test")):
        try:
            parts[split_name] = torchvision.datasets.CelebA(
                str(root), split=official, target_type="attr", download=params.download
            )
        except RuntimeError as error:
            raise _not_found(
                "celeba",
                root / "celeba",
                "put img_align_celeba/ and the list_*.txt files there (torchvision.datasets.CelebA "
                "layout) or rerun with data.download=true on a machine with internet",
            ) from error
    attr_names = [name for name in parts["train"].attr_names if name]
    target = params.target or "Blond_Hair"
    if target not in attr_names:
        raise UserError(
            f"data.target: {target!r} is not a CelebA attribute; choose one of {attr_names}"
        )
    filenames = [name for part in parts.values() for name in part.filename]
    attrs = torch.cat([part.attr for part in parts.values()]).numpy().astype(np.int64)
    groups = pd.DataFrame(attrs, columns=attr_names)
    folder = root / "celeba" / "img_align_celeba"
    image_size = params.image_size or 64
    return RawDataset(
        ids=np.array([f"celeba-{Path(name).stem}" for name in filenames]),
        labels=groups[target].to_numpy(),
        class_names=[f"not {target}", target],
        load_images=lambda indices: _load_pil(
            [str(folder / filenames[i]) for i in indices], image_size, "RGB"
        ),
        official_split=np.concatenate([np.full(len(part), name) for name, part in parts.items()]),
        groups=groups,
    )


def _imagefolder(params: Any) -> RawDataset:
    """A class-per-folder tree of images at data.root; `train/` and `test/` subtrees, if present,
    are the official split."""
    import torchvision

    root = Path(params.root)
    if not root.is_dir():
        raise _not_found(
            "imagefolder", root, "make a folder with one sub-folder of images per class"
        )
    has_official = (root / "train").is_dir() and (root / "test").is_dir()
    trees = {"train": root / "train", "test": root / "test"} if has_official else {"all": root}
    samples, splits, classes = [], [], None
    for split_name, tree in trees.items():
        try:
            folder = torchvision.datasets.ImageFolder(str(tree))
        except (FileNotFoundError, RuntimeError) as error:
            raise UserError(
                f"data.root={root}: not a class-per-folder image tree ({error})"
            ) from error
        if classes is not None and folder.classes != classes:
            raise UserError(f"data.root={root}: train/ and test/ have different class folders")
        classes = folder.classes
        samples += folder.samples
        splits += [split_name] * len(folder.samples)
    paths = [path for path, _ in samples]
    mode = params.image_mode
    return RawDataset(
        ids=np.array([Path(path).relative_to(root).as_posix() for path in paths]),
        labels=np.array([label for _, label in samples], dtype=np.int64),
        class_names=list(classes or []),
        load_images=lambda indices: _load_pil([paths[i] for i in indices], params.image_size, mode),
        official_split=np.array(splits) if has_official else None,
    )


SOURCES: dict[str, Callable[[Any], RawDataset]] = {
    "digits": _digits,
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "mnist": _mnist,
    "fashionmnist": _fashionmnist,
    "svhn": _svhn,
    "celeba": _celeba,
    "imagefolder": _imagefolder,
}


# What each source needs under data.root (torchvision's layouts), for a check before any work.
REQUIRED_FILES: dict[str, tuple[tuple[str, ...], str]] = {
    "cifar10": (("cifar-10-batches-py",), "put the official CIFAR10 files there"),
    "cifar100": (("cifar-100-python",), "put the official CIFAR100 files there"),
    "mnist": (("MNIST/raw",), "put the official MNIST files there"),
    "fashionmnist": (("FashionMNIST/raw",), "put the official FashionMNIST files there"),
    "svhn": (("train_32x32.mat", "test_32x32.mat"), "put the official SVHN files there"),
    "celeba": (
        ("celeba/img_align_celeba", "celeba/list_attr_celeba.txt"),
        "put img_align_celeba/ and the list_*.txt files there (torchvision.datasets.CelebA layout)",
    ),
}


def check_available(params: Any) -> None:
    """Refuse, before anything runs, a source whose files are not under data.root (downloading
    off). Only presence is checked; the loader checks the files themselves."""
    if params.download or params.source == "digits":
        return
    root = Path(params.root)
    if params.source == "imagefolder":
        if not root.is_dir():
            raise _not_found(
                "imagefolder", root, "make a folder with one sub-folder of images per class"
            )
        return
    names, how = REQUIRED_FILES[params.source]
    missing = [root / name for name in names if not (root / name).exists()]
    if missing:
        raise _not_found(
            params.source,
            ", ".join(str(path) for path in missing),
            f"{how} or rerun with data.download=true on a machine with internet",
        )


# --------------------------------------------------------------------------------------------
# Splitting and writing
# --------------------------------------------------------------------------------------------


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


def build_table(params: Any) -> tuple[pa.Table, dict[str, Any]]:
    """Load `data.source`, split and subsample it; return the Parquet table and its manifest."""
    if params.source not in SOURCES:
        raise UserError(
            f"data.source: unknown source {params.source!r}; choose one of {sorted(SOURCES)}"
        )
    raw = SOURCES[params.source](params)
    if len(raw.labels) == 0:
        raise UserError(
            f"data.source={params.source}: the dataset at {params.root} has no examples"
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
    for name in SPLITS:
        if not (split == name).any():
            raise UserError(
                f"data: the {name} split is empty ({len(kept)} examples kept); "
                "raise data.limit or the split fractions"
            )
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
