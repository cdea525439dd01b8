"""Pipeline stages as Prefect tasks: thin wrappers that read inputs by path, call the core
package, write their outputs to the content-addressed store and log to MLflow.

Each module has a plain function (what DVC's stage commands call) and its Prefect task (what the
flow calls), cached on the same key.
"""
