"""Omniglot (Lake et al. 2015) from its upstream zip files.

Reads ``images_background.zip`` / ``images_evaluation.zip`` (and the two ``small`` zips) as shipped
at github.com/brendenlake/omniglot (python/), into a class-indexed uint8 array
``[num_characters, 20, H, W, 1]`` with ink = 255 and background = 0 (the upstream PNGs are 1-bit,
ink black), either 105x105 as shipped or downsampled with Pillow's antialiasing LANCZOS filter
(28x28 is the size of MAML and prototypical networks). Decoded arrays are cached on disk, keyed by
the sha256 of the zip and the image size, so a second load does not decode 32,460 PNGs again.

Splits: ``vinyals`` (Vinyals et al. 2016: 4112 / 688 / 1692 classes, each character in four
rotations as four classes, from ``splits/vinyals/*.txt``), ``maml`` (Finn et al. 2017: 1200
characters for meta-training, the remaining 423 for testing; rotations by multiples of 90 degrees
are applied as task augmentation while sampling), ``lake`` (background / evaluation alphabets).
"""

from __future__ import annotations

import io
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from smallsample.data.cache import load_npz, save_npz
from smallsample.data.files import (
    DataError,
    cache_dir,
    data_root,
    download,
    sha256_file,
)
from smallsample.data.text import read_text

UPSTREAM = "https://github.com/brendenlake/omniglot/raw/master/python/"
# Upstream sha256 and size (the sets in ../shared/data are re-packed pixel-exact copies with other
# zip bytes; local files are validated by content, downloads by checksum).
UPSTREAM_FILES = {
    "images_background.zip": (
        "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640", 9_464_212),
    "images_evaluation.zip": (
        "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee", 6_462_886),
    "images_background_small1.zip": (
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4", None),
    "images_background_small2.zip": (
        "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f", None),
    "all_runs.zip": ("437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325", None),
}

BACKGROUND = {
    "Alphabet_of_the_Magi": 20, "Anglo-Saxon_Futhorc": 29, "Arcadian": 26, "Armenian": 41,
    "Asomtavruli_(Georgian)": 40, "Balinese": 24, "Bengali": 46,
    "Blackfoot_(Canadian_Aboriginal_Syllabics)": 14, "Braille": 26, "Burmese_(Myanmar)": 34,
    "Cyrillic": 33, "Early_Aramaic": 22, "Futurama": 26, "Grantha": 43, "Greek": 24,
    "Gujarati": 48, "Hebrew": 22, "Inuktitut_(Canadian_Aboriginal_Syllabics)": 16,
    "Japanese_(hiragana)": 52, "Japanese_(katakana)": 47, "Korean": 40, "Latin": 26,
    "Malay_(Jawi_-_Arabic)": 40, "Mkhedruli_(Georgian)": 41, "N_Ko": 33,
    "Ojibwe_(Canadian_Aboriginal_Syllabics)": 14, "Sanskrit": 42, "Syriac_(Estrangelo)": 23,
    "Tagalog": 17, "Tifinagh": 55,
}
EVALUATION = {
    "Angelic": 20, "Atemayar_Qelisayer": 26, "Atlantean": 26, "Aurek-Besh": 26, "Avesta": 26,
    "Ge_ez": 26, "Glagolitic": 45, "Gurmukhi": 45, "Kannada": 41, "Keble": 26, "Malayalam": 47,
    "Manipuri": 40, "Mongolian": 30, "Old_Church_Slavonic_(Cyrillic)": 45, "Oriya": 46,
    "Sylheti": 28, "Syriac_(Serto)": 23, "Tengwar": 25, "Tibetan": 42, "ULOG": 26,
}
SMALL1 = {k: BACKGROUND[k] for k in ("Balinese", "Early_Aramaic", "Greek", "Korean", "Latin")}
SMALL2 = {k: BACKGROUND[k] for k in ("Greek", "Japanese_(katakana)", "Latin", "Sanskrit",
                                     "Tagalog")}
SETS = {"background": ("images_background.zip", BACKGROUND),
        "evaluation": ("images_evaluation.zip", EVALUATION),
        "background_small1": ("images_background_small1.zip", SMALL1),
        "background_small2": ("images_background_small2.zip", SMALL2)}
DRAWINGS = 20
SOURCE_SIZE = 105
CACHE_VERSION = 1
_PNG = re.compile(r"^[^/]+/(?P<alphabet>[^/]+)/(?P<character>character\d+)/(?P<file>\d+_\d+)\.png$")


class ClassIndexed(NamedTuple):
    """A class-indexed image set.

    Attributes:
      images: uint8 ``[num_classes, per_class, H, W, C]``.
      names: ``num_classes`` class names (``ALPHABET/characterNN``, with ``/rotDDD`` for rotated
        classes).
    """

    images: np.ndarray
    names: list[str]

    @property
    def num_classes(self) -> int:
        return self.images.shape[0]

    def select(self, names: list[str]) -> ClassIndexed:
        """The classes ``names`` (``ALPHABET/characterNN`` or ``.../rotDDD``) in that order."""
        index = {n: i for i, n in enumerate(self.names)}
        rows, turns = [], []
        for name in names:
            base, rot = name, 0
            m = re.fullmatch(r"(.+)/rot(\d{3})", name)
            if m:
                base, rot = m.group(1), int(m.group(2))
                if rot % 90:
                    raise ValueError(f"class {name!r}: rotation must be a multiple of 90")
            if base not in index:
                raise DataError(f"class {base!r} (from {name!r}) is not in this Omniglot set")
            rows.append(index[base])
            turns.append(rot // 90)
        images = self.images[np.asarray(rows, dtype=np.int64)]
        turns = np.asarray(turns)
        for k in (1, 2, 3):  # counter-clockwise, as torchvision's rotate in the protonet code
            sel = turns == k
            if sel.any():
                images[sel] = np.rot90(images[sel], k, axes=(2, 3))
        return ClassIndexed(images, list(names))


def locate(name: str, root=None, *, download_missing: bool = True) -> Path:
    """Path of the upstream file ``name`` under ``<root>/omniglot/``, downloading it if missing."""
    path = data_root(root) / "omniglot" / name
    if path.is_file():
        return path
    if path.exists():
        raise DataError(f"{path} is not a file: put the upstream file {UPSTREAM}{name} there")
    if not download_missing:
        raise DataError(f"{path} is missing. Place the upstream file {UPSTREAM}{name} there, "
                        f"or set SMALLSAMPLE_DATA to a folder holding omniglot/{name}.")
    sha, size = UPSTREAM_FILES[name]
    url = os.environ.get("SMALLSAMPLE_OMNIGLOT_URL", UPSTREAM).rstrip("/") + "/" + name
    return download(url, path, sha256=sha, size=size)


# What zipfile raises for a damaged archive besides BadZipFile: zlib.error (deflate stream),
# RuntimeError (a member flagged encrypted), NotImplementedError (unknown compression method),
# EOFError / OSError (short or unreadable), ValueError (bad sizes or offsets, a bad name).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError, EOFError,
               OSError, ValueError)


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        z = zipfile.ZipFile(path)
        bad = z.testzip()
    except _ZIP_ERRORS as e:
        raise DataError(f"{path} is not a readable zip file ({type(e).__name__}: {e}); it may "
                        f"be truncated or corrupt: replace it with the upstream file "
                        f"{UPSTREAM}{path.name}") from e
    if bad is not None:
        z.close()
        raise DataError(f"{path}: member {bad} fails its CRC check; the zip is corrupt")
    return z


def _read_member(z: zipfile.ZipFile, path: Path, member: str) -> bytes:
    try:
        return z.read(member)
    except _ZIP_ERRORS as e:
        raise DataError(f"{path}:{member}: unreadable zip member ({type(e).__name__}: "
                        f"{e})") from e


def _decode(data: bytes, where: str, size: int) -> np.ndarray:
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as e:  # PIL raises several types for bad images
        raise DataError(f"{where}: not a readable PNG ({e})") from e
    if im.size != (SOURCE_SIZE, SOURCE_SIZE):
        raise DataError(f"{where}: image is {im.size[0]}x{im.size[1]}, expected "
                        f"{SOURCE_SIZE}x{SOURCE_SIZE}")
    ink = Image.fromarray(255 - np.asarray(im.convert("L"), dtype=np.uint8))
    if size != SOURCE_SIZE:
        ink = ink.resize((size, size), Image.LANCZOS)
    return np.asarray(ink, dtype=np.uint8)


def _read_set(path: Path, expected: dict[str, int], size: int) -> ClassIndexed:
    with _open_zip(path) as z:
        return _read_members(z, path, expected, size)


def _read_members(z: zipfile.ZipFile, path: Path, expected: dict[str, int],
                  size: int) -> ClassIndexed:
    groups: dict[tuple[str, str], list[str]] = {}
    for member in z.namelist():
        m = _PNG.match(member)
        if m:
            groups.setdefault((m["alphabet"], m["character"]), []).append(member)
    found: dict[str, int] = {}
    for alphabet, _ in groups:
        found[alphabet] = found.get(alphabet, 0) + 1
    missing = sorted(set(expected) - set(found))
    if missing:
        raise DataError(f"{path}: alphabet(s) missing: {', '.join(missing)}")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise DataError(f"{path}: unexpected alphabet(s): {', '.join(extra)}")
    for alphabet, count in expected.items():
        if found[alphabet] != count:
            raise DataError(f"{path}: alphabet {alphabet} has {found[alphabet]} characters, "
                            f"expected {count}")
    keys = sorted(groups)
    images = np.empty((len(keys), DRAWINGS, size, size, 1), np.uint8)
    for i, key in enumerate(keys):
        members = sorted(groups[key])
        if len(members) != DRAWINGS:
            raise DataError(f"{path}: {key[0]}/{key[1]} has {len(members)} drawings, expected "
                            f"{DRAWINGS}")
        for j, member in enumerate(members):
            images[i, j, ..., 0] = _decode(_read_member(z, path, member), f"{path}:{member}",
                                           size)
    return ClassIndexed(images, [f"{a}/{c}" for a, c in keys])


def load_set(which: str = "background", *, size: int = 28, root=None,
             download_missing: bool = True, use_cache: bool = True) -> ClassIndexed:
    """One upstream Omniglot set as a :class:`ClassIndexed` array, cached after the first read.

    Args:
      which: ``'background'``, ``'evaluation'``, ``'background_small1'`` or
        ``'background_small2'``.
      size: output height and width (105 = as shipped).
      root: data folder (see :mod:`smallsample.data.files`).
    """
    if which not in SETS:
        raise ValueError(f"unknown Omniglot set {which!r}; choose from {sorted(SETS)}")
    if not isinstance(size, int) or not 1 <= size <= SOURCE_SIZE:
        raise ValueError(f"size must be an int in [1, {SOURCE_SIZE}], got {size!r}")
    filename, expected = SETS[which]
    path = locate(filename, root, download_missing=download_missing)
    if not use_cache:
        return _read_set(path, expected, size)
    digest = sha256_file(path)
    cached = cache_dir() / f"omniglot-{which}-{size}-v{CACHE_VERSION}-{digest[:16]}.npz"
    arrays = load_npz(cached)
    if arrays is not None and _cache_fits(arrays, (sum(expected.values()), DRAWINGS, size)):
        return ClassIndexed(arrays["images"], [str(n) for n in arrays["names"]])
    result = _read_set(path, expected, size)
    save_npz(cached, images=result.images, names=np.asarray(result.names))
    return result


def _cache_fits(arrays: dict[str, np.ndarray], shape: tuple[int, int, int]) -> bool:
    """Whether a cached entry holds what :func:`_read_set` gives (else it is rebuilt)."""
    images, names = arrays.get("images"), arrays.get("names")
    n, drawings, size = shape
    return (images is not None and names is not None and images.dtype == np.uint8
            and images.shape == (n, drawings, size, size, 1) and names.dtype.kind == "U"
            and names.shape == (n,))


def load_all(*, size: int = 28, root=None, download_missing: bool = True) -> ClassIndexed:
    """Background and evaluation sets together: 1623 characters (964 + 659)."""
    bg = load_set("background", size=size, root=root, download_missing=download_missing)
    ev = load_set("evaluation", size=size, root=root, download_missing=download_missing)
    return ClassIndexed(np.concatenate([bg.images, ev.images]), bg.names + ev.names)


def read_vinyals_split(part: str, root=None) -> list[str]:
    """Class names of the Vinyals split ``part`` (train, val, test, trainval)."""
    if part not in ("train", "val", "test", "trainval"):
        raise ValueError(f"unknown Vinyals split part {part!r}")
    path = data_root(root) / "omniglot" / "splits" / "vinyals" / f"{part}.txt"
    if not path.is_file():
        raise DataError(f"{path} is missing: it ships with the prototypical networks code "
                        f"(github.com/jakesnell/prototypical-networks, data/omniglot/splits/"
                        f"vinyals/{part}.txt)")
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


MAML_TRAIN_CHARACTERS = 1200
MAML_SPLIT_SEED = 1


def load_split(split: str = "vinyals", part: str = "train", *, size: int = 28,
               root=None, download_missing: bool = True) -> ClassIndexed:
    """A standard split of Omniglot.

    - ``vinyals``: parts ``train`` / ``val`` / ``test`` / ``trainval`` (rotations are classes).
    - ``maml``: ``train`` (1200 characters) / ``test`` (423): the characters of both sets sorted by
      name and permuted with ``numpy.random.default_rng(1)``; train with ``rotate=True`` sampling.
    - ``lake``: ``background`` (964) / ``evaluation`` (659).
    """
    if split == "lake":
        if part not in ("background", "evaluation"):
            raise ValueError(f"lake split parts are 'background' and 'evaluation', got {part!r}")
        return load_set(part, size=size, root=root, download_missing=download_missing)
    full = load_all(size=size, root=root, download_missing=download_missing)
    if split == "vinyals":
        return full.select(read_vinyals_split(part, root))
    if split == "maml":
        if part not in ("train", "test"):
            raise ValueError(f"maml split parts are 'train' and 'test', got {part!r}")
        order = np.random.default_rng(MAML_SPLIT_SEED).permutation(sorted(full.names))
        names = order[:MAML_TRAIN_CHARACTERS] if part == "train" else \
            order[MAML_TRAIN_CHARACTERS:]
        return full.select([str(n) for n in names])
    raise ValueError(f"unknown split {split!r}; choose 'vinyals', 'maml' or 'lake'")
