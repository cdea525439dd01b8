"""The base of every options model: a params section or a registry entry's options.

Registry entries (losses, compressors, audit metrics) declare their options as a subclass of
`Options`; compalign.config builds the params sections from them, so each default is written
once, in the entry's own file.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Seed = Annotated[int, Field(ge=0)]
# the largest batch of any params key (a batch larger than the data is the whole data; larger
# numbers are typos or attacks, not settings)
MAX_BATCH = 65_536


class Options(BaseModel):
    """Options or a params section: unknown keys are errors, values are checked on assignment.
    The docstring under a field is its description: the comment `compalign init` writes beside
    the key in params.yaml (compalign.config.params_yaml)."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )


class NoOptions(Options):
    """The options of an entry that has none (it gets no params section)."""


def has_options(model: type[Options]) -> bool:
    """Whether an options model has any field (only those get a params section)."""
    return bool(model.model_fields)
