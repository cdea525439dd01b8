"""Your own images: a class-per-folder tree at data.root, read by torchvision's ImageFolder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from compalign.data.raw import RawDataset
from compalign.data.sources.base import DataSource, listed_files, load_pil, not_found
from compalign.data.splits import plan_table
from compalign.errors import UserError
from compalign.options import Options

HINT = "make a folder with one sub-folder of images per class"


class ImageFolderOptions(Options):
    """How the image folder's files are read."""

    image_mode: Literal["RGB", "L"] = "RGB"
    """imagefolder only: RGB or L (greyscale)"""
    skip_unreadable: bool = False
    """imagefolder: leave out images PIL cannot read (counted in the manifest; else: stop, naming
    them)"""


def shown(path: str | Path) -> str:
    """A path as text that can be printed, undecodable bytes of its name as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _check_tree(root: Path, tree: Path) -> None:
    """Refuse what would make the tree read as something else than it is: a symbolic link to a
    folder (it can loop, as `b/up -> ..` does, or count the same images twice under two labels),
    a link to a file outside data.root, and a folder or image whose name is not UTF-8 (it
    cannot be an example id), each named."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    inside = root.resolve()
    for folder, folders, files in os.walk(tree, followlinks=False):
        for name in folders:
            path = Path(folder) / name
            if path.is_symlink():
                raise UserError(
                    f"data.root={shown(root)}: {shown(path)} is a symbolic link to a folder "
                    f"({shown(os.path.realpath(path))}), which compalign does not follow (it can "
                    "loop or count images twice); put the folder itself there"
                )
            _utf8(root, path)
        for name in files:
            path = Path(folder) / name
            if not name.lower().endswith(IMG_EXTENSIONS):
                continue
            _utf8(root, path)
            target = Path(os.path.realpath(path))
            if path.is_symlink() and not target.is_relative_to(inside):
                raise UserError(
                    f"data.root={shown(root)}: {shown(path)} links to {shown(target)}, outside "
                    "data.root; copy the image in instead"
                )


def _utf8(root: Path, path: Path) -> None:
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(
            f"data.root={shown(root)}: the name of {shown(path)} is not UTF-8 text; rename it "
            "(e.g. convmv -f latin1 -t utf8)"
        ) from None


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
        _check_tree(root, tree)  # before ImageFolder, which follows every link
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


def inspect_images(paths: list[str]) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """(path, reason) of every file PIL cannot open and decode, and each readable image's
    side after centre-cropping to a square (its shorter side)."""
    from PIL import Image

    found, sides = [], {}
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
                sides[path] = min(image.size)
        except Exception as error:  # PIL raises many types for a broken file
            found.append((path, f"{type(error).__name__}: {error}".replace("\n", " ")))
    return found, sides


def unreadable(paths: list[str]) -> list[tuple[str, str]]:
    """(path, reason) of every file PIL cannot open and decode."""
    return inspect_images(paths)[0]


def _readable(params: Any, samples: list[tuple[str, int]]) -> list[bool]:
    """Which samples to keep: all, or, with data.skip_unreadable, those PIL can read. Without
    it, an unreadable image is an error naming the file and the reason. Images of different
    sizes without data.image_size are an error too (they cannot be stacked)."""
    found, sides = inspect_images([path for path, _ in samples])
    broken = dict(found)
    if broken and not params.skip_unreadable:
        path, reason = next(iter(broken.items()))
        more = f" [+{len(broken) - 1} more]" if len(broken) > 1 else ""
        raise UserError(
            f"{shown(path)}: not a readable image ({reason}){more}; remove it, or set "
            "data.skip_unreadable=true to leave such files out"
        )
    distinct = sorted(set(sides.values()))
    if params.image_size is None and len(distinct) > 1:
        smallest = min(sides, key=sides.__getitem__)
        largest = max(sides, key=sides.__getitem__)
        raise UserError(
            f"data: the images have different sizes ({distinct[0]}..{distinct[-1]} pixels square "
            f"after centre-cropping, e.g. {shown(smallest)} and {shown(largest)}); set "
            "data.image_size"
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
    """Before anything runs or is written: the tree exists, holds no folder links, links out of
    it or names that are not UTF-8, every image in it can be read (or data.skip_unreadable
    leaves the broken ones out), the images have one size (or data.image_size), and every
    split gets examples (compalign.data.splits.plan_table: no image is loaded)."""
    plan_table(load(params), params)


def count_classes(params: Any) -> int:
    """The class folders of the tree."""
    return len(_scan(params)[2])


def fingerprint(params: Any) -> dict[str, Any]:
    """Every image file under data.root (the extensions ImageFolder reads) with its size and
    modification time in ns, not its content: hashing every image of a large tree for each cache
    key would cost about as much as preparing it. Adding, removing, replacing or touching an
    image changes the fingerprint; an edit that keeps both size and modification time does not."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    # links to folders are refused by check(), never followed (a link to `..` loops)
    return {
        "images": listed_files(Path(params.root), suffixes=IMG_EXTENSIONS, follow_links=False)
    }


SOURCE = DataSource(
    load=load,
    check_files=check,
    fingerprint_files=fingerprint,
    count_classes=count_classes,
    options=ImageFolderOptions,
)
