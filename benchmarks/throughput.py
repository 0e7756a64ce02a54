"""Training throughput of purrgan's loop against a conventional tutorial-style baseline, in the same run.

The baseline is written the way the DCGAN tutorials do it: torchvision ImageFolder over PNG files, a
DataLoader with worker processes, per-image transforms, the same DCGAN, the same batch size and steps,
one G forward reused for D's and G's step, BCE. purrgan's loop keeps the prepared uint8 data on the
training device and augments there. Each mode runs in its own process (so peak memory is its own),
warms up, then reports the median images/s of several timed repeats.

    python benchmarks/throughput.py                       # CPU, the default digits-sized DCGAN (32x32, widths 32)
    python benchmarks/throughput.py --model dcgan64       # the reference DCGAN-64
    python benchmarks/throughput.py --device cuda --model dcgan64   # on a GPU (purrgan's defaults there: bf16, channels_last)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MODELS = {  # name: (resolution, channels, g_width, d_width)
    "digits": (32, 1, 32, 32),
    "dcgan32": (32, 3, 64, 64),
    "dcgan64": (64, 3, 64, 64),
}


def make_image_folder(root: Path, count: int, resolution: int, channels: int) -> Path:
    """Write count PNG files (real cat faces when ../shared has them, else the built-in digits) in ImageFolder layout."""
    from PIL import Image

    folder = root / "images" / "all"
    folder.mkdir(parents=True)
    cats = ROOT.parent / "shared" / "data" / "cats64-kaggle.tar.gz"
    if channels == 3 and cats.exists():
        from purrgan.data.archives import iter_images
        for i, (_, blob) in enumerate(iter_images(cats)):
            if i >= count:
                break
            (folder / f"{i:06d}.jpg").write_bytes(blob)
            Image.open(folder / f"{i:06d}.jpg").convert("RGB").save(folder / f"{i:06d}.png")
            (folder / f"{i:06d}.jpg").unlink()
        source = "cats64-kaggle (real photos)"
    else:
        from purrgan.data import load_images
        digits = load_images("digits", resolution, channels).images
        for i in range(count):
            array = digits[i % len(digits)].permute(1, 2, 0).numpy()
            Image.fromarray(array[:, :, 0] if channels == 1 else array).save(folder / f"{i:06d}.png")
        source = "built-in digits"
    (root / "source.txt").write_text(source)
    return root / "images"


def step_flops(device: str, resolution: int, channels: int, g_width: int, d_width: int, batch: int) -> float:
    """Return the FLOPs of one training step (D on real and fake, then G), counted from the ops' shapes."""
    from torch.utils.flop_counter import FlopCounterMode

    from purrgan.models.dcgan import Discriminator, Generator

    generator = Generator(100, channels, resolution, g_width).to(device)
    discriminator = Discriminator(channels, resolution, d_width).to(device)
    real = torch.randn(batch, channels, resolution, resolution, device=device)
    with FlopCounterMode(display=False) as counter:
        fake = generator(torch.randn(batch, 100, device=device))
        (discriminator(real).mean() + discriminator(fake.detach()).mean()).backward()
        discriminator(fake).mean().backward()
    return float(counter.get_total_flops())


def matmul_peak(device: str) -> float:
    """Return the FLOP/s of a large float32 matrix product on device: the practical ceiling for this loop."""
    n = 2048 if device == "cpu" else 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    _sync(device)
    start, reps = time.perf_counter(), 3 if device == "cpu" else 20
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def sampling_rate(device: str, model: str, count: int, batch: int) -> float:
    """Return images/s of `purrgan sample`'s path (TrainedGenerator.sample) for a DCGAN G of the given model."""
    from purrgan.generate import TrainedGenerator
    from purrgan.models.dcgan import Generator

    resolution, channels, g_width, _ = MODELS[model]
    network = Generator(100, channels, resolution, g_width).to(device).eval()
    generator = TrainedGenerator(network, 100, [])
    generator.sample(batch, seed=0, batch_size=batch)  # warm-up
    _sync(device)
    start = time.perf_counter()
    generator.sample(count, seed=1, batch_size=batch)
    _sync(device)
    return count / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------- the two loops, each in a child process


def run_baseline(args, folder: Path) -> dict:
    import torchvision.datasets as dset
    import torchvision.transforms as transforms

    from purrgan.models.dcgan import Discriminator, Generator

    resolution, channels, g_width, d_width = MODELS[args.model]
    device = torch.device(args.device)
    transform = transforms.Compose([
        *([transforms.Grayscale()] if channels == 1 else []),
        transforms.Resize(resolution), transforms.CenterCrop(resolution), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize((0.5,) * channels, (0.5,) * channels)])
    dataset = dset.ImageFolder(root=str(folder), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                         drop_last=True, pin_memory=device.type == "cuda", persistent_workers=True)
    generator = Generator(100, channels, resolution, g_width).to(device)
    discriminator = Discriminator(channels, resolution, d_width).to(device)
    criterion = torch.nn.BCEWithLogitsLoss()
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    batches = iter(loader)

    def next_batch():
        nonlocal batches
        try:
            return next(batches)[0]
        except StopIteration:
            batches = iter(loader)
            return next(batches)[0]

    def steps(count: int) -> tuple[float, float]:
        waited, start = 0.0, time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            real = next_batch().to(device, non_blocking=True)
            waited += time.perf_counter() - t
            discriminator.zero_grad()
            out_real = discriminator(real)
            error_real = criterion(out_real, torch.ones_like(out_real))
            error_real.backward()
            fake = generator(torch.randn(real.shape[0], 100, device=device))
            out_fake = discriminator(fake.detach())
            error_fake = criterion(out_fake, torch.zeros_like(out_fake))
            error_fake.backward()
            opt_d.step()
            generator.zero_grad()
            out = discriminator(fake)
            criterion(out, torch.ones_like(out)).backward()
            opt_g.step()
            float(error_real + error_fake)  # the tutorial prints the losses every step
        _sync(args.device)
        return time.perf_counter() - start, waited

    return _measure(args, steps)


def run_purrgan(args, folder: Path) -> dict:
    from purrgan.config import load_config
    from purrgan.data import load_images
    from purrgan.train import train

    resolution, channels, g_width, d_width = MODELS[args.model]
    overrides = {"data.source": str(folder), "data.resolution": str(resolution), "data.channels": str(channels),
                 "data.hflip": "on", "model.g_width": str(g_width), "model.d_width": str(d_width),
                 "train.batch_size": str(args.batch), "train.device": args.device, "train.logger": "none",
                 "train.sample_every": "1000000", "train.checkpoint_every": "1000000", "train.log_every": str(args.steps),
                 "train.amp": args.amp, "train.channels_last": args.channels_last,
                 "train.compile": str(args.compile).lower()}
    load_images(str(folder), resolution, channels)  # prepare once, outside the timing (as the baseline's file scan)
    run_root = Path(tempfile.mkdtemp())
    total = args.warmup + args.steps * args.repeats
    config = load_config(overrides={**overrides, "train.steps": str(total)})
    start = time.perf_counter()
    train(config, run_root / "run")
    rows = [json.loads(line) for line in (run_root / "run" / "metrics.jsonl").read_text().splitlines()]
    # Rows come every args.steps steps; the first covers warm-up and is dropped.
    timed = [r for r in rows if r["step"] > args.warmup]
    rates = [r["images_per_s"] for r in timed][-args.repeats:]
    return {"images_per_s": statistics.median(rates), "rates": rates, "data_share": 0.0,
            "wall_s": time.perf_counter() - start, **_memory(args.device)}


def _measure(args, steps) -> dict:
    steps(args.warmup)
    rates, shares = [], []
    for _ in range(args.repeats):
        seconds, waited = steps(args.steps)
        rates.append(args.steps * args.batch / seconds)
        shares.append(waited / seconds)
    return {"images_per_s": statistics.median(rates), "rates": rates, "data_share": statistics.median(shares),
            **_memory(args.device)}


def _memory(device: str) -> dict:
    if device.startswith("cuda"):
        return {"peak_memory_mb": torch.cuda.max_memory_allocated() / 2 ** 20, "memory_kind": "GPU allocated"}
    return {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "memory_kind": "CPU RSS"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="digits", choices=MODELS)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--images", type=int, default=5000, help="PNG files in the image folder")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="baseline DataLoader workers")
    parser.add_argument("--amp", default="auto", help="purrgan: auto (its default: bf16 on CUDA, off on CPU), off, bf16, fp16")
    parser.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"), help="purrgan's memory layout")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--sampling-only", action="store_true", help="only measure sampling images/s")
    parser.add_argument("--sample-num", type=int, default=20000, help="images drawn for the sampling rate")
    parser.add_argument("--sample-batch", type=int, default=1024)
    parser.add_argument("--child", choices=("baseline", "purrgan"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        os.environ.setdefault("PURRGAN_DATA", str(Path(args.folder).parent / "cache"))
        result = (run_baseline if args.child == "baseline" else run_purrgan)(args, Path(args.folder))
        print("RESULT " + json.dumps(result))
        return

    resolution, channels, g_width, d_width = MODELS[args.model]
    if args.sampling_only:
        rate = sampling_rate(args.device, args.model, args.sample_num, args.sample_batch)
        name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
        print(f"device: {name}; model {args.model}; sampling {args.sample_num} images in batches of "
              f"{args.sample_batch}: {rate:.0f} images/s")
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_image_folder(Path(tmp), args.images, resolution, channels)
        results = {}
        for mode in ("baseline", "purrgan"):
            command = [sys.executable, __file__, "--child", mode, "--folder", str(folder)] + sys.argv[1:]
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
            results[mode] = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[7:])
        source = (Path(tmp) / "source.txt").read_text()
    flops = step_flops(args.device, resolution, channels, g_width, d_width, args.batch)
    peak = matmul_peak(args.device)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    base = results["baseline"]["images_per_s"]
    print(f"\ndevice: {name}; torch {torch.__version__}; model {args.model} ({resolution}x{resolution}x{channels}, "
          f"widths {g_width}/{d_width}); batch {args.batch}; data: {args.images} PNGs of {source}")
    print(f"median of {args.repeats} repeats x {args.steps} steps after {args.warmup} warm-up steps; "
          f"baseline DataLoader workers: {args.workers}; purrgan amp={args.amp} channels_last={args.channels_last} "
          f"compile={args.compile}\n")
    print(f"| loop | images/s | ratio | peak memory | data-loading share | GFLOP/step | achieved TFLOP/s | of matmul peak |")
    print(f"|---|---|---|---|---|---|---|---|")
    for mode, r in results.items():
        achieved = r["images_per_s"] / args.batch * flops
        print(f"| {mode} | {r['images_per_s']:.0f} | {r['images_per_s'] / base:.2f}x | {r['peak_memory_mb']:.0f} MB "
              f"({r['memory_kind']}) | {100 * r['data_share']:.0f}% | {flops / 1e9:.1f} | {achieved / 1e12:.3f} | "
              f"{100 * achieved / peak:.0f}% |")
    print(f"\nmatmul peak measured on this device: {peak / 1e12:.3f} TFLOP/s (float32)")
    rate = sampling_rate(args.device, args.model, args.sample_num, args.sample_batch)
    print(f"sampling (purrgan sample's path): {rate:.0f} images/s ({args.sample_num} images, batches of {args.sample_batch})")


if __name__ == "__main__":
    main()
