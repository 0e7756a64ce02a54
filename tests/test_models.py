import pytest
import torch

from purrgan.config import load_config
from purrgan.models import ARCHITECTURES, build_discriminator, build_generator
from purrgan.models.dcgan import Discriminator, Generator


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_shapes_and_ranges(resolution, channels):
    generator = Generator(z_dim=100, channels=channels, resolution=resolution, width=16)
    discriminator = Discriminator(channels=channels, resolution=resolution, width=16)
    images = generator(torch.randn(5, 100))
    assert images.shape == (5, channels, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1
    logits = discriminator(images)
    assert logits.shape == (5,)
    assert not torch.isnan(logits).any()


def test_dcgan64_parameter_counts_match_pytorch_reference():
    # pytorch/examples/dcgan with ngf = ndf = 64, nz = 100, nc = 3: 3,576,704 and 2,765,568 parameters.
    generator = Generator(z_dim=100, channels=3, resolution=64, width=64)
    discriminator = Discriminator(channels=3, resolution=64, width=64)
    assert sum(p.numel() for p in generator.parameters()) == 3_576_704
    assert sum(p.numel() for p in discriminator.parameters()) == 2_765_568


def test_dcgan_init_is_normal_0_002():
    torch.manual_seed(0)
    generator = Generator(z_dim=100, channels=3, resolution=64, width=64)
    convs = [m.weight for m in generator.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    weights = torch.cat([w.flatten() for w in convs])
    torch.testing.assert_close(weights.mean(), torch.tensor(0.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(weights.std(), torch.tensor(0.02), atol=5e-4, rtol=0)
    norms = [m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    scales = torch.cat([m.weight.flatten() for m in norms])
    torch.testing.assert_close(scales.mean(), torch.tensor(1.0), atol=5e-3, rtol=0)
    assert all(torch.all(m.bias == 0) for m in norms)


def test_discriminator_batchnorm_after_first_layer_only():
    layers = list(Discriminator(channels=3, resolution=64, width=8).main)
    assert isinstance(layers[0], torch.nn.Conv2d) and isinstance(layers[1], torch.nn.LeakyReLU)
    assert layers[1].negative_slope == 0.2
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in layers) == 3


def test_registry_builds_from_config():
    config = load_config(overrides={"data.resolution": "64", "data.channels": "3"})
    assert "dcgan" in ARCHITECTURES
    assert build_generator(config)(torch.randn(2, config.model.z_dim)).shape == (2, 3, 64, 64)
    assert build_discriminator(config)(torch.zeros(2, 3, 64, 64)).shape == (2,)
