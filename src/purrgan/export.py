"""Exporting the generator alone: ONNX, TorchScript or safetensors, each with a model card beside it.

Every format takes `z`, float32 (N, z_dim) drawn from N(0, 1), plus `labels`, int64 (N,), for a
class-conditional model, and gives `images`, float32 (N, C, H, W) in [-1, 1] (map to pixels with
(images + 1) * 127.5).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import torch
from safetensors.torch import save as st_save
from torch import nn
from torch.nn.utils import parametrize

from .checkpoint import write_atomic
from .config import to_dict
from .errors import PurrganError
from .generate import TrainedGenerator
from .modelcard import write_model_card
from .models import build_generator

FORMATS = ("onnx", "torchscript", "safetensors")


class _Exportable(nn.Module):
    """G with a fixed signature: forward(z) or forward(z, labels) -> images."""

    def __init__(self, generator: TrainedGenerator):
        super().__init__()
        self.network = build_generator(generator.config)  # a copy to change, the exported weights loaded into it
        self.network.load_state_dict(generator.network.state_dict())
        self.network.eval()
        # Spectral norm's power iteration (vdot) has no ONNX operator: bake each normalised weight in, as eval uses it.
        for module in self.network.modules():
            if parametrize.is_parametrized(module):
                for name in list(module.parametrizations):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.network(z, labels)


def export(generator: TrainedGenerator, fmt: str, out: Path) -> Path:
    """Write the generator to out in fmt (onnx, torchscript or safetensors) plus MODEL.md beside it."""
    if fmt not in FORMATS:
        raise PurrganError(f"unknown export format '{fmt}'; use one of: {', '.join(FORMATS)}")
    config = generator.config
    if config.model.conditional == "per-class" and fmt != "safetensors":
        raise PurrganError("a per-class run is exported one class at a time: "
                           "purrgan export RUN/generators/<class>.safetensors --format " + fmt)
    if out.is_dir():
        raise PurrganError(f"--out {out} is a folder; give a file name such as generator.{fmt}")
    module = _Exportable(generator).eval().cpu()
    z = torch.randn(2, generator.z_dim)
    inputs = (z, torch.zeros(2, dtype=torch.long)) if generator.classes else (z,)
    names = ["z", "labels"] if generator.classes else ["z"]
    if fmt == "safetensors":
        metadata = {"format": "purrgan-generator-1", "config": json.dumps(to_dict(config)), "z_dim": str(generator.z_dim),
                    "classes": json.dumps(generator.classes), "step": str(generator.step),
                    "inputs": "z: float32 (N, z_dim) ~ N(0, 1)" + ("; labels: int64 (N,)" if generator.classes else ""),
                    "outputs": "images: float32 (N, C, H, W) in [-1, 1]"}
        blob = st_save({k: v.detach().contiguous().cpu() for k, v in generator.network.state_dict().items()}, metadata)
        write_atomic(out, blob, "nothing was exported")  # a normal file mode (safetensors' own writer makes 0600)
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice: the format itself is still loadable
            traced = torch.jit.trace(module, inputs)
        buffer = io.BytesIO()  # TorchScript's own writer reports an unwritable path as a RuntimeError, not OSError
        torch.jit.save(traced, buffer)
        write_atomic(out, buffer.getvalue(), "nothing was exported")
    else:
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            _export_onnx(module, inputs, names, tmp)
            os.replace(tmp, out)
        except OSError as error:
            raise PurrganError(f"could not write {out}: {error.strerror or error}") from None
        finally:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
    write_model_card(generator, out.with_name(out.stem + ".MODEL.md"), export_format=fmt, export_file=out.name)
    return out


def _export_onnx(module: nn.Module, inputs: tuple, names: list[str], out: Path) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise PurrganError("ONNX export needs the onnx package: pip install 'purrgan[export]'") from None
    axes = {name: {0: "batch"} for name in names + ["images"]}
    kwargs = dict(input_names=names, output_names=["images"], dynamic_axes=axes, opset_version=17)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, inputs, str(out), dynamo=False, **kwargs)
        except TypeError:  # torch < 2.5 has only the TorchScript-based exporter and no `dynamo` argument
            torch.onnx.export(module, inputs, str(out), **kwargs)
