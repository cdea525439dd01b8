"""What a data source is: its loader, the files it reads under `data.root`, and their fingerprint.

Helpers shared by the source modules live here too: the "not found" message, reading image
files, and listing or hashing the files a source reads.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from compalign.errors import UserError
from compalign.files import sha256_file
from compalign.data.raw import RawDataset
from compalign.options import NoOptions, Options


@dataclass(frozen=True)
class DataSource:
    """A dataset the prepare stage can read: its loader (whose docstring cites the dataset), the
    files or folders it needs under `data.root` and the hint shown when they are missing.

    By default a source's availability is the presence of `required`, and its fingerprint the
    size and sha256 of every file under `required`; a source whose files are not a fixed list of
    paths (an image tree) passes its own `check_files` and `fingerprint_files`. A source's own
    `options` (the one place their defaults are written) are keys of the `data` section, which
    compalign.config builds from the entries; only the chosen source's enter its prepare key.
    """

    load: Callable[[Any], RawDataset]  # the `data` params section -> RawDataset
    required: tuple[str, ...] = ()  # files or folders under data.root (torchvision's layouts)
    hint: str = ""  # how to get the required files
    bundled: bool = False  # ships inside an installed package: works offline, nothing to look for
    check_files: Callable[[Any], None] | None = None
    fingerprint_files: Callable[[Any], dict[str, Any]] | None = None
    num_classes: int | None = None  # a fixed dataset's class count (checked before any work)
    count_classes: Callable[[Any], int] | None = None  # the class count of a user's data
    options: type[Options] = NoOptions  # its own keys of the `data` section

    def classes(self, params: Any) -> int | None:
        """How many classes the data has, when that is known without loading it."""
        if self.count_classes is not None:
            return self.count_classes(params)
        return self.num_classes

    @property
    def description(self) -> str:
        """The loader's docstring: what the dataset is and where it comes from."""
        return inspect.getdoc(self.load) or ""

    def check_available(self, params: Any) -> None:
        """Refuse, before anything runs, a source whose files are not under data.root
        (downloading off). Only presence is checked; the loader checks the files themselves."""
        if params.download or self.bundled:
            return
        if self.check_files is not None:
            self.check_files(params)
            return
        root = Path(params.root)
        missing = [root / name for name in self.required if not (root / name).exists()]
        if missing:
            raise not_found(
                params.source,
                ", ".join(str(path) for path in missing),
                f"{self.hint} or rerun with data.download=true on a machine with internet",
            )

    def fingerprint(self, params: Any) -> dict[str, Any]:
        """The files the loader reads, as JSON-serialisable content for the prepare stage's cache
        key: a change on disk changes it. Missing files are listed as missing, never an error."""
        if self.fingerprint_files is not None:
            return self.fingerprint_files(params)
        return {"files": hashed_files(Path(params.root), self.required)}


def not_found(source: str, where: Path | str, how: str) -> UserError:
    """The one-line error for a dataset that is not on disk: where it was looked for, and how
    to get it."""
    return UserError(
        f"data.source={source}: dataset not found at {where} (downloading is off); {how}, "
        f"or set data.root to the folder that holds it"
    )


def eight_bit(image: Any, path: str) -> Any:
    """A 16-bit grey image (PIL modes I;16*, or I with values up to 65535) scaled to 8 bits
    (value * 255 / 65535, rounded): PIL's convert clips it to 255 instead. Other integer or
    float modes are refused: their range is not known."""
    from PIL import Image

    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    values = np.asarray(image)
    if image.mode == "F" or values.min() < 0 or values.max() > 65535:
        raise UserError(
            f"{os.fsencode(path).decode('utf-8', 'backslashreplace')}: a {image.mode} image "
            f"with values {values.min()}..{values.max()}; save it as 8- or 16-bit"
        )
    scaled = (values.astype(np.uint32) * 255 + 32767) // 65535
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def load_pil(paths: Sequence[str], image_size: int | None, mode: str) -> np.ndarray:
    """Image files as uint8 [n, H, W, C]: converted to `mode`, centre-cropped to a square and,
    with `image_size`, resized (bilinear)."""
    from PIL import Image

    images = []
    for path in paths:
        with Image.open(path) as image:
            image = eight_bit(image, path).convert(mode)
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


def _files_under(top: Path, follow_links: bool = True) -> list[Path]:
    """`top` itself if it is a file, else every file below it (links to folders followed, as
    the loaders follow them, unless `follow_links` is False)."""
    if top.is_file():
        return [top]
    found = []
    for folder, _, names in os.walk(top, followlinks=follow_links):
        found += [Path(folder) / name for name in names]
    return [path for path in found if path.is_file()]


def hashed_files(root: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """Every file at or under each of `names` (paths under `root`), sorted: its path relative to
    `root`, size and sha256. A name that does not exist is listed as missing."""
    entries = []
    for name in names:
        if not (root / name).exists():
            entries.append({"path": name, "missing": True})
            continue
        files = {path.relative_to(root).as_posix(): path for path in _files_under(root / name)}
        entries += [
            {"path": relative, "size": path.stat().st_size, "sha256": sha256_file(path)}
            for relative, path in sorted(files.items())
        ]
    return entries


def listed_files(
    root: Path, name: str = "", suffixes: Sequence[str] | None = None, follow_links: bool = True
) -> list[dict[str, Any]]:
    """Every file under `root / name` (only those ending in one of `suffixes`, case-insensitive,
    if given), sorted: its path relative to `root`, size and modification time in ns. Not hashed:
    cheap for a tree of many images, and adding, removing, replacing or touching one shows."""
    folder = root / name
    if not folder.is_dir():
        return []
    wanted = tuple(suffix.lower() for suffix in suffixes) if suffixes is not None else None
    entries = []
    for path in _files_under(folder, follow_links):
        if wanted is not None and not path.name.lower().endswith(wanted):
            continue
        stat = path.stat()
        entries.append(
            {
                "path": path.relative_to(root).as_posix(),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
            }
        )
    return sorted(entries, key=lambda entry: entry["path"])
