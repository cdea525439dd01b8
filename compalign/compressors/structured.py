"""`structured`: channel pruning to a MAC budget, with physical removal (torch-pruning).

Meyer & Wong (arXiv 2211.10285) prune filters until a target fraction of FLOPs is removed, with
Taylor importance computed from their alignment loss. Here the fraction is of the multiply-
accumulates that torch-pruning's op counter reports for one forward pass (convolutions dominate
it; batch norm, activations, pooling and the classifier are counted too).

torch-pruning's pruners take a *channel* ratio, not a MAC budget, and MACs removed are a step
function of that ratio. `prune_structured` therefore searches: a bisection over the ratios at
which some group changes size, then, for local pruning, a per-group refinement between the two
neighbouring steps (each group either keeps the lower step's channels or loses one more), so that
the budget is met even where one uniform step jumps past the tolerance.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from compalign.compressors.base import STRUCTURED, Calibration, Compressor
from compalign.errors import UserError
from compalign.options import Options
from compalign.pruning import classifier_name, count_macs, folded_copy


class StructuredOptions(Options):
    """Channel pruning with physical removal; `compress.sparsities` are fractions of MACs removed."""

    importance: Literal["l1", "taylor"] = "l1"
    """l1 | taylor (first-order, with each alignment loss, Meyer & Wong)"""
    global_pruning: bool = False
    """rank channels across layers instead of within each layer"""
    # channel counts in multiples of this (faster CPU kernels; implies global thresholds)
    round_to: Annotated[int, Field(ge=2, le=64)] | None = None
    """e.g. 8: channel counts in multiples of 8, faster on CPUs (global thresholds)"""


# No group loses more than this fraction of its channels (and every group keeps at least one):
# a layer with no channels left would cut the network in two.
MAX_PRUNING_RATIO = 0.9

GradientFn = Callable[[nn.Module], None]


# --------------------------------------------------------------------------------------------
# Structured pruning


class _KeepTopChannels:
    """Wraps a group importance so that each group's most important channels are never pruned.

    Needed for global pruning: torch-pruning 1.6.1 does not enforce `max_pruning_ratio` within a
    single global step, and a group whose every channel falls under the global threshold is
    silently left *unpruned* (DependencyGraph.check_pruning_group), which would make MACs removed
    non-monotonic in the ratio.
    """

    def __init__(self, base: Callable, keep_fraction: float) -> None:
        self.base = base
        self.keep_fraction = keep_fraction

    def __call__(self, group) -> torch.Tensor | None:
        imp = self.base(group)
        if imp is None:
            return None
        keep = min(len(imp), max(1, math.ceil(len(imp) * self.keep_fraction)))
        imp = imp.clone()
        imp[torch.topk(imp, keep).indices] = math.inf
        return imp


def _make_importance(importance: str, global_pruning: bool):
    import torch_pruning as tp  # here, not at import: it imports torchvision and timm (seconds)

    if importance == "l1":
        base = tp.importance.GroupMagnitudeImportance(p=1)
    elif importance == "taylor":
        base = tp.importance.GroupTaylorImportance()
    else:
        raise ValueError(f"importance must be 'l1' or 'taylor', got {importance!r}")
    return _KeepTopChannels(base, 1.0 - MAX_PRUNING_RATIO) if global_pruning else base


def _last_linear_name(model: nn.Module) -> str:
    try:
        return classifier_name(model)
    except ValueError:
        raise ValueError(
            "structured pruning needs a final nn.Linear classifier to keep intact"
        ) from None


def _channels(module: nn.Module) -> int:
    """Output channels (or features) of a group's root layer."""
    return getattr(module, "out_channels", getattr(module, "out_features", 0))


def _pruned_count(channels: int, ratio: float) -> int:
    """Channels torch-pruning removes from a scope of `channels` at `ratio` (BasePruner._prune)."""
    return channels - int(channels * (1 - ratio))


def _step_ratios(sizes: list[int], ratio_max: float) -> list[float]:
    """0, then one ratio strictly inside each interval on which every scope's pruned count,
    ceil(n * r), is constant.

    Breakpoints are k / n for each scope size n; midpoints avoid float round-off at the
    breakpoints themselves. Only the ratio 0 prunes nothing: any r > 0 removes a channel.
    """
    points = {0.0, ratio_max}
    for n in set(sizes):
        points.update(k / n for k in range(1, n + 1) if k / n < ratio_max)
    ordered = sorted(points)
    return [0.0] + [(a + b) / 2 for a, b in zip(ordered, ordered[1:], strict=False)]


class _Search:
    """Builds pruned trial copies of one dense model and measures the MAC fraction they remove."""

    def __init__(
        self,
        dense: nn.Module,
        example_inputs: torch.Tensor,
        importance: Callable,
        grads: dict[str, torch.Tensor] | None,
        global_pruning: bool,
        round_to: int | None = None,
    ) -> None:
        self.dense = dense
        self.round_to = round_to
        self.example_inputs = example_inputs
        self.importance = importance
        self.grads = grads
        self.global_pruning = global_pruning
        self.ignored_name = _last_linear_name(dense)
        self.dense_macs = count_macs(dense, example_inputs)

    def pruner(self, model: nn.Module, ratio: float, overrides: dict[str, float]):
        import torch_pruning as tp

        modules = dict(model.named_modules())
        return tp.pruner.BasePruner(
            model,
            self.example_inputs,
            importance=self.importance,
            global_pruning=self.global_pruning,
            pruning_ratio=ratio,
            pruning_ratio_dict={modules[name]: r for name, r in overrides.items()} or None,
            max_pruning_ratio=MAX_PRUNING_RATIO,
            ignored_layers=[modules[self.ignored_name]],
            round_to=self.round_to,
        )

    def groups(self) -> tuple[list[tuple[str, int]], int]:
        """(root module name, channels) of every prunable group in torch-pruning's order, and the
        total channel count that global pruning's ratio refers to."""
        probe = copy.deepcopy(self.dense)
        pruner = self.pruner(probe, 0.0, {})
        names = {module: name for name, module in probe.named_modules()}
        groups = []
        for group in pruner.DG.get_all_groups(
            ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
        ):
            root = group[0][0].target.module
            groups.append((names[root], pruner.DG.get_out_channels(root)))
        return groups, pruner.initial_total_channels

    def trial(
        self, ratio: float, overrides: dict[str, float] | None = None
    ) -> tuple[nn.Module, float]:
        model = copy.deepcopy(self.dense)
        if self.grads is not None:
            for name, param in model.named_parameters():
                param.grad = self.grads[name]
        self.pruner(model, ratio, overrides or {}).step()
        removed = 1.0 - count_macs(model, self.example_inputs) / self.dense_macs
        return model, removed


def _gradients(dense: nn.Module, gradient_fn: GradientFn) -> dict[str, torch.Tensor]:
    """Run `gradient_fn` once on a scratch copy and keep only the gradients it leaves.

    Once, not per trial: every trial starts from the same dense weights, so one set of gradients
    serves them all, costs one pass of the caller's loss, and keeps the ranking identical across
    trials even when gradient_fn draws fresh batches (the bisection relies on that). A scratch
    copy, so that batch-norm statistics updated by a train-mode forward do not leak into the result.
    """
    scratch = copy.deepcopy(dense)
    scratch.zero_grad(set_to_none=True)
    gradient_fn(scratch)
    grads = {}
    missing = []
    for name, param in scratch.named_parameters():
        if param.grad is None:
            missing.append(name)
        else:
            grads[name] = param.grad.detach().clone()
    if missing:
        raise ValueError(
            f"gradient_fn left no gradient on {len(missing)} parameter(s), e.g. {missing[:3]}; "
            "Taylor importance needs gradients of every parameter"
        )
    return grads


def _finish(result: nn.Module, dense: nn.Module) -> nn.Module:
    """Give the pruned copy the dense model's train/eval modes and requires_grad flags, no grads.

    torch-pruning's tracing switches the model to eval mode, and pruned parameters are recreated
    as fresh nn.Parameters (requires_grad=True) carrying pruned copies of the trial's gradients.
    """
    modes = {name: module.training for name, module in dense.named_modules()}
    for name, module in result.named_modules():
        module.training = modes.get(name, module.training)
    flags = {name: param.requires_grad for name, param in dense.named_parameters()}
    for name, param in result.named_parameters():
        param.grad = None
        param.requires_grad_(flags.get(name, True))
    return result


def prune_structured(
    model: nn.Module,
    flops_fraction: float,
    example_inputs: torch.Tensor,
    importance: str = "l1",
    gradient_fn: GradientFn | None = None,
    global_pruning: bool = False,
    tolerance: float = 0.01,
    round_to: int | None = None,
) -> tuple[nn.Module, float]:
    """Channel pruning with physical removal (torch-pruning) until `flops_fraction` of the MACs
    are removed, within `tolerance`; returns (new smaller model, fraction removed).

    `importance` is "l1" (GroupMagnitudeImportance, p=1) or "taylor" (GroupTaylorImportance,
    Molchanov et al. 2019; Meyer & Wong score with their alignment loss). For Taylor,
    `gradient_fn(m)` must fill `.grad` of every parameter of `m` (run the loss on a few batches,
    call backward); it is called once, on a scratch copy whose gradients every trial reuses. The
    last nn.Linear is never pruned, so the output size is kept. No group loses more than
    MAX_PRUNING_RATIO of its channels. The input model is not modified. Raises ValueError if the
    target cannot be reached within the tolerance, naming the closest fraction reached.

    `round_to` keeps every pruned layer's channel count a multiple of it (torch-pruning's
    option): CPU convolution kernels vectorise over channels, and on a 2-core x86 machine a
    ResNet-56 pruned to multiples of 8 ran at ~0.6x the reference's batch-64 latency where the
    same MACs in odd widths (11/22/45 channels) ran at ~0.77x (bench/compression_costs.py).
    With rounding the thresholds are global: a uniform ratio moves every group of one width in
    the same coarse step, which misses the tolerance on ResNets.
    """
    if round_to:
        global_pruning = True
    if not 0.0 < flops_fraction < 1.0:
        raise ValueError(f"flops_fraction must be in (0, 1), got {flops_fraction}")
    if tolerance <= 0:
        raise ValueError(f"tolerance must be positive, got {tolerance}")
    scorer = _make_importance(importance, global_pruning)
    if importance == "taylor" and gradient_fn is None:
        raise ValueError("Taylor importance needs a gradient_fn that fills the model's gradients")

    # A plain copy (prune masks folded in, no stale gradients) that every trial deep-copies.
    dense = folded_copy(model)
    dense.zero_grad(set_to_none=True)
    grads = _gradients(dense, gradient_fn) if importance == "taylor" else None
    search = _Search(dense, example_inputs, scorer, grads, global_pruning, round_to)

    groups, total = search.groups()
    sizes = [n for _, n in groups]
    if round_to:
        # rounding makes the pruned counts step at points no closed form lists: a fine grid
        limit = min([MAX_PRUNING_RATIO] + [1 - 1 / n for n in sizes])
        ratios = [0.0] + [limit * k / 200 for k in range(1, 201)]
    elif global_pruning:
        # One global scope; _KeepTopChannels shields ceil(10%) of each group, so the ratio must
        # stay below the share of channels that can be pruned at all (else the threshold is inf).
        prunable = sum(n - max(1, math.ceil(n * (1 - MAX_PRUNING_RATIO))) for n in sizes)
        ratios = _step_ratios([total], min(MAX_PRUNING_RATIO, prunable / total))
    else:
        # Every group keeps at least one channel: int(n * (1 - r)) >= 1.
        ratios = _step_ratios(sizes, min([MAX_PRUNING_RATIO] + [1 - 1 / n for n in sizes]))

    reached: list[float] = []

    def evaluate(ratio: float, overrides: dict[str, float] | None = None):
        pruned, removed = search.trial(ratio, overrides)
        reached.append(removed)
        return pruned, removed

    def within(removed: float) -> bool:
        return abs(removed - flops_fraction) <= tolerance

    def fail() -> ValueError:
        closest = min(reached, key=lambda value: abs(value - flops_fraction))
        return ValueError(
            f"cannot remove {flops_fraction:.4f} of the MACs within {tolerance}: the closest "
            f"reached was {closest:.4f} (most reachable {max(reached):.4f}, with at most "
            f"{MAX_PRUNING_RATIO:.0%} of any group's channels removed)"
        )

    if round_to and global_pruning:
        # global thresholds with rounding are not monotonic in the ratio: scan the grid
        for ratio in ratios[1:]:
            pruned, removed = evaluate(ratio)
            if within(removed):
                return _finish(pruned, dense), removed
        raise fail()

    # Bisection over the step ratios; MACs removed never decrease along `ratios`.
    pruned, removed = evaluate(ratios[-1])
    if within(removed):
        return _finish(pruned, dense), removed
    if removed < flops_fraction:
        raise fail()
    lo, hi = 0, len(ratios) - 1  # invariant: removed(lo) below the window, removed(hi) above
    lo_removed = 0.0  # ratios[0] = 0 prunes nothing
    while hi - lo > 1:
        mid = (lo + hi) // 2
        pruned, removed = evaluate(ratios[mid])
        if within(removed):
            return _finish(pruned, dense), removed
        if removed < flops_fraction:
            lo, lo_removed = mid, removed
        else:
            hi = mid
    if global_pruning:
        raise fail()

    # Local pruning: the uniform step from ratios[lo] to ratios[hi] jumps over the window. Each
    # group either stays at the lower step or loses its one extra channel; measure each group's
    # own jump, then add groups, largest jump first, while the total stays under the window's top.
    r_lo, r_hi = ratios[lo], ratios[hi]
    if round_to:  # which groups narrow between the two steps, read off the trial models
        below, above = (dict(search.trial(r)[0].named_modules()) for r in (r_lo, r_hi))
        steppers = [name for name, _ in groups if _channels(above[name]) < _channels(below[name])]
    else:
        steppers = [name for name, n in groups if _pruned_count(n, r_hi) > _pruned_count(n, r_lo)]
    jumps = []
    for name in steppers:
        pruned, removed = evaluate(r_lo, {name: r_hi})
        if within(removed):
            return _finish(pruned, dense), removed
        if removed > lo_removed:
            jumps.append((removed - lo_removed, name))
    jumps.sort(key=lambda item: -item[0])  # stable: ties keep torch-pruning's group order
    chosen: dict[str, float] = {}
    current = lo_removed
    for jump, name in jumps:
        if current + jump > flops_fraction + tolerance:
            continue
        pruned, removed = evaluate(r_lo, {**chosen, name: r_hi})
        if removed <= flops_fraction + tolerance:
            chosen[name] = r_hi
            current = removed
            if within(removed):
                return _finish(pruned, dense), removed
    raise fail()


def structured(
    model: nn.Module, flops_fraction: float, options: StructuredOptions, calibration: Calibration
) -> nn.Module:
    """Channel pruning with physical removal (torch-pruning), `flops_fraction` of the MACs removed;
    importance "l1" or "taylor" (first-order, gradients of the alignment loss, Meyer & Wong)."""
    importance = options.importance
    try:
        pruned, _ = prune_structured(
            model,
            flops_fraction,
            calibration.example if calibration else torch.zeros(1, 3, 32, 32),
            importance=importance,
            gradient_fn=calibration.gradient_fn if importance == "taylor" and calibration else None,
            global_pruning=options.global_pruning,
            round_to=options.round_to,
        )
    except ValueError as error:
        raise UserError(
            f"compress.structured at {flops_fraction:g}: {error}; choose another level"
            + (" or a smaller compress.structured.round_to" if options.round_to else "")
        ) from error
    return pruned


ENTRY = Compressor(
    structured,
    STRUCTURED,
    StructuredOptions,
    level_kind="flops_removed",
    needs_calibration=True,
    ranks_with_loss=lambda options: options.importance == "taylor",
)
