"""Prefect flows and the command line: composition only (read params, wire tasks, pick a runner)."""
