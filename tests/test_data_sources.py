"""The real dataset loaders of compalign.data, run on tiny fake datasets in each one's own format.

Every fake dataset is written under pytest's tmp_path in the layout torchvision reads (pickled
CIFAR batches, MNIST idx files, SVHN .mat files, the CelebA folder, a class-per-folder tree), then
goes through build_table -> write_prepared -> read_manifest -> load_split. torchvision's md5
comparison is the only thing ever patched; files must still exist and are parsed by the real
loaders.
"""

import importlib
import json
import os
import pickle
import struct
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from compalign.config import DataParams
from compalign.data import (
    REQUIRED_FILES,
    SOURCES,
    SPLITS,
    build_table,
    check_available,
    fingerprint,
    load_split,
    read_manifest,
    write_prepared,
)
from compalign.errors import UserError

CIFAR10_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
CELEBA_ATTRS = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]

# 20 training examples, 4 classes x 5, and 10 test examples: with the default val_fraction of
# 0.15, val takes round(0.15 * 30 / 20 * 5) = 1 example per class from train.
N_TRAIN, N_TEST = 20, 10
TRAIN_LABELS = np.arange(N_TRAIN) % 4
TEST_LABELS = np.arange(N_TEST) % 10
OFFICIAL_TRAIN_TEST_SPLITS = {"train": 16, "val": 4, "test": 10}


def _skip_md5(monkeypatch, module_name):
    """Make torchvision.datasets.<module_name> accept files whose md5 differs from the real ones.

    This is the only thing patched: check_integrity still requires each file to exist, and the
    files are then read by torchvision's real loader. (Patching only CIFAR10._check_integrity is
    not enough: CIFAR10._load_meta calls check_integrity on the meta file with its md5 directly.)
    """
    module = importlib.import_module(f"torchvision.datasets.{module_name}")
    monkeypatch.setattr(module, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def _random_images(rng, count, height, width, channels):
    return rng.integers(0, 256, size=(count, height, width, channels), dtype=np.uint8)


def _prepare_and_check(tmp_path, params, expected, splits, class_names, channels, size):
    """Build, write, verify and reload `params`' dataset; check it against `expected`.

    `expected` maps example_id -> (label, image as uint8 [H, W, C] or None to skip pixels).
    Returns {split name: Split}.
    """
    first, second = tmp_path / "prepared-a", tmp_path / "prepared-b"
    manifest = write_prepared(*build_table(params), first)
    assert read_manifest(first) == manifest  # verify=True recomputes the sha256
    # ids, splits and pixels are deterministic: a second build writes the identical file
    assert write_prepared(*build_table(params), second)["sha256"] == manifest["sha256"]

    assert manifest["source"] == params.source
    assert manifest["splits"] == splits
    assert manifest["num_examples"] == sum(splits.values())
    assert manifest["class_names"] == class_names
    assert manifest["num_classes"] == len(class_names)
    assert manifest["image_shape"] == [size, size, channels]
    assert len(manifest["mean"]) == len(manifest["std"]) == channels

    loaded, seen = {}, set()
    for name in SPLITS:
        split = load_split(first, name, manifest)
        assert len(split) == splits[name]
        assert split.images.dtype == torch.uint8
        assert tuple(split.images.shape) == (splits[name], channels, size, size)
        for example_id, label, image in zip(
            split.example_ids, split.labels.tolist(), split.images, strict=True
        ):
            assert example_id not in seen
            seen.add(example_id)
            want_label, want_image = expected[example_id]
            assert label == want_label, example_id
            if want_image is not None:
                np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), want_image)
        loaded[name] = split
    assert seen == set(expected)  # no limit in these tests: every example is kept

    # a changed file is refused
    with open(second / manifest["file"], "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(UserError, match="sha256"):
        read_manifest(second)
    return loaded


def test_each_source_is_its_own_module():
    """One file per source: compalign/data/sources/<name>.py defines the loader and the entry,
    and the loader's docstring says what the dataset is."""
    for name, source in SOURCES.items():
        module = sys.modules[source.load.__module__]
        assert module.__name__ == f"compalign.data.sources.{name}"
        assert Path(module.__file__).name == f"{name}.py"
        assert module.SOURCE is source
        assert source.description


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: pickled dicts in cifar-10-batches-py/ and cifar-100-python/
# --------------------------------------------------------------------------------------------


def _pickle(path, obj):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def _cifar_rows(images):
    """[N, 32, 32, 3] HWC -> [N, 3072]: the red plane, then green, then blue, each row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def _write_cifar10(root, rng):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = _random_images(rng, N_TRAIN, 32, 32, 3)
    test = _random_images(rng, N_TEST, 32, 32, 3)
    per_batch = N_TRAIN // 5
    for batch in range(5):
        rows = slice(batch * per_batch, (batch + 1) * per_batch)
        _pickle(
            folder / f"data_batch_{batch + 1}",
            {
                "batch_label": f"training batch {batch + 1} of 5",
                "labels": TRAIN_LABELS[rows].tolist(),
                "data": _cifar_rows(train[rows]),
                "filenames": [f"train_{i}.png" for i in range(N_TRAIN)[rows]],
            },
        )
    _pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": TEST_LABELS.tolist(),
            "data": _cifar_rows(test),
            "filenames": [f"test_{i}.png" for i in range(N_TEST)],
        },
    )
    _pickle(
        folder / "batches.meta",
        {"num_cases_per_batch": per_batch, "label_names": CIFAR10_NAMES, "num_vis": 3072},
    )
    return train, test


def test_cifar10(tmp_path, monkeypatch):
    """CIFAR-10 batches: official test split kept, pixels/labels/class names as written."""
    _skip_md5(monkeypatch, "cifar")
    root = tmp_path / "raw"
    train, test = _write_cifar10(root, np.random.default_rng(0))
    expected = {f"cifar10-train-{i:06d}": (int(TRAIN_LABELS[i]), train[i]) for i in range(N_TRAIN)}
    expected |= {f"cifar10-test-{i:06d}": (int(TEST_LABELS[i]), test[i]) for i in range(N_TEST)}

    loaded = _prepare_and_check(
        tmp_path,
        DataParams(source="cifar10", root=str(root)),
        expected,
        OFFICIAL_TRAIN_TEST_SPLITS,
        CIFAR10_NAMES,
        channels=3,
        size=32,
    )
    assert all("-test-" in example_id for example_id in loaded["test"].example_ids)
    assert all("-train-" in example_id for example_id in loaded["val"].example_ids)
    assert sorted(loaded["val"].labels.tolist()) == [0, 1, 2, 3]  # stratified by label


def test_cifar10_limit_and_resize(tmp_path, monkeypatch):
    """data.limit caps each split; data.image_size resizes the 32x32 CIFAR images."""
    _skip_md5(monkeypatch, "cifar")
    root = tmp_path / "raw"
    _write_cifar10(root, np.random.default_rng(1))
    params = DataParams(source="cifar10", root=str(root), limit=10, image_size=16)
    table, manifest = build_table(params)
    assert manifest["splits"] == {"train": 10, "val": 4, "test": 10}
    assert manifest["image_shape"] == [16, 16, 3]
    write_prepared(table, manifest, tmp_path / "prepared")
    assert load_split(tmp_path / "prepared", "train").images.shape == (10, 3, 16, 16)


def test_cifar100(tmp_path, monkeypatch):
    """CIFAR-100 train/test/meta files: fine labels and fine label names are used."""
    _skip_md5(monkeypatch, "cifar")
    rng = np.random.default_rng(2)
    root = tmp_path / "raw"
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    fine_names = [f"fine_{i:03d}" for i in range(100)]
    fine_of = np.array([7, 42, 99, 0])  # 4 fine classes, spread over 0..99
    train_labels, test_labels = fine_of[TRAIN_LABELS], (TEST_LABELS * 11) % 100
    train = _random_images(rng, N_TRAIN, 32, 32, 3)
    test = _random_images(rng, N_TEST, 32, 32, 3)
    for name, images, labels in (("train", train, train_labels), ("test", test, test_labels)):
        _pickle(
            folder / name,
            {
                "filenames": [f"{name}_{i}.png" for i in range(len(images))],
                "batch_label": f"{name}ing batch 1 of 1",
                "fine_labels": labels.tolist(),
                "coarse_labels": (labels // 5).tolist(),
                "data": _cifar_rows(images),
            },
        )
    _pickle(
        folder / "meta",
        {"fine_label_names": fine_names, "coarse_label_names": [f"c{i}" for i in range(20)]},
    )
    expected = {f"cifar100-train-{i:06d}": (int(train_labels[i]), train[i]) for i in range(N_TRAIN)}
    expected |= {f"cifar100-test-{i:06d}": (int(test_labels[i]), test[i]) for i in range(N_TEST)}

    _prepare_and_check(
        tmp_path,
        DataParams(source="cifar100", root=str(root)),
        expected,
        OFFICIAL_TRAIN_TEST_SPLITS,
        fine_names,
        channels=3,
        size=32,
    )


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST: uncompressed idx files in MNIST/raw/ and FashionMNIST/raw/
# --------------------------------------------------------------------------------------------


def _write_idx(path, array):
    """The idx format: magic 0x0000 08 <ndim> (08 = unsigned byte), big-endian int32 sizes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


@pytest.mark.parametrize(
    ("source", "folder", "class_names"),
    [
        (
            "mnist",
            "MNIST",
            [
                "0 - zero",
                "1 - one",
                "2 - two",
                "3 - three",
                "4 - four",
                "5 - five",
                "6 - six",
                "7 - seven",
                "8 - eight",
                "9 - nine",
            ],
        ),
        (
            "fashionmnist",
            "FashionMNIST",
            [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
        ),
    ],
)
def test_mnist_like(tmp_path, source, folder, class_names):
    """MNIST-like idx files, read with no patching at all: 1 channel, 28x28, labels as written."""
    rng = np.random.default_rng(3)
    root = tmp_path / "raw"
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    train = _random_images(rng, N_TRAIN, 28, 28, 1)
    test = _random_images(rng, N_TEST, 28, 28, 1)
    _write_idx(raw / "train-images-idx3-ubyte", train[..., 0])
    _write_idx(raw / "train-labels-idx1-ubyte", TRAIN_LABELS)
    _write_idx(raw / "t10k-images-idx3-ubyte", test[..., 0])
    _write_idx(raw / "t10k-labels-idx1-ubyte", TEST_LABELS)
    expected = {f"{source}-train-{i:06d}": (int(TRAIN_LABELS[i]), train[i]) for i in range(N_TRAIN)}
    expected |= {f"{source}-test-{i:06d}": (int(TEST_LABELS[i]), test[i]) for i in range(N_TEST)}

    _prepare_and_check(
        tmp_path,
        DataParams(source=source, root=str(root)),
        expected,
        OFFICIAL_TRAIN_TEST_SPLITS,
        class_names,
        channels=1,
        size=28,
    )


# --------------------------------------------------------------------------------------------
# SVHN: train_32x32.mat and test_32x32.mat in data.root
# --------------------------------------------------------------------------------------------


def test_svhn(tmp_path, monkeypatch):
    """SVHN .mat files (X [32, 32, 3, N], y [N, 1], 10 = digit 0): pixels and labels 0..9."""
    _skip_md5(monkeypatch, "svhn")
    rng = np.random.default_rng(4)
    root = tmp_path / "raw"
    root.mkdir()
    digits = {"train": np.array([0, 3, 7, 9])[TRAIN_LABELS], "test": TEST_LABELS}
    expected = {}
    for name, count in (("train", N_TRAIN), ("test", N_TEST)):
        images = _random_images(rng, count, 32, 32, 3)
        stored = np.where(digits[name] == 0, 10, digits[name]).astype(np.uint8)
        scipy.io.savemat(
            root / f"{name}_32x32.mat",
            {"X": images.transpose(1, 2, 3, 0), "y": stored.reshape(count, 1)},
        )
        expected |= {
            f"svhn-{name}-{i:06d}": (int(digits[name][i]), images[i]) for i in range(count)
        }

    _prepare_and_check(
        tmp_path,
        DataParams(source="svhn", root=str(root)),
        expected,
        OFFICIAL_TRAIN_TEST_SPLITS,
        [str(digit) for digit in range(10)],
        channels=3,
        size=32,
    )


# --------------------------------------------------------------------------------------------
# CelebA: celeba/img_align_celeba/*.jpg and the list_*.txt files
# --------------------------------------------------------------------------------------------

# official partition (0 train, 1 valid, 2 test), deliberately interleaved
CELEBA_PARTITION = [0, 0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 2]
CELEBA_WIDTH, CELEBA_HEIGHT, CELEBA_BAND = 32, 48, 8  # portrait, like the real 178x218


def _celeba_grey(index):
    return 40 + 15 * index


def write_celeba_lists(folder, names, partition, attrs):
    """CelebA's list_*.txt files for `names` as torchvision reads them: the official partition
    (0/1/2 = train/valid/test), identities, boxes, landmarks and the -1/1 attributes."""
    count = len(names)

    def lines(rows, header=None):
        text = [str(count), header] if header is not None else []
        return "\n".join(text + rows) + "\n"

    (folder / "list_eval_partition.txt").write_text(
        lines([f"{name} {part}" for name, part in zip(names, partition, strict=True)])
    )
    (folder / "identity_CelebA.txt").write_text(
        lines([f"{name} {1000 + i}" for i, name in enumerate(names)])
    )
    (folder / "list_bbox_celeba.txt").write_text(
        lines([f"{name}    95  71 226 313" for name in names], "image_id x_1 y_1 width height")
    )
    (folder / "list_landmarks_align_celeba.txt").write_text(
        lines(
            [f"{name} 69  109  106  113   77  142   73  152  108  154" for name in names],
            "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
            "leftmouth_x leftmouth_y rightmouth_x rightmouth_y",
        )
    )
    (folder / "list_attr_celeba.txt").write_text(  # the real header line ends with a space
        lines(
            [
                f"{name} " + " ".join(f"{v:2d}" for v in row)
                for name, row in zip(names, attrs, strict=True)
            ],
            " ".join(CELEBA_ATTRS) + " ",
        )
    )


def _write_celeba(root, rng):
    """A 12-image CelebA folder; returns the attributes as {filename: int8 [40] of -1/1}."""
    folder = root / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True)
    count = len(CELEBA_PARTITION)
    names = [f"{i + 1:06d}.jpg" for i in range(count)]
    attrs = rng.choice(np.array([-1, 1], dtype=np.int8), size=(count, len(CELEBA_ATTRS)))
    attrs[:, CELEBA_ATTRS.index("Blond_Hair")] = np.where(np.arange(count) % 3 == 0, 1, -1)
    attrs[:, CELEBA_ATTRS.index("Smiling")] = np.where(np.arange(count) % 2 == 0, 1, -1)
    for index, name in enumerate(names):
        # a uniform grey face between a red band on top and a blue band at the bottom, each as
        # tall as the centre crop cuts off; bands fill whole 8x8 JPEG blocks so they do not bleed
        pixels = np.full((CELEBA_HEIGHT, CELEBA_WIDTH, 3), _celeba_grey(index), dtype=np.uint8)
        pixels[:CELEBA_BAND] = (255, 0, 0)
        pixels[-CELEBA_BAND:] = (0, 0, 255)
        Image.fromarray(pixels).save(images / name, quality=95, subsampling=0)

    write_celeba_lists(folder, names, CELEBA_PARTITION, attrs)
    return dict(zip(names, attrs, strict=True))


def test_celeba(tmp_path, monkeypatch):
    """CelebA: official partition, Blond_Hair label, 40 attribute groups, centre-crop + resize."""
    _skip_md5(monkeypatch, "celeba")
    root = tmp_path / "raw"
    attrs = _write_celeba(root, np.random.default_rng(5))
    blond = CELEBA_ATTRS.index("Blond_Hair")
    expected = {f"celeba-{name[:-4]}": (int(row[blond] == 1), None) for name, row in attrs.items()}
    loaded = _prepare_and_check(
        tmp_path,
        DataParams(source="celeba", root=str(root), image_size=16),
        expected,
        {"train": 6, "val": 3, "test": 3},
        ["not Blond_Hair", "Blond_Hair"],
        channels=3,
        size=16,
    )
    part_of = {"train": 0, "val": 1, "test": 2}
    manifest = read_manifest(tmp_path / "prepared-a")
    assert manifest["group_columns"] == CELEBA_ATTRS
    for split_name, split in loaded.items():
        assert list(split.groups.columns) == CELEBA_ATTRS
        for row, example_id in enumerate(split.example_ids):
            index = int(example_id.removeprefix("celeba-")) - 1
            assert CELEBA_PARTITION[index] == part_of[split_name]
            written = attrs[f"{index + 1:06d}.jpg"]
            assert split.groups.iloc[row].tolist() == ((written + 1) // 2).tolist()
            # centre crop to 32x32 removes both bands, so the face is uniform grey throughout
            image = split.images[row].to(torch.int64)
            assert (image - _celeba_grey(index)).abs().max() <= 4, example_id


def test_celeba_target_and_default_size(tmp_path, monkeypatch):
    """data.target picks another attribute as the label; without image_size images are 64x64;
    an unknown attribute is a UserError that lists the attributes."""
    _skip_md5(monkeypatch, "celeba")
    root = tmp_path / "raw"
    attrs = _write_celeba(root, np.random.default_rng(6))
    table, manifest = build_table(DataParams(source="celeba", root=str(root), target="Smiling"))
    assert manifest["class_names"] == ["not Smiling", "Smiling"]
    assert manifest["image_shape"] == [64, 64, 3]
    smiling = CELEBA_ATTRS.index("Smiling")
    labels = dict(
        zip(table.column("example_id").to_pylist(), table.column("label").to_pylist(), strict=True)
    )
    assert labels == {f"celeba-{name[:-4]}": int(row[smiling] == 1) for name, row in attrs.items()}
    assert table.column("Smiling").to_pylist() == table.column("label").to_pylist()

    with pytest.raises(UserError, match="not a CelebA attribute.*Blond_Hair"):
        build_table(DataParams(source="celeba", root=str(root), target="Blonde"))


# --------------------------------------------------------------------------------------------
# imagefolder: one sub-folder of images per class at data.root
# --------------------------------------------------------------------------------------------

FOLDER_CLASSES = ["cat", "dog", "eel"]


def _write_tree(tree, rng, per_class, start=0, size=(8, 8)):
    """PNG files tree/<class>/<nn>.png; returns {path relative to tree: (label, HWC pixels)}."""
    written = {}
    for label, name in enumerate(FOLDER_CLASSES):
        (tree / name).mkdir(parents=True, exist_ok=True)
        for index in range(start, start + per_class):
            pixels = _random_images(rng, 1, size[1], size[0], 3)[0]
            Image.fromarray(pixels).save(tree / name / f"{index:02d}.png")
            written[f"{name}/{index:02d}.png"] = (label, pixels)
    return written


def test_imagefolder_without_official_split(tmp_path):
    """A flat class-per-folder tree: seeded stratified test and val splits, exact PNG pixels."""
    root = tmp_path / "raw"
    expected = _write_tree(root, np.random.default_rng(7), per_class=8)
    # test: round(0.25 * 8) = 2 per class; val: round(0.15 * 24 / 18 * 6) = 1 per class
    loaded = _prepare_and_check(
        tmp_path,
        DataParams(source="imagefolder", root=str(root)),
        expected,
        {"train": 15, "val": 3, "test": 6},
        FOLDER_CLASSES,
        channels=3,
        size=8,
    )
    assert sorted(loaded["test"].labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_imagefolder_with_official_split(tmp_path):
    """train/ and test/ sub-trees are the official split; val is drawn from train/ only."""
    root = tmp_path / "raw"
    rng = np.random.default_rng(8)
    train = _write_tree(root / "train", rng, per_class=6)
    test = _write_tree(root / "test", rng, per_class=2, start=6)
    expected = {f"train/{key}": value for key, value in train.items()}
    expected |= {f"test/{key}": value for key, value in test.items()}
    loaded = _prepare_and_check(
        tmp_path,
        DataParams(source="imagefolder", root=str(root)),
        expected,
        {"train": 15, "val": 3, "test": 6},
        FOLDER_CLASSES,
        channels=3,
        size=8,
    )
    assert all(example_id.startswith("test/") for example_id in loaded["test"].example_ids)
    for name in ("train", "val"):
        assert all(example_id.startswith("train/") for example_id in loaded[name].example_ids)


def test_imagefolder_grey_crop_and_sizes(tmp_path):
    """image_mode=L gives one channel; landscape images are centre-cropped to squares; images of
    different sizes without data.image_size are a UserError, and resized with it."""
    root = tmp_path / "raw"
    written = _write_tree(root, np.random.default_rng(9), per_class=8, size=(12, 8))
    expected = {}
    for key, (label, pixels) in written.items():
        grey = np.asarray(Image.fromarray(pixels).convert("L"))
        expected[key] = (label, grey[:, 2:10, None])  # 12 wide -> the middle 8 columns
    _prepare_and_check(
        tmp_path,
        DataParams(source="imagefolder", root=str(root), image_mode="L"),
        expected,
        {"train": 15, "val": 3, "test": 6},
        FOLDER_CLASSES,
        channels=1,
        size=8,
    )

    Image.new("RGB", (10, 10)).save(root / "cat" / "big.png")
    with pytest.raises(UserError, match="data.image_size"):
        build_table(DataParams(source="imagefolder", root=str(root)))
    _, manifest = build_table(DataParams(source="imagefolder", root=str(root), image_size=8))
    assert manifest["image_shape"] == [8, 8, 3]
    assert manifest["num_examples"] == 25


# --------------------------------------------------------------------------------------------
# Fingerprints: what the prepare stage's cache key knows of the files under data.root
# --------------------------------------------------------------------------------------------


def test_imagefolder_fingerprint_lists_the_images(tmp_path):
    """The same tree gives the same fingerprint; adding, removing or rewriting an image changes
    it (listing with size and mtime, no hashing); a file that is not an image does not."""
    root = tmp_path / "raw"
    written = _write_tree(root, np.random.default_rng(10), per_class=2)
    params = DataParams(source="imagefolder", root=str(root))
    first = fingerprint(params)
    assert json.loads(json.dumps(first)) == first
    assert [entry["path"] for entry in first["images"]] == sorted(written)
    assert fingerprint(params) == first
    (root / "notes.txt").write_text("not an image")
    assert fingerprint(params) == first

    Image.new("RGB", (8, 8)).save(root / "dog" / "09.png")
    assert fingerprint(params) != first
    (root / "dog" / "09.png").unlink()
    assert fingerprint(params) == first

    image = root / "cat" / "00.png"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # rewritten later
    assert fingerprint(params) != first


def test_torchvision_fingerprint_hashes_the_files(tmp_path):
    """Every file under the required folder with its sha256: a changed byte shows even with
    the same size and modification time. Missing files are listed, not an error."""
    root = tmp_path / "raw"
    _write_cifar10(root, np.random.default_rng(11))
    params = DataParams(source="cifar10", root=str(root))
    first = fingerprint(params)
    names = ["batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    assert [entry["path"] for entry in first["files"]] == [
        f"cifar-10-batches-py/{name}" for name in names
    ]
    path = root / "cifar-10-batches-py" / "test_batch"
    stat = path.stat()
    content = bytearray(path.read_bytes())
    content[-2] ^= 1
    path.write_bytes(bytes(content))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint(params) != first

    assert fingerprint(DataParams(source="svhn", root=str(tmp_path))) == {
        "files": [
            {"path": "train_32x32.mat", "missing": True},
            {"path": "test_32x32.mat", "missing": True},
        ]
    }


def test_celeba_fingerprint_hashes_the_lists_and_lists_the_images(tmp_path):
    root = tmp_path / "raw"
    _write_celeba(root, np.random.default_rng(12))
    params = DataParams(source="celeba", root=str(root))
    first = fingerprint(params)
    assert [entry["path"] for entry in first["lists"]] == [
        "celeba/list_attr_celeba.txt",
        "celeba/list_eval_partition.txt",
    ]
    assert all("sha256" in entry for entry in first["lists"])
    assert len(first["images"]) == len(CELEBA_PARTITION)
    assert all("sha256" not in entry for entry in first["images"])
    Image.new("RGB", (8, 8)).save(root / "celeba" / "img_align_celeba" / "999999.jpg")
    assert fingerprint(params) != first


def test_digits_fingerprint_is_the_scikit_learn_version():
    """The digits ship inside scikit-learn's wheel."""
    assert fingerprint(DataParams()) == {"scikit-learn": version("scikit-learn")}


# --------------------------------------------------------------------------------------------
# Missing data: a UserError that says where it looked and how to get the data
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "looked_in"),
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("mnist", "MNIST/raw"),
        ("fashionmnist", "FashionMNIST/raw"),
        ("svhn", "train_32x32.mat"),
        ("celeba", "celeba"),
    ],
)
def test_missing_torchvision_data(tmp_path, source, looked_in):
    """An empty data.root is a one-line UserError naming the folder and how to get the data."""
    with pytest.raises(UserError) as caught:
        build_table(DataParams(source=source, root=str(tmp_path)))
    message = str(caught.value)
    assert "\n" not in message
    assert f"data.source={source}" in message
    assert str(tmp_path / looked_in) in message
    assert "not found" in message
    assert "data.download=true" in message
    assert "data.root" in message
    assert isinstance(caught.value.__cause__, RuntimeError)  # torchvision's, kept as the cause


def test_missing_celeba_names_its_files(tmp_path):
    """The CelebA message names the image folder and the list files it needs."""
    with pytest.raises(UserError, match=r"img_align_celeba/ and the list_\*\.txt files"):
        build_table(DataParams(source="celeba", root=str(tmp_path)))


def test_missing_imagefolder(tmp_path):
    """imagefolder: a missing root, or one with no class folders, is a UserError."""
    with pytest.raises(UserError, match="not found.*one sub-folder of images per class"):
        build_table(DataParams(source="imagefolder", root=str(tmp_path / "absent")))
    with pytest.raises(UserError, match="not a class-per-folder image tree"):
        build_table(DataParams(source="imagefolder", root=str(tmp_path)))


@pytest.mark.parametrize("source", sorted(REQUIRED_FILES))
def test_check_available_names_what_is_missing_then_accepts_the_layout(
    tmp_path, monkeypatch, source
):
    params = DataParams(source=source, root=str(tmp_path))
    with pytest.raises(UserError, match="dataset not found at") as caught:
        check_available(params)
    names, _ = REQUIRED_FILES[source]
    assert str(tmp_path / names[0]) in str(caught.value)
    for name in names:  # the layout torchvision reads: folders, or files for SVHN and CelebA
        path = tmp_path / name
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True)
    if source == "celeba":  # its lists are checked before any work: well-formed, the published
        _skip_md5(monkeypatch, "celeba")
        write_celeba_lists(tmp_path / "celeba", [], [], np.zeros((0, len(CELEBA_ATTRS))))
    check_available(params)
    check_available(DataParams(source=source, root=str(tmp_path / "none"), download=True))
