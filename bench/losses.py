"""The alignment losses compared on mismatches, through the real pipeline (issue 26).

Three stages, each a set of `compalign run` pipelines (the same set-up as the CLI: cached per
stage, logged to MLflow in experiment `bench-losses` unless --set run.experiment=... says
otherwise), on the data, model and training the params file and --set overrides give:

- `scout`: `ce` alone at --levels (default 0.8 0.9 0.95 0.97 0.98): how many validation
  mismatches it leaves at each, to find the levels where it leaves >= 30 (where the losses
  can be told apart).
- `choose`: at --levels, every candidate of `label_preserving` (its configured weights, its
  tuning grid, and SoftAdapt's variants and betas: SOFTADAPT_GRID) and of `focal_distillation`
  (configured and its grid), beside `ce`; measured on the VALIDATION split only; per loss the
  candidate with the fewest validation mismatches (--criterion) summed over the levels, among
  those whose validation accuracy is at least the configured candidate's (align.tune's rule).
- `compare`: `ce`, `kd`, `label_preserving` (configured, i.e. fixed unless --set says
  otherwise), `label_preserving` with SoftAdapt (the configured weights with weighting=softadapt
  and any --softadapt KEY=VALUE), `focal_distillation` and `pw`, over --seeds training seeds
  (seed i moves every training seed by i, as `compalign reproduce` does: each seed has its
  own reference), on the validation split (for choosing) and the TEST split (for reporting).

Every cell is the mean over seeds of the mismatch count (compressed vs its own seed's
reference) and of the mismatches where the reference is right, with the 95% interval (clipped at 0) over
training seeds and test examples (compalign.verdicts: SeedEvidence(*measures.count(...))), and
the reduction factor against `ce` at the same level (ce's mismatches over the loss's, summed
over seeds) with its Fieller interval (Ratio(...).interval()); intervals need >= 2 seeds.
Tables go to --out (Markdown and CSV) and to the terminal, with the wall time and the load
average. Test predictions are read from each model's audit; validation predictions from its
checkpoint in the store.

Sizing on 2 cores (see the report of issue 26 for the figures): a small_cnn epoch on the
Fashion-MNIST image folder's 2,666 training images takes ~10-15 s; resnet20's ~1.3x that.

Usage (from the project root):
  python bench/losses.py scout --set data.source=imagefolder \\
      --set data.root=../shared/data/fashion-mnist-test-4443 --set data.image_mode=L
  python bench/losses.py choose --levels 0.95 [--set ...]
  python bench/losses.py compare --levels 0.95 0.97 --seeds 3 [--softadapt softadapt_beta=10]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from compalign.config import Params, load_params, validate  # noqa: E402
from compalign.errors import UserError  # noqa: E402
from compalign.tuning import candidates  # noqa: E402
from compalign.verdicts.estimate import Ratio, SeedEvidence  # noqa: E402
from compalign.verdicts.measures import count  # noqa: E402

BASELINE = "ce"
# SoftAdapt candidates of `choose`: the authors' default (loss-weighted, beta 0.1, which weights
# the terms about in proportion to their sizes at these loss scales), and betas at which the
# slopes of these terms (~0.01-0.5 per epoch) move the weights (plain, normalised slopes in
# [-1, 1])
SOFTADAPT_GRID = (
    {"softadapt_variant": "loss_weighted", "softadapt_beta": 0.1},
    {"softadapt_variant": "loss_weighted", "softadapt_beta": 10.0},
    {"softadapt_variant": "plain", "softadapt_beta": 10.0},
    {"softadapt_variant": "normalised", "softadapt_beta": 2.0},
)
CHOSEN_LOSSES = ("label_preserving", "focal_distillation")
COMPARED = ("ce", "kd", "label_preserving", "focal_distillation", "pw")
# light audits by default: the bench reads predictions only (--set audit.... overrides them)
BENCH_DEFAULTS = [
    "run.experiment=bench-losses",
    "audit.attribution_samples=0",
    "audit.bootstrap_samples=200",
    "audit.latency_warmup=1",
    "audit.latency_repeats=3",
]


@dataclass(frozen=True)
class Arm:
    """One loss with one set of hyperparameters: a row of the tables."""

    label: str
    loss: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)


def arm_label(loss: str, hyperparameters: dict[str, Any], configured: dict[str, Any]) -> str:
    """`loss`, then what differs from the configured hyperparameters (SoftAdapt: its variant
    and beta first)."""

    def shown(value: Any) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    changed = {k: v for k, v in hyperparameters.items() if configured.get(k) != v}
    words = [loss]
    if hyperparameters.get("weighting") == "softadapt":
        for key in ("weighting", "softadapt_variant", "softadapt_beta"):
            changed.pop(key, None)
        words += [
            "softadapt",
            hyperparameters["softadapt_variant"],
            f"beta={shown(hyperparameters['softadapt_beta'])}",
        ]
    words += [f"{key}={shown(value)}" for key, value in changed.items()]
    return " ".join(words)


def stage_arms(stage: str, params: Params, softadapt: dict[str, Any]) -> list[Arm]:
    """The rows a stage measures."""

    def configured(loss: str) -> dict[str, Any]:
        return params.align.loss_hyperparameters(loss)

    if stage == "scout":
        return [Arm(BASELINE, BASELINE)]
    if stage == "compare":  # label_preserving twice: fixed, and with SoftAdapt
        arms = [Arm(loss, loss, configured(loss)) for loss in COMPARED]
        base = configured("label_preserving")
        fixed = {**base, "weighting": "fixed"}
        adaptive = {**base, "weighting": "softadapt", **softadapt}
        arms[2] = Arm(arm_label("label_preserving", fixed, base), "label_preserving", fixed)
        label = arm_label("label_preserving", adaptive, base)
        arms.insert(3, Arm(label, "label_preserving", adaptive))
        return arms
    arms = [Arm(BASELINE, BASELINE)]
    for loss in CHOSEN_LOSSES:
        base = configured(loss)
        found = candidates(loss, base)
        if loss == "label_preserving":
            found += [{**base, "weighting": "softadapt", **extra} for extra in SOFTADAPT_GRID]
        arms += [Arm(arm_label(loss, values, base), loss, values) for values in found]
    return arms


def pipeline_runs(arms: list[Arm]) -> list[list[Arm]]:
    """Arms grouped into pipeline runs: a run holds one hyperparameter set per loss, so run k
    holds the k-th arm of every loss (and the baseline in every run: a cache hit after the
    first)."""
    by_loss: dict[str, list[Arm]] = {}
    for arm in arms:
        by_loss.setdefault(arm.loss, []).append(arm)
    baseline = by_loss.pop(BASELINE, [])
    runs = []
    for k in range(max((len(group) for group in by_loss.values()), default=1)):
        run = baseline[:1] + [group[k] for group in by_loss.values() if k < len(group)]
        runs.append(run)
    return runs


def run_params(params: Params, run: list[Arm], levels: list[float]) -> Params:
    """`params` with the run's losses and hyperparameters and the bench's levels."""
    tree = params.model_dump()
    tree["align"]["losses"] = [arm.loss for arm in run]
    for arm in run:
        if arm.hyperparameters:
            tree["align"][arm.loss] = dict(arm.hyperparameters)
    if levels:
        tree["compress"]["sparsities"] = list(levels)
    return validate(tree, "bench/losses.py")


def checkpoint_index() -> dict[str, Path]:
    """sha256 of every reference and aligned checkpoint in the store -> its folder."""
    from tasks.infra.store import ARTIFACTS_DIR

    found = {}
    for stage in ("reference", "align", "compress"):
        for manifest in (ARTIFACTS_DIR / stage).glob("*/manifest.json"):
            sha = json.loads(manifest.read_text()).get("sha256")
            if sha:
                found[sha] = manifest.parent
    return found


@dataclass
class Collected:
    """Per split: labels, and per seed the reference's and each (compressor, level, arm)'s
    predictions; SoftAdapt trajectories of seed 0; wall time per pipeline run."""

    labels: dict[str, np.ndarray] = field(default_factory=dict)
    reference: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    models: dict[tuple[str, float, str], dict[str, dict[int, np.ndarray]]] = field(
        default_factory=dict
    )
    weights: dict[tuple[str, float, str], dict[str, float]] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)


def collect(result: dict[str, Any], run: list[Arm], seed: int, into: Collected) -> None:
    """Read one pipeline run's predictions: test from the audits, validation from the
    checkpoints (the audit records which one it read by its digest)."""
    from compalign.checkpoint import load_checkpoint, read_checkpoint_manifest
    from compalign.data import load_split
    from compalign.train import predict_logits
    from tasks.audit import read_outcomes
    from tasks.infra.store import MANIFEST

    data = result["data_path"]
    splits = {name: load_split(data, name) for name in ("val", "test")}
    for name, split in splits.items():
        into.labels.setdefault(name, split.labels.numpy())
    index = checkpoint_index()
    arms = {arm.loss: arm for arm in run}
    for row in result["summary"]:
        audit_dir = Path(result["audits"][row["name"]])
        sha = json.loads((audit_dir / MANIFEST).read_text())["checkpoint_sha256"]
        checkpoint = index[sha]
        predictions = {
            "test": read_outcomes(audit_dir, splits["test"].example_ids)["predictions"],
            "val": predict_logits(load_checkpoint(checkpoint), splits["val"]).argmax(1).numpy(),
        }
        if row["role"] == "reference":
            for split, values in predictions.items():
                into.reference.setdefault(split, {})[seed] = values
            continue
        if row["loss"] not in arms:  # "none"
            continue
        key = (row["compressor"], float(row["sparsity"]), arms[row["loss"]].label)
        for split, values in predictions.items():
            into.models.setdefault(key, {}).setdefault(split, {})[seed] = values
        trajectory = read_checkpoint_manifest(checkpoint).get("loss_trajectory")
        if trajectory and key not in into.weights:
            into.weights[key] = {
                name.removeprefix("softadapt."): values[-1]
                for name, values in trajectory.items()
                if name.startswith("softadapt.w_")
            }


def interval_text(point: float, low: float, high: float, factor: bool = False) -> str:
    """ "12.3 [8.1, 16.5]"; a factor "2.10x [1.40, 3.30]"; the point alone without an
    interval (one seed)."""

    def number(value: float) -> str:
        return f"{value:.2f}" if factor else f"{value:.1f}"

    unit = "x" if factor else ""
    if math.isnan(low) and math.isnan(high):
        return f"{number(point)}{unit}"
    return f"{number(point)}{unit} [{number(low)}, {number(high)}]"


def table(collected: Collected, seeds: list[int], split: str, order: list[str]) -> pd.DataFrame:
    """One row per (compressor, level, arm): accuracy, mismatches and mismatches where the
    reference is right (mean over seeds, 95% interval), reduction factors against ce."""
    labels = collected.labels[split]
    reference = np.stack([collected.reference[split][s] for s in seeds])
    right = reference == labels[None, :]
    evidence = {}
    for key, per_split in collected.models.items():
        predictions = np.stack([per_split[split][s] for s in seeds])
        mismatch = predictions != reference
        evidence[key] = {
            "accuracy": float((predictions == labels[None, :]).mean()),
            "mismatches": SeedEvidence(*count(mismatch)),
            "mismatches_ref_right": SeedEvidence(*count(mismatch & right)),
        }
    rows = []
    for key, measured in evidence.items():
        compressor, level, label = key
        row: dict[str, Any] = {
            "split": split,
            "compressor": compressor,
            "level": level,
            "loss": label,
            "seeds": len(seeds),
            "accuracy": measured["accuracy"],
        }
        baseline = evidence.get((compressor, level, BASELINE))
        for measure in ("mismatches", "mismatches_ref_right"):
            estimate = measured[measure].estimate()
            low, high = estimate.interval()
            low = max(0.0, low)  # a count: its interval is clipped at 0, as the reports' are
            row |= {measure: estimate.point, f"{measure}_low": low, f"{measure}_high": high}
            if baseline is not None and label != BASELINE:
                ratio = Ratio(baseline[measure], measured[measure])
                f_low, f_high = ratio.interval()
                row |= {
                    f"{measure}_factor": ratio.point,
                    f"{measure}_factor_low": f_low,
                    f"{measure}_factor_high": f_high,
                }
        final = collected.weights.get(key)
        row["final_weights"] = (
            " ".join(f"{name}={value:.2f}" for name, value in final.items()) if final else ""
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["order"] = frame["loss"].map({label: index for index, label in enumerate(order)})
    return frame.sort_values(["compressor", "level", "order"]).drop(columns="order")


def markdown(frame: pd.DataFrame) -> str:
    """The table as Markdown: intervals beside their points."""
    lines = [
        "| level | loss | accuracy | mismatches | vs ce | where reference right | vs ce |"
        + (" final SoftAdapt weights (seed 0) |" if frame.final_weights.any() else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if frame.final_weights.any() else ""),
    ]
    for row in frame.to_dict("records"):
        cells = [f"{row['compressor']} {row['level']:g}", row["loss"], f"{row['accuracy']:.4f}"]
        for measure in ("mismatches", "mismatches_ref_right"):
            cells.append(interval_text(row[measure], row[f"{measure}_low"], row[f"{measure}_high"]))
            factor = row.get(f"{measure}_factor")
            if row["loss"] == BASELINE or factor is None or pd.isna(factor):
                cells.append("–")
            else:
                cells.append(
                    interval_text(
                        factor, row[f"{measure}_factor_low"], row[f"{measure}_factor_high"], True
                    )
                )
        if frame.final_weights.any():
            cells.append(row["final_weights"])
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def choice(frame: pd.DataFrame, arms: list[Arm], criterion: str) -> list[str]:
    """Per loss of CHOSEN_LOSSES: the candidate with the fewest validation `criterion` summed
    over the levels, among those at least as accurate (mean over levels) as the configured one;
    ties: the other mismatch count, then accuracy, then the earlier candidate."""
    other = "mismatches_ref_right" if criterion == "mismatches" else "mismatches"
    totals = frame.groupby("loss", sort=False).agg(
        accuracy=("accuracy", "mean"), criterion=(criterion, "sum"), other=(other, "sum")
    )
    lines = []
    for loss in CHOSEN_LOSSES:
        mine = [arm for arm in arms if arm.loss == loss]
        if not mine:
            continue
        floor = totals.loc[mine[0].label, "accuracy"]
        eligible = totals.loc[[arm.label for arm in mine]]
        eligible = eligible[eligible.accuracy >= floor]
        best = eligible.sort_values(
            ["criterion", "other", "accuracy"], ascending=[True, True, False], kind="stable"
        ).index[0]
        arm = next(arm for arm in mine if arm.label == best)
        configured = totals.loc[mine[0].label]
        lines.append(
            f"{loss}: chose `{best}` ({criterion} {totals.loc[best, 'criterion']:.1f} summed over "
            f"the levels against {configured.criterion:.1f} configured; validation accuracy "
            f"{totals.loc[best, 'accuracy']:.4f} against {configured.accuracy:.4f}); "
            f"hyperparameters {arm.hyperparameters}"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("scout", "choose", "compare"))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--levels", type=float, nargs="+", default=None)
    parser.add_argument("--seeds", type=int, default=None, help="default: 3 for compare, else 1")
    parser.add_argument(
        "--softadapt",
        action="append",
        default=[],
        metavar="K=V",
        help="compare: align.label_preserving options of the SoftAdapt row, e.g. softadapt_beta=10",
    )
    parser.add_argument(
        "--criterion", choices=("mismatches", "mismatches_ref_right"), default="mismatches"
    )
    parser.add_argument("--out", default="reports/losses")
    args = parser.parse_args()
    command = "python bench/losses.py " + shlex.join(sys.argv[1:])
    started, load_before = time.monotonic(), os.getloadavg()
    try:
        params = load_params(args.params, BENCH_DEFAULTS + args.overrides)
        import yaml

        softadapt = {}
        for text in args.softadapt:
            key, sep, value = text.partition("=")
            if not sep:
                raise UserError(f"--softadapt {text!r}: expected KEY=VALUE, e.g. softadapt_beta=10")
            softadapt[key] = yaml.safe_load(value)
        levels = args.levels or ([0.8, 0.9, 0.95, 0.97, 0.98] if args.stage == "scout" else [])
        if not levels:
            raise UserError(f"{args.stage}: give the levels, e.g. --levels 0.95 0.97")
        seeds = args.seeds or (3 if args.stage == "compare" else 1)
        arms = stage_arms(args.stage, params, softadapt)
        runs = pipeline_runs(arms)
        for run in runs:  # every run's params valid before anything starts
            run_params(params, run, levels)
        from flows.cli import _check_data, _prepare_process, _server_ready

        _check_data(params)
    except (UserError, ValueError) as error:
        print(f"error: {error}".splitlines()[0], file=sys.stderr)
        return 2
    # the set-up of `compalign run`: Prefect's environment and API server, MLflow's store
    _prepare_process(params, flows=True)
    _server_ready(params.run.experiment)
    from flows.pipeline import run_pipeline

    collected = Collected()
    seed_list = list(range(seeds))
    for offset in seed_list:
        for number, run in enumerate(runs, start=1):
            settings = run_params(params, run, levels).training_seeds(offset)
            print(
                f"== seed {offset + 1}/{seeds}, run {number}/{len(runs)}: "
                + ", ".join(arm.label for arm in run),
                flush=True,
            )
            begun = time.monotonic()
            result = run_pipeline(settings)
            collected.seconds.append(time.monotonic() - begun)
            collect(result, run, offset, collected)
    splits = ["val"] if args.stage != "compare" else ["val", "test"]
    frames = [table(collected, seed_list, split, [arm.label for arm in arms]) for split in splits]
    elapsed = time.monotonic() - started
    data = params.data
    dataset = data.source if data.source != "imagefolder" else Path(data.root).name
    name = f"{args.stage}-{dataset}-{params.reference.model}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.concat(frames).to_csv(out / f"{name}.csv", index=False)
    text = [
        f"# {args.stage}: {dataset}, {params.reference.model}",
        "",
        f"`{command}`",
        "",
    ]
    for split, frame in zip(splits, frames, strict=True):
        text += [f"## {'validation' if split == 'val' else 'test'} split", "", markdown(frame), ""]
    if args.stage == "scout":
        ce = frames[0]
        enough = ce[ce.mismatches >= 30]
        text.append(
            "Levels where ce leaves >= 30 validation mismatches: "
            + (
                ", ".join(f"{row.compressor} {row.level:g}" for row in enough.itertuples())
                or "none"
            )
        )
    if args.stage == "choose":
        text += ["## chosen on the validation split", ""] + [
            f"- {line}" for line in choice(frames[0], arms, args.criterion)
        ]
    load_after = os.getloadavg()
    text += [
        "",
        f"{len(runs) * seeds} pipeline runs, {elapsed / 60:.1f} min wall "
        f"(runs: {', '.join(f'{s:.0f}s' for s in collected.seconds)}); load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; {os.cpu_count()} cores.",
    ]
    (out / f"{name}.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    print(f"\nwritten: {out / name}.md, {out / name}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
