"""Data sources: the built-in digits and folders of images, loaded into one uint8 tensor."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import PurrganError
from .images import IMAGE_EXTENSIONS, decode_image

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, H, W) uint8
    name: str
    labels: torch.Tensor | None = None  # (N,) int64 class indices, when the source has classes
    class_names: list[str] = field(default_factory=list)
    skipped: int = 0  # files that could not be decoded

    def __len__(self) -> int:
        return self.images.shape[0]


BUILTIN = {"digits": "the 8x8 handwritten digits shipped with scikit-learn (1,797 images), upscaled"}


def load_images(source: str, resolution: int, channels: int, classes: str = "") -> ImageSet:
    """Return the images of a source ("digits" or a folder path) at the given size and channel count.

    classes ("cat,dog") keeps only those classes of a labelled source, relabelled 0..K-1 in that order.
    """
    if source == "digits":
        data = load_digits(resolution, channels)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise PurrganError(f"data source '{source}' is neither a built-in data set ({', '.join(BUILTIN)}) nor an existing path")
        if not path.is_dir():
            raise PurrganError(f"data path {path} is a file; give a folder of images")
        data = load_folder(path, resolution, channels)
    return select_classes(data, classes) if classes.strip() else data


def select_classes(data: ImageSet, classes: str) -> ImageSet:
    """Return only the images of the named classes, relabelled 0..K-1 in the order given."""
    wanted = [c.strip() for c in classes.split(",") if c.strip()]
    if data.labels is None:
        raise PurrganError(f"data.classes = '{classes}' needs a labelled data set, but {data.name} has no classes "
                           f"(a folder gets classes from its sub-folders)")
    unknown = [c for c in wanted if c not in data.class_names]
    if unknown:
        raise PurrganError(f"unknown class '{unknown[0]}' in {data.name}; valid classes: {', '.join(data.class_names)}")
    old = torch.tensor([data.class_names.index(c) for c in wanted])
    keep = torch.isin(data.labels, old)
    remap = torch.full((len(data.class_names),), -1, dtype=torch.long)
    remap[old] = torch.arange(len(wanted))
    return ImageSet(data.images[keep], data.name, remap[data.labels[keep]], wanted, data.skipped)


def load_digits(resolution: int, channels: int) -> ImageSet:
    """Return scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels) upscaled to resolution."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    pixels = torch.from_numpy(digits.images).float()[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1], ink = 1
    # Bicubic upscaling keeps strokes smooth instead of showing 8x8 blocks.
    pixels = torch.nn.functional.interpolate(pixels, size=(resolution, resolution), mode="bicubic", align_corners=False)
    images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    if channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target).long()
    return ImageSet(images, "digits", labels, [str(d) for d in range(10)])


def list_image_files(folder: Path) -> list[Path]:
    """Return the image files under folder, recursively, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_folder(folder: Path, resolution: int, channels: int) -> ImageSet:
    """Return every decodable image under folder; undecodable files are skipped and counted."""
    files = list_image_files(folder)
    if not files:
        raise PurrganError(f"no images in {folder}; expected files ending in {', '.join(IMAGE_EXTENSIONS)} (searched recursively)")
    arrays, skipped, decoded = [], [], []
    for path in files:
        try:
            arrays.append(decode_image(path, resolution, channels))
            decoded.append(True)
        except PurrganError as error:
            skipped.append(str(error))
            decoded.append(False)
    if not arrays:
        raise PurrganError(f"none of the {len(files)} image files in {folder} could be read (first: {skipped[0]})")
    if skipped:
        log.warning("skipped %d of %d files in %s that could not be read as images (first: %s)",
                    len(skipped), len(files), folder, skipped[0])
    images = torch.from_numpy(np.stack(arrays))
    labels, class_names = _folder_labels(folder, [f for f, ok in zip(files, decoded) if ok])
    return ImageSet(images, str(folder), labels, class_names, skipped=len(skipped))


def _folder_labels(folder: Path, files: list[Path]) -> tuple[torch.Tensor | None, list[str]]:
    # Classes come from first-level sub-folders, but only when every image lives in one.
    parts = [f.relative_to(folder).parts for f in files]
    if any(len(p) < 2 for p in parts):
        return None, []
    class_names = sorted({p[0] for p in parts})
    if len(class_names) < 2:
        return None, []
    return torch.tensor([class_names.index(p[0]) for p in parts]), class_names


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Return uint8 images as float in [-1, 1] (the convention everywhere inside purrgan)."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Return float images in [-1, 1] as uint8 in [0, 255]."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
