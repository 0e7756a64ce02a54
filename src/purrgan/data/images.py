"""Decoding image files into uint8 arrays of one size and channel count."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import PurrganError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_PIXELS = 64_000_000  # refuse decompression bombs: far larger than any photo a GAN data set needs


def decode_image(source: Path | bytes, resolution: int, channels: int, crop: float | None = None,
                 name: str | None = None, report_mode: bool = False):
    """Return the image as uint8 (channels, resolution, resolution): shorter side resized, then centre-cropped.

    The camera's EXIF orientation is applied first, as every photo viewer does. crop, a fraction of
    the width, then cuts a centred square of that side (CelebA's 108-of-178 box).

    Raises PurrganError for anything that is not a readable still image. With report_mode, returns
    (array, whether the file was grayscale, its own (width, height)).
    """
    name = name or (str(source) if isinstance(source, Path) else "image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            handle = Image.open(source if isinstance(source, Path) else io.BytesIO(source))
            with handle as image:
                if image.width * image.height > MAX_PIXELS:
                    raise PurrganError(f"{name}: {image.width}x{image.height} is too large to be a training image")
                image.load()
                gray = is_grayscale_mode(image.mode) or (image.mode == "P" and _palette_is_gray(image))
                image = _upright(image)
                size = image.size
                image = _to_mode(image, channels)
                if crop is not None:
                    side = min(round(crop * image.width), image.width, image.height)
                    left, top = (image.width - side) // 2, (image.height - side) // 2
                    image = image.crop((left, top, left + side, top + side))
                # Fit the shorter side, then crop the centre square: faces and objects are usually centred.
                image = ImageOps.fit(image, (resolution, resolution), Image.Resampling.BICUBIC, centering=(0.5, 0.5))
                array = np.asarray(image, dtype=np.uint8)
    except PurrganError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever a damaged file makes Pillow raise, it is one unreadable image
        detail = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the file", str(error)) or "no detail"
        raise PurrganError(f"{name}: not a readable image ({type(error).__name__}: {detail})") from None
    if array.ndim == 2:
        array = array[:, :, None]
    array = np.ascontiguousarray(array.transpose(2, 0, 1))  # (C, H, W)
    return (array, gray, size) if report_mode else array


def _palette_is_gray(image: Image.Image) -> bool:
    palette = image.getpalette() or []
    return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))


def _upright(image: Image.Image) -> Image.Image:
    # A photo taken with the camera turned carries the turn in EXIF; a damaged EXIF block is ignored.
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001
        return image


def is_grayscale_mode(mode: str) -> bool:
    """Return whether an image mode holds no colour (L, LA, 1, I, I;16 ...)."""
    return mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16")


def _to_mode(image: Image.Image, channels: int) -> Image.Image:
    # Palette and transparency first go through RGBA so that transparent areas become white, not black.
    if image.mode in ("P", "PA", "LA", "RGBA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: scale to 8 bits instead of clipping everything above 255 to white.
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(array / 257.0, 0, 255).astype(np.uint8), "L")
    return image.convert("L" if channels == 1 else "RGB")
