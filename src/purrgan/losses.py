"""GAN losses as plain functions of D and image batches, and the regularisers; registered in LOSSES at the bottom.

A D loss is `(discriminator, real, fake, labels, options) -> dict`, a G loss `(discriminator, fake,
labels, options) -> dict`; the first entry ("loss") is what to backpropagate, the rest what the logger
shows: d_loss_real and d_loss_fake (D's loss on each half), d_real and d_fake (mean D(x) and D(G(z)):
probabilities for bce, raw scores otherwise). Losses never call backward() or step an optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .config import LossConfig

LossDict = dict[str, torch.Tensor]


def _report(loss_real: torch.Tensor, loss_fake: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> LossDict:
    return {"loss": loss_real + loss_fake, "d_loss_real": loss_real.detach(), "d_loss_fake": loss_fake.detach(),
            "d_real": real.mean().detach(), "d_fake": fake.mean().detach()}


# ---------------------------------------------------------------- bce (Goodfellow et al. 2014)


def bce_d(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, labels, options: "LossConfig") -> LossDict:
    """Return D's loss -log D(x) - log(1 - D(G(z))), with one-sided label smoothing of the real target."""
    real_logits, fake_logits = discriminator(real, labels).float(), discriminator(fake, labels).float()
    target = torch.full_like(real_logits, 1.0 - options.label_smoothing)
    loss_real = F.binary_cross_entropy_with_logits(real_logits, target)
    loss_fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return _report(loss_real, loss_fake, torch.sigmoid(real_logits), torch.sigmoid(fake_logits))


def bce_g(discriminator: nn.Module, fake: torch.Tensor, labels, options: "LossConfig") -> LossDict:
    """Return G's non-saturating loss -log D(G(z)) (the one used in practice, Goodfellow et al. section 3)."""
    fake_logits = discriminator(fake, labels).float()
    return {"loss": F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))}


def bce_saturating_g(discriminator: nn.Module, fake: torch.Tensor, labels, options: "LossConfig") -> LossDict:
    """Return G's original minimax loss log(1 - D(G(z))), whose gradient vanishes when D wins (for teaching)."""
    fake_logits = discriminator(fake, labels).float()
    return {"loss": -F.softplus(fake_logits).mean()}  # log(1 - sigmoid(l)) = -softplus(l)


# ---------------------------------------------------------------- Wasserstein (Arjovsky et al. 2017)


def wgan_d(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, labels, options: "LossConfig") -> LossDict:
    """Return the critic's loss E[D(G(z))] - E[D(x)] (minus the Wasserstein estimate)."""
    real_scores, fake_scores = discriminator(real, labels).float(), discriminator(fake, labels).float()
    return _report(-real_scores.mean(), fake_scores.mean(), real_scores, fake_scores)


def wgan_g(discriminator: nn.Module, fake: torch.Tensor, labels, options: "LossConfig") -> LossDict:
    """Return G's loss -E[D(G(z))]."""
    return {"loss": -discriminator(fake, labels).float().mean()}


# ---------------------------------------------------------------- hinge (Lim & Ye 2017; Miyato et al. 2018)


def hinge_d(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, labels, options: "LossConfig") -> LossDict:
    """Return D's hinge loss E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]."""
    real_scores, fake_scores = discriminator(real, labels).float(), discriminator(fake, labels).float()
    return _report(F.relu(1 - real_scores).mean(), F.relu(1 + fake_scores).mean(), real_scores, fake_scores)


# ---------------------------------------------------------------- least squares (Mao et al. 2017)


def lsgan_d(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, labels, options: "LossConfig") -> LossDict:
    """Return D's loss 1/2 E[(D(x) - 1)^2] + 1/2 E[D(G(z))^2] (the 0-1 coding of the LSGAN paper)."""
    real_scores, fake_scores = discriminator(real, labels).float(), discriminator(fake, labels).float()
    target = 1.0 - options.label_smoothing
    return _report(0.5 * ((real_scores - target) ** 2).mean(), 0.5 * (fake_scores ** 2).mean(), real_scores, fake_scores)


def lsgan_g(discriminator: nn.Module, fake: torch.Tensor, labels, options: "LossConfig") -> LossDict:
    """Return G's loss 1/2 E[(D(G(z)) - 1)^2]."""
    return {"loss": 0.5 * ((discriminator(fake, labels).float() - 1) ** 2).mean()}


# ---------------------------------------------------------------- regularisers


def gradient_penalty(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, labels,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Return E[(|grad D(x_hat)|_2 - 1)^2] at random points x_hat between real and fake (Gulrajani et al. 2017)."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, generator=generator)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = discriminator(mixed, labels).float()
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def r1_penalty(discriminator: nn.Module, real: torch.Tensor, labels) -> torch.Tensor:
    """Return E[|grad D(x)|^2] on real images (Mescheder et al. 2018)."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(real, labels).float().sum(), real, create_graph=True)
    return grad.flatten(1).pow(2).sum(dim=1).mean()


def discriminator_loss(options: "LossConfig", discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                       labels=None, generator: torch.Generator | None = None) -> LossDict:
    """Return the configured D loss plus its regularisers (gradient penalty, R1), each also reported."""
    spec = LOSSES[options.name]
    out = spec.discriminator(discriminator, real, fake, labels, options)
    if spec.gradient_penalty:
        penalty = gradient_penalty(discriminator, real, fake, labels, generator)
        out["loss"] = out["loss"] + options.gp_weight * penalty
        out["gradient_penalty"] = penalty.detach()
    if options.r1_gamma > 0:
        penalty = r1_penalty(discriminator, real, labels)
        out["loss"] = out["loss"] + options.r1_gamma / 2 * penalty
        out["r1_penalty"] = penalty.detach()
    return out


def generator_loss(options: "LossConfig", discriminator: nn.Module, fake: torch.Tensor, labels=None) -> LossDict:
    """Return the configured G loss."""
    return LOSSES[options.name].generator(discriminator, fake, labels, options)


@torch.no_grad()
def clip_weights(discriminator: nn.Module, bound: float) -> None:
    """Clamp every parameter of the critic to [-bound, bound] (the WGAN paper's Lipschitz constraint)."""
    for parameter in discriminator.parameters():
        parameter.clamp_(-bound, bound)


@dataclass(frozen=True)
class Loss:
    discriminator: Callable[..., LossDict]
    generator: Callable[..., LossDict]
    summary: str
    gradient_penalty: bool = False  # add options.gp_weight * gradient_penalty to D's loss
    clip: bool = False  # clamp D's weights to +-options.clip_value after each D step


LOSSES: dict[str, Loss] = {
    "bce": Loss(bce_d, bce_g, "non-saturating GAN loss, BCE on logits (Goodfellow et al. 2014; the DCGAN default)"),
    "bce-saturating": Loss(bce_d, bce_saturating_g, "the original minimax loss log(1 - D(G(z))) for G (for teaching)"),
    "wgan": Loss(wgan_d, wgan_g, "Wasserstein loss with weight clipping (Arjovsky et al. 2017)", clip=True),
    "wgan-gp": Loss(wgan_d, wgan_g, "Wasserstein loss with gradient penalty (Gulrajani et al. 2017)", gradient_penalty=True),
    "hinge": Loss(hinge_d, wgan_g, "hinge loss (Lim & Ye 2017; SNGAN, BigGAN)"),
    "lsgan": Loss(lsgan_d, lsgan_g, "least-squares GAN (Mao et al. 2017)"),
}
