"""The content-addressed artifact store and the cache keys of the pipeline's stages.

Every stage output lives in `artifacts/<stage>/<key>/`, where the key hashes what the output
depends on: the stage's code, its own params, and the content digests of its inputs -- never
paths, tensors or modules. The same key serves Prefect (as the task's `cache_key_fn`) and the DVC
stage commands (which copy a finished store entry instead of recomputing it). A store entry
appears atomically, so a killed run leaves nothing half-written, and a rerun reuses every entry
that was finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypedDict

import compalign
from compalign.errors import UserError
from compalign.files import atomic_directory, sha256_file

ARTIFACTS_DIR = Path("artifacts")
# Prefect's result records live beside the entries they point to: deleting artifacts/ drops both.
PREFECT_RESULTS_DIR = ARTIFACTS_DIR / ".prefect-results"
MANIFEST = "manifest.json"

PACKAGE_DIR = Path(compalign.__file__).resolve().parent
TASKS_DIR = Path(__file__).resolve().parent

# The source files each stage's output depends on (dvc.yaml lists the same files as deps; a test
# keeps the two in step). Editing one of them reruns that stage and everything after it.
# Loading or saving any checkpoint involves the code that rebuilds every kind of model.
CHECKPOINT_CODE = [
    "compalign/checkpoint.py",
    "compalign/compress.py",
    "compalign/models.py",
    "compalign/quantize.py",
    "compalign/structured.py",
]
STAGE_CODE: dict[str, list[str]] = {
    "prepare": ["compalign/data.py", "compalign/files.py", "tasks/data.py"],
    "reference": sorted(
        {
            "compalign/data.py",
            "compalign/losses.py",
            "compalign/train.py",
            "compalign/vectorised.py",
            "tasks/train.py",
        }
        | set(CHECKPOINT_CODE)
    ),
    "compress": sorted(
        {"compalign/data.py", "compalign/losses.py", "tasks/compress.py"} | set(CHECKPOINT_CODE)
    ),
    "align": sorted(
        {
            "compalign/data.py",
            "compalign/finetune.py",
            "compalign/losses.py",
            "compalign/train.py",
            "compalign/tuning.py",
            "tasks/align.py",
        }
        | set(CHECKPOINT_CODE)
    ),
    "audit": sorted(
        {
            "compalign/attribution.py",
            "compalign/audit.py",
            "compalign/data.py",
            "compalign/fairness.py",
            "compalign/report/figures.py",  # the attribution agreement figure
            "compalign/train.py",
            "tasks/audit.py",
            "tasks/tracking.py",
        }
        | set(CHECKPOINT_CODE)
    ),
    # run by the flow after every audit, and by DVC's audit stage (it has no stage of its own)
    "costs": sorted(
        {"compalign/costs.py", "compalign/data.py", "tasks/costs.py", "tasks/tracking.py"}
        | set(CHECKPOINT_CODE)
    ),
}
STAGE_CODE["predict"] = sorted(
    {"compalign/data.py", "compalign/train.py", "tasks/predict.py"} | set(CHECKPOINT_CODE)
)  # population members' test predictions (the populations flow; no DVC stage)
PIPELINE_STAGES = ["prepare", "reference", "compress", "align", "audit"]  # the DVC stages

# Parameters that say where or under which parent to put a result, not what the result is.
NOT_IN_KEY = frozenset({"out_dir", "parent_run_id"})


class Artifact(TypedDict):
    """A finished stage output: its directory and the digest of its manifest."""

    path: str
    digest: str


def source_path(relative: str) -> Path:
    """Absolute path of a project source file named as in STAGE_CODE ("compalign/x.py")."""
    package, _, name = relative.partition("/")
    return (PACKAGE_DIR if package == "compalign" else TASKS_DIR) / name


def code_digest(stage: str) -> str:
    """sha256 over the stage's source files (name and content)."""
    digest = hashlib.sha256()
    for relative in STAGE_CODE[stage]:
        digest.update(relative.encode())
        digest.update(source_path(relative).read_bytes())
    return digest.hexdigest()


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
    """The cache key of one stage call: its code, its params and its inputs' digests."""
    import torch

    content = {
        "stage": stage,
        "code": code_digest(stage),
        "torch": torch.__version__,
        "parameters": _keyable({k: v for k, v in parameters.items() if k not in NOT_IN_KEY}),
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
        with atomic_directory(directory) as scratch:
            build(scratch)
            if not (scratch / MANIFEST).is_file():
                raise RuntimeError(f"stage {stage} wrote no {MANIFEST}")
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


def prefect_cache_key(stage: str) -> Callable[[Any, dict[str, Any]], str]:
    """A Prefect `cache_key_fn` for `stage` that never returns a stale hit.

    When the store entry behind a key is gone (artifacts deleted by hand), the cached result
    record for the key is dropped too, so Prefect runs the task again and rebuilds the entry.
    """

    def cache_key(_context: Any, parameters: dict[str, Any]) -> str:
        key = stage_key(stage, parameters)
        if not is_complete(entry_dir(key)):
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
        if not all(is_complete(entry_dir(member_key)) for member_key in keys):
            (PREFECT_RESULTS_DIR / key).unlink(missing_ok=True)
        return key

    cache_key.__name__ = f"{stage}_group_cache_key"
    return cache_key
