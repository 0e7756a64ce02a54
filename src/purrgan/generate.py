"""Using a trained generator: load it from a run or checkpoint, draw samples, turn them into pictures."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import nn

from . import checkpoint
from .config import from_dict
from .data import to_uint8
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

    def labels_for(self, n: int, class_name: str | None = None) -> torch.Tensor | None:
        """Return n labels: all of class_name, or the classes in turn; None for an unconditional model."""
        if not self.classes:
            if class_name is not None:
                raise PurrganError("this generator is not class-conditional; leave out --class")
            return None
        if class_name is None:
            return torch.arange(n) % len(self.classes)
        if class_name not in self.classes:
            raise PurrganError(f"unknown class '{class_name}'; this generator knows: {', '.join(self.classes)}")
        return torch.full((n,), self.classes.index(class_name), dtype=torch.long)

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None, class_name: str | None = None,
               truncation: float | None = None, batch_size: int = 1024) -> torch.Tensor:
        """Return n images (n, C, H, W) in [-1, 1]; the same seed always gives the same images.

        truncation t redraws every latent coordinate outside [-t, t] (the truncation trick: less variety,
        higher fidelity); class_name picks one class of a conditional model (default: all classes in turn).
        """
        generator = torch.Generator(device="cpu")
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        z = torch.randn(n, self.z_dim, generator=generator)  # drawn on the CPU so a seed means the same on any device
        if truncation is not None:
            if truncation <= 0:
                raise PurrganError("--truncation must be positive (e.g. 0.7)")
            while (outside := z.abs() > truncation).any():
                z[outside] = torch.randn(int(outside.sum()), generator=generator)
        labels = self.labels_for(n, class_name)
        chunks = []
        for start in range(0, n, batch_size):
            chunk_labels = labels[start:start + batch_size].to(self.device) if labels is not None else None
            chunks.append(self.network(z[start:start + batch_size].to(self.device), chunk_labels).float().cpu())
        return torch.cat(chunks) if chunks else torch.empty(0)


def load_generator(path: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> TrainedGenerator:
    """Return the generator of a run folder or checkpoint file (its EMA weights when present), in eval mode."""
    state, source = checkpoint.load_latest(path)
    try:
        config = from_dict(state["config"])
        network = build_generator(config)
        weights = state.get("generator_ema") if ema and state.get("generator_ema") is not None else state["generator"]
        network.load_state_dict(weights)
    except (KeyError, RuntimeError, PurrganError) as error:
        raise PurrganError(f"{source} does not hold a generator this purrgan can build "
                           f"({checkpoint.describe_load_error(error)})") from None
    network.eval()
    classes = state.get("class_names") or [] if config.model.conditional != "none" else []
    return TrainedGenerator(network, config.model.z_dim, classes, config, int(state.get("step", 0)),
                            uses_ema=weights is state.get("generator_ema")).to(device)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Return one PIL image per image of a batch in [-1, 1] (N, C, H, W)."""
    arrays = to_uint8(images).cpu().permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    return [Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a) for a in arrays]
