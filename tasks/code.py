"""Which source files a stage's result depends on: the code half of every cache key.

A stage's code is the import closure of its task module and of the registry entries the call
uses (its loss, its compressor, its data source, ...), read from the source with `ast` (imports
inside functions count; `if TYPE_CHECKING:` blocks do not). Two kinds of module are left out:

- registry tables (`REGISTRIES`: the `__init__` of compalign.losses, compalign.compressors, ...):
  a stage reaches an entry only through the names in its params, so the entries it uses are
  added by name (`code_entries`) and the others never enter its key. Adding
  or editing a loss therefore leaves `prepare` and `reference` cached.
- code that cannot change a result (`NOT_RESULTS`: params validation, error types, the store and
  logging of the task layer, presentation).

`dvc.yaml` lists, per stage, the union over every entry the stage could use (`dvc_code`); a
test keeps the two in step.
"""

from __future__ import annotations

import ast
import hashlib
import threading
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

# The checkout this module belongs to. Not from compalign.__file__: loading an MLflow model logged
# with `code_paths` re-imports compalign from the model's temporary copy of it.
ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("compalign", "tasks")

# Packages whose __init__ is a name -> entry table; their entries are reached by name only.
REGISTRIES = frozenset(
    {
        "compalign.losses",
        "compalign.compressors",
        "compalign.data.sources",
        "compalign.audit.metrics",
        "compalign.model_sources",
    }
)
# Modules (or packages, with everything below them) that cannot change a stage's result.
NOT_RESULTS = (
    "compalign",  # the package __init__: version and re-exports
    "compalign.config",
    "compalign.errors",
    "compalign.options",
    "compalign.report",
    "tasks",
    "tasks.code",
    "tasks.logs",
    "tasks.options",
    "tasks.store",
)
# The task module of each stage: its own file is the root of the stage's closure.
STAGE_MODULES = {
    "prepare": "tasks.data",
    "reference": "tasks.train",
    "compress": "tasks.compress",
    "align": "tasks.align",
    "audit": "tasks.audit",
    "costs": "tasks.costs",
    "predict": "tasks.predict",
    "pruned": "tasks.pruned",
}


def module_file(name: str) -> Path | None:
    """The source file of a project module (a package's __init__.py), None if not ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _excluded(name: str) -> bool:
    return name in REGISTRIES or any(
        name == skip or (skip != "compalign" and skip != "tasks" and name.startswith(skip + "."))
        for skip in NOT_RESULTS
    )


def _imports(tree: ast.AST) -> Iterable[str]:
    """Module names a source imports (`from a import b` yields a.b and a), skipping
    `if TYPE_CHECKING:` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (name for child in node.orelse for name in _imports(child))
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        yield from _imports(node)


# CPython's ast.parse is not safe from several threads at once (task threads compute keys in
# parallel: "SystemError: AST constructor recursion depth mismatch" was seen)
_PARSING = threading.Lock()


@cache
def _direct(name: str) -> tuple[str, ...]:
    path = module_file(name)
    if path is None:
        raise FileNotFoundError(f"{name}: no source file for this project module under {ROOT}")
    with _PARSING:
        tree = ast.parse(path.read_text(), str(path))
    return tuple(dict.fromkeys(found for found in _imports(tree) if module_file(found)))


@cache
def closure(roots: tuple[str, ...]) -> tuple[str, ...]:
    """Project modules that `roots` import, transitively, registries and NOT_RESULTS left out
    (roots themselves are always in)."""
    seen: dict[str, None] = {}
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in seen or (name not in roots and _excluded(name)):
            continue
        seen[name] = None
        stack.extend(_direct(name))
    return tuple(sorted(seen))


def relative(name: str) -> str:
    """A module's file relative to its package's parent ("compalign/losses/kd.py")."""
    path = module_file(name)
    depth = len(name.split(".")) + (path.name == "__init__.py")
    return path.relative_to(path.parents[depth - 1]).as_posix()


def entry_module(entry: Any) -> str:
    """The module that defines a registry entry (where its function lives)."""
    for attribute in ("factory", "apply", "load", "compute"):
        function = getattr(entry, attribute, None)
        if callable(function):
            return function.__module__
    raise TypeError(f"{entry!r} is not a registry entry")


def _named(registry: Mapping[str, Any], *names: Any) -> list[Any]:
    return [registry[name] for name in names if isinstance(name, str) and name in registry]


def code_entries(stage: str, parameters: Mapping[str, Any] | None) -> list[Any]:
    """The registry entries a stage call uses, read from its store parameters (None: every
    entry the stage could use). Read here, not from the task modules, so that computing a key
    imports no orchestration."""
    from compalign.audit.metrics import METRICS
    from compalign.compressors import COMPRESSORS
    from compalign.data.sources import SOURCES
    from compalign.losses import LOSSES
    from compalign.model_sources import MODEL_SOURCES

    every = parameters is None
    parameters = parameters or {}
    if stage == "prepare":  # the data source
        data = parameters.get("data") or {}
        return list(SOURCES.values()) if every else _named(SOURCES, data.get("source"))
    if stage == "reference":  # trained with plain cross-entropy, or read by a model source
        reference = parameters.get("reference") or {}
        if every:
            return [LOSSES["ce"], *MODEL_SOURCES.values()]
        if reference.get("source") == "file":
            return _named(MODEL_SOURCES, _spec_source(reference.get("path")))
        return [LOSSES["ce"]]
    # the compressor, and the loss (Taylor importance, align, training a pruned member)
    if stage in ("compress", "align", "pruned"):
        if every:
            return [*COMPRESSORS.values(), *LOSSES.values()]
        return _named(COMPRESSORS, parameters.get("method")) + _named(
            LOSSES, parameters.get("loss")
        )
    if stage == "audit":  # every metric, and the compressor that rebuilds the checkpoint
        if every:
            return [*METRICS.values(), *COMPRESSORS.values()]
        labels = parameters.get("labels") or {}
        return [*METRICS.values(), *_named(COMPRESSORS, labels.get("compressor"))]
    return []


def _spec_source(spec: Any) -> str | None:
    """The model source a reference.path spec names (None when it names none)."""
    from compalign.errors import UserError
    from compalign.model_sources import parse_spec

    try:
        return parse_spec(str(spec))[0]
    except UserError:
        return None


def stage_files(stage: str, parameters: Mapping[str, Any] | None = None) -> list[str]:
    """The files a stage call's result depends on; parameters=None: every entry it could use."""
    entries = code_entries(stage, parameters)
    roots = (STAGE_MODULES[stage], *sorted({entry_module(entry) for entry in entries}))
    return [relative(name) for name in closure(roots)]


def code_digest(stage: str, parameters: Mapping[str, Any] | None = None) -> str:
    """sha256 over the names and contents of `stage_files(stage, parameters)`."""
    digest = hashlib.sha256()
    for name in stage_files(stage, parameters):
        digest.update(name.encode())
        digest.update(read_source(name))
    return digest.hexdigest()


def read_source(name: str) -> bytes:
    """The bytes of a project file named relative to the root."""
    return (ROOT / name).read_bytes()


def dvc_code(stage: str) -> list[str]:
    """The code deps of a DVC stage: every file the stage could depend on (DVC's audit stage
    also measures costs). Where a stage may use every entry of a registry, the registry's folder
    stands for them, so adding an entry needs no change to dvc.yaml."""
    files = set(stage_files(stage))
    if stage == "audit":
        files |= set(stage_files("costs"))
    for package in sorted(REGISTRIES):
        folder = ROOT.joinpath(*package.split("."))
        entries = {
            path.relative_to(ROOT).as_posix()
            for path in folder.glob("*.py")
            if path.name != "__init__.py"
        }
        if entries and entries <= files:
            files = (files - entries) | {folder.relative_to(ROOT).as_posix()}
    return sorted(files)


def is_code(dep: str) -> bool:
    """Whether a dvc.yaml dep is project code (a source file or a registry's folder)."""
    return dep.split("/")[0] in PACKAGES


def dvc_loss_params() -> list[str]:
    """The `align` keys DVC's compress stage reads: a loss's options rank channels for Taylor
    importance (every loss with options)."""
    from compalign.losses import LOSSES
    from compalign.options import has_options

    return ["align.losses"] + [
        f"align.{name}" for name, entry in LOSSES.items() if has_options(entry.options)
    ]


def update_dvc_yaml(path: str | Path = ROOT / "dvc.yaml") -> bool:
    """Rewrite, in dvc.yaml, the code deps (the `.py` lines of each stage's `deps:`) to
    `dvc_code(stage)` and the compress stage's `align.*` params to `dvc_loss_params()`, keeping
    everything else as written; True if the file changed."""
    path = Path(path)
    lines = path.read_text().splitlines(keepends=True)
    out: list[str] = []
    stage, block = None, None
    for line in lines + ["  end:\n"]:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.endswith(":") and not stripped.startswith("#") and indent in (2, 4):
            if block == "deps:":
                out += [f"      - {name}\n" for name in dvc_code(stage)]
            elif block == "params:" and stage == "compress":
                out += [f"      - {key}\n" for key in dvc_loss_params()]
            block = stripped if indent == 4 else None
            if indent == 2:
                stage = stripped[:-1]
        generated = (block == "deps:" and is_code(stripped.removeprefix("- "))) or (
            block == "params:" and stage == "compress" and stripped.startswith("- align.")
        )
        if stripped.startswith("- ") and generated:
            continue
        out.append(line)
    out.pop()
    text = "".join(out)
    changed = text != path.read_text()
    path.write_text(text)
    return changed


if __name__ == "__main__":  # python -m tasks.code: bring dvc.yaml's code deps up to date
    print("dvc.yaml updated" if update_dvc_yaml() else "dvc.yaml already up to date")
