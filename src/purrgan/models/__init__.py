"""Model registry: each architecture is a pair of builders plus the resolutions it supports.

To add an architecture, write its module in this package and add one entry to ARCHITECTURES.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from torch import nn

from ..errors import PurrganError
from . import dcgan

if TYPE_CHECKING:
    from ..config import Config


@dataclass(frozen=True)
class Architecture:
    generator: Callable[["Config"], nn.Module]
    discriminator: Callable[["Config"], nn.Module]
    resolutions: tuple[int, ...]
    summary: str

    def check(self, config: "Config") -> None:
        """Raise PurrganError if this architecture cannot be built for config."""
        res = config.data.resolution
        if res not in self.resolutions:
            raise PurrganError(
                f"model '{config.model.arch}' does not support resolution {res}; "
                f"use data.resolution = one of {', '.join(map(str, self.resolutions))}"
            )


def build_generator(config: "Config") -> nn.Module:
    """Return a freshly initialised generator for config."""
    return ARCHITECTURES[config.model.arch].generator(config)


def build_discriminator(config: "Config") -> nn.Module:
    """Return a freshly initialised discriminator for config."""
    return ARCHITECTURES[config.model.arch].discriminator(config)


ARCHITECTURES: dict[str, Architecture] = {
    "dcgan": Architecture(
        generator=lambda c: dcgan.Generator(c.model.z_dim, c.data.channels, c.data.resolution, c.model.g_width),
        discriminator=lambda c: dcgan.Discriminator(c.data.channels, c.data.resolution, c.model.d_width),
        resolutions=(16, 32, 64, 128),
        summary="DCGAN (Radford et al. 2016; pytorch/examples/dcgan): transposed convs + BatchNorm",
    ),
}
