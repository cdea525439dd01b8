"""Resume points of the training loops: a killed run continues from its last saved epoch.

A resume point is one file holding everything a training loop's future depends on, in the
torchvision references' shape (`{"model", "optimizer", "lr_scheduler", "epoch", ...}`): the
trained tensors (pruning masks included: they are buffers of the model), the optimizer's and
the scheduler's state, the epoch reached, the loop's own `torch.Generator`s (shuffling,
augmentation), torch's global CPU and CUDA generators (dropout draws from them), and the grad
scaler's state under fp16. Continuing from it is bit-identical to never having stopped.

Where resume points go is the caller's choice, made once around a stage's work with
`resume_area(directory, every)`: every training loop run inside (reference training, each
fine-tuning, each tuning candidate) gets the next file of that directory in call order, which
is the same order when a deterministic stage runs again. A loop that finished keeps its final
point, so a rerun skips it. Files hold tensors and plain values only (`torch.load(...,
weights_only=True)`); one that does not load, or was written by other settings, is ignored
with a warning and training starts from epoch 0.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import os
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1

logger = logging.getLogger(__name__)


@dataclass
class ResumeArea:
    """A directory of resume points and how often (in epochs) a loop writes one; `calls`
    numbers the training loops run in it so far."""

    directory: Path
    every: int = 1
    calls: int = field(default=0, compare=False)


_AREA: contextvars.ContextVar[ResumeArea | None] = contextvars.ContextVar(
    "compalign_resume_area", default=None
)


@contextlib.contextmanager
def resume_area(directory: str | Path | None, every: int = 1) -> Iterator[ResumeArea | None]:
    """Training loops run inside this block save resume points under `directory` every `every`
    epochs (and at their end) and continue from one they find; `None` or `every` 0: none."""
    area = ResumeArea(Path(directory), every) if directory is not None and every > 0 else None
    token = _AREA.set(area)
    try:
        yield area
    finally:
        _AREA.reset(token)


@dataclass
class ResumePoint:
    """The resume file of one training loop and what must match for it to be used."""

    path: Path
    every: int
    identity: dict[str, Any]

    def due(self, epochs_done: int, epochs: int) -> bool:
        """Whether to save after `epochs_done` epochs: every `every`, and at the end."""
        return epochs_done == epochs or epochs_done % self.every == 0

    def save(self, epoch: int, state: Mapping[str, Any]) -> None:
        """Write `state` (tensors and plain values) as reached after `epoch` epochs; atomic:
        a kill during the write leaves the previous point. A point that cannot be written
        (disk full; another run of the same stage finishing and removing the area) costs only
        the ability to resume: a warning, and training goes on."""
        payload = {
            "format": FORMAT_VERSION,
            "identity": self.identity,
            "epoch": epoch,
            "global_rng": global_rng_state(),
            **state,
        }
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(payload, partial)
            os.replace(partial, self.path)
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as RuntimeError
            logger.warning("%s: resume point not saved (%s)", self.path, error)
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)

    def load(self) -> dict[str, Any] | None:
        """The saved payload, or None when there is none usable (a warning says why)."""
        if not self.path.is_file():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
            logger.warning(
                "%s: resume point not loaded (%s); training from epoch 0", self.path, error
            )
            return None
        if payload.get("format") != FORMAT_VERSION or payload.get("identity") != self.identity:
            logger.warning(
                "%s: resume point of other settings or format; training from epoch 0", self.path
            )
            return None
        set_global_rng_state(payload["global_rng"])
        logger.info("%s: resuming after epoch %d", self.path, payload["epoch"])
        return payload


def next_resume_point(kind: str, config: Any, **identity: Any) -> ResumePoint | None:
    """The resume point of the training loop starting now inside `resume_area`, if any: the
    next file in call order, tied to `config` (a dataclass) and `identity` (plain values)."""
    area = _AREA.get()
    if area is None:
        return None
    area.calls += 1
    path = area.directory / f"{area.calls:03d}-{kind}.pt"
    described = {"kind": kind, "config": dataclasses.asdict(config), **identity}
    return ResumePoint(path, area.every, described)


def shapes(tensors: Mapping[str, Any]) -> list[list[Any]]:
    """Names and shapes of a state dict (part of a resume point's identity; a non-tensor entry,
    such as a module's extra state, counts by its name)."""
    return [[name, list(getattr(value, "shape", ()))] for name, value in tensors.items()]


def register_saved_masks(model: torch.nn.Module, state: Mapping[str, Any]) -> None:
    """Register the pruning masks a saved model state has and `model` has not yet (a schedule
    that first prunes after the loop started), so that `load_state_dict` fits. The parameter
    keeps its identity (`prune.identity` moves it to `<name>_orig`): an optimizer built over it
    still updates it."""
    from torch.nn.utils import prune

    present = model.state_dict()
    for key in state:
        if key.endswith("_mask") and key not in present:
            module_name, _, name = key.removesuffix("_mask").rpartition(".")
            prune.identity(model.get_submodule(module_name), name)


def global_rng_state() -> dict[str, Any]:
    """torch's global CPU generator, and every CUDA device's when CUDA is in use."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_global_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `global_rng_state` returned."""
    torch.set_rng_state(state["cpu"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
