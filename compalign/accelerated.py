"""What a GPU needs to train fast, in one place, and nothing of it on the CPU.

On CUDA the training loops (`compalign.train.fit`, `compalign.vectorised.fit_population`) run
the forward pass under autocast in bfloat16 (float16 with a `GradScaler` on GPUs without
bfloat16), keep convolution weights and images channels-last, copy batches from pinned memory
without blocking, and, inside `compiling(True)`, run the model through `torch.compile`; a model
in quantization-aware training trains in float32 (it simulates a precision of its own). On the
CPU every method here is the identity (float32, contiguous, blocking copies, eager), so CPU
results are bit-identical to a loop without this module.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

_COMPILE: contextvars.ContextVar[bool] = contextvars.ContextVar("compalign_compile", default=False)


@contextlib.contextmanager
def compiling(enabled: bool) -> Iterator[None]:
    """Training loops run inside this block compile their model (`torch.compile`) on CUDA."""
    token = _COMPILE.set(enabled)
    try:
        yield
    finally:
        _COMPILE.reset(token)


class Accelerated:
    """The device-dependent parts of one training loop (see the module docstring)."""

    def __init__(self, device: torch.device, mixed_precision: bool = True) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.dtype = None
        self.scaler = None
        if self.cuda and mixed_precision:
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.dtype == torch.float16:  # float16 gradients underflow without scaling
                self.scaler = torch.amp.GradScaler("cuda")

    def prepare(self, *models: nn.Module | None) -> None:
        """Channels-last weights on CUDA (call before the optimizer is built: it converts the
        parameters' storage)."""
        if self.cuda:
            for model in models:
                if model is not None:
                    model.to(memory_format=torch.channels_last)

    def compiled(self, model: nn.Module) -> Callable[..., torch.Tensor]:
        """`torch.compile(model)` on CUDA inside `compiling(True)`; else the model itself."""
        if self.cuda and _COMPILE.get():
            return torch.compile(model)
        return model

    def move(self, tensor: torch.Tensor) -> torch.Tensor:
        """To the device: on CUDA from pinned memory, without blocking the host."""
        if self.cuda:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of images on the device, channels-last on CUDA."""
        images = self.move(images)
        if self.cuda and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass and loss on CUDA; nothing on the CPU."""
        if self.dtype is not None:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """`loss.backward(); optimizer.step()`, through the grad scaler under float16."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The grad scaler's state (its scale moves during training); empty without one."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def simulates_precision(model: nn.Module) -> bool:
    """Whether `model` simulates a lower precision while it trains (fake quantization, weights
    rounded through a parametrization: a quantizer's `prepare_qat`, compalign.compressors); autocast
    would change the arithmetic it simulates."""
    from torch.ao.quantization import FakeQuantizeBase
    from torch.nn.utils import parametrize

    fake_quantizers: tuple[type, ...] = (FakeQuantizeBase,)
    # PT2E QAT programs hold torchao's own fake quantizers; without torchao imported there are
    # none (so it is not imported here just to look)
    torchao_fake = sys.modules.get("torchao.quantization.pt2e.fake_quantize")
    if torchao_fake is not None:
        fake_quantizers += (torchao_fake.FakeQuantizeBase,)
    return any(
        isinstance(module, fake_quantizers) or parametrize.is_parametrized(module)
        for module in model.modules()
    )


def accelerated(device: torch.device | str, model: nn.Module | None = None) -> Accelerated:
    """The accelerations of a training loop of `model` on `device` (float32 for a model that
    simulates a precision)."""
    mixed = model is None or not simulates_precision(model)
    return Accelerated(torch.device(device), mixed_precision=mixed)
