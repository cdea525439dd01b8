"""`magnitude_layerwise`: layer-wise unstructured magnitude pruning, one threshold per layer."""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune

from compalign.compressors.base import UNSTRUCTURED, Compressor
from compalign.pruning import prunable_parameters


def magnitude_layerwise(model: nn.Module, sparsity: float, options, calibration) -> nn.Module:
    """Each conv and linear layer loses its own `sparsity` fraction of smallest |w|."""
    for module, name in prunable_parameters(model):
        prune.l1_unstructured(module, name, amount=float(sparsity))
    return model


ENTRY = Compressor(magnitude_layerwise, UNSTRUCTURED)
