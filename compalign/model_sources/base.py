"""What a model source is, what it gives back, and the checks every source shares.

A model source reads one way of storing a trained classifier (a compalign checkpoint, a state
dict of a torchvision or timm architecture, TorchScript, a torch.export program, ONNX) and
returns a `LoadedModel`: a callable from a float batch [N, C, H, W] to logits, with what the
source knows about it (its classes, its input size, its preprocessing, its weights).

Nothing here unpickles Python objects: state dicts are read with `torch.load(weights_only=True)`
(or safetensors), and a file that only a full unpickling could read (what `torch.save(model)`
writes) is refused with one line naming the formats that are safe to load.
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compalign.errors import UserError
from compalign.files import sha256_file
from compalign.preprocess import TransformParams

SAFE_FORMATS = (
    "a state dict (torch.save(model.state_dict(), FILE), then torchvision:NAME@FILE or "
    "timm:NAME@FILE), TorchScript (.pt/.ts), a torch.export program (.pt2) or ONNX (.onnx)"
)


@dataclass
class LoadedModel:
    """A model ready to audit. `model` maps float images [N, C, H, W] to logits [N, K] and is
    safe to put in eval mode; `weights` is the module holding its parameters where the format
    has one (parameter counts, MACs); `files` are what it was read from (their digest names
    it)."""

    model: nn.Module
    source: str
    spec: str
    files: tuple[Path, ...]
    weights: nn.Module | None = None
    num_classes: int | None = None  # known without running it; else probed
    input_size: tuple[int, int] | None = None  # (H, W) the model only accepts, where fixed
    in_channels: int | None = None
    transform: TransformParams | None = None  # the preprocessing the source knows
    eager: bool = False  # plain PyTorch modules: MACs are counted, batch norm fused for latency
    parameter_counts: dict[str, int] | None = None  # where `weights` is None (ONNX)
    architecture: dict[str, Any] | None = None  # how to rebuild it from a state dict
    notes: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        """sha256 of the model's files (one file: its own sha256)."""
        digests = [sha256_file(path) for path in self.files]
        if len(digests) == 1:
            return digests[0]
        import hashlib

        return hashlib.sha256("".join(digests).encode()).hexdigest()

    @property
    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)


@dataclass(frozen=True)
class ModelSource:
    """A registry entry: the loader (its docstring says what it reads), how a spec names it
    (`syntax`, shown in messages), the bare paths it is inferred from (file suffixes, or a
    directory), and, for a source of state dicts, how to build its architecture again
    (`build(architecture, num_classes)`, one of compalign.models.LIBRARY_MODELS: what a
    pipeline checkpoint of it rebuilds from)."""

    load: Callable[[str, str], LoadedModel]  # (argument after "name:", the whole spec)
    syntax: str
    suffixes: tuple[str, ...] = ()
    directory: bool = False
    build: Callable[[str, int], nn.Module] | None = None

    @property
    def description(self) -> str:
        return inspect.getdoc(self.load) or ""


def existing_file(path: str, spec: str) -> Path:
    """`path` as a Path, refusing one that is not a file."""
    found = Path(path).expanduser()
    if not found.is_file():
        where = "a directory, not a file" if found.is_dir() else "not found"
        raise UserError(f"model {spec!r}: {found} is {where}")
    return found


def split_name_file(argument: str, spec: str, source: str) -> tuple[str, Path]:
    """ "NAME@FILE" -> (NAME, FILE), refusing anything else with the expected syntax."""
    name, at, path = argument.partition("@")
    if not at or not name or not path:
        raise UserError(
            f"model {spec!r}: expected {source}:<architecture>@<weights file>, "
            f"e.g. {source}:resnet18@weights.pt"
        )
    return name, existing_file(path, spec)


def pickled_object_error(path: Path) -> UserError:
    return UserError(
        f"{path}: a pickled Python object (what torch.save(model) writes), which compalign "
        f"never unpickles (that can run any code); save the model as {SAFE_FORMATS}"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a torch.save file, never unpickling code; a
    training checkpoint holding one under "state_dict", "model" or "model_state_dict" is
    unwrapped, DataParallel's "module." prefix dropped."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path), device="cpu")
        except SafetensorError as error:
            raise UserError(f"{path}: not a readable safetensors file ({error})") from None
    else:
        state = torch_load_weights(path)
    if isinstance(state, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    tensors = isinstance(state, Mapping) and all(
        isinstance(value, torch.Tensor) for value in state.values()
    )
    if not tensors or not state:
        raise UserError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return dict(state)


def _quiet_weights_only_load(path: Path) -> Any:
    """torch.load(weights_only=True) without its warning about a pickle protocol it then
    refuses (the refusal is the message)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def torch_load_weights(path: Path) -> Any:
    """torch.load with weights_only=True; a pickled object it cannot read safely is refused."""
    try:
        return _quiet_weights_only_load(path)
    except pickle.UnpicklingError:
        raise pickled_object_error(path) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise UserError(f"{path}: not a torch.save file ({str(error).splitlines()[0]})") from None


def diagnose_torch_file(path: Path, expected: str) -> UserError:
    """Why a file is not `expected`: a pickled module (refused), a state dict (needs its
    architecture), a compalign checkpoint file (pass its folder), or not a model at all."""
    try:
        content = _quiet_weights_only_load(path)
    except pickle.UnpicklingError:
        return pickled_object_error(path)
    except Exception:  # any other failure: it is no torch file at all
        return UserError(f"{path}: not {expected}, nor any PyTorch file compalign reads")
    if isinstance(content, Mapping) and "architecture" in content and "state_dict" in content:
        return UserError(f"{path}: a compalign checkpoint file; pass its folder {path.parent}")
    if isinstance(content, Mapping):
        return UserError(
            f"{path}: a state dict, which needs its architecture: torchvision:<name>@{path} or "
            f"timm:<name>@{path}"
        )
    return UserError(f"{path}: not {expected} (torch.load finds a {type(content).__name__})")


def load_weights_into(model: nn.Module, state: dict[str, torch.Tensor], spec: str) -> nn.Module:
    """A strict load_state_dict whose failure is one line naming a few keys."""
    result = model.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {result.missing_keys[:3]}")
    if result.unexpected_keys:
        problems.append(f"unexpected {result.unexpected_keys[:3]}")
    if problems:
        raise UserError(
            f"model {spec!r}: the weights do not fit the architecture ({'; '.join(problems)})"
        )
    return model.eval()


def last_linear_classes(model: nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """The output count of `model`'s last Linear layer as the state dict has it (the classes the
    weights were trained for), or None when there is no such layer."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    weight = state.get(f"{last}.weight") if last is not None else None
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None


class FixedBatch(nn.Module):
    """Runs a model that accepts one batch size only on any batch: in chunks of that size, the
    last chunk padded by repeating its last example. The wrapped callable is not registered as
    a submodule (an exported program refuses train()/eval())."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], batch_size: int) -> None:
        super().__init__()
        object.__setattr__(self, "_forward", forward)  # not a registered submodule
        self.batch_size = batch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.batch_size
        outputs = []
        for start in range(0, len(images), size):
            chunk = images[start : start + size]
            count = len(chunk)
            if count < size:
                padding = chunk[-1:].expand(size - count, *chunk.shape[1:])
                chunk = torch.cat([chunk, padding])
            outputs.append(self._forward(chunk)[:count])
        return torch.cat(outputs)


class Unregistered(nn.Module):
    """A module that calls `forward` (any callable from images to logits) without registering
    it, so that train()/eval() never reach it."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        object.__setattr__(self, "_forward", forward)  # not a registered submodule

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._forward(images)


def fixed_batch_size(shape: list[Any] | tuple[Any, ...]) -> int | None:
    """The batch size of an input shape when it is a fixed number (else None: dynamic)."""
    first = shape[0] if len(shape) else None
    return first if isinstance(first, int) and first > 0 else None
