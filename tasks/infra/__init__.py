"""What every stage of tasks/ stands on and that is no stage itself: the store and its cache
keys (store, code), what a stage declares (stage), where everything is written (paths), MLflow
tracking (tracking) and the logger and progress events of a stage (logs).

Nothing here imports torch, Prefect or MLflow at import time except tracking (MLflow): the
quick rerun check (flows/rerun.py) reads paths, code and store before torch is imported.
"""
