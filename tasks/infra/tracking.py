"""MLflow tracking: one parent run per pipeline run, one nested child run per audited model.

Children are logged at most once per cache key: a child whose key already has a FINISHED run is
not logged again (the new parent points to the existing run), and runs of the same key left
unfinished by a killed process are deleted before logging afresh.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypedDict

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities import DatasetInput, InputTag, RunStatus
from mlflow.tracking import MlflowClient
from torch import nn

import compalign
from compalign.files import pid_alive
from compalign.pruning import folded_copy
from tasks.infra.paths import template_dir
from tasks.infra.store import PACKAGE_DIR, refresh_requested
from tasks.infra.templates import make_template

DEFAULT_STORE = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
KEY_TAG = "compalign.key"
ROLE_TAG = "role"
PID_TAG = "compalign.pid"
HOST_TAG = "compalign.host"
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own: the UI shows it as the run's source
NOTE_TAG = "mlflow.note.content"  # MLflow's own: the run's description, Markdown
EXAMPLE_SIZE = 2  # test images saved with each logged model as its input example

# SQLite allows one writer at a time; tasks running in threads take turns.
_LOCK = threading.RLock()


class _DropPickleNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Saving pytorch model by Pickle")


@contextlib.contextmanager
def _known_notices() -> Iterator[None]:
    """Silence, around one logging call only, MLflow notices that are understood and would
    otherwise repeat for every child run: the dataset recorded as lineage is ids and labels (no
    model schema is inferred from it), and the pickle format is the one that saves pruned and
    quantized models (NOTES: pt2 fails on them)."""
    notice = _DropPickleNotice()
    logger = logging.getLogger("mlflow.pytorch")
    logger.addFilter(notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The specified dataset source can be")
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
            yield
    finally:
        logger.removeFilter(notice)


@functools.cache
def client(uri: str) -> MlflowClient:
    """The one MlflowClient of a tracking store (MlflowClient is safe to share between threads;
    writes still take turns through _LOCK)."""
    return MlflowClient(uri)


class Tracking(TypedDict):
    """Where runs go. `store_id` changes when the store is recreated, so it enters cache keys."""

    uri: str
    experiment_id: str
    store_id: str


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or the project's SQLite store `mlflow.db` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_STORE}"


def ui_links(base: str, experiment_id: str, run_id: str) -> dict[str, str]:
    """MLflow UI pages of an experiment's runs table and of one run. MLflow 3 opens experiments
    on its GenAI view; `workflowType=machine_learning` opens the runs table instead."""
    experiment = f"{base.rstrip('/')}/#/experiments/{experiment_id}"
    return {
        "runs": f"{experiment}/runs?workflowType=machine_learning",
        "run": f"{experiment}/runs/{run_id}?workflowType=machine_learning",
    }


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Exclusive use of a tracking store: by this process's threads (SQLite allows one writer at
    a time) and, for a local SQLite store, by other processes too (a lock file beside it), so
    that two runs on one project neither create the schema twice nor log one result twice."""
    with _LOCK:
        if not uri.startswith("sqlite:///"):
            yield
            return
        from filelock import FileLock

        database = Path(uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{database}.lock"):
            yield


def _create_store(uri: str) -> None:
    """A new local SQLite store made under another name, then renamed into place: MLflow's
    migrations take seconds and commit one by one, so a run killed while they ran left a
    half-made mlflow.db that every later run failed on ("table ... already exists").

    The scratch store is a copy of a migrated empty one kept per MLflow version
    (`_store_template`): the migrations took 1.6 s in every new project. MLflow adds its
    Default experiment, with this project's artifact location, when it first opens the copy."""
    if not uri.startswith("sqlite:///"):
        return
    database = Path(uri.removeprefix("sqlite:///"))
    if database.exists():
        return
    for stale in database.parent.glob(f".{database.name}.*.creating"):
        pid = stale.name.removeprefix(f".{database.name}.").removesuffix(".creating")
        if pid.isdigit() and not pid_alive(int(pid)):
            stale.unlink(missing_ok=True)
    scratch = database.with_name(f".{database.name}.{os.getpid()}.creating")
    scratch.unlink(missing_ok=True)
    template = _store_template()
    if template is not None:
        try:
            shutil.copyfile(template, scratch)
        except OSError:  # MLflow then migrates the scratch store itself
            scratch.unlink(missing_ok=True)
    MlflowClient(f"sqlite:///{scratch}").search_experiments(max_results=1)  # runs migrations
    os.replace(scratch, database)


def _store_template() -> Path | None:
    """A migrated MLflow store without experiments, made once per MLflow version in the user's
    cache (`paths.template_dir`) and renamed into place whole; None where it cannot be made
    (a new store then runs the migrations itself, as before)."""
    try:  # no home folder, a cache that cannot be read or written: no template
        template = template_dir() / f"mlflow-{mlflow.__version__}.db"
        if template.exists():
            return template
        make_template(
            template,
            lambda scratch: MlflowClient(f"sqlite:///{scratch}").search_experiments(max_results=1),
            emptied=("experiment_tags", "experiments"),
        )
    except Exception:  # noqa: BLE001  only slower: each new store then migrates itself
        return None
    return template


def setup(experiment: str) -> Tracking:
    """Point MLflow at the project store and get (or create) the experiment."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        _create_store(uri)
        store = client(uri)
        found = store.get_experiment_by_name(experiment)
        if found is None:
            # a local SQLite store keeps its artifacts beside it; a server decides for itself.
            # (Not "MLFLOW_TRACKING_URI unset": mlflow.set_tracking_uri exports that variable.)
            location = None
            if uri.startswith("sqlite:///"):
                database = Path(uri.removeprefix("sqlite:///")).resolve()
                location = (database.parent / DEFAULT_ARTIFACTS).as_uri()
            store.create_experiment(experiment, artifact_location=location)
            found = store.get_experiment_by_name(experiment)
    return Tracking(
        uri=uri,
        experiment_id=found.experiment_id,
        store_id=f"{uri}|{found.experiment_id}|{found.creation_time}",
    )


def warm_up() -> None:
    """Do now the one-time work MLflow does when it logs a process's first model: mapping every
    installed package to its modules (to check the model's pip requirements against the
    environment), 1.5 s here. `compalign run` calls this while its Prefect server starts, when
    the process would otherwise wait. It is MLflow's private function: should it move, the first
    logged model pays the cost as before."""
    try:
        from mlflow.utils.requirements_utils import _init_packages_to_modules_map
    except ImportError:
        return
    _init_packages_to_modules_map()


def git_state() -> dict[str, str]:
    """The commit of the working tree and whether it has uncommitted changes."""
    root = PACKAGE_DIR.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}


def _process_tags() -> dict[str, str]:
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def close_orphans(tracking: Tracking) -> int:
    """Mark KILLED the runs this host left RUNNING from processes that no longer exist."""
    store = client(tracking["uri"])
    closed = 0
    with _LOCK:
        runs = store.search_runs(
            [tracking["experiment_id"]],
            filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{socket.gethostname()}'",
        )
        for run in runs:
            pid = run.data.tags.get(PID_TAG, "")
            if pid.isdigit() and not pid_alive(int(pid)):
                store.set_terminated(run.info.run_id, status="KILLED")
                closed += 1
    return closed


def start_parent(
    tracking: Tracking, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]
) -> str:
    """Create the pipeline's parent run with its flattened params, code version and process."""
    store = client(tracking["uri"])
    git = git_state()
    all_tags = {
        ROLE_TAG: "pipeline",
        "compalign.version": compalign.__version__,
        **git,
        **({GIT_COMMIT_TAG: git["git_commit"]} if git["git_commit"] != "unknown" else {}),
        **_process_tags(),
        **tags,
    }
    with _LOCK:
        run = store.create_run(tracking["experiment_id"], run_name=run_name, tags=all_tags)
        store.log_batch(
            run.info.run_id,
            params=[mlflow.entities.Param(k, _param_text(v)) for k, v in params.items()],
        )
    return run.info.run_id


@contextlib.contextmanager
def parent_run(
    tracking: Tracking,
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    close_orphaned: bool = True,
) -> Iterator[str]:
    """A parent run for the block: created (after marking runs of killed processes KILLED),
    then ended FINISHED, KILLED on an interrupt or termination, FAILED on an error."""
    if close_orphaned:
        closed = close_orphans(tracking)
        if closed:
            logging.getLogger(__name__).info("marked %d run(s) of killed processes KILLED", closed)
    run_id = start_parent(tracking, run_name, params, tags)
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    except BaseException as error:
        from prefect.exceptions import TerminationSignal

        if isinstance(error, KeyboardInterrupt | TerminationSignal | SystemExit):
            status = "KILLED"
        raise
    finally:
        finish_run(tracking, run_id, status)


def _param_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def finish_run(tracking: Tracking, run_id: str, status: str = "FINISHED") -> None:
    """End a run with `status` (FINISHED, FAILED or KILLED)."""
    with _LOCK:
        client(tracking["uri"]).set_terminated(run_id, status=status)


def set_tags(tracking: Tracking, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set several tags on a run."""
    with _LOCK:
        store = client(tracking["uri"])
        store.log_batch(run_id, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()])


def log_metrics(
    tracking: Tracking, run_id: str, metrics: Mapping[str, float], model_id: str | None = None
) -> None:
    """Log several metrics on a run (names made MLflow-safe); with `model_id`, linked to that
    logged model too (the MLflow UI's model page shows them)."""
    with _LOCK:
        client(tracking["uri"]).log_batch(
            run_id,
            metrics=[
                mlflow.entities.Metric(safe_name(k), float(v), 0, 0, model_id=model_id)
                for k, v in metrics.items()
                # NaN (a class absent from the split) and inf (a reduction factor over zero
                # mismatches) are not logged; the summary table shows them
                if v is not None and math.isfinite(v)
            ],
        )


def log_metric_history(
    tracking: Tracking, run_id: str, history: Mapping[str, Iterable[float]]
) -> None:
    """Log each metric's values as its history, step 1, 2, ... (one per epoch: the MLflow UI
    draws it as a chart), names made MLflow-safe; non-finite values are left out."""
    with _LOCK:
        client(tracking["uri"]).log_batch(
            run_id,
            metrics=[
                mlflow.entities.Metric(safe_name(name), float(value), 0, step)
                for name, values in history.items()
                for step, value in enumerate(values, start=1)
                if value is not None and math.isfinite(value)
            ],
        )


def set_description(tracking: Tracking, run_id: str, markdown: str) -> None:
    """The run's description in the MLflow UI (the `mlflow.note.content` tag), in Markdown."""
    set_tags(tracking, run_id, {NOTE_TAG: markdown})


def log_table(tracking: Tracking, run_id: str, frame: pd.DataFrame, artifact_file: str) -> None:
    """A table the MLflow UI shows as one (JSON, `MlflowClient.log_table`); NaN and inf as
    null and text, so the JSON stays valid."""
    shown = frame.copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            values = shown[column]
            shown[column] = values.astype(object).where(values.notna(), None)
            shown[column] = [
                str(value) if isinstance(value, float) and math.isinf(value) else value
                for value in shown[column]
            ]
    with store_lock(tracking["uri"]):
        client(tracking["uri"]).log_table(run_id, shown, artifact_file)


def log_figure(tracking: Tracking, run_id: str, figure: Any, artifact_file: str) -> None:
    """A matplotlib Figure as an image of the run (`MlflowClient.log_figure`)."""
    with store_lock(tracking["uri"]):
        client(tracking["uri"]).log_figure(run_id, figure, artifact_file)


def registered_model_name(dataset: str, model: str) -> str:
    """The registered model a pipeline's models are versions of: `<dataset>-<architecture>`
    (a reference file's spec reduced to its file name)."""
    architecture = Path(str(model).split("::")[0]).name or str(model)
    return re.sub(r"[^\w\-.]+", "_", f"{dataset}-{architecture}")


def _register(
    store: MlflowClient, name: str, run_id: str, model_id: str, tags: Mapping[str, Any]
) -> str:
    """A new version of registered model `name` (made if missing) for `run_id`'s logged model."""
    from mlflow.exceptions import MlflowException

    try:
        store.create_registered_model(
            name,
            description=(
                "Versions: the models of compalign pipeline runs (one per audited model). "
                "Aliases: `reference`, and per loss `best-<loss>`, the compressed model with "
                "the fewest mismatches where the reference is right at the highest level."
            ),
        )
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = store.create_model_version(
        name,
        f"models:/{model_id}",
        run_id=run_id,
        tags={key: str(value) for key, value in tags.items()},
        model_id=model_id,
    )
    return str(version.version)


def model_version_of(tracking: Tracking, name: str, run_id: str) -> str | None:
    """The version of registered model `name` logged from run `run_id`, registering the run's
    logged model first if it has none yet (a child run logged before registration existed)."""
    store = client(tracking["uri"])
    found = store.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if found:
        return str(found[0].version)
    models = store.search_logged_models(
        [tracking["experiment_id"]], filter_string=f"source_run_id = '{run_id}'"
    )
    if not models:
        return None
    run = store.get_run(run_id)
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith(("mlflow.", "compalign."))}
    return _register(store, name, run_id, models[0].model_id, tags)


def set_aliases(tracking: Tracking, name: str, aliases: Mapping[str, str]) -> dict[str, str]:
    """Point each alias of registered model `name` at the version logged from its run id;
    returns {alias: version} (runs without a logged model are skipped)."""
    done = {}
    with store_lock(tracking["uri"]):
        store = client(tracking["uri"])
        for alias, run_id in aliases.items():
            version = model_version_of(tracking, name, run_id)
            if version is not None:
                store.set_registered_model_alias(name, safe_alias(alias), version)
                done[safe_alias(alias)] = version
    return done


def safe_alias(alias: str) -> str:
    """A registered-model alias MLflow accepts (letters, digits, _ and -)."""
    return re.sub(r"[^\w\-]", "_", alias)


def log_artifacts(tracking: Tracking, run_id: str, paths: Iterable[tuple[str, str | Path]]) -> None:
    """Upload files or directories: (artifact folder, "" for the root; local path) pairs."""
    with _LOCK:
        store = client(tracking["uri"])
        for artifact_path, local in paths:
            local = Path(local)
            if local.is_dir():
                store.log_artifacts(run_id, str(local), artifact_path or None)
            else:
                store.log_artifact(run_id, str(local), artifact_path or None)


def log_dataset(
    tracking: Tracking,
    run_id: str,
    split_frame: pd.DataFrame,
    manifest: Mapping[str, Any],
    data_path: str,
    context: str,
) -> None:
    """Record the prepared dataset (ids, splits, labels; digest from its manifest) as a run input."""
    with _known_notices():
        dataset = mlflow.data.from_pandas(
            split_frame,
            source=str(Path(data_path).resolve()),
            targets="label",
            name=f"{manifest['source']}",
            digest=manifest["sha256"][:12],
        )
    entity = DatasetInput(
        dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)]
    )
    with _LOCK:
        client(tracking["uri"]).log_inputs(run_id, datasets=[entity])


def safe_name(name: str) -> str:
    """A metric or tag name MLflow accepts (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def owner_alive(run: Any) -> bool:
    """Whether the process that started `run` provably still runs: same host, live PID. A run
    of another host is taken as alive (its process cannot be checked from here)."""
    tags = run.data.tags
    if tags.get(HOST_TAG) != socket.gethostname():
        return True
    pid = tags.get(PID_TAG, "")
    return pid.isdigit() and pid_alive(int(pid))


def existing_child(tracking: Tracking, key: str) -> str | None:
    """The FINISHED run already logged for `key`. Other runs of that key that a killed process
    left (FAILED, KILLED, or RUNNING with its owner gone) are deleted; a RUNNING one whose owner
    is alive belongs to another run and is left alone."""
    store = client(tracking["uri"])
    runs = store.search_runs(
        [tracking["experiment_id"]], filter_string=f"tags.`{KEY_TAG}` = '{key}'"
    )
    finished = [run for run in runs if run.info.status == RunStatus.to_string(RunStatus.FINISHED)]
    running = RunStatus.to_string(RunStatus.RUNNING)
    for run in runs:
        if run in finished[:1] or (run.info.status == running and owner_alive(run)):
            continue
        store.delete_run(run.info.run_id)
    return finished[0].info.run_id if finished else None


def log_child_once(
    tracking: Tracking,
    parent_run_id: str,
    key: str,
    run_name: str,
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
    artifacts: Iterable[tuple[str, str | Path]],
    params: Mapping[str, Any] | None = None,
    model: Callable[[], nn.Module] | None = None,
    dataset: Callable[[], tuple[pd.DataFrame, Mapping[str, Any], str]] | None = None,
    input_example: Callable[[], np.ndarray] | None = None,
    registered_model: str | None = None,
    version_tags: Mapping[str, Any] | None = None,
    dataset_context: str = "test",
    metric_history: Mapping[str, Iterable[float]] | None = None,
) -> tuple[str, bool]:
    """Log a nested child run for one model unless `key` already has one; (run_id, newly_logged).

    `model`, `dataset` and `input_example` are loaders, called only when the run is logged. The
    model goes in as an MLflow model (pickle format, explicit pip requirements; with the input
    example, its signature), the state-dict checkpoint and tables as artifacts; with
    `registered_model`, the logged model becomes a version of it, tagged `version_tags` (what
    the model is and its headline metrics); `metric_history` goes in as per-step histories
    (`log_metric_history`).
    """
    with store_lock(tracking["uri"]):
        found = None if refresh_requested() else existing_child(tracking, key)
        if found is not None:
            return found, False
        all_tags = {KEY_TAG: key, **_process_tags(), **tags}
        with (
            _known_notices(),
            mlflow.start_run(
                run_name=run_name,
                experiment_id=tracking["experiment_id"],
                parent_run_id=parent_run_id,
                tags=all_tags,
            ) as run,
        ):
            run_id = run.info.run_id
            if params:
                client(tracking["uri"]).log_batch(
                    run_id,
                    params=[mlflow.entities.Param(k, _param_text(v)) for k, v in params.items()],
                )
            log_artifacts(tracking, run_id, artifacts)
            if dataset is not None:
                log_dataset(tracking, run_id, *dataset(), context=dataset_context)
            logged = None
            if model is not None:
                # the model before the metrics: logged after them, MLflow links them to it by
                # reading back every metric's history (0.2 s a model); here they are linked
                # as they are logged, in one batch
                logged = log_torch_model(
                    model(), None if input_example is None else input_example()
                )
            log_metrics(tracking, run_id, metrics, None if logged is None else logged.model_id)
            if metric_history:
                log_metric_history(tracking, run_id, metric_history)
            if logged is not None and registered_model is not None:
                _register(
                    client(tracking["uri"]),
                    registered_model,
                    run_id,
                    logged.model_id,
                    version_tags or {},
                )
        return run_id, True


def model_signature(network: nn.Module, example: np.ndarray) -> Any:
    """The MLflow signature of `network` on `example` (float32 input; logits as float32,
    whatever the model computes in)."""
    from mlflow.models import infer_signature

    with torch.no_grad():
        logits = network(torch.from_numpy(example)).float().numpy()
    return infer_signature(example, logits)


def log_torch_model(network: nn.Module, example: np.ndarray | None) -> Any:
    """Log `network` as the run's MLflow model `model`: pickle format (NOTES: the pt2 default
    fails on quantized models), explicit pip requirements (inferring them takes seconds), and
    with an input example its signature. Returns MLflow's ModelInfo."""
    network = folded_copy(network).cpu().eval()
    extra = {}
    if example is not None:
        example = np.ascontiguousarray(example, dtype=np.float32)
        extra = {"signature": model_signature(network, example), "input_example": example}
    return mlflow.pytorch.log_model(
        network,
        name="model",
        serialization_format="pickle",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "torchvision"],
        code_paths=[str(PACKAGE_DIR)],
        **extra,
    )
