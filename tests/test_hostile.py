"""Hostile input and faults, family by family: nothing written outside the run folder, nothing lost, one line.

Each table row is a case a hostile tester tried against purrgan 0.1 (where it gave a traceback, a wrong
result or a hang); the tests run as root on CI, so "cannot be written" is made with a path under a
regular file, which no user can write.
"""

import errno
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, tiny_config
from purrgan import checkpoint, load_generator
from purrgan.cli import main
from purrgan.config import to_toml
from purrgan.data import load_images
from purrgan.data import archives
from purrgan.errors import PurrganError
from purrgan.gif import frames
from purrgan.monitor import read_metrics
from purrgan.loop import train

CLI_TINY = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")] + ["--quiet", "--logger", "none"]


def _png(seed=0, size=24, mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(buffer, "PNG")
    return buffer.getvalue()


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def _one_line_error(capsys, code, expected):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("purrgan: error: ") and "Traceback" not in err, err
    assert expected in err, err


# ---------------------------------------------------------------- 1. never outside the run folder


def test_absolute_member_names_give_real_class_names_and_per_class_files_stay_in_the_run(tmp_path):
    archive = _tar(tmp_path / "pets.tar", [(f"/{c}/{i}.png", _png(10 * k + i)) for k, c in enumerate(("cat", "dog"))
                                          for i in range(3)] + [("../../escape.png", _png(99))])
    data = load_images(str(archive), 32, 3)
    assert data.class_names == ["cat", "dog"] and len(data) == 6 and data.skipped == 1  # ".." is refused and counted
    run = tmp_path / "run"
    assert main(["train", "--data", str(archive), "--out", str(run), "--steps", "2", "--batch-size", "6",
                 "--set", "model.conditional=per-class", "--set", "data.channels=3", "--set", "model.g_width=4",
                 "--set", "model.d_width=4", "--set", "train.num_samples=4", *CLI_TINY[-3:]]) == 0
    assert sorted(p.name for p in (run / "generators").iterdir()) == ["cat.safetensors", "dog.safetensors"]
    assert not (tmp_path / ".safetensors").exists() and not list(tmp_path.glob("*.safetensors"))


@pytest.mark.parametrize("name, expected", [
    ("/g000.png", "g000.png"), ("imgs/./g001.png", "imgs/g001.png"), ("C:\\pics\\a.png", "pics/a.png"),
    ("a/../../b.png", None), ("..", None), ("/", None),
])
def test_member_names_are_made_relative_or_refused(name, expected):
    assert archives.clean_member_name(name) == expected


@pytest.mark.parametrize("folder, cleaned", [("dog", "dog"), ("cats:big", "catsbig"), ("..", None), ("a/b", "ab"),
                                             ("  spaced  ", "spaced"), ("tab\tname", "tabname")])
def test_class_names_from_folders_are_file_name_safe(folder, cleaned):
    from purrgan.data.sources import clean_class_name

    assert clean_class_name(folder) == cleaned


# ---------------------------------------------------------------- 2. the crash window of checkpoint rotation


def test_a_rotation_cut_short_is_recovered_and_a_new_run_there_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(train__steps=20, train__checkpoint_every=10), run)
    folder = run / "checkpoints"
    newest = checkpoint.load(folder / "last.safetensors")
    # What a kill -9 between "last -> last-1" and ".new -> last" in purrgan 0.1 left: .new complete, no last.
    os.replace(folder / "last.safetensors", folder / checkpoint.NEW)
    (folder / ".last.safetensors.tmp-99999").write_bytes(b"half")  # a killed write's leftover
    state, source = checkpoint.load_latest(run)
    assert source.name == checkpoint.NEW and state["step"] == newest["step"] == 20
    assert main(["train", "--out", str(run), *CLI_TINY, "--steps", "30"]) == 2
    assert "already holds a run; add --resume" in capsys.readouterr().err
    assert (folder / checkpoint.NEW).exists() and len(read_metrics(run)) == 2  # nothing was deleted or cut
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--steps", "30"]) == 0
    assert load_generator(run).step == 30 and not list(folder.glob(".*tmp-*"))


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_every_moment_of_a_rotation_leaves_the_newest_complete_checkpoint_loadable(tmp_path, monkeypatch, crash_at):
    folder = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        checkpoint.save(folder, {"step": step, "w": torch.ones(2)}, keep=3)
    calls, real_replace = {"n": 0}, os.replace

    def crashing(a, b):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt  # the process dies here
        return real_replace(a, b)

    monkeypatch.setattr(checkpoint.os, "replace", crashing)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(folder, {"step": 4, "w": torch.ones(2)}, keep=3)
    monkeypatch.undo()
    state, _ = checkpoint.load_latest(tmp_path)
    assert state["step"] == (3 if crash_at == 1 else 4)  # the new file counts once it is complete on disk
    assert (folder / "last.safetensors").exists()  # never absent


def test_a_plain_rerun_is_refused_when_only_metrics_are_left(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 10}\n')
    assert main(["train", "--out", str(run), *CLI_TINY]) == 2
    assert "already holds a run" in capsys.readouterr().err and (run / "metrics.jsonl").read_text() == '{"step": 10}\n'


# ---------------------------------------------------------------- 3. one training per run folder


def _start(run, *extra):
    command = [sys.executable, "-m", "purrgan", "train", "--out", str(run), *CLI_TINY, "--steps", "100000", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, process, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline
        time.sleep(0.1)


def test_a_second_training_on_the_same_folder_is_refused_and_a_killed_lock_is_not_stale(tmp_path):
    run = tmp_path / "run"
    first = _start(run)
    try:
        _wait_for(run / "checkpoints" / "last.safetensors", first)
        for extra in ([], ["--resume"]):
            second = subprocess.run([sys.executable, "-m", "purrgan", "train", "--out", str(run), *CLI_TINY, *extra],
                                    capture_output=True, text=True, timeout=120)
            assert second.returncode == 2
            err = second.stderr.strip()
            assert ("in use by another training (pid" in err or "already holds a run" in err) and len(err.splitlines()) == 1
        assert (run / "config.toml").read_text().count("[train]") == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    resumed = subprocess.run([sys.executable, "-m", "purrgan", "train", "--out", str(run), "--resume", "--quiet",
                              "--max-minutes", "0.01"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr  # the lock of a killed process is gone with it
    with open(run / "metrics.csv") as handle:
        assert sum(line.startswith("step,") for line in handle) == 1  # one header: one run


# ---------------------------------------------------------------- 4. the hash covers the whole file


def test_an_edited_header_is_refused(tmp_path):
    blob = checkpoint.encode({"step": 20, "w": torch.ones(3)})
    edited = blob.replace(b'{\\"v\\": 20}', b'{\\"v\\": 29}', 1)
    assert edited != blob and len(edited) == len(blob)
    with pytest.raises(PurrganError, match="corrupt or was edited"):
        checkpoint.decode(edited, "edited.safetensors")
    assert checkpoint.decode(blob)["step"] == 20


# ---------------------------------------------------------------- 5. half-written side files


def test_resume_and_report_survive_a_cut_metrics_line_and_a_cut_gif(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train__steps=40, train__sample_every=10, train__checkpoint_every=20), run)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 50, "d_lo')  # a full disk stopped this line
    gif = (run / "progress.gif").read_bytes()
    (run / "progress.gif").write_bytes(gif[: len(gif) - 300])  # the last frame cut off
    assert main(["report", str(run)]) == 0
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--steps", "60"]) == 0
    assert [r["step"] for r in read_metrics(run)] == [10, 20, 30, 40, 50, 60]
    assert [f.step for f in frames((run / "progress.gif").read_bytes())] == [0, 10, 20, 30, 40, 50, 60]  # 40 rebuilt
    assert Image.open(run / "progress.gif").n_frames == 7


# ---------------------------------------------------------------- 6. silent surprises


def test_out_inside_data_epochs_zero_and_a_tiny_truncation(tmp_path, capsys, trained_run):
    data = tmp_path / "pics"
    data.mkdir()
    for i in range(4):
        (data / f"{i}.png").write_bytes(_png(i))
    for out in (data, data / "runs" / "cats"):
        _one_line_error(capsys, main(["train", "--data", str(data), "--out", str(out), *CLI_TINY]), "is inside the data folder")
    assert not (data / "runs").exists()
    _one_line_error(capsys, main(["train", "--epochs", "0", "--out", str(tmp_path / "r")]), "--epochs must be positive")
    started = time.perf_counter()
    assert main(["sample", str(trained_run), "--truncation", "1e-9", "--num", "16", "--out", str(tmp_path / "t.png")]) == 0
    assert time.perf_counter() - started < 30
    images = load_generator(trained_run).sample(4, seed=0, truncation=1e-9)
    torch.testing.assert_close(images[0], images[3])  # every latent is 0: one picture


# ---------------------------------------------------------------- 7. one bad file is skipped and counted


def _zip_with_flag(path, flag_bit=0, method=None):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("good1.png", _png(1))
        archive.writestr("bad.png", _png(2))
        archive.writestr("good2.png", _png(3))
    blob = bytearray(path.read_bytes())
    for signature, flag_offset, method_offset in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = 0
        while (start := blob.find(signature, start)) >= 0:
            name_offset = 30 if signature == b"PK\x03\x04" else 46
            length = int.from_bytes(blob[start + (26 if signature == b"PK\x03\x04" else 28):][:2], "little")
            if bytes(blob[start + name_offset:start + name_offset + length]) == b"bad.png":
                blob[start + flag_offset] |= flag_bit
                if method is not None:
                    blob[start + method_offset:start + method_offset + 2] = method.to_bytes(2, "little")
            start += 4
    path.write_bytes(bytes(blob))
    return path


def _nonutf8_folder(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.png").write_bytes(_png(i))
    with open(os.path.join(os.fsencode(folder), b"\xff\xfe.png"), "wb") as handle:
        handle.write(_png(7))
    return folder


def _unreadable_file(tmp_path, monkeypatch):
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(_png(i))
    real_open = open

    def guarded(path, *args, **kwargs):
        if str(path).endswith("1.png"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(archives, "open", guarded, raising=False)
    return folder


def _unreadable_folder(tmp_path, monkeypatch):
    folder = tmp_path / "pics"
    (folder / "locked").mkdir(parents=True)
    for i in range(2):
        (folder / f"{i}.png").write_bytes(_png(i))
    (folder / "locked" / "x.png").write_bytes(_png(5))
    real_scandir = os.scandir

    def guarded(path):
        if str(path).endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(archives.os, "scandir", guarded)
    return folder


def _pillow_not_implemented(tmp_path, monkeypatch):
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(_png(i))
    from purrgan.data import images

    real_open = images.Image.open
    count = {"n": 0}

    def mutated(*args, **kwargs):
        count["n"] += 1
        if count["n"] == 2:
            raise NotImplementedError("a mutated chunk")
        return real_open(*args, **kwargs)

    monkeypatch.setattr(images.Image, "open", mutated)
    return folder


def _oversized_member(tmp_path, monkeypatch):
    monkeypatch.setattr(archives, "MAX_FILE_BYTES", 3000)
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("small1.png", _png(1, size=8))
        archive.writestr("small2.png", _png(2, size=8))
        archive.writestr("huge.png", b"\x89PNG" + b"\0" * 100_000)  # compresses to little, expands past the cap
    return path


BAD_FILES = {
    "a file name that is not UTF-8": lambda tmp, mp: _nonutf8_folder(tmp),
    "an unreadable file": _unreadable_file,
    "an encrypted zip member": lambda tmp, mp: _zip_with_flag(tmp / "enc.zip", flag_bit=0x1),
    "a deflate64 zip member": lambda tmp, mp: _zip_with_flag(tmp / "d64.zip", method=9),
    "Pillow raising NotImplementedError": _pillow_not_implemented,
    "a folder without read permission": _unreadable_folder,
    "an archive member over the size cap": _oversized_member,
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_one_bad_file_is_skipped_and_counted(case, tmp_path, monkeypatch):
    source = BAD_FILES[case](tmp_path, monkeypatch)
    data = load_images(str(source), 16, 3)
    assert len(data) == 2 and data.skipped == 1, (len(data), data.skipped)


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = 255  # white left half, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    Image.fromarray(array).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    from purrgan.data.images import decode_image

    upright = decode_image(tmp_path / "photo.jpg", 20, 3)  # viewed: 20 wide, 40 tall, white on top
    assert upright[:, :8].mean() > 200 and upright[:, 12:].mean() < 50


def test_a_folder_nested_1100_deep(tmp_path):
    folder = tmp_path / "deep"
    folder.mkdir()
    path = folder
    for _ in range(1100):  # os.makedirs itself recurses: one level at a time
        path = path / "d"
        path.mkdir()
    (path / "a.png").write_bytes(_png(1))
    (folder / "b.png").write_bytes(_png(2))
    try:
        assert len(load_images(str(folder), 16, 3)) == 2
    finally:  # shutil.rmtree recurses too: remove it bottom-up, so pytest's clean-up does not trip on it
        (path / "a.png").unlink()
        while path != folder:
            path.rmdir()
            path = path.parent


# ---------------------------------------------------------------- tracebacks -> one line, by family


def _file(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    return blocker  # anything under it cannot be created, not even by root


OUTPUT_PATHS = {
    "train into a path under a file": lambda t, r: ["train", "--out", str(_file(t) / "run"), *CLI_TINY],
    "sample --out a folder": lambda t, r: ["sample", str(r), "--out", str(t)],
    "sample --out under a file": lambda t, r: ["sample", str(r), "--out", str(_file(t) / "g.png")],
    "sample --separate an existing file": lambda t, r: ["sample", str(r), "--out", str(t / "g.png"), "--separate", str(_file(t))],
    "export under a file": lambda t, r: ["export", str(r), "--format", "safetensors", "--out", str(_file(t) / "g.safetensors")],
    "export torchscript under a file": lambda t, r: ["export", str(r), "--format", "torchscript", "--out", str(_file(t) / "g.pt")],
    "interpolate under a file": lambda t, r: ["interpolate", str(r), "--out", str(_file(t) / "w.gif"), "--steps", "3", "--rows", "2"],
    "report under a file": lambda t, r: ["report", str(r), "--out", str(_file(t) / "r.html")],
    "data prepare under a file": lambda t, r: ["data", "prepare", "digits", "--out", str(_file(t) / "d.safetensors")],
    "data show under a file": lambda t, r: ["data", "show", "digits", "--out", str(_file(t) / "real.png")],
}


@pytest.mark.parametrize("case", OUTPUT_PATHS, ids=list(OUTPUT_PATHS))
def test_impossible_output_paths_give_one_line(case, tmp_path, capsys, trained_run):
    _one_line_error(capsys, main(OUTPUT_PATHS[case](tmp_path, trained_run)), "")


def test_a_full_disk_while_a_grid_is_saved_warns_once_and_training_goes_on(tmp_path, monkeypatch, caplog):
    from purrgan import monitor

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(monitor, "save_image", full)
    run = tmp_path / "run"
    result = train(tiny_config(train__steps=60, train__sample_every=20), run)
    assert result.steps == 60 and load_generator(run).step == 60
    assert caplog.text.count("could not write the sample grids (No space left on device)") == 1


def _edit_state(run, edit):
    state, _ = checkpoint.load_latest(run)
    edit(state)
    (run / "checkpoints" / "last.safetensors").write_bytes(checkpoint.encode(state))
    (run / "checkpoints" / "last-1.safetensors").unlink(missing_ok=True)


def _deep_skeleton(run):
    depth = 50_000  # written as text: json.dumps itself cannot go this deep
    skeleton = '{"d": [["step", {"v": 1}], ["x", ' + '{"l": [' * depth + '{"v": 1}' + ']}' * depth + ']]}'

    blob = bytearray(checkpoint.encode({"step": 1}))
    header_end = 8 + int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:header_end])
    header["__metadata__"]["skeleton"] = skeleton
    text = json.dumps(header).encode()
    (run / "checkpoints" / "last.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + bytes(blob[header_end:]))
    (run / "checkpoints" / "last-1.safetensors").unlink(missing_ok=True)


EDITED_CHECKPOINTS = {
    "a width that is text": lambda run: _edit_state(run, lambda s: s["config"]["model"].update(g_width="wide")),
    "an impossible resolution": lambda run: _edit_state(run, lambda s: s["config"]["data"].update(resolution=48)),
    "a huge resolution": lambda run: _edit_state(run, lambda s: s["config"]["data"].update(resolution=10 ** 6)),
    "a step that is text": lambda run: _edit_state(run, lambda s: s.update(step="twenty")),
    "no generator": lambda run: _edit_state(run, lambda s: s.pop("generator")),
    "a config that is a list": lambda run: _edit_state(run, lambda s: s.update(config=[1, 2])),
    "a skeleton 50,000 deep": _deep_skeleton,
}


@pytest.mark.parametrize("case", EDITED_CHECKPOINTS, ids=list(EDITED_CHECKPOINTS))
def test_edited_checkpoints_give_one_line_for_sample_and_resume(case, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(train__steps=2), run)
    EDITED_CHECKPOINTS[case](run)
    _one_line_error(capsys, main(["sample", str(run), "--out", str(tmp_path / "g.png")]), "")
    code = main(["train", "--out", str(run), "--resume", "--quiet", "--steps", "4"])
    _one_line_error(capsys, code, "")


@pytest.mark.parametrize("metadata, expected", [
    ({"format": "purrgan-generator-1", "config": "{not json"}, "is not a loadable purrgan generator"),
    ({"format": "purrgan-generator-1", "config": json.dumps({"data": {"resolution": 48}})}, "does not support resolution 48"),
    ({"format": "purrgan-generator-1", "config": "{}", "classes": "[1, 2]"}, "is not a loadable purrgan generator"),
])
def test_edited_exports_give_one_line(metadata, expected, tmp_path, capsys):
    from safetensors.torch import save_file

    path = tmp_path / "g.safetensors"
    save_file({"w": torch.ones(1)}, str(path), metadata)
    _one_line_error(capsys, main(["sample", str(path), "--out", str(tmp_path / "g.png")]), expected)


CONFIG_VALUES = {
    "a seed of 2^63": (["--seed", str(2 ** 63)], "'train.seed' is 9223372036854775808; the most it can be"),
    "beta1 = 2": (["--set", "optim.beta1=2"], "'optim.beta1' must be at least 0 and below 1"),
    "lr = nan": (["--set", "optim.lr_g=nan"], "'optim.lr_g' must be a finite number"),
    "lr = inf": (["--set", "optim.lr_d=inf"], "'optim.lr_d' must be a finite number"),
    "a huge resolution": (["--set", "data.resolution=100000"], "'data.resolution' is 100000; the most it can be is 1024"),
    "batch size 0": (["--batch-size", "0"], "--batch-size must be positive"),
    "a device that does not exist": (["--device", "tpu"], "allowed values: auto, cpu, cuda, cuda:N"),
}


@pytest.mark.parametrize("case", CONFIG_VALUES, ids=list(CONFIG_VALUES))
def test_config_values_out_of_range_give_one_line(case, tmp_path, capsys):
    args, expected = CONFIG_VALUES[case]
    _one_line_error(capsys, main(["train", "--out", str(tmp_path / "r"), *args]), expected)
    assert not (tmp_path / "r").exists()


def test_a_latin1_config_file_and_a_negative_nrow(tmp_path, capsys, trained_run):
    path = tmp_path / "c.toml"
    path.write_bytes('description = "chats mignons \xe9t\xe9"\n'.encode("latin-1"))
    _one_line_error(capsys, main(["train", "--config", str(path), "--out", str(tmp_path / "r")]), "is not UTF-8 text")
    _one_line_error(capsys, main(["sample", str(trained_run), "--nrow", "-1", "--out", str(tmp_path / "g.png")]),
                    "--nrow must be positive")


@pytest.mark.parametrize("spec, expected", [("os:getcwd", "returned str, not a callable module"),
                                            ("json", "not found or not a factory"),
                                            ("no_such_module_xyz:make", "not found or not a factory")])
def test_feature_extractors_that_are_not_factories(spec, expected, capsys, trained_run):
    _one_line_error(capsys, main(["evaluate", str(trained_run), "--feature-extractor", spec]), expected)


def test_wandb_without_credentials_fails_before_anything_is_written(tmp_path, capsys, monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kwargs: 1 / 0))
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    run = tmp_path / "run"
    _one_line_error(capsys, main(["train", "--out", str(run), "--logger", "wandb", *CLI_TINY[:-3]]),
                    "wandb has no credentials here: run `wandb login`")
    assert not run.exists()
    monkeypatch.setenv("WANDB_MODE", "offline")  # credentials are fine, but wandb itself fails to start
    _one_line_error(capsys, main(["train", "--out", str(run), "--logger", "wandb", *CLI_TINY[:-3]]),
                    "wandb could not start (division by zero)")
    assert not (run / "checkpoints").exists()
    assert main(["train", "--out", str(run), *CLI_TINY, "--steps", "2"]) == 0  # the next try is not refused


# ---------------------------------------------------------------- the last corners of "your runs are safe"


def test_a_damaged_last_checkpoint_is_set_aside_and_the_good_one_stays_a_fallback(tmp_path, caplog):
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--quiet", "--logger", "none", *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]]
    assert main([*args, "--steps", "20", "--set", "train.checkpoint_every=10"]) == 0
    folder = run / "checkpoints"
    good = (folder / "last-1.safetensors").read_bytes()
    (folder / "last.safetensors").write_bytes((folder / "last.safetensors").read_bytes()[:1000])  # cut off
    assert main([*args, "--resume", "--steps", "40", "--set", "train.checkpoint_every=10"]) == 0
    assert "set last.safetensors aside as last.safetensors.rejected-" in caplog.text
    assert len(list(folder.glob("last.safetensors.rejected-*"))) == 1
    # Resumed from the good step-10 file; two rotations later last and last-1 are both new and good.
    for name in ("last.safetensors", "last-1.safetensors"):
        assert checkpoint.load(folder / name)["step"] in (30, 40)
    assert good != (folder / "last-1.safetensors").read_bytes()


def test_a_folder_whose_first_session_died_before_a_checkpoint_is_no_dead_end(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    tiny = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    (run / "config.toml").write_text(to_toml(tiny_config(train__steps=12)))
    (run / "metrics.csv").write_text("")
    (run / "metrics.jsonl").write_text("")
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--logger", "none"]) == 0  # starts at step 0
    assert checkpoint.load(run / "checkpoints" / "last.safetensors")["step"] == 12
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.toml").write_text(to_toml(tiny_config()))
    (fresh / "metrics.csv").write_text("")
    assert main(["train", "--out", str(fresh), "--steps", "3", "--quiet", "--logger", "none", *tiny]) == 0  # or afresh


def test_torchscript_export_to_an_unwritable_place_is_one_line(trained_run, tmp_path, capsys):
    # TorchScript's own writer raised RuntimeError (a traceback) where ONNX and safetensors said one line.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    code = main(["export", str(trained_run), "--format", "torchscript", "--out", str(blocker / "g.pt")])
    _one_line_error(capsys, code, "could not write")


def test_torchscript_export_when_the_writer_fails_is_one_line(trained_run, tmp_path, capsys, monkeypatch):
    def full_disk(path, blob, what=""):
        raise PurrganError(f"could not write {path}: No space left on device; {what}")

    monkeypatch.setattr("purrgan.export.write_atomic", full_disk)
    code = main(["export", str(trained_run), "--format", "torchscript", "--out", str(tmp_path / "g.pt")])
    _one_line_error(capsys, code, "No space left on device")


def test_sample_follows_the_pictures_extension_or_refuses_another(trained_run, tmp_path, capsys):
    _one_line_error(capsys, main(["sample", str(trained_run), "--out", str(tmp_path / "x.txt")]), "ending in .png")
    assert not (tmp_path / "x.txt").exists()
    assert main(["sample", str(trained_run), "--num", "4", "--out", str(tmp_path / "x.jpg")]) == 0
    assert (tmp_path / "x.jpg").read_bytes()[:2] == b"\xff\xd8"  # a JPEG, as its name says
    _one_line_error(capsys, main(["data", "info", "digits", "--size", "-3"]), "--size must be between 1 and 1024")
