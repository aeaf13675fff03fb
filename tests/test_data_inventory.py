"""`smallsample data`: the sources under a data folder, listed and verified, from small real
layouts written here as the publishers ship them (JPEG and PNG by Pillow, Ravi & Larochelle's
CSVs, CIFAR-100's binary records, CUB's list files, a TFDS set prepared by TFDS itself), and the
shared Omniglot data."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smallsample.data import inventory

SHARED = Path(os.environ.get("SMALLSAMPLE_DATA") or
              Path(__file__).resolve().parents[2] / "shared" / "data")
SPLITS = SHARED / "splits"
needs_splits = pytest.mark.skipif(not (SPLITS / "cub" / "train.json").is_file(),
                                  reason=f"no split files under {SPLITS} (set SMALLSAMPLE_DATA)")
MINI = {"train": ["n01532829", "n01558993"], "val": ["n01855672", "n02091244"],
        "test": ["n01930112", "n01981276"]}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLSAMPLE_CACHE", str(tmp_path / "array-cache"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no-tfds"))
    return tmp_path / "array-cache"


def run(argv: list[str], capsys) -> tuple[int, dict[str, str]]:
    """The `data` command through its own parser: exit status and {source: its line}."""
    parser = argparse.ArgumentParser(prog="smallsample")
    inventory.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "--no-progress", *argv])
    code = args.func(args)
    lines = capsys.readouterr().out.splitlines()
    return code, {line.split()[0]: line for line in lines[1:] if not line.startswith("(")}


def smooth(rng, h, w):
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    planes = [127.5 + 100 * np.sin(3 * x + p[0]) * np.cos(2 * y + p[1])
              for p in rng.uniform(0, 2 * np.pi, (3, 2))]
    return np.clip(np.stack(planes, -1), 0, 255).astype(np.uint8)


def save(path: Path, array: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


def write_mini(folder: Path, per_class: int = 3) -> None:
    """images/nSSSSSSSSNNNNNNNN.jpg and {part}.csv beside it, as Ravi & Larochelle's."""
    rng = np.random.default_rng(3)
    for part, synsets in MINI.items():
        rows = ["filename,label"]
        for s in synsets:
            for i in range(per_class):
                name = f"{s}{i + 1:08d}.jpg"
                save(folder / "images" / name, smooth(rng, 30, 40), quality=95)
                rows.append(f"{name},{s}")
        (folder / f"{part}.csv").write_text("\n".join(rows) + "\n")


def write_tiered(folder: Path) -> None:
    rng = np.random.default_rng(4)
    for part, counts in (("train", (3, 4)), ("val", (2, 2)), ("test", (2, 3))):
        for c, n in enumerate(counts):
            for i in range(n):
                save(folder / part / f"n0{part}{c}" / f"{i}.png",
                     rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))


def write_cifar(root: Path) -> None:
    """cifar-100-binary/ with 2 training and 1 test record of each class, and the split lists."""
    pairs = [tuple(p) for part in ("train", "val", "test")
             for p in json.loads((SPLITS / "cifar-fs" / f"{part}.json").read_text())]
    fine, coarse, parent = sorted(c for _, c in pairs), sorted({s for s, _ in pairs}), dict(
        (c, s) for s, c in pairs)
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True)
    (folder / "fine_label_names.txt").write_text("\n".join(fine) + "\n")
    (folder / "coarse_label_names.txt").write_text("\n".join(coarse) + "\n")
    rng = np.random.default_rng(5)
    for name, n in (("train.bin", 2), ("test.bin", 1)):
        records = [bytes([coarse.index(parent[c]), i])
                   + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes()
                   for _ in range(n) for i, c in enumerate(fine)]
        (folder / name).write_bytes(b"".join(records))
    for benchmark in ("cifar-fs", "fc100"):
        shutil.copytree(SPLITS / benchmark, root / "splits" / benchmark)


def write_cub(root: Path) -> None:
    """CUB_200_2011/{classes,images,image_class_labels}.txt and images/CLASS/*.jpg."""
    names = sorted(n for p in ("train", "val", "test")
                   for n in json.loads((SPLITS / "cub" / f"{p}.json").read_text()))
    folder, rng = root / "CUB_200_2011", np.random.default_rng(6)
    classes, listing, labels = [], [], []
    for cid, name in enumerate(names, 1):
        classes.append(f"{cid} {name}")
        for j in range(2):
            image_id = 2 * cid + j
            rel = f"{name}/{name.split('.', 1)[1]}_{j:04d}_{image_id}.jpg"
            save(folder / "images" / rel, smooth(rng, 14, 18), quality=95)
            listing.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {cid}")
    for fname, lines in (("classes.txt", classes), ("images.txt", listing),
                         ("image_class_labels.txt", labels)):
        (folder / fname).write_text("\n".join(lines) + "\n")
    shutil.copytree(SPLITS / "cub", root / "splits" / "cub")


@pytest.fixture
def layouts(tmp_path):
    root = tmp_path / "data"
    write_mini(root / "mini-imagenet")
    write_tiered(root / "tiered-imagenet")
    write_cifar(root)
    write_cub(root)
    return root


@needs_splits
def test_list_then_verify_every_image_source(layouts, cache, capsys):
    code, lines = run(["--data", str(layouts)], capsys)
    assert code == 0  # the text sets and Omniglot are missing: optional, not a failure
    for name in ("mini-imagenet", "tiered-imagenet", "cifar-fs", "fc100", "cub"):
        assert f"{name} present:" in " ".join(lines[name].split()), lines[name]
    assert "mini-imagenet/images/" in lines["mini-imagenet"]
    assert "cifar-100-binary/train.bin" in lines["cifar-fs"]
    assert "missing: put data_full.json" in lines["clinc150"]
    assert "missing: put images_background.zip and images_evaluation.zip" in lines["omniglot"]
    assert not cache.exists()  # listing opens nothing

    code, lines = run(["--data", str(layouts), "--verify"], capsys)
    assert code == 0
    expected = {"mini-imagenet": "ok: train 2 x 3, val 2 x 3, test 2 x 3 (84x84x3 uint8)",
                "tiered-imagenet": "ok: train 2 x 3 (of 3-4), val 2 x 2, test 2 x 2 (of 2-3) "
                                   "(84x84x3 uint8)",
                "cifar-fs": "ok: train 64 x 3, val 16 x 3, test 20 x 3 (32x32x3 uint8)",
                "fc100": "ok: train 60 x 3, val 20 x 3, test 20 x 3 (32x32x3 uint8)",
                "cub": "ok: train 100 x 2, val 50 x 2, test 50 x 2 (84x84x3 uint8)"}
    for name, text in expected.items():
        assert lines[name].endswith(text), lines[name]
    # decoded once: every part is in the cache for training, and a second verify reads it
    entries = sorted(p.name.split("-84x84")[0] for p in cache.iterdir() if "84x84" in p.name)
    assert entries == sorted(f"{b}-{p}" for b in ("mini-imagenet", "tiered-imagenet", "cub")
                             for p in ("train", "val", "test"))
    code, again = run(["--data", str(layouts), "--verify", "--source", "cub", "--size", "14"],
                      capsys)
    assert code == 0 and list(again) == ["cub"]
    assert again["cub"].endswith("test 50 x 2 (14x14x3 uint8)")


@needs_splits
def test_a_broken_image_is_named_in_the_failed_line(layouts, cache, capsys):
    victim = layouts / "mini-imagenet" / "images" / "n0193011200000002.jpg"
    victim.write_bytes(b"\xff\xd8\xff\xe0 not the rest of a JPEG")
    code, lines = run(["--data", str(layouts), "--verify"], capsys)
    assert code == 1
    assert lines["mini-imagenet"].startswith("mini-imagenet    FAILED: ")
    assert f"{victim}: not a readable image" in lines["mini-imagenet"]
    assert "ok: train 100 x 2" in lines["cub"]  # the other sources are still checked
    (layouts / "CUB_200_2011" / "images.txt").write_text("1 nowhere.jpg\n")
    code, lines = run(["--data", str(layouts), "--verify", "--source", "cub"], capsys)
    assert code == 1 and "FAILED: " in lines["cub"] and "nowhere.jpg" in lines["cub"]


def test_a_missing_source_is_listed_with_its_hint(tmp_path, cache, capsys):
    root = tmp_path / "data"
    (root / "splits" / "mini-imagenet").mkdir(parents=True)
    for part in ("train", "val", "test"):
        (root / "splits" / "mini-imagenet" / f"{part}.csv").write_text("filename,label\n")
    code, lines = run(["--data", str(root), "--verify"], capsys)
    assert code == 1  # nothing at all is present
    assert ("mini-imagenet    missing: bring images/ beside the CSVs: "
            f"{root}/mini-imagenet/images/") in lines["mini-imagenet"]
    assert f"{root}/splits/mini-imagenet/{{train,val,test}}.csv" in lines["mini-imagenet"]
    assert "cifar-100-binary.tar.gz" in lines["cifar-fs"]
    assert "CUB_200_2011.tgz" in lines["cub"]
    # a source asked for by name and missing is a failure; present with its split lists absent
    write_tiered(root / "tiered-imagenet")
    assert run(["--data", str(root), "--source", "tiered-imagenet"], capsys)[0] == 0
    assert run(["--data", str(root), "--source", "mini-imagenet"], capsys)[0] == 1
    (root / "CUB_200_2011" / "images").mkdir(parents=True)
    (root / "CUB_200_2011" / "images.txt").write_text("")
    code, lines = run(["--data", str(root), "--source", "cub"], capsys)
    assert code == 1 and "missing: put the class lists train.json, val.json, test.json" in \
        lines["cub"]


def test_a_users_folder_and_bad_requests(tmp_path, cache, capsys):
    rng = np.random.default_rng(7)
    for c in range(10):
        for i in range(3):
            save(tmp_path / "photos" / f"class{c}" / f"{i}.png",
                 rng.integers(0, 256, (9, 9, 3), dtype=np.uint8))
    code, lines = run(["--source", "folder", "--path", str(tmp_path / "photos"), "--verify",
                       "--size", "9"], capsys)
    assert code == 0  # dealt by seed 0 with fractions 0.64 / 0.16 / 0.20
    assert lines["folder"] == ("folder           ok: train 6 x 3, val 1 x 3, test 3 x 3 "
                               "(9x9x3 uint8)")
    with pytest.raises(ValueError, match="unknown data source 'imagenet21k'; known: omniglot"):
        run(["--source", "imagenet21k"], capsys)
    with pytest.raises(ValueError, match="--source folder needs --path"):
        run(["--source", "folder"], capsys)
    with pytest.raises(ValueError, match="--path checks one source"):
        run(["--path", str(tmp_path)], capsys)
    with pytest.raises(ValueError, match="--size 0 must be a positive"):
        run(["--size", "0"], capsys)


def test_the_shared_omniglot_data_is_present_and_reads(data_dir, capsys):
    code, lines = run(["--data", str(data_dir)], capsys)
    assert code == 0
    assert "omniglot/images_background.zip" in lines["omniglot"]
    assert lines["clinc150"].startswith("clinc150         present: text/clinc150/data_full.json")
    code, lines = run(["--data", str(data_dir), "--verify", "--source", "omniglot",
                       "--source", "banking77"], capsys)
    assert code == 0 and list(lines) == ["omniglot", "banking77"]
    assert lines["omniglot"].startswith("omniglot         ok: background 964 x 20, evaluation "
                                        "659 x 20; vinyals train 4112 x 20, val 688 x 20, test "
                                        "1692 x 20; maml train 1200 x 20, test 423 x 20")
    assert lines["banking77"].endswith("ok: 77 intents; train 10003 texts, test 3080 texts")


def test_prepared_tfds_sets_are_found_and_read(tmp_path, cache, capsys):
    tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets not installed")
    pytest.importorskip("array_record", reason="array-record is not installed")

    class SmallsampleInventoryTiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 3)),
                "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(4),
                    "test": self._generate_examples(2)}

        def _generate_examples(self, per_class):
            rng = np.random.default_rng(per_class)
            for i in range(3 * per_class):  # a file path: TFDS stores its bytes, no TensorFlow
                path = save(tmp_path / "png" / f"{per_class}-{i}.png",
                            rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
                yield i, {"image": path, "label": i % 3}

    tfds_dir = tmp_path / "tfds"
    SmallsampleInventoryTiny(data_dir=str(tfds_dir)).download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    (tfds_dir / "downloads" / "x" / "1.0.0").mkdir(parents=True)  # skipped
    (tfds_dir / "downloads" / "x" / "1.0.0" / "dataset_info.json").write_text("{}")
    name = "tfds:smallsample_inventory_tiny/1.0.0"
    code, lines = run(["--data", str(tmp_path / "empty"), "--tfds-dir", str(tfds_dir)], capsys)
    assert code == 0 and [n for n in lines if n.startswith("tfds:")] == [name]
    assert "present:" in lines[name] and "dataset_info.json" in lines[name]
    code, lines = run(["--tfds-dir", str(tfds_dir), "--verify", "--source", name], capsys)
    assert code == 0 and lines[name].endswith("ok: train 3 x 4, test 3 x 2 (8x8x3 uint8)")
    for shard in (tfds_dir / "smallsample_inventory_tiny" / "1.0.0").glob("*test.array_record*"):
        shard.unlink()
    code, lines = run(["--tfds-dir", str(tfds_dir), "--verify", "--source", name], capsys)
    assert code == 1 and "FAILED: " in lines[name], lines[name]
    assert "cannot read its ArrayRecord files" in lines[name]  # a DataError, naming the file
    assert "smallsample_inventory_tiny-test.array_record" in lines[name]
