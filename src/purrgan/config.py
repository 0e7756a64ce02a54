"""Typed run configuration: frozen dataclasses built from a TOML preset plus command-line overrides.

This module knows the shape and the ranges of every value, and nothing about models or losses: the
registries check their own names and requirements (`purrgan.state.check_config`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from .errors import PurrganError

DEFAULT_PRESET = "dcgan-digits"
Names = tuple[str, ...]  # a TOML array of strings; the old comma-separated string still reads
OptionValue = typing.Union[bool, int, float, str]


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"  # a named set (`purrgan data list`; "digits" is built in) or a folder/archive/prepared path
    resolution: int = 32  # images are resized and centre-cropped to resolution x resolution
    channels: Literal[1, 3] = 1  # 1 (grayscale) or 3 (RGB)
    hflip: Literal["auto", "on", "off"] = "auto"  # random horizontal flip; "auto" follows the data (off for digits/text)
    classes: Names = ()  # keep only these classes of a labelled source (empty = all)
    val_fraction: float = 0.0  # images held out for evaluation (a fixed random subset); 0 = train on all


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "dcgan"  # see `purrgan.models.ARCHITECTURES`
    z_dim: int = 100
    g_width: int = 64  # ngf: channels of G's last hidden layer; earlier layers use multiples
    d_width: int = 64  # ndf: channels of D's first layer
    conditional: Literal["none", "projection", "per-class"] = "none"
    num_classes: int = 0  # filled in from the data set's labels when conditional
    d_norm: Literal["batch", "layer", "none"] = "batch"  # dcgan's D normalisation ("layer"/"none" for a gradient penalty)
    d_spectral_norm: bool = False  # spectral norm on every layer of dcgan's D
    options: dict[str, OptionValue] = field(default_factory=dict)  # architecture-specific, checked by the architecture


@dataclass(frozen=True)
class LossConfig:
    name: str = "bce"  # see `purrgan.losses.LOSSES`
    gp_weight: float = 10.0  # lambda of the gradient penalty (losses that declare one: wgan-gp)
    clip_value: float = 0.01  # weight clipping bound c (losses that clip: wgan)
    r1_gamma: float = 0.0  # R1: gamma/2 * |grad D(x)|^2 on real images (0 = off unless the loss declares it)
    r2_gamma: float = 0.0  # R2: gamma/2 * |grad D(G(z))|^2 on generated images (0 = off)
    reg_every: int = 1  # lazy regularisation: penalties every k D steps, weighted by k (StyleGAN2 uses 16)
    label_smoothing: float = 0.0  # one-sided: D's target for real images is 1 - this (bce, lsgan)


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adam", "rmsprop"] = "adam"  # rmsprop: the WGAN paper's
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    d_steps: int = 1  # D updates per step (n_critic)
    g_steps: int = 1  # G updates per step
    implementation: Literal["auto", "fused", "foreach", "loop"] = "auto"  # the optimiser's kernels; "auto": fused on CUDA
    d_update: Literal["joint", "split"] = "joint"  # "split": as the Keras tutorial, D steps on half a batch of reals, then on half a batch of fakes


@dataclass(frozen=True)
class AugmentConfig:
    policy: Names = ()  # DiffAugment (Zhao et al. 2020) on everything D sees: any of color, translation, cutout
    instance_noise: float = 0.0  # std of Gaussian noise on D's inputs, annealed linearly to 0 over the run
    adaptive: bool = False  # ADA (Karras et al. 2020): apply each policy operation with a probability p tuned to D's overfitting
    ada_target: float = 0.6  # the overfitting level r_t = E[sign(D(x))] that p steers towards
    ada_kimg: float = 100.0  # thousands of images over which p could go from 0 to 1 (StyleGAN2-ADA: 500)
    ada_interval: int = 4  # D updates between adjustments of p
    small_data: Literal["auto", "on", "off"] = "auto"  # your own set under 2,000 images: DiffAugment on (if none), batch <= set

    @property
    def varies_inputs(self) -> bool:
        """Whether anything augments what D sees (a DiffAugment policy, or ADA, which uses every operation by default)."""
        return bool(self.policy or self.adaptive)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000  # generator updates; ignored when epochs > 0
    epochs: int = 0  # passes over the data; 0 means "use steps"
    max_minutes: float = 0.0  # stop (with a checkpoint, resumable) after this much training time in one session; 0 = no limit
    batch_size: int = 128  # images per step, over all processes
    batch_per_device: int = 0  # images per forward pass on one device; less than its share adds gradient accumulation (0 = its share)
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    log_every: int = 25  # steps between metrics rows (and the only host-device syncs)
    sample_every: int = 250  # steps between fixed-noise grids
    sample_seconds: float = 60.0  # ... and at most this many seconds of training between them (0 = steps only)
    checkpoint_every: int = 500  # steps between rewrites of checkpoints/last
    epoch_checkpoints: bool = False  # also keep the generator of every epoch (checkpoints/epoch-NNNN.safetensors)
    num_samples: int = 64  # images in each fixed-noise grid
    deterministic: bool = False  # torch.use_deterministic_algorithms, for bit-exact resume on GPU
    ema: float = 0.0  # decay of the exponential moving average of G's weights (0 = off; 0.999 is typical)
    ema_start: int = 0  # step from which the average starts (before it, G_ema copies G)
    ema_rampup: float = 0.05  # the average's half-life is at most this fraction of the steps so far (StyleGAN2's ramp-up; 0 = off)
    logger: Names = ("tensorboard",)  # any of tensorboard, wandb; or none (metrics.csv is always written)
    histogram_every: int = 500  # steps between weight and gradient histograms
    keep_checkpoints: int = 2  # last.safetensors plus this many - 1 older ones (last-1, ...), to fall back on
    nan_retries: int = 2  # on NaN/Inf: roll back to the last good checkpoint this many times, then stop
    nan_lr_factor: float = 0.5  # ... multiplying both learning rates by this at each roll-back (1 = unchanged)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # mixed precision; "auto": bf16/fp16 on CUDA, measured on a CPU
    channels_last: Literal["auto", "on", "off", "true", "false"] = "auto"  # NHWC layout ("auto" = on)
    data_on_device: Literal["auto", "on", "off"] = "auto"  # keep the uint8 data set on the GPU ("off": pinned streaming)
    sync_batchnorm: bool = False  # with several GPUs: BatchNorm statistics over the global batch (CUDA only)
    compile: bool = False  # torch.compile G and D (falls back to eager with a warning where it fails)
    eval_every: int = 0  # steps between metric evaluations during training (0 = never); keeps checkpoints/best by FID
    eval_num: int = 10000  # generated images per evaluation
    eval_metrics: Names = ("fid",)  # any of fid, kid, is, pr
    eval_split: Literal["train", "val", "all"] = "train"  # real images to compare with
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
_POSITIVE = {
    ("data", "resolution"), ("model", "z_dim"), ("model", "g_width"), ("model", "d_width"),
    ("optim", "lr_g"), ("optim", "lr_d"), ("train", "batch_size"), ("train", "log_every"),
    ("train", "sample_every"), ("train", "checkpoint_every"), ("train", "num_samples"),
    ("optim", "d_steps"), ("optim", "g_steps"), ("loss", "clip_value"), ("train", "histogram_every"),
    ("train", "keep_checkpoints"), ("train", "nan_lr_factor"), ("train", "eval_num"), ("loss", "reg_every"),
    ("augment", "ada_kimg"), ("augment", "ada_interval"),
}
_NON_NEGATIVE = {("train", "steps"), ("train", "epochs"), ("train", "batch_per_device"), ("train", "seed"), ("model", "num_classes"),
                 ("loss", "gp_weight"), ("loss", "r1_gamma"), ("loss", "r2_gamma"), ("augment", "instance_noise"),
                 ("train", "ema_start"), ("train", "nan_retries"), ("train", "eval_every"), ("train", "max_minutes"),
                 ("train", "sample_seconds")}
_FRACTIONS = {("loss", "label_smoothing"), ("train", "ema"), ("train", "ema_rampup"), ("data", "val_fraction"), ("optim", "beta1"),
              ("optim", "beta2"), ("augment", "ada_target")}  # in [0, 1)
_LIMITS = {  # upper bounds that keep values meaningful (and inside what torch accepts)
    ("train", "seed"): 2 ** 63 - 1,  # torch's generators take 64-bit seeds; derived seeds wrap modulo 2^63
    ("data", "resolution"): 1024, ("model", "z_dim"): 65536, ("model", "g_width"): 4096, ("model", "d_width"): 4096,
    ("train", "batch_size"): 1 << 20, ("train", "num_samples"): 1024, ("optim", "d_steps"): 100, ("optim", "g_steps"): 100,
    ("train", "steps"): 10 ** 9, ("train", "epochs"): 10 ** 6, ("train", "keep_checkpoints"): 1000,
}
_LOGGERS = ("tensorboard", "wandb", "none")
SMALL_DATA = 2000  # fewer training images than this is a small set: D memorises it unless its inputs vary


# ---------------------------------------------------------------- presets

# What `purrgan presets` recommends, per use and kind of device: (use, preset, why). The CPU choice
# is measured by benchmarks/quality.py at equal training time (README, "Results on real data").
RECOMMENDED: tuple[tuple[str, str, str], ...] = (
    ("cat faces on a CPU", "best-cats64", "measured: 0.22-0.64x the yardstick distance of dcgan-cats64 after 20 CPU-minutes, mean 0.44x over four runs"),
    ("CIFAR-10 on a CPU", "dcgan-cifar10", "measured: 1,394 steps in 10 CPU-minutes; linDCGAN 1.14x its yardstick distance, perclass-cifar10 0.81x but ten models"),
    ("CIFAR-10 by class on a CPU", "cdcgan-cifar10", "measured: 0.91x dcgan-cifar10's yardstick distance after 10 CPU-minutes, one model for every class"),
    ("CIFAR-10 dogs on a CPU", "dcgan-cifar-dog", "measured: 0.15x the Keras-tutorial GAN's yardstick distance after 10 CPU-minutes"),
    ("your own small folder (100-2,000 pictures) on a CPU", "best-cats64", "measured: with the DiffAugment a small folder gets, 0.18x fastgan-folder's yardstick distance on 100 cat faces after 15 CPU-minutes, two seeds, not copying"),
    ("cat faces on a GPU", "r3gan-cats64-gpu", "the R3GAN paper's recipe; not yet measured by this project on a GPU"),
    ("CIFAR-10 on a GPU", "r3gan-cifar10-gpu", "the R3GAN paper's recipe; not yet measured by this project on a GPU"),
    ("your own small folder at 256x256 on a GPU", "fastgan-folder-gpu", "the FastGAN paper's recipe; not yet measured by this project on a GPU (on a CPU at 64x64 it lost to best-cats64)"),
)


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
    """Return the validated Config for a preset (or a TOML file) with dotted-key overrides applied, completed by
    what its data decides (complete()): `purrgan train` and purrgan.train() both build their run here.

    Names that registries own (model.arch, loss.name) are checked by `purrgan.state.check_config`.
    """
    if preset and config_file:
        raise PurrganError("give either --preset or --config, not both")
    if config_file:
        raw = parse_toml(read_text(Path(config_file), "config file"), str(config_file))
    else:
        name = preset or DEFAULT_PRESET
        raw = parse_toml(preset_text(name), f"preset {name}")
    config = from_dict(raw)
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        config = set_value(config, key, value)
    config = complete(config, set(overrides), default_preset=not preset and not config_file)
    validate(config)
    return config


def complete(config: Config, overridden: set[str], default_preset: bool) -> Config:
    """Return config completed by the choices its overrides imply.

    - A data source given to the default preset (32x32 gray digits) keeps its own size and colour,
      and a prepared file always does (it holds one size), unless data.resolution or data.channels
      is set too; the run is then described by its real data.
    - train.steps given without train.epochs wins over a preset's epochs.
    """
    if "train.steps" in overridden and "train.epochs" not in overridden:
        config = replace(config, train=replace(config.train, epochs=0))
    if "data.source" not in overridden:
        return config
    from .data.prepare import is_prepared_file
    from .data.sources import native_shape, parse_source

    spec = parse_source(config.data.source)
    if default_preset or (spec.path is not None and is_prepared_file(spec.path)):
        resolution, channels, _ = native_shape(spec)
        config = replace(config, data=replace(
            config.data, resolution=config.data.resolution if "data.resolution" in overridden else resolution,
            channels=config.data.channels if "data.channels" in overridden else channels))
    return config if "description" in overridden else replace(config, description="")


def read_text(path: Path, what: str) -> str:
    """Return a UTF-8 text file's contents, failing with one line when it is missing or not UTF-8."""
    if not path.is_file():
        raise PurrganError(f"{what} {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise PurrganError(f"{what} {path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except OSError as error:
        raise PurrganError(f"cannot read {what} {path}: {error.strerror or error}") from None


def parse_toml(text: str, origin: str) -> dict[str, Any]:
    """Return the parsed TOML, turning syntax errors into a one-line message with the line number."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise PurrganError(f"{origin} is not valid TOML: {str(error).splitlines()[0]}") from None
    except RecursionError:
        raise PurrganError(f"{origin} is nested too deeply to be a config") from None


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
    """Return a copy of config with section.key set to value (a string from the CLI is parsed).

    `model.options.NAME=VALUE` sets one architecture option.
    """
    if dotted == "description":
        if not isinstance(value, str):
            raise PurrganError("'description' must be a string")
        return replace(config, description=value)
    section, _, key = dotted.partition(".")
    if section not in _SECTION_TYPES or not key:
        raise PurrganError(f"bad key '{dotted}'; use section.key with a section among: {', '.join(_SECTION_TYPES)}")
    if section == "model" and key.startswith("options."):
        name = key.removeprefix("options.")
        options = {**config.model.options, name: _parse_option(value) if isinstance(value, str) else value}
        return replace(config, model=replace(config.model, options=_coerce("model", "options", options, ModelConfig)))
    cls = _SECTION_TYPES[section]
    coerced = _coerce(section, key, value, cls)
    return replace(config, **{section: replace(getattr(config, section), **{key: coerced})})


def _field_type(cls: type, key: str) -> Any:
    return typing.get_type_hints(cls)[key]


def _coerce(section: str, key: str, value: Any, cls: type) -> Any:
    valid = [f.name for f in fields(cls)]
    if key not in valid:
        raise PurrganError(f"unknown key '{section}.{key}'; valid keys in [{section}]: {', '.join(valid)}")
    kind = _field_type(cls, key)
    name = f"'{section}.{key}'"
    if typing.get_origin(kind) is Literal:
        allowed = typing.get_args(kind)
        if isinstance(value, str) and all(isinstance(a, int) for a in allowed):
            value = _parse_scalar(section, key, value, int)
        if isinstance(value, bool) or value not in allowed:
            raise PurrganError(f"{name} is {value!r}; allowed values: {', '.join(map(str, allowed))}")
        return value
    if kind == Names:
        if isinstance(value, str):  # "color,translation" as written by purrgan 0.1
            value = [part.strip() for part in value.split(",")]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise PurrganError(f"{name} must be a list of names, e.g. [\"a\", \"b\"], got {value!r}")
        return tuple(v.strip() for v in value if v.strip())
    if typing.get_origin(kind) is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise PurrganError(f"{name} must be a table of name = value, got {value!r}")
        for option, item in value.items():
            if not isinstance(item, (bool, int, float, str)) or (isinstance(item, float) and not math.isfinite(item)):
                raise PurrganError(f"'{section}.{key}.{option}' must be a number, a string or true/false, got {item!r}")
        return dict(value)
    if isinstance(value, str) and kind is not str:
        value = _parse_scalar(section, key, value, kind)
    ok = (
        (kind is bool and isinstance(value, bool))
        or (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (kind is str and isinstance(value, str))
    )
    if not ok:
        raise PurrganError(f"{name} must be {kind.__name__}, got {value!r}")
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise PurrganError(f"{name} must be a finite number, got {value}")
    if kind is str and "\x00" in value:
        raise PurrganError(f"{name} contains a NUL character")
    return value


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
    except (ValueError, OverflowError):
        raise PurrganError(f"'{section}.{key}' must be {kind.__name__}, got '{text}'") from None


def _parse_option(text: str) -> OptionValue:
    # An architecture option from the command line: true/false, an int, a float, else the text itself.
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def validate(config: Config) -> None:
    """Raise PurrganError naming the first value that is out of its allowed range."""
    for section, key in _POSITIVE:
        if getattr(getattr(config, section), key) <= 0:
            raise PurrganError(f"'{section}.{key}' must be positive")
    for section, key in _NON_NEGATIVE:
        if getattr(getattr(config, section), key) < 0:
            raise PurrganError(f"'{section}.{key}' must be zero or more")
    for section, key in _FRACTIONS:
        if not 0 <= getattr(getattr(config, section), key) < 1:
            raise PurrganError(f"'{section}.{key}' must be at least 0 and below 1")
    for (section, key), limit in _LIMITS.items():
        if getattr(getattr(config, section), key) > limit:
            raise PurrganError(f"'{section}.{key}' is {getattr(getattr(config, section), key)}; the most it can be is {limit}")
    if config.train.steps == 0 and config.train.epochs == 0:
        raise PurrganError("set train.steps or train.epochs to a positive number")
    for name in config.train.logger:
        if name not in _LOGGERS:
            raise PurrganError(f"unknown logger '{name}'; use any of: {', '.join(_LOGGERS)} (comma-separated)")
    device = config.train.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise PurrganError(f"'train.device' is '{device}'; allowed values: auto, cpu, cuda, cuda:N")


def active_loggers(config: Config) -> list[str]:
    """Return the logger names to use ("none" dropped)."""
    return [name for name in config.train.logger if name != "none"]


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
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    text = "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}"
                   for ch in text)
    return f'"{text}"'


def _toml_key(key: str) -> str:
    return key if key and all(ch.isalnum() or ch in "_-" for ch in key) else _toml_value(key)
