"""Each loss against hand-computed values; the regularisers against autograd references."""

import math

import pytest
import torch

from purrgan.config import LossConfig
from purrgan.losses import LOSSES, clip_weights, d_half_objective, discriminator_loss, generator_loss, gradient_penalty, r1_penalty


def identity(images, labels=None):  # a "discriminator" whose logit is the image's single pixel
    return images.flatten()


REAL = torch.tensor([2.0, -1.0]).view(2, 1, 1, 1)
FAKE = torch.tensor([0.5, -3.0]).view(2, 1, 1, 1)


def softplus(x):
    return math.log1p(math.exp(x))


def _mean(values):
    return sum(values) / len(values)


@pytest.mark.parametrize("name, d_expected, g_expected", [
    # -log sigmoid(r) = softplus(-r);  -log(1 - sigmoid(f)) = softplus(f)
    ("bce", _mean([softplus(-2), softplus(1)]) + _mean([softplus(0.5), softplus(-3)]), _mean([softplus(-0.5), softplus(3)])),
    ("bce-saturating", _mean([softplus(-2), softplus(1)]) + _mean([softplus(0.5), softplus(-3)]), -_mean([softplus(0.5), softplus(-3)])),
    ("wgan", -_mean([2, -1]) + _mean([0.5, -3]), -_mean([0.5, -3])),
    ("hinge", _mean([max(0, 1 - 2), max(0, 1 + 1)]) + _mean([max(0, 1 + 0.5), max(0, 1 - 3)]), -_mean([0.5, -3])),
    ("lsgan", 0.5 * _mean([(2 - 1) ** 2, (-1 - 1) ** 2]) + 0.5 * _mean([0.25, 9]), 0.5 * _mean([(0.5 - 1) ** 2, (-3 - 1) ** 2])),
])
def test_losses_match_hand_computed_values(name, d_expected, g_expected):
    options = LossConfig(name=name)
    d_out = discriminator_loss(options, identity, REAL, FAKE)
    torch.testing.assert_close(d_out["loss"], torch.tensor(d_expected))
    torch.testing.assert_close(d_out["d_loss_real"] + d_out["d_loss_fake"], d_out["loss"].detach())
    torch.testing.assert_close(generator_loss(options, identity, FAKE)["loss"], torch.tensor(g_expected))


@pytest.mark.parametrize("name", [name for name, loss in LOSSES.items() if loss.half is not None])
def test_a_loss_taken_on_reals_and_fakes_apart_adds_up_to_the_joint_loss(name):
    options = LossConfig(name=name, label_smoothing=0.1)
    joint = discriminator_loss(options, identity, REAL, FAKE)
    real = d_half_objective(LOSSES[name], options, identity, REAL, None, real=True)
    fake = d_half_objective(LOSSES[name], options, identity, FAKE, None, real=False)
    torch.testing.assert_close(real["loss"] + fake["loss"], joint["loss"])
    for key in ("d_loss_real", "d_real", "real_scores"):
        torch.testing.assert_close(real[key], joint[key])
    for key in ("d_loss_fake", "d_fake", "fake_scores"):
        torch.testing.assert_close(fake[key], joint[key])


def test_one_sided_label_smoothing():
    d_out = discriminator_loss(LossConfig(name="bce", label_smoothing=0.1), identity, REAL, FAKE)
    # BCE with target 0.9: -(0.9 log s(r) + 0.1 log(1 - s(r))) = 0.9 softplus(-r) + 0.1 softplus(r)
    expected = _mean([0.9 * softplus(-2) + 0.1 * softplus(2), 0.9 * softplus(1) + 0.1 * softplus(-1)])
    torch.testing.assert_close(d_out["d_loss_real"], torch.tensor(expected))


def test_gradient_penalty_matches_a_per_sample_autograd_reference():
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 1))
    real, fake = torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
    seed = torch.Generator().manual_seed(7)
    penalty = gradient_penalty(lambda x, labels=None: critic(x).flatten(), real, fake, None, seed)
    alpha = torch.rand(5, 1, 1, 1, generator=torch.Generator().manual_seed(7))
    reference = []
    for i in range(5):
        point = (alpha[i] * real[i] + (1 - alpha[i]) * fake[i]).unsqueeze(0)
        grad = torch.autograd.functional.jacobian(lambda x: critic(x).sum(), point)
        reference.append((grad.norm() - 1) ** 2)
    torch.testing.assert_close(penalty, torch.stack(reference).mean())


def test_gradient_penalty_of_a_linear_critic_is_exact():
    weight = torch.tensor([3.0, 4.0])  # |grad| = 5 everywhere, so the penalty is (5 - 1)^2 = 16
    critic = lambda x, labels=None: (x.flatten(1) * weight).sum(1)  # noqa: E731
    penalty = gradient_penalty(critic, torch.randn(6, 2, 1, 1), torch.randn(6, 2, 1, 1), None)
    torch.testing.assert_close(penalty, torch.tensor(16.0))
    out = discriminator_loss(LossConfig(name="wgan-gp", gp_weight=10.0), critic, torch.randn(6, 2, 1, 1), torch.randn(6, 2, 1, 1))
    torch.testing.assert_close(out["gradient_penalty"], torch.tensor(16.0))
    torch.testing.assert_close(out["loss"] - out["d_loss_real"] - out["d_loss_fake"], torch.tensor(160.0))


def test_r1_penalty_is_the_squared_gradient_norm_on_reals():
    critic = lambda x, labels=None: (x.flatten(1) ** 2).sum(1)  # noqa: E731  grad = 2x, |grad|^2 = 4|x|^2
    real = torch.randn(4, 1, 2, 2)
    torch.testing.assert_close(r1_penalty(critic, real, None), (4 * real.flatten(1).pow(2).sum(1)).mean())
    out = discriminator_loss(LossConfig(name="bce", r1_gamma=2.0), critic, real, real)
    assert "r1_penalty" in out


def test_weight_clipping_bounds_every_critic_weight():
    critic = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    torch.nn.init.normal_(critic[0].weight, 0, 1)
    clip_weights(critic, 0.01)
    assert all(p.abs().max() <= 0.01 for p in critic.parameters())
    assert LOSSES["wgan"].clip and not LOSSES["wgan-gp"].clip and LOSSES["wgan-gp"].gradient_penalty


# ---------------------------------------------------------------- RpGAN with R1 + R2 (Huang et al. 2025)


def _per_sample_squared_gradient(critic, images):
    values = []
    for image in images:
        grad = torch.autograd.functional.jacobian(lambda x: critic(x.unsqueeze(0)).sum(), image)
        values.append(grad.pow(2).sum())
    return torch.stack(values).mean()


def test_rpgan_losses_and_r1_r2_match_their_autograd_definitions():
    from purrgan.losses import Batch, d_objective, g_objective

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Softplus(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 1))
    critic = lambda x, labels=None: net(x).flatten()  # noqa: E731
    real, fake = torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
    options = LossConfig(name="rpgan", r1_gamma=0.3, r2_gamma=0.7)
    out = d_objective(LOSSES["rpgan"], options, critic, Batch(real, fake), step=0)
    r1, r2 = _per_sample_squared_gradient(critic, real), _per_sample_squared_gradient(critic, fake)
    torch.testing.assert_close(out["r1_penalty"], r1)
    torch.testing.assert_close(out["r2_penalty"], r2)
    relativistic = torch.nn.functional.softplus(-(critic(real) - critic(fake))).mean()
    torch.testing.assert_close(out["loss"], relativistic + 0.3 / 2 * r1 + 0.7 / 2 * r2)
    g_out = g_objective(LOSSES["rpgan"], options, critic, Batch(real, fake), step=0)
    torch.testing.assert_close(g_out["loss"], torch.nn.functional.softplus(-(critic(fake) - critic(real))).mean())


def test_rpgan_refuses_to_run_without_both_penalties():
    from purrgan.config import load_config
    from purrgan.errors import PurrganError
    from purrgan.state import check_config

    with pytest.raises(PurrganError, match="needs both zero-centred penalties; set loss.r1_gamma and loss.r2_gamma"):
        check_config(load_config(overrides={"loss.name": "rpgan", "loss.r1_gamma": "0.1"}))


def _ring(n, generator, modes=8, radius=2.0, std=0.05):
    angle = 2 * math.pi * torch.randint(0, modes, (n,), generator=generator) / modes
    centres = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1)
    return centres + std * torch.randn(n, 2, generator=generator)


class _MLP(torch.nn.Module):
    def __init__(self, inputs, outputs, hidden=64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.LeakyReLU(0.2),
                                       torch.nn.Linear(hidden, hidden), torch.nn.LeakyReLU(0.2), torch.nn.Linear(hidden, outputs))

    def forward(self, x, labels=None):
        out = self.net(x)
        return out.flatten() if out.shape[1] == 1 else out


def test_rpgan_brings_samples_to_every_mode_of_a_2d_gaussian_mixture():
    from purrgan.losses import Batch, d_objective, g_objective

    torch.manual_seed(0)
    generator, critic = _MLP(8, 2), _MLP(2, 1)
    opt_g = torch.optim.Adam(generator.parameters(), 1e-3, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(critic.parameters(), 1e-3, betas=(0.0, 0.99))
    options, loss, rng = LossConfig(name="rpgan", r1_gamma=0.1, r2_gamma=0.1), LOSSES["rpgan"], torch.Generator().manual_seed(1)
    for step in range(1500):
        real, z = _ring(256, rng), torch.randn(256, 8, generator=rng)
        fake = generator(z)
        d_loss = d_objective(loss, options, critic, Batch(real, fake.detach(), None, z), step)["loss"]
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        critic.requires_grad_(False)
        g_loss = g_objective(loss, options, critic, Batch(real, fake, None, z), step)["loss"]
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        critic.requires_grad_(True)
    angle = 2 * math.pi * torch.arange(8) / 8
    centres = torch.stack([2 * torch.cos(angle), 2 * torch.sin(angle)], 1)
    with torch.no_grad():
        distance, nearest = torch.cdist(generator(torch.randn(4000, 8, generator=rng)), centres).min(1)
    # An untrained G sits ~1.8 from every mode; trained, half the samples are within 0.25 and no mode is dropped.
    assert distance.median() < 0.4
    assert torch.bincount(nearest, minlength=8).min() > 0.03 * 4000
