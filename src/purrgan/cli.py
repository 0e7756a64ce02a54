"""The `purrgan` command: parses options, turns them into one validated Config, and reports in plain words."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

from . import __version__
from .errors import PurrganError

log = logging.getLogger("purrgan")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="purrgan", description="Train GANs that generate small images, and use them.")
    parser.add_argument("--version", action="version", version=f"purrgan {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser("train", help="train a GAN (default: DCGAN on the built-in digits)",
                                description="Train a GAN. With no options: a DCGAN on the built-in 8x8 digits, on the CPU, "
                                            "into runs/<preset>.")
    source = train.add_mutually_exclusive_group()
    source.add_argument("--preset", help="a preset shipped with purrgan (see `purrgan presets`)")
    source.add_argument("--config", metavar="FILE.toml", help="a TOML config file (e.g. a run's config.toml)")
    train.add_argument("--data", metavar="SOURCE",
                       help="what to train on (sets data.source): 'digits' (built in); a named set (cats, cifar10, mnist, "
                            "fashion-mnist, celeba; `purrgan data list`); a folder, .zip or .tar(.gz) of images, whose "
                            "sub-folders are classes and whose train/, test/ or val/ folders are splits; or a prepared "
                            ".safetensors file. Options follow a colon: :classes=cat,dog, :split=train|test|val|all|none "
                            "(none: every folder is a class), :path=FILE (a named set's local copy), e.g. "
                            "cifar10:classes=dog or ~/pics:split=all")
    train.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<preset>)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="number of generator updates")
    length.add_argument("--epochs", type=int, help="number of passes over the data (instead of --steps)")
    train.add_argument("--max-minutes", type=float, metavar="M",
                       help="stop after M minutes of training with a checkpoint (continue later with --resume)")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="cpu, cuda, cuda:N or auto (default)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--logger", help="tensorboard (default), wandb, both comma-separated, or none (metrics.csv only)")
    train.add_argument("--eval-every", type=int, metavar="N", help="compute metrics every N steps and keep checkpoints/best")
    train.add_argument("--eval-num", type=int, metavar="N", help="generated images per evaluation (default 10000)")
    train.add_argument("--inception-weights", metavar="PATH", help="local FID Inception weights (or $PURRGAN_INCEPTION)")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="set any config value, e.g. --set model.g_width=32 (repeatable)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    sample = commands.add_parser("sample", help="draw images from a trained run or checkpoint")
    sample.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    sample.add_argument("--num", type=int, default=64, help="number of images (default 64)")
    sample.add_argument("--out", default="samples.png", help="grid PNG to write (default samples.png)")
    sample.add_argument("--seed", type=int, help="same seed, same images (default: random)")
    sample.add_argument("--class", dest="class_name", metavar="NAME",
                        help="class to draw from a conditional or per-class model (default: all classes in turn)")
    sample.add_argument("--truncation", type=float, metavar="T", help="truncation trick: redraw latents outside [-T, T]")
    sample.add_argument("--separate", metavar="DIR", help="also write one PNG per image into DIR (an empty or new folder)")
    sample.add_argument("--overwrite", action="store_true", help="with --separate: write into a folder that holds files")
    sample.add_argument("--nrow", type=int, help="images per grid row (default: square)")
    sample.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")

    commands.add_parser("presets", help="list the shipped presets, one line each")

    evaluate = commands.add_parser("evaluate", help="FID, KID, Inception Score and precision/recall of a run or two image sets")
    evaluate.add_argument("run", nargs="?", metavar="RUN_DIR_OR_CHECKPOINT")
    evaluate.add_argument("--metrics", help="any of fid,kid,is,pr (default: all that the feature extractor allows)")
    evaluate.add_argument("--num", type=int, default=50000, help="generated images (default 50000, as in papers)")
    evaluate.add_argument("--split", default="train", choices=("train", "val", "all"), help="real images to compare with")
    evaluate.add_argument("--real", metavar="PATH", help="with --fake: compare two folders/archives/prepared files")
    evaluate.add_argument("--fake", metavar="PATH")
    evaluate.add_argument("--size", type=int, help="with --real/--fake: resolution to load them at (default: their own)")
    evaluate.add_argument("--inception-weights", metavar="PATH", help="local FID Inception weights (or $PURRGAN_INCEPTION)")
    evaluate.add_argument("--feature-extractor", default="inception", metavar="SPEC",
                          help="inception (default) or package.module:factory returning any images-to-vectors module")
    evaluate.add_argument("--device", default="auto")

    walk = commands.add_parser("interpolate", help="grids and GIFs of interpolations between random latents")
    walk.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    walk.add_argument("--steps", type=int, default=16, help="images per interpolation (default 16)")
    walk.add_argument("--rows", type=int, default=8, help="interpolations (grid rows, or images per GIF frame; default 8)")
    walk.add_argument("--slerp", action="store_true", help="spherical interpolation (better for Gaussian latents)")
    walk.add_argument("--keyframes", type=int, default=4, help="GIF: random latents the looping walk passes through")
    walk.add_argument("--out", default="walk.png", help="walk.png for a grid, walk.gif for a looping animation")
    walk.add_argument("--seed", type=int, default=0)
    walk.add_argument("--class", dest="class_name", metavar="NAME", help="class of a conditional model")
    walk.add_argument("--device", default="cpu")

    exporter = commands.add_parser("export", help="write the generator alone as ONNX, TorchScript or safetensors")
    exporter.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    exporter.add_argument("--format", required=True, choices=("onnx", "torchscript", "safetensors"))
    exporter.add_argument("--out", required=True, metavar="FILE")

    report = commands.add_parser("report", help="write a self-contained report.html about a run")
    report.add_argument("run", metavar="RUN_DIR")
    report.add_argument("--out", help="where to write it (default RUN_DIR/report.html)")

    data = commands.add_parser("data", help="list, download, prepare, inspect and show data sets")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    data_commands.add_parser("list", help="the named data sets with their sizes and licences")
    download = data_commands.add_parser("download", help="download a named data set into the cache and verify it")
    download.add_argument("name")
    for action, text in (("prepare", "decode and resize a source once into a prepared file"),
                         ("info", "count, size, classes and per-class counts of a source"),
                         ("show", "write a grid of real images of a source")):
        sub = data_commands.add_parser(action, help=text)
        sub.add_argument("source", metavar="SOURCE", help="digits, a named set (e.g. cifar10:classes=dog) or a path")
        sub.add_argument("--size", type=int, help="resolution (default: the set's own, 64 for paths)")
        sub.add_argument("--channels", type=int, choices=(1, 3), help="1 or 3 (default: the set's own, 3 for paths)")
        if action == "prepare":
            sub.add_argument("--out", metavar="FILE", help="where to write the prepared .safetensors (default: the cache)")
            sub.add_argument("--force", action="store_true", help="prepare again even when an up-to-date file exists")
            sub.add_argument("--workers", type=int, metavar="N",
                             help="decoding processes (default: every core but one, for more than 2,000 files)")
        if action == "show":
            sub.add_argument("--num", type=int, default=64, help="number of images (default 64)")
            sub.add_argument("--out", default="real.png", help="grid PNG to write (default real.png)")
            sub.add_argument("--seed", type=int, default=0, help="which random images (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status (0 ok, 2 a user error)."""
    quiet_rank = _rank() != 0  # under torchrun only rank 0 talks
    logging.basicConfig(level=logging.ERROR if quiet_rank else logging.INFO, format="purrgan: %(message)s")
    args = _parser().parse_args(argv)
    args.command_line = command_line(sys.argv[1:] if argv is None else argv, from_shell=argv is None)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "sample":
            return _sample(args)
        if args.command == "presets":
            return _presets()
        if args.command == "data":
            return _data(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "interpolate":
            return _interpolate(args)
        if args.command == "export":
            from .export import export
            from .generate import load_generator

            generator = load_generator(args.run)
            path = export(generator, args.format, Path(args.out))
            labels = f", labels: int64 (N,), one of {len(generator.classes)} classes" if generator.classes else ""
            log.info("wrote %s (inputs z: float32 (N, %d)%s; output images in [-1, 1]; see %s)", path, generator.z_dim,
                     labels, path.with_name(path.stem + ".MODEL.md"))
            return 0
        if args.command == "report":
            from .report import write_report

            log.info("wrote %s", write_report(args.run, args.out))
            return 0
        _parser().print_help()
        return 0
    except PurrganError as error:
        from .errors import ReportedElsewhere

        if not isinstance(error, ReportedElsewhere):  # under torchrun, rank 0 says it once for all
            print(f"purrgan: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `purrgan presets | head`: the reader left; not a disk problem
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that Python's exit flush stays quiet
        return 1
    except OSError as error:  # a path that cannot be written or read: a full disk, a read-only folder, a missing parent
        where = f"{error.filename}: " if error.filename else ""
        print(f"purrgan: error: {where}{error.strerror or error}; check the path and the free space", file=sys.stderr)
        return 2
    except MemoryError:
        print("purrgan: error: out of memory; use a smaller --batch-size or image size", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("purrgan: interrupted", file=sys.stderr)
        return 130


def command_line(arguments: list[str], from_shell: bool = True) -> str:
    """Return the command line as the user typed it: `purrgan ...`, `python -m purrgan ...` or `torchrun ... -m purrgan ...`."""
    import shlex

    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if world > 1:
        prefix = ["torchrun", f"--nnodes={max(world // max(local, 1), 1)}", f"--nproc_per_node={local}", "-m", "purrgan"]
    elif from_shell and Path(sys.argv[0]).name == "__main__.py":
        prefix = ["python", "-m", "purrgan"]
    else:
        prefix = ["purrgan"]
    return shlex.join(prefix + list(arguments))


def _rank() -> int:
    rank = os.environ.get("RANK", "0")
    return int(rank) if rank.isdigit() else 0


def _train_config(args: argparse.Namespace):
    """Return (Config, run folder) of a `purrgan train` command line: purrgan.api.run_config, as purrgan.train() does."""
    from .api import OPTIONS, run_config

    overrides: dict[str, object] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PurrganError(f"--set needs SECTION.KEY=VALUE, got '{item}'")
        overrides[key.strip()] = value.strip()
    return run_config(args.preset, args.config, args.out, args.resume, overrides,
                      spell=lambda name: "--" + name.replace("_", "-"), **{name: getattr(args, name) for name in OPTIONS})


def _train(args: argparse.Namespace) -> int:
    from .api import PhaseBars, ProgressBar, bar_safe_logging, stop_on_signals
    from .loop import train

    config, out = _train_config(args)
    quiet = args.quiet or _rank() != 0  # under torchrun only rank 0 talks
    bar = ProgressBar(config.train.max_minutes, enabled=not quiet)  # appears with the first step
    stop = threading.Event()
    try:
        with stop_on_signals(stop, log.info), bar_safe_logging():
            result = train(config, out, resume=args.resume, on_progress=bar, stop=stop, on_phase=PhaseBars(not quiet),
                           command=args.command_line)
    finally:
        bar.close()
    if result.stopped:
        log.info("stopped at step %d of %d with a checkpoint; continue with: purrgan train --out %s --resume (to the "
                 "end; add --max-minutes M to train M minutes more)", result.steps, result.total_steps, out)
        return 0
    log.info("done after %d steps: samples %s, checkpoint %s", result.steps, result.final_grid, result.checkpoint)
    return 0


def _sample(args: argparse.Namespace) -> int:
    import torch

    from .device import resolve_device
    from .generate import load_generator, to_pil
    from .monitor import save_grid, save_image

    if not 0 < args.num <= 1_000_000:
        raise PurrganError("--num must be between 1 and 1,000,000")
    if args.nrow is not None and args.nrow <= 0:
        raise PurrganError("--nrow must be positive")
    if args.truncation is not None and not args.truncation > 0:
        raise PurrganError("--truncation must be a positive number (e.g. 0.7)")
    from .monitor import IMAGE_FORMATS

    if Path(args.out).is_dir() or Path(args.out).suffix.lower() not in IMAGE_FORMATS:
        raise PurrganError(f"--out {args.out}: give a picture file name ending in {', '.join(IMAGE_FORMATS)} (e.g. grid.png)")
    if args.separate and Path(args.separate).exists() and not Path(args.separate).is_dir():
        raise PurrganError(f"--separate {args.separate} is a file; give a folder for the single images")
    if args.separate and Path(args.separate).is_dir() and any(Path(args.separate).iterdir()) and not args.overwrite:
        raise PurrganError(f"--separate {args.separate} already holds files, which new images would mix with or "
                           f"replace; give an empty or new folder, or add --overwrite")
    if args.num > GRID_MOST and not args.separate:
        raise PurrganError(f"--num {args.num:,} is more than a grid can show ({GRID_MOST:,}); add --separate DIR to write "
                           f"them as single PNG files (the grid then shows the first {GRID_MOST:,})")
    seed = args.seed if args.seed is not None else int(torch_seed())
    generator = load_generator(args.run, device=resolve_device(args.device))
    shown, written = [], 0  # images stream from the device, chunk by chunk: the host never holds them all
    digits = max(5, len(str(args.num - 1)))
    for chunk in generator.batches(args.num, seed=seed, class_name=args.class_name, truncation=args.truncation):
        if written < GRID_MOST:
            shown.append(chunk[:GRID_MOST - written].cpu())
        if args.separate:
            for index, image in enumerate(to_pil(chunk), start=written):
                save_image(image, Path(args.separate) / f"{index:0{digits}d}.png")
        written += len(chunk)
    by_class = bool(generator.classes) and args.class_name is None and args.nrow is None
    nrow = len(generator.classes) if by_class else args.nrow
    # A conditional grid shows the classes in turn, one per column, named above it.
    grid = save_grid(torch.cat(shown), Path(args.out), nrow=nrow, columns=generator.classes if by_class else None)
    if by_class:
        log.info("one class per column: %s", ", ".join(generator.classes))
    what = f"the first {GRID_MOST:,} of {args.num:,} images" if args.num > GRID_MOST else f"{args.num} images"
    log.info("wrote a grid of %s to %s (seed %d: --seed %d draws them again)", what, grid, seed, seed)
    if args.separate:
        log.info("wrote %d PNG files to %s", args.num, args.separate)
    return 0


GRID_MOST = 10_000  # the most images one grid shows (about 6,800 x 6,800 pixels at 64x64)


def torch_seed() -> int:
    """Return a fresh random seed that fits every generator (printed, so the images can be drawn again)."""
    import secrets

    return secrets.randbelow(2 ** 31)


def _evaluate(args: argparse.Namespace) -> int:
    from .metrics import parse_metrics
    from .metrics.evaluate import evaluate_paths, evaluate_run
    from .metrics.features import load_extractor
    from .device import resolve_device

    names = parse_metrics(args.metrics or "fid,kid,is,pr")
    if (args.real is None) != (args.fake is None):
        raise PurrganError("give both --real and --fake, or a run folder")
    if args.run is None and args.real is None:
        raise PurrganError("give a run folder or checkpoint, or --real A --fake B")
    if args.num <= 0:
        raise PurrganError("--num must be positive")
    extractor = load_extractor(args.feature_extractor, args.inception_weights, resolve_device(args.device))
    from .metrics.evaluate import check_extractor, has_logits

    if args.metrics is None and "is" in names and not has_logits(extractor):
        names.remove("is")
        log.info("leaving out the Inception Score: feature extractor %s gives no classifier logits", args.feature_extractor)
    check_extractor(names, extractor)
    if args.real is not None:
        results = evaluate_paths(args.real, args.fake, names, extractor, args.size)
    else:
        from .api import PhaseBars

        results = evaluate_run(args.run, names, args.num, args.split, extractor, PhaseBars())
    width = max(map(len, results))
    for name, value in results.items():
        print(f"{name:<{width}}  {value:.4f}")
    if args.run is not None and Path(args.run).is_dir():
        log.info("wrote %s", Path(args.run) / "metrics.json")
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    from .generate import interpolation_grid, latent_walk, load_generator
    from .gif import append_frame
    from .monitor import grid_image, save_grid
    from .device import resolve_device

    if not (2 <= args.steps <= 1000 and 1 <= args.rows <= 256 and 2 <= args.keyframes <= 100):
        raise PurrganError("--steps must be 2 to 1000, --rows 1 to 256 and --keyframes 2 to 100")
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".gif") or out.is_dir():
        raise PurrganError(f"--out {out} must be a file ending in .png (a grid) or .gif (an animation)")
    generator = load_generator(args.run, device=resolve_device(args.device))
    if out.suffix.lower() == ".png":
        images = interpolation_grid(generator, args.rows, args.steps, args.seed, args.slerp, args.class_name)
        save_grid(images, out, nrow=args.steps)
        log.info("wrote %d interpolations of %d steps to %s", args.rows, args.steps, out)
        return 0
    frames = latent_walk(generator, args.rows, args.keyframes, args.steps, args.seed, args.slerp, args.class_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")  # the old file stays until the new one is whole
    try:
        for frame in frames:
            append_frame(tmp, grid_image(frame), delay_ms=80)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote a looping walk of %d frames through %d latents to %s", len(frames), args.keyframes, out)
    return 0


def _presets() -> int:
    from .config import RECOMMENDED, preset_names, preset_summary

    import shutil
    import textwrap

    from .config import DEFAULT_PRESET

    columns = min(shutil.get_terminal_size((80, 24)).columns, 100)  # 80 when piped
    names = preset_names()
    width = max(map(len, names)) + 2
    for name in names:
        mark = "*" if name == DEFAULT_PRESET else " "
        lines = textwrap.wrap(preset_summary(name), max(columns - width - 3, 30))
        print(f"{mark} {name:<{width}}{lines[0] if lines else ''}")
        for line in lines[1:]:
            print(" " * (width + 2) + line)
    print(f"\n* the default (`purrgan train` with no --preset)\n\nrecommended:")
    for use, name, why in RECOMMENDED:
        print(textwrap.fill(f"{use}: {name} ({why})", columns, initial_indent="  ", subsequent_indent="    "))
    return 0


def _data(args: argparse.Namespace) -> int:
    from .api import PhaseBars

    phase = PhaseBars(_rank() == 0)
    from .data import load_images
    from .data.download import cache_dir
    from .data.sources import SOURCES, native_shape, parse_source, verify_download

    if args.data_command == "list":
        for name, source in SOURCES.items():
            print(f"{name:<14} {source.summary}; {source.size}; licence: {source.licence}")
        print(f"cache folder: {cache_dir()} (set PURRGAN_DATA to move it); any folder, .zip or .tar(.gz) path works too")
        return 0
    if args.data_command == "download":
        for path in verify_download(args.name):
            log.info("%s is ready (%.1f MB)", path, path.stat().st_size / 1e6)
        return 0
    if args.size is not None and not 1 <= args.size <= 1024:
        raise PurrganError(f"--size must be between 1 and 1024 pixels, got {args.size}")
    spec = parse_source(args.source)
    size, channels, _ = native_shape(spec)
    size, channels = args.size or size, args.channels or channels
    if args.data_command == "prepare":
        from .data.prepare import prepare, read_metadata

        if args.workers is not None and not 1 <= args.workers <= 1024:
            raise PurrganError("--workers must be between 1 and 1024")
        from dataclasses import replace

        from .data import parse_names

        classes = parse_names(spec.options.get("classes", ""))  # the file holds only these classes, relabelled 0..K-1
        whole = replace(spec, options={k: v for k, v in spec.options.items() if k != "classes"})
        path = prepare(whole, size, channels, Path(args.out) if args.out else None, force=args.force,
                       workers=args.workers, progress=lambda done, total: phase("preparing", done, total), classes=classes)
        info = read_metadata(path)
        kept = f" of {', '.join(info['class_names'])}" if classes else ""
        log.info("prepared file: %s (%s images%s at %sx%s)", path, f"{info['count']:,}", kept, size, size)
        return 0
    data = load_images(args.source, size, channels, progress=lambda done, total: phase("preparing", done, total))
    if args.data_command == "info":
        print(f"source:   {data.name}")
        print(f"images:   {len(data)} of {channels}x{size}x{size} ({len(data) * channels * size * size / 1e6:.1f} MB as uint8)")
        if data.skipped:
            print(f"skipped:  {data.skipped} unreadable files")
        if data.duplicates:
            print(f"dropped:  {data.duplicates} exact duplicates (one copy of each kept)")
        if data.own_size:
            print(f"own size: {data.own_size[0]}x{data.own_size[1]} (every image)")
        if data.labels is not None:
            counts = data.labels.bincount(minlength=len(data.class_names)).tolist()
            print(f"classes:  {len(data.class_names)}")
            for name, count in zip(data.class_names, counts):
                print(f"  {name:<16} {count}")
        else:
            print("classes:  none (a folder gets classes from its sub-folders)")
        return 0
    import torch

    from .data import to_float
    from .monitor import save_grid

    if args.num <= 0:
        raise PurrganError("--num must be positive")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[:args.num]
    save_grid(to_float(data.batch(order)), Path(args.out))
    log.info("wrote a grid of %d real images of %s to %s", len(order), data.name, args.out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
