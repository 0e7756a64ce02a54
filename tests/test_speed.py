"""The fast paths: device loader equivalence, mixed precision, compile, and 2-process training on the CPU."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, tiny_config
from purrgan import checkpoint
from purrgan.data import load_images, to_float
from purrgan.data.loader import DeviceLoader
from purrgan.monitor import read_metrics
from purrgan.loop import train


def test_streaming_loader_yields_the_same_batches_as_the_device_loader():
    data = load_images("digits", 16, 1)
    resident = DeviceLoader(data, 64, seed=5, device=torch.device("cpu"), on_device="on")
    streamed = DeviceLoader(data, 64, seed=5, device=torch.device("cpu"), on_device="off")
    for _ in range(40):  # across an epoch boundary
        (a, la), (b, lb) = resident.next(), streamed.next()
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_device_loader_matches_a_plain_cpu_indexing_of_the_data():
    data = load_images("digits", 16, 1)
    loader = DeviceLoader(data, 100, seed=2, device=torch.device("cpu"))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(2 * 1_000_003))
    images, labels = loader.next()
    assert torch.equal(images, to_float(data.images[order[:100]])) and torch.equal(labels, data.labels[order[:100]])


def test_ranks_split_each_global_batch_without_overlap():
    data = load_images("digits", 16, 1)
    shards = [DeviceLoader(data, 64, seed=1, device=torch.device("cpu"), rank=r, world_size=2).next()[0] for r in (0, 1)]
    whole = DeviceLoader(data, 64, seed=1, device=torch.device("cpu")).next()[0]
    assert shards[0].shape[0] == 32 and torch.equal(torch.cat([shards[0], shards[1]]).sort(0).values, whole.sort(0).values)


def test_bf16_autocast_on_the_cpu_gives_losses_close_to_float32(tmp_path):
    full, mixed = tmp_path / "fp32", tmp_path / "bf16"
    train(tiny_config(train__steps=20, train__amp="off"), full)
    train(tiny_config(train__steps=20, train__amp="bf16"), mixed)
    a, b = read_metrics(full), read_metrics(mixed)
    torch.testing.assert_close(torch.tensor([r["d_loss"] for r in b]), torch.tensor([r["d_loss"] for r in a]), rtol=0.1, atol=0.05)
    assert (mixed / "checkpoints" / "last.safetensors").is_file()


def test_channels_last_on_the_cpu_matches_contiguous(tmp_path):
    train(tiny_config(train__steps=10, train__channels_last="off"), tmp_path / "a")
    train(tiny_config(train__steps=10, train__channels_last="on"), tmp_path / "b")
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    torch.testing.assert_close(torch.tensor([r["g_loss"] for r in b]), torch.tensor([r["g_loss"] for r in a]), rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="torch.compile needs a C compiler on the CPU")
def test_compile_path_runs_or_falls_back_with_a_warning(tmp_path, caplog):
    run = tmp_path / "run"
    train(tiny_config(train__steps=4, train__compile="true", model__g_width=4, model__d_width=4), run)
    state, _ = checkpoint.load_latest(run)
    assert all(not k.startswith("_orig_mod") for k in state["generator"])  # the raw modules are saved
    reference = tmp_path / "eager"
    train(tiny_config(train__steps=4, model__g_width=4, model__d_width=4), reference)
    torch.testing.assert_close(torch.tensor([r["d_loss"] for r in read_metrics(run)]),
                               torch.tensor([r["d_loss"] for r in read_metrics(reference)]), rtol=1e-3, atol=1e-3)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(run, processes, *extra):
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), f"--nproc_per_node={processes}", f"--master_port={_free_port()}", "-m", "purrgan", "train",
               "--out", str(run), "--quiet", "--logger", "none", "--device", "cpu",
               *[a for k, v in TINY.items() if k != "train.device" for a in ("--set", f"{k}={v}")], *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_two_process_gloo_training_stays_in_sync_and_resumes_in_one_process(tmp_path):
    run = tmp_path / "run"
    out = _torchrun(run, 2, "--steps", "30", "--set", "train.checkpoint_every=10")
    assert out.returncode == 0, out.stderr[-3000:]
    state, _ = checkpoint.load_latest(run)
    assert state["world_size"] == 2 and state["step"] == 30
    checksums = state["rank_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # identical weights on both ranks
    # Rank 0 alone wrote the run folder: one metrics row per logged step, one set of files.
    assert [r["step"] for r in read_metrics(run)] == [10, 20, 30]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last-1.safetensors", "last.safetensors"]
    # A 2-process checkpoint resumes in 1 process.
    resumed = subprocess.run([sys.executable, "-m", "purrgan", "train", "--out", str(run), "--resume", "--steps", "40",
                              "--quiet"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state, _ = checkpoint.load_latest(run)
    assert state["step"] == 40 and state["world_size"] == 1
    assert [r["step"] for r in read_metrics(run)][-1] == 40
