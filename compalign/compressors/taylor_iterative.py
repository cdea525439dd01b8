"""`taylor_iterative`: Meyer & Wong's iterative Taylor filter pruning (arXiv 2211.10285), as their
code runs it (robbiemeyer/pw_loss_pruning, prune/pruner.py `TaylorPrune.prune`).

The model takes plain SGD steps at `lr` on the alignment loss it will be fine-tuned with (targets
and weights from the frozen reference, never from the model being pruned); on every
(`batches_between_prunes` + 1)-th batch the `per_step` filters with the lowest Taylor score,
ranked globally across every convolution, are masked, until the convolutions' FLOPs
(in x out x H x W x k^2 per conv) are at most (1 - level) of the reference's. A convolution keeps
at least one filter. Because the model drifts from the reference while it trains, the gradient
of the performance-weighted loss is informative (at the reference itself it is zero for every
example the reference gets right).

Levels are chained, as the authors chain them through a checkpoint (`scripts/prune.py`,
`tay_ckpt_name`): one seeded trajectory from the reference, whose state when it first reaches
0.3 is the 0.3 model and which continues from there to 0.5. The trajectory does not depend on
the levels asked for, so a run asked for 0.5 alone replays it through the very same 0.3 state
(no cache of the previous level is needed, at the price of recomputing it). One difference:
their next run reloads the checkpoint with a fresh data loader and batch count, whereas the
trajectory here keeps its pass over the data and its pruning rhythm across a level.

FLOP count (the stopping rule). Per convolution, live input channels x kept filters x H_out x
W_out x k^2, where an input channel is live while any unmasked filter still feeds it. Theirs
(prune/utils.py `PrunableConv2d.register_flops`, `get_flops`) takes as input count the kept
filters of the previous convolution in module order. On a plain conv stack (small_cnn, VGG) the
two are the same number. On a ResNet we differ, on purpose. Their loop that resets the input
count at a residual block (`isinstance(module, (BasicBlock, MBConv))`) sets `modules[i]`, `i`
left over from the loop before: on their CIFAR ResNet it resets only the model's last
convolution, on torchvision's ResNet-18 (their CelebA model, our meyer-paper profile's; not their
BasicBlock class) nothing. Their count thus treats a residual channel as gone for the next block
as soon as the previous block's conv2 masks it, although the shortcut still feeds it, and credits
torchvision's 1x1 downsample convolution with the flags of its block's conv2 (128 filters) though
it reads 64 channels. Counting live inputs is what the reset appears meant for and holds for any
model. It makes a ResNet level take more masking than theirs: a ResNet-20 on random 32x32
images, pruned with `ce` to 0.4 (4 filters a step), keeps 0.5945 of the conv FLOPs by our count
and 0.5633 by their module-order count on the same masks.

Saved model. The masked filters are removed physically (torch-pruning, like their `true_prune`):
a channel goes when nothing feeds it any more. A masked filter whose channel other convolutions
still feed (a residual stage's conv2 or shortcut) stays, as in theirs, so a saved ResNet runs
more conv FLOPs than the masks count: that ResNet-20 keeps 0.6511 of them. In a plain conv stack
every masked filter goes and the two agree. The model carries both as `compression_record`
(`masked_conv_flops_removed`, the stopping rule's; `conv_flops_removed`, the saved model's, same
convolutions, same denominator), which the pipeline keeps in its manifests and audit metrics; the
measured costs (MACs) are the saved model's.

Weights. Every loss but those in `keep_trained_for` restarts from the reference's weights (their
`restore_weights = method != 'taylor'`): every weight left, a masked filter that stays included
(their `load_state_dict(preprune_state_dict)` after `prune.remove`). `ce` keeps the weights trained
while pruning, and a masked filter that stays keeps its zeroed convolution row and batch-norm
scale and shift, so the saved model computes what the masked one did. Theirs differs here: their
mask multiplies the batch norm's output and `prune.remove` zeroes only the convolution, so such a
channel of theirs adds its batch norm's constant shift after pruning.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import torch
from pydantic import Field
from torch import nn

from compalign.compressors.base import STRUCTURED, Calibration, Compressor
from compalign.errors import UserError
from compalign.options import MAX_BATCH, Options, Seed
from compalign.train import augment_batch, stop_if_requested

if TYPE_CHECKING:
    from compalign.data import Split
    from compalign.losses import LossFn


class TaylorIterativeOptions(Options):
    """The pruning run of Meyer & Wong (their scripts/helpers/cifar10_tests.sh values as
    defaults; `compress.sparsities` are fractions of conv FLOPs removed)."""

    lr: Annotated[float, Field(gt=0.0)] = 0.01
    """plain SGD between removals, on the alignment loss (their tay_lr)"""
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH)] = 128
    """examples per SGD step between removals"""
    batches_between_prunes: Annotated[int, Field(ge=0)] = 4
    """filters removed on every (n+1)-th batch (their tay_batches)"""
    per_step: Annotated[int, Field(ge=1)] = 1
    """filters removed each time (their tay_prunes_per_iter)"""
    keep_trained_for: list[str] = Field(default_factory=lambda: ["ce"])
    """losses whose pruned model keeps the weights trained while pruning (their `taylor`); the
    others restart the kept filters from the reference's weights (their sw_taylor)"""
    augment: bool = False
    """random crop + flip of the batches between removals"""
    seed: Seed = 0
    """the order of the batches"""


# --------------------------------------------------------------------------------------------
# Masks: a masked filter's conv row, bias and the batch norm that follows it are held at zero.


@dataclass
class _Filter:
    """One prunable convolution: its keep flags, the batch norm fed by it (if any) and the
    per-filter FLOP constant H_out x W_out x k^2."""

    name: str
    conv: nn.Conv2d
    norm: nn.BatchNorm2d | None
    flags: torch.Tensor  # bool [out_channels]
    flop_constant: int = 0

    def parameters(self) -> list[torch.Tensor]:
        tensors = [self.conv.weight, self.conv.bias]
        if self.norm is not None and self.norm.affine:
            tensors += [self.norm.weight, self.norm.bias]
        return [tensor for tensor in tensors if tensor is not None]

    @torch.no_grad()
    def apply(self) -> None:
        for tensor in self.parameters():
            tensor[~self.flags] = 0.0


def _convolutions(model: nn.Module, example: torch.Tensor) -> list[_Filter]:
    """Every ungrouped Conv2d in call order, the BatchNorm2d its output goes to directly, and its
    FLOP constant, from one forward pass of `example` (one image)."""
    convs = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d) and module.groups == 1
    ]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    outputs: dict[int, str] = {}  # id of a conv's output tensor -> conv name
    fed: dict[str, nn.BatchNorm2d] = {}
    constants: dict[str, int] = {}
    order: list[str] = []

    def after_conv(name):
        def hook(module, inputs, output):
            outputs[id(output)] = name
            constants[name] = (
                output.shape[-1]
                * output.shape[-2]
                * module.kernel_size[0]
                * (module.kernel_size[1])
            )
            order.append(name)

        return hook

    def before_norm(module, inputs):
        name = outputs.get(id(inputs[0]))
        if name is not None:
            fed.setdefault(name, module)

    handles = [conv.register_forward_hook(after_conv(name)) for name, conv in convs]
    handles += [norm.register_forward_pre_hook(before_norm) for norm in norms]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    by_name = dict(convs)
    return [
        _Filter(
            name,
            by_name[name],
            fed.get(name),
            torch.ones(by_name[name].out_channels, dtype=torch.bool),
            constants[name],
        )
        for name in dict.fromkeys(order)
    ]


@torch.no_grad()
def _dead_inputs(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, list[int]]:
    """The input channels of every Conv2d and Linear that nothing feeds any more (the authors'
    `true_prune` probe): a forward pass of a positive input in eval mode where every conv and
    batch norm output is replaced by its absolute value, so only masked channels are zero."""
    found: dict[nn.Module, list[int]] = {}

    def absolute(module, inputs, output):
        return output.abs()

    def record(module, inputs):
        value = inputs[0]
        dims = [d for d in range(value.dim()) if d != 1]
        found[module] = (value.abs().sum(dim=dims) == 0).nonzero().view(-1).tolist()

    handles = [
        m.register_forward_hook(absolute)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.BatchNorm2d)
    ]
    handles += [
        m.register_forward_pre_hook(record)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    training = model.training
    try:
        model.eval()(torch.ones_like(example) * 100.0)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return {module: idxs for module, idxs in found.items() if idxs}


def conv_flops(model: nn.Module, filters: list[_Filter], example: torch.Tensor) -> int:
    """The convolutions' FLOPs under the masks, the pruning's cost (prune/utils.py `get_flops`
    counts in x out x H_out x W_out x k^2 per conv): per conv, live input channels x kept
    filters x H_out x W_out x k^2."""
    dead = _dead_inputs(model, example)
    total = 0
    for item in filters:
        live_in = item.conv.in_channels - len(dead.get(item.conv, []))
        total += live_in * int(item.flags.sum()) * item.flop_constant
    return total


def saved_conv_flops(model: nn.Module, example: torch.Tensor) -> int:
    """The FLOPs of the same convolutions as `conv_flops` counts, every channel of the model as
    it is (in x out x H_out x W_out x k^2): what a physically pruned model really runs."""
    return sum(
        item.conv.in_channels * item.conv.out_channels * item.flop_constant
        for item in _convolutions(model, example)
    )


# --------------------------------------------------------------------------------------------
# Taylor scores (prune/pruner.py `score_module`)


class _Recorder:
    """Keeps each conv's output a [B, C, HW] and its gradient g on the last backward pass."""

    def __init__(self, filters: list[_Filter]) -> None:
        self.filters = filters
        self.outputs: dict[str, torch.Tensor] = {}
        self.activations: dict[str, torch.Tensor] = {}
        self.gradients: dict[str, torch.Tensor] = {}
        self.handles = [
            item.conv.register_forward_hook(self._forward(item.name)) for item in filters
        ]

    def _forward(self, name: str):
        def hook(module, inputs, output):
            if output.requires_grad:
                self.outputs[name] = output
                self.activations[name] = output.detach().flatten(2)

        return hook

    def backward(self, loss: torch.Tensor) -> None:
        """The loss's gradient with respect to every recorded conv output, and nothing else: no
        weight gradient is computed (a third of the backward pass that the scores never read)."""
        names = list(self.outputs)
        grads = torch.autograd.grad(loss, [self.outputs[name] for name in names])
        self.gradients = {name: g.detach().flatten(2) for name, g in zip(names, grads, strict=True)}
        self.outputs.clear()

    def scores(self) -> list[torch.Tensor]:
        """Per conv, per filter: mean over the batch of |sum over positions of a * g|; inf for a
        masked filter and for every filter of a conv that has only one left."""
        result = []
        for item in self.filters:
            values = (self.activations[item.name] * self.gradients[item.name]).sum(-1).abs().mean(0)
            values = values.float().cpu()
            values[~item.flags] = torch.inf
            if int(item.flags.sum()) <= 1:
                values = torch.full_like(values, torch.inf)
            result.append(values)
        return result

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def taylor_scores(
    model: nn.Module,
    filters: list[_Filter],
    images: torch.Tensor,
    reference_logits: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: LossFn,
) -> list[torch.Tensor]:
    """The Taylor score of every filter on one batch (prune/pruner.py `prune_filter`: an
    eval-mode forward and backward of the pruning loss)."""
    recorder = _Recorder(filters)
    training = model.training
    try:
        model.eval()
        recorder.backward(loss_fn(model(images), reference_logits, labels))
        return recorder.scores()
    finally:
        model.train(training)
        recorder.remove()


# --------------------------------------------------------------------------------------------
# The pruning run


@dataclass
class Snapshot:
    """The state of the trajectory when a level was reached."""

    level: float
    state: dict[str, torch.Tensor]
    flags: dict[str, torch.Tensor]
    flops: int
    total_flops: int
    batches: int


def prune_iteratively(
    model: nn.Module,
    levels: list[float],
    train: Split,
    loss_fn: LossFn,
    reference: nn.Module,
    options: TaylorIterativeOptions,
    on_prune=None,
) -> list[Snapshot]:
    """Meyer & Wong's iterative Taylor pruning of `model` (changed in place) through every level
    of `levels` (fractions of conv FLOPs removed), chained; one Snapshot per level.

    `on_prune(batch, model, scores)` sees the scores of each pruning step (tests)."""
    levels = sorted(levels)
    reference.eval()
    example = train.normalise(train.images[:1])
    filters = _convolutions(model, example)
    if not filters:
        raise ValueError("the model has no convolution to prune")
    index = torch.tensor([(i, j) for i, item in enumerate(filters) for j in range(len(item.flags))])
    total = conv_flops(model, filters, example)
    optimizer = torch.optim.SGD(model.parameters(), lr=options.lr)
    generator = torch.Generator().manual_seed(options.seed)
    snapshots: list[Snapshot] = []
    cost = total
    pending = list(levels)
    counter = 0

    def reached(level: float) -> bool:
        return cost <= (1.0 - level) * total

    def record_reached() -> bool:
        """Snapshot every pending level the cost has reached; True if one was."""
        any_reached = False
        while pending and reached(pending[0]):
            level = pending.pop(0)
            snapshots.append(
                Snapshot(
                    level,
                    {k: v.detach().clone() for k, v in model.state_dict().items()},
                    {item.name: item.flags.clone() for item in filters},
                    cost,
                    total,
                    counter,
                )
            )
            any_reached = True
        return any_reached

    record_reached()
    while pending:
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), options.batch_size):
            stop_if_requested()
            counter += 1
            chosen = order[start : start + options.batch_size]
            images = train.normalise(train.images[chosen])
            if options.augment:
                images = augment_batch(images, generator)
            labels = train.labels[chosen]
            with torch.no_grad():
                reference_logits = reference(images)
            model.train()
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(images), reference_logits, labels).backward()
            optimizer.step()
            for item in filters:
                item.apply()
            if counter % (options.batches_between_prunes + 1):
                continue
            record_reached()
            if not pending:
                break
            scores = taylor_scores(model, filters, images, reference_logits, labels, loss_fn)
            if on_prune is not None:
                on_prune(counter, model, scores)
            flat = torch.cat(scores)
            if not torch.isfinite(flat).any():
                raise ValueError(
                    f"cannot remove {pending[0]:.4f} of the conv FLOPs: every convolution "
                    f"is down to one filter ({cost / total:.4f} of the FLOPs left)"
                )
            count = min(options.per_step, int(torch.isfinite(flat).sum()))
            for i, j in index[flat.topk(count, largest=False).indices].tolist():
                item = filters[i]
                if int(item.flags.sum()) > 1:
                    item.flags[j] = False
            for item in filters:
                item.apply()
            cost = conv_flops(model, filters, example)
        else:
            record_reached()  # their `while` test, between passes over the data
    return snapshots


def remove_masked(
    model: nn.Module,
    flags: dict[str, torch.Tensor],
    example: torch.Tensor,
    restore: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Physically remove every channel that the masks in `flags` leave unfed (torch-pruning,
    one merged group, as the authors' `true_prune`); with `restore`, every weight left is first
    reset to that state dict (the reference's), masked filters whose channel stays included (as
    their `load_state_dict(preprune_state_dict)` does); without it those stay zeroed."""
    filters = {item.name: item for item in _convolutions(model, example)}
    for name, keep in flags.items():
        filters[name].flags = keep.clone()
        filters[name].apply()
    import torch_pruning as tp  # here, not at import: it imports torchvision and timm (seconds)

    dead = _dead_inputs(model, example)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    # every layer touched, with the union of its channels to remove (torch-pruning 1.6.1's
    # Group.add_and_merge mixes plain and hybrid indices, so the groups are merged here)
    removals: dict[tuple[int, Any], tuple[Any, set[int]]] = {}
    for module, idxs in dead.items():
        handler = (
            tp.prune_conv_in_channels
            if isinstance(module, nn.Conv2d)
            else tp.prune_linear_in_channels
        )
        for dep, group_idxs in graph.get_pruning_group(module, handler, idxs=idxs).items:
            key = (id(dep.target.module), dep.handler)
            plain = {int(getattr(index, "idx", index)) for index in group_idxs}
            removals.setdefault(key, (dep, set()))[1].update(plain)
    if restore is not None:
        model.load_state_dict(restore)
    for dep, idxs in removals.values():
        dep.handler(dep.target.module, sorted(idxs))
    return model


def taylor_iterative(
    model: nn.Module, level: float, options: TaylorIterativeOptions, calibration: Calibration
) -> nn.Module:
    """Meyer & Wong's iterative Taylor pruning to `level` of the conv FLOPs removed, with the
    alignment loss of the fine-tuning it feeds; masked channels removed physically."""
    if calibration is None or calibration.loss_fn is None or calibration.train is None:
        raise UserError(
            "compress.taylor_iterative needs the training split and an alignment loss; "
            "run it through the pipeline (compress.methods: [taylor_iterative])"
        )
    reference_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags_model = [(name, p.requires_grad) for name, p in model.named_parameters()]
    working = copy.deepcopy(model)
    try:
        (snapshot,) = prune_iteratively(
            working,
            [level],
            calibration.train,
            calibration.loss_fn,
            calibration.reference,
            options,
        )
    except ValueError as error:
        raise UserError(
            f"compress.taylor_iterative at {level:g}: {error}; choose a lower level"
        ) from error
    example = calibration.train.normalise(calibration.train.images[:1])
    restore = calibration.loss_name not in options.keep_trained_for
    working.load_state_dict(snapshot.state)
    pruned = remove_masked(working, snapshot.flags, example, reference_state if restore else None)
    requires = dict(flags_model)
    for name, param in pruned.named_parameters():
        param.grad = None
        param.requires_grad_(requires.get(name, True))
    # the masks' count is the pruning's stopping rule; a ResNet keeps more (module docstring)
    pruned.compression_record = {
        "masked_conv_flops_removed": 1.0 - snapshot.flops / snapshot.total_flops,
        "conv_flops_removed": 1.0 - saved_conv_flops(pruned, example) / snapshot.total_flops,
    }
    return pruned.train(model.training)


ENTRY = Compressor(
    taylor_iterative,
    STRUCTURED,
    TaylorIterativeOptions,
    level_kind="conv_flops_removed",
    needs_calibration=True,
    ranks_with_loss=lambda options: True,
)
