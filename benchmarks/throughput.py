"""Training throughput: purrgan as a user runs it, its bare step, and a tutorial-style loop, measured in one run.

Loops, each in its own process (so peak memory is its own), all on the same data, model and batch:
- tutorial: the pytorch/examples DCGAN loop -- torchvision ImageFolder over the image files (real JPEGs
  of the cat faces when ../shared has them), a DataLoader with worker processes, per-image transforms,
  float32, two G forwards per step, losses printed every step;
- step: purrgan's train_step() alone on a TrainState (data resident, channels_last, its precision);
- run: `purrgan train --preset ...` exactly as a user runs it (TensorBoard, metrics, grids and
  checkpoints on the preset's schedule), timed from its own metrics rows after warm-up;
- step+compile (with --compile): the bare step with torch.compile.

FLOPs are counted per step as executed (FlopCounterMode around one real train_step: one G forward
when D's fake batch is reused), and compared with a float32 peak measured in the same run (the best of
large matrix products and a large 3x3 convolution on this device).

    python benchmarks/throughput.py                          # DCGAN-64 on the cat faces (or the digits), CPU
    python benchmarks/throughput.py --model digits           # the default preset's model
    python benchmarks/throughput.py --device cuda --compile  # on a GPU
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
CATS = Path(os.environ.get("PURRGAN_SHARED_DATA", ROOT.parent / "shared" / "data")) / "cats64-kaggle.tar.gz"

MODELS = {  # name: (preset, resolution, channels, width)
    "digits": ("dcgan-digits", 32, 1, 32),
    "dcgan32": ("dcgan-cifar-dog", 32, 3, 64),
    "dcgan64": ("dcgan-cats64", 64, 3, 64),
}


def make_image_folder(root: Path, count: int, resolution: int, channels: int) -> tuple[Path, str]:
    """Write count image files in ImageFolder layout: the cat-face JPEGs as they are, else the digits as PNG."""
    from PIL import Image

    folder = root / "images" / "all"
    folder.mkdir(parents=True)
    if channels == 3 and CATS.exists():
        from purrgan.data.archives import iter_images

        for i, (_, blob) in enumerate(iter_images(CATS)):
            if i >= count:
                break
            (folder / f"{i:06d}.jpg").write_bytes(blob)
        return root / "images", "cat-face JPEGs (cats64-kaggle)"
    from purrgan.data import load_images

    digits = load_images("digits", resolution, channels).images
    for i in range(count):
        array = digits[i % len(digits)].permute(1, 2, 0).numpy()
        Image.fromarray(array[:, :, 0] if channels == 1 else array).save(folder / f"{i:06d}.png")
    return root / "images", "built-in digits as PNG"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fp32_peak(device: str) -> tuple[float, str]:
    """Return the best float32 FLOP/s of large matrix products and a large 3x3 convolution, and which it was."""
    import torch.nn.functional as F

    results = {}
    for n in ((2048, 4096) if device == "cpu" else (8192, 16384)):
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        results[f"{n}x{n} matmul"] = _rate(lambda: a @ b, 2 * n ** 3, device)
    x = torch.randn(128, 256, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    results["3x3 conv 256->256 at 16x16"] = _rate(lambda: F.conv2d(x, w, padding=1), 2 * 128 * 256 * 256 * 9 * 256, device)
    best = max(results, key=results.get)
    return results[best], best


def _rate(op, flops: float, device: str, reps: int = 5) -> float:
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # a float32 peak, not TF32
        for _ in range(2):
            op()
        _sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            op()
        _sync(device)
    return flops * reps / (time.perf_counter() - start)


def _config(args, folder: Path, **extra):
    from purrgan.config import load_config

    preset, resolution, channels, width = MODELS[args.model]
    overrides = {"data.source": str(folder), "data.resolution": str(resolution), "data.channels": str(channels),
                 "train.batch_size": str(args.batch), "train.device": args.device, **extra}
    return load_config(preset, overrides=overrides)


def _memory(device: str) -> dict:
    if device.startswith("cuda"):
        return {"peak_memory_mb": torch.cuda.max_memory_allocated() / 2 ** 20, "memory_kind": "GPU"}
    return {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "memory_kind": "CPU RSS"}


# ---------------------------------------------------------------- the loops, each in a child process


def run_tutorial(args, folder: Path) -> dict:
    import torchvision.datasets as dset
    import torchvision.transforms as transforms

    from purrgan.models.dcgan import Discriminator, Generator

    _, resolution, channels, width = MODELS[args.model]
    device = torch.device(args.device)
    transform = transforms.Compose([
        *([transforms.Grayscale()] if channels == 1 else []),
        transforms.Resize(resolution), transforms.CenterCrop(resolution), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize((0.5,) * channels, (0.5,) * channels)])
    loader = torch.utils.data.DataLoader(dset.ImageFolder(root=str(folder), transform=transform), batch_size=args.batch,
                                         shuffle=True, num_workers=args.workers, drop_last=True,
                                         pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)
    generator, discriminator = Generator(100, channels, resolution, width).to(device), Discriminator(channels, resolution, width).to(device)
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

    def steps(count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            real = next_batch().to(device, non_blocking=True)
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
        return time.perf_counter() - start

    steps(args.warmup)
    rates = [args.steps * args.batch / steps(args.steps) for _ in range(args.repeats)]
    return {"images_per_s": statistics.median(rates), "rates": rates, **_memory(args.device)}


def run_step(args, folder: Path, compile: bool = False) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from purrgan.data import load_images
    from purrgan.dist import Distributed
    from purrgan.state import TrainState
    from purrgan.loop import settle_precision, train_step

    config = _config(args, folder, **({"train.compile": "true"} if compile else {}), **({"train.amp": args.amp} if args.amp else {}))
    data = load_images(config.data.source, config.data.resolution, config.data.channels)
    device = torch.device(args.device)
    config = settle_precision(config, data, device, Distributed())
    state = TrainState.create(config, data, device, Distributed())
    for _ in range(args.warmup):
        train_step(state)
    with FlopCounterMode(display=False) as counter:  # one step, as executed
        train_step(state)
    rates = []
    for _ in range(args.repeats):
        _sync(args.device)
        start = time.perf_counter()
        for _ in range(args.steps):
            train_step(state)
        _sync(args.device)
        rates.append(args.steps * args.batch * config.optim.d_steps / (time.perf_counter() - start))
    return {"images_per_s": statistics.median(rates), "rates": rates, "flops_per_step": counter.get_total_flops(),
            "precision": config.train.amp, **_memory(args.device)}


def run_cli(args, folder: Path) -> dict:
    """`purrgan train --preset P --data FOLDER --steps N` as a user types it; images/s from its own metrics rows."""
    preset = MODELS[args.model][0]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        total = args.warmup + args.steps * args.repeats
        command = [sys.executable, "-m", "purrgan", "train", "--preset", preset, "--data", str(folder), "--out", str(run),
                   "--steps", str(total), "--batch-size", str(args.batch), "--device", args.device, "--quiet",
                   *(["--set", f"train.amp={args.amp}"] if args.amp else [])]
        if args.model != "dcgan64":
            _, resolution, channels, _ = MODELS[args.model]
            command += ["--set", f"data.resolution={resolution}", "--set", f"data.channels={channels}"]
        started = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"purrgan train failed:\n{out.stderr[-3000:]}")
        wall = time.perf_counter() - started
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        config = (run / "config.toml").read_text()
    timed = [r for r in rows if r["step"] > args.warmup]  # rows every log_every steps; the first holds the warm-up
    span = timed[-1]["elapsed_s"] - rows[rows.index(timed[0]) - 1]["elapsed_s"] if rows.index(timed[0]) else timed[-1]["elapsed_s"]
    steps = timed[-1]["step"] - (rows[rows.index(timed[0]) - 1]["step"] if rows.index(timed[0]) else 0)
    precision = "bf16" if 'amp = "bf16"' in config else "float32" if 'amp = "off"' in config else "auto"
    return {"images_per_s": steps * args.batch / span, "wall_s": wall, "steps_timed": steps, "precision": precision,
            "peak_memory_mb": float("nan"), "memory_kind": "-"}


def sampling_rate(args) -> float:
    """Return images/s of `purrgan sample`'s path (TrainedGenerator.sample) for the model's G."""
    from purrgan.generate import TrainedGenerator
    from purrgan.models.dcgan import Generator

    _, resolution, channels, width = MODELS[args.model]
    network = Generator(100, channels, resolution, width).to(args.device).eval()
    generator = TrainedGenerator(network, 100, [])
    for _ in generator.batches(args.sample_batch, seed=0, batch_size=args.sample_batch):
        pass
    _sync(args.device)
    start = time.perf_counter()
    for _ in generator.batches(args.sample_num, seed=1, batch_size=args.sample_batch):  # streamed: nothing kept
        pass
    _sync(args.device)
    return args.sample_num / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="dcgan64", choices=MODELS)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=25, help="steps per timed repeat (the run is timed over all of them)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=25)
    parser.add_argument("--images", type=int, default=5000, help="image files in the folder")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="the tutorial's DataLoader workers")
    parser.add_argument("--amp", help="purrgan's train.amp (default: its own, measured on a CPU)")
    parser.add_argument("--compile", action="store_true", help="also the bare step with torch.compile")
    parser.add_argument("--sample-num", type=int, default=20000)
    parser.add_argument("--sample-batch", type=int, default=1024)
    parser.add_argument("--only", choices=("tutorial", "step", "run", "compile", "sampling"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.only:
        os.environ.setdefault("PURRGAN_DATA", str(Path(args.folder).parent / "cache"))
        loops = {"tutorial": run_tutorial, "step": run_step, "run": run_cli,
                 "compile": lambda a, f: run_step(a, f, compile=True)}
        print("RESULT " + json.dumps(loops[args.only](args, Path(args.folder))))
        return

    _, resolution, channels, width = MODELS[args.model]
    modes = ["tutorial", "step", "run"] + (["compile"] if args.compile else [])
    with tempfile.TemporaryDirectory() as tmp:
        folder, source = make_image_folder(Path(tmp), args.images, resolution, channels)
        env = {**os.environ, "PURRGAN_DATA": str(Path(tmp) / "cache")}
        results = {}
        for mode in modes:
            command = [sys.executable, __file__, "--only", mode, "--folder", str(folder)] + sys.argv[1:]
            out = subprocess.run(command, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
            results[mode] = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
            print(f"{mode}: {results[mode]['images_per_s']:.0f} images/s", flush=True)
    peak, peak_kind = fp32_peak(args.device)
    flops = results["step"]["flops_per_step"]
    from purrgan.device import describe_device

    name = describe_device(torch.device(args.device))
    base = results["tutorial"]["images_per_s"]
    print(f"\ndevice: {name}; torch {torch.__version__}; model {args.model} ({resolution}x{resolution}x{channels}, "
          f"width {width}); batch {args.batch}; data: {args.images} {source}")
    print(f"step/run: {args.warmup} warm-up steps, then {args.repeats} x {args.steps} timed; tutorial DataLoader workers "
          f"{args.workers}; purrgan precision: {results['step']['precision']}\n")
    print("| loop | images/s | vs tutorial | GFLOP/step | achieved GFLOP/s | of fp32 peak | peak memory |")
    print("|---|---|---|---|---|---|---|")
    labels = {"tutorial": "tutorial (pytorch/examples style)", "step": "purrgan train_step (bare)",
              "run": "purrgan train (as a user runs it)", "compile": "purrgan train_step + torch.compile"}
    for mode in modes:
        r = results[mode]
        achieved = r["images_per_s"] / args.batch * flops  # the tutorial does one more G forward: a lower bound for it
        memory = f"{r['peak_memory_mb']:.0f} MB ({r['memory_kind']})" if r["peak_memory_mb"] == r["peak_memory_mb"] else "-"
        print(f"| {labels[mode]} | {r['images_per_s']:.0f} | {r['images_per_s'] / base:.2f}x | {flops / 1e9:.1f} | "
              f"{achieved / 1e9:.0f} | {100 * achieved / peak:.0f}% | {memory} |")
    print(f"\nfp32 peak measured here: {peak / 1e9:.0f} GFLOP/s ({peak_kind}); a real run reaches "
          f"{results['run']['images_per_s'] / results['step']['images_per_s']:.0%} of the bare step "
          f"(precision {results['run']['precision']})")
    ceiling = peak / flops * args.batch  # images/s if every executed FLOP ran at the measured peak
    print(f"ceiling at 100% of that peak: {ceiling:.0f} images/s = {ceiling / base:.2f}x the tutorial "
          f"({0.7 * ceiling / base:.2f}x at 70%); a speed-up target above it needs fewer FLOPs or lower precision")
    print(f"sampling (purrgan sample's path): {sampling_rate(args):.0f} images/s ({args.sample_num} images, batches of "
          f"{args.sample_batch})")


if __name__ == "__main__":
    main()
