"""tasks/infra/tracking.py: the experiment and its store, parent runs and their end states, orphaned
runs, children logged once per key, metric names and values, the code version."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys

import mlflow
import pandas as pd
import pytest

from tasks.infra import tracking

SHA = "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    """One SQLite store for the module (creating one takes seconds); each test its experiment."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def track(store_dir, monkeypatch, request):
    """A fresh experiment, named after the test, in the module's store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store_dir / 'mlflow.db'}")
    monkeypatch.delenv("COMPALIGN_REFRESH", raising=False)
    yield tracking.setup(f"test-{request.node.name}")
    # setup points MLflow's fluent API at the store; later tests must not write into it
    mlflow.set_tracking_uri(None)


def status(track, run_id: str) -> str:
    return tracking.client(track["uri"]).get_run(run_id).info.status


def runs_of(track, key: str):
    return tracking.client(track["uri"]).search_runs(
        [track["experiment_id"]], filter_string=f"tags.`{tracking.KEY_TAG}` = '{key}'"
    )


def dead_pid() -> int:
    """The id of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_tracking_uri_defaults_to_the_project_store(project, monkeypatch):
    assert tracking.tracking_uri() == f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_setup_creates_the_experiment_once_with_artifacts_beside_the_store(track, store_dir):
    experiment = tracking.client(track["uri"]).get_experiment(track["experiment_id"])
    assert experiment.name.startswith("test-test_setup_creates")
    assert experiment.artifact_location == (store_dir / "mlartifacts").resolve().as_uri()
    assert mlflow.get_tracking_uri() == track["uri"]
    assert tracking.setup(experiment.name) == track  # found again, not created again
    other = tracking.setup(f"{experiment.name}-other")
    assert other["experiment_id"] != track["experiment_id"]
    assert other["store_id"] != track["store_id"]


def test_one_client_per_store():
    first, second = "http://127.0.0.1:5001", "http://127.0.0.1:5002"  # never contacted
    assert tracking.client(first) is tracking.client(first)
    assert tracking.client(first) is not tracking.client(second)


def test_parent_run_finishes_with_params_code_version_and_process(track):
    params = {"align.losses": ["ce", "kd"], "reference.epochs": 3}
    with tracking.parent_run(track, "pipeline-digits", params, {"orchestrator": "test"}) as run_id:
        assert status(track, run_id) == "RUNNING"
    run = tracking.client(track["uri"]).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "pipeline-digits"
    assert run.data.params == {"align.losses": '["ce", "kd"]', "reference.epochs": "3"}
    tags = run.data.tags
    assert tags[tracking.ROLE_TAG] == "pipeline"
    assert tags["orchestrator"] == "test"
    assert tags[tracking.PID_TAG] == str(os.getpid())
    assert tags[tracking.HOST_TAG] == socket.gethostname()
    assert {"git_commit", "git_dirty", "compalign.version"} <= set(tags)


@pytest.mark.parametrize(
    ("error", "expected"),
    [(ValueError, "FAILED"), (KeyboardInterrupt, "KILLED"), (SystemExit, "KILLED")],
)
def test_parent_run_ends_failed_on_an_error_and_killed_on_an_interrupt(track, error, expected):
    started = []
    with pytest.raises(error), tracking.parent_run(track, "parent", {}, {}) as run_id:
        started.append(run_id)
        raise error()
    assert status(track, started[0]) == expected


def test_parent_run_marks_runs_of_dead_processes_on_this_host_killed(track):
    store = tracking.client(track["uri"])
    host = socket.gethostname()

    def running(pid: int, on_host: str) -> str:
        tags = {tracking.PID_TAG: str(pid), tracking.HOST_TAG: on_host}
        return store.create_run(track["experiment_id"], tags=tags).info.run_id

    pid = dead_pid()
    orphan = running(pid, host)
    alive = running(os.getpid(), host)
    elsewhere = running(pid, "another-host")  # its PID means nothing here
    with tracking.parent_run(track, "parent", {}, {}) as parent:
        assert status(track, orphan) == "KILLED"
    assert status(track, parent) == "FINISHED"
    assert status(track, alive) == "RUNNING"
    assert status(track, elsewhere) == "RUNNING"


def test_parent_run_can_leave_orphans_alone(track):
    tags = {tracking.PID_TAG: str(dead_pid()), tracking.HOST_TAG: socket.gethostname()}
    orphan = tracking.client(track["uri"]).create_run(track["experiment_id"], tags=tags)
    with tracking.parent_run(track, "parent", {}, {}, close_orphaned=False):
        pass
    assert status(track, orphan.info.run_id) == "RUNNING"


def test_child_is_logged_once_per_key(track, tmp_path):
    parent = tracking.start_parent(track, "parent", {}, {})
    table = tmp_path / "summary.csv"
    table.write_text("a,b\n1,2\n")
    frame = pd.DataFrame({"example_id": ["0", "1"], "split": ["test"] * 2, "label": [3, 5]})
    run_id, logged = tracking.log_child_once(
        track,
        parent,
        key="audit-abc",
        run_name="magnitude_global-0.9-kd",
        tags={"loss": "kd"},
        metrics={"accuracy": 0.75},
        artifacts=[("tables", table)],
        params={"sparsity": 0.9},
        dataset=lambda: (frame, {"source": "digits", "sha256": SHA}, "data/prepared"),
    )
    assert logged
    store = tracking.client(track["uri"])
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "magnitude_global-0.9-kd"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags[tracking.KEY_TAG] == "audit-abc"
    assert run.data.tags["loss"] == "kd"
    assert run.data.metrics == {"accuracy": 0.75}
    assert run.data.params == {"sparsity": "0.9"}
    assert [item.path for item in store.list_artifacts(run_id, "tables")] == ["tables/summary.csv"]
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "digits"
    assert dataset_input.dataset.digest == SHA[:12]
    assert {tag.key: tag.value for tag in dataset_input.tags}["mlflow.data.context"] == "test"

    def never():
        raise AssertionError("a loader was called for a key that is already logged")

    again, logged_again = tracking.log_child_once(
        track,
        tracking.start_parent(track, "second parent", {}, {}),
        key="audit-abc",
        run_name="magnitude_global-0.9-kd",
        tags={"loss": "kd"},
        metrics={"accuracy": 0.5},
        artifacts=[("tables", table)],
        model=never,
        dataset=never,
    )
    assert (again, logged_again) == (run_id, False)
    assert [run.info.run_id for run in runs_of(track, "audit-abc")] == [run_id]
    assert store.get_run(run_id).data.metrics == {"accuracy": 0.75}


@pytest.mark.parametrize("left_as", ["RUNNING", "FAILED", "KILLED"])
def test_unfinished_runs_of_a_key_are_replaced(track, left_as):
    """Runs a killed process left (its PID gone from this host) are replaced."""
    import socket

    store = tracking.client(track["uri"])
    owner = {tracking.HOST_TAG: socket.gethostname(), tracking.PID_TAG: str(dead_pid())}
    stale = store.create_run(
        track["experiment_id"], tags={tracking.KEY_TAG: "audit-stale", **owner}
    )
    if left_as != "RUNNING":
        store.set_terminated(stale.info.run_id, status=left_as)
    parent = tracking.start_parent(track, "parent", {}, {})
    run_id, logged = tracking.log_child_once(
        track, parent, "audit-stale", "child", {}, {"accuracy": 1.0}, []
    )
    assert logged and run_id != stale.info.run_id
    assert store.get_run(stale.info.run_id).info.lifecycle_stage == "deleted"
    assert [run.info.run_id for run in runs_of(track, "audit-stale")] == [run_id]


def test_a_running_child_of_a_live_run_is_left_alone(track):
    """Another run logging the same key right now is not a leftover: its run stays."""
    import os
    import socket

    store = tracking.client(track["uri"])
    owner = {tracking.HOST_TAG: socket.gethostname(), tracking.PID_TAG: str(os.getpid())}
    live = store.create_run(track["experiment_id"], tags={tracking.KEY_TAG: "audit-live", **owner})
    assert tracking.existing_child(track, "audit-live") is None
    assert store.get_run(live.info.run_id).info.lifecycle_stage == "active"


def test_refresh_logs_the_key_again(track, monkeypatch):
    parent = tracking.start_parent(track, "parent", {}, {})
    first, _ = tracking.log_child_once(track, parent, "audit-r", "child", {}, {}, [])
    monkeypatch.setenv("COMPALIGN_REFRESH", "1")
    second, logged = tracking.log_child_once(track, parent, "audit-r", "child", {}, {}, [])
    assert logged and second != first


def test_log_metrics_skips_nan_inf_and_none_and_makes_names_safe(track):
    run_id = tracking.start_parent(track, "parent", {}, {})
    tracking.log_metrics(
        track,
        run_id,
        {
            "accuracy": 0.5,
            "auroc/odd": math.nan,  # a class absent from the split
            "reduction_factor": math.inf,  # over zero mismatches
            "negative": -math.inf,
            "missing": None,
            "recall@3": 0.25,
            "ece(val)": 0.125,
        },
    )
    metrics = tracking.client(track["uri"]).get_run(run_id).data.metrics
    assert metrics == {"accuracy": 0.5, "recall_3": 0.25, "ece_val_": 0.125}


def test_a_child_can_carry_per_epoch_metric_histories(track):
    """SoftAdapt's weights per epoch (from the checkpoint manifest) go in as metric histories,
    step = epoch from 1, the last value shown as the metric's own."""
    parent = tracking.start_parent(track, "parent", {}, {})
    history = {"softadapt.w_ce": [1.0, 0.75, 0.5], "softadapt.w_mm": [1.0, math.nan, 1.5]}
    run_id, _ = tracking.log_child_once(
        track, parent, "audit-h", "child", {}, {"accuracy": 0.5}, [], metric_history=history
    )
    store = tracking.client(track["uri"])
    steps = [(m.step, m.value) for m in store.get_metric_history(run_id, "softadapt.w_ce")]
    assert steps == [(1, 1.0), (2, 0.75), (3, 0.5)]
    assert [(m.step, m.value) for m in store.get_metric_history(run_id, "softadapt.w_mm")] == [
        (1, 1.0),
        (3, 1.5),
    ]
    assert store.get_run(run_id).data.metrics["softadapt.w_ce"] == 0.5


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("accuracy", "accuracy"),
        ("gap/odd-even 1.5", "gap/odd-even 1.5"),
        ("recall[3]", "recall_3_"),
        ("f1:macro@odd", "f1_macro_odd"),
    ],
)
def test_safe_name(name, safe):
    assert tracking.safe_name(name) == safe


def test_set_tags_finish_run_and_log_artifacts(track, tmp_path):
    run_id = tracking.start_parent(track, "parent", {}, {})
    tracking.set_tags(track, run_id, {"summary_rows": 12, "note": "ok"})
    folder = tmp_path / "figures"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"a")
    (folder / "b.png").write_bytes(b"b")
    (tmp_path / "report.html").write_text("<html></html>")
    tracking.log_artifacts(track, run_id, [("figures", folder), ("", tmp_path / "report.html")])
    tracking.finish_run(track, run_id, "KILLED")
    store = tracking.client(track["uri"])
    run = store.get_run(run_id)
    assert run.data.tags["summary_rows"] == "12" and run.data.tags["note"] == "ok"
    assert run.info.status == "KILLED"
    assert sorted(item.path for item in store.list_artifacts(run_id)) == ["figures", "report.html"]
    assert sorted(item.path for item in store.list_artifacts(run_id, "figures")) == [
        "figures/a.png",
        "figures/b.png",
    ]


def git(*args: str, cwd) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True).stdout


def test_git_state_is_the_commit_of_the_code_and_its_uncommitted_changes(tmp_path, monkeypatch):
    package = tmp_path / "compalign"
    package.mkdir()
    (package / "core.py").write_text("x = 1\n")
    git("init", "-q", cwd=tmp_path)
    git("add", ".", cwd=tmp_path)
    git("commit", "-qm", "first", cwd=tmp_path)
    head = git("rev-parse", "HEAD", cwd=tmp_path).strip()
    monkeypatch.setattr(tracking, "PACKAGE_DIR", package)
    assert tracking.git_state() == {"git_commit": head, "git_dirty": "false"}
    (package / "new.py").write_text("untracked = True\n")  # untracked files do not count
    assert tracking.git_state()["git_dirty"] == "false"
    (package / "core.py").write_text("x = 2\n")
    assert tracking.git_state() == {"git_commit": head, "git_dirty": "true"}


def test_git_state_outside_a_checkout_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "PACKAGE_DIR", tmp_path / "compalign")
    assert tracking.git_state() == {"git_commit": "unknown", "git_dirty": "unknown"}


def test_ui_links_open_the_runs_table():
    links = tracking.ui_links("http://127.0.0.1:5000/", "7", "abc")
    assert links == {
        "runs": "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning",
        "run": "http://127.0.0.1:5000/#/experiments/7/runs/abc?workflowType=machine_learning",
    }


@pytest.mark.parametrize("method", ["quantize_dynamic", "half"])  # NOTES: pt2 fails on these
def test_logged_models_have_a_signature_and_example_load_back_and_are_registered(track, method):
    import numpy as np
    import torch

    from compalign.compressors import COMPRESSORS
    from compalign.models import build_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference = build_model("small_cnn", num_classes=10, in_channels=1, image_size=8).eval()
    level = 0.5 if COMPRESSORS[method].uses_level else None
    model = COMPRESSORS[method](reference, level, {}, None).eval()
    example = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    parent = tracking.start_parent(track, "parent", {}, {})
    name = f"digits-{method}"
    run_id, _ = tracking.log_child_once(
        track,
        parent,
        key=f"audit-{method}",
        run_name=method,
        tags={"loss": "none"},
        metrics={"accuracy": 0.5},
        artifacts=[],
        model=lambda: model,
        input_example=lambda: example,
        registered_model=name,
        version_tags={"accuracy": "0.5", "loss": "none"},
    )
    store = tracking.client(track["uri"])
    (version,) = store.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    assert version.tags["accuracy"] == "0.5" and version.tags["loss"] == "none"
    uri = f"models:/{name}/{version.version}"
    info = mlflow.models.get_model_info(uri)
    (inputs,), (outputs,) = info.signature.inputs.inputs, info.signature.outputs.inputs
    assert (inputs.type, inputs.shape) == (np.dtype(np.float32), (-1, 1, 8, 8))
    assert (outputs.type, outputs.shape) == (np.dtype(np.float32), (-1, 10))
    assert info.saved_input_example_info is not None
    # the run's metrics are the logged model's too (the UI's model page lists them), once each
    (logged,) = store.search_logged_models(
        [track["experiment_id"]], filter_string=f"source_run_id = '{run_id}'"
    )
    assert [(m.key, m.value) for m in logged.metrics] == [("accuracy", 0.5)]
    assert store.get_run(run_id).data.metrics == {"accuracy": 0.5}
    assert len(store.get_metric_history(run_id, "accuracy")) == 1
    loaded = mlflow.pytorch.load_model(uri)
    with torch.no_grad():
        expected = model(torch.from_numpy(example)).float()
        assert torch.equal(loaded(torch.from_numpy(example)).float(), expected)
    # aliases point at the version of a run; a second alias call moves nothing else
    assert tracking.set_aliases(track, name, {"reference": run_id}) == {
        "reference": str(version.version)
    }
    assert store.get_model_version_by_alias(name, "reference").run_id == run_id


def test_parent_run_has_mlflow_git_commit_and_a_description(track):
    run_id = tracking.start_parent(track, "parent", {}, {})
    tracking.set_description(track, run_id, "## headline\n\n| a |\n|---|\n| 1 |\n")
    tags = tracking.client(track["uri"]).get_run(run_id).data.tags
    assert tags[tracking.NOTE_TAG].startswith("## headline")
    if tags["git_commit"] != "unknown":  # the suite runs from a git checkout
        assert tags[tracking.GIT_COMMIT_TAG] == tags["git_commit"]


def test_registered_model_name_is_dataset_and_architecture():
    assert tracking.registered_model_name("digits", "small_cnn") == "digits-small_cnn"
    assert tracking.registered_model_name("cifar10", "models/my net.pt") == "cifar10-my_net.pt"
    assert tracking.safe_alias("best-label preserving") == "best-label_preserving"


def test_warm_up_does_mlflows_first_model_work_ahead(monkeypatch):
    """`compalign run` calls warm_up while its Prefect server starts; the first model it logs
    then finds MLflow's package map made (the private names warm_up relies on still exist)."""
    from mlflow.utils import requirements_utils

    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
    monkeypatch.setattr(requirements_utils, "_PACKAGES_TO_MODULES", None)
    tracking.warm_up()
    assert "torch" in requirements_utils._MODULES_TO_PACKAGES["torch"]
    assert "torch" in requirements_utils._PACKAGES_TO_MODULES


@pytest.mark.parametrize("cache", ["writable", "a file"])
def test_a_new_store_is_a_copy_of_the_template_or_migrates_itself(tmp_path, monkeypatch, cache):
    """A new project's store starts as a copy of the migrated empty store in the user's cache
    (made by the first new store), with its own Default experiment; where the cache cannot be
    written, each new store migrates itself, as before. Either way every project gets the same
    experiment ids and its artifacts beside its store."""
    folder = tmp_path / "cache"
    if cache == "a file":
        folder.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    for name in ("a", "b"):
        project = tmp_path / name
        project.mkdir()
        monkeypatch.chdir(project)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
        made = tracking.setup("tiny")
        assert made["experiment_id"] == "1"
        store = tracking.client(made["uri"])
        assert store.get_experiment("0").artifact_location == str(project / "mlruns" / "0")
        assert store.get_experiment("1").artifact_location == (project / "mlartifacts").as_uri()
    templates = list((folder / "compalign").glob("mlflow-*.db")) if folder.is_dir() else []
    assert len(templates) == (1 if cache == "writable" else 0)
