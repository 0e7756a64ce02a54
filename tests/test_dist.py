"""Several processes, as a user with 8 GPUs or 2 nodes runs them: gloo on the CPU with 2 and 3 processes."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from conftest import TINY
from purrgan import checkpoint
from purrgan.dist import Distributed, PeerLost
from purrgan.errors import PurrganError, ReportedElsewhere
from purrgan.monitor import read_metrics
from purrgan.loop import check_in_step

TESTS = Path(__file__).parent


# ---------------------------------------------------------------- collectives, in spawned processes


def _in_group(rank: int, world: int, init: str, body, results):
    torch_dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        dist = Distributed(rank, world, rank, torch_dist.new_group(backend="gloo"))
        results.put((rank, _plain(body(dist))))
    finally:
        torch_dist.destroy_process_group()


def _plain(value):
    """Tensors as numpy arrays: torch's queue would pass them as shared memory that dies with the process."""
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value


def _run(body, world: int = 2) -> dict:
    """Run body(dist) in `world` gloo processes; return {rank: what it returned}."""
    with tempfile.TemporaryDirectory() as folder:
        context = mp.get_context("spawn")
        results = context.Queue()
        mp.start_processes(_in_group, args=(world, f"file://{folder}/init", body, results), nprocs=world,
                           start_method="spawn")
        return dict(results.get(timeout=60) for _ in range(world))


def _layouts(dist):
    torch.manual_seed(dist.rank)  # different weights on each rank, and another memory layout on rank 0
    conv = torch.nn.Conv2d(3, 8, 3)
    if dist.rank == 0:
        conv = conv.to(memory_format=torch.channels_last)
    calls = []
    original = torch_dist.broadcast
    torch_dist.broadcast = lambda tensor, src, *a, **k: calls.append(tensor.dtype) or original(tensor, src, *a, **k)
    dist.broadcast_modules(conv)
    torch_dist.broadcast = original
    return conv.weight.detach().contiguous(), conv.weight.is_contiguous(), calls


def test_rank_0s_weights_reach_every_rank_in_its_own_layout_in_one_call():
    # Broadcasting raw memory from a channels_last tensor into an NCHW one lands the values permuted.
    out = _run(_layouts)
    (weights0, contiguous0, calls0), (weights1, contiguous1, calls1) = out[0], out[1]
    assert (weights1 == weights0).all()
    assert not contiguous0 and contiguous1  # each rank kept its layout
    assert calls1 == [torch.float32]  # weight and bias in one coalesced broadcast


def _buffers_and_gradients(dist):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 3),
                                torch.nn.BatchNorm2d(2))
    model(torch.randn(4, 3, 8, 8) + dist.rank).sum().backward()  # other statistics and gradients on each rank
    counted = {"broadcast": 0, "all_reduce": 0}
    originals = {name: getattr(torch_dist, name) for name in counted}
    for name in counted:
        def wrapped(*args, _name=name, **kwargs):
            counted[_name] += 1
            return originals[_name](*args, **kwargs)
        setattr(torch_dist, name, wrapped)
    dist.broadcast_buffers(model)
    dist.average_gradients(model)
    for name, original in originals.items():
        setattr(torch_dist, name, original)
    return model[1].running_mean.clone(), model[0].weight.grad.clone(), counted


def test_batchnorm_statistics_move_in_one_call_and_gradients_in_one_all_reduce():
    out = _run(_buffers_and_gradients)
    assert (out[1][0] == out[0][0]).all()  # rank 0's running statistics everywhere
    assert (out[1][1] == out[0][1]).all()  # the same averaged gradient everywhere
    assert out[0][2] == {"broadcast": 1, "all_reduce": 1}


def _failing_on_main(dist):
    def work():
        if dist.is_main:
            raise PurrganError("no images in /data; expected files ending in .png")
    try:
        dist.main_first(work)
    except ReportedElsewhere as error:
        return ("reported elsewhere", str(error))
    except PurrganError as error:
        return ("raised", str(error))
    return ("nothing", "")


def test_a_failure_on_rank_0_stops_every_rank_with_its_message_said_once():
    out = _run(_failing_on_main, world=3)
    assert out[0] == ("raised", "no images in /data; expected files ending in .png")
    assert out[1] == out[2] == ("reported elsewhere", "no images in /data; expected files ending in .png")


def test_ranks_whose_weights_drifted_apart_stop_with_one_line():
    check_in_step([12.5, 12.5, 12.5], step=40)
    with pytest.raises(PurrganError, match=r"weights differ at step 40 .*rank 2: 12.6.*--resume"):
        check_in_step([12.5, 12.5, 12.6], step=40)


def test_a_lost_peer_is_one_line_not_a_traceback():
    dist = Distributed(1, 2)
    with pytest.raises(PeerLost, match=r"^rank 1 lost contact .*Connection reset by peer.*--resume to continue$"):
        dist._collective(lambda: (_ for _ in ()).throw(RuntimeError("[pair.cc:545] Read error: Connection reset by peer")))


# ---------------------------------------------------------------- whole runs under torchrun


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun_command(run, processes, logs, *extra):
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun), f"--nproc_per_node={processes}", f"--master_port={_free_port()}", "--log-dir", str(logs),
            "--redirects", "3", "-m", "purrgan", "train", "--out", str(run), "--quiet", "--logger", "none",
            "--device", "cpu", *[a for k, v in TINY.items() if k != "train.device" for a in ("--set", f"{k}={v}")], *extra]


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            **extra}


def _rank_logs(logs: Path, rank: int, stream: str) -> str:
    return "".join(p.read_text(errors="replace") for p in logs.rglob(f"{rank}/{stream}.log"))


def test_three_processes_train_in_step_count_images_once_and_wait_out_a_long_evaluation(tmp_path):
    run, logs = tmp_path / "run", tmp_path / "logs"
    # A 1 s step... no: each stand-in batch sleeps 2 s, so every evaluation outlasts the 3 s collective timeout.
    out = subprocess.run(_torchrun_command(run, 3, logs, "--steps", "20", "--batch-size", "48",
                                           "--set", "train.checkpoint_every=10", "--set", "train.eval_every=10",
                                           "--set", "train.eval_num=500", "--set", "train.eval_metrics=fid",
                                           "--set", "train.feature_extractor=standin_features:make_slow"),
                         capture_output=True, text=True, timeout=400, env=_env(PURRGAN_DIST_TIMEOUT_S="3"))
    assert out.returncode == 0, _rank_logs(logs, 0, "stderr")[-3000:] + out.stderr[-2000:]
    state, _ = checkpoint.load_latest(run)
    assert state["world_size"] == 3 and state["step"] == 20 and len(set(state["rank_checksums"])) == 1
    rows = read_metrics(run)
    for previous, row in zip(rows, rows[1:]):  # 48 images a step over all ranks, counted once
        expected = 48 * (row["step"] - previous["step"]) / (row["elapsed_s"] - previous["elapsed_s"])
        assert 0.8 * expected < row["images_per_s"] < 1.25 * expected
    assert (run / "eval.csv").read_text().count("\n") == 3  # header + steps 10 and 20
    assert "Traceback" not in _rank_logs(logs, 1, "stderr") + _rank_logs(logs, 2, "stderr")


def _worker_pids(torchrun_pid: int) -> dict[int, int]:
    """Return {rank: pid} of a torchrun's workers (from their environments)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        ranks = [v[5:] for v in environ if v.startswith(b"RANK=")]
        if parent == torchrun_pid and ranks:
            found[int(ranks[0])] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks' processes through /proc (Linux)")
def test_a_rank_killed_mid_run_stops_the_other_with_one_line_and_three_processes_resume_at_the_same_data_position(tmp_path):
    run, logs = tmp_path / "run", tmp_path / "logs"
    command = _torchrun_command(run, 2, logs, "--steps", "100000", "--batch-size", "48", "--set", "train.checkpoint_every=5")
    started = time.monotonic()
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        while not (run / "checkpoints" / "last-1.safetensors").exists():  # two checkpoints: well into training
            assert job.poll() is None and time.monotonic() - started < 120, _rank_logs(logs, 0, "stderr")[-2000:]
            time.sleep(0.2)
        os.kill(_worker_pids(job.pid)[1], signal.SIGKILL)
        job.wait(timeout=60)  # not a hang
    finally:
        if job.poll() is None:
            job.kill()
    errors = [line for line in _rank_logs(logs, 0, "stderr").splitlines() if line.startswith("purrgan: error:")]
    assert len(errors) == 1 and "lost contact" in errors[0] and "--resume" in errors[0], _rank_logs(logs, 0, "stderr")
    assert "Traceback" not in _rank_logs(logs, 0, "stderr")
    saved, _ = checkpoint.load_latest(run)
    step = saved["step"]
    assert step >= 5 and step % 5 == 0
    out = subprocess.run(_torchrun_command(run, 3, tmp_path / "logs3", "--resume", "--steps", str(step + 7),
                                           "--batch-size", "48"),
                         capture_output=True, text=True, timeout=300, env=_env())
    assert out.returncode == 0, _rank_logs(tmp_path / "logs3", 0, "stderr")[-3000:]
    resumed, _ = checkpoint.load_latest(run)
    assert resumed["step"] == step + 7 and resumed["world_size"] == 3 and len(set(resumed["rank_checksums"])) == 1
    per_epoch = 1797 // 48
    position = lambda s: s["loader"]["epoch"] * per_epoch + s["loader"]["index"]  # noqa: E731 - global batches drawn
    assert position(saved) == step and position(resumed) == step + 7  # the 3 ranks went on from the same batch
