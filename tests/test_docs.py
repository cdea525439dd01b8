"""The docs site (mkdocs.yml, docs/) and the README as its front page.

The site is built once per module as `mkdocs build --strict` builds it: any warning (a broken link
or anchor, a page left out of the nav, an API name mkdocstrings cannot find) aborts the build. The
reference pages are generated from the registries by docs/hooks.py, so the tests below check them
against the registries themselves, not against a list written here.
"""

from __future__ import annotations

import html
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

README_MAX_LINES = 250
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def hooks():
    """docs/hooks.py, the MkDocs hook that fills the reference pages."""
    spec = importlib.util.spec_from_file_location("compalign_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site's folder. Built in this process (mkdocs' own build command, strict), so the
    registries the hook reads are imported once per test worker, not once more in a child."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    site_dir = tmp_path_factory.mktemp("site")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NO_MKDOCS_2_WARNING", "1")  # mkdocs-material's notice on stdout
        config = load_config(str(ROOT / "mkdocs.yml"), strict=True, site_dir=str(site_dir))
        build(config)  # raises mkdocs.exceptions.Abort if any warning was logged
    return site_dir


def _page(site: Path, source: str) -> str:
    """The built HTML of docs/<source> (use_directory_urls: x.md -> x/index.html)."""
    stem = source.removesuffix(".md")
    built = site / ("index.html" if stem == "index" else f"{stem}/index.html")
    return built.read_text()


def _ids(page: str) -> set[str]:
    return {html.unescape(value) for value in re.findall(r'\bid="([^"]+)"', page)}


def _nav_pages(nav) -> list[str]:
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move detail to docs/"
    )


def test_every_docs_page_is_in_the_nav():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    listed = _nav_pages(nav)
    pages = sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md"))
    assert sorted(listed) == pages
    assert len(listed) == len(set(listed)), "a page is in the nav twice"


def test_the_site_builds_strict(site):
    assert (site / "index.html").is_file()
    assert "<!-- compalign:" not in _page(site, "reference/compressors.md")


def test_readme_links_resolve(site):
    """Every link from the README into docs/ names a page that exists and an anchor it has."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)", readme)
    assert links, "the README links into the docs"
    for target, anchor in links:
        assert (ROOT / target).is_file(), target
        if anchor:
            assert anchor in _ids(_page(site, target.removeprefix("docs/"))), f"{target}#{anchor}"


# a repository file the docs name in backticks: `flows/server.py`, `tests/test_faults.py`, ...
FILE_MENTION = re.compile(
    r"`((?:compalign|tasks|flows|bench|tests|profiles)/[\w/.-]+\.(?:py|yaml))"
)


def test_files_the_docs_name_exist():
    """A page that names a source file names one that exists (a moved module fails here). The
    benchmarks page is a dated record: its file names are the code's as it was measured."""
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    stale = [
        f"{page.relative_to(ROOT)}: {path}"
        for page in pages
        if page.name != "benchmarks.md"
        for path in FILE_MENTION.findall(page.read_text())
        if not (ROOT / path).exists()
    ]
    assert not stale, f"pages name files that do not exist: {stale}"


@pytest.mark.parametrize(
    "module, table, page",
    [
        ("compalign.compressors", "COMPRESSORS", "reference/compressors.md"),
        ("compalign.losses", "LOSSES", "reference/losses.md"),
        ("compalign.audit.metrics", "METRICS", "reference/metrics.md"),
        ("compalign.data.sources", "SOURCES", "reference/data-sources.md"),
        ("compalign.model_sources", "MODEL_SOURCES", "reference/model-sources.md"),
    ],
)
def test_reference_pages_list_every_registry_entry(site, hooks, module, table, page):
    entries = getattr(importlib.import_module(module), table)
    ids = _ids(_page(site, page))
    missing = [name for name in entries if hooks.anchor(name) not in ids]
    assert not missing, f"{page} lacks {missing}"


def test_params_page_lists_every_key_with_its_default(site):
    from compalign.config import Params

    page = html.unescape(_page(site, "reference/params.md"))
    keys = []

    def walk(model, prefix):
        for key, info in model.model_fields.items():
            default = info.get_default(call_default_factory=True)
            if hasattr(type(default), "model_fields"):
                walk(type(default), f"{prefix}{key}.")
            else:
                keys.append(f"{prefix}{key}")

    walk(Params, "")
    missing = [key for key in keys if f"<code>{key}</code>" not in page]
    assert not missing, f"reference/params.md lacks {missing}"
    assert "<code>compress.sparsities</code>" in page and "0.98" in page


def test_verdict_rules_page_shows_every_rule(site):
    from compalign.verdicts import RULES

    page = html.unescape(_page(site, "reference/verdict-rules.md"))
    missing = [rule.key for rule in RULES if f"<code>{rule.key}</code>" not in page]
    assert not missing


def test_api_reference_documents_the_public_entry_points(site):
    """The API page has a heading for each public entry point where the code defines it."""
    import compalign
    from compalign.compressors import Compressor
    from compalign.losses import Loss

    ids = _ids(_page(site, "reference/api.md"))
    public = [
        compalign.audit_models,
        compalign.Comparison,
        compalign.localize_flips,
        Compressor,
        Loss,
    ]
    for entry in public:
        assert f"{entry.__module__}.{entry.__qualname__}" in ids
    assert {"compalign.search", "compalign.verdicts"} <= ids


def test_a_marker_the_hook_does_not_know_stops_the_build(hooks):
    from mkdocs.exceptions import PluginError

    import compalign

    class Page:
        class file:
            src_uri = "x.md"

    markers = [
        "<!-- compalign:nonsense -->",
        "<!-- compalign:api compalign.no_such_name -->",
        "<!-- compalign:compressors extra words -->",
    ]
    for text in markers:
        with pytest.raises(PluginError):
            hooks.on_page_markdown(f"# x\n\n{text}\n", Page, None, None)
    # a public name resolves to where the code defines it
    defined = f"{compalign.audit_models.__module__}.audit_models"
    assert hooks.api("compalign.audit_models") == f"::: {defined}\n"
