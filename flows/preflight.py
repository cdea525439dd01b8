"""What `compalign audit` checks before anything is written (no Prefect, MLflow or store write).

The data's test split is read from the store when it is prepared there, else built in memory
(nothing written); every model is loaded, run on batches of 1 and 2 and then on the whole test
split (shapes, class counts, finite inputs and logits: compalign.compare.check_outputs); every
`--fail-on` rule must name a metric the audit gives. Only then does the CLI start Prefect and
MLflow, write the built dataset to the store (`save`, the entry the prepare task then finds)
and take the folder's audit lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compalign.config import Params
from compalign.errors import UserError


@dataclass
class AuditPreflight:
    """The checked comparison (compalign.compare.Prepared) and how to keep the dataset built
    for it (`save`: writes it to the store; nothing when it was there already)."""

    prepared: Any
    manifest: dict[str, Any]
    save: Callable[[], None]


def audit_test_split(params: Params, refresh: bool = False) -> tuple[Any, dict[str, Any], Callable]:
    """(test split, manifest, save) of the data section: from the store's finished prepare
    entry, or built in memory with `save` writing it as the prepare stage would."""
    from compalign.data import build_table, check_available, load_split, read_manifest
    from compalign.data.prepared import split_of_table, write_prepared
    from tasks.store import entry_dir, is_complete, stage_key

    data = params.data.prepare_params()
    directory = entry_dir(stage_key("prepare", {"data": data}))
    if not refresh and is_complete(directory):
        manifest = read_manifest(directory)
        return load_split(directory, "test", manifest), manifest, lambda: None
    check_available(params.data)
    table, manifest = build_table(params.data)

    def save() -> None:
        from tasks.store import materialize

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
    from compalign.compare import check_models, check_outputs, gate_names
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


LOCK_FILE = Path(".compalign/audit.lock")


@contextlib.contextmanager
def audit_lock(report_dir: Path):
    """One `compalign audit` at a time writes `report_dir` in this folder: a second one is
    refused in one line while the first runs (an flock, released when the process ends, however
    it ends)."""
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
