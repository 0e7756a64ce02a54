"""Where the networks run: torch.compile warmed up on the step training really takes, CUDA's backend settings, no host syncs."""

import pytest
import torch

from conftest import tiny_config
from purrgan.data import load_images
from purrgan.dist import Distributed
from purrgan.state import TrainState
from purrgan.train import train_step, warm_up_compiled


@pytest.fixture
def counted_compiles(monkeypatch):
    """torch.compile with a backend that records each graph it is handed: one entry per (re)compilation."""
    graphs = []
    real_compile = torch.compile

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: real_compile(module, backend=counting_backend))
    torch._dynamo.reset()
    yield graphs
    torch._dynamo.reset()


@pytest.mark.parametrize("extra", [{}, {"optim__d_update": "split", "model__arch": "keras-cifar", "data__channels": "3"},
                                   {"train__amp": "bf16", "train__channels_last": "on", "optim__g_steps": "2"}],
                         ids=["default", "split", "bf16-channels-last-2-g-steps"])
def test_compiled_training_never_recompiles_after_the_warm_up(counted_compiles, extra):
    config = tiny_config(train__compile="true", model__g_width="4", model__d_width="4", **extra)
    state = TrainState.create(config, load_images("digits", 32, config.data.channels), torch.device("cpu"), Distributed())
    before = {k: v.clone() for k, v in state.generator.state_dict().items()}
    warm_up_compiled(state)
    assert state.G is not state.generator and counted_compiles, "compiled modules are in use"
    assert state.step == 0 and state.loader.index == 0  # the warm-up step left no trace
    for key, value in state.generator.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    compiled = len(counted_compiles)
    for step in range(6):
        train_step(state, log_now=step % 2 == 1, histograms=step == 5)
    assert len(counted_compiles) == compiled, f"{len(counted_compiles) - compiled} recompilations after the warm-up"
