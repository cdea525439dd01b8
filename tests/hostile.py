"""Hostile and broken files, built by the tests themselves (tests/test_hostile.py), and by
bench/hostile.py, which runs the whole catalogue against a `compalign` command.

Every builder writes into a folder it is given and returns the path; a "marker" is a file that
exists only if code from the hostile file ran.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

CLASSES = ("a", "b", "c")


class Planted:
    """Unpickling this writes the marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


# ---------------------------------------------------------------------------------------------
# Models


def tiny_module(classes: int = 3):
    """A small CNN whose class k responds to colour channel k (accurate on `image_folder`)."""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.fc = torch.nn.Linear(3, classes)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(images)).mean((2, 3)))

    model = Tiny().eval()
    with torch.no_grad():
        model.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        model.conv.bias.zero_()
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        for k in range(min(3, classes)):
            model.fc.weight[k, k] = 10.0
    return model


def export_program(path: Path, module=None) -> Path:
    """`module` (default: tiny_module()) exported with torch.export (any batch size), saved."""
    import torch

    module = module if module is not None else tiny_module()
    example = torch.randn(2, 3, 8, 8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(module, (example,), dynamic_shapes={"images": {0: batch}})
    torch.export.save(program, str(path))
    return path


def rewrite_archive(
    source: Path,
    target: Path,
    edit: Callable[[str, bytes], bytes | None] | None = None,
    add: dict[str, bytes] | None = None,
    compression: int = zipfile.ZIP_STORED,
) -> Path:
    """A copy of a .pt2 archive: each entry (name under its top folder, bytes) through `edit`
    (None drops it), then `add`ed entries under the same top folder."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", compression) as copy:
        root = original.namelist()[0].partition("/")[0]
        for info in original.infolist():
            name = info.filename.partition("/")[2]
            data = original.read(info)
            data = edit(name, data) if edit else data
            if data is not None:
                copy.writestr(f"{root}/{name}", data)
        for name, data in (add or {}).items():
            copy.writestr(f"{root}/{name}", data)
    return target


def edit_program(change: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    """An `edit` for rewrite_archive that changes the serialized program (models/model.json)."""

    def edit(name: str, data: bytes) -> bytes:
        if name != "models/model.json":
            return data
        program = json.loads(data)
        change(program)
        return json.dumps(program).encode()

    return edit


def shell_touch(marker: Path) -> str:
    """Python that creates `marker` when evaluated."""
    return f"__import__('pathlib').Path({str(marker)!r}).write_text('code ran')"


def pt2_upper_case_pickle(program: Path, target: Path, marker: Path) -> Path:
    """The sample inputs replaced by a planted pickle named `model.PT` (torch's reader finds it)."""
    return rewrite_archive(
        program,
        target,
        edit=lambda name, data: None if name == "data/sample_inputs/model.pt" else data,
        add={"data/sample_inputs/model.PT": pickle.dumps(Planted(str(marker)))},
    )


def pt2_exact_name_pickle(program: Path, target: Path, marker: Path) -> Path:
    """The sample inputs (exact name) replaced by a planted pickle."""
    pickled = pickle.dumps(Planted(str(marker)))
    return rewrite_archive(
        program,
        target,
        edit=lambda name, data: pickled if name == "data/sample_inputs/model.pt" else data,
    )


def constructor_library(folder: Path, marker: Path) -> Path | None:
    """A shared library whose constructor writes `marker` (None without a C compiler)."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return None
    source = folder / "planted.c"
    source.write_text(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void planted(void) {\n"
        f'  FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("code ran", f); fclose(f); }}\n'
        "}\n"
    )
    library = folder / "planted.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-o", str(library), str(source)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return library


def pt2_aotinductor_library(program: Path, target: Path, library: Path) -> Path:
    """The archive with `data/aotinductor/model/planted.wrapper.so` and the wrapper metadata
    torch's AOTI loader looks for: torch.export.load extracts the library to
    /tmp/aotinductor_* and dlopens it (its constructor runs) before it fails."""
    metadata = json.dumps({"AOTI_DEVICE_KEY": "cpu"}).encode()
    return rewrite_archive(
        program,
        target,
        add={
            "data/aotinductor/model/planted.wrapper.so": library.read_bytes(),
            "data/aotinductor/model/planted.wrapper_metadata.json": metadata,
        },
    )


def pt2_guard_code(program: Path, target: Path, marker: Path) -> Path:
    """Python in the program's guards_code (ExportedProgram.module() execs it)."""

    def change(tree: dict) -> None:
        tree["guards_code"] = [f"{shell_touch(marker)} or True"]

    return rewrite_archive(program, target, edit=edit_program(change))


def pt2_sympy_expression(program: Path, target: Path, marker: Path) -> Path:
    """Python as a symbolic size of a tensor (torch's deserializer sympifies it: eval)."""

    def change(tree: dict) -> None:
        values = tree["graph_module"]["graph"]["tensor_values"]
        first = next(iter(values.values()))
        first["sizes"][0] = {"as_expr": {"expr_str": shell_touch(marker), "hint": {"as_int": 2}}}

    return rewrite_archive(program, target, edit=edit_program(change))


def pt2_pickled_weight(program: Path, target: Path) -> Path:
    """A weight marked use_pickle (torch would torch.load it with weights_only=False)."""

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True
            data = json.dumps(config).encode()
        return data

    return rewrite_archive(program, target, edit=edit)


def pt2_zip_bomb(program: Path, target: Path, size: int) -> Path:
    """The first weight file replaced by `size` zero bytes, deflated (a 3 GiB entry is ~3 MB)."""
    with zipfile.ZipFile(program) as original, zipfile.ZipFile(target, "w") as copy:
        root = original.namelist()[0].partition("/")[0]
        for info in original.infolist():
            name = info.filename.partition("/")[2]
            if name != "data/weights/weight_0":
                copy.writestr(info.filename, original.read(info))
                continue
            entry = zipfile.ZipInfo(f"{root}/{name}")
            entry.compress_type = zipfile.ZIP_DEFLATED
            with copy.open(entry, "w", force_zip64=True) as handle:
                chunk = bytes(2**24)
                left = size
                while left > 0:
                    handle.write(chunk[: min(left, len(chunk))])
                    left -= len(chunk)
    return target


def pt2_malformed(program: Path, target: Path, kind: str) -> Path:
    """Broken internals: invalid JSON, wrong types, a truncated or an empty tensor file, an
    empty sample-inputs file (a torch.save stream with nothing in it)."""
    edits: dict[str, Callable[[str, bytes], bytes | None]] = {
        "invalid JSON": lambda n, d: b"{not json" if n == "models/model.json" else d,
        "wrong types": lambda n, d: (
            json.dumps({"config": [1, 2]}).encode() if n.endswith("weights_config.json") else d
        ),
        "truncated tensor": lambda n, d: d[:5] if n == "data/weights/weight_0" else d,
        "empty tensor": lambda n, d: b"" if n == "data/weights/weight_0" else d,
        "truncated sample inputs": lambda n, d: (
            d[:100] if n == "data/sample_inputs/model.pt" else d
        ),
        "program is a list": lambda n, d: b"[]" if n == "models/model.json" else d,
    }
    return rewrite_archive(program, target, edit=edits[kind])


def torchscript_file(path: Path, module) -> Path:
    """`module` traced to TorchScript."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(module, torch.randn(2, 3, 8, 8)).save(str(path))
    return path


def constant_logits(value: float, classes: int = 3):
    """A module whose logits are all `value` (NaN, inf) or, for a finite value, the same for
    every input (a reference at chance)."""
    import torch

    class Constant(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.zeros(1))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            base = images.mean((1, 2, 3)).unsqueeze(1) * self.scale
            return base + torch.full((images.shape[0], classes), value)

    return Constant().eval()


def batch_dependent_classes():
    """A module with 10 logits for a batch of 1 and 5 for larger batches."""
    import torch

    class Shifty(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            pooled = images.mean((2, 3))
            if images.shape[0] == 1:
                return pooled.repeat(1, 4)[:, :10]
            return pooled.repeat(1, 2)[:, :5]

    return Shifty().eval()


def onnx_file(path: Path, module, **extra) -> Path:
    """`module` exported to ONNX (opset 17, TorchScript exporter: one self-contained file)."""
    import contextlib
    import warnings

    import torch

    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(2, 3, 8, 8),),
            str(path),
            dynamo=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            **extra,
        )
    return path


def onnx_with_unused_initializer(source: Path, target: Path, kind: str) -> Path:
    """The ONNX file with an initializer no node uses: `huge` declares 2**40 floats with no
    data, `external` names a 1 GiB external data file that is sparse on disk."""
    import onnx

    model = onnx.load(str(source))
    tensor = onnx.TensorProto(name="unused", data_type=onnx.TensorProto.FLOAT)
    if kind == "huge":
        tensor.dims.extend([2**20, 2**20])
    else:
        data = target.with_suffix(".data")
        with open(data, "wb") as handle:
            handle.truncate(2**30)  # sparse: no disk used
        tensor.dims.extend([2**28])
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", data.name), ("offset", "0"), ("length", str(2**30))):
            tensor.external_data.add(key=key, value=value)
    model.graph.initializer.append(tensor)
    onnx.save(model, str(target))
    return target


def onnx_escaping_external_data(source: Path, target: Path) -> Path:
    """The ONNX file with its first initializer's data moved to `../outside.bin`."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    first = model.graph.initializer[0]
    outside = target.parent.parent / "outside.bin"
    outside.write_bytes(numpy_helper.to_array(first).tobytes())
    first.ClearField("raw_data")
    first.ClearField("float_data")
    first.data_location = onnx.TensorProto.EXTERNAL
    first.external_data.add(key="location", value="../outside.bin")
    onnx.save(model, str(target))
    return target


# ---------------------------------------------------------------------------------------------
# Data


def image_folder(root: Path, classes=CLASSES, per_class: int = 8, size: int = 8) -> Path:
    """One folder per class, `per_class` RGB PNGs; class k's images are bright in channel k."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3))
            pixels[..., index % 3] += 180
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{k}.png")
    return root


def sixteen_bit_folder(root: Path, per_class: int = 8) -> Path:
    """Grey 16-bit PNGs (mode I;16): class k has value 1000 + 20000 k (of 65535)."""
    from PIL import Image

    for index, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            pixels = np.full((8, 8), 1000 + 20000 * index + k, dtype=np.uint16)
            Image.fromarray(pixels).save(root / name / f"{k}.png")
    return root


def symlinked_folder(root: Path, kind: str) -> Path:
    """An image folder with a symbolic link: `parent` (b/up -> ..), `self` (c -> c's own
    folder, a loop), `outside` (a class file linking to an image outside the root)."""
    image_folder(root)
    if kind == "parent":
        os.symlink("..", root / "b" / "up")
    elif kind == "self":
        os.symlink(".", root / "c" / "again")
    else:
        outside = (root.parent / "outside.png").resolve()
        shutil.copy(root / "a" / "0.png", outside)
        os.symlink(outside, root / "a" / "linked.png")
    return root


def non_utf8_folder(root: Path, where: str) -> Path:
    """An image folder with a Latin-1 byte in a file name (`file`) or a class folder (`class`)."""
    image_folder(root)
    name = os.fsdecode(b"caf\xe9")  # undecodable: a surrogate escape
    if where == "file":
        shutil.copy(root / "a" / "0.png", root / "a" / f"{name}.png")
    else:
        shutil.copytree(root / "b", root / name)
    return root


def mixed_sizes_folder(root: Path) -> Path:
    """Class a's images 8x8, the others 12x12 (no data.image_size: they cannot be stacked)."""
    image_folder(root / "tmp8", classes=("a",), size=8)
    image_folder(root / "tmp12", classes=("b", "c"), size=12)
    for folder in ("tmp8", "tmp12"):
        for child in (root / folder).iterdir():
            child.rename(root / child.name)
        (root / folder).rmdir()
    return root


def decompression_bomb_png(path: Path) -> Path:
    """A PNG that declares 30000 x 30000 pixels (900 megapixels: PIL refuses it)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    row = b"\x00" + bytes(30000)
    body = zlib.compress(row * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


def celeba_folder(root: Path, broken: str) -> Path:
    """torchvision's CelebA layout with 6 images and a list file broken as `broken` says:
    `short row` (a row of list_attr_celeba.txt with 3 values), `bad value` (a 7 where -1/1 is
    expected), `bad partition` (a 5 in list_eval_partition.txt)."""
    from PIL import Image

    base = root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    names = [f"{k:06d}.jpg" for k in range(1, 7)]
    for name in names:
        Image.new("RGB", (8, 8), (200, 10, 10)).save(base / "img_align_celeba" / name)
    attributes = ["Blond_Hair", "Male"]
    rows = [f"{name} {1 if k % 2 else -1} {-1 if k % 3 else 1}" for k, name in enumerate(names)]
    if broken == "short row":
        rows[2] = f"{names[2]} 1"
    elif broken == "bad value":
        rows[3] = f"{names[3]} 7 1"
    (base / "list_attr_celeba.txt").write_text(
        f"{len(names)}\n{' '.join(attributes)}\n" + "\n".join(rows) + "\n"
    )
    partition = [f"{name} {k % 3}" for k, name in enumerate(names)]
    if broken == "bad partition":
        partition[1] = f"{names[1]} 5"
    (base / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    (base / "identity_CelebA.txt").write_text("".join(f"{name} 7\n" for name in names))
    for other, columns in (("list_bbox_celeba.txt", 4), ("list_landmarks_align_celeba.txt", 10)):
        header = " ".join(f"c{k}" for k in range(columns))
        rows = "".join(f"{name} " + " ".join(["5"] * columns) + "\n" for name in names)
        (base / other).write_text(f"{len(names)}\n{header}\n{rows}")
    return root


# ---------------------------------------------------------------------------------------------
# Params


def billion_laughs(path: Path) -> Path:
    """A ~1 KB params file whose YAML aliases expand to 10**9 strings."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 9):
        previous = chr(ord("a") + level - 1)
        name = chr(ord("a") + level)
        lines.append(f"{name}: &{name} [{','.join(['*' + previous] * 10)}]")
    lines.append("data: {label_groups: {x: *i}}")
    path.write_text("\n".join(lines) + "\n")
    return path
