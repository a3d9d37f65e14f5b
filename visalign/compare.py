"""`visalign compare ALGO [ALGO ...] --budget-nfe N`: each algorithm on the same model, prompts and budget of
network evaluations (or wall minutes), one table and one page of curves: held-out GenEval-S overall (exact
verifier) vs NFE and vs wall time, per category, and the per-prompt diversity of the samples (a run that
hacks its reward collapses each prompt onto one picture).

Each algorithm starts from a recipe that declares it in its `compare:` block (compare.algorithms; the recipe
written for the compared model, else the algorithm's compare.any_model recipe: its sampler, learning rate, batch;
recipe_for), with the model, prompt set, seed and budget replaced by the comparison's (or, with
--budget-recipe, each keeping its recipe's own iterations and evaluation points). A spec may carry
algorithm options: `grpo:kl_beta=0.04`. Reward-gradient methods (refl, draft, alignprop) train on the learned
differentiable reward (geneval_s_learned), all others on the verifier; all are judged by the verifier.
diffusion_dpo trains offline on pairs that the comparison first samples from the same model (`make-pairs`);
the network evaluations spent on that data are reported beside its training budget.
With a prompt set `geneval-s:CAT,CAT,CAT`, training sees those categories only and the table also gives the
mean over the held-in and the held-out categories (the "DPO vs GRPO" in-domain / out-of-domain question).
"""

from __future__ import annotations

import dataclasses
import html
import json
import time
from pathlib import Path

import numpy as np

from .config import ConfigError, apply_overrides, build, load_recipe_dict, parse_override, TrainRecipe
from .checkpoint import atomic_write_text
from .metrics import read_metrics

def compare_recipes() -> dict[str, list[tuple[str, dict]]]:
    """algorithm -> [(recipe name, its dict)] of the bundled train recipes whose `compare:` block lists it (the
    recipes declare what compare runs; nothing here lists algorithms). Two `any_model` recipes of one algorithm are
    refused: compare could not tell which to start from."""
    from .config import recipe_names

    out: dict[str, list[tuple[str, dict]]] = {}
    for r in recipe_names():
        d = load_recipe_dict(r)
        block = d.get("compare") or {}
        if d.get("kind", "train") != "train" or not isinstance(block, dict):
            continue
        for algo in block.get("algorithms") or ():
            out.setdefault(algo, []).append((r, d))
    for algo, found in out.items():
        anywhere = [r for r, d in found if d["compare"].get("any_model")]
        if len(anywhere) > 1:
            raise ConfigError(f"recipes {', '.join(anywhere)} all say compare.any_model for {algo}; accepted: one")
    return out


def recipe_for(name: str, model: str) -> str:
    """The recipe an algorithm starts from on `model`, from the recipes' `compare:` blocks: one written for that model
    (one of the algorithm's own before one that lends it its sampler, as geneval-s-ddpo lends dpok), else the
    algorithm's `any_model` recipe (geneval-s-grpo for grpo on builtin:shapes-ddpm: its sampler carried over)."""
    found = compare_recipes().get(name, [])
    base = model.partition("?")[0]
    written = sorted((d.get("algorithm") != name, r) for r, d in found if d.get("model") == base)
    if written:
        return written[0][1]
    anywhere = [r for r, d in found if d["compare"].get("any_model")]
    if not anywhere:
        raise ConfigError(f"no recipe for {name} on {base}: no recipe's compare block lists {name} with any_model, "
                          f"nor one written for {base}")
    return anywhere[0]


def parse_spec(spec: str) -> tuple[str, dict, str]:
    """'grpo' | 'grpo:kl_beta=0.04,clip_range=0.2' -> (algorithm, options, label)."""
    name, _, opts = spec.partition(":")
    known = compare_recipes()
    if name not in known:
        raise ConfigError(f"cannot compare '{name}'; accepted: {', '.join(sorted(known))} (the algorithms of the "
                          f"recipes' compare blocks)")
    options = {}
    for item in filter(None, opts.split(",")):
        key, value = parse_override(item)
        options[".".join(key)] = value
    return name, options, spec


def family_sampling(sampling: dict, adapter, needs_log_prob: bool) -> dict:
    """The recipe's sampler carried over to the model's family: a stochastic kind the family lacks becomes
    the family's own stochastic kind (flow SDE <-> DDIM with eta), keys the family does not know are dropped."""
    from .policies import policy_class

    cls = policy_class(adapter)
    fields = {f.name for f in dataclasses.fields(cls.Sampling)}
    out = {k: v for k, v in sampling.items() if k in fields}
    kind = sampling.get("kind", cls.Sampling().kind)
    if kind not in cls.STOCHASTIC_KINDS + ("ode",):
        out["kind"] = cls.STOCHASTIC_KINDS[0] if needs_log_prob else "ode"
    return out


def make_comparison_pairs(model: str, prompts: str, out: Path, seed: int, n_prompts: int = 400, per_prompt: int = 4,
                          log=print) -> dict:
    """The pairs diffusion_dpo trains on, sampled from the compared model; -> {'path', 'nfe', 'wall_s'}."""
    from .models.registry import PolicyGenerator, load_model
    from .pairs import make_pairs
    from .prompts import load_prompt_set
    from .rewards import load_reward
    from .metrics import Stopwatch
    from .trainer.trainer import InstrumentedAdapter

    # the 400-prompt set keeps its first name (pairs/), so earlier comparisons read back as they were made
    name = "pairs" if (n_prompts, per_prompt) == (400, 4) else f"pairs-{n_prompts}x{per_prompt}"
    info = out / f"{name}-info.json"
    if info.exists():
        return json.loads(info.read_text())
    prompt_set = load_prompt_set(prompts)
    counted = InstrumentedAdapter(load_model(model), Stopwatch())
    rng = np.random.default_rng(seed)
    cats = prompt_set.categories
    chosen = [prompt_set.train[c][rng.integers(len(prompt_set.train[c]))] for c in (cats[i % len(cats)]
                                                                                 for i in range(n_prompts))]
    start = time.time()
    make_pairs(PolicyGenerator(counted, validate=prompt_set.verifier), load_reward("geneval_s"), chosen, per_prompt,
               seed, out / name, {"model": model, "reward": "geneval_s", "prompts": prompts}, log=log)
    res = {"path": str(out / name), "nfe": counted.nfe, "wall_s": round(time.time() - start, 1)}
    atomic_write_text(info, json.dumps(res))
    return res


def run_recipe(spec: str, model: str, prompts: str, budget_nfe: int, budget_minutes: float, evals: int,
               per_category: int, seed: int, overrides: list[str], out: Path, data: str | None, log=print,
               recipe_budget: bool = False) -> dict:
    from .algorithms import ALGORITHMS
    from .models.registry import load_model
    from .trainer.trainer import Trainer

    name, options, label = parse_spec(spec)
    recipe_name = recipe_for(name, model)
    d = load_recipe_dict(recipe_name)
    d.pop("kind", None)
    d.update(model=model, prompts=prompts, algorithm=name)
    d["algorithm_options"] = {**d.get("algorithm_options", {}), **options}
    d["sampling"] = family_sampling(d.get("sampling", {}), load_model(model), ALGORITHMS.get(name).needs_log_prob)
    if data:
        d["data"] = data
    t = d.setdefault("train", {})
    t.update(checkpoint_every=1_000_000, budget_nfe=budget_nfe, budget_minutes=budget_minutes,
             eval_per_category=per_category, seed=seed)
    if not recipe_budget:  # the comparison's budget ends the run; evaluations at fractions of it
        t.update(iterations=1_000_000, eval_every=1_000_000, eval_every_nfe=budget_nfe // evals if budget_nfe else 0)
    d = apply_overrides(d, overrides)
    recipe = build(TrainRecipe, d)
    run = out / label.replace(":", "_").replace(",", "_").replace("=", "-")
    if (run / "metrics.jsonl").exists() and finished(read_metrics(run), recipe):
        log(f"{label}: already done in {run}")
    else:
        if run.exists():
            import shutil

            shutil.rmtree(run)
        log(f"{label}: training ({recipe_name}, {recipe.sampling.get('kind', 'default')} sampler)")
        Trainer(recipe, dataclasses.asdict(recipe), run, progress=False, log=log).train()
    return summarize_run(label, run)


def finished(rows: list[dict], recipe) -> bool:
    """A run that spent its budget, or ran its recipe's last iteration (and evaluated it)."""
    last = rows[-1] if rows else {}
    return any(r.get("budget_spent") for r in rows) or (
        last.get("iteration") == recipe.train.iterations and "eval_overall" in last)


def summarize_run(label: str, run: Path) -> dict:
    rows = read_metrics(run)
    evals = [r for r in rows if "eval_overall" in r]
    first, last = evals[0], evals[-1]
    batch = json.loads((run / "recipe.json").read_text())["train"]["batch_size"]
    return {"label": label, "run": str(run), "nfe": last["nfe"], "wall_s": last["wall_s"],
            "samples": last["iteration"] * batch,  # rollouts (or dataset images) trained on
            "base": first["eval_overall"], "final": last["eval_overall"],
            "base_categories": first["eval_categories"], "categories": last["eval_categories"],
            "base_diversity": first.get("eval_diversity"), "diversity": last.get("eval_diversity"),
            "base_exact": first.get("eval_exact"), "exact": last.get("eval_exact"),
            "base_extra": first.get("eval_extra"), "extra": last.get("eval_extra"),
            "hacking": last.get("eval_hacking"),
            "curve": [(r["nfe"], r["wall_s"], r["eval_overall"]) for r in evals]}


def held_split(prompts: str) -> tuple[list[str], list[str]] | None:
    from .prompts import load_prompt_set

    if not prompts.startswith("geneval-s:"):
        return None
    held_in = prompts.split(":", 1)[1].split(",")
    return held_in, [c for c in load_prompt_set(prompts).eval if c not in held_in]


def format_table(results: list[dict], split) -> str:
    cats = list(results[0]["categories"])
    short = {c: c.replace("single_object", "single").replace("two_object", "two").replace("color_attr", "attr")
             for c in cats}
    head = ["algorithm", "samples", "train NFE", "wall min", "held-out base", "final", "gain", "best (at NFE)",
            "gain / 1k samples", "gain / 100k NFE"]
    head += ["exact base", "exact final", "exact gain", "extra objects base", "final"]
    head += [short[c] for c in cats] + (["held-in gain", "held-out-cat gain"] if split else [])
    head += ["diversity base", "final", "hacking warning"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        gain = r["final"] - r["base"]
        row = [r["label"], f"{r['samples']:,}", f"{r['nfe']:,}", f"{r['wall_s'] / 60:.1f}", f"{r['base']:.3f}",
               f"{r['final']:.3f}", f"{gain:+.3f}", "{:.3f} ({:,})".format(*max((c[2], c[0]) for c in r["curve"])),
               f"{gain / max(r['samples'], 1) * 1e3:+.3f}",
               f"{gain / max(r['nfe'], 1) * 1e5:+.3f}"]
        have = r.get("exact") is not None and r.get("base_exact") is not None
        row += ([f"{r['base_exact']:.3f}", f"{r['exact']:.3f}", f"{r['exact'] - r['base_exact']:+.3f}",
                 f"{r['base_extra']:.2f}", f"{r['extra']:.2f}"] if have else ["-"] * 5)
        row += [f"{r['categories'][c]:.2f}" for c in cats]
        if split:
            for group in split:
                row.append(f"{np.mean([r['categories'][c] - r['base_categories'][c] for c in group]):+.3f}")
        row += [f"{r['base_diversity']:.3f}" if r["base_diversity"] is not None else "-",
                f"{r['diversity']:.3f}" if r["diversity"] is not None else "-", "yes" if r.get("hacking") else "no"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_page(results: list[dict], table: str, header: str, path: Path) -> None:
    from .report import svg_lines

    by_nfe = {r["label"]: [(c[0], c[2]) for c in r["curve"]] for r in results}
    by_wall = {r["label"]: [(c[1] / 60, c[2]) for c in r["curve"]] for r in results}
    rows = [ln.strip("|").split("|") for ln in table.splitlines() if not ln.startswith("|---")]
    cells = "".join("<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c.strip())}</{'th' if i == 0 else 'td'}>"
                                     for c in row) + "</tr>" for i, row in enumerate(rows))
    page = (f"<!doctype html><meta charset=utf-8><title>visalign compare</title><body style='font:13px sans-serif'>"
            f"<h2>visalign compare</h2><p>{html.escape(header)}</p><table border=1 cellpadding=3 "
            f"style='border-collapse:collapse'>{cells}</table><h3>held-out GenEval-S overall (GenEval's rules)</h3>"
            f"{svg_lines(by_nfe, 'network evaluations (NFE)', 'overall')} "
            f"{svg_lines(by_wall, 'wall minutes (training)', 'overall')}</body>")
    atomic_write_text(path, page)


def compare(specs: list[str], budget_nfe: int = 0, budget_minutes: float = 0.0, model: str = "builtin:shapes-flow",
            prompts: str = "geneval-s", out: str | Path = "runs/compare", evals: int = 4, per_category: int = 50,
            seed: int = 0, overrides: list[str] | None = None, log=print, recipe_budget: bool = False,
            pair_prompts: int = 400) -> dict:
    if not budget_nfe and not budget_minutes and not recipe_budget:
        raise ConfigError("give a budget: --budget-nfe N (network evaluations), --budget-minutes M per algorithm, "
                          "or --budget-recipe (each recipe's own iterations)")
    if recipe_budget and (budget_nfe or budget_minutes):
        raise ConfigError("--budget-recipe keeps each recipe's iterations; give it without --budget-nfe/--budget-minutes")
    if budget_nfe < 0 or budget_minutes < 0 or evals < 1:
        raise ConfigError(f"budgets must be > 0 and --evals >= 1, got {budget_nfe}, {budget_minutes}, {evals}")
    labels = [parse_spec(s)[2] for s in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"an algorithm is listed twice: {', '.join(specs)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = None
    if any(parse_spec(s)[0] == "diffusion_dpo" for s in specs):
        if pair_prompts < 1:
            raise ConfigError(f"--pair-prompts must be >= 1, got {pair_prompts}")
        pairs = make_comparison_pairs(model, prompts, out, seed, n_prompts=pair_prompts, log=log)
    results = []
    from .metrics import progress_bar

    bar = progress_bar(log, len(specs), "compare", "run")  # ETA over the algorithms (a ConsoleLog, on a terminal)
    for spec, label in zip(specs, labels):
        bar.set_postfix(training=label)
        data = pairs["path"] if pairs and parse_spec(spec)[0] == "diffusion_dpo" else None
        res = run_recipe(spec, model, prompts, budget_nfe, budget_minutes, evals, per_category, seed,
                         overrides or [], out, data, log=log, recipe_budget=recipe_budget)
        if data:
            res["data_nfe"], res["data_wall_s"] = pairs["nfe"], pairs["wall_s"]
        results.append(res)
        bar.update(1)
    bar.close()
    split = held_split(prompts)
    table = format_table(results, split)
    budget = (f"{budget_nfe:,} NFE" if budget_nfe else f"{budget_minutes:g} wall minutes" if budget_minutes
              else "its recipe's iterations")
    header = (f"model {model}, prompts {prompts}, budget {budget} per algorithm, seed {seed}; held-out GenEval-S "
              f"({per_category} per category) under GenEval's rules and the exact reading (the named objects and "
              f"nothing else), extra objects per image, and whether the hacking monitor warned"
              + (f"; diffusion_dpo's pairs ({pair_prompts} train prompts x 4 samples) cost another {pairs['nfe']:,} NFE "
                 f"({pairs['wall_s'] / 60:.1f} min)"
                 if pairs else "")
              + (f"; trained on {', '.join(split[0])} only" if split else ""))
    summary = {"header": header, "results": results, "table": table}
    atomic_write_text(out / "compare.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "compare.md", f"{header}\n\n{table}\n")
    write_page(results, table, header, out / "compare.html")
    return summary


def write_doc(path: str | Path, title: str, command: str, res: dict, minutes: float, note: str = "") -> Path:
    """A compare result as a docs page: the command that made it, its header and table, the time it took and
    how the machine was used (written to a temp file, then renamed)."""
    import torch

    path = Path(path)
    atomic_write_text(path, f"# {title}\n\n`{command}`\n\n{res['header']}. The whole command took {minutes:.1f} min "
                            f"(torch threads: {torch.get_num_threads()}{'; ' + note if note else ''}).\n\n{res['table']}\n")
    return path
