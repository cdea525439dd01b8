"""Shared fixtures. Prefect's environment is set before anything imports Prefect."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = Path(__file__).with_name("tiny.yaml")
BIN = Path(sys.executable).parent

# The suite's two workers share two cores, each often running a pipeline with torch threads of its
# own: OpenMP's threads then wait for work passively instead of spinning on a core the other
# worker needs (two tiny runs at once: 32 s instead of 37 s, the same numbers). Read when torch
# loads OpenMP, so set before anything imports torch; the CLI's processes inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# One Prefect home for the whole session, outside the repository.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="compalign-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)

from flows.environment import configure_environment  # noqa: E402

configure_environment(_SESSION_HOME)


# Seconds each heavy file takes on 2 cores (a fresh clone's `make test` of 2026-12-07, rounded to
# 5 s; the files not named take a few seconds each). For the order only: a stale figure costs
# balance, never a result.
FILE_SECONDS = {
    "test_cli.py": 165,
    "test_faults.py": 110,
    "test_profiles.py": 95,
    "test_verdict_calibration.py": 75,
    "test_dvc.py": 75,
    "test_mlflow_ui.py": 70,
    "test_quantize.py": 65,
    "test_serve.py": 65,
    "test_compressors_pipeline.py": 55,
    "test_cli_audit.py": 55,
    "test_populations_flow.py": 55,
    "test_pipeline.py": 40,
    "test_pipeline_dask.py": 40,
    "test_cli_search.py": 30,
    "test_compare.py": 20,
    "test_example.py": 20,
    "test_hostile.py": 10,
    "test_code.py": 10,
    "test_report_html.py": 10,
    "test_report_papers.py": 10,
    "test_reference_file.py": 10,
}


def pytest_collection_modifyitems(config, items):
    """The heaviest files first, each file's tests in their order: `make test` hands whole
    files to its pytest-xdist workers in this order, so the long ones start early and the many
    short files even out the end (longest first; alphabetical order left one worker running a
    slow file alone for minutes, and slow-marked files first still left the simulation and
    training files of the end of the alphabet for last)."""
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))  # stable: order kept within


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect API server for in-process flow runs (started once: ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project directory as the working directory, with its own MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("COMPALIGN_REFRESH", raising=False)
    return tmp_path


@pytest.fixture
def tiny_params():
    """The tiny profile as a validated Params, with optional --set style overrides."""
    from compalign.config import load_params

    def make(*overrides: str):
        return load_params(TINY, list(overrides))

    return make


def cli_env(extra: dict | None = None) -> dict[str, str]:
    """The environment a user's shell gives the installed commands: the venv first on PATH, and
    none of the settings the CLI sets per project (mlflow.set_tracking_uri in an earlier
    in-process test exports MLFLOW_TRACKING_URI, which would send a run to that test's store)."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    for name in (
        "PREFECT_HOME",
        "PREFECT_LOCAL_STORAGE_PATH",
        "MLFLOW_TRACKING_URI",
        # what an in-process start_api_server or CLI call exports (a server since stopped)
        "PREFECT_API_URL",
        "PREFECT_TASKS_REFRESH_CACHE",
        "COMPALIGN_REFRESH",
        "COMPALIGN_RESUME_EVERY",
        "COMPALIGN_COMPILE",
    ):
        env.pop(name, None)
    return {**env, **(extra or {})}


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600):
    """Run the installed `compalign` command in `cwd`; return the CompletedProcess."""
    return subprocess.run(
        [str(BIN / "compalign"), *args],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli_here(monkeypatch, capsys):
    """`run_cli` in this process, for the commands a user's mistake stops before any work: the
    same entry point, working directory, arguments and environment (cli_env's), and a
    CompletedProcess of its exit code, stdout and stderr. A new process would import torch
    again only to refuse (4-5 s of CPU each); the suite keeps a few refusals of the installed
    command in a process of its own (tests/test_cli.py's IN_A_PROCESS)."""

    def run(*args: str, cwd: Path, env: dict | None = None, timeout: int | None = None):
        from flows.entry import main

        saved = dict(os.environ)
        capsys.readouterr()  # what earlier steps of the test printed is not this command's
        try:
            with monkeypatch.context() as patch:
                patch.chdir(cwd)
                patch.setattr("sys.argv", ["compalign", *args])
                for name in os.environ.keys() - cli_env().keys():
                    patch.delenv(name)
                for name, value in (env or {}).items():
                    patch.setenv(name, value)
                try:
                    main()
                    code = 0
                except SystemExit as exited:
                    code = exited.code if isinstance(exited.code, int) else int(bool(exited.code))
        finally:  # what the command exported itself (not through monkeypatch) is undone too
            os.environ.clear()
            os.environ.update(saved)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["compalign", *args], code, out, err)

    return run


def copy_project(destination: Path) -> Path:
    """The project's tracked source files (what a fresh clone has) copied into `destination`."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


def free_port() -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(process: subprocess.Popen, grace_s: float = 30) -> list[int]:
    """SIGTERM the process group of `process` (started with start_new_session), SIGKILL what
    is left after `grace_s`; return the pids of the group still alive (zombies aside)."""
    pgid = process.pid  # a session leader's group id is its pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    # the group outlives its leader when children linger (uvicorn, flow run subprocesses)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    process.wait(timeout=grace_s)
    deadline = time.monotonic() + grace_s
    while True:
        alive = [
            proc.pid
            for proc in psutil.process_iter(["status"])
            if _group(proc) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE
        ]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _group(proc: psutil.Process) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except (ProcessLookupError, PermissionError):
        return None


def poll(check, timeout_s: float, what: str, alive: subprocess.Popen | None = None, log=None):
    """Call `check` until it returns something truthy; fail after `timeout_s` or as soon as
    `alive` (a process the result depends on) has exited, showing `log`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if alive is not None and alive.poll() is not None:
            pytest.fail(f"{what}: process exited {alive.returncode}\n{tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s\n{tail(log)}")
        time.sleep(0.25)


def tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def healthy(url: str) -> bool:
    """Whether `url` answers 200 now."""
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


BYOM_CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="session")
def byom(tmp_path_factory):
    """Models as users bring them, on a tiny image folder: a random torchvision ResNet-18 for
    3 classes saved as a state dict, traced to TorchScript, exported with torch.export (any
    batch size) and to ONNX (batch size fixed at 2); a TorchScript copy whose logits of classes
    0 and 1 are swapped; the module pickled whole; a 5-class ResNet-18 state dict. The folder
    (train/ and test/, 32x32 PNGs) is written with PIL."""
    import numpy as np
    import torch
    import torchvision
    from PIL import Image

    root = tmp_path_factory.mktemp("byom")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 8)):
        for index, name in enumerate(BYOM_CLASSES):
            folder = root / "images" / split / name
            folder.mkdir(parents=True)
            for number in range(count):
                pixels = np.zeros((32, 32, 3))
                pixels[..., index] = 150
                pixels = np.clip(pixels + rng.normal(0, 70, pixels.shape), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{number}.png")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=3).eval()
        five = torchvision.models.resnet18(num_classes=5).eval()
    example = torch.randn(2, 3, 32, 32)
    paths = {name: root / name for name in ("state.pt", "pickled.pt", "five.pt")}
    torch.save(model.state_dict(), paths["state.pt"])
    torch.save(model, paths["pickled.pt"])
    torch.save(five.state_dict(), paths["five.pt"])

    class Swapped(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.inner(images)[:, [1, 0, 2]]

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths["model.ts"] = root / "model.ts"
        torch.jit.trace(model, example).save(str(paths["model.ts"]))
        paths["swapped.ts"] = root / "swapped.ts"
        torch.jit.trace(Swapped(model), example).save(str(paths["swapped.ts"]))
        paths["model.pt2"] = root / "model.pt2"
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
        torch.export.save(program, paths["model.pt2"])
        paths["model.onnx"] = root / "model.onnx"
        with contextlib.redirect_stdout(None):
            torch.onnx.export(model, (example,), str(paths["model.onnx"]), dynamo=True)
    return {"root": root, "images": root / "images", "model": model, **paths}


@pytest.fixture(scope="session")
def byom_test_split(byom, tmp_path_factory):
    """The test split of the byom image folder, prepared as the pipeline prepares it."""
    from compalign.config import DataParams
    from compalign.data import build_table, load_split, write_prepared

    table, manifest = build_table(DataParams(source="imagefolder", root=str(byom["images"])))
    prepared = tmp_path_factory.mktemp("byom-prepared")
    write_prepared(table, manifest, prepared)
    return load_split(prepared, "test"), manifest
