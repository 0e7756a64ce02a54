"""Model registry: each architecture is a pair of builders plus what it supports.

To add an architecture, write its module in this package and add one entry to ARCHITECTURES; options
only it understands go in `model.options` (declared here with their defaults, checked by `check`).
Conditioning is chosen by model.conditional: "none", "projection" (class-conditional BatchNorm in G
and a projection D, for architectures that support it) or "per-class" (one G/D pair per class,
around any architecture).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from ..errors import PurrganError
from . import dcgan, dcgan_linear, fastgan, keras_cifar, r3gan, sngan
from .perclass import PerClass

if TYPE_CHECKING:
    from ..config import Config


@dataclass(frozen=True)
class Architecture:
    generator: Callable[["Config", int], nn.Module]  # (config, num_classes for projection) -> G
    discriminator: Callable[["Config", int], nn.Module]
    resolutions: tuple[int, ...]
    summary: str
    projection: bool = False  # supports model.conditional = "projection"
    options: dict[str, Any] = field(default_factory=dict)  # model.options it understands, with their defaults

    def check(self, config: "Config") -> None:
        """Raise PurrganError if this architecture cannot be built for config."""
        arch, res = config.model.arch, config.data.resolution
        for name, value in config.model.options.items():
            if name not in self.options:
                valid = ", ".join(self.options) or "none"
                raise PurrganError(f"model '{arch}' has no option '{name}'; its model.options: {valid}")
            default = self.options[name]
            if type(value) is not type(default) and not (isinstance(default, float) and type(value) is int):
                raise PurrganError(f"model.options.{name} must be {type(default).__name__} like {default!r}, got {value!r}")
        if res not in self.resolutions:
            raise PurrganError(f"model '{arch}' does not support resolution {res}; "
                               f"use data.resolution = one of {', '.join(map(str, self.resolutions))}")
        if config.model.conditional == "projection" and not self.projection:
            supported = ", ".join(name for name, a in ARCHITECTURES.items() if a.projection)
            raise PurrganError(f"model '{arch}' has no class-conditional version; use one of {supported} "
                               f"or model.conditional = \"per-class\"")


def _num_classes(config: "Config") -> int:
    if config.model.conditional != "none" and config.model.num_classes < 2:
        raise PurrganError("a conditional model needs model.num_classes >= 2 (set from the data set's labels)")
    return config.model.num_classes


def build_generator(config: "Config") -> nn.Module:
    """Return a freshly initialised generator for config."""
    arch = ARCHITECTURES[config.model.arch]
    if config.model.conditional == "per-class":
        return PerClass(lambda: arch.generator(config, 0), _num_classes(config))
    return arch.generator(config, _num_classes(config) if config.model.conditional == "projection" else 0)


def build_discriminator(config: "Config") -> nn.Module:
    """Return a freshly initialised discriminator for config."""
    arch = ARCHITECTURES[config.model.arch]
    if config.model.conditional == "per-class":
        return PerClass(lambda: arch.discriminator(config, 0), _num_classes(config))
    return arch.discriminator(config, _num_classes(config) if config.model.conditional == "projection" else 0)


def _sizes(c: "Config") -> tuple[int, int]:
    return c.data.channels, c.data.resolution


def model_options(config: "Config") -> dict[str, Any]:
    """Return the architecture's options: its defaults, overridden by config.model.options."""
    return {**ARCHITECTURES[config.model.arch].options, **config.model.options}


ARCHITECTURES: dict[str, Architecture] = {
    "dcgan": Architecture(
        generator=lambda c, k: dcgan.Generator(c.model.z_dim, *_sizes(c), c.model.g_width, k),
        discriminator=lambda c, k: dcgan.Discriminator(*_sizes(c), c.model.d_width, k, c.model.d_norm, c.model.d_spectral_norm),
        resolutions=(16, 32, 64, 128, 256),
        summary="DCGAN (Radford et al. 2016; pytorch/examples/dcgan): transposed convs + BatchNorm",
        projection=True,
    ),
    "dcgan-linear": Architecture(
        generator=lambda c, k: dcgan_linear.Generator(c.model.z_dim, *_sizes(c), c.model.g_width),
        discriminator=lambda c, k: dcgan_linear.Discriminator(*_sizes(c), c.model.d_width),
        resolutions=(32, 64),
        summary="DCGAN with a linear projection in G and a linear head on D (LeakyReLU 0.1, BatchNorm)",
    ),
    "keras-cifar": Architecture(
        generator=lambda c, k: keras_cifar.Generator(c.model.z_dim, c.data.channels, c.model.g_width),
        discriminator=lambda c, k: keras_cifar.Discriminator(c.data.channels, c.model.d_width),
        resolutions=(32,),
        summary="the Keras-tutorial CIFAR-10 GAN: dense G stem, 3x3 strided D with dropout 0.4",
    ),
    "sngan-cnn": Architecture(
        generator=lambda c, k: sngan.CNNGenerator(c.model.z_dim, *_sizes(c), c.model.g_width, k),
        discriminator=lambda c, k: sngan.CNNDiscriminator(*_sizes(c), c.model.d_width, k),
        resolutions=(32, 64),
        summary="SNGAN standard CNN (Miyato et al. 2018, table 3): spectral norm in D",
        projection=True,
    ),
    "sngan-resnet": Architecture(
        generator=lambda c, k: sngan.ResNetGenerator(c.model.z_dim, *_sizes(c), c.model.g_width, k),
        discriminator=lambda c, k: sngan.ResNetDiscriminator(*_sizes(c), c.model.d_width, k),
        resolutions=(32, 64),
        summary="SNGAN ResNet (Miyato et al. 2018, table 4): residual blocks, spectral norm in D",
        projection=True,
    ),
    "r3gan": Architecture(
        generator=lambda c, k: r3gan.Generator(c.model.z_dim, *_sizes(c), c.model.g_width, **model_options(c)),
        discriminator=lambda c, k: r3gan.Discriminator(*_sizes(c), c.model.d_width, **model_options(c)),
        resolutions=(32, 64, 128, 256),
        summary="R3GAN (Huang et al. 2025): ResNeXt-style inverted bottlenecks, no normalisation, for rpgan + R1 + R2",
        options={"blocks": 2, "group_size": 16, "expansion": 2},
    ),
    "fastgan": Architecture(
        generator=lambda c, k: fastgan.Generator(c.model.z_dim, *_sizes(c), c.model.g_width),
        discriminator=lambda c, k: fastgan.Discriminator(*_sizes(c), c.model.d_width, **model_options(c)),
        resolutions=(32, 64, 128, 256),
        summary="FastGAN (Liu et al. 2021; lightweight-gan): skip-layer excitation in G, a D that also reconstructs "
                "the real images (a declared D penalty), for small data sets",
        options={"recon_weight": 1.0},
    ),
}
