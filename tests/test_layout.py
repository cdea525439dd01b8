"""The project's shape: the import contracts (layers, a core without orchestration or
presentation, no circles), one table of stages that DVC and Prefect read alike."""

from __future__ import annotations

import subprocess
import sys

import yaml

from compalign.config import Params
from conftest import ROOT
from tasks import STAGES, dvc_stages, stages
from tasks.infra.code import dvc_code, is_code


def test_import_contracts_hold():
    """The architecture as import-linter contracts (pyproject.toml, [tool.importlinter]): flows >
    tasks > compalign; the core imports no Prefect, MLflow or DVC, and outside compalign.report
    no presentation; presentation imports no orchestration; no import circles in compalign and
    tasks. Every import counts, those inside functions too."""
    code = (
        "import sys\n"
        "from importlinter.cli import lint_imports\n"
        "sys.exit(lint_imports(no_cache=True, no_logo=True))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_dvc_stages_mirror_the_flow_stages():
    """Same stage names as the table's stages with a DVC output, in its order; each DVC stage's
    code deps are exactly the files its cache key hashes, its params those its declaration
    names (params.yaml sections or keys that exist), its outs its declared path."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(dvc) == dvc_stages()
    assert dvc_stages() == ["prepare", "reference", "compress", "align", "audit", "predictions"]
    # costs: run within DVC's audit stage; predict and pruned: population members (no DVC stage)
    assert list(STAGES) == [*dvc_stages()[:5], "costs", "predictions", "predict", "pruned"]
    sections = Params.model_fields
    for name, stage in dvc.items():
        declared = stages()[name]
        assert stage["cmd"] == f"compalign stage {name}"
        code = sorted(dep for dep in stage["deps"] if is_code(dep))
        expected = dvc_code(name)  # DVC's audit stage also measures costs
        assert code == expected, f"dvc.yaml {name} deps should list: {expected}"
        assert name == "prepare" or "data/prepared" in stage["deps"] or name == "predictions"
        outs = [next(iter(out)) if isinstance(out, dict) else out for out in stage["outs"]]
        assert declared.out.removesuffix("/{model}") in outs
        params = [param.split("#")[0].strip() for param in stage.get("params", [])]
        assert params == list(declared.params), name
        for param in params:
            section, _, key = param.partition(".")
            assert section in sections, param
            if key:
                assert key in sections[section].annotation.model_fields, param


def test_every_stage_declares_itself_in_its_module():
    """tasks/__init__.py's table names a module per stage; the module's STAGE has the same
    name, a plain function and the inputs that function takes."""
    import inspect

    for name, module in STAGES.items():
        declared = stages()[name]
        assert declared.name == name and declared.function.__module__ == module
        parameters = inspect.signature(declared.function).parameters
        assert set(declared.inputs) <= set(parameters), name
        assert declared.out is None or "out_dir" in parameters, name
        assert declared.out is None or declared.dvc_stage is None, name


def test_prepare_code_lists_every_data_module():
    """A new source module joins DVC's prepare deps (through its registry's folder)."""
    deps = dvc_code("prepare")
    for path in (ROOT / "compalign/data").rglob("*.py"):
        name = path.relative_to(ROOT).as_posix()
        assert name in deps or any(name.startswith(dep + "/") for dep in deps), name


def test_dvc_config_has_analytics_off_and_a_local_remote():
    config = (ROOT / ".dvc" / "config").read_text()
    assert "analytics = false" in config
    assert "remote = local" in config and "url = ../dvc-storage" in config
