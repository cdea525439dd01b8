"""Which settings change the default run's numbers: torch threads and the CPU kernels used.

Runs `compalign run` with the default params at one sparsity (the README's 98% row), in a fresh
temporary project per setting, and prints the mismatches of each loss and the wall time. A
setting is an environment (e.g. ATEN_CPU_CAPABILITY=avx2) plus `run.threads`.

With `--quick EPOCHS`, each setting instead trains only the default reference for EPOCHS epochs
with plain core calls (no Prefect, no MLflow) and the weights are compared bit for bit with the
first setting's: minutes instead of a quarter of an hour per setting on 2 busy cores.

Usage: python bench/determinism.py [--sparsity 0.98] [--quick EPOCHS]
                                   [--setting NAME:VAR=VALUE,...:THREADS ...]
       default settings: this machine as is; threads 1 and 2; OMP_NUM_THREADS=1; ATen kernels
       default/avx2/avx512; AVX2 everywhere (ATen, oneDNN, MKL).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_SETTINGS = [
    "as-is::",
    "threads-1::1",
    "threads-2::2",
    "omp-1:OMP_NUM_THREADS=1:",
    "aten-default:ATEN_CPU_CAPABILITY=default:",
    "aten-avx2:ATEN_CPU_CAPABILITY=avx2:",
    "aten-avx512:ATEN_CPU_CAPABILITY=avx512:",
    "avx2-everywhere:ATEN_CPU_CAPABILITY=avx2,ONEDNN_MAX_CPU_ISA=AVX2,MKL_CBWR=AVX2:",
]


def parse_setting(text: str) -> tuple[str, dict[str, str], int | None]:
    name, env_text, threads = text.split(":")
    env = dict(item.split("=", 1) for item in env_text.split(",") if item)
    return name, env, int(threads) if threads else None


def run_once(name: str, env: dict[str, str], threads: int | None, sparsity: float) -> dict:
    project = Path(tempfile.mkdtemp(prefix=f"determinism-{name}-"))
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    overrides = [
        f"compress.sparsities=[{sparsity}]",
        "align.losses=[ce,kd,label_preserving,pw]",
        "audit.attribution_samples=0",
        "audit.bootstrap_samples=100",
        "audit.latency_repeats=1",
        "audit.latency_warmup=0",
        "audit.latency_batch_sizes=[1]",
        "run.device=cpu",
    ]
    if threads:
        overrides.append(f"run.threads={threads}")
    command = [str(Path(sys.executable).parent / "compalign"), "run"]
    for override in overrides:
        command += ["--set", override]
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    for key in ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "MLFLOW_TRACKING_URI"):
        full_env.pop(key, None)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=project, env=full_env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name}: exit {done.returncode}\n{done.stderr[-3000:]}")
    summary = pd.read_parquet(project / "reports/pipeline/summary.parquet")
    shutil.rmtree(project, ignore_errors=True)
    row = {"setting": name, "seconds": round(seconds, 1)}
    reference = summary[summary.role == "reference"].iloc[0]
    row["reference accuracy"] = round(float(reference.accuracy), 4)
    for model in summary[summary.role == "compressed"].itertuples():
        row[model.loss] = int(model.mismatches)
    return row


def train_reference(epochs: int, threads: int | None, out: str) -> None:
    """(in the child process) the default reference, `epochs` epochs, weights saved to `out`."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from compalign.config import load_params
    from compalign.data import build_table, load_split, write_prepared
    from compalign.losses import LOSSES
    from compalign.models import build_model
    from compalign.train import fit, predict_logits
    from tasks.train import architecture_of, train_config

    params = load_params(ROOT / "params.yaml", [f"reference.epochs={epochs}"])
    with tempfile.TemporaryDirectory() as scratch:
        table, manifest = build_table(params.data)
        manifest = write_prepared(table, manifest, scratch)
        train, test = load_split(scratch, "train", manifest), load_split(scratch, "test", manifest)
    model = build_model(**architecture_of(params.reference.model, manifest), seed=0)
    fit(model, train, train_config(params.reference), LOSSES["ce"]())
    torch.save(
        {
            "state": model.state_dict(),
            "predictions": predict_logits(model, test).argmax(1),
            "threads": torch.get_num_threads(),
            "capability": torch.backends.cpu.get_cpu_capability(),
        },
        out,
    )


def quick_once(name: str, env: dict[str, str], threads: int | None, epochs: int) -> dict:
    import torch

    out = Path(tempfile.mkdtemp(prefix="determinism-")) / "reference.pt"
    command = [sys.executable, __file__, "--train-reference", str(epochs), "--out", str(out)]
    command += ["--threads", str(threads)] if threads else []
    start = time.perf_counter()
    subprocess.run(command, env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, check=True)
    seconds = time.perf_counter() - start
    saved = torch.load(out, weights_only=True)
    shutil.rmtree(out.parent, ignore_errors=True)
    return {"setting": name, "seconds": round(seconds, 1), **saved}


def quick(settings: list[str], epochs: int) -> None:
    rows, first = [], None
    for text in settings:
        run = quick_once(*parse_setting(text), epochs)
        first = first or run
        difference = max(
            (run["state"][key].float() - first["state"][key].float()).abs().max().item()
            for key in first["state"]
        )
        rows.append(
            {
                "setting": run["setting"],
                "torch threads": run["threads"],
                "ATen capability": run["capability"],
                "seconds": run["seconds"],
                f"max |weight - {first['setting']}|": f"{difference:.3g}",
                "test predictions that differ": int(
                    (run["predictions"] != first["predictions"]).sum()
                ),
            }
        )
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    print(pd.DataFrame(rows).to_markdown(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.98)
    parser.add_argument("--setting", action="append", default=None)
    parser.add_argument("--quick", type=int, default=None, metavar="EPOCHS")
    parser.add_argument("--train-reference", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_reference:
        train_reference(args.train_reference, args.threads, args.out)
        return
    import torch

    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if args.quick:
        quick(args.setting or DEFAULT_SETTINGS, args.quick)
        return
    rows = []
    for text in args.setting or DEFAULT_SETTINGS:
        rows.append(run_once(*parse_setting(text), args.sparsity))
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
