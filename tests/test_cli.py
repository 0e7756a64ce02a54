import subprocess
import sys

import pytest
import torch
from PIL import Image

from purrgan import load_generator, to_pil
from purrgan.cli import main


@pytest.mark.parametrize("command", [[], ["train"], ["sample"], ["presets"], ["evaluate"], ["interpolate"], ["export"],
                                     ["report"], ["data"], ["data", "list"], ["data", "download"], ["data", "prepare"],
                                     ["data", "info"], ["data", "show"]])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(command + ["--help"])
    assert exit_.value.code == 0
    assert "usage: purrgan" in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "purrgan", "presets"], capture_output=True, text=True, check=True)
    assert "dcgan-digits" in out.stdout


def test_presets_says_which_recipe_is_for_which_device():
    from purrgan.config import RECOMMENDED, preset_names

    out = subprocess.run([sys.executable, "-m", "purrgan", "presets"], capture_output=True, text=True, check=True).stdout
    assert {use.rsplit(" on a ", 1)[1] for use, _, _ in RECOMMENDED} == {"CPU", "GPU"}
    for use, name, _ in RECOMMENDED:
        assert name in preset_names()  # a recommendation names a shipped preset
        assert f"{use}: {name}" in out


@pytest.mark.parametrize("args, message", [
    (["train", "--preset", "nope"], "purrgan: error: unknown preset 'nope'; choose one of:"),
    (["train", "--set", "train.stepz=3"], "purrgan: error: unknown key 'train.stepz'"),
    (["train", "--set", "nonsense"], "purrgan: error: --set needs SECTION.KEY=VALUE"),
    (["train", "--data", "/no/such/folder"], "purrgan: error: data path /no/such/folder does not exist"),
    (["train", "--data", "cifar11"], "is neither a known data set (digits, cats, cifar10, mnist"),
    (["sample", "/no/such/run"], "purrgan: error: /no/such/run does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path):
    assert main(args + (["--out", str(tmp_path / "r")] if args[0] == "train" else [])) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_train_sample_and_resume_from_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    tiny = ["--set", "model.g_width=8", "--set", "model.d_width=8", "--batch-size", "32", "--quiet", "--device", "cpu"]
    assert main(["train", "--out", str(run), "--steps", "6"] + tiny) == 0
    assert main(["train", "--out", str(run), "--steps", "12", "--resume", "--quiet"]) == 0
    assert load_generator(run).step == 12
    grid = tmp_path / "grid.png"
    assert main(["sample", str(run), "--num", "9", "--out", str(grid), "--seed", "1", "--separate", str(tmp_path / "each")]) == 0
    assert Image.open(grid).size == (3 * 34 + 2, 3 * 34 + 2)
    assert len(list((tmp_path / "each").glob("*.png"))) == 9
    assert main(["train", "--out", str(tmp_path / "other"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_python_api_sampling_is_deterministic_per_seed(trained_run):
    generator = load_generator(trained_run)
    a, b, c = generator.sample(6, seed=5), generator.sample(6, seed=5), generator.sample(6, seed=6)
    assert a.shape == (6, 1, 32, 32) and a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    images = to_pil(a)
    assert len(images) == 6 and images[0].size == (32, 32) and images[0].mode == "L"
    assert load_generator(trained_run / "checkpoints" / "last.safetensors").step == 300


def test_data_flag_on_the_default_preset_keeps_the_sources_own_size(tmp_path):
    import numpy as np

    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    run = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--out", str(run), "--steps", "1", "--batch-size", "4", "--quiet",
                 "--set", "model.g_width=4", "--set", "model.d_width=4", "--set", "train.num_samples=4"]) == 0
    assert load_generator(run).sample(1, seed=0).shape == (1, 3, 64, 64)
