"""Batches drawn from a uint8 image tensor that lives on the training device."""

from __future__ import annotations

import torch

from ..errors import PurrganError
from . import ImageSet, to_float


class DeviceLoader:
    """Shuffled, drop-last batches from images held on `device`, in an order fixed by (seed, epoch).

    The position (epoch, batch index) is all a resume needs: the permutation of each epoch is
    recomputed from the seed, so no data order has to be stored.
    """

    def __init__(self, data: ImageSet, batch_size: int, seed: int, device: torch.device, on_device: str = "auto",
                 rank: int = 0, world_size: int = 1):
        if len(data) < batch_size:
            raise PurrganError(f"the data set has only {len(data)} images, fewer than the batch size {batch_size}; "
                               f"use --batch-size {len(data)} or fewer")
        if batch_size % world_size:
            raise PurrganError(f"the batch size {batch_size} does not split evenly over {world_size} processes")
        # Small data sets live on the training device; larger ones stream each batch from pinned memory.
        self.storage = device if _fits(data.images, device, on_device) else torch.device("cpu")
        images = data.images.to(self.storage)
        self.images = images.pin_memory() if self.storage.type == "cpu" and device.type == "cuda" else images  # (N, C, H, W) uint8
        self.labels = data.labels.to(self.storage) if data.labels is not None else None
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = len(data) // batch_size
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2 ** 63)
        return torch.randperm(self.images.shape[0], generator=generator).to(self.storage)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation(self.epoch)

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the next batch as float images in [-1, 1] (N, C, H, W) and their labels (or None)."""
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        chosen = self._order[self.index * self.batch_size:(self.index + 1) * self.batch_size]
        chosen = chosen[self.rank::self.world_size]  # this process's share of the global batch
        self.index += 1
        images = self.images[chosen].to(self.device, non_blocking=True)
        labels = self.labels[chosen].to(self.device, non_blocking=True) if self.labels is not None else None
        return to_float(images), labels


def _fits(images: torch.Tensor, device: torch.device, on_device: str) -> bool:
    if on_device in ("on", "true") or device.type == "cpu":
        return True
    if on_device in ("off", "false"):
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() < 0.3 * free  # leave the rest to the models and activations
