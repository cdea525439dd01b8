"""The fault catalogue: what a hostile or unlucky user can do to a project, and what they see.

Each test is one row of the README's "Reliability" table.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from compalign.checkpoint import CHECKPOINT_FILE, MANIFEST_FILE, load_checkpoint, save_checkpoint
from compalign.errors import UserError
from compalign.files import remove_stale_scratch, sha256_file
from compalign.models import build_model
from conftest import ROOT, TINY, run_cli

NOTHING = {"mlflow.db", ".compalign", "artifacts", "mlartifacts"}


class Planted:
    """Unpickling this would write the marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def one_line_exit_2(result, needle: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0], lines[0]


def image_folder(root: Path, classes=("a", "b"), per_class: int = 12) -> Path:
    from PIL import Image

    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            color = (40 * index + k, 200 - 10 * k, 90)
            Image.new("RGB", (8, 8), color).save(root / name / f"{k}.png")
    return root


# ---------------------------------------------------------------------------------------------
# 1. Nothing is ever unpickled


def test_planted_pickle_checkpoint_with_matching_digest_is_refused(tmp_path):
    """A checkpoint rewritten as a pickle whose manifest digest matches: no code runs, one line."""
    save_checkpoint(
        build_model("small_cnn", 3, 1, 8),
        {"name": "small_cnn", "num_classes": 3, "in_channels": 1, "image_size": 8},
        tmp_path,
    )
    marker = tmp_path / "marker"
    with open(tmp_path / CHECKPOINT_FILE, "wb") as handle:
        pickle.dump({"format": 3, "evil": Planted(str(marker))}, handle)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    manifest["sha256"] = sha256_file(tmp_path / CHECKPOINT_FILE)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="refused") as caught:
        load_checkpoint(tmp_path)
    assert "\n" not in str(caught.value) and not marker.exists()


def test_planted_pickle_result_record_is_recomputed(project, prefect_server):
    """A Prefect cache record rewritten to name the pickle serializer is never read: the task
    runs again (its store entry is rebuilt) and the planted code does not run."""
    import base64

    from prefect import flow

    from tasks import stage
    from tasks.infra.store import PREFECT_RESULTS_DIR, stage_key

    prepare_task = stage("prepare").task

    data = {"source": "digits", "limit": 20}

    @flow
    def prepare_twice():
        return prepare_task(data, return_state=True)

    first = prepare_twice()
    assert first.is_completed()
    key = stage_key("prepare", {"data": data})
    record_path = PREFECT_RESULTS_DIR / key
    record = json.loads(record_path.read_text())
    assert record["metadata"]["serializer"]["type"] == "json"

    marker = project / "marker"
    record["metadata"]["serializer"] = {"type": "pickle", "picklelib": "cloudpickle"}
    record["result"] = base64.b64encode(pickle.dumps(Planted(str(marker)))).decode()
    record_path.write_text(json.dumps(record))
    second = prepare_twice()
    assert second.is_completed() and second.name != "Cached"
    assert not marker.exists()
    assert json.loads(record_path.read_text())["metadata"]["serializer"]["type"] == "json"
    third = prepare_twice()
    assert third.name == "Cached" and third.result() == second.result()


# ---------------------------------------------------------------------------------------------
# 4. Bad data and bad params: one line, exit 2, nothing written


def bad_data_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = image_folder(tmp_path / "corrupt")
    (corrupt / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    single = image_folder(tmp_path / "single", classes=("only",))
    good = image_folder(tmp_path / "good")
    undecodable = tmp_path / "latin1.yaml"
    undecodable.write_bytes("data:\n  root: caf\xe9\n".encode("latin-1"))
    folder = ["--set", "data.source=imagefolder", "--set", "data.image_size=8"]
    return {
        "empty image folder": ([*folder, "--set", f"data.root={empty}"], "class folder"),
        "corrupt image": ([*folder, "--set", f"data.root={corrupt}"], "broken.png"),
        "single class": ([*folder, "--set", f"data.root={single}"], "at least two"),
        "unknown label group": (
            [*folder, "--set", f"data.root={good}", "--set", "data.label_groups={x: [7]}"],
            "data.label_groups.x",
        ),
        "params not UTF-8": (["--params", str(undecodable)], "not UTF-8"),
        "params is a directory": (["--params", str(tmp_path)], "is a directory"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty image folder",
        "corrupt image",
        "single class",
        "unknown label group",
        "params not UTF-8",
        "params is a directory",
    ],
)
def test_bad_data_is_one_line_and_writes_nothing(tmp_path, cli_here, case):
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    args, needle = bad_data_cases(tmp_path)[case]
    result = cli_here("run", *args, cwd=project, timeout=120)
    one_line_exit_2(result, needle)
    assert "Traceback" not in result.stderr
    assert not NOTHING & {path.name for path in project.iterdir()}


def test_unreadable_images_can_be_skipped_and_counted(tmp_path):
    from compalign.config import DataParams
    from compalign.data import build_table, check_available

    root = image_folder(tmp_path / "images")
    (root / "a" / "broken.png").write_bytes(b"garbage")
    params = DataParams(source="imagefolder", root=str(root), skip_unreadable=True, image_size=8)
    check_available(params)
    _, manifest = build_table(params)
    assert manifest["skipped_unreadable"] == 1 and manifest["num_examples"] == 24


# ---------------------------------------------------------------------------------------------
# 3. Leftovers of killed processes


def test_stale_scratch_of_dead_processes_is_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stale = tmp_path / "align" / f".tmp-abc-{dead}-0123abcd"
    live = tmp_path / "align" / f".tmp-def-{os.getpid()}-0123abcd"
    stale.mkdir(parents=True)
    live.mkdir(parents=True)
    assert remove_stale_scratch(tmp_path) == 1
    assert not stale.exists() and live.exists()


# ---------------------------------------------------------------------------------------------
# 2 and 6. Concurrent runs; a user's mistake found inside a task


def test_user_error_inside_a_task_is_one_line(tmp_path):
    """audit.groups naming a column the data lacks is found by the reference's audit task."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    result = run_cli(
        "run",
        "--params",
        str(TINY),
        "--set",
        "reference.epochs=1",
        "--set",
        "compress.sparsities=[0.9]",
        "--set",
        "align.losses=[none]",
        "--set",
        "audit.groups=[nosuch]",
        cwd=tmp_path,
        timeout=600,
    )
    # the flow's own log lines come first (Prefect logs the task's failure); the run ends with
    # the one line, not with Prefect's "Run is in PENDING state" of a task that never ran
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()
    error_lines = [line for line in last if line.startswith("error: ")]
    assert len(error_lines) == 1 and "audit.groups" in error_lines[0]
    assert "UnfinishedRun" not in result.stderr and "is in PENDING state" not in result.stderr


@pytest.mark.slow
def test_two_runs_at_once_on_one_fresh_project(tmp_path):
    """Both exit 0; MLflow holds exactly one child run per cache key; a second pair with
    different params also finishes."""
    from conftest import BIN, cli_env

    env = cli_env()
    quick = [
        "--set",
        "reference.epochs=1",
        "--set",
        "align.epochs=1",
        "--set",
        "compress.sparsities=[0.9]",
        "--set",
        "align.losses=[none,ce]",
        "--set",
        "audit.attribution_samples=0",
    ]

    def pair(*extra_b: str):
        runs = [
            subprocess.Popen(
                [str(BIN / "compalign"), "run", "--params", str(TINY), *quick, *extra],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for extra in ([], list(extra_b))
        ]
        outputs = [run.communicate(timeout=900)[0] for run in runs]
        for run, output in zip(runs, outputs, strict=True):
            assert run.returncode == 0, output[-3000:]

    pair()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    children = client.search_runs([experiment.experiment_id], "tags.`compalign.key` != ''")
    keys = [run.data.tags["compalign.key"] for run in children]
    assert len(keys) == len(set(keys)) == 3  # reference, magnitude_global-0.9-{none,ce}
    # different params at once: run B's ce is a new model, so are its audit and the audit of
    # its `none` model (its reduction factors are against that ce); run A reuses all three
    pair("--set", "align.epochs=2")
    children = client.search_runs([experiment.experiment_id], "tags.`compalign.key` != ''")
    keys = [run.data.tags["compalign.key"] for run in children]
    assert len(keys) == len(set(keys)) == 5
    assert all(run.info.status == "FINISHED" for run in children)


# ---------------------------------------------------------------------------------------------
# 3. No process outlives its run


def start_in_own_session(project: Path, *extra: str) -> subprocess.Popen:
    from conftest import BIN, cli_env

    env = cli_env()
    log = open(project / "run.log", "w")  # noqa: SIM115 (the process writes it)
    return subprocess.Popen(
        [
            str(BIN / "compalign"),
            "run",
            "--params",
            str(TINY),
            "--set",
            "reference.epochs=60",
            *extra,
        ],
        cwd=project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a terminal's process group
    )


def training_started(process: subprocess.Popen, project: Path) -> list:
    """Block until the dataset is prepared (the flow and its API server run); the run's
    descendants then."""
    import psutil

    deadline = time.monotonic() + 300
    while not any((project / "artifacts" / "prepare").glob("*/manifest.json")):
        assert process.poll() is None, (project / "run.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the dataset was not prepared in time"
        time.sleep(0.2)
    return psutil.Process(process.pid).children(recursive=True)


@pytest.mark.slow
def test_nothing_outlives_kill_9(tmp_path):
    import psutil

    process = start_in_own_session(tmp_path)
    children = training_started(process, tmp_path)
    assert children, "the run has its Prefect API server"
    process.kill()
    process.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive


@pytest.mark.slow
def test_ctrl_c_on_the_process_group_exits_130_with_one_line(tmp_path):
    import signal

    import psutil

    process = start_in_own_session(tmp_path)
    children = training_started(process, tmp_path)
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=60)
    output = (tmp_path / "run.log").read_text()
    assert process.returncode == 130, output[-3000:]
    assert time.monotonic() - started < 15
    assert output.strip().splitlines()[-1].startswith("interrupted: finished stages are cached")
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
