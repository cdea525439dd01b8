"""Your own images: a class-per-folder tree at data.root, read by torchvision's ImageFolder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compalign.data.sources.base import DataSource, RawDataset, listed_files, load_pil, not_found
from compalign.errors import UserError

HINT = "make a folder with one sub-folder of images per class"


def load(params: Any) -> RawDataset:
    """A class-per-folder tree of images at data.root (no published dataset: the user's own, in
    torchvision.datasets.ImageFolder's layout); `train/` and `test/` subtrees, if present, are
    the official split."""
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
        load_images=lambda indices: load_pil([paths[i] for i in indices], params.image_size, mode),
        official_split=np.array(splits) if has_official else None,
    )


def check(params: Any) -> None:
    """The tree is found by its root folder; what is in it, the loader checks."""
    root = Path(params.root)
    if not root.is_dir():
        raise not_found("imagefolder", root, HINT)


def fingerprint(params: Any) -> dict[str, Any]:
    """Every image file under data.root (the extensions ImageFolder reads) with its size and
    modification time in ns, not its content: hashing every image of a large tree for each cache
    key would cost about as much as preparing it. Adding, removing, replacing or touching an
    image changes the fingerprint; an edit that keeps both size and modification time does not."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return {"images": listed_files(Path(params.root), suffixes=IMG_EXTENSIONS)}


SOURCE = DataSource(load=load, check_files=check, fingerprint_files=fingerprint)
