"""The content-addressed artifact store and the cache keys of the pipeline's stages.

Every stage output lives in `artifacts/<stage>/<key>/`, where the key hashes what the output
depends on: the code the call really uses (tasks.infra.code), its own params, and the content
digests of its inputs -- never paths, tensors or modules. The same key serves Prefect (as the
task's `cache_key_fn`) and the DVC stage commands (which copy a finished store entry instead of recomputing it). A store entry
appears atomically, so a killed run leaves nothing half-written, and a rerun reuses every entry
that was finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypedDict

import compalign
from compalign.errors import UserError
from compalign.files import atomic_directory, sha256_file
from tasks.infra.code import code_digest
from tasks.infra.logs import computing
from tasks.infra.paths import ARTIFACTS_DIR, PREFECT_RESULTS_DIR

MANIFEST = "manifest.json"

PACKAGE_DIR = Path(compalign.__file__).resolve().parent

# Parameters that say where or under which parent to put a result, not what the result is.
NOT_IN_KEY = frozenset({"out_dir", "parent_run_id"})
# parameters that enter a key only when they take effect, so that the keys of calls without them
# stay as they were; the same rule for the parameters Prefect sees (every argument, defaults
# included) and those a task hands to materialize
ONLY_WHEN: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "tune_budget": lambda parameters: bool(parameters.get("tune") and parameters["tune_budget"]),
    # an audit on the validation split (compalign search's probes); the test split is the default
    "split": lambda parameters: parameters.get("split", "test") != "test",
}


class Artifact(TypedDict):
    """A finished stage output: its directory and the digest of its manifest."""

    path: str
    digest: str


def _keyable(value: Any) -> Any:
    """An artifact contributes its digest (and the MLflow run that holds it, if any), never its
    path; everything else must be plain JSON."""
    if isinstance(value, Mapping):
        if "digest" in value and "path" in value:
            return {key: value[key] for key in ("digest", "run_id") if key in value}
        return {str(key): _keyable(item) for key, item in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_keyable(item) for item in value]
    return value


def stage_key(stage: str, parameters: Mapping[str, Any]) -> str:
    """The cache key of one stage call: its code, the parameters its declaration says the key
    covers (tasks.infra.stage.Stage.key: with the digests of files the parameters only name)
    and its inputs' digests. Derived here so that every key of one call agrees: Prefect's
    cache_key_fn, materialize's, and the CLI's."""
    import torch

    from tasks import stage as declared

    parameters = declared(stage).key(parameters)
    content = {
        "stage": stage,
        "code": code_digest(stage, parameters),
        "torch": torch.__version__,
        "parameters": _keyable(
            {
                k: v
                for k, v in parameters.items()
                if k not in NOT_IN_KEY and (k not in ONLY_WHEN or ONLY_WHEN[k](parameters))
            }
        ),
    }
    text = json.dumps(content, sort_keys=True, default=str)
    return f"{stage}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"


def entry_dir(key: str) -> Path:
    """Where the store keeps the output of the stage call with this key."""
    stage, _, digest = key.partition("-")
    return ARTIFACTS_DIR / stage / digest


def artifact_of(directory: str | Path) -> Artifact:
    """The Artifact record of a finished output directory (the digest of its manifest)."""
    directory = Path(directory)
    return Artifact(path=directory.as_posix(), digest=sha256_file(directory / MANIFEST))


def is_complete(directory: Path) -> bool:
    """A finished entry: it has a manifest, and the file the manifest names has its digest."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return False
    manifest = json.loads(manifest_path.read_text())
    main = directory / manifest.get("file", "")
    return main.is_file() and sha256_file(main) == manifest.get("sha256")


def refresh_requested() -> bool:
    """`compalign run --refresh`: rebuild store entries even where a finished one exists."""
    return os.environ.get("COMPALIGN_REFRESH") == "1"


def resume_dir_of(directory: Path) -> Path:
    """Where the training loops of the stage call that makes `directory` keep their resume
    points (compalign.resume): a sibling named by the same key, so a rerun after a kill finds
    them; removed when the entry is finished."""
    return directory.parent / f".resume-{directory.name}"


@contextlib.contextmanager
def training_runtime(resume_dir: Path) -> Iterator[None]:
    """Training inside saves resume points in `resume_dir` every `run.resume_every` epochs and
    compiles its model when `run.compile` (both set for the process by the CLI through
    COMPALIGN_RESUME_EVERY and COMPALIGN_COMPILE; neither changes a result, so neither is in
    a key)."""
    from compalign.accelerated import compiling
    from compalign.config import RunParams
    from compalign.resume import resume_area

    every = os.environ.get("COMPALIGN_RESUME_EVERY", RunParams.model_fields["resume_every"].default)
    with resume_area(resume_dir, int(every)), compiling(os.environ.get("COMPALIGN_COMPILE") == "1"):
        yield


def materialize(
    stage: str,
    parameters: Mapping[str, Any],
    build: Callable[[Path], None],
    out_dir: str | Path | None = None,
) -> Artifact:
    """Return the stage output for `parameters`, building it with `build(scratch_dir)` only when
    the store has no finished entry for its key; with `out_dir`, also copy it there (DVC's view).
    """
    key = stage_key(stage, parameters)
    directory = entry_dir(key)
    if refresh_requested() or not is_complete(directory):
        resume_dir = resume_dir_of(directory)
        if refresh_requested():
            shutil.rmtree(resume_dir, ignore_errors=True)
        with (
            atomic_directory(directory) as scratch,
            training_runtime(resume_dir),
            computing(stage),
        ):
            build(scratch)
            if not (scratch / MANIFEST).is_file():
                raise RuntimeError(f"stage {stage} wrote no {MANIFEST}")
        shutil.rmtree(resume_dir, ignore_errors=True)  # finished: nothing left to resume
    if out_dir is None:
        return artifact_of(directory)
    with atomic_directory(out_dir) as scratch:
        shutil.copytree(directory, scratch, dirs_exist_ok=True)
    return artifact_of(out_dir)


def require(artifact: Mapping[str, Any], what: str) -> Path:
    """The directory of an input artifact, refusing one that is missing or no longer matches."""
    directory = Path(artifact["path"])
    if not (directory / MANIFEST).is_file():
        raise UserError(
            f"{directory}: the {what} this stage needs is missing; rerun with --refresh to rebuild it"
        )
    if sha256_file(directory / MANIFEST) != artifact["digest"]:
        raise UserError(
            f"{directory}: the {what} changed since it was made (manifest digest differs); "
            "rerun with --refresh"
        )
    return directory


# The serializer every task of the project persists its results with (tasks/infra/stage.py):
# Prefect's JSON serializer with its defaults. A record naming anything else is never read.
JSON_SERIALIZER = {
    "type": "json",
    "jsonlib": "json",
    "object_encoder": "prefect.serializers.prefect_json_object_encoder",
    "object_decoder": "prefect.serializers.prefect_json_object_decoder",
    "dumps_kwargs": {},
    "loads_kwargs": {},
}


def _plain(value: Any) -> bool:
    """JSON values only, and no object Prefect's decoder would rebuild (a "__class__" key)."""
    if isinstance(value, dict):
        return "__class__" not in value and all(
            isinstance(key, str) and _plain(item) for key, item in value.items()
        )
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    return value is None or isinstance(value, str | int | float | bool)


def plain_json_record(path: Path) -> bool:
    """Whether Prefect's cached result record at `path` (if any) is safe to read: it declares
    exactly the project's JSON serializer and holds plain JSON. Prefect deserialises a record
    with the serializer the record itself names, so a record rewritten to name `pickle` (or
    another decoder) would run code; such a record is refused (and removed by the caller, so
    the task is recomputed)."""
    if not path.is_file():
        return True
    try:
        record = json.loads(path.read_text())
        safe = record["metadata"]["serializer"] == JSON_SERIALIZER and _plain(
            json.loads(record["result"])
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        safe = False
    if not safe:
        logging.getLogger(__name__).warning(
            "%s: a cached result record that is not plain JSON was refused and removed; "
            "the task runs again",
            path,
        )
    return safe


def prefect_cache_key(stage: str) -> Callable[[Any, dict[str, Any]], str]:
    """A Prefect `cache_key_fn` for `stage` that never returns a stale hit.

    When the store entry behind a key is gone (artifacts deleted by hand), the cached result
    record for the key is dropped too, so Prefect runs the task again and rebuilds the entry.
    """

    def cache_key(_context: Any, parameters: dict[str, Any]) -> str:
        key = stage_key(stage, parameters)
        if not is_complete(entry_dir(key)) or not plain_json_record(PREFECT_RESULTS_DIR / key):
            (PREFECT_RESULTS_DIR / key).unlink(missing_ok=True)
        return key

    cache_key.__name__ = f"{stage}_cache_key"
    return cache_key


def prefect_group_cache_key(
    stage: str, members: Callable[[dict[str, Any]], list[dict[str, Any]]]
) -> Callable[[Any, dict[str, Any]], str]:
    """A Prefect `cache_key_fn` for a task that makes several store entries at once (one per
    member): the key hashes the members' keys, and a record whose entries are not all finished
    is dropped, as `prefect_cache_key` does for one entry."""

    def cache_key(_context: Any, parameters: dict[str, Any]) -> str:
        keys = [stage_key(stage, member) for member in members(parameters)]
        key = f"{stage}-group-{hashlib.sha256(''.join(keys).encode()).hexdigest()[:24]}"
        finished = all(is_complete(entry_dir(member_key)) for member_key in keys)
        if not finished or not plain_json_record(PREFECT_RESULTS_DIR / key):
            (PREFECT_RESULTS_DIR / key).unlink(missing_ok=True)
        return key

    cache_key.__name__ = f"{stage}_group_cache_key"
    return cache_key
