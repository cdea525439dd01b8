"""`magnitude_channel`: channel-wise magnitude pruning with masks (L1 norm of each output
channel, Li et al. 2017, "Pruning Filters for Efficient ConvNets", section 3.1), without
physical removal: each conv and linear layer has its `level` fraction of output channels with the
smallest L1 norm zeroed. The classifier is never pruned (its output rows are the classes)."""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune

from compalign.compressors.base import UNSTRUCTURED, Compressor
from compalign.pruning import classifier_name


def magnitude_channel(model: nn.Module, fraction: float, options, calibration) -> nn.Module:
    """Mask the `fraction` of output channels (dim 0) of smallest L1 norm in every conv and
    hidden linear layer; the masks stay applied while fine-tuning (family `unstructured`)."""
    classifier = classifier_name(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear) and name != classifier:
            prune.ln_structured(module, "weight", amount=float(fraction), n=1, dim=0)
    return model


ENTRY = Compressor(magnitude_channel, UNSTRUCTURED, level_kind="channel_sparsity")
