"""flows/profiles.py: every paper profile loads and validates; a paper's two profiles run the
same methods and log to experiments of their own."""

from __future__ import annotations

import itertools

import pytest

from compalign.config import Params
from compalign.errors import UserError
from flows.profiles import PAPERS, PROFILE_DIR, PROFILES, paper_params

EVERY_PROFILE = list(itertools.product(PAPERS, PROFILES))


@pytest.mark.parametrize(("paper", "profile"), EVERY_PROFILE)
def test_every_profile_loads_and_validates(paper, profile):
    params = paper_params(paper, profile)
    assert isinstance(params, Params)
    assert params.run.experiment.startswith(paper)


def test_the_profile_folder_holds_exactly_the_paper_profiles():
    files = sorted(path.name for path in PROFILE_DIR.glob("*.yaml"))
    assert files == sorted(f"{paper}-{profile}.yaml" for paper, profile in EVERY_PROFILE)


def test_cpu_profiles_use_the_embedded_digits():
    for paper in PAPERS:
        assert paper_params(paper, "cpu").data.source == "digits"


@pytest.mark.parametrize("paper", PAPERS)
def test_a_papers_profiles_run_the_same_methods(paper):
    cpu, full = paper_params(paper, "cpu"), paper_params(paper, "paper")
    assert cpu.compress.methods == full.compress.methods
    assert cpu.align.losses == full.align.losses
    assert cpu.populations.compressor == full.populations.compressor
    assert cpu.populations.losses == full.populations.losses


def test_every_profile_logs_to_its_own_experiment():
    experiments = [paper_params(*pair).run.experiment for pair in EVERY_PROFILE]
    assert len(set(experiments)) == len(experiments)


def test_overrides_apply_on_top_of_the_profile():
    params = paper_params("joseph", "cpu", ["reference.epochs=1", "align.losses=[ce]"])
    assert params.reference.epochs == 1
    assert params.align.losses == ["ce"]
    assert params.compress.methods == paper_params("joseph", "cpu").compress.methods


def test_an_unknown_paper_or_a_bad_override_is_a_user_error():
    with pytest.raises(UserError, match="params file not found"):
        paper_params("nobody", "cpu")
    with pytest.raises(UserError, match="reference.epochs"):
        paper_params("hooker", "cpu", ["reference.epochs=0"])
