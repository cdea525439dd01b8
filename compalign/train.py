"""Training and inference loops, written out so a reader can follow them.

One loop serves reference training (loss = cross-entropy) and alignment fine-tuning (a loss from
`compalign.losses` that also sees the frozen reference model's logits on the same batch). All
randomness (shuffling, augmentation) comes from one seeded `torch.Generator`. A loop run inside
`compalign.resume.resume_area` saves resume points and continues a killed run bit-identically.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compalign.accelerated import accelerated
from compalign.data import Split
from compalign.losses import LossFn
from compalign.resume import next_resume_point, register_saved_masks, shapes


@dataclass(frozen=True)
class TrainConfig:
    """What `fit` needs to know; built from the `reference` or `align` params section."""

    epochs: int
    batch_size: int
    optimizer: str = "sgd"  # "sgd" (momentum, Nesterov) or "adamw"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = False
    seed: int = 0
    # cosine annealing stepped after every batch (T_max = all steps), or once per epoch
    # (T_max = epochs: Meyer & Wong's GenericRetrainer)
    lr_schedule: str = "cosine_per_step"


EpochCallback = Callable[[int, dict[str, float]], None]
StepCallback = Callable[[int, nn.Module], None]


def resolve_device(device: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def total_steps(train_size: int, config: TrainConfig) -> int:
    """Optimisation steps of a `fit` run."""
    return config.epochs * math.ceil(train_size / config.batch_size)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, or AdamW; weight decay on every trainable tensor."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.momentum > 0,
        weight_decay=config.weight_decay,
    )


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel zero padding and random horizontal flip (the CIFAR recipe)."""
    count, _, height, width = images.shape
    padded = F.pad(images, (4, 4, 4, 4))
    rows = torch.randint(0, 9, (count,), generator=generator)
    cols = torch.randint(0, 9, (count,), generator=generator)
    flips = torch.rand(count, generator=generator) < 0.5
    out = torch.empty_like(images)
    for index in range(count):
        row, col = int(rows[index]), int(cols[index])
        crop = padded[index, :, row : row + height, col : col + width]
        out[index] = crop.flip(-1) if flips[index] else crop
    return out


# Set when the user interrupts the process (Ctrl-C): training loops running in worker threads,
# which no signal reaches, stop at their next batch instead of finishing the whole run.
STOP_REQUESTED = threading.Event()


def stop_if_requested() -> None:
    """Raise KeyboardInterrupt in this thread if the process was asked to stop."""
    if STOP_REQUESTED.is_set():
        raise KeyboardInterrupt("stop requested")


def fit(
    model: nn.Module,
    train: Split,
    config: TrainConfig,
    loss_fn: LossFn,
    reference: nn.Module | None = None,
    device: torch.device | str = "cpu",
    on_epoch: EpochCallback | None = None,
    on_step: StepCallback | None = None,
) -> nn.Module:
    """Train `model` on `train` with `loss_fn(logits, reference_logits, labels)`; cosine schedule
    per step or per epoch (`config.lr_schedule`).

    With `reference`, its logits on each (augmented) batch are computed without gradients and
    passed to the loss; the reference stays frozen in eval mode. `on_step(step, model)` runs
    before each optimisation step (gradual pruning updates its masks there). Inside
    `compalign.resume.resume_area` it saves resume points and continues from the last one.
    An `AdaptiveLoss` (compalign.losses.base) is told where each epoch ends; what it returns
    joins the epoch's record for `on_epoch`, and its state travels in the resume points.
    On CUDA it trains in mixed precision, channels-last (`accelerated`); on the CPU in float32.
    """
    device = torch.device(device)
    model.to(device).train()
    if reference is not None:
        reference.to(device).eval()  # frozen: its logits are computed under no_grad below
    speed = accelerated(device, model)
    speed.prepare(model, reference)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, config)
    per_epoch = config.lr_schedule == "cosine_per_epoch"
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs if per_epoch else total_steps(len(train), config)
    )
    forward = speed.compiled(model)
    epoch_end = getattr(loss_fn, "on_epoch_end", None)  # an AdaptiveLoss
    resume = next_resume_point("fit", config, model=shapes(model.state_dict()))
    first_epoch = 0
    if resume is not None and (saved := resume.load()) is not None:
        register_saved_masks(model, saved["model"])
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["lr_scheduler"])
        generator.set_state(saved["generators"][0])
        speed.load_state_dict(saved["scaler"])
        first_epoch = saved["epoch"]
        if epoch_end is not None and "loss" in saved:
            loss_fn.load_state_dict(saved["loss"])
    step = first_epoch * math.ceil(len(train) / config.batch_size)
    for epoch in range(first_epoch, config.epochs):
        order = torch.randperm(len(train), generator=generator)
        total_loss = correct = 0.0
        for start in range(0, len(train), config.batch_size):
            stop_if_requested()
            if on_step is not None:
                on_step(step, model)
            step += 1
            index = order[start : start + config.batch_size]
            images = train.normalise(train.images[index])
            if config.augment:
                images = augment_batch(images, generator)
            images, labels = speed.images(images), speed.move(train.labels[index])
            reference_logits = None
            with speed.autocast():
                if reference is not None:
                    with torch.no_grad():
                        reference_logits = reference(images)
                logits = forward(images)
                loss = loss_fn(logits, reference_logits, labels)
            optimizer.zero_grad(set_to_none=True)
            speed.backward_and_step(loss, optimizer)
            if not per_epoch:
                scheduler.step()
            total_loss += float(loss.detach()) * len(index)
            correct += float((logits.argmax(1) == labels).sum())
        if per_epoch:
            scheduler.step()
        record = epoch_end(epoch) if epoch_end is not None else {}
        if on_epoch is not None:
            on_epoch(
                epoch,
                {
                    "loss": total_loss / len(train),
                    "train_accuracy": correct / len(train),
                    **record,
                },
            )
        if resume is not None and resume.due(epoch + 1, config.epochs):
            resume.save(
                epoch + 1,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_scheduler": scheduler.state_dict(),
                    "generators": [generator.get_state()],
                    "scaler": speed.state_dict(),
                    **({"loss": loss_fn.state_dict()} if epoch_end is not None else {}),
                },
            )
    return model.eval()


def holds_int8(model: nn.Module) -> bool:
    """Whether `model` computes in int8: torch.ao's int8 modules (FX static, eager dynamic), a
    PT2E program (compalign.compressors.quantize_static.Int8Program) or torchao's int8 weights
    (quantize_, tensor subclasses of its own)."""
    return any(
        type(m).__module__.startswith("torch.ao.nn.quantized") or type(m).__name__ == "Int8Program"
        for m in model.modules()
    ) or any(type(p).__module__.startswith("torchao.") for p in model.parameters())


def runs_on(model: nn.Module, device: torch.device | str) -> torch.device:
    """`device` for a float32 model; the CPU for a quantized or half-precision one (int8 kernels
    are CPU kernels, and half models are measured where they are deployed)."""
    half = any(p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters())
    return torch.device("cpu") if holds_int8(model) or half else torch.device(device)


@torch.no_grad()
def predict_logits(
    model: nn.Module, split: Split, batch_size: int = 512, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Logits of `model` (eval mode) on every example of `split`, in order, on the CPU."""
    device = runs_on(model, device)
    model.to(device).eval()
    outputs = []
    for start in range(0, len(split), batch_size):
        images = split.normalise(split.images[start : start + batch_size]).to(device)
        outputs.append(model(images).float().cpu())
    return torch.cat(outputs)
