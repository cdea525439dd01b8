"""The hostile-input catalogue (issue 23; README "Reliability"), run against a `compalign`.

Builds every case's files under a temporary folder (tests/hostile.py: the same builders the
tests use), runs each case's command with the given `compalign` in a fresh project folder, and
prints one row per case: exit code, stderr lines and tracebacks, whether planted code ran (its
marker file), what the refused run wrote (.compalign/, artifacts/, mlflow.db, mlartifacts/,
reports/), wall seconds, the command's peak RSS, and stderr's last line. Run it once with this
checkout's command and once with another's (e.g. main's) for a before/after table:

    .venv/bin/python bench/hostile.py --compalign .venv/bin/compalign --json after.json
    .venv/bin/python bench/hostile.py --compalign ../main/.venv/bin/compalign --json before.json

The read-only folder and full disk cases mount a tmpfs (root only; skipped otherwise). A case
that runs past --timeout (default 60 s) is killed and reported so (the billion-laughs file
took 2 minutes and 6 GB before this change). Measured numbers depend on the machine's load:
report the load average beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import hostile  # noqa: E402

WRITTEN = (".compalign", "artifacts", "mlflow.db", "mlartifacts", "reports")
AUDIT_SETTINGS = """data:
  source: imagefolder
  root: {images}
audit:
  bootstrap_samples: 100
  attribution_samples: 0
  latency_repeats: 1
  latency_warmup: 0
  latency_batch_sizes: [1]
run:
  device: cpu
"""


@dataclass
class Case:
    """One row: an id, what it is, the compalign arguments ({name} filled from the built
    files), and optionally how to set up its project folder or run it another way."""

    number: int
    name: str
    arguments: list[str] = field(default_factory=list)
    setup: Callable[[Path, dict], None] | None = None
    marker: bool = False
    runner: str = "cli"  # cli | pixels | two | kill9
    mount: str | None = None  # ro | full


@dataclass
class Outcome:
    number: int
    name: str
    rc: int | None
    lines: int
    tracebacks: int
    code_ran: bool
    written: list[str]
    seconds: float
    max_rss_mb: float
    last: str
    note: str = ""
    cpu_seconds: float = 0.0


def build(folder: Path) -> dict[str, Path]:
    """Every file the cases use."""
    import torch

    files: dict[str, Path] = {"marker": folder / "marker"}
    files["images"] = hostile.image_folder(folder / "images", per_class=12)
    files["good.ts"] = hostile.torchscript_file(folder / "good.ts", hostile.tiny_module())
    files["chance.ts"] = hostile.torchscript_file(
        folder / "chance.ts", hostile.constant_logits(0.0)
    )
    files["inf.ts"] = hostile.torchscript_file(
        folder / "inf.ts", hostile.constant_logits(float("inf"))
    )
    files["five.ts"] = hostile.torchscript_file(folder / "five.ts", hostile.tiny_module(5))
    shifty = folder / "shifty.ts"
    torch.jit.script(hostile.batch_dependent_classes()).save(str(shifty))
    files["shifty.ts"] = shifty
    files["good.onnx"] = hostile.onnx_file(folder / "good.onnx", hostile.tiny_module())
    files["nan.onnx"] = hostile.onnx_file(
        folder / "nan.onnx", hostile.constant_logits(float("nan"))
    )
    for kind in ("huge", "external"):
        (folder / kind).mkdir()
        files[f"{kind}.onnx"] = hostile.onnx_with_unused_initializer(
            files["good.onnx"], folder / kind / "model.onnx", kind
        )
    (folder / "escape" / "inner").mkdir(parents=True)
    files["escape.onnx"] = hostile.onnx_escaping_external_data(
        files["good.onnx"], folder / "escape" / "inner" / "model.onnx"
    )
    program = hostile.export_program(folder / "good.pt2")
    files["good.pt2"] = program
    marker = files["marker"]
    files["upper.pt2"] = hostile.pt2_upper_case_pickle(program, folder / "upper.pt2", marker)
    files["exact.pt2"] = hostile.pt2_exact_name_pickle(program, folder / "exact.pt2", marker)
    files["guards.pt2"] = hostile.pt2_guard_code(program, folder / "guards.pt2", marker)
    files["sympy.pt2"] = hostile.pt2_sympy_expression(program, folder / "sympy.pt2", marker)
    files["pickled_weight.pt2"] = hostile.pt2_pickled_weight(program, folder / "pw.pt2")
    library = hostile.constructor_library(folder, marker)
    if library is not None:
        files["aoti.pt2"] = hostile.pt2_aotinductor_library(program, folder / "aoti.pt2", library)
    files["bomb.pt2"] = hostile.pt2_zip_bomb(program, folder / "bomb.pt2", 3 * 2**30)
    for kind in (
        "invalid JSON",
        "wrong types",
        "truncated tensor",
        "empty tensor",
        "truncated sample inputs",
    ):
        key = kind.replace(" ", "_") + ".pt2"
        files[key] = hostile.pt2_malformed(program, folder / key, kind)
    files["empty_sample.pt2"] = hostile.rewrite_archive(
        program,
        folder / "empty_sample.pt2",
        edit=lambda name, data: b"" if name == "data/sample_inputs/model.pt" else data,
    )
    files["plain_pickle.pt2"] = folder / "plain_pickle.pt2"
    files["plain_pickle.pt2"].write_bytes(pickle.dumps(hostile.Planted(str(marker))))
    files["empty.pt2"] = folder / "empty.pt2"
    files["empty.pt2"].write_bytes(b"")
    data = program.read_bytes()
    files["cut.pt2"] = folder / "cut.pt2"
    files["cut.pt2"].write_bytes(data[: len(data) // 2])
    files["empty.onnx"] = folder / "empty.onnx"
    files["empty.onnx"].write_bytes(b"")
    files["empty.ts"] = folder / "empty.ts"
    files["empty.ts"].write_bytes(b"")
    for kind in ("parent", "self", "outside"):
        files[f"link_{kind}"] = hostile.symlinked_folder(folder / f"link_{kind}" / "images", kind)
    files["sixteen"] = hostile.sixteen_bit_folder(folder / "sixteen")
    files["latin_file"] = hostile.non_utf8_folder(folder / "latin_file", "file")
    files["latin_class"] = hostile.non_utf8_folder(folder / "latin_class", "class")
    files["mixed"] = hostile.mixed_sizes_folder(folder / "mixed")
    files["few"] = hostile.image_folder(folder / "few", per_class=2)
    files["png_bomb"] = hostile.image_folder(folder / "png_bomb")
    hostile.decompression_bomb_png(files["png_bomb"] / "a" / "bomb.png")
    for broken in ("short row", "bad value", "bad partition"):
        key = "celeba_" + broken.replace(" ", "_")
        files[key] = hostile.celeba_folder(folder / key, broken)
    files["laughs.yaml"] = hostile.billion_laughs(folder / "laughs.yaml")
    files["list.yaml"] = folder / "list.yaml"
    files["list.yaml"].write_text("- data\n- audit\n")
    files["tag.yaml"] = folder / "tag.yaml"
    files["tag.yaml"].write_text(
        f"data: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path "
        f"[{str(marker)!r}]]\n"
    )
    files["params.yaml"] = folder / "params.yaml"
    files["params.yaml"].write_text(AUDIT_SETTINGS.format(images=files["images"]))
    return files


def audit(model: str, *extra: str, reference: str = "good.ts") -> list[str]:
    return [
        "audit",
        "-p",
        "{params.yaml}",
        "-r",
        "{" + reference + "}",
        "-c",
        "x={" + model + "}",
        *extra,
    ]


def run_folder(root: str, *extra: str) -> list[str]:
    return ["run", "-p", "{params.yaml}", "--set", "data.root={" + root + "}", *extra]


def celeba(root: str) -> list[str]:
    return [
        "run",
        "-p",
        "{params.yaml}",
        "--set",
        "data.source=celeba",
        "--set",
        "data.root={" + root + "}",
    ]


def break_database(kind: str) -> Callable[[Path, dict], None]:
    """Set-up of a project that has run one audit, then has a database broken."""

    def setup(project: Path, files: dict) -> None:
        shutil.copytree(files["_finished"], project, dirs_exist_ok=True, symlinks=True)
        store, prefect = project / "mlflow.db", project / ".compalign" / "prefect" / "prefect.db"
        if kind == "truncated":
            os.truncate(store, store.stat().st_size // 2)
        elif kind == "not a database":
            store.write_text("not a database, just text\n")
        elif kind == "prefect":
            for suffix in ("-wal", "-shm"):
                Path(f"{prefect}{suffix}").unlink(missing_ok=True)
            prefect.write_text("garbage, not sqlite\n")

    return setup


def cases() -> list[Case]:
    listed = [
        Case(1, ".pt2: pickle as data/sample_inputs/model.PT", audit("upper.pt2"), marker=True),
        Case(2, ".pt2: data/aotinductor/*.so with a constructor", audit("aoti.pt2"), marker=True),
        Case(3, ".pt2: Python in guards_code (new)", audit("guards.pt2"), marker=True),
        Case(4, ".pt2: Python as a symbolic size (new)", audit("sympy.pt2"), marker=True),
        Case(5, ".pt2: pickle as data/sample_inputs/model.pt", audit("exact.pt2"), marker=True),
        Case(6, ".pt2: weight marked use_pickle", audit("pickled_weight.pt2")),
        Case(7, ".pt2: a plain pickle file", audit("plain_pickle.pt2"), marker=True),
        Case(8, ".pt2: zip bomb (3 GiB entry)", audit("bomb.pt2")),
        Case(9, ".pt2: invalid JSON", audit("invalid_JSON.pt2")),
        Case(10, ".pt2: wrong types in a config", audit("wrong_types.pt2")),
        Case(11, ".pt2: truncated tensor file", audit("truncated_tensor.pt2")),
        Case(12, ".pt2: empty tensor file", audit("empty_tensor.pt2")),
        Case(13, ".pt2: truncated sample inputs", audit("truncated_sample_inputs.pt2")),
        Case(14, ".pt2: empty sample inputs", audit("empty_sample.pt2")),
        Case(15, ".pt2: empty file", audit("empty.pt2")),
        Case(16, ".pt2: truncated file", audit("cut.pt2")),
        Case(17, ".onnx: empty file", audit("empty.onnx")),
        Case(18, ".ts: empty file", audit("empty.ts")),
        Case(19, ".onnx: unused 2**40-float initializer", audit("huge.onnx")),
        Case(20, ".onnx: unused 1 GiB external initializer", audit("external.onnx")),
        Case(21, ".onnx: external data outside its folder", audit("escape.onnx")),
        Case(22, "NaN logits (ONNX), --fail-on mismatches<=0", audit("nan.onnx", "--fail-on", "mismatches<=0")),
        Case(23, "+inf logits (TorchScript)", audit("inf.ts")),
        Case(24, "data.transform.mean=[.nan]", audit("good.onnx", "--set", "data.transform.mean=[.nan]")),
        Case(25, "10 classes at batch 1, 5 at larger", audit("shifty.ts")),
        Case(26, "5-class model on 3 classes", audit("five.ts")),
        Case(27, "reference at chance, --fail-on ..._ci_high<=20", audit("good.onnx", "--fail-on", "mismatches_ref_correct_ci_high<=20", reference="chance.ts")),
        Case(28, "reference at chance, --reference-at-chance", audit("good.onnx", "--reference-at-chance", reference="chance.ts")),
        Case(29, "unknown --fail-on metric", audit("good.onnx", "--fail-on", "mismatchez<=3")),
        Case(30, "image folder: link b/up -> ..", run_folder("link_parent")),
        Case(31, "image folder: class folder c/again -> .", run_folder("link_self")),
        Case(32, "image folder: image linked from outside", run_folder("link_outside")),
        Case(33, "image folder: 16-bit grey PNGs (pixel of class c)", runner="pixels"),
        Case(34, "image folder: non-UTF-8 file name", run_folder("latin_file")),
        Case(35, "image folder: non-UTF-8 class folder", run_folder("latin_class")),
        Case(36, "image folder: 2 images per class", run_folder("few")),
        Case(37, "image folder: mixed sizes, no image_size", run_folder("mixed")),
        Case(38, "image folder: decompression-bomb PNG", run_folder("png_bomb")),
        Case(39, "CelebA: a short row", celeba("celeba_short_row")),
        Case(40, "CelebA: a value not -1/1", celeba("celeba_bad_value")),
        Case(41, "CelebA: a partition not 0/1/2", celeba("celeba_bad_partition")),
        Case(42, "params: billion laughs (~400 bytes)", ["params", "-p", "{laughs.yaml}"]),
        Case(43, "params: a YAML list", ["run", "-p", "{list.yaml}"]),
        Case(44, "params: !!python/object tag", ["run", "-p", "{tag.yaml}"], marker=True),
        Case(45, "--set without '='", ["params", "-p", "{params.yaml}", "--set", "data.seed"]),
        Case(46, "audit.latency_batch_sizes=[50000000]", ["params", "-p", "{params.yaml}", "--set", "audit.latency_batch_sizes=[50000000]"]),
        Case(47, "audit.batch_size=10**9", ["params", "-p", "{params.yaml}", "--set", "audit.batch_size=1000000000"]),
        Case(48, "read-only project folder", audit("good.onnx"), mount="ro"),
        Case(49, "full disk (3 MB tmpfs)", audit("good.onnx"), mount="full"),
        Case(50, "mlflow.db truncated", audit("good.onnx"), setup=break_database("truncated")),
        Case(51, "mlflow.db not a database", audit("good.onnx"), setup=break_database("not a database")),
        Case(52, "mlflow.db locked (BEGIN EXCLUSIVE elsewhere)", audit("good.onnx"), setup=break_database("locked")),
        Case(53, "Prefect database not a database", audit("good.onnx"), setup=break_database("prefect")),
        Case(54, "two audits at once in one folder", runner="two"),
        Case(55, "kill -9 of an audit, then the same audit", runner="kill9"),
    ]  # fmt: skip
    return listed


def fill(arguments: list[str], files: dict) -> list[str]:
    filled = []
    for argument in arguments:
        for key, value in files.items():
            argument = argument.replace("{" + key + "}", str(value))
        filled.append(argument)
    return filled


def execute(command: list[str], cwd: Path, timeout: float) -> tuple[int | None, str, float, Any]:
    """(exit code or None if killed at the timeout, stderr, seconds, the resource usage of the
    command's own process: peak RSS, CPU time)."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=err, start_new_session=True)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        _, status, usage = os.wait4(process.pid, 0)
        timer.cancel()
        seconds = time.monotonic() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        subprocess.run(["pkill", "-KILL", "-s", str(process.pid)], check=False)  # leftovers
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    code = None if killed.is_set() else process.returncode
    return code, stderr, seconds, usage


def outcome(case: Case, rc, stderr, seconds, usage, project: Path, files: dict, note="") -> Outcome:
    lines = [line for line in stderr.splitlines() if line.strip()]
    written = sorted(name for name in WRITTEN if (project / name).exists())
    return Outcome(
        case.number,
        case.name,
        rc,
        len(lines),
        stderr.count("Traceback (most recent call last)"),
        files["marker"].exists(),
        written,
        round(seconds, 1),
        round(usage.ru_maxrss / 1024),
        (lines[-1] if lines else "")[:240],
        note,
        round(usage.ru_utime + usage.ru_stime, 1),
    )


def run_case(case: Case, compalign: Path, files: dict, scratch: Path, timeout: float) -> Outcome:
    files["marker"].unlink(missing_ok=True)
    project = scratch / f"case-{case.number}"
    project.mkdir()
    if case.runner == "pixels":
        return pixels(case, compalign, files, project, timeout)
    if case.runner == "two":
        return two_audits(case, compalign, files, project, timeout)
    if case.runner == "kill9":
        return kill_nine(case, compalign, files, project, timeout)
    if case.mount:
        if os.geteuid() != 0:
            return Outcome(
                case.number,
                case.name,
                None,
                0,
                0,
                False,
                [],
                0,
                0,
                "",
                "skipped: needs root to mount",
            )
        options = "size=3m" if case.mount == "full" else "size=8m"
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(project)], check=True)
        if case.mount == "ro":
            subprocess.run(["mount", "-o", "remount,ro", str(project)], check=True)
    locker = None
    try:
        if case.setup is not None:
            case.setup(project, files)
        if case.number == 52:
            locker = lock_store(project)
        command = [str(compalign), *fill(case.arguments, files)]
        rc, stderr, seconds, usage = execute(command, project, timeout)
        return outcome(case, rc, stderr, seconds, usage, project, files)
    finally:
        if locker is not None:
            locker.kill()
            locker.wait()
        if case.mount:
            subprocess.run(["umount", str(project)], check=False)


def lock_store(project: Path) -> subprocess.Popen:
    code = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect('mlflow.db', isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.readline()\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=project, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    process.stdout.readline()
    return process


def pixels(case: Case, compalign: Path, files: dict, project: Path, timeout: float) -> Outcome:
    """The 16-bit folder prepared by that checkout's code: class c's pixel (41000 of 65535
    should be 160 of 255)."""
    python = compalign.parent / "python"
    code = (
        "from compalign.config import DataParams\nfrom compalign.data import build_table\n"
        f"t, m = build_table(DataParams(source='imagefolder', root={str(files['sixteen'])!r}, "
        "image_mode='L'))\nf = t.to_pandas()\n"
        "print('pixel of class c:', sorted({bytes(i)[0] for i in f[f.label == 2]['image']}))\n"
    )
    start = time.monotonic()
    result = subprocess.run(
        [str(python), "-c", code], cwd=project, capture_output=True, text=True, timeout=timeout
    )
    return Outcome(
        case.number, case.name, result.returncode, 0, 0, False, [],
        round(time.monotonic() - start, 1), 0, result.stdout.strip()[-240:],
    )  # fmt: skip


def two_audits(case: Case, compalign: Path, files: dict, project: Path, timeout: float) -> Outcome:
    """Audits A (candidate `one`) and B (candidate `two`) started 1 s apart in one folder: their
    exit codes, and the candidates reports/compare/models holds at the end."""
    base = [str(compalign), "audit", "-p", str(files["params.yaml"]), "-r", str(files["good.ts"])]
    start = time.monotonic()
    first = subprocess.Popen(
        [*base, "-c", f"one={files['good.onnx']}"], cwd=project,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1)
    second = subprocess.Popen(
        [*base, "-c", f"two={files['good.pt2']}"], cwd=project,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    outputs = [process.communicate(timeout=timeout * 5) for process in (first, second)]
    models = sorted(path.name for path in (project / "reports/compare/models").glob("*"))
    stderr = outputs[1][1]
    lines = [line for line in stderr.splitlines() if line.strip()]
    return Outcome(
        case.number, case.name, second.returncode, len(lines), stderr.count("Traceback"),
        False, [], round(time.monotonic() - start, 1), 0, (lines[-1] if lines else "")[:240],
        f"A exit {first.returncode}, B exit {second.returncode}; reports/compare/models: {models}",
    )  # fmt: skip


def kill_nine(case: Case, compalign: Path, files: dict, project: Path, timeout: float) -> Outcome:
    """An audit killed with SIGKILL while its MLflow store is being made, then run again."""
    command = [
        str(compalign), "audit", "-p", str(files["params.yaml"]), "-r", str(files["good.ts"]),
        "-c", f"x={files['good.onnx']}",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=project, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    # 1.5 s into the MLflow store's creation (its migrations take seconds): at mlflow.db's
    # first appearance, or of the scratch file it is now made in
    deadline = time.monotonic() + timeout * 5
    while time.monotonic() < deadline and process.poll() is None:
        if (project / "mlflow.db").exists() or list(project.glob(".mlflow.db.*.creating")):
            break
        time.sleep(0.05)
    time.sleep(1.5)
    if process.poll() is not None:  # it ended before the store was made: nothing to kill
        return Outcome(case.number, case.name, process.returncode, 0, 0, False, [], 0, 0, "",
                       "the first run ended by itself before its MLflow store was made")  # fmt: skip
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    rc, stderr, seconds, usage = execute(command, project, timeout * 5)
    return outcome(case, rc, stderr, seconds, usage, project, files, note="the second run")


def finished_project(compalign: Path, files: dict, scratch: Path, timeout: float) -> Path:
    """A project that ran one audit (its mlflow.db and Prefect database exist)."""
    project = scratch / "finished"
    project.mkdir()
    command = [
        str(compalign), "audit", "-p", str(files["params.yaml"]), "-r", str(files["good.ts"]),
        "-c", f"x={files['good.onnx']}",
    ]  # fmt: skip
    rc, stderr, _, _ = execute(command, project, timeout * 5)
    if rc != 0:
        raise SystemExit(f"the reference audit failed (exit {rc}):\n{stderr[-2000:]}")
    with sqlite3.connect(project / "mlflow.db") as connection:
        connection.execute("SELECT 1")
    return project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compalign", type=Path, required=True)
    parser.add_argument("--only", default="", help="case numbers, e.g. 1,2,30")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()
    only = {int(number) for number in arguments.only.split(",") if number}
    compalign = arguments.compalign.resolve()
    with tempfile.TemporaryDirectory(prefix="compalign-hostile-") as folder:
        scratch = Path(folder)
        files = build(scratch / "files")
        selected = [case for case in cases() if not only or case.number in only]
        if any(case.setup is not None for case in selected):
            files["_finished"] = finished_project(compalign, files, scratch, arguments.timeout)
        results = []
        print(f"load average: {os.getloadavg()}", flush=True)
        for case in selected:
            if case.number == 2 and "aoti.pt2" not in files:
                continue
            result = run_case(case, compalign, files, scratch, arguments.timeout)
            results.append(result)
            rc = "killed" if result.rc is None else result.rc
            print(
                f"{result.number:>2} {result.name} | exit {rc} | {result.lines} lines, "
                f"{result.tracebacks} tracebacks | code ran: {result.code_ran} | written: "
                f"{result.written} | {result.seconds} s ({result.cpu_seconds} s CPU), "
                f"{result.max_rss_mb} MiB | "
                f"{result.last} {result.note}",
                flush=True,
            )
        print(f"load average: {os.getloadavg()}", flush=True)
    if arguments.json:
        arguments.json.write_text(json.dumps([asdict(result) for result in results], indent=1))


if __name__ == "__main__":
    main()
