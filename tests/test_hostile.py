"""Hostile files and broken models (issue 23): no code runs from a model file, broken outputs
never pass the gate, bad data is refused before anything is written.

Every hostile file is built here (tests/hostile.py); a marker file proves that no code ran.
Each test is one row of the README's "Reliability" catalogue.
"""

from __future__ import annotations

import subprocess
import sys

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
    """The unchecked torch.export.load runs the upper-case pickle and the guard code (in one
    child process): proof that two of the cases above are real attacks on this torch."""
    markers, paths = [], []
    for build in (hostile.pt2_upper_case_pickle, hostile.pt2_guard_code):
        markers.append(tmp_path / f"marker-{build.__name__}")
        paths.append(build(program, tmp_path / f"{build.__name__}.pt2", markers[-1]))
    code = (
        "import sys, torch\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        torch.export.load(path).module()(torch.randn(2, 3, 8, 8))\n"
        "    except Exception:\n"
        "        pass\n"
    )
    subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, timeout=300)
    assert [marker.exists() for marker in markers] == [True, True]


def test_a_shared_library_in_the_archive_is_never_loaded(program, tmp_path):
    marker = tmp_path / "marker"
    library = hostile.constructor_library(tmp_path, marker)
    if library is None:
        pytest.skip("no C compiler (gcc or cc) to build the planted shared library")
    assert not marker.exists()
    hostile_file = hostile.pt2_aotinductor_library(program, tmp_path / "aoti.pt2", library)
    refused(str(hostile_file), "unexpected entry 'model/data/aotinductor/model/planted.wrapper.so'")
    assert not marker.exists()
    assert not list(tmp_path.glob("aotinductor_*"))


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

    from compalign.compare import AuditData

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
    from compalign.compare import check_models, check_outputs

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
