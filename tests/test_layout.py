"""The project's shape: the import contracts (layers, a core without orchestration or
presentation, no circles), DVC and Prefect stages in step."""

from __future__ import annotations

import subprocess
import sys

import yaml

from compalign.config import Params
from conftest import ROOT
from tasks.code import STAGE_MODULES, dvc_code, is_code
from tasks.store import PIPELINE_STAGES


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
    """Same stage names; each DVC stage's code deps are exactly the files its cache key hashes;
    its params are params.yaml sections or keys that exist."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == PIPELINE_STAGES == ["prepare", "reference", "compress", "align", "audit"]
    # costs: run within DVC's audit stage; predict and pruned: population members (no DVC stage)
    assert set(STAGE_MODULES) == {*PIPELINE_STAGES, "costs", "predict", "pruned"}
    sections = Params.model_fields
    for name, stage in stages.items():
        assert stage["cmd"] == f"compalign stage {name}"
        code = sorted(dep for dep in stage["deps"] if is_code(dep))
        expected = dvc_code(name)  # DVC's audit stage also measures costs
        assert code == expected, f"dvc.yaml {name} deps should list: {expected}"
        assert name == "prepare" or "data/prepared" in stage["deps"]
        for param in stage["params"]:
            section, _, key = param.partition(".")
            assert section in sections, param
            if key:
                assert key in sections[section].annotation.model_fields, param


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
