"""compalign: measure what compression changes beyond top-1 accuracy, and align it back.

The core package is pure PyTorch, NumPy and pandas: it never imports Prefect, MLflow or DVC, so
every method can be called and tested as a plain function. `tasks/` and `flows/` wire it into
the orchestrated, tracked pipeline.
"""

__version__ = "0.1.0"
