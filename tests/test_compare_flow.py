"""flows/compare.py: the audit of brought models runs the same body with or without Prefect."""

from __future__ import annotations

import inspect

from flows.compare import audit_flow, audit_models


def test_the_flow_and_the_plain_function_take_the_same_models():
    plain = inspect.signature(audit_models).parameters
    flow = inspect.signature(audit_flow.fn).parameters
    assert {"reference", "candidates", "reference2"} <= set(plain) & set(flow)
