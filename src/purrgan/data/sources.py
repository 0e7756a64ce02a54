"""Named data sets (cats, CIFAR-10, MNIST, Fashion-MNIST, CelebA) and user paths, read into uint8 arrays.

A source is written `NAME[:key=value[:key=value]]`, e.g. `cifar10:classes=cat,dog:split=test`, or
`PATH[:classes=...][:split=...]` for a folder, .zip or .tar(.gz) of images. Named sets win over a
folder of the same name (write `./cats` for the folder). Named sets are downloaded into the cache
folder on first use; a manual copy can sit there too, or be named with `path=`.

In a folder or archive, sub-folders are classes; top-level `train/` and `test/` folders (the usual
CIFAR and MNIST layout) are splits, with the classes under them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import PurrganError
from .archives import ImageFiles, is_archive, read_members
from .download import DownloadError, cache_dir, check_archive, download, download_from_google_drive, verify
from .images import is_grayscale_mode

SPLITS = ("train", "test", "all")  # of the named sets
SPLIT_FOLDERS = {"train": "train", "test": "test", "val": "val", "valid": "val", "validation": "val"}  # folder -> split
PATH_OPTIONS = {"classes": (), "split": ("train", "test", "val", "all", "none")}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteFile:
    filename: str
    url: str
    md5: str | None  # None where upstream publishes no checksum: the archive is then read end to end instead
    gdrive_id: str | None = None  # a Google Drive file, fetched through torchvision (it handles the confirmation page)


@dataclass(frozen=True)
class SourceSpec:
    """A parsed `--data` value: a named set with its options, or a path."""
    name: str  # the named set, or "path"
    options: dict = field(default_factory=dict)
    path: Path | None = None

    def key(self) -> str:
        """Return a file-name-safe identifier of what is read (classes excluded: they are filtered later)."""
        if self.path is not None:
            split = self.options.get("split", "train")
            digest = hashlib.sha1(f"{self.path.resolve()}|{split}".encode("utf-8", "backslashreplace")).hexdigest()[:8]
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in self.path.resolve().name)[:40]
            return f"path-{safe}-{digest}"
        opts = "-".join(f"{k}{v}" for k, v in sorted(self.options.items()) if k not in ("classes", "path"))
        copy = ""  # a manual copy elsewhere gets its own prepared file instead of rebuilding the cache's one
        if "path" in self.options:
            copy = "-" + hashlib.sha1(str(Path(self.options["path"]).expanduser().resolve()).encode()).hexdigest()[:8]
        return self.name + (f"-{opts}" if opts else "") + copy


@dataclass
class Decoded:
    images: np.ndarray  # (N, C, H, W) uint8 at the target size
    labels: np.ndarray | None
    class_names: list[str]
    skipped: int = 0
    duplicates: int = 0
    grayscale: bool = False  # every source image was grayscale (digits, scans, text): flipping is off by default
    own_size: tuple[int, int] | None = None  # the (width, height) every source image shares, if they share one
    layout: str = ""  # how split folders were read


@dataclass(frozen=True)
class NamedSource:
    summary: str
    files: tuple[RemoteFile, ...]  # downloaded into the cache; none for a set shipped in the package
    options: dict[str, tuple[str, ...]]  # option -> allowed values; () = any value
    read: Callable[[list[Path], dict, int, int], Decoded]
    licence: str
    size: str
    native: tuple[int, int] = (64, 3)  # (resolution, channels) the set is used at unless told otherwise
    flippable: bool = True  # a mirrored image is still a valid sample (not for digits or letters)
    packaged: tuple[str, ...] = ()  # files inside the purrgan package (the built-in digits)


# ---------------------------------------------------------------- parsing


def parse_source(text: str) -> SourceSpec:
    """Return the SourceSpec of a `--data` value, failing with the valid names and options."""
    if not text.strip():
        raise PurrganError("--data is empty (an unset shell variable?); give a folder, an archive or a named set "
                           "(`purrgan data list`)")
    name, *parts = text.split(":")
    if name in SOURCES:  # a named set wins over a folder of the same name in the current directory
        if Path(name).exists():
            log.warning("'%s' is purrgan's named data set; to use the folder %s here instead, write ./%s", name, name, name)
        return SourceSpec(name, _options(name, parts, SOURCES[name].options))
    pieces = text.split(":")
    for end in range(len(pieces), 0, -1):  # the longest prefix that exists is the path (a path may hold ':')
        path = Path(":".join(pieces[:end])).expanduser()
        if path.exists():
            return SourceSpec("path", _options(str(path), pieces[end:], PATH_OPTIONS), path)
    if "/" in name or "\\" in name or "." in name:
        raise PurrganError(f"data path {name} does not exist")
    raise PurrganError(f"data source '{text}' is neither a known data set ({', '.join(SOURCES)}) "
                       f"nor an existing path; see `purrgan data list`")


def _options(name: str, parts: list[str], allowed: dict[str, tuple[str, ...]]) -> dict[str, str]:
    options = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in allowed:
            raise PurrganError(f"bad option '{part}' for {name}; valid options: "
                               f"{', '.join(f'{k}=' + ('|'.join(v) if v else '...') for k, v in allowed.items())}")
        if allowed[key] and value not in allowed[key]:
            raise PurrganError(f"'{key}' of {name} is '{value}'; allowed values: {', '.join(allowed[key])}")
        options[key] = value
    return options


MODEL_SIZES = (16, 32, 64, 128)


def native_shape(spec: SourceSpec) -> tuple[int, int, str]:
    """Return (resolution, channels, why) a source is used at when nobody says otherwise.

    A named set has its own; a prepared file carries its own; a folder or archive whose images all
    share one square size keeps it when the models build that size (16, 32, 64, 128), rounds a
    smaller one up (28 -> 32), and otherwise uses 64; its channels are 1 when every image is grayscale.
    """
    if spec.path is None:
        return (*SOURCES[spec.name].native, "the data set's own size")
    from .prepare import is_prepared_file, read_metadata

    if is_prepared_file(spec.path):
        info = read_metadata(spec.path)
        return int(info["resolution"]), int(info["channels"]), "the prepared file's size"
    if spec.path.is_file() and not is_archive(spec.path):
        return 64, 3, "the default size"
    try:
        files = ImageFiles(spec.path)
        names = Layout(files.names).select(spec.options.get("split", "train"), str(spec.path))
    except PurrganError:
        return 64, 3, "the default size"  # loading the data says what is wrong with it
    sizes, gray = Counter(), True
    # Up to ~500 headers, spread over the set; the first ones of a tar, which is read as a stream.
    for name, blob in files.pairs(names[:500] if files.streamed else names[:: max(1, len(names) // 500)]):
        if isinstance(blob, Exception):
            continue
        try:
            with Image.open(io.BytesIO(blob)) as image:
                sizes[image.size] += 1
                gray = gray and is_grayscale_mode(image.mode)
        except Exception:  # noqa: BLE001 - unreadable files are counted when the data is decoded
            continue
    channels = 1 if gray and sizes else 3
    if len(sizes) == 1:
        (width, height), = sizes
        if width == height and (width in MODEL_SIZES or width < 64):
            fitted = next(size for size in MODEL_SIZES if size >= width)
            return fitted, channels, "the images' own size" if fitted == width else f"their own size {width} rounded up"
    return 64, channels, "the default size (the images differ in size)" if len(sizes) > 1 else "the default size"


def local_files(spec: SourceSpec, fetch: bool = True) -> list[Path]:
    """Return the source's files on disk: the packaged copy, the path= copy, the cached copy, or a fresh download."""
    source = SOURCES[spec.name]
    if source.packaged:
        return [Path(__file__).with_name(name) for name in source.packaged]
    if "path" in spec.options:
        given = Path(spec.options["path"]).expanduser()
        if not given.exists():
            raise PurrganError(f"{spec.name}: path={given} does not exist")
        if given.is_dir():
            paths = [given / f.filename for f in source.files]
            missing = [p.name for p in paths if not p.exists()]
            if missing and not any(is_archive(p) for p in given.iterdir()):
                raise PurrganError(f"{spec.name}: {given} lacks {', '.join(missing)}")
            return paths if not missing else [given]
        return [given]
    folder = cache_dir() / spec.name
    missing = [remote for remote in source.files if not (folder / remote.filename).exists()]
    if missing and not fetch:
        raise PurrganError(f"{spec.name} is not downloaded; run `purrgan data download {spec.name}`")
    for remote in missing:
        dest = folder / remote.filename
        log.info("downloading %s from %s", remote.filename, remote.url)
        try:
            if remote.gdrive_id:
                download_from_google_drive(remote.gdrive_id, dest, remote.md5)
            else:
                download(remote.url, dest, remote.md5)
        except DownloadError as error:
            raise PurrganError(_offline_message(spec.name, source, folder, error)) from None
        if remote.md5 is None:
            count = check_archive(dest)
            log.info("%s has no published checksum: read it end to end instead (%d images, %.0f MB)", remote.filename,
                     count, dest.stat().st_size / 1e6)
    return [folder / remote.filename for remote in source.files]


def _offline_message(name: str, source: NamedSource, folder: Path, error: DownloadError) -> str:
    """Return what to do when a named set cannot be downloaded: every file it still needs, and where to put them."""
    still = [r for r in source.files if not (folder / r.filename).exists()]
    if len(still) == 1:
        return (f"could not download {name} ({error.reason}); without a network, download {error.url} elsewhere and "
                f"put it at {error.dest}, or give the source as {name}:path=FILE (e.g. purrgan data prepare "
                f"{name}:path=FILE, or purrgan train --data {name}:path=FILE)")
    return (f"could not download {name} ({error.reason}); without a network, download these {len(still)} files "
            f"elsewhere and put them in {folder}: {', '.join(r.filename for r in still)} (from "
            f"{still[0].url.rsplit('/', 1)[0]}/), or give the source as {name}:path=FOLDER for a folder holding them "
            f"(e.g. purrgan data prepare {name}:path=FOLDER, or purrgan train --data {name}:path=FOLDER)")


# ---------------------------------------------------------------- turning images into arrays of one size


def fit_array(images: np.ndarray, resolution: int, channels: int, pad_to: int | None = None) -> np.ndarray:
    """Return (N, H, W, C') uint8 images as (N, channels, resolution, resolution): padded, resized, converted."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, C, H, W)
    if pad_to is not None and x.shape[-1] < pad_to:
        pad = (pad_to - x.shape[-1]) // 2
        x = F.pad(x, (pad, pad, pad, pad))
    if channels == 1 and x.shape[1] == 3:  # ITU-R 601 luma, as PIL's convert("L")
        x = (x.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True).round().to(torch.uint8)
    elif channels == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        chunks = [F.interpolate(c.float(), size=(resolution, resolution), mode="bicubic", antialias=True,
                                align_corners=False).clamp(0, 255).round().to(torch.uint8) for c in x.split(4096)]
        x = torch.cat(chunks)
    return np.ascontiguousarray(x.numpy())


@dataclass
class FileSource:
    """The image files a source is made of, in the order they are read, with their labels: what decoding streams over."""
    names: list[str]  # every file to read, in reading order
    reader: Callable[[int], Iterator[tuple[str, bytes | Exception]]]  # reader(skip): (name, bytes) from the skip-th on
    origin: str  # what to call the source in messages
    labels: dict[str, int] | None = None  # file name -> class index, when the files sit in class folders
    class_names: list[str] = field(default_factory=list)
    crop: float | None = None  # CelebA's centred box, as a fraction of the width
    problems: int = 0  # files that could not even be listed (counted as unreadable)
    first_problem: str = ""
    layout: str = ""  # how split folders were read, for the run's first line


def file_source(spec: SourceSpec, classes: tuple[str, ...] = ()) -> FileSource | None:
    """Return the image files of a folder, an archive or a named set made of image archives (None for the others).

    classes keeps only the files of those classes (sub-folders), relabelled 0..K-1 in that order.
    """
    if classes and spec.path is None and SOURCES[spec.name].read is read_image_archives:
        raise PurrganError(f"classes = {','.join(classes)} needs a labelled data set, but {spec.name} has no classes")
    if spec.path is not None:
        if spec.path.is_file() and not is_archive(spec.path):
            raise PurrganError(f"data path {spec.path} is a file but not a .zip or .tar(.gz) archive; give a folder or an archive")
        files = ImageFiles(spec.path)
        split = spec.options.get("split", "train")
        layout = Layout(files.names)
        names = layout.select(split, str(spec.path))
        labels, class_names = labels_from_names(names, splits=split != "none")
        by_name = dict(zip(names, labels.tolist())) if labels is not None else None
        if classes:
            index = {class_names.index(name): i for i, name in enumerate(check_classes(classes, class_names, str(spec.path)))}
            names = [n for n in names if by_name[n] in index]
            by_name, class_names = {n: index[by_name[n]] for n in names}, list(classes)
        return FileSource(names, lambda skip: files.pairs(names, skip), str(spec.path), by_name, class_names,
                          problems=files.problems, first_problem=files.first_problem, layout=layout.describe(split))
    if SOURCES[spec.name].read is not read_image_archives:
        return None
    options = {**DEFAULT_OPTIONS.get(spec.name, {}), **spec.options}
    archives = [ImageFiles(path) for path in local_files(spec)]

    def reader(skip: int):
        for files in archives:  # one archive after the other, skipping what an earlier, killed pass already did
            if skip < len(files.names):
                yield from files.pairs(None, skip)
            skip = max(0, skip - len(files.names))

    crop = float(options["crop"]) / 178 if "crop" in options else None  # CelebA's box, as a fraction of its width
    return FileSource([n for files in archives for n in files.names], reader, ", ".join(f.path.name for f in archives),
                      crop=crop, problems=sum(f.problems for f in archives),
                      first_problem=next((f.first_problem for f in archives if f.first_problem), ""))


def check_classes(wanted: tuple[str, ...], class_names: list[str], origin: str) -> tuple[str, ...]:
    """Return wanted when every name is one of class_names, else fail in one line naming the valid ones."""
    if not class_names:
        raise PurrganError(f"classes = {','.join(wanted)} needs a labelled data set, but {origin} has no classes "
                           f"(a folder gets classes from its sub-folders)")
    unknown = [name for name in wanted if name not in class_names]
    if unknown:
        raise PurrganError(f"unknown class '{unknown[0]}' in {origin}; valid classes: {', '.join(class_names)}")
    return wanted


def keep_classes(decoded: Decoded, classes: tuple[str, ...], origin: str) -> Decoded:
    """Return the images of decoded (a named set's arrays) of those classes only, relabelled 0..K-1 in that order."""
    check_classes(classes, decoded.class_names, origin)
    old = np.array([decoded.class_names.index(name) for name in classes])
    keep = np.isin(decoded.labels, old)
    remap = np.full(len(decoded.class_names), -1, dtype=np.int64)
    remap[old] = np.arange(len(classes))
    return replace(decoded, images=decoded.images[keep], labels=remap[decoded.labels[keep]], class_names=list(classes))


def decode_files(source: FileSource, resolution: int, channels: int, workers: int = 1) -> Decoded:
    """Return every decodable image of a FileSource at one size, in memory (prepare() streams to a file instead).

    Exact duplicates are dropped and unreadable files skipped, each counted.
    """
    from .decode import decode_stream

    chunks = list(decode_stream(source.reader(0), resolution, channels, source.crop, workers))
    tally = tally_chunks(source, chunks)
    report_tally(source, tally)
    labels = np.array([source.labels[n] for c in chunks for n in c.names], dtype=np.int64) if source.labels else None
    return Decoded(np.concatenate([c.images for c in chunks]), labels, source.class_names if source.labels else [],
                   tally["skipped"], tally["duplicates"], tally["gray"], tally["own_size"], source.layout)


def tally_chunks(source: FileSource, chunks, before: dict | None = None) -> dict:
    """Return the counts of decoded chunks (added to those of an earlier pass), failing when nothing could be read.

    Says in one warning each how many files were unreadable or duplicates.
    """
    tally = dict(before or {"kept": 0, "total": source.problems, "skipped": source.problems, "duplicates": 0,
                            "first_error": source.first_problem, "gray": True, "sizes": []})
    for chunk in chunks:
        tally["kept"] += len(chunk.names)
        tally["total"] += chunk.consumed
        tally["skipped"] += chunk.skipped
        tally["duplicates"] += chunk.duplicates
        tally["first_error"] = tally["first_error"] or chunk.first_error
        tally["gray"] = tally["gray"] and (chunk.gray or not chunk.names)
        tally["sizes"] = [list(s) for s in sorted({*map(tuple, tally["sizes"]), *chunk.sizes})][:2]  # one size, or several
    tally["own_size"] = tuple(tally["sizes"][0]) if len(tally["sizes"]) == 1 else None
    return tally


def report_tally(source: FileSource, tally: dict) -> None:
    """Fail when nothing could be read; warn once about unreadable files and dropped duplicates."""
    origin = source.origin
    if not tally["kept"]:
        if tally["total"] == 0:
            raise PurrganError(f"no images in {origin}; expected files ending in .png, .jpg, .jpeg, .webp or .bmp")
        raise PurrganError(f"none of the {tally['total']} image files in {origin} could be read (first: {tally['first_error']})")
    if tally["skipped"]:
        log.warning("skipped %d of %d files in %s that could not be read as images (first: %s)", tally["skipped"],
                    tally["total"], origin, tally["first_error"])
    if tally["duplicates"]:
        log.warning("dropped %d exact duplicate files in %s (kept one copy of each)", tally["duplicates"], origin)


def clean_class_name(name: str) -> str | None:
    """Return a folder name fit to be a class name (and a file name), or None when nothing of it is."""
    cleaned = "".join(ch for ch in name if ch.isprintable() and ch not in '/\\:*?"<>|').strip().strip(".")
    return cleaned[:100] or None


class Layout:
    """How a folder's image names are organised: splits (train/, test/, val/) and classes (sub-folders).

    Top folders that are all split names are splits, with the classes under them; `:split=` picks one
    (train by default). Split folders beside other folders (train/, test/ and cats/) are refused: the
    test set would silently become a class. `:split=none` makes every top folder a class, split names too.
    """

    def __init__(self, names: list[str]):
        self.names = names
        parts = [PurePosixPath(n).parts for n in names]
        depth = 0  # folders that every file shares (e.g. an archive's single top folder)
        while parts and all(len(p) > depth + 1 for p in parts) and len({p[depth] for p in parts}) == 1:
            depth += 1
        tops = {p[depth] for p in parts if len(p) > depth + 1}
        splits = {t for t in tops if t.lower() in SPLIT_FOLDERS}
        self.split_of, self.mixed = None, None
        if splits and splits == tops and all(len(p) > depth + 1 for p in parts):
            self.split_of = {n: SPLIT_FOLDERS[p[depth].lower()] for n, p in zip(names, parts)}
        elif splits:
            self.mixed = sorted(splits), sorted(tops - splits)

    def select(self, split: str, origin: str) -> list[str]:
        """Return the names of one split ("train", "test", "val", "all", or "none": everything, split folders as classes)."""
        if split == "none":
            return self.names
        if self.mixed is not None:
            splits = ", ".join(f"{name}/" for name in self.mixed[0])
            others = ", ".join(f"{name}/" for name in self.mixed[1])
            raise PurrganError(f"{origin} holds split folders ({splits}) beside other folders ({others}), so the test "
                               f"images would become a class: give one split as --data (e.g. {origin}/"
                               f"{self.mixed[0][-1]}), or add :split=none to make every folder a class")
        if self.split_of is None:
            if split not in ("train", "all"):
                raise PurrganError(f"{origin} has no train/, test/ or val/ folders, so :split={split} has nothing to pick")
            return self.names
        present = sorted(set(self.split_of.values()))
        if split != "all" and split not in present:
            raise PurrganError(f"{origin} has no {split}/ folder (it has {', '.join(p + '/' for p in present)}); "
                               f"add :split={present[0]} or :split=all")
        return [n for n in self.names if split == "all" or self.split_of[n] == split]

    def describe(self, split: str) -> str:
        """Return how the folders were read, for the run's first line ("" when there were no split folders)."""
        if split == "none" and (self.split_of or self.mixed):
            return "every top folder as a class (:split=none)"
        if not self.split_of:
            return ""
        present = sorted(set(self.split_of.values()))
        if split == "all":
            return f"all of {', '.join(p + '/' for p in present)} (:split=all)"
        others = [p for p in present if p != split]
        return (f"the {split}/ folder" + (f" ({', '.join(p + '/' for p in others)} left out: :split=NAME or :split=all "
                                           f"to choose)" if others else ""))


def labels_from_names(names: list[str], splits: bool = True) -> tuple[np.ndarray | None, list[str]]:
    """Return labels from the first sub-folder under the names' common folder (and split folder, with splits),
    when every image has one."""
    parts = [PurePosixPath(n).parts for n in names]
    depth = 0
    while parts and all(len(p) > depth + 1 for p in parts) and len({p[depth] for p in parts}) == 1:
        depth += 1
    if splits and parts and all(len(p) > depth + 1 for p in parts) and \
            {p[depth].lower() for p in parts} <= set(SPLIT_FOLDERS):
        depth += 1  # train/<class>/... and test/<class>/...: the classes are one level down
    if not parts or not all(len(p) > depth + 1 for p in parts):
        return None, []
    cleaned = {raw: clean_class_name(raw) for raw in {p[depth] for p in parts}}
    if any(c is None for c in cleaned.values()) or len(set(cleaned.values())) < len(cleaned):
        return None, []  # folder names that cannot be class names: train without classes rather than on wrong ones
    class_names = sorted(set(cleaned.values()))
    if len(class_names) < 2:
        return None, []
    return np.array([class_names.index(cleaned[p[depth]]) for p in parts], dtype=np.int64), class_names


# ---------------------------------------------------------------- readers of the upstream formats


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only dicts, lists, strings, bytes and numpy arrays: CIFAR's batches need no more."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"),
               ("_codecs", "encode")}  # how Python 3 writes bytes in protocol-2 pickles (re-saved CIFAR copies)

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _unpickle(blob: bytes, origin: str) -> dict:
    try:
        return _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise PurrganError(f"{origin} is not a CIFAR-10 python batch ({error})") from None


def read_cifar10(paths: list[Path], options: dict, resolution: int, channels: int) -> Decoded:
    archive = paths[0]
    split = options.get("split", "train")
    batches = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    names = batches["train"] + batches["test"] if split == "all" else batches[split]
    members = {PurePosixPath(k).name: v for k, v in
               read_members(archive, lambda n: PurePosixPath(n).name in {*names, "batches.meta"}).items()}
    missing = [n for n in (*names, "batches.meta") if n not in members]
    if missing:
        raise PurrganError(f"archive {archive} has no {missing[0]}; is it the CIFAR-10 python archive?")
    meta = _unpickle(members["batches.meta"], f"{archive}:batches.meta")
    class_names = [n.decode() if isinstance(n, bytes) else n for n in meta[b"label_names"]]
    images, labels = [], []
    for name in names:
        batch = _unpickle(members[name], f"{archive}:{name}")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return Decoded(fit_array(np.concatenate(images), resolution, channels), np.concatenate(labels), class_names)


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as handle:
            blob = handle.read()
    except (OSError, EOFError) as error:
        raise PurrganError(f"{path} is truncated or not gzip ({error}); delete it and download it again") from None
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] != 8:
        raise PurrganError(f"{path} is not an idx file of unsigned bytes")
    dims = blob[3]
    shape = tuple(int.from_bytes(blob[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    data = np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise PurrganError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {data.size}")
    return data.reshape(shape)


def _idx_reader(class_names: list[str]):
    def read(paths: list[Path], options: dict, resolution: int, channels: int) -> Decoded:
        by_name = {p.name: p for p in paths}
        split = options.get("split", "train")
        prefixes = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]
        images = np.concatenate([_read_idx(by_name[f"{p}-images-idx3-ubyte.gz"]) for p in prefixes])[..., None]
        labels = np.concatenate([_read_idx(by_name[f"{p}-labels-idx1-ubyte.gz"]) for p in prefixes]).astype(np.int64)
        pad_to = 32 if options.get("fit", "pad") == "pad" else None  # 28 -> 32 by 2 black pixels a side, as LeNet
        return Decoded(fit_array(images, resolution, channels, pad_to), labels, class_names)
    return read


def read_digits(paths: list[Path], options: dict, resolution: int, channels: int) -> Decoded:
    """Return the 1,797 8x8 digits (17 grey levels, ink = 16) upscaled with bicubic interpolation (smooth strokes)."""
    with gzip.open(paths[0], "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)  # (1797, 65): 64 pixels, then the label
    pixels = torch.from_numpy(table[:, :64]).view(-1, 1, 8, 8) / 16.0  # (N, 1, 8, 8) in [0, 1]
    pixels = F.interpolate(pixels, size=(resolution, resolution), mode="bicubic", align_corners=False)
    images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    if channels == 3:
        images = images.expand(-1, 3, -1, -1)
    return Decoded(np.ascontiguousarray(images.numpy()), table[:, 64].astype(np.int64), [str(d) for d in range(10)])


def read_image_archives(paths: list[Path], options: dict, resolution: int, channels: int) -> Decoded:
    """A named set made of image archives (the cat faces, CelebA): read through file_source(), like a folder."""
    raise NotImplementedError("image archives are decoded through file_source()")  # never called: read_source routes them


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CATS_URL = "https://github.com/fferlito/Cat-faces-dataset/raw/master/"
_SPLIT = {"split": ("train", "test", "all"), "classes": (), "path": ()}


def _idx_files(base: str, md5s: tuple[str, str, str, str]) -> tuple[RemoteFile, ...]:
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    return tuple(RemoteFile(n, base + n, m) for n, m in zip(names, md5s))


SOURCES: dict[str, NamedSource] = {
    "digits": NamedSource(
        "built in: 1,797 8x8 handwritten digits (UCI, as shipped by scikit-learn), upscaled to 32x32",
        (), {}, read_digits, "BSD-3-Clause (scikit-learn); UCI ML repository", "57 KB, ships with purrgan",
        native=(32, 1), flippable=False, packaged=("digits.csv.gz",)),
    "cats": NamedSource(
        "29,843 cat faces, 64x64 (fferlito/Cat-faces-dataset, three tarballs)",
        tuple(RemoteFile(f"dataset-part{i}.tar.gz", f"{_CATS_URL}dataset-part{i}.tar.gz", None) for i in (1, 2, 3)),
        {"path": ()}, read_image_archives, "no licence stated upstream; images collected from the web", "about 270 MB",
        native=(64, 3)),
    "cifar10": NamedSource(
        "CIFAR-10: 60,000 32x32 photos in 10 classes (Krizhevsky 2009), python pickle archive",
        (RemoteFile("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    "c58f30108f718f92721af3b95e74349a"),),
        _SPLIT, read_cifar10, "free for research; cite Krizhevsky 2009", "163 MB", native=(32, 3)),
    "mnist": NamedSource(
        "MNIST: 70,000 28x28 handwritten digits (LeCun et al.), idx files; padded to 32x32",
        _idx_files(_MNIST_URL, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")),
        {**_SPLIT, "fit": ("pad", "resize")}, _idx_reader([str(d) for d in range(10)]), "CC BY-SA 3.0", "11 MB",
        native=(32, 1), flippable=False),
    "fashion-mnist": NamedSource(
        "Fashion-MNIST: 70,000 28x28 clothing images in 10 classes (Zalando), idx files; padded to 32x32",
        _idx_files(_FASHION_URL, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                  "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
        {**_SPLIT, "fit": ("pad", "resize")},
        _idx_reader(["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]),
        "MIT", "30 MB", native=(32, 1)),
    "celeba": NamedSource(
        "CelebA aligned and cropped faces (202,599 JPEGs, 178x218; Liu et al. 2015): centre box cropped, resized",
        (RemoteFile("img_align_celeba.zip", "https://drive.google.com/file/d/0B7EVK8r0v71pZjFTYXZWM3FlRnM",
                    "00d2c5bc6d35e252742224ab0c1e8fcb", gdrive_id="0B7EVK8r0v71pZjFTYXZWM3FlRnM"),),
        {"crop": ("108", "140"), "path": ()}, read_image_archives,
        "non-commercial research only (see the CelebA agreement)", "1.4 GB", native=(64, 3)),
}
DEFAULT_OPTIONS = {"celeba": {"crop": "108"}}


def read_source(spec: SourceSpec, resolution: int, channels: int, workers: int = 1) -> Decoded:
    """Return the decoded images of a source at the given size, in memory (downloading a named set if needed)."""
    files = file_source(spec)
    if files is not None:
        return decode_files(files, resolution, channels, workers)
    options = {**DEFAULT_OPTIONS.get(spec.name, {}), **spec.options}
    return SOURCES[spec.name].read(local_files(spec), options, resolution, channels)


def verify_download(name: str) -> list[Path]:
    """Return the cached files of a named set, downloading and checking them."""
    spec = parse_source(name)
    if spec.path is not None:
        raise PurrganError(f"'{name}' is a path, not a named data set; `purrgan data download` takes one of: "
                           f"{', '.join(SOURCES)}")
    paths = local_files(spec)
    for remote, path in zip(SOURCES[spec.name].files, paths):
        if path.parent == cache_dir() / spec.name:
            verify(path, remote.md5)
    return paths
