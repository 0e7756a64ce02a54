"""Several processes with torchrun: one rank per device, gradients averaged by hand, rank 0 in charge of files.

G and D are not wrapped in DistributedDataParallel: one step runs D several times per backward (on
reals, on fakes, again in G's update) and R1, R2 and the gradient penalty need a double backward,
which DDP's gradient hooks do not support. Instead each rank all-reduces its flattened gradients after
backward, as StyleGAN3's training loop does (StyleGAN2-ADA wraps its networks in DDP instead). Every
rank starts from rank 0's weights and applies the same averaged gradients, so the weights stay
identical, which the checksums compared at every checkpoint verify.

Collectives that can wait long on purpose (others waiting while rank 0 prepares the data, computes
reference statistics or evaluates) go through a second, gloo group with a long timeout, so the main
group's timeout stays short enough to turn a dead peer into a clear message instead of a hang.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as torch_dist
from torch import nn

from .errors import PurrganError, ReportedElsewhere

log = logging.getLogger(__name__)
T = TypeVar("T")
TIMEOUT_S = 600  # the main group's collective timeout; $PURRGAN_DIST_TIMEOUT_S sets another
PATIENT_TIMEOUT = datetime.timedelta(hours=12)  # for waits on rank 0's long work (preparing data, evaluating)


class PeerLost(PurrganError):
    """A collective failed: another process of the run died or stopped answering."""


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    patient: Any = field(default=None, compare=False, repr=False)  # the long-timeout gloo group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _collective(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except (RuntimeError, ValueError, ConnectionError) as error:  # gloo and NCCL report a lost peer as RuntimeError
            detail = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
            detail = re.sub(r"^\[[^\]]*\]\s*", "", detail).split(". ")[0].rstrip(".")  # gloo's "[pair.cc:561] ..."
            raise PeerLost(f"rank {self.rank} lost contact with the other processes of this {self.world_size}-process run "
                           f"({detail[:160]}); the last checkpoint is kept: run the same torchrun command with "
                           f"--resume to continue") from None

    def average_gradients(self, module: nn.Module) -> None:
        """Replace every gradient of module by its mean over the ranks (one flat all-reduce per update)."""
        if not self.enabled:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])  # in each tensor's logical order, whatever its layout
        self._collective(lambda: torch_dist.all_reduce(flat))
        flat /= self.world_size
        _scatter(flat, grads)

    def broadcast_tensors(self, tensors: list[torch.Tensor]) -> None:
        """Give every rank rank 0's values of tensors: one broadcast per dtype, safe for any memory layout.

        Each tensor is flattened in its logical order and copied back element by element, so a
        channels_last tensor on one rank and an NCHW one on another still agree (broadcasting their raw
        memory would permute the values).
        """
        if not self.enabled:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for tensor in tensors:
            by_dtype.setdefault(tensor.dtype, []).append(tensor)
        for group in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1) for t in group])
            self._collective(lambda: torch_dist.broadcast(flat, 0))
            with torch.no_grad():
                _scatter(flat, group)

    def broadcast_buffers(self, *modules: nn.Module) -> None:
        """Give every rank rank 0's BatchNorm statistics, as DDP does: one coalesced call.

        Integer buffers (BatchNorm's step counter) move in step on every rank and are left out.
        """
        self.broadcast_tensors([b for m in modules for b in m.buffers() if b.is_floating_point()])

    def broadcast_modules(self, *modules: nn.Module | None) -> None:
        """Give every rank rank 0's weights and buffers (at the start: every rank then trains the same networks)."""
        self.broadcast_tensors([t for m in modules if m is not None for t in [*m.parameters(), *m.buffers()]])

    def any(self, flag: bool, device: torch.device) -> bool:
        """Return whether flag is true on any rank (every rank must call this at the same point)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        self._collective(lambda: torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX))
        return bool(value.item())

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Return values averaged over the ranks."""
        if not self.enabled:
            return values
        values = values.clone()
        self._collective(lambda: torch_dist.all_reduce(values))
        return values / self.world_size

    def gather_floats(self, value: float, device: torch.device) -> list[float]:
        """Return value from every rank, in rank order."""
        if not self.enabled:
            return [value]
        out = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(self.world_size)]
        self._collective(lambda: torch_dist.all_gather(out, torch.tensor([value], dtype=torch.float64, device=device)))
        return [float(t.item()) for t in out]

    def barrier(self) -> None:
        if self.enabled:
            self._collective(lambda: torch_dist.barrier())

    def from_main(self, value: Any = None) -> Any:
        """Return rank 0's value on every rank (any picklable object; the others pass None and wait, however long)."""
        if not self.enabled:
            return value
        box = [value if self.is_main else None]
        self._collective(lambda: torch_dist.broadcast_object_list(box, src=0, group=self.patient))
        return box[0]

    def main_first(self, work: Callable[[], T]) -> T:
        """Run work on rank 0 while the others wait, then on the others; return each rank's result.

        For work that fills a cache the others then find (a prepared data set): rank 0 does it once (two
        processes of one node preparing the same file at once would wait for each other anyway).
        """
        result = self.on_main(work)
        return result if self.is_main else work()

    def on_main(self, work: Callable[[], T], share: bool = False) -> T | None:
        """Run work on rank 0 alone while the others wait, however long, without the main group's timeout.

        Returns its result on rank 0 (on every rank with share, e.g. a checkpoint to resume from) and
        None elsewhere. If work fails on rank 0, every rank stops with its message (said once, by rank 0).
        """
        if not self.enabled:
            return work()
        result, failure = None, None
        if self.is_main:
            try:
                result = work()
            except PurrganError as error:
                failure = error
        message = self.from_main(str(failure) if failure is not None else None)
        if message is not None:
            if failure is not None:
                raise failure
            raise ReportedElsewhere(message)
        return self.from_main(result) if share else result

def _scatter(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    """Copy consecutive pieces of flat back into tensors (each in its own layout)."""
    offset = 0
    for tensor in tensors:
        count = tensor.numel()
        tensor.copy_(flat[offset:offset + count].view(tensor.shape))
        offset += count


def setup(device_setting: str) -> tuple[Distributed, str]:
    """Join the torchrun process group if this is one of several processes; return it and the device to use."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(), device_setting
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_setting != "cpu" and torch.cuda.is_available()
    if device_setting.startswith("cuda") and not torch.cuda.is_available():
        raise PurrganError("--device cuda was asked for but PyTorch sees no CUDA GPU")
    timeout = datetime.timedelta(seconds=float(os.environ.get("PURRGAN_DIST_TIMEOUT_S", TIMEOUT_S)))
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    patient = torch_dist.new_group(backend="gloo", timeout=PATIENT_TIMEOUT)
    return Distributed(rank, world_size, local_rank, patient), (f"cuda:{local_rank}" if use_cuda else "cpu")


def teardown(state: Distributed) -> None:
    if state.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def weights_checksum(*modules: nn.Module) -> float:
    """Return a float that differs when the modules' weights differ (to check that ranks stay in step)."""
    total = 0.0
    for module in modules:
        for index, tensor in enumerate(module.state_dict().values()):
            if tensor.is_floating_point():
                total += float(tensor.double().sum()) * (index + 1) + float(tensor.double().abs().sum())
    return total
