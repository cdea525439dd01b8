"""params.yaml validation: one line naming the key, nothing else."""

from __future__ import annotations

import pytest
import yaml

from compalign.config import Params, _flatten, load_params, validate
from compalign.errors import UserError
from conftest import ROOT, TINY


def test_params_yaml_is_the_documented_defaults():
    """The shipped params.yaml holds exactly the model's defaults (no drift between the two)."""
    assert load_params(ROOT / "params.yaml") == Params()


def test_params_yaml_spells_out_every_key():
    """DVC reads the keys its stages name straight from params.yaml: none may be left implicit."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert Params.model_validate(raw).flat().keys() == dict(_flatten(raw)).keys()


def test_params_yaml_is_what_compalign_init_writes():
    """The shipped params.yaml is generated from the models (`compalign init`): the same keys,
    values and comments, so neither can drift from the code. Regenerate it with
    `python -c "from compalign.config import params_yaml; open('params.yaml', 'w').write(params_yaml())"`."""
    from compalign.config import params_yaml

    assert (ROOT / "params.yaml").read_text() == params_yaml()


def test_every_setting_has_a_description():
    """Each key's comment in params.yaml is its field's docstring: a new setting without one
    would be written uncommented."""
    from pydantic import BaseModel

    def undocumented(model, prefix=""):
        for key, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                yield from undocumented(field.annotation, f"{prefix}{key}.")
            elif not field.description:
                yield prefix + key

    assert list(undocumented(Params)) == []


def test_tiny_profile_is_valid():
    params = load_params(TINY)
    assert params.data.limit == 200 and params.run.experiment == "tiny"


@pytest.mark.parametrize(
    ("override", "key", "hint"),
    [
        ("reference.epochs=-1", "reference.epochs", "greater than or equal to 1"),
        ("reference.epoch=3", "reference.epoch", "did you mean 'epochs'"),
        ("compress.sparsities=[0.5, 1.2]", "compress.sparsities[1]", "less than 1"),
        ("align.losses=[ce, kdd]", "align.losses", "choose one of"),
        ("reference.lr=abc", "reference.lr", "valid number"),
        ("reference.optimizer=adam", "reference.optimizer", "'sgd' or 'adamw'"),
        ("data.source=imagenet", "data.source", "cifar10"),
        ("run.workers=0", "run.workers", "auto or a whole number from 1 to 64"),
        ("run.busy_cores=-1", "run.busy_cores", "auto or a whole number from 0 to 1024"),
        ("run.gpu_workers=0", "run.gpu_workers", "greater than or equal to 1"),
        (
            "nosuch.key=1",
            "nosuch",
            "allowed keys: align, audit, compress, data, populations, reference, reproduce, run, search",
        ),
    ],
)
def test_bad_values_name_the_key(override, key, hint):
    with pytest.raises(UserError) as caught:
        load_params(ROOT / "params.yaml", [override])
    message = str(caught.value)
    assert "\n" not in message
    assert f" {key}:" in message and hint in message


def test_override_parses_yaml_values():
    params = load_params(
        ROOT / "params.yaml", ["compress.sparsities=[0.5,0.8]", "align.kd.alpha=0.5"]
    )
    assert params.compress.sparsities == [0.5, 0.8]
    assert params.align.kd.alpha == 0.5


@pytest.mark.parametrize("override", ["reference.epochs", "=3", "epochs=3"])
def test_malformed_override(override):
    with pytest.raises(UserError, match="section.key=value"):
        load_params(ROOT / "params.yaml", [override])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(UserError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(broken)
    with pytest.raises(UserError, match="expected a mapping"):
        validate([1, 2])


def test_flat_params_cover_every_leaf():
    flat = Params().flat()
    assert flat["reference.epochs"] == 30
    assert flat["align.kd.temperature"] == 4.0

    def leaves(tree):
        return sum(leaves(v) if isinstance(v, dict) else 1 for v in tree.values())

    assert len(flat) == leaves(Params().model_dump())
    assert flat["compress.sparsities"] == [0.9, 0.95, 0.97, 0.98]


def test_data_sources_own_their_options_in_the_flat_data_section():
    """`data.target` (celeba) and `data.image_mode` (imagefolder) are keys of the data section
    built from each source's options model; an old params file's `target: null` still loads (as
    the default), and the prepare key holds only the chosen source's options."""
    from compalign.data.sources.celeba import CelebAOptions

    old = validate({"data": {"source": "celeba", "target": None, "image_mode": "L"}}).data
    assert old.target == CelebAOptions().target == "Blond_Hair"
    assert old.prepare_params()["target"] == "Blond_Hair"
    assert (
        "image_mode" not in old.prepare_params() and "skip_unreadable" not in old.prepare_params()
    )
    folder = validate({"data": {"source": "imagefolder", "image_mode": "L"}}).data
    assert folder.prepare_params()["image_mode"] == "L" and "target" not in folder.prepare_params()
    with pytest.raises(UserError, match="data.image_mode"):
        validate({"data": {"image_mode": "CMYK"}})


def test_sparsities_sorted_and_deduplicated():
    params = validate({"compress": {"sparsities": [0.9, 0.5, 0.9]}})
    assert params.compress.sparsities == [0.5, 0.9]


def test_auto_workers_share_the_cores(monkeypatch):
    """run.workers auto: one task per core, one torch thread each; N workers share the cores;
    a task with fewer tasks beside it gets more; run.threads pins the count."""
    import compalign.config

    monkeypatch.setattr(compalign.config, "cores", lambda: 8)
    run = load_params(ROOT / "params.yaml").run
    assert (run.workers, run.worker_count(), run.task_threads()) == ("auto", 8, 1)
    assert [run.task_threads(n) for n in (1, 2, 3, 8, 20)] == [8, 4, 2, 1, 1]
    run = load_params(ROOT / "params.yaml", ["run.workers=2"]).run
    assert (run.worker_count(), run.task_threads()) == (2, 4)
    run = load_params(ROOT / "params.yaml", ["run.workers=3", "run.threads=2"]).run
    assert (run.worker_count(), run.task_threads(), run.task_threads(1)) == (3, 2, 2)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "max 100000"}, None),
        ({"cpu.max": "150000 100000"}, 2),  # 1.5 cores' time: two threads can use it
        ({"cpu.max": "50000 100000"}, 1),
        ({"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000"}, None),
        ({"cpu.cfs_quota_us": "400000", "cpu.cfs_period_us": "100000"}, 4),
        ({}, None),
    ],
)
def test_a_containers_cpu_limit_caps_the_cores(tmp_path, monkeypatch, files, expected):
    """cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`: the whole cores
    of the limit (rounded up) cap the affinity's count."""
    import compalign.config

    for name, text in files.items():
        (tmp_path / name).write_text(text + "\n")
    monkeypatch.setattr(
        compalign.config,
        "CPU_QUOTA_FILES",
        (
            (tmp_path / "cpu.max", None),
            (tmp_path / "cpu.cfs_quota_us", tmp_path / "cpu.cfs_period_us"),
        ),
    )
    assert compalign.config.cpu_quota() == expected
    monkeypatch.setattr(compalign.config.os, "sched_getaffinity", lambda _: set(range(3)))
    assert compalign.config.cores() == (3 if expected is None else min(3, expected))
