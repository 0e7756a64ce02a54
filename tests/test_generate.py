"""Using a trained generator: sampling, interpolation, export round trips, the model card, the Python API."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from purrgan import load_generator, to_pil
from purrgan.cli import main
from purrgan.export import export
from purrgan.generate import interpolate, slerp
from purrgan.loop import train


def test_model_card_is_written_into_the_run(trained_run):
    card = (trained_run / "MODEL.md").read_text()
    assert "float32 (N, 16)" in card and "(N, 1, 32, 32) in [-1, 1]" in card
    assert "steps: 300 generator updates" in card and "data: `digits`" in card and "Intended use" in card


def test_sample_truncation_and_determinism(trained_run, tmp_path):
    generator = load_generator(trained_run)
    full, truncated = generator.sample(64, seed=3), generator.sample(64, seed=3, truncation=0.5)
    assert full.shape == truncated.shape
    assert truncated.std(0).mean() < full.std(0).mean()  # less variety, as the trick promises
    assert main(["sample", str(trained_run), "--num", "8", "--seed", "3", "--truncation", "0.7", "--out", str(tmp_path / "a.png")]) == 0
    assert main(["sample", str(trained_run), "--num", "8", "--seed", "3", "--truncation", "0.7", "--out", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_slerp_keeps_the_norm_and_hits_the_ends():
    a, b = torch.randn(1, 100), torch.randn(1, 100)
    path = interpolate(a[0], b[0], 9, spherical=True)
    torch.testing.assert_close(path[0], a[0])
    torch.testing.assert_close(path[-1], b[0], rtol=1e-4, atol=1e-4)
    norms = path.norm(dim=1)
    assert norms.min() > 0.8 * min(a.norm(), b.norm())  # no dip through the low-density centre
    linear = interpolate(a[0], b[0], 9, spherical=False)
    assert linear.norm(dim=1)[4] < norms[4]
    torch.testing.assert_close(slerp(a, a, torch.tensor([[0.3]])), a)  # parallel latents


def test_interpolate_grid_and_looping_gif(trained_run, tmp_path):
    grid = tmp_path / "walk.png"
    assert main(["interpolate", str(trained_run), "--steps", "6", "--rows", "3", "--slerp", "--out", str(grid)]) == 0
    assert Image.open(grid).size == (6 * 34 + 2, 3 * 34 + 2)
    gif = tmp_path / "walk.gif"
    assert main(["interpolate", str(trained_run), "--steps", "5", "--rows", "4", "--keyframes", "3", "--out", str(gif)]) == 0
    frames = Image.open(gif)
    assert frames.n_frames == 15 and frames.info["loop"] == 0
    first = np.asarray(frames.convert("RGB"), dtype=float)
    frames.seek(1)
    second = np.asarray(frames.convert("RGB"), dtype=float)
    assert np.abs(first - second).mean() > 0  # it moves
    assert main(["interpolate", str(trained_run), "--out", str(tmp_path / "walk.mp4")]) == 2


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cond") / "run"
    train(tiny_config(model__conditional="projection", train__steps=20, data__classes="1,7"), run)
    return run


@pytest.mark.parametrize("conditional", [False, True])
def test_onnx_and_torchscript_round_trips_match_pytorch(conditional, trained_run, conditional_run, tmp_path):
    import onnxruntime

    generator = load_generator(conditional_run if conditional else trained_run)
    z = torch.randn(5, generator.z_dim)
    labels = torch.tensor([0, 1, 1, 0, 1]) if conditional else None
    with torch.no_grad():
        expected = generator(z, labels)

    onnx_file = export(generator, "onnx", tmp_path / "g.onnx")
    session = onnxruntime.InferenceSession(str(onnx_file))
    assert [i.name for i in session.get_inputs()] == (["z", "labels"] if conditional else ["z"])
    assert [o.name for o in session.get_outputs()] == ["images"]
    feeds = {"z": z.numpy(), **({"labels": labels.numpy()} if conditional else {})}
    torch.testing.assert_close(torch.from_numpy(session.run(None, feeds)[0]), expected, rtol=1e-4, atol=1e-5)

    scripted = torch.jit.load(str(export(generator, "torchscript", tmp_path / "g.pt")))  # plain torch, no purrgan code
    with torch.no_grad():
        torch.testing.assert_close(scripted(z, labels) if conditional else scripted(z), expected)

    weights = export(generator, "safetensors", tmp_path / "g.safetensors")
    again = load_generator(weights)
    assert again.classes == generator.classes
    with torch.no_grad():
        torch.testing.assert_close(again(z, labels), expected)
    assert "input `z`: float32" in (tmp_path / "g.MODEL.md").read_text()


def test_export_from_the_cli_and_a_per_class_run_is_refused_whole(trained_run, tmp_path, capsys):
    assert main(["export", str(trained_run), "--format", "onnx", "--out", str(tmp_path / "digits.onnx")]) == 0
    assert (tmp_path / "digits.onnx").stat().st_size > 1000 and (tmp_path / "digits.MODEL.md").is_file()
    run = tmp_path / "per"
    train(tiny_config(model__conditional="per-class", data__classes="0,1", train__steps=2), run)
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "exported one class at a time: purrgan export RUN/generators/<class>.safetensors" in capsys.readouterr().err
    assert main(["export", str(run / "generators" / "0.safetensors"), "--format", "torchscript", "--out", str(tmp_path / "zero.pt")]) == 0


def test_python_api_in_three_lines(trained_run, conditional_run):
    generator = load_generator(trained_run)
    images = generator.sample(16, seed=0)
    assert images.shape == (16, 1, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert to_pil(images)[0].size == (32, 32)
    assert generator.classes == [] and load_generator(conditional_run).classes == ["1", "7"]
    sevens = load_generator(conditional_run).sample(4, seed=0, class_name="7")
    assert sevens.shape == (4, 1, 32, 32)


def test_sampling_streams_chunks_so_any_number_of_images_fits_in_memory(trained_run, monkeypatch):
    from purrgan import generate

    generator = load_generator(trained_run)
    # Ten million images would be 40 GB on the host at once; streamed, the first chunk comes at once.
    first = next(generator.batches(10_000_000, seed=0, batch_size=8))
    assert first.shape == (8, 1, 32, 32) and first.device == generator.device
    whole = generator.sample(50, seed=4)
    for batch_size in (7, 50, 1024):  # the same seed draws the same images however they are chunked
        chunks = list(generator.batches(50, seed=4, batch_size=batch_size))
        assert max(len(c) for c in chunks) == min(batch_size, 50)
        torch.testing.assert_close(torch.cat(chunks), whole)  # convolutions round differently per batch size
    monkeypatch.setattr(generate, "LATENT_BLOCK", 16)  # latents drawn block by block: still one stream per seed
    blocked = generator.sample(50, seed=4, batch_size=10)
    torch.testing.assert_close(generator.sample(50, seed=4, batch_size=3), blocked)


def test_samples_are_drawn_in_the_runs_precision(monkeypatch):
    from purrgan import generate, device

    bf16 = tiny_config(train__amp="bf16")
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert generate.sampling_precision(bf16, torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)  # emulated bf16 would only be slower
    assert generate.sampling_precision(bf16, torch.device("cpu")) is None
    assert generate.sampling_precision(tiny_config(train__amp="off"), torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert generate.sampling_precision(tiny_config(train__amp="auto"), torch.device("cuda")) == torch.bfloat16


def test_sample_streams_single_files_and_caps_the_grid(trained_run, tmp_path, monkeypatch, capsys):
    from purrgan import cli

    monkeypatch.setattr(cli, "GRID_MOST", 10)
    assert main(["sample", str(trained_run), "--num", "12", "--out", str(tmp_path / "grid.png")]) == 2
    assert "add --separate DIR" in capsys.readouterr().err and not (tmp_path / "grid.png").exists()
    assert main(["sample", str(trained_run), "--num", "12", "--seed", "1", "--out", str(tmp_path / "grid.png"),
                 "--separate", str(tmp_path / "single"), "--nrow", "5"]) == 0
    assert len(list((tmp_path / "single").glob("*.png"))) == 12
    with Image.open(tmp_path / "grid.png") as grid:  # 10 images in rows of 5: 2 rows of 34-pixel cells
        assert grid.size == (5 * 34 + 2, 2 * 34 + 2)
    first = np.asarray(Image.open(tmp_path / "single" / "00000.png"))
    expected = np.asarray(to_pil(load_generator(trained_run).sample(12, seed=1))[0])
    np.testing.assert_array_equal(first, expected)


def test_class_grids_name_their_classes_and_separate_refuses_a_folder_with_files(conditional_run, tmp_path, caplog, capsys):
    import logging

    with caplog.at_level(logging.INFO):
        assert main(["sample", str(conditional_run), "--num", "8", "--seed", "0", "--out", str(tmp_path / "grid.png")]) == 0
    assert "one class per column: 1, 7" in caplog.text
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("L"))
    assert grid.shape == (4 * 34 + 2 + 14, 2 * 34 + 2)  # 4 rows of the 2 classes, under a strip of their names
    assert grid[:14].min() < 100 and grid[:14].max() == 255  # dark names on white
    folder = tmp_path / "single"
    folder.mkdir()
    (folder / "mine.png").write_bytes(b"a picture of the user's")
    assert main(["sample", str(conditional_run), "--num", "2", "--out", str(tmp_path / "g.png"), "--separate", str(folder)]) == 2
    assert "already holds files" in capsys.readouterr().err and sorted(p.name for p in folder.iterdir()) == ["mine.png"]
    assert main(["sample", str(conditional_run), "--num", "2", "--out", str(tmp_path / "g.png"), "--separate", str(folder),
                 "--overwrite"]) == 0
