"""The paper profiles of `compalign reproduce` (profiles/<paper>-<profile>.yaml).

Kept free of Prefect imports: the command line validates a profile before it sets up Prefect's
environment, which Prefect reads once, when it is first imported; and of the params models
until a profile is read (they import torch), so that an unknown paper or profile is refused at
once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compalign.config import Params

PAPERS = ("joseph", "meyer", "hooker")
PROFILES = ("cpu", "paper", "fmnist")
PROFILE_DIR = Path(__file__).resolve().parents[1] / "profiles"


def paper_params(paper: str, profile: str, overrides: list[str] | None = None) -> Params:
    """The params of a paper's profile, with `--set` overrides."""
    from compalign.config import load_params

    return load_params(PROFILE_DIR / f"{paper}-{profile}.yaml", overrides or [])
