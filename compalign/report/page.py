"""An HTML page built section by section (headings, captions, notes, figures, tables) and rendered
by a template of templates/ with autoescaping on, so every piece of text reaches the HTML escaped.
Figures are inlined as base64 PNGs: a page has no scripts and links nothing outside itself, so it
opens offline, as an MLflow artifact or a mail attachment. Every page of compalign.report.html
and compalign.report.search is one."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from matplotlib.figure import Figure

from compalign.report.figures import figure_png
from compalign.report.values import cell_text

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("compalign.report", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


class Page:
    """An HTML page built section by section: captions, notes, figures, tables."""

    def __init__(
        self, title: str, notes: Sequence[str] | None, template: str = "page.html.j2"
    ) -> None:
        self.title = title
        self.leads = [str(note) for note in notes or []]
        self.sections: list[dict[str, Any]] = []
        self.template = template
        self.extra: dict[str, Any] = {}  # what a page's own template shows beyond the sections

    def lead(self, sentence: str) -> None:
        self.leads.append(sentence)

    def section(self, heading: str) -> None:
        anchor = f"section-{len(self.sections) + 1}"
        self.sections.append({"anchor": anchor, "heading": heading, "parts": []})

    def _add(self, kind: str, **part: Any) -> None:
        self.sections[-1]["parts"].append({"kind": kind, **part})

    def subheading(self, text: str) -> None:
        self._add("subheading", text=text)

    def caption(self, sentence: str) -> None:
        self._add("caption", text=sentence)

    def note(self, sentence: str) -> None:
        self._add("note", text=sentence)

    def figure(self, figure: Figure, alt: str) -> None:
        self.image(figure_png(figure), alt)

    def image(self, data: bytes, alt: str, folded: str | None = None) -> None:
        """A PNG; with `folded`, shut in a <details> element whose summary is that text."""
        encoded = base64.b64encode(data).decode("ascii")
        self._add("image", png_base64=encoded, alt=alt, folded=folded)

    def table(
        self,
        frame: pd.DataFrame,
        highlight: Sequence[bool] | None = None,
        numbers: Sequence[str] = (),
    ) -> None:
        """`frame` as an HTML table; rows where `highlight` is true are shaded; `numbers` are
        columns of numbers already formatted as text (right-aligned like numbers)."""
        if not len(frame.columns):
            self.note("The table is empty.")
            return
        text = [
            column not in numbers
            and (
                not pd.api.types.is_numeric_dtype(frame[column])
                or pd.api.types.is_bool_dtype(frame[column])
            )
            for column in frame.columns
        ]  # left-aligned: names, labels, flags
        head = [
            {"value": str(column), "text": left}
            for column, left in zip(frame.columns, text, strict=True)
        ]
        rows = [
            {
                "cells": [
                    {"value": cell_text(value), "text": left}
                    for value, left in zip(values, text, strict=True)
                ],
                "hit": highlight is not None and bool(highlight[position]),
            }
            for position, values in enumerate(frame.itertuples(index=False, name=None))
        ]
        self._add("table", head=head, rows=rows)
        if not len(frame):
            self.note("No rows.")

    def render(self) -> str:
        return _TEMPLATES.get_template(self.template).render(
            title=self.title, leads=self.leads, sections=self.sections, **self.extra
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        return path
