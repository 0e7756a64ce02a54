"""Where the networks run: torch.compile warmed up on the step training really takes, CUDA's backend settings, no host syncs."""

import pytest
import torch

from conftest import tiny_config
from purrgan.data import load_images
from purrgan.dist import Distributed
from purrgan.state import TrainState
from purrgan.loop import train_step, warm_up_compiled


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


@pytest.fixture
def backend_flags():
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield lambda: (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_a_float32_cuda_run_turns_on_cudnn_autotuning_and_tf32(backend_flags, monkeypatch, tmp_path):
    from purrgan import loop as train_module
    from purrgan.device import tune_backends

    tune_backends(torch.device("cuda"), None)
    assert backend_flags() == (True, True, True)
    torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    tune_backends(torch.device("cuda"), torch.bfloat16, deterministic=True)  # bf16 already; deterministic: no autotuner
    assert backend_flags() == (False, False, False)
    tune_backends(torch.device("cpu"), None)
    assert backend_flags() == (False, False, False)
    seen = []
    monkeypatch.setattr(train_module, "tune_backends", lambda *args: seen.append(args))
    train_module.train(tiny_config(train__steps=2), tmp_path / "run")
    assert seen == [(torch.device("cpu"), None, False)]  # the run's own device, precision and determinism


SYNCS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


@pytest.mark.parametrize("extra", [{}, {"augment__adaptive": "true", "loss__r1_gamma": "1", "train__ema": "0.99",
                                        "augment__instance_noise": "0.1", "data__hflip": "on"},
                                   {"loss__name": "wgan", "model__d_norm": "none", "optim__d_steps": "2"},
                                   {"optim__d_update": "split", "model__arch": "keras-cifar", "data__channels": "3"}],
                         ids=["default", "ada-r1-ema-noise-flips", "wgan-clipping-2-d-steps", "split"])
def test_a_step_that_logs_nothing_never_waits_for_the_device(monkeypatch, extra):
    # On a GPU, any of these on a device tensor stalls the host until the queue drains. The CPU cannot show
    # the stall, so the stand-in counts the calls purrgan's own code makes (PyTorch's optimisers read
    # their CPU step counters with item(), which costs nothing on a GPU either).
    import traceback

    config = tiny_config(**extra)
    state = TrainState.create(config, load_images("digits", 32, config.data.channels), torch.device("cpu"), Distributed())
    train_step(state)
    calls = []
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            if "/purrgan/" in caller.filename.replace("\\", "/"):
                calls.append(f"{_name} at {caller.filename.rsplit('/', 1)[-1]}:{caller.lineno}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    for _ in range(4):
        train_step(state)
    assert calls == []
