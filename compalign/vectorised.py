"""Train a population of same-architecture models together, as one batched model.

`fit_population` stacks K members' parameters and buffers (`torch.func.stack_module_state`) and
runs one forward/backward for all of them (`functional_call` under `vmap`), with exactly
`compalign.train.fit`'s math for each member:

* data: member k draws from its own `torch.Generator().manual_seed(configs[k].seed)` in fit's
  order (one `randperm` per epoch, then `augment_batch`'s draws per batch), so it sees the batches
  `fit` would show it;
* loss: `loss_fn` is applied to each member's logits on its own batch and the scalar that is
  differentiated is the SUM of the members' losses, so d(total)/d(member k) = d(loss_k)/d(member k)
  and no member's gradient leaks into another's;
* optimizer: one `make_optimizer` over the stacked tensors. SGD (momentum, Nesterov) and AdamW
  with weight decay update each element from that element's own gradient and state (AdamW's step
  count is shared, but every member steps together), so one stacked optimizer is K separate ones;
  the cosine schedule is fit's, per step;
* batch norm: each member's running statistics are stacked buffers passed to `functional_call`;
  under `vmap` batch norm updates the member's own slice in place, as `fit` would. (torch.func's
  "Patching Batch Norm" guidance only covers unbatched buffers, which vmap cannot update in place;
  its fixes drop the running statistics, which the audit needs.)

Not bit-identical over a run: vmap lowers a batched convolution or matmul to grouped/batched
kernels, whose floating-point reductions are ordered differently from the single-model kernels,
so a step differs from `fit`'s by float32 rounding (measured on small_cnn: gradients within
8e-8, parameters after one SGD step within 3e-8; batch-norm statistics bit-identical). Training
amplifies such differences (ReLU and max-pool switch on near-ties, momentum accumulates them), so
after many steps members are close to, not equal to, their one-at-a-time counterparts:
predictions agree on nearly every example and accuracies match closely. Members with the same
seed within one population see identical inputs and kernels and stay identical.

Resumable like `fit` (compalign.resume): inside `resume_area` it saves the stacked tensors, the
optimizer, the schedule and every member's generator each `every` epochs, and continues from them.
On CUDA it uses `fit`'s accelerations (compalign.accelerated) except channels-last for the images
(a stacked batch is 5-D) and `torch.compile`.

Speed: one batched kernel launch per layer instead of K, which pays where training a single
model is overhead-bound (small models or batches, GPUs); on a CPU that one model already keeps
busy there is little to gain (see bench/populations.py for a measurement and why).

Unsupported, refused with ValueError: torch.nn.utils.prune masks (their forward pre-hooks set
module attributes on every call, which is not made safe per member here, and fit's `on_step`
mask updates have no counterpart), dropout (fit draws its masks from the global generator), batch
norm with `momentum=None` (its factor is read from the step counter as a Python float, which a
batched counter cannot give).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.utils import prune

from compalign.accelerated import accelerated
from compalign.data import Split
from compalign.losses import LossFn
from compalign.resume import next_resume_point, shapes
from compalign.train import (
    TrainConfig,
    augment_batch,
    make_optimizer,
    stop_if_requested,
    total_steps,
)

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _signature(model: nn.Module) -> tuple:
    """What two members must share to be stacked: module tree (with each module's settings, as
    printed), and every parameter's and buffer's name, shape, dtype and trainability."""
    return (
        repr(model),
        tuple(
            (name, tuple(p.shape), p.dtype, p.requires_grad) for name, p in model.named_parameters()
        ),
        tuple((name, tuple(b.shape), b.dtype) for name, b in model.named_buffers()),
    )


def _validate(
    models: list[nn.Module],
    configs: list[TrainConfig],
    references: list[nn.Module] | None,
) -> None:
    """Raise ValueError unless the population can be trained as one batched model."""
    if not models:
        raise ValueError("fit_population: no models given")
    if len(configs) != len(models):
        raise ValueError(f"fit_population: {len(models)} models but {len(configs)} configs")
    if references is not None and len(references) != len(models):
        raise ValueError(f"fit_population: {len(models)} models but {len(references)} references")
    if len({id(model) for model in models}) != len(models):
        raise ValueError("fit_population: the same module is given twice; members must be distinct")
    first = _signature(models[0])
    for index, model in enumerate(models[1:], start=1):
        if _signature(model) != first:
            raise ValueError(
                f"fit_population: member {index} has a different architecture from member 0 "
                "(module tree, parameter or buffer names/shapes/dtypes must all match)"
            )
    base = dataclasses.replace(configs[0], seed=0)
    for index, config in enumerate(configs[1:], start=1):
        if dataclasses.replace(config, seed=0) != base:
            raise ValueError(
                f"fit_population: config {index} differs from config 0 in more than the seed "
                f"({config} vs {configs[0]}); members train together, step for step"
            )
    for index, model in enumerate(models):
        if prune.is_pruned(model):
            raise ValueError(
                f"fit_population: member {index} carries torch.nn.utils.prune masks, which are "
                "not supported; train it with compalign.train.fit, or prune.remove the masks first"
            )
    for name, module in models[0].named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            raise ValueError(
                f"fit_population: dropout at {name!r} is not supported (fit draws its masks from "
                "the global generator, which cannot be reproduced per member)"
            )
        batch_norm = isinstance(module, _BATCH_NORMS) and module.track_running_stats
        if batch_norm and module.momentum is None:
            raise ValueError(
                f"fit_population: batch norm at {name!r} has momentum=None (cumulative "
                "average), which is not supported under vmap"
            )


def fit_population(
    models: list[nn.Module],
    train: Split,
    configs: list[TrainConfig],
    loss_fn: LossFn,
    references: list[nn.Module] | None = None,
    device: torch.device | str = "cpu",
) -> list[nn.Module]:
    """Train K same-architecture models together as one batched model (torch.func:
    stack_module_state + functional_call + vmap), with exactly `compalign.train.fit`'s math for
    each member: its own seed's data order (and augmentation), the same optimizer (SGD with
    Nesterov momentum or AdamW, weight decay), the same per-step cosine schedule, the loss
    applied per member; BatchNorm running statistics kept per member. Returns the K trained
    models (eval mode), parameters copied back into the given modules."""
    _validate(models, configs, references)
    device = torch.device(device)
    config = configs[0]  # all equal but for the seed
    speed = accelerated(device)
    for model in models:
        model.to(device).train()
        speed.prepare(model)
    if references is not None:
        for reference in references:
            reference.to(device).eval()  # frozen: its logits are computed under no_grad below
            speed.prepare(reference)

    stacked_params, buffers = stack_module_state(models)
    # nn.Parameters in an nn.Module, so that make_optimizer (fit's own) builds the optimizer
    params = {
        name: nn.Parameter(tensor, requires_grad=tensor.requires_grad)
        for name, tensor in stacked_params.items()
    }
    holder = nn.ParameterList(params.values())
    optimizer = make_optimizer(holder, config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=total_steps(len(train), config)
    )
    # The stateless skeleton that functional_call fills with one member's slice of the stacks.
    skeleton = copy.deepcopy(models[0]).to("meta").train()

    def member_logits(
        member_params: dict[str, torch.Tensor],
        member_buffers: dict[str, torch.Tensor],
        images: torch.Tensor,
    ) -> torch.Tensor:
        return functional_call(skeleton, (member_params, member_buffers), (images,))

    population_logits = vmap(member_logits)

    generators = [torch.Generator().manual_seed(member.seed) for member in configs]
    resume = next_resume_point(
        "fit_population",
        config,
        seeds=[member.seed for member in configs],
        model=shapes(params) + shapes(buffers),
    )
    first_epoch = 0
    if resume is not None and (saved := resume.load()) is not None:
        with torch.no_grad():
            for name, tensor in {**params, **buffers}.items():
                tensor.copy_(saved["model"][name])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["lr_scheduler"])
        for generator, state in zip(generators, saved["generators"], strict=True):
            generator.set_state(state)
        speed.load_state_dict(saved["scaler"])
        first_epoch = saved["epoch"]
    for epoch in range(first_epoch, config.epochs):
        # one randperm per member per epoch, before the epoch's augmentation draws, as in fit
        orders = [torch.randperm(len(train), generator=generator) for generator in generators]
        for start in range(0, len(train), config.batch_size):
            stop_if_requested()
            member_images, member_labels = [], []
            for order, generator in zip(orders, generators, strict=True):
                index = order[start : start + config.batch_size]
                images = train.normalise(train.images[index])
                if config.augment:
                    images = augment_batch(images, generator)
                member_images.append(images)
                member_labels.append(train.labels[index])
            images = speed.move(torch.stack(member_images))
            labels = speed.move(torch.stack(member_labels))
            reference_logits: list[torch.Tensor | None] = [None] * len(models)
            with speed.autocast():
                if references is not None:
                    with torch.no_grad():
                        reference_logits = [
                            reference(images[k]) for k, reference in enumerate(references)
                        ]
                logits = population_logits(params, buffers, images)
                # Sum of per-member means: member k's gradient is exactly that of its own loss.
                loss = sum(
                    loss_fn(logits[k], reference_logits[k], labels[k]) for k in range(len(models))
                )
            optimizer.zero_grad(set_to_none=True)
            speed.backward_and_step(loss, optimizer)
            scheduler.step()
        if resume is not None and resume.due(epoch + 1, config.epochs):
            resume.save(
                epoch + 1,
                {
                    "model": {name: t.detach() for name, t in {**params, **buffers}.items()},
                    "optimizer": optimizer.state_dict(),
                    "lr_scheduler": scheduler.state_dict(),
                    "generators": [generator.get_state() for generator in generators],
                    "scaler": speed.state_dict(),
                },
            )

    with torch.no_grad():
        for k, model in enumerate(models):
            for name, parameter in model.named_parameters():
                parameter.copy_(params[name][k])
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name][k])
    return [model.eval() for model in models]
