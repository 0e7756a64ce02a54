"""Batches of an ImageSet on the training device, in a fixed order, the next one gathered while the step runs."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

from ..errors import PurrganError
from . import ImageSet, to_float


class DeviceLoader:
    """Shuffled, drop-last batches of an ImageSet on `device`, in an order fixed by (seed, epoch).

    The position (epoch, batch index) is all a resume needs: the permutation of each epoch is
    recomputed from the seed, so no data order has to be stored. With several processes, each rank
    takes its share (rank::world_size) of every global batch.

    Where the images are read from:
    - on a GPU, a set under 30% of its free memory (data_on_device = "auto") is copied there once and
      batches are gathered on the device;
    - otherwise they stay where the ImageSet keeps them (in memory, or memory-mapped from a prepared
      file, so a set larger than memory works), and a background thread gathers the next batch while
      the step runs: on a GPU into one of two pinned staging buffers, from which it is copied
      asynchronously (the buffer is reused only once that copy has finished).
    """

    def __init__(self, data: ImageSet, batch_size: int, seed: int, device: torch.device, on_device: str = "auto",
                 rank: int = 0, world_size: int = 1, staged: bool | None = None):
        if len(data) < batch_size:
            raise PurrganError(f"the data set has only {len(data)} images, fewer than the batch size {batch_size}; "
                               f"use --batch-size {len(data)} or fewer")
        if batch_size % world_size:
            raise PurrganError(f"the batch size {batch_size} does not split evenly over {world_size} processes")
        self.data, self.batch_size, self.seed, self.device = data, batch_size, seed, device
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = len(data) // batch_size
        self.resident = device.type != "cpu" and _fits(data, device, on_device)
        if self.resident:  # (N, C, H, W) uint8 on the GPU
            self.images = data.images.to(device)
            self.labels = data.labels.to(device) if data.labels is not None else None
        self._staging: list[tuple[torch.Tensor, torch.Tensor | None, torch.cuda.Event | None]] = []
        if not self.resident and (device.type == "cuda" if staged is None else staged):  # staged: a CPU stand-in in tests
            share = batch_size // world_size
            pin = (lambda t: t.pin_memory()) if device.type == "cuda" else (lambda t: t)
            self._staging = [(pin(torch.empty((share, *data.shape), dtype=torch.uint8)),
                              pin(torch.empty(share, dtype=torch.long)) if data.labels is not None else None,
                              None) for _ in range(2)]
        self._workers: ThreadPoolExecutor | None = None
        self._ahead: tuple[tuple[int, int], Future] | None = None  # the batch being gathered in the background
        self._served = 0  # batches gathered so far: batch k goes through staging buffer k % 2
        self._orders: dict[int, torch.Tensor] = {}
        self.epoch, self.index = 0, 0

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2 ** 63)
            order = torch.randperm(len(self.data), generator=generator)
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}  # this epoch and the last
            self._orders[epoch] = order.to(self.device) if self.resident else order
        return self._orders[epoch]

    def _positions(self, epoch: int, index: int) -> torch.Tensor:
        chosen = self._order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        return chosen[self.rank::self.world_size]  # this process's share of the global batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict[str, int]) -> None:
        self._drop_ahead()
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the next batch as float images in [-1, 1] (N, C, H, W) and their labels (or None)."""
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        where = (self.epoch, self.index)
        self.index += 1
        if self.resident:
            chosen = self._positions(*where)
            images = self.images[chosen]
            labels = self.labels[chosen] if self.labels is not None else None
            return to_float(images), labels
        if self._ahead is not None and self._ahead[0] == where:
            images, labels = self._ahead[1].result()
        else:
            self._drop_ahead()
            images, labels = self._gather(*where, self._served % 2)
        if self._staging:  # pinned buffer -> GPU without blocking; the buffer is free again once the copy is done
            # (on a CPU, in the tests, .to() would hand out the buffer itself, which the gather after next reuses)
            move = (lambda t: t.clone()) if self.device.type == "cpu" else (lambda t: t.to(self.device, non_blocking=True))
            images, labels = move(images), move(labels) if labels is not None else None
            event = torch.cuda.Event() if self.device.type == "cuda" else None
            if event is not None:
                event.record()
            slot = self._served % 2
            self._staging[slot] = (*self._staging[slot][:2], event)  # recorded before the next gather may wait on it
        self._served += 1
        following = (self.epoch, self.index) if self.index < self.batches_per_epoch else (self.epoch + 1, 0)
        if self._workers is None:
            self._workers = ThreadPoolExecutor(1, thread_name_prefix="purrgan-loader")
        self._ahead = (following, self._workers.submit(self._gather, *following, self._served % 2))
        return to_float(images), labels

    def _gather(self, epoch: int, index: int, slot: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Read one batch from the ImageSet's storage (in the background thread, except for the first)."""
        chosen = self._positions(epoch, index)
        rows = chosen if self.data.index is None else self.data.index[chosen]
        if not self._staging:
            labels = self.data.labels[chosen] if self.data.labels is not None else None
            return torch.index_select(self.data.storage, 0, rows), labels
        pixels, label_buffer, copied = self._staging[slot]
        if copied is not None:
            copied.synchronize()  # the previous copy out of this buffer has finished
        torch.index_select(self.data.storage, 0, rows, out=pixels)
        if label_buffer is not None:
            torch.index_select(self.data.labels, 0, chosen, out=label_buffer)
        return pixels, label_buffer

    def _drop_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead[1].result()  # let it finish writing its staging buffer before anyone else does
            self._ahead = None


def _fits(data: ImageSet, device: torch.device, on_device: str) -> bool:
    if on_device in ("on", "true"):
        return True
    if on_device in ("off", "false"):
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return len(data) * data.shape[0] * data.shape[1] * data.shape[2] < 0.3 * free  # leave the rest to the models
