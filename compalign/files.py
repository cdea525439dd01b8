"""File helpers: content digests and directories that appear whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a scratch directory that replaces `final` only if the block finishes.

    A run killed half-way leaves at most a hidden `.tmp-*` sibling, never a half-written `final`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # the PID in the name lets a later run tell a dead process's leftovers from live work
    scratch = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    scratch.mkdir()
    try:
        yield scratch
        if final.exists():
            trash = final.parent / f".old-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            os.replace(scratch, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(scratch, final)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_scratch(root: str | Path) -> int:
    """Remove the `.tmp-*` / `.old-*` folders that `atomic_directory` left under `root` when
    its process was killed (its PID, in the name, is gone); return how many. Folders of live
    processes (another run working now) and of older releases' names are left alone."""
    removed = 0
    root = Path(root)
    if not root.is_dir():
        return 0
    patterns = (".tmp-*", ".old-*", "*/.tmp-*", "*/.old-*")  # entries sit one level down
    for folder in [path for pattern in patterns for path in root.glob(pattern)]:
        parts = folder.name.rsplit("-", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not folder.is_dir():
            continue
        if not pid_alive(int(parts[1])):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed
