"""Fill the folder that travels to a GPU machine (.gpu, ignored by git) with what benchmarks/gpu.sh needs there.

- wheels/: purrgan's own wheel (built from this checkout) and torch-fidelity's (the device has no network);
- yardstick.pt: the CIFAR-10 classifier quality.py scores with (copied from benchmarks/.cache, or trained
  once from ../shared/data/cifar10-jpg.tar.gz: about 10 minutes on 2 cores);
- cats64-kaggle.tar.gz: the cat faces from ../shared/data.

    python benchmarks/gpu_pack.py            # then: carry [".gpu"] and run `bash benchmarks/gpu.sh`
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / ".gpu"))
    parser.add_argument("--yardstick-epochs", type=int, default=6)
    args = parser.parse_args()
    out = Path(args.out)
    wheels = out / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True)
    fidelity = metadata.version("torch-fidelity")
    subprocess.run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
                    f"torch-fidelity=={fidelity}"], check=True)

    import quality

    cached = quality.yardstick_path(args.yardstick_epochs)
    if not cached.is_file():
        quality.load_yardstick(args.yardstick_epochs)  # trains it from the shared CIFAR-10 (fails clearly without)
    shutil.copyfile(cached, out / "yardstick.pt")
    cats = quality.SHARED / "cats64-kaggle.tar.gz"
    if not cats.is_file():
        sys.exit(f"{cats} not found: the quality run needs the cat faces of ../shared/data")
    shutil.copyfile(cats, out / "cats64-kaggle.tar.gz")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(f"{path.relative_to(out)}  {path.stat().st_size / 2 ** 20:.1f} MiB")
    print(f"{out}: {size / 2 ** 20:.1f} MiB in all (a device call carries at most 64 MiB); now run "
          f"`bash benchmarks/gpu.sh` on the device with carry [\".gpu\"]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
