"""Image folders and the few-shot benchmark layouts, built from small real files written here
(PNG and JPEG by Pillow, a CIFAR-100-format .bin, split CSVs, CUB's list files), read back and
checked against the source pixels; bad input raises a DataError naming the file; the published
split lists in shared/data are read for real."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from smallsample.data import benchmarks, cache, images
from smallsample.data.benchmarks import (
    load_cifar_fs,
    load_cub,
    load_fc100,
    load_mini_imagenet,
    load_tiered_imagenet,
    read_cifar100,
    read_mini_imagenet_csv,
)
from smallsample.data.files import DataError
from smallsample.data.images import (
    decode_image,
    folder_split,
    load_folder,
    read_class_list,
    split_classes,
)
from smallsample.episodes import sample_episode

SHARED = Path(os.environ.get("SMALLSAMPLE_DATA") or
              Path(__file__).resolve().parents[2] / "shared" / "data")
SPLITS = SHARED / "splits"
needs_splits = pytest.mark.skipif(not (SPLITS / "mini-imagenet" / "train.csv").is_file(),
                                  reason=f"no split files under {SPLITS} (set SMALLSAMPLE_DATA)")
QUIET = {"progress": False}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLSAMPLE_CACHE", str(tmp_path / "array-cache"))


def smooth(rng, h, w, c=3):
    """A smooth random uint8 image [h, w, c] (JPEG keeps it close)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    phase = rng.uniform(0, 2 * np.pi, (c, 2))
    planes = [127.5 + 100 * np.sin(3 * x + p[0]) * np.cos(2 * y + p[1]) for p in phase]
    return np.clip(np.stack(planes, -1), 0, 255).astype(np.uint8)


def save(path: Path, array: np.ndarray, mode: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
    if mode:
        im = im.convert(mode)
    im.save(path, **kw)
    return path


def write_folder(root: Path, counts: dict[str, int], *, h=12, w=10, fmt="png", seed=0):
    """Class folders of PNG/JPEG files; returns {class: [(path, source array)]}."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in counts.items():
        out[name] = []
        for i in range(n):
            a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if fmt == "png" else \
                smooth(rng, h, w)
            out[name].append((save(root / name / f"img_{i:03d}.{fmt}", a), a))
    return out


def pil_reference(path, size, mode="RGB"):
    im = Image.open(path).convert(mode)
    if im.size != (size, size):
        im = im.resize((size, size), Image.LANCZOS)
    a = np.asarray(im)
    return a[..., None] if a.ndim == 2 else a


# --- decoding -------------------------------------------------------------------------------

def test_png_folder_is_read_exactly(tmp_path):
    src = write_folder(tmp_path / "f", {"dog": 3, "cat": 3, "ant": 3}, h=12, w=12)
    (tmp_path / "f" / "cat" / "notes.txt").write_text("not an image")  # skipped by suffix
    (tmp_path / "f" / "cat" / ".DS_Store").write_bytes(b"\0\1")  # hidden: skipped
    s = load_folder(tmp_path / "f", size=12, **QUIET)
    assert s.names == ["ant", "cat", "dog"] and s.counts.tolist() == [3, 3, 3]
    assert s.images.shape == (3, 3, 12, 12, 3) and s.images.dtype == np.uint8
    for c, name in enumerate(s.names):
        for j, (_, a) in enumerate(src[name]):  # a class kept whole stays in file order
            np.testing.assert_array_equal(s.images[c, j], a)


def test_modes_are_converted_to_the_channel_count(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)], -1)
    paths = {"grey": save(tmp_path / "grey.png", grey), "rgba": save(tmp_path / "rgba.png", rgba),
             "p": save(tmp_path / "p.png", rgb, mode="P"), "rgb": save(tmp_path / "rgb.bmp", rgb)}
    np.testing.assert_array_equal(decode_image(paths["grey"], size=8), grey.repeat(3, -1))
    np.testing.assert_array_equal(decode_image(paths["rgba"], size=8), rgb)  # alpha dropped
    np.testing.assert_array_equal(decode_image(paths["rgb"], size=8, channels=1),
                                  np.asarray(Image.fromarray(rgb).convert("L"))[..., None])
    palette = np.asarray(Image.open(paths["p"]).convert("RGB"))
    np.testing.assert_array_equal(decode_image(paths["p"], size=8), palette)
    # ITU-R 601 luma, independently: L = (299 R + 587 G + 114 B) / 1000, rounded.
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(decode_image(paths["rgb"], size=8, channels=1)[..., 0] - luma).max() <= 1


def test_jpeg_and_resizing_against_references(tmp_path):
    rng = np.random.default_rng(2)
    big = smooth(rng, 96, 128)
    path = save(tmp_path / "photo.jpg", big, quality=95)
    full = decode_image(path, size=(96, 128))
    np.testing.assert_array_equal(full, np.asarray(Image.open(path).convert("RGB")))
    assert np.abs(full.astype(int) - big).mean() < 3  # the JPEG is close to its source
    exact = decode_image(path, size=24, draft=False)
    np.testing.assert_array_equal(exact, pil_reference(path, 24))
    # By default the JPEG decoder scales down first (here by 1/2: 48x64 >= 2 x 24), then LANCZOS.
    small = decode_image(path, size=24)
    im = Image.open(path)
    im.draft("RGB", (48, 48))
    assert im.size == (64, 48)
    np.testing.assert_array_equal(small, np.asarray(im.convert("RGB").resize((24, 24),
                                                                            Image.LANCZOS)))
    assert np.abs(small.astype(int) - exact).mean() < 1.5
    # Antialiasing, independently of Pillow: a smooth image shrunk is close to its box average
    # (float64 NumPy), and a constant one stays constant.
    png = save(tmp_path / "smooth.png", big)
    box = big.astype(np.float64).reshape(24, 4, 32, 4, 3).mean((1, 3))
    shrunk = decode_image(png, size=(24, 32))
    assert np.abs(shrunk - box).max() < 4
    flat = save(tmp_path / "flat.png", np.full((50, 70, 3), 77, np.uint8))
    assert (decode_image(flat, size=9) == 77).all()


def test_a_file_that_does_not_decode_is_named(tmp_path):
    src = write_folder(tmp_path / "f", {"a": 3, "b": 3}, fmt="jpg")
    bad = src["b"][1][0]
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match=f"{bad}: not a readable image"):
        load_folder(tmp_path / "f", size=8, **QUIET)
    truncated = src["a"][0][0]
    bad.write_bytes(truncated.read_bytes())
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DataError, match=f"{truncated}: not a readable image"):
        load_folder(tmp_path / "f", size=8, **QUIET)


def test_folder_errors_are_named(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'none'} is not a folder"):
        load_folder(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'empty'}: no class folders"):
        load_folder(tmp_path / "empty")
    src = write_folder(tmp_path / "f", {"a": 3, "b": 1})
    with pytest.raises(DataError, match=f"class 'b' has 1 image\\(s\\): {src['b'][0][0]}; a class "
                                        f"needs at least 2"):
        load_folder(tmp_path / "f", **QUIET)
    (tmp_path / "f" / "c").mkdir()
    (tmp_path / "f" / "c" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=f"{tmp_path / 'f' / 'c'}: class folder holds no image"):
        load_folder(tmp_path / "f", **QUIET)
    with pytest.raises(DataError, match="no class folder\\(s\\) 'zebra'"):
        load_folder(tmp_path / "f", classes=["a", "zebra"], **QUIET)
    (tmp_path / "f" / "c" / "readme.txt").unlink()
    (tmp_path / "f" / "c").rmdir()
    with pytest.raises(DataError, match="no class folder\\(s\\) 'zebra'"):
        load_folder(tmp_path / "f", classes=["a", "zebra"], **QUIET)


# --- unequal classes ------------------------------------------------------------------------

def test_unequal_classes_are_sampled_by_seed(tmp_path):
    src = write_folder(tmp_path / "f", {"a": 4, "b": 9, "c": 6})
    s = load_folder(tmp_path / "f", size=(12, 10), **QUIET)
    assert s.images.shape == (3, 4, 12, 10, 3) and s.counts.tolist() == [4, 9, 6]

    def rows(s, c):
        pool = [a for _, a in src[s.names[c]]]
        return [next(i for i, a in enumerate(pool) if np.array_equal(a, x)) for x in s.images[c]]

    np.testing.assert_array_equal(s.images[0], [a for _, a in src["a"]])  # whole, in order
    for c in (1, 2):
        assert len(set(rows(s, c))) == 4  # distinct images of that very class
    again = load_folder(tmp_path / "f", size=(12, 10), use_cache=False, **QUIET)
    np.testing.assert_array_equal(again.images, s.images)
    other = load_folder(tmp_path / "f", size=(12, 10), seed=1, **QUIET)
    assert rows(other, 1) != rows(s, 1)
    three = load_folder(tmp_path / "f", size=(12, 10), per_class=3, **QUIET)
    assert rows(three, 1) == rows(s, 1)[:3]  # a smaller per_class keeps a prefix
    with pytest.raises(DataError, match=r"per_class=5 is more than the images of class\(es\) "
                                        r"a \(4\)"):
        load_folder(tmp_path / "f", per_class=5, **QUIET)


# --- the cache ------------------------------------------------------------------------------

def test_decoded_once_cached_atomically_and_memory_mapped(tmp_path, monkeypatch):
    write_folder(tmp_path / "f", {"a": 3, "b": 4}, fmt="jpg")
    first = load_folder(tmp_path / "f", size=16, progress=True)
    root = tmp_path / "array-cache"
    entries = sorted(p.name for p in root.iterdir())
    assert len(entries) == 1 and not entries[0].startswith(".")  # no half-written entry left
    assert sorted(p.name for p in (root / entries[0]).iterdir()) == ["images.npy", "meta.json"]
    assert json.loads((root / entries[0] / "meta.json").read_text())["meta"]["names"] == ["a", "b"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached set was decoded again")

    with monkeypatch.context() as m:
        m.setattr(images, "decode_image", no_decoding)
        second = load_folder(tmp_path / "f", size=16, **QUIET)
        mapped = load_folder(tmp_path / "f", size=16, mmap=True, **QUIET)
    np.testing.assert_array_equal(second.images, first.images)
    assert not isinstance(second.images, np.memmap)
    assert isinstance(mapped.images, np.memmap) and not mapped.images.flags.writeable
    np.testing.assert_array_equal(mapped.images, first.images)
    # Content-keyed: a changed file (size and time) makes a new entry.
    f = tmp_path / "f" / "a" / "img_000.jpg"
    save(f, np.zeros((12, 10, 3), np.uint8))
    os.utime(f, ns=(1, 1))
    changed = load_folder(tmp_path / "f", size=16, **QUIET)
    assert (changed.images[0, 0] == 0).all() and len(list(root.iterdir())) == 2
    # A corrupt entry is rebuilt, never trusted.
    entry = root / entries[0] / "images.npy"
    entry.write_bytes(entry.read_bytes()[:100])
    np.testing.assert_array_equal(load_folder(tmp_path / "f", size=16, **QUIET).images[1],
                                  first.images[1])


def test_large_arrays_are_memory_mapped_by_default(tmp_path, monkeypatch):
    write_folder(tmp_path / "f", {"a": 2, "b": 2})
    monkeypatch.setattr(cache, "MMAP_BYTES", 100)
    s = load_folder(tmp_path / "f", size=12, **QUIET)
    assert isinstance(s.images, np.memmap)


def test_no_pickle_anywhere():
    for module in (cache, images, benchmarks):
        text = Path(module.__file__).read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text


# --- splits of a user's folder ----------------------------------------------------------------

def test_folder_split_by_seed_and_from_list_files(tmp_path):
    names = [f"class_{i:02d}" for i in range(10)]
    write_folder(tmp_path / "f", dict.fromkeys(names, 2), h=4, w=4)
    parts = split_classes(names, seed=0)
    assert [len(parts[p]) for p in ("train", "val", "test")] == [6, 1, 3]
    assert sorted(sum(parts.values(), [])) == names
    got = {p: folder_split(tmp_path / "f", p, size=4, **QUIET).names for p in parts}
    assert got == parts
    assert split_classes(names, seed=1) != parts
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("# my split\nclass_03\n\nclass_01\n")
    (lists / "val.json").write_text(json.dumps([["group", "class_07"], ["group", "class_00"]]))
    assert folder_split(tmp_path / "f", "train", split_dir=lists, size=4, **QUIET).names == \
        ["class_03", "class_01"]
    assert folder_split(tmp_path / "f", "val", split_dir=lists, size=4, **QUIET).names == \
        ["class_07", "class_00"]
    with pytest.raises(DataError, match=f"{lists / 'test.txt'} and .*test.json are missing"):
        folder_split(tmp_path / "f", "test", split_dir=lists)
    (lists / "test.txt").write_text("class_02\nclass_02\n")
    with pytest.raises(DataError, match="test.txt: class\\(es\\) listed twice: class_02"):
        read_class_list(lists / "test.txt")


# --- mini-ImageNet ----------------------------------------------------------------------------

MINI_SYNSETS = {"train": ["n01532829", "n01558993"], "val": ["n01855672"],
                "test": ["n01930112", "n01981276"]}


def write_mini(root: Path, *, per_class=3, with_csv=True):
    """Ravi & Larochelle's layout: images/nSSSSSSSSNNNNNNNN.jpg and {part}.csv."""
    rng = np.random.default_rng(3)
    src = {}
    for part, synsets in MINI_SYNSETS.items():
        rows = ["filename,label"]
        for s in synsets:
            for i in range(per_class):
                name = f"{s}{i + 1:08d}.jpg"
                a = smooth(rng, 30, 40)
                save(root / "images" / name, a, quality=95)
                src[name] = a
                rows.append(f"{name},{s}")
        if with_csv:
            (root / f"{part}.csv").write_text("\n".join(rows) + "\n")
    return src


def test_mini_imagenet_csv_layout(tmp_path):
    root = tmp_path / "mini-imagenet"
    src = write_mini(root)
    s = load_mini_imagenet("test", path=root, size=20, **QUIET)
    assert s.names == MINI_SYNSETS["test"] and s.images.shape == (2, 3, 20, 20, 3)
    for c, synset in enumerate(s.names):
        for j in range(3):
            f = root / "images" / f"{synset}{j + 1:08d}.jpg"
            np.testing.assert_array_equal(s.images[c, j], pil_reference(f, 20))
            box = src[f.name].astype(np.float64)  # 30x40 -> 20x20, roughly 1.5x2 boxes
            assert np.abs(s.images[c, j].mean() - box.mean()) < 3
    # Default size 84, upsampled from 30x40.
    assert load_mini_imagenet("val", path=root, **QUIET).images.shape == (1, 3, 84, 84, 3)


def test_mini_imagenet_split_csv_from_split_dir_and_errors(tmp_path):
    root = tmp_path / "data" / "mini-imagenet"
    write_mini(root, with_csv=False)
    with pytest.raises(DataError, match="no split file for mini-ImageNet train: neither "
                                        f"{root / 'train.csv'} nor .*splits/mini-imagenet/train"):
        load_mini_imagenet("train", root=tmp_path / "data", **QUIET)
    splits = tmp_path / "data" / "splits" / "mini-imagenet"
    splits.mkdir(parents=True)
    rows = [f"{s}{i + 1:08d}.jpg,{s}" for s in MINI_SYNSETS["train"] for i in range(3)]
    (splits / "train.csv").write_text("filename,label\n" + "\n".join(rows) + "\n")
    s = load_mini_imagenet("train", root=tmp_path / "data", size=8, **QUIET)
    assert s.names == MINI_SYNSETS["train"] and s.images.shape == (2, 3, 8, 8, 3)
    (root / "images" / "n0153282900000002.jpg").unlink()
    with pytest.raises(DataError, match=r"n0153282900000002.jpg is missing \(named in "
                                        r".*train.csv"):
        load_mini_imagenet("train", root=tmp_path / "data", **QUIET)
    (splits / "train.csv").write_text("file,synset\nx.jpg,n1\n")
    with pytest.raises(DataError, match="train.csv: header is"):
        load_mini_imagenet("train", root=tmp_path / "data", **QUIET)
    with pytest.raises(DataError, match="mini-ImageNet not found in"):
        load_mini_imagenet("train", path=tmp_path / "nowhere")


def test_mini_imagenet_class_folder_layout(tmp_path):
    root = tmp_path / "mini"
    src = write_folder(root / "val", {"n01855672": 3, "n02091244": 3}, h=84, w=84)
    s = load_mini_imagenet("val", path=root, **QUIET)
    assert s.names == ["n01855672", "n02091244"]
    np.testing.assert_array_equal(s.images[1, 2], src["n02091244"][2][1])


@needs_splits
def test_published_mini_imagenet_csvs():
    parts = {p: read_mini_imagenet_csv(SPLITS / "mini-imagenet" / f"{p}.csv")
             for p in ("train", "val", "test")}
    assert {p: len(c) for p, c in parts.items()} == benchmarks.MINI_IMAGENET_CLASSES
    for classes in parts.values():
        assert all(len(f) == benchmarks.MINI_IMAGENET_PER_CLASS for f in classes.values())
        assert all(n.startswith(s) and n.endswith(".jpg") for s, f in classes.items() for n in f)
    assert not set(parts["train"]) & set(parts["test"]) and not set(parts["val"]) & set(
        parts["test"])
    assert sum(len(f) for c in parts.values() for f in c.values()) == 60_000


# --- tieredImageNet ---------------------------------------------------------------------------

def test_tiered_imagenet_class_folders_memory_mapped(tmp_path):
    root = tmp_path / "tiered-imagenet"
    src = write_folder(root / "train", {"n01530575": 3, "n01531178": 5}, fmt="jpg", h=20, w=20)
    s = load_tiered_imagenet("train", path=root, size=20, mmap=True, **QUIET)
    assert isinstance(s.images, np.memmap) and s.images.shape == (2, 3, 20, 20, 3)
    for j, (f, _) in enumerate(src["n01530575"]):
        np.testing.assert_array_equal(s.images[0, j], pil_reference(f, 20))
    # Episodes are drawn from the memory map like from any array.
    ep = sample_episode(jax.random.key(0), s.images, ways=2, shots=1, queries=2)
    assert ep.support_x.shape == (2, 20, 20, 3) and ep.query_x.shape == (4, 20, 20, 3)
    pool = s.images.reshape(-1, 20, 20, 3).astype(np.float32) / 255
    assert all(any(np.array_equal(x, p) for p in pool) for x in np.asarray(ep.query_x))
    with pytest.raises(DataError, match=f"{root / 'test'} is missing"):
        load_tiered_imagenet("test", path=root)


# --- CIFAR-100 binary: CIFAR-FS and FC100 -------------------------------------------------------

def cifar_names():
    pairs = [tuple(p) for part in ("train", "val", "test")
             for p in json.loads((SPLITS / "cifar-fs" / f"{part}.json").read_text())]
    fine = sorted(c for _, c in pairs)  # CIFAR-100's label order is alphabetical
    coarse = sorted({s for s, _ in pairs})
    return fine, coarse, dict((c, s) for s, c in pairs)


def write_cifar(root: Path, per_class=(2, 1)):
    """cifar-100-binary/{train,test}.bin with `per_class` records of each class, and the names."""
    fine, coarse, parent = cifar_names()
    root.mkdir(parents=True)
    (root / "fine_label_names.txt").write_text("\n".join(fine) + "\n")
    (root / "coarse_label_names.txt").write_text("\n".join(coarse) + "\n")
    rng = np.random.default_rng(4)
    src: dict[str, list[np.ndarray]] = {c: [] for c in fine}
    for name, n in zip(("train.bin", "test.bin"), per_class, strict=True):
        records = []
        for _ in range(n):
            for i, c in enumerate(fine):
                image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                src[c].append(image)
                planes = image.transpose(2, 0, 1).ravel()  # R plane, G plane, B plane
                records.append(bytes([coarse.index(parent[c]), i]) + planes.tobytes())
        (root / name).write_bytes(b"".join(records))
    return src


@needs_splits
def test_cifar_fs_and_fc100_from_the_binary_release(tmp_path):
    root = tmp_path / "cifar-100-binary"
    src = write_cifar(root)
    data = read_cifar100(root)
    assert data["images"].shape == (300, 32, 32, 3) and len(data["fine_names"]) == 100
    sizes = {p: load_cifar_fs(p, path=root, root=SHARED, **QUIET).num_classes
             for p in ("train", "val", "test")}
    assert sizes == benchmarks.CIFAR_FS_CLASSES
    s = load_cifar_fs("test", path=root, root=SHARED, **QUIET)
    expected = [c for _, c in json.loads((SPLITS / "cifar-fs" / "test.json").read_text())]
    assert s.names == expected and s.images.shape == (20, 3, 32, 32, 3)
    for c, name in enumerate(s.names):  # training records first, then the test record
        np.testing.assert_array_equal(s.images[c], np.stack(src[name]))
    fc = {p: load_fc100(p, path=root, root=SHARED, **QUIET) for p in ("train", "val", "test")}
    assert {p: f.num_classes for p, f in fc.items()} == benchmarks.FC100_CLASSES
    _, _, parent = cifar_names()
    supers = [{parent[n] for n in f.names} for f in fc.values()]
    assert [len(x) for x in supers] == [12, 4, 4] and not (supers[0] & supers[2])
    assert {parent[n] for n in fc["test"].names} == set(
        json.loads((SPLITS / "fc100" / "test.json").read_text()))
    np.testing.assert_array_equal(fc["val"].images[0], np.stack(src[fc["val"].names[0]]))
    big = load_cifar_fs("val", path=root, root=SHARED, size=40, channels=1, **QUIET)
    assert big.images.shape == (16, 3, 40, 40, 1)
    ref = Image.fromarray(src[big.names[0]][0]).convert("L").resize((40, 40), Image.LANCZOS)
    np.testing.assert_array_equal(big.images[0, 0, ..., 0], np.asarray(ref))


@needs_splits
def test_cifar_errors_are_named(tmp_path):
    root = tmp_path / "cifar-100-binary"
    write_cifar(root)
    (root / "test.bin").write_bytes((root / "test.bin").read_bytes()[:-5])
    with pytest.raises(DataError, match="test.bin: 307395 bytes is not a whole number of 3074"):
        read_cifar100(root)
    (root / "test.bin").unlink()
    with pytest.raises(DataError, match="test.bin is missing.*not the pickled python version"):
        load_cifar_fs("train", path=root, root=SHARED)
    bad = bytearray((root / "train.bin").read_bytes())
    bad[3074 * 5 + 1] = 100
    (root / "test.bin").write_bytes(bytes(bad))
    with pytest.raises(DataError, match="test.bin: record 5: fine label 100 is not below 100"):
        read_cifar100(root)
    with pytest.raises(DataError, match="splits/cifar-fs/train.json is missing"):
        load_cifar_fs("train", path=root, root=tmp_path)


# --- CUB-200-2011 -----------------------------------------------------------------------------

def write_cub(root: Path, counts=(2, 3, 3)):
    """CUB_200_2011/{classes,images,image_class_labels}.txt and images/CLASS/*.jpg, 200 classes."""
    names = sorted(n for p in ("train", "val", "test")
                   for n in json.loads((SPLITS / "cub" / f"{p}.json").read_text()))
    assert len(names) == 200 and names[0].startswith("001.")
    rng = np.random.default_rng(5)
    classes, listing, labels, src = [], [], [], {}
    image_id = 0
    for cid, name in enumerate(names, 1):
        classes.append(f"{cid} {name}")
        src[name] = []
        for j in range(counts[cid % len(counts)]):
            image_id += 1
            rel = f"{name}/{name.split('.', 1)[1]}_{j:04d}_{image_id}.jpg"
            a = smooth(rng, 14, 18)
            save(root / "images" / rel, a, quality=95)
            listing.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {cid}")
            src[name].append(root / "images" / rel)
    for fname, lines in (("classes.txt", classes), ("images.txt", listing),
                         ("image_class_labels.txt", labels)):
        (root / fname).write_text("\n".join(lines) + "\n")
    return src


@needs_splits
def test_cub_layout_and_published_split(tmp_path):
    root = tmp_path / "CUB_200_2011"
    src = write_cub(root)
    sizes = {p: len(read_class_list(SPLITS / "cub" / f"{p}.json")) for p in ("train", "val",
                                                                               "test")}
    assert sizes == benchmarks.CUB_CLASSES
    s = load_cub("val", path=root, root=SHARED, size=14, **QUIET)
    assert s.names == read_class_list(SPLITS / "cub" / "val.json")
    assert s.images.shape == (50, 2, 14, 14, 3)  # 2 or 3 images a class: 2 kept
    assert set(s.counts.tolist()) == {2, 3}
    for c, name in enumerate(s.names):
        refs = [pil_reference(f, 14) for f in src[name]]
        for x in s.images[c]:
            assert any(np.array_equal(x, r) for r in refs)
        if len(src[name]) == 2:
            np.testing.assert_array_equal(s.images[c], np.stack(refs))


@needs_splits
def test_cub_errors_are_named(tmp_path):
    root = tmp_path / "CUB_200_2011"
    src = write_cub(root)
    victim = src[read_class_list(SPLITS / "cub" / "test.json")[0]][0]
    victim.write_bytes(b"\xff\xd8 broken")
    with pytest.raises(DataError, match=f"{victim}: not a readable image"):
        load_cub("test", path=root, root=SHARED, **QUIET)
    victim.unlink()
    with pytest.raises(DataError, match=f"{victim} is missing \\(listed in .*images.txt\\)"):
        load_cub("test", path=root, root=SHARED)
    (root / "image_class_labels.txt").unlink()
    with pytest.raises(DataError, match="image_class_labels.txt is missing"):
        load_cub("test", path=root, root=SHARED)


@needs_splits
def test_published_class_lists():
    fs = {p: read_class_list(SPLITS / "cifar-fs" / f"{p}.json") for p in ("train", "val", "test")}
    assert {p: len(v) for p, v in fs.items()} == benchmarks.CIFAR_FS_CLASSES
    assert len(set(sum(fs.values(), []))) == 100
    fc = {p: read_class_list(SPLITS / "fc100" / f"{p}.json") for p in ("train", "val", "test")}
    assert [len(fc[p]) for p in ("train", "val", "test")] == [12, 4, 4]
    assert len(set(sum(fc.values(), []))) == 20
