"""Migrated empty databases kept outside any project (tasks/infra/paths.py `template_dir`), that
a new project's Prefect database and MLflow store start as a copy of. Standard library only:
the Prefect server's launcher calls it before Prefect's app is imported."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


def make_template(
    template: Path, migrate: Callable[[Path], None], emptied: Iterable[str] = ()
) -> None:
    """`migrate(scratch)` on a new scratch SQLite database beside `template`, the `emptied`
    tables' rows deleted, then one clean file (`VACUUM INTO`: no write-ahead log beside it)
    renamed into place, so a reader never sees half a template."""
    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=template.parent) as scratch_dir:
        scratch = Path(scratch_dir) / "scratch.db"
        migrate(scratch)
        made = Path(scratch_dir) / "template.db"
        connection = sqlite3.connect(scratch)
        try:
            with connection:
                for table in emptied:
                    connection.execute(f"DELETE FROM {table}")  # noqa: S608  our own names
            connection.execute("VACUUM INTO ?", (str(made),))
        finally:
            connection.close()
        os.replace(made, template)
