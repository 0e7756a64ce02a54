"""GAN losses and their regularisers, registered by name in LOSSES at the bottom.

A loss is a pair of plain functions of D and one batch record (`Batch`: real, fake, labels, z):
`(discriminator, batch, options) -> dict`. The first entry ("loss") is what to backpropagate; the
other 0-dim entries are what the logger shows (d_loss_real, d_loss_fake, d_real, d_fake: mean D(x)
and D(G(z)), probabilities for bce and raw scores otherwise); 1-dim entries "real_scores" and
"fake_scores" are D's raw outputs, kept for the regularisers and adaptive augmentation.

Each loss declares its regularisers (`Regulariser`: a weighted penalty on D's or G's side, run every
`every` steps as in StyleGAN2's lazy regularisation, or a constraint applied after the optimiser
step) and checks its own requirements. Losses never call backward() or step an optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .errors import PurrganError

if TYPE_CHECKING:
    from .config import Config, LossConfig

LossDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Batch:
    """One update's inputs: what D sees (augmented), the class labels and the latents behind the fakes."""
    real: torch.Tensor  # (N, C, H, W) in [-1, 1]
    fake: torch.Tensor  # (N, C, H, W): detached for D's update, carrying G's graph for G's update
    labels: torch.Tensor | None = None  # (N,) class indices, or None
    z: torch.Tensor | None = None  # (N, z_dim)


@dataclass(frozen=True)
class Regulariser:
    """A penalty added to one side's loss (weight * penalty, every `every` steps, scaled by every), or a constraint."""
    name: str  # also the logged name, e.g. "r1_penalty"
    side: Literal["D", "G"]
    weight: float
    every: int = 1
    penalty: Callable[[nn.Module, Batch, LossDict, torch.Generator | None], torch.Tensor] | None = None
    needs_grad: Literal["real", "fake", None] = None  # the batch input the penalty differentiates D with respect to
    constraint: Callable[[nn.Module, float], None] | None = None  # applied after the side's optimiser step

    @property
    def active(self) -> bool:  # a penalty that is switched on (a constraint is not a penalty)
        return self.penalty is not None and self.weight > 0

    def due(self, step: int) -> bool:
        return self.active and step % self.every == 0


def _side_report(side: str, loss: torch.Tensor, scores: torch.Tensor, shown: torch.Tensor) -> LossDict:
    """Return what D's loss reports of one side ("real" or "fake"): its loss, mean shown score and raw scores."""
    return {f"d_loss_{side}": loss.detach(), f"d_{side}": shown.mean().detach(), f"{side}_scores": scores}


def _scores(discriminator: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    return discriminator(batch.real, batch.labels).float(), discriminator(batch.fake, batch.labels).float()


# D's loss on one side alone, for the losses that are a sum of a real and a fake term: (loss, scores as logged)
Half = Callable[[torch.Tensor, bool, "LossConfig"], tuple[torch.Tensor, torch.Tensor]]


def _separable(half: Half, discriminator: nn.Module, batch: Batch, options: "LossConfig") -> LossDict:
    real, fake = _scores(discriminator, batch)
    (loss_real, shown_real), (loss_fake, shown_fake) = half(real, True, options), half(fake, False, options)
    return {"loss": loss_real + loss_fake, **_side_report("real", loss_real, real, shown_real),
            **_side_report("fake", loss_fake, fake, shown_fake)}


# ---------------------------------------------------------------- bce (Goodfellow et al. 2014)


def bce_half(scores: torch.Tensor, real: bool, options: "LossConfig") -> tuple[torch.Tensor, torch.Tensor]:
    """Return D's BCE on one side (reals towards 1 - label_smoothing, fakes towards 0) and the scores as probabilities."""
    target = torch.full_like(scores, 1.0 - options.label_smoothing if real else 0.0)
    return F.binary_cross_entropy_with_logits(scores, target), torch.sigmoid(scores)


def bce_d(discriminator: nn.Module, batch: Batch, options: "LossConfig") -> LossDict:
    """Return D's loss -log D(x) - log(1 - D(G(z))), with one-sided label smoothing of the real target."""
    return _separable(bce_half, discriminator, batch, options)


def bce_g(discriminator: nn.Module, batch: Batch, options: "LossConfig") -> LossDict:
    """Return G's non-saturating loss -log D(G(z)) (the one used in practice, Goodfellow et al. section 3)."""
    fake = discriminator(batch.fake, batch.labels).float()
    return {"loss": F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))}


def bce_saturating_g(discriminator: nn.Module, batch: Batch, options: "LossConfig") -> LossDict:
    """Return G's original minimax loss log(1 - D(G(z))), whose gradient vanishes when D wins (for teaching)."""
    fake = discriminator(batch.fake, batch.labels).float()
    return {"loss": -F.softplus(fake).mean()}  # log(1 - sigmoid(l)) = -softplus(l)


# ---------------------------------------------------------------- Wasserstein (Arjovsky et al. 2017)


def wgan_half(scores: torch.Tensor, real: bool, options: "LossConfig") -> tuple[torch.Tensor, torch.Tensor]:
    return (-scores.mean() if real else scores.mean()), scores


def wgan_d(discriminator: nn.Module, batch: Batch, options: "LossConfig") -> LossDict:
    """Return the critic's loss E[D(G(z))] - E[D(x)] (minus the Wasserstein estimate)."""
    return _separable(wgan_half, discriminator, batch, options)


def wgan_g(discriminator: nn.Module, batch: Batch, options: "LossConfig") -> LossDict:
    """Return G's loss -E[D(G(z))]."""
    return {"loss": -discriminator(batch.fake, batch.labels).float().mean()}


# ---------------------------------------------------------------- hinge (Lim & Ye 2017; Miyato et al. 2018)


def hinge_half(scores: torch.Tensor, real: bool, options: "LossConfig") -> tuple[torch.Tensor, torch.Tensor]:
    return F.relu(1 - scores if real else 1 + scores).mean(), scores


def hinge_d(discriminator: nn.Module, batch: Batch, options: "LossConfig") -> LossDict:
    """Return D's hinge loss E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]."""
    return _separable(hinge_half, discriminator, batch, options)


# ---------------------------------------------------------------- least squares (Mao et al. 2017)


def lsgan_half(scores: torch.Tensor, real: bool, options: "LossConfig") -> tuple[torch.Tensor, torch.Tensor]:
    target = 1.0 - options.label_smoothing if real else 0.0
    return 0.5 * ((scores - target) ** 2).mean(), scores


def lsgan_d(discriminator: nn.Module, batch: Batch, options: "LossConfig") -> LossDict:
    """Return D's loss 1/2 E[(D(x) - 1)^2] + 1/2 E[D(G(z))^2] (the 0-1 coding of the LSGAN paper)."""
    return _separable(lsgan_half, discriminator, batch, options)


def lsgan_g(discriminator: nn.Module, batch: Batch, options: "LossConfig") -> LossDict:
    """Return G's loss 1/2 E[(D(G(z)) - 1)^2]."""
    return {"loss": 0.5 * ((discriminator(batch.fake, batch.labels).float() - 1) ** 2).mean()}


# ---------------------------------------------------------------- relativistic pairing (Huang et al. 2025, R3GAN)


def rpgan_d(discriminator: nn.Module, batch: Batch, options: "LossConfig") -> LossDict:
    """Return D's RpGAN loss E[softplus(-(D(x) - D(G(z))))]: each real is scored against a paired fake."""
    real, fake = _scores(discriminator, batch)
    return {"loss": F.softplus(fake - real).mean(), "d_real": real.mean().detach(), "d_fake": fake.mean().detach(),
            "real_scores": real, "fake_scores": fake}


def rpgan_g(discriminator: nn.Module, batch: Batch, options: "LossConfig") -> LossDict:
    """Return G's RpGAN loss E[softplus(-(D(G(z)) - D(x)))] against the reals D saw (no gradient reaches them)."""
    fake = discriminator(batch.fake, batch.labels).float()
    real = discriminator(batch.real.detach(), batch.labels).float()
    return {"loss": F.softplus(real - fake).mean()}


# ---------------------------------------------------------------- regularisers


def gradient_penalty(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, labels,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Return E[(|grad D(x_hat)|_2 - 1)^2] at random points x_hat between real and fake (Gulrajani et al. 2017)."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, generator=generator)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = discriminator(mixed, labels).float()
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def zero_centred_penalty(discriminator: nn.Module, images: torch.Tensor, labels, scores: torch.Tensor | None = None) -> torch.Tensor:
    """Return E[|grad D(x)|^2] at images; reuses scores = D(images) when images already require grad."""
    if scores is None or not images.requires_grad:
        images = images.detach().requires_grad_(True)
        scores = discriminator(images, labels).float()
    (grad,) = torch.autograd.grad(scores.sum(), images, create_graph=True)
    return grad.flatten(1).float().pow(2).sum(dim=1).mean()


def r1_penalty(discriminator: nn.Module, real: torch.Tensor, labels) -> torch.Tensor:
    """Return E[|grad D(x)|^2] on real images (Mescheder et al. 2018)."""
    return zero_centred_penalty(discriminator, real, labels)


def _r1(discriminator: nn.Module, batch: Batch, out: LossDict, rng) -> torch.Tensor:
    return zero_centred_penalty(discriminator, batch.real, batch.labels, out.get("real_scores"))


def _r2(discriminator: nn.Module, batch: Batch, out: LossDict, rng) -> torch.Tensor:
    return zero_centred_penalty(discriminator, batch.fake, batch.labels, out.get("fake_scores"))


def _gp(discriminator: nn.Module, batch: Batch, out: LossDict, rng) -> torch.Tensor:
    return gradient_penalty(discriminator, batch.real, batch.fake, batch.labels, rng)


@torch.no_grad()
def clip_weights(discriminator: nn.Module, bound: float) -> None:
    """Clamp every parameter of the critic to [-bound, bound] (the WGAN paper's Lipschitz constraint)."""
    for parameter in discriminator.parameters():
        parameter.clamp_(-bound, bound)


def r1(options: "LossConfig") -> Regulariser:
    """R1 (Mescheder et al. 2018): gamma/2 * E|grad D(x)|^2 on real images."""
    return Regulariser("r1_penalty", "D", options.r1_gamma / 2, options.reg_every, _r1, needs_grad="real")


def r2(options: "LossConfig") -> Regulariser:
    """R2 (Roth et al. 2017; Huang et al. 2025): gamma/2 * E|grad D(G(z))|^2 on generated images."""
    return Regulariser("r2_penalty", "D", options.r2_gamma / 2, options.reg_every, _r2, needs_grad="fake")


def gp(options: "LossConfig") -> Regulariser:
    """The WGAN-GP penalty, lambda * E[(|grad D(x_hat)| - 1)^2]."""
    return Regulariser("gradient_penalty", "D", options.gp_weight, options.reg_every, _gp)


def clipping(options: "LossConfig") -> Regulariser:
    """WGAN's weight clipping to [-c, c] after every critic step."""
    return Regulariser("weight_clipping", "D", options.clip_value, 1, constraint=clip_weights)


# ---------------------------------------------------------------- requirements


def no_batchnorm_in_d(name: str) -> Callable[["Config", nn.Module], None]:
    """Return a check that D has no BatchNorm, which mixes the samples a gradient penalty takes apart."""
    def check(config: "Config", discriminator: nn.Module) -> None:
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in discriminator.modules()):
            raise PurrganError(f"loss '{config.loss.name}' uses {name}, which BatchNorm in the critic breaks; "
                               f"set model.d_norm = \"layer\" or \"none\" (or use an architecture without BatchNorm in D)")
    return check


def zero_centred_gammas(config: "Config", discriminator: nn.Module) -> None:
    """RpGAN without R1 and R2 is not guaranteed to converge (Huang et al. 2025, section 2): both gammas must be set."""
    if config.loss.r1_gamma <= 0 or config.loss.r2_gamma <= 0:
        raise PurrganError(f"loss '{config.loss.name}' needs both zero-centred penalties; set loss.r1_gamma and "
                           f"loss.r2_gamma (R3GAN uses the same gamma for both, e.g. 0.05 on CIFAR-10)")


# ---------------------------------------------------------------- the registry entry and how the step uses it


@dataclass(frozen=True)
class Loss:
    discriminator: Callable[[nn.Module, Batch, "LossConfig"], LossDict]
    generator: Callable[[nn.Module, Batch, "LossConfig"], LossDict]
    summary: str
    declares: tuple[Callable[["LossConfig"], Regulariser], ...] = ()  # regularisers that belong to the loss itself
    requires: tuple[Callable[["Config", nn.Module], None], ...] = field(default=())
    half: Half | None = None  # D's loss on reals or fakes alone, for optim.d_update = "split"; None: not separable

    def regularisers(self, options: "LossConfig") -> list[Regulariser]:
        """Return the loss's own regularisers plus R1/R2 wherever their gamma is set."""
        own = [declare(options) for declare in self.declares]
        names = {r.name for r in own}
        extra = [make(options) for make, gamma in ((r1, options.r1_gamma), (r2, options.r2_gamma)) if gamma > 0]
        return own + [r for r in extra if r.name not in names]

    def check(self, config: "Config", discriminator: nn.Module) -> None:
        """Raise PurrganError when config (with a probe of its D) breaks one of this loss's requirements."""
        for requirement in self.requires:
            requirement(config, discriminator)

    def d_penalties(self, options: "LossConfig") -> list[Regulariser]:
        """Return the D penalties that are switched on (R1, R2, the gradient penalty), not the constraints."""
        return [r for r in self.regularisers(options) if r.side == "D" and r.active]

    @property
    def clip(self) -> bool:  # purrgan 0.1's names, kept for callers that ask
        return clipping in self.declares

    @property
    def gradient_penalty(self) -> bool:
        return gp in self.declares


def declared_by(discriminator: nn.Module) -> list[Regulariser]:
    """Return the regularisers an architecture's D declares (FastGAN's reconstruction), besides the loss's own."""
    declare = getattr(discriminator, "regularisers", None)
    return list(declare()) if callable(declare) else []


def d_objective(loss: Loss, options: "LossConfig", discriminator: nn.Module, batch: Batch, step: int,
                rng: torch.Generator | None = None) -> LossDict:
    """Return D's loss for this step plus every D penalty that is due (weight * every * penalty), each also reported:
    the loss's own and those D's architecture declares."""
    due = [r for r in loss.regularisers(options) + declared_by(discriminator) if r.side == "D" and r.due(step)]
    for wanted in {r.needs_grad for r in due} - {None}:  # differentiate D's own forward instead of running it again
        batch = replace(batch, **{wanted: getattr(batch, wanted).detach().requires_grad_(True)})
    out = loss.discriminator(discriminator, batch, options)
    for regulariser in due:
        value = regulariser.penalty(discriminator, batch, out, rng)
        out["loss"] = out["loss"] + regulariser.weight * regulariser.every * value
        out[regulariser.name] = value.detach()
    return out


def d_half_objective(loss: Loss, options: "LossConfig", discriminator: nn.Module, images: torch.Tensor,
                     labels: torch.Tensor | None, real: bool) -> LossDict:
    """Return D's loss on reals alone or fakes alone (optim.d_update = "split"), with the entries d_objective reports."""
    scores = discriminator(images, labels).float()
    value, shown = loss.half(scores, real, options)
    return {"loss": value, **_side_report("real" if real else "fake", value, scores, shown)}


def g_objective(loss: Loss, options: "LossConfig", discriminator: nn.Module, batch: Batch, step: int,
                rng: torch.Generator | None = None) -> LossDict:
    """Return G's loss for this step plus every G penalty that is due."""
    out = loss.generator(discriminator, batch, options)
    for regulariser in (r for r in loss.regularisers(options) if r.side == "G" and r.due(step)):
        value = regulariser.penalty(discriminator, batch, out, rng)
        out["loss"] = out["loss"] + regulariser.weight * regulariser.every * value
        out[regulariser.name] = value.detach()
    return out


def apply_constraints(loss: Loss, options: "LossConfig", side: str, module: nn.Module) -> None:
    """Apply the side's constraints (weight clipping) after its optimiser step."""
    for regulariser in loss.regularisers(options):
        if regulariser.side == side and regulariser.constraint is not None:
            regulariser.constraint(module, regulariser.weight)


def discriminator_loss(options: "LossConfig", discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                       labels=None, generator: torch.Generator | None = None) -> LossDict:
    """Return the configured D loss with all its penalties on one batch (a convenience outside the loop)."""
    return d_objective(LOSSES[options.name], options, discriminator, Batch(real, fake, labels), 0, generator)


def generator_loss(options: "LossConfig", discriminator: nn.Module, fake: torch.Tensor, labels=None,
                   real: torch.Tensor | None = None) -> LossDict:
    """Return the configured G loss on one batch (relativistic losses also need the real batch)."""
    return g_objective(LOSSES[options.name], options, discriminator, Batch(real, fake, labels), 0)


LOSSES: dict[str, Loss] = {
    "bce": Loss(bce_d, bce_g, "non-saturating GAN loss, BCE on logits (Goodfellow et al. 2014; the DCGAN default)",
                half=bce_half),
    "bce-saturating": Loss(bce_d, bce_saturating_g, "the original minimax loss log(1 - D(G(z))) for G (for teaching)",
                           half=bce_half),
    "wgan": Loss(wgan_d, wgan_g, "Wasserstein loss with weight clipping (Arjovsky et al. 2017)", declares=(clipping,),
                 half=wgan_half),
    "wgan-gp": Loss(wgan_d, wgan_g, "Wasserstein loss with gradient penalty (Gulrajani et al. 2017)", declares=(gp,),
                    requires=(no_batchnorm_in_d("a gradient penalty"),), half=wgan_half),
    "hinge": Loss(hinge_d, wgan_g, "hinge loss (Lim & Ye 2017; SNGAN, BigGAN)", half=hinge_half),
    "lsgan": Loss(lsgan_d, lsgan_g, "least-squares GAN (Mao et al. 2017)", half=lsgan_half),
    "rpgan": Loss(rpgan_d, rpgan_g, "relativistic pairing GAN with R1 + R2 (Huang et al. 2025, R3GAN)",
                  declares=(r1, r2), requires=(zero_centred_gammas,)),
}
