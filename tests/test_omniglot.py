import http.server
import io
import shutil
import socket
import threading
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smallsample.data import omniglot
from smallsample.data.files import DataError, download
from smallsample.data.lake import load_runs


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    # One array cache per test session, not the user's.
    monkeypatch.setenv("SMALLSAMPLE_CACHE", str(tmp_path_factory.getbasetemp() / "array-cache"))


def test_background_and_evaluation_sets(data_dir):
    bg = omniglot.load_set("background", root=data_dir)
    ev = omniglot.load_set("evaluation", root=data_dir)
    assert bg.images.shape == (964, 20, 28, 28, 1) and bg.images.dtype == np.uint8
    assert ev.images.shape == (659, 20, 28, 28, 1)
    assert bg.names[0] == "Alphabet_of_the_Magi/character01"
    assert len({n.split("/")[0] for n in bg.names}) == 30
    assert len({n.split("/")[0] for n in ev.names}) == 20
    # ink is high: strokes cover a minority of pixels
    assert 0.02 < (bg.images > 127).mean() < 0.3


def test_full_size_matches_the_png(data_dir):
    small = omniglot.load_set("background_small1", size=105, root=data_dir)
    assert small.images.shape == (136, 20, 105, 105, 1)
    with zipfile.ZipFile(data_dir / "omniglot" / "images_background_small1.zip") as z:
        png = z.read("images_background_small1/Balinese/character01/0108_01.png")
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    np.testing.assert_array_equal(small.images[0, 0, ..., 0], 255 - pixels)
    # 28x28 is an antialiased downsampling of the same drawing (grey levels appear)
    s28 = omniglot.load_set("background_small1", size=28, root=data_dir)
    assert len(np.unique(s28.images[0, 0])) > 2


def test_vinyals_split_sizes_and_rotations(data_dir):
    sizes = {p: omniglot.load_split("vinyals", p, root=data_dir).num_classes
             for p in ("train", "val", "test")}
    assert sizes == {"train": 4112, "val": 688, "test": 1692}
    test = omniglot.load_split("vinyals", "test", root=data_dir)
    full = omniglot.load_all(root=data_dir)
    i = test.names.index(next(n for n in test.names if n.endswith("rot090")))
    base = full.images[full.names.index(test.names[i].rsplit("/", 1)[0])]
    np.testing.assert_array_equal(test.images[i], np.rot90(base, 1, axes=(1, 2)))
    train_chars = {n.rsplit("/", 1)[0] for n in
                   omniglot.read_vinyals_split("train", data_dir)}
    test_chars = {n.rsplit("/", 1)[0] for n in test.names}
    assert not train_chars & test_chars


def test_maml_and_lake_splits(data_dir):
    tr = omniglot.load_split("maml", "train", root=data_dir)
    te = omniglot.load_split("maml", "test", root=data_dir)
    assert (tr.num_classes, te.num_classes) == (1200, 423)
    assert not set(tr.names) & set(te.names)
    assert omniglot.load_split("maml", "train", root=data_dir).names == tr.names  # fixed
    assert omniglot.load_split("lake", "evaluation", root=data_dir).num_classes == 659
    with pytest.raises(ValueError, match="unknown split 'x'"):
        omniglot.load_split("x", "train", root=data_dir)


def test_second_load_reads_the_cache(data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("SMALLSAMPLE_CACHE", str(tmp_path))
    first = omniglot.load_set("background_small2", root=data_dir)
    assert len(list(tmp_path.glob("omniglot-background_small2-28-*.npz"))) == 1

    def no_decoding(*args):
        raise AssertionError("a cached set was decoded again")

    monkeypatch.setattr(omniglot, "_decode", no_decoding)
    second = omniglot.load_set("background_small2", root=data_dir)
    np.testing.assert_array_equal(first.images, second.images)
    assert first.names == second.names


def _copy_small1(tmp_path, data_dir, edit=None, drop_alphabet=None):
    """A user-supplied copy of images_background_small1.zip, optionally edited."""
    root = tmp_path / "data"
    (root / "omniglot").mkdir(parents=True)
    src = data_dir / "omniglot" / "images_background_small1.zip"
    dst = root / "omniglot" / "images_background_small1.zip"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if drop_alphabet and f"/{drop_alphabet}/" in item.filename:
                continue
            data = zin.read(item.filename)
            if edit and item.filename == edit[0]:
                data = edit[1]
            zout.writestr(item, data)
    return root, dst


def test_user_copy_is_validated_by_content_not_checksum(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("SMALLSAMPLE_CACHE", str(tmp_path / "cache"))
    root, _ = _copy_small1(tmp_path, data_dir)  # other zip bytes, same content: accepted
    assert omniglot.load_set("background_small1", root=root).num_classes == 136


def test_png_of_wrong_size_is_named(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("SMALLSAMPLE_CACHE", str(tmp_path / "cache"))
    member = "images_background_small1/Balinese/character01/0108_02.png"
    buf = io.BytesIO()
    Image.new("1", (50, 50)).save(buf, "PNG")
    root, _ = _copy_small1(tmp_path, data_dir, edit=(member, buf.getvalue()))
    with pytest.raises(DataError, match=f"{member}: image is 50x50, expected 105x105"):
        omniglot.load_set("background_small1", root=root)


def test_missing_alphabet_is_named(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("SMALLSAMPLE_CACHE", str(tmp_path / "cache"))
    root, _ = _copy_small1(tmp_path, data_dir, drop_alphabet="Korean")
    with pytest.raises(DataError, match="alphabet\\(s\\) missing: Korean"):
        omniglot.load_set("background_small1", root=root)


def test_truncated_zip_is_named(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("SMALLSAMPLE_CACHE", str(tmp_path / "cache"))
    root, dst = _copy_small1(tmp_path, data_dir)
    dst.write_bytes(dst.read_bytes()[: dst.stat().st_size // 2])
    with pytest.raises(DataError, match="images_background_small1.zip is not a readable zip"):
        omniglot.load_set("background_small1", root=root)


def test_missing_file_offline_says_what_to_put_where(tmp_path):
    with pytest.raises(DataError, match="images_evaluation.zip is missing. Place the upstream"):
        omniglot.load_set("evaluation", root=tmp_path, download_missing=False)


def test_lake_runs(data_dir):
    runs = load_runs(root=data_dir)
    assert runs.train.shape == (20, 20, 28, 28, 1) and runs.test.shape == (20, 20, 28, 28, 1)
    for r in range(20):  # each run's test items cover the 20 training classes once
        assert sorted(runs.labels[r]) == list(range(20))


# ------------------------------------------------------------ download from a real local server
class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate = False

    def log_message(self, *args):
        pass

    def copyfile(self, source, outputfile):
        if self.truncate:  # announce the full length, send half, hang up
            data = source.read()
            outputfile.write(data[: len(data) // 2])
            outputfile.flush()
            self.close_connection = True
            return
        shutil.copyfileobj(source, outputfile)


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = type("H", (_Handler,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            partial(handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/", handler
    httpd.shutdown()
    httpd.server_close()


NAME = "images_background_small1.zip"


def _leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_complete_file(server, tmp_path, data_dir, monkeypatch):
    served, url, _ = server
    shutil.copy(data_dir / "omniglot" / NAME, served / NAME)  # byte-identical upstream file
    monkeypatch.setenv("SMALLSAMPLE_OMNIGLOT_URL", url)
    monkeypatch.setenv("SMALLSAMPLE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    path = omniglot.locate(NAME, root)
    assert path == root / "omniglot" / NAME
    assert _leftovers(root / "omniglot") == [NAME]
    assert omniglot.load_set("background_small1", root=root).num_classes == 136


def test_download_truncated_leaves_nothing(server, tmp_path, data_dir, monkeypatch):
    served, url, handler = server
    shutil.copy(data_dir / "omniglot" / NAME, served / NAME)
    handler.truncate = True
    monkeypatch.setenv("SMALLSAMPLE_OMNIGLOT_URL", url)
    root = tmp_path / "data"
    with pytest.raises(DataError, match="cut short|could not download"):
        omniglot.locate(NAME, root)
    assert _leftovers(root / "omniglot") == []


def test_download_wrong_checksum_leaves_nothing(server, tmp_path, monkeypatch):
    served, url, _ = server
    (served / NAME).write_bytes(b"not the omniglot zip" * 1000)
    monkeypatch.setenv("SMALLSAMPLE_OMNIGLOT_URL", url)
    root = tmp_path / "data"
    with pytest.raises(DataError, match="has sha256 .* expected f38eb80f"):
        omniglot.locate(NAME, root)
    assert _leftovers(root / "omniglot") == []


def test_download_server_down_fails_fast_with_a_hint(tmp_path):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "data" / "omniglot" / NAME
    with pytest.raises(DataError, match=f"could not download .*place it at {dest}"):
        download(f"http://127.0.0.1:{port}/{NAME}", dest, sha256="0" * 64, timeout=5)
    assert _leftovers(dest.parent) == []
