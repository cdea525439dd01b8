"""What `compalign audit` checks before anything is written (no Prefect, MLflow or store write).

The data's test split is read from the store when it is prepared there, else built in memory
(nothing written); every model is loaded, run on batches of 1 and 2 and then on the whole test
split (shapes, class counts, finite inputs and logits: compalign.audited.check_outputs); every
`--fail-on` rule must name a metric the audit gives. Only then does the CLI start Prefect and
MLflow, write the built dataset to the store (`save`, the entry the prepare task then finds)
and take the folder's audit lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compalign.config import Params
from compalign.errors import UserError
from tasks.infra.paths import AUDIT_LOCK


@dataclass
class AuditPreflight:
    """The checked comparison (compalign.audited.Prepared) and how to keep the dataset built
    for it (`save`: writes it to the store; nothing when it was there already)."""

    prepared: Any
    manifest: dict[str, Any]
    save: Callable[[], None]


def audit_test_split(params: Params, refresh: bool = False) -> tuple[Any, dict[str, Any], Callable]:
    """(test split, manifest, save) of the data section: from the store's finished prepare
    entry, or built in memory with `save` writing it as the prepare stage would."""
    from compalign.data import build_table, check_available, load_split, read_manifest
    from compalign.data.prepared import split_of_table, write_prepared
    from tasks.infra.store import entry_dir, is_complete, stage_key

    data = params.data.prepare_params()
    directory = entry_dir(stage_key("prepare", {"data": data}))
    if not refresh and is_complete(directory):
        manifest = read_manifest(directory)
        return load_split(directory, "test", manifest), manifest, lambda: None
    check_available(params.data)
    table, manifest = build_table(params.data)

    def save() -> None:
        from tasks.infra.store import materialize

        if not refresh:  # with --refresh the prepare task rebuilds it anyway
            materialize("prepare", {"data": data}, lambda out: write_prepared(table, manifest, out))

    return split_of_table(table, manifest, "test"), manifest, save


def audit_preflight(
    params: Params,
    reference: str,
    candidates: dict[str, str],
    reference2: str | None,
    rules: list,
    refresh: bool = False,
) -> AuditPreflight:
    """Every check of an audit that needs no write; UserError (one line) on the first problem."""
    from compalign.audited import check_models, check_outputs
    from compalign.compare import gate_names
    from compalign.gate import check_rules
    from compalign.model_sources import load_model

    specs = [reference, *candidates.values(), *([reference2] if reference2 else [])]
    loaded = {spec: load_model(spec) for spec in specs}  # a file is refused before the data
    split, manifest, save = audit_test_split(params, refresh)
    prepared = check_models(
        loaded[reference],
        {name: loaded[spec] for name, spec in candidates.items()},
        split,
        reference2=loaded[reference2] if reference2 else None,
        class_names=manifest["class_names"],
        class_map=params.data.class_names,
        transform=params.data.transform,
        options=params.audit,
        attribution_samples=0,
    )
    check_outputs(prepared)
    if rules:
        names = gate_names(prepared)
        check_rules(rules, {name: dict.fromkeys(names, math.nan) for name in candidates})
    return AuditPreflight(prepared, manifest, save)


LOCK_FILE = AUDIT_LOCK


@contextlib.contextmanager
def audit_lock(report_dir: Path):
    """One `compalign audit` at a time writes `report_dir` in this folder: a second one is
    refused in one line while the first runs (an flock, released when the process ends, however
    it ends)."""
    check_project()
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    handle = open(LOCK_FILE, "a+")  # noqa: SIM115 (held for the whole audit)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise UserError(
            f"another audit (pid {holder}) is writing {report_dir} in this folder; wait for it "
            "to finish, or run this one from another folder"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        handle.close()


_held = contextlib.ExitStack()


def hold_audit_lock(report_dir: Path) -> None:
    """audit_lock, held until this process ends (the CLI's audit ends with its process)."""
    _held.enter_context(audit_lock(report_dir))


MIN_FREE_BYTES = 64 * 2**20  # the stores' databases, a dataset, a few checkpoints
_checked: set[Path] = set()


def check_project(folder: Path | None = None, busy_timeout_s: float = 5.0) -> None:
    """Before anything is written in the project folder: it is writable, its disk has
    MIN_FREE_BYTES free, and the SQLite databases compalign will open (MLflow's mlflow.db,
    the project's Prefect database) are readable, not damaged and not locked; else one line
    naming the file and what to do."""
    folder = (folder or Path.cwd()).resolve()
    if folder in _checked:
        return
    read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    if read_only or not os.access(folder, os.W_OK):
        raise UserError(
            f"{folder}: {'a read-only file system' if read_only else 'not writable'}; "
            "compalign writes .compalign/, artifacts/, mlflow.db and reports/ in the folder "
            "it runs from: run it from a folder you can write to"
        )
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise UserError(
            f"{folder}: only {free / 2**20:.1f} MiB free on its disk, where compalign needs at "
            f"least {MIN_FREE_BYTES // 2**20} MiB; free some space, then run the same command "
            "again (finished stages are kept)"
        )
    for database, what, remedy in _databases(folder):
        check_sqlite(database, what, remedy, busy_timeout_s)
    _checked.add(folder)


def _databases(folder: Path) -> list[tuple[Path, str, str]]:
    """(file, what it is, what to do when it is damaged) of the local SQLite databases."""
    found = []
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        found.append(
            (
                Path(uri.removeprefix("sqlite:///")),
                "MLflow store",
                "move it away (mv mlflow.db mlflow.db.damaged) and run again: a new store is "
                "made; the results in artifacts/ are kept, MLflow's history of them is not",
            )
        )
    if "PREFECT_API_URL" not in os.environ:
        home = Path(os.environ.get("PREFECT_HOME", folder / ".compalign" / "prefect"))
        found.append(
            (
                home.expanduser() / "prefect.db",
                "Prefect database",
                "remove it and run again: it holds only Prefect's history of flow runs; the "
                "results are in artifacts/ and mlflow.db",
            )
        )
    return found


def check_sqlite(path: Path, what: str, remedy: str, busy_timeout_s: float = 5.0) -> None:
    """A SQLite file (if it exists) opened read-only and quick-checked: UserError when it is
    not a database, is damaged or stays locked for `busy_timeout_s`."""
    import sqlite3

    from filelock import FileLock, Timeout

    if not path.exists():
        return
    # a run of this project creating the store or logging to it holds this lock (tasks.infra.tracking)
    lock = Path(f"{path}.lock")
    guard = FileLock(str(lock), timeout=60) if lock.exists() else contextlib.nullcontext()
    try:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        with (
            guard,
            contextlib.closing(
                sqlite3.connect(uri, uri=True, timeout=busy_timeout_s)
            ) as connection,
        ):
            verdict = connection.execute("PRAGMA quick_check").fetchone()[0]
    except Timeout:
        raise UserError(
            f"{path}: the {what} is locked by another compalign run (its {lock.name}, for over "
            "60 s); wait for it to finish, then run again"
        ) from None
    except sqlite3.OperationalError as error:
        if "locked" in str(error):
            raise UserError(
                f"{path}: the {what} is locked by another process (for over "
                f"{busy_timeout_s:g} s); wait for it to finish, or stop it, then run again"
            ) from None
        raise UserError(f"{path}: not a readable {what} ({error}); {remedy}") from None
    except sqlite3.DatabaseError as error:  # "file is not a database", "malformed"
        raise UserError(f"{path}: a damaged {what} ({error}); {remedy}") from None
    if verdict != "ok":
        raise UserError(f"{path}: a damaged {what} ({str(verdict)[:80]}); {remedy}")


def environment_error(error: OSError) -> str | None:
    """One line for an OSError that is the environment's fault, not a bug: a full disk or
    quota, a read-only file system, a permission refused; None for any other."""
    import errno

    where = error.filename or "a file"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"cannot write {where}: {error.strerror} (the disk is full); free some space, then "
            "run the same command again (finished stages are kept)"
        )
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            f"cannot use {where}: {error.strerror}; run from a folder you can write to, or "
            "check that file's permissions"
        )
    return None
