"""An animated GIF written one frame at a time: each frame is appended to the file on disk, so a long
run's timelapse never holds more than one frame in memory."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageDraw

_TRAILER = b"\x3b"


def _single_frame_blocks(image: Image.Image, delay_cs: int) -> tuple[bytes, bytes]:
    """Return (logical screen header, frame blocks) of image encoded as a one-frame GIF with a local palette."""
    buffer = io.BytesIO()
    image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buffer, "GIF")
    blob = buffer.getvalue()
    packed = blob[10]
    table = 3 * 2 ** ((packed & 0x07) + 1) if packed & 0x80 else 0
    header = blob[:13]
    palette = blob[13:13 + table]
    pos = 13 + table
    while blob[pos] == 0x21:  # skip Pillow's own extensions
        pos += 2
        while blob[pos]:
            pos += blob[pos] + 1
        pos += 1
    assert blob[pos] == 0x2C, "expected an image descriptor"
    descriptor = bytearray(blob[pos:pos + 10])
    descriptor[9] = (descriptor[9] & 0x40) | (0x80 | (packed & 0x07) if table else 0)  # move the palette here
    data = blob[pos + 10 + (3 * 2 ** ((blob[pos + 9] & 0x07) + 1) if blob[pos + 9] & 0x80 else 0):-1]
    control = b"\x21\xf9\x04\x04" + delay_cs.to_bytes(2, "little") + b"\x00\x00"  # disposal: leave in place
    return bytes(header), control + bytes(descriptor) + palette + data


def append_frame(path: Path, image: Image.Image, delay_ms: int = 250) -> None:
    """Append one frame to the GIF at path, creating it (looping forever) if it does not exist."""
    header, frame = _single_frame_blocks(image, max(2, delay_ms // 10))
    if path.exists() and path.stat().st_size > 13:
        existing = Image.open(path).size
        if existing != image.size:
            raise ValueError(f"frame size {image.size} differs from the GIF's {existing}")
        with open(path, "r+b") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) == _TRAILER:
                handle.seek(-1, os.SEEK_END)
            handle.write(frame + _TRAILER)
        return
    screen = bytearray(header)
    screen[:6] = b"GIF89a"  # animation and delays are GIF89a extensions
    screen[10] &= 0x70  # no global colour table: every frame brings its own
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(bytes(screen) + loop + frame + _TRAILER)


def captioned(image: Image.Image, text: str) -> Image.Image:
    """Return image with a black band above it holding text (e.g. the training step)."""
    band = 14
    out = Image.new("RGB", (image.width, image.height + band), (0, 0, 0))
    out.paste(image.convert("RGB"), (0, band))
    ImageDraw.Draw(out).text((3, 1), text, fill=(255, 255, 255))
    return out
