"""compalign: measure what compression changes beyond top-1 accuracy, and align it back.

The core package is pure PyTorch, NumPy and pandas: it never imports Prefect, MLflow or DVC, so
every method can be called and tested as a plain function. `tasks/` and `flows/` wire it into
the orchestrated, tracked pipeline.

`compalign.audit_models(reference, candidates, data)` audits models you bring
(compalign.compare), `compalign.localize_flips(reference, candidate, data)` finds the layers
whose restoration recovers a candidate's mismatches (compalign.localize); both are imported on
first use, so `import compalign` stays cheap.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("audit_models", "Comparison"):
        from compalign import compare

        return getattr(compare, name)
    if name == "localize_flips":
        from compalign import localize

        return localize.localize_flips
    raise AttributeError(f"module 'compalign' has no attribute {name!r}")


__all__ = ["Comparison", "__version__", "audit_models", "localize_flips"]
