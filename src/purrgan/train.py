"""The training loop: d_steps D updates, then g_steps G updates, per step; a checkpoint holds all a resume needs."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import checkpoint
from .augment import diff_augment, random_hflip
from .config import Config, from_dict, to_dict, to_toml
from .data import ImageSet, load_images, split_validation, to_float
from .data.loader import DeviceLoader
from .dist import setup as setup_distributed
from .dist import teardown as teardown_distributed
from .dist import weights_checksum
from .ema import make_ema, update_ema
from .errors import PurrganError
from .losses import LOSSES, clip_weights, discriminator_loss, generator_loss
from .models import build_discriminator, build_generator
from .health import HealthWarning, TrainingDiverged, first_non_finite
from .monitor import NullMonitor, RunMonitor, layer_grad_norms, save_grid, weights_and_grads

log = logging.getLogger(__name__)
ProgressCallback = Callable[[int, int, dict[str, float]], None]  # (step, total_steps, latest metrics)


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    checkpoint: Path
    final_grid: Path
    stopped: bool = False  # ended early on request (a signal), resumable


def resolve_device(name: str) -> torch.device:
    """Return the torch device for "auto", "cpu", "cuda" or "cuda:N", failing clearly when CUDA is missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PurrganError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def fixed_noise(config: Config, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the run's fixed latents and labels (classes in turn), the same for every grid and resume."""
    generator = torch.Generator().manual_seed(config.train.seed)
    z = torch.randn(config.train.num_samples, config.model.z_dim, generator=generator)
    labels = torch.arange(config.train.num_samples) % max(config.model.num_classes, 1)
    return z.to(device), labels.to(device)


def make_optimizer(config: Config, parameters, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Return the configured optimiser: Adam with (beta1, beta2) (fused on CUDA), or RMSprop as in the WGAN paper."""
    if config.optim.name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr)
    return torch.optim.Adam(parameters, lr=lr, betas=(config.optim.beta1, config.optim.beta2),
                            **({"fused": True} if device.type == "cuda" else {}))


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype for train.amp on device, or None for float32."""
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if setting == "bf16" else torch.float16


def maybe_compile(module: nn.Module, enabled: bool, example: tuple) -> nn.Module:
    """Return torch.compile(module) if it works on a trial forward, else module itself with a warning."""
    if not enabled:
        return module
    was_training = module.training
    try:
        compiled = torch.compile(module)
        module.eval()  # the trial must not move BatchNorm statistics
        with torch.no_grad():
            compiled(*example)
        return compiled
    except Exception as error:  # noqa: BLE001 - any compiler failure means "train eagerly"
        log.warning("torch.compile failed for %s (%s); training without compiling", type(module).__name__,
                    str(error).splitlines()[0][:200])
        return module
    finally:
        module.train(was_training)


def with_classes(config: Config, data: ImageSet) -> Config:
    """Return config with model.num_classes taken from the data's labels when the model is conditional."""
    if config.model.conditional == "none":
        return config
    if data.labels is None or len(data.class_names) < 2:
        raise PurrganError(f"model.conditional = \"{config.model.conditional}\" needs a data set with at least 2 classes; "
                           f"{data.name} has none (a folder gets classes from its sub-folders)")
    return replace(config, model=replace(config.model, num_classes=len(data.class_names)))


def train(config: Config, run_dir: Path, resume: bool = False, on_progress: ProgressCallback | None = None,
          stop: threading.Event | None = None) -> RunResult:
    """Train config's GAN into run_dir (continuing its last checkpoint when resume) and return where things are.

    Setting stop (e.g. from a signal handler) ends the run after the current step, with a checkpoint.
    """
    run_dir = Path(run_dir)
    dist, device_name = setup_distributed(config.train.device)  # one process, or one rank of torchrun's several
    device = resolve_device(device_name)
    torch.manual_seed(config.train.seed)  # the same initial weights on every rank
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    data, _ = split_validation(load_images(config.data.source, config.data.resolution, config.data.channels,
                                           config.data.classes), config.data.val_fraction)
    config = with_classes(config, data)
    loader = DeviceLoader(data, config.train.batch_size, config.train.seed, device, config.train.data_on_device,
                          dist.rank, dist.world_size)  # each rank draws its share of every global batch
    flip = config.data.hflip == "on" or (config.data.hflip == "auto" and config.data.source != "digits")
    total_steps = config.train.steps if config.train.epochs == 0 else config.train.epochs * loader.batches_per_epoch

    generator, discriminator = build_generator(config).to(device), build_discriminator(config).to(device)
    if dist.enabled and config.train.sync_batchnorm:
        if device.type != "cuda":
            raise PurrganError("train.sync_batchnorm needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only)")
        generator = nn.SyncBatchNorm.convert_sync_batchnorm(generator)
        discriminator = nn.SyncBatchNorm.convert_sync_batchnorm(discriminator)
    generator_ema = make_ema(generator) if config.train.ema > 0 else None
    channels_last = config.train.channels_last in ("on", "auto", "true")  # NHWC is faster for cuDNN and oneDNN alike
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    generator, discriminator = generator.to(memory_format=memory_format), discriminator.to(memory_format=memory_format)
    opt_g = make_optimizer(config, generator.parameters(), config.optim.lr_g, device)
    opt_d = make_optimizer(config, discriminator.parameters(), config.optim.lr_d, device)
    precision = amp_dtype(config.train.amp, device)
    scaler_g = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)  # fp16 needs loss scaling
    scaler_d = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
    example = torch.zeros(2, config.model.z_dim, device=device), torch.zeros(2, dtype=torch.long, device=device)
    G = maybe_compile(generator, config.train.compile, example)  # G and D run; generator/discriminator are saved
    D = maybe_compile(discriminator, config.train.compile,
                      (torch.zeros(2, config.data.channels, config.data.resolution, config.data.resolution, device=device),
                       example[1]))
    rng = torch.Generator(device=device).manual_seed(config.train.seed + 1_000_003 * dist.rank)  # z, augmentation, penalty
    loss_spec = LOSSES[config.loss.name]
    evaluator = Evaluator(config, device, run_dir) if config.train.eval_every and dist.is_main else None  # fails fast
    step = 0

    def snapshot() -> dict:
        return {
            "step": step, "config": to_dict(config), "class_names": data.class_names, "loader": loader.state(),
            "generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
            "generator_ema": generator_ema.state_dict() if generator_ema is not None else None,
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "scaler_g": scaler_g.state_dict(), "scaler_d": scaler_d.state_dict(),
            "rng": {"train": rng.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "best_fid": evaluator.best_fid if evaluator else None,
        }

    def restore(state: dict, source: Path) -> int:
        _check_compatible(state, config, source)
        _load_into(state, source, generator, discriminator, generator_ema, opt_g, opt_d)
        loader.load_state(state["loader"])
        rng.set_state(state["rng"]["train"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        if state.get("scaler_g"):
            scaler_g.load_state_dict(state["scaler_g"])
            scaler_d.load_state_dict(state["scaler_d"])
        if evaluator is not None and state.get("best_fid") is not None:
            evaluator.best_fid = state["best_fid"]
        if dist.rank > 0:  # the checkpoint holds rank 0's draws; the others continue from their own seeds
            rng.manual_seed(config.train.seed + 1_000_003 * dist.rank + int(state["step"]))
        return int(state["step"])

    def save(extra: tuple[str, ...] = ()) -> None:
        broken = first_non_finite(generator, discriminator)
        if broken:  # never replace a good checkpoint with a diverged one
            raise TrainingDiverged(f"{broken} holds NaN/Inf at step {step}")
        checksums = dist.gather_floats(weights_checksum(generator, discriminator), device)  # ranks in step?
        if dist.is_main:
            checkpoint.save(run_dir / "checkpoints", {**snapshot(), "world_size": dist.world_size,
                                                      "rank_checksums": checksums}, extra, keep=config.train.keep_checkpoints)
        dist.barrier()  # nobody reads a checkpoint before it is complete

    if resume:
        state, source = checkpoint.load_latest(run_dir)
        step = restore(state, source)
        log.info("resuming %s from step %d (%s)", run_dir, step, source)
    elif (run_dir / "checkpoints" / checkpoint.LAST).exists():
        raise PurrganError(f"{run_dir} already holds a run; add --resume to continue it or choose another --out")
    dist.barrier()  # every rank has looked before rank 0 writes

    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(to_toml(config), encoding="utf-8")
    if not resume:
        save()  # step 0: a kill or a NaN before the first regular checkpoint still has a state to go back to
    z_fixed, labels_fixed = fixed_noise(config, device)
    shown = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.train.seed))[:config.train.num_samples]
    monitor = RunMonitor(run_dir, config, total_steps, step, to_float(data.images[shown])) if dist.is_main else NullMonitor()

    def for_d(images: torch.Tensor) -> torch.Tensor:
        """What D sees: DiffAugment, then instance noise annealed to 0 over the run."""
        if config.augment.policy:
            images = diff_augment(images, config.augment.policy, rng)
        sigma = config.augment.instance_noise * (1 - step / total_steps)
        if sigma > 0:
            images = images + sigma * torch.randn(images.shape, device=device, generator=rng)
        return images

    def noise(n: int) -> torch.Tensor:
        return torch.randn(n, config.model.z_dim, device=device, generator=rng)

    def train_step(log_now: bool, histograms_now: bool) -> tuple[dict, dict, dict, dict, int]:
        """One step: d_steps D updates on fresh real batches, then g_steps G updates; returns what to log."""
        stats, histograms, seen = {}, {}, 0
        reuse = config.optim.d_steps == 1 and config.optim.g_steps == 1  # G's step reuses D's fake batch (one G forward)
        for _ in range(config.optim.d_steps):
            real, labels = loader.next()  # (B, C, H, W) in [-1, 1], (B,)
            if flip:
                real = random_hflip(real, rng)
            real = real.contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
                with torch.set_grad_enabled(reuse):  # keep G's graph only when G's step will use this batch
                    fake = G(noise(real.shape[0]), labels)
                d_out = discriminator_loss(config.loss, D, for_d(real), for_d(fake.detach()), labels, rng)  # float32 losses
            opt_d.zero_grad(set_to_none=True)
            scaler_d.scale(d_out["loss"]).backward()
            dist.average_gradients(discriminator)
            if log_now:  # D's gradient flow, before G's step could touch it
                scaler_d.unscale_(opt_d)
                stats = layer_grad_norms(discriminator, "D")
                histograms = weights_and_grads(discriminator, "D") if histograms_now else {}
            scaler_d.step(opt_d)
            scaler_d.update()
            if loss_spec.clip:
                clip_weights(discriminator, config.loss.clip_value)
            seen += real.shape[0]

        discriminator.requires_grad_(False)  # G's step needs no gradients for D's weights
        for _ in range(config.optim.g_steps):
            with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
                if not reuse:
                    fake = G(noise(real.shape[0]), labels)  # G imitates the classes of the last real batch
                g_out = generator_loss(config.loss, D, for_d(fake), labels)
            opt_g.zero_grad(set_to_none=True)
            scaler_g.scale(g_out["loss"]).backward()
            dist.average_gradients(generator)
            if log_now:
                scaler_g.unscale_(opt_g)
            scaler_g.step(opt_g)
            scaler_g.update()
        discriminator.requires_grad_(True)
        dist.broadcast_buffers(generator, discriminator)  # BatchNorm statistics follow rank 0, as with DDP
        if generator_ema is not None:
            update_ema(generator_ema, generator, config.train.ema if step >= config.train.ema_start else 0.0)
        if log_now:
            stats.update(layer_grad_norms(generator, "G"))
            if histograms_now:
                histograms.update(weights_and_grads(generator, "G"))
        return d_out, g_out, stats, histograms, seen

    def stop_requested(step: int) -> bool:
        """Whether to end early; with several ranks they agree at log steps so that all stop at the same step."""
        if stop is None:
            return False
        if not dist.enabled:
            return stop.is_set()
        return step % config.train.log_every == 0 and dist.any(stop.is_set(), device)

    started, images_seen, last_time, rollbacks = time.perf_counter(), 0, time.perf_counter(), 0
    try:
        while step < total_steps and not stop_requested(step):
            log_now = (step + 1) % config.train.log_every == 0 or step + 1 == total_steps
            histograms_now = log_now and (step + 1) % config.train.histogram_every == 0
            try:
                d_out, g_out, stats, histograms, seen = train_step(log_now, histograms_now)
                step += 1
                images_seen += seen
                epoch_done = loader.index == loader.batches_per_epoch
                if log_now:
                    now = time.perf_counter()
                    names = ["d_loss", "g_loss", *(k for k in d_out if k != "loss")]
                    values = dist.mean(torch.stack([d_out["loss"].detach().float(), g_out["loss"].detach().float(),
                                                    *(v.float() for k, v in d_out.items() if k != "loss")])).tolist()
                    row = {"step": step, "epoch": loader.epoch, **dict(zip(names, values)),
                           "images_per_s": images_seen * dist.world_size / max(now - last_time, 1e-9), "elapsed_s": now - started}
                    if not all(math.isfinite(v) for v in values[:2]):  # every rank sees the same means: all roll back
                        raise TrainingDiverged(f"d_loss and g_loss became {values[0]}, {values[1]} at step {step}")
                    stats.update({"lr/g": opt_g.param_groups[0]["lr"], "lr/d": opt_d.param_groups[0]["lr"]})
                    monitor.log(step, row, stats, histograms)
                    images_seen, last_time = 0, now
                    if on_progress:
                        on_progress(step, total_steps, row)
                if dist.is_main and step % config.train.sample_every == 0:
                    monitor.samples(step, sample_fixed(generator_ema or generator, z_fixed, labels_fixed))
                if evaluator is not None and (step % config.train.eval_every == 0 or step == total_steps):
                    results = evaluator.evaluate(generator_ema or generator, step, data.class_names)
                    monitor.evaluation(step, results)
                    if evaluator.improved(results):
                        checkpoint.write_atomic(run_dir / "checkpoints" / "best.safetensors", checkpoint.encode(snapshot()))
                if step % config.train.checkpoint_every == 0 or step == total_steps or (epoch_done and config.train.epoch_checkpoints):
                    save((f"epoch-{loader.epoch + 1:04d}.safetensors",) if epoch_done and config.train.epoch_checkpoints else ())
                    monitor.checkpointed()
            except TrainingDiverged as error:
                rollbacks += 1
                if rollbacks > config.train.nan_retries:
                    monitor.warn(HealthWarning("nan", step, str(error)))
                    raise PurrganError(f"{error}: training diverged {rollbacks} times; lower the learning rates "
                                       f"(--set optim.lr_d=... --set optim.lr_g=...); the last good checkpoint is kept in "
                                       f"{run_dir / 'checkpoints'}") from None
                failed_lrs = [group["lr"] for group in opt_g.param_groups + opt_d.param_groups]
                state, source = checkpoint.load_latest(run_dir)
                step = restore(state, source)
                for group, lr in zip(opt_g.param_groups + opt_d.param_groups, failed_lrs):
                    group["lr"] = lr * config.train.nan_lr_factor  # lower than when it failed, also after a 2nd roll-back
                monitor.warn(HealthWarning("nan", step, f"{error}; rolled back to step {step} and multiplied the learning "
                                                        f"rates by {config.train.nan_lr_factor} (try {rollbacks} of "
                                                        f"{config.train.nan_retries})"))
        if step < total_steps:  # stopped on request: keep everything up to here
            save()
            monitor.checkpointed()
    finally:
        monitor.close()
    if not dist.is_main:
        dist.barrier()
        teardown_distributed(dist)
        return RunResult(run_dir, step, checkpoint.find_checkpoint(run_dir), run_dir / "samples" / "final.png", step < total_steps)

    final = save_grid(sample_fixed(generator_ema or generator, z_fixed, labels_fixed), run_dir / "samples" / "final.png")
    from .generate import TrainedGenerator
    from .modelcard import write_model_card
    from .report import write_report

    write_report(run_dir)
    trained = TrainedGenerator(generator_ema or generator, config.model.z_dim,
                               data.class_names if config.model.conditional != "none" else [], config, step,
                               uses_ema=generator_ema is not None)  # the weights in memory: no reload from disk
    write_model_card(trained, run_dir / "MODEL.md", run_dir=run_dir)
    if config.model.conditional == "per-class":
        _export_members(generator_ema or generator, config, data.class_names, step, run_dir / "generators")
    dist.barrier()
    teardown_distributed(dist)
    return RunResult(run_dir, step, checkpoint.find_checkpoint(run_dir), final, stopped=step < total_steps)


class Evaluator:
    """Metrics during training (the run's own feature extractor and cached reference statistics) and the best FID."""

    def __init__(self, config: Config, device: torch.device, run_dir: Path):
        from .metrics import parse_metrics
        from .metrics.evaluate import reference_statistics
        from .metrics.features import load_extractor

        self.config, self.names = config, parse_metrics(config.train.eval_metrics)
        self.extractor = load_extractor(config.train.feature_extractor, config.train.inception_weights or None, device)
        self.real = reference_statistics(config, config.train.eval_split, self.extractor)
        self.best_fid: float | None = None

    def evaluate(self, network: nn.Module, step: int, class_names: list[str]) -> dict[str, float]:
        from .generate import TrainedGenerator
        from .metrics.evaluate import compute, generated_features

        was_training = network.training
        network.eval()
        try:
            generator = TrainedGenerator(network, self.config.model.z_dim,
                                         class_names if self.config.model.conditional != "none" else [], self.config, step)
            return compute(self.names, self.real, generated_features(generator, self.config.train.eval_num, self.extractor))
        finally:
            network.train(was_training)

    def improved(self, results: dict[str, float]) -> bool:
        """Return whether results beat the best FID so far (and remember it)."""
        if "fid" not in results or (self.best_fid is not None and results["fid"] >= self.best_fid):
            return False
        self.best_fid = results["fid"]
        return True


@torch.no_grad()
def sample_fixed(generator: nn.Module, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return G(z, labels) in eval mode (BatchNorm running statistics), restoring G's mode afterwards."""
    was_training = generator.training
    generator.eval()
    try:
        return generator(z, labels).float().cpu()
    finally:
        generator.train(was_training)


def _export_members(generator: nn.Module, config: Config, class_names: list[str], step: int, folder: Path) -> None:
    # One standalone, unconditional checkpoint per class, loadable by `purrgan sample` on its own.
    member_config = replace(config, model=replace(config.model, conditional="none", num_classes=0))
    for name, member in zip(class_names, generator.members):
        state = {"step": step, "config": to_dict(member_config), "class_names": [], "generator": member.state_dict()}
        checkpoint.write_atomic(folder / f"{name}.safetensors", checkpoint.encode(state))


def _load_into(state: dict, source: Path, generator, discriminator, generator_ema, opt_g, opt_d) -> None:
    try:
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        if generator_ema is not None:
            generator_ema.load_state_dict(state.get("generator_ema") or state["generator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
    except (KeyError, RuntimeError, ValueError) as error:
        raise PurrganError(f"{source} does not match this run's model ({checkpoint.describe_load_error(error)}); "
                           f"resume with the run's own config.toml or start a new run") from None


def _check_compatible(state: dict, config: Config, source: Path) -> None:
    saved = from_dict(state["config"])
    for section, key in (("model", "arch"), ("data", "resolution"), ("data", "channels"), ("model", "z_dim"),
                         ("model", "g_width"), ("model", "d_width"), ("model", "conditional"), ("model", "num_classes"),
                         ("optim", "name")):
        old, new = getattr(getattr(saved, section), key), getattr(getattr(config, section), key)
        if old != new:
            raise PurrganError(f"{source} was trained with {section}.{key} = {old}, but this run asks for {new}; "
                               f"resume with the same value or start a new run with another --out")
