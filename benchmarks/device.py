"""Everything the GPU checks measure, in one call: training and sampling speed, and a short quality run.

Run by benchmarks/gpu.sh on a lent GPU machine (which checks the prerequisites and installs the carried
wheels first); `bash benchmarks/gpu.sh --dry-run` runs the same parts on the CPU with tiny sizes, and
the test suite runs that. Each measurement runs in its own process with its own time limit, so one
that fails or hangs costs only its part; every row of the tables names the device, the torch version
and the command that measures it alone.

    python benchmarks/device.py --gpu-dir .gpu --out /tmp/out            # on the GPU machine (via gpu.sh)
    python benchmarks/device.py --gpu-dir .gpu --out /tmp/out --dry-run  # the same on the CPU, tiny
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()


@dataclass(frozen=True)
class Part:
    """One measurement: a training speed, a sampling speed or the quality run."""
    name: str
    kind: str  # "train", "sample" or "quality"
    preset: str
    resolution: int = 64
    options: dict = field(default_factory=dict)  # train.* settings (compile, amp, batch_size)
    limit_s: int = 150  # on the GPU; a part that takes longer is stopped and reported as such


PARTS = (
    Part("DCGAN-64 training, float32 (TF32), eager", "train", "dcgan-cats64", options={"amp": "off", "batch_size": 1024}),
    Part("DCGAN-64 training, bf16, eager", "train", "dcgan-cats64", options={"amp": "bf16", "batch_size": 1024}),
    Part("DCGAN-64 training, bf16, compiled", "train", "dcgan-cats64",
         options={"amp": "bf16", "batch_size": 1024, "compile": "true"}, limit_s=240),
    Part("DCGAN-64 sampling, streamed, the run's precision", "sample", "dcgan-cats64"),
    Part("r3gan-cats64-gpu training (its preset: batch 256)", "train", "r3gan-cats64-gpu"),
    Part("sngan-cifar10 training (its preset: batch 64, 5 D steps)", "train", "sngan-cifar10", resolution=32),
    Part("cats quality run (best-cats64)", "quality", "best-cats64", limit_s=0),  # limit: --minutes + scoring
)
TINY = {"model.g_width": "8", "model.d_width": "8", "train.num_samples": "16"}  # the dry run's networks


# ---------------------------------------------------------------- the measurements (each in a child process)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _config(part: Part, args, source: str):
    from purrgan.config import load_config

    overrides = {"data.source": source, "data.resolution": str(part.resolution), "data.channels": "3",
                 "train.device": "cpu" if args.dry_run else "cuda", "train.logger": "none",
                 **{f"train.{k}": str(v) for k, v in part.options.items()}}
    if args.dry_run:
        overrides.update(TINY)
        overrides["train.batch_size"] = "8"
        if part.preset.startswith("r3gan"):  # group_size 16 needs at least 16 hidden channels
            overrides.update({"model.g_width": "16", "model.d_width": "16"})
    return load_config(part.preset, overrides=overrides)


def measure_training(part: Part, args, source: str) -> dict:
    """Return images/s of the bare train_step (as `purrgan train` runs it, without logging) after a warm-up."""
    import torch

    from purrgan.data import load_images
    from purrgan.device import resolve_device, tune_backends
    from purrgan.dist import Distributed
    from purrgan.state import TrainState
    from purrgan.loop import prepare_config, real_images_per_step, train_step, warm_up_compiled

    config = _config(part, args, source)
    device = resolve_device(config.train.device)
    data = load_images(config.data.source, config.data.resolution, config.data.channels)
    config = prepare_config(config, data)
    state = TrainState.create(config, data, device, Distributed())
    tune_backends(device, state.precision)
    started = time.perf_counter()
    warm_up_compiled(state)
    warm, steps = (1, 2) if args.dry_run else (10, 30)
    for _ in range(warm):
        train_step(state)
    _sync(device)
    warm_up_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        train_step(state)
    _sync(device)
    seconds = time.perf_counter() - started
    return {"images_per_s": steps * real_images_per_step(config) / seconds, "batch": config.train.batch_size,
            "precision": str(state.precision).replace("torch.", "") if state.precision else "float32",
            "compiled": state.compiled, "warm_up_s": round(warm_up_s, 1), "steps": steps,
            "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None}


def measure_sampling(part: Part, args, source: str) -> dict:
    """Return images/s of TrainedGenerator.batches() streaming images into a counter (nothing gathered on the host)."""
    from purrgan.device import resolve_device
    from purrgan.generate import TrainedGenerator, sampling_precision
    from purrgan.models import build_generator

    config = _config(part, args, source)
    device = resolve_device(config.train.device)
    network = build_generator(config).to(device).eval()
    generator = TrainedGenerator(network, config.model.z_dim, [], config)
    total, batch = (256, 64) if args.dry_run else (2_000_000, 16_384)
    for _ in generator.batches(batch, seed=0, batch_size=batch):  # warm-up: cuDNN picks its kernels
        pass
    _sync(device)
    started, count = time.perf_counter(), 0
    for images in generator.batches(total, seed=1, batch_size=batch):
        count += len(images)
    _sync(device)
    seconds = time.perf_counter() - started
    precision = sampling_precision(config, device)
    return {"images_per_s": count / seconds, "batch": batch, "images": count,
            "precision": str(precision).replace("torch.", "") if precision else "float32"}


def measure_quality(part: Part, args, source: str) -> dict:
    """Train best-cats64 for a few minutes, score it with the yardstick, and save its grid into --out."""
    run_root = Path(args.work) / "quality"
    command = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--data", source, "--recipes", part.preset,
               "--yardstick", str(Path(args.gpu_dir) / "yardstick.pt"), "--out", str(run_root),
               "--json", str(Path(args.out) / "quality.json"), "--device", "cpu" if args.dry_run else "cuda"]
    if args.dry_run:
        command += ["--images", "48", "--batch-size", "8", "--eval-num", "64",
                    *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")], "--set", "train.batch_size=8"]
    else:
        command += ["--minutes", str(args.minutes), "--eval-num", "2000"]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0 or not (Path(args.out) / "quality.json").is_file():
        raise RuntimeError(f"quality.py failed: {(out.stdout + out.stderr)[-1500:]}")
    result = json.loads((Path(args.out) / "quality.json").read_text())
    row = result["results"][0]
    run = run_root / f"{part.preset}-seed0"
    grid = Path(args.out) / "cats-grid.png"
    sample = subprocess.run([sys.executable, "-m", "purrgan", "sample", str(run), "--num", "64", "--seed", "0", "--out",
                             str(grid), "--device", "cpu" if args.dry_run else "cuda"], capture_output=True, text=True)
    if sample.returncode != 0:
        raise RuntimeError(f"purrgan sample failed: {sample.stderr[-1000:]}")
    return {"fd": row["fd"], "kid": row["kid"], "floor_fd": result["floor"]["fd"], "steps": row["steps"],
            "images_per_s": row["images_per_s"], "budget": result["budget"], "grid": grid.name}


MEASURE = {"train": measure_training, "sample": measure_sampling, "quality": measure_quality}


# ---------------------------------------------------------------- the driver


def prepared_source(args, resolution: int) -> str:
    """Return the carried cat faces as a prepared file at this size (built once, in the work folder)."""
    from purrgan.data.prepare import prepare
    from purrgan.data.sources import parse_source

    out = Path(args.work) / f"cats-{resolution}.safetensors"
    return str(prepare(parse_source(str(Path(args.gpu_dir) / "cats64-kaggle.tar.gz")), resolution, 3, out=out))


def run_part(part: Part, args) -> tuple[dict | None, str, str]:
    """Run one part in a child process; return (its result or None, what went wrong, the command that runs it alone)."""
    index = PARTS.index(part)
    alone = [sys.executable, str(HERE), "--only", str(index), "--gpu-dir", args.gpu_dir, "--out", args.out,
             "--work", args.work, "--minutes", str(args.minutes), *(["--dry-run"] if args.dry_run else [])]
    limit = part.limit_s or int(args.minutes * 60 * 1.3 + 180)
    if args.dry_run:
        limit = 300
    try:
        out = subprocess.run(alone, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return None, f"stopped after its {limit} s limit", shlex.join(alone)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        lines = [l for l in (out.stderr or out.stdout).strip().splitlines() if l.strip()]
        return None, (lines[-1] if lines else f"exit status {out.returncode}")[:300], shlex.join(alone)
    return json.loads(line[7:]), "", shlex.join(alone)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-dir", default=str(ROOT / ".gpu"), help="the carried folder (benchmarks/gpu_pack.py)")
    parser.add_argument("--out", required=True, help="where the tables, the JSON and the grid go")
    parser.add_argument("--work", default="/tmp/purrgan-device", help="scratch space (prepared data, runs)")
    parser.add_argument("--minutes", type=float, default=2.5, help="training minutes of the quality run")
    parser.add_argument("--dry-run", action="store_true", help="the CPU, tiny networks and sizes: checks the script")
    parser.add_argument("--only", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        import purrgan  # noqa: F401 - the carried wheel, installed by gpu.sh
    except ImportError:
        sys.path.insert(0, str(ROOT / "src"))  # else the checkout's own
    os.environ.setdefault("PURRGAN_DATA", str(Path(args.work) / "cache"))
    Path(args.work).mkdir(parents=True, exist_ok=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)

    if args.only is not None:  # a child: one measurement, one JSON line
        part = PARTS[args.only]
        source = str(Path(args.gpu_dir) / "cats64-kaggle.tar.gz") if part.kind == "quality" else \
            prepared_source(args, part.resolution)
        print("RESULT " + json.dumps(MEASURE[part.kind](part, args, source)), flush=True)
        return 0

    import torch

    from purrgan.device import describe_device

    device = describe_device(torch.device("cpu" if args.dry_run else "cuda"))
    for resolution in sorted({p.resolution for p in PARTS if p.kind != "quality"}):
        prepared_source(args, resolution)  # once, before the timed parts
    header = f"device: {device}; torch {torch.__version__}; {'DRY RUN (CPU, tiny networks: not a measurement)' if args.dry_run else time.strftime('%Y-%m-%d')}"
    print(header, flush=True)
    rows, failed, began = [], 0, time.perf_counter()
    for part in PARTS:
        started = time.perf_counter()
        result, problem, command = run_part(part, args)
        failed += result is None
        rows.append((part, result, problem, command))
        status = f"{result['images_per_s']:,.0f} images/s" if result and "images_per_s" in result else problem or "done"
        print(f"  {part.name}: {status} ({time.perf_counter() - started:.0f} s)", flush=True)

    lines = [header, "", "| measurement | images/s | batch | precision | notes | device | torch | command |",
             "|---|---|---|---|---|---|---|---|"]
    for part, result, problem, command in rows:
        if part.kind == "quality":
            continue
        if result is None:
            lines.append(f"| {part.name} | failed: {problem} | | | | {device} | {torch.__version__} | `{command}` |")
            continue
        notes = (f"warm-up {result['warm_up_s']} s" + (f", peak {result['peak_memory_gb']:.1f} GiB" if result.get("peak_memory_gb") else "")
                 if part.kind == "train" else f"{result['images']:,} images")
        lines.append(f"| {part.name} | {result['images_per_s']:,.0f} | {result['batch']} | {result['precision']} | {notes} | "
                     f"{device} | {torch.__version__} | `{command}` |")
    lines += ["", "| quality run | steps | images/s | yardstick FD | KID | real-vs-real FD | grid | device | torch | command |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for part, result, problem, command in rows:
        if part.kind != "quality":
            continue
        if result is None:
            lines.append(f"| {part.name} | failed: {problem} | | | | | | {device} | {torch.__version__} | `{command}` |")
        else:
            lines.append(f"| {part.name}, {result['budget']} | {result['steps']} | {result['images_per_s']:.0f} | "
                         f"{result['fd']:.2f} | {result['kid']:.4f} | {result['floor_fd']:.2f} | {result['grid']} | {device} | "
                         f"{torch.__version__} | `{command}` |")
    lines.append(f"\nall parts: {(time.perf_counter() - began) / 60:.1f} minutes")
    table = "\n".join(lines)
    print("\n" + table, flush=True)
    (Path(args.out) / "device-results.md").write_text(table + "\n")
    (Path(args.out) / "device-results.json").write_text(json.dumps(
        [{"part": p.name, "result": r, "problem": e, "command": c} for p, r, e, c in rows], indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
