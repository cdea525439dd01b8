"""What the quantizers share (not a compressor of its own): their fine-tuning family, the checks of
an int8 backend and the silencing of torch.ao's deprecation warnings.

Each quantizer is one module of this package holding its whole method: post-training
quantization, quantization-aware fine-tuning (`prepare_qat` and `convert_qat`) and the
rebuilding of its checkpoints (compalign.compressors.quantize_static, quantize_dynamic, half).
Every quantizer works on a copy: the caller's float model (and any pruning masks it carries) is
left as it was.

Int8 goes through PyTorch's maintained path, torchao (PT2E static, `quantize_` dynamic); the
older `torch.ao.quantization` paths stay behind `backend: fx` and `backend: eager` (deprecated by
PyTorch, pytorch/ao#2259), their warnings silenced locally around each call (`quiet`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from compalign.compressors.base import Family, FineTuneJob

PrepareQat = Callable[[nn.Module, torch.Tensor, Any], nn.Module]
ConvertQat = Callable[[nn.Module, Any], nn.Module]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the warnings torch.ao.quantization emits on every call (deprecation, reduce_range)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", r".*reduce_range will be deprecated")
        warnings.filterwarnings(
            "ignore", r".*quantized tensor creation functions .* are deprecated"
        )
        yield


def check_backend(backend: str, known: tuple[str, ...], method: str) -> None:
    """Refuse an unknown int8 backend; warn that a backend other than the first (the maintained
    path: PT2E / torchao) uses deprecated torch.ao code."""
    if backend not in known:
        raise ValueError(f"unknown {method} backend {backend!r}; choose one of {list(known)}")
    if backend != known[0]:
        warnings.warn(
            f"compress.{method}.backend={backend} uses torch.ao.quantization, which PyTorch has "
            f"deprecated (pytorch/ao#2259); {known[0]!r}, the default, is the maintained path",
            FutureWarning,
            stacklevel=3,
        )


def strip_parametrizations(model: nn.Module) -> list[nn.Module]:
    """Remove every parametrization of a copied model in place, keeping the underlying float
    tensors; return the parametrizations removed (quantization-aware fine-tuning rounds weights
    through parametrizations)."""
    removed: list[nn.Module] = []
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            # A deepcopy of a parametrized module shares the class torch injected for it, and
            # removing a parametrization deletes its property from that class, breaking the
            # module it was copied from; so the copy gets a class of its own first.
            cls = type(module)
            namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(cls.__name__, cls.__bases__, namespace)
            for name in list(module.parametrizations.keys()):
                removed.extend(module.parametrizations[name])
                parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    return removed


def fine_tune_quantization_aware(
    job: FineTuneJob, prepare_qat: PrepareQat, convert_qat: ConvertQat
) -> nn.Module:
    """Quantization-aware fine-tuning: from the reference with fake quantization
    (`prepare_qat(model, example, options)`), then converted (`convert_qat(prepared, options)`)."""
    example = job.train.normalise(job.train.images[:1])
    prepared = prepare_qat(job.fresh_reference(), example, job.options)
    job.fit(prepared)
    return convert_qat(prepared.cpu(), job.options)


def quantization(prepare_qat: PrepareQat, convert_qat: ConvertQat) -> Family:
    """The family of a quantizer: its models are no longer float, and it fine-tunes with its own
    fake quantization."""
    fine_tune = partial(
        fine_tune_quantization_aware, prepare_qat=prepare_qat, convert_qat=convert_qat
    )
    return Family("quantization", fine_tune, quantized=True)
