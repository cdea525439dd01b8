"""Verdicts that hold up: the rules `compalign reproduce` judges each paper's headline findings
by (rules.RULES, written once), the statistics they stand on (estimate: intervals over training
seeds and test examples; measures: the papers' own measures with their influence over test
examples; populations: permutation tests over members), the evidence they read, and the
simulation that checks every rule's false-positive rate and power (simulate). Pure numpy and
scipy: no Prefect, MLflow or presentation.
"""

from compalign.verdicts.evidence import Outcomes, PopulationEvidence, SeedRunsEvidence
from compalign.verdicts.rules import JUDGES, RULES, Rule, Verdict

__all__ = [
    "JUDGES",
    "RULES",
    "Outcomes",
    "PopulationEvidence",
    "Rule",
    "SeedRunsEvidence",
    "Verdict",
]
