"""Pruning masks and the shapes of pruned models, shared by every compressor and loader.

Unstructured pruning keeps `torch.nn.utils.prune` masks on the model (`weight_orig`,
`weight_mask`, a forward pre-hook). Everything that needs the plain weights -- checkpoints, costs,
MAC counts, exported models, quantization -- folds the masks with `folded_copy` or
`folded_state_dict` here, never by hand.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

PRUNABLE = (nn.Conv2d, nn.Linear)


def prunable_parameters(
    model: nn.Module, include_classifier: bool = True
) -> list[tuple[nn.Module, str]]:
    """(module, "weight") for every conv and linear layer: the weights pruning may zero. With
    `include_classifier=False` the final linear layer (`classifier_name`) is left out, as Hooker
    et al.'s ResNet-50 leaves its `final_dense` unpruned (utils/resnet_model.py)."""
    skipped = None
    if not include_classifier:
        skipped = dict(model.named_modules())[classifier_name(model)]
    return [
        (module, "weight")
        for module in model.modules()
        if isinstance(module, PRUNABLE) and module is not skipped
    ]


def classifier_name(model: nn.Module) -> str:
    """The name of the last nn.Linear: the classifier, whose output rows are the classes."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError("the model has no final nn.Linear classifier")
    return names[-1]


def has_prune_masks(model: nn.Module) -> bool:
    """Whether any module carries a torch.nn.utils.prune mask."""
    return any(
        isinstance(hook, prune.BasePruningMethod)
        for module in model.modules()
        for hook in module._forward_pre_hooks.values()
    )


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The pruning masks of `model` by parameter name ("features.0.weight" -> bool mask)."""
    return {
        f"{name}.weight" if name else "weight": module.weight_mask.bool().clone()
        for name, module in model.named_modules()
        if hasattr(module, "weight_mask")
    }


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Register `masks` (from `masks_of`) on `model` as pruning masks that stay applied."""
    modules = dict(model.named_modules())
    for key, mask in masks.items():
        module_name, _, param_name = key.rpartition(".")
        prune.custom_from_mask(modules[module_name], param_name, mask.to(torch.float32))
    return model


def folded_state_dict(model: nn.Module) -> dict[str, Any]:
    """The state dict with masks folded in ("weight" = weight_orig * weight_mask), as a dense
    model of the same shapes has it; tensors are detached copies."""
    state = model.state_dict()
    folded: dict[str, Any] = {}
    for key, value in state.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state:
            key = key[: -len("_orig")]
            value = value * state[key + "_mask"]
        folded[key] = value.detach().clone() if isinstance(value, torch.Tensor) else value
    return folded


def folded_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` with every pruning mask folded into its weight (no hooks left);
    the caller's model and its masks are untouched.

    After a forward pass with gradients, a pruned module's `weight` attribute is a non-leaf
    tensor (weight_orig * mask), which deepcopy refuses; it is recomputed from weight_orig and
    the mask when the mask is folded, so the copy gets a detached stand-in.
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                value = getattr(module, hook._tensor_name, None)
                if isinstance(value, torch.Tensor):
                    memo[id(value)] = value.detach().clone()
    clone = copy.deepcopy(model, memo)
    for module in clone.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    return clone


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights among the prunable (conv and linear) weights of a float
    model (0 for a quantized one, whose layers are not float conv/linear modules)."""
    total = zeros = 0
    for module, name in prunable_parameters(model):
        weight = getattr(module, name)
        total += weight.numel()
        zeros += int((weight == 0).sum())
    return zeros / max(total, 1)


def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass over `example_inputs` (the whole batch), counted by
    torch_pruning.utils.count_ops_and_params; prune masks are folded in (dense MACs) first."""
    if has_prune_masks(model):
        model = folded_copy(model)
    # count_ops_and_params deep-copies the model itself and returns the batch's count divided by
    # the batch size (a float); multiplying back gives the batch's count. (Its Linear hook adds
    # the bias once per call, not per example, so the count is not exactly linear in the batch.)
    import torch_pruning as tp  # here, not at import: it imports torchvision and timm (seconds)

    per_example, _ = tp.utils.count_ops_and_params(model, example_inputs)
    return int(round(per_example * example_inputs.shape[0]))


def _resized(old: torch.Tensor | None, shape: torch.Size, parameter: bool):
    """An uninitialised tensor of `shape` like `old` (values come from load_state_dict)."""
    if old is None:
        return None
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    if parameter:
        return nn.Parameter(new, requires_grad=old.requires_grad)
    return new


def resize_to_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Reshape `model`'s Conv2d, Linear and BatchNorm2d layers in place to the shapes in
    `state_dict` (a structurally pruned model's), ready for a strict `load_state_dict`."""
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d | nn.Linear | nn.BatchNorm2d):
            continue
        prefix = f"{name}." if name else ""
        weight_key = f"{prefix}weight"
        if weight_key in state_dict:
            shape = state_dict[weight_key].shape
        elif f"{prefix}running_mean" in state_dict:  # batch norm without affine parameters
            shape = state_dict[f"{prefix}running_mean"].shape
        else:
            continue
        current = module.weight if module.weight is not None else module.running_mean
        if current is not None and current.shape == shape:
            continue

        if isinstance(module, nn.Conv2d):
            out_channels, in_per_group = shape[0], shape[1]
            depthwise = (
                module.groups > 1 and module.groups == module.in_channels == module.out_channels
            )
            if depthwise:
                module.groups = out_channels
            module.out_channels = out_channels
            module.in_channels = in_per_group * module.groups
            module.weight = _resized(module.weight, shape, parameter=True)
            module.bias = _resized(module.bias, torch.Size([out_channels]), parameter=True)
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = shape[0], shape[1]
            module.weight = _resized(module.weight, shape, parameter=True)
            module.bias = _resized(module.bias, torch.Size([shape[0]]), parameter=True)
        else:
            features = torch.Size([shape[0]])
            module.num_features = shape[0]
            module.weight = _resized(module.weight, features, parameter=True)
            module.bias = _resized(module.bias, features, parameter=True)
            if module.running_mean is not None:
                module.running_mean = _resized(module.running_mean, features, parameter=False)
                module.running_var = _resized(module.running_var, features, parameter=False)
    return model
