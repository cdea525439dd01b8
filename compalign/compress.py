"""Compressors: a registry from the name used in params.yaml to a function.

`COMPRESSORS[name](model, sparsity)` prunes `model` in place and returns it. Unstructured pruning
is applied as `torch.nn.utils.prune` masks, so the masks stay applied while the model is
fine-tuned (masked weights receive no update that could revive them).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import prune

PRUNABLE = (nn.Conv2d, nn.Linear)


def prunable_parameters(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, "weight") for every conv and linear layer: the weights pruning may zero."""
    return [(module, "weight") for module in model.modules() if isinstance(module, PRUNABLE)]


def magnitude_global(model: nn.Module, sparsity: float) -> nn.Module:
    """Global unstructured magnitude pruning: zero the `sparsity` fraction of smallest |w| over all
    conv and linear weights together (one threshold for the whole network)."""
    prune.global_unstructured(
        prunable_parameters(model), pruning_method=prune.L1Unstructured, amount=float(sparsity)
    )
    return model


COMPRESSORS: dict[str, Callable[[nn.Module, float], nn.Module]] = {
    "magnitude_global": magnitude_global,
}


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


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with masks folded in ("weight" = weight_orig * mask), as a dense model has."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig"):
            base = key[: -len("_orig")]
            value = value * model.state_dict()[base + "_mask"]
            key = base
        state[key] = value.detach().clone()
    return state


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights among the prunable (conv and linear) weights."""
    total = zeros = 0
    for module, name in prunable_parameters(model):
        weight = getattr(module, name)
        total += weight.numel()
        zeros += int((weight == 0).sum())
    return zeros / max(total, 1)
