"""TFDS as a data source: a tiny data set prepared by TFDS itself, read back pixel for pixel."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip(
    "tensorflow_datasets", reason="tensorflow-datasets is not installed (extra: smallsample[tfds])")
pytest.importorskip("array_record",
                    reason="array-record is not installed (extra: smallsample[tfds])")

from smallsample.data.files import DataError  # noqa: E402
from smallsample.data.tfds import load_tfds  # noqa: E402

NAME = "smallsample_tiny_classes"
CLASSES = ["cat", "dog", "emu", "fox"]
# (split, class) -> (count, height, width, Pillow mode written); fox is absent from train, and the
# test split has two image sizes.
LAYOUT = {("train", "cat"): (5, 9, 7, "RGB"), ("train", "dog"): (3, 9, 7, "RGB"),
          ("train", "emu"): (4, 9, 7, "L"), ("test", "cat"): (2, 9, 7, "RGB"),
          ("test", "fox"): (2, 8, 6, "RGB")}


class SmallsampleTinyClasses(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """PNG files under ``manual_dir/SPLIT/CLASS/*.png`` (what the test writes)."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = "the test writes the PNG files"

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(names=CLASSES),
                "file": tfds.features.Text(),
            }))

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        return {split: self._generate_examples(root / split) for split in ("train", "test")}

    def _generate_examples(self, folder):
        for path in sorted(folder.glob("*/*.png")):
            # A path, as TFDS's own image builders yield: TFDS stores the file's bytes and needs
            # no TensorFlow to do so.
            yield f"{folder.name}/{path.parent.name}/{path.name}", {
                "image": path, "label": path.parent.name, "file": path.name}


def _write_sources(root: Path) -> dict:
    rng = np.random.default_rng(0)
    sources = {}
    for (split, cls), (count, h, w, mode) in LAYOUT.items():
        folder = root / split / cls
        folder.mkdir(parents=True)
        images = []
        for i in range(count):
            shape = (h, w, 3) if mode == "RGB" else (h, w)
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(folder / f"{i}.png")
            images.append(pixels if mode == "RGB" else np.repeat(pixels[..., None], 3, -1))
        sources[split, cls] = images
    return sources


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    sources = _write_sources(root / "src")
    builder = SmallsampleTinyClasses(data_dir=str(root / "data"))
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=str(root / "src"),
                                                     try_download_gcs=False))
    assert "tensorflow" not in sys.modules  # prepared and read without TensorFlow
    return root / "data", Path(builder.data_dir), sources


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLSAMPLE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _match(row: np.ndarray, candidates: list[np.ndarray]) -> list[int]:
    """Which source image each of ``row``'s images is (exactly), each used at most once."""
    used = []
    for image in row:
        hits = [i for i, c in enumerate(candidates) if c.shape == image.shape
                and np.array_equal(c, image) and i not in used]
        assert hits, "an image matches no source image of its class"
        used.append(hits[0])
    return used


def test_reads_the_source_pixels_and_class_names(prepared, cache):
    data_dir, _, sources = prepared
    got = load_tfds(NAME, data_dir=data_dir, split="train")
    # fox has no train example; the smallest class (dog, 3) sets per_class.
    assert got.names == ["cat", "dog", "emu"]
    assert got.counts.tolist() == [5, 3, 4]
    assert got.images.shape == (3, 3, 9, 7, 3) and got.images.dtype == np.uint8
    for row, cls in zip(got.images, got.names, strict=True):
        _match(row, sources["train", cls])
    assert sorted(_match(got.images[1], sources["train", "dog"])) == [0, 1, 2]
    assert "tensorflow" not in sys.modules


def test_builder_folder_equals_name_and_data_dir(prepared, cache):
    data_dir, version_dir, _ = prepared
    assert version_dir.name == "1.0.0" and (version_dir / "dataset_info.json").is_file()
    a = load_tfds(NAME, data_dir=data_dir, split="train", use_cache=False)
    b = load_tfds(version_dir, split="train", use_cache=False)
    c = load_tfds(str(version_dir), split="train", use_cache=False)
    assert a.names == b.names == c.names
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.images, c.images)


def test_per_class_draw_is_seeded_and_checked(prepared, cache):
    data_dir, _, sources = prepared
    draws = []
    for seed in range(8):
        got = load_tfds(NAME, data_dir=data_dir, split="train", per_class=2, seed=seed,
                        use_cache=False)
        assert got.images.shape == (3, 2, 9, 7, 3)
        picks = [tuple(_match(row, sources["train", cls]))
                 for row, cls in zip(got.images, got.names, strict=True)]
        again = load_tfds(NAME, data_dir=data_dir, split="train", per_class=2, seed=seed,
                          use_cache=False)
        np.testing.assert_array_equal(got.images, again.images)
        draws.append(picks)
    assert len({d[0] for d in draws}) > 1  # cat: 10 possible pairs, the seed changes the draw
    with pytest.raises(DataError, match=r"per_class=4 is more than .* dog \(3\)"):
        load_tfds(NAME, data_dir=data_dir, split="train", per_class=4, use_cache=False)


def test_resize_and_channels(prepared, cache):
    data_dir, _, sources = prepared
    got = load_tfds(NAME, data_dir=data_dir, split="train", size=(4, 5), use_cache=False)
    full = load_tfds(NAME, data_dir=data_dir, split="train", use_cache=False)
    assert got.images.shape == (3, 3, 4, 5, 3)
    for c in range(3):
        for j in range(3):
            # Pillow's antialiasing LANCZOS, as the Omniglot loader resizes
            want = Image.fromarray(full.images[c, j]).resize((5, 4), Image.LANCZOS)
            np.testing.assert_array_equal(got.images[c, j], np.asarray(want))
    gray = load_tfds(NAME, data_dir=data_dir, split="train", channels=1, use_cache=False)
    assert gray.images.shape == (3, 3, 9, 7, 1)
    # ITU-R 601-2 luma in float64, against Pillow's integer "L" conversion
    luma = full.images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.max(np.abs(gray.images[..., 0] - luma)) <= 0.5 + 1e-9
    # emu was written as 8-bit grey: its RGB channels are equal and its grey is exact
    emu = got.names.index("emu")
    np.testing.assert_array_equal(gray.images[emu, ..., 0], full.images[emu, ..., 0])


def test_unequal_image_sizes_need_size(prepared, cache):
    data_dir, _, sources = prepared
    with pytest.raises(DataError, match="pass size="):
        load_tfds(NAME, data_dir=data_dir, split="test", use_cache=False)
    got = load_tfds(NAME, data_dir=data_dir, split="test", size=6, use_cache=False)
    assert got.names == ["cat", "fox"] and got.images.shape == (2, 2, 6, 6, 3)
    for row, cls in zip(got.images, got.names, strict=True):
        want = [np.asarray(Image.fromarray(s).resize((6, 6), Image.LANCZOS))
                for s in sources["test", cls]]
        assert sorted(_match(row, want)) == [0, 1]
    both = load_tfds(NAME, data_dir=data_dir, split="train+test", size=6, use_cache=False)
    assert both.names == CLASSES and both.images.shape == (4, 2, 6, 6, 3)


def _entries(cache: Path) -> tuple[list[Path], list[Path]]:
    """(label entries, image entries) in the array cache."""
    entries = sorted(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))
    labels = [p for p in entries if "-labels-" in p.name]
    return labels, [p for p in entries if p not in labels]


def test_cache_is_written_read_and_keyed(prepared, cache):
    data_dir, _, _ = prepared
    first = load_tfds(NAME, data_dir=data_dir, split="train")
    labels, images = _entries(cache)
    assert len(labels) == 1 and len(images) == 1
    assert NAME in images[0].name and "train" in images[0].name
    # The second load reads the cache entry: a marked copy of it comes back.
    marked = np.array(first.images)
    marked[0, 0, 0, 0, 0] ^= 0xFF
    np.save(images[0] / "images.npy", marked)
    np.testing.assert_array_equal(load_tfds(NAME, data_dir=data_dir, split="train").images,
                                  marked)
    # Another split, size or draw is another entry; the labels of a split are read once.
    load_tfds(NAME, data_dir=data_dir, split="train", size=4)
    load_tfds(NAME, data_dir=data_dir, split="train", per_class=2, seed=3)
    load_tfds(NAME, data_dir=data_dir, split="test", size=4)
    labels, images = _entries(cache)
    assert len(labels) == 2 and len(images) == 4
    # An unreadable entry is rebuilt, never trusted.
    target = next(p for p in images if "train" in p.name and "9x7x3-3-" in p.name)
    (target / "images.npy").write_bytes(b"not an npy file")
    np.testing.assert_array_equal(load_tfds(NAME, data_dir=data_dir, split="train").images,
                                  first.images)


def test_classes_pick_and_order(prepared, cache):
    data_dir, _, sources = prepared
    got = load_tfds(NAME, data_dir=data_dir, split="train", classes=["emu", "cat"])
    assert got.names == ["emu", "cat"] and got.counts.tolist() == [4, 5]
    assert got.images.shape == (2, 4, 9, 7, 3)  # the smallest of the classes asked for
    for row, cls in zip(got.images, got.names, strict=True):
        _match(row, sources["train", cls])
    with pytest.raises(DataError, match="no class.*'gnu'"):
        load_tfds(NAME, data_dir=data_dir, split="train", classes=["cat", "gnu"])
    with pytest.raises(DataError, match="'fox' have no example in this split"):
        load_tfds(NAME, data_dir=data_dir, split="train", classes=["cat", "fox"])


def test_wrong_features_and_splits(prepared, cache):
    data_dir, _, _ = prepared
    with pytest.raises(DataError, match="no ClassLabel feature 'file'"):
        load_tfds(NAME, data_dir=data_dir, label_key="file")
    with pytest.raises(DataError, match="no image feature 'label'"):
        load_tfds(NAME, data_dir=data_dir, image_key="label")
    with pytest.raises(DataError, match=r"validation.*\['test', 'train'\]"):
        load_tfds(NAME, data_dir=data_dir, split="validation")
    with pytest.raises(ValueError, match="channels"):
        load_tfds(NAME, data_dir=data_dir, channels=2)


# Run in a child process with an audit hook that records every socket the process opens: TFDS must
# answer from the local folder alone, quickly, and leave it empty.
_OFFLINE = textwrap.dedent("""
    import json, sys
    events = []
    def hook(event, args):
        if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
            events.append([event, repr(args)[:200]])
    sys.addaudithook(hook)
    from smallsample.data.files import DataError
    from smallsample.data.tfds import load_tfds
    out = {}
    for name in sys.argv[2:]:
        try:
            load_tfds(name, data_dir=sys.argv[1])
            out[name] = None
        except DataError as e:
            out[name] = str(e)
    import socket
    socket.getaddrinfo("localhost", None)  # the hook's own check: this one must be recorded
    print(json.dumps({"errors": out, "sockets": events}))
""")


def test_not_prepared_is_a_clear_error_without_network(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    names = ["mnist", "omniglot:3.0.0", "smallsample_never_prepared", "huggingface:mnist",
             str(tmp_path / "no_such_builder" / "1.0.0")]
    env = dict(os.environ, TFDS_DATA_DIR=str(empty))
    run = subprocess.run([sys.executable, "-c", _OFFLINE, str(empty), *names], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert [e[0] for e in report["sockets"]] == ["socket.getaddrinfo"]
    assert "localhost" in report["sockets"][0][1]
    errors = report["errors"]
    assert all(errors[n] for n in names), errors
    for name in ("mnist", "omniglot:3.0.0"):
        assert "is not prepared under" in errors[name]
        assert (f"tfds.builder({name!r}, data_dir={str(empty)!r})"
                f".download_and_prepare(file_format='array_record')") in errors[name]
    assert "neither in TFDS's catalogue nor prepared" in errors["smallsample_never_prepared"]
    assert "community data sets" in errors["huggingface:mnist"]
    assert "not a prepared TFDS builder folder" in errors[names[-1]]
    assert sorted(p.name for p in empty.rglob("*")) == []


def _omniglot_dir() -> Path:
    where = os.environ.get("SMALLSAMPLE_TFDS_DIR")
    if not where or not (Path(where) / "omniglot" / "3.0.0" / "dataset_info.json").is_file():
        pytest.skip("TFDS omniglot 3.0.0 is not prepared: set SMALLSAMPLE_TFDS_DIR to a TFDS "
                    "data folder holding it in array_record format (preparing needs TensorFlow; "
                    "offline: docs/data.md, TensorFlow Datasets)")
    return Path(where)


# TFDS's omniglot splits and the upstream zips they are made from (tfds omniglot.py, _DL_URLS)
OMNIGLOT_SPLITS = [("small1", "background_small1"), ("small2", "background_small2"),
                   ("train", "background"), ("test", "evaluation")]


@pytest.mark.slow
@pytest.mark.parametrize("split,which", OMNIGLOT_SPLITS)
def test_tfds_omniglot_equals_our_loader(split, which, data_dir, cache):
    """TFDS's own preparation of the upstream zips holds exactly our loader's 105x105 drawings.

    Preparing it offline from the zips in the data folder: docs/data.md, TensorFlow Datasets.
    """
    from smallsample.data.omniglot import load_set

    tfds_dir = _omniglot_dir()  # skips before the slow part when TFDS omniglot is not there
    ours = load_set(which, size=105, root=data_dir)
    theirs = load_tfds("omniglot", data_dir=tfds_dir, split=split, channels=1)
    # every class has exactly its 20 drawings (not 20 drawn from more), at the size as shipped
    assert theirs.counts.tolist() == [20] * len(ours.names)
    assert theirs.images.shape == ours.images.shape
    # TFDS names a class ALPHABET_N with N = characterNN - 1; ours are ALPHABET/characterNN
    index = {n: i for i, n in enumerate(theirs.names)}
    for i, name in enumerate(ours.names):
        alphabet, character = name.split("/")
        j = index[f"{alphabet}_{int(character[len('character'):]) - 1}"]
        a = ours.images[i].reshape(20, -1)
        b = (255 - theirs.images[j]).reshape(20, -1)  # ink = 255 in ours, 0 in the PNGs
        # the same 20 drawings; TFDS keeps its records in its own shuffled order
        assert sorted(map(bytes, a)) == sorted(map(bytes, b)), name
