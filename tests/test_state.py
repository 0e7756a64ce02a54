"""TrainState: what a resume restores, down to the memory layout that CUDA's fused kernels insist on."""

import pytest
import torch

from conftest import tiny_config
from purrgan import checkpoint
from purrgan.data import load_images
from purrgan.dist import Distributed
from purrgan.errors import PurrganError
from purrgan.state import TrainState, check_config
from purrgan.loop import train_step


def _layout_mismatches(state: TrainState) -> list[str]:
    """Names of the optimiser moments and G_ema weights whose strides differ from their parameter's."""
    wrong = []
    for side, optimizer, module in (("G", state.opt_g, state.generator), ("D", state.opt_d, state.discriminator)):
        names = {id(p): n for n, p in module.named_parameters()}
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                for key, value in optimizer.state[parameter].items():
                    if value.shape == parameter.shape and value.stride() != parameter.stride():
                        wrong.append(f"{side}.{names[id(parameter)]}.{key}")
    for (name, averaged), current in zip(state.generator_ema.named_parameters(), state.generator.parameters()):
        if averaged.stride() != current.stride():
            wrong.append(f"G_ema.{name}")
    return wrong


@pytest.mark.parametrize("implementation", ["foreach", "fused"])
def test_a_resumed_channels_last_run_keeps_every_state_tensor_in_its_parameters_layout(implementation):
    # Fused Adam on CUDA refuses moments in another layout than their weights (PyTorch issue 106951);
    # on a CPU it takes them and mixes the elements up. Either way the first --resume of a GPU run broke.
    config = tiny_config(train__channels_last="on", train__ema="0.99", optim__implementation=implementation)
    data = load_images("digits", 32, 1)
    uninterrupted = TrainState.create(config, data, torch.device("cpu"), Distributed())
    for _ in range(3):
        train_step(uninterrupted)
    saved = checkpoint.decode(checkpoint.encode(uninterrupted.state_dict()))  # every tensor stored contiguous
    resumed = TrainState.create(config, data, torch.device("cpu"), Distributed())
    resumed.load_state_dict(saved)
    assert _layout_mismatches(resumed) == []
    assert any(p.dim() == 4 and not p.is_contiguous() for p in resumed.generator.parameters())  # channels_last is real
    train_step(uninterrupted)
    train_step(resumed)
    for (name, a), b in zip(uninterrupted.discriminator.named_parameters(), resumed.discriminator.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    for (name, a), b in zip(uninterrupted.generator_ema.named_parameters(), resumed.generator_ema.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


def test_fused_rmsprop_is_refused_in_one_line():
    with pytest.raises(PurrganError, match="no fused RMSprop"):
        check_config(tiny_config(optim__name="rmsprop", optim__implementation="fused"))
