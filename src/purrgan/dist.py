"""Several processes with torchrun: one rank per device, gradients averaged by hand.

G and D are not wrapped in DistributedDataParallel: D runs several forwards per backward (real, fake,
G's step) and the gradient penalty needs a double backward, which DDP's hooks do not allow. Instead each
rank all-reduces its flattened gradients after backward (as StyleGAN2-ADA does); with identical initial
weights and identical averaged gradients, every rank's weights stay identical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from .errors import PurrganError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def average_gradients(self, module: nn.Module) -> None:
        """Replace every gradient of module by its mean over the ranks (one flat all-reduce)."""
        if not self.enabled:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = _flatten_dense_tensors(grads)
        torch_dist.all_reduce(flat)
        flat /= self.world_size
        for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(synced)

    def broadcast_buffers(self, *modules: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics), as DDP does by default."""
        if not self.enabled:
            return
        for module in modules:
            for buffer in module.buffers():
                torch_dist.broadcast(buffer, 0)

    def any(self, flag: bool, device: torch.device) -> bool:
        """Return whether flag is true on any rank (every rank must call this at the same point)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
        return bool(value.item())

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Return values averaged over the ranks."""
        if not self.enabled:
            return values
        values = values.clone()
        torch_dist.all_reduce(values)
        return values / self.world_size

    def gather_floats(self, value: float, device: torch.device) -> list[float]:
        """Return value from every rank, in rank order."""
        if not self.enabled:
            return [value]
        out = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(self.world_size)]
        torch_dist.all_gather(out, torch.tensor([value], dtype=torch.float64, device=device))
        return [float(t.item()) for t in out]

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()


def setup(device_setting: str) -> tuple[Distributed, str]:
    """Join the torchrun process group if this is one of several processes; return it and the device to use."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(), device_setting
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_setting != "cpu" and torch.cuda.is_available()
    if device_setting.startswith("cuda") and not torch.cuda.is_available():
        raise PurrganError("--device cuda was asked for but PyTorch sees no CUDA GPU")
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    return Distributed(rank, world_size, local_rank), (f"cuda:{local_rank}" if use_cuda else "cpu")


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
