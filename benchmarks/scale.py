"""Data larger than memory: prepare speed, and training on a prepared set bigger than this machine's RAM.

Prints one table, measured in this run on this machine:
- prepare: images/s decoding real JPEGs (the cat faces of ../shared, and the CelebA crops, which are
  resized) into a prepared file, with 1 and 2 decoding processes;
- train: `purrgan train` on a synthetic prepared set larger than the RAM (by default 1.1x, of real cat
  faces tiled; the size is printed), against the same model on the cat faces (9,303 images, in the page
  cache): images/s from the runs' own metrics rows, and the peak anonymous memory (RssAnon, what the
  process itself holds, as opposed to the file pages the kernel caches and drops) of each;
- sample: the peak RSS of streaming 200,000 64x64 images out of a G (what holding them would take).
The synthetic set is deleted at the end.

    python benchmarks/scale.py                        # in /tmp; needs ~30 GB free on a 24 GiB machine
    python benchmarks/scale.py --dir /big/disk --images 500000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = Path(os.environ.get("PURRGAN_SHARED_DATA", ROOT.parent / "shared" / "data"))
CATS, CELEBA = SHARED / "cats64-kaggle.tar.gz", SHARED / "celeba-10k.tar.gz"
IMAGE_BYTES = 3 * 64 * 64


def ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _family(pid: int) -> list[int]:
    """Return pid and every process descended from it (decoding workers)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    family, grew = {pid}, True
    while grew:
        children = {p for p, parent in parents.items() if parent in family} - family
        family |= children
        grew = bool(children)
    return sorted(family)


def peak_memory(command: list[str], env: dict) -> tuple[subprocess.CompletedProcess, dict[str, float]]:
    """Run command; return it and the peaks of RssAnon and RssFile in MB (read from /proc every 0.1 s), summed over
    the process and its children ("RssAnon" of the process alone is "RssAnon (main)")."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peaks = {"RssAnon": 0.0, "RssFile": 0.0, "RssAnon (main)": 0.0}

    def watch():
        while process.poll() is None:
            now = {"RssAnon": 0.0, "RssFile": 0.0, "RssAnon (main)": 0.0}
            for pid in _family(process.pid):
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        key = line.split(":")[0]
                        if key in ("RssAnon", "RssFile"):
                            now[key] += int(line.split()[1]) / 1024
                            if key == "RssAnon" and pid == process.pid:
                                now["RssAnon (main)"] = int(line.split()[1]) / 1024
                except OSError:
                    pass
            for key, value in now.items():
                peaks[key] = max(peaks[key], value)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    stdout, stderr = process.communicate()
    watcher.join()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), peaks


def prepare_rates(work: Path, env: dict) -> list[tuple[str, int, float, int, dict]]:
    """Return (source, workers, images/s, images, memory peaks) of preparing each real archive with 1 and 2 processes."""
    rows = []
    for archive, size in ((CATS, 64), (CELEBA, 64)):
        if not archive.is_file():
            continue
        for workers in (1, 2):
            out = work / f"prepared-{archive.stem}-{workers}.safetensors"
            started = time.perf_counter()
            run, peaks = peak_memory([sys.executable, "-m", "purrgan", "data", "prepare", str(archive), "--size", str(size),
                                      "--out", str(out), "--workers", str(workers), "--force"], env)
            seconds = time.perf_counter() - started
            if run.returncode != 0:
                sys.exit(f"prepare failed:\n{run.stderr[-2000:]}")
            count = json.loads(_metadata(out)["count"])
            rows.append((archive.name, workers, count / seconds, count, peaks))
            out.unlink()
    return rows


def _metadata(path: Path) -> dict:
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        return json.loads(handle.read(length))["__metadata__"]


def synthetic_set(path: Path, count: int, env: dict) -> None:
    """Write a prepared file of count 64x64 RGB images: the cat faces tiled (each copy rolled by a few pixels)."""
    import numpy as np

    from purrgan.data import load_images
    from purrgan.data.prepare import PreparedWriter

    os.environ.update(env)
    cats = load_images(str(CATS), 64, 3).images.numpy() if CATS.is_file() else \
        np.random.default_rng(0).integers(0, 256, (8192, 3, 64, 64), dtype=np.uint8)
    writer = PreparedWriter(path, f"synthetic-{count}", 64, 3, resume=False)
    written, copy = 0, 0
    while written < count:
        block = np.roll(cats, copy % 17, axis=3)[:count - written]
        writer.append(block, None)
        written += len(block)
        copy += 1
    writer.finish({"source": "synthetic (cat faces tiled)", "count": count, "resolution": 64, "channels": 3,
                   "flippable": True, "class_names": []})


def train_run(data: str, run: Path, steps: int, env: dict) -> dict:
    """Train dcgan-cats64 (float32, batch 128) on data; return images/s (median of its rows after the first) and peaks."""
    command = [sys.executable, "-m", "purrgan", "train", "--preset", "dcgan-cats64", "--data", data, "--out", str(run),
               "--steps", str(steps), "--quiet", "--logger", "none", "--device", "cpu", "--set", "train.amp=off",
               "--set", "train.log_every=5", "--set", "train.sample_every=100000", "--set", "train.checkpoint_every=100000"]
    out, peaks = peak_memory(command, env)
    if out.returncode != 0:
        sys.exit(f"training on {data} failed:\n{out.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"images_per_s": statistics.median(r["images_per_s"] for r in rows[1:]), "peaks": peaks, "steps": steps}


def sampling_peak(env: dict, count: int = 200_000) -> tuple[dict[str, float], float]:
    """Return (peak RssAnon and RssFile in MB, seconds) of streaming count 64x64 RGB images out of a narrow DCGAN G."""
    code = f"""
import torch
from purrgan.config import load_config
from purrgan.generate import TrainedGenerator
from purrgan.models import build_generator
config = load_config("dcgan-cats64", overrides={{"model.g_width": "8", "train.amp": "off"}})
generator = TrainedGenerator(build_generator(config).eval(), config.model.z_dim, [], config)
print(sum(len(chunk) for chunk in generator.batches({count}, seed=0)))
"""
    started = time.perf_counter()
    out, peaks = peak_memory([sys.executable, "-c", code], env)
    if out.returncode != 0 or int(out.stdout.split()[-1]) != count:
        sys.exit(f"sampling failed:\n{out.stderr[-2000:]}")
    return peaks, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the large set is written (then deleted)")
    parser.add_argument("--images", type=int, help="images in the large set (default: 1.1x the RAM, as far as the disk allows)")
    parser.add_argument("--steps", type=int, default=40, help="training steps per run (rows every 5; the first is warm-up)")
    args = parser.parse_args()
    if not Path("/proc/self/status").exists():
        sys.exit("scale.py reads process memory from /proc (Linux)")
    work = Path(tempfile.mkdtemp(prefix="purrgan-scale-", dir=args.dir))
    env = {**os.environ, "PURRGAN_DATA": str(work / "cache"), "PYTHONPATH": str(ROOT / "src")}
    try:
        free = shutil.disk_usage(work).free
        wanted = args.images or int(1.1 * ram_bytes() / IMAGE_BYTES) + 1
        count = min(wanted, int((free - 5 * 2 ** 30) / IMAGE_BYTES))
        if count < wanted:
            print(f"only {free / 2 ** 30:.0f} GiB free in {work}: the large set is {count:,} images instead of {wanted:,}")
        from purrgan.device import describe_device
        import torch

        print(f"device: {describe_device(torch.device('cpu'))}; RAM {ram_bytes() / 2 ** 30:.1f} GiB; torch {torch.__version__}",
              flush=True)
        prepares = prepare_rates(work, env)
        print("prepare measured", flush=True)
        big = work / "large.safetensors"
        started = time.perf_counter()
        synthetic_set(big, count, env)
        write_s = time.perf_counter() - started
        size = big.stat().st_size
        print(f"large set: {count:,} images of 64x64x3, {size / 2 ** 30:.1f} GiB on disk "
              f"({size / ram_bytes():.2f}x the RAM), written in {write_s:.0f} s", flush=True)
        small = str(CATS) if CATS.is_file() else "digits"
        in_memory = train_run(small, work / "run-small", args.steps, env)
        large = train_run(str(big), work / "run-large", args.steps, env)
        sample_peaks, sample_s = sampling_peak(env)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n`python benchmarks/scale.py{' --images ' + str(args.images) if args.images else ''}`\n")
    print("| what | data | images/s | peak RssAnon | peak RssFile |")
    print("|---|---|---|---|---|")
    for name, workers, rate, images, peaks in prepares:
        print(f"| prepare, {workers} decoding process{'es' if workers > 1 else ''} | {name}: {images:,} JPEGs to 64x64 | "
              f"{rate:,.0f} | {peaks['RssAnon']:,.0f} MB ({peaks['RssAnon (main)']:,.0f} MB in the main process) | "
              f"{peaks['RssFile']:,.0f} MB |")
    for label, result, what in (("train, in memory", in_memory, f"{Path(small).name} (fits in the page cache)"),
                                ("train, larger than RAM", large, f"{count:,} images, {size / 2 ** 30:.1f} GiB = {size / ram_bytes():.2f}x RAM")):
        print(f"| {label} (dcgan-cats64, float32, batch 128) | {what} | {result['images_per_s']:.1f} | "
              f"{result['peaks']['RssAnon']:,.0f} MB | {result['peaks']['RssFile']:,.0f} MB |")
    ratio = large["images_per_s"] / in_memory["images_per_s"]
    print(f"| sample 200,000 64x64 images, streamed (holding them as float32 would take "
          f"{200_000 * IMAGE_BYTES * 4 / 2 ** 20:,.0f} MB) | DCGAN G at width 8 | {200_000 / sample_s:,.0f} | "
          f"{sample_peaks['RssAnon']:,.0f} MB | {sample_peaks['RssFile']:,.0f} MB |")
    print(f"\nlarger-than-RAM training runs at {ratio:.0%} of the in-memory speed (goal: within 10%); its peak "
          f"anonymous memory is {large['peaks']['RssAnon'] / 1024:.2f} GB (goal: under 2 GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
