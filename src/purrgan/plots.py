"""loss.png: G's and D's losses over training, smoothed, with D's real/fake split."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def smooth(values: np.ndarray, weight: float = 0.8) -> np.ndarray:
    """Return an exponential moving average of values (TensorBoard's smoothing), debiased at the start."""
    out, average = np.empty_like(values, dtype=float), 0.0
    for i, v in enumerate(values):
        average = weight * average + (1 - weight) * v
        out[i] = average / (1 - weight ** (i + 1))
    return out


def plot_losses(rows: list[dict], path: Path) -> Path | None:
    """Write loss.png from metrics rows (nothing when there are none) and return its path."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    figure, (losses, outputs) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label, style in (("g_loss", "G loss", "-"), ("d_loss", "D loss", "-"),
                              ("d_loss_real", "D loss on real", "--"), ("d_loss_fake", "D loss on fake", "--")):
        values = np.array([r.get(key, np.nan) for r in rows], dtype=float)
        raw = losses.plot(steps, values, style, alpha=0.2)[0]
        losses.plot(steps, smooth(values), style, color=raw.get_color(), label=label)
    losses.set_xlabel("step")
    losses.set_title("losses (faint: raw, solid: smoothed)")
    losses.legend()
    for key, label in (("d_real", "D(x) on real"), ("d_fake", "D(G(z)) on fake")):
        outputs.plot(steps, smooth(np.array([r.get(key, np.nan) for r in rows], dtype=float)), label=label)
    outputs.set_xlabel("step")
    outputs.set_title("D's mean output")
    outputs.legend()
    figure.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    figure.savefig(tmp, dpi=90)
    plt.close(figure)
    tmp.replace(path)  # readers never see a half-written picture
    return path
