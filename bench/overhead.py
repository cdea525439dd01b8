"""What orchestration, tracking and the store cost, on the same work; workers against threads.

Runs one profile (default: params.yaml) in fresh temporary projects:
  plain  -- the flow's work as core calls in memory, one after another (twice: the second pass,
            with the process warm, is compared): the same data, reference
            training, compression, fine-tuning, the full audit (bootstrap intervals, calibration,
            class and group fairness, attributions) with the files it makes (per-example tables,
            attribution maps, the agreement figure), costs (latency included) and the summary
            and HTML report, without Prefect, MLflow or the store
  flow   -- `run_pipeline` as `compalign run` runs it (its Prefect API server started once,
            before, and timed on its own; each project's MLflow store set up before, as
            `compalign run` does while the server starts, timed on its own), with (1 worker x
            all cores' threads) and
            (all cores as workers x 1 thread): the grid's wall time for each
  cached -- the same flow again in this process (every task Cached), then `compalign run` as a
            new process three times: the first answers from the store (flows/rerun.py cached_run) and
            remembers its answer, the next two replay it (flows/rerun.py replay)
Per stage, the plain seconds against the sum of that stage's Prefect task-run durations
(1 worker: tasks do not overlap) is what each task's wrapper adds (cache key, store, files,
MLflow). The flow's numbers must equal the plain ones (checked: same seeds, same calls).

Usage: python bench/overhead.py [--params params.yaml] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "reference", "compress", "align", "audit", "predictions", "costs")


class Clock:
    """Seconds spent per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def __call__(self, stage: str, function, *args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        self.seconds[stage] += time.perf_counter() - start
        return result


def plain_pipeline(params, scratch: Path) -> tuple[dict[str, dict[str, float]], Clock]:
    """The flow's work as core calls (the bodies of tasks/*.py without store or tracking), step
    by step as the run graph (flows/graph.py pipeline_steps) gives them, with the graph's own
    arguments; returns every model's audit metrics and the seconds per stage."""
    import pandas as pd

    from compalign.audit import AuditInputs, ReferenceAudit, audit, predictions_frame
    from compalign.audit.metrics.attribution import MAPS_FILE
    from compalign.compressors import COMPRESSORS
    from compalign.config import AuditParams, DataParams, ReferenceParams, TrainingParams
    from compalign.costs import measure_latency, parameter_counts, serialized_size
    from compalign.data import build_table, load_split, write_prepared
    from compalign.finetune import fine_tune
    from compalign.losses import LOSSES
    from compalign.models import build_model
    from compalign.pruning import count_macs, weight_sparsity
    from compalign.report.figures import draw_figures
    from compalign.report.html import pipeline_report
    from compalign.report.tables import summary_frame, summary_markdown
    from compalign.train import fit, predict_logits
    from flows.graph import audited_models, field_of, pipeline_steps, resolve
    from tasks.train import architecture_of, train_config, validation_accuracy

    if params.align.tune or any(COMPRESSORS[m].needs_calibration for m in params.compress.methods):
        raise SystemExit("plain side: align.tune and calibrating compressors are not mirrored")
    clock = Clock()
    device = "cpu"
    steps = pipeline_steps(params, device, {}, None)
    splits: dict[str, object] = {}

    def prepare(data):
        table, manifest = build_table(DataParams.model_validate(data))
        written = write_prepared(table, manifest, scratch / "data")
        splits.update(
            {s: load_split(scratch / "data", s, written) for s in ("train", "val", "test")}
        )
        return {"manifest": written}

    def train_reference(data, reference, device, **_):
        settings = ReferenceParams.model_validate(
            {key: value for key, value in reference.items() if key != "model_input"}
        )
        model = build_model(**architecture_of(settings.model, data["manifest"]), seed=settings.seed)
        fit(model, splits["train"], train_config(settings), LOSSES["ce"](), device=device)
        validation_accuracy(model, splits["val"], device)
        return {"model": model}

    def compress(data, reference, method, level, options, **_):
        state = COMPRESSORS[method](copy.deepcopy(reference["model"]), level, options, None)
        made = {"method": method, "level": level, "options": options, "state": state.state_dict()}
        return {**made, "reference": reference["model"], "model": fresh(made, reference["model"])}

    def fresh(made, reference):
        """A new copy of the compressed model (a pruned module cannot be deep-copied: its
        masked weights are not graph leaves), as loading its checkpoint gives."""
        model = COMPRESSORS[made["method"]](
            copy.deepcopy(reference), made["level"], made["options"], None
        )
        model.load_state_dict(made["state"])
        return model

    def align(
        data,
        reference,
        compressed,
        method,
        level,
        options,
        loss,
        hyperparameters,
        training,
        device,
        **_,
    ):
        model = fine_tune(
            method,
            level,
            options,
            lambda: fresh(compressed, reference["model"]),
            lambda: copy.deepcopy(reference["model"]),
            reference["model"],
            splits["train"],
            train_config(TrainingParams.model_validate(training)),
            LOSSES[loss](**hyperparameters),
            device,
        )
        weight_sparsity(model)
        return {"model": model}

    def audit_one(data, model, reference_audit, audit_params, labels, baseline_audit, device, **_):
        test = splits["test"]
        options = AuditParams.model_validate(audit_params)
        network = model["model"]
        logits = predict_logits(network, test, options.batch_size, device)
        reference = None
        if reference_audit is not None:
            result = reference_audit["result"]
            reference = ReferenceAudit(
                frame=result.table,
                metrics=result.metrics,
                attributions=result.outputs.get(MAPS_FILE),
            )
        inputs = AuditInputs(
            frame=predictions_frame(test.example_ids, test.labels, logits),
            class_names=data["manifest"]["class_names"],
            groups=test.groups,
            options=options,
            reference=reference,
            baseline=None if baseline_audit is None else baseline_audit["result"].table,
            model=network,
            images=test.images,
            normalise=test.normalise,
            device=device,
        )
        result = audit(inputs)
        if (
            labels["role"] == "compressed"
            and not COMPRESSORS[labels["compressor"]].family.quantized
        ):
            result.metrics["weight_sparsity"] = weight_sparsity(network)
        # the audit's files, as the audit task writes them (its store entry's content)
        files = scratch / "audits" / labels["name"]
        files.mkdir(parents=True)
        result.write_outputs(files)
        draw_figures(result.outputs, files)
        result.table.to_parquet(files / "predictions.parquet", index=False)
        return {"result": result, "labels": labels, "metrics": result.metrics, "run_id": ""}

    def predictions(audits):
        return pd.concat(
            [audit["result"].table.assign(model=name) for name, audit in audits.items()],
            ignore_index=True,
        )

    def costs_of(data, model, latency, name, **_):
        network = model["model"].eval()
        example = splits["test"].normalise(splits["test"].images[:1])
        found = {
            **parameter_counts(network),
            "macs": count_macs(network, example),
            **serialized_size(network),
            **measure_latency(
                network,
                example,
                latency["latency_batch_sizes"],
                latency["latency_warmup"],
                latency["latency_repeats"],
            ),
        }
        found["weight_sparsity"] = 1.0 - found["params_nonzero"] / max(found["params_total"], 1)
        return {"costs": found}

    plain = {
        "prepare": prepare,
        "reference": train_reference,
        "compress": compress,
        "align": align,
        "audit": lambda audit, **arguments: audit_one(audit_params=audit, **arguments),
        "predictions": predictions,
        "costs": costs_of,
    }
    results: dict[str, object] = {}
    for step in steps:  # the graph's order: each step's inputs are done
        arguments = resolve(step.arguments, lambda source: field_of(results[source.step], source))
        arguments.pop("out_dir", None)
        results[step.id] = clock(step.stage, plain[step.stage], **arguments)
    names = audited_models(steps)

    def report():
        audits = [results[f"audit:{name}"] for name in names]
        costs = {name: results[f"costs:{name}"]["costs"] for name in names}
        summary = summary_frame(audits, costs)
        summary.to_parquet(scratch / "summary.parquet", index=False)
        (scratch / "summary.md").write_text(summary_markdown(summary) + "\n")
        metrics = {audit["labels"]["name"]: audit["metrics"] for audit in audits}
        manifest = results["prepare"]["manifest"]
        pipeline_report(summary, metrics, manifest["class_names"], scratch / "r.html", "plain")

    clock("report", report)
    return {name: results[f"audit:{name}"]["metrics"] for name in names}, clock


def task_seconds(flow_run_id: str) -> dict[str, float]:
    """Sum of the Prefect task-run durations of one flow run, per stage (from the API)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    seconds: dict[str, float] = defaultdict(float)
    for run in runs:
        stage = next((s for s in STAGES if run.name.startswith(s)), "other")
        if run.start_time and run.end_time:
            seconds[stage] += (run.end_time - run.start_time).total_seconds()
    return seconds


def differences(plain: dict, flow: dict) -> list[str]:
    """Metrics that are not the same in both (NaN equals NaN)."""
    found = []
    for name, metrics in plain.items():
        for key, value in metrics.items():
            other = flow.get(name, {}).get(key)
            if other is None or not (value == other or (value != value and other != other)):
                found.append(f"{name}/{key}: plain {value} flow {other}")
    return found


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    arguments = parser.parse_args()
    arguments.params = str(Path(arguments.params).resolve())  # the projects are other folders

    from compalign.config import cores, load_params

    params = load_params(arguments.params, arguments.overrides)
    home = Path(tempfile.mkdtemp(prefix="compalign-bench-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from flows.environment import configure_environment
    from flows.server import start_api_server, wait_for_api_server

    configure_environment(home)
    import torch

    print(f"profile: {arguments.params} {' '.join(arguments.overrides)}")
    print(f"cores: {cores()}, load average at start: {os.getloadavg()[0]:.2f}")
    server_seconds, _ = timed(lambda: (start_api_server(), wait_for_api_server()))
    from flows.pipeline import run_pipeline

    # the first pass pays the process's one-time costs (imports, kernel set-up) that the flows,
    # run after it, no longer pay: the second pass is the one compared
    # ... and in a worker thread with all cores' threads, as the flow's 1-worker runner runs
    # its tasks: torch in this process's main thread measured 30-80x slower on the same calls
    # (tiny reference training: 3.5-10 s against 0.13 s in a worker thread, load 10)
    with ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(cores(),)) as pool:
        for attempt in range(2):
            (home / f"plain-{attempt}").mkdir()
            plain_seconds, (plain_metrics, clock) = pool.submit(
                timed, plain_pipeline, params, home / f"plain-{attempt}"
            ).result()
    from tasks.infra import tracking

    setup_seconds = {}
    rows = [("plain core calls", plain_seconds, plain_seconds)]
    print(f"plain core calls: {plain_seconds:.1f} s", flush=True)
    flow_stages = {}
    checks = []
    n = cores()
    for workers, threads in ((1, n), (n, 1)):
        project = home / f"workers-{workers}"
        project.mkdir()
        os.chdir(project)
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # each project its own store
        run = params.run.model_copy(update={"workers": workers, "threads": threads})
        settings = params.model_copy(update={"run": run})
        # as `compalign run` does while its Prefect server starts (flows/cli.py _server_ready):
        # the project's MLflow store created, MLflow's one-time model-logging work done
        setup_seconds[workers], _ = timed(
            lambda: (tracking.setup(params.run.experiment), tracking.warm_up())
        )
        seconds, result = timed(run_pipeline, settings)
        rows.append((f"flow, {workers} worker(s) x {threads} thread(s)", seconds, plain_seconds))
        print(f"{rows[-1][0]}: {seconds:.1f} s", flush=True)
        if workers == 1:
            flow_stages = task_seconds(result["flow_run_id"])
        found = differences(plain_metrics, result["metrics"])
        if threads == cores():  # plain ran with every core's threads: the same arithmetic
            checks += found
        else:  # another thread count sums floats in another order: reported, not a failure
            print(
                f"  {len(found)} metrics differ from plain ({threads} thread(s) against plain's "
                f"{cores()}: reductions in another order)",
                flush=True,
            )
        if workers == n:
            cached_seconds, cached = timed(run_pipeline, settings)
            assert {t["state"] for t in cached["tasks"]} == {"Cached"}
            rows.append(("cached rerun, same process", cached_seconds, plain_seconds))
            command = [str(Path(sys.executable).parent / "compalign"), "run"]
            command += ["--params", arguments.params]
            for override in arguments.overrides:
                command += ["--set", override]
            command += ["--set", f"run.workers={workers}", "--set", f"run.threads={threads}"]
            env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW"))}
            times = []
            for _ in range(3):
                seconds, done = timed(
                    subprocess.run, command, env=env, capture_output=True, text=True
                )
                assert f"{len(cached['tasks'])} Cached" in done.stdout, done.stdout + done.stderr
                times.append(seconds)
            # the first answers through flows/rerun.py cached_run (torch imported to validate the params)
            # and remembers its answer; the next ones replay it (flows/rerun.py replay)
            rows.append(("cached rerun, new `compalign run`, first", times[0], None))
            rows.append(("cached rerun, new `compalign run`, best of next 2", min(times[1:]), None))
    print(f"Prefect API server start: {server_seconds:.1f} s (once per `compalign run`)")
    print(
        "MLflow store set-up, during the server start in `compalign run`: "
        + ", ".join(f"{s:.1f} s ({w} worker(s) project)" for w, s in setup_seconds.items())
    )
    print(f"load average at end: {os.getloadavg()[0]:.2f}; torch {torch.__version__}")
    print("\nper stage (1 worker): plain seconds, flow task-run seconds, ratio")
    for stage in (*STAGES, "report"):
        plain, flow = clock.seconds.get(stage, 0.0), flow_stages.get(stage)
        ratio = f"{flow / plain:9.2f}" if flow and plain else f"{'-':>9}"
        print(f"  {stage:<12}{plain:9.1f}{flow if flow is not None else float('nan'):9.1f}{ratio}")
    print(f"\n{'run':<48}{'seconds':>9}{'x plain':>9}")
    for name, seconds, base in rows:
        ratio = f"{seconds / base:9.2f}" if base else f"{'-':>9}"
        print(f"{name:<48}{seconds:>9.1f}{ratio}")
    if checks:
        print(f"\nnote: {len(checks)} metrics differ between plain and flow, e.g.", checks[:5])
    else:
        print("\nevery audit metric of every model is the same in plain and flow runs")


if __name__ == "__main__":
    main()
