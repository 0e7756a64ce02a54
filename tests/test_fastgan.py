"""FastGAN: skip-layer excitation, a D that reconstructs what it sees (a penalty the architecture declares), at 32-256."""

import pytest
import torch

from conftest import tiny_config
from purrgan import checkpoint
from purrgan.data import load_images
from purrgan.dist import Distributed
from purrgan.export import export
from purrgan.generate import load_generator
from purrgan.loop import train, train_step
from purrgan.models.fastgan import SLE, Discriminator, sle_pairs
from purrgan.state import TrainState


def _config(**extra):
    return tiny_config(model__arch="fastgan", model__g_width="8", model__d_width="8", loss__name="hinge",
                       data__channels="3", **extra)


def test_skip_layer_excitation_gates_the_high_resolution_map_per_channel():
    gate = SLE(32, 16)
    low, high = torch.randn(5, 32, 4, 4), torch.randn(5, 16, 32, 32)
    out = gate(low, high)
    assert out.shape == high.shape
    ratio = out / high  # one factor in (0, 1) per image and channel, the same at every pixel
    assert ((ratio > 0) & (ratio < 1)).all() and torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-5)
    assert sle_pairs(256) == {64: 4, 128: 8, 256: 16} and sle_pairs(32) == {32: 4}  # the paper's pairs; 32x32 has one too


def test_ds_reconstruction_of_real_images_falls_as_it_learns():
    torch.manual_seed(0)
    d = Discriminator(channels=3, resolution=32, width=8)
    images = load_images("digits", 32, 3).images[:16].float() / 127.5 - 1
    optimizer = torch.optim.Adam(d.parameters(), lr=2e-3)
    rng = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss = d.reconstruction_loss(images, rng)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses[::10]


def test_the_step_adds_the_reconstruction_to_ds_loss_and_a_resume_continues_bit_exactly():
    config = _config(train__steps=10)
    data = load_images("digits", 32, 3)
    a = TrainState.create(config, data, torch.device("cpu"), Distributed())
    stats = [train_step(a) for _ in range(3)]
    assert all(s["reconstruction_loss"] > 0 for s in stats)
    saved = checkpoint.decode(checkpoint.encode(a.state_dict()))
    b = TrainState.create(config, data, torch.device("cpu"), Distributed())
    b.load_state_dict(saved)
    out_a, out_b = train_step(a), train_step(b)
    torch.testing.assert_close(out_a["reconstruction_loss"], out_b["reconstruction_loss"], rtol=0, atol=0)
    for (name, p), q in zip(a.discriminator.named_parameters(), b.discriminator.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_fastgan_trains_and_exports_to_onnx(tmp_path):
    import onnxruntime

    run = tmp_path / "run"
    train(_config(train__steps=6), run)
    generator = load_generator(run)
    z = torch.randn(3, generator.z_dim)
    with torch.no_grad():
        expected = generator(z)
    session = onnxruntime.InferenceSession(str(export(generator, "onnx", tmp_path / "g.onnx")))
    torch.testing.assert_close(torch.from_numpy(session.run(None, {"z": z.numpy()})[0]), expected, rtol=1e-4, atol=1e-4)
    again = load_generator(export(generator, "safetensors", tmp_path / "g.safetensors"))  # spectral norm's weights too
    torch.testing.assert_close(again(z), expected)


def test_split_updates_refuse_the_reconstruction_penalty_in_one_line():
    from purrgan.errors import PurrganError
    from purrgan.state import check_config

    with pytest.raises(PurrganError, match="cannot carry D's reconstruction_loss"):
        check_config(_config(optim__d_update="split"))
