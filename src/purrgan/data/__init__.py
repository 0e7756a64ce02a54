"""Data: the built-in digits, named data sets and user paths, behind one small interface (ImageSet)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import torch

from ..errors import PurrganError

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """The images of a data set: len(), labels, class names, and batch(positions) to read some of them.

    The uint8 pixels live in `storage`, in memory or memory-mapped from a prepared file (so a set
    larger than memory is read page by page); `index` picks and orders the images this set is made of
    (a class subset, a validation split) without copying a pixel. Code that trains, evaluates or
    shows images reads them through batch(), whatever holds them.
    """
    storage: torch.Tensor  # (M, C, H, W) uint8, every image of the source
    name: str
    labels: torch.Tensor | None = None  # (N,) int64 class indices of this set's images, when the source has classes
    class_names: list[str] = field(default_factory=list)
    skipped: int = 0  # files that could not be decoded
    flippable: bool = True  # whether a mirrored image is still a valid sample (not for digits or text)
    duplicates: int = 0  # exact duplicate files dropped
    own_size: tuple[int, int] | None = None  # (width, height) every source image shared, for a folder or archive
    layout: str = ""  # how split folders (train/, test/) were read, said in the run's first line
    index: torch.Tensor | None = None  # (N,) positions in storage; None: all of it, in order

    def __len__(self) -> int:
        return self.storage.shape[0] if self.index is None else len(self.index)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.storage.shape[1:])

    def batch(self, positions: torch.Tensor) -> torch.Tensor:
        """Return the images at positions (B,) of this set as uint8 (B, C, H, W), gathered from their storage."""
        return self.storage[positions if self.index is None else self.index[positions]]

    def batches(self, positions: torch.Tensor | None = None, size: int = 256):
        """Yield the images at positions (default: all, in order) as uint8 batches of at most size."""
        positions = torch.arange(len(self)) if positions is None else positions
        for start in range(0, len(positions), size):
            yield self.batch(positions[start:start + size])

    @property
    def images(self) -> torch.Tensor:
        """All images as one (N, C, H, W) tensor: the storage itself when the set is all of it, else a gathered copy."""
        return self.storage if self.index is None else self.storage[self.index]

    def subset(self, positions: torch.Tensor) -> "ImageSet":
        """Return the set of the images at positions (B,), sharing this set's storage."""
        labels = self.labels[positions] if self.labels is not None else None
        return replace(self, index=positions if self.index is None else self.index[positions], labels=labels)


def load_images(source: str, resolution: int, channels: int, classes: tuple[str, ...] | str = (),
                cache: bool = True, progress=None) -> ImageSet:
    """Return the images of a source (a named data set such as "digits", or a path) at the given size and channels.

    Every source goes through a prepared file in the cache, built on first use (cache=False decodes it in
    memory instead, for a folder looked at once). classes ("cat", "dog") keeps only those classes of a
    labelled source, relabelled 0..K-1 in that order. progress(done, total) follows a first prepare.
    """
    from .prepare import is_prepared_file, prepare, read_prepared, to_prepared
    from .sources import parse_source

    spec = parse_source(source)
    classes = _merge_classes(parse_names(classes), parse_names(spec.options.get("classes", "")))
    if spec.path is not None and is_prepared_file(spec.path):
        images, labels, info = read_prepared(spec.path)
    elif cache:
        images, labels, info = read_prepared(prepare(spec, resolution, channels, progress=progress))
    else:
        images, labels, info = to_prepared(spec, resolution, channels)
    if images.shape[1:] != (channels, resolution, resolution):
        raise PurrganError(f"{spec.path} holds {tuple(images.shape[1:])} images, but the config asks for "
                           f"{(channels, resolution, resolution)}; prepare it again with that size")
    own = info.get("own_size")
    data = ImageSet(images, str(info.get("source", source)), labels, info.get("class_names", []), info.get("skipped", 0),
                    bool(info.get("flippable", True)), int(info.get("duplicates", 0)), tuple(own) if own else None,
                    str(info.get("layout") or ""))
    return select_classes(data, classes) if classes else data


def parse_names(value: tuple[str, ...] | str) -> tuple[str, ...]:
    parts = value.split(",") if isinstance(value, str) else value
    return tuple(p.strip() for p in parts if p.strip())


def _merge_classes(configured: tuple[str, ...], from_source: tuple[str, ...]) -> tuple[str, ...]:
    if configured and from_source and configured != from_source:
        raise PurrganError(f"classes given twice: data.classes = '{','.join(configured)}' and "
                           f"':classes={','.join(from_source)}'; keep one")
    return configured or from_source


def select_classes(data: ImageSet, classes: tuple[str, ...] | str) -> ImageSet:
    """Return only the images of the named classes, relabelled 0..K-1 in the order given."""
    from .sources import check_classes

    wanted = list(check_classes(parse_names(classes), data.class_names if data.labels is not None else [], data.name))
    old = torch.tensor([data.class_names.index(c) for c in wanted])
    keep = torch.isin(data.labels, old).nonzero().flatten()
    remap = torch.full((len(data.class_names),), -1, dtype=torch.long)
    remap[old] = torch.arange(len(wanted))
    chosen = data.subset(keep)
    return replace(chosen, labels=remap[chosen.labels], class_names=wanted)


def split_validation(data: ImageSet, fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet | None]:
    """Return (train, validation): a fixed random fraction held out, the same for every run of one data set."""
    if fraction <= 0:
        return data, None
    count = round(len(data) * fraction)
    if count < 1 or count >= len(data):
        raise PurrganError(f"data.val_fraction = {fraction} leaves no images for training or for validation")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[count:].sort().values), data.subset(order[:count].sort().values)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Return uint8 images as float in [-1, 1] (the convention everywhere inside purrgan)."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Return float images in [-1, 1] as uint8 in [0, 255]."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
