"""`visalign report RUN` -> RUN/report.html: one self-contained page (inline SVG charts, embedded PNGs), also
written at the end of `visalign train`. It shows, titled after the run's prompt set and reward:

- the hacking monitor's verdict;
- the held-out curves (every reading and judge) against iterations, model evaluations and wall time, and one
  curve per category for each reading (GenEval-S: GenEval's rules, the exact reading, extra objects);
- the per-category before/after table (both readings and the extra objects on GenEval-S);
- the sample grids of the base and the final evaluation, one row per category labelled with its name, each
  image with its prompt and its verdicts (GenEval-S: pass/fail under GenEval's rules and under the exact reading,
  read from RUN/evals/iter-N.json; other prompt sets: the image's reward);
- the training reward, its components, the loss and the gradient-signal diagnostics;
- where the time went: the stages' shares of the training wall time (adding up to 100%, what no stage timed
  is "other"), the evaluation apart;
- the resolved recipe (RUN/recipe.json) and the versions the run was trained with (RUN/versions.json, written
  by the trainer; "not recorded" for runs made before it was).

Numbers are shown with as many digits as it takes for different values to read differently (0.503 and 0.507
never both read 0.5), chart ticks are round numbers whose labels differ, and legends are HTML under each chart,
so nothing is clipped or drawn over a curve."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import platform
from importlib import metadata
from pathlib import Path

from .checkpoint import atomic_write_text
from .metrics import read_metrics

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2", "#7f7f7f",
           "#bcbd22"]
# curves that coincide (the training reward is GenEval's rules) still show both: every other one is dashed
DASHES = ["", "6 3", "2 2", "8 3 2 3"]
CHAR_W = 6.8  # px a character of the charts' 11px sans-serif takes at most (digits, signs, k/M)
VERSIONED = ("torch", "diffusers", "transformers", "peft", "accelerate", "visalign")
# training stages the trainer times (trainer.py's self.sw); "model" is inside them, "eval" outside training
STAGE_NOTES = {"rollout": "sampling the batch", "reward": "scoring the batch",
               "advantages": "advantages from the rewards", "diagnose": "gradient-signal diagnostics",
               "update": "the policy update (loss, backward, optimizer)"}
# charts style themselves inline: compare.py's page uses them too, without the report's style sheet
FIGURE = "display:inline-block;vertical-align:top;margin:6px 10px 10px 0"
CAPTION = "font:bold 12px sans-serif;margin-bottom:2px"
TILE_PX = 96  # displayed width of a sample image
esc = html.escape


# ------------------------------------------------------------------------------------------ versions


def package_versions() -> dict[str, str]:
    """The versions a run is trained with (the trainer writes them to RUN/versions.json beside recipe.json)."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# ------------------------------------------------------------------------------------------ numbers


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def distinct_digits(groups: list[list[float]], least: int = 3, most: int = 6) -> int:
    """The fewest decimals (>= least) with which the different values within each group read differently
    (0.503 vs 0.507 at 3; 0.5031 vs 0.5034 at 4), at most `most`. Values within 1e-9 (float noise) count as one."""
    sets = [{round(v, 9) for v in g if _finite(v)} for g in groups]
    for d in range(least, most + 1):
        if all(len({f"{v:.{d}f}" for v in s}) == len(s) for s in sets):
            return d
    return most


def _decimals(step: float) -> int:
    """The digits after the point that write multiples of `step` exactly (0.25 -> 2, 5 -> 0)."""
    d = 0
    while d < 12 and abs(step * 10**d - round(step * 10**d)) > 1e-6 * step * 10**d:
        d += 1
    return d


def nice_ticks(lo: float, hi: float, n: int = 5, integer: bool = False, inside: bool = False
               ) -> tuple[list[float], int]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten apart) -> (ticks, decimals): covering [lo, hi]
    (the axis then spans the first to the last tick), or with `inside` only those within it (the axis spans the
    data). With `decimals` digits, every tick's label differs from its neighbours'."""
    if hi - lo < 1e-12:
        pad = max(abs(lo) * 0.05, 1e-3 if not integer else 1.0)
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    if integer:
        step = max(round(step), 1)
    decimals = _decimals(step)
    if inside:
        first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    else:
        first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, decimals + 2) for i in range(first, last + 1)], decimals


def tick_labels(ticks: list[float], decimals: int) -> list[str]:
    """Labels for nice_ticks(): large values in k / M (3.5M model evaluations), others with `decimals` digits."""
    top = max(abs(t) for t in ticks)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    for unit, suffix, least in ((1e6, "M", 1e6), (1e3, "k", 1e4)):
        if top >= least:
            d = _decimals(step / unit)
            return [f"{t / unit:.{d}f}{suffix}" if t else "0" for t in ticks]
    if 0 < top < 1e-3:  # a small loss: 2e-8, 4e-8 rather than 0.00000002, 0.00000004
        for k in range(5):
            labels = [_sci(t, k) for t in ticks]
            if len(set(labels)) == len(labels):
                break
        return labels
    return [f"{t:.{decimals}f}" for t in ticks]


def _sci(v: float, digits: int) -> str:
    """1.5e-4 (not 1.50e-04); 0 as 0."""
    if not v:
        return "0"
    mantissa, exp = f"{v:.{digits}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exp)}"


# ------------------------------------------------------------------------------------------ charts


def legend(names: list[str], width: int) -> str:
    """An HTML legend under a chart: it wraps instead of being clipped or drawn over a curve."""
    def key(i: int) -> str:
        dash = DASHES[i % len(DASHES)]
        return (f'<svg width="20" height="6" style="margin-right:4px;vertical-align:middle"><line x1="0" y1="3" '
                f'x2="20" y2="3" stroke="{PALETTE[i % len(PALETTE)]}" stroke-width="2.5"'
                f'{f" stroke-dasharray={chr(34)}{dash}{chr(34)}" if dash else ""}/></svg>')

    items = "".join(f'<span class=key style="white-space:nowrap;margin-right:12px;display:inline-block">'
                    f'{key(i)}{esc(n)}</span>' for i, n in enumerate(names))
    return f'<div class=legend style="font:11px sans-serif;margin-top:2px;max-width:{width}px">{items}</div>'


def svg_lines(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, width: int = 460,
              height: int = 240, integer_x: bool = False) -> str:
    """A line chart {name: [(x, y), ...]} -> a <figure> with the y label as its caption, an inline SVG whose
    margins fit its tick labels, and an HTML legend. Points that are None or not finite are left out; hovering
    a point shows its exact value."""
    clean = {k: [(x, y) for x, y in s if _finite(x) and _finite(y)] for k, s in series.items()}
    pts = [p for s in clean.values() for p in s]
    if not pts:
        return (f"<figure class=chart style='{FIGURE}'><figcaption style='{CAPTION}'>{esc(ylabel)}</figcaption>"
                "<p>(no data)</p></figure>")
    yt, ydec = nice_ticks(min(p[1] for p in pts), max(p[1] for p in pts))
    xlo, xhi = min(p[0] for p in pts), max(p[0] for p in pts)
    if xhi - xlo < 1e-12:  # one evaluation: an axis around it
        xlo, xhi = xlo - 1, xhi + 1
    xt, xdec = nice_ticks(xlo, xhi, n=6, integer=integer_x, inside=True)
    for n in (6, 5, 4, 3):  # as many x ticks as fit without their labels touching
        ticks, dec = nice_ticks(xlo, xhi, n=n, integer=integer_x, inside=True)
        room = (ticks[1] - ticks[0]) / (xhi - xlo) * (width - 100) if len(ticks) > 1 else 0
        if CHAR_W * max(len(t) for t in tick_labels(ticks, dec)) + 8 <= room:
            xt, xdec = ticks, dec
            break
    ylab, xlab = tick_labels(yt, ydec), tick_labels(xt, xdec)
    ml = 10 + CHAR_W * max(len(s) for s in ylab)
    mr = max(12.0, CHAR_W * len(xlab[-1]) / 2 + 4)
    mt, mb = 12, 34
    y0, y1, x0, x1 = yt[0], yt[-1], xlo, xhi

    def sx(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * (width - ml - mr)

    def sy(y: float) -> float:
        return height - mb - (y - y0) / (y1 - y0) * (height - mb - mt)

    out = [(f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" overflow="visible" '
            'style="font:11px sans-serif;background:#fff">')]
    for v, s in zip(yt, ylab):
        out.append(f'<line x1="{ml}" y1="{sy(v):.1f}" x2="{width - mr}" y2="{sy(v):.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text class="ytick" x="{ml - 4}" y="{sy(v) + 4:.1f}" text-anchor="end">{s}</text>')
    for v, s in zip(xt, xlab):
        out.append(f'<line x1="{sx(v):.1f}" y1="{height - mb}" x2="{sx(v):.1f}" y2="{height - mb + 4}" stroke="#444"/>')
        out.append(f'<text class="xtick" x="{sx(v):.1f}" y="{height - mb + 15}" text-anchor="middle">{s}</text>')
    out.append(f'<line x1="{ml}" y1="{height - mb}" x2="{width - mr}" y2="{height - mb}" stroke="#444"/>')
    out.append(f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{height - mb}" stroke="#444"/>')
    out.append(f'<text x="{(ml + width - mr) / 2:.1f}" y="{height - 4}" text-anchor="middle">{esc(xlabel)}</text>')
    for i, (name, s) in enumerate(clean.items()):
        c, dash = PALETTE[i % len(PALETTE)], DASHES[i % len(DASHES)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.8"{dashed} points="{path}"/>')
        for x, y in s if len(s) < 60 else []:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{c}"><title>{esc(name)}: '
                       f'{esc(xlabel)} {x:g}, {y:.6g}</title></circle>')
    out.append("</svg>")
    return (f"<figure class=chart style='{FIGURE}'><figcaption style='{CAPTION}'>{esc(ylabel)}</figcaption>"
            f'{"".join(out)}{legend(list(clean), width)}</figure>')


def _img(data: bytes, style: str = "", attrs: str = "") -> str:
    return (f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}" '
            f'style="image-rendering:pixelated;{style}"{attrs}>')


# ------------------------------------------------------------------------------------------ what the run is


def reward_label(recipe: dict) -> str:
    """The training reward with its options: `geneval_s (exact=true)`, `combine (a, b)`."""
    name, opts = recipe.get("reward") or "?", recipe.get("reward_options") or {}
    if not opts:
        return name
    if isinstance(opts.get("components"), dict):
        return f"{name} ({', '.join(opts['components'])})"
    text = ", ".join(f"{k}={json.dumps(v)}" for k, v in opts.items())
    return f"{name} ({text})" if len(text) <= 60 else f"{name} (options in the recipe below)"


def run_labels(recipe: dict, evals: list[dict]) -> dict:
    """What the held-out numbers are: the GenEval-S score on a verifier set (geneval-s, or geneval-s:CATS,
    which still evaluates all six), else the mean training reward on the set's held-out prompts
    (trainer.py's eval_label)."""
    prompts = recipe.get("prompts") or ""
    verifier = any("eval_exact" in r for r in evals) or prompts.startswith("geneval-s")
    reward = reward_label(recipe)
    if verifier:
        heading = "Held-out GenEval-S"
        if ":" in prompts:
            heading += f" (all six categories; trained on {prompts.split(':', 1)[1].replace(',', ', ')} only)"
        score = "GenEval's rules" if any("eval_exact" in r for r in evals) else "GenEval-S score"
        ylabel = "GenEval-S score"
    else:
        heading = f"Held-out prompts of {prompts or 'the run'}: mean {reward} reward"
        score = f"mean {reward} reward"
        ylabel = f"mean {reward} reward on the held-out prompts"
    trained = prompts.split(":", 1)[1].split(",") if verifier and ":" in prompts else None
    return {"verifier": verifier, "prompts": prompts or "not recorded", "reward": reward, "heading": heading,
            "score": score, "ylabel": ylabel, "held_out": lambda c: trained is not None and c not in trained}


def _cat(c: str, labels: dict) -> str:
    """A category's name, marked where the run did not train on it (geneval-s:CATS)."""
    return f"{c} (held out)" if labels["held_out"](c) else c


def description(recipe: dict) -> str:
    """The recipe's description, with what the run changed of the named recipe it was made from: a run of
    geneval-s-grpo with reward=compressibility is not the "GenEval-S verifier reward" its description says."""
    from .config import RECIPES_DIR
    from .recipe import load_train_recipe

    text, name = recipe.get("description", ""), recipe.get("name", "")
    path = RECIPES_DIR / f"{name}.yaml"
    try:
        base = load_train_recipe(str(path))[1] if name and path.is_file() else None
    except Exception:  # noqa: BLE001  (a recipe that no longer builds: the description as it was written)
        base = None
    changed = [f"{k} {json.dumps(recipe.get(k))} (recipe: {json.dumps(base.get(k))})"
               for k in ("model", "prompts", "reward", "reward_options", "algorithm")
               if base is not None and k in recipe and recipe.get(k) != base.get(k)]
    if text and changed:
        text += f" [the description of recipe {name}; this run changed: {'; '.join(changed)}]"
    return text


# ------------------------------------------------------------------------------------------ sections


def reward_details_section(train: list[dict]) -> str:
    """One small chart per logged reward detail (reward_<name>: the components of a `combine` reward, a
    verifier's partial score, a JPEG size...), each on its own axis since their units differ."""
    keys = sorted({k for r in train for k in r if k.startswith("reward_") and k not in ("reward_mean", "reward_std")
                   and _finite(r[k])})
    if not keys:
        return ""
    charts = [svg_lines({k[7:]: [(r["iteration"], r.get(k)) for r in train]}, "iteration", k[7:], width=300,
                        height=180, integer_x=True) for k in keys]
    return "<h3>Reward components and details (batch means, raw units)</h3>" + "".join(charts)


def eval_series(evals: list[dict], labels: dict | None = None) -> dict[str, list]:
    """The held-out curves: the score the run is evaluated by, the exact reading where the prompt set has one,
    the training reward (where it is not that score already) and every judge (visalign/monitor.py), each on the
    same images."""
    labels = labels or run_labels({}, evals)
    exact = any("eval_exact" in r for r in evals)
    out = {labels["score"]: [r["eval_overall"] for r in evals]}
    if exact:
        out["exact reading"] = [r.get("eval_exact") for r in evals]
    if labels["verifier"] and any("eval_reward" in r for r in evals):
        out[f"training reward: {labels['reward']}"] = [r.get("eval_reward") for r in evals]
    for spec in dict.fromkeys(s for r in evals for s in r.get("eval_judges", {})):
        out[f"judge {spec}"] = [r.get("eval_judges", {}).get(spec) for r in evals]
    return out


def category_charts(evals: list[dict], labels: dict) -> str:
    """One curve per category for each reading the evaluations hold."""
    keys = [("eval_categories", f"per category: {labels['score']}")]
    if labels["verifier"]:
        keys += [("eval_exact_categories", "per category: exact reading"),
                 ("eval_extra_categories", "per category: extra objects per image (lower is better)")]
    charts = []
    for key, title in keys:
        rows = [r for r in evals if isinstance(r.get(key), dict)]
        if not rows:
            continue
        cats = list(dict.fromkeys(c for r in rows for c in r[key]))
        if len(cats) < 2:
            continue  # one category: its curve is the overall one above
        curves = {_cat(c, labels): [(r["iteration"], r[key].get(c)) for r in rows] for c in cats}
        charts.append(svg_lines(curves, "iteration", title, width=420, height=230, integer_x=True))
    return f"<h3>Per category</h3>{''.join(charts)}" if charts else ""


def hacking_section(evals: list[dict]) -> str:
    """The monitor's warnings (training reward up, another reading or judge down beyond the noise), or a line
    saying there were none."""
    warned = [r for r in evals if r.get("eval_hacking")]
    if not warned:
        return ("<p style='color:#2a7'>Hacking monitor: no evaluation saw the training reward rise while another "
                "reading or judge fell beyond the evaluation's noise.</p>")
    items = "".join(f"<li>iteration {r['iteration']}: {esc(r['eval_hacking'])}</li>" for r in warned)
    return f"<div style='color:#b00;border:1px solid #b00;padding:6px'><b>Hacking monitor</b><ul>{items}</ul></div>"


def category_table(first: dict, last: dict, labels: dict | None = None) -> str:
    """Per category before -> after: the score, and for GenEval-S the exact reading and extra objects, each
    column with enough digits that different values read differently."""
    labels = labels or run_labels({}, [first, last])
    exact = "eval_exact_categories" in last and "eval_exact_categories" in first
    cols = [("eval_categories", "eval_overall", labels["score"], 3)]
    if exact:
        cols += [("eval_exact_categories", "eval_exact", "exact reading", 3),
                 ("eval_extra_categories", "eval_extra", "extra objects per image", 2)]
    cats = list(first["eval_categories"])
    head = "".join(f"<th colspan=3>{esc(title)}</th>" for _, _, title, _ in cols)
    sub = (f"<th>before (iter {first['iteration']})</th><th>after (iter {last['iteration']})</th>"
           "<th>change</th>") * len(cols)
    rows = [f"<table class=data><tr><th></th>{head}</tr><tr><th>category</th>{sub}</tr>"]
    digits = {}
    for k, o, _, least in cols:
        pairs = [[first[k].get(c), last[k].get(c)] for c in cats] + [[first.get(o), last.get(o)]]
        # a change reads as one (not +0.000) wherever there is one
        changes = [[0.0, abs(b - a)] for a, b in pairs if _finite(a) and _finite(b)]
        digits[k] = max(distinct_digits(pairs, least), distinct_digits(changes, least))

    def cells(a, b, d, tag):
        if not (_finite(a) and _finite(b)):
            return f"<{tag}>{a}</{tag}><{tag}>{b}</{tag}><{tag}></{tag}>"
        return f"<{tag}>{a:.{d}f}</{tag}><{tag}>{b:.{d}f}</{tag}><{tag}>{b - a:+.{d}f}</{tag}>"

    for c in cats:
        row = "".join(cells(first[k].get(c), last[k].get(c), digits[k], "td") for k, _, _, _ in cols)
        rows.append(f"<tr><td>{esc(_cat(c, labels))}</td>{row}</tr>")
    row = "".join(cells(first.get(o), last.get(o), digits[k], "th") for k, o, _, _ in cols)
    rows.append(f"<tr><th>overall</th>{row}</tr></table>")
    return "".join(rows)


def _tiles(png: Path, rows: int, cols: int) -> list[list[bytes]] | None:
    """The images of a sample grid (images.save_grid: `cols` per row, 2 px gaps) as PNG bytes, row by row;
    None when the grid does not have that layout."""
    from PIL import Image

    with Image.open(png) as im:
        im = im.convert("RGB")
        gap = 2
        tw, th = (im.width - gap) / cols - gap, (im.height - gap) / rows - gap
        if tw != int(tw) or th != int(th) or tw < 1 or th < 1:
            return None
        tw, th = int(tw), int(th)
        out = []
        for r in range(rows):
            row = []
            for c in range(cols):
                x, y = gap + c * (tw + gap), gap + r * (th + gap)
                buf = io.BytesIO()
                im.crop((x, y, x + tw, y + th)).save(buf, format="PNG", optimize=True)
                row.append(buf.getvalue())
            out.append(row)
    return out


def _verdicts(run: Path, it: int) -> dict | None:
    path = run / "evals" / f"iter-{it:06d}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _mark(v) -> str:
    return "<span class=na>?</span>" if not _finite(v) else ("<span class=ok>✓</span>" if v >= 0.5
                                                               else "<span class=no>✗</span>")


def samples_section(run: Path, evals: list[dict], labels: dict) -> str:
    """The base and final evaluations' sample grids (RUN/samples/iter-N.png: the first images of each category,
    same prompts and seeds at every evaluation) cut into images: one block of rows per category, labelled with
    its name and scores, the prompt over each column, and under each image its verdicts from RUN/evals/iter-N.json
    (GenEval-S: ✓/✗ under GenEval's rules and under the exact reading, extra objects; other sets: the reward)."""
    shown = list(dict.fromkeys(r["iteration"] for r in (evals[0], evals[-1])))
    grids = {it: run / "samples" / f"iter-{it:06d}.png" for it in shown}
    shown = [it for it in shown if grids[it].exists()]
    if not shown:
        return ""
    by_it = {r["iteration"]: r for r in evals}
    cats = list(by_it[shown[0]].get("eval_categories", {}))
    pj = run / "samples" / "prompts.json"
    prompts = json.loads(pj.read_text()) if pj.exists() else None
    if not cats:
        return ""
    if prompts and len(prompts) % len(cats) == 0:
        cols = len(prompts) // len(cats)
    else:
        from PIL import Image

        with Image.open(grids[shown[0]]) as im:  # 8 columns unless fewer images per category were evaluated
            cols = next((c for c in range(8, 0, -1) if ((im.width - 2) / c - 2).is_integer()), 8)
    tiles = {it: _tiles(grids[it], len(cats), cols) for it in shown}
    if any(t is None for t in tiles.values()):  # an unexpected layout: show the grids whole
        imgs = "".join(f"<td>{_img(grids[it].read_bytes(), 'max-width:100%')}</td>" for it in shown)
        heads = "".join(f"<th>iteration {it}</th>" for it in shown)
        return f"<h2>Samples</h2><table><tr>{heads}</tr><tr>{imgs}</tr></table>"
    verdicts = {it: _verdicts(run, it) for it in shown}
    names = {shown[0]: "base" if shown[0] == 0 else "first", **({shown[-1]: "final"} if len(shown) > 1 else {})}

    per_cat = {it: len(v["prompts"]) // len(cats) if v and v.get("prompts") else 0 for it, v in verdicts.items()}

    def series_at(it: int, ci: int, i: int, g: int) -> dict:
        """Image i of category ci's scores in the evals file (k images a category, the grid shows the first)."""
        v, idx = verdicts[it], ci * per_cat[it] + i
        if i >= per_cat[it] or idx >= len(v["prompts"]):
            return {}
        if prompts and g < len(prompts) and v["prompts"][idx] != prompts[g]:
            return {}  # the evals file's items are not the grid's: no verdicts rather than wrong ones
        return {k: s[idx] for k, s in v.get("series", {}).items() if idx < len(s)}

    reward_values = [[s for s in (v or {}).get("series", {}).get("reward", []) if _finite(s)]
                     for v in verdicts.values()]
    rd = distinct_digits(reward_values, 3, 4)
    out = [f"<h2>Samples: {' and '.join(f'{names[it]} evaluation' for it in shown)} (same prompts, same seeds)</h2>"]
    if labels["verifier"]:
        out.append("<p class=note>Under each image: ✓/✗ under GenEval's rules (R) and under the exact reading (E), "
                   "and objects nobody asked for; hover an image for its prompt and every per-image score "
                   "(RUN/evals).</p>")
    else:
        out.append(f"<p class=note>Under each image: its {esc(labels['reward'])} reward; hover an image for its prompt "
                   "and every per-image score (RUN/evals).</p>")
    out.append("<table class=grid>")
    for ci, cat in enumerate(cats):
        held = "<br><small>(held out: not trained on)</small>" if labels["held_out"](cat) else ""
        head = [f"<tr class=prompts><th class=cat rowspan={1 + len(shown)}>{esc(cat)}{held}"]
        for it in shown:
            r = by_it[it]
            score = "rules" if labels["verifier"] else "mean"
            parts = [f"{score} {r['eval_categories'].get(cat, float('nan')):.3f}"]
            if labels["verifier"] and isinstance(r.get("eval_exact_categories"), dict):
                parts.append(f"exact {r['eval_exact_categories'].get(cat, float('nan')):.3f}")
            head.append(f"<br><small>{names[it]} (iter {it}): {', '.join(parts)}</small>")
        head.append("</th><td></td>")
        for i in range(cols):
            g = ci * cols + i
            p = prompts[g] if prompts and g < len(prompts) else ""
            head.append(f"<td class=prompt>{esc(p)}</td>")
        out.append("".join(head) + "</tr>")
        for it in shown:
            cells = [f"<tr><td class=which>{names[it]}<br>iter {it}</td>"]
            for i in range(cols):
                g = ci * cols + i
                s = series_at(it, ci, i, g)
                tip = [prompts[g] if prompts and g < len(prompts) else f"{cat} image {i + 1}"]
                tip += [f"{k}: {v:.6g}" for k, v in s.items() if _finite(v)]
                attrs = f'data-iter="{it}" data-category="{esc(cat)}" data-col="{i}"'
                if labels["verifier"] and s:
                    rules, exact, extra = s.get("geneval_rules"), s.get("exact"), s.get("extra")
                    attrs += f' data-rules="{_bit(rules)}" data-exact="{_bit(exact)}"'
                    ex = f" +{extra:g}" if _finite(extra) and extra > 0 else ""
                    cap = f"R{_mark(rules)} E{_mark(exact)}<span class=extra>{ex}</span>"
                elif s and _finite(s.get("reward")):
                    attrs += f' data-reward="{s["reward"]:.6g}"'
                    cap = f"{s['reward']:.{rd}f}"
                else:
                    cap = "<span class=na>no verdict</span>"
                img = _img(tiles[it][ci][i], f"width:{TILE_PX}px",
                           f' title="{esc(chr(10).join(tip))}" alt="{esc(tip[0])}"')
                cells.append(f'<td class=tile {attrs}>{img}<div class=cap>{cap}</div></td>')
            out.append("".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _bit(v) -> str:
    return "" if not _finite(v) else ("1" if v >= 0.5 else "0")


def largest_remainder(values: dict[str, float], total: float, decimals: int = 1) -> dict[str, float]:
    """Percentages of `total`, rounded to `decimals` so that they add up to exactly 100."""
    unit = 10 ** decimals
    raw = {k: 100 * unit * v / total for k, v in values.items()}
    floor = {k: math.floor(r) for k, r in raw.items()}
    left = 100 * unit - sum(floor.values())
    for k in sorted(raw, key=lambda k: floor[k] - raw[k])[:left]:
        floor[k] += 1
    return {k: v / unit for k, v in floor.items()}


def _secs(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.3g}"


def timing_section(rows: list[dict]) -> str:
    """Where the time went: the training stages' shares of the training wall time (adding up to 100%; time in
    no timed stage is "other"), the network's time within them, and the evaluations apart (not wall time)."""
    train = [r for r in rows if r["iteration"] > 0]
    stages: dict[str, float] = {}
    model = evaluation = 0.0
    for r in rows:
        for k, v in r.items():
            if not (k.startswith("time_") and k.endswith("_s") and _finite(v)):
                continue
            name = k[5:-2]
            if name == "eval":
                evaluation += v
            elif name == "model":
                model += v
            elif r["iteration"] > 0:
                stages[name] = stages.get(name, 0.0) + v
    wall = train[-1]["wall_s"] if train and _finite(train[-1].get("wall_s")) else 0.0
    total = max(wall, sum(stages.values()))
    out = ["<h2>Where the time went</h2>"]
    if total > 0:
        parts = dict(sorted(stages.items(), key=lambda kv: -kv[1]))
        parts["other"] = total - sum(stages.values())
        shares = largest_remainder(parts, total)
        out.append("<table class='data timing'><tr><th>training stage</th><th>seconds</th>"
                   "<th>share of training wall time</th></tr>")
        for k, v in parts.items():
            note = STAGE_NOTES.get(k, "time in no timed stage" if k == "other" else "")
            out.append(f"<tr><td>{esc(k)}<small> ({esc(note)})</small></td><td>{_secs(v)}</td>"
                       f"<td class=share>{shares[k]:.1f}%</td></tr>")
        out.append(f"<tr><th>training wall time</th><th>{total:.1f}</th><th>100.0%</th></tr></table>")
        out.append(f"<p>{len(train)} iterations, {total / max(len(train), 1):.2f} s each on average")
        if model:
            out.append(f"; of the training wall time, {model:.1f} s ({100 * model / total:.1f}%) were spent in the "
                       "network (forward and backward passes, inside the stages above)")
        out.append(".</p>")
    if evaluation:
        n = sum(1 for r in rows if "time_eval_s" in r)
        both = largest_remainder({"training": total, "evaluation": evaluation}, total + evaluation)
        out.append(f"<table class='data timing-all'><tr><th>whole run</th><th>seconds</th><th>share</th></tr>"
                   f"<tr><td>training</td><td>{total:.1f}</td><td class=share>{both['training']:.1f}%</td></tr>"
                   f"<tr><td>held-out evaluation ({n} evaluations, not in the training wall time)</td>"
                   f"<td>{evaluation:.1f}</td><td class=share>{both['evaluation']:.1f}%</td></tr>"
                   f"<tr><th>in all</th><th>{total + evaluation:.1f}</th><th>100.0%</th></tr></table>")
    return "".join(out) if len(out) > 1 else ""


def _flatten(d, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def recipe_section(run: Path, recipe: dict) -> str:
    """The resolved recipe (every setting, RUN/recipe.json) and the versions the run was trained with."""
    path = run / "versions.json"
    try:
        versions = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        versions = {}
    out = ["<h2>Hyperparameters and versions</h2>"]
    note = "" if versions else " (not recorded: the run was made before visalign recorded them)"
    out.append(f"<h3>Versions{note}</h3><table class='data versions'>")
    for name in ("python", *VERSIONED, *[k for k in versions if k not in ("python", *VERSIONED)]):
        out.append(f"<tr><td>{esc(name)}</td><td>{esc(str(versions.get(name, 'not recorded')))}</td></tr>")
    out.append("</table>")
    if recipe:
        out.append("<h3>Resolved recipe (RUN/recipe.json)</h3><table class='data recipe'>")
        for k, v in _flatten(recipe):
            out.append(f"<tr><td>{esc(k)}</td><td>{esc(json.dumps(v))}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>No RUN/recipe.json: the recipe was not recorded.</p>")
    return "".join(out)


STYLE = """<style>
body{font-family:sans-serif;max-width:1060px;margin:auto;padding:0 8px}
table.data{border-collapse:collapse;margin:6px 0}
table.data td,table.data th{border:1px solid #999;padding:3px 6px;font-size:13px}
table.data td:not(:first-child){text-align:right;font-variant-numeric:tabular-nums}
table.recipe td:not(:first-child),table.versions td:not(:first-child){text-align:left;font-family:monospace}
table.grid{border-collapse:collapse}
table.grid td,table.grid th{padding:1px 2px;vertical-align:top}
table.grid th.cat{text-align:left;font-size:13px;border-top:2px solid #666;padding-right:8px;min-width:120px}
table.grid th.cat small{font-weight:normal}
table.grid tr.prompts td{border-top:2px solid #666}
table.grid td.prompt{font-size:10px;color:#333;width:96px;vertical-align:bottom}
table.grid td.which{font-size:11px;color:#555;white-space:nowrap;vertical-align:middle}
table.grid td.tile{text-align:center}
.cap{font-size:11px;white-space:nowrap}
.ok{color:#1a7f37;font-weight:bold}.no{color:#c00;font-weight:bold}.na{color:#999}.extra{color:#b60}
.note{font-size:12px;color:#444}
</style>"""


def write_report(run: str | Path) -> Path:
    run = Path(run)
    rows = read_metrics(run)
    if not rows:
        raise FileNotFoundError(f"{run}/metrics.jsonl is missing or empty: not a training run folder")
    recipe = json.loads((run / "recipe.json").read_text()) if (run / "recipe.json").exists() else {}
    train = [r for r in rows if r["iteration"] > 0]
    evals = [r for r in rows if "eval_overall" in r]
    labels = run_labels(recipe, evals)
    parts = [f"<h1>visalign run: {esc(recipe.get('name', run.name))}</h1>"]
    parts.append(f"<p>{esc(description(recipe))}</p>")
    parts.append("<p>model <b>{}</b>, algorithm <b>{}</b>, prompts <b>{}</b>, reward <b>{}</b>, {} iterations of {} "
                 "images</p>".format(*(esc(str(x)) for x in (
                     recipe.get("model"), recipe.get("algorithm"), labels["prompts"], labels["reward"], len(train),
                     recipe.get("train", {}).get("batch_size")))))

    if evals:
        first, last = evals[0], evals[-1]
        parts.append(hacking_section(evals))
        parts.append(f"<h2>{esc(labels['heading'])}</h2>")
        readings = eval_series(evals, labels)
        for key, xlabel, integer in (("iteration", "iteration", True), ("nfe", "model evaluations (NFE)", True),
                                     ("wall_s", "training wall time (s)", False)):
            parts.append(svg_lines({k: [(r.get(key), v) for r, v in zip(evals, vs)] for k, vs in readings.items()},
                                   xlabel, labels["ylabel"], width=500, integer_x=integer))
        if any("eval_extra" in r for r in evals):
            parts.append(svg_lines({"extra objects per image": [(r["iteration"], r.get("eval_extra")) for r in evals]},
                                   "iteration", "objects nobody asked for, per image", width=420, integer_x=True))
        if any("eval_diversity" in r for r in evals):
            parts.append(svg_lines({"diversity": [(r["iteration"], r.get("eval_diversity")) for r in evals]},
                                   "iteration", "diversity (pixel distance between one prompt's images)",
                                   width=420, integer_x=True))
        parts.append(category_charts(evals, labels))
        parts.append(f"<h3>Per category, before and after</h3>{category_table(first, last, labels)}")
        parts.append(samples_section(run, evals, labels))

    if train:
        parts.append("<h2>Training reward</h2>")
        parts.append(svg_lines({f"reward mean: {labels['reward']}": [(r["iteration"], r.get("reward_mean"))
                                                                     for r in train]},
                               "iteration", "reward (batch mean)", integer_x=True))
        parts.append(reward_details_section(train))
        parts.append(svg_lines({"loss": [(r["iteration"], r.get("loss")) for r in train]}, "iteration", "loss",
                               integer_x=True))
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
                series["mean share"] = [(r["iteration"], r.get("diag_signal_share_mean")) for r in diag]
                series["run share"] = [(r["iteration"], r.get("diag_run_signal_share")) for r in diag]
            for w in ("early", "mid", "late"):
                if f"diag_cos_{w}" in diag[0]:
                    series[f"half-batch cos {w}"] = [(r["iteration"], r.get(f"diag_cos_{w}")) for r in diag]
            parts.append(svg_lines(series, "iteration", "signal", integer_x=True))
            parts.append(svg_lines({"all-equal groups": [(r["iteration"], r.get("diag_equal_groups")) for r in diag],
                                    "advantage ESS": [(r["iteration"], r.get("diag_ess")) for r in diag]},
                                   "iteration", "share", integer_x=True))
    parts.append(timing_section(rows))
    parts.append(recipe_section(run, recipe))
    title = esc(f"visalign report: {recipe.get('name', run.name)}")
    page = f"<!doctype html><meta charset=utf-8><title>{title}</title>{STYLE}<body>"
    out = run / "report.html"
    atomic_write_text(out, page + "\n".join(p for p in parts if p) + "</body>")
    return out
