"""tasks/reports/populations.py: the names under which a population's results are logged."""

from __future__ import annotations

from tasks.reports.populations import _slug


def test_slug_names_level_and_loss():
    assert _slug(0.9, "ce") == "0.9-ce"
    assert _slug(None, "none") == "all-none"  # a quantizer has no level
