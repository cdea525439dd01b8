"""The steps that end a flow: each writes its flow's folder under reports/ (tasks.infra.paths)
whole and logs it on the flow's MLflow parent run. They are tasks, not stages: nothing of theirs
is cached in the store.

- pipeline: `compalign run`'s summary table, headline, figures and registry aliases
- populations: `compalign populations`' PIEs, impacted classes and galleries
- search: `compalign search`'s probes and chosen model
- compare: `compalign audit`, the audit of models you bring (the audit itself is the core's
  compalign.compare; this runs it on the prepared data and logs a child run per model)
"""
