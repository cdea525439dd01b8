"""`gradual_magnitude`: gradual magnitude pruning of Zhu & Gupta (2017, "To prune, or not to
prune", eq. 1), as Hooker et al. (arXiv 1911.05248) use it: per-layer thresholds, a cubic
schedule, masks updated every `frequency` steps, every conv (first conv and shortcuts included)
pruned and the final linear classifier never (their `final_dense` is a plain dense layer).

Two ways to run the schedule: while a model trains from scratch (`train_pruned`, Hooker et al.'s
protocol: the populations flow's `protocol: from_scratch`), or while a trained reference is
fine-tuned (`fine_tune_gradually`, the pipeline and `protocol: from_dense`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import prune

from compalign.compressors.base import Compressor, Family, FineTuneJob
from compalign.losses import LOSSES, LossFn
from compalign.options import Options
from compalign.pruning import prunable_parameters
from compalign.train import EpochCallback, TrainConfig, fit, total_steps

if TYPE_CHECKING:
    from compalign.data import Split

# Hooker et al.'s schedule as fractions of their 32,000 training steps
# (save_checkpoint/imagenet_train_eval.py: sparsity_begin_step 5000, sparsity_end_step 8000,
# pruning_frequency 500, num_train_steps 32000; initial_sparsity 0 in main()).
HOOKER_SCHEDULE = {"start": 5000 / 32000, "end": 8000 / 32000, "frequency": 500 / 32000}


class GradualOptions(Options):
    """The schedule in optimisation steps. Null: derived from the run's length; fine-tuning a
    reference prunes from step 0 to 60% of the steps with 10 mask updates, training from scratch
    follows Hooker et al.'s flags scaled to the run (`HOOKER_SCHEDULE`)."""

    initial_sparsity: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """the sparsity the schedule starts from"""
    start_step: Annotated[int, Field(ge=0)] | None = None
    """schedule in steps; null: fine-tuning prunes from 0 to 60% of its steps (10 updates),
    training from scratch at Hooker et al.'s 5/32..8/32, every 1/64"""
    end_step: Annotated[int, Field(ge=1)] | None = None
    """the step the final sparsity is reached at (null: see start_step)"""
    frequency: Annotated[int, Field(ge=1)] | None = None
    """steps between mask updates (null: see start_step)"""


def gradual_sparsity(
    step: int, initial: float, final: float, start_step: int, end_step: int, frequency: int
) -> float:
    """Zhu & Gupta (2017) cubic schedule: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 for t in
    [t0, t0 + n dt], where t0 + n dt = end_step; s_i before t0, s_f after. Masks change every
    `frequency` (dt) steps, so t is rounded down to the last update step."""
    if step < start_step:
        return initial
    if step >= end_step:
        return final
    updated = start_step + ((step - start_step) // frequency) * frequency
    progress = (updated - start_step) / (end_step - start_step)
    return final + (initial - final) * (1.0 - progress) ** 3


def prune_layers_to(model: nn.Module, sparsity: float) -> None:
    """Set every layer's mask so its `sparsity` fraction of smallest *effective* weights is zero
    (per-layer thresholds, as Hooker et al.'s gradual pruning). Weights already masked have
    magnitude zero and stay pruned, so sparsity only grows."""
    for module, name in prunable_parameters(model, include_classifier=False):
        if not hasattr(module, f"{name}_mask"):
            prune.identity(module, name)
        mask = getattr(module, f"{name}_mask")
        effective = (getattr(module, f"{name}_orig") * mask).detach().abs().flatten()
        count = int(round(sparsity * effective.numel()))
        new_mask = torch.ones_like(effective)
        if count:
            new_mask[torch.argsort(effective, stable=True)[:count]] = 0.0
        mask.copy_(new_mask.view_as(mask))
        with torch.no_grad():  # what prune's forward pre-hook sets, so the weight reads right now
            setattr(module, name, getattr(module, f"{name}_orig") * mask)


@dataclass
class GradualSchedule:
    """The gradual-pruning schedule of one fine-tuning run; `update(step, model)` is a
    `fit` step callback that re-prunes every layer at each update step."""

    initial: float
    final: float
    start_step: int
    end_step: int
    frequency: int
    history: list[tuple[int, float]] = field(default_factory=list)

    @classmethod
    def for_run(cls, final: float, options: GradualOptions, total_steps: int) -> GradualSchedule:
        """Defaults: prune from step 0 to 60% of the run, 10 mask updates (Hooker et al. prune
        from 5k to 8k of their steps, every 500)."""
        start = options.start_step or 0
        end = options.end_step or max(start + 1, int(0.6 * total_steps))
        frequency = options.frequency or max(1, (end - start) // 10)
        return cls(options.initial_sparsity, final, start, end, frequency)

    @classmethod
    def for_training(
        cls, final: float, options: GradualOptions, total_steps: int
    ) -> GradualSchedule:
        """Training from scratch: Hooker et al.'s begin, end and frequency as the same fractions
        of this run's steps (`HOOKER_SCHEDULE`), unless the options set them in steps."""
        start = options.start_step
        if start is None:
            start = round(HOOKER_SCHEDULE["start"] * total_steps)
        end = options.end_step or max(start + 1, round(HOOKER_SCHEDULE["end"] * total_steps))
        frequency = options.frequency or max(1, round(HOOKER_SCHEDULE["frequency"] * total_steps))
        return cls(options.initial_sparsity, final, start, end, frequency)

    def update(self, step: int, model: nn.Module) -> None:
        if step < self.start_step or step > self.end_step:
            return
        if (step - self.start_step) % self.frequency and step != self.end_step:
            return
        sparsity = gradual_sparsity(
            step, self.initial, self.final, self.start_step, self.end_step, self.frequency
        )
        prune_layers_to(model, sparsity)
        self.history.append((step, sparsity))


def gradual_magnitude(model: nn.Module, sparsity: float, options, calibration) -> nn.Module:
    """Without fine-tuning, gradual pruning has no steps to spread over: the model pruned to the
    final sparsity at once, layer by layer (the schedule runs while it fine-tunes: fine_tune_gradually)."""
    prune_layers_to(model, sparsity)
    return model


def fine_tune_gradually(job: FineTuneJob) -> nn.Module:
    """Fine-tune from the reference while the cubic schedule prunes it to the final level."""
    model = job.fresh_reference()
    schedule = GradualSchedule.for_run(
        job.level, job.options, total_steps(len(job.train), job.config)
    )
    prune_layers_to(model, schedule.initial)  # registers the masks the schedule updates
    job.fit(model, on_step=schedule.update)
    prune_layers_to(model, job.level)  # the final sparsity, however short the run was
    return model


def train_pruned(
    model: nn.Module,
    train: Split,
    config: TrainConfig,
    level: float,
    options: GradualOptions | dict | None = None,
    loss_fn: LossFn | None = None,
    reference: nn.Module | None = None,
    device: torch.device | str = "cpu",
    on_epoch: EpochCallback | None = None,
) -> nn.Module:
    """Train a freshly initialised `model` (cross-entropy unless `loss_fn`, against the frozen
    `reference` if given) while the cubic schedule prunes it to `level`: Hooker et al.'s pruning
    inside each population member's own training run, masks frozen after the end step, with
    `GradualSchedule.for_training`'s steps."""
    options = GradualOptions.model_validate(dict(options or {}))
    schedule = GradualSchedule.for_training(level, options, total_steps(len(train), config))
    prune_layers_to(model, schedule.initial)  # registers the masks the schedule updates
    fit(
        model,
        train,
        config,
        loss_fn or LOSSES["ce"](),
        reference,
        device,
        on_epoch,
        on_step=schedule.update,
    )
    if not schedule.history or schedule.history[-1][1] != level:
        prune_layers_to(model, level)  # a run shorter than the end step still ends at the level
    return model


GRADUAL = Family("gradual", fine_tune_gradually, train_pruned=train_pruned)
ENTRY = Compressor(gradual_magnitude, GRADUAL, GradualOptions)
