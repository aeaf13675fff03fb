"""Which data sources are under a data folder, and whether they read: ``smallsample data``.

One table, :data:`SOURCES`, says for each source where it looks (``<root>/<folder>``, the folder
:func:`smallsample.registry.load_data` reads, or a folder given with ``path``), what files it
expects, a cheap presence check (file names only, nothing opened) with a one-line hint of what to
put where when it is missing, and a verification that reads every part through the loaders
training uses (so every image is decoded, and cached for training afterwards) and reports classes
x examples per part, or the loader's :class:`~smallsample.data.files.DataError` verbatim.
Prepared TensorFlow Datasets sets found under a TFDS data folder are listed too
(:func:`tfds_sources`); verifying them needs the ``[tfds]`` extra.

A missing source is not an error (every source is optional; Omniglot is downloaded on first
use): only a source that is present and fails to read is. :func:`main` (``smallsample data``)
exits with 1 when a verified source fails, when the one source asked for with ``--source`` is
missing, or when no source at all is present; else 0.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from smallsample.data.files import DataError, data_root

PARTS = ("train", "val", "test")


class Source(NamedTuple):
    """A data source.

    Attributes:
      name: as ``smallsample data --source`` names it (the ``dataset=`` value where there is one).
      folder: where it looks, relative to the data folder.
      expects: the files it reads, one line.
      missing: ``missing(root, folder) -> None`` when present, else the hint of what to put
        where (file names only: nothing is opened).
      verify: ``verify(root, folder, size, progress) -> str``: reads every part through the
        training loaders and summarises them (raises what the loaders raise).
      files: ``files(root, folder) -> [paths]``: the expected files that are there (listed).
    """

    name: str
    folder: str
    expects: str
    missing: Callable[[Path, Path], str | None]
    verify: Callable[[Path, Path, int | None, bool], str]
    files: Callable[[Path, Path], list[Path]]


class Status(NamedTuple):
    """One source's line: ``state`` is ``present``, ``missing``, ``ok`` or ``FAILED``."""

    name: str
    state: str
    detail: str
    folder: Path

    def line(self) -> str:
        return f"{self.name:<16} {self.state}: {self.detail}"


def _existing(folder: Path, names: Sequence[str]) -> list[Path]:
    return [folder / n for n in names if (folder / n).exists()]


def _sizes(image_set) -> str:
    """``C x K`` of a class-indexed set, with the range of the class sizes before sampling."""
    images = image_set.images
    text = f"{images.shape[0]} x {images.shape[1]}"
    counts = getattr(image_set, "counts", None)
    if counts is not None and len(counts) and counts.min() != counts.max():
        text += f" (of {int(counts.min())}-{int(counts.max())})"
    return text


def _parts(load: Callable[[str], object], parts: Sequence[str] = PARTS) -> str:
    sets = {p: load(p) for p in parts}
    shape = "x".join(str(s) for s in next(iter(sets.values())).images.shape[2:])
    return ", ".join(f"{p} {_sizes(s)}" for p, s in sets.items()) + f" ({shape} uint8)"


# --- Omniglot -------------------------------------------------------------------------------------

_OMNIGLOT_REQUIRED = ("images_background.zip", "images_evaluation.zip")
_OMNIGLOT_FILES = (*_OMNIGLOT_REQUIRED, "images_background_small1.zip",
                   "images_background_small2.zip", "all_runs.zip", "splits/vinyals/train.txt",
                   "splits/vinyals/val.txt", "splits/vinyals/test.txt",
                   "splits/vinyals/trainval.txt")


def _omniglot_missing(root: Path, folder: Path) -> str | None:
    absent = [n for n in _OMNIGLOT_REQUIRED if not (folder / n).is_file()]
    if not absent:
        return None
    return (f"put {' and '.join(absent)} (github.com/brendenlake/omniglot, python/) in {folder}/ "
            f"(or let `smallsample train` download them)")


def _omniglot_verify(root: Path, folder: Path, size: int | None, progress: bool) -> str:
    from smallsample.data import lake, omniglot  # noqa: PLC0415

    size = size or 28
    sets = [f"{w} {_sizes(omniglot.load_set(w, size=size, root=root, download_missing=False))}"
            for w in ("background", "evaluation")]
    out = ", ".join(sets)
    if (folder / "splits" / "vinyals").is_dir():
        out += "; vinyals " + ", ".join(
            f"{p} {_sizes(omniglot.load_split('vinyals', p, size=size, root=root))}"
            for p in PARTS)
    out += "; maml " + ", ".join(
        f"{p} {_sizes(omniglot.load_split('maml', p, size=size, root=root))}"
        for p in ("train", "test"))
    if (folder / "all_runs.zip").is_file():
        runs = lake.load_runs(size=size, root=root, download_missing=False)
        out += f"; Lake's {len(runs.train)} one-shot runs"
    return out + f" ({size}x{size}x1 uint8)"


# --- text sets ------------------------------------------------------------------------------------

def _text_missing(files: Sequence[str], upstream: str):
    def missing(root: Path, folder: Path) -> str | None:
        absent = [n for n in files if not (folder / n).is_file()]
        if not absent:
            return None
        return f"put {', '.join(absent)} ({upstream}) in {folder}/"

    return missing


def _text_summary(sets: dict) -> str:
    first = next(iter(sets.values()))
    return f"{first.num_classes} intents; " + ", ".join(
        f"{split} {len(s.texts)} texts" for split, s in sets.items())


def _clinc_verify(root: Path, folder: Path, size: int | None, progress: bool) -> str:
    from smallsample.data.text import load_clinc150  # noqa: PLC0415

    return _text_summary(load_clinc150(root=root))


def _banking_verify(root: Path, folder: Path, size: int | None, progress: bool) -> str:
    from smallsample.data.text import load_banking77  # noqa: PLC0415

    return _text_summary(load_banking77(root=root))


# --- image benchmarks -----------------------------------------------------------------------------

def _bench_verify(name: str):
    def verify(root: Path, folder: Path, size: int | None, progress: bool) -> str:
        from smallsample.data.benchmarks import load_benchmark  # noqa: PLC0415

        opts = {"size": size} if size else {}
        return _parts(lambda p: load_benchmark(name, p, path=folder, root=root,
                                               progress=progress, **opts))

    return verify


def _mini_missing(root: Path, folder: Path) -> str | None:
    if (folder / "images").is_dir() or any((folder / p).is_dir() for p in PARTS):
        return None
    csvs = [d for d in (folder, root / "splits" / "mini-imagenet")
            if all((d / f"{p}.csv").is_file() for p in PARTS)]
    if csvs:
        return (f"bring images/ beside the CSVs: {folder}/images/ holding the 60,000 JPEGs that "
                f"{csvs[0]}/{{train,val,test}}.csv name (ImageNet terms: not redistributed)")
    return (f"put Ravi & Larochelle's images/ and {{train,val,test}}.csv in {folder}/, or class "
            f"folders {folder}/{{train,val,test}}/SYNSET/*.jpg")


def _tiered_missing(root: Path, folder: Path) -> str | None:
    if any((folder / p).is_dir() for p in PARTS):
        return None
    return (f"put tieredImageNet's class folders in {folder}/{{train,val,test}}/CLASS/*.jpg "
            f"(351 / 97 / 160 classes)")


def _split_lists(root: Path, benchmark: str) -> str | None:
    absent = [p for p in PARTS if not (root / "splits" / benchmark / f"{p}.json").is_file()]
    if absent:
        return (f"put the class lists {', '.join(f'{p}.json' for p in absent)} "
                f"(torchmeta's assets) in {root / 'splits' / benchmark}/")
    return None


def _cifar_missing(benchmark: str):
    def missing(root: Path, folder: Path) -> str | None:
        if not all((folder / n).is_file() for n in ("train.bin", "test.bin")):
            return (f"extract CIFAR-100's binary version (cifar-100-binary.tar.gz, "
                    f"www.cs.toronto.edu/~kriz/cifar.html; not the python pickles) so that "
                    f"{folder}/train.bin and test.bin exist")
        return _split_lists(root, benchmark)

    return missing


def _cub_missing(root: Path, folder: Path) -> str | None:
    if not ((folder / "images.txt").is_file() and (folder / "images").is_dir()):
        return (f"extract CUB_200_2011.tgz (Caltech-UCSD Birds-200-2011) so that "
                f"{folder}/images.txt and {folder}/images/ exist")
    return _split_lists(root, "cub")


def _folder_missing(root: Path, folder: Path) -> str | None:
    if folder.is_dir():
        return None
    return f"{folder} is not a folder (expected a folder of class folders CLASS/IMAGE)"


def _folder_verify(root: Path, folder: Path, size: int | None, progress: bool) -> str:
    from smallsample.data.images import folder_split  # noqa: PLC0415

    return _parts(lambda p: folder_split(folder, p, size=size or 84, progress=progress))


def _listed(names: Sequence[str]):
    return lambda root, folder: _existing(folder, names)


def _with_splits(names: Sequence[str], benchmark: str):
    def files(root: Path, folder: Path) -> list[Path]:
        return _existing(folder, names) + _existing(root / "splits" / benchmark,
                                                    [f"{p}.json" for p in PARTS])

    return files


def _mini_files(root: Path, folder: Path) -> list[Path]:
    return (_existing(folder, ["images", "train", "val", "test", "train.csv", "val.csv",
                               "test.csv"])
            + _existing(root / "splits" / "mini-imagenet", [f"{p}.csv" for p in PARTS]))


SOURCES: tuple[Source, ...] = (
    Source("omniglot", "omniglot", "images_background.zip, images_evaluation.zip (required); "
           "all_runs.zip, splits/vinyals/{train,val,test,trainval}.txt",
           _omniglot_missing, _omniglot_verify, _listed(_OMNIGLOT_FILES)),
    Source("clinc150", "text/clinc150", "data_full.json (domains.json)",
           _text_missing(["data_full.json"], "github.com/clinc/oos-eval, data/"),
           _clinc_verify, _listed(["data_full.json", "domains.json"])),
    Source("banking77", "text/banking77", "train.csv, test.csv, categories.json",
           _text_missing(["train.csv", "test.csv", "categories.json"],
                         "github.com/PolyAI-LDN/task-specific-datasets, banking_data/"),
           _banking_verify, _listed(["train.csv", "test.csv", "categories.json"])),
    Source("mini-imagenet", "mini-imagenet", "images/ with {train,val,test}.csv (here or in "
           "splits/mini-imagenet/), or {train,val,test}/SYNSET/*.jpg",
           _mini_missing, _bench_verify("mini-imagenet"), _mini_files),
    Source("tiered-imagenet", "tiered-imagenet", "{train,val,test}/CLASS/*.jpg",
           _tiered_missing, _bench_verify("tiered-imagenet"),
           _listed(["train", "val", "test"])),
    Source("cifar-fs", "cifar-100-binary", "train.bin, test.bin, fine_label_names.txt, "
           "coarse_label_names.txt; splits/cifar-fs/{train,val,test}.json",
           _cifar_missing("cifar-fs"), _bench_verify("cifar-fs"),
           _with_splits(["train.bin", "test.bin"], "cifar-fs")),
    Source("fc100", "cifar-100-binary", "train.bin, test.bin, fine_label_names.txt, "
           "coarse_label_names.txt; splits/fc100/{train,val,test}.json",
           _cifar_missing("fc100"), _bench_verify("fc100"),
           _with_splits(["train.bin", "test.bin"], "fc100")),
    Source("cub", "CUB_200_2011", "images.txt, image_class_labels.txt, classes.txt, images/; "
           "splits/cub/{train,val,test}.json",
           _cub_missing, _bench_verify("cub"),
           _with_splits(["images.txt", "image_class_labels.txt", "classes.txt", "images"],
                        "cub")),
)
"""The sources looked for under every data folder, in the order listed."""

FOLDER = Source("folder", ".", "CLASS/IMAGE files (your own; checked only with --source folder "
                "--path DIR)", _folder_missing, _folder_verify,
                lambda root, folder: [folder] if folder.is_dir() else [])
"""A user's folder of class folders (``dataset=folder data_path=DIR``): only with ``path``."""


# --- TFDS -----------------------------------------------------------------------------------------

def find_prepared(tfds_dir: str | os.PathLike) -> list[Path]:
    """The prepared builder folders under a TFDS data folder (``NAME/VERSION`` or
    ``NAME/CONFIG/VERSION`` holding ``dataset_info.json``), sorted; ``downloads/`` is skipped."""
    tfds_dir = Path(tfds_dir)
    if not tfds_dir.is_dir():
        return []
    found = {p.parent for pattern in ("*/*/dataset_info.json", "*/*/*/dataset_info.json")
             for p in tfds_dir.glob(pattern)
             if p.relative_to(tfds_dir).parts[0] != "downloads"}
    return sorted(found)


def _tfds_installed() -> bool:
    try:
        import tensorflow_datasets  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def _tfds_verify(root: Path, folder: Path, size: int | None, progress: bool) -> str:
    from smallsample.data.tfds import load_tfds  # noqa: PLC0415

    info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    splits = [s["name"] for s in info.get("splits", []) if isinstance(s, dict) and "name" in s]
    if not splits:
        raise DataError(f"{folder / 'dataset_info.json'}: lists no splits")
    sets = {}
    for split in splits:
        try:  # at the stored size when every image has it, else resized as training would
            sets[split] = load_tfds(folder, split=split, size=size, progress=progress)
        except DataError as e:
            if size is not None or "pass size=" not in str(e):
                raise
            sets[split] = load_tfds(folder, split=split, size=84, progress=progress)
    shape = "x".join(str(s) for s in next(iter(sets.values())).images.shape[2:])
    return ", ".join(f"{p} {_sizes(s)}" for p, s in sets.items()) + f" ({shape} uint8)"


def tfds_sources(tfds_dir: str | os.PathLike) -> list[Source]:
    """One source per prepared TFDS set under ``tfds_dir``, named ``tfds:NAME[/CONFIG]/VERSION``
    (the builder folder, relative to ``tfds_dir``); their ``folder`` is absolute."""
    out = []
    for folder in find_prepared(tfds_dir):
        rel = folder.relative_to(tfds_dir).as_posix()
        out.append(Source(f"tfds:{rel}", str(folder), "dataset_info.json and ArrayRecord files "
                          "(prepared with file_format='array_record')",
                          lambda root, f: None, _tfds_verify,
                          lambda root, f: [f / "dataset_info.json"]))
    return out


# --- checking -------------------------------------------------------------------------------------

def _describe(paths: list[Path], root: Path) -> str:
    def rel(p: Path) -> str:
        try:
            text = p.relative_to(root).as_posix()
        except ValueError:
            text = str(p)
        return text + ("/" if p.is_dir() else "")

    return ", ".join(rel(p) for p in paths)


def check(source: Source, root: str | os.PathLike | None = None, *,
          path: str | os.PathLike | None = None, verify: bool = False, size: int | None = None,
          progress: bool = False) -> Status:
    """The status of ``source`` under the data folder ``root`` (default
    :func:`~smallsample.data.files.data_root`), or in ``path`` when given.

    ``verify``: read every part through the training loaders (decoding every image, cached
    afterwards) at ``size`` (default: each loader's own, the presets' sizes). A failure is
    ``FAILED`` with the loader's message verbatim; a missing source is ``missing`` with its hint,
    and is not read.
    """
    root = data_root(root)
    folder = Path(path).expanduser() if path is not None else root / source.folder
    hint = source.missing(root, folder)
    if hint is not None:
        return Status(source.name, "missing", hint, folder)
    if not verify:
        return Status(source.name, "present", _describe(source.files(root, folder), root), folder)
    if source.name.startswith("tfds:") and not _tfds_installed():
        return Status(source.name, "present", f"{folder} (not verified: tensorflow-datasets is "
                      f"not installed; pip install 'smallsample[tfds]')", folder)
    try:
        return Status(source.name, "ok", source.verify(root, folder, size, progress), folder)
    except Exception as e:  # any reason a source does not read is reported, and the rest go on
        detail = str(e) if isinstance(e, DataError) else f"{type(e).__name__}: {e}"
        return Status(source.name, "FAILED", detail, folder)


def sources(*, tfds_dir: str | os.PathLike | None = None) -> list[Source]:
    """:data:`SOURCES`, then the prepared TFDS sets under ``tfds_dir`` (default: TFDS's own
    data folder, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``, when it exists)."""
    if tfds_dir is None:
        tfds_dir = Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()
    return [*SOURCES, *tfds_sources(tfds_dir)]


def inventory(root: str | os.PathLike | None = None, *, names: Sequence[str] | None = None,
              path: str | os.PathLike | None = None, tfds_dir: str | os.PathLike | None = None,
              verify: bool = False, size: int | None = None, progress: bool = False,
              report: Callable[[Status], None] | None = None) -> list[Status]:
    """:func:`check` of every source (or of those in ``names``; ``folder`` and a TFDS set may be
    named), each passed to ``report`` as soon as it is known.

    Raises:
      ValueError: an unknown name (listing the known ones), or ``path`` with other than one name.
    """
    table = {s.name: s for s in sources(tfds_dir=tfds_dir)}
    table[FOLDER.name] = FOLDER
    if names is None:
        chosen = [s for s in table.values() if s is not FOLDER]
    else:
        unknown = [n for n in names if n not in table]
        if unknown:
            raise ValueError(f"unknown data source {unknown[0]!r}; known: "
                             f"{', '.join(table)}")
        chosen = [table[n] for n in names]
    if path is not None and len(chosen) != 1:
        raise ValueError("--path checks one source: give it with --source NAME")
    if FOLDER in chosen and path is None:
        raise ValueError("--source folder needs --path DIR (a folder of class folders)")
    out = []
    for source in chosen:
        status = check(source, root, path=path, verify=verify, size=size, progress=progress)
        out.append(status)
        if report is not None:
            report(status)
    return out


def exit_code(statuses: Sequence[Status], *, asked: bool) -> int:
    """1 when a source FAILED, when a source asked for by name is missing, or when none is
    present; else 0."""
    if any(s.state == "FAILED" for s in statuses):
        return 1
    if asked and any(s.state == "missing" for s in statuses):
        return 1
    return 0 if any(s.state != "missing" for s in statuses) else 1


# --- the command ----------------------------------------------------------------------------------

HELP = ("Lists the data sources under the data folder (present / missing, with what to put "
        "where), and with --verify reads each present one through the training loaders "
        "(decoding every image, cached for training afterwards): ok with classes x examples "
        "per part, or FAILED with the reason. Every source is optional: a missing one is not a "
        "failure. Exit status 1 when a verified source fails, when the source named by --source "
        "is missing, or when no source is present at all; else 0.")


def cmd_data(args) -> int:
    """``smallsample data``: prints one line per source; the exit status of :func:`exit_code`."""
    if args.size is not None and args.size < 1:
        raise ValueError(f"--size {args.size} must be a positive number of pixels")
    root = data_root(args.data)
    names = args.source or None
    header = [f"data folder: {root}"]  # printed with the first line: not before a usage error

    def report(status: Status) -> None:
        while header:
            print(header.pop())
        print(status.line(), flush=True)

    statuses = inventory(root, names=names, path=args.path, tfds_dir=args.tfds_dir,
                         verify=args.verify, size=args.size, progress=not args.no_progress,
                         report=report)
    if not args.verify and any(s.state == "present" for s in statuses):
        print("(--verify reads each present source through the training loaders)")
    return exit_code(statuses, asked=names is not None)


def register(subparsers) -> argparse.ArgumentParser:
    """Adds the ``data`` command to ``subparsers`` (of ``smallsample``'s parser)."""
    d = subparsers.add_parser("data", help="list (and with --verify read) the data sources "
                              "present", description=HELP)
    d.add_argument("--data", default=None, help="data folder (default: $SMALLSAMPLE_DATA, else "
                   "~/.cache/smallsample/data)")
    d.add_argument("--verify", action="store_true", help="read every part of each present "
                   "source through the training loaders (decodes every image once)")
    d.add_argument("--source", action="append", metavar="NAME", help="check only this source "
                   f"(repeatable): {', '.join(s.name for s in SOURCES)}, folder (with --path), "
                   f"or tfds:NAME/VERSION as listed")
    d.add_argument("--path", default=None, help="with one --source: read it from this folder "
                   "instead of <data folder>/<its folder> (data_path=)")
    d.add_argument("--tfds-dir", default=None, help="TFDS data folder to list prepared sets "
                   "from (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    d.add_argument("--size", type=int, default=None, help="decode images at this size, as "
                   "training with image_size=N does (default: each source's usual size)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar while decoding")
    d.set_defaults(func=cmd_data)
    return d
