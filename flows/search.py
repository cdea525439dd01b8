"""`compalign search`: the most compressed model that meets release rules, as a Prefect flow.

The search (compalign.search) decides; this flow makes each probe a run of the pipeline's own
tasks (flows/graph.py `probe_steps`: compress, align, an audit on the validation split against
the reference's audit on the same split, costs), one at a time, each cached in the store and
logged as an MLflow child run of the search's parent run. A rerun, with the same or another
budget, finds its probes in the store: a level probed before costs nothing, and before the
bisection starts every level of the grid already in the store is read, so an earlier search's
probes narrow the bracket (and test monotonicity) for free. The chosen model is then audited
once on the test split (so its interval is not biased by having been chosen on validation),
and reports/search/ gets probes.parquet, chosen.json and report.html.
"""

from __future__ import annotations

import json
import math
import socket
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from prefect import flow
from prefect.runtime import flow_run

from compalign.checkpoint import load_checkpoint
from compalign.compressors.quantize_static import quantizable_layers
from compalign.config import NO_FINE_TUNING, Params
from compalign.costs import COST_METRICS
from compalign.data import read_manifest
from compalign.gate import Rule, parse_rule
from compalign.search import (
    FLOAT_SEARCH,
    RATIO_COSTS,
    ProbeOutcome,
    all_hold,
    check_rules,
    search_float_layers,
    search_levels,
)
from compalign.train import resolve_device
from flows import artifacts
from flows.graph import Input, Step, field_of, probe_steps, resolve, search_steps
from flows.plan import ModelSpec, reference_model_name
from flows.runtime import report_finished
from tasks import stage
from tasks.infra import tracking
from tasks.infra.logs import publish_progress, stage_logger
from tasks.infra.paths import SEARCH_REPORT_DIR
from tasks.infra.store import artifact_of, entry_dir, is_complete, stage_key
from tasks.reports.search import publish_search

REPORT_DIR = SEARCH_REPORT_DIR
PROBE_SPLIT = "val"  # every probe is judged on the validation split; the chosen model on test
# the columns of probes.parquet besides the rules' values
SHOWN_METRICS = (
    "accuracy",
    "accuracy_change",
    "mismatches",
    "mismatches_ci_low",
    "mismatches_ci_high",
    "mismatches_ref_correct",
    "mismatches_ref_correct_ci_low",
    "mismatches_ref_correct_ci_high",
    "weight_sparsity",
)


def probe_name(spec: ModelSpec, float_layers: tuple[str, ...] | None, split: str) -> str:
    """A probe's child run name: the pipeline's model name, the layers kept in float, and the
    split it is judged on, e.g. `magnitude_global-0.95-label_preserving@val` or
    `quantize_static[float 0,12]-none@val`."""
    name = spec.compressed_name
    if float_layers:
        name += f"[float {','.join(float_layers)}]"
    name += f"-{spec.loss}"
    return name if split == "test" else f"{name}@{split}"


def with_float_layers(settings: Params, float_layers: tuple[str, ...] | None) -> Params:
    """The params with `compress.quantize_static.float_layers` set (None: unchanged)."""
    if float_layers is None:
        return settings
    tree = settings.model_dump()
    tree["compress"]["quantize_static"]["float_layers"] = list(float_layers)
    return Params.model_validate(tree)


@dataclass
class StepRunner:
    """Runs steps (flows/graph.py) one after another in the flow's thread, each a Prefect task
    run (so cached across runs on its store key), and keeps their results by step id."""

    results: dict[str, Any] = field(default_factory=dict)
    states: list[dict[str, str]] = field(default_factory=list)

    def _lookup(self, source: Input) -> Any:
        return field_of(self.results[source.step], source)

    def run(self, steps: list[Step]) -> bool:
        """Run `steps`; True when every one of them was a cache hit."""
        publish_progress("planned", count=len(steps))
        cached = True
        for step in steps:
            task = stage(step.stage).task
            state = task(**resolve(step.arguments, self._lookup), return_state=True)
            report_finished(state)
            self.states.append({"stage": step.stage, "model": step.model, "state": state.name})
            self.results[step.id] = state.result()  # a failed task raises its own error here
            cached = cached and state.name == "Cached"
        return cached

    def stored(self, steps: list[Step]) -> bool:
        """Whether the store already holds the results of `steps` up to their audit (their keys
        computed as the tasks would, nothing run)."""
        found: dict[str, Any] = {}

        def lookup(source: Input) -> Any:
            return field_of(found.get(source.step, self.results.get(source.step)), source)

        for step in steps:
            directory = entry_dir(stage_key(step.stage, resolve(step.arguments, lookup)))
            if not is_complete(directory):
                return False
            found[step.id] = artifact_of(directory)
            if step.stage == "audit":
                return True
        return False


@dataclass
class Search:
    """One search: its settings and rules, the tasks it ran, every probe's record."""

    settings: Params
    method: str
    loss: str
    rules: list[Rule]
    device: str
    track: tracking.Tracking
    parent: str
    runner: StepRunner = field(default_factory=StepRunner)
    records: list[dict[str, Any]] = field(default_factory=list)
    reference_costs: dict[str, float] = field(default_factory=dict)

    def spec(self, level: float | None) -> ModelSpec:
        return ModelSpec(self.method, level, self.loss)

    def steps(self, level: float | None, float_layers: tuple[str, ...] | None, split: str):
        spec = self.spec(level)
        name = probe_name(spec, float_layers, split)
        settings = with_float_layers(self.settings, float_layers)
        return name, probe_steps(settings, spec, self.device, self.track, self.parent, name, split)

    def metrics_of(self, name: str) -> dict[str, float]:
        """A probe's numbers: its audit's metrics, its costs and their ratios to the
        reference's (what a rule may name)."""
        audit = self.runner.results[f"audit@{name}"]
        costs = self.runner.results[f"costs@{name}"]["costs"]
        metrics = {**audit["metrics"], **costs}
        for column in RATIO_COSTS:
            base = self.reference_costs.get(column, math.nan)
            value = costs.get(column, math.nan)
            metrics[f"{column}_ratio"] = value / base if base and math.isfinite(base) else math.nan
        return metrics

    def probe(
        self, level: float | None, float_layers: tuple[str, ...] | None = None, **extra: Any
    ) -> dict[str, Any]:
        """Compress (and fine-tune) at `level` with `float_layers` kept in float, audit on the
        validation split, check the rules; the probe's record (also kept in `records`)."""
        name, steps = self.steps(level, float_layers, PROBE_SPLIT)
        cached = self.runner.run(steps)
        metrics = self.metrics_of(name)
        checks = check_rules(self.rules, metrics)
        record = {
            "probe": len(self.records) + 1,
            "name": name,
            "level": math.nan if level is None else level,
            "float_layers": ",".join(float_layers or ()),
            "kept_in_float": len(float_layers or ()),
            "passes": all_hold(checks),
            "cached": cached,
            "run_id": self.runner.results[f"audit@{name}"]["run_id"],
            **{str(check.rule): check.value for check in checks},
            **{column: metrics.get(column, math.nan) for column in SHOWN_METRICS},
            **{column: metrics.get(column, math.nan) for column in COST_METRICS},
            **{f"{c}_ratio": metrics.get(f"{c}_ratio", math.nan) for c in RATIO_COSTS},
            **extra,
        }
        self.records.append(record)
        logger = stage_logger()
        logger.info(
            "probe %d %s: %s -> %s",
            record["probe"],
            name,
            "; ".join(check.describe() for check in checks),
            "meets the rules" if record["passes"] else "fails",
        )
        return record

    def checks(self, metrics: dict[str, float]) -> list[dict[str, Any]]:
        return [
            {"rule": str(c.rule), "value": c.value, "holds": c.holds}
            for c in check_rules(self.rules, metrics)
        ]


def _search_levels(search: Search) -> dict[str, Any]:
    """Bisection over `search.levels` (compalign.search.search_levels), the probes an earlier
    search left in the store read first."""
    grid = search.settings.search.levels
    known = {}
    for level in grid:  # the store's probes: free evidence, never probed again
        if search.runner.stored(search.steps(level, None, PROBE_SPLIT)[1]):
            known[level] = search.probe(level, before_search=True)["passes"]
    result = search_levels(
        grid, lambda level: search.probe(level, before_search=False)["passes"], known
    )
    by_level = {record["level"]: record for record in search.records}
    above = result.first_failure
    return {
        "search": "bisection on the grid of levels, after the least compressed level",
        "levels": list(result.levels),
        "chosen": None if result.chosen is None else by_level[result.chosen],
        "next": None if above is None else by_level[above],
        "least_compressed": by_level[result.levels[0]],
        "violations": [list(pair) for pair in result.violations],
        "float_layers": [],
    }


def _search_float_layers(search: Search) -> dict[str, Any]:
    """Layers kept in float, one at a time (compalign.search.search_float_layers); each
    record says its round (how many layers it keeps in float), the layer it tried and the
    mismatches that layer recovered, and whether the search kept it."""
    reference = load_checkpoint(search.runner.results["reference"]["path"])
    layers = quantizable_layers(reference)

    def evaluate(float_layers: tuple[str, ...]) -> ProbeOutcome:
        record = search.probe(None, float_layers, round=len(float_layers))
        return ProbeOutcome(record["passes"], record["mismatches"], record["size_bytes"])

    result = search_float_layers(layers, evaluate)
    by_layers = {record["float_layers"]: record for record in search.records}
    for record in search.records:
        record.update(tried_layer="", recovered=math.nan, kept=record["float_layers"] == "")
    for step in result.rounds:
        before = {name for name in step["kept"] if name != step["layer"]}
        for layer, recovered in step["recovered"].items():
            trial = by_layers[",".join(name for name in layers if name in {*before, layer})]
            trial.update(tried_layer=layer, recovered=float(recovered))
        by_layers[",".join(step["kept"])]["kept"] = True
    last = by_layers[",".join(result.rounds[-1]["kept"]) if result.rounds else ""]
    return {
        "search": "greedy: the layer whose float copy recovers the most mismatches",
        "layers": layers,
        "chosen": None if result.chosen is None else by_layers[",".join(result.chosen)],
        "next": None,
        "least_compressed": last,
        "violations": [],
        "float_layers": list(result.chosen or ()),
        "rounds": [
            {
                "kept_in_float": list(step["kept"]),
                "layer": step["layer"],
                "recovered": {k: float(v) for k, v in step["recovered"].items()},
            }
            for step in result.rounds
        ],
    }


def _test_audit(search: Search, chosen: dict[str, Any], float_layers: list[str]) -> dict:
    """The chosen model audited once on the test split, with its costs and the rules."""
    level = None if math.isnan(chosen["level"]) else chosen["level"]
    layers = tuple(float_layers) if search.method == FLOAT_SEARCH else None
    name, steps = search.steps(level, layers, "test")
    search.runner.run(steps)
    metrics = search.metrics_of(name)
    audit = search.runner.results[f"audit@{name}"]
    return {
        "name": name,
        "run_id": audit["run_id"],
        "checkpoint": search.runner.results[steps[-3].id]["path"],
        "rules": search.checks(metrics),
        "metrics": {key: _json_number(value) for key, value in metrics.items()},
    }


def _json_number(value: float) -> float | str:
    value = float(value)
    return value if math.isfinite(value) else str(value)


def artifact_key(settings: Params, method: str) -> str:
    return artifacts.artifact_key("search", settings.data.source, method)


@flow(name="compalign-search", flow_run_name="search-{method}-{loss}")
def search_flow(params: dict[str, Any], method: str, loss: str, rules: list[str]) -> dict:
    """Search the most compressed model of `method` (fine-tuned with `loss`, or not with
    `none`) that meets every rule on the validation split; audit it on the test split."""
    settings = Params.model_validate(params)
    parsed = [parse_rule(text) for text in rules]
    device = str(resolve_device(settings.run.device))
    track = tracking.setup(settings.run.experiment)
    tags = {
        "orchestrator": "prefect",
        "role": "search",
        "prefect_flow_run_id": str(flow_run.get_id()),
        "model": reference_model_name(settings),
        "device": device,
        "host": socket.gethostname(),
        "search.method": method,
        "search.loss": loss,
    }
    search_params = {
        **settings.flat(),
        "search.method": method,
        "search.loss": loss,
        "search.rules": json.dumps(rules),
    }
    name = f"search-{settings.data.source}-{method}-{loss}"
    with tracking.parent_run(track, name, search_params, tags) as parent:
        search = Search(settings, method, loss, parsed, device, track, parent)
        search.runner.run(search_steps(settings, device, track, parent, PROBE_SPLIT))
        search.reference_costs = search.runner.results["costs:reference"]["costs"]
        found = _search_float_layers(search) if method == FLOAT_SEARCH else _search_levels(search)
        test = None
        if found["chosen"] is not None:
            test = _test_audit(search, found["chosen"], found["float_layers"])
        probes = pd.DataFrame(search.records)
        summary = publish_search(
            track,
            parent,
            probes,
            _chosen_record(search, found, test),
            REPORT_DIR,
            f"{settings.data.source} / {reference_model_name(settings)}: how far {method} goes "
            f"within {', '.join(rules)}",
        )
    artifacts.publish_results(
        artifact_key(settings, method),
        summary["table"],
        summary["headline"],
        track,
        parent,
        "search",
    )
    cached = sum(state["state"] == "Cached" for state in search.runner.states)
    return {
        "parent_run_id": parent,
        "experiment_id": track["experiment_id"],
        "tracking_uri": track["uri"],
        "chosen": summary["chosen"],
        "probes": probes.to_dict(orient="records"),
        "tasks": search.runner.states,
        "cached": cached,
        "written": {key: str(value) for key, value in summary["written"].items()},
    }


def _chosen_record(search: Search, found: dict[str, Any], test: dict | None) -> dict[str, Any]:
    """What chosen.json holds: the answer, the probe above it, the test audit, the evidence."""
    chosen = found["chosen"]
    data = search.runner.results["prepare"]["path"]
    splits = read_manifest(data, verify=False).get("splits", {})
    record: dict[str, Any] = {
        "method": search.method,
        "loss": search.loss,
        "rules": [str(rule) for rule in search.rules],
        "searched_on": PROBE_SPLIT,
        "search": found["search"],
        "probes": len(search.records),
        "probes_run": sum(not r["cached"] for r in search.records),
        "monotonicity_violations": found["violations"],
        "chosen": None,
        "test_audit": test,
        # counts (mismatches, their intervals) scale with these: a bound on a count means more
        # on the larger split
        "examples": {split: splits.get(split) for split in (PROBE_SPLIT, "test")},
        "reference_costs": {k: _json_number(v) for k, v in search.reference_costs.items()},
    }
    if "levels" in found:
        record["levels"] = found["levels"]
    if "layers" in found:
        record["layers"] = found["layers"]
        record["rounds"] = found["rounds"]
    if chosen is None:
        least = found["least_compressed"]
        record["answer"] = "none: the least compressed probe already fails"
        record["least_compressed"] = _probe_summary(search, least)
        return record
    record["answer"] = chosen["name"].removesuffix(f"@{PROBE_SPLIT}")
    record["chosen"] = {
        **_probe_summary(search, chosen),
        "level": None if math.isnan(chosen["level"]) else chosen["level"],
        "float_layers": found["float_layers"],
    }
    if found["next"] is not None:
        record["next"] = _probe_summary(search, found["next"])
    return record


def _probe_summary(search: Search, probe: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": probe["name"],
        "level": None if math.isnan(probe["level"]) else probe["level"],
        "float_layers": [name for name in probe["float_layers"].split(",") if name],
        "run_id": probe["run_id"],
        "passes": bool(probe["passes"]),
        "rules": [
            {"rule": str(rule), "value": _json_number(probe[str(rule)])} for rule in search.rules
        ],
        "costs": {column: _json_number(probe[column]) for column in COST_METRICS},
    }


def run_search(params: Params, method: str, loss: str, rules: list[str]) -> dict[str, Any]:
    """Run the search flow on a runner of one worker: probes depend on the ones before them,
    and static quantization traces models (not thread-safe)."""
    from flows.runtime import thread_pool_runner

    runner = thread_pool_runner(1, params.run.threads or params.run.task_threads())
    return search_flow.with_options(task_runner=runner)(params.model_dump(), method, loss, rules)


def check_rules_on_data(params: Params, rules: list[Rule]) -> dict[str, Any]:
    """Prepare the data (the store's prepare entry, as the flow's first task would) and refuse,
    in one line, a rule on a class or group column this dataset does not have; before any flow
    or MLflow run starts. Returns the prepared data's artifact."""
    from compalign.data import load_split, read_manifest
    from compalign.search import check_rule_metrics, rule_metric_names
    from tasks.data import prepare

    data = prepare(params.data.prepare_params())
    manifest = read_manifest(data["path"])
    groups = list(load_split(data["path"], PROBE_SPLIT, manifest).groups.columns)
    wanted = params.audit.groups if params.audit.groups is not None else groups
    check_rule_metrics(rules, rule_metric_names(manifest["class_names"], wanted, params.audit))
    return data


__all__ = ["NO_FINE_TUNING", "REPORT_DIR", "check_rules_on_data", "run_search", "search_flow"]
