"""flows/profiles.py: every paper profile loads and validates; a paper's two profiles run the
same methods and log to experiments of their own."""

from __future__ import annotations

import itertools
import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

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


# --------------------------------------------------------------------------------------------
# Every paper profile end to end on tiny data in its dataset's own on-disk format
# --------------------------------------------------------------------------------------------

PAPER_PROFILES = sorted(PROFILE_DIR.glob("*-paper.yaml"))


def _pickle(path, obj):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def write_cifar10(root, rng, train=40, test=20):
    """cifar-10-batches-py/ as torchvision reads it: five pickled training batches, a test batch
    and batches.meta; labels cycle through the ten classes."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(count, offset):
        images = rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)
        return {
            "labels": [(offset + i) % 10 for i in range(count)],
            "data": images.reshape(count, 3072),  # red plane, green, blue, each row-major
            "filenames": [f"{offset + i}.png" for i in range(count)],
        }

    for index in range(5):
        _pickle(folder / f"data_batch_{index + 1}", batch(train // 5, index * (train // 5)))
    _pickle(folder / "test_batch", batch(test, 0))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship"]
    _pickle(folder / "batches.meta", {"label_names": [*names, "truck"], "num_vis": 3072})


def write_celeba(root, rng, count=48):
    """celeba/ as torchvision reads it: JPEGs in img_align_celeba/ and the list_*.txt files
    (official partition 0/1/2 = train/valid/test), every attribute -1/1, Blond_Hair and Male
    balanced so every test group has both labels."""
    from test_data_sources import CELEBA_ATTRS, write_celeba_lists

    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(count)]
    partition = [
        (0, 0, 0, 0, 1, 2)[i % 6] if i < count - 12 else (1, 2)[i % 2] for i in range(count)
    ]
    attrs = rng.choice(np.array([-1, 1], dtype=np.int8), size=(count, len(CELEBA_ATTRS)))
    attrs[:, CELEBA_ATTRS.index("Blond_Hair")] = np.where(np.arange(count) // 6 % 2, 1, -1)
    attrs[:, CELEBA_ATTRS.index("Male")] = np.where(np.arange(count) // 12 % 2, 1, -1)
    for name in names:
        pixels = rng.integers(0, 256, size=(218, 178, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "img_align_celeba" / name, quality=90)

    write_celeba_lists(folder, names, partition, attrs)


# data.source -> (writer, the torchvision module whose md5 check the fake files cannot pass)
DATASET_WRITERS = {"cifar10": (write_cifar10, "cifar"), "celeba": (write_celeba, "celeba")}


def tiny_overrides(params: Params, root) -> list[str]:
    """The profile as it is, but one epoch on a few dozen images, its smallest level, a
    population of two, a token audit, the CPU and one seed: its wiring, not its results."""
    level = min(params.compress.sparsities)
    if "taylor_iterative" in params.compress.methods:
        level = 0.25
    # every stage of a ResNet-18 costs 4x at 64x64 what it costs at 32x32 (meyer-paper's 64:
    # 84 s for this test at 64 under load 5-6, most of it outside pruning)
    small = [] if (params.data.image_size or 0) <= 32 else ["data.image_size=32"]
    return [
        f"data.root={root}",
        *small,
        "reference.epochs=1",
        "reference.batch_size=16",
        "align.epochs=1",
        "align.batch_size=16",
        # iterative Taylor pruning of a ResNet-18 to the paper's 93.75% of conv FLOPs is a long
        # loop even with many filters a batch: a quarter of them wires the same code
        f"compress.sparsities=[{level}]",
        "compress.calibration_batches=1",
        "compress.calibration_batch_size=8",
        # iterative Taylor pruning removes one filter every 5th batch; a ResNet-18 masks about
        # 1,700 of its 4,800 filters to lose a quarter of its conv FLOPs (measured at 64 filters a
        # step: 26 steps, each one SGD batch and one scoring pass): 512 a step take 4
        "compress.taylor_iterative.per_step=512",
        "compress.taylor_iterative.batches_between_prunes=0",
        "compress.taylor_iterative.batch_size=16",
        # the authors' step numbers (thousands) do not fit one epoch: the default schedule
        "compress.gradual_magnitude.start_step=null",
        "compress.gradual_magnitude.end_step=null",
        "compress.gradual_magnitude.frequency=null",
        "populations.size=2",
        f"populations.sparsities=[{min(params.populations.sparsities)}]",
        "populations.gallery_examples=2",
        # float16 has no fast CPU kernels (README: 46x the reference's latency); the same code
        # path as bfloat16, which has them
        "compress.half.dtype=bfloat16",
        "audit.bootstrap_samples=100",
        "audit.attribution_samples=4",
        "audit.integrated_gradients_steps=2",
        "audit.figure_examples=2",
        "audit.latency_warmup=0",
        "audit.latency_repeats=1",
        "audit.latency_batch_sizes=[1]",
        "run.device=cpu",
        "reproduce.seeds=1",
    ]


def test_every_paper_profile_has_a_tiny_dataset_writer():
    sources = {
        paper_params(path.stem.removesuffix("-paper"), "paper").data.source
        for path in PAPER_PROFILES
    }
    assert len(PAPER_PROFILES) >= len(PAPERS)
    assert sources <= set(DATASET_WRITERS), (
        f"write a tiny {sources - set(DATASET_WRITERS)} in its format"
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER_PROFILES, ids=lambda path: path.stem)
def test_paper_profile_runs_end_to_end_on_tiny_data(path, project, prefect_server, monkeypatch):
    """`compalign reproduce <paper> --profile paper` with tiny_overrides on a fake dataset in
    the real layout (read by the real torchvision loader; only its md5 check is patched): the
    profile's dataset, model, compressors, losses and report all wire together on the CPU."""
    import importlib

    from flows.reproduce import run_reproduce

    paper = path.stem.removesuffix("-paper")
    profile = paper_params(paper, "paper")
    writer, module = DATASET_WRITERS[profile.data.source]
    writer(project / "data" / "raw", np.random.default_rng(0))
    monkeypatch.setattr(
        importlib.import_module(f"torchvision.datasets.{module}"),
        "check_integrity",
        lambda fpath, md5=None: os.path.isfile(fpath),
    )
    overrides = tiny_overrides(profile, project / "data" / "raw")
    [result] = run_reproduce(paper, "paper", overrides)
    assert result["paper"] == paper and result["verdicts"] and result["run_id"]
    readme = (project / "reports" / paper / "README.md").read_text()
    assert readme.startswith("# ") and "paper profile" in readme
    assert all(verdict in readme for verdict in result["verdicts"])
    if "taylor_iterative" in profile.compress.methods:
        # each pruned model's audit holds the conv FLOPs its masks removed and its saved model's
        audits = [
            json.loads(path.read_text())
            for path in (project / "artifacts" / "audit").glob("*/metrics.json")
        ]
        recorded = [metrics for metrics in audits if "conv_flops_removed" in metrics]
        assert len(recorded) == len(profile.align.losses)
        assert all(metrics["masked_conv_flops_removed"] >= 0.25 for metrics in recorded)


SHARED_DATA = PROFILE_DIR.parents[1] / "shared" / "data" / "fashion-mnist-test-4443"


@pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason="../shared/data/fashion-mnist-test-4443 (the development images beside the project) "
    "is absent: a user's clone",
)
@pytest.mark.parametrize("paper", PAPERS)
def test_fmnist_profiles_read_the_real_images(paper, tmp_path, monkeypatch):
    """The fmnist profiles' data section reads the 4,443 Fashion-MNIST images as they are:
    28x28 greyscale, 10 classes, from the folder beside the project."""
    from compalign.data import SOURCES

    monkeypatch.chdir(PROFILE_DIR.parent)  # the profiles' data.root is relative to the project
    data = paper_params(paper, "fmnist").data
    raw = SOURCES["imagefolder"].load(data)
    assert len(raw.labels) == 4443 and len(raw.class_names) == 10
    assert tuple(raw.load_images(np.arange(3)).shape[1:]) == (28, 28, 1)
