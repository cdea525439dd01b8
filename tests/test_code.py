"""Cache keys follow the code a stage call really uses (tasks.infra.code)."""

from __future__ import annotations

import shutil

import pytest

from conftest import ROOT
from tasks import STAGES
from tasks.infra import code, store

DATA = {"path": "artifacts/prepare/x", "digest": "d1"}
REFERENCE = {"path": "artifacts/reference/y", "digest": "d2"}
COMPRESSED = {"path": "artifacts/compress/z", "digest": "d3"}


def calls() -> dict[str, dict]:
    """One store parameter set per stage, as the flow passes them."""
    return {
        "prepare": {"data": {"source": "digits", "seed": 0}},
        "reference": {"data": DATA, "reference": {"model": "small_cnn"}, "device": "cpu"},
        "align": {
            "data": DATA,
            "reference": REFERENCE,
            "compressed": COMPRESSED,
            "method": "magnitude_global",
            "loss": "kd",
        },
        "audit-global": {
            "data": DATA,
            "model": COMPRESSED,
            "labels": {"name": "magnitude_global-0.9-kd", "compressor": "magnitude_global"},
        },
        "audit-half": {
            "data": DATA,
            "model": COMPRESSED,
            "labels": {"name": "half-none", "compressor": "half"},
        },
    }


def keys() -> dict[str, str]:
    return {
        name: store.stage_key(name.split("-")[0], parameters)
        for name, parameters in calls().items()
    }


@pytest.fixture
def edited(monkeypatch):
    """edited(path): the project as if a line had been appended to that file."""
    original = code.read_source

    def edit(path: str) -> None:
        monkeypatch.setattr(
            code, "read_source", lambda name: original(name) + (b"\n# x\n" if name == path else b"")
        )

    return edit


def test_editing_a_loss_reruns_only_what_uses_it(edited):
    before = keys()
    edited("compalign/losses/kd.py")
    after = keys()
    assert after["prepare"] == before["prepare"] and after["reference"] == before["reference"]
    assert after["audit-global"] == before["audit-global"]
    assert after["align"] != before["align"]


def test_editing_a_compressor_leaves_other_compressors_audits(edited):
    before = keys()
    edited("compalign/compressors/half.py")
    after = keys()
    assert after["audit-half"] != before["audit-half"]
    assert {k: v for k, v in after.items() if k != "audit-half"} == {
        k: v for k, v in before.items() if k != "audit-half"
    }


def test_shared_code_reruns_its_users(edited):
    before = keys()
    edited("compalign/losses/base.py")  # ce, which trains the reference, is built on it
    assert keys()["reference"] != before["reference"]


def test_stage_files_hold_no_unused_entries():
    reference = code.stage_files("reference", calls()["reference"])
    assert "compalign/losses/ce.py" in reference
    assert not [f for f in reference if f.startswith("compalign/compressors/")]
    assert [f for f in reference if f.startswith("compalign/losses/")] == [
        "compalign/losses/base.py",
        "compalign/losses/ce.py",
    ]
    align = code.stage_files("align", calls()["align"])
    assert {"compalign/losses/kd.py", "compalign/compressors/magnitude_global.py"} <= set(align)
    assert "compalign/losses/pw.py" not in align
    assert "compalign/compressors/structured.py" not in align
    for stage in STAGES:  # nothing that cannot change a result
        assert "compalign/config.py" not in code.stage_files(stage)


def test_dvc_yaml_code_deps_are_up_to_date(tmp_path):
    copy = tmp_path / "dvc.yaml"
    shutil.copy(ROOT / "dvc.yaml", copy)
    assert not code.update_dvc_yaml(copy), "run: python -m tasks.infra.code"


def test_computing_a_key_imports_no_orchestration():
    """The CLI computes the prepare key before it configures Prefect's environment."""
    import subprocess
    import sys

    script = (
        "import sys; from tasks.infra.store import stage_key; "
        "stage_key('prepare', {'data': {'source': 'digits'}}); "
        "stage_key('audit', {'labels': {'compressor': 'half'}}); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'mlflow'}))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_an_audit_key_covers_what_its_metrics_read_and_the_latency_settings_only_costs():
    """The `audit` section holds the metrics' options and the latency settings: changing how
    latency is measured reruns the costs, never an audit; changing a metric's option, or a
    setting every metric shares, reruns the audits."""
    from compalign.config import AuditParams
    from compalign.costs import CompileOptions, LatencyOptions
    from tasks.audit import metric_keys
    from tasks.costs import latency_settings

    audit = AuditParams().model_dump()
    latency = set(LatencyOptions.model_fields) | set(CompileOptions.model_fields)
    assert metric_keys() >= set(audit) - latency and not metric_keys() & latency
    call = {"data": DATA, "model": COMPRESSED, "labels": calls()["audit-global"]["labels"]}
    key = store.stage_key("audit", {**call, "audit": audit})
    costs = {"data": DATA, "model": COMPRESSED, "name": "m", "run_id": "r"}
    costs_key = store.stage_key("costs", {**costs, "latency": latency_settings(audit)})
    for name, value in (
        ("latency_repeats", 7),
        ("latency_warmup", 0),
        ("latency_batch_sizes", [1]),
    ):
        changed = {**audit, name: value}
        assert store.stage_key("audit", {**call, "audit": changed}) == key
        assert (
            store.stage_key("costs", {**costs, "latency": latency_settings(changed)}) != costs_key
        )
    assert (
        store.stage_key("audit", {**call, "audit": {**audit, "latency_compile_timeout": 5}}) == key
    )
    for name, value in (("bootstrap_samples", 200), ("attribution_samples", 3), ("seed", 1)):
        assert store.stage_key("audit", {**call, "audit": {**audit, name: value}}) != key, name


def test_editing_one_data_source_leaves_the_others(edited):
    before = keys()
    edited("compalign/data/sources/cifar10.py")
    assert keys() == before  # the digits dataset never reads the CIFAR-10 loader
    assert "compalign/data/sources/digits.py" in code.stage_files("prepare", calls()["prepare"])
    assert "compalign/data/sources/cifar10.py" not in code.stage_files(
        "prepare", calls()["prepare"]
    )


def test_starting_the_cli_loads_no_library_only_some_methods_use():
    """torch-pruning (which imports timm, torchvision and torch._dynamo: 1.4 s), scikit-learn,
    captum, fairlearn, onnxruntime and torchao load where a method uses them: every `compalign`
    process paid 3 s for them at start when one was imported at module level."""
    import subprocess
    import sys

    script = (
        "import sys, compalign.config, compalign.compressors, compalign.audit, flows.cli, "
        "flows.pipeline; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch_pruning', "
        "'timm', 'torchvision', 'sklearn', 'captum', 'fairlearn', 'onnxruntime', 'torchao'}))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
