"""Presentation: figures, tables, HTML pages and the paper reports, on plain frames.

Pure pandas, matplotlib (bare `Figure`s, never pyplot), Jinja2 and rich: nothing here reads the
store or talks to MLflow, so every page and figure can be built and tested from hand-made frames.
"""
