"""Using a trained generator: load it from a run or checkpoint, draw samples, turn them into pictures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image
from torch import nn

from . import checkpoint
from .config import from_dict
from .data import to_uint8
from .device import autocast
from .errors import PurrganError
from .models import build_generator


class TrainedGenerator(nn.Module):
    """A trained generator: forward(z, labels) gives images in [-1, 1]; sample(n) draws them from fresh noise.

    classes lists the class names of a conditional or per-class model (empty otherwise).
    """

    def __init__(self, network: nn.Module, z_dim: int, classes: list[str], config=None, step: int = 0,
                 uses_ema: bool = False):
        super().__init__()
        self.network, self.z_dim, self.classes = network, z_dim, list(classes)
        self.config, self.step, self.uses_ema = config, step, uses_ema

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.network(z, labels)

    def labels_for(self, n: int, class_name: str | None = None, first: int = 0) -> torch.Tensor | None:
        """Return n labels: all of class_name, or the classes in turn (image `first` onwards); None when unconditional."""
        if not self.classes:
            if class_name is not None:
                raise PurrganError("this generator is not class-conditional; leave out --class")
            return None
        if class_name is None:
            return torch.arange(first, first + n) % len(self.classes)
        if class_name not in self.classes:
            raise PurrganError(f"unknown class '{class_name}'; this generator knows: {', '.join(self.classes)}")
        return torch.full((n,), self.classes.index(class_name), dtype=torch.long)

    @torch.no_grad()
    def batches(self, n: int, seed: int | None = None, class_name: str | None = None, truncation: float | None = None,
                batch_size: int = 1024) -> Iterator[torch.Tensor]:
        """Yield n images in [-1, 1] as chunks (at most batch_size, N, C, H, W) on the generator's device.

        Nothing is gathered on the host, so any n fits in memory: each chunk goes where it is needed (files,
        a feature extractor) before the next is made. The network runs in the run's precision
        (sampling_precision); the same seed always gives the same images, whatever batch_size.
        """
        if n < 0 or n > 10_000_000:
            raise PurrganError(f"cannot draw {n} images; ask for between 0 and 10,000,000")
        generator = torch.Generator(device="cpu")
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        labels = self.labels_for(0, class_name)  # checks class_name before any work
        precision = sampling_precision(self.config, self.device)
        for block_start in range(0, n, LATENT_BLOCK):
            # Latents are drawn on the CPU, so a seed means the same on any device, in blocks of a fixed size, so
            # that memory stays bounded and the images do not depend on batch_size.
            z = torch.randn(min(LATENT_BLOCK, n - block_start), self.z_dim, generator=generator)
            if truncation is not None:
                z = truncate(z, truncation, generator)
            for start in range(0, len(z), batch_size):
                chunk = z[start:start + batch_size]
                first = block_start + start
                labels = self.labels_for(len(chunk), class_name, first)
                with autocast(self.device, precision):
                    images = self.network(chunk.to(self.device), labels.to(self.device) if labels is not None else None)
                yield images.float()

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None, class_name: str | None = None,
               truncation: float | None = None, batch_size: int = 1024) -> torch.Tensor:
        """Return n images (n, C, H, W) in [-1, 1] on the CPU; the same seed always gives the same images.

        truncation t redraws every latent coordinate outside [-t, t] (the truncation trick: less variety,
        higher fidelity); class_name picks one class of a conditional model (default: all classes in turn).
        For many images, iterate over batches() instead: this gathers them all in memory.
        """
        chunks = [chunk.cpu() for chunk in self.batches(n, seed, class_name, truncation, batch_size)]
        return torch.cat(chunks) if chunks else torch.empty(0)


LATENT_BLOCK = 65_536  # latents drawn per call to randn (26 MB at z_dim 100): one block up to 65,536 images, as 0.2 drew them


def sampling_precision(config, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype to sample in: the run's own on CUDA; on a CPU, bf16 only for a bf16 run where bf16 is native."""
    from .device import amp_dtype, cpu_has_native_bf16

    if config is None:
        return None
    precision = amp_dtype(config.train.amp, device)
    if device.type == "cpu" and precision is not None and not cpu_has_native_bf16():
        return None  # emulated bf16 is slower than float32 on this CPU, and no more faithful
    return precision


def truncate(z: torch.Tensor, t: float, generator: torch.Generator) -> torch.Tensor:
    """Return z with every coordinate outside [-t, t] redrawn from the normal distribution cut to [-t, t].

    Redrawing is exact and quick for the usual t (0.5-1); after a few rounds the rest is drawn by inverting
    the normal CDF, so even t = 1e-9 ends at once.
    """
    if not (t > 0 and math.isfinite(t)):
        raise PurrganError("--truncation must be a positive number (e.g. 0.7)")
    for _ in range(16):
        outside = z.abs() > t
        if not outside.any():
            return z
        z[outside] = torch.randn(int(outside.sum()), generator=generator)
    outside = z.abs() > t
    edge = torch.special.ndtr(torch.tensor(-t, dtype=torch.float64))  # P(Z < -t)
    u = edge + (1 - 2 * edge) * torch.rand(int(outside.sum()), generator=generator, dtype=torch.float64)
    z[outside] = torch.special.ndtri(u).clamp(-t, t).float()
    return z


def load_generator(path: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> TrainedGenerator:
    """Return the generator of a run folder, checkpoint or exported .safetensors (EMA weights when present), in eval mode."""
    exported = _read_export(Path(path))
    if exported is not None:
        return exported.to(device)
    state, source = checkpoint.load_latest(path)
    try:
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise KeyError("config")
        config = checked_model_config(state["config"])
        network = build_generator(config)
        weights = state.get("generator_ema") if ema and state.get("generator_ema") is not None else state["generator"]
        network.load_state_dict(weights)
        classes = [str(c) for c in (state.get("class_names") or [])] if config.model.conditional != "none" else []
        step = int(state.get("step", 0))
    except (KeyError, RuntimeError, PurrganError, TypeError, ValueError, AttributeError) as error:
        raise PurrganError(f"{source} does not hold a generator this purrgan can build "
                           f"({checkpoint.describe_load_error(error)})") from None
    network.eval()
    return TrainedGenerator(network, config.model.z_dim, classes, config, step,
                            uses_ema=weights is state.get("generator_ema")).to(device)


def checked_model_config(raw: dict):
    """Return the Config stored with a generator, checked before anything is built from it (sizes, architecture)."""
    from .config import validate
    from .models import ARCHITECTURES

    config = from_dict(raw)
    validate(config)
    if config.model.arch not in ARCHITECTURES:
        raise PurrganError(f"unknown model.arch '{config.model.arch}' (written by another purrgan?)")
    ARCHITECTURES[config.model.arch].check(config)
    if config.model.conditional != "none" and not 2 <= config.model.num_classes <= 100_000:
        raise PurrganError(f"a conditional generator with {config.model.num_classes} classes")
    return config


def _read_export(path: Path) -> TrainedGenerator | None:
    # `purrgan export --format safetensors` files: the generator's weights plus its config in the header.
    if not (path.is_file() and path.suffix == ".safetensors"):
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != "purrgan-generator-1":
                return None
            weights = {key: handle.get_tensor(key) for key in handle.keys()}
        config = checked_model_config(json.loads(metadata["config"]))
        network = build_generator(config)
        network.load_state_dict(weights)
        classes = json.loads(metadata.get("classes", "[]"))
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ValueError("its class names are not a list of names")
        step = int(metadata.get("step", 0))
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError, TypeError, AttributeError, RecursionError,
            PurrganError) as error:
        raise PurrganError(f"{path} is not a loadable purrgan generator ({checkpoint.describe_load_error(error)})") from None
    return TrainedGenerator(network.eval(), config.model.z_dim, classes, config, step)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Return spherical interpolation between latents a and b (N, D) at fractions t (N, 1) (Shoemake 1985)."""
    cos = ((a / a.norm(dim=1, keepdim=True)) * (b / b.norm(dim=1, keepdim=True))).sum(1, keepdim=True).clamp(-1, 1)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    straight = sin.abs() < 1e-6  # parallel latents: the straight line is the arc
    safe = torch.where(straight, torch.ones_like(sin), sin)
    arc = (torch.sin((1 - t) * omega) / safe) * a + (torch.sin(t * omega) / safe) * b
    return torch.where(straight, (1 - t) * a + t * b, arc)


def mix(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, spherical: bool) -> torch.Tensor:
    """Return latents between a and b (N, D) at fractions t (N, 1): along the arc, or the straight line."""
    return slerp(a, b, t) if spherical else (1 - t) * a + t * b


def interpolate(a: torch.Tensor, b: torch.Tensor, steps: int, spherical: bool) -> torch.Tensor:
    """Return (steps, D) latents from a to b (both (D,)), ends included."""
    return mix(a.expand(steps, -1), b.expand(steps, -1), torch.linspace(0, 1, steps)[:, None], spherical)


@torch.no_grad()
def interpolation_grid(generator: TrainedGenerator, rows: int, steps: int, seed: int = 0, spherical: bool = False,
                       class_name: str | None = None) -> torch.Tensor:
    """Return rows * steps images: each row walks from one random latent to another."""
    rng = torch.Generator().manual_seed(seed)
    ends = torch.randn(rows, 2, generator.z_dim, generator=rng)
    z = torch.cat([interpolate(a, b, steps, spherical) for a, b in ends])  # (rows * steps, D)
    labels = generator.labels_for(rows, class_name)
    labels = labels.repeat_interleave(steps) if labels is not None else None
    return generator.network(z.to(generator.device), labels.to(generator.device) if labels is not None else None).float().cpu()


@torch.no_grad()
def latent_walk(generator: TrainedGenerator, count: int, keyframes: int, steps: int, seed: int = 0,
                spherical: bool = True, class_name: str | None = None) -> list[torch.Tensor]:
    """Return frames (each count images) of a walk through keyframes random latents that loops back to the first."""
    rng = torch.Generator().manual_seed(seed)
    keys = torch.randn(keyframes, count, generator.z_dim, generator=rng)
    labels = generator.labels_for(count, class_name)
    labels = labels.to(generator.device) if labels is not None else None
    frames = []
    for k in range(keyframes):
        a, b = keys[k], keys[(k + 1) % keyframes]
        for t in torch.linspace(0, 1, steps + 1)[:-1]:  # the end of one leg is the start of the next
            z = mix(a, b, torch.full((count, 1), float(t)), spherical)
            frames.append(generator.network(z.to(generator.device), labels).float().cpu())
    return frames


def fixed_noise(config, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Return a run's fixed latents and labels (classes in turn), the same for every grid and resume."""
    generator = torch.Generator().manual_seed(config.train.seed)
    z = torch.randn(config.train.num_samples, config.model.z_dim, generator=generator)
    labels = torch.arange(config.train.num_samples) % max(config.model.num_classes, 1)
    return z.to(device), labels.to(device)


@torch.no_grad()
def sample_fixed(network: nn.Module, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return network(z, labels) in eval mode (BatchNorm running statistics) on the CPU, restoring its mode afterwards."""
    was_training = network.training
    network.eval()
    try:
        return network(z, labels).float().cpu()
    finally:
        network.train(was_training)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Return one PIL image per image of a batch in [-1, 1] (N, C, H, W)."""
    arrays = to_uint8(images).cpu().permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    return [Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a) for a in arrays]
