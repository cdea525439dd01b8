"""Your own images: a class-per-folder tree at data.root, read by torchvision's ImageFolder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compalign.data.sources.base import DataSource, RawDataset, listed_files, load_pil, not_found
from compalign.errors import UserError

HINT = "make a folder with one sub-folder of images per class"


def _scan(params: Any) -> tuple[list[tuple[str, int]], list[str], list[str], bool]:
    """(samples, splits, class names, has an official split) of the tree at data.root."""
    import torchvision

    root = Path(params.root)
    if not root.is_dir():
        raise not_found("imagefolder", root, HINT)
    has_official = (root / "train").is_dir() and (root / "test").is_dir()
    trees = {"train": root / "train", "test": root / "test"} if has_official else {"all": root}
    samples, splits, classes = [], [], None
    for split_name, tree in trees.items():
        try:
            folder = torchvision.datasets.ImageFolder(str(tree))
        except (FileNotFoundError, RuntimeError) as error:
            raise UserError(
                f"data.root={root}: not a class-per-folder image tree ({error})".replace("\n", " ")
            ) from error
        if classes is not None and folder.classes != classes:
            raise UserError(f"data.root={root}: train/ and test/ have different class folders")
        classes = folder.classes
        samples += folder.samples
        splits += [split_name] * len(folder.samples)
    return samples, splits, list(classes or []), has_official


def unreadable(paths: list[str]) -> list[tuple[str, str]]:
    """(path, reason) of every file PIL cannot open and decode."""
    from PIL import Image

    found = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
        except Exception as error:  # PIL raises many types for a broken file
            found.append((path, f"{type(error).__name__}: {error}".replace("\n", " ")))
    return found


def _readable(params: Any, samples: list[tuple[str, int]]) -> list[bool]:
    """Which samples to keep: all, or, with data.skip_unreadable, those PIL can read. Without
    it, an unreadable image is an error naming the file and the reason."""
    broken = dict(unreadable([path for path, _ in samples]))
    if broken and not params.skip_unreadable:
        path, reason = next(iter(broken.items()))
        more = f" [+{len(broken) - 1} more]" if len(broken) > 1 else ""
        raise UserError(
            f"{path}: not a readable image ({reason}){more}; remove it, or set "
            "data.skip_unreadable=true to leave such files out"
        )
    return [path not in broken for path, _ in samples]


def load(params: Any) -> RawDataset:
    """A class-per-folder tree of images at data.root (no published dataset: the user's own, in
    torchvision.datasets.ImageFolder's layout); `train/` and `test/` subtrees, if present, are
    the official split. Unreadable images stop the run, or with data.skip_unreadable are left
    out and counted (`skipped_unreadable` in the manifest)."""
    root = Path(params.root)
    samples, splits, classes, has_official = _scan(params)
    keep = _readable(params, samples)
    skipped = keep.count(False)
    samples = [sample for sample, kept in zip(samples, keep, strict=True) if kept]
    splits = [split for split, kept in zip(splits, keep, strict=True) if kept]
    paths = [path for path, _ in samples]
    mode = params.image_mode
    return RawDataset(
        ids=np.array([Path(path).relative_to(root).as_posix() for path in paths]),
        labels=np.array([label for _, label in samples], dtype=np.int64),
        class_names=classes,
        load_images=lambda indices: load_pil([paths[i] for i in indices], params.image_size, mode),
        official_split=np.array(splits) if has_official else None,
        skipped_unreadable=skipped,
    )


def check(params: Any) -> None:
    """Before anything runs: the tree exists, and every image in it can be read (or
    data.skip_unreadable leaves the broken ones out)."""
    samples, _, _, _ = _scan(params)
    _readable(params, samples)


def count_classes(params: Any) -> int:
    """The class folders of the tree."""
    return len(_scan(params)[2])


def fingerprint(params: Any) -> dict[str, Any]:
    """Every image file under data.root (the extensions ImageFolder reads) with its size and
    modification time in ns, not its content: hashing every image of a large tree for each cache
    key would cost about as much as preparing it. Adding, removing, replacing or touching an
    image changes the fingerprint; an edit that keeps both size and modification time does not."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return {"images": listed_files(Path(params.root), suffixes=IMG_EXTENSIONS)}


SOURCE = DataSource(
    load=load, check_files=check, fingerprint_files=fingerprint, count_classes=count_classes
)
