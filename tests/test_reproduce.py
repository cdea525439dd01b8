"""flows/reproduce.py: what each paper's flow compares."""

from __future__ import annotations

from compalign.compressors import COMPRESSORS
from flows.reproduce import FLOWS, QUANTIZERS


def test_hooker_compares_pruning_with_every_quantizer():
    assert set(QUANTIZERS) == {"quantize_dynamic", "quantize_static", "half"}
    assert all(COMPRESSORS[name].family.quantized for name in QUANTIZERS)


def test_one_flow_per_paper():
    assert set(FLOWS) == {"joseph", "meyer", "hooker"}


def test_each_seed_is_a_pipeline_run_with_every_training_seed_moved(monkeypatch):
    """run_seeds hands the builders every seed's rows with a `seed` column; seed i moves
    reference, compression and fine-tuning seeds by i and leaves the split and the bootstrap."""
    import flows.reproduce as reproduce
    from flows.profiles import paper_params

    seen = []

    def fake_pipeline(settings):
        seen.append(settings)
        names = ["reference", "magnitude_global-0.98-ce"]
        return {
            "summary": [{"name": name, "mismatches": settings.align.seed} for name in names],
            "metrics": {name: {"seed": settings.reference.seed} for name in names},
            "parent_run_id": f"run-{settings.reference.seed}",
        }

    monkeypatch.setattr(reproduce, "_pipeline", fake_pipeline)
    settings = paper_params("joseph", "cpu", ["reproduce.seeds=3", "compress.methods=[random]"])
    runs = reproduce.run_seeds(settings)
    assert [s.reference.seed for s in seen] == [0, 1, 2]
    assert [s.align.seed for s in seen] == [0, 1, 2]
    assert [s.compress.random.seed for s in seen] == [0, 1, 2]
    assert {(s.data.seed, s.audit.seed) for s in seen} == {(0, 0)}
    assert seen[0] == settings  # seed 0 is the profile's own run (the same cache keys)
    assert runs.summary.seed.tolist() == [0, 0, 1, 1, 2, 2]
    assert runs.summary.mismatches.tolist() == [0, 0, 1, 1, 2, 2]
    assert runs.summary.name.tolist()[:3] == [
        "reference",
        "magnitude_global-0.98-ce",
        "reference@seed1",
    ]
    assert all(runs.metrics[row.name]["seed"] == row.seed for row in runs.summary.itertuples())
    assert runs.sources == ["run-0", "run-1", "run-2"]
