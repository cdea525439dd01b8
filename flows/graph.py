"""The run graph: which stage calls a run makes, with which arguments, from the params.

The one description of what runs, read by every runner, so that they all make (and key) exactly
the same calls:
- `pipeline_steps`: `compalign run`'s flow (flows/pipeline.py, which submits each step once the
  steps it needs are done), the rerun check (flows/rerun.py, which computes every step's cache
  key without running anything), DVC's stage commands (flows/stages.py, each running the steps of
  its stage into fixed paths), `compalign reproduce`'s seeds (flows/reproduce.py) and the
  benchmark of what orchestration costs (bench/overhead.py, the same calls without the store);
- `population_steps`: `compalign populations` (flows/populations.py) and reproduce's Hooker
  populations;
- `search_steps` and `probe_steps`: `compalign search` (flows/search.py), the pipeline's own
  calls for each probe.

A step names its stage (tasks/__init__.py's table); its arguments are plain values or `Input`s,
the results of earlier steps (also inside a dict or list argument).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from compalign.config import Params
from compalign.costs import LatencyOptions
from compalign.losses import LOSSES
from flows.plan import (
    BASELINE_LOSS,
    ModelSpec,
    align_arguments,
    compress_arguments,
    compressed_id,
    compressed_labels,
    grid_by_compression,
    member_reference,
    model_grid,
    population_levels,
    population_losses,
    pruned_arguments,
    reference_labels,
    trains_from_scratch,
)
from tasks.pruned import pruned_seed


@dataclass(frozen=True)
class Input:
    """An argument that is another step's result (or one field of it)."""

    step: str
    field: str | None = None


@dataclass
class Step:
    """One task call: its stage (the task), the model it is about, its keyword arguments.
    `variant`: another task of the stage (tasks.infra.stage.Variant); `about`: what a runner
    reads of the step besides the call (a population member's group and seed)."""

    id: str
    stage: str
    model: str
    arguments: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None
    about: dict[str, Any] = field(default_factory=dict)

    @property
    def needs(self) -> list[str]:
        """The steps whose results this one takes."""
        return list(dict.fromkeys(source.step for source in inputs_of(self.arguments)))


def inputs_of(value: Any) -> list[Input]:
    """Every Input in `value`: an argument, or a dict or list of them."""
    if isinstance(value, Input):
        return [value]
    if isinstance(value, dict):
        return [source for item in value.values() for source in inputs_of(item)]
    if isinstance(value, list | tuple):
        return [source for item in value for source in inputs_of(item)]
    return []


def _resolved(value: Any, lookup: Callable[[Input], Any]) -> Any:
    if isinstance(value, Input):
        return lookup(value)
    if isinstance(value, dict):
        return {key: _resolved(item, lookup) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolved(item, lookup) for item in value]
    return value


def resolve(arguments: dict[str, Any], lookup: Callable[[Input], Any]) -> dict[str, Any]:
    """The arguments with every Input (also inside a dict or list) replaced by
    `lookup(input)`: a future, or a result."""
    return {name: _resolved(value, lookup) for name, value in arguments.items()}


def field_of(result: Any, source: Input) -> Any:
    """The part of a step's result that `source` takes: the whole, or one field (a key of a
    dict result, an index of a list result)."""
    return result if source.field is None else result[source.field]


def at_once(steps: list[Step]) -> dict[str, int]:
    """For each step, the most steps that can be running while it runs, itself included: 1 +
    the steps that neither need it nor are needed by it, directly or through others (a step
    runs only once every step it needs is done). 1 for a step that always runs alone."""
    ids = {step.id for step in steps}
    needs = {step.id: [need for need in step.needs if need in ids] for step in steps}
    before: dict[str, set[str]] = {}  # every step that must finish before each one starts

    def ancestors(step_id: str) -> set[str]:
        if step_id not in before:
            found: set[str] = set()
            for need in needs[step_id]:
                found |= {need} | ancestors(need)
            before[step_id] = found
        return before[step_id]

    for step in steps:  # in submission order: a step's inputs come before it
        ancestors(step.id)
    after: dict[str, set[str]] = {step.id: set() for step in steps}
    for step_id, found in before.items():
        for ancestor in found:
            after[ancestor].add(step_id)
    return {step.id: len(ids) - len(before[step.id]) - len(after[step.id]) for step in steps}


def pipeline_steps(
    settings: Params, device: str, track: dict[str, Any], parent: str | None
) -> list[Step]:
    """Every task of a pipeline run, in submission order: prepare, reference, its audit, then per
    compression the compress, align and audit tasks (the `ce` audit first: the others' reduction
    factors need it), every audited model's predictions, then the costs of every model (run
    last, one at a time)."""
    audit = settings.audit.model_dump()
    steps = [
        _prepare_step(settings),
        _reference_step(settings, device),
        _audit_step("reference", Input("reference"), None, reference_labels(settings)),
    ]
    compressed: set[str] = set()
    models = {"reference": Input("reference")}
    for specs in grid_by_compression(settings):
        baseline = None
        for spec in specs:  # `ce` first
            name = compressed_id(settings, spec)
            if name not in compressed:  # one compress task per compress output
                steps.append(_compress_step(settings, spec, f"compress:{name}", name))
                compressed.add(name)
            model = Input(f"compress:{name}")
            if spec.fine_tuned:
                steps.append(_align_step(settings, spec, model, device, f"align:{spec.name}"))
                model = Input(f"align:{spec.name}")
            labels = compressed_labels(settings, spec)
            step = _audit_step(spec.name, model, Input("audit:reference"), labels, baseline)
            steps.append(step)
            if spec.loss == BASELINE_LOSS:
                baseline = Input(step.id)
            models[spec.name] = model
    names = ["reference"] + [spec.name for spec in model_grid(settings)]
    audits = {name: Input(f"audit:{name}") for name in names}
    steps.append(Step("predictions", "predictions", "", {"audits": audits}))
    for name in names:
        steps.append(_costs_step(name, models[name], audit, f"audit:{name}"))
    return _common_arguments(steps, audit, device, track, parent)


def audited_models(steps: list[Step]) -> list[str]:
    """The models a run audits, in its summary's order (the reference, then the grid's): the
    order of their costs steps."""
    return [step.model for step in steps if step.stage == "costs"]


def population_steps(settings: Params, device: str) -> list[Step]:
    """Every task of a populations run, in submission order: prepare; the dense members (one
    batched task when `populations.vectorise`, else one per seed); per level and seed, each
    loss's compressed member (trained from scratch with the compressor inside its run, or
    compressed from dense member k and fine-tuned: `populations.protocol`); then every member's
    predictions on the test split. Each predict step's `about` names its population: `group`
    None for the dense one, (level, loss) for a compressed one, and the member's `seed`."""
    population = settings.populations
    steps = [_prepare_step(settings)]
    references: dict[int, Input] = {}
    if population.vectorise:  # one task trains every dense member as one batched model
        arguments = {
            "data": Input("prepare"),
            "reference": settings.reference.stage_params(settings.data),
            "seeds": list(population.seeds),
            "device": device,
        }
        steps.append(
            Step("reference:population", "reference", "population", arguments, "population")
        )
        references = {
            seed: Input("reference:population", index)
            for index, seed in enumerate(population.seeds)
        }
    members: list[tuple[str, tuple[float | None, str] | None, int, Input]] = []
    for seed in population.seeds:
        if not population.vectorise:
            arguments = {
                "data": Input("prepare"),
                "reference": member_reference(settings, seed),
                "device": device,
            }
            steps.append(Step(f"reference:seed{seed}", "reference", f"seed {seed}", arguments))
            references[seed] = Input(steps[-1].id)
        members.append((f"dense {seed}", None, seed, references[seed]))
    from_scratch = trains_from_scratch(settings)
    for level in population_levels(settings):
        for seed in population.seeds:
            compressed: set[str] = set()
            for loss in population_losses(settings):
                if from_scratch:
                    label = f"{level:g}-{loss} seed {seed}"
                    arguments = {
                        "data": Input("prepare"),
                        "reference": member_reference(settings, pruned_seed(seed, level)),
                        **pruned_arguments(settings, level, loss),
                        "teacher": references[seed] if LOSSES[loss].uses_reference else None,
                        "device": device,
                    }
                    steps.append(Step(f"pruned:{label}", "pruned", label, arguments))
                    members.append((label, (level, loss), seed, Input(steps[-1].id)))
                    continue
                spec = ModelSpec(population.compressor, level, loss)
                name = compressed_id(settings, spec)
                model = Input(f"compress:{name}:seed{seed}")
                if name not in compressed:
                    compress = _compress_step(settings, spec, model.step, f"{name} seed {seed}")
                    compress.arguments["reference"] = references[seed]
                    steps.append(compress)
                    compressed.add(name)
                if spec.fine_tuned:
                    align = _align_step(
                        settings, spec, model, device, f"align:{spec.name}:seed{seed}"
                    )
                    align.model = f"{spec.name} seed {seed}"
                    align.arguments["reference"] = references[seed]
                    steps.append(align)
                    model = Input(align.id)
                members.append((f"{spec.name} seed {seed}", (level, loss), seed, model))
    for label, group, seed, model in members:
        arguments = {
            "data": Input("prepare"),
            "model": model,
            "batch_size": settings.audit.batch_size,
            "device": device,
        }
        about = {"group": group, "seed": seed}
        steps.append(Step(f"predict:{label}", "predict", label, arguments, about=about))
    return steps


def probe_steps(
    settings: Params,
    spec: ModelSpec,
    device: str,
    track: dict[str, Any],
    parent: str | None,
    name: str,
    split: str,
) -> list[Step]:
    """The tasks of one model of `compalign search` (a probe): compress, align (unless the
    loss is `none`), its audit on `split` against the reference's audit on the same split
    (step `audit:reference@<split>`, or `audit:reference` for the test split) and its costs.
    Their ids end in `@name`; they take the steps of `search_steps` as inputs. The same task
    calls as the pipeline's, so a model the pipeline made is a cache hit here."""
    audit = settings.audit.model_dump()
    compressed = compressed_id(settings, spec)
    steps = [_compress_step(settings, spec, f"compress@{name}", compressed)]
    model = Input(steps[-1].id)
    if spec.fine_tuned:
        steps.append(_align_step(settings, spec, model, device, f"align@{name}"))
        model = Input(steps[-1].id)
    labels = {**compressed_labels(settings, spec), "name": name}
    reference = "audit:reference" if split == "test" else f"audit:reference@{split}"
    if split != "test":
        labels["split"] = split
    audit_step = _audit_step(name, model, Input(reference), labels)
    audit_step.id = f"audit@{name}"
    audit_step.arguments["split"] = split
    steps.append(audit_step)
    steps.append(_costs_step(name, model, audit, audit_step.id))
    steps[-1].id = f"costs@{name}"
    return _common_arguments(steps, audit, device, track, parent)


def search_steps(
    settings: Params, device: str, track: dict[str, Any], parent: str | None, split: str
) -> list[Step]:
    """What every probe of `compalign search` takes: the prepared data, the reference, its
    audit on the test split (as the pipeline's) and on `split`, and its costs."""
    audit = settings.audit.model_dump()
    steps = [
        _prepare_step(settings),
        _reference_step(settings, device),
        _audit_step("reference", Input("reference"), None, reference_labels(settings)),
        _costs_step("reference", Input("reference"), audit, "audit:reference"),
    ]
    if split != "test":
        labels = {**reference_labels(settings), "name": f"reference@{split}", "split": split}
        step = _audit_step(labels["name"], Input("reference"), None, labels)
        step.arguments["split"] = split
        steps.insert(3, step)
    return _common_arguments(steps, audit, device, track, parent)


def _prepare_step(settings: Params) -> Step:
    return Step("prepare", "prepare", "", {"data": settings.data.prepare_params()})


def _reference_step(settings: Params, device: str) -> Step:
    arguments = {
        "data": Input("prepare"),
        "reference": settings.reference.stage_params(settings.data),
        "device": device,
    }
    return Step("reference", "reference", "", arguments)


def _compress_step(settings: Params, spec: ModelSpec, step_id: str, name: str) -> Step:
    needs_data, arguments = compress_arguments(settings, spec)
    arguments = {
        "data": Input("prepare") if needs_data else None,
        "reference": Input("reference"),
        **arguments,
    }
    return Step(step_id, "compress", name, arguments)


def _align_step(settings: Params, spec: ModelSpec, model: Input, device: str, step_id: str) -> Step:
    arguments = {
        "data": Input("prepare"),
        "reference": Input("reference"),
        "compressed": model,
        **align_arguments(settings, spec, device),
    }
    return Step(step_id, "align", spec.name, arguments)


def _costs_step(name: str, model: Input, audit: dict[str, Any], audit_step: str) -> Step:
    arguments = {
        "data": Input("prepare"),
        "model": model,
        "latency": {key: audit[key] for key in LatencyOptions.model_fields},
        "name": name,
        "run_id": Input(audit_step, "run_id"),
    }
    return Step(f"costs:{name}", "costs", name, arguments)


def _common_arguments(
    steps: list[Step], audit: dict[str, Any], device: str, track: dict[str, Any], parent: str | None
) -> list[Step]:
    """Where results are logged (only the tracking store enters the keys)."""
    for step in steps:
        step.arguments["out_dir"] = None  # every argument given: Prefect's parameters are these
        if step.stage == "audit":
            step.arguments.update(audit=audit, device=device, parent_run_id=parent)
        if step.stage in ("audit", "costs"):
            step.arguments["tracking"] = track
    return steps


def _audit_step(
    name: str,
    model: Input,
    reference_audit: Input | None,
    labels: dict[str, str],
    baseline: Input | None = None,
) -> Step:
    arguments = {
        "data": Input("prepare"),
        "model": model,
        "reference_audit": reference_audit,
        "labels": labels,
        "baseline_audit": baseline,
        "split": "test",  # in a key only when it is not "test" (tasks.infra.store.ONLY_WHEN)
    }
    return Step(f"audit:{name}", "audit", name, arguments)
