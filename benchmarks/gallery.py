"""Draw the README gallery's pictures from trained runs: each run's 8x8 grid, side by side, as one JPEG.

    python benchmarks/gallery.py runs/quality/wgan-cats64-seed0 runs/quality/wgangp-cats64-seed0 \\
        --out docs/images/cats-wgan-wgangp-20min.jpg

Each grid is `purrgan sample RUN --num 64 --seed 0` (EMA weights where the run keeps them), so a
picture in the README is the one a user gets from the same run. The JPEG quality is lowered until the
file is under --max-kb (the README keeps each picture under about 300 KB). With --nearest, each grid is
followed by the run's samples/nearest.png (the 8 samples most like one training image, each beside its three
nearest training images), the picture a reader needs to judge copying. Not part of the package.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from pathlib import Path


def grid(run: Path, num: int, seed: int, folder: Path) -> "Image.Image":
    from PIL import Image

    out = folder / f"{run.name}.png"
    command = [sys.executable, "-m", "purrgan", "sample", str(run), "--num", str(num), "--seed", str(seed), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"gallery: could not sample {run}: {(done.stderr or done.stdout).strip().splitlines()[-1]}")
    return Image.open(out).convert("RGB")


def side_by_side(images: list, gap: int = 6) -> "Image.Image":
    from PIL import Image

    height = max(im.height for im in images)
    canvas = Image.new("RGB", (sum(im.width for im in images) + gap * (len(images) - 1), height), "white")
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas


def nearest(run: Path, height: int) -> "Image.Image":
    from PIL import Image

    path = run / "samples" / "nearest.png"
    if not path.is_file():
        sys.exit(f"gallery: {run} has no samples/nearest.png (the memorisation check writes it at the end of a run)")
    image = Image.open(path).convert("RGB")
    return image.resize((round(image.width * height / image.height), height), Image.LANCZOS)


def save_small(image, path: Path, max_kb: int) -> int:
    for quality in range(90, 30, -5):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality, optimize=True)
        if buffer.tell() <= max_kb * 1024:
            break
    path.write_bytes(buffer.getvalue())
    return quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, left to right")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-kb", type=int, default=280)
    parser.add_argument("--nearest", action="store_true", help="follow each grid with the run's samples/nearest.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pictures = []
        for run in args.runs:
            pictures.append(grid(run, args.num, args.seed, Path(tmp)))
            if args.nearest:
                pictures.append(nearest(run, pictures[-1].height))
        picture = side_by_side(pictures)
    quality = save_small(picture, args.out, args.max_kb)
    print(f"{args.out}: {picture.width}x{picture.height}, JPEG quality {quality}, {args.out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
