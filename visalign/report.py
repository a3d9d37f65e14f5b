"""`visalign report RUN` -> RUN/report.html: one self-contained page (inline SVG charts, embedded PNGs)
with the hacking monitor's verdict, the reward and held-out curves (every reading and judge), the per-category
before/after table (GenEval-S: both readings and extra objects), before/after sample grids on the same prompts
and seeds, and where the time went."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from .trainer.checkpoint import atomic_write_text
from .trainer.logging import read_metrics


def svg_lines(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, width: int = 460,
              height: int = 240) -> str:
    """A small line chart: {name: [(x, y), ...]} -> inline SVG."""
    pts = [p for s in series.values() for p in s if p[1] is not None]
    if not pts:
        return "<p>(no data)</p>"
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    x1 = x1 if x1 > x0 else x0 + 1
    ml, mb, mt, mr = 48, 32, 10, 10
    sx = lambda x: ml + (x - x0) / (x1 - x0) * (width - ml - mr)  # noqa: E731
    sy = lambda y: height - mb - (y - y0) / (y1 - y0) * (height - mb - mt)  # noqa: E731
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
    out = [f'<svg width="{width}" height="{height}" style="font:11px sans-serif;background:#fff">']
    out.append(f'<line x1="{ml}" y1="{height - mb}" x2="{width - mr}" y2="{height - mb}" stroke="#444"/>')
    out.append(f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{height - mb}" stroke="#444"/>')
    for v in (y0, (y0 + y1) / 2, y1):
        out.append(f'<text x="{ml - 4}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    for v in (x0, (x0 + x1) / 2, x1):
        out.append(f'<text x="{sx(v):.1f}" y="{height - mb + 14}" text-anchor="middle">{v:.4g}</text>')
    out.append(f'<text x="{(ml + width) / 2}" y="{height - 4}" text-anchor="middle">{html.escape(xlabel)}</text>')
    out.append(f'<text x="12" y="{height / 2}" transform="rotate(-90 12 {height / 2})" text-anchor="middle">'
               f'{html.escape(ylabel)}</text>')
    for i, (name, s) in enumerate(series.items()):
        s = [p for p in s if p[1] is not None]
        c = colors[i % len(colors)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.8" points="{path}"/>')
        for x, y in s if len(s) < 40 else []:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{c}"/>')
        out.append(f'<text x="{width - mr - 4}" y="{mt + 12 + 13 * i}" text-anchor="end" fill="{c}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="image-rendering:pixelated;max-width:100%">'


def reward_details_section(train: list[dict]) -> str:
    """One small chart per logged reward detail (reward_<name>: the components of a `combine` reward, a
    verifier's partial score, a JPEG size...), each on its own axis since their units differ."""
    keys = sorted({k for r in train for k in r if k.startswith("reward_") and k not in ("reward_mean", "reward_std")
                   and isinstance(r[k], (int, float))})
    if not keys:
        return ""
    finite = lambda v: v if isinstance(v, (int, float)) and math.isfinite(v) else None  # noqa: E731  (dropped batches)
    charts = [svg_lines({k[7:]: [(r["iteration"], finite(r.get(k))) for r in train]}, "iteration", k[7:], width=300,
                        height=180) for k in keys]
    return "<h3>Reward components and details (batch means, raw units)</h3>" + "".join(charts)


def eval_series(evals: list[dict]) -> dict[str, list]:
    """The held-out curves: the score the run is evaluated by, the exact reading where the prompt set has one,
    the training reward and every judge (visalign/monitor.py), each on the same images."""
    exact = "eval_exact" in evals[-1]
    out = {"GenEval's rules" if exact else "overall": [r["eval_overall"] for r in evals]}
    if exact:
        out["exact reading"] = [r.get("eval_exact") for r in evals]
    if "eval_reward" in evals[-1]:
        out["training reward"] = [r.get("eval_reward") for r in evals]
    for spec in evals[-1].get("eval_judges", {}):
        out[f"judge {spec}"] = [r.get("eval_judges", {}).get(spec) for r in evals]
    return out


def hacking_section(evals: list[dict]) -> str:
    """The monitor's warnings (training reward up, another reading or judge down beyond the noise), or a line
    saying there were none."""
    warned = [r for r in evals if r.get("eval_hacking")]
    if not warned:
        return ("<p style='color:#2a7'>Hacking monitor: no evaluation saw the training reward rise while another "
                "reading or judge fell beyond the evaluation's noise.</p>")
    items = "".join(f"<li>iteration {r['iteration']}: {html.escape(r['eval_hacking'])}</li>" for r in warned)
    return f"<div style='color:#b00;border:1px solid #b00;padding:6px'><b>Hacking monitor</b><ul>{items}</ul></div>"


def category_table(first: dict, last: dict) -> str:
    """Per category before -> after: the score, and for GenEval-S the exact reading and extra objects."""
    exact = "eval_exact_categories" in last and "eval_exact_categories" in first
    cols = [("eval_categories", "eval_overall", "GenEval's rules" if exact else "score", "{:.3f}")]
    if exact:
        cols += [("eval_exact_categories", "eval_exact", "exact reading", "{:.3f}"),
                 ("eval_extra_categories", "eval_extra", "extra objects per image", "{:.2f}")]
    head = "".join(f"<th colspan=3>{title}</th>" for _, _, title, _ in cols)
    sub = (f"<th>before (iter {first['iteration']})</th><th>after (iter {last['iteration']})</th>"
           "<th>change</th>") * len(cols)
    rows = [f"<table border=1 cellpadding=4 style='border-collapse:collapse'><tr><th></th>{head}</tr>"
            f"<tr><th>category</th>{sub}</tr>"]
    for c in first["eval_categories"]:
        cells = "".join(f"<td>{fmt.format(first[k][c])}</td><td>{fmt.format(last[k][c])}</td>"
                        f"<td>{last[k][c] - first[k][c]:+.3f}</td>" for k, _, _, fmt in cols)
        rows.append(f"<tr><td>{c}</td>{cells}</tr>")
    cells = "".join(f"<th>{fmt.format(first[o])}</th><th>{fmt.format(last[o])}</th><th>{last[o] - first[o]:+.3f}</th>"
                    for _, o, _, fmt in cols)
    rows.append(f"<tr><th>overall</th>{cells}</tr></table>")
    return "".join(rows)


def write_report(run: str | Path) -> Path:
    run = Path(run)
    rows = read_metrics(run)
    if not rows:
        raise FileNotFoundError(f"{run}/metrics.jsonl is missing or empty: not a training run folder")
    recipe = json.loads((run / "recipe.json").read_text()) if (run / "recipe.json").exists() else {}
    train = [r for r in rows if r["iteration"] > 0]
    evals = [r for r in rows if "eval_overall" in r]
    parts = [f"<h1>visalign run: {html.escape(recipe.get('name', run.name))}</h1>"]
    parts.append(f"<p>{html.escape(recipe.get('description', ''))}</p>")
    parts.append("<p>model <b>{}</b>, algorithm <b>{}</b>, reward <b>{}</b>, {} iterations of {} images</p>".format(
        *(html.escape(str(x)) for x in (recipe.get("model"), recipe.get("algorithm"), recipe.get("reward"),
                                        len(train), recipe.get("train", {}).get("batch_size")))))

    if evals:
        first, last = evals[0], evals[-1]
        parts.append(hacking_section(evals))
        parts.append("<h2>Held-out GenEval-S</h2>" if "eval_exact" in last else "<h2>Held-out prompts</h2>")
        readings = eval_series(evals)
        parts.append(svg_lines({k: [(r["iteration"], v) for r, v in zip(evals, vs)] for k, vs in readings.items()},
                               "iteration", "held-out score"))
        parts.append(svg_lines({k: [(r["nfe"], v) for r, v in zip(evals, vs)] for k, vs in readings.items()},
                               "model evaluations (NFE)", "held-out score"))
        parts.append(svg_lines({k: [(r["wall_s"], v) for r, v in zip(evals, vs)] for k, vs in readings.items()},
                               "training wall time (s)", "held-out score"))
        if "eval_extra" in last:
            parts.append(svg_lines({"extra objects per image": [(r["iteration"], r.get("eval_extra")) for r in evals]},
                                   "iteration", "objects nobody asked for"))
        parts.append(category_table(first, last))
        b, a = run / "samples" / f"iter-{first['iteration']:06d}.png", run / "samples" / f"iter-{last['iteration']:06d}.png"
        if b.exists() and a.exists():
            parts.append("<h2>Samples: before and after (same prompts, same seeds; one row per category)</h2>")
            parts.append(f"<table><tr><th>before</th><th>after</th></tr><tr><td>{_img(b)}</td><td>{_img(a)}</td></tr></table>")
            pj = run / "samples" / "prompts.json"
            if pj.exists():
                prompts = json.loads(pj.read_text())
                parts.append("<p style='font-size:11px'>prompts, row by row: " + html.escape(" | ".join(prompts)) + "</p>")

    if train:
        parts.append("<h2>Training reward</h2>")
        parts.append(svg_lines({"reward mean": [(r["iteration"], r["reward_mean"]) for r in train]}, "iteration", "reward"))
        parts.append(reward_details_section(train))
        losses = [(r["iteration"], r.get("loss")) for r in train]
        parts.append(svg_lines({"loss": losses}, "iteration", "loss"))
        diag = [r for r in train if "diag_signal_share" in r]
        if diag:
            parts.append("<h2>Gradient signal</h2><p>Signal share of each update: the cosine between the reward-driven "
                         "gradients of two disjoint halves of the rollouts, combined for the whole batch (0 = pure "
                         "noise, 1 = pure signal), overall and per window of denoising steps; its running mean; and "
                         "what the run's optimizer steps add up to (signal adds linearly, noise as a random walk). "
                         "Below: the share of groups whose rewards were all equal (no group-advantage signal) and "
                         "the advantages' effective sample size.</p>")
            series = {"signal share": [(r["iteration"], r["diag_signal_share"]) for r in diag]}
            if "diag_run_signal_share" in diag[0]:
                series["mean share"] = [(r["iteration"], r["diag_signal_share_mean"]) for r in diag]
                series["run share"] = [(r["iteration"], r["diag_run_signal_share"]) for r in diag]
            for w in ("early", "mid", "late"):
                if f"diag_cos_{w}" in diag[0]:
                    series[f"half-batch cos {w}"] = [(r["iteration"], r.get(f"diag_cos_{w}")) for r in diag]
            parts.append(svg_lines(series, "iteration", "signal"))
            parts.append(svg_lines({"all-equal groups": [(r["iteration"], r["diag_equal_groups"]) for r in diag],
                                    "advantage ESS": [(r["iteration"], r["diag_ess"]) for r in diag]}, "iteration", "share"))
        totals: dict[str, float] = {}
        for r in train:
            for k, v in r.items():
                if k.startswith("time_") and isinstance(v, (int, float)):
                    totals[k[5:-2]] = totals.get(k[5:-2], 0.0) + v
        wall = train[-1]["wall_s"]
        parts.append("<h2>Where the time went</h2><table border=1 cellpadding=4 style='border-collapse:collapse'>"
                     "<tr><th>stage</th><th>seconds</th><th>share of training wall time</th></tr>")
        for k, v in sorted(totals.items(), key=lambda kv: -kv[1]):
            note = " (inside the network, forward + backward)" if k == "model" else (" (not in wall time)" if k == "eval" else "")
            parts.append(f"<tr><td>{k}{note}</td><td>{v:.1f}</td><td>{v / wall:.1%}</td></tr>")
        parts.append(f"<tr><th>training wall time</th><th>{wall:.1f}</th><th></th></tr></table>")
    page = "<!doctype html><meta charset=utf-8><title>visalign report</title><body style='font-family:sans-serif;max-width:1000px;margin:auto'>"
    out = run / "report.html"
    atomic_write_text(out, page + "\n".join(parts) + "</body>")
    return out
