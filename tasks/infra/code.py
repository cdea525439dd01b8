"""Which source files a stage's result depends on: the code half of every cache key.

A stage's code is the import closure of its module (tasks/__init__.py's table) and of the
registry entries the call uses (its loss, its compressor, its data source, ...), read from the
source with `ast` (imports inside functions count; `if TYPE_CHECKING:` blocks do not). Two kinds
of module are left out:

- registry tables (`REGISTRIES`: the `__init__` of compalign.losses, compalign.compressors, ...):
  a stage reaches an entry only through the names in its params, so the entries it uses are
  added by name (the stage's declared `code`, from its parameters) and the others never enter
  its key. Adding or editing a loss therefore leaves `prepare` and `reference` cached.
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
ROOT = Path(__file__).resolve().parents[2]
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
    "tasks",  # the table of stages
    "tasks.infra",  # the package __init__ (tracking, below it, is in the keys of its users)
    "tasks.infra.code",
    "tasks.infra.logs",
    "tasks.infra.paths",
    "tasks.infra.stage",
    "tasks.infra.store",
)
# the package __init__s of NOT_RESULTS: left out themselves, not what is below them
PACKAGE_INITS = ("compalign", "tasks", "tasks.infra")


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
        name == skip or (skip not in PACKAGE_INITS and name.startswith(skip + "."))
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


def compression_entries(parameters: Mapping[str, Any] | None) -> list[Any]:
    """The compressor and the loss (Taylor importance, fine-tuning, training a pruned member) a
    call of compress, align or pruned uses, by the names in its parameters (None: every
    compressor and loss). Here, not in a stage module, so that no stage imports another's."""
    from compalign.compressors import COMPRESSORS
    from compalign.losses import LOSSES

    if parameters is None:
        return [*COMPRESSORS.values(), *LOSSES.values()]
    method, loss = parameters.get("method"), parameters.get("loss")
    return [
        registry[name]
        for registry, name in ((COMPRESSORS, method), (LOSSES, loss))
        if isinstance(name, str) and name in registry
    ]


def stage_files(stage: str, parameters: Mapping[str, Any] | None = None) -> list[str]:
    """The files a stage call's result depends on; parameters=None: every entry it could use."""
    from tasks import STAGES
    from tasks import stage as declared

    entries = declared(stage).code(parameters)
    roots = (STAGES[stage], *sorted({entry_module(entry) for entry in entries}))
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
    """The code deps of a DVC stage: every file the stage could depend on, and those of the
    stages that run within it (DVC's audit stage also measures costs). Where a stage may use
    every entry of a registry, the registry's folder stands for them, so adding an entry needs
    no change to dvc.yaml."""
    from tasks import stages

    files = set(stage_files(stage))
    for name, declared in stages().items():
        if declared.dvc_stage == stage:
            files |= set(stage_files(name))
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


def update_dvc_yaml(path: str | Path = ROOT / "dvc.yaml") -> bool:
    """Rewrite, in dvc.yaml, the code deps (the `.py` lines of each stage's `deps:`) to
    `dvc_code(stage)` and each stage's `params:` to the params its declaration names (a
    comment after a param is kept), keeping everything else as written; True if the file
    changed."""
    from tasks import stage as declared

    path = Path(path)
    lines = path.read_text().splitlines(keepends=True)
    out: list[str] = []
    stage, block = None, None
    comments: dict[str, str] = {}  # param -> its comment, of the params block being read
    for line in lines + ["  end:\n"]:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.endswith(":") and not stripped.startswith("#") and indent in (2, 4):
            if block == "deps:":
                out += [f"      - {name}\n" for name in dvc_code(stage)]
            elif block == "params:":
                out += [f"      - {key}{comments.get(key, '')}\n" for key in declared(stage).params]
                comments = {}
            block = stripped if indent == 4 else None
            if indent == 2:
                stage = stripped[:-1]
        if block == "params:" and stripped.startswith("- "):
            key, hash_, comment = stripped.removeprefix("- ").partition("#")
            if hash_:
                comments[key.strip()] = " " * (len(key) - len(key.rstrip())) + "#" + comment
            continue
        if block == "deps:" and stripped.startswith("- ") and is_code(stripped[2:]):
            continue
        out.append(line)
    out.pop()
    text = "".join(out)
    changed = text != path.read_text()
    path.write_text(text)
    return changed


if (
    __name__ == "__main__"
):  # python -m tasks.infra.code: bring dvc.yaml's code deps and params up to date
    print("dvc.yaml updated" if update_dvc_yaml() else "dvc.yaml already up to date")
