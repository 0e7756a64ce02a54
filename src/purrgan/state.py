"""TrainState: everything a run is at one step, built from a config; its state_dict() is what a checkpoint holds.

One state_dict()/load_state_dict() pair serves the periodic checkpoint, --resume, the NaN roll-back
and checkpoints/best, so what a checkpoint contains is written down once, here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .augment import Augment, build_augment, check_policy, random_hflip
from .config import Config, active_loggers, from_dict, to_dict
from .data import ImageSet
from .data.loader import DeviceLoader
from .device import amp_dtype, autocast, maybe_compile, memory_format
from .dist import Distributed
from .ema import make_ema
from .errors import PurrganError
from .losses import LOSSES, Loss, declared_by
from .models import ARCHITECTURES, build_discriminator, build_generator

log = logging.getLogger(__name__)
SEED_MODULUS = 2 ** 63  # derived seeds wrap here, so any seed the config allows gives a valid generator seed


def derived_seed(seed: int, offset: int) -> int:
    """Return seed + offset folded into the range torch.Generator.manual_seed accepts."""
    return (seed + offset) % SEED_MODULUS


def check_config(config: Config) -> None:
    """Raise PurrganError when a registry rejects config: architecture, loss, augmentation, metrics, device."""
    if config.model.arch not in ARCHITECTURES:
        raise PurrganError(f"unknown model.arch '{config.model.arch}'; choose one of: {', '.join(ARCHITECTURES)}")
    ARCHITECTURES[config.model.arch].check(config)
    if config.loss.name not in LOSSES:
        raise PurrganError(f"unknown loss.name '{config.loss.name}'; choose one of: {', '.join(LOSSES)}")
    probe = replace(config, model=replace(config.model, num_classes=max(config.model.num_classes, 2)))
    discriminator = build_discriminator(probe)
    LOSSES[config.loss.name].check(config, discriminator)
    if config.optim.d_update == "split":
        check_split_updates(config, LOSSES[config.loss.name], discriminator)
    if config.optim.name == "rmsprop" and config.optim.implementation == "fused":
        raise PurrganError("PyTorch has no fused RMSprop; use optim.implementation = \"foreach\" or \"auto\" with rmsprop")
    check_policy(config.augment.policy)
    if config.train.eval_every:
        from .metrics import parse_metrics
        parse_metrics(config.train.eval_metrics)
    active_loggers(config)


def micro_batches(config: Config, world_size: int) -> int:
    """Return the forward passes per update on each device: its share of the batch over train.batch_per_device."""
    share = config.train.batch_size // world_size
    if config.train.batch_size % world_size:
        raise PurrganError(f"the batch size {config.train.batch_size} does not split evenly over {world_size} processes; "
                           f"choose a multiple of {world_size}")
    per_device = config.train.batch_per_device or share
    if share % per_device:
        raise PurrganError(f"each of {world_size} process(es) takes {share} images of the batch of "
                           f"{config.train.batch_size}, which train.batch_per_device = {per_device} does not divide; "
                           f"choose a batch size that is a multiple of {world_size * per_device}")
    if share // per_device > 1 and config.optim.d_update == "split":
        raise PurrganError("optim.d_update = \"split\" updates D on half batches and cannot accumulate gradients: "
                           "leave train.batch_per_device at 0 (its default)")
    return share // per_device


def check_split_updates(config: Config, loss: Loss, discriminator: nn.Module) -> None:
    """Raise PurrganError unless D's loss (and every penalty discriminator declares) can be taken on reals and fakes
    apart, as optim.d_update = "split" does."""
    what = "optim.d_update = \"split\" (separate D updates on reals and on fakes)"
    if loss.half is None:
        separable = ", ".join(name for name, candidate in LOSSES.items() if candidate.half is not None)
        raise PurrganError(f"{what} needs a loss with separate real and fake terms; loss.name '{config.loss.name}' "
                           f"has none: use one of {separable}, or optim.d_update = \"joint\"")
    if penalties := loss.d_penalties(config.loss) + [r for r in declared_by(discriminator) if r.active]:
        raise PurrganError(f"{what} cannot carry D's {', '.join(r.name for r in penalties)}, which needs the joint "
                           f"update: set optim.d_update = \"joint\" or switch the penalty off")
    if config.train.batch_size < 2:
        raise PurrganError(f"{what} halves each batch: train.batch_size must be at least 2")


def make_optimizer(config: Config, parameters, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Return the configured optimiser: Adam with (beta1, beta2), or RMSprop as in the WGAN paper.

    optim.implementation picks the kernels: "auto" is fused on CUDA (one kernel for every tensor) and
    PyTorch's own choice elsewhere.
    """
    kernels = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}.get(
        config.optim.implementation, {})
    if config.optim.name == "rmsprop":  # PyTorch has no fused RMSprop (check_config refuses "fused" for it)
        return torch.optim.RMSprop(parameters, lr=lr, **kernels)
    if config.optim.implementation == "auto" and device.type == "cuda":
        kernels = {"fused": True}
    return torch.optim.Adam(parameters, lr=lr, betas=(config.optim.beta1, config.optim.beta2), **kernels)


def match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Put every optimiser state tensor in its parameter's memory layout.

    Optimizer.load_state_dict restores dtype and device but not strides, and checkpoints hold
    contiguous tensors: after a resume or a roll-back, channels_last weights would get NCHW moments.
    Fused Adam refuses that on CUDA (PyTorch issue 106951) and silently mixes the elements up on a CPU.
    """
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            slots = optimizer.state.get(parameter, {})
            for key, value in slots.items():
                if torch.is_tensor(value) and value.shape == parameter.shape and value.stride() != parameter.stride():
                    slots[key] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)


@dataclass
class TrainState:
    """The networks, optimisers, scalers, random generator, data position, step and whatever a loss or augmentation owns.

    G and D are what the step calls (compiled when asked); generator and discriminator are the raw
    modules whose weights are saved.
    """
    config: Config
    class_names: list[str]
    generator: nn.Module
    discriminator: nn.Module
    generator_ema: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler_g: torch.amp.GradScaler
    scaler_d: torch.amp.GradScaler
    rng: torch.Generator  # latents, flips, augmentation and penalties
    loader: DeviceLoader
    augment: Augment
    loss: Loss
    device: torch.device
    dist: Distributed
    total_steps: int
    flip: bool  # random horizontal flips of real images (decided by the data)
    micro_batches: int = 1  # forward passes per update on this device (gradient accumulation)
    precision: torch.dtype | None = None  # autocast dtype, None for float32
    layout: torch.memory_format = torch.contiguous_format
    G: nn.Module | None = None
    D: nn.Module | None = None
    step: int = 0
    best_fid: float | None = None
    extra: dict = field(default_factory=dict)  # anything else a later feature wants saved (JSON-able or tensors)

    @classmethod
    def create(cls, config: Config, data: ImageSet, device: torch.device, dist: Distributed) -> "TrainState":
        """Return a fresh state for config on data: initial weights from the seed, the same on every rank."""
        torch.manual_seed(config.train.seed)
        generator, discriminator = build_generator(config).to(device), build_discriminator(config).to(device)
        if dist.enabled and config.train.sync_batchnorm:
            if device.type != "cuda":
                raise PurrganError("train.sync_batchnorm needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only)")
            generator = nn.SyncBatchNorm.convert_sync_batchnorm(generator)
            discriminator = nn.SyncBatchNorm.convert_sync_batchnorm(discriminator)
        layout = memory_format(config.train.channels_last)
        generator, discriminator = generator.to(memory_format=layout), discriminator.to(memory_format=layout)
        generator_ema = make_ema(generator) if config.train.ema > 0 else None  # a copy in G's layout: one lerp per step
        dist.broadcast_modules(generator, discriminator, generator_ema)  # every rank starts from rank 0's weights
        precision = amp_dtype(config.train.amp, device)
        loader = DeviceLoader(data, config.train.batch_size, config.train.seed, device, config.train.data_on_device,
                              dist.rank, dist.world_size)  # each rank draws its share of every global batch
        total = config.train.steps if config.train.epochs == 0 else config.train.epochs * loader.batches_per_epoch
        state = cls(
            config=config, class_names=list(data.class_names), generator=generator, discriminator=discriminator,
            generator_ema=generator_ema,
            opt_g=make_optimizer(config, generator.parameters(), config.optim.lr_g, device),
            opt_d=make_optimizer(config, discriminator.parameters(), config.optim.lr_d, device),
            scaler_g=torch.amp.GradScaler(device.type, enabled=precision == torch.float16),  # fp16 needs loss scaling
            scaler_d=torch.amp.GradScaler(device.type, enabled=precision == torch.float16),
            rng=torch.Generator(device=device).manual_seed(derived_seed(config.train.seed, 1_000_003 * dist.rank)),
            loader=loader, augment=build_augment(config.augment).to(device), loss=LOSSES[config.loss.name],
            device=device, dist=dist, total_steps=total, flip=config.data.hflip == "on",
            precision=precision, layout=layout, micro_batches=micro_batches(config, dist.world_size))
        state.G = maybe_compile(generator, config.train.compile)  # compiled by the first step (train.warm_up_compiled)
        # A compiled module cannot be differentiated twice, which R1, R2 and the gradient penalty need: D stays eager.
        penalised = any(r.penalty is not None and r.weight > 0 for r in state.loss.regularisers(config.loss))
        if config.train.compile and penalised:
            log.info("compiling G only: D's gradient penalties need a double backward, which compiled code lacks")
        state.D = maybe_compile(discriminator, config.train.compile and not penalised)
        return state

    @property
    def compiled(self) -> bool:
        return self.G is not self.generator or self.D is not self.discriminator

    def snapshot(self) -> dict:
        """Return a copy of state_dict() that later steps cannot change (state_dict() shares the live tensors)."""
        return _copied(self.state_dict())

    # ---------------------------------------------------------------- what the step draws

    def real_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the next real batch (B, C, H, W) in [-1, 1], flipped where the data allows, and its labels."""
        real, labels = self.loader.next()
        if self.flip:
            real = random_hflip(real, self.rng)
        return real.contiguous(memory_format=self.layout), labels

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.config.model.z_dim, device=self.device, generator=self.rng)

    def autocast(self):
        return autocast(self.device, self.precision)

    @property
    def sampler(self) -> nn.Module:
        """The generator to draw pictures with: G_ema when the run keeps one."""
        return self.generator_ema if self.generator_ema is not None else self.generator

    @property
    def learning_rates(self) -> list[float]:
        return [group["lr"] for group in self.opt_g.param_groups + self.opt_d.param_groups]

    def scale_learning_rates(self, rates: list[float], factor: float) -> None:
        for group, lr in zip(self.opt_g.param_groups + self.opt_d.param_groups, rates):
            group["lr"] = lr * factor

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        """Return everything a resume needs, as tensors and plain values (no pickles)."""
        device = self.device
        return {
            "step": self.step, "config": to_dict(self.config), "class_names": self.class_names,
            "loader": self.loader.state(),
            "generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
            "generator_ema": self.generator_ema.state_dict() if self.generator_ema is not None else None,
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
            "rng": {"train": self.rng.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "augment": self.augment.state_dict(), "best_fid": self.best_fid, "extra": self.extra,
        }

    def load_state_dict(self, state: dict, source: Path | str = "checkpoint") -> None:
        """Continue from state (a checkpoint of this run, including one written by purrgan 0.1)."""
        check_compatible(state, self.config, source)
        try:
            self.generator.load_state_dict(state["generator"])
            self.discriminator.load_state_dict(state["discriminator"])
            if self.generator_ema is not None:
                self.generator_ema.load_state_dict(state.get("generator_ema") or state["generator"])
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
            match_layouts(self.opt_g)
            match_layouts(self.opt_d)
            self.loader.load_state(state["loader"])
            self.rng.set_state(state["rng"]["train"])
            torch.set_rng_state(state["rng"]["torch"])
            if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
            if state.get("scaler_g"):
                self.scaler_g.load_state_dict(state["scaler_g"])
                self.scaler_d.load_state_dict(state["scaler_d"])
            self.augment.load_state_dict(state.get("augment") or {})
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as error:
            from .checkpoint import describe_load_error

            raise PurrganError(f"{source} does not match this run's model ({describe_load_error(error)}); "
                               f"resume with the run's own config.toml or start a new run") from None
        self.step, self.best_fid = int(state["step"]), state.get("best_fid")
        self.extra = dict(state.get("extra") or {})
        if self.dist.rank > 0:  # the checkpoint holds rank 0's draws; the others continue from their own seeds
            self.rng.manual_seed(derived_seed(self.config.train.seed, 1_000_003 * self.dist.rank + self.step))


def _copied(value):
    if torch.is_tensor(value):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(item) for item in value)
    return value


def check_compatible(state: dict, config: Config, source: Path | str) -> None:
    """Raise PurrganError when a checkpoint's networks cannot be the ones config builds."""
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict) or not isinstance(state.get("step"), int):
        raise PurrganError(f"{source} is not a training checkpoint (no step and config in it)")
    saved = from_dict(state["config"])
    for section, key in (("model", "arch"), ("data", "resolution"), ("data", "channels"), ("model", "z_dim"),
                         ("model", "g_width"), ("model", "d_width"), ("model", "conditional"), ("model", "num_classes"),
                         ("model", "options"), ("optim", "name")):
        old, new = getattr(getattr(saved, section), key), getattr(getattr(config, section), key)
        if old != new:
            raise PurrganError(f"{source} was trained with {section}.{key} = {old}, but this run asks for {new}; "
                               f"resume with the same value or start a new run with another --out")
