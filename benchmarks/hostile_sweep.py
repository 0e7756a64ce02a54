"""A sweep of hostile command lines against the installed purrgan: each must end in time with exit 0 or with one
line on stderr (exit 2), never a traceback. Prints the counts the issue asks for: tried / one-line errors /
wrong results / hangs. Development tool: `python benchmarks/hostile_sweep.py` (a few minutes on 2 cores).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

TINY = ["--set", "model.g_width=4", "--set", "model.d_width=4", "--batch-size", "8", "--set", "train.num_samples=4",
        "--logger", "none", "--quiet", "--set", "train.amp=off"]


def png(seed: int, size: int = 24, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(buffer, "PNG")
    return buffer.getvalue()


def build(root: Path) -> dict[str, Path]:
    """Hostile inputs on disk."""
    made = {}
    good = root / "good"
    good.mkdir()
    for i in range(12):
        (good / f"{i}.png").write_bytes(png(i))
    made["good"] = good
    bad = root / "bad-files"
    bad.mkdir()
    for i in range(10):
        (bad / f"{i}.png").write_bytes(png(i))
    (bad / "cut.png").write_bytes(png(99)[:40])
    (bad / "text.jpg").write_text("not an image")
    (bad / "empty.png").write_bytes(b"")
    with open(os.path.join(os.fsencode(bad), b"\xff\xfe.png"), "wb") as handle:
        handle.write(png(5))
    made["bad"] = bad
    absolute = root / "absolute.tar"
    with tarfile.open(absolute, "w") as tar:
        for name, blob in [(f"/cat/{i}.png", png(i)) for i in range(6)] + [(f"/dog/{i}.png", png(20 + i)) for i in range(6)] + \
                          [("../../escape.png", png(40)), ("/etc/passwd.png", png(41))]:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    made["absolute"] = absolute
    bomb = root / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(10):
            archive.writestr(f"{i}.png", png(i))
        archive.writestr("huge.png", b"\x89PNG" + b"\0" * (300 * 2 ** 20))
    made["bomb"] = bomb
    empty = root / "empty"
    empty.mkdir()
    made["empty"] = empty
    latin = root / "latin1.toml"
    latin.write_bytes('description = "\xe9t\xe9"\n'.encode("latin-1"))
    made["latin"] = latin
    blocker = root / "a-file"
    blocker.write_text("x")
    made["blocker"] = blocker
    return made


def cases(root: Path, made: dict[str, Path], run: Path) -> list[tuple[str, list[str], str]]:
    """(name, argv, expected: 'ok' or 'error')."""
    out = lambda name: ["--out", str(root / name)]  # noqa: E731
    return [
        ("train on a folder with bad files", ["train", "--data", str(made["bad"]), *out("r1"), "--steps", "2", *TINY], "ok"),
        ("train on an archive with absolute and .. names", ["train", "--data", str(made["absolute"]), *out("r2"), "--steps", "2",
                                                            "--set", "model.conditional=per-class", *TINY], "ok"),
        ("train on a zip with a 300 MB member", ["train", "--data", str(made["bomb"]), *out("r3"), "--steps", "2", *TINY], "ok"),
        ("train on an empty folder", ["train", "--data", str(made["empty"]), *out("r4")], "error"),
        ("train with --data ''", ["train", "--data", "", *out("r5")], "error"),
        ("train with --epochs 0", ["train", "--epochs", "0", *out("r6")], "error"),
        ("train with --steps -5", ["train", "--steps", "-5", *out("r7")], "error"),
        ("train into the data folder", ["train", "--data", str(made["good"]), "--out", str(made["good"] / "run")], "error"),
        ("train with a seed of 2^63", ["train", "--seed", str(2 ** 63), *out("r8")], "error"),
        ("train with beta1 = 2", ["train", "--set", "optim.beta1=2", *out("r9")], "error"),
        ("train with lr = nan", ["train", "--set", "optim.lr_g=nan", *out("r10")], "error"),
        ("train with a Latin-1 config", ["train", "--config", str(made["latin"]), *out("r11")], "error"),
        ("train with a config typo", ["train", "--set", "train.stpes=3", *out("r12")], "error"),
        ("train with an unknown class", ["train", "--data", "digits:classes=eleven", *out("r13")], "error"),
        ("train with an unknown architecture", ["train", "--set", "model.arch=stylegan9", *out("r14")], "error"),
        ("train with rpgan and no gamma", ["train", "--set", "loss.name=rpgan", *out("r15")], "error"),
        ("train with a wrong arch option", ["train", "--set", "model.arch=r3gan", "--set", "model.options.group_size=7", *out("r16")], "error"),
        ("train under a file", ["train", "--out", str(made["blocker"] / "run"), "--steps", "2", *TINY], "error"),
        ("train over an existing run", ["train", "--out", str(run), "--steps", "2", *TINY], "error"),
        ("resume with nothing there", ["train", "--out", str(root / "nothing"), "--resume"], "error"),
        ("wandb without credentials", ["train", "--logger", "wandb", *out("r17"), "--steps", "2"], "error"),
        ("sample a missing run", ["sample", str(root / "missing")], "error"),
        ("sample --out a folder", ["sample", str(run), "--out", str(root)], "error"),
        ("sample --out under a file", ["sample", str(run), "--out", str(made["blocker"] / "g.png")], "error"),
        ("sample --separate an existing file", ["sample", str(run), "--out", str(root / "g.png"), "--separate", str(made["blocker"])], "error"),
        ("sample --nrow -1", ["sample", str(run), "--nrow", "-1", "--out", str(root / "g.png")], "error"),
        ("sample --num 0", ["sample", str(run), "--num", "0", "--out", str(root / "g.png")], "error"),
        ("sample --truncation 1e-9", ["sample", str(run), "--truncation", "1e-9", "--out", str(root / "t.png")], "ok"),
        ("sample --truncation -1", ["sample", str(run), "--truncation", "-1", "--out", str(root / "t.png")], "error"),
        ("sample --class on an unconditional run", ["sample", str(run), "--class", "cat", "--out", str(root / "c.png")], "error"),
        ("export under a file", ["export", str(run), "--format", "onnx", "--out", str(made["blocker"] / "g.onnx")], "error"),
        ("export to a folder", ["export", str(run), "--format", "safetensors", "--out", str(root)], "error"),
        ("interpolate under a file", ["interpolate", str(run), "--out", str(made["blocker"] / "w.gif")], "error"),
        ("interpolate --steps 1", ["interpolate", str(run), "--steps", "1", "--out", str(root / "w.png")], "error"),
        ("interpolate to .mp4", ["interpolate", str(run), "--out", str(root / "w.mp4")], "error"),
        ("report under a missing parent", ["report", str(run), "--out", str(root / "new" / "deeper" / "r.html")], "ok"),
        ("report under a file", ["report", str(run), "--out", str(made["blocker"] / "r.html")], "error"),
        ("report of a folder that is no run", ["report", str(root)], "error"),
        ("evaluate with a feature extractor that is not a factory", ["evaluate", str(run), "--feature-extractor", "os:getcwd"], "error"),
        ("evaluate with a module that does not exist", ["evaluate", str(run), "--feature-extractor", "nope_xyz:make"], "error"),
        ("evaluate without Inception weights offline", ["evaluate", str(run), "--metrics", "fid", "--num", "100"], "error"),
        ("data prepare under a file", ["data", "prepare", "digits", "--out", str(made["blocker"] / "d.safetensors")], "error"),
        ("data show under a file", ["data", "show", "digits", "--out", str(made["blocker"] / "r.png")], "error"),
        ("data show --num 0", ["data", "show", "digits", "--num", "0", "--out", str(root / "r.png")], "error"),
        ("data download a path", ["data", "download", str(made["good"])], "error"),
        ("data info with a bad option", ["data", "info", "cifar10:size=3"], "error"),
        ("data info on the bad folder", ["data", "info", str(made["bad"])], "ok"),
    ]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "PURRGAN_DATA": str(root / "cache"), "NETRC": str(root / "no-netrc")}
        for name in ("WANDB_MODE", "WANDB_API_KEY", "PURRGAN_INCEPTION"):
            env.pop(name, None)
        made = build(root)
        run = root / "run"
        subprocess.run([sys.executable, "-m", "purrgan", "train", "--out", str(run), "--steps", "4", *TINY], env=env,
                       check=True, capture_output=True)
        tally = {"tried": 0, "ok": 0, "one-line errors": 0, "wrong": 0, "tracebacks": 0, "hangs": 0}
        for name, argv, expected in cases(root, made, run):
            tally["tried"] += 1
            try:
                out = subprocess.run([sys.executable, "-m", "purrgan", *argv], env=env, capture_output=True, text=True,
                                     timeout=240)
            except subprocess.TimeoutExpired:
                tally["hangs"] += 1
                print(f"HANG       {name}")
                continue
            err = out.stderr.strip()
            lines = [line for line in err.splitlines() if line.startswith("purrgan: error:")]
            if "Traceback" in err:
                tally["tracebacks"] += 1
                verdict = "TRACEBACK"
            elif expected == "ok" and out.returncode == 0:
                tally["ok"] += 1
                verdict = "ok"
            elif expected == "error" and out.returncode == 2 and len(lines) == 1:
                tally["one-line errors"] += 1
                verdict = "one line"
            else:
                tally["wrong"] += 1
                verdict = f"WRONG (exit {out.returncode})"
            detail = lines[0][len("purrgan: error: "):][:110] if lines else ""
            print(f"{verdict:<10} {name}{': ' + detail if detail else ''}")
        outside = [p for p in (Path("/.safetensors"), Path("/escape.png"), root.parent / "escape.png") if p.exists()]
        print(f"\n{tally}; files written outside the run folders: {outside or 'none'}")


if __name__ == "__main__":
    main()
