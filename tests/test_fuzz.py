"""The readers, fuzzed for a bounded time: malformed files derived from valid ones (truncated,
bytes flipped, inserted or deleted, wrong JSON types, wrong CSV columns, bad UTF-8, huge numbers,
empty, nested garbage) end in the library's own clear errors, never a bare ``KeyError``,
``TypeError``, ``zipfile.BadZipFile``, ``UnicodeDecodeError``, ``json.JSONDecodeError``...,
never a hang, and never a file written outside the test's temporary folder.

Every reader call runs in a thread joined with a timeout (:func:`call`): a call still running
then is reported as a hang. Hypothesis runs derandomized with no example database, so CI sees the
same examples every time and nothing is written to the working directory; ``deadline=None``
because a deadline only reports after a call returns (a hang never does) and the shared CI cores
make per-example times noisy: the hang guard bounds each call instead.
"""

import csv
import io
import json
import os
import tempfile
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from smallsample.config import Config, make_config
from smallsample.data import benchmarks, cache, images, omniglot, tables, text
from smallsample.data.files import DataError
from smallsample.text.encode import read_cache

HANG_SECONDS = 20.0
# Examples per test: 40 in CI (the file runs in about 20 s on 2 cores); more for a deeper search,
# e.g. SMALLSAMPLE_FUZZ_EXAMPLES=1000 (still derandomized: the same examples on every run).
EXAMPLES = int(os.environ.get("SMALLSAMPLE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(FUZZ, max_examples=max(1, EXAMPLES // 4))


# --- the harness -----------------------------------------------------------------------------

def listing(folder: Path) -> list[str]:
    """Every path under ``folder`` (relative), sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def call(fn, *args, allowed=(DataError,), names=(), timeout=HANG_SECONDS, **kwargs):
    """``fn(*args, **kwargs)`` in a thread joined after ``timeout`` seconds.

    Returns the result, or the exception if its type is exactly one of ``allowed`` (so a
    ``json.JSONDecodeError`` or ``UnicodeDecodeError``, both ``ValueError`` subclasses, do not
    pass as ``ValueError``) and its message names one of ``names``; anything else fails the test.
    """
    box = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 -- judged below
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"{fn.__name__} hung: still running after {timeout} s")
    error = box.get("error")
    if error is None:
        return box["value"]
    if type(error) not in allowed:
        raise AssertionError(f"{fn.__name__} leaked {type(error).__name__}: {error}") from error
    message = str(error)
    if names and not any(str(n) in message or repr(str(n))[1:-1] in message for n in names):
        raise AssertionError(f"{fn.__name__}: {type(error).__name__} names none of "
                             f"{[str(n) for n in names]}: {message}") from error
    return error


def test_the_harness_reports_hangs_leaks_and_vague_messages():
    with pytest.raises(pytest.fail.Exception, match="sleep hung"):
        call(time.sleep, 2, timeout=0.1)
    with pytest.raises(AssertionError, match="leaked KeyError"):
        call({}.__getitem__, "key")
    with pytest.raises(AssertionError, match="leaked JSONDecodeError"):
        call(json.loads, "{", allowed=(ValueError,))
    with pytest.raises(AssertionError, match="names none of"):
        call(int, "x", allowed=(ValueError,), names=["file.csv"])
    assert isinstance(call(int, "x", allowed=(ValueError,), names=["'x'"]), ValueError)
    assert call(int, "7") == 7


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """HOME, XDG_CACHE_HOME, TMPDIR, SMALLSAMPLE_CACHE, SMALLSAMPLE_DATA and the working
    directory all inside ``tmp_path``; afterwards home, temporary folder and working directory
    must still be empty (nothing was written to a default location, left in the temporary
    folder, or written relative to the working directory)."""
    home, cwd, tmp = tmp_path / "home", tmp_path / "cwd", tmp_path / "tmp"
    for d in (home, cwd, tmp, tmp_path / "cache", tmp_path / "data"):
        d.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("SMALLSAMPLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SMALLSAMPLE_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(cwd)
    yield tmp_path
    assert listing(home) == [], "written to the default (home) cache"
    assert listing(cwd) == [], "written to the working directory"
    assert listing(tmp) == [], "temporary files left in the system's temporary folder"
    leftovers = [p for p in listing(tmp_path / "cache") if p.endswith(".part")
                 or "/.part" in p or ".part/" in p]
    assert leftovers == [], f"temporary files left in the cache: {leftovers}"


def fresh(sandbox: Path) -> Path:
    """A new empty folder for one example."""
    return Path(tempfile.mkdtemp(dir=sandbox / "data"))


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def unchanged(folder: Path, fn, *args, **kwargs):
    """:func:`call`, checking that ``folder`` (the input's) and the cache folder hold the same
    files afterwards (a reader without a cache writes nothing)."""
    cache_folder = Path(os.environ["SMALLSAMPLE_CACHE"])
    before = listing(folder), listing(cache_folder)
    out = call(fn, *args, **kwargs)
    assert listing(folder) == before[0], f"{fn.__name__} wrote next to its input in {folder}"
    assert listing(cache_folder) == before[1], f"{fn.__name__} wrote to the cache"
    return out


# --- malformed inputs ------------------------------------------------------------------------

BAD_BYTES = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xef\xbb\xbf", b"\r", b"\"",
             b"\n", b",", b"\t", b"9" * 5000, b"[" * 3000]


@st.composite
def corrupt(draw, valid: bytes) -> bytes:
    """``valid`` after one to three of: truncation, a flipped byte, inserted or deleted bytes,
    bad UTF-8 or a delimiter or huge number inserted, emptied, garbage appended."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "flip", "flip", "insert", "delete", "empty",
                                   "append", "special"]))
        # drawn independently of the length, so that generation does not depend on ``valid``
        pos = draw(st.integers(0, 2**32)) % (len(data) + 1)
        if op == "truncate":
            del data[pos:]
        elif op == "flip" and data:
            data[min(pos, len(data) - 1)] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "empty":
            data = bytearray()
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "special":
            data[pos:pos] = draw(st.sampled_from(BAD_BYTES))
    return bytes(data)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(),
                    st.integers(min_value=10**20, max_value=10**400), st.floats(),
                    st.text(max_size=8))
GARBAGE = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)


@st.composite
def mutate_json(draw, value):
    """``value`` with one node replaced by garbage, deleted, or garbage added beside it."""
    if draw(st.integers(0, 4)) == 0 or not isinstance(value, (list, dict)) or not value:
        return draw(GARBAGE)
    if isinstance(value, list):
        out = list(value)
        i = draw(st.integers(0, len(out) - 1))
        op = draw(st.sampled_from(["recurse", "recurse", "delete", "insert"]))
        if op == "recurse":
            out[i] = draw(mutate_json(out[i]))
        elif op == "delete":
            del out[i]
        else:
            out.insert(i, draw(GARBAGE))
        return out
    out = dict(value)
    key = draw(st.sampled_from(sorted(out)))
    op = draw(st.sampled_from(["recurse", "recurse", "delete", "add"]))
    if op == "recurse":
        out[key] = draw(mutate_json(out[key]))
    elif op == "delete":
        del out[key]
    else:
        out[draw(st.text(max_size=6))] = draw(GARBAGE)
    return out


def json_bytes(valid) -> st.SearchStrategy[bytes]:
    """Malformed JSON files derived from ``valid``: wrong types, corrupted bytes, deep nesting,
    huge numbers."""
    text_ = json.dumps(valid).encode()
    return st.one_of(
        mutate_json(valid).map(lambda v: json.dumps(v).encode()),
        corrupt(text_),
        st.sampled_from([b"", b"[" * 100_000, b"{\"a\":" * 50_000, b"9" * 5000,
                         b"[" + b"9" * 5000 + b"]", b"1e999", b"NaN", b"\xff\xfe",
                         b"\xef\xbb\xbf" + text_]),
    )


def csv_text(rows: list[list[str]], delimiter: str = ",") -> bytes:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


@st.composite
def mutate_rows(draw, rows: list[list[str]]) -> list[list[str]]:
    """A table with one structural fault: a column dropped, added or renamed, a row shortened or
    lengthened, a field emptied, a huge field, an unbalanced quote."""
    rows = [list(r) for r in rows]
    op = draw(st.sampled_from(["drop_column", "add_column", "rename", "short_row", "long_row",
                               "empty_field", "huge_field", "quote", "header_only", "swap"]))
    i = draw(st.integers(0, len(rows) - 1))
    j = draw(st.integers(0, len(rows[0]) - 1))
    if op == "drop_column":
        rows = [r[:j] + r[j + 1:] for r in rows]
    elif op == "add_column":
        rows = [r + [draw(st.text(max_size=4))] for r in rows]
    elif op == "rename":
        rows[0][j] = draw(st.text(max_size=6))
    elif op == "short_row":
        rows[i] = rows[i][:j]
    elif op == "long_row":
        rows[i] = rows[i] + ["x"]
    elif op == "empty_field":
        rows[i][j] = draw(st.sampled_from(["", " ", "\t"]))
    elif op == "huge_field":
        rows[i][j] = "x" * 200_000
    elif op == "quote":
        rows[i][j] = '"' + rows[i][j]
    elif op == "header_only":
        rows = rows[:1]
    else:
        rows[0] = rows[0][::-1]
    return rows


def table_bytes(rows: list[list[str]], delimiter: str = ",") -> st.SearchStrategy[bytes]:
    valid = csv_text(rows, delimiter)
    return st.one_of(mutate_rows(rows).map(lambda r: csv_text(r, delimiter)), corrupt(valid),
                     st.just(valid.replace(b"\n", b"\0\n", 1)))


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


# --- Omniglot zips and PNGs ------------------------------------------------------------------

TINY_SET = {"Greek": 2, "Latin": 1}


def omniglot_png(seed: int) -> bytes:
    """A 105x105 1-bit PNG as upstream (ink black on white), a few random strokes."""
    rng = np.random.default_rng(seed)
    image = np.ones((105, 105), bool)
    image[rng.integers(0, 105, 30), rng.integers(0, 105, 30)] = False
    return png_bytes(image)


def omniglot_members(alphabets: dict[str, int], top: str = "images_background") -> dict:
    members, char_id = {}, 1
    for alphabet, count in sorted(alphabets.items()):
        for c in range(1, count + 1):
            for d in range(1, omniglot.DRAWINGS + 1):
                members[f"{top}/{alphabet}/character{c:02d}/{char_id:04d}_{d:02d}.png"] = \
                    omniglot_png(d)
            char_id += 1
    return members


def zip_bytes(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


TINY_MEMBERS = omniglot_members(TINY_SET)
TINY_ZIP = zip_bytes(TINY_MEMBERS)


def test_tiny_omniglot_zip_is_valid(tmp_path):
    path = write(tmp_path / "images_background.zip", TINY_ZIP)
    out = omniglot._read_set(path, TINY_SET, 4)
    assert out.images.shape == (3, 20, 4, 4, 1) and out.images.dtype == np.uint8
    assert out.names == ["Greek/character01", "Greek/character02", "Latin/character01"]
    full = omniglot._read_set(path, TINY_SET, 105)
    png = Image.open(io.BytesIO(omniglot_png(1))).convert("L")
    np.testing.assert_array_equal(full.images[0, 0, ..., 0], 255 - np.asarray(png))


@FUZZ
@given(data=corrupt(TINY_ZIP))
def test_omniglot_zip_bytes(sandbox, data):
    path = write(fresh(sandbox) / "images_background.zip", data)
    out = unchanged(path.parent, omniglot._read_set, path, TINY_SET, 4, names=[path])
    if not isinstance(out, Exception):
        assert out.images.shape == (3, 20, 4, 4, 1)


@st.composite
def bad_members(draw) -> tuple[dict, int]:
    """The tiny set's members with one fault: a PNG's bytes corrupted, a member dropped, renamed,
    duplicated or added, an image of another size or mode; and a compression method."""
    members = dict(TINY_MEMBERS)
    names = sorted(members)
    name = draw(st.sampled_from(names))
    op = draw(st.sampled_from(["png", "png", "drop", "rename", "add", "size", "mode", "empty"]))
    if op == "png":
        members[name] = draw(corrupt(members[name]))
    elif op == "drop":
        del members[name]
    elif op == "rename":
        data = members.pop(name)
        members[draw(st.sampled_from([
            name.replace("character", "char"), name.replace("Greek", "Klingon"),
            name.replace(".png", ".PNG"), name.replace("_", "-"), name + "/",
            name.replace("Greek", "Latin").replace("Latin", "Greek", 1),
            name.replace("images_background/", ""), "Greek/" + name, name.replace("/", "\\"),
        ]))] = data
    elif op == "add":
        members[draw(st.sampled_from([name.replace("_01", "_99"), name.replace("01", "03"),
                                      "__MACOSX/._" + name, name + ".txt"]))] = members[name]
    elif op == "size":
        members[name] = png_bytes(np.zeros((draw(st.integers(1, 120)), 105), np.uint8))
    elif op == "mode":
        members[name] = png_bytes(np.zeros((105, 105, draw(st.sampled_from([3, 4]))), np.uint8))
    else:
        members[name] = b""
    return members, draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED,
                                          zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))


@FUZZ
@given(case=bad_members())
def test_omniglot_zip_members(sandbox, case):
    members, compression = case
    path = write(fresh(sandbox) / "images_background.zip", zip_bytes(members, compression))
    out = unchanged(path.parent, omniglot._read_set, path, TINY_SET, 4, names=[path])
    if not isinstance(out, Exception):  # a fault the reader may accept: the layout it expects
        assert out.images.shape == (3, 20, 4, 4, 1)


def test_omniglot_zip_special_cases(sandbox):
    """An encrypted member, an unknown compression method, a zip of zero bytes, a folder."""
    folder = fresh(sandbox)
    raw = bytearray(TINY_ZIP)
    # the first member's general purpose flag (local and central headers): bit 0 = encrypted
    raw[6] |= 1
    raw[raw.index(b"PK\x01\x02") + 8] |= 1
    encrypted = write(folder / "encrypted.zip", bytes(raw))
    raw = bytearray(TINY_ZIP)
    central = raw.index(b"PK\x01\x02")
    raw[8:10] = raw[central + 10:central + 12] = (99).to_bytes(2, "little")  # method 99
    unknown = write(folder / "method.zip", bytes(raw))
    empty = write(folder / "empty.zip", b"")
    (folder / "dir.zip").mkdir()
    for path in (encrypted, unknown, empty, folder / "dir.zip"):
        out = call(omniglot._read_set, path, TINY_SET, 4, names=[path])
        assert isinstance(out, DataError), path


SMALL1_ZIP = None


def small1_zip() -> bytes:
    """``images_background_small1.zip`` in the upstream layout (5 alphabets, 136 characters x 20
    drawings), the drawings synthetic."""
    global SMALL1_ZIP
    if SMALL1_ZIP is None:
        SMALL1_ZIP = zip_bytes(omniglot_members(omniglot.SMALL1, "images_background_small1"),
                               zipfile.ZIP_STORED)
    return SMALL1_ZIP


@FEW
@given(data=st.data())
def test_omniglot_load_set_and_its_cache(sandbox, data):
    """The public loader end to end (zip located under the data root, cached in
    SMALLSAMPLE_CACHE): a corrupted zip is a DataError naming it; a corrupted cache entry is
    rebuilt, never trusted."""
    root = fresh(sandbox)
    path = write(root / "omniglot" / "images_background_small1.zip", small1_zip())
    kwargs = dict(size=3, root=root, download_missing=False)
    good = call(omniglot.load_set, "background_small1", **kwargs)
    assert good.images.shape == (136, 20, 3, 3, 1)
    entries = list((sandbox / "cache").glob("omniglot-background_small1-3-*.npz"))
    assert len(entries) == 1
    if data.draw(st.booleans(), label="corrupt the cache (else the zip)"):
        valid = entries[0].read_bytes()
        bad = data.draw(st.one_of(corrupt(valid), st.sampled_from(WRONG_NPZ)), label="cache")
        entries[0].write_bytes(bad)
        again = call(omniglot.load_set, "background_small1", **kwargs)
        np.testing.assert_array_equal(again.images, good.images)
        assert again.names == good.names
    else:
        path.write_bytes(data.draw(corrupt(small1_zip()), label="zip"))
        out = call(omniglot.load_set, "background_small1", use_cache=False, **kwargs)
        if not isinstance(out, Exception):
            np.testing.assert_array_equal(out.images, good.images)


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


WRONG_NPZ = [
    _npz(images=np.zeros((2, 3), np.uint8), names=np.asarray(["a", "b"])),
    _npz(images=np.zeros((136, 20, 3, 3, 1), np.float64), names=np.asarray(["a"] * 136)),
    _npz(images=np.zeros((136, 20, 3, 3, 1), np.uint8), names=np.asarray(["a"])),
    _npz(images=np.zeros((136, 20, 3, 3, 1), np.uint8), names=np.arange(136)),
    _npz(images=np.zeros((136, 20, 3, 3, 1), np.uint8)),
    _npz(images=np.asarray([None, 1], object), names=np.asarray(["a"])),
]


# --- Vinyals split files -----------------------------------------------------------------------

VINYALS = "".join(f"{n}/rot{r:03d}\n" for n in ("Greek/character01", "Latin/character01")
                  for r in (0, 90, 180, 270)).encode()


def tiny_omniglot() -> omniglot.ClassIndexed:
    images = np.arange(3 * 2 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2, 2, 1)
    return omniglot.ClassIndexed(images, ["Greek/character01", "Greek/character02",
                                          "Latin/character01"])


@FUZZ
@given(data=st.one_of(corrupt(VINYALS), st.sampled_from([
    b"Greek/character01/rot045\n", b"Greek/character01/rot\xd9\xa1\xd9\xa2\xd9\xa3\n",
    b"Greek/character09/rot000\n", b"Greek\n", b"/rot000\n", b"\xff\xfe\n"])))
def test_vinyals_split_file(sandbox, data):
    root = fresh(sandbox)
    path = write(root / "omniglot" / "splits" / "vinyals" / "val.txt", data)
    names = unchanged(root, omniglot.read_vinyals_split, "val", root, names=[path])
    if isinstance(names, Exception):
        return
    assert all(isinstance(n, str) and n == n.strip() and n for n in names)
    out = call(tiny_omniglot().select, names, allowed=(DataError, ValueError), names=names)
    if not isinstance(out, Exception):
        assert out.images.shape[0] == len(names)


# --- CLINC150 and Banking77 --------------------------------------------------------------------

CLINC = {split: [[f"{split} text {i}", intent] for i in range(2)
                 for intent in ("balance", "transfer")] for split in ("train", "val", "test")}
CLINC.update({f"oos_{s}": [[f"oos {s}", "oos"]] for s in ("train", "val", "test")})
DOMAINS = {"banking": ["balance", "transfer"], "travel": ["book_flight"]}


@FUZZ
@given(data=json_bytes(CLINC))
def test_clinc150(sandbox, data):
    root = fresh(sandbox)
    path = write(root / "text" / "clinc150" / "data_full.json", data)
    out = unchanged(root, text.load_clinc150, root=root, names=[path])
    if not isinstance(out, Exception):
        for split in text.CLINC150_SPLITS:
            part = out[split]
            assert len(part.texts) == len(part.labels) and part.labels.dtype == np.int32
            assert all(isinstance(t, str) for t in part.texts)


@FUZZ
@given(data=json_bytes(DOMAINS))
def test_clinc150_domains(sandbox, data):
    root = fresh(sandbox)
    path = write(root / "text" / "clinc150" / "domains.json", data)
    out = unchanged(root, text.load_clinc150_domains, root=root, names=[path])
    if not isinstance(out, Exception):
        assert all(isinstance(k, str) and all(isinstance(i, str) for i in v)
                   for k, v in out.items())


BANKING = [["text", "category"], ["how do I top up", "top_up"], ["card lost", "lost_card"],
           ["where is my card", "lost_card"]]
CATEGORIES = ["lost_card", "top_up"]


@FUZZ
@given(which=st.sampled_from(["train.csv", "test.csv", "categories.json"]), data=st.data())
def test_banking77(sandbox, which, data):
    root = fresh(sandbox)
    folder = root / "text" / "banking77"
    write(folder / "categories.json", json.dumps(CATEGORIES).encode())
    write(folder / "train.csv", csv_text(BANKING))
    write(folder / "test.csv", csv_text(BANKING))
    bad = json_bytes(CATEGORIES) if which == "categories.json" else table_bytes(BANKING)
    path = write(folder / which, data.draw(bad, label=which))
    out = unchanged(root, text.load_banking77, root=root, names=[path])
    if not isinstance(out, Exception):
        for part in out.values():
            assert len(part.texts) == len(part.labels)
            assert ((part.labels >= 0) & (part.labels < len(part.class_names))).all()


# --- a user's CSV / TSV / JSONL ----------------------------------------------------------------

USER = [["text", "label"], ["good film", "pos"], ["bad film", "neg"], ["fine, I guess", "pos"]]
JSONL = b"".join(json.dumps({"text": t, "label": lab}).encode() + b"\n" for t, lab in USER[1:])


@st.composite
def jsonl_bytes(draw) -> bytes:
    lines = JSONL.splitlines()
    i = draw(st.integers(0, len(lines) - 1))
    item = json.loads(lines[i])
    lines[i] = draw(st.one_of(mutate_json(item).map(lambda v: json.dumps(v).encode()),
                              st.sampled_from([b"[" * 100_000, b'{"text": ' + b"9" * 5000 + b"}",
                                               b'{"text": "a", "label": 1e999}', b"\xff"])))
    return draw(st.one_of(st.just(b"\n".join(lines)), corrupt(JSONL)))


@FUZZ
@given(fmt=st.sampled_from(["csv", "tsv", "jsonl"]), labelled=st.booleans(), data=st.data())
def test_read_texts(sandbox, fmt, labelled, data):
    if fmt == "jsonl":
        raw = data.draw(jsonl_bytes(), label="jsonl")
    else:
        raw = data.draw(table_bytes(USER, "\t" if fmt == "tsv" else ","), label=fmt)
    folder = fresh(sandbox)
    path = write(folder / f"texts.{fmt}", raw)
    out = unchanged(folder, tables.read_texts, path,
                    label_column="label" if labelled else None, names=[path])
    if not isinstance(out, Exception):
        assert len(out.texts) == len(out.labels) and all(t.strip() for t in out.texts)
        if labelled:
            assert ((out.labels >= 0) & (out.labels < len(out.class_names))).all()


# --- image benchmarks: mini-ImageNet split CSVs, class lists, image files ----------------------

MINI = [["filename", "label"], ["n0153282900000005.jpg", "n01532829"],
        ["n0153282900000006.jpg", "n01532829"], ["n0174995300000001.jpg", "n01749953"]]


@FUZZ
@given(data=table_bytes(MINI))
def test_mini_imagenet_split_csv(sandbox, data):
    folder = fresh(sandbox)
    path = write(folder / "train.csv", data)
    out = unchanged(folder, benchmarks.read_mini_imagenet_csv, path, names=[path])
    if not isinstance(out, Exception):
        files = [f for names in out.values() for f in names]
        assert len(files) == len(set(files)) and all(files) and all(out)


@FEW
@given(data=table_bytes(MINI))
def test_mini_imagenet_images_and_csv(sandbox, data):
    """The loader end to end on Ravi & Larochelle's layout: the images its CSV names are
    decoded (and cached in SMALLSAMPLE_CACHE), nothing is written beside them."""
    folder = fresh(sandbox)
    for name, _ in MINI[1:]:
        write(folder / "images" / name, IMAGES["jpg"])
    write(folder / "train.csv", data)
    before = listing(folder)
    out = call(benchmarks.load_mini_imagenet, "train", path=folder, size=4, progress=False,
               workers=1, names=[folder])
    assert listing(folder) == before
    if not isinstance(out, Exception):
        assert out.images.shape[2:] == (4, 4, 3) and out.images.dtype == np.uint8


CLASS_LIST = [["aquatic_mammals", "beaver"], ["fish", "trout"], ["flowers", "rose"]]


@FUZZ
@given(suffix=st.sampled_from([".json", ".txt"]), data=st.data())
def test_class_list(sandbox, suffix, data):
    if suffix == ".json":
        raw = data.draw(json_bytes(CLASS_LIST), label="json")
    else:
        raw = data.draw(corrupt(b"# classes\nbeaver\ntrout  # a fish\n\nrose\n"), label="txt")
    folder = fresh(sandbox)
    path = write(folder / f"train{suffix}", raw)
    out = unchanged(folder, images.read_class_list, path, names=[path])
    if not isinstance(out, Exception):
        assert out and all(isinstance(n, str) and n for n in out)
        assert len(set(out)) == len(out)


def test_class_list_of_many_names_is_quick(sandbox):
    """The duplicate check is linear: 200,000 names (one repeated) answer at once."""
    folder = fresh(sandbox)
    names = [f"class{i}" for i in range(200_000)] + ["class7"]
    path = write(folder / "big.json", json.dumps(names).encode())
    out = call(images.read_class_list, path, names=[path])
    assert isinstance(out, DataError) and "class7" in str(out)


def _image(fmt: str, mode: str) -> bytes:
    rng = np.random.default_rng(0)
    shape = {"L": (9, 7), "RGB": (9, 7, 3), "RGBA": (9, 7, 4)}[mode]
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buf, format=fmt)
    return buf.getvalue()


IMAGES = {"png": _image("PNG", "RGBA"), "jpg": _image("JPEG", "RGB"),
          "gif": _image("GIF", "L"), "bmp": _image("BMP", "RGB"), "webp": _image("WEBP", "RGB"),
          "tiff": _image("TIFF", "RGB")}


@pytest.mark.filterwarnings("ignore:Tag data larger than file:UserWarning")  # Pillow's TIFF
@FUZZ
@given(ext=st.sampled_from(sorted(IMAGES)), channels=st.sampled_from([1, 3]), data=st.data())
def test_decode_image(sandbox, ext, channels, data):
    folder = fresh(sandbox)
    path = write(folder / f"image.{ext}", data.draw(corrupt(IMAGES[ext]), label=ext))
    out = unchanged(folder, images.decode_image, path, size=(5, 4), channels=channels,
                    names=[path])
    if not isinstance(out, Exception):
        assert out.shape == (5, 4, channels) and out.dtype == np.uint8


def test_decode_image_bomb(sandbox):
    """A PNG header claiming 100,000 x 100,000 pixels is a DataError, at once."""
    import struct
    import zlib

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    raw = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2,
                                                              0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    path = write(fresh(sandbox) / "bomb.png", raw)
    assert isinstance(call(images.decode_image, path, size=4, names=[path]), DataError)


CIFAR_FILES = {
    "train.bin": bytes([3, 30] + [7] * 3072 + [19, 99] + [8] * 3072),
    "test.bin": bytes([0, 0] + [9] * 3072),
    "fine_label_names.txt": "".join(f"fine{i}\n" for i in range(100)).encode(),
    "coarse_label_names.txt": "".join(f"coarse{i}\n" for i in range(20)).encode(),
}


@FUZZ
@given(which=st.sampled_from(sorted(CIFAR_FILES)), data=st.data())
def test_cifar100_binary_release(sandbox, which, data):
    folder = fresh(sandbox)
    for name, raw in CIFAR_FILES.items():
        write(folder / name, raw)
    path = write(folder / which, data.draw(corrupt(CIFAR_FILES[which]), label=which))
    out = unchanged(folder, benchmarks.read_cifar100, folder, names=[path])
    if not isinstance(out, Exception):
        n = len(out["images"])
        assert out["images"].shape == (n, 32, 32, 3) and out["fine"].shape == (n,)
        assert (out["fine"] < 100).all() and (out["coarse"] < 20).all()


CUB_FILES = {
    "classes.txt": b"1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n",
    "images.txt": b"1 001.Black_footed_Albatross/a.jpg\n2 002.Laysan_Albatross/b.jpg\n",
    "image_class_labels.txt": b"1 1\n2 2\n",
}


@FUZZ
@given(which=st.sampled_from(sorted(CUB_FILES)), data=st.data())
def test_cub_lists(sandbox, which, data):
    folder = fresh(sandbox)
    for name, raw in CUB_FILES.items():
        write(folder / name, raw)
    for rel in ("001.Black_footed_Albatross/a.jpg", "002.Laysan_Albatross/b.jpg"):
        write(folder / "images" / rel, IMAGES["jpg"])
    write(folder / which, data.draw(corrupt(CUB_FILES[which]), label=which))
    out = unchanged(folder, benchmarks.read_cub, folder, names=[folder])
    if not isinstance(out, Exception):
        assert all(f.is_file() and folder / "images" in f.parents
                   for files in out.values() for f in files)


# --- caches ------------------------------------------------------------------------------------

def _npy(array, **kwargs) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, **kwargs)
    return buf.getvalue()


def _npy_header(descr: str, shape: tuple) -> bytes:
    """A version 1.0 ``.npy`` header declaring ``shape`` (no data follows)."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


EMBEDDINGS = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
WRONG_NPY = [
    _npy(EMBEDDINGS.astype(np.float64)), _npy(EMBEDDINGS[:3]), _npy(EMBEDDINGS.T),
    _npy(np.asarray([{"a": 1}, None], object), allow_pickle=True),
    _npy_header("<f4", (4, 8)), _npy_header("<f4", (4, 10**12)),
    _npy_header("<f4", (4, 2**62)), _npy_header("|O", (4, 8)),
    _npz(embeddings=EMBEDDINGS), b"\x80\x04\x95" + b"\0" * 40, b"",
]


@FUZZ
@given(data=st.one_of(corrupt(_npy(EMBEDDINGS)), st.sampled_from(WRONG_NPY)))
def test_embedding_cache(sandbox, data):
    folder = fresh(sandbox)
    path = write(folder / "cache.npy", data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = unchanged(folder, read_cache, path, (4, 8))
    if out is None:
        assert any(issubclass(w.category, RuntimeWarning) and str(path) in str(w.message)
                   for w in caught)
    else:
        assert out.shape == (4, 8) and out.dtype == np.float32 and type(out) is np.ndarray
        # a header that parses the same, or changed pixels, cannot be told from the real one
        if len(data) != len(_npy(EMBEDDINGS)):
            pytest.fail("a cache file of another length was trusted")


@FUZZ
@given(data=st.one_of(corrupt(_npz(images=EMBEDDINGS, names=np.asarray(["a", "b"]))),
                      st.sampled_from(WRONG_NPY + WRONG_NPZ)))
def test_load_npz(sandbox, data):
    folder = fresh(sandbox)
    path = write(folder / "entry.npz", data)
    out = unchanged(folder, cache.load_npz, path)
    assert out is None or (isinstance(out, dict)
                           and all(isinstance(v, np.ndarray) for v in out.values()))


@FEW
@given(which=st.sampled_from(["images.npy", "meta.json"]), data=st.data())
def test_cached_array_entry(sandbox, which, data):
    """A damaged cache entry (either file) is rebuilt: the result is the one ``fill`` writes."""
    expected = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)

    def fill(out):
        out[...] = expected
        return {"names": ["a", "b"]}

    name = f"fuzz-{len(list((sandbox / 'cache').iterdir()))}"
    first = call(cache.cached_array, name, expected.shape, np.uint8, fill)
    np.testing.assert_array_equal(first[0], expected)
    entry = sandbox / "cache" / name / which
    valid = entry.read_bytes()
    if which == "meta.json":
        bad = data.draw(json_bytes(json.loads(valid)), label=which)
    else:
        bad = data.draw(st.one_of(corrupt(valid), st.sampled_from(WRONG_NPY)), label=which)
    entry.write_bytes(bad)
    # The pixels are not hashed (cache.py): a changed byte among them, or a header that parses
    # the same, the length kept, is read back as it is; a changed record or length is rebuilt.
    rebuilt = which == "meta.json" or len(bad) != len(valid)
    for mmap in (None, True, False):
        array, meta = call(cache.cached_array, name, expected.shape, np.uint8, fill, mmap=mmap)
        assert array.shape == expected.shape and array.dtype == np.uint8
        if rebuilt:
            np.testing.assert_array_equal(array, expected)
        assert meta == {"names": ["a", "b"]}
    assert sorted(p.name for p in (sandbox / "cache").iterdir() if p.name.startswith(
        (name, f".{name}"))) == [name]


# --- configs -----------------------------------------------------------------------------------

FIELDS = [f for f in json.loads(Config().to_json())]


def config_text() -> st.SearchStrategy[str]:
    valid = json.loads(Config().to_json())
    return st.one_of(
        mutate_json(valid).map(json.dumps),
        corrupt(Config().to_json().encode()).map(lambda b: b.decode("utf-8", "replace")),
        st.sampled_from(["", "[" * 100_000, "9" * 5000, "null", "[]", '"steps"', "NaN",
                         json.dumps({**valid, "steps": 10**5000 // 10**4990}),
                         Config().to_json().replace("2000", "9" * 5000)]))


@FUZZ
@given(text_=config_text())
def test_config_from_json(sandbox, text_):
    out = call(Config.from_json, text_, allowed=(ValueError,), names=["config"] + FIELDS)
    if isinstance(out, Exception):
        return
    checked = call(out.check, allowed=(ValueError,), names=FIELDS)
    if not isinstance(checked, Exception):
        assert Config.from_json(checked.to_json()) == checked


OVERRIDE_VALUES = st.one_of(st.text(max_size=10), st.sampled_from([
    "", "nan", "inf", "-inf", "1e999", "9" * 5000, "0x10", "1_000", "\u0661\u0662", "true",
    "0", "-1", "3.5", " 7 ", "=", "\x00", "\udcff"]))


@FUZZ
@given(items=st.lists(st.tuples(st.one_of(st.sampled_from(FIELDS), st.text(max_size=6)),
                                OVERRIDE_VALUES, st.booleans()), min_size=1, max_size=4))
def test_make_config_overrides(sandbox, items):
    overrides = [f"{k}={v}" if eq else f"{k}{v}" for k, v, eq in items]
    out = call(make_config, None, overrides, allowed=(ValueError,), names=FIELDS + ["override"])
    if isinstance(out, Exception):
        return
    call(out.check, allowed=(ValueError,), names=FIELDS)


# --- a folder where a file should be ------------------------------------------------------------

READERS = {
    "vinyals": ("omniglot/splits/vinyals/val.txt",
                lambda root, path: omniglot.read_vinyals_split("val", root)),
    "omniglot zip": ("omniglot/images_background.zip",
                     lambda root, path: omniglot.load_set("background", root=root,
                                                          download_missing=False)),
    "clinc150": ("text/clinc150/data_full.json", lambda root, path: text.load_clinc150(root=root)),
    "banking77": ("text/banking77/categories.json",
                  lambda root, path: text.load_banking77(root=root)),
    "read_texts": ("texts.csv", lambda root, path: tables.read_texts(path)),
    "mini-imagenet csv": ("train.csv", lambda root, path: benchmarks.read_mini_imagenet_csv(path)),
    "class list": ("train.json", lambda root, path: images.read_class_list(path)),
    "image": ("image.png", lambda root, path: images.decode_image(path, size=4)),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_folder_where_a_file_should_be(sandbox, reader):
    name, read = READERS[reader]
    root = fresh(sandbox)
    (root / name).mkdir(parents=True)
    out = unchanged(root, read, root, root / name, names=[root / name])
    assert isinstance(out, DataError)
