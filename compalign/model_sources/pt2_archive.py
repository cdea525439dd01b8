"""A torch.export archive (`.pt2`) checked before torch reads any of it.

`torch.export.load` (torch 2.14.1, `torch/export/pt2_archive/_package.py` and
`torch/_export/serde/serialize.py`) runs code from the file in five places, each confirmed here
with a marker file (tests/test_hostile.py):

1. `deserialize_torch_artifact` loads the sample inputs (`data/sample_inputs/model.pt`, and the
   legacy `data/weights/model.pt`, `data/constants/model.pt` and pre-2.7 `serialized_*.pt`
   entries) with `weights_only=True` and, when that fails, again with `weights_only=False`
   ("Fallback to weights_only=False succeeded"): a planted `__reduce__` runs. Its archive reader
   (`PyTorchFileReader`, miniz) finds names case-insensitively, so `model.PT` is read as well.
2. Weights and constants marked `use_pickle` are read with `torch.load(weights_only=False)`,
   `opaque_obj_*` constants with `pickle.loads`, `custom_obj_*` with the TorchScript unpickler.
3. Any `data/aotinductor/<model>/...` entry makes it `dlopen` the archive's shared libraries.
4. Every `expr_str` of the program (symbolic sizes) goes through `sympy.sympify`, which `eval`s it.
5. `ExportedProgram.module()` `exec`s the program's `guards_code` strings (check_guards=True).

So an archive is opened only when every entry is one that torch.export.save writes for a CPU
program: exact, case-sensitive names (ALLOWED below, learnt by listing archives torch 2.14.1
writes), stored uncompressed (as torch writes them: no decompression, so no zip bomb), with
sizes bounded and consistent with the file; the JSON parts parse with the types torch writes;
no weight or constant is pickled; every tensor file holds the bytes its metadata needs; every
symbolic expression and guard is an arithmetic expression over allowed names (checked on its
syntax tree, never evaluated); every operator is an aten/prims operator or a symbolic-size
builtin. torch then reads a copy that holds only those checked entries, under fixed names, with
empty sample inputs. That closes each path: (1) the sample inputs are an empty record, which
`deserialize_torch_artifact` returns as {} without calling torch.load, and no legacy or
differently-cased name is in the copy, so the weights_only=False fallback cannot be reached;
(2) `use_pickle` and object constants are refused; (3) no `aotinductor/` entry is copied;
(4) only checked expressions reach sympify; (5) the program is made a module with
check_guards=False (its guards are never executed), and its guards are checked all the same.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compalign.errors import UserError

MODEL = "model"  # torch.export.save writes one program under this name
TEXT_ENTRIES = {  # small records of the archive format: their exact content
    "archive_format": re.compile(r"pt2"),
    "archive_version": re.compile(r"0"),
    "byteorder": re.compile(r"little|big"),
    ".data/version": re.compile(r"[0-9]{1,4}\n?"),
    ".data/serialization_id": re.compile(r"[0-9a-zA-Z]{1,64}"),
}
PROGRAM = f"models/{MODEL}.json"
WEIGHTS_CONFIG = f"data/weights/{MODEL}_weights_config.json"
CONSTANTS_CONFIG = f"data/constants/{MODEL}_constants_config.json"
SAMPLE_INPUTS = f"data/sample_inputs/{MODEL}.pt"
JSON_ENTRIES = (PROGRAM, WEIGHTS_CONFIG, CONSTANTS_CONFIG)
WEIGHT = re.compile(r"data/weights/(weight_[0-9]{1,9})")
CONSTANT = re.compile(r"data/constants/(tensor_[0-9]{1,9})")
EXTRA = re.compile(r"extra/[A-Za-z0-9_.\-]{1,128}")  # torch.export.save(extra_files=...)
ROOT = re.compile(r"[A-Za-z0-9_.\-]{1,255}")

MAX_ENTRIES = 100_000
MAX_JSON_BYTES = 64 * 2**20  # a ViT-H program is a few MB of JSON
MAX_SAMPLE_INPUTS_BYTES = 256 * 2**20
MAX_EXTRA_BYTES = 2**20
MAX_EXPRESSION_CHARS = 4096

# Names a symbolic expression may call or use: sympy's constructors as torch prints them
# (srepr: `Mul(Integer(2), Symbol('s39', positive=True, integer=True))`) and the functions
# torch's deserializer passes to sympify (its `sympy_functions`), without powers or shifts (an
# exponent of 10**9 is a denial of service, not a size).
SYMPY_NAMES = frozenset(
    {
        "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Max", "Min", "Abs", "Mod",
        "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan",
        "LessThan", "StrictGreaterThan", "GreaterThan", "And", "Or", "Not", "true", "false",
        "oo", "zoo", "nan", "Piecewise", "ITE", "FloorDiv", "ModularIndexing", "Where",
        "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "FloatTrueDiv",
        "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
        "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
    }
)  # fmt: skip
SYMPY_KEYWORDS = frozenset(
    {"positive", "negative", "integer", "real", "nonnegative", "nonpositive", "finite", "zero"}
)
SYMBOL = re.compile(r"[a-z]{1,8}[0-9]{1,9}")  # s77, u0: the size symbols torch names
GUARD_ATTRIBUTES = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
ALLOWED_NAMESPACES = ("aten", "prims")
# the builtins a program may call on symbolic sizes (torch's _SYM_OPS), by serialized name
SYM_OPERATORS = frozenset(
    {f"_operator.{name}" for name in (
        "eq", "ne", "le", "ge", "lt", "gt", "neg", "pos", "mul", "add", "sub", "floordiv",
        "mod", "truediv", "and_", "or_", "getitem",
    )}
    | {"math.trunc", "torch.sym_not", "torch.sym_int", "torch.sym_float", "torch.sym_ite",
       "torch.sym_max", "torch.sym_min", "torch.sym_sqrt"}
)  # fmt: skip
OPERATOR = re.compile(r"torch\.ops\.(aten|prims)\.[A-Za-z0-9][A-Za-z0-9_]*\.[A-Za-z0-9_]+")


@dataclass
class CheckedArchive:
    """What `check_archive` found: the archive's top folder and its entries (name under the top
    folder -> ZipInfo), all of them allowed."""

    path: Path
    root: str
    entries: dict[str, zipfile.ZipInfo]


def _refuse(path: Path, why: str) -> UserError:
    return UserError(
        f"{path}: refused: {why}; compalign opens only the entries torch.export.save writes "
        "for a CPU program (export it again with torch.export.save)"
    )


def _malformed(path: Path, why: str) -> UserError:
    return UserError(f"{path}: not a readable torch.export program ({why})")


def _pickled(path: Path, what: str) -> UserError:
    return UserError(
        f"{path}: refused: {what} is a pickled Python object, which compalign never unpickles "
        "(that can run any code); export the program without it (plain tensors only)"
    )


def check_archive(path: Path) -> CheckedArchive:
    """The archive's entries, every one allowed, stored, and sized consistently; UserError
    naming the first entry that is not, before anything is decompressed or parsed."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise _malformed(path, f"not a .pt2 zip archive: {error}") from None
    with archive:
        infos = archive.infolist()
    if not infos:
        raise _malformed(path, "an empty zip archive")
    if len(infos) > MAX_ENTRIES:
        raise _refuse(path, f"{len(infos)} entries (at most {MAX_ENTRIES})")
    roots = {info.filename.partition("/")[0] for info in infos}
    root = next(iter(roots))
    if len(roots) != 1 or not ROOT.fullmatch(root) or root in (".", ".."):
        raise _refuse(path, f"entries under {len(roots)} top folders ({sorted(roots)[:3]})")
    size = path.stat().st_size
    entries: dict[str, zipfile.ZipInfo] = {}
    folded: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename.partition("/")[2]
        if not _allowed(name):
            raise _refuse(path, f"unexpected entry {info.filename!r}")
        if name.casefold() in folded:  # torch's reader matches names case-insensitively
            raise _refuse(path, f"entry {info.filename!r} appears twice")
        folded.add(name.casefold())
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise _refuse(
                path, f"entry {info.filename!r} is compressed (torch.export.save stores entries)"
            )
        if info.flag_bits & 0x1:
            raise _refuse(path, f"entry {info.filename!r} is encrypted")
        total += info.file_size
        if total > size:
            raise _refuse(path, f"entry {info.filename!r} declares more bytes than the file has")
        limit = _size_limit(name)
        if info.file_size > limit:
            raise _refuse(
                path, f"entry {info.filename!r} is {info.file_size} bytes (at most {limit})"
            )
        entries[name] = info
    for required in (*TEXT_ENTRIES, PROGRAM, WEIGHTS_CONFIG, CONSTANTS_CONFIG):
        if required not in entries:
            raise _malformed(path, f"no {root}/{required}")
    return CheckedArchive(path, root, entries)


def _allowed(name: str) -> bool:
    return (
        name in TEXT_ENTRIES
        or name in JSON_ENTRIES
        or name == SAMPLE_INPUTS
        or bool(WEIGHT.fullmatch(name) or CONSTANT.fullmatch(name) or EXTRA.fullmatch(name))
    )


def _size_limit(name: str) -> int:
    if name in TEXT_ENTRIES:
        return 64
    if name in JSON_ENTRIES:
        return MAX_JSON_BYTES
    if name == SAMPLE_INPUTS:
        return MAX_SAMPLE_INPUTS_BYTES
    if EXTRA.fullmatch(name):
        return MAX_EXTRA_BYTES
    return 2**62  # tensors: bounded by the file's size (check_archive)


def _read(archive: zipfile.ZipFile, checked: CheckedArchive, name: str) -> bytes:
    """One entry's bytes, read with its declared size as the limit (CRC checked)."""
    info = checked.entries[name]
    try:
        with archive.open(info) as handle:
            data = handle.read(info.file_size + 1)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise _malformed(checked.path, f"entry {info.filename!r}: {error}") from None
    if len(data) != info.file_size:
        raise _malformed(checked.path, f"entry {info.filename!r} is truncated")
    return data


def _json(path: Path, entry: str, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise _malformed(path, f"{entry} is not valid JSON: {first}") from None


def check_contents(archive: zipfile.ZipFile, checked: CheckedArchive) -> None:
    """The parts torch would interpret: text records, the program, the weights and constants
    configs against their tensor files, and the sample inputs (with weights_only=True)."""
    path = checked.path
    for name, pattern in TEXT_ENTRIES.items():
        text = _read(archive, checked, name).decode("ascii", errors="replace")
        if not pattern.fullmatch(text):
            raise _malformed(path, f"{name} holds {text[:20]!r}")
    program = _json(path, PROGRAM, _read(archive, checked, PROGRAM))
    _check_program(path, program)
    referenced: set[str] = set()
    for config_name, pattern, folder in (
        (WEIGHTS_CONFIG, WEIGHT, "data/weights/"),
        (CONSTANTS_CONFIG, CONSTANT, "data/constants/"),
    ):
        config = _json(path, config_name, _read(archive, checked, config_name))
        referenced |= _check_payloads(path, checked, config_name, config, pattern, folder)
    for name in checked.entries:
        if (WEIGHT.fullmatch(name) or CONSTANT.fullmatch(name)) and name not in referenced:
            raise _refuse(path, f"entry {checked.root}/{name} is named by no config")
    for name in checked.entries:
        if EXTRA.fullmatch(name):
            try:
                _read(archive, checked, name).decode("utf-8")
            except UnicodeDecodeError:
                raise _malformed(path, f"{name} is not UTF-8 text") from None
    if SAMPLE_INPUTS in checked.entries:
        data = _read(archive, checked, SAMPLE_INPUTS)
        if data:
            try:
                with warnings.catch_warnings():  # torch warns of a pickle protocol it refuses
                    warnings.simplefilter("ignore")
                    torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                raise _pickled(path, SAMPLE_INPUTS) from None
            except Exception as error:  # torch.load raises many types on a broken file
                raise _malformed(path, f"{SAMPLE_INPUTS}: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _check_payloads(
    path: Path,
    checked: CheckedArchive,
    config_name: str,
    config: Any,
    pattern: re.Pattern[str],
    folder: str,
) -> set[str]:
    """Every entry of a weights or constants config: a plain tensor (not pickled) whose file is
    in the archive and holds the bytes its size, strides and offset need. Returns the entries
    named."""
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _malformed(path, f"{config_name} has no config mapping")
    named = set()
    for fqn, meta in entries.items():
        where = f"{config_name}: {str(fqn)[:80]!r}"
        if not isinstance(meta, dict):
            raise _malformed(path, f"{where} is not a mapping")
        if meta.get("use_pickle") is not False:
            raise _pickled(path, where)
        file_name = meta.get("path_name")
        if not isinstance(file_name, str) or not pattern.fullmatch(folder + file_name):
            raise _refuse(path, f"{where} names {str(file_name)[:80]!r}, not a tensor file")
        entry = folder + file_name
        if entry not in checked.entries:
            raise _malformed(path, f"{where}: {entry} is missing")
        tensor = meta.get("tensor_meta")
        if not isinstance(tensor, dict):
            raise _malformed(path, f"{where} has no tensor_meta")
        dtype = _SERIALIZE_TO_TORCH_DTYPE.get(tensor.get("dtype"))
        device = tensor.get("device")
        if dtype is None:
            raise _malformed(path, f"{where}: unknown dtype {tensor.get('dtype')!r}")
        if tensor.get("layout") != 7:  # torch.strided
            raise _refuse(path, f"{where} is not a strided (dense) tensor")
        if not isinstance(device, dict) or device.get("type") != "cpu":
            raise _refuse(path, f"{where} is on {device!r}, not the CPU: export it on the CPU")
        sizes, strides = _ints(tensor.get("sizes")), _ints(tensor.get("strides"))
        offset = _ints([tensor.get("storage_offset")])
        if sizes is None or strides is None or offset is None or len(sizes) != len(strides):
            raise _malformed(path, f"{where}: sizes, strides or storage_offset malformed")
        itemsize = torch.empty((), dtype=dtype).element_size()
        needed = 0
        if all(sizes):
            needed = offset[0] + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True))
            needed = (needed + 1) * itemsize
        stored = checked.entries[entry].file_size
        if stored < needed or stored % itemsize:
            raise _malformed(
                path, f"{where}: {entry} holds {stored} bytes, the tensor needs {needed}"
            )
        named.add(entry)
    return named


def _ints(values: Any) -> list[int] | None:
    """[{"as_int": n}, ...] -> [n, ...] when every n is a non-negative int, else None."""
    if not isinstance(values, list):
        return None
    found = []
    for value in values:
        number = value.get("as_int") if isinstance(value, dict) and len(value) == 1 else None
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < 2**62:
            return None
        found.append(number)
    return found


def _check_program(path: Path, program: Any) -> None:
    """The serialized program: every operator allowed, every symbolic expression and guard an
    arithmetic expression over allowed names, no custom objects, range constraints numbers."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise _malformed(path, f"{PROGRAM} is not a serialized program")
    guards = program.get("guards_code", [])
    if not isinstance(guards, list) or not all(isinstance(guard, str) for guard in guards):
        raise _malformed(path, f"{PROGRAM}: guards_code is not a list of strings")
    for guard in guards:
        if not safe_expression(guard, guard=True):
            raise _refuse(path, f"a guard that is not a size comparison: {guard[:80]!r}")
    constraints = program.get("range_constraints", {})
    if not isinstance(constraints, dict):
        raise _malformed(path, f"{PROGRAM}: range_constraints is not a mapping")
    for name, bounds in constraints.items():
        if not safe_expression(name) or not isinstance(bounds, dict):
            raise _refuse(path, f"a range constraint on {str(name)[:80]!r}")
        for key in ("min_val", "max_val"):
            value = bounds.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise _malformed(path, f"{PROGRAM}: range_constraints {name}.{key} = {value!r}")
    for kind, value in _walk(program):
        if kind == "expr_str" and not (isinstance(value, str) and safe_expression(value)):
            raise _refuse(path, f"a symbolic size that is not arithmetic: {str(value)[:80]!r}")
        if kind in ("target", "as_operator") and not _allowed_operator(value):
            raise _refuse(path, f"operator {str(value)[:80]!r} (only aten and prims operators)")
        if kind == "as_custom_obj":
            raise _refuse(path, "a custom object argument")


def _walk(tree: Any) -> Iterator[tuple[str, Any]]:
    """(key, value) of every expression, operator and custom object of a serialized program:
    `expr_str` anywhere, a node's `target` (a mapping with target, inputs and outputs), an
    `as_operator` or `as_custom_obj` argument. Iterative: a deep tree cannot overflow."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in ("expr_str", "as_operator", "as_custom_obj"):
                if key in node:
                    yield key, node[key]
            if "target" in node and "inputs" in node and "outputs" in node:
                yield "target", node["target"]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _allowed_operator(target: Any) -> bool:
    return isinstance(target, str) and (target in SYM_OPERATORS or bool(OPERATOR.fullmatch(target)))


def safe_expression(text: str, guard: bool = False) -> bool:
    """Whether `text` is an arithmetic expression torch writes for sizes: numbers, size symbols
    and calls of the SYMPY_NAMES constructors (with identifier strings and boolean keywords),
    combined with + - * / // % and comparisons; with `guard`, also `L['x'].size()[0]`-style size
    reads. Checked on its syntax tree, never evaluated; no attributes, powers or shifts."""
    if not isinstance(text, str) or len(text) > MAX_EXPRESSION_CHARS:
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    operators = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod)
    for node in ast.walk(tree):
        if isinstance(node, ast.Expression | ast.expr_context):
            continue
        if isinstance(node, ast.operator | ast.unaryop | ast.boolop | ast.cmpop):
            continue  # checked with the node that holds it
        if isinstance(node, ast.BinOp):
            ok = isinstance(node.op, operators)
        elif isinstance(node, ast.UnaryOp):
            ok = isinstance(node.op, ast.USub | ast.UAdd | ast.Not)
        elif isinstance(node, ast.BoolOp | ast.Compare):
            ok = True
        elif isinstance(node, ast.Constant):
            value = node.value
            ok = (
                isinstance(value, bool | float | type(None))
                or (isinstance(value, int) and abs(value) < 2**63)
                or (isinstance(value, str) and ROOT.fullmatch(value) is not None)
            )
        elif isinstance(node, ast.Name):
            ok = (
                node.id in SYMPY_NAMES
                or bool(SYMBOL.fullmatch(node.id))
                or (guard and node.id == "L")
            )
        elif isinstance(node, ast.Call):
            named = isinstance(node.func, ast.Name) and node.func.id in SYMPY_NAMES
            method = guard and isinstance(node.func, ast.Attribute) and not node.args
            ok = (named or method) and all(
                keyword.arg in SYMPY_KEYWORDS and isinstance(keyword.value, ast.Constant)
                for keyword in node.keywords
            )
        elif isinstance(node, ast.keyword):
            ok = node.arg in SYMPY_KEYWORDS
        elif isinstance(node, ast.Attribute):
            ok = guard and node.attr in GUARD_ATTRIBUTES and isinstance(node.value, ast.Subscript)
        elif isinstance(node, ast.Subscript):
            ok = guard and isinstance(node.slice, ast.Constant)
        else:
            ok = False
        if not ok:
            return False
    return True


def write_checked_copy(archive: zipfile.ZipFile, checked: CheckedArchive, target: Path) -> None:
    """A new archive at `target` (named model.pt2 by the caller) with only the checked entries,
    under torch's own writer and fixed names, and empty sample inputs (torch then never calls
    torch.load on anything from the file)."""
    from torch.export.pt2_archive import PT2ArchiveWriter

    with PT2ArchiveWriter(str(target)) as writer:
        for name in checked.entries:
            if name in (".data/version", ".data/serialization_id", "byteorder"):
                continue  # written by torch's writer itself
            data = b"" if name == SAMPLE_INPUTS else _read(archive, checked, name)
            writer.write_bytes(name, data)
        if SAMPLE_INPUTS not in checked.entries:
            writer.write_bytes(SAMPLE_INPUTS, b"")


def check_graph(path: Path, module: torch.nn.Module) -> None:
    """After loading: every call in the program's graphs is an aten/prims operator or a
    symbolic-size builtin (defence in depth: the serialized names were checked already)."""
    import math
    import operator

    builtins = {
        getattr(operator, name.removeprefix("_operator."))
        for name in SYM_OPERATORS
        if name.startswith("_operator.")
    } | {math.trunc, torch.sym_not, torch.sym_int, torch.sym_float, torch.sym_ite,
         torch.sym_max, torch.sym_min, torch.sym_sqrt}  # fmt: skip
    for submodule in module.modules():
        graph = getattr(submodule, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            if node.op == "call_function":
                target = node.target
                overload = isinstance(target, torch._ops.OpOverload)
                if not (overload and target.namespace in ALLOWED_NAMESPACES) and (
                    target not in builtins
                ):
                    raise _refuse(path, f"the program calls {target!r}")
            elif node.op in ("call_method",):
                raise _refuse(path, f"the program calls method {node.target!r}")


@contextlib.contextmanager
def quiet_torch_export() -> Iterator[None]:
    """torch.export's loggers off while it loads (they print tracebacks of what this module
    turns into one line)."""
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
