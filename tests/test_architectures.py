"""Every architecture at every resolution and channel count, conditional variants, pinned parameter counts."""

import dataclasses

import pytest
import torch

from purrgan.config import load_config
from purrgan.models import ARCHITECTURES, build_discriminator, build_generator
from purrgan.models.layers import spectral_norm


def _config(arch, resolution, channels, **model):
    config = load_config(overrides={"model.arch": arch, "data.resolution": str(resolution), "data.channels": str(channels),
                                    "model.g_width": "8", "model.d_width": "8"})
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **model))


CASES = [(arch, res, ch) for arch, spec in ARCHITECTURES.items() for res in (32, 64) if res in spec.resolutions for ch in (1, 3)]
CASES += [(arch, res, 3) for arch in ("dcgan", "r3gan", "fastgan") for res in (128, 256)]  # the GPU sizes


@pytest.mark.parametrize("arch, resolution, channels", CASES)
def test_shapes_and_value_ranges(arch, resolution, channels):
    config = _config(arch, resolution, channels)
    generator, discriminator = build_generator(config), build_discriminator(config)
    images = generator(torch.randn(4, config.model.z_dim))
    assert images.shape == (4, channels, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
    logits = discriminator(images)
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    images.mean().backward()  # gradients reach G


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("arch, z_dim, channels, resolution, g_width, d_width, g_params, d_params", [
    # pytorch/examples/dcgan (ngf = ndf = 64, nz = 100): 3.58M / 2.77M
    ("dcgan", 100, 3, 64, 64, 64, 3_576_704, 2_765_568),
    # Keras tutorial's model.summary(): generator 1,466,115, discriminator 522,497
    ("keras-cifar", 100, 3, 32, 64, 64, 1_466_115, 522_497),
    # SNGAN ResNet for CIFAR (Miyato et al. table 4; torch-mimicry's SNGAN-32: G 4.3M, D 1.1M)
    ("sngan-resnet", 128, 3, 32, 64, 64, 4_276_739, 1_053_825),
    # SNGAN standard CNN (Miyato et al. table 3), counted from its layer list
    ("sngan-cnn", 128, 3, 32, 64, 64, 3_813_379, 2_935_873),
])
def test_parameter_counts_match_published_models(arch, z_dim, channels, resolution, g_width, d_width, g_params, d_params):
    config = _config(arch, resolution, channels, z_dim=z_dim, g_width=g_width, d_width=d_width)
    assert _count(build_generator(config)) == g_params
    assert _count(build_discriminator(config)) == d_params


def test_r3gan_stage_widths_follow_the_papers_ffhq_configurations():
    from purrgan.models.r3gan import stage_widths

    # R3GAN's FFHQ-64 and FFHQ-256 presets: 3 * x // 4 for x in [1024, 1024, 1024, 1024, 512(, 256, 128)]
    assert stage_widths(64, 768) == [768, 768, 768, 768, 384]
    assert stage_widths(256, 768) == [768, 768, 768, 768, 384, 192, 96]
    assert stage_widths(32, 768) == [768] * 4  # CIFAR-10


def test_keras_discriminator_has_dropout_and_dcgan_linear_has_linear_head():
    keras = build_discriminator(_config("keras-cifar", 32, 3))
    dropout = [m for m in keras.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropout) == 1 and dropout[0].p == 0.4
    linear = build_discriminator(_config("dcgan-linear", 32, 3))
    assert isinstance(linear.head, torch.nn.Linear)
    slopes = {m.negative_slope for m in linear.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.1}
    convs = [m for m in linear.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and all(c.stride == (2, 2) for c in convs)


@pytest.mark.parametrize("arch", ["dcgan", "sngan-cnn", "sngan-resnet"])
def test_projection_models_change_the_sample_with_only_the_label(arch):
    config = _config(arch, 32, 3, conditional="projection", num_classes=4)
    torch.manual_seed(0)
    generator, discriminator = build_generator(config).eval(), build_discriminator(config)
    # Conditional BatchNorm starts as the identity: give each class its own scale so the test sees the label.
    for m in generator.modules():
        if hasattr(m, "scale") and isinstance(m.scale, torch.nn.Embedding):
            torch.nn.init.normal_(m.scale.weight, 1.0, 0.5)
    z = torch.randn(1, config.model.z_dim).repeat(2, 1)
    images = generator(z, torch.tensor([0, 3]))
    # Untrained DCGAN outputs are tiny in eval mode, so compare relative to their size.
    assert (images[0] - images[1]).abs().mean() > 0.1 * images.abs().mean()
    scores = discriminator(images[:1].repeat(2, 1, 1, 1), torch.tensor([0, 3]))
    assert scores[0] != scores[1]
    with pytest.raises(ValueError, match="pass labels"):
        generator(z)


def test_per_class_routes_each_sample_to_its_own_member():
    config = _config("dcgan", 32, 1, conditional="per-class", num_classes=3)
    generator = build_generator(config).eval()
    z = torch.randn(6, config.model.z_dim)
    labels = torch.tensor([2, 0, 1, 0, 2, 1])
    together = generator(z, labels)
    for i in range(6):
        alone = generator.members[labels[i]](z[i:i + 1])
        torch.testing.assert_close(together[i:i + 1], alone)


def test_spectral_norm_is_on_every_sngan_discriminator_layer():
    for arch in ("sngan-cnn", "sngan-resnet"):
        discriminator = build_discriminator(_config(arch, 32, 3))
        layers = [m for m in discriminator.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        assert layers and all(hasattr(m, "parametrizations") for m in layers)
    assert spectral_norm is not None


def test_r3gan_blocks_start_as_the_identity_and_r1_differentiates_through_d():
    from purrgan.losses import r1_penalty
    from purrgan.models.r3gan import ResidualBlock

    config = load_config(overrides={"model.arch": "r3gan", "data.resolution": "32", "data.channels": "3",
                                    "model.g_width": "32", "model.d_width": "32", "model.options.blocks": "1"})
    block = ResidualBlock(32, 2, 16, total_blocks=4)
    x = torch.randn(2, 32, 8, 8)
    torch.testing.assert_close(block(x), x)  # the last 1x1 conv starts at zero
    assert block.mix.groups == 4 and block.mix.kernel_size == (3, 3) and block.expand.kernel_size == (1, 1)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for m in build_generator(config).modules())
    discriminator = build_discriminator(config)
    penalty = r1_penalty(discriminator, torch.randn(3, 3, 32, 32), None)
    penalty.backward()  # the double backward R1 and R2 need
    assert torch.isfinite(penalty) and all(p.grad is not None for p in discriminator.parameters() if p.requires_grad)


def test_r3gan_options_are_checked():
    from purrgan.errors import PurrganError
    from purrgan.state import check_config

    with pytest.raises(PurrganError, match="do not split into groups of 12; set model.options.group_size"):
        check_config(load_config(overrides={"model.arch": "r3gan", "model.options.group_size": "12"}))
    with pytest.raises(PurrganError, match="model 'r3gan' has no option 'depth'; its model.options: blocks, group_size, expansion"):
        check_config(load_config(overrides={"model.arch": "r3gan", "model.options.depth": "2"}))
    with pytest.raises(PurrganError, match="model.options.blocks must be int like 2, got 'two'"):
        check_config(load_config(overrides={"model.arch": "r3gan", "model.options.blocks": "two"}))
    config = _config("r3gan", 32, 3, z_dim=64, g_width=768, d_width=768)  # the paper's CIFAR-10 widths
    assert (_count(build_generator(config)), _count(build_discriminator(config))) == (20_732_163, 20_684_544)


def test_keras_generator_starts_as_keras_does_so_samples_differ_with_z():
    # With torch's default init this BatchNorm-free G drew one bias pattern for every z (about 10x
    # more constant pattern than z-variation at step 0), and a CPU-length run kept it.
    config = _config("keras-cifar", 32, 3, g_width=64)
    torch.manual_seed(0)
    generator = build_generator(config)
    images = generator(torch.randn(64, config.model.z_dim))
    variation = images.std(dim=0).mean()  # how much a pixel changes with z
    pattern = images.mean(dim=0).abs().mean()  # the part every sample shares
    assert variation > pattern
    biases = [m.bias for m in generator.modules() if isinstance(m, (torch.nn.Linear, torch.nn.ConvTranspose2d))]
    assert all(torch.count_nonzero(b) == 0 for b in biases)


def test_conditional_dcgan_discriminator_starts_with_a_class_term_no_larger_than_its_head():
    # nn.Embedding's N(0, 1) init made the projection term ~100x the head's logit at step 0.
    config = _config("dcgan", 32, 3, conditional="projection", num_classes=10, d_width=64)
    torch.manual_seed(0)
    discriminator = build_discriminator(config)
    features = discriminator.main(torch.rand(64, 3, 32, 32) * 2 - 1)
    head = discriminator.head(features).flatten()
    class_term = discriminator.projection(features.sum(dim=(2, 3)), torch.randint(0, 10, (64,)))
    assert class_term.std() < 3 * head.std()
