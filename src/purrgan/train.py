"""The training loop: one D update, then one G update, per step; everything a resume needs is checkpointed."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import checkpoint
from .augment import random_hflip
from .config import Config, from_dict, to_dict, to_toml
from .data import load_images
from .data.loader import DeviceLoader
from .errors import PurrganError
from .losses import LOSSES
from .models import build_discriminator, build_generator
from .monitor import MetricsWriter, save_grid

log = logging.getLogger(__name__)
ProgressCallback = Callable[[int, int, dict[str, float]], None]  # (step, total_steps, latest metrics)


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    checkpoint: Path
    final_grid: Path


def resolve_device(name: str) -> torch.device:
    """Return the torch device for "auto", "cpu", "cuda" or "cuda:N", failing clearly when CUDA is missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PurrganError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def fixed_noise(config: Config, device: torch.device) -> torch.Tensor:
    """Return the run's fixed latent batch, the same for every grid and after every resume."""
    generator = torch.Generator().manual_seed(config.train.seed)
    return torch.randn(config.train.num_samples, config.model.z_dim, generator=generator).to(device)


def train(config: Config, run_dir: Path, resume: bool = False, on_progress: ProgressCallback | None = None) -> RunResult:
    """Train config's GAN into run_dir (continuing its last checkpoint when resume) and return where things are."""
    run_dir = Path(run_dir)
    device = resolve_device(config.train.device)
    torch.manual_seed(config.train.seed)
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    data = load_images(config.data.source, config.data.resolution, config.data.channels)
    loader = DeviceLoader(data, config.train.batch_size, config.train.seed, device)
    flip = config.data.hflip == "on" or (config.data.hflip == "auto" and config.data.source != "digits")
    total_steps = config.train.steps if config.train.epochs == 0 else config.train.epochs * loader.batches_per_epoch

    generator, discriminator = build_generator(config).to(device), build_discriminator(config).to(device)
    betas = (config.optim.beta1, config.optim.beta2)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.optim.lr_g, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.optim.lr_d, betas=betas)
    rng = torch.Generator(device=device).manual_seed(config.train.seed)  # z and augmentation draws
    loss = LOSSES[config.loss.name]
    step = 0

    if resume:
        state, source = checkpoint.load_latest(run_dir)
        _check_compatible(state, config, source)
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        loader.load_state(state["loader"])
        rng.set_state(state["rng"]["train"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        step = int(state["step"])
        log.info("resuming %s from step %d (%s)", run_dir, step, source)
    elif (run_dir / "checkpoints" / checkpoint.LAST).exists():
        raise PurrganError(f"{run_dir} already holds a run; add --resume to continue it or choose another --out")

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(to_toml(config), encoding="utf-8")
    metrics = MetricsWriter(run_dir, resume_step=step)
    z_fixed = fixed_noise(config, device)

    def snapshot() -> dict:
        return {
            "step": step, "config": to_dict(config), "loader": loader.state(),
            "generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "rng": {"train": rng.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        }

    started, images_seen, last_time = time.perf_counter(), 0, time.perf_counter()
    try:
        while step < total_steps:
            real, _ = loader.next()  # (B, C, H, W) in [-1, 1]
            if flip:
                real = random_hflip(real, rng)
            z = torch.randn(real.shape[0], config.model.z_dim, device=device, generator=rng)
            fake = generator(z)

            d_out = loss.discriminator(discriminator, real, fake.detach())
            opt_d.zero_grad(set_to_none=True)
            d_out["loss"].backward()
            opt_d.step()

            g_out = loss.generator(discriminator, fake)
            opt_g.zero_grad(set_to_none=True)
            g_out["loss"].backward()
            opt_g.step()

            step += 1
            images_seen += real.shape[0]
            epoch_done = loader.index == loader.batches_per_epoch
            if step % config.train.log_every == 0 or step == total_steps:
                now = time.perf_counter()
                row = {"step": step, "epoch": loader.epoch, "d_loss": d_out["loss"].item(), "g_loss": g_out["loss"].item(),
                       **{k: v.item() for k, v in d_out.items() if k != "loss"},
                       "images_per_s": images_seen / max(now - last_time, 1e-9), "elapsed_s": now - started}
                metrics.write(row)
                images_seen, last_time = 0, now
                if on_progress:
                    on_progress(step, total_steps, row)
            if step % config.train.sample_every == 0:
                save_grid(sample_fixed(generator, z_fixed), run_dir / "samples" / f"step-{step:06d}.png")
            if step % config.train.checkpoint_every == 0 or step == total_steps or (epoch_done and config.train.epoch_checkpoints):
                extra = (f"epoch-{loader.epoch + 1:04d}.safetensors",) if epoch_done and config.train.epoch_checkpoints else ()
                checkpoint.save(run_dir / "checkpoints", snapshot(), extra)
    finally:
        metrics.close()

    final = save_grid(sample_fixed(generator, z_fixed), run_dir / "samples" / "final.png")
    last = checkpoint.find_checkpoint(run_dir)
    return RunResult(run_dir, step, last, final)


@torch.no_grad()
def sample_fixed(generator: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Return G(z) in eval mode (BatchNorm running statistics), leaving G in train mode afterwards."""
    generator.eval()
    try:
        return generator(z).float().cpu()
    finally:
        generator.train()


def _check_compatible(state: dict, config: Config, source: Path) -> None:
    saved = from_dict(state["config"])
    for section, key in (("model", "arch"), ("data", "resolution"), ("data", "channels"), ("model", "z_dim"),
                         ("model", "g_width"), ("model", "d_width")):
        old, new = getattr(getattr(saved, section), key), getattr(getattr(config, section), key)
        if old != new:
            raise PurrganError(f"{source} was trained with {section}.{key} = {old}, but this run asks for {new}; "
                               f"resume with the same value or start a new run with another --out")
