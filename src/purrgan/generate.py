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
    """A trained generator: forward(z) gives images in [-1, 1]; sample(n) draws them from fresh noise."""

    def __init__(self, network: nn.Module, z_dim: int, config=None, step: int = 0):
        super().__init__()
        self.network, self.z_dim, self.config, self.step = network, z_dim, config, step

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.network(z, labels)

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None, batch_size: int = 1024) -> torch.Tensor:
        """Return n images (n, C, H, W) in [-1, 1]; the same seed always gives the same images."""
        generator = torch.Generator(device="cpu")
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        z = torch.randn(n, self.z_dim, generator=generator)  # drawn on the CPU so a seed means the same on any device
        chunks = [self.network(chunk.to(self.device)) for chunk in z.split(batch_size)]
        return torch.cat(chunks).float().cpu() if chunks else torch.empty(0)


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> TrainedGenerator:
    """Return the generator of a run folder or checkpoint file, in eval mode, on device."""
    state, source = checkpoint.load_latest(path)
    try:
        config = from_dict(state["config"])
        network = build_generator(config)
        network.load_state_dict(state["generator"])
    except (KeyError, RuntimeError) as error:
        raise PurrganError(f"{source} does not hold a generator this purrgan can build ({str(error).splitlines()[0]})") from None
    network.eval()
    return TrainedGenerator(network, config.model.z_dim, config, int(state.get("step", 0))).to(device)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Return one PIL image per image of a batch in [-1, 1] (N, C, H, W)."""
    arrays = to_uint8(images).cpu().permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    return [Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a) for a in arrays]
