"""The small CIFAR-10 GAN of the Keras tutorial ("How to develop a GAN to generate CIFAR10 photographs").

G: dense z -> 256x4x4 with LeakyReLU(0.2), three 4x4 transposed convs (stride 2, 128 filters,
LeakyReLU 0.2) to 32x32, then a 3x3 conv with tanh. D: 3x3 convs (64, then 128, 128, 256 with
stride 2) with LeakyReLU(0.2), flatten, dropout 0.4, dense to one logit. The tutorial's 'same'
padding for a stride-2 4x4 transposed conv is padding=1 here. `width` scales the filter counts
(64 gives the tutorial's). Weights start as Keras starts them (`keras_init`): with torch's default
init this G, which has no BatchNorm, is dominated by its biases and draws one pattern for every z.
"""

from __future__ import annotations

import torch
from torch import nn


class Generator(nn.Module):
    def __init__(self, z_dim: int = 100, channels: int = 3, width: int = 64):
        super().__init__()
        self.stem_channels = width * 4
        self.project = nn.Sequential(nn.Linear(z_dim, self.stem_channels * 16), nn.LeakyReLU(0.2, inplace=True))
        layers: list[nn.Module] = []
        c = self.stem_channels
        for _ in range(3):
            layers += [nn.ConvTranspose2d(c, width * 2, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            c = width * 2
        layers += [nn.Conv2d(c, channels, 3, 1, 1), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        keras_init(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.main(self.project(z).view(z.shape[0], self.stem_channels, 4, 4))  # (N, C, 32, 32)


class Discriminator(nn.Module):
    def __init__(self, channels: int = 3, width: int = 64):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(channels, width, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, width * 2, 3, 2, 1), nn.LeakyReLU(0.2, inplace=True),  # 16x16
            nn.Conv2d(width * 2, width * 2, 3, 2, 1), nn.LeakyReLU(0.2, inplace=True),  # 8x8
            nn.Conv2d(width * 2, width * 4, 3, 2, 1), nn.LeakyReLU(0.2, inplace=True),  # 4x4
            nn.Flatten(), nn.Dropout(0.4),
        )
        self.head = nn.Linear(width * 4 * 16, 1)
        keras_init(self)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.main(images)).flatten()


def keras_init(module: nn.Module) -> None:
    """Keras's defaults: Glorot-uniform weights and zero biases in every dense and conv layer.

    torch's default (Kaiming-uniform with a=sqrt(5), biases up to 1/sqrt(fan_in)) leaves this
    BatchNorm-free G's output at step 0 varying about 10x less with z than its constant bias pattern,
    and a CPU-length run then draws the same square for every z.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
