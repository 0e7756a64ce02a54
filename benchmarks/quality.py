"""Quality at equal budget: train recipes one at a time on the same real data, then score them side by side.

Each recipe (a preset, optionally with overrides) trains for the same budget -- minutes of training
time (`--minutes`, purrgan's own --max-minutes, so start-up is not counted), process CPU-seconds
(`--cpu-seconds`) or images seen (`--images`) -- and is scored at 80%, 90% and 100% of it; the
table reports the median of the three, with EMA weights where a recipe keeps them.

The yardstick, because the Inception weights cannot be downloaded everywhere: a small classifier
trained once on CIFAR-10 from ../shared/data (cached in benchmarks/.cache), and the Frechet
distance (FD) and KID in its 128-d penultimate features, at 32x32 (64x64 images are downsampled,
grayscale ones repeated to RGB). Beside each figure: the real-vs-real FD of two disjoint real
samples of the same size, the floor a perfect generator would reach. With --inception-weights,
standard FID and KID are computed on the same samples too.

    python benchmarks/quality.py --data ../shared/data/cats64-kaggle.tar.gz \\
        --recipes dcgan-cats64 r3gan-cats64 --baseline dcgan-cats64 --minutes 20 --seeds 0 1
    python benchmarks/quality.py --data digits --recipes dcgan-digits "wide=dcgan-digits@model.g_width=64" --minutes 4

A recipe is PRESET or LABEL=PRESET@section.key=value@... . Not part of the package: a development
tool whose numbers are comparable only with each other.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = Path(os.environ.get("PURRGAN_SHARED_DATA", ROOT.parent / "shared" / "data"))  # elsewhere on a device machine
CIFAR = SHARED / "cifar10-jpg.tar.gz"
CACHE = Path(__file__).resolve().parent / ".cache"
FRACTIONS = (0.8, 0.9, 1.0)


# ---------------------------------------------------------------- the yardstick


class Yardstick(nn.Module):
    """A small VGG-style CIFAR-10 classifier; features() gives its 128-d penultimate layer."""

    def __init__(self):
        super().__init__()

        def block(a, b):
            return [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
                    nn.Conv2d(b, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True), nn.MaxPool2d(2)]

        self.body = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128))  # (N, 128, 4, 4)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, 10))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) at any size -> float (N, 3, 32, 32) in [-1, 1], as the yardstick was trained."""
    x = images.float() / 127.5 - 1
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != 32:
        x = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    return x


def yardstick_path(epochs: int) -> Path:
    return CACHE / f"yardstick-cifar10-v1-e{epochs}.pt"


def load_yardstick(epochs: int = 15, path: Path | None = None) -> tuple[Yardstick, float]:
    """Return the classifier (trained once and cached, or read from path) and its CIFAR-10 test accuracy."""
    from purrgan.data import load_images

    path = path or yardstick_path(epochs)
    model = Yardstick()
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["weights"])
        return model.eval(), float(saved["accuracy"])
    print(f"training the yardstick classifier on CIFAR-10 ({epochs} epochs, once; cached in {path})", flush=True)
    train = load_images(f"{CIFAR}:split=train", 32, 3)
    test = load_images(f"{CIFAR}:split=test", 32, 3)
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    batches = len(train) // 128
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=epochs * batches)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(train))
        started = time.perf_counter()
        for b in range(batches):
            index = order[b * 128:(b + 1) * 128]
            x = to_input(train.images[index])
            x = torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, x.flip(-1), x)
            shift = torch.randint(-4, 5, (2,))
            x = torch.roll(F.pad(x, (4, 4, 4, 4)), (int(shift[0]), int(shift[1])), (2, 3))[:, :, 4:36, 4:36]
            loss = F.cross_entropy(model(x), train.labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"  epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(to_input(test.images[i:i + 500])).argmax(1) == test.labels[i:i + 500]).sum())
                      for i in range(0, len(test), 500))
    accuracy = correct / len(test)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": model.state_dict(), "accuracy": accuracy}, path)
    print(f"  test accuracy {accuracy:.3f}", flush=True)
    return model, accuracy


@torch.no_grad()
def features(model: Yardstick, images: torch.Tensor) -> np.ndarray:
    return torch.cat([model.features(to_input(images[i:i + 500])) for i in range(0, len(images), 500)]).double().numpy()


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    from purrgan.metrics.fid import frechet_distance, gaussian_statistics

    return frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b))


def kid(a: np.ndarray, b: np.ndarray) -> float:
    from purrgan.metrics.kid import kid as kid_metric

    return kid_metric({"features": a}, {"features": b}, subsets=50, subset_size=min(1000, len(a), len(b)))["kid"]


# ---------------------------------------------------------------- training one recipe


def parse_recipe(text: str) -> tuple[str, str, list[str]]:
    """Return (label, preset, ["section.key=value", ...]) of "PRESET" or "LABEL=PRESET@key=value@..."."""
    head, *sets = text.split("@")
    label, _, preset = head.rpartition("=")
    return label or text, preset, sets


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU time of a process and its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def train_segment(command: list[str], cpu_budget: float | None) -> float:
    """Run one purrgan training command; with a CPU budget, SIGTERM it (it checkpoints and stops) when spent."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while process.poll() is None:
        time.sleep(0.5)
        if cpu_budget is not None:
            try:
                if cpu_seconds(process.pid) >= cpu_budget:
                    process.send_signal(signal.SIGTERM)
                    break
            except (FileNotFoundError, ProcessLookupError):
                break
    output, _ = process.communicate()
    if process.returncode != 0:
        sys.exit(f"training failed: {' '.join(command)}\n{output[-3000:]}")
    return time.perf_counter() - started


def run_recipe(args, label: str, preset: str, sets: list[str], seed: int, real: np.ndarray, model: Yardstick) -> dict:
    from purrgan import load_generator
    from purrgan.data import to_uint8
    from purrgan.monitor import read_metrics

    run = Path(args.out) / f"{label}-seed{seed}"
    finished = run / "quality.json"  # written last, so a run killed while training or scoring has none
    if run.exists() and not args.reuse:
        sys.exit(f"{run} exists; remove it or pass --reuse to keep the finished runs in --out")
    if finished.exists():
        result = json.loads(finished.read_text())
        if ((result["preset"], result["sets"], result.get("data", args.data), result.get("subset", args.subset))
                == (preset, sets, args.data, args.subset)):
            print(f"  {label} seed {seed}: finished before, read from {finished}", flush=True)
            return result
        sys.exit(f"{run} holds another recipe or data ({result['preset']} {result['sets']} on {result.get('data')}, "
                 f"subset {result.get('subset')}); give this one another label or --out")
    if run.exists():  # unfinished: its segments no longer match the budget, so it starts again
        shutil.rmtree(run)
    base = [sys.executable, "-m", "purrgan", "train", "--out", str(run), "--quiet", "--logger", "none"]
    recipe = ["--preset", preset, "--data", args.train_data, "--seed", str(seed), *[a for s in sets for a in ("--set", s)],
              *[a for s in args.set for a in ("--set", s)]]
    scores, trained_s = [], 0.0
    for index, fraction in enumerate(FRACTIONS):
        previous = FRACTIONS[index - 1] if index else 0.0
        command = base + (["--resume"] if index else recipe)
        budget = None
        if args.minutes:
            command += ["--steps", "100000000", "--max-minutes", f"{(fraction - previous) * args.minutes:.4f}"]
        elif args.images:
            command += ["--steps", str(max(1, round(fraction * args.images / args.batch_size)))]
        else:
            command += ["--steps", "100000000"]
            budget = (fraction - previous) * args.cpu_seconds
        trained_s += train_segment(command, budget)
        generator = load_generator(run, device=args.device)
        fake = features(model, to_uint8(generator.sample(args.eval_num, seed=1234)))
        scores.append({"fraction": fraction, "step": generator.step, "fd": frechet(real, fake), "kid": kid(real, fake),
                       "ema": generator.uses_ema})
        if args.inception_weights:
            scores[-1].update(inception_scores(args, generator, run))
        print(f"  {label} seed {seed} at {fraction:.0%}: step {generator.step}, FD {scores[-1]['fd']:.2f}, "
              f"KID {scores[-1]['kid']:.4f}", flush=True)
    rows = read_metrics(run)
    batch = json.loads(json.dumps(rows[-1])) if rows else {}
    if not rows and trained_s:  # a slow recipe logged no row: steps x batch over the wall time, start-up included
        from purrgan.config import load_config

        batch["images_per_s"] = scores[-1]["step"] * load_config(config_file=run / "config.toml").train.batch_size / trained_s
    result = {"label": label, "preset": preset, "sets": sets, "seed": seed, "data": args.data, "subset": args.subset,
              "scores": scores,
              "steps": scores[-1]["step"], "train_minutes": sum(r.get("elapsed_s", 0) for r in _session_ends(rows)) / 60,
              "wall_minutes": trained_s / 60, "images_per_s": batch.get("images_per_s", 0.0),
              "memorisation": _read_json(run / "memorisation.json"),
              "fd": statistics.median(s["fd"] for s in scores), "kid": statistics.median(s["kid"] for s in scores)}
    finished.write_text(json.dumps(result, indent=1))
    return result


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def subset_file(images: torch.Tensor, count: int, folder: Path) -> Path:
    """Return a prepared file of a fixed random subset of count images (seed 0): what a user with a small folder has."""
    from purrgan.data.prepare import PreparedWriter

    path = folder / f"subset-{count}.safetensors"
    if path.is_file():
        return path
    if count > len(images):
        sys.exit(f"--subset {count}: the data set has only {len(images)} images")
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:count].sort().values
    folder.mkdir(parents=True, exist_ok=True)
    writer = PreparedWriter(path, f"subset-{count}", images.shape[-1], images.shape[1], resume=False)
    writer.append(images[chosen].numpy(), None)
    writer.finish({"source": f"subset {count} of {folder}", "count": count, "resolution": images.shape[-1],
                   "channels": images.shape[1], "flippable": True, "class_names": []})
    return path


def _session_ends(rows: list[dict]) -> list[dict]:
    # elapsed_s restarts in each session (resume): the training time is the sum of each session's last value.
    ends = []
    for row, after in zip(rows, rows[1:] + [None]):
        if after is None or after.get("elapsed_s", 0) < row.get("elapsed_s", 0):
            ends.append(row)
    return ends


def inception_scores(args, generator, run: Path) -> dict:
    from purrgan.metrics.evaluate import evaluate_generator
    from purrgan.metrics.features import load_extractor

    extractor = load_extractor("inception", args.inception_weights, "cpu")
    results = evaluate_generator(generator, ["fid", "kid"], args.eval_num, "train", extractor)
    return {"inception_fid": results["fid"], "inception_kid": results["kid"]}


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="what every recipe trains on (a path in ../shared/data or a named set)")
    parser.add_argument("--recipes", nargs="+", required=True, help="PRESET or LABEL=PRESET@section.key=value@...")
    parser.add_argument("--baseline", help="the recipe label the ratios are against (default: the first)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="training minutes per run (purrgan's --max-minutes)")
    budget.add_argument("--cpu-seconds", type=float, help="process CPU-seconds per run, start-up included")
    budget.add_argument("--images", type=int, help="images seen per run")
    parser.add_argument("--batch-size", type=int, default=128, help="with --images: the recipes' batch size")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="for every recipe")
    parser.add_argument("--eval-num", type=int, default=5000, help="generated images per evaluation")
    parser.add_argument("--inception-weights", help="also standard FID/KID with these FID Inception weights")
    parser.add_argument("--out", default=str(ROOT / "runs" / "quality"))
    parser.add_argument("--reuse", action="store_true", help="keep the runs in --out that finished (a long table survives a restart); unfinished ones start again")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--yardstick-epochs", type=int, default=15,
                        help="epochs of the yardstick classifier (each count is cached apart; 15 take ~30 min on 2 cores)")
    parser.add_argument("--yardstick", type=Path, help="a trained yardstick file to use (e.g. carried to a GPU machine)")
    parser.add_argument("--device", default="cpu", help="where the generators draw the samples scored (cpu or cuda)")
    parser.add_argument("--subset", type=int, help="train on a fixed random subset of this many images (seed 0), "
                                                    "scored against the whole set, which holds images G never saw")
    args = parser.parse_args()
    if args.subset is not None and args.subset < 1:
        sys.exit(f"--subset must be at least 1 (images to train on), got {args.subset}")

    yardstick = args.yardstick or yardstick_path(args.yardstick_epochs)
    needed = ([yardstick] if args.yardstick else [] if yardstick.is_file() else [CIFAR]) + \
        ([Path(args.data.split(":")[0])] if "/" in args.data else [])
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print(f"quality benchmark skipped: {', '.join(missing)} not found (it needs the shared data sets)")
        return
    from purrgan.config import load_config
    from purrgan.data import load_images

    model, accuracy = load_yardstick(args.yardstick_epochs, args.yardstick)
    recipes = [parse_recipe(r) for r in args.recipes]
    first = load_config(recipes[0][1]).data
    resolution, channels = (first.resolution, first.channels)
    real_images = load_images(args.data, resolution, channels).images
    args.train_data = str(subset_file(real_images, args.subset, Path(args.out))) if args.subset else args.data
    real = features(model, real_images)
    half = min(args.eval_num, len(real) // 2)
    order = np.random.default_rng(0).permutation(len(real))
    floor = {"fd": frechet(real[order[:half]], real[order[half:2 * half]]), "kid": kid(real[order[:half]], real[order[half:2 * half]])}
    print(f"yardstick: CIFAR-10 classifier, test accuracy {accuracy:.3f}; {len(real)} real images of {args.data}; "
          f"real-vs-real FD {floor['fd']:.2f}, KID {floor['kid']:.4f} ({half} vs {half})", flush=True)

    results = []
    for label, preset, sets in recipes:
        for seed in args.seeds:
            print(f"training {label} (seed {seed})", flush=True)
            results.append(run_recipe(args, label, preset, sets, seed, real, model))

    from purrgan.device import describe_device

    device = describe_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    budget_text = (f"{args.minutes:g} training minutes" if args.minutes else f"{args.images:,} images" if args.images
                   else f"{args.cpu_seconds:g} CPU-seconds")
    baseline = args.baseline or recipes[0][0]
    base = [r for r in results if r["label"] == baseline]
    base_fd = statistics.mean(r["fd"] for r in base) if base else float("nan")
    subset = f" (trained on a fixed random {args.subset:,} of its images; scored against all of them)" if args.subset else ""
    print(f"\ndata: {args.data}{subset}; budget per run: {budget_text}; device: {device}; torch {torch.__version__}")
    print(f"yardstick: FD and KID in the penultimate features of a CIFAR-10 classifier (test accuracy {accuracy:.3f}), "
          f"{args.eval_num} samples, median of the scores at 80/90/100% of the budget; real-vs-real FD {floor['fd']:.2f}, "
          f"KID {floor['kid']:.4f}\n")
    extra = " Inception FID |" if args.inception_weights else ""
    print(f"| recipe | seed | steps | images/s | FD | KID | FD ratio vs {baseline} | memorisation |{extra}")
    print("|---|---|---|---|---|---|---|---|" + ("---|" if extra else ""))
    for r in results:
        inception = f" {statistics.median(s['inception_fid'] for s in r['scores']):.2f} |" if extra else ""
        memo = r.get("memorisation") or {}
        verdict = (f"{memo['verdict']} ({round(memo['copies'] * memo['samples'])} of {memo['samples']} near-copies)"
                   if "verdict" in memo else "-")
        print(f"| {r['label']} | {r['seed']} | {r['steps']} | {r['images_per_s']:.0f} | {r['fd']:.2f} | {r['kid']:.4f} | "
              f"{r['fd'] / base_fd:.2f}x | {verdict} |{inception}")
    print(f"| real vs real | | | | {floor['fd']:.2f} | {floor['kid']:.4f} | {floor['fd'] / base_fd:.2f}x | |" + (" |" if extra else ""))
    print("\nper recipe, mean over seeds: " + "; ".join(
        f"{label} FD {statistics.mean(r['fd'] for r in results if r['label'] == label):.2f} "
        f"({statistics.mean(r['fd'] for r in results if r['label'] == label) / base_fd:.2f}x)"
        for label in dict.fromkeys(r["label"] for r in results)))
    if args.json:
        Path(args.json).write_text(json.dumps({"data": args.data, "budget": budget_text, "device": device, "floor": floor,
                                               "accuracy": accuracy, "results": results}, indent=2))


if __name__ == "__main__":
    main()
