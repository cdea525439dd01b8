"""`random`: random unstructured pruning, the baseline every magnitude criterion must beat."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from compalign.compressors.base import UNSTRUCTURED, Compressor
from compalign.options import Options, Seed
from compalign.pruning import prunable_parameters


class RandomOptions(Options):
    """Random unstructured pruning (the baseline)."""

    seed: Seed = 0
    """which weights are zeroed"""


def random_unstructured(model: nn.Module, sparsity: float, options, calibration) -> nn.Module:
    """A seeded uniform choice of `sparsity` of all conv and linear weights (global, like
    magnitude_global)."""
    parameters = prunable_parameters(model)
    sizes = [getattr(module, name).numel() for module, name in parameters]
    generator = torch.Generator().manual_seed(options.seed)
    order = torch.randperm(sum(sizes), generator=generator)
    keep = torch.ones(sum(sizes), dtype=torch.bool)
    keep[order[: int(round(sparsity * sum(sizes)))]] = False
    for (module, name), chunk in zip(parameters, torch.split(keep, sizes), strict=True):
        weight = getattr(module, name)
        prune.custom_from_mask(module, name, chunk.view_as(weight).to(weight.dtype))
    return model


ENTRY = Compressor(random_unstructured, UNSTRUCTURED, RandomOptions)
