"""`magnitude_global`: global unstructured magnitude pruning (Han et al. 2015, "Learning both
Weights and Connections for Efficient Neural Networks"), one threshold for the whole network."""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune

from compalign.compressors.base import UNSTRUCTURED, Compressor
from compalign.pruning import prunable_parameters


def magnitude_global(model: nn.Module, sparsity: float, options, calibration) -> nn.Module:
    """Zero the `sparsity` fraction of smallest |w| over all conv and linear weights together."""
    prune.global_unstructured(
        prunable_parameters(model), pruning_method=prune.L1Unstructured, amount=float(sparsity)
    )
    return model


ENTRY = Compressor(magnitude_global, UNSTRUCTURED)
