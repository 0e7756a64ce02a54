"""report.html: one self-contained page about a run (every picture inlined), to open or share.

Beyond the grids and losses: each sample beside its nearest training images with a memorisation
score ("is it copying my data?"), the per-layer gradient flow of G and D, the FID curve when the run
evaluated, a grid per class, and what the data and the machine were.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

from .errors import PurrganError
from .monitor import read_metrics


def _inline(path: Path, mime: str) -> str | None:
    if not path.is_file():
        return None
    try:
        return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"
    except OSError:
        return None


def _figure(src: str | None, caption: str, missing: str, css: str = "") -> str:
    if src is None:
        return f"<figure><p class='missing'>{html.escape(missing)}</p><figcaption>{html.escape(caption)}</figcaption></figure>"
    style = f" class='{css}'" if css else ""
    return f"<figure><img{style} src='{src}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>"


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _chart(draw) -> str | None:
    """Return a matplotlib drawing as an inline PNG (None when there is nothing to draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = draw(plt)
    if figure is None:
        return None
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"


def gradient_flow_chart(flow: dict):
    """Bars of the mean and max |gradient| per layer of G and D (the last logged step), on a log scale."""
    def draw(plt):
        sides = [side for side in ("G", "D") if any(k.startswith(f"grad_mean/{side}/") for k in flow)]
        if not sides:
            return None
        figure, axes = plt.subplots(1, len(sides), figsize=(6 * len(sides), 3.6), squeeze=False)
        for axis, side in zip(axes[0], sides):
            names = [k.split("/", 2)[2] for k in flow if k.startswith(f"grad_mean/{side}/")]
            means = [flow[f"grad_mean/{side}/{n}"] for n in names]
            maxes = [flow.get(f"grad_max/{side}/{n}", 0.0) for n in names]
            x = range(len(names))
            axis.bar(x, maxes, color="#9cc", label="max |grad|")
            axis.bar(x, means, color="#257", label="mean |grad|")
            if any(v > 0 for v in maxes):
                axis.set_yscale("log")
            axis.set_xticks(list(x))
            axis.set_xticklabels([n.removesuffix(".weight") for n in names], rotation=70, fontsize=6)
            axis.set_title(f"{side}: gradient per layer at step {flow.get('step', '?')}")
            axis.legend(fontsize=7)
        figure.tight_layout()
        return figure
    return _chart(draw)


def fid_curve(rows: list[dict]):
    """The evaluation curve(s) from eval.csv (FID, and KID when present) over training steps."""
    def draw(plt):
        names = [k for k in ("fid", "kid") if any(k in r for r in rows)]
        if not rows or not names:
            return None
        figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.2), squeeze=False)
        for axis, name in zip(axes[0], names):
            points = [(r["step"], r[name]) for r in rows if name in r]
            axis.plot([p[0] for p in points], [p[1] for p in points], "o-")
            axis.set_xlabel("step")
            axis.set_title(name.upper())
        figure.tight_layout()
        return figure
    return _chart(draw)


def _evaluations(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                try:
                    rows.append({k: float(v) for k, v in row.items() if k and v not in (None, "")})
                except ValueError:
                    continue  # a row cut off by a crash
    except OSError:
        return []
    return [r for r in rows if "step" in r]


def _table(items) -> str:
    return "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's report.html (or out) and return its path."""
    run = Path(run_dir)
    if not (run / "config.toml").is_file():
        raise PurrganError(f"{run} is not a run folder (no config.toml); give the --out folder of a training run")
    rows = read_metrics(run)
    warnings = _jsonl(run / "warnings.jsonl")
    metrics = _read_json(run / "metrics.json")
    summary, copying, flow = _read_json(run / "run.json"), _read_json(run / "memorisation.json"), _read_json(run / "gradient_flow.json")
    last = rows[-1] if rows else {}
    grids = sorted((run / "samples").glob("step-*.png")) if (run / "samples").is_dir() else []
    generated = run / "samples" / "final.png" if (run / "samples" / "final.png").is_file() else (grids[-1] if grids else run / "none")
    speed = sum(r.get("images_per_s", 0) for r in rows[-10:]) / len(rows[-10:]) if rows else 0

    def number(key: str, fmt: str = ".3f") -> str:
        value = last.get(key)
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    ran = summary.get("run") or {}  # written when a session ends: its last step and the time of every session
    step = ran.get("step", last.get("step", 0))
    steps = f"{step:,} of {ran['total_steps']:,}" if "total_steps" in ran else f"{step:,}"
    if ran.get("stopped"):
        steps += " (stopped early: --resume continues)"
    seconds = ran.get("training_seconds", last.get("elapsed_s", 0))
    sessions = ran.get("sessions", 1)
    facts = [("steps", steps),
             ("training time", f"{seconds / 60:.1f} min" + (f" over {sessions} sessions" if sessions > 1 else "")),
             ("speed", f"{speed:.0f} images/s (last logged steps)"),
             ("final losses", f"D {number('d_loss')}, G {number('g_loss')}"),
             ("D(x) / D(G(z))", f"{number('d_real')} / {number('d_fake')}")]
    metric_html = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.4g}</td></tr>" for k, v in metrics.items()
                          if isinstance(v, (int, float))) or "<tr><td>none computed (see <code>purrgan evaluate</code>)</td></tr>"
    warning_html = "".join(f"<li><b>step {html.escape(str(w.get('step')))}</b> ({html.escape(str(w.get('kind')))}): "
                           f"{html.escape(str(w.get('message')))}</li>" for w in warnings)
    if not warning_html:
        warning_html = ("<li class='ok'>none: no health check fired</li>" if ran.get("health_checked", True) else
                        f"<li class='missing'>not checked: the run ended at step {step:,}, before the health checks start "
                        f"(after step {ran.get('health_checks_from', 100):,}, with 8 logged steps)</li>")
    classes_grid = run / "samples" / "classes.png"
    classes_html = (f"<h2>One row per class</h2>{_figure(_inline(classes_grid, 'image/png'), 'eight samples of each class, in the order of the data set', '')}"
                    if classes_grid.is_file() else "")
    if copying.get("verdict"):
        copying_html = (f"<p><b>{html.escape(copying['verdict'].capitalize())}</b>: {html.escape(str(copying.get('why')))}. "
                        f"A near-copy is a sample close to one training image (closer than 95% of real images are to "
                        f"their nearest other one) and at most a third as far from it as from its next nine. Compared "
                        f"with {copying.get('training_images')} training images in {html.escape(str(copying.get('space')))}.</p>"
                        f"{_figure(_inline(run / 'samples' / 'nearest.png', 'image/png'), 'each row: a sample, then its three nearest training images', '')}")
    elif copying:  # written by purrgan 0.2, whose score counted any sample near a training image, noise included
        copying_html = ("<p class='missing'>computed by an earlier purrgan, whose score could call noise a copy; "
                        "train on (or resume) the run to check again</p>")
    else:
        copying_html = "<p class='missing'>not computed yet (it is made when a run finishes)</p>"
    flow_src = gradient_flow_chart(flow) if flow else None
    curve_src = fid_curve(_evaluations(run / "eval.csv"))
    data_items = [(k.replace("_", " "), v if not isinstance(v, dict) else ", ".join(f"{c} {n}" for c, n in v.items()) or "none")
                  for k, v in summary.get("data", {}).items()]
    env_items = [(k.replace("_", " "), v) for k, v in summary.get("environment", {}).items()]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>purrgan run {html.escape(run.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ margin-top: 1.6em; border-bottom: 1px solid #ddd; }}
.pair {{ display: flex; gap: 2em; flex-wrap: wrap; }} figure {{ margin: 0; }}
img {{ image-rendering: pixelated; max-width: 100%; border: 1px solid #ccc; }} img.chart {{ image-rendering: auto; }}
.pair img {{ width: 420px; }} table {{ border-collapse: collapse; }} th, td {{ text-align: left; padding: 2px 12px 2px 0; }}
pre {{ background: #f6f6f6; padding: 1em; overflow: auto; }} .ok {{ color: #2a7; }} .missing {{ color: #999; }}
</style></head><body>
<h1>purrgan run <code>{html.escape(run.name)}</code></h1>
<table>{_table(facts)}</table>
<h2>Real and generated</h2>
<div class="pair">{_figure(_inline(run / "real.png", "image/png"), "real images", "no real.png")}
{_figure(_inline(generated, "image/png"), "generated from the fixed noise (final)", "no samples yet")}</div>
{classes_html}
<h2>Is it copying the training data?</h2>
{copying_html}
<h2>Training timelapse</h2>
<div class="pair">{_figure(_inline(run / "progress.gif", "image/gif"), "the fixed-noise grid over training", "no progress.gif yet")}</div>
<h2>Losses</h2>
{_figure(_inline(run / "loss.png", "image/png"), "losses and D's outputs", "no loss.png yet (written at each checkpoint)")}
<h2>Gradient flow</h2>
{_figure(flow_src, "mean and max |gradient| of each layer's weights (log scale): a layer near zero is not learning", "not logged yet", "chart")}
<h2>Metrics</h2><table>{metric_html}</table>
{_figure(curve_src, "metrics during training (eval.csv)", "no evaluation during training (train with --eval-every N)", "chart")}
<h2>Warnings</h2><ul>{warning_html}</ul>
<h2>Data</h2><table>{_table(data_items) or "<tr><td class='missing'>not recorded</td></tr>"}</table>
<h2>Environment</h2><table>{_table(env_items) or "<tr><td class='missing'>not recorded</td></tr>"}</table>
<h2>Configuration</h2><pre>{html.escape((run / "config.toml").read_text(encoding="utf-8", errors="replace"))}</pre>
</body></html>
"""
    path = Path(out) if out else run / "report.html"
    if path.is_dir():
        raise PurrganError(f"{path} is a folder; give a file name such as report.html")
    from .checkpoint import write_atomic

    write_atomic(path, page.encode("utf-8"), "no report was written")
    return path


def _jsonl(path: Path) -> list[dict]:
    from .monitor import read_jsonl

    return read_jsonl(path)
