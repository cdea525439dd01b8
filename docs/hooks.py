"""MkDocs hook: the reference pages, generated from the code at build time so they cannot drift.

A page asks for generated content with a marker, an HTML comment on a line of its own (invisible
where the Markdown is read as it is, on GitHub):

    <!-- compalign:compressors -->       every entry of compalign.compressors.COMPRESSORS
    <!-- compalign:losses -->            compalign.losses.LOSSES
    <!-- compalign:metrics -->           compalign.audit.metrics.METRICS
    <!-- compalign:data-sources -->      compalign.data.sources.SOURCES
    <!-- compalign:model-sources -->     compalign.model_sources.MODEL_SOURCES
    <!-- compalign:params -->            every params section and key (compalign.config.Params)
    <!-- compalign:params-yaml -->       the default params.yaml (compalign.config.params_yaml)
    <!-- compalign:verdict-rules -->     compalign.verdicts.RULES
    <!-- compalign:api NAME -->          mkdocstrings' `::: module.name` for a public NAME

Entries are read through the registries' public tables and each entry's own objects (its
function's module and docstring, its options model, its fields), never through private module
paths, so a registry whose modules move renders the same. An unknown marker, an empty registry or
a name that does not import is an error: the build stops (and `mkdocs build --strict` in the
suite with it).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

import yaml
from mkdocs.exceptions import PluginError

MARKER = re.compile(
    r"^([ \t]*)<!--\s*compalign:([a-z-]+)(?:[ \t]+([^\s]+))?\s*-->[ \t]*$", re.MULTILINE
)

# registry table -> (public module, table name, the params section its options go under)
REGISTRIES = {
    "compressors": ("compalign.compressors", "COMPRESSORS", "compress"),
    "losses": ("compalign.losses", "LOSSES", "align"),
    "metrics": ("compalign.audit.metrics", "METRICS", "audit"),
    "data-sources": ("compalign.data.sources", "SOURCES", "data"),
    "model-sources": ("compalign.model_sources", "MODEL_SOURCES", None),
}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def fill(match: re.Match[str]) -> str:
        indent = match.group(1)
        text = generate(match.group(2), match.group(3))
        return "\n".join(indent + line if line else line for line in text.splitlines())

    def generate(kind: str, argument: str | None) -> str:
        if kind == "api":
            if not argument:
                raise PluginError(f"{page.file.src_uri}: compalign:api needs a public name")
            return api(argument)
        if kind in REGISTRIES:
            return registry(kind)
        generators: dict[str, Callable[[], str]] = {
            "params": params_reference,
            "params-yaml": params_yaml,
            "verdict-rules": verdict_rules,
        }
        if kind not in generators:
            raise PluginError(f"{page.file.src_uri}: unknown marker compalign:{kind}")
        return generators[kind]()

    filled = MARKER.sub(fill, markdown)
    left = re.search(r"<!--\s*compalign:[^>]*-->", filled)
    if left:
        raise PluginError(f"{page.file.src_uri}: malformed marker {left.group(0)}")
    return filled


# --------------------------------------------------------------------------------------------
# Markdown from docstrings


def _outside_code(text: str, change: Callable[[str], str]) -> str:
    """`change` applied to the parts of `text` outside `code spans`."""
    parts = re.split(r"(`+[^`]*`+)", text)
    return "".join(part if part.startswith("`") else change(part) for part in parts)


def prose(text: str | None) -> str:
    """A docstring as Markdown: `<name>` placeholders are not HTML, `{a: 1}` is not an attribute
    list, and a lone `*` (a product, `a * b`) is not emphasis."""
    if not text:
        return ""

    def escape(part: str) -> str:
        part = part.replace("<", "&lt;").replace("{", "\\{").replace("}", "\\}")
        return re.sub(r"(?<=\s)\*(?=\s)", r"\\*", part)

    return _outside_code(inspect.cleandoc(text), escape)


def cell(text: Any) -> str:
    """One table cell: one line, `|` kept out of the table's syntax."""
    one_line = " ".join(prose(str(text)).split())
    return _outside_code(one_line, lambda part: part.replace("|", "\\|")) or " "


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def yaml_value(value: Any) -> str:
    """A default as it reads in params.yaml (one line; lists and mappings in flow style)."""
    text = yaml.safe_dump([value], default_flow_style=True, width=10_000, sort_keys=False)
    return f"`{text.strip()[1:-1]}`"


# --------------------------------------------------------------------------------------------
# Options models and the params tree


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(str(value) for value in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(arg) for arg in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


BOUNDS = {
    "ge": ">=",
    "gt": ">",
    "le": "<=",
    "lt": "<",
    "min_length": "length >=",
    "max_length": "length <=",
}


def _constraints(info: Any) -> str:
    """The bounds pydantic checks (ge, gt, le, lt, min/max length) as `>= 1`, ..."""
    found = []
    for item in info.metadata:
        for name, symbol in BOUNDS.items():
            value = getattr(item, name, None)
            if value is not None:
                found.append(
                    f"{symbol} {value:g}" if isinstance(value, float) else f"{symbol} {value}"
                )
    return ", ".join(found)


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and hasattr(value, "model_fields")


def _description(model: Any, key: str) -> str:
    return " ".join((model.model_fields[key].description or "").split())


def _own_doc(model: Any) -> str:
    """A model's own docstring (not a base class's)."""
    return inspect.cleandoc(model.__dict__.get("__doc__") or "")


def options_rows(model: Any, prefix: str) -> list[list[Any]]:
    """One row per plain key of an options model: key, type, default, bounds, description."""
    rows = []
    for key, info in model.model_fields.items():
        default = info.get_default(call_default_factory=True)
        if _is_model(type(default)):
            continue  # a sub-section: a table of its own
        rows.append(
            [
                f"`{prefix}{key}`",
                _type_name(info.annotation),
                yaml_value(default),
                _constraints(info),
                _description(model, key),
            ]
        )
    return rows


def options_table(model: Any, prefix: str) -> str:
    """The keys of an options model as a table (in a `compalign-keys` block: keys not wrapped)."""
    rows = options_rows(model, prefix)
    if not rows:
        return ""
    body = table(["key", "type", "default", "bounds", "description"], rows)
    return f'<div class="compalign-keys" markdown>\n\n{body}\n\n</div>'


def _sections(model: Any, path: str) -> Iterator[tuple[str, Any, str]]:
    """(dotted path, model, its description) of every section under `model`, depth first."""
    for key, info in model.model_fields.items():
        default = info.get_default(call_default_factory=True)
        if _is_model(type(default)):
            sub = type(default)
            about = _description(model, key) or _own_doc(sub).split("\n\n")[0]
            yield f"{path}.{key}" if path else key, sub, about
            yield from _sections(sub, f"{path}.{key}" if path else key)


def params_path(options: Any, section: str | None) -> str | None:
    """Where an entry's options live in params.yaml: the sub-section built from its options
    model (`compress.structured`), or the section that holds its keys (`audit`)."""
    from compalign.config import Params

    for path, model, _ in _sections(Params, ""):
        if model is options or (
            isinstance(model, type) and issubclass(model, options) and options.model_fields
        ):
            return path
    keys = set(options.model_fields)
    for path, model, _ in _sections(Params, ""):
        if path == section and keys <= set(model.model_fields):
            return path
    return None


# --------------------------------------------------------------------------------------------
# Registries


def _entries(kind: str) -> dict[str, Any]:
    module, table_name, _ = REGISTRIES[kind]
    entries = getattr(importlib.import_module(module), table_name)
    if not entries:
        raise PluginError(f"{module}.{table_name} is empty")
    return dict(entries)


def _main_function(entry: Any) -> Callable[..., Any] | None:
    """The entry's own function: its first callable field (apply, factory, compute, load)."""
    for field in dataclasses.fields(entry):
        value = getattr(entry, field.name)
        if inspect.isfunction(value) or inspect.ismethod(value):
            return value
    return None


def _simple(value: Any) -> bool:
    if isinstance(value, bool | int | float | str) or value is None:
        return True
    if isinstance(value, tuple | list):
        return all(_simple(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _simple(item) for key, item in value.items())
    return False


def _facts(entry: Any, main: Any) -> list[str]:
    """The entry's plain fields (level kind, calibration, required files, ...): what the
    pipeline reads from it besides its function and options, as "`name` value" items. A
    function field shows as "yes" where the entry sets its own."""
    items = []
    for field in dataclasses.fields(entry):
        value = getattr(entry, field.name)
        if value is main or _is_model(value):
            continue
        name = getattr(value, "name", None)
        if isinstance(name, str) and not callable(value):  # a table row such as a Family
            shown = name
        elif callable(value):
            if value is field.default:
                continue
            shown = "its own function"
        elif value is None or value == "" or value == ():
            shown = "–"
        elif isinstance(value, tuple) and _simple(value):
            shown = ", ".join(yaml_value(item).strip("`") for item in value)
        elif _simple(value):
            shown = str(value)
        else:
            continue
        items.append(f"`{field.name}: {shown}`")
    return items


def registry(kind: str) -> str:
    _, _, section = REGISTRIES[kind]
    out = []
    entries = _entries(kind)
    names = ", ".join(f"[`{name}`](#{anchor(name)})" for name in entries)
    kinds = {type(entry) for entry in entries.values()}
    types = ", ".join(
        f"[`{kind.__name__}`](api.md#{kind.__module__}.{kind.__qualname__})" for kind in kinds
    )
    out.append(f"{len(entries)} entries ({types}), in the registry's order: {names}.\n")
    for name, entry in entries.items():
        main = _main_function(entry)
        module = inspect.getmodule(main) if main is not None else None
        out.append(f"## `{name}` {{#{anchor(name)}}}\n")
        if module is not None and module.__doc__:
            out.append(prose(module.__doc__) + "\n")
        if main is not None and inspect.getdoc(main):
            out.append(f"`{main.__name__}`: " + prose(inspect.getdoc(main)) + "\n")
        facts = _facts(entry, main)
        where = f"Module `{module.__name__}`. " if module is not None else ""
        out.append(f"{where}Entry: " + ", ".join(facts) + ".\n")
        options = getattr(entry, "options", None)
        if _is_model(options) and options.model_fields:
            path = params_path(options, section)
            where = f"`{path}`" if path else "its options"
            doc = _own_doc(options)
            about = f": {prose(doc)}" if doc else ""
            out.append(f"**Options** ({where} in params.yaml; `{options.__name__}`){about}\n")
            out.append(options_table(options, f"{path}." if path else "") + "\n")
    return "\n".join(out)


def anchor(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# --------------------------------------------------------------------------------------------
# Params


def params_reference() -> str:
    from compalign.config import Params

    out = []
    for key, info in Params.model_fields.items():
        section = type(info.get_default(call_default_factory=True))
        about = _description(Params, key) or inspect.getdoc(section) or ""
        out.append(f"## `{key}` {{#{anchor(key)}}}\n")
        if about:
            out.append(prose(about) + "\n")
        body = options_table(section, f"{key}.")
        out.append((body or "No keys of its own.") + "\n")
        for path, model, sub_about in _sections(section, key):
            out.append(f"### `{path}` {{#{anchor(path)}}}\n")
            if sub_about:
                out.append(prose(sub_about) + "\n")
            out.append((options_table(model, f"{path}.") or "No keys of its own.") + "\n")
    return "\n".join(out)


def params_yaml() -> str:
    from compalign.config import params_yaml as text

    return "```yaml\n" + text() + "```\n"


# --------------------------------------------------------------------------------------------
# Verdict rules


def verdict_rules() -> str:
    from compalign.verdicts import RULES

    if not RULES:
        raise PluginError("compalign.verdicts.RULES is empty")
    out = []
    papers: dict[str, list[Any]] = {}
    for rule in RULES:
        papers.setdefault(rule.paper, []).append(rule)
    for paper, rules in papers.items():
        out.append(f"## {paper.capitalize()} {{#{anchor(paper)}}}\n")
        for rule in rules:
            out.append(f"### {cell(rule.finding)} {{#{anchor(rule.key)}}}\n")
            rows = [
                [field.name.replace("_", " "), getattr(rule, field.name)]
                for field in dataclasses.fields(rule)
                if field.name not in ("key", "paper", "finding")
            ]
            out.append(table(["rule", f"`{rule.key}`"], rows) + "\n")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# API reference


def api(name: str) -> str:
    """`::: <where NAME is defined>` for mkdocstrings: a public name (`compalign.audit_models`,
    `compalign.compressors.COMPRESSORS`'s entry type, a module) resolved by importing it, so the
    reference follows the code when a definition moves."""
    module_name, _, attribute = name.rpartition(".")
    try:
        target = importlib.import_module(name)
        return f"::: {target.__name__}\n"
    except ImportError:
        pass
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise PluginError(f"compalign:api {name}: {error}") from error
    if not (inspect.isclass(target) or inspect.isfunction(target)):
        raise PluginError(f"compalign:api {name}: not a class or function")
    return f"::: {target.__module__}.{target.__qualname__}\n"
