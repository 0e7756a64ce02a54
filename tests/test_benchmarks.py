"""The benchmark scripts that run where no test can: they must work the first time they get a device."""

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _gpu_folder(folder: Path) -> Path:
    """What benchmarks/gpu_pack.py carries, in miniature: purrgan's wheel, a yardstick, a cat-faces archive."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import quality

    (folder / "wheels").mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(folder / "wheels"), str(ROOT)], check=True)
    torch.save({"weights": quality.Yardstick().state_dict(), "accuracy": 0.1}, folder / "yardstick.pt")
    rng = np.random.default_rng(0)
    with tarfile.open(folder / "cats64-kaggle.tar.gz", "w:gz") as tar:
        for i in range(40):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
            info = tarfile.TarInfo(f"cats/{i:03d}.jpg")
            info.size = buffer.tell()
            buffer.seek(0)
            tar.addfile(info, buffer)
    return folder


def _gpu_sh(tmp_path, gpu_dir, *args):
    env = {**os.environ, "GPU_DIR": str(gpu_dir), "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), *args], capture_output=True, text=True, env=env,
                          timeout=900)


@pytest.mark.slow
def test_the_gpu_script_runs_every_part_end_to_end_on_the_cpu(tmp_path):
    out = _gpu_sh(tmp_path, _gpu_folder(tmp_path / "gpu"), "--dry-run")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = (tmp_path / "out" / "device-results.md").read_text()
    for name in ("DCGAN-64 training, float32 (TF32), eager", "DCGAN-64 training, bf16, compiled", "DCGAN-64 sampling",
                 "r3gan-cats64-gpu training", "sngan-cifar10 training", "cats quality run (best-cats64)"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {name}"))
        assert "failed" not in row and "torch" not in row.split("|")[1] and "benchmarks/device.py --only" in row, row
        assert torch.__version__ in row and "CPU" in row  # every row names the device, the torch version, the command
    assert (tmp_path / "out" / "cats-grid.png").is_file() and "from " + str(tmp_path / "work" / "site") in out.stdout


def test_the_gpu_script_names_every_missing_piece_in_one_line_each_within_seconds(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    out = _gpu_sh(tmp_path, empty)
    assert out.returncode == 2
    lines = out.stdout.strip().splitlines()
    assert all(line.startswith("gpu.sh: ") for line in lines)
    for piece in ("cats64-kaggle.tar.gz", "yardstick.pt", "purrgan-*.whl"):
        assert sum(piece in line for line in lines) == 1, piece
    if not torch.cuda.is_available():
        assert any("CUDA: torch sees no GPU" in line for line in lines)


def test_the_gallery_puts_each_runs_grid_beside_its_nearest_training_images(trained_run, tmp_path):
    from PIL import Image

    out = tmp_path / "gallery.jpg"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gallery.py"), str(trained_run), "--nearest",
                           "--num", "16", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    nearest = Image.open(trained_run / "samples" / "nearest.png")
    with Image.open(out) as picture:
        grid_height = picture.height
        # the 4x4 grid, a gap, then nearest.png scaled to the grid's height (its 4 columns: a sample, 3 neighbours)
        assert picture.width > grid_height + 6 + nearest.width * grid_height / nearest.height - 2
    bare = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gallery.py"), str(tmp_path), "--nearest",
                           "--out", str(tmp_path / "x.jpg")], capture_output=True, text=True, timeout=300)
    assert bare.returncode != 0 and len(bare.stderr.strip().splitlines()) == 1  # no run: one line
