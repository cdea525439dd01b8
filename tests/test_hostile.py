"""Hostile files and broken models (issue 23): no code runs from a model file, broken outputs
never pass the gate, bad data is refused before anything is written.

Every hostile file is built here (tests/hostile.py); a marker file proves that no code ran.
Each test is one row of the README's "Reliability" catalogue.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import hostile
import pytest
import torch

from compalign.errors import UserError
from compalign.model_sources import load_model


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    """A genuine torch.export program of the tiny CNN (any batch size)."""
    return hostile.export_program(tmp_path_factory.mktemp("pt2") / "model.pt2")


def refused(spec: str, needle: str) -> str:
    with pytest.raises(UserError) as caught:
        load_model(spec)
    message = str(caught.value)
    assert needle in message and "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------------------
# 1. No code runs from a model file


def test_a_genuine_program_loads_and_gives_the_modules_logits(program):
    loaded = load_model(str(program))
    images = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(loaded.model(images), hostile.tiny_module()(images))


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (hostile.pt2_upper_case_pickle, "unexpected entry 'model/data/sample_inputs/model.PT'"),
        (hostile.pt2_exact_name_pickle, "data/sample_inputs/model.pt is a pickled Python object"),
        (hostile.pt2_guard_code, "a guard that is not a size comparison"),
        (hostile.pt2_sympy_expression, "a symbolic size that is not arithmetic"),
    ],
    ids=["upper-case model.PT", "exact-name pickle", "guards_code", "sympy expression"],
)
def test_code_planted_in_a_program_never_runs(program, tmp_path, build, needle):
    """Each of these ran the planted code under torch.export.load (or .module()); here the
    archive is refused in one line and the marker is never written."""
    marker = tmp_path / "marker"
    hostile_file = build(program, tmp_path / "hostile.pt2", marker)
    refused(str(hostile_file), needle)
    assert not marker.exists()


def test_torch_itself_runs_the_planted_code_so_the_checks_matter(program, tmp_path):
    """The unchecked torch.export.load runs the upper-case pickle, the guard code and the
    shared library (in one child process): proof that these are real attacks on this torch."""
    markers, paths = [], []
    for build in (hostile.pt2_upper_case_pickle, hostile.pt2_guard_code):
        markers.append(tmp_path / f"marker-{build.__name__}")
        paths.append(build(program, tmp_path / f"{build.__name__}.pt2", markers[-1]))
    library = hostile.constructor_library(tmp_path, tmp_path / "marker-library")
    if library is not None:
        markers.append(tmp_path / "marker-library")
        paths.append(hostile.pt2_aotinductor_library(program, tmp_path / "aoti.pt2", library))
    code = (
        "import sys, torch\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        torch.export.load(path).module()(torch.randn(2, 3, 8, 8))\n"
        "    except Exception:\n"
        "        pass\n"
    )
    subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, timeout=300)
    assert [marker.exists() for marker in markers] == [True] * len(markers)
    for extracted in Path(tempfile.gettempdir()).glob("aotinductor_*"):  # torch leaves them
        if list(extracted.rglob("planted.wrapper.so")):
            shutil.rmtree(extracted, ignore_errors=True)


def test_a_shared_library_in_the_archive_is_never_loaded(program, tmp_path):
    marker = tmp_path / "marker"
    library = hostile.constructor_library(tmp_path, marker)
    if library is None:
        pytest.skip("no C compiler (gcc or cc) to build the planted shared library")
    assert not marker.exists()
    extracted = set(Path(tempfile.gettempdir()).glob("aotinductor_*"))
    hostile_file = hostile.pt2_aotinductor_library(program, tmp_path / "aoti.pt2", library)
    refused(str(hostile_file), "unexpected entry 'model/data/aotinductor/model/planted.wrapper")
    assert not marker.exists()
    assert set(Path(tempfile.gettempdir()).glob("aotinductor_*")) == extracted


def test_pickled_weights_are_refused(program, tmp_path):
    refused(str(hostile.pt2_pickled_weight(program, tmp_path / "w.pt2")), "pickled Python object")


def test_a_zip_bomb_is_refused_before_anything_is_decompressed(program, tmp_path):
    """A deflated 64 MiB weight (the filer's was 3 GiB in a 3 MB file): torch.export.save
    stores entries, so a compressed one is refused by its header alone."""
    bomb = hostile.pt2_zip_bomb(program, tmp_path / "bomb.pt2", 64 * 2**20)
    assert bomb.stat().st_size < 2**20
    refused(str(bomb), "is compressed")


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("invalid JSON", "models/model.json is not valid JSON"),
        ("wrong types", "has no config mapping"),
        ("truncated tensor", "weight_0 holds 5 bytes"),
        ("empty tensor", "weight_0 holds 0 bytes"),
        ("truncated sample inputs", "data/sample_inputs/model.pt: "),
        ("program is a list", "is not a serialized program"),
    ],
)
def test_malformed_internals_are_one_line(program, tmp_path, kind, needle):
    """Each gave a traceback (an empty inner file: only "Aborted."); an empty weight file
    loaded as zeros without a word."""
    broken = hostile.pt2_malformed(program, tmp_path / "broken.pt2", kind)
    message = refused(str(broken), needle)
    assert "not a readable torch.export program" in message


@pytest.mark.parametrize(
    "content", [b"", b"PK\x03\x04truncated", b"\x80\x04K\x01."], ids=["empty", "cut", "pickle"]
)
def test_files_that_are_no_archive_are_one_line(tmp_path, content):
    path = tmp_path / "model.pt2"
    path.write_bytes(content)
    refused(str(path), "not a readable torch.export program")


@pytest.mark.parametrize("suffix", [".pt2", ".ts", ".pt"])
def test_a_planted_pickle_under_any_model_suffix_never_runs(tmp_path, suffix):
    """Kept from the filer's passing cases: a plain pickle named as a model file."""
    import pickle

    marker = tmp_path / "marker"
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps(hostile.Planted(str(marker))))
    with pytest.raises(UserError) as caught:
        load_model(str(path))
    assert "\n" not in str(caught.value) and not marker.exists()


@pytest.mark.parametrize("suffix", [".onnx", ".ts", ".pt2"])
@pytest.mark.parametrize("cut", ["empty", "truncated"])
def test_empty_or_truncated_model_files_are_one_line(tmp_path, onnx_model, program, suffix, cut):
    source = {".onnx": onnx_model, ".pt2": program}.get(suffix)
    if source is None:
        source = hostile.torchscript_file(tmp_path / "whole.ts", hostile.tiny_module())
    data = source.read_bytes()
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"" if cut == "empty" else data[: len(data) // 2])
    with pytest.raises(UserError) as caught:
        load_model(str(path))
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_allowed_expressions_are_only_arithmetic():
    from compalign.model_sources.pt2_archive import safe_expression

    assert safe_expression("Mul(Integer(2), Symbol('s39', positive=True, integer=True))")
    assert safe_expression("(L['x'].size()[0] // 2) >= 2", guard=True)
    for text in (
        "__import__('os')",
        "Symbol('x').__class__",
        "Integer(9)**Integer(9)**Integer(9)",
        "1 << 100000000",
        "[c for c in ()]",
        "Symbol('a b')",
        "lambda: 0",
        "L['x'].size()[0]",  # guards only in guards
    ):
        assert not safe_expression(text), text


# ---------------------------------------------------------------------------------------------
# ONNX: counting parameters never reads unused, oversized or outside data


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return hostile.onnx_file(tmp_path_factory.mktemp("onnx") / "model.onnx", hostile.tiny_module())


@pytest.mark.parametrize("kind", ["huge", "external"])
def test_onnx_unused_initializers_are_not_read(onnx_model, tmp_path, kind):
    """2**40 declared floats, or a 1 GiB external file: neither is read to count parameters."""
    import resource

    path = hostile.onnx_with_unused_initializer(onnx_model, tmp_path / "model.onnx", kind)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loaded = load_model(str(path))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert loaded.parameter_counts == load_model(str(onnx_model)).parameter_counts
    assert grown_kib < 200 * 1024
    assert all(file.name != "model.data" for file in loaded.files)


def test_onnx_external_data_outside_its_folder_is_refused(onnx_model, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    path = hostile.onnx_escaping_external_data(onnx_model, folder / "model.onnx")
    with pytest.raises(UserError) as caught:
        load_model(str(path))
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


# ---------------------------------------------------------------------------------------------
# 2. Outputs are checked, not trusted

QUICK = {"bootstrap_samples": 100, "attribution_samples": 0, "batch_size": 16}


@pytest.fixture(scope="module")
def folder_data():
    """24 test-like examples of image_folder's three colour classes, as AuditData."""
    import pandas as pd

    from compalign.audited import AuditData

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(24) % 3
    images = torch.randint(0, 60, (24, 3, 8, 8), generator=generator, dtype=torch.uint8)
    images[torch.arange(24), labels] += 180
    return AuditData(
        images,
        labels,
        [str(k) for k in range(24)],
        pd.DataFrame(index=range(24)),
        list(hostile.CLASSES),
        mean=[0.0] * 3,
        std=[1.0] * 3,
    )


def checked(reference, candidates, data, **settings):
    from compalign.audited import check_models, check_outputs

    prepared = check_models(reference, candidates, data, **{**QUICK, **settings})
    return check_outputs(prepared)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits_are_an_error_naming_the_model_and_the_count(folder_data, value):
    with pytest.raises(UserError) as caught:
        checked(hostile.tiny_module(), {"broken": hostile.constant_logits(value)}, folder_data)
    message = str(caught.value)
    assert message.startswith("broken (Constant): non-finite logits (NaN or inf) on 24 of 24")
    assert "\n" not in message


def test_logits_non_finite_on_some_examples_only_are_counted(folder_data):
    class SomeNaN(torch.nn.Module):
        def forward(self, images):
            logits = hostile.tiny_module()(images)
            logits[images[:, 0, 0, 0] > 0.5] = float("nan")  # class a (bright channel 0)
            return logits

    with pytest.raises(UserError, match="on 8 of 24 test examples"):
        checked(hostile.tiny_module(), {"some": SomeNaN()}, folder_data)


def test_non_finite_inputs_are_an_error_naming_the_preprocessing(folder_data):
    """A std so small that the input overflows (a NaN mean is refused by params validation)."""
    with pytest.raises(UserError, match="makes non-finite inputs .* for 24 of 24 test examples"):
        checked(
            hostile.tiny_module(),
            {"same": hostile.tiny_module()},
            folder_data,
            transform={"std": [1e-45, 1e-45, 1e-45]},
        )


def test_a_nan_transform_mean_is_refused_by_validation():
    from compalign.config import load_params

    with pytest.raises(UserError, match=r"data.transform.mean\[0\]: Input should be a finite"):
        load_params(None, ["data.transform.mean=[.nan, 0.5, 0.5]"])


def test_a_class_count_that_depends_on_the_batch_is_refused(folder_data):
    with pytest.raises(
        UserError, match="returns 10 logits for a batch of 1 but 5 for a batch of 2"
    ):
        checked(hostile.tiny_module(), {"shifty": hostile.batch_dependent_classes()}, folder_data)


def test_a_model_that_changes_its_outputs_on_large_batches_is_refused(folder_data):
    class LargeBatchesDiffer(torch.nn.Module):
        def forward(self, images):
            logits = hostile.tiny_module()(images)
            return logits if len(images) <= 2 else logits[:, :2]

    with pytest.raises(UserError, match=r"returns \[16, 2\] for a batch of 16, but \[batch, 3\]"):
        checked(hostile.tiny_module(), {"large": LargeBatchesDiffer()}, folder_data)


def test_a_reference_at_chance_makes_a_degenerate_comparison(folder_data):
    import compalign

    at_chance = compalign.audit_models(
        hostile.constant_logits(0.0),
        {"same": hostile.tiny_module()},
        folder_data,
        costs=False,
        **QUICK,
    )
    assert at_chance.degenerate.startswith("reference: accuracy 0.333 is not clearly above chance")
    assert "data.transform" in at_chance.degenerate and "\n" not in at_chance.degenerate
    good = compalign.audit_models(
        hostile.tiny_module(),
        {"chance": hostile.constant_logits(0.0)},
        folder_data,
        costs=False,
        **QUICK,
    )
    assert good.degenerate is None


def test_the_gate_never_passes_on_nan():
    from compalign.gate import check_rules, parse_rule

    rules = [parse_rule("mismatches<=0"), parse_rule("accuracy>=0")]
    failures = check_rules(rules, {"broken": {"mismatches": float("nan"), "accuracy": 0.5}})
    assert failures == ["FAILED broken: mismatches = not measured, bound <= 0"]


# ---------------------------------------------------------------------------------------------
# 3. Data is read as it is


def folder_params(root, **settings):
    from compalign.config import DataParams

    return DataParams(source="imagefolder", root=str(root), **settings)


def data_refused(params, needle: str) -> str:
    from compalign.data import check_available

    with pytest.raises(UserError) as caught:
        check_available(params)
    message = str(caught.value)
    assert needle in message and "\n" not in message, message
    return message


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("parent", "b/up is a symbolic link to a folder"),
        ("self", "c/again is a symbolic link to a folder"),
        ("outside", "a/linked.png links to"),
    ],
)
def test_links_out_of_the_tree_or_into_a_loop_are_refused(tmp_path, kind, needle):
    """`b/up -> ..` made 24 images 548 examples, class-a files labelled b; `c/again -> .`
    was an OSError traceback."""
    root = hostile.symlinked_folder(tmp_path / "images", kind)
    data_refused(folder_params(root), needle)


def test_the_fingerprint_of_a_looping_tree_does_not_follow_the_loop(tmp_path):
    from compalign.data import fingerprint

    root = hostile.symlinked_folder(tmp_path / "images", "parent")
    assert len(fingerprint(folder_params(root))["images"]) == 24


@pytest.mark.parametrize("where", ["file", "class"])
def test_names_that_are_not_utf8_are_refused_naming_the_file(tmp_path, where):
    root = hostile.non_utf8_folder(tmp_path / "images", where)
    data_refused(folder_params(root), "caf\\xe9")


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    from compalign.data import build_table

    root = hostile.sixteen_bit_folder(tmp_path / "images")
    table, manifest = build_table(folder_params(root, image_mode="L"))
    frame = table.to_pandas()
    by_class = {
        label: sorted({bytes(image)[0] for image in group["image"]})
        for label, group in frame.groupby("label")
    }
    # 1000 + 20000 k + j of 65535, times 255: 4, 82, 160 (never all 255)
    assert {label: values[0] for label, values in by_class.items()} == {0: 4, 1: 82, 2: 160}


def test_mixed_image_sizes_are_found_by_the_check_before_any_work(tmp_path):
    root = hostile.mixed_sizes_folder(tmp_path / "images")
    data_refused(folder_params(root), "the images have different sizes (8..12 pixels")


def test_too_few_images_say_so_instead_of_raise_data_limit(tmp_path):
    root = hostile.image_folder(tmp_path / "images", per_class=2)
    message = data_refused(folder_params(root), "split is empty: 6 examples, the smallest class 2")
    assert "data.limit" not in message


def test_a_decompression_bomb_png_is_unreadable_not_decoded(tmp_path):
    root = hostile.image_folder(tmp_path / "images")
    hostile.decompression_bomb_png(root / "a" / "bomb.png")
    data_refused(folder_params(root), "DecompressionBombError")


@pytest.mark.parametrize(
    ("broken", "needle"),
    [
        ("short row", "list_attr_celeba.txt:5: 1 values after the file name, expected 2"),
        ("bad value", "list_attr_celeba.txt:6: value '7'"),
        ("bad partition", "list_eval_partition.txt:2: value '5'"),
    ],
)
def test_malformed_celeba_lists_name_the_file_and_the_line(tmp_path, broken, needle):
    """They were "dataset not found" though the files were there."""
    from compalign.config import DataParams

    root = hostile.celeba_folder(tmp_path / "raw", broken)
    data_refused(DataParams(source="celeba", root=str(root)), needle)


def test_well_formed_celeba_lists_that_are_not_the_published_ones_say_so(tmp_path):
    from compalign.config import DataParams

    root = hostile.celeba_folder(tmp_path / "raw", "none")
    data_refused(DataParams(source="celeba", root=str(root)), "not the published CelebA file")


# ---------------------------------------------------------------------------------------------
# 4. Params: YAML aliases bounded, resource-shaped values bounded


def params_refused(needle: str, path=None, overrides=()) -> str:
    from compalign.config import load_params

    with pytest.raises(UserError) as caught:
        load_params(path, list(overrides))
    message = str(caught.value)
    assert needle in message and "\n" not in message and len(message) < 400, message
    return message


def test_a_billion_laughs_params_file_is_refused_without_expanding_it(tmp_path):
    """Its aliases expand to 10**9 strings: it took 2 minutes and 6 GB before a MemoryError in
    the error formatter. Counting stops at the limit (the assertion on the count is the bound)."""
    from compalign.config import MAX_PARAMS_VALUES, _count_values

    path = hostile.billion_laughs(tmp_path / "laughs.yaml")
    assert path.stat().st_size < 1024
    params_refused("more than 100000 values once its YAML aliases", path)
    import yaml

    assert _count_values(yaml.safe_load(path.read_text()), MAX_PARAMS_VALUES) == 100_001


def test_an_alias_bomb_in_a_set_value_is_refused():
    value = "[&a [x,x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]"
    value += ", &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]"
    value += ", [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d], [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]]"
    params_refused("--set data.rare_classes: more than", overrides=[f"data.rare_classes={value}"])


def test_an_error_never_prints_a_huge_input():
    message = params_refused("data.seed", overrides=[f"data.seed={'x' * 100_000}"])
    assert "..." in message


def test_python_tags_in_params_never_run(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "params.yaml"
    path.write_text(
        f"data: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path "
        f"[{str(marker)!r}]]\n"
    )
    params_refused("not valid YAML", path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("data.seed", "expected section.key=value"),
        ("=3", "expected section.key=value"),
        ("seed=3", "expected section.key=value"),
        ("data.seed=[unclosed", "the value is not valid YAML"),
        ("data.seed.deeper=1", "data.seed"),
    ],
)
def test_malformed_set_values_are_one_line(text, needle):
    params_refused(needle, overrides=[text])


def test_params_that_are_a_list_or_too_large_are_one_line(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- data\n- audit\n")
    params_refused("expected a mapping of sections, got list", listed)
    large = tmp_path / "large.yaml"
    large.write_text("# padding\n" * 200_000)
    params_refused("not a params file", large)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("audit.latency_batch_sizes=[50000000]", "audit.latency_batch_sizes[0]"),
        ("audit.batch_size=1000000000", "audit.batch_size"),
        ("reference.batch_size=1000000000", "reference.batch_size"),
        ("align.batch_size=1000000000", "align.batch_size"),
        ("compress.calibration_batch_size=1000000000", "compress.calibration_batch_size"),
        ("data.image_size=100000", "data.image_size"),
        ("data.transform.centre_crop=100000", "data.transform.centre_crop"),
        ("run.threads=100000000", "run.threads"),
    ],
)
def test_resource_shaped_params_have_upper_bounds(override, key):
    params_refused(f"{key}: Input should be less than or equal to", overrides=[override])


def test_a_latency_batch_too_large_for_the_input_is_refused_before_work(folder_data):
    """1024 inputs of 3x2048x2048 would be 48 GiB: refused with the data's input shape."""
    with pytest.raises(UserError, match=r"audit.latency_batch_sizes: a batch of 1024 inputs"):
        checked(
            hostile.tiny_module(),
            {"same": hostile.tiny_module()},
            folder_data,
            transform={"resize": 2048, "centre_crop": 2048},
            latency_batch_sizes=[1, 1024],
        )


# ---------------------------------------------------------------------------------------------
# 5. Checked before work: a refused run writes nothing (the CLI, as a user runs it)

WRITTEN = {".compalign", "artifacts", "mlflow.db", "mlartifacts", "reports"}


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """An image folder, a good TorchScript reference, a NaN ONNX model, a .pt2 with a planted
    upper-case pickle, a looping image folder, and a params file pointing at the images."""
    import yaml

    root = tmp_path_factory.mktemp("cli")
    images = hostile.image_folder(root / "images", per_class=12)
    program = hostile.export_program(root / "model.pt2")
    files = {
        "images": images,
        "good.ts": hostile.torchscript_file(root / "good.ts", hostile.tiny_module()),
        "nan.onnx": hostile.onnx_file(root / "nan.onnx", hostile.constant_logits(float("nan"))),
        "marker": root / "marker",
        "loop": hostile.symlinked_folder(root / "loop", "parent"),
    }
    files["hostile.pt2"] = hostile.pt2_upper_case_pickle(
        program, root / "hostile.pt2", files["marker"]
    )
    params = {
        "data": {"source": "imagefolder", "root": str(images)},
        "audit": {"bootstrap_samples": 100, "attribution_samples": 0},
        "run": {"device": "cpu"},
    }
    files["params"] = root / "params.yaml"
    files["params"].write_text(yaml.safe_dump(params))
    return files


def one_line_exit_2(result, needle: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    return lines[0]


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("hostile .pt2", "unexpected entry 'model/data/sample_inputs/model.PT'"),
        ("NaN logits", "nan ("),
        ("unknown --fail-on metric", "unknown metric 'mismatchez'"),
        ("looping image folder", "b/up is a symbolic link to a folder"),
    ],
)
def test_a_refused_run_writes_nothing(cli_files, cli_here, tmp_path, case, needle):
    """Each was found after .compalign/, artifacts/ (or MLflow and Prefect) were written, or
    not at all; now before anything is."""
    audit = ["audit", "--params", str(cli_files["params"]), "-r", str(cli_files["good.ts"])]
    arguments = {
        "hostile .pt2": [*audit, "-c", f"x={cli_files['hostile.pt2']}"],
        "NaN logits": [*audit, "-c", f"nan={cli_files['nan.onnx']}"],
        "unknown --fail-on metric": [
            *audit,
            "-c",
            f"same={cli_files['good.ts']}",
            "--fail-on",
            "mismatchez<=3",
        ],
        "looping image folder": [
            "run",
            "--params",
            str(cli_files["params"]),
            "--set",
            f"data.root={cli_files['loop']}",
        ],
    }[case]
    result = cli_here(*arguments, cwd=tmp_path, timeout=300)
    one_line_exit_2(result, needle)
    assert not WRITTEN & {path.name for path in tmp_path.iterdir()}
    assert not cli_files["marker"].exists()


# ---------------------------------------------------------------------------------------------
# 6. The environment's faults: one line, exit 2, nothing lost


def test_damaged_or_locked_databases_are_one_line_naming_the_file(tmp_path, monkeypatch):
    import sqlite3

    from flows import preflight

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / ".compalign" / "prefect"))
    monkeypatch.setattr(preflight, "_checked", set())
    store = tmp_path / "mlflow.db"
    with sqlite3.connect(store) as connection:
        connection.execute("CREATE TABLE runs (id TEXT)")
        connection.executemany("INSERT INTO runs VALUES (?)", [(str(k) * 200,) for k in range(500)])
    preflight.check_project(tmp_path)  # a healthy store passes
    preflight._checked.clear()

    holder = sqlite3.connect(store, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(UserError, match="mlflow.db: the MLflow store is locked by another"):
        preflight.check_project(tmp_path, busy_timeout_s=0.1)
    holder.execute("ROLLBACK")
    holder.close()

    healthy = store.read_bytes()
    for damage, needle in (
        (healthy[: len(healthy) // 2], "a damaged MLflow store"),
        (b"not a database, just text\n" * 10, "(file is not a database)"),
    ):
        store.write_bytes(damage)
        with pytest.raises(UserError, match=re.escape(needle)) as caught:
            preflight.check_project(tmp_path)
        assert "mv mlflow.db mlflow.db.damaged" in str(caught.value)
    store.unlink()

    prefect = tmp_path / ".compalign" / "prefect" / "prefect.db"
    prefect.parent.mkdir(parents=True)
    prefect.write_bytes(b"garbage" * 100)
    with pytest.raises(UserError, match="prefect.db: a damaged Prefect database"):
        preflight.check_project(tmp_path)


def _mount_tmpfs(folder, size: str, read_only: bool = False) -> bool:
    """Mount a tmpfs of `size` at `folder` (root only); False when this machine cannot."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    return mounted.returncode == 0


@pytest.mark.parametrize("fault", ["read-only folder", "full disk"])
def test_a_read_only_or_full_project_folder_is_one_line(tmp_path, fault):
    """A read-only folder was a traceback (exit 1); a full disk 669 lines and 16 tracebacks,
    blamed on the Prefect server. Needs a tmpfs (root) or, for read-only, a non-root user."""
    from conftest import TINY, run_cli

    project = tmp_path / "project"
    if fault == "full disk":
        if not _mount_tmpfs(project, "2m"):
            pytest.skip("cannot mount a small tmpfs here (needs root): no full disk to test on")
        needle = "free on its disk"
    elif _mount_tmpfs(project, "1m", read_only=True):
        needle = "a read-only file system"
    elif os.geteuid() != 0:
        project.mkdir()
        project.chmod(0o555)
        needle = "not writable"
    else:
        pytest.skip("root ignores permissions and cannot mount here: no read-only folder")
    try:
        result = run_cli("run", "--params", str(TINY), cwd=project, timeout=300)
        one_line_exit_2(result, needle)
        assert not WRITTEN & {path.name for path in project.iterdir()}
    finally:
        subprocess.run(["umount", str(project)], capture_output=True)
        if project.exists():
            project.chmod(0o755)


@pytest.mark.parametrize(
    ("code", "needle"),
    [(errno.ENOSPC, "(the disk is full); free some space"), (errno.EROFS, "run from a folder")],
)
def test_an_environment_error_during_a_run_is_one_line(monkeypatch, capsys, code, needle):
    """A full disk found mid-run (after the check before it): the CLI's last word is one line."""
    from flows import cli

    def failing() -> None:
        raise OSError(code, os.strerror(code), "artifacts/prepare/abc/dataset.parquet")

    monkeypatch.setattr(cli, "app", failing)
    with pytest.raises(SystemExit) as caught:
        cli.main()
    assert caught.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "dataset.parquet" in message and needle in message
    assert "\n" not in message


def test_an_unrelated_os_error_stays_a_traceback(monkeypatch):
    from flows import cli

    def failing() -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(cli, "app", failing)
    with pytest.raises(OSError):
        cli.main()


# ---------------------------------------------------------------------------------------------
# 7. Two audits in one folder take turns


def test_a_second_audit_in_the_folder_is_refused_while_the_first_writes(tmp_path, monkeypatch):
    """The first audit's lock is held by another process; the second is refused in one line
    naming it, and gets the lock once the first has ended (however it ended)."""
    from flows import preflight

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(preflight, "_checked", set())
    (tmp_path / ".compalign").mkdir()
    holder_code = (  # what audit_lock does, without importing compalign (fast)
        "import fcntl, os, sys\n"
        "handle = open('.compalign/audit.lock', 'a+')\n"
        "fcntl.flock(handle, fcntl.LOCK_EX)\n"
        "handle.truncate(0); handle.write(str(os.getpid())); handle.flush()\n"
        "print('locked', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError) as caught, preflight.audit_lock(Path("reports/compare")):
            pass
        assert f"another audit (pid {holder.pid}) is writing reports/compare" in str(caught.value)
    finally:
        holder.kill()
        holder.wait()
    with preflight.audit_lock(Path("reports/compare")):
        assert (tmp_path / ".compalign" / "audit.lock").read_text() == str(os.getpid())


def test_a_store_creation_killed_half_way_leaves_no_half_made_mlflow_db(tmp_path, monkeypatch):
    """MLflow's migrations commit one by one: an audit killed during them left a mlflow.db
    every later run failed on ("table secrets already exists"). The store is now made under
    another name and renamed; a dead process's leftover is removed."""
    from tasks.infra import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    leftover = tmp_path / f".mlflow.db.{dead}.creating"
    leftover.write_bytes(b"half a migration")
    found = tracking.setup("hostile")
    assert (tmp_path / "mlflow.db").is_file() and not leftover.exists()
    assert tracking.setup("hostile")["experiment_id"] == found["experiment_id"]
    assert not list(tmp_path.glob(".mlflow.db.*"))
