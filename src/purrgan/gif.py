"""An animated GIF written one frame at a time: each frame is appended to the file on disk, so a long
run's timelapse never holds more than one frame in memory.

Each frame carries a GIF comment "step N", so the file can be cut back to a step (a NaN roll-back or a
resume) and a file cut off by a crash can be repaired to its last complete frame.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
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
    if blob[pos] != 0x2C:
        raise ValueError("Pillow wrote a GIF without an image descriptor")
    descriptor = bytearray(blob[pos:pos + 10])
    descriptor[9] = (descriptor[9] & 0x40) | (0x80 | (packed & 0x07) if table else 0)  # move the palette here
    data = blob[pos + 10 + (3 * 2 ** ((blob[pos + 9] & 0x07) + 1) if blob[pos + 9] & 0x80 else 0):-1]
    control = b"\x21\xf9\x04\x04" + delay_cs.to_bytes(2, "little") + b"\x00\x00"  # disposal: leave in place
    return bytes(header), control + bytes(descriptor) + palette + data


def _comment(text: str) -> bytes:
    data = text.encode("ascii")[:255]
    return b"\x21\xfe" + bytes([len(data)]) + data + b"\x00"


def append_frame(path: Path, image: Image.Image, delay_ms: int = 250, step: int | None = None) -> None:
    """Append one frame to the GIF at path (creating it, looping forever), tagged with its training step."""
    header, frame = _single_frame_blocks(image, max(2, delay_ms // 10))
    if step is not None:
        frame = _comment(f"step {step}") + frame
    if path.exists() and path.stat().st_size > 13:
        end = repair(path)  # a frame cut off by a crash is dropped before appending
        if end is not None:
            with Image.open(path) as existing:
                size = existing.size
            if size != image.size:
                raise ValueError(f"frame size {image.size} differs from the GIF's {size}")
            with open(path, "r+b") as handle:
                handle.seek(end)
                handle.write(frame + _TRAILER)
                handle.truncate()
            return
    screen = bytearray(header)
    screen[:6] = b"GIF89a"  # animation and delays are GIF89a extensions
    screen[10] &= 0x70  # no global colour table: every frame brings its own
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(bytes(screen) + loop + frame + _TRAILER)


@dataclass(frozen=True)
class Frame:
    start: int  # offset of the frame's first block (its comment or control extension)
    end: int  # offset just after its image data
    step: int | None


def frames(blob: bytes) -> list[Frame]:
    """Return the complete frames of a GIF's bytes (a frame cut off at the end is left out)."""
    if len(blob) < 13 or blob[:3] != b"GIF":
        return []
    pos = 13 + (3 * 2 ** ((blob[10] & 0x07) + 1) if blob[10] & 0x80 else 0)
    found, start, step = [], None, None
    try:
        while pos < len(blob):
            kind = blob[pos]
            if kind == 0x3B:
                break
            if kind == 0x21:
                label, block = blob[pos + 1], pos
                pos += 2
                data = b""
                while blob[pos]:
                    data += blob[pos + 1:pos + 1 + blob[pos]]
                    pos += blob[pos] + 1
                pos += 1
                if pos > len(blob):
                    break
                if label == 0xFF:  # the looping block belongs to the header
                    continue
                start = block if start is None else start
                if label == 0xFE and data.startswith(b"step ") and data[5:].isdigit():
                    step = int(data[5:])
            elif kind == 0x2C:
                block = pos if start is None else start
                flags = blob[pos + 9]
                pos += 10 + (3 * 2 ** ((flags & 0x07) + 1) if flags & 0x80 else 0) + 1  # + LZW code size
                while blob[pos]:
                    pos += blob[pos] + 1
                pos += 1
                if pos > len(blob):
                    break
                found.append(Frame(block, pos, step))
                start, step = None, None
            else:
                break  # garbage: keep what was complete before it
    except IndexError:
        pass  # cut off inside a block
    return found


def repair(path: Path, keep_through_step: int | None = None) -> int | None:
    """Cut the GIF at path after its last complete frame (and after keep_through_step, when given).

    Returns the offset where the next frame goes, or None when no frame is left (the file is removed).
    """
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    found = frames(blob)
    if keep_through_step is not None:
        found = [f for f in found if f.step is None or f.step <= keep_through_step]
    if not found:
        path.unlink(missing_ok=True)
        return None
    end = found[-1].end
    if blob[end:] != _TRAILER:
        with open(path, "r+b") as handle:
            handle.seek(end)
            handle.write(_TRAILER)
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())
    return end


def captioned(image: Image.Image, text: str) -> Image.Image:
    """Return image with a black band above it holding text (e.g. the training step)."""
    band = 14
    out = Image.new("RGB", (image.width, image.height + band), (0, 0, 0))
    out.paste(image.convert("RGB"), (0, band))
    ImageDraw.Draw(out).text((3, 1), text, fill=(255, 255, 255))
    return out
