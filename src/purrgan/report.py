"""report.html: one self-contained page about a run (every picture inlined), to open or share."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .errors import PurrganError
from .monitor import read_metrics


def _inline(path: Path, mime: str) -> str | None:
    if not path.is_file():
        return None
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _figure(src: str | None, caption: str, missing: str) -> str:
    if src is None:
        return f"<figure><p class='missing'>{html.escape(missing)}</p><figcaption>{html.escape(caption)}</figcaption></figure>"
    return f"<figure><img src='{src}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>"


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's report.html (or out) and return its path."""
    run = Path(run_dir)
    if not (run / "config.toml").is_file():
        raise PurrganError(f"{run} is not a run folder (no config.toml); give the --out folder of a training run")
    rows = read_metrics(run) if (run / "metrics.jsonl").is_file() else []
    warnings = [json.loads(line) for line in (run / "warnings.jsonl").read_text(encoding="utf-8").splitlines()
                if line.strip()] if (run / "warnings.jsonl").is_file() else []
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8")) if (run / "metrics.json").is_file() else {}
    last = rows[-1] if rows else {}
    grids = sorted((run / "samples").glob("step-*.png")) if (run / "samples").is_dir() else []
    generated = run / "samples" / "final.png" if (run / "samples" / "final.png").is_file() else (grids[-1] if grids else run / "none")
    speed = sum(r["images_per_s"] for r in rows[-10:]) / len(rows[-10:]) if rows else 0

    facts = [("steps", last.get("step", 0)), ("training time", f"{last.get('elapsed_s', 0) / 60:.1f} min"),
             ("speed", f"{speed:.0f} images/s (last logged steps)"),
             ("final losses", f"D {last.get('d_loss', float('nan')):.3f}, G {last.get('g_loss', float('nan')):.3f}" if rows else "-"),
             ("D(x) / D(G(z))", f"{last.get('d_real', float('nan')):.3f} / {last.get('d_fake', float('nan')):.3f}" if rows else "-")]
    facts_html = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    metric_html = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.4g}</td></tr>" for k, v in metrics.items()
                          if isinstance(v, (int, float))) or "<tr><td>none computed (see <code>purrgan evaluate</code>)</td></tr>"
    warning_html = "".join(f"<li><b>step {w['step']}</b> ({html.escape(w['kind'])}): {html.escape(w['message'])}</li>"
                           for w in warnings) or "<li class='ok'>none: no health check fired</li>"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>purrgan run {html.escape(run.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ margin-top: 1.6em; border-bottom: 1px solid #ddd; }}
.pair {{ display: flex; gap: 2em; flex-wrap: wrap; }} figure {{ margin: 0; }}
img {{ image-rendering: pixelated; max-width: 100%; border: 1px solid #ccc; }}
.pair img {{ width: 420px; }} table {{ border-collapse: collapse; }} th, td {{ text-align: left; padding: 2px 12px 2px 0; }}
pre {{ background: #f6f6f6; padding: 1em; overflow: auto; }} .ok {{ color: #2a7; }} .missing {{ color: #999; }}
</style></head><body>
<h1>purrgan run <code>{html.escape(run.name)}</code></h1>
<table>{facts_html}</table>
<h2>Real and generated</h2>
<div class="pair">{_figure(_inline(run / "real.png", "image/png"), "real images", "no real.png")}
{_figure(_inline(generated, "image/png"), "generated from the fixed noise (final)", "no samples yet")}</div>
<h2>Training timelapse</h2>
<div class="pair">{_figure(_inline(run / "progress.gif", "image/gif"), "the fixed-noise grid over training", "no progress.gif yet")}</div>
<h2>Losses</h2>
{_figure(_inline(run / "loss.png", "image/png"), "losses and D's outputs", "no loss.png yet (written at each checkpoint)")}
<h2>Metrics</h2><table>{metric_html}</table>
<h2>Warnings</h2><ul>{warning_html}</ul>
<h2>Configuration</h2><pre>{html.escape((run / "config.toml").read_text(encoding="utf-8"))}</pre>
</body></html>
"""
    path = Path(out) if out else run / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
