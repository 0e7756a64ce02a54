"""The training loop: one step function, and a loop of periodic events (log, sample, evaluate, checkpoint, roll back)."""

from __future__ import annotations

import contextlib
import logging
import json
import math
import statistics
import threading
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from . import checkpoint
from .config import SMALL_DATA, Config, to_toml
from .data import ImageSet, load_images, split_validation, to_float
from .device import cpu_has_native_bf16, describe_device, resolve_device, tune_backends
from .data.download import cache_dir
from .dist import Distributed
from .dist import setup as setup_distributed
from .dist import teardown as teardown_distributed
from .dist import weights_checksum
from .ema import ema_decay, update_ema
from .errors import PurrganError
from .generate import fixed_noise, sample_fixed
from .health import HealthWarning, TrainingDiverged, first_non_finite
from .losses import LOSSES, Batch, apply_constraints, d_half_objective, d_objective, g_objective
from .monitor import NullMonitor, RunMonitor, layer_grad_norms, weights_and_grads
from .rundir import RunFolder
from .state import TrainState, check_config, micro_batches

log = logging.getLogger(__name__)
ProgressCallback = Callable[[int, int, "dict[str, float] | None", bool], None]  # (step, total, latest row, finished)
PhaseCallback = Callable[[str, int, int], None]  # (what, done, total) of a long phase before training, e.g. "preparing data"


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    checkpoint: Path
    final_grid: Path
    stopped: bool = False  # ended early (a signal or train.max_minutes), resumable
    total_steps: int = 0


# ---------------------------------------------------------------- one step


def train_step(state: TrainState, log_now: bool = False, histograms: bool = False) -> dict[str, torch.Tensor]:
    """One step: d_steps D updates on fresh real batches (two each, reals then fakes, when optim.d_update is
    "split"), then g_steps G updates; returns the tensors to log.

    Each update may run over micro-batches (train.batch_per_device): their gradients add up before one
    optimiser step, so the update is that of the whole batch, up to BatchNorm's per-batch statistics.
    0-dim entries are statistics (losses, penalties, D's outputs, gradient norms when log_now); larger
    ones are histograms (when asked). No file is touched and nothing leaves the device.
    """
    config, progress = state.config, state.step / state.total_steps
    stats: dict[str, torch.Tensor] = {}
    split = config.optim.d_update == "split"
    # With one micro-batch per update, G's update reuses D's fakes and their graph (one G forward per step).
    reuse = config.optim.d_steps == 1 and config.optim.g_steps == 1 and not split and state.micro_batches == 1
    for _ in range(config.optim.d_steps):
        real, labels = state.real_batch()  # (B, C, H, W) in [-1, 1]: this process's share of the batch
        if split:
            seen, d_out = _split_d_updates(state, real, labels, progress, stats, log_now, histograms)
        else:
            z = state.noise(real.shape[0])
            seen: list[Pairing] = []  # per micro-batch, what G's update pairs with

            def d_loss(real: torch.Tensor, labels: torch.Tensor | None, z: torch.Tensor) -> dict[str, torch.Tensor]:
                with state.autocast():
                    with torch.set_grad_enabled(reuse):  # keep G's graph only when G's update will use these fakes
                        fake = state.G(z, labels)
                    batch = Batch(state.augment(real, state.rng, progress), state.augment(fake.detach(), state.rng, progress),
                                  labels, z)
                    seen.append(Pairing(batch.real, fake, labels, z, len(z)))
                    return d_objective(state.loss, config.loss, state.D, batch, state.step, state.rng)  # float32 losses

            d_out = _update(state, "D", [partial(d_loss, *part) for part in _micro(state, real, labels, z)],
                            stats, log_now, histograms)
        state.augment.observe(d_out, state.dist.mean)

    def g_loss(real_seen: torch.Tensor, fake: torch.Tensor | None, labels: torch.Tensor | None, z: torch.Tensor) \
            -> dict[str, torch.Tensor]:
        with state.autocast():
            if not reuse:
                fake = state.G(z, labels)  # G imitates the classes of the last real batch
            g_batch = Batch(real_seen.detach(), state.augment(fake, state.rng, progress), labels, z)
            return g_objective(state.loss, config.loss, state.D, g_batch, state.step, state.rng)

    state.discriminator.requires_grad_(False)  # G's update needs no gradients for D's weights
    for _ in range(config.optim.g_steps):
        # Fresh latents for the whole batch at once (the same draws however it is cut into micro-batches).
        latents = [p.z for p in seen] if reuse else state.noise(sum(p.count for p in seen)).split([p.count for p in seen])
        g_out = _update(state, "G", [partial(g_loss, p.real, p.fake, p.labels, z) for p, z in zip(seen, latents)],
                        stats, log_now, histograms)
    state.discriminator.requires_grad_(True)

    state.dist.broadcast_buffers(state.generator, state.discriminator)  # BatchNorm statistics follow rank 0, as DDP
    if state.generator_ema is not None:
        update_ema(state.generator_ema, state.generator,
                   ema_decay(config.train.ema, state.step, config.train.ema_start, config.train.ema_rampup))
    state.step += 1
    stats.update({"d_loss": d_out["loss"], "g_loss": g_out["loss"], **state.augment.stats()})
    stats.update({k: v for k, v in {**g_out, **d_out}.items() if k != "loss" and v.ndim == 0})
    return {k: v.detach() for k, v in stats.items()}


class Pairing(NamedTuple):
    """What G's update pairs with, per micro-batch of D's: the reals D saw, its fakes (with G's graph when reused)."""
    real: torch.Tensor
    fake: torch.Tensor | None
    labels: torch.Tensor | None
    z: torch.Tensor | None
    count: int  # images in G's part of the update


def _micro(state: TrainState, *tensors: torch.Tensor | None) -> list[tuple]:
    """Return the micro-batches of an update: the tensors (each (B, ...) or None) cut into state.micro_batches pieces."""
    count = state.micro_batches
    pieces = [t.chunk(count) if t is not None else (None,) * count for t in tensors]
    return list(zip(*pieces))


def warm_up_compiled(state: TrainState) -> None:
    """Compile G and D on one real step (the graphs training uses), then put the state back as it was.

    The step runs on the live state, so the compiled graphs see the batch size, train mode, grad mode,
    precision and layout of every later step and training never recompiles; everything the step
    changed (weights, moments, random streams, data position, step) is restored from a snapshot.
    If compiling fails, the run trains eagerly with a warning.
    """
    if not state.compiled:
        return
    before = state.snapshot()
    try:
        train_step(state)
    except Exception as error:  # noqa: BLE001 - any compiler failure means "train eagerly"
        log.warning("torch.compile failed on the first step (%s); training without compiling",
                    str(error).splitlines()[0][:200] if str(error) else type(error).__name__)
        state.G, state.D = state.generator, state.discriminator
    finally:
        state.load_state_dict(before, "the state before the compile warm-up")


def _split_d_updates(state: TrainState, real: torch.Tensor, labels: torch.Tensor | None, progress: float,
                     stats: dict[str, torch.Tensor], record: bool, histograms: bool) -> tuple[list[Pairing], dict[str, torch.Tensor]]:
    """The Keras tutorial's D training: one update on half the batch of reals, then one on as many fresh fakes.

    Each half is its own optimiser step, so the fakes are scored by the D the reals have already moved.
    The gradient flow recorded is the fake update's. Returns what G's update pairs with (d_loss's `seen`:
    the reals D saw, and the full batch's labels and latents) and d_objective's entries.
    """
    half = real.shape[0] // 2
    z = state.noise(half)
    with state.autocast():
        with torch.no_grad():
            fake = state.G(z, None if labels is None else labels[:half])
        images = {True: state.augment(real[:half], state.rng, progress), False: state.augment(fake, state.rng, progress)}
    d_out: dict[str, torch.Tensor] = {}
    for is_real in (True, False):
        def side() -> dict[str, torch.Tensor]:
            with state.autocast():
                return d_half_objective(state.loss, state.config.loss, state.D, images[is_real],
                                        None if labels is None else labels[:half], is_real)
        d_out.update(_update(state, "D", [side], stats, record, histograms))
    d_out["loss"] = d_out["d_loss_real"] + d_out["d_loss_fake"]
    return [Pairing(images[True], None, labels, None, real.shape[0])], d_out


def _update(state: TrainState, side: str, parts: list, stats: dict[str, torch.Tensor], record: bool,
            histograms: bool) -> dict[str, torch.Tensor]:
    """One optimiser step of one side (D or G) over its micro-batches; return their losses' entries, merged.

    Each part() returns a loss dict; its "loss" is backpropagated scaled by 1/parts, so the gradients add
    up to the whole batch's. Then gradients are averaged over the ranks, the gradient flow recorded
    into stats (when record), the optimiser stepped and the side's constraints applied.
    """
    module, optimizer, scaler = ((state.discriminator, state.opt_d, state.scaler_d) if side == "D"
                                 else (state.generator, state.opt_g, state.scaler_g))
    optimizer.zero_grad(set_to_none=True)
    outs = []
    for part in parts:
        out = part()
        scaler.scale(out["loss"] / len(parts)).backward()
        outs.append(out)
    state.dist.average_gradients(module)
    if record:  # the gradient flow of this update, before the step changes anything
        scaler.unscale_(optimizer)
        stats.update(layer_grad_norms(module, side))
        if histograms:
            stats.update(weights_and_grads(module, side))
    scaler.step(optimizer)
    scaler.update()
    apply_constraints(state.loss, state.config.loss, side, module)  # e.g. WGAN's weight clipping
    if len(outs) == 1:
        return outs[0]
    # The micro-batches' means average to the batch's (equal sizes); raw scores are concatenated.
    return {key: torch.stack([o[key] for o in outs]).mean(0) if outs[0][key].ndim == 0 else torch.cat([o[key] for o in outs])
            for key in outs[0]}


# ---------------------------------------------------------------- the run


def fit_to_prepared_file(config: Config) -> Config:
    """Return config at the size and channels of its data when the data is a prepared file (which holds one size)."""
    from .data.prepare import is_prepared_file, read_metadata
    from .data.sources import parse_source

    spec = parse_source(config.data.source)
    if spec.path is None or not is_prepared_file(spec.path):
        return config
    info = read_metadata(spec.path)
    shape = int(info["resolution"]), int(info["channels"])
    if shape != (config.data.resolution, config.data.channels):
        log.info("%s holds %dx%d images with %d channel(s): training at that size", spec.path, shape[0], shape[0], shape[1])
        config = replace(config, data=replace(config.data, resolution=shape[0], channels=shape[1]))
    return config


def run_summary(config: Config, data: ImageSet, state: TrainState, command: str = "") -> dict:
    """Return what the report shows about the data and the machine (written as run.json at the start)."""
    import platform
    import sys

    from . import __version__

    counts = data.labels.bincount(minlength=len(data.class_names)).tolist() if data.labels is not None else []
    return {
        "data": {"source": config.data.source, "images": len(data), "classes": dict(zip(data.class_names, counts)),
                 "skipped": data.skipped, "duplicates_dropped": data.duplicates,
                 "own_size": list(data.own_size) if data.own_size else None,
                 "resolution": config.data.resolution, "channels": config.data.channels, "flips": config.data.hflip},
        "environment": {"device": str(state.device), "device_name": describe_device(state.device),
                        "precision": "bf16" if state.precision == torch.bfloat16 else "fp16" if state.precision else "float32",
                        "processes": state.dist.world_size, "torch": torch.__version__, "purrgan": __version__,
                        "python": platform.python_version(), "platform": platform.platform(),
                        "command": command or " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S")},
    }


def describe(config: Config, data: ImageSet, total_steps: int) -> str:
    """Return the run's first line: what trains on what, at which size, for how long, where."""
    size = f"{config.data.resolution}x{config.data.resolution} {'RGB' if config.data.channels == 3 else 'grayscale'}"
    if data.own_size == (config.data.resolution, config.data.resolution):
        size += " (the images' own size)"
    counts = f"{len(data):,} images" + (f" of class {data.class_names[0]}" if len(data.class_names) == 1 else
                                         f" in {len(data.class_names)} classes" if data.class_names else "")
    dropped = [f"{n:,} {what}" for n, what in ((data.skipped, "unreadable skipped"), (data.duplicates, "duplicates dropped")) if n]
    length = f"{total_steps:,} steps" + (f" ({config.train.epochs} epochs)" if config.train.epochs else "")
    source = config.data.source + (f" ({data.layout})" if data.layout else "")
    return (f"training {config.model.arch} with the {config.loss.name} loss on {source}: {counts}"
            f"{' (' + ', '.join(dropped) + ')' if dropped else ''} at {size}, flips {config.data.hflip}; {length} "
            f"of batch {config.train.batch_size}")


def prepare_config(config: Config, data: ImageSet) -> Config:
    """Return config completed by its data: classes of a conditional model, whether flipping is valid, a description."""
    if config.model.conditional != "none":
        if data.labels is None or len(data.class_names) < 2:
            raise PurrganError(f"model.conditional = \"{config.model.conditional}\" needs a data set with at least 2 "
                               f"classes; {data.name} has none (a folder gets classes from its sub-folders)")
        config = replace(config, model=replace(config.model, num_classes=len(data.class_names)))
    if config.data.hflip == "auto":
        config = replace(config, data=replace(config.data, hflip="on" if data.flippable else "off"))
    from .data.sources import parse_source

    config = small_data(config, len(data), own=parse_source(config.data.source).path is not None)
    if not config.description:
        classes = f" ({', '.join(config.data.classes)})" if config.data.classes else ""
        config = replace(config, description=f"{config.model.arch} with the {config.loss.name} loss on "
                                             f"{config.data.source}{classes}")
    return config


def small_data(config: Config, count: int, own: bool = True) -> Config:
    """Return config fitted to a small training set, saying what it chose and why.

    For the user's own pictures (own: a folder, an archive or a prepared file; with augment.small_data =
    "auto") under SMALL_DATA images, or any set with "on": DiffAugment's colour, translation and cutout go
    on everything D sees when no augmentation is configured (Zhao et al. 2020: with 100 to 1,000 images, D
    otherwise memorises the set and training collapses), and a batch larger than the set shrinks to the
    largest power of two it holds. A large set, a named set (its presets are its recipes), or "off" change nothing.
    """
    mode = config.augment.small_data
    if mode == "off" or (mode == "auto" and (count >= SMALL_DATA or not own)):
        return config
    chosen = []
    if not config.augment.varies_inputs:
        config = replace(config, augment=replace(config.augment, policy=("color", "translation", "cutout")))
        chosen.append("DiffAugment color, translation and cutout on everything D sees (else D memorises a small set)")
    if config.train.batch_size > count:
        batch = 2 ** int(math.log2(count))
        chosen.append(f"batch {batch} (the preset's {config.train.batch_size} is more than the set)")
        config = replace(config, train=replace(config.train, batch_size=batch))
    # What was measured, not what a paper promises: on 100 cat faces at 15 CPU-minutes, best-cats64 with this
    # augmentation reached 0.18x fastgan-folder's yardstick distance (README, "Your own small folder").
    suits = ("; on a CPU, --preset best-cats64 with this augmentation did best on 100 and 1,000 cat faces "
             "(README: \"Your own small folder\")")
    if chosen:
        log.info("%d training images is a small set, so: %s (augment.small_data = \"off\" keeps the preset as it "
                 "is)%s", count, "; ".join(chosen), suits)
    else:  # augmented already (by the preset, or by an earlier session of a resumed run); still say the set is small
        varied = ", ".join(config.augment.policy) or "adaptive"
        log.info("%d training images is a small set; the run's augmentation (%s) already varies what D sees%s",
                 count, varied, suits)
    return config


def settle_precision(config: Config, data: ImageSet, device: torch.device, dist, resumed: str | None = None,
                     on_phase: PhaseCallback | None = None) -> Config:
    """Return config with train.amp = "auto" settled for a CPU: bf16 only where a measurement shows a gain.

    bf16 autocast is 1.3-2x faster on CPUs with native bf16 and slower on those without, so "auto"
    times small steps both ways (on throw-away networks: the run's random streams are untouched),
    in alternating rounds so that a change in the machine's load hits both alike, and keeps float32
    unless bf16's median is at least 15% faster. The verdict is cached per CPU model, torch version and
    network (single trials had flipped between identical runs: 102%, 77%); a CPU without native bf16
    is not measured (emulated bf16 with a double backward took over 10 minutes for the trial alone).
    A resumed run keeps its choice. With several processes rank 0 decides for all, and says so once.
    """
    if config.train.amp != "auto" or device.type != "cpu":
        return config
    if resumed in ("off", "bf16"):
        return replace(config, train=replace(config.train, amp=resumed))

    def decide() -> bool:
        if not cpu_has_native_bf16():  # emulated bf16 is slower, with a double backward by minutes a step
            faster, why = False, "this CPU has no native bf16"
        else:
            cache, key = cache_dir() / "precision.json", _precision_key(config, device)
            verdicts = _read_verdicts(cache)
            if key in verdicts:
                faster, why = verdicts[key]["bf16"], f"{verdicts[key]['why']} (measured {verdicts[key]['measured']}; " \
                                                     f"delete {cache} to measure again)"
            else:
                log.info("measuring bf16 against float32 on this CPU for this model (a few small steps each, once: the "
                         "verdict is kept in %s)", cache)
                seconds = _time_steps_both_ways(config, data, device, on_phase)
                faster = seconds["bf16"] < seconds["off"] / 1.15
                why = (f"bf16 steps take {100 * seconds['bf16'] / seconds['off']:.0f}% of the float32 time"
                       if seconds["bf16"] < float("inf") else "bf16 steps take over twice the float32 time")
                verdicts[key] = {"bf16": faster, "why": why, "measured": time.strftime("%Y-%m-%d")}
                checkpoint.write_atomic(cache, json.dumps(verdicts, indent=1).encode(), "the verdict is not kept")
        ranks = f" (decided by rank 0 for all {dist.world_size} processes)" if dist.enabled else ""
        log.info("mixed precision on this CPU: %s; training in %s%s", why, "bf16" if faster else "float32", ranks)
        return faster

    faster = dist.on_main(decide, share=True)  # every rank trains in the one precision rank 0 chose
    return replace(config, train=replace(config.train, amp="bf16" if faster else "off"))


def _precision_key(config: Config, device: torch.device) -> str:
    """Return what bf16's gain depends on: the CPU model, torch, and the network and loss a step runs."""
    model, loss = config.model, config.loss
    penalties = ",".join(r.name for r in LOSSES[loss.name].d_penalties(loss)) if loss.name in LOSSES else ""
    return (f"{describe_device(device)} | torch {torch.__version__} | {model.arch} {config.data.resolution}px "
            f"{config.data.channels}c g{model.g_width} d{model.d_width} z{model.z_dim} {model.conditional} "
            f"{sorted(model.options.items())} | {loss.name} {penalties} | {config.optim.d_update} "
            f"d{config.optim.d_steps} g{config.optim.g_steps}")


def _read_verdicts(path: Path) -> dict:
    try:
        verdicts = json.loads(path.read_text())
        return verdicts if isinstance(verdicts, dict) else {}
    except (OSError, ValueError):
        return {}


def _time_steps_both_ways(config: Config, data: ImageSet, device: torch.device,
                          on_phase: PhaseCallback | None = None, rounds: int = 3, steps: int = 2) -> dict[str, float]:
    """Return the median seconds of `steps` small steps in float32 and in bf16, over alternating rounds after
    2 warm-up steps each; inf for a bf16 that has lost badly (past twice float32's time, plus a second)."""
    states = {amp: TrainState.create(replace(config, train=replace(
        config.train, amp=amp, compile=False, ema=0.0, batch_size=min(config.train.batch_size, 32, len(data)))),
        data, device, Distributed()) for amp in ("off", "bf16")}  # this process alone: no collectives
    spent, times = {"off": 0.0, "bf16": 0.0}, {"off": [], "bf16": []}
    total, done = 2 * (2 + rounds * steps), 0
    for phase in ["warm-up"] + list(range(rounds)):
        for amp, state in states.items():
            started = time.perf_counter()
            for _ in range(2 if phase == "warm-up" else steps):  # warm-up: oneDNN builds its kernels on first use
                train_step(state)
                done += 1
                if on_phase:
                    on_phase("measuring bf16 against float32", done, total)
                if amp == "bf16" and spent["bf16"] + time.perf_counter() - started > 2 * spent["off"] + 1:
                    if on_phase:
                        on_phase("measuring bf16 against float32", total, total)
                    return {"off": 1.0, "bf16": float("inf")}  # don't spend minutes proving it
            spent[amp] += time.perf_counter() - started
            if phase != "warm-up":
                times[amp].append(time.perf_counter() - started)
    return {amp: statistics.median(values) for amp, values in times.items()}


def _resumable(run_dir: Path) -> tuple[dict, Path] | None:
    """Return the newest good checkpoint of run_dir (damaged ones set aside), or None when it has none yet."""
    if not checkpoint.checkpoints_newest_first(run_dir / "checkpoints") and (run_dir / "config.toml").is_file():
        log.info("%s has no checkpoint yet (its first session stopped before writing one): training starts at step 0 "
                 "with its config.toml", run_dir)
        return None
    return checkpoint.load_latest(run_dir, set_aside=True)


def _saved_setting(saved: tuple[dict, Path] | None, section: str, key: str):
    try:
        return saved[0]["config"][section][key] if saved else None
    except (KeyError, TypeError):
        return None  # an incomplete checkpoint is reported when it is loaded


def train(config: Config, run_dir: Path, resume: bool = False, on_progress: ProgressCallback | None = None,
          stop: threading.Event | None = None, on_phase: PhaseCallback | None = None, command: str = "") -> RunResult:
    """Train config's GAN into run_dir (continuing its last checkpoint when resume) and return where things are.

    Setting stop (e.g. from a signal handler) ends the run after the current step, with a checkpoint.
    on_phase(what, done, total) follows the long phases before the first step (preparing the data). command is
    how the run was asked for, as run.json records it (the command line, or the Python call).
    Everything that can fail is checked before anything is written; the run folder is locked while
    training (RunFolder), and a folder holding an earlier run is refused without resume.
    """
    run_dir = Path(run_dir)
    check_config(config)
    dist, device_name = setup_distributed(config.train.device)  # one process, or one rank of torchrun's several
    device = resolve_device(device_name)
    micro_batches(config, dist.world_size)  # the batch splits over the processes and micro-batches, or one line says why
    with contextlib.ExitStack() as folder:
        # Rank 0 alone locks and writes the run folder; if it cannot, every rank stops with its message.
        dist.on_main(lambda: folder.enter_context(RunFolder(run_dir, resume, config.data.source)))
        return _train(config, run_dir, resume, on_progress, stop, dist, device, on_phase, command)


def _train(config: Config, run_dir: Path, resume: bool, on_progress, stop, dist, device: torch.device,
           on_phase: PhaseCallback | None = None, command: str = "") -> RunResult:
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    config = fit_to_prepared_file(config)
    preparing = (lambda done, total: on_phase("preparing the data", done, total)) if on_phase else None
    # Rank 0 prepares the data set into the cache while the others wait, then they read what it wrote.
    data, _ = split_validation(dist.main_first(lambda: load_images(
        config.data.source, config.data.resolution, config.data.channels, config.data.classes, progress=preparing)),
        config.data.val_fraction)
    config = prepare_config(config, data)
    # Rank 0 reads the checkpoint and hands it to the others: the run folder need not be shared between machines.
    saved = dist.on_main(lambda: _resumable(run_dir), share=True) if resume else None
    resume = saved is not None  # a folder whose first session stopped before any checkpoint starts at step 0
    config = settle_precision(config, data, device, dist, _saved_setting(saved, "train", "amp"), on_phase)

    state = TrainState.create(config, data, device, dist)
    tune_backends(device, state.precision, config.train.deterministic)
    if dist.is_main:
        log.info("%s, on %s%s, into %s", describe(config, data, state.total_steps), device,
                 " in bf16" if state.precision == torch.bfloat16 else "", run_dir)
    evaluator = None
    if config.train.eval_every:
        from .metrics.evaluate import Evaluator
        # Fails fast: weights and reference statistics (minutes, the first time) before training; rank 0 alone.
        evaluator = dist.on_main(lambda: Evaluator(config, device, on_phase))
    if saved:
        state.load_state_dict(*saved)
        log.info("resuming %s from step %d (%s)", run_dir, state.step, saved[1])
    warm_up_compiled(state)
    dist.barrier()  # every rank has looked before rank 0 writes

    shown = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.train.seed))[:config.train.num_samples]
    monitor = (RunMonitor(run_dir, config, state.total_steps, state.step, to_float(data.batch(shown)),
                          run_summary(config, data, state, command)) if dist.is_main else NullMonitor())
    # ^ starts the loggers: a failure here leaves nothing behind
    if dist.is_main:
        checkpoint.write_atomic(run_dir / "config.toml", to_toml(config).encode("utf-8"), "nothing was trained yet")
    monitor.start()
    if not resume:
        save(state, run_dir)  # step 0: a kill or a NaN before the first regular checkpoint has a state to go back to
        if dist.is_main:  # the timelapse starts from the untrained G
            monitor.frame(0, sample_fixed(state.sampler, *fixed_noise(config, device)))
    try:
        run_loop(state, run_dir, monitor, evaluator, on_progress, stop)
    finally:
        monitor.close()
    stopped = state.step < state.total_steps
    from .products import finish_run

    # The report, the memorisation check and the model card come from rank 0; the others wait for it.
    dist.on_main(lambda: finish_run(run_dir, config, state.sampler, state.class_names, state.step,
                                    state.generator_ema is not None, data))
    final = run_dir / "samples" / "final.png"
    teardown_distributed(dist)
    return RunResult(run_dir, state.step, checkpoint.find_checkpoint(run_dir), final, stopped, state.total_steps)


def run_loop(state: TrainState, run_dir: Path, monitor, evaluator, on_progress: ProgressCallback | None,
             stop: threading.Event | None) -> None:
    """Step until done or asked to stop; after each step run the events that are due; roll back on NaN/Inf."""
    config, total, dist = state.config, state.total_steps, state.dist
    z_fixed, labels_fixed = fixed_noise(config, state.device)
    clock = {"start": time.perf_counter(), "last": time.perf_counter(), "seen": 0, "row": None,
             "grid": time.perf_counter(), "grid_step": -1}
    rollbacks, before = 0, float(state.extra.get("training_seconds", 0.0))  # earlier sessions' training time
    state.extra["sessions"] = int(state.extra.get("sessions", 0)) + 1

    def due(every: int) -> bool:
        return every > 0 and (state.step % every == 0 or state.step == total)

    def grid_due() -> bool:  # every sample_every steps, and at least every sample_seconds: a slow CPU run shows its progress
        late = 0 < config.train.sample_seconds <= time.perf_counter() - clock["grid"]
        return dist.is_main and (state.step % config.train.sample_every == 0 or late)

    def checkpoint_now() -> None:
        state.extra["training_seconds"] = before + time.perf_counter() - clock["start"]
        save(state, run_dir)
        monitor.checkpointed()

    def stop_requested() -> bool:  # with several ranks they agree at log steps, so that all stop at the same step
        out_of_time = 0 < config.train.max_minutes * 60 <= time.perf_counter() - clock["start"]
        asked = out_of_time or (stop is not None and stop.is_set())
        if not dist.enabled:
            return asked
        return state.step % config.train.log_every == 0 and dist.any(asked, state.device)

    if on_progress:
        on_progress(state.step, total, None, False)  # the bar is there before the first (maybe long) step
    while state.step < total and not stop_requested():
        log_now = due_next(state.step, config.train.log_every, total)
        histograms = log_now and (state.step + 1) % config.train.histogram_every == 0
        try:
            stats = train_step(state, log_now, histograms)
            clock["seen"] += real_images_per_step(config)
            if log_now:  # the only host-device sync: every log_every steps
                clock["row"] = log_stats(state, stats, monitor, clock)
            if grid_due():
                monitor.samples(state.step, sample_fixed(state.sampler, z_fixed, labels_fixed))
                clock["grid"], clock["grid_step"] = time.perf_counter(), state.step
            if config.train.eval_every and due(config.train.eval_every):  # rank 0 evaluates; the others wait
                state.best_fid = dist.on_main(lambda: evaluate(state, evaluator, monitor, run_dir), share=True)
            if due(config.train.checkpoint_every):
                checkpoint_now()
            if config.train.epoch_checkpoints and state.loader.index == state.loader.batches_per_epoch and dist.is_main:
                save_generator(state, run_dir / "checkpoints" / f"epoch-{state.loader.epoch + 1:04d}.safetensors")
        except TrainingDiverged as error:
            rollbacks += 1
            roll_back(state, run_dir, monitor, error, rollbacks)
        if on_progress:
            on_progress(state.step, total, clock["row"], False)
    if state.step < total:  # stopped on request: keep everything up to here
        checkpoint_now()
    if dist.is_main and state.step % config.train.sample_every and clock["grid_step"] != state.step:
        monitor.frame(state.step, sample_fixed(state.sampler, z_fixed, labels_fixed))  # the timelapse ends on the last step
    monitor.finish(state.step, total, before + time.perf_counter() - clock["start"], state.extra["sessions"])
    if on_progress:
        on_progress(state.step, total, clock["row"], True)  # the bar closes before loggers print their goodbyes


def evaluate(state: TrainState, evaluator, monitor, run_dir: Path) -> float | None:
    """Compute the metrics now, record them, keep checkpoints/best by FID; return the best FID so far."""
    results = evaluator.evaluate(state.sampler, state.step, state.class_names)
    monitor.evaluation(state.step, results)
    if "fid" in results and (state.best_fid is None or results["fid"] < state.best_fid):
        state.best_fid = results["fid"]
        checkpoint.write_atomic(run_dir / "checkpoints" / "best.safetensors", checkpoint.encode(state.state_dict()))
    return state.best_fid


def real_images_per_step(config: Config) -> int:
    """Return how many real images D trains on in one step (half a batch per D step when D's update is split)."""
    return config.train.batch_size // (2 if config.optim.d_update == "split" else 1) * config.optim.d_steps


def due_next(step: int, every: int, total: int) -> bool:
    """Return whether the step about to run (step + 1) is one that logs."""
    return (step + 1) % every == 0 or step + 1 == total


def log_stats(state: TrainState, stats: dict[str, torch.Tensor], monitor, clock: dict) -> dict[str, float]:
    """Fetch the step's statistics (one host sync, averaged over ranks), check them, and log one row."""
    now = time.perf_counter()
    scalars = {k: v for k, v in stats.items() if v.ndim == 0}
    per_row = [k for k in scalars if "/" not in k]  # gradient norms go to the loggers only
    values = state.dist.mean(torch.stack([scalars[k].float() for k in per_row])).tolist()
    epochs = state.loader.epoch + state.loader.index / state.loader.batches_per_epoch  # passes done: 1.0 after --epochs 1
    row = {"step": state.step, "epoch": round(epochs, 4), **dict(zip(per_row, values)),
           "images_per_s": clock["seen"] / max(now - clock["last"], 1e-9),  # seen: the global batches, all ranks
           "elapsed_s": now - clock["start"]}
    if not (math.isfinite(row["d_loss"]) and math.isfinite(row["g_loss"])):  # every rank sees the same means
        raise TrainingDiverged(f"d_loss and g_loss became {row['d_loss']}, {row['g_loss']} at step {state.step}")
    flow = [k for k in scalars if "/" in k]
    extra = dict(zip(flow, torch.stack([scalars[k].float() for k in flow]).tolist())) if flow else {}
    extra.update({"lr/g": state.opt_g.param_groups[0]["lr"], "lr/d": state.opt_d.param_groups[0]["lr"]})
    histograms = {k: v for k, v in stats.items() if v.ndim > 0}
    monitor.log(state.step, row, extra, histograms)
    clock["seen"], clock["last"] = 0, now
    return row


def save_generator(state: TrainState, path: Path) -> None:
    """Write the generator alone (G and G_ema, with the config): a small file `purrgan sample` reads, one per epoch."""
    from .config import to_dict

    snapshot = {"step": state.step, "config": to_dict(state.config), "class_names": state.class_names,
                "generator": state.generator.state_dict(),
                "generator_ema": state.generator_ema.state_dict() if state.generator_ema is not None else None}
    checkpoint.write_atomic(path, checkpoint.encode(snapshot), "the run's checkpoints are untouched")


def save(state: TrainState, run_dir: Path, extra: tuple[str, ...] = ()) -> None:
    """Write the state as checkpoints/last (rank 0), after checking that it is finite and that every rank agrees."""
    broken = first_non_finite(state.generator, state.discriminator)
    if broken:  # never replace a good checkpoint with a diverged one
        raise TrainingDiverged(f"{broken} holds NaN/Inf at step {state.step}")
    checksums = state.dist.gather_floats(weights_checksum(state.generator, state.discriminator), state.device)
    check_in_step(checksums, state.step)
    if state.dist.is_main:
        checkpoint.save(run_dir / "checkpoints", {**state.state_dict(), "world_size": state.dist.world_size,
                                                   "rank_checksums": checksums}, extra, keep=state.config.train.keep_checkpoints)
    state.dist.barrier()  # nobody reads a checkpoint before it is complete


def check_in_step(checksums: list[float], step: int) -> None:
    """Raise PurrganError when the ranks' weight checksums differ: they no longer train the same networks."""
    first = checksums[0]
    drifted = [rank for rank, value in enumerate(checksums) if abs(value - first) > 1e-9 * max(abs(first), 1.0)]
    if drifted:
        raise PurrganError(f"the processes' weights differ at step {step} (checksum of rank 0: {first:.10g}, of rank "
                           f"{drifted[0]}: {checksums[drifted[0]]:.10g}), so they no longer train one model; nothing was "
                           f"saved at this step: resume from the last checkpoint with --resume, and report this if it "
                           f"happens again")


def roll_back(state: TrainState, run_dir: Path, monitor, error: TrainingDiverged, attempt: int) -> None:
    """Return to the last good checkpoint with lower learning rates, forgetting what was logged since; or give up."""
    config = state.config
    if attempt > config.train.nan_retries:
        monitor.warn(HealthWarning("nan", state.step, str(error)))
        raise PurrganError(f"{error}: training diverged {attempt} times; lower the learning rates "
                           f"(--set optim.lr_d=... --set optim.lr_g=...); the last good checkpoint is kept in "
                           f"{run_dir / 'checkpoints'}") from None
    failed = state.learning_rates
    saved, source = state.dist.on_main(lambda: checkpoint.load_latest(run_dir, set_aside=True), share=True)
    state.load_state_dict(saved, source)
    state.scale_learning_rates(failed, config.train.nan_lr_factor)  # lower than when it failed, also after a 2nd time
    monitor.rewind(state.step)
    monitor.warn(HealthWarning("nan", state.step, f"{error}; rolled back to step {state.step} and multiplied the learning "
                                                  f"rates by {config.train.nan_lr_factor} (try {attempt} of "
                                                  f"{config.train.nan_retries})"))
