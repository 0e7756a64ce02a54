"""Decoding image files into uint8 arrays of one size and channel count."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import PurrganError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_PIXELS = 64_000_000  # refuse decompression bombs: far larger than any photo a GAN data set needs


def decode_image(source: Path | bytes, resolution: int, channels: int, crop: float | None = None) -> np.ndarray:
    """Return the image as uint8 (channels, resolution, resolution): shorter side resized, then centre-cropped.

    crop, a fraction of the width, first cuts a centred square of that side (CelebA's 108-of-178 box).

    Raises PurrganError for anything that is not a readable still image.
    """
    name = str(source) if isinstance(source, Path) else "image bytes"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            handle = Image.open(source if isinstance(source, Path) else io.BytesIO(source))
            with handle as image:
                if image.width * image.height > MAX_PIXELS:
                    raise PurrganError(f"{name}: {image.width}x{image.height} is too large to be a training image")
                image.load()
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
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            MemoryError, EOFError) as error:
        raise PurrganError(f"{name}: not a readable image ({type(error).__name__}: {error})") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array.transpose(2, 0, 1))  # (C, H, W)


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
