"""flows/rerun.py's quick path: what a remembered answer depends on, checked without running a
pipeline (the command itself is exercised in
test_cli.py::test_same_seed_same_numbers_in_a_fresh_project)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flows import rerun as quick


@pytest.mark.parametrize(
    ("argv", "parsed"),
    [
        (["run"], (Path("params.yaml"), [])),
        (
            ["run", "-p", "a.yaml", "--set", "x.y=1", "-s", "z.w=2"],
            (Path("a.yaml"), ["x.y=1", "z.w=2"]),
        ),
        (["run", "--params=a.yaml", "--set=x.y=1", "--verbose"], (Path("a.yaml"), ["x.y=1"])),
        (["run", "--refresh"], None),
        (["run", "--help"], None),
        (["run", "--set"], None),
        (["populations"], None),
        ([], None),
    ],
)
def test_only_a_plain_run_is_answered(argv, parsed):
    assert quick.parse_run(argv) == parsed


def test_the_digest_covers_params_overrides_environment_and_code(tmp_path, monkeypatch):
    source = tmp_path / "compalign" / "module.py"
    source.parent.mkdir()
    source.write_text("x = 1\n")
    params = tmp_path / "params.yaml"
    params.write_text("align:\n  epochs: 2\n")
    monkeypatch.setattr(quick, "ROOT", tmp_path)
    monkeypatch.setattr(quick, "SOURCES", ("compalign",))
    monkeypatch.delenv("COMPALIGN_REFRESH", raising=False)
    monkeypatch.chdir(tmp_path)
    before = quick.inputs_digest(params, [])
    assert quick.inputs_digest(params, []) == before
    assert quick.inputs_digest(params, ["align.epochs=3"]) != before
    monkeypatch.setenv("COMPALIGN_REFRESH", "1")
    assert quick.inputs_digest(params, []) != before
    monkeypatch.delenv("COMPALIGN_REFRESH")
    params.write_text("align:\n  epochs: 3\n")
    assert quick.inputs_digest(params, []) != before
    params.write_text("align:\n  epochs: 2\n")
    source.write_text("x = 2\n")
    assert quick.inputs_digest(params, []) != before
    source.write_text("x = 1\n")
    assert quick.inputs_digest(params, []) == before
    assert quick.inputs_digest(tmp_path / "missing.yaml", []) is None


def test_files_and_folders_the_params_name_are_witnessed(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    root = tmp_path / "images"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "1.png").write_bytes(b"png")
    settings = {"reference": {"path": str(model)}, "data": {"root": str(root), "limit": 5}}
    seen = quick.witnesses(settings)
    assert set(seen) == {str(model), str(root)} and seen[str(root)].keys() == {"cat/1.png"}
    assert quick._witnesses_hold(seen)
    (root / "cat" / "2.png").write_bytes(b"png")  # an image added
    assert not quick._witnesses_hold(seen)
    (root / "cat" / "2.png").unlink()
    assert quick._witnesses_hold(seen)
    stat = model.stat()
    model.write_bytes(b"WEIGHTS")  # same size, replaced
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert not quick._witnesses_hold(seen)
    model.unlink()
    assert not quick._witnesses_hold(seen)


def test_the_console_width_of_logs_is_the_summary_tables():
    """flows/rerun.py keys a remembered summary by the width print_summary gives a non-terminal
    (its own copy of the constant: compalign.report.tables imports pandas and torch)."""
    from compalign.report.tables import TERMINAL_WIDTH

    assert quick.TERMINAL_WIDTH == TERMINAL_WIDTH


def test_only_the_most_recent_answers_are_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quick.QUICK_DIR.mkdir(parents=True)
    for index in range(5):
        memo = quick.QUICK_DIR / f"{index}.json"
        memo.write_text("{}\n")
        os.utime(memo, ns=(index * 10**9, index * 10**9))
    (quick.QUICK_DIR / "other.txt").write_text("not an answer\n")
    quick.prune(keep=3)
    assert sorted(p.name for p in quick.QUICK_DIR.iterdir()) == [
        "2.json",
        "3.json",
        "4.json",
        "other.txt",
    ]
