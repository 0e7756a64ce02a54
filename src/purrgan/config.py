"""Typed run configuration: frozen dataclasses built from a TOML preset plus command-line overrides."""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from .errors import PurrganError

DEFAULT_PRESET = "dcgan-digits"


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"  # "digits" (built in), a named set (`purrgan data list`) or a folder/archive path
    resolution: int = 32  # images are resized and centre-cropped to resolution x resolution
    channels: int = 1  # 1 (grayscale) or 3 (RGB)
    hflip: str = "auto"  # random horizontal flip: "auto" (on for folders, off for digits), "on", "off"
    classes: str = ""  # keep only these classes of a labelled source, comma-separated names ("" = all)
    val_fraction: float = 0.0  # images held out for evaluation (a fixed random subset); 0 = train on all


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "dcgan"
    z_dim: int = 100
    g_width: int = 64  # ngf: channels of G's last hidden layer; earlier layers use multiples
    d_width: int = 64  # ndf: channels of D's first layer
    conditional: str = "none"  # "none", "projection" (class-conditional G + projection D) or "per-class"
    num_classes: int = 0  # filled in from the data set's labels when conditional
    d_norm: str = "batch"  # dcgan's D normalisation: "batch" (the paper), "layer" or "none"
    d_spectral_norm: bool = False  # spectral norm on every layer of dcgan's D


@dataclass(frozen=True)
class LossConfig:
    name: str = "bce"  # see purrgan.losses.LOSSES
    gp_weight: float = 10.0  # lambda of the gradient penalty (losses that use one: wgan-gp)
    clip_value: float = 0.01  # weight clipping bound c (losses that clip: wgan)
    r1_gamma: float = 0.0  # R1 penalty gamma/2 * |grad D(x)|^2 on real images (0 = off)
    label_smoothing: float = 0.0  # one-sided: D's target for real images is 1 - this (bce, lsgan)


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"  # "adam" or "rmsprop" (the WGAN paper's)
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    d_steps: int = 1  # D updates per step (n_critic)
    g_steps: int = 1  # G updates per step


@dataclass(frozen=True)
class AugmentConfig:
    policy: str = ""  # DiffAugment (Zhao et al. 2020) for D's inputs, real and fake: any of color,translation,cutout
    instance_noise: float = 0.0  # std of Gaussian noise on D's inputs, annealed linearly to 0 over the run


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000  # generator updates; ignored when epochs > 0
    epochs: int = 0  # passes over the data; 0 means "use steps"
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    log_every: int = 25  # steps between metrics rows (and the only host-device syncs)
    sample_every: int = 250  # steps between fixed-noise grids
    checkpoint_every: int = 500  # steps between rewrites of checkpoints/last
    epoch_checkpoints: bool = False  # also keep one checkpoint per epoch
    num_samples: int = 64  # images in each fixed-noise grid
    deterministic: bool = False  # torch.use_deterministic_algorithms, for bit-exact resume on GPU
    ema: float = 0.0  # decay of the exponential moving average of G's weights (0 = off; 0.999 is typical)
    ema_start: int = 0  # step from which the average starts (before it, G_ema copies G)
    logger: str = "tensorboard"  # "tensorboard", "wandb", both comma-separated, or "none" (metrics.csv is always written)
    histogram_every: int = 500  # steps between weight and gradient histograms
    keep_checkpoints: int = 2  # last.safetensors plus this many - 1 older ones (last-1, ...), to fall back on
    nan_retries: int = 2  # on NaN/Inf: roll back to the last good checkpoint this many times, then stop
    nan_lr_factor: float = 0.5  # ... multiplying both learning rates by this at each roll-back (1 = unchanged)
    amp: str = "auto"  # mixed precision: "auto" (bf16 on CUDA where supported, else fp16; off on CPU), "bf16", "fp16", "off"
    channels_last: str = "auto"  # NHWC memory layout: "auto" (= on: faster with cuDNN and CPU oneDNN), "on", "off"
    data_on_device: str = "auto"  # keep the uint8 data set on the GPU: "auto" (when it fits), "on", "off" (pinned streaming)
    sync_batchnorm: bool = False  # with several GPUs: BatchNorm statistics over the global batch (CUDA only)
    compile: bool = False  # torch.compile G and D (falls back to eager with a warning where it fails)
    eval_every: int = 0  # steps between metric evaluations during training (0 = never); keeps checkpoints/best by FID
    eval_num: int = 10000  # generated images per evaluation
    eval_metrics: str = "fid"  # any of fid, kid, is, pr
    eval_split: str = "train"  # real images to compare with: train, val (data.val_fraction) or all
    feature_extractor: str = "inception"  # "inception" (the standard FID network) or "package.module:factory"
    inception_weights: str = ""  # local copy of the FID Inception weights ("" = $PURRGAN_INCEPTION, cache, download)


@dataclass(frozen=True)
class Config:
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


_SECTION_TYPES = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "optim": OptimConfig,
                  "augment": AugmentConfig, "train": TrainConfig}
_CHOICES = {
    ("data", "hflip"): ("auto", "on", "off"),
    ("data", "channels"): (1, 3),
    ("model", "conditional"): ("none", "projection", "per-class"),
    ("model", "d_norm"): ("batch", "layer", "none"),
    ("optim", "name"): ("adam", "rmsprop"),
    ("train", "eval_split"): ("train", "val", "all"),
    ("train", "amp"): ("auto", "bf16", "fp16", "off"),
    ("train", "channels_last"): ("auto", "on", "off", "true", "false"),
    ("train", "data_on_device"): ("auto", "on", "off"),
}
_POSITIVE = {
    ("data", "resolution"), ("model", "z_dim"), ("model", "g_width"), ("model", "d_width"),
    ("optim", "lr_g"), ("optim", "lr_d"), ("train", "batch_size"), ("train", "log_every"),
    ("train", "sample_every"), ("train", "checkpoint_every"), ("train", "num_samples"),
    ("optim", "d_steps"), ("optim", "g_steps"), ("loss", "clip_value"), ("train", "histogram_every"),
    ("train", "keep_checkpoints"), ("train", "nan_lr_factor"), ("train", "eval_num"),
}
_NON_NEGATIVE = {("train", "steps"), ("train", "epochs"), ("train", "seed"), ("model", "num_classes"),
                 ("loss", "gp_weight"), ("loss", "r1_gamma"), ("augment", "instance_noise"), ("train", "ema_start"),
                 ("train", "nan_retries"), ("train", "eval_every")}
_FRACTIONS = {("loss", "label_smoothing"), ("train", "ema"), ("data", "val_fraction")}  # in [0, 1)


# ---------------------------------------------------------------- presets


def preset_names() -> list[str]:
    """Return the names of the presets shipped in the package, sorted."""
    folder = resources.files("purrgan") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    """Return the TOML text of a shipped preset, or fail with the list of valid names."""
    names = preset_names()
    if name not in names:
        raise PurrganError(f"unknown preset '{name}'; choose one of: {', '.join(names)} (see `purrgan presets`)")
    return (resources.files("purrgan") / "presets" / f"{name}.toml").read_text(encoding="utf-8")


def preset_summary(name: str) -> str:
    """Return the first comment line of a preset: what it trains and where the recipe comes from."""
    for line in preset_text(name).splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


# ---------------------------------------------------------------- building and validating


def load_config(preset: str | None = None, config_file: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> Config:
    """Return the validated Config for a preset (or a TOML file) with dotted-key overrides applied."""
    if preset and config_file:
        raise PurrganError("give either --preset or --config, not both")
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise PurrganError(f"config file {path} does not exist")
        raw = parse_toml(path.read_text(encoding="utf-8"), str(path))
    else:
        name = preset or DEFAULT_PRESET
        raw = parse_toml(preset_text(name), f"preset {name}")
    config = from_dict(raw)
    for key, value in (overrides or {}).items():
        config = set_value(config, key, value)
    validate(config)
    return config


def parse_toml(text: str, origin: str) -> dict[str, Any]:
    """Return the parsed TOML, turning syntax errors into a one-line message with the line number."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise PurrganError(f"{origin} is not valid TOML: {error}") from None


def from_dict(raw: dict[str, Any]) -> Config:
    """Return a Config from nested dicts, rejecting unknown sections and keys and wrong types."""
    if not isinstance(raw, dict):
        raise PurrganError("a config must be a table of sections")
    sections: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "description":
            if not isinstance(value, str):
                raise PurrganError("'description' must be a string")
            sections[name] = value
            continue
        if name not in _SECTION_TYPES:
            raise PurrganError(f"unknown config section '{name}'; valid sections: {', '.join(_SECTION_TYPES)}")
        if not isinstance(value, dict):
            raise PurrganError(f"config section '{name}' must be a table like [{name}]")
        cls = _SECTION_TYPES[name]
        kwargs = {key: _coerce(name, key, item, cls) for key, item in value.items()}
        sections[name] = cls(**kwargs)
    return Config(**sections)


def set_value(config: Config, dotted: str, value: Any) -> Config:
    """Return a copy of config with section.key set to value (a string from the CLI is parsed)."""
    section, _, key = dotted.partition(".")
    if section not in _SECTION_TYPES or not key:
        raise PurrganError(f"bad key '{dotted}'; use section.key with a section among: {', '.join(_SECTION_TYPES)}")
    cls = _SECTION_TYPES[section]
    coerced = _coerce(section, key, value, cls)
    return replace(config, **{section: replace(getattr(config, section), **{key: coerced})})


def _field_type(cls: type, key: str) -> type:
    hints = typing.get_type_hints(cls)
    return hints[key]


def _coerce(section: str, key: str, value: Any, cls: type) -> Any:
    valid = [f.name for f in fields(cls)]
    if key not in valid:
        raise PurrganError(f"unknown key '{section}.{key}'; valid keys in [{section}]: {', '.join(valid)}")
    kind = _field_type(cls, key)
    if isinstance(value, str) and kind is not str:
        value = _parse_scalar(section, key, value, kind)
    ok = (
        (kind is bool and isinstance(value, bool))
        or (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (kind is str and isinstance(value, str))
    )
    if not ok:
        raise PurrganError(f"'{section}.{key}' must be {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def _parse_scalar(section: str, key: str, text: str, kind: type) -> Any:
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError
        return kind(text)
    except ValueError:
        raise PurrganError(f"'{section}.{key}' must be {kind.__name__}, got '{text}'") from None


def validate(config: Config) -> None:
    """Raise PurrganError naming the first value that is out of its allowed range."""
    from .losses import LOSSES
    from .models import ARCHITECTURES

    for (section, key), allowed in _CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in allowed:
            raise PurrganError(f"'{section}.{key}' is {value!r}; allowed values: {', '.join(map(str, allowed))}")
    for section, key in _POSITIVE:
        if getattr(getattr(config, section), key) <= 0:
            raise PurrganError(f"'{section}.{key}' must be positive")
    for section, key in _NON_NEGATIVE:
        if getattr(getattr(config, section), key) < 0:
            raise PurrganError(f"'{section}.{key}' must be zero or more")
    for section, key in _FRACTIONS:
        if not 0 <= getattr(getattr(config, section), key) < 1:
            raise PurrganError(f"'{section}.{key}' must be at least 0 and below 1")
    if config.train.steps == 0 and config.train.epochs == 0:
        raise PurrganError("set train.steps or train.epochs to a positive number")
    if config.model.arch not in ARCHITECTURES:
        raise PurrganError(f"unknown model.arch '{config.model.arch}'; choose one of: {', '.join(ARCHITECTURES)}")
    ARCHITECTURES[config.model.arch].check(config)
    if config.loss.name not in LOSSES:
        raise PurrganError(f"unknown loss.name '{config.loss.name}'; choose one of: {', '.join(LOSSES)}")
    if LOSSES[config.loss.name].gradient_penalty and discriminator_has_batchnorm(config):
        raise PurrganError(f"loss '{config.loss.name}' uses a gradient penalty, which BatchNorm in the critic breaks; "
                           f"set model.d_norm = \"layer\" or \"none\" (or use an architecture without BatchNorm in D)")
    from .augment import check_policy
    from .loggers import parse_loggers
    check_policy(config.augment.policy)
    parse_loggers(config.train.logger)
    if config.train.eval_every:
        from .metrics import parse_metrics
        parse_metrics(config.train.eval_metrics)
    device = config.train.device
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise PurrganError(f"'train.device' is '{device}'; allowed values: auto, cpu, cuda, cuda:N")


def discriminator_has_batchnorm(config: Config) -> bool:
    """Return whether config's discriminator contains BatchNorm (built at a tiny width to find out)."""
    from torch import nn

    from .models import build_discriminator

    probe = replace(config, model=replace(config.model, d_width=2, num_classes=max(config.model.num_classes, 2)))
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in build_discriminator(probe).modules())


# ---------------------------------------------------------------- saving


def to_toml(config: Config) -> str:
    """Return TOML text that from_dict turns back into an equal Config."""
    lines = [f"description = {_toml_value(config.description)}"]
    for name in _SECTION_TYPES:
        section = getattr(config, name)
        lines.append(f"\n[{name}]")
        for f in fields(section):
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
    return "\n".join(lines) + "\n"


def to_dict(config: Config) -> dict[str, Any]:
    """Return the config as plain nested dicts (for JSON metadata)."""
    return dataclasses.asdict(config)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
